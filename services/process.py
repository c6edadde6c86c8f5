"""Processes of the services: start one in a session of its own with its log under
`.services/logs/`, record it under `.services/pids/`, tell whether it still runs (by pid and
start time, so a reused pid is not mistaken for it), stop its whole process group with a
bounded wait, and wait for a condition with a deadline and a one-line error.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from services.config import HOST


class ServiceError(RuntimeError):
    """A service could not be started, checked or stopped: `str()` is one line naming it."""

    def __init__(self, service: str, message: str) -> None:
        super().__init__(f"{service}: {message}")
        self.service = service


def write_private(path: Path, text: str, mode: int = 0o600) -> None:
    """Write `text` to `path` atomically (temporary file + rename), with `mode` from the start."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _start_ticks(pid: int) -> int | None:
    """The process's start time (clock ticks since boot), or None when it is gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):  # state: a zombie has finished
        return None
    return int(fields[19])


def _group_members(pgid: int) -> list[int]:
    """The live processes of process group `pgid`."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            members.append(int(entry.name))
    return members


@dataclass
class Record:
    """What `.services/pids/<name>.json` holds about a running service."""

    name: str
    pid: int
    start_ticks: int
    ports: list[int]
    argv: list[str]
    started: str

    def alive(self) -> bool:
        return _start_ticks(self.pid) == self.start_ticks


def record_path(pids: Path, name: str) -> Path:
    return pids / f"{name}.json"


def read_record(pids: Path, name: str) -> Record | None:
    """The recorded process of `name`, or None when none is recorded (or the file is unusable)."""
    try:
        return Record(**json.loads(record_path(pids, name).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def running_record(pids: Path, name: str) -> Record | None:
    """The recorded process of `name` when it still runs."""
    record = read_record(pids, name)
    return record if record is not None and record.alive() else None


def save_record(pids: Path, name: str, pid: int, ports: list[int], argv: list[str]) -> Record:
    ticks = _start_ticks(pid)
    if ticks is None:
        raise ServiceError(name, f"process {pid} ended right after it was started")
    record = Record(
        name=name,
        pid=pid,
        start_ticks=ticks,
        ports=ports,
        argv=argv,
        started=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    write_private(record_path(pids, name), json.dumps(asdict(record), indent=1) + "\n", 0o644)
    return record


def forget(pids: Path, name: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        record_path(pids, name).unlink()


def spawn(
    name: str,
    argv: list[str],
    *,
    env: Mapping[str, str],
    cwd: Path,
    log: Path,
    pids: Path,
    ports: list[int],
) -> subprocess.Popen:
    """Start `argv` in a new session (its own process group), output appended to `log`."""
    log.parent.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).isoformat(timespec="seconds")
    with open(log, "a") as out:
        out.write(f"\n===== {stamp} services: starting {name}\n")
        out.flush()
        try:
            proc = subprocess.Popen(
                argv,
                cwd=cwd,
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as exc:
            raise ServiceError(name, f"cannot run {argv[0]}: {exc.strerror}") from None
    if _start_ticks(proc.pid) is None:  # already over: say why
        status = proc.wait()
        tail = last_log_line(log)
        raise ServiceError(
            name, f"exited with status {status} at start{': ' + tail if tail else ''} (log: {log})"
        )
    save_record(pids, name, proc.pid, ports, argv)
    return proc


def last_log_line(log: Path) -> str:
    """The last non-empty line of `log`, shortened: what a one-line error quotes."""
    try:
        with open(log, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 8192))
            lines = handle.read().decode(errors="replace").splitlines()
    except OSError:
        return ""
    for raw in reversed(lines):
        line = raw.strip()
        if line and not line.startswith("====="):
            return line if len(line) <= 240 else line[:237] + "..."
    return ""


def wait_until(
    check: Callable[[], bool],
    *,
    timeout: float,
    service: str,
    what: str,
    proc: subprocess.Popen | None = None,
    log: Path | None = None,
    interval: float = 0.2,
) -> float:
    """Poll `check` until it is true; the seconds it took. ServiceError after `timeout`, or at
    once when `proc` exits first, quoting the last line of `log`."""
    start = time.monotonic()
    while True:
        if check():
            return time.monotonic() - start
        where = f" (log: {log})" if log else ""
        tail = last_log_line(log) if log else ""
        tail = f": {tail}" if tail else ""
        if proc is not None and proc.poll() is not None:
            raise ServiceError(
                service, f"exited with status {proc.returncode} before {what}{tail}{where}"
            )
        if time.monotonic() - start > timeout:
            raise ServiceError(service, f"not {what} within {timeout:g} s{tail}{where}")
        time.sleep(interval)


def port_open(port: int, host: str = HOST, timeout: float = 0.5) -> bool:
    """Whether something accepts TCP connections on host:port."""
    with socket.socket() as sock:
        sock.settimeout(timeout)
        try:
            sock.connect((host, port))
        except OSError:
            return False
        return True


def port_free(port: int, host: str = HOST) -> bool:
    """Whether this process could listen on host:port now."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def stop_group(record: Record, *, grace: float, kill_wait: float = 5.0) -> str:
    """SIGTERM to the record's process group, up to `grace` s, then SIGKILL to what is left.
    Returns how it ended ("stopped", "killed after N s")."""
    pgid = record.pid
    if not record.alive() and not _group_members(pgid):
        return "was not running"
    start = time.monotonic()
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGTERM)
    while time.monotonic() - start < grace:
        if not record.alive() and not _group_members(pgid):
            return f"stopped in {time.monotonic() - start:.1f} s"
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
    deadline = time.monotonic() + kill_wait
    while time.monotonic() < deadline:
        if not record.alive() and not _group_members(pgid):
            return f"killed after {grace:g} s (SIGTERM was not enough)"
        time.sleep(0.05)
    raise ServiceError(record.name, f"process group {pgid} survived SIGKILL for {kill_wait:g} s")
