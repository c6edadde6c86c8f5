"""The stage-run recorder under faults (stage_runtime/tracking.py): real `dvc repro`, real
signals, a real MLflow store. Whatever happens, the registry, the files and dvc.lock never
disagree."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from stage_runtime.record import locked_outputs, read_lock
from stages import request
from stages.common import file_md5
from tests.conftest import run

pytestmark = pytest.mark.slow
MODEL = "nyc-taxi-trip-duration-minutes"
# train logs this once the version exists (through MLflow's client or straight into the store).
REGISTERED_LINE = f"registered {MODEL} version"


def dvc(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return run(["dvc", *args], repo, dict(os.environ), check=check)


def set_alpha(repo: Path, alpha: float) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["model"]["alpha"] = alpha
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def client_of(repo: Path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{repo / 'mlflow.db'}"
    return MlflowClient(uri, uri)


def versions(repo: Path) -> dict[str, object]:
    return {v.version: v for v in client_of(repo).search_model_versions(f"name = '{MODEL}'")}


def assert_registry_agrees_with_files(repo: Path) -> None:
    """Every version's run finished; the newest version is the model dvc.lock records."""
    client = client_of(repo)
    found = versions(repo)
    for version in found.values():
        assert client.get_run(version.run_id).info.status == "FINISHED", version
    newest = found[max(found, key=int)]
    model_md5 = locked_outputs(read_lock(repo / "dvc.lock"))["models/model.json"]
    assert newest.tags["model_md5"] == model_md5 == file_md5(repo / "models" / "model.json")
    assert "up to date" in dvc(repo, "status").stdout


