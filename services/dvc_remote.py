"""Point a DVC repository at the stack's S3 bucket: a remote `team`, made the default, in the
repository's *local* config (`.dvc/config.local`, which git never sees), with the endpoint and
the credentials. The same as

    dvc remote add --local -d -f team s3://taxi-dvc/dvc
    dvc remote modify --local team endpointurl http://127.0.0.1:18333
    dvc remote modify --local team region us-east-1
    dvc remote modify --local team access_key_id ...
    dvc remote modify --local team secret_access_key ...

run through DVC's own command line in this process, so the secret never appears in a
process's arguments. The values come from the environment when `.services/env` was sourced
(a clone on another machine, given that file), else from this project's running stack.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Mapping
from dataclasses import dataclass
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


@dataclass(frozen=True)
class RemoteSettings:
    url: str
    endpoint: str
    access_key: str
    secret_key: str
    region: str = S3_REGION

    @classmethod
    def of_stack(cls, cfg: Config, creds: Credentials) -> RemoteSettings:
        """The bucket of the stack whose state folder is cfg.root."""
        return cls(cfg.dvc_remote_url, cfg.s3_endpoint, creds.s3_access_key, creds.s3_secret_key)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> RemoteSettings | None:
        """From a sourced `.services/env` (a clone on another machine), when all is there."""
        names = ("TAXI_DVC_REMOTE", "TAXI_DVC_REMOTE_ENDPOINT")
        keys = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
        if not all(env.get(n) for n in (*names, *keys)):
            return None
        return cls(
            env["TAXI_DVC_REMOTE"],
            env["TAXI_DVC_REMOTE_ENDPOINT"],
            env["AWS_ACCESS_KEY_ID"],
            env["AWS_SECRET_ACCESS_KEY"],
            env.get("AWS_DEFAULT_REGION") or S3_REGION,
        )


def configure(repo: Path, remote: RemoteSettings) -> str:
    """Make `team` (the stack's bucket) the default remote of the DVC repo at `repo`."""
    repo = repo.resolve()
    if not (repo / ".dvc").is_dir():
        raise DvcRemoteError(f"{repo} is not a DVC repository (no .dvc folder)")
    _dvc(repo, "remote", "add", "--local", "-d", "-f", REMOTE, remote.url)
    settings = {
        "endpointurl": remote.endpoint,
        "region": remote.region,
        "connect_timeout": str(CONNECT_TIMEOUT),
        "read_timeout": str(READ_TIMEOUT),
        "access_key_id": remote.access_key,
        "secret_access_key": remote.secret_key,
    }
    for option, value in settings.items():
        _dvc(repo, "remote", "modify", "--local", REMOTE, option, value)
    return f"{REMOTE} -> {remote.url} at {remote.endpoint} (in {repo}/.dvc/config.local)"
