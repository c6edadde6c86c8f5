"""Unit tests of services/ that start no server: settings, the env file, credentials, the
process helpers (on `sleep`/`sh` processes) and the command line on an empty state folder."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from services import envfile
from services.config import PORTS, Config, ConfigError
from services.credentials import load_or_create
from services.process import ServiceError, spawn, stop_group, wait_until

ROOT = Path(__file__).resolve().parents[1]


def _live_members(pgid: int) -> list[int]:
    """Processes of the group that still run (a zombie awaiting its parent does not)."""
    listed = subprocess.run(["pgrep", "-g", str(pgid)], capture_output=True, text=True).stdout
    live = []
    for pid in map(int, listed.split()):
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            live.append(pid)
    return live


def test_defaults_avoid_the_usual_ports(tmp_path: Path) -> None:
    cfg = Config.from_env({"SERVICES_DIR": str(tmp_path)})
    assert cfg.root == tmp_path.resolve()
    assert not {5432, 5000, 4200, 8333, 9333, 8080, 8888} & set(cfg.ports.values())
    assert len(set(cfg.ports.values())) == len(PORTS)
    assert cfg.mlflow_url == f"http://127.0.0.1:{cfg.ports['mlflow']}"
    assert cfg.prefect_api_url.endswith(f":{cfg.ports['prefect']}/api")
    assert cfg.workers == 2 and len(cfg.worker_names()) == 2
    assert Config.from_env({}).root == ROOT / ".services"


def test_a_bad_port_setting_is_named() -> None:
    with pytest.raises(ConfigError, match=r"^SERVICES_S3_PORT='x8' is not a whole number$"):
        Config.from_env({"SERVICES_S3_PORT": "x8"})
    with pytest.raises(ConfigError, match="SERVICES_PG_PORT=80 is outside 1024..65535"):
        Config.from_env({"SERVICES_PG_PORT": "80"})
    with pytest.raises(ConfigError, match="SERVICES_MLFLOW_PORT and SERVICES_PG_PORT are both"):
        Config.from_env({"SERVICES_PG_PORT": "20000", "SERVICES_MLFLOW_PORT": "20000"})


def test_credentials_are_generated_once_private_and_url_safe(tmp_path: Path) -> None:
    path = tmp_path / "credentials.json"
    first = load_or_create(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert load_or_create(path) == first
    for value in vars(first).values():
        assert len(value) >= 20 and value.replace("-", "").replace("_", "").isalnum()
    assert load_or_create(tmp_path / "other.json") != first


def test_env_file_is_private_sourceable_and_written_only_on_change(tmp_path: Path) -> None:
    cfg = Config.from_env({"SERVICES_DIR": str(tmp_path)})
    creds = load_or_create(cfg.credentials_file)
    assert envfile.write(cfg, creds) is True
    assert envfile.write(cfg, creds) is False
    assert cfg.env_file.stat().st_mode & 0o777 == 0o600
    shown = subprocess.run(
        ["bash", "-c", f"source {cfg.env_file} && env"], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    for key, value in envfile.client_environment(cfg, creds).items():
        assert f"{key}={value}" in shown


def test_wait_until_names_the_service_and_quotes_its_log(tmp_path: Path) -> None:
    log = tmp_path / "x.log"
    began = time.monotonic()
    with pytest.raises(ServiceError) as err:
        wait_until(lambda: False, timeout=0.3, service="Thing", what="ready", log=log)
    assert time.monotonic() - began < 2
    assert str(err.value) == f"Thing: not ready within 0.3 s (log: {log})"

    proc = spawn(
        "dies",
        ["sh", "-c", "echo 'FATAL: port taken'; sleep 0.5; exit 3"],
        env=os.environ,
        cwd=tmp_path,
        log=log,
        pids=tmp_path / "pids",
        ports=[],
    )
    with pytest.raises(ServiceError, match=r"^dies: exited with status 3 before ready: FATAL"):
        wait_until(lambda: False, timeout=30, service="dies", what="ready", proc=proc, log=log)
    # a process that exits at once: spawn or the wait reports it, with its status and output
    with pytest.raises(ServiceError, match=r"^gone: exited with status 4 .*: bye \(log: "):
        gone = spawn(
            "gone",
            ["sh", "-c", "echo bye; exit 4"],
            env=os.environ,
            cwd=tmp_path,
            log=log,
            pids=tmp_path / "pids",
            ports=[],
        )
        wait_until(lambda: False, timeout=30, service="gone", what="ready", proc=gone, log=log)


def test_stop_group_kills_what_ignores_sigterm_and_its_children(tmp_path: Path) -> None:
    # a shell that ignores SIGTERM, with a child of its own in the same process group
    script = "trap '' TERM; sleep 300 & wait"
    spawn(
        "stubborn",
        ["sh", "-c", script],
        env=os.environ,
        cwd=tmp_path,
        log=tmp_path / "s.log",
        pids=tmp_path / "pids",
        ports=[],
    )
    from services.process import read_record

    record = read_record(tmp_path / "pids", "stubborn")
    assert record is not None and record.alive()
    time.sleep(0.3)  # let the shell install its trap
    began = time.monotonic()
    assert stop_group(record, grace=0.5).startswith("killed after 0.5 s")
    assert time.monotonic() - began < 3
    assert not record.alive()
    assert _live_members(record.pid) == []


def _clean_env(**extra: str) -> dict[str, str]:
    """This environment without a sourced .services/env."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "TAXI_", "SERVICES_"))}
    return {**env, **extra}


