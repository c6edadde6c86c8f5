"""Point a DVC repository at the stack's S3 bucket: a remote `team`, made the default, in the
repository's *local* config (`.dvc/config.local`, which git never sees), with the endpoint and
the credentials. The same as

    dvc remote add --local -d -f team s3://taxi-dvc/dvc
    dvc remote modify --local team endpointurl http://127.0.0.1:18333
    dvc remote modify --local team region us-east-1
    dvc remote modify --local team access_key_id ...
    dvc remote modify --local team secret_access_key ...

run through DVC's own command line in this process, so the secret never appears in a
process's arguments.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

from services.config import S3_REGION, Config
from services.credentials import Credentials

REMOTE = "team"
# An unreachable endpoint fails a push/pull after a few connection attempts, not minutes.
CONNECT_TIMEOUT = 5
READ_TIMEOUT = 60


class DvcRemoteError(RuntimeError):
    """DVC refused a configuration command; the message is its last line."""


def _dvc(repo: Path, *args: str) -> None:
    from dvc.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(["--cd", str(repo), *args])
    if status != 0:
        lines = (err.getvalue() or out.getvalue()).strip().splitlines() or ["(no output)"]
        raise DvcRemoteError(f"dvc {args[0]} {args[1]} failed in {repo}: {lines[-1]}")


def configure(repo: Path, cfg: Config, creds: Credentials) -> str:
    """Make `team` (the stack's bucket) the default remote of the DVC repo at `repo`."""
    repo = repo.resolve()
    if not (repo / ".dvc").is_dir():
        raise DvcRemoteError(f"{repo} is not a DVC repository (no .dvc folder)")
    _dvc(repo, "remote", "add", "--local", "-d", "-f", REMOTE, cfg.dvc_remote_url)
    settings = {
        "endpointurl": cfg.s3_endpoint,
        "region": S3_REGION,
        "connect_timeout": str(CONNECT_TIMEOUT),
        "read_timeout": str(READ_TIMEOUT),
        "access_key_id": creds.s3_access_key,
        "secret_access_key": creds.s3_secret_key,
    }
    for option, value in settings.items():
        _dvc(repo, "remote", "modify", "--local", REMOTE, option, value)
    return f"{REMOTE} -> {cfg.dvc_remote_url} at {cfg.s3_endpoint} (in {repo}/.dvc/config.local)"
