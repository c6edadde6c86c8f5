"""Locks the project owns on state that DVC and git share without a lock of their own.

Worktrees of one repository share its refs: `dvc exp save` in two worktrees at once clobbers
the experiment refs they both write (`refs/exps/exec/EXEC_BASELINE`, `EXEC_BRANCH`, ...;
DVC's own rwlock lives in each worktree's `.dvc/tmp` and so never sees the other). The lock
here is a `flock` on a file in the repository's common git directory: every worktree and
every process of the machine sees the same one, and the kernel drops it when its holder dies
(no stale lock after a SIGKILL).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

# How long a caller waits for a lock before giving up with a message naming its holder.
DEFAULT_WAIT_SECONDS = 600.0
_POLL_SECONDS = 0.05


class LockTimeoutError(RuntimeError):
    """The lock stayed held for longer than the caller would wait."""


def git_common_dir(repo: Path) -> Path:
    """The `.git` directory that every worktree of `repo` shares."""
    out = subprocess.run(
        ["git", "rev-parse", "--path-format=absolute", "--git-common-dir"],
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
    )
    return Path(out.stdout.strip())


@contextlib.contextmanager
def file_lock(
    path: Path, purpose: str, wait_seconds: float = DEFAULT_WAIT_SECONDS
) -> Iterator[None]:
    """Hold an exclusive `flock` on `path` for the block; wait up to `wait_seconds` for it.

    The holder writes its pid and purpose into the file, so a caller that gives up can say
    who holds it.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + wait_seconds
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = os.pread(fd, 200, 0).decode(errors="replace").strip()
                    waited = f" after {wait_seconds:g} s" if wait_seconds else ""
                    raise LockTimeoutError(
                        f"{path}: held{waited} by {holder or 'another process'} "
                        f"(wanted for: {purpose})"
                    ) from None
                time.sleep(_POLL_SECONDS)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}: {purpose}\n".encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def shared_git_state(repo: Path, purpose: str, wait_seconds: float = DEFAULT_WAIT_SECONDS):
    """The lock on what all worktrees of `repo` share: experiment refs, the worktree list.

    Held around `dvc exp save` and `git worktree add/remove`; the work between (`dvc repro`
    in each worktree) stays parallel.
    """
    return file_lock(git_common_dir(repo) / "taxi-pipeline-shared.lock", purpose, wait_seconds)


class WorkspaceBusyError(LockTimeoutError):
    """Another pipeline run holds this workspace."""


@contextlib.contextmanager
def workspace_lock(workspace: Path, purpose: str) -> Iterator[None]:
    """One pipeline run per workspace at a time; a second one fails at once, naming the first.

    Two runs in one workspace would edit one params.yaml and one dvc.lock: one run's
    experiment would be saved with the other's params. Parallel runs use worktrees.
    """
    path = workspace / ".dvc" / "tmp" / "taxi-pipeline-run.lock"
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(file_lock(path, purpose, wait_seconds=0))
        except LockTimeoutError as exc:
            raise WorkspaceBusyError(
                f"workspace {workspace} is in use by another pipeline run: {exc}"
            ) from None
        yield
