"""workspaces/dvc_worker.py through workspaces.repro.DvcWorker: a flow run's DVC commands in one
DVC process, each as DVC's own command line would run it."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.conftest import dvc_project, running
from workspaces import repro

# The stage's parent is the process DVC runs in; its stdin; a variable of the request's env.
SHOW = 'echo "dvc=$PPID stdin=$(readlink /proc/$$/fd/0) answer=$ANSWER"'
STAGES = {
    "show": SHOW,
    "fail": "echo refused; exit 3",
    "partial": "printf 'no newline at the end'",
    "slow": "echo started; sleep 60",
}


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return dvc_project(tmp_path / "project", STAGES)


def repro_line(worker: repro.DvcWorker, stage: str, env: dict[str, str], timeout: float = 120):
    seen: list[str] = []
    result = worker.run(["repro", "--single-item", stage], env, timeout, seen.append)
    assert seen == result.lines
    return result


def shown(result: repro.CommandResult) -> dict[str, str]:
    line = next(line for line in result.lines if line.startswith("dvc="))
    return dict(item.split("=", 1) for item in line.split())


def test_commands_share_one_dvc_process_each_with_its_own_environment(project: Path) -> None:
    base = {k: v for k, v in os.environ.items() if k != "ANSWER"}
    with repro.dvc_process(project) as worker:
        first = shown(repro_line(worker, "show", {**base, "ANSWER": "42"}))
        second = shown(repro_line(worker, "show", base))
    assert first["answer"] == "42" and second["answer"] == ""
    assert first["dvc"] == second["dvc"]  # one DVC process for both
    assert first["stdin"] == "/dev/null"  # a stage cannot read the next request
    assert not running(int(first["dvc"]))  # closed with the context


def test_a_failed_command_and_a_partial_line_leave_the_process_answering(project: Path) -> None:
    with repro.dvc_process(project) as worker:
        failed = repro_line(worker, "fail", dict(os.environ))
        assert failed.returncode == 255 and "refused" in failed.lines
        with pytest.raises(repro.StageError, match="refused|exit 255"):
            repro.classify("fail", failed, 120)
        # Quiet: the stage's unfinished line is the last output before the end of the answer.
        quiet = worker.run(["repro", "-q", "partial"], dict(os.environ), 120, lambda _: None)
        assert quiet.returncode == 0 and quiet.lines == ["no newline at the end"]
        bad = worker.run(["repro", "--no-such-option"], dict(os.environ), 120, lambda _: None)
        assert bad.returncode == 254  # DVC's own status for a bad command line
        assert repro_line(worker, "show", dict(os.environ)).returncode == 0


def test_after_a_timeout_the_next_command_gets_a_new_process(project: Path) -> None:
    with repro.dvc_process(project) as worker:
        before = shown(repro_line(worker, "show", dict(os.environ)))["dvc"]
        started = time.monotonic()
        slow = repro_line(worker, "slow", dict(os.environ), timeout=8.0)
        assert slow.timed_out and "started" in slow.lines
        assert time.monotonic() - started < 8 + 10  # the timeout and the grace at most
        assert not running(int(before))
        after = shown(repro_line(worker, "show", dict(os.environ)))["dvc"]
    assert after != before
