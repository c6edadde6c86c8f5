"""The TLC source as time goes by: which months it publishes, and whether a month it published
was republished (same file name, other bytes) since the pipeline ingested it.

The source is the one stages.ingest reads: the TLC address in params.yaml, or TLC_SOURCE (a
local mirror or another base URL). A local file is identified by its md5, which for an
ingested month is the raw file's md5 in dvc.lock (ingest copies the bytes unchanged); an
HTTP file by the headers it was served with (ETag, Last-Modified, Content-Length), recorded on
the ingest run in MLflow, as `dvc import-url` records an ETag and `dvc update` compares it.
"""

from __future__ import annotations

import os
import re
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stages.common import file_md5
from stages.tlc import SOURCE_ENV, http_identity, trip_address
from timeline.window import shift

HEAD_TIMEOUT_SECONDS = 5.0
# Months probed after the newest known one on an HTTP source (which has no listing).
HTTP_PROBE_MONTHS = 12
# What a check says about one ingested month.
UNCHANGED, CHANGED, GONE, UNKNOWN = "unchanged", "upstream changed", "gone from source", "unknown"


class SourceError(RuntimeError):
    """The source could not be asked (down, unreachable): the message names it."""


def is_http(address: str) -> bool:
    return address.startswith(("http://", "https://"))


def head(url: str, timeout: float = HEAD_TIMEOUT_SECONDS) -> dict[str, str] | None:
    """The headers of `url`, None when it is not published (404, or 403 as CloudFront says for
    a missing S3 key); SourceError when the server cannot be reached."""
    request = urllib.request.Request(url, method="HEAD")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return dict(response.headers.items())
    except urllib.error.HTTPError as exc:
        if exc.code in (403, 404):
            return None
        raise SourceError(f"{url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
        reason = getattr(exc, "reason", exc)
        raise SourceError(f"{url}: unreachable ({reason})") from None


_MONTH_FILE = re.compile(r"^(?P<colour>[a-z]+)_tripdata_(?P<month>\d{4}-\d{2})\.parquet$")


def local_months(directory: Path, colour: str) -> list[str]:
    """The months of `colour` a local mirror holds, by file name."""
    if not directory.is_dir():
        raise SourceError(f"{directory}: the local source ({SOURCE_ENV}) is not a directory")
    months = []
    for path in directory.iterdir():
        match = _MONTH_FILE.match(path.name)
        if match and match["colour"] == colour and path.is_file():
            months.append(match["month"])
    return sorted(months)


def published_months(data: Any, known: str, env: Mapping[str, str] = os.environ) -> list[str]:
    """The months the source publishes: every one of a local mirror; for HTTP, `known` (the
    newest month the pipeline used) and the consecutive months after it that answer a HEAD."""
    sample = trip_address(data.colour, data.trips_url, known, env)
    if not is_http(sample):
        return local_months(Path(sample).parent, data.colour)
    months = [known] if head(sample) is not None else []
    for k in range(1, HTTP_PROBE_MONTHS + 1):
        month = shift(known, k)
        if head(trip_address(data.colour, data.trips_url, month, env)) is None:
            break
        months.append(month)
    return months


@dataclass(frozen=True)
class MonthCheck:
    """One ingested month against its source now."""

    month: str
    path: str
    address: str
    status: str
    detail: str = ""

    @property
    def changed(self) -> bool:
        return self.status == CHANGED

    def line(self) -> str:
        return f"{self.path}: {self.status}{f' ({self.detail})' if self.detail else ''}"


def check_local(month: str, path: str, address: str, ingested_md5: str) -> MonthCheck:
    """A local source file against the md5 dvc.lock records for its ingested copy."""
    if not Path(address).is_file():
        return MonthCheck(month, path, address, GONE, f"no {address}")
    now = file_md5(address)
    if now == ingested_md5:
        return MonthCheck(month, path, address, UNCHANGED)
    return MonthCheck(month, path, address, CHANGED, f"source md5 {now}, ingested {ingested_md5}")


def check_http(month: str, path: str, address: str, recorded: str | None) -> MonthCheck:
    """An HTTP source file's headers now against those recorded when it was ingested."""
    try:
        headers = head(address)
    except SourceError as exc:
        return MonthCheck(month, path, address, UNKNOWN, str(exc))
    if headers is None:
        return MonthCheck(month, path, address, GONE, f"{address} answers 403/404")
    now = http_identity(headers)
    if recorded is None:
        return MonthCheck(month, path, address, UNKNOWN, f"no identity recorded; now {now}")
    if now == recorded:
        return MonthCheck(month, path, address, UNCHANGED)
    return MonthCheck(month, path, address, CHANGED, f"now {now}; ingested {recorded}")
