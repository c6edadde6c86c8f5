"""The MLflow tracking server: runs and the model registry in PostgreSQL (database `mlflow`),
artifacts proxied (`--serve-artifacts`) to `s3://taxi-mlflow/artifacts` on SeaweedFS, so
clients need only MLFLOW_TRACKING_URI (no S3 credentials) to log and load artifacts.

The backend store URI holds a password: it is passed as MLFLOW_BACKEND_STORE_URI (the
environment variable of `--backend-store-uri`), not on the command line `ps` shows.
`--allowed-hosts` names the Host headers the server answers (127.0.0.1 and localhost on
its port, plus SERVICES_MLFLOW_ALLOWED_HOSTS): add the name others use when the server is
exposed beyond this machine (with authentication in front of it).
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

from services import postgres
from services.config import HOST, MLFLOW_BUCKET, MLFLOW_PREFIX, S3_REGION, Config
from services.credentials import Credentials
from services.process import ensure_process, stop_service

NAME = "mlflow"
LABEL = "MLflow server"
STOP_GRACE = 15.0


def argv(cfg: Config) -> list[str]:
    port = cfg.ports["mlflow"]
    hosts = [f"{HOST}:{port}", f"localhost:{port}", *cfg.allowed_hosts]
    return [
        sys.executable, "-m", "mlflow", "server",
        "--artifacts-destination", f"s3://{MLFLOW_BUCKET}/{MLFLOW_PREFIX}", "--serve-artifacts",
        "--host", HOST, "--port", str(port), "--workers", str(cfg.mlflow_workers),
        "--allowed-hosts", ",".join(hosts),
    ]  # fmt: skip


def environment(cfg: Config, creds: Credentials) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AWS_"))}
    env.update(
        # SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3; the driver here is psycopg2.
        MLFLOW_BACKEND_STORE_URI=postgres.uri(cfg, creds, "mlflow", driver="postgresql+psycopg2"),
        MLFLOW_S3_ENDPOINT_URL=cfg.s3_endpoint,
        AWS_ACCESS_KEY_ID=creds.s3_access_key,
        AWS_SECRET_ACCESS_KEY=creds.s3_secret_key,
        AWS_DEFAULT_REGION=S3_REGION,
        # GenAI job execution (a huey consumer and a /dev/shm queue per start): not used here.
        MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false",
    )
    return env


def healthy(cfg: Config) -> bool:
    try:
        with urllib.request.urlopen(f"{cfg.mlflow_url}/health", timeout=2) as resp:
            return resp.status == 200
    except (OSError, urllib.error.URLError):
        return False


def start(cfg: Config, creds: Credentials) -> str:
    return ensure_process(
        name=NAME,
        label=LABEL,
        argv=argv(cfg),
        env=environment(cfg, creds),
        cwd=cfg.root,
        ports={"SERVICES_MLFLOW_PORT": cfg.ports["mlflow"]},
        ready=lambda: healthy(cfg),
        what=f"answering on {cfg.mlflow_url}/health",
        timeout=cfg.start_timeout,
        pids=cfg.pids,
        log=cfg.log(NAME),
    )


def stop(cfg: Config) -> str:
    return stop_service(cfg.pids, NAME, STOP_GRACE)
