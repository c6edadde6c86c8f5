"""The project's locks on shared git state, and `dvc exp save` from parallel worktrees.

`dvc exp save` in two worktrees of one repository at once races on refs they share
(refs/exps/exec/EXEC_BASELINE and EXEC_BRANCH): seen as "'NoneType' object is not
subscriptable", "Failed to set 'refs/exps/...'" and "File exists: .../EXEC_BASELINE.lock".
The stress test starts 2-4 saves at once, repeatedly, through the project's save_experiment.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from stage_runtime.locks import LockTimeoutError, file_lock, git_common_dir, shared_git_state
from tests.conftest import ROOT, run
from workspaces.experiments import apply_overrides, save_experiment

HOLD = """
import sys, time
from pathlib import Path
from stage_runtime.locks import file_lock
with file_lock(Path(sys.argv[1]), "test holder"):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""
# Repetitions of the stress test; the closing note's figure comes from EXP_SAVE_STRESS_REPS=50.
STRESS_REPS = int(os.environ.get("EXP_SAVE_STRESS_REPS", "8"))


def _holder(lock: Path, seconds: float) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(lock), str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_held_lock_makes_others_wait_then_names_its_holder(tmp_path: Path) -> None:
    lock = tmp_path / "shared.lock"
    holder = _holder(lock, 30)
    try:
        started = time.monotonic()
        with pytest.raises(LockTimeoutError, match=rf"held after 0.3 s by pid {holder.pid}"):
            with file_lock(lock, "test waiter", wait_seconds=0.3):
                pass
        assert time.monotonic() - started < 5
    finally:
        holder.kill()
        holder.wait()
    # The kernel dropped the dead holder's lock: no stale lock file to clean up.
    with file_lock(lock, "after the holder died", wait_seconds=1):
        pass


def test_the_lock_excludes_threads_of_one_process_too(tmp_path: Path) -> None:
    lock, inside, overlaps = tmp_path / "shared.lock", [], []

    def work() -> None:
        with file_lock(lock, "thread"):
            inside.append(1)
            overlaps.append(len(inside))
            time.sleep(0.05)
            inside.pop()

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert overlaps == [1, 1, 1, 1]


def test_worktrees_share_one_lock_file(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    run(["git", "init", "-q", "-b", "main"], repo)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty",
         "-m", "x"], repo)  # fmt: skip
    run(["git", "worktree", "add", "-q", "--detach", str(tmp_path / "wt"), "HEAD"], repo)
    assert git_common_dir(tmp_path / "wt") == git_common_dir(repo) == repo / ".git"
    with shared_git_state(repo, "outer"):
        with pytest.raises(LockTimeoutError):
            with shared_git_state(tmp_path / "wt", "inner", wait_seconds=0.2):
                pass


# --------------------------------------------------------------------------- stress


DVC_YAML = """
stages:
  echo_alpha:
    cmd: python -c "import yaml; print(yaml.safe_load(open('params.yaml'))['model'])" > alpha.txt
    params: [model.alpha]
    outs: [alpha.txt]
"""


def _exp_params(repo: Path, name: str) -> dict:
    refs = run(["git", "for-each-ref", "--format=%(refname)", "refs/exps/"], repo).stdout.split()
    (ref,) = [r for r in refs if r.endswith(f"/{name}")]
    return yaml.safe_load(run(["git", "show", f"{ref}:params.yaml"], repo).stdout)


@pytest.mark.slow
def test_parallel_exp_saves_in_worktrees_all_land_with_their_own_params(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}  # fmt: skip
    (repo / "params.yaml").write_bytes((ROOT / "params.yaml").read_bytes())
    (repo / "dvc.yaml").write_text(DVC_YAML)
    for cmd in (
        ["git", "init", "-q", "-b", "main"],
        ["dvc", "init", "-q"],
        ["dvc", "repro", "-q"],
        ["git", "add", "-A"],
        ["git", "commit", "-qm", "baseline"],
    ):
        run(cmd, repo, env)
    worktrees = []
    for i in range(4):
        wt = tmp_path / f"wt{i}"
        run(["git", "worktree", "add", "-q", "--detach", str(wt), "HEAD"], repo, env)
        run(["dvc", "cache", "dir", "--local", str(repo / ".dvc" / "cache")], wt, env)
        run(["dvc", "checkout", "-q"], wt, env)
        worktrees.append(wt)

    failures: list[str] = []
    saved = 0
    for rep in range(STRESS_REPS):
        at_once = worktrees[: 2 + rep % 3]  # 2, 3, 4, 2, ...
        names = [f"r{rep}-w{i}" for i in range(len(at_once))]
        for i, wt in enumerate(at_once):
            apply_overrides(wt, {"model.alpha": float(f"{rep}.{i + 1}")})
        start = threading.Barrier(len(at_once))

        def save(wt: Path, name: str, start: threading.Barrier) -> None:
            start.wait()
            try:
                save_experiment(wt, name, env)
            except Exception as exc:
                failures.append(f"{name}: {exc}")

        threads = [
            threading.Thread(target=save, args=(wt, name, start))
            for wt, name in zip(at_once, names, strict=True)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for i, name in enumerate(names):
            if not any(name in f for f in failures):
                assert _exp_params(repo, name)["model"]["alpha"] == float(f"{rep}.{i + 1}")
                saved += 1
    assert not failures, "\n".join(failures)
    assert saved == sum(2 + rep % 3 for rep in range(STRESS_REPS))
    # What a save sets up only for itself is gone again (DVC keeps EXEC_HEAD by design).
    leftover = run(["git", "for-each-ref", "--format=%(refname)", "refs/exps/exec"], repo).stdout
    assert leftover.split() in ([], ["refs/exps/exec/EXEC_HEAD"]), leftover
