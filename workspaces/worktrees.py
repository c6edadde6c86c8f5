"""A git worktree of a commit that shares the repository's DVC cache: the isolated workspace
every parallel or historical run uses (compare's param sets, lineage's reproduce).

DVC cannot run two stages of one workspace at once, and a run at an old commit must not touch
the user's workspace; a worktree costs a checkout of the code and links from the shared cache,
not a copy of the data.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from stage_runtime.locks import shared_git_state


class WorkspaceError(RuntimeError):
    """A git or DVC command setting up a worktree failed; the message holds its output."""


def run(cmd: list[str], cwd: Path) -> str:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise WorkspaceError(f"{' '.join(cmd)} failed in {cwd}:\n{proc.stdout}{proc.stderr}")
    return proc.stdout


def git_file(repo: Path, rev: str, path: str) -> str | None:
    """A file as commit or ref `rev` of `repo` holds it (`git show rev:path`); None when the
    commit has no such file (or there is no such rev)."""
    proc = subprocess.run(
        ["git", "show", f"{rev}:{path}"], cwd=repo, capture_output=True, text=True, check=False
    )
    return proc.stdout if proc.returncode == 0 else None


def dvc_cache_dir(repo: Path) -> Path:
    """The DVC cache `repo` uses (its configured `cache.dir`, else `.dvc/cache`)."""
    proc = subprocess.run(
        ["dvc", "cache", "dir"], cwd=repo, capture_output=True, text=True, check=False
    )
    path = proc.stdout.strip()
    return Path(path).resolve() if proc.returncode == 0 and path else repo / ".dvc" / "cache"


@contextlib.contextmanager
def worktree(
    repo: Path,
    commit: str = "HEAD",
    *,
    checkout: bool = True,
    parent: Path | None = None,
    prefix: str = "worktree-",
) -> Iterator[Path]:
    """A detached worktree of `commit` on `repo`'s DVC cache; removed when the block ends.

    `checkout`: the commit's DVC outputs are linked in from the cache (those it holds), so
    unchanged stages are skipped, not rerun.
    """
    repo = repo.resolve()
    cache = dvc_cache_dir(repo)
    base = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    path = base / "repo"
    with shared_git_state(repo, f"git worktree add {path}"):
        run(["git", "worktree", "add", "--detach", str(path), commit], repo)
    try:
        # The repository's own local settings (its DVC remote and credentials) apply here too.
        local_config = repo / ".dvc" / "config.local"
        if local_config.is_file():
            shutil.copyfile(local_config, path / ".dvc" / "config.local")
        run(["dvc", "cache", "dir", "--local", str(cache)], path)
        if checkout:
            run(["dvc", "checkout", "--allow-missing", "--quiet"], path)
        yield path
    finally:
        with shared_git_state(repo, f"git worktree remove {path}"):
            subprocess.run(
                ["git", "worktree", "remove", "--force", str(path)],
                cwd=repo,
                capture_output=True,
                check=False,
            )
        shutil.rmtree(base, ignore_errors=True)
