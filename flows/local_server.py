"""The Prefect server of a command-line run when no PREFECT_API_URL names a running one.

Kept (the default): one `prefect server start --no-services` per project, started on demand
by the first run, used by the runs after it (a run then costs what it costs against any
server: starting one is 3-5 s here), stopped after TAXI_PREFECT_SERVER_IDLE_MINUTES (30)
without a run, or by `python -m flows.local_server stop`. Its process state (pid, port, log)
is in the project's `.prefect/server/`; the runs go to Prefect's own database (PREFECT_HOME),
as with a `prefect server start` of your own, so its UI shows them. A watcher process owns
it: the server ends with the watcher even when the watcher is killed outright.

Temporary (TAXI_PREFECT_SERVER_IDLE_MINUTES=0, what the tests use, and `serve`): a server for
one run. Prefect's own ephemeral mode starts its server as a child in the caller's process
group, so Ctrl-C in a terminal kills the server first and the flow then spends minutes
retrying to report its end to it; a SIGKILLed caller leaves that server running. This one is
started in a session of its own (a terminal's Ctrl-C reaches only the flow, which stops its
stage, reports and exits) and bound to its parent's life (Linux PR_SET_PDEATHSIG).

    python -m flows.local_server status [--project DIR]   # the kept server: URL, idle time
    python -m flows.local_server stop [--project DIR]     # stop it now
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

STARTUP_TIMEOUT_ENV = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"
DEFAULT_STARTUP_TIMEOUT = 120.0
IDLE_ENV = "TAXI_PREFECT_SERVER_IDLE_MINUTES"
DEFAULT_IDLE_MINUTES = 30.0
STATE_DIR = Path(".prefect") / "server"  # under the project; .prefect/ is not committed
STATE_FILE = "server.json"
LAST_USED_FILE = "last-used"  # its mtime: when a run last started or ended
LOG_FILE = "server.log"
STOP_GRACE_SECONDS = 10.0
WATCH_INTERVAL_SECONDS = 5.0
# Flow runs in these states keep a kept server up past its idle time.
ACTIVE_STATES = ["PENDING", "RUNNING", "CANCELLING"]
_PR_SET_PDEATHSIG = 1


class ServerStartError(RuntimeError):
    """The server did not answer in time; the message holds its log's tail."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=1):
            return True
    except OSError:
        return False


def _alive(pid: int) -> bool:
    """A running process (not a zombie) has this pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:  # no /proc (macOS): ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    return stat[stat.rindex(")") + 2] != "Z"


def idle_seconds(environ: Mapping[str, str] = os.environ) -> float:
    """How long a kept server waits for the next run (IDLE_ENV, minutes); 0: not kept."""
    text = environ.get(IDLE_ENV, "").strip()
    if not text:
        return DEFAULT_IDLE_MINUTES * 60
    try:
        minutes = float(text)
    except ValueError:
        minutes = -1.0
    if not 0 <= minutes < float("inf"):
        raise SystemExit(f"{IDLE_ENV}={text!r}: expected minutes, a number >= 0 (0: not kept)")
    return minutes * 60


def _server_command(port: int, ui: bool) -> list[str]:
    """What the server process runs (through `_serve`, which sets its death signal)."""
    return [sys.executable, "-m", "flows.local_server", "serve", str(port)] + (["--ui"] * ui)


def _wait_healthy(
    url: str, ended: Callable[[], bool], log_path: Path | None, log: IO[str] | None
) -> str:
    timeout = float(os.environ.get(STARTUP_TIMEOUT_ENV) or DEFAULT_STARTUP_TIMEOUT)
    deadline = time.monotonic() + timeout
    while not _healthy(url):
        if ended() or time.monotonic() > deadline:
            tail = _log_tail(log_path, log)
            raise ServerStartError(
                f"the local Prefect server on {url} did not answer within "
                f"{timeout:g} s ({STARTUP_TIMEOUT_ENV}):\n{tail}"
            )
        time.sleep(0.05)
    return url


def _log_tail(path: Path | None, log: IO[str] | None, lines: int = 15) -> str:
    if log is not None:
        log.seek(0)
        return "".join(log.readlines()[-lines:])
    if path is not None and path.is_file():
        return "".join(path.read_text(errors="replace").splitlines(keepends=True)[-lines:])
    return ""


class LocalServer:
    """A temporary Prefect server that lives as long as this object (and this process)."""

    kept = False

    def __init__(self) -> None:
        port = _free_port()
        self.url = f"http://127.0.0.1:{port}/api"
        self._log = tempfile.TemporaryFile(mode="w+")
        self._process = subprocess.Popen(
            _server_command(port, ui=False),
            cwd=Path(__file__).resolve().parents[1],
            env=_server_env(),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self) -> str:
        """Block until the server answers; its API URL. ServerStartError after the timeout."""
        return _wait_healthy(self.url, lambda: self._process.poll() is not None, None, self._log)

    def stop(self) -> None:
        """SIGTERM to its process group, a bounded wait, then SIGKILL."""
        _stop_group(self._process)
        self._log.close()


def _server_env() -> dict[str, str]:
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    return env


def _stop_group(process: subprocess.Popen) -> None:
    """SIGTERM to the server's process group, a bounded wait, then SIGKILL."""
    from workspaces.repro import stop_group

    stop_group(process, signal.SIGTERM, STOP_GRACE_SECONDS)


