"""A real team stack (`python -m services up`) for tests: once per module, on free ports,
in a temporary folder (never a developer's .services/); `down` afterwards."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from services.config import PORTS, Config, free_ports
from services.credentials import Credentials, load_or_create
from services.envfile import client_environment

ROOT = Path(__file__).resolve().parents[1]


def timing(what: str, seconds: float) -> None:
    print(f"\nTIMING {what}: {seconds:.1f} s")


@dataclass
class Stack:
    root: Path
    env: dict[str, str]
    cfg: Config
    creds: Credentials
    up_output: str


def cli(stack_env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "services", *args],
        cwd=ROOT,
        env=stack_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _records(root: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted((root / "pids").glob("*.json"))}


def _processes_under(root: Path) -> list[str]:
    """Live processes whose command line names the stack's folder."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if str(root) in cmd and state != "Z":
            found.append(f"{entry.name}: {cmd[:150]}")
    return found


def _kill_leftovers(root: Path) -> None:
    for record in _records(root).values():
        try:
            os.killpg(record["pid"], signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


PORT_TAKEN = "is in use by another program"
UP_ATTEMPTS = 3


def _stack_env(root: Path) -> dict[str, str]:
    """The stack's settings on newly chosen free ports."""
    ports = free_ports(len(PORTS))
    # nothing of a developer's sourced .services/env or own settings reaches the stack
    clients = ("MLFLOW_", "PREFECT_", "AWS_", "TAXI_", "SERVICES_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(clients)}
    env.update({name: str(port) for (name, _), port in zip(PORTS.values(), ports, strict=True)})
    env.update(SERVICES_DIR=str(root), SERVICES_WORKER_PREFIX="test", SERVICES_START_TIMEOUT="240")
    # A run whose process died is marked Crashed after 45 s without a heartbeat (default 90).
    env.update(SERVICES_ZOMBIE_SECONDS="45")
    return env


@contextlib.contextmanager
def running_stack() -> Iterator[Stack]:
    # Not tmp_path: pytest's base folder is mode 0700 and the postgres user must pass through
    # to its cluster. A short path also keeps the unix sockets under their length limit.
    parent = Path(tempfile.mkdtemp(prefix="svc-", dir="/tmp"))
    parent.chmod(0o711)
    root = parent / "s"
    env = _stack_env(root)
    try:
        began = time.monotonic()
        for attempt in range(1, UP_ATTEMPTS + 1):
            proc = cli(env, "up", timeout=600)
            # A free port can be taken between its choice and its server's start by any
            # process on the machine (the test files run in parallel, each with its own
            # stack): stop what started and try again on other ports.
            if proc.returncode == 0 or PORT_TAKEN not in proc.stderr or attempt == UP_ATTEMPTS:
                break
            taken = next(line for line in proc.stderr.splitlines() if PORT_TAKEN in line)
            print(f"\nservices up, attempt {attempt}: {taken.strip()}")
            cli(env, "down", timeout=120)
            _kill_leftovers(root)
            root = parent / f"s{attempt + 1}"  # a new folder: nothing of the first attempt
            env = _stack_env(root)
        cold = time.monotonic() - began
        if proc.returncode != 0:
            pytest.fail(f"services up exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
        timing("python -m services up (cold: initdb, migrations)", cold)
        cfg = Config.from_env(env)
        yield Stack(root, env, cfg, load_or_create(cfg.credentials_file), proc.stdout)
    finally:
        cli(env, "down", timeout=120)
        _kill_leftovers(root)
        shutil.rmtree(parent, ignore_errors=True)


def client_env(stack: Stack) -> dict[str, str]:
    """The environment of a person who sourced the stack's `.services/env`."""
    return {**stack.env, **client_environment(stack.cfg, stack.creds)}
