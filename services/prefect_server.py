"""The Prefect server on PostgreSQL (database `prefect`, asyncpg), its work pool `taxi-process`
of type `process`, and the workers polling it (SERVICES_WORKERS, default 2).

Everything Prefect keeps on disk (profiles, the UI build) goes to `.services/prefect`
(PREFECT_HOME), not to ~/.prefect. A worker runs each flow run as a child process with the
worker's environment: the variables of `.services/env`, so flows log to this MLflow server.
A worker on another machine needs only PREFECT_API_URL (and what its flows use).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from typing import Any

from services import postgres
from services.config import HOST, PROJECT_ROOT, WORK_POOL, Config
from services.credentials import Credentials
from services.envfile import client_environment
from services.process import (
    ServiceError,
    forget,
    port_free,
    read_record,
    running_record,
    spawn,
    stop_group,
    wait_until,
)

NAME = "prefect"
LABEL = "Prefect server"
STOP_GRACE = 15.0
WORKER_STOP_GRACE = 15.0


def _base_env(cfg: Config) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(cfg.root / "prefect"), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    return env


def server_argv(cfg: Config) -> list[str]:
    return [
        sys.executable, "-m", "prefect", "server", "start",
        "--host", HOST, "--port", str(cfg.ports["prefect"]),
    ]  # fmt: skip


def server_environment(cfg: Config, creds: Credentials) -> dict[str, str]:
    env = _base_env(cfg)
    env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = postgres.uri(
        cfg, creds, "prefect", driver="postgresql+asyncpg"
    )
    return env


def _api(cfg: Config, path: str, body: dict | None = None, timeout: float = 3.0) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        f"{cfg.prefect_api_url}{path}",
        data=data,
        method="GET" if body is None else "POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=timeout) as resp:
        return json.loads(resp.read() or b"null")


def healthy(cfg: Config) -> bool:
    try:
        return _api(cfg, "/health") is True
    except (OSError, ValueError):
        return False


def start_server(cfg: Config, creds: Credentials) -> str:
    port = cfg.ports["prefect"]
    record = running_record(cfg.pids, NAME)
    if record is not None:
        if port not in record.ports:
            raise ServiceError(
                LABEL, f"already running on port {record.ports}: stop the services first"
            )
        if healthy(cfg):
            return "already up"
        raise ServiceError(
            LABEL, f"process {record.pid} runs but {cfg.prefect_api_url} does not answer"
        )
    if not port_free(port):
        raise ServiceError(
            LABEL,
            f"port {port} on {HOST} is in use by another program (set SERVICES_PREFECT_PORT)",
        )
    began = time.monotonic()
    log = cfg.log(NAME)
    proc = spawn(
        NAME,
        server_argv(cfg),
        env=server_environment(cfg, creds),
        cwd=cfg.root,
        log=log,
        pids=cfg.pids,
        ports=[port],
    )
    wait_until(
        lambda: healthy(cfg),
        timeout=cfg.start_timeout,
        service=LABEL,
        what=f"answering on {cfg.prefect_api_url}/health",
        proc=proc,
        log=log,
    )
    return f"started in {time.monotonic() - began:.1f} s"


# ---- the work pool and its workers


def _pool_exists(cfg: Config) -> bool:
    try:
        _api(cfg, f"/work_pools/{WORK_POOL}")
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return False
        raise ServiceError("Prefect work pool", f"the server answered {exc.code}") from None
    except OSError as exc:
        raise ServiceError("Prefect work pool", f"the server did not answer: {exc}") from None
    return True


def ensure_pool(cfg: Config) -> str:
    """Create the work pool (type process) unless it exists."""
    if _pool_exists(cfg):
        return "exists"
    env = {**_base_env(cfg), "PREFECT_API_URL": cfg.prefect_api_url}
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "prefect", "work-pool", "create", WORK_POOL, "--type=process"],
            check=False,
            env=env,
            cwd=cfg.root,
            capture_output=True,
            text=True,
            timeout=120,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        raise ServiceError("Prefect work pool", "work-pool create took over 120 s") from None
    if proc.returncode != 0 and not _pool_exists(cfg):
        lines = (proc.stderr or proc.stdout).strip().splitlines() or ["(no output)"]
        raise ServiceError("Prefect work pool", f"cannot create {WORK_POOL}: {lines[-1]}")
    return "created"


def worker_key(index: int) -> str:
    return f"worker-{index}"


def workers_online(cfg: Config, names: list[str], since: datetime | None = None) -> set[str]:
    """The workers of `names` the server lists as ONLINE (with a heartbeat after `since`)."""
    try:
        listed = _api(cfg, f"/work_pools/{WORK_POOL}/workers/filter", body={"limit": 200})
    except (OSError, ValueError):
        return set()
    online = set()
    for worker in listed:
        if worker.get("name") not in names or worker.get("status") != "ONLINE":
            continue
        beat = worker.get("last_heartbeat_time")
        if since is not None and (not beat or datetime.fromisoformat(beat) < since):
            continue
        online.add(worker["name"])
    return online


def worker_argv(name: str) -> list[str]:
    return [
        sys.executable, "-m", "prefect", "worker", "start",
        "--pool", WORK_POOL, "--type", "process", "--name", name,
    ]  # fmt: skip


def start_workers(cfg: Config, creds: Credentials) -> dict[str, str]:
    """Start the workers not running; wait until the server lists each as online."""
    results: dict[str, str] = {}
    env = {
        **_base_env(cfg),
        **client_environment(cfg, creds),
        "PREFECT_WORKER_QUERY_SECONDS": str(cfg.worker_poll_seconds),
    }
    since = datetime.now(UTC).replace(microsecond=0)
    started: dict[str, subprocess.Popen] = {}
    names = cfg.worker_names()
    for index, name in enumerate(names, start=1):
        key = worker_key(index)
        record = running_record(cfg.pids, key)
        if record is not None and record.argv == worker_argv(name):
            results[key] = "already up"
            continue
        if record is not None:  # renamed by SERVICES_WORKER_PREFIX: replace it
            stop_group(record, grace=WORKER_STOP_GRACE)
        started[name] = spawn(
            key,
            worker_argv(name),
            env=env,
            cwd=PROJECT_ROOT,
            log=cfg.log(key),
            pids=cfg.pids,
            ports=[],
        )
    began = time.monotonic()
    for name, proc in started.items():
        key = worker_key(names.index(name) + 1)
        wait_until(
            lambda name=name: name in workers_online(cfg, [name], since),
            timeout=cfg.start_timeout,
            service=f"Prefect worker {name}",
            what=f"online in work pool {WORK_POOL}",
            proc=proc,
            log=cfg.log(key),
            interval=0.5,
        )
        results[key] = f"started in {time.monotonic() - began:.1f} s"
    for index in range(len(names) + 1, 64):  # fewer workers asked for than are running
        key = worker_key(index)
        if read_record(cfg.pids, key) is None:
            break
        results[key] = stop_worker(cfg, key)
    return results


def stop_worker(cfg: Config, key: str) -> str:
    record = running_record(cfg.pids, key)
    if record is None:
        forget(cfg.pids, key)
        return "was not running"
    how = stop_group(record, grace=WORKER_STOP_GRACE)
    forget(cfg.pids, key)
    return how


def recorded_workers(cfg: Config) -> list[str]:
    return sorted(p.stem for p in cfg.pids.glob("worker-*.json"))


def stop_server(cfg: Config) -> str:
    record = running_record(cfg.pids, NAME)
    if record is None:
        forget(cfg.pids, NAME)
        return "was not running"
    how = stop_group(record, grace=STOP_GRACE)
    forget(cfg.pids, NAME)
    return how
