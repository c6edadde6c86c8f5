"""workspaces/guard.py: a stage's process group does not outlive the flow that started it."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, dvc_project, running

PARENT = """
import os, sys
from pathlib import Path
from workspaces.repro import run_dvc
run_dvc(["repro", "--single-item", "slow"], Path({project!r}), os.environ, 600, print)
"""


@pytest.mark.slow
def test_the_group_stops_when_its_parent_is_killed(tmp_path: Path) -> None:
    pid_file = tmp_path / "grandchild.pid"
    project = dvc_project(tmp_path / "project", {"slow": f"sleep 300 & echo $! > {pid_file}; wait"})
    parent = subprocess.Popen([sys.executable, "-c", PARENT.format(project=str(project))], cwd=ROOT)
    deadline = time.monotonic() + 20
    while not (pid_file.is_file() and pid_file.read_text().strip()):
        assert time.monotonic() < deadline and parent.poll() is None
        time.sleep(0.05)
    grandchild = int(pid_file.read_text())
    parent.kill()  # SIGKILL: the flow's process dies without any cleanup of its own
    parent.wait()
    deadline = time.monotonic() + 15  # SIGINT, then SIGKILL after the 10 s grace at most
    while running(grandchild):
        assert time.monotonic() < deadline, "the stage outlived the killed flow"
        time.sleep(0.1)
