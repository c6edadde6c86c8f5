"""The Prefect servers of command-line runs (flows/local_server.py): the temporary one answers,
stops, and does not outlive a caller killed outright; the kept one is found again, waits for
active runs, stops when idle, and ends with its watcher."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import ROOT, running

HOLDER = """
import sys
from flows.local_server import LocalServer
server = LocalServer()
print(server.wait_ready(), server._process.pid, flush=True)
sys.stdin.readline()
"""


@pytest.mark.slow
def test_the_server_dies_with_a_killed_caller(tmp_path: Path) -> None:
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home")}
    env.pop("PREFECT_API_URL", None)
    caller = subprocess.Popen(
        [sys.executable, "-c", HOLDER],
        cwd=ROOT,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    url, pid = caller.stdout.readline().split()
    with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
        assert response.status == 200
    assert running(int(pid))
    caller.send_signal(signal.SIGKILL)
    caller.wait()
    deadline = time.monotonic() + 30
    while running(int(pid)):
        assert time.monotonic() < deadline, "the server outlived its killed caller"
        time.sleep(0.2)


def _request(url: str, body: dict | None = None) -> object:
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json"}
    with urllib.request.urlopen(urllib.request.Request(url, data, headers), timeout=10) as r:
        return json.loads(r.read() or b"null")


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if entry.name.isdigit() and int(stat[stat.rindex(")") + 2 :].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def _wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


@pytest.mark.slow
def test_a_kept_server_waits_for_an_active_run_then_stops_when_idle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Idle means no run started or ended for the idle time AND none pending or running in
    the server: a flow run left RUNNING keeps it up; once it completes, the server stops."""
    from flows import local_server

    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect-home"))
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    project = tmp_path / "project"
    project.mkdir()
    idle = 3.0
    server = local_server.kept_server(project, idle)
    try:
        server.wait_ready()
        again = local_server.kept_server(project, idle)
        assert again == server  # found, not started twice
        flow = _request(f"{server.url}/flows/", {"name": "kept-server-test"})
        run = _request(
            f"{server.url}/flow_runs/",
            {"flow_id": flow["id"], "state": {"type": "RUNNING", "name": "Running"}},
        )
        time.sleep(idle + 2 * local_server.WATCH_INTERVAL_SECONDS)
        assert local_server.running_kept_server(project) == server, "stopped during a run"
        _request(
            f"{server.url}/flow_runs/{run['id']}/set_state",
            {"state": {"type": "COMPLETED", "name": "Completed"}, "force": True},
        )
        _wait_until(
            lambda: local_server.running_kept_server(project) is None,
            idle + 3 * local_server.WATCH_INTERVAL_SECONDS + local_server.STOP_GRACE_SECONDS,
            "the idle server to stop",
        )
        assert not (project / local_server.STATE_DIR / local_server.STATE_FILE).exists()
        assert "idle for" in (project / local_server.STATE_DIR / local_server.LOG_FILE).read_text()
    finally:
        local_server.stop_kept(project)


@pytest.mark.slow
def test_a_kept_server_ends_with_its_killed_watcher(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows import local_server

    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect-home"))
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    server = local_server.kept_server(tmp_path, 600)
    try:
        server.wait_ready()
        (prefect,) = _children(server.pid)
        os.kill(server.pid, signal.SIGKILL)
        _wait_until(lambda: not running(prefect), 30, "the server to end with its watcher")
        assert local_server.running_kept_server(tmp_path) is None
        # The next run starts a fresh one over the stale state file.
        fresh = local_server.kept_server(tmp_path, 600)
        assert fresh.pid != server.pid and fresh.wait_ready() == fresh.url
    finally:
        assert "stopped" in local_server.stop_kept(tmp_path)


@pytest.mark.parametrize("text", ["soon", "-1", "inf", "nan"])
def test_a_bad_idle_time_is_refused_naming_the_variable(text: str) -> None:
    from flows.local_server import IDLE_ENV, idle_seconds

    with pytest.raises(SystemExit, match=IDLE_ENV):
        idle_seconds({IDLE_ENV: text})


def test_idle_time_default_and_off() -> None:
    from flows.local_server import DEFAULT_IDLE_MINUTES, IDLE_ENV, idle_seconds

    assert idle_seconds({}) == DEFAULT_IDLE_MINUTES * 60
    assert idle_seconds({IDLE_ENV: "0"}) == 0
    assert idle_seconds({IDLE_ENV: "1.5"}) == 90
