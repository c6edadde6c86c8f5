"""Point a DVC repository at the stack's S3 bucket: a remote `team`, made the default, in the
repository's *local* config (`.dvc/config.local`, which git never sees), with the endpoint and
the credentials. The same as

    dvc remote add --local -d -f team s3://taxi-dvc/dvc
    dvc remote modify --local team endpointurl http://127.0.0.1:18333
    dvc remote modify --local team region us-east-1
    dvc remote modify --local team access_key_id ...
    dvc remote modify --local team secret_access_key ...

written through DVC's config API in this process (validated by DVC's schema), so the secret
never appears in a process's arguments and is never parsed as an option (a generated key may
start with "-"). The values come from the environment when `.services/env` was sourced
(a clone on another machine, given that file), else from this project's running stack.
"""

from __future__ import annotations

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
    """The folder is no DVC repository, or DVC refused the remote's settings."""


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
    settings = {
        "url": remote.url,
        "endpointurl": remote.endpoint,
        "region": remote.region,
        "connect_timeout": CONNECT_TIMEOUT,
        "read_timeout": READ_TIMEOUT,
        "access_key_id": remote.access_key,
        "secret_access_key": remote.secret_key,
    }
    # DVC's config API, not its command line: a value such as a key starting with "-" is
    # data here, never an option, and DVC validates the section as `dvc remote modify` does.
    from dvc.config import Config as DvcConfig
    from dvc.config import ConfigError

    try:
        with DvcConfig(dvc_dir=str(repo / ".dvc")).edit("local") as local:
            local["remote"][REMOTE] = settings
            local["core"]["remote"] = REMOTE
    except ConfigError as exc:
        raise DvcRemoteError(f"DVC refused remote {REMOTE} in {repo}: {exc}") from None
    return f"{REMOTE} -> {remote.url} at {remote.endpoint} (in {repo}/.dvc/config.local)"
