"""Upstream changes: has the source republished a month the workspace's dvc.lock ingested?

    python -m timeline upstream [--workspace DIR] [--json]     # exit 1 when one changed

DVC does not see it: where the bytes come from is not a DVC dependency (the same file from
the TLC or a mirror is the same data). Re-ingest on request: `python -m flows.pipeline
--reingest` (or `dvc repro --force --single-item ingest@<month>`); the retrain flow does it
itself. Models trained on the old bytes stay traceable and restorable: their raw files stay
in the DVC cache and remote under their md5.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from stage_runtime import record
from stages.common import load_params
from timeline import source


def ingested_months(lock: Mapping[str, record.LockedStage]) -> dict[str, tuple[str, str]]:
    """month -> (raw path, md5) of every `ingest@<month>` stage in dvc.lock."""
    months = {}
    for name, stage in lock.items():
        kind, _, month = name.partition("@")
        if kind == "ingest" and month and stage.outs:
            path, md5 = next(iter(stage.outs.items()))
            months[month] = (path, md5)
    return dict(sorted(months.items()))


def recorded_identities(repo: Path, raw: Mapping[str, str]) -> dict[str, str]:
    """path -> the HTTP identity the ingest run that wrote these bytes recorded (MLflow)."""
    client = record.connect(record.tracking_uri(repo), create=False)
    experiment = record.experiment_id(client)
    if experiment is None:
        return {}
    found = {}
    for path, md5 in raw.items():
        run = record.find_producer(client, [experiment], path, md5)
        identity = run and record.tagged_files(run.data.tags, record.UPSTREAM).get(path)
        if identity:
            found[path] = identity
    return found


def check(
    repo: Path, env: Mapping[str, str] = os.environ, *, local_only: bool = False
) -> list[source.MonthCheck]:
    """Every month of the workspace's dvc.lock against its source now (HEAD requests in
    parallel for an HTTP source; `local_only`: none, for a run that must stay quick)."""
    data = load_params("data", path=repo / "params.yaml")["data"]
    lock = record.read_lock(repo / record.LOCK_FILE)
    return check_months(data, lock, repo, env, local_only=local_only)


def check_months(
    data: Any,
    lock: Mapping[str, record.LockedStage],
    repo: Path,
    env: Mapping[str, str] = os.environ,
    *,
    local_only: bool = False,
) -> list[source.MonthCheck]:
    """The months of `lock` (a dvc.lock's stages, of any commit) against the source `data`
    (params.yaml's data section) names; `repo` holds the MLflow record."""
    months = ingested_months(lock)
    addresses = {m: source.trip_address(data.colour, data.trips_url, m, env) for m in months}
    http = {months[m][0]: months[m][1] for m, a in addresses.items() if source.is_http(a)}
    if http and local_only:
        return []
    identities = recorded_identities(repo, http) if http else {}

    def one(month: str) -> source.MonthCheck:
        (path, md5), address = months[month], addresses[month]
        if source.is_http(address):
            return source.check_http(month, path, address, identities.get(path))
        return source.check_local(month, path, address, md5)

    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(one, months))


def changed(checks: list[source.MonthCheck]) -> list[source.MonthCheck]:
    return [c for c in checks if c.changed]


def reingest_stages(checks: list[source.MonthCheck]) -> list[str]:
    """The ingest stages to force for the months the source republished."""
    return [f"ingest@{c.month}" for c in changed(checks)]


def notice(checks: list[source.MonthCheck]) -> list[str]:
    """What a run's summary says about its sources: only what needs doing."""
    lines = [c.line() for c in checks if c.status in (source.CHANGED, source.GONE)]
    if changed(checks):
        lines.append(
            "re-ingest with: python -m flows.pipeline --reingest "
            "(models of the old bytes stay traceable and restorable)"
        )
    return lines