def repro_until(repo: Path, line_contains: str, sig: int) -> tuple[int, list[str]]:
    """`dvc repro`, with `sig` sent to its whole process group when a line contains the text."""
    proc = subprocess.Popen(
        ["dvc", "repro"],
        cwd=repo,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines = []
    for line in proc.stdout:
        lines.append(line.rstrip())
        if line_contains in line:
            os.killpg(proc.pid, sig)
            break
    proc.stdout.close()
    return proc.wait(timeout=60), lines


def strays(repo: Path) -> list[str]:
    """Temporary files inside declared output folders."""
    return [
        p.as_posix()
        for folder in ("data", "models", "metrics", "plots")
        for p in (repo / folder).rglob("*")
        if p.name.endswith(".tmp") or p.name.startswith(".")
    ]


def test_faults_around_the_record_leave_files_registry_and_lock_in_step(built: Path):
    repo = built
    assert_registry_agrees_with_files(repo)
    # The model folder the embedded store's train wrote without MLflow: MLflow loads it, and
    # it holds no uv files (record.apply_client_defaults, as when MLflow writes it).
    import mlflow

    newest = max(versions(repo).values(), key=lambda v: int(v.version))
    folder = Path(newest.source.removeprefix("file://"))
    assert not (folder / "uv.lock").exists() and (folder / "MLmodel").is_file()
    loaded = mlflow.pyfunc.load_model(str(folder))
    assert loaded.metadata.signature.to_dict() == request.signature_dict()

    # SIGKILL of train right after the version was created (before the run finished and
    # before DVC wrote dvc.lock): the next repro removes the orphan and trains again.
    set_alpha(repo, 0.5)
    status, lines = repro_until(repo, REGISTERED_LINE, signal.SIGKILL)
    assert status != 0, lines
    assert strays(repo) == []
    dvc(repo, "repro")
    assert_registry_agrees_with_files(repo)

    # SIGINT while the version is being registered: the stage deletes what it registered.
    set_alpha(repo, 0.25)
    status, lines = repro_until(repo, REGISTERED_LINE, signal.SIGINT)
    assert status != 0, lines
    dvc(repo, "repro")
    assert_registry_agrees_with_files(repo)

    # An output that cannot be replaced (immutable metrics/train.json): DVC itself fails to
    # delete it before the command (outputs are not persistent: the run-cache needs that),
    # naming it; no model is trained, no version left behind, and what DVC deleted before it
    # (the model file) is in the cache: `dvc checkout` puts back exactly the last good one.
    if shutil.which("chattr") is None:
        pytest.skip("chattr is not available")
    model_before = (repo / "models" / "model.json").read_bytes()
    count_before = len(versions(repo))
    set_alpha(repo, 2.0)
    subprocess.run(["chattr", "+i", str(repo / "metrics" / "train.json")], check=True)
    try:
        proc = dvc(repo, "repro", "train", check=False)
    finally:
        subprocess.run(["chattr", "-i", str(repo / "metrics" / "train.json")], check=True)
    assert proc.returncode != 0
    assert "Operation not permitted" in proc.stderr and "metrics/train.json" in proc.stderr
    assert "Traceback" not in proc.stderr and "Running stage 'train'" not in proc.stdout
    dvc(repo, "checkout")
    assert (repo / "models" / "model.json").read_bytes() == model_before
    assert len(versions(repo)) == count_before
    set_alpha(repo, 0.25)
    assert_registry_agrees_with_files(repo)

    # A read-only MLflow store: one line naming the store, exit 74, outputs untouched.
    subprocess.run(["chattr", "+i", str(repo / "mlflow.db")], check=True)
    try:
        proc = dvc(repo, "repro", "--force", "ingest_zones", check=False)
    finally:
        subprocess.run(["chattr", "-i", str(repo / "mlflow.db")], check=True)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    assert "CANNOT WRITE in stage ingest_zones" in proc.stderr and "mlflow.db" in proc.stderr


def test_a_kill_during_prepare_leaves_nothing_in_the_features_input(project: Path):
    repo = project
    status, lines = repro_until(repo, "Running stage 'prepare@2025-02'", signal.SIGKILL)
    assert status != 0, lines
    time.sleep(0.5)
    assert strays(repo) == []
    dvc(repo, "repro")
    features = read_lock(repo / "dvc.lock")["features"]
    assert features.deps["data/clean"].endswith(".dir")
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    clean = next(d for d in lock["stages"]["features"]["deps"] if d["path"] == "data/clean")
    assert clean["nfiles"] == 3
    assert not list((repo / ".dvc" / "tmp" / "staging").iterdir())


def test_a_fresh_store_from_parallel_worktrees_and_a_temporary_workspace(
    built: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """No MLFLOW_TRACKING_URI: the default store at the project root, created by whichever
    stage comes first, from four worktrees at once and from `dvc exp run --temp`."""
    import mlflow

    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    repo = built
    (repo / "mlflow.db").unlink()
    shutil.rmtree(repo / "mlruns", ignore_errors=True)
    trees = []
    for i in range(4):
        tree = tmp_path / f"tree{i}"
        run(["git", "worktree", "add", "-q", "--detach", str(tree), "HEAD"], repo)
        dvc(tree, "cache", "dir", "--local", str(repo / ".dvc" / "cache"))
        dvc(tree, "checkout", "-q")
        set_alpha(tree, 0.1 * (i + 1))
        trees.append(tree)
    procs = [
        subprocess.Popen(["dvc", "repro", "train"], cwd=t, stderr=subprocess.PIPE, text=True)
        for t in trees
    ]
    errors = [p.communicate()[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], errors
    assert not (repo / "mlruns").exists() or all(
        "_alembic_tmp" not in e for e in errors
    )  # no migration race
    assert len(versions(repo)) == 4, errors

    dvc(repo, "exp", "run", "--temp", "-S", "model.alpha=0.7")
    client = client_of(repo)
    experiment = client.get_experiment_by_name("taxi-trip-duration")
    assert experiment.artifact_location == (repo / "mlruns").as_uri()
    mlflow.set_tracking_uri(f"sqlite:///{repo / 'mlflow.db'}")
    mlflow.set_registry_uri(f"sqlite:///{repo / 'mlflow.db'}")
    newest = max(versions(repo), key=int)
    model = mlflow.pyfunc.load_model(f"models:/{MODEL}/{newest}")
    assert model is not None


def test_a_full_disk_is_one_line_naming_where(project: Path):
    staging = project / ".dvc" / "tmp" / "staging"
    staging.mkdir(parents=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4k", "tmpfs", str(staging)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small file system here: {mounted.stderr!r}")
    try:
        proc = dvc(project, "repro", "ingest_zones", check=False)
    finally:
        subprocess.run(["umount", "-l", str(staging)], check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    assert "CANNOT WRITE in stage ingest_zones" in proc.stderr
    assert "No space left on device" in proc.stderr and str(staging) in proc.stderr
    assert not (project / "data" / "raw" / "taxi_zone_lookup.csv").exists()


def test_train_and_evaluate_record_without_importing_mlflow(built: Path):
    """On the embedded store no stage process imports MLflow (1.5-2 s each): train logs and
    registers its model, evaluate searches, tags and moves aliases, all through
    stage_runtime.sqlite_client and stage_runtime.pyfunc_folder."""
    repo = built
    count = len(versions(repo))
    set_alpha(repo, 0.3)
    proc = subprocess.run(
        ["dvc", "repro"],
        cwd=repo,
        env={**os.environ, "PYTHONPROFILEIMPORTTIME": "1"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Running stage 'train'" in proc.stdout and "Running stage 'evaluate'" in proc.stdout
    imported = {
        line.rsplit("|", 1)[1].strip()
        for line in proc.stderr.splitlines()
        if line.startswith("import time:") and line.count("|") == 2
    }
    # The stages' own lines are there (modules only train and evaluate import).
    assert {"registry.champion", "stages.plot_images", "stage_runtime.pyfunc_folder"} <= imported
    assert not {name for name in imported if name.split(".")[0] == "mlflow"}
    assert len(versions(repo)) == count + 1
    assert_registry_agrees_with_files(repo)


def test_a_model_folder_not_mirrored_is_written_by_mlflow_and_registered(built: Path):
    """The fallback end to end: a setting stage_runtime.pyfunc_folder does not mirror
    (MLFLOW_LOG_MODEL_COMPRESSION) makes train write the model folder with MLflow's own
    save_model. The version is registered from that folder like any other: its files, the
    registry and dvc.lock agree, and MLflow loads it and scores the example as the file does."""
    import mlflow
    import pandas as pd

    from stages import model as models

    repo = built
    count = len(versions(repo))
    set_alpha(repo, 0.4)
    proc = run(["dvc", "repro"], repo, {**os.environ, "MLFLOW_LOG_MODEL_COMPRESSION": "gzip"})
    output = proc.stdout + proc.stderr
    assert "model folder written by MLflow: MLFLOW_LOG_MODEL_COMPRESSION" in output, output[-3000:]
    assert len(versions(repo)) == count + 1
    assert_registry_agrees_with_files(repo)

    newest = max(versions(repo).values(), key=lambda v: int(v.version))
    folder = Path(newest.source.removeprefix("file://"))
    mlmodel = yaml.safe_load((folder / "MLmodel").read_text())
    assert mlmodel["flavors"]["python_function"]["python_model_compression"] == "gzip"
    assert file_md5(folder / "artifacts" / "model.json") == newest.tags["model_md5"]

    example = pd.read_parquet(repo / "data" / "features" / "input_example.parquet")
    loaded = mlflow.pyfunc.load_model(str(folder))
    assert loaded.metadata.signature.to_dict() == request.signature_dict()
    encoders = json.loads((repo / "data" / "features" / "encoders.json").read_text())
    trips = request.trips_from_request(example, encoders)
    expected = models.predict_trips(
        models.load(repo / "models" / "model.json"), encoders, trips, threads=1
    )
    assert np.allclose(np.asarray(loaded.predict(example)), expected)
