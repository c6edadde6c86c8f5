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

from lineage.record import locked_outputs, read_lock
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


def test_a_stopped_tracking_server_fails_the_stage_fast_and_the_flow_retries(
    stack: Stack, project: Path, small_tlc: Path
) -> None:
    """MLflow server down: the stage fails with status 75 within seconds, no output appears
    without its record, and the flow's retry succeeds once the server is back."""
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

    # The flow: its first attempt fails the same way; the server comes back meanwhile.
    flow = subprocess.Popen(
        [sys.executable, "-m", "flows.pipeline"],
        cwd=project,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(3)
    assert cli(stack.env, "up", timeout=300).returncode == 0
    _, err = flow.communicate(timeout=600)
    assert flow.returncode == 0, err
    assert "attempt 2" in err or "attempt 3" in err or "attempt 4" in err, err


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
