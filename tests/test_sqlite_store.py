"""The direct SQLite writer (stage_runtime/sqlite_store.py) against MLflow's own client: the
same run read back through MLflow, and a store it must not touch left to MLflow."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from stage_runtime import record, sqlite_store
from stage_runtime.sqlite_store import DirectStore, http_source, mlflow_head_revision
from stage_runtime.tracking import ClientWriter, Writer, open_writer

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


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The pristine stores of these tests: their own cache folder, empty at the start."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, Path]:
    """A store MLflow built, with the pipeline's experiment."""
    monkeypatch.setenv(record.EXPERIMENT_ENV, EXPERIMENT)
    path = tmp_path / "mlflow.db"
    uri = f"sqlite:///{path}"
    record.connect(uri)
    return uri, path


def write(writer: Writer) -> str:
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


def assert_same_run(client, ours_id: str, theirs_id: str) -> None:
    """Two runs of `write`, one by MLflow's client, read back alike through MLflow."""
    ours, theirs = client.get_run(ours_id), client.get_run(theirs_id)
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
    # The lineage query finds our run as the producer, as it finds MLflow's.
    found = record.find_producer(
        client, [ours.info.experiment_id], "data/clean/trips_2025-01.parquet", "bb" * 16
    )
    assert found is not None


def test_a_direct_run_reads_back_as_mlflows_own(store: tuple[str, Path]) -> None:
    uri, path = store
    client = record.connect(uri)
    direct = DirectStore.open(path, EXPERIMENT)
    assert direct is not None
    assert_same_run(client, write(direct), write(ClientWriter(client, uri)))


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
    # A new file: copied from the pristine store, the experiment written directly.
    monkeypatch.setenv(record.EXPERIMENT_ENV, EXPERIMENT)
    assert isinstance(open_writer(f"sqlite:///{tmp_path / 'new.db'}"), DirectStore)
    # No pristine store to be had (the cache folder cannot be made): MLflow's client creates
    # the schema and the experiment, as before.
    monkeypatch.setenv("XDG_CACHE_HOME", str(path))  # a file, not a folder
    assert isinstance(open_writer(f"sqlite:///{tmp_path / 'other.db'}"), ClientWriter)
    assert isinstance(open_writer(f"sqlite:///{tmp_path / 'other.db'}"), DirectStore)
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


def _rows(path: Path) -> dict[str, list[tuple]]:
    """Every table's rows, times and ids left out (they differ between two stores)."""
    with sqlite3.connect(path) as db:
        tables = [r[0] for r in db.execute("select name from sqlite_master where type='table'")]
        return {t: sorted(map(repr, db.execute(f'select * from "{t}"'))) for t in tables}


def _schema(path: Path) -> list[tuple]:
    """Every table and index with its definition's lines as a set: MLflow's own builds list
    the constraints of `runs` in an order that follows PYTHONHASHSEED (a migration's set)."""
    with sqlite3.connect(path) as db:
        rows = db.execute("select type, name, tbl_name, sql from sqlite_master")
        return sorted(
            (
                kind,
                name,
                table,
                sorted(line.strip().rstrip(",") for line in (sql or "").split("\n")),
            )
            for kind, name, table, sql in rows
        )


def _use(uri: str) -> dict:
    """The same record written and read through MLflow's client: experiments, a run, a
    registered model with a version, tags and an alias."""
    client = record.connect(uri)
    experiment_id = record.ensure_experiment(client, uri)
    run_id = write(ClientWriter(client, uri))
    client.create_registered_model("m", tags={"k": "v"})
    version = client.create_model_version("m", f"runs:/{run_id}/model", run_id, tags={"t": "1"})
    client.set_registered_model_alias("m", "champion", version.version)
    experiments = client.search_experiments(order_by=["experiment_id ASC"])
    run = client.get_run(run_id)
    model = client.get_registered_model("m")
    found = client.get_model_version_by_alias("m", "champion")
    return {  # the run's artifact folder differs by its id only
        "experiments": [
            (e.experiment_id, e.name, e.lifecycle_stage, e.artifact_location, dict(e.tags))
            for e in experiments
        ],
        "experiment_id": experiment_id,
        "run": (run.info.status, run.info.experiment_id, run.data.tags, run.data.params),
        "run_artifacts": run.info.artifact_uri.replace(run_id, "<run>"),
        "model": (model.name, model.tags, dict(model.aliases)),
        "version": (found.version, found.tags, found.run_id == run_id, found.status),
    }


