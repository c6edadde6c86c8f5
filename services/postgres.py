"""PostgreSQL 15: a cluster of its own in `.services/postgres`, started with `pg_ctl` on
127.0.0.1:<SERVICES_PG_PORT> (its unix socket in `.services/postgres-socket`), holding the
databases `mlflow` and `prefect`, each owned by a role of the same name with a generated
password (scram-sha-256 over TCP; only the owner role may connect to its database).

PostgreSQL refuses to run as root: as root every command runs as the `postgres` user
(`runuser -u postgres`), which owns the cluster's folders; as anyone else, as that user.
The superuser is reached only through the unix socket (peer authentication).
"""

from __future__ import annotations

import getpass
import os
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path

from services.config import HOST, Config
from services.credentials import Credentials
from services.process import (
    Record,
    ServiceError,
    forget,
    last_log_line,
    port_free,
    running_record,
    save_record,
    wait_until,
)

NAME = "postgres"
LABEL = "PostgreSQL"
DATABASES = ("mlflow", "prefect")
BIN_CANDIDATES = ("/usr/lib/postgresql/15/bin",)
STOP_TIMEOUT = 30


def data_dir(cfg: Config) -> Path:
    return cfg.root / "postgres"


def socket_dir(cfg: Config) -> Path:
    return cfg.root / "postgres-socket"


def bin_dir() -> Path:
    """The folder of initdb/pg_ctl: SERVICES_PG_BIN, Debian's PostgreSQL 15, or the PATH."""
    candidates = [os.environ.get("SERVICES_PG_BIN", ""), *BIN_CANDIDATES]
    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates.append(str(Path(on_path).parent))
    for folder in filter(None, candidates):
        if (Path(folder) / "initdb").is_file() and (Path(folder) / "pg_ctl").is_file():
            return Path(folder)
    raise ServiceError(
        LABEL,
        "initdb/pg_ctl not found (apt-get install postgresql-15, or set SERVICES_PG_BIN "
        "to the folder holding them)",
    )


def _as_owner() -> list[str]:
    return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


def _superuser() -> str:
    return "postgres" if os.geteuid() == 0 else getpass.getuser()


def _give_to_owner(path: Path) -> None:
    if os.geteuid() == 0:
        shutil.chown(path, "postgres", "postgres")


