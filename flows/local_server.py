"""A Prefect server for one command-line run, when no PREFECT_API_URL names a running one.

Prefect's own ephemeral mode starts its server as a child in the caller's process group, so
Ctrl-C in a terminal kills the server first and the flow then spends minutes retrying to
report its end to it; a SIGKILLed caller leaves that server running. This one is
`prefect server start --no-services` (no UI, no background services, the same database as
a later `prefect server start`, so the runs show in its UI), started in a session of its own
(a terminal's Ctrl-C reaches only the flow, which stops its stage, reports and exits) and
bound to its parent's life (Linux PR_SET_PDEATHSIG: it ends even when the caller is killed).

    python -m flows.local_server <port>   # what the parent runs: sets the death signal, execs
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

STARTUP_TIMEOUT_ENV = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"
DEFAULT_STARTUP_TIMEOUT = 120.0
STOP_GRACE_SECONDS = 10.0
_PR_SET_PDEATHSIG = 1


class ServerStartError(RuntimeError):
    """The temporary server did not answer in time; the message holds its log's tail."""


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


class LocalServer:
    """A Prefect server that lives as long as this object (and this process)."""

    def __init__(self) -> None:
        port = _free_port()
        self.url = f"http://127.0.0.1:{port}/api"
        env = {
            **os.environ,
            "PREFECT_SERVER_UI_ENABLED": "false",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        }
        env.pop("PREFECT_API_URL", None)
        self._log = tempfile.TemporaryFile(mode="w+")
        self._process = subprocess.Popen(
            [sys.executable, "-m", "flows.local_server", str(port)],
            cwd=Path(__file__).resolve().parents[1],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self) -> str:
        """Block until the server answers; its API URL. ServerStartError after the timeout."""
        timeout = float(os.environ.get(STARTUP_TIMEOUT_ENV) or DEFAULT_STARTUP_TIMEOUT)
        deadline = time.monotonic() + timeout
        while not _healthy(self.url):
            if self._process.poll() is not None or time.monotonic() > deadline:
                self._log.seek(0)
                tail = "".join(self._log.readlines()[-15:])
                raise ServerStartError(
                    f"the temporary Prefect server on {self.url} did not answer within "
                    f"{timeout:g} s ({STARTUP_TIMEOUT_ENV}):\n{tail}"
                )
            time.sleep(0.05)
        return self.url

    def stop(self) -> None:
        """SIGTERM to its process group, a bounded wait, then SIGKILL."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._process.pid, signal.SIGTERM)
        try:
            self._process.wait(timeout=STOP_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._process.pid, signal.SIGKILL)
            self._process.wait()
        self._log.close()


def _serve(port: str) -> None:
    """Become `prefect server start`, set to receive SIGTERM when the parent dies."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() == 1:  # the parent died before the signal was set
        sys.exit(1)
    os.execv(
        sys.executable,
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
         "--port", port, "--no-services"],
    )  # fmt: skip


if __name__ == "__main__":
    _serve(sys.argv[1])


def server_for_this_run() -> LocalServer | None:
    """A temporary server for a command-line run when PREFECT_API_URL names none; its URL is
    put in PREFECT_API_URL. Call before Prefect is imported: the stop is registered first, so
    it runs after Prefect's own exit handlers (last in, first out), which send the last logs."""
    import atexit

    if os.environ.get("PREFECT_API_URL"):
        return None
    server = LocalServer()
    os.environ["PREFECT_API_URL"] = server.url
    atexit.register(server.stop)
    return server