def test_a_copied_store_is_read_as_mlflows_own(tmp_path: Path, cache: Path) -> None:
    """A store copied from the pristine one and a store MLflow built in the same folder have
    the same schema and rows, and MLflow reads and writes both alike."""
    ours, theirs = tmp_path / "ours" / "mlflow.db", tmp_path / "theirs" / "mlflow.db"
    ours.parent.mkdir()
    theirs.parent.mkdir()
    assert sqlite_store.create_store(
        ours, record.DEFAULT_EXPERIMENT, record.artifact_location(ours)
    )
    assert not sqlite_store.create_store(ours, "x", "file:///x"), "an existing store is kept"
    assert list(cache.rglob("*.db")) == [sqlite_store.store_template()]
    assert list(ours.parent.iterdir()) == [ours], "no temporary file left"
    record.connect(f"sqlite:///{theirs}")
    assert _schema(ours) == _schema(theirs)
    rows = _rows(ours), _rows(theirs)
    for table, found in rows[0].items():  # times and folders aside, the same rows
        if table != "experiments":
            assert found == rows[1][table], table
    with sqlite3.connect(ours) as a, sqlite3.connect(theirs) as b:
        query = "select experiment_id, name, artifact_location, lifecycle_stage, workspace "
        query += "from experiments order by experiment_id"
        mine, mlflows = a.execute(query).fetchall(), b.execute(query).fetchall()
    assert [r[:2] + r[3:] for r in mine] == [r[:2] + r[3:] for r in mlflows]
    assert mine[0][2] == f"{Path.cwd().joinpath('mlruns').as_posix()}/0" == mlflows[0][2]
    assert mine[1][2] == record.artifact_location(ours)
    assert mlflows[1][2] == record.artifact_location(theirs)
    # MLflow opens the copy as its own: the same answers to the same calls.
    used = repr(_use(f"sqlite:///{ours}")), repr(_use(f"sqlite:///{theirs}"))
    assert used[0].replace("/ours/", "/theirs/") == used[1]
    assert DirectStore.open(ours, record.DEFAULT_EXPERIMENT) is not None


def test_a_template_of_another_schema_is_never_used(tmp_path: Path, cache: Path) -> None:
    template = sqlite_store.store_template()
    assert template is not None
    assert sqlite_store.store_revision(template) == mlflow_head_revision()
    assert template.name.endswith(f"-{mlflow_head_revision()}.db")
    # The file under the head's name records another revision (a stale or tampered cache):
    # it is rebuilt by MLflow, and the copy is at the head.
    with sqlite3.connect(template) as db:
        db.execute("update alembic_version set version_num = 'other'")
    path = tmp_path / "mlflow.db"
    assert sqlite_store.create_store(path, EXPERIMENT, record.artifact_location(path))
    assert sqlite_store.store_revision(template) == mlflow_head_revision()
    assert sqlite_store.store_revision(path) == mlflow_head_revision()
    # A template of another MLflow version or head beside it is never picked.
    other = template.with_name("mlflow-0.0-other.db")
    shutil.copyfile(template, other)
    assert sqlite_store.store_template() == template


def test_a_new_store_from_the_template_needs_no_mlflow(tmp_path: Path, cache: Path) -> None:
    """The point of the template: once it is built, a stage's first record on a new store
    imports no MLflow (its import and migrations were 2-3 s of the first stage)."""
    assert sqlite_store.store_template() is not None
    code = (
        "import sys\n"
        "from stage_runtime.tracking import open_writer\n"
        f"writer = open_writer('sqlite:///{tmp_path / 'new.db'}')\n"
        "run_id = writer.create_run({}, run_name='x')\n"
        "print(type(writer).__name__, 'mlflow' in sys.modules)\n"
    )
    env = {**os.environ, "XDG_CACHE_HOME": str(cache), record.EXPERIMENT_ENV: EXPERIMENT}
    env.pop(record.TRACKING_URI_ENV, None)
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        cwd=Path(__file__).parents[1],
    )
    assert proc.stdout.split() == ["DirectStore", "False"], proc.stderr
    client = record.connect(f"sqlite:///{tmp_path / 'new.db'}", create=False)
    (run,) = client.search_runs([record.experiment_id(client)])
    assert run.info.run_name == "x"
