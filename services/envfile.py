"""What a client of the stack needs in its environment: written to `.services/env` (mode
0600, `source .services/env`), and given to the Prefect workers so the flows they run use the
same servers. Nothing is configured anywhere else (no ~/.aws, no Prefect profile)."""

from __future__ import annotations

import shlex

from services.config import S3_REGION, Config
from services.credentials import Credentials
from services.process import write_private


def client_environment(cfg: Config, creds: Credentials) -> dict[str, str]:
    """The variables, in the order the file lists them."""
    return {
        "MLFLOW_TRACKING_URI": cfg.mlflow_url,
        "PREFECT_API_URL": cfg.prefect_api_url,
        "MLFLOW_S3_ENDPOINT_URL": cfg.s3_endpoint,
        "AWS_ACCESS_KEY_ID": creds.s3_access_key,
        "AWS_SECRET_ACCESS_KEY": creds.s3_secret_key,
        "AWS_DEFAULT_REGION": S3_REGION,
        "TAXI_DVC_REMOTE": cfg.dvc_remote_url,
        "TAXI_DVC_REMOTE_ENDPOINT": cfg.s3_endpoint,
    }


def render(cfg: Config, creds: Credentials) -> str:
    lines = [
        "# Team services of this project (python -m services up): source this file.",
        "# Generated; holds credentials: keep it private (mode 0600), never commit it.",
    ]
    lines += [f"export {k}={shlex.quote(v)}" for k, v in client_environment(cfg, creds).items()]
    return "\n".join(lines) + "\n"


def write(cfg: Config, creds: Credentials) -> bool:
    """Write the env file when its content differs; whether it was (re)written."""
    text = render(cfg, creds)
    path = cfg.env_file
    if path.is_file() and path.read_text() == text:
        path.chmod(0o600)
        return False
    write_private(path, text)
    return True
