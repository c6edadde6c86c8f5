"""Team mode against the real services: `python -m services up` once for the module, on free
ports, in a temporary folder (never a developer's .services/), then every client the project
has (psycopg2, boto3, MLflow, a Prefect deployment run by a worker, dvc push/pull), the
fault of a stopped SeaweedFS, and `down` leaving no process and no port behind.

The tests run in file order and share the stack; the last one stops it. Timings print with
`pytest -s` (lines starting with TIMING).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from services import seaweedfs
from services.config import DVC_BUCKET, MLFLOW_BUCKET, WORK_POOL
from services.config import can_listen as _can_listen
from tests.stack import Stack, _processes_under, _records, cli

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
DVC = str(Path(sys.executable).parent / "dvc")
DOWN_BOUND = 45.0  # seconds `down` may take (measured: about 6 s)
PUSH_FAIL_BOUND = 30.0  # seconds a push to a stopped S3 may take to fail (measured: about 10 s)


def timing(what: str, seconds: float) -> None:
    print(f"\nTIMING {what}: {seconds:.1f} s")


def _lines(output: str) -> dict[str, str]:
    """`  <service>  <what happened>` lines of up/down, as {service: what}."""
    return dict(line.split(None, 1) for line in output.splitlines() if line.startswith("  "))


def test_up_twice_changes_nothing(stack: Stack) -> None:
    first = _lines(stack.up_output)
    for name in ("postgres", "seaweedfs", "mlflow", "prefect", "worker-1", "worker-2"):
        assert first[name].startswith("started in"), stack.up_output
    assert first["work-pool"] == "created"
    records = _records(stack.root)
    env_file = stack.root / "env"
    env_stat = env_file.stat()
    began = time.monotonic()
    again = cli(stack.env, "up")
    timing("python -m services up (warm: all up)", time.monotonic() - began)
    assert again.returncode == 0, again.stderr
    assert "already up, nothing changed" in again.stdout
    assert "started" not in again.stdout
    assert _records(stack.root) == records  # same processes
    assert env_file.stat().st_mtime_ns == env_stat.st_mtime_ns
    assert again.stdout.rstrip().splitlines()[-1] == f"source {env_file}"

    for secret in (env_file, stack.root / "credentials.json", stack.root / "seaweedfs-s3.json"):
        assert secret.stat().st_mode & 0o777 == 0o600, secret
    text = env_file.read_text()
    cfg = stack.cfg
    assert f"export MLFLOW_TRACKING_URI=http://127.0.0.1:{cfg.ports['mlflow']}\n" in text
    assert f"export PREFECT_API_URL=http://127.0.0.1:{cfg.ports['prefect']}/api\n" in text
    assert f"export MLFLOW_S3_ENDPOINT_URL=http://127.0.0.1:{cfg.ports['s3']}\n" in text
    assert f"export TAXI_DVC_REMOTE=s3://{DVC_BUCKET}/dvc\n" in text
    assert f"export AWS_SECRET_ACCESS_KEY={stack.creds.s3_secret_key}\n" in text

    status = cli(stack.env, "status")
    assert status.returncode == 0, status.stdout
    assert len([line for line in status.stdout.splitlines() if " up " in line]) == 6


def test_each_database_answers_its_own_role_only(stack: Stack) -> None:
    import psycopg2

    port = stack.cfg.ports["postgres"]
    passwords = {
        "mlflow": stack.creds.mlflow_db_password,
        "prefect": stack.creds.prefect_db_password,
    }
    table = {"mlflow": "experiments", "prefect": "flow_run"}  # made by each server's migrations
    for db, password in passwords.items():
        with (
            psycopg2.connect(
                host="127.0.0.1",
                port=port,
                dbname=db,
                user=db,
                password=password,
                connect_timeout=5,
            ) as conn,
            conn.cursor() as cur,
        ):
            cur.execute(
                "SELECT current_database(), current_user, to_regclass(%s) IS NOT NULL, version()",
                (f"public.{table[db]}",),
            )
            name, user, has_table, version = cur.fetchone()
        conn.close()
        assert (name, user, has_table) == (db, db, True)
        assert version.startswith("PostgreSQL 15")
    with pytest.raises(psycopg2.OperationalError, match="permission denied for database"):
        psycopg2.connect(
            host="127.0.0.1", port=port, dbname="prefect", user="mlflow",
            password=passwords["mlflow"], connect_timeout=5,
        )  # fmt: skip
    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        psycopg2.connect(
            host="127.0.0.1", port=port, dbname="mlflow", user="mlflow", password="wrong",
            connect_timeout=5,
        )  # fmt: skip


def test_s3_put_get_list_on_both_buckets(stack: Stack) -> None:
    import boto3
    from botocore.exceptions import ClientError

    s3 = seaweedfs.client(stack.cfg, stack.creds)
    for bucket in (DVC_BUCKET, MLFLOW_BUCKET):
        body = os.urandom(100_000)
        s3.put_object(Bucket=bucket, Key="test/blob.bin", Body=body)
        assert s3.get_object(Bucket=bucket, Key="test/blob.bin")["Body"].read() == body
        listed = s3.list_objects_v2(Bucket=bucket, Prefix="test/")["Contents"]
        assert [(o["Key"], o["Size"]) for o in listed] == [("test/blob.bin", 100_000)]
        s3.delete_object(Bucket=bucket, Key="test/blob.bin")
    stranger = boto3.client(
        "s3",
        endpoint_url=stack.cfg.s3_endpoint,
        aws_access_key_id=stack.creds.s3_access_key,
        aws_secret_access_key="not-the-secret",
        region_name="us-east-1",
    )
    with pytest.raises(ClientError, match="SignatureDoesNotMatch|AccessDenied"):
        stranger.list_objects_v2(Bucket=DVC_BUCKET)


def test_mlflow_run_artifact_lands_in_s3_and_a_version_registers(
    stack: Stack, tmp_path: Path
) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=stack.cfg.mlflow_url, registry_uri=stack.cfg.mlflow_url)
    experiment = client.create_experiment(f"services-test-{os.getpid()}")
    run = client.create_run(experiment)
    client.log_param(run.info.run_id, "alpha", "0.5")
    client.log_metric(run.info.run_id, "rmse", 4.5)
    model = tmp_path / "model.json"
    model.write_text('{"coefficients": [1, 2, 3]}')
    client.log_artifact(run.info.run_id, str(model), artifact_path="model")
    client.set_terminated(run.info.run_id)
    assert run.info.artifact_uri.startswith("mlflow-artifacts:/")

    s3 = seaweedfs.client(stack.cfg, stack.creds)
    key = f"artifacts/{experiment}/{run.info.run_id}/artifacts/model/model.json"
    listed = [o["Key"] for o in s3.list_objects_v2(Bucket=MLFLOW_BUCKET)["Contents"]]
    assert key in listed
    assert s3.get_object(Bucket=MLFLOW_BUCKET, Key=key)["Body"].read() == model.read_bytes()

    name = f"services-test-model-{os.getpid()}"
    client.create_registered_model(name)
    version = client.create_model_version(
        name, source=f"{run.info.artifact_uri}/model", run_id=run.info.run_id
    )
    assert version.version == "1"
    assert client.get_model_version(name, "1").run_id == run.info.run_id
    back = client.download_artifacts(run.info.run_id, "model/model.json", str(tmp_path / "dl"))
    assert Path(back).read_bytes() == model.read_bytes()

    # --allowed-hosts: a request naming another host is refused (DNS rebinding protection)
    request = urllib.request.Request(
        f"{stack.cfg.mlflow_url}/api/2.0/mlflow/experiments/get?experiment_id={experiment}",
        headers={"Host": "attacker.example"},
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code in (400, 403)


FLOW = '''
import os
from prefect import flow


@flow
def services_probe(out: str) -> str:
    """What a flow run started by a worker sees: the stack's MLflow server."""
    value = os.environ.get("MLFLOW_TRACKING_URI", "")
    with open(out, "w") as handle:
        handle.write(value)
    return value
