"""Where the services live and which ports they use: read from the environment, once, by
`Config.from_env`. Every path is under one folder (`.services/` in the project, or
`SERVICES_DIR`), so tests run a whole stack in a temporary folder.

The defaults avoid the usual ports (PostgreSQL 5432, MLflow 5000, Prefect 4200, SeaweedFS
S3 8333 and its 9333/8080/8888 internals) so a developer's own services keep theirs.
"""

from __future__ import annotations

import os
import random
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
DVC_BUCKET = "taxi-dvc"
MLFLOW_BUCKET = "taxi-mlflow"
DVC_PREFIX = "dvc"
MLFLOW_PREFIX = "artifacts"
WORK_POOL = "taxi-process"
S3_REGION = "us-east-1"

# key: (environment variable, default). The gRPC ports SeaweedFS would derive (+10000) are
# set explicitly, so that every port it opens is known and checked before it starts.
PORTS: dict[str, tuple[str, int]] = {
    "postgres": ("SERVICES_PG_PORT", 15432),
    "s3": ("SERVICES_S3_PORT", 18333),
    "mlflow": ("SERVICES_MLFLOW_PORT", 15000),
    "prefect": ("SERVICES_PREFECT_PORT", 14200),
    "weed_master": ("SERVICES_WEED_MASTER_PORT", 19333),
    "weed_volume": ("SERVICES_WEED_VOLUME_PORT", 18080),
    "weed_filer": ("SERVICES_WEED_FILER_PORT", 18888),
    "weed_master_grpc": ("SERVICES_WEED_MASTER_GRPC_PORT", 29333),
    "weed_volume_grpc": ("SERVICES_WEED_VOLUME_GRPC_PORT", 28080),
    "weed_filer_grpc": ("SERVICES_WEED_FILER_GRPC_PORT", 28888),
    "s3_grpc": ("SERVICES_S3_GRPC_PORT", 28333),
}


class ConfigError(ValueError):
    """A setting that cannot be used; the message names the variable."""


def _int_setting(env: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a whole number") from None
    if not low <= value <= high:
        raise ConfigError(f"{name}={value} is outside {low}..{high}")
    return value


@dataclass(frozen=True)
class Config:
    """Every setting of one stack of services."""

    root: Path  # the state folder (.services)
    ports: dict[str, int]
    workers: int
    mlflow_workers: int
    start_timeout: float
    allowed_hosts: tuple[str, ...]
    worker_prefix: str
    worker_poll_seconds: int

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Config:
        """The settings from `env` (default os.environ); ConfigError names a bad variable."""
        env = os.environ if env is None else env
        root = Path(env.get("SERVICES_DIR") or PROJECT_ROOT / ".services").resolve()
        ports = {
            key: _int_setting(env, name, default, 1024, 65535)
            for key, (name, default) in PORTS.items()
        }
        seen: dict[int, str] = {}
        for key, port in ports.items():
            if port in seen:
                raise ConfigError(
                    f"{PORTS[key][0]} and {PORTS[seen[port]][0]} are both {port}: "
                    "every service needs its own port"
                )
            seen[port] = key
        extra_hosts = tuple(
            h.strip() for h in env.get("SERVICES_MLFLOW_ALLOWED_HOSTS", "").split(",") if h.strip()
        )
        return cls(
            root=root,
            ports=ports,
            workers=_int_setting(env, "SERVICES_WORKERS", 2, 0, 16),
            mlflow_workers=_int_setting(env, "SERVICES_MLFLOW_WORKERS", 2, 1, 16),
            start_timeout=float(_int_setting(env, "SERVICES_START_TIMEOUT", 180, 5, 3600)),
            allowed_hosts=extra_hosts,
            worker_prefix=env.get("SERVICES_WORKER_PREFIX") or socket.gethostname(),
            worker_poll_seconds=_int_setting(env, "SERVICES_WORKER_POLL_SECONDS", 5, 1, 600),
        )

    # ---- folders and files under root
    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def pids(self) -> Path:
        return self.root / "pids"

    def log(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    @property
    def env_file(self) -> Path:
        return self.root / "env"

    @property
    def credentials_file(self) -> Path:
        return self.root / "credentials.json"

    # ---- addresses
    @property
    def s3_endpoint(self) -> str:
        return f"http://{HOST}:{self.ports['s3']}"

    @property
    def mlflow_url(self) -> str:
        return f"http://{HOST}:{self.ports['mlflow']}"

    @property
    def prefect_api_url(self) -> str:
        return f"http://{HOST}:{self.ports['prefect']}/api"

    @property
    def dvc_remote_url(self) -> str:
        return f"s3://{DVC_BUCKET}/{DVC_PREFIX}"

    def worker_names(self) -> list[str]:
        return [f"{self.worker_prefix}-worker-{i}" for i in range(1, self.workers + 1)]

    def relative(self, path: Path) -> str:
        """`path` as a person reads it: relative to the working directory when inside it."""
        try:
            return str(path.relative_to(Path.cwd()))
        except ValueError:
            return str(path)


def can_listen(port: int) -> bool:
    """Whether a server could listen on the port now (as servers do: SO_REUSEADDR)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_ports(count: int) -> list[int]:
    """Free ports below the kernel's ephemeral range, which outgoing connections (the
    services' own clients among them) would otherwise share with the servers."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    # From the OS's entropy: a generator seeded by the process id gave every call of one
    # process the same ports, so a second stack, or a retry after a port was taken, chose
    # the ports the first one had.
    rng = random.SystemRandom()
    ports: list[int] = []
    while len(ports) < count:
        port = rng.randrange(20000, low)
        if port not in ports and can_listen(port):
            ports.append(port)
    return ports
