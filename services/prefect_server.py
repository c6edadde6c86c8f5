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
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from services import postgres, zombies
from services.config import HOST, PROJECT_ROOT, WORK_POOL, Config
from services.credentials import Credentials
from services.envfile import client_environment
from services.process import ServiceError, ensure_process, running_record, stop_service

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
    return ensure_process(
        name=NAME,
        label=LABEL,
        argv=server_argv(cfg),
        env=server_environment(cfg, creds),
        cwd=cfg.root,
        ports={"SERVICES_PREFECT_PORT": cfg.ports["prefect"]},
        ready=lambda: healthy(cfg),
        what=f"answering on {cfg.prefect_api_url}/health",
        timeout=cfg.start_timeout,
        pids=cfg.pids,
        log=cfg.log(NAME),
    )


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


def ensure_zombie_automation(cfg: Config) -> str:
    """The automation that marks flow runs whose process died Crashed (services.zombies)."""
    env = {**_base_env(cfg), "PREFECT_API_URL": cfg.prefect_api_url}
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "services.zombies"],
            check=False,
            env=env,
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        raise ServiceError("Prefect automation", "creating it took over 120 s") from None
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines() or ["(no output)"]
        raise ServiceError("Prefect automation", f"{zombies.AUTOMATION}: {lines[-1]}")
    return proc.stdout.strip().splitlines()[-1]


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
    """Start the workers not running, each until the server lists it as online; stop the
    recorded workers beyond SERVICES_WORKERS."""
    env = {
        **_base_env(cfg),
        **client_environment(cfg, creds),
        "PREFECT_WORKER_QUERY_SECONDS": str(cfg.worker_poll_seconds),
        # flow runs emit heartbeats, so a run whose process dies is marked Crashed
        "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(zombies.HEARTBEAT_SECONDS),
        # flow runs use this project's environment (dvc, python) even without `uv run`
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
    }
    since = datetime.now(UTC).replace(microsecond=0)
    names = cfg.worker_names()

    def one(index: int, name: str) -> str:
        key = worker_key(index)
        record = running_record(cfg.pids, key)
        if record is not None and record.argv != worker_argv(name):  # renamed: replace it
            stop_service(cfg.pids, key, WORKER_STOP_GRACE)
            record = None
        # a worker started now counts once it has sent a heartbeat; a running one as listed
        after = since if record is None else None
        return ensure_process(
            name=key,
            label=f"Prefect worker {name}",
            argv=worker_argv(name),
            env=env,
            cwd=PROJECT_ROOT,
            ports={},
            ready=lambda: name in workers_online(cfg, [name], after),
            what=f"online in work pool {WORK_POOL}",
            timeout=cfg.start_timeout,
            pids=cfg.pids,
            log=cfg.log(key),
            interval=0.5,
        )

    with ThreadPoolExecutor(max_workers=max(1, len(names))) as pool:  # they start side by side
        futures = {
            worker_key(i): pool.submit(one, i, name) for i, name in enumerate(names, start=1)
        }
        results = {key: future.result() for key, future in futures.items()}
    for key in recorded_workers(cfg):
        if int(key.rsplit("-", 1)[1]) > len(names):
            results[key] = stop_worker(cfg, key)
    return results


def stop_worker(cfg: Config, key: str) -> str:
    return stop_service(cfg.pids, key, WORKER_STOP_GRACE)


def recorded_workers(cfg: Config) -> list[str]:
    return sorted(p.stem for p in cfg.pids.glob("worker-*.json"))


def stop_server(cfg: Config) -> str:
    return stop_service(cfg.pids, NAME, STOP_GRACE)
