"""Lineage end to end: real `dvc repro` in a temporary git repo, recording to a real
`mlflow server`; `python -m lineage` traces, verifies, restores and reproduces."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from stage_runtime.record import folder_md5, locked_outputs, read_lock
from stage_runtime.tracking import CODE_FOLDERS
from tests.conftest import MONTHS, run, sample_month

MODEL = "nyc-taxi-trip-duration-minutes"


# --------------------------------------------------------------------------- end to end


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """A real `mlflow server` (SQLite backend, artifacts on local disk) on loopback."""
    home = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    uri = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend-store-uri",
            f"sqlite:///{home / 'mlflow.db'}",
            "--artifacts-destination",
            str(home / "artifacts"),
            "--workers",
            "1",
        ],
        stdout=open(home / "server.log", "w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.time() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as resp:
                if resp.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            pytest.fail(f"mlflow server did not start:\n{(home / 'server.log').read_text()}")
        time.sleep(0.5)
    yield uri
    os.killpg(proc.pid, 15)
    proc.wait(timeout=30)


def _trace(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "lineage", *args], repo, dict(os.environ), check=check)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _raw_md5s(trace_json: dict) -> dict[str, str]:
    """Raw file name -> md5, from the chain a trace printed."""
    found: dict[str, str] = {}

    def walk(node: dict) -> None:
        producer = node.get("producer")
        if producer is None:
            return
        if producer["stage"].startswith("ingest"):
            found[Path(node["path"]).name] = node["md5"]
        for child in producer["inputs"]:
            walk(child)

    walk(trace_json["lineage"]["model"])
    return found


@pytest.mark.slow
def test_lineage_end_to_end(project, shared_tlc, small_tlc, mlflow_server, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.chdir(project)
    env = dict(os.environ)
    client = MlflowClient(mlflow_server, mlflow_server)

    # Model 1: the sampled months, default params.
    run(["dvc", "repro"], project, env)
    run(["git", "add", "-A"], project, env)
    run(["git", "commit", "-qm", "model 1"], project, env)
    locked = read_lock(project / "dvc.lock")
    lock = locked_outputs(locked)

    experiment = client.get_experiment_by_name("taxi-trip-duration")
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    stages = {r.data.tags["stage"]: r for r in runs}
    assert {"ingest_zones", "features", "train", "evaluate"} <= set(stages)
    assert {f"prepare@{m}" for m in MONTHS} <= set(stages)
    # One dvc repro = one pipeline execution, grouped by one tag.
    assert len({r.data.tags["pipeline_run_id"] for r in runs}) == 1
    # Every recorded hash is the md5 dvc.lock holds for the same path: outputs, the files
    # read (a folder dependency, data/clean, is recorded file by file) and the code that ran.
    assert set(stages) == set(locked)
    for name, stage_run in stages.items():
        tags = stage_run.data.tags
        files = {k.partition("/")[0]: {} for k in tags}
        for key, md5 in tags.items():
            kind, _, path = key.partition("/")
            files[kind][path] = md5
        assert files["out"] == locked[name].outs, name
        # dvc.lock holds one md5 for a code folder (stage_runtime), the record its files'.
        code = {p: m for p, m in locked[name].deps.items() if p.endswith(".py")}
        for folder in CODE_FOLDERS:
            in_folder = {p: m for p, m in files["code"].items() if p.startswith(f"{folder}/")}
            assert in_folder, f"{name}: no file of {folder} recorded"
            assert folder_md5(folder, in_folder) == locked[name].deps[folder], name
            code |= in_folder
        assert files["code"] == code, name
        data = {p: m for p, m in locked[name].deps.items() if not p.endswith(".py")}
        assert {p: m for p, m in data.items() if not m.endswith(".dir")} == {
            p: m for p, m in files.get("in", {}).items() if p in data
        }, name
    assert stages["train"].data.params["model.alpha"] == "1.0"
    assert "validation.rmse" in stages["train"].data.metrics  # evaluate reported to the model run
    artifacts = {a.path for a in client.list_artifacts(stages["train"].info.run_id, "plots")}
    assert "plots/predicted_vs_actual.svg" in artifacts
    model_files = {a.path for a in client.list_artifacts(stages["train"].info.run_id, "model")}
    assert model_files == {
        f"model/{name}"
        for name in (
            "MLmodel",
            "artifacts",
            "code",
            "conda.yaml",
            "input_example.json",
            "pyfunc_model.py",
            "python_env.yaml",
            "requirements.txt",
            "serving_input_example.json",
        )
    }  # no uv.lock or pyproject.toml: record.apply_client_defaults
    version1 = client.get_model_version(MODEL, "1")
    assert version1.run_id == stages["train"].info.run_id
    assert version1.tags["model_md5"] == lock["models/model.json"]
    assert version1.tags["raw/data/raw/green_tripdata_2025-01.parquet"] == _md5(
        small_tlc / "green_tripdata_2025-01.parquet"
    )
    assert "dvc_lock_md5" in version1.tags
    evaluation = json.loads((project / "metrics" / "evaluate.json").read_text())
    assert float(version1.tags["validation.rmse"]) == evaluation["validation"]["rmse"]
    assert float(version1.tags["test.rmse"]) == evaluation["test"]["rmse"]

    # Model 2: other raw bytes (a different sample of the real months) and another alpha.
    mirror2 = tmp_path / "mirror2"
    mirror2.mkdir()
    for month in MONTHS:
        name = f"green_tripdata_{month}.parquet"
        sample_month(shared_tlc / name, mirror2 / name, stride=13)
    (mirror2 / "taxi_zone_lookup.csv").write_bytes(
        (small_tlc / "taxi_zone_lookup.csv").read_bytes()
    )
    env2 = dict(env, TLC_SOURCE=str(mirror2))
    run(["dvc", "exp", "run", "--force", "-S", "model.alpha=0.5"], project, env2)
    run(["git", "add", "-A"], project, env2)
    run(["git", "commit", "-qm", "model 2"], project, env2)

    trace1 = json.loads(_trace(project, f"models:/{MODEL}/1", "--json").stdout)
    trace2 = json.loads(_trace(project, f"models:/{MODEL}/2", "--json").stdout)
    raw1, raw2 = _raw_md5s(trace1), _raw_md5s(trace2)
    for month in MONTHS:
        name = f"green_tripdata_{month}.parquet"
        assert raw1[name] == _md5(small_tlc / name)
        assert raw2[name] == _md5(mirror2 / name)
        assert raw1[name] != raw2[name]

    # Both verify against dvc.lock in git and the DVC cache.
    for version in ("1", "2"):
        verified = _trace(project, f"models:/{MODEL}/{version}", "--verify")
        assert "verified against dvc.lock" in verified.stdout

    # Restore model 1's raw files after the workspace moved on to model 2's data.
    restored = tmp_path / "restored"
    _trace(project, f"models:/{MODEL}/1", "--restore", str(restored))
    for month in MONTHS:
        name = f"green_tripdata_{month}.parquet"
        assert _sha256(restored / name) == _sha256(small_tlc / name)

    # Reproduce model 2 at its commit: byte-identical model, equal metrics.
    reproduced = json.loads(_trace(project, f"models:/{MODEL}/2", "--reproduce", "--json").stdout)
    assert reproduced["reproduce"]["byte_identical"] is True
    assert reproduced["reproduce"]["metrics_equal"] is True

    # Tampering: a recorded data hash that no longer matches is reported, exit status 1.
    train2 = client.get_model_version(MODEL, "2").run_id
    client.set_tag(train2, "in/data/features/train.parquet", "0" * 32)
    tampered = _trace(project, f"models:/{MODEL}/2", "--verify", check=False)
    assert tampered.returncode == 1
    assert "MISMATCH" in tampered.stdout
    # ... and so are corrupted bytes in the DVC cache (DVC itself would not notice).
    raw_md5 = raw1["green_tripdata_2025-01.parquet"]
    cached = project / ".dvc" / "cache" / "files" / "md5" / raw_md5[:2] / raw_md5[2:]
    cached.chmod(0o644)
    cached.write_bytes(cached.read_bytes()[:-10] + b"0123456789")
    corrupted = _trace(project, f"models:/{MODEL}/1", "--verify", check=False)
    assert corrupted.returncode == 1

    # What is not there: one line naming it, exit 3; a usage error, exit 2. No traceback.
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    for args, status, words in [
        (["models:/does-not-exist/1"], 3, "models:/does-not-exist/1"),
        (["models:/does-not-exist/latest"], 3, "no registered model 'does-not-exist'"),
        (["0123456789abcdef0123456789abcdef"], 3, "no such MLflow run"),
        ([f"models:/{MODEL}/1", "--restore", str(a_file)], 2, "not a directory"),
    ]:
        refused = _trace(project, *args, check=False)
        assert refused.returncode == status, (args, refused.stderr)
        assert words in refused.stderr and "Traceback" not in refused.stderr, refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr


@pytest.mark.slow
def test_unreachable_tracking_store_fails_cleanly(project, monkeypatch):
    """No output and no dvc.lock entry appears without its MLflow record; failure is bounded."""
    monkeypatch.chdir(project)
    env = dict(os.environ)
    run(["dvc", "repro", "ingest_zones"], project, env)
    lock_before = (project / "dvc.lock").read_bytes()

    def forced_repro(uri: str) -> tuple[subprocess.CompletedProcess, float]:
        started = time.monotonic()
        proc = run(
            ["dvc", "repro", "--force", "ingest_zones"],
            project,
            dict(env, MLFLOW_TRACKING_URI=uri),
            check=False,
        )
        return proc, time.monotonic() - started

    dead = f"http://127.0.0.1:{_free_port()}"
    proc, elapsed = forced_repro(dead)
    assert proc.returncode != 0
    assert f"TRANSIENT FAILURE in stage ingest_zones: MLflow tracking store {dead}" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert elapsed < 30, elapsed
    assert (project / "dvc.lock").read_bytes() == lock_before
    assert (project / "data" / "raw" / "taxi_zone_lookup.csv").is_file()
    assert not list((project / "data" / "raw").glob(".*.tmp"))

    # A server that accepts connections and never answers costs seconds too.
    with socket.socket() as hung:
        hung.bind(("127.0.0.1", 0))
        hung.listen(16)
        silent = f"http://127.0.0.1:{hung.getsockname()[1]}"
        proc, elapsed = forced_repro(silent)
    assert proc.returncode != 0 and silent in proc.stderr and "Traceback" not in proc.stderr
    assert elapsed < 30, elapsed
    assert (project / "dvc.lock").read_bytes() == lock_before