@dataclass(frozen=True)
class KeptServer:
    """The project's kept server as its state file describes it."""

    state_dir: Path
    url: str
    pid: int  # the watcher's
    identity: str | None  # stages.common.process_identity of the watcher: pids are reused
    started: float
    kept = True

    @property
    def ui(self) -> str:
        return self.url.removesuffix("/api")

    def wait_ready(self) -> str:
        return _wait_healthy(
            self.url, lambda: not _alive(self.pid), self.state_dir / LOG_FILE, None
        )

    def touch(self) -> None:
        """A run starts or ends: the idle time counts from now."""
        (self.state_dir / LAST_USED_FILE).touch()


def _read_state(state_dir: Path) -> KeptServer | None:
    try:
        state = json.loads((state_dir / STATE_FILE).read_text())
        return KeptServer(
            state_dir, state["url"], int(state["pid"]), state["identity"], float(state["started"])
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def running_kept_server(project: Path) -> KeptServer | None:
    """The project's kept server, when its watcher is alive (it may still be starting)."""
    from stages.common import process_identity

    server = _read_state(project / STATE_DIR)
    if server is None or not _alive(server.pid):
        return None
    same = server.identity is None or process_identity(server.pid) == server.identity
    return server if same else None


def kept_server(project: Path, idle: float) -> KeptServer:
    """The project's kept server, started now (not waited for) if none is running."""
    from stage_runtime.locks import file_lock
    from stages.common import process_identity

    state_dir = project / STATE_DIR
    with file_lock(state_dir / "lock", "find or start the kept Prefect server"):
        server = running_kept_server(project)
        if server is None:
            port = _free_port()
            (state_dir / LAST_USED_FILE).touch()
            with (state_dir / LOG_FILE).open("a") as log:
                watcher = subprocess.Popen(
                    [sys.executable, "-m", "flows.local_server", "keep", str(state_dir),
                     str(port), str(idle)],
                    cwd=Path(__file__).resolve().parents[1],
                    env=_server_env(),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # not ended by the terminal or the run
                )  # fmt: skip
            url = f"http://127.0.0.1:{port}/api"
            server = KeptServer(
                state_dir, url, watcher.pid, process_identity(watcher.pid), time.time()
            )
            state = {k: getattr(server, k) for k in ("url", "pid", "identity", "started")}
            tmp = state_dir / f".{STATE_FILE}.{os.getpid()}"
            tmp.write_text(json.dumps(state))
            tmp.replace(state_dir / STATE_FILE)
        server.touch()
        return server


def server_for_this_run(project: Path, keep: bool = True) -> LocalServer | KeptServer | None:
    """The server of a command-line run when PREFECT_API_URL names none (its URL is put in
    PREFECT_API_URL): the project's kept server, or a temporary one (`keep=False` or an idle
    time of 0). Call before Prefect is imported: the stop or last touch is registered first,
    so it runs after Prefect's own exit handlers (last in, first out), which send the last
    logs."""
    import atexit

    if os.environ.get("PREFECT_API_URL"):
        return None
    idle = idle_seconds()
    server: LocalServer | KeptServer
    if keep and idle > 0:
        server = kept_server(project, idle)
        atexit.register(server.touch)
    else:
        server = LocalServer()
        atexit.register(server.stop)
    os.environ["PREFECT_API_URL"] = server.url
    return server


def _active_runs(url: str) -> int:
    """Flow runs the server holds as pending or running (-1 when it does not answer)."""
    body = json.dumps({"flow_runs": {"state": {"type": {"any_": ACTIVE_STATES}}}}).encode()
    request = urllib.request.Request(
        f"{url}/flow_runs/count", data=body, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return int(json.loads(response.read()))
    except (OSError, ValueError):
        return -1


class _StopRequested(Exception):
    pass


def _stop_requested(signum: int, frame: Any) -> None:
    raise _StopRequested(signal.Signals(signum).name)


def _keep(state_dir: Path, port: int, idle: float) -> None:
    """The watcher: runs the server, stops it once idle and no run is active, or on SIGTERM."""
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, _stop_requested)
    url = f"http://127.0.0.1:{port}/api"
    server = subprocess.Popen(
        _server_command(port, ui=True), stdin=subprocess.DEVNULL, start_new_session=True
    )
    why = "stopped"
    try:
        # The idle time counts from when the server answers (a new database takes a while).
        while not _healthy(url) and server.poll() is None:
            time.sleep(0.2)
        (state_dir / LAST_USED_FILE).touch()
        while True:
            time.sleep(WATCH_INTERVAL_SECONDS)
            if server.poll() is not None:
                why = f"the server exited with status {server.returncode}"
                break
            last_used = (state_dir / LAST_USED_FILE).stat().st_mtime
            if time.time() - last_used > idle and _active_runs(url) <= 0:
                why = f"idle for {idle / 60:g} min"
                break
    except _StopRequested as stop:
        why = f"{stop} received"
    finally:
        _stop_group(server)
        if (kept := _read_state(state_dir)) is not None and kept.pid == os.getpid():
            (state_dir / STATE_FILE).unlink(missing_ok=True)
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        print(f"{stamp} kept server on {url}: {why}", flush=True)  # noqa: T201 - its log


def stop_kept(project: Path) -> str:
    """Stop the project's kept server; what happened, in one line."""
    server = running_kept_server(project)
    if server is None:
        return f"no kept Prefect server for {project}"
    os.kill(server.pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_SECONDS + 2
    while _alive(server.pid):
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.pid, signal.SIGKILL)
            break
        time.sleep(0.1)
    (server.state_dir / STATE_FILE).unlink(missing_ok=True)
    return f"stopped the kept Prefect server on {server.ui}"


def status_line(project: Path) -> tuple[str, bool]:
    """One line on the project's kept server; whether it answers."""
    server = running_kept_server(project)
    if server is None:
        return f"no kept Prefect server for {project}", False
    used = (server.state_dir / LAST_USED_FILE).stat().st_mtime
    idle_min = (time.time() - used) / 60
    answers = _healthy(server.url)
    state = "answers" if answers else "not answering"
    return f"kept Prefect server {server.ui}: {state}, last run {idle_min:.0f} min ago", answers


def _serve(port: str, ui: bool) -> None:
    """Become `prefect server start`, set to receive SIGTERM when the parent dies."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() == 1:  # the parent died before the signal was set
        sys.exit(1)
    os.environ["PREFECT_SERVER_UI_ENABLED"] = "true" if ui else "false"
    os.execv(
        sys.executable,
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
         "--port", port, "--no-services"],
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.local_server", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("status", "stop"):
        command = commands.add_parser(name)
        command.add_argument("--project", type=Path, default=Path.cwd())
    serve = commands.add_parser("serve")  # internal: the server process
    serve.add_argument("port")
    serve.add_argument("--ui", action="store_true")
    keep = commands.add_parser("keep")  # internal: the kept server's watcher
    keep.add_argument("state_dir", type=Path)
    keep.add_argument("port", type=int)
    keep.add_argument("idle", type=float)
    args = parser.parse_args(argv)
    if args.command == "serve":
        _serve(args.port, args.ui)
    if args.command == "keep":
        _keep(args.state_dir, args.port, args.idle)
        return 0
    if args.command == "stop":
        print(stop_kept(args.project.resolve()))  # noqa: T201 - the command's answer
        return 0
    line, answers = status_line(args.project.resolve())
    print(line)  # noqa: T201 - the command's answer
    return 0 if answers else 3


if __name__ == "__main__":
    sys.exit(main())
