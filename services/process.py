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


MARKER_ENV = "SERVICES_MEMBER"  # in every spawned process's environment, inherited by its children


def _marked(marker: str) -> list[int]:
    """Live processes whose environment carries `marker` (a service and all it started)."""
    needle = f"{MARKER_ENV}={marker}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if needle not in (entry / "environ").read_bytes().split(b"\0"):
                continue
        except OSError:
            continue
        if _start_ticks(int(entry.name)) is not None:
            found.append(int(entry.name))
    return found


@dataclass
class Record:
    """What `.services/pids/<name>.json` holds about a running service."""

    name: str
    pid: int
    start_ticks: int
    ports: list[int]
    argv: list[str]
    started: str
    marker: str = ""

    def alive(self) -> bool:
        return _start_ticks(self.pid) == self.start_ticks

    def members(self) -> list[int]:
        """Its live processes: the leader and everything it started (through the marker)."""
        found = set(_marked(self.marker)) if self.marker else set()
        if self.alive():
            found.add(self.pid)
        return sorted(found)


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


def save_record(
    pids: Path, name: str, pid: int, ports: list[int], argv: list[str], *, marker: str = ""
) -> Record:
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
        marker=marker,
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
    marker = str(record_path(pids, name))
    stamp = datetime.now(UTC).isoformat(timespec="seconds")
    with open(log, "a") as out:
        out.write(f"\n===== {stamp} services: starting {name}\n")
        out.flush()
        try:
            proc = subprocess.Popen(
                argv,
                cwd=cwd,
                env={**env, MARKER_ENV: marker},
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
    save_record(pids, name, proc.pid, ports, argv, marker=marker)
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
    """SIGTERM to the record's processes (its group and whatever carries its marker), up to
    `grace` s, then SIGKILL to what is left. Returns how it ended."""
    if not record.members():
        return "was not running"
    start = time.monotonic()
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(record.pid, signal.SIGTERM)
    for pid in record.members():
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
    while time.monotonic() - start < grace:
        if not record.members():
            return f"stopped in {time.monotonic() - start:.1f} s"
        time.sleep(0.1)
    deadline = time.monotonic() + kill_wait
    while time.monotonic() < deadline:
        left = record.members()
        if not left:
            return f"killed after {grace:g} s (SIGTERM was not enough)"
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(record.pid, signal.SIGKILL)
        for pid in left:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)
    raise ServiceError(record.name, f"processes {record.members()} survived SIGKILL")


def ensure_process(
    *,
    name: str,
    label: str,
    argv: list[str],
    env: Mapping[str, str],
    cwd: Path,
    ports: Mapping[str, int],
    ready: Callable[[], bool],
    what: str,
    timeout: float,
    pids: Path,
    log: Path,
    interval: float = 0.2,
) -> str:
    """Start `argv` as service `name` unless it runs; wait until `ready()`. What was done.

    `ports` maps the variable that sets each port to the port. A recorded process that runs
    but is not ready yet (another `up` is starting it) is waited for; processes left by a
    killed leader are stopped first; a port held by another program is named."""
    record = read_record(pids, name)
    if record is not None and record.alive():
        if sorted(record.ports) != sorted(ports.values()):
            raise ServiceError(
                label,
                f"runs on ports {sorted(record.ports)}, not {sorted(ports.values())}: "
                "stop the services first (python -m services down)",
            )
        if ready():
            return "already up"
        waited = wait_until(
            lambda: ready() or not record.alive(),
            timeout=timeout,
            service=label,
            what=f"{what} (pid {record.pid} was starting)",
            log=log,
            interval=interval,
        )
        if not record.alive():
            raise ServiceError(label, f"pid {record.pid} exited while starting (log: {log})")
        return f"was starting, up after {waited:.1f} s"
    leftovers = ""
    if record is not None and record.members():  # its leader died, its children did not
        leftovers = f"; stopped {len(record.members())} leftover processes first"
        stop_group(record, grace=5.0)
    for variable, port in ports.items():
        if not port_free(port):
            raise ServiceError(
                label, f"port {port} on {HOST} is in use by another program (set {variable})"
            )
    began = time.monotonic()
    proc = spawn(name, argv, env=env, cwd=cwd, log=log, pids=pids, ports=list(ports.values()))
    wait_until(
        ready,
        timeout=timeout,
        service=label,
        what=what,
        proc=proc,
        log=log,
        interval=interval,
    )
    return f"started in {time.monotonic() - began:.1f} s{leftovers}"


def stop_service(pids: Path, name: str, grace: float) -> str:
    """Stop the recorded service `name` and everything it started; forget its record."""
    record = read_record(pids, name)
    if record is None or not record.members():
        forget(pids, name)
        return "was not running"
    how = stop_group(record, grace=grace)
    forget(pids, name)
    return how