def test_cli_on_a_folder_never_started(tmp_path: Path) -> None:
    env = _clean_env(SERVICES_DIR=str(tmp_path / "never"))
    run = [sys.executable, "-m", "services"]
    down = subprocess.run([*run, "down"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert (down.returncode, down.stdout.strip()) == (0, "services: already down, nothing to stop")
    status = subprocess.run([*run, "status"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert status.returncode == 3 and status.stdout.count("DOWN") == 6
    bad = subprocess.run(
        [*run, "up"], cwd=ROOT, env={**env, "SERVICES_PG_PORT": "nope"}, capture_output=True,
        text=True,
    )  # fmt: skip
    assert bad.returncode == 2
    assert bad.stderr == "services: SERVICES_PG_PORT='nope' is not a whole number\n"
    remote = subprocess.run(
        [*run, "dvc-remote", "--repo", str(tmp_path)], cwd=ROOT, env=env, capture_output=True,
        text=True,
    )  # fmt: skip
    assert remote.returncode == 1 and "run `make services` first" in remote.stderr


DVC = str(Path(sys.executable).parent / "dvc")


def _dvc_repo(tmp_path: Path) -> Path:
    """An empty DVC repository (no git) in tmp_path/repo."""
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run([DVC, "init", "--no-scm", "-q"], cwd=repo, check=True)
    return repo


def test_dvc_remote_from_a_sourced_env_file_goes_to_the_local_config(tmp_path: Path) -> None:
    repo = _dvc_repo(tmp_path)
    cfg = Config.from_env({"SERVICES_DIR": str(tmp_path / "stack")})
    creds = load_or_create(cfg.credentials_file)
    env = _clean_env(
        SERVICES_DIR=str(tmp_path / "elsewhere"),  # no stack here: the variables are used
        **envfile.client_environment(cfg, creds),
    )
    done = subprocess.run(
        [sys.executable, "-m", "services", "dvc-remote", "--repo", str(repo)],
        cwd=ROOT, env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout == (
        f"dvc remote team -> s3://taxi-dvc/dvc at {cfg.s3_endpoint} (in {repo}/.dvc/config.local)\n"
    )
    local = (repo / ".dvc" / "config.local").read_text()
    assert "remote = team" in local and f"secret_access_key = {creds.s3_secret_key}" in local
    assert "team" not in (repo / ".dvc" / "config").read_text()
    shown = subprocess.run(
        [DVC, "remote", "list"], cwd=repo, capture_output=True, text=True, check=True
    ).stdout
    assert shown.split() == ["team", "s3://taxi-dvc/dvc", "(default)"]


def test_a_secret_that_starts_with_a_dash_is_a_value(tmp_path: Path) -> None:
    """Generated keys are URL-safe base64: about one in 32 starts with "-" (once seen in CI,
    when the remote was written through DVC's command line, which took it for an option)."""
    from services.dvc_remote import RemoteSettings, configure

    repo = _dvc_repo(tmp_path)
    secret = "-TC-fQfePBp4zqk6MzmXACW9GaIc9Exe4aHfHjkO"
    configure(repo, RemoteSettings("s3://taxi-dvc/dvc", "http://127.0.0.1:1", "TAXIKEY", secret))
    local = (repo / ".dvc" / "config.local").read_text()
    assert f"secret_access_key = {secret}" in local and "remote = team" in local
