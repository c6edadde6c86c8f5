"""The direct SQLite writer (lineage/sqlite_store.py) against MLflow's own client: the same run
read back through MLflow, and a store it must not touch left to MLflow."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest

from lineage import record
from lineage.sqlite_store import DirectStore, http_source, mlflow_head_revision
from stages.tracking import ClientWriter, open_writer

EXPERIMENT = "taxi-trip-duration"
TAGS = {
    "stage": "prepare@2025-01",
    "pipeline_run_id": "dvc-1-2",
    "in/data/raw/green_tripdata_2025-01.parquet": "aa" * 16,
    "out/data/clean/trips_2025-01.parquet": "bb" * 16,
}
PARAMS = {"data.colour": "green", "prepare.max_distance_miles": "60"}
METRICS = {"rows": 44585.0, "share": 0.25, "missing": float("nan"), "big": float("inf")}
DATASETS = [
    ("data/raw/green_tripdata_2025-01.parquet", "aa" * 16, http_source("file:///x"), "input"),
    ("data/clean/trips_2025-01.parquet", "bb" * 16, http_source("file:///y"), "output"),
]


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, Path]:
    """A store MLflow built, with the pipeline's experiment."""
    monkeypatch.setenv(record.EXPERIMENT_ENV, EXPERIMENT)
    path = tmp_path / "mlflow.db"
    uri = f"sqlite:///{path}"
    record.connect(uri)
    return uri, path


def write(writer: DirectStore | ClientWriter) -> str:
    run_id = writer.create_run(TAGS, run_name="prepare@2025-01")
    writer.log_batch(run_id, params=PARAMS)
    writer.log_batch(run_id, metrics=METRICS, tags={"code/stages/prepare.py": "cc" * 16})
    writer.log_inputs(run_id, DATASETS)
    writer.log_batch(run_id, metrics={"mlflow_seconds": 0.1})
    writer.set_terminated(run_id, "FINISHED")
    return run_id


def test_head_revision_is_mlflows() -> None:
    from mlflow.store.db.utils import _get_latest_schema_revision

    assert mlflow_head_revision() == _get_latest_schema_revision()


def test_a_direct_run_reads_back_as_mlflows_own(store: tuple[str, Path]) -> None:
    uri, path = store
    client = record.connect(uri)
    direct = DirectStore.open(path, EXPERIMENT)
    assert direct is not None
    runs = [client.get_run(write(direct)), client.get_run(write(ClientWriter(client, uri)))]
    ours, theirs = runs
    for attribute in ("status", "run_name", "lifecycle_stage", "user_id", "experiment_id"):
        assert getattr(ours.info, attribute) == getattr(theirs.info, attribute), attribute
    assert ours.info.artifact_uri == theirs.info.artifact_uri.replace(
        theirs.info.run_id, ours.info.run_id
    )
    assert ours.info.end_time >= ours.info.start_time
    assert ours.data.tags == theirs.data.tags
    assert ours.data.params == theirs.data.params
    assert ours.data.metrics.keys() == theirs.data.metrics.keys()
    for key, value in theirs.data.metrics.items():
        assert ours.data.metrics[key] == pytest.approx(value, nan_ok=True), key

    def inputs(run) -> list[tuple]:
        return sorted(
            (i.dataset.name, i.dataset.digest, i.dataset.source_type, i.dataset.source)
            + tuple((t.key, t.value) for t in i.tags)
            for i in run.inputs.dataset_inputs
        )

    assert inputs(ours) == inputs(theirs) and len(inputs(ours)) == 2
    # The lineage query finds the direct run as the producer, as it finds MLflow's.
    found = record.find_producer(
        client, [ours.info.experiment_id], "data/clean/trips_2025-01.parquet", "bb" * 16
    )
    assert found is not None


def test_what_mlflow_refuses_is_refused(store: tuple[str, Path]) -> None:
    direct = DirectStore.open(store[1], EXPERIMENT)
    run_id = direct.create_run(TAGS, run_name="x")
    direct.log_batch(run_id, params={"a": "1"})
    with pytest.raises(ValueError, match="already logged"):
        direct.log_batch(run_id, params={"a": "2"})
    with pytest.raises(ValueError, match="treated as files"):
        direct.log_batch(run_id, tags={"out//tmp/x": "1"})


def test_stores_it_must_not_touch_go_to_mlflow(
    store: tuple[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri, path = store
    assert isinstance(open_writer(uri), DirectStore)
    assert DirectStore.open(tmp_path / "none.db", EXPERIMENT) is None
    assert DirectStore.open(path, "another-experiment") is None
    # A new file: MLflow's client creates the schema and the experiment.
    monkeypatch.setenv(record.EXPERIMENT_ENV, EXPERIMENT)
    assert isinstance(open_writer(f"sqlite:///{tmp_path / 'new.db'}"), ClientWriter)
    assert isinstance(open_writer(f"sqlite:///{tmp_path / 'new.db'}"), DirectStore)
    # A schema of another MLflow version: left to MLflow (which refuses or migrates it).
    with sqlite3.connect(path) as connection:
        connection.execute("update alembic_version set version_num = 'other'")
    assert DirectStore.open(path, EXPERIMENT) is None


def test_a_read_only_store_fails_the_write(store: tuple[str, Path]) -> None:
    """An immutable store file (root ignores permission bits): the insert fails, loudly."""
    if shutil.which("chattr") is None:
        pytest.skip("chattr is not available")
    path = store[1]
    subprocess.run(["chattr", "+i", str(path)], check=True)
    try:
        direct = DirectStore.open(path, EXPERIMENT)
        assert direct is not None
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            direct.create_run(TAGS, run_name="x")
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)
