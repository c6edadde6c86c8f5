"""Team mode end to end: a model trained in one clone is pulled, traced, verified, restored
and reproduced from another, through the real services (PostgreSQL, SeaweedFS S3, the MLflow
and Prefect servers: tests/stack.py), and retraining it elsewhere registers nothing new."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stage_runtime.record import locked_outputs, read_lock
from tests.conftest import MONTHS, run
from tests.stack import Stack, client_env, timing

pytestmark = pytest.mark.slow
MODEL = "nyc-taxi-trip-duration-minutes"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _client(env: dict[str, str]):
    from mlflow.tracking import MlflowClient

    uri = env["MLFLOW_TRACKING_URI"]
    return MlflowClient(uri, uri)


def test_a_model_trained_in_one_clone_is_traced_from_another(
    stack: Stack, project: Path, small_tlc: Path, tmp_path: Path
) -> None:
    env = client_env(stack)
    env |= {
        "TLC_SOURCE": str(small_tlc),
        "GIT_AUTHOR_NAME": "a",
        "GIT_AUTHOR_EMAIL": "a@example.invalid",
        "GIT_COMMITTER_NAME": "a",
        "GIT_COMMITTER_EMAIL": "a@example.invalid",
    }
    env.pop("PREFECT_HOME", None)

    # Clone A trains through the flow (the stack's Prefect server) and pushes its data.
    began = time.monotonic()
    flow = run([sys.executable, "-m", "flows.pipeline"], project, env)
    timing("make pipeline in clone A, sample months, team mode", time.monotonic() - began)
    assert "data pushed to DVC remote team" in flow.stderr, flow.stderr
    assert "model: nyc-taxi-trip-duration-minutes version 1" in flow.stderr
    run(["git", "add", "-A"], project, env)
    run(["git", "commit", "-qm", "model 1"], project, env)
    locked = locked_outputs(read_lock(project / "dvc.lock"))
    client = _client(env)
    version = client.get_model_version(MODEL, "1")
    assert version.tags["model_md5"] == locked["models/model.json"]
    # the artifacts went through the MLflow server into S3, not to a local folder
    assert not (project / "mlruns").exists()

    # Clone B: another folder, an empty DVC cache, the same environment.
    clone = tmp_path / "clone-b"
    run(["git", "clone", "-q", str(project), str(clone)], tmp_path, env)
    run([sys.executable, "-m", "services", "dvc-remote", "--repo", str(clone)], clone, env)
    began = time.monotonic()
    run(["dvc", "pull"], clone, env)
    timing("dvc pull in clone B", time.monotonic() - began)
    for path, md5 in locked.items():
        assert hashlib.md5((clone / path).read_bytes()).hexdigest() == md5, path

    verified = run([sys.executable, "-m", "lineage", f"models:/{MODEL}/1", "--verify"], clone, env)
    assert "verified against dvc.lock" in verified.stdout

    # Clone C has pulled nothing: --restore fetches the raw bytes from the remote.
    bare = tmp_path / "clone-c"
    run(["git", "clone", "-q", str(project), str(bare)], tmp_path, env)
    restored = tmp_path / "restored"
    run(
        [sys.executable, "-m", "lineage", f"models:/{MODEL}/1", "--restore", str(restored)],
        bare,
        env,
    )
    for month in MONTHS:
        name = f"green_tripdata_{month}.parquet"
        assert _sha256(restored / name) == _sha256(small_tlc / name)

    began = time.monotonic()
    reproduced = run(
        [sys.executable, "-m", "lineage", f"models:/{MODEL}/1", "--reproduce", "--json"],
        bare,
        env,
    )
    timing("lineage --reproduce in clone C", time.monotonic() - began)
    report = json.loads(reproduced.stdout)["reproduce"]
    assert report["byte_identical"] and report["metrics_equal"], report

    # Retraining the same bytes from the same data in clone B: the existing version.
    retrained = run(["dvc", "repro", "--force", "train"], clone, env)
    assert "identical to nyc-taxi-trip-duration-minutes version 1" in retrained.stderr
    assert [v.version for v in client.search_model_versions(f"name = '{MODEL}'")] == ["1"]
    assert "up to date" in run(["dvc", "status"], clone, env).stdout


def test_a_run_written_through_the_rest_api_reads_back_as_mlflows_own(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """stage_runtime.http_store against the team's MLflow server: the record a stage writes without
    importing MLflow is the one MLflow's client writes; what the server refuses is refused."""
    from stage_runtime import record
    from stage_runtime.http_store import HttpStore, ServerError
    from stage_runtime.tracking import ClientWriter, open_writer
    from stages.common import EnvironmentRefusal
    from tests.test_sqlite_store import assert_same_run, write

    env = client_env(stack)
    uri = env["MLFLOW_TRACKING_URI"]
    monkeypatch.setenv(record.EXPERIMENT_ENV, "rest-api-writer")
    ours = open_writer(uri)
    assert isinstance(ours, HttpStore)
    client = record.connect(uri)
    assert_same_run(client, write(ours), write(ClientWriter(client, uri)))

    run_id = ours.create_run({"stage": "x"}, run_name="x")
    many = {f"code/stages/module_{i}.py": f"{i:032x}" for i in range(250)}  # 3 requests
    ours.log_batch(run_id, params={"a": "1"}, tags=many)
    assert many.items() <= client.get_run(run_id).data.tags.items()
    with pytest.raises(ServerError, match="INVALID_PARAMETER_VALUE") as refused:
        ours.log_batch(run_id, params={"a": "2"})
    assert isinstance(refused.value, EnvironmentRefusal)  # a stage exits 74, not retried


