"""ingest: bring one raw TLC file (a month of trips, or the zone lookup) under DVC, unchanged.

The bytes come from the TLC address in params.yaml, or from TLC_SOURCE when it is set: a
local directory (a mirror holding the files by their TLC names) or another base URL. Where
the bytes come from is not a param: the same file from either source is the same data.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import shutil
import time
from pathlib import Path

from stage_runtime.tracking import stage_run
from stages.common import (
    BadInputError,
    TransientError,
    check_month,
    fill_path,
    load_params,
    run_stage,
    stage_item,
)
from stages.tlc import (
    SOURCE_ENV,
    check_trip_file,
    check_zone_file,
    http_identity,
    resolve_source,
    trip_address,
)

log = logging.getLogger("stages.ingest")


def fetch(source: str, dest: Path, attempts: int = 3, timeout_s: float = 60.0) -> str | None:
    """Copy a local file or download a URL to `dest`; retries only network failures.

    Returns a download's identity (its ETag, Last-Modified, Content-Length headers), None for
    a local copy (whose identity is its md5)."""
    if not source.startswith(("http://", "https://")):
        if not Path(source).is_file():
            raise BadInputError(f"{source}: no such file in the local source ({SOURCE_ENV})")
        try:
            shutil.copyfile(source, dest)
        except OSError as exc:  # name the file that could not be written, not the source
            raise OSError(exc.errno, exc.strerror, str(dest)) from None
        return None
    import urllib.error  # a download only: http.client costs every ingest process 25-40 ms
    import urllib.request

    for attempt in range(1, attempts + 1):
        try:
            with urllib.request.urlopen(source, timeout=timeout_s) as resp, open(dest, "wb") as fh:
                shutil.copyfileobj(resp, fh, 1 << 20)
                return http_identity(dict(resp.headers.items()))
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                raise BadInputError(f"{source}: not published (HTTP 404)") from None
            error: Exception = exc
        except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
            error = exc
        log.warning("download of %s failed (attempt %d/%d): %s", source, attempt, attempts, error)
        if attempt < attempts:
            time.sleep(2**attempt)
    raise TransientError(f"{source}: download failed after {attempts} attempts: {error}")


def check_published_sha256(source: str, path: Path) -> None:
    """A local mirror may list SHA256SUMS beside its files; when it does, the copy must match."""
    sums = Path(source).with_name("SHA256SUMS")
    if source.startswith(("http://", "https://")) or not sums.is_file():
        return
    listed = {}
    for line in sums.read_text().splitlines():
        if line.strip():
            digest, name = line.split(maxsplit=1)
            listed[name.lstrip("*")] = digest  # sha256sum marks binary mode with '*'
    expected = listed.get(Path(source).name)
    if expected is None:
        return
    actual = hashlib.sha256(path.read_bytes()).hexdigest()
    if actual != expected:
        raise BadInputError(f"{source}: sha256 {actual} differs from {sums} ({expected})")


def main(argv: list[str] | None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("what", choices=["trips", "zones"])
    parser.add_argument("--month", help="YYYY-MM (default: the item of the DVC stage)")
    parser.add_argument("--out", required=True, help="path; {colour} and {month} are filled in")
    args = parser.parse_args(argv)

    params = load_params("data")
    data = params["data"]
    if args.what == "trips":
        month = check_month(stage_item(args.month))
        stage, source = f"ingest@{month}", trip_address(data.colour, data.trips_url, month)
    else:
        stage, name = "ingest_zones", Path(data.zones_url).name
        source = resolve_source(data.zones_url, name, os.environ.get(SOURCE_ENV))
        month = ""
    out = fill_path(args.out, colour=data.colour, month=month)

    with stage_run(stage, params) as run:
        raw = run.output(out)
        upstream = fetch(source, raw)
        check_published_sha256(source, raw)
        if args.what == "trips":
            rows = check_trip_file(raw, data.colour, source)
        else:
            rows = check_zone_file(raw, source)
        run.add_source(out, source, upstream)
        run.log_metrics({"rows": rows})
    log.info("%s -> %s: %d rows", source, out, rows)


if __name__ == "__main__":
    run_stage("ingest", main)
