"""The DVC remote of a workspace: which one it uses, and pushing its outputs there.

Alone, a workspace has no remote and nothing is pushed. In team mode (`source .services/env`)
a workspace without a remote of its own is pointed at the team's bucket from the environment
(services.dvc_remote), so every clone and every worktree a flow makes pushes to one place.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from pathlib import Path


class RemoteError(RuntimeError):
    """DVC could not read or write the remote configuration."""


def default_remote(repo: Path) -> str | None:
    """The name of the workspace's default DVC remote, or None."""
    proc = subprocess.run(
        ["dvc", "remote", "default"], cwd=repo, capture_output=True, text=True, check=False
    )
    name = proc.stdout.strip()
    return name if proc.returncode == 0 and name else None


def team_remote_in(environ: Mapping[str, str]) -> bool:
    """Whether the environment names the team's DVC remote (`source .services/env`)."""
    from services.dvc_remote import RemoteSettings

    return RemoteSettings.from_env(environ) is not None


def ensure_remote(repo: Path) -> str | None:
    """The default remote; in team mode, the team's bucket when the workspace has none."""
    name = default_remote(repo)
    if name is not None:
        return name
    from services.dvc_remote import REMOTE, RemoteSettings, configure

    settings = RemoteSettings.from_env(os.environ)
    if settings is None:
        return None
    configure(repo, settings)
    return REMOTE


def fetch_revision(repo: Path, rev: str, remote: str) -> int:
    """Bring the DVC objects that commit `rev` records from `remote` into the cache; how many.

    (`dvc fetch` has no option for one commit; DVC's Python API has.)"""
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    try:
        with Repo(str(repo)) as dvc_repo:
            return dvc_repo.fetch(revs=[rev], remote=remote, workspace=False)
    except DvcException as exc:
        raise RemoteError(f"fetching the data of {rev[:10]} from remote {remote}: {exc}") from None