'''

DEPLOY = """
import sys
from prefect import flow
from prefect.deployments import run_deployment

source, out = sys.argv[1], sys.argv[2]
flow.from_source(source=source, entrypoint="probe.py:services_probe").deploy(
    name="services-test", work_pool_name="{pool}", print_next_steps=False
)
run = run_deployment("services-probe/services-test", parameters={{"out": out}}, timeout=150)
print(run.state.type.value)
"""


def test_prefect_workers_run_a_deployment(stack: Stack, tmp_path: Path) -> None:
    api = stack.cfg.prefect_api_url
    with urllib.request.urlopen(f"{api}/health", timeout=5) as resp:
        assert json.load(resp) is True
    with urllib.request.urlopen(f"{api}/work_pools/{WORK_POOL}", timeout=5) as resp:
        assert json.load(resp)["type"] == "process"
    request = urllib.request.Request(
        f"{api}/work_pools/{WORK_POOL}/workers/filter",
        data=b"{}",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=5) as resp:
        workers = {w["name"]: w["status"] for w in json.load(resp)}
    assert workers == {"test-worker-1": "ONLINE", "test-worker-2": "ONLINE"}

    source = tmp_path / "flows"
    source.mkdir()
    (source / "probe.py").write_text(FLOW)
    out = tmp_path / "seen.txt"
    env = {
        **stack.env,
        "PREFECT_API_URL": api,
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
    }
    began = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", DEPLOY.format(pool=WORK_POOL), str(source), str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=200,
    )
    timing("Prefect deploy + run by a process worker", time.monotonic() - began)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "COMPLETED", proc.stdout
    assert out.read_text() == stack.cfg.mlflow_url  # the worker passed on .services/env


@dataclass
class DvcRepo:
    path: Path
    env: dict[str, str]

    def dvc(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(
            [DVC, *args], cwd=self.path, env=self.env, capture_output=True, text=True,
            timeout=timeout,
        )  # fmt: skip

    def ok(self, *args: str) -> str:
        proc = self.dvc(*args)
        assert proc.returncode == 0, f"dvc {' '.join(args)}: {proc.stdout}\n{proc.stderr}"
        return proc.stdout


@pytest.fixture(scope="module")
def dvc_repo(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> DvcRepo:
    path = tmp_path_factory.mktemp("dvc-scratch")
    env = {
        k: v for k, v in stack.env.items() if not k.startswith(("AWS_", "GIT_"))
    } | {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.invalid",
         "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.invalid"}  # fmt: skip
    subprocess.run(["git", "init", "-q"], cwd=path, env=env, check=True)
    repo = DvcRepo(path, env)
    repo.ok("init", "-q")
    configured = cli(stack.env, "dvc-remote", "--repo", str(path))
    assert configured.returncode == 0, configured.stderr
    assert "team -> s3://taxi-dvc/dvc" in configured.stdout
    return repo


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_dvc_push_pull_round_trip(stack: Stack, dvc_repo: DvcRepo) -> None:
    repo = dvc_repo
    shared = (repo.path / ".dvc" / "config").read_text()
    local = (repo.path / ".dvc" / "config.local").read_text()
    assert stack.creds.s3_secret_key not in shared and "team" not in shared
    assert stack.creds.s3_secret_key in local and f"endpointurl = {stack.cfg.s3_endpoint}" in local
    ignored = subprocess.run(
        ["git", "check-ignore", ".dvc/config.local"], cwd=repo.path, capture_output=True
    )
    assert ignored.returncode == 0  # git never sees the credentials

    data = repo.path / "data.bin"
    data.write_bytes(os.urandom(2_000_000))
    digest = _md5(data)
    repo.ok("add", "-q", "data.bin")
    began = time.monotonic()
    assert "1 file pushed" in repo.ok("push")
    pushed = time.monotonic() - began
    s3 = seaweedfs.client(stack.cfg, stack.creds)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=DVC_BUCKET, Prefix="dvc/")["Contents"]]
    assert f"dvc/files/md5/{digest[:2]}/{digest[2:]}" in keys

    shutil.rmtree(repo.path / ".dvc" / "cache")
    data.unlink()
    began = time.monotonic()
    repo.ok("pull")
    pulled = time.monotonic() - began
    assert _md5(data) == digest
    timing("dvc push of 2 MB", pushed)
    timing("dvc pull of 2 MB (empty cache)", pulled)


def test_stopped_s3_fails_a_push_fast_and_up_restarts_it(stack: Stack, dvc_repo: DvcRepo) -> None:
    repo = dvc_repo
    assert seaweedfs.stop(stack.cfg) != "was not running"
    status = cli(stack.env, "status")
    assert status.returncode == 3
    assert [line.split()[:2] for line in status.stdout.splitlines() if "DOWN" in line] == [
        ["seaweedfs", "DOWN"]
    ]
    (repo.path / "late.txt").write_text("written while S3 was down\n")
    repo.ok("add", "-q", "late.txt")
    began = time.monotonic()
    failed = repo.dvc("push")
    took = time.monotonic() - began
    timing("dvc push against a stopped SeaweedFS, until it fails", took)
    assert failed.returncode != 0
    assert "Could not connect to the endpoint URL" in failed.stderr, failed.stderr
    assert stack.cfg.s3_endpoint in failed.stderr
    assert took < PUSH_FAIL_BOUND

    began = time.monotonic()
    again = cli(stack.env, "up")
    timing("python -m services up restarting SeaweedFS alone", time.monotonic() - began)
    assert again.returncode == 0, again.stderr
    lines = _lines(again.stdout)
    assert lines["seaweedfs"].startswith("started")
    assert all(lines[n] == "already up" for n in ("postgres", "mlflow", "prefect", "worker-1"))
    assert "1 file pushed" in repo.ok("push")
    shutil.rmtree(repo.path / ".dvc" / "cache")
    (repo.path / "late.txt").unlink()
    (repo.path / "data.bin").unlink()
    repo.ok("pull")  # what was pushed before the stop survived it
    assert (repo.path / "late.txt").read_text() == "written while S3 was down\n"
    assert (repo.path / "data.bin").stat().st_size == 2_000_000


def test_down_stops_everything_and_frees_the_ports(stack: Stack) -> None:
    records = _records(stack.root)
    assert len(records) == 6
    assert _processes_under(stack.root)
    began = time.monotonic()
    down = cli(stack.env, "down", timeout=120)
    took = time.monotonic() - began
    timing("python -m services down", took)
    assert down.returncode == 0, down.stderr
    assert took < DOWN_BOUND
    assert _records(stack.root) == {}
    for record in records.values():
        assert not Path(f"/proc/{record['pid']}").exists() or (
            Path(f"/proc/{record['pid']}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
        ), record
    assert _processes_under(stack.root) == []
    assert [port for port in stack.cfg.ports.values() if not _can_listen(port)] == []
    grpc_ports = [stack.cfg.ports[k] for k in seaweedfs.GRPC.values()]
    assert [p for p in grpc_ports if list(Path("/tmp").glob(f"seaweedfs-*-grpc-{p}.sock"))] == []
    again = cli(stack.env, "down")
    assert again.returncode == 0 and "already down" in again.stdout
