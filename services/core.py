"""up / down / status of the whole stack, in dependency order, independent steps in parallel:

    up:   PostgreSQL + SeaweedFS  ->  MLflow server + Prefect server  ->  work pool  ->  workers
    down: workers  ->  MLflow + Prefect servers  ->  SeaweedFS + PostgreSQL

Each step starts only what is not running and healthy, so `up` on a running stack changes
nothing. One `up`/`down` at a time per state folder (a lock file in it).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from services import envfile, mlflow_server, postgres, prefect_server, seaweedfs
from services.config import DVC_BUCKET, MLFLOW_BUCKET, WORK_POOL, Config
from services.credentials import Credentials, load_or_create
from services.process import ServiceError, port_free, running_record
from stage_runtime.locks import LockTimeoutError, file_lock

LOCK_WAIT = 600.0

Step = Callable[[], "str | dict[str, str]"]


@dataclass
class Outcome:
    """What one command did, line by line (service, what happened)."""

    lines: list[tuple[str, str]]
    errors: list[str]
    seconds: float


@contextlib.contextmanager
def _locked(cfg: Config) -> Iterator[None]:
    """One `up` or `down` at a time for this stack (the project's flock, stage_runtime.locks)."""
    held = contextlib.ExitStack()
    try:
        held.enter_context(file_lock(cfg.root / "lock", "services up/down", LOCK_WAIT))
    except LockTimeoutError:
        raise ServiceError(
            "lock", f"another up/down held {cfg.root}/lock for {LOCK_WAIT:g} s"
        ) from None
    with held:
        yield


def _prepare_root(cfg: Config) -> None:
    # 0711: the postgres user must pass through to its own folders; nothing here is listable.
    cfg.root.mkdir(parents=True, exist_ok=True)
    cfg.root.chmod(0o711)
    cfg.logs.mkdir(exist_ok=True)
    cfg.logs.chmod(0o711)
    cfg.pids.mkdir(exist_ok=True)


def _run_parallel(steps: dict[str, Step], outcome: Outcome) -> None:
    """Run the steps at once; record their results, or their one-line errors."""
    with ThreadPoolExecutor(max_workers=max(1, len(steps))) as pool:
        futures = {name: pool.submit(step) for name, step in steps.items()}
        for name, future in futures.items():
            try:
                result = future.result()
            except ServiceError as exc:
                outcome.errors.append(str(exc))
                continue
            except Exception as exc:  # an unexpected failure still names the service
                outcome.errors.append(f"{name}: {type(exc).__name__}: {exc}")
                continue
            if isinstance(result, dict):
                outcome.lines.extend(result.items())
            else:
                outcome.lines.append((name, result))


def up(cfg: Config) -> Outcome:
    """Start whatever is not running; stops at the first stage that fails."""
    began = time.monotonic()
    outcome = Outcome([], [], 0.0)
    with _locked(cfg):
        _prepare_root(cfg)
        creds = load_or_create(cfg.credentials_file)
        stages: list[dict[str, Step]] = [
            {
                "postgres": lambda: postgres.start(cfg, creds),
                "seaweedfs": lambda: seaweedfs.start(cfg, creds),
            },
            {
                "mlflow": lambda: mlflow_server.start(cfg, creds),
                "prefect": lambda: prefect_server.start_server(cfg, creds),
            },
            {
                "work-pool": lambda: prefect_server.ensure_pool(cfg),
                "automation": lambda: prefect_server.ensure_zombie_automation(cfg),
            },
            {"workers": lambda: prefect_server.start_workers(cfg, creds)},
        ]
        for stage in stages:
            _run_parallel(stage, outcome)
            if outcome.errors:
                break
        else:
            if envfile.write(cfg, creds):
                outcome.lines.append(("env", f"wrote {cfg.relative(cfg.env_file)}"))
    outcome.seconds = time.monotonic() - began
    return outcome


def down(cfg: Config) -> Outcome:
    """Stop everything that runs, workers first; fine when nothing runs."""
    began = time.monotonic()
    outcome = Outcome([], [], 0.0)
    if not cfg.root.is_dir():  # never started here
        return outcome
    with _locked(cfg):
        cfg.pids.mkdir(exist_ok=True)
        workers = prefect_server.recorded_workers(cfg)
        ports = sorted(
            {
                port
                for name in ["postgres", "seaweedfs", "mlflow", "prefect"]
                if (record := running_record(cfg.pids, name)) is not None
                for port in record.ports
            }
        )
        stages: list[dict[str, Step]] = [
            {key: (lambda key=key: prefect_server.stop_worker(cfg, key)) for key in workers},
            {
                "mlflow": lambda: mlflow_server.stop(cfg),
                "prefect": lambda: prefect_server.stop_server(cfg),
            },
            {"seaweedfs": lambda: seaweedfs.stop(cfg), "postgres": lambda: postgres.stop(cfg)},
        ]
        for stage in stages:
            if stage:
                _run_parallel(stage, outcome)
    # The ports the stopped services held are free again (a closing socket may take a moment).
    deadline = time.monotonic() + 5.0
    busy = [port for port in ports if not port_free(port)]
    while busy and not outcome.errors and time.monotonic() < deadline:
        time.sleep(0.2)
        busy = [port for port in busy if not port_free(port)]
    if busy and not outcome.errors:
        outcome.errors.append(f"ports: still in use 5 s after down: {busy}")
    outcome.seconds = time.monotonic() - began
    return outcome


@dataclass
class State:
    name: str
    up: bool
    pid: int | None
    detail: str


def status(cfg: Config) -> list[State]:
    """Each service: running (its recorded process alive) and answering its health check."""
    states = []
    creds = None
    if cfg.credentials_file.is_file():
        creds = load_or_create(cfg.credentials_file)

    def state(name: str, key: str, check: Callable[[], bool], detail: str) -> State:
        record = running_record(cfg.pids, key)
        if record is None:
            return State(name, False, None, "not running")
        ok = check()
        return State(name, ok, record.pid, detail if ok else f"runs but does not answer: {detail}")

    states.append(
        state(
            "postgres",
            "postgres",
            lambda: postgres.healthy(cfg),
            f"127.0.0.1:{cfg.ports['postgres']}, databases mlflow, prefect",
        )
    )
    states.append(
        state(
            "seaweedfs",
            "seaweedfs",
            lambda: creds is not None and seaweedfs.healthy(cfg, creds),
            f"S3 {cfg.s3_endpoint}, buckets {DVC_BUCKET}, {MLFLOW_BUCKET}",
        )
    )
    states.append(state("mlflow", "mlflow", lambda: mlflow_server.healthy(cfg), cfg.mlflow_url))
    states.append(
        state("prefect", "prefect", lambda: prefect_server.healthy(cfg), cfg.prefect_api_url)
    )
    names = cfg.worker_names()
    keys = sorted(
        set(prefect_server.recorded_workers(cfg))
        | {prefect_server.worker_key(i) for i in range(1, len(names) + 1)}
    )
    online = prefect_server.workers_online(cfg, names) if states[-1].up else set()
    for key in keys:
        index = int(key.rsplit("-", 1)[1])
        name = names[index - 1] if index <= len(names) else key
        states.append(
            state(
                key,
                key,
                lambda name=name: name in online,
                f"{name} in work pool {WORK_POOL}",
            )
        )
    return states


def credentials(cfg: Config) -> Credentials:
    """The stack's credentials (ServiceError when `up` never ran here)."""
    if not cfg.credentials_file.is_file():
        raise ServiceError(
            "dvc-remote",
            f"no credentials in {cfg.root}: run `make services` first, or source the "
            ".services/env of the stack (or set SERVICES_DIR to its folder)",
        )
    return load_or_create(cfg.credentials_file)