def _run(argv: list[str], what: str, timeout: float, stdin: str | None = None) -> str:
    try:
        proc = subprocess.run(
            _as_owner() + argv,
            check=False,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=None if stdin is not None else subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        raise ServiceError(LABEL, f"{what} did not finish within {timeout:g} s") from None
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines() or ["(no output)"]
        raise ServiceError(LABEL, f"{what} failed (status {proc.returncode}): {lines[-1]}")
    return proc.stdout


def uri(cfg: Config, creds: Credentials, database: str, driver: str = "postgresql") -> str:
    """The SQLAlchemy URL of `database` as its own role."""
    password = {"mlflow": creds.mlflow_db_password, "prefect": creds.prefect_db_password}
    return f"{driver}://{database}:{password[database]}@{HOST}:{cfg.ports['postgres']}/{database}"


def _postmaster(cfg: Config) -> int | None:
    """The pid in postmaster.pid when that process is a postgres serving this cluster."""
    try:
        pid = int((data_dir(cfg) / "postmaster.pid").read_text().split("\n", 1)[0])
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return None
    serves_us = Path(args[0].decode()).name == "postgres" and str(data_dir(cfg)).encode() in args
    return pid if serves_us else None


def running(cfg: Config) -> Record | None:
    record = running_record(cfg.pids, NAME)
    if record is not None:
        return record
    pid = _postmaster(cfg)  # started, but its record was lost
    return save_record(cfg.pids, NAME, pid, [cfg.ports["postgres"]], ["postgres"]) if pid else None


def healthy(cfg: Config) -> bool:
    try:
        ready = str(bin_dir() / "pg_isready")
        proc = subprocess.run(
            [ready, "-h", HOST, "-p", str(cfg.ports["postgres"]), "-t", "2"],
            check=False,
            capture_output=True,
            timeout=5,
        )
    except (ServiceError, OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0


def _init_cluster(cfg: Config, bins: Path) -> None:
    """initdb into a temporary folder renamed into place: a failed initdb leaves nothing."""
    target = data_dir(cfg)
    if (target / "PG_VERSION").is_file():
        return
    if target.exists():
        raise ServiceError(
            LABEL, f"{target} exists but holds no cluster (no PG_VERSION): remove it to start anew"
        )
    tmp = cfg.root / f".postgres-init-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(mode=0o700)
    _give_to_owner(tmp)
    probe = subprocess.run([*_as_owner(), "test", "-w", str(tmp)], check=False, capture_output=True)
    if probe.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ServiceError(
            LABEL,
            f"the postgres user cannot write {tmp}: every folder above it must be searchable "
            "by others (chmod o+x)",
        )
    try:
        _run(
            [
                str(bins / "initdb"), "-D", str(tmp), "-U", _superuser(), "--encoding=UTF8",
                "--no-locale", "--auth-local=peer", "--auth-host=scram-sha-256",
            ],
            "initdb",
            timeout=120,
        )  # fmt: skip
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    os.rename(tmp, target)


def _setup_sql(creds: Credentials) -> str:
    """Idempotent: roles and databases created when missing, passwords (re)set."""
    lines = []
    passwords = {"mlflow": creds.mlflow_db_password, "prefect": creds.prefect_db_password}
    for db in DATABASES:
        lines += [
            f"SELECT 'CREATE ROLE {db} LOGIN' WHERE NOT EXISTS "
            f"(SELECT FROM pg_roles WHERE rolname = '{db}') \\gexec",
            f"ALTER ROLE {db} WITH LOGIN PASSWORD '{passwords[db]}';",
            f"SELECT 'CREATE DATABASE {db} OWNER {db}' WHERE NOT EXISTS "
            f"(SELECT FROM pg_database WHERE datname = '{db}') \\gexec",
            f"REVOKE CONNECT, TEMPORARY ON DATABASE {db} FROM PUBLIC;",
        ]
    return "\n".join(lines) + "\n"


def start(cfg: Config, creds: Credentials) -> str:
    """Ensure the cluster runs on its port with both databases; what was done, in words."""
    port = cfg.ports["postgres"]
    record = running(cfg)
    if record is not None:
        if port not in record.ports:
            raise ServiceError(
                LABEL,
                f"already running on port {record.ports[0]}, not SERVICES_PG_PORT={port}: "
                "stop the services first",
            )
        if healthy(cfg):
            return "already up"
        raise ServiceError(LABEL, f"process {record.pid} runs but does not answer on port {port}")
    if not port_free(port):
        raise ServiceError(
            LABEL, f"port {port} on {HOST} is in use by another program (set SERVICES_PG_PORT)"
        )
    bins = bin_dir()
    sock = socket_dir(cfg)
    if len(str(sock)) + len(f"/.s.PGSQL.{port}") > 107:
        raise ServiceError(LABEL, f"the socket folder path {sock} is too long for a unix socket")
    began = time.monotonic()
    _init_cluster(cfg, bins)
    sock.mkdir(mode=0o700, exist_ok=True)
    _give_to_owner(sock)
    log = cfg.log(NAME)
    log.touch()
    _give_to_owner(log)
    options = f"-p {port} -k {shlex.quote(str(sock))} -c listen_addresses={HOST}"
    timeout = cfg.start_timeout
    try:
        subprocess.run(
            [
                *_as_owner(), str(bins / "pg_ctl"), "start", "-D", str(data_dir(cfg)),
                "-l", str(log), "-w", "-t", str(int(timeout)), "-o", options,
            ],
            capture_output=True, text=True, timeout=timeout + 15, check=True,
            start_new_session=True, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    except subprocess.CalledProcessError as exc:
        tail = last_log_line(log) or (exc.stderr or exc.stdout).strip()
        raise ServiceError(LABEL, f"pg_ctl start failed: {tail} (log: {log})") from None
    except subprocess.TimeoutExpired:
        raise ServiceError(LABEL, f"not started within {timeout:g} s (log: {log})") from None
    pid = _postmaster(cfg)
    if pid is None:
        raise ServiceError(LABEL, f"pg_ctl reported success but no postmaster runs (log: {log})")
    save_record(cfg.pids, NAME, pid, [port], ["postgres", "-D", str(data_dir(cfg))])
    wait_until(lambda: healthy(cfg), timeout=timeout, service=LABEL, what="ready", log=log)
    _run(
        [
            str(bins / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1",
            "-h", str(sock), "-p", str(port), "-U", _superuser(), "-d", "postgres", "-f", "-",
        ],
        "creating the roles and databases",
        timeout=60,
        stdin=_setup_sql(creds),
    )  # fmt: skip
    return f"started in {time.monotonic() - began:.1f} s"


def stop(cfg: Config) -> str:
    """pg_ctl stop -m fast (bounded), then SIGQUIT/SIGKILL to the postmaster if needed."""
    record = running(cfg)
    if record is None:
        forget(cfg.pids, NAME)
        return "was not running"
    began = time.monotonic()
    try:
        subprocess.run(
            [
                *_as_owner(), str(bin_dir() / "pg_ctl"), "stop", "-D", str(data_dir(cfg)),
                "-m", "fast", "-w", "-t", str(STOP_TIMEOUT),
            ],
            check=False, capture_output=True, timeout=STOP_TIMEOUT + 10,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
    except (subprocess.TimeoutExpired, ServiceError):
        pass
    for sig, wait in ((None, 0.0), (signal.SIGQUIT, 5.0), (signal.SIGKILL, 5.0)):
        if sig is not None and record.alive():
            os.kill(record.pid, sig)
        deadline = time.monotonic() + wait
        while record.alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        if not record.alive():
            forget(cfg.pids, NAME)
            how = "stopped" if sig is None else f"stopped with {signal.Signals(sig).name}"
            return f"{how} in {time.monotonic() - began:.1f} s"
    raise ServiceError(LABEL, f"postmaster {record.pid} survived SIGKILL")