def test_a_stopped_tracking_server_fails_the_stage_fast_and_the_flow_retries(
    stack: Stack, project: Path, small_tlc: Path
) -> None:
    """MLflow server down: the stage fails with status 75 within seconds, no output appears
    without its record, and the flow's retry succeeds once the server is back. Then the same
    with PostgreSQL down behind the MLflow server."""
    from tests.stack import cli

    env = client_env(stack) | {"TLC_SOURCE": str(small_tlc)}
    env.pop("PREFECT_HOME", None)
    record = json.loads((stack.root / "pids" / "mlflow.json").read_text())
    os.killpg(record["pid"], 15)
    began = time.monotonic()
    proc = subprocess.run(
        ["dvc", "repro", "ingest_zones"], cwd=project, env=env, capture_output=True, text=True
    )
    took = time.monotonic() - began
    assert proc.returncode != 0 and "exited with 75" in proc.stderr, proc.stderr
    assert "TRANSIENT FAILURE in stage ingest_zones" in proc.stderr
    assert took < 30, took
    assert not (project / "data" / "raw" / "taxi_zone_lookup.csv").exists()

    # The flow: its first stage fails the same way; the server comes back once it has (a
    # fixed wait raced the flow's start: a slow start found the server back already).
    earlier = _retrying_task_runs(env)
    flow = subprocess.Popen(
        [sys.executable, "-m", "flows.pipeline"],
        cwd=project,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait(
            lambda: _retrying_task_runs(env) - earlier,
            120,
            "the flow's first stage to fail",
        )
    except BaseException:
        flow.kill()
        raise
    finally:
        assert cli(stack.env, "up", timeout=300).returncode == 0  # back even if this failed
    _, err = flow.communicate(timeout=600)
    assert flow.returncode == 0, err
    assert "attempt 2" in err or "attempt 3" in err or "attempt 4" in err, err

    # PostgreSQL down under a running MLflow server: the server answers with errors; the
    # stage fails the same way, within seconds, and writes nothing.
    from services import postgres

    postgres.stop(stack.cfg)
    try:
        began = time.monotonic()
        proc = run(["dvc", "repro", "--force", "ingest_zones"], project, env, check=False)
        took = time.monotonic() - began
    finally:
        assert cli(stack.env, "up", timeout=300).returncode == 0
    assert proc.returncode != 0 and "exited with 75" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and took < 60, (took, proc.stderr)
    assert "up to date" in run(["dvc", "status"], project, env).stdout


def test_two_compares_at_once_run_on_the_two_workers(
    stack: Stack, project: Path, small_tlc: Path
) -> None:
    """Two `flows.compare --pool` at once: their experiments run as deployment runs on the
    pool's two workers, each in its own worktree, against the shared stores; each experiment
    and model version is its own, and equal to a sequential `dvc exp run -S`."""
    from services.config import WORK_POOL

    env = client_env(stack) | {"TLC_SOURCE": str(small_tlc)}
    env.pop("PREFECT_HOME", None)
    run(["dvc", "repro"], project, env)
    run(["git", "add", "-A"], project, env)
    run(["git", "commit", "-qm", "built"], project, env)
    param_sets = ["model.type=lasso,model.alpha=0.01", "model.type=ridge,model.alpha=0.3"]
    began = time.monotonic()
    compares = [
        subprocess.Popen(
            [sys.executable, "-m", "flows.compare", "--pool", WORK_POOL, "--set", params],
            cwd=project,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for params in param_sets
    ]
    outputs = [c.communicate(timeout=900)[0] for c in compares]
    timing("two compares at once on the pool", time.monotonic() - began)
    assert [c.returncode for c in compares] == [0, 0], outputs

    client = _client(env)
    trains = client.search_runs(
        [client.get_experiment_by_name("taxi-trip-duration").experiment_id],
        filter_string="tags.stage = 'train' and attributes.status = 'FINISHED'",
    )
    by_experiment = {r.data.tags.get("dvc_exp_name"): r for r in trains}
    names = [n for n in by_experiment if n]
    assert len(names) == 2, names
    listed = run(["dvc", "exp", "list", "--name-only"], project, env).stdout.split()
    assert sorted(names) == sorted(listed)
    versions = {by_experiment[n].data.tags["model_version"] for n in names}
    assert len(versions) == 2  # one version each, never mixed up
    for name in names:
        params = json.loads(
            run(["dvc", "exp", "show", "--json"], project, env).stdout
        )  # the experiment's own params, as DVC shows them
        assert params
        train = by_experiment[name]
        alpha = float(train.data.params["model.alpha"])
        version = client.get_model_version(MODEL, train.data.tags["model_version"])
        assert version.run_id == train.info.run_id and version.tags["model_type"] in (
            "lasso",
            "ridge",
        )
        assert (alpha, version.tags["model_type"]) in ((0.01, "lasso"), (0.3, "ridge"))

    # Sequentially, the lasso param set gives the same validation RMSE as on the pool.
    lasso = next(n for n in names if float(by_experiment[n].data.params["model.alpha"]) == 0.01)
    pool_rmse = by_experiment[lasso].data.metrics["validation.rmse"]
    run(["dvc", "exp", "run", "-S", "model.type=lasso", "-S", "model.alpha=0.01"], project, env)
    sequential = json.loads((project / "metrics" / "evaluate.json").read_text())
    assert sequential["validation"]["rmse"] == pool_rmse


def _processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) of every live process."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[0] != "Z":
            found[int(entry.name)] = (int(fields[1]), cmd)
    return found


def _under_worker(procs: dict[int, tuple[int, str]], pid: int, stack: Stack) -> bool:
    """Whether `pid` descends from a worker of this test's stack (not another test's)."""
    workers = {
        json.loads(p.read_text())["pid"] for p in (stack.root / "pids").glob("worker-*.json")
    }
    while pid in procs and pid > 1:
        if pid in workers:
            return True
        pid = procs[pid][0]
    return False


def _wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"timed out after {timeout:g} s waiting for {what}"
        time.sleep(0.2)
    return value


def _retrying_task_runs(env: dict[str, str], name: str | None = None) -> set[str]:
    """The ids of the task runs (called `name`, if given: a stage, "dvc push") on the stack's
    Prefect server that failed once and wait for, or run, a retry."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        TaskRunFilter,
        TaskRunFilterName,
        TaskRunFilterState,
        TaskRunFilterStateName,
    )
    from prefect.settings import PREFECT_API_URL, temporary_settings

    retrying = TaskRunFilter(
        state=TaskRunFilterState(name=TaskRunFilterStateName(any_=["AwaitingRetry", "Retrying"])),
        name=TaskRunFilterName(any_=[name]) if name else None,
    )
    with (
        temporary_settings({PREFECT_API_URL: env["PREFECT_API_URL"]}),
        get_client(sync_client=True) as client,
    ):
        return {str(run.id) for run in client.read_task_runs(task_run_filter=retrying)}


def test_s3_down_at_the_push_then_back(
    stack: Stack, project: Path, small_tlc: Path, tmp_path: Path
) -> None:
    """Outputs built without a push (`dvc repro`), then SeaweedFS killed: the next flow run,
    with nothing stale, still pushes (team mode pushes every run); the push task fails, is
    retried and succeeds once S3 is back; a fresh clone then pulls every output with its md5
    (nothing half-written in the remote)."""
    import threading

    from tests.stack import cli

    env = client_env(stack) | {"TLC_SOURCE": str(small_tlc)}
    env.pop("PREFECT_HOME", None)
    # a model no other test of this stack trained, so the bucket lacks its objects
    params = project / "params.yaml"
    params.write_text(params.read_text().replace("alpha: 1.0 ", "alpha: 0.37 ", 1))
    run(["dvc", "repro"], project, env)  # records written, nothing pushed
    record = json.loads((stack.root / "pids" / "seaweedfs.json").read_text())
    os.killpg(record["pid"], 9)

    earlier = _retrying_task_runs(env, "dvc push")

    def restart_after_the_first_push() -> None:
        # The push runs in the flow run's DVC process, not a `dvc push` process of its own:
        # its first failure is the task run waiting for a retry on the Prefect server.
        try:
            _wait(
                lambda: _retrying_task_runs(env, "dvc push") - earlier,
                120,
                "the flow's first dvc push to fail",
            )
        finally:
            cli(stack.env, "up", timeout=300)  # S3 back even when this test failed

    restart = threading.Thread(target=restart_after_the_first_push)
    restart.start()
    try:
        flow = run([sys.executable, "-m", "flows.pipeline"], project, env, check=False)
    finally:
        restart.join()
    assert flow.returncode == 0, flow.stderr
    assert "0 stage(s) ran" in flow.stderr, flow.stderr
    assert "data pushed to DVC remote team (attempt " in flow.stderr, flow.stderr  # retried
    assert "Traceback" not in flow.stderr, flow.stderr
    run(["git", "add", "-A"], project, env)
    run(["git", "commit", "-qm", "pushed after S3 came back"], project, env)
    clone = tmp_path / "fresh"
    run(["git", "clone", "-q", str(project), str(clone)], tmp_path, env)
    run([sys.executable, "-m", "services", "dvc-remote", "--repo", str(clone)], clone, env)
    run(["dvc", "pull"], clone, env)
    for path, md5 in locked_outputs(read_lock(project / "dvc.lock")).items():
        assert hashlib.md5((clone / path).read_bytes()).hexdigest() == md5, path


def test_a_worker_killed_mid_stage(stack: Stack, project: Path, small_tlc: Path) -> None:
    """The pipeline as a deployment run on the pool; its worker and flow-run process are
    killed while train runs: the stage stops with them (no orphan, nothing written, dvc.lock
    as it was), Prefect marks the run Crashed, and a new run completes."""
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    from services.config import WORK_POOL
    from tests.stack import cli

    env = client_env(stack) | {"TLC_SOURCE": str(small_tlc)}
    env.pop("PREFECT_HOME", None)
    run(["dvc", "repro"], project, env)
    params = (project / "params.yaml").read_text().replace("alpha: 1.0", "alpha: 0.4")
    (project / "params.yaml").write_text(params)
    run(["git", "add", "-A"], project, env)
    run(["git", "commit", "-qm", "alpha 0.4"], project, env)
    lock_before = (project / "dvc.lock").read_bytes()
    deploy = run([sys.executable, "-c", DEPLOY_PIPELINE, str(project), WORK_POOL], project, env)
    deployment = deploy.stdout.strip().splitlines()[-1]
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: env["PREFECT_API_URL"]}):
        flow_run = run_deployment(deployment, parameters={"workspace": str(project)}, timeout=0)

        def train_chain() -> list[int] | None:
            procs = _processes()
            train = [
                p
                for p, (_, cmd) in procs.items()
                if "stages.train" in cmd and _under_worker(procs, p, stack)
            ]
            if not train:
                return None
            chain, pid = [], train[0]
            while pid in procs and pid > 1:
                chain.append(pid)
                pid = procs[pid][0]
            return chain

        chain = _wait(train_chain, 300, "train to start under a worker")
        procs = _processes()
        worker = next(p for p in chain if "prefect worker start" in procs[p][1])
        engine = chain[chain.index(worker) - 1]  # the flow run's process, a child of the worker
        time.sleep(1)
        os.kill(engine, 9)
        os.kill(worker, 9)
        _wait(
            lambda: not any(p in _processes() for p in chain[: chain.index(engine)]),
            30,
            "the stage, dvc and the guard to stop",
        )
        assert (project / "dvc.lock").read_bytes() == lock_before
        strays = [p for p in (project / "models").rglob("*") if p.name.endswith(".tmp")]
        assert strays == []

        def state() -> str:
            with get_client(sync_client=True) as client:
                return client.read_flow_run(flow_run.id).state.type.value

        from services.zombies import zombie_seconds

        _wait(lambda: state() == "CRASHED", zombie_seconds() + 90, "Prefect to mark it Crashed")
        assert cli(stack.env, "up", timeout=300).returncode == 0  # the killed worker again
        again = run_deployment(deployment, parameters={"workspace": str(project)}, timeout=600)
        assert again.state.is_completed(), again.state
    assert "up to date" in run(["dvc", "status"], project, env).stdout


DEPLOY_PIPELINE = """
import sys
from flows.pipeline_flow import pipeline
repo, pool = sys.argv[1], sys.argv[2]
source = pipeline.from_source(source=repo, entrypoint="flows/pipeline_flow.py:pipeline")
deployment = source.deploy(name="team", work_pool_name=pool, print_next_steps=False)
print("taxi-pipeline/team")
"""
