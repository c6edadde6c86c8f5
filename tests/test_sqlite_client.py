"""The direct client (stage_runtime/sqlite_client.py) against MLflow's own: the same calls on two
copies of one store, the answers compared, then both stores read back through MLflow."""

from __future__ import annotations

import math
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from stage_runtime import record
from stage_runtime.sqlite_client import (
    NOT_FOUND,
    NonLocalArtifacts,
    SqliteClient,
    SqliteClientError,
)
from stage_runtime.sqlite_store import DirectStore

EXPERIMENT = "taxi-trip-duration"
MODEL = "taxi-duration"
OUT_TAG = "out/data/clean/trips_2025-01.parquet"


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv(record.EXPERIMENT_ENV, EXPERIMENT)
    return tmp_path / "cache"


def _runs(path: Path) -> dict[str, str]:
    """Three runs written directly: two train runs (running) and a finished prepare run."""
    direct = DirectStore.open(path, EXPERIMENT)
    assert direct is not None
    runs = {}
    for number, (name, status) in enumerate(
        [("prepare@2025-01", "FINISHED"), ("train", "RUNNING"), ("train", "RUNNING")]
    ):
        tags = {"stage": name, record.PIPELINE_RUN_TAG: "exec-1" if number < 2 else "exec-2"}
        if number == 0:
            tags[OUT_TAG] = "bb" * 16
        run_id = direct.create_run(tags, run_name=name)
        direct.log_batch(run_id, params={"a": str(number)}, metrics={"rmse": 5.0 + number})
        direct.log_batch(run_id, metrics={"missing": float("nan")})
        if status == "FINISHED":
            direct.set_terminated(run_id, status)
        direct.connection.execute(
            "update runs set start_time = ? where run_uuid = ?", (1_000_000 + number, run_id)
        )
        runs[("prepare", "a", "b")[number]] = run_id
    direct.close()
    return runs


@pytest.fixture
def stores(tmp_path: Path) -> tuple[Path, Path, dict[str, str]]:
    """One store copied twice, each copy with its artifacts in its own folder."""
    base = tmp_path / "base" / "mlflow.db"
    base.parent.mkdir()
    record.connect(f"sqlite:///{base}")
    runs = _runs(base)
    copies = []
    for name in ("ours", "theirs"):
        path = tmp_path / name / "mlflow.db"
        path.parent.mkdir()
        shutil.copyfile(base, path)
        location = record.artifact_location(path)
        with sqlite3.connect(path) as db:
            db.execute(
                "update experiments set artifact_location = ? where name = ?",
                (location, EXPERIMENT),
            )
            db.execute(
                "update runs set artifact_uri = ? || '/' || run_uuid || '/artifacts'",
                (location,),
            )
        copies.append(path)
    return copies[0], copies[1], runs


class MlflowSide:
    """MLflow's client, with `register_model` as the stages call it (mlflow.register_model)."""

    def __init__(self, uri: str):
        import mlflow
        from mlflow.tracking import MlflowClient

        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        self._client = MlflowClient(tracking_uri=uri, registry_uri=uri)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def register_model(self, model_uri: str, name: str, tags: dict) -> Any:
        import mlflow

        return mlflow.register_model(model_uri, name, tags=tags)


def _model_folder(root: Path) -> Path:
    """A model folder as train logs it: an MLmodel file beside its artifacts."""
    folder = root / "model"
    (folder / "artifacts").mkdir(parents=True)
    (folder / "MLmodel").write_text("flavors:\n  python_function:\n    loader_module: x\n")
    (folder / "artifacts" / "model.json").write_text('{"intercept": 12.5}\n')
    return folder


def describe(value: Any) -> Any:
    """What callers read of a result, comparable between the two clients."""
    if isinstance(value, list):
        return [describe(v) for v in value] + [("token", bool(getattr(value, "token", None)))]
    if hasattr(value, "info") and hasattr(value, "data"):
        info, data = value.info, value.data
        return (
            "run",
            info.run_id,
            info.run_name,
            info.experiment_id,
            info.user_id,
            info.status,
            info.artifact_uri,
            info.lifecycle_stage,
            type(info.start_time).__name__,
            info.end_time is None,
            data.tags,
            data.params,
            {k: "nan" if math.isnan(v) else v for k, v in data.metrics.items()},
        )
    if hasattr(value, "current_stage"):
        assert value.creation_timestamp <= value.last_updated_timestamp
        return (
            "version",
            value.name,
            value.version,
            type(value.version).__name__,
            value.run_id,
            value.source,
            value.tags,
            sorted(value.aliases),
            value.status,
            value.current_stage,
            value.description,
            value.user_id,
            value.run_link,
            value.status_message,
        )
    if hasattr(value, "latest_versions") or hasattr(value, "aliases"):
        assert value.creation_timestamp <= value.last_updated_timestamp
        aliases = {k: (v, type(v).__name__) for k, v in value.aliases.items()}
        return ("model", value.name, value.description, value.tags, aliases)
    return value


def play(client: Any, runs: dict[str, str], scratch: Path) -> list:
    """The calls train and evaluate make, in one sequence; every answer and error kept."""
    answers: list = []

    def call(method: str, *args: Any, **kwargs: Any) -> Any:
        try:
            result = getattr(client, method)(*args, **kwargs)
        except Exception as exc:
            answers.append((method, args, "error", exc.error_code, exc.message))
            return None
        answers.append((method, args, describe(result)))
        return result

    a, b = runs["a"], runs["b"]
    call("set_tag", a, "model_name", MODEL)
    call("set_tag", b, "mlflow.runName", "train-renamed")
    model = _model_folder(scratch)
    call("log_artifacts", a, str(model), "model")
    call("log_artifacts", b, str(model), "model")
    report = scratch / "report.md"
    report.write_text("# rmse 5.1\n")
    call("log_artifact", a, str(report), "reports")
    call("log_artifact", a, str(report))
    tags = {record.RUN_ID_TAG: a, record.MODEL_MD5_TAG: "aa" * 16, "code/x.py": 7}
    call("register_model", f"runs:/{a}/model", MODEL, tags=tags)
    call("register_model", f"runs:/{b}/model/", MODEL, tags={record.MODEL_MD5_TAG: "cc" * 16})
    for alias, version in [("challenger", 1), ("champion", "1"), ("champion", 2)]:
        call("set_registered_model_alias", MODEL, alias, version)
    call("get_registered_model", MODEL)
    call("set_model_version_tag", MODEL, "1", "validation.rmse", 5.25)
    call("set_model_version_tag", MODEL, 1, "validation.rmse", "5.5")
    call("set_model_version_tag", MODEL, 1, "none", None)
    call("set_model_version_tag", MODEL, None, "k", "v")
    call("get_model_version_by_alias", MODEL, "champion")
    call("get_model_version_by_alias", MODEL, "challenger")
    call("get_model_version_by_alias", MODEL, "latest")
    call("delete_registered_model_alias", MODEL, "challenger")
    call("delete_registered_model_alias", MODEL, "challenger")
    call("get_model_version", MODEL, "1")
    call("delete_model_version", MODEL, 2)
    call("get_registered_model", MODEL)
    call("register_model", f"runs:/{b}/model", MODEL, tags={record.MODEL_MD5_TAG: "cc" * 16})
    call("set_registered_model_alias", MODEL, "champion", 3)
    for query in (
        f"name = '{MODEL}'",
        f"name = '{MODEL}' and run_id = '{b}'",
        f"name = '{MODEL}' and run_id = '{a}'",
        f"name = '{MODEL}' and tags.{record.MODEL_MD5_TAG} = '{'cc' * 16}'",
        f"name = '{MODEL}' and tags.{record.MODEL_MD5_TAG} = 'none'",
        "name = 'no-model'",
    ):
        call("search_model_versions", query)
    call("search_model_versions", f"name = '{MODEL}'", max_results=1)
    call("set_terminated", a, "FINISHED")
    call("set_terminated", b, "FAILED")
    experiments = [client.get_run(a).info.experiment_id]
    for query, order in (
        (f"tags.`{OUT_TAG}` = '{'bb' * 16}' and attributes.status = 'FINISHED'", "DESC"),
        (f"tags.{record.PIPELINE_RUN_TAG} = 'exec-1'", None),
        ("attributes.status = 'FINISHED'", "ASC"),
        ("attributes.status = 'FINISHED'", "DESC"),
        ("", None),
        (f"tags.{record.PIPELINE_RUN_TAG} = 'exec-1' and tags.stage = 'train'", "ASC"),
    ):
        order_by = [f"attributes.start_time {order}"] if order else None
        call("search_runs", experiments, filter_string=query, order_by=order_by)
    oldest = {"order_by": ["attributes.start_time ASC"], "max_results": 2}
    first = call("search_runs", experiments, "", **oldest)
    call("search_runs", experiments, "", **oldest, page_token=first.token)
    call("get_run", a)
    call("get_run", b)
    # What the stages find missing or refused: the same error code and message.
    call("get_run", "0" * 32)
    call("get_model_version", MODEL, 2)
    call("get_model_version", MODEL, 9)
    call("get_model_version", MODEL, "x")
    call("get_model_version", "no-model", 1)
    call("get_model_version_by_alias", MODEL, "challenger")
    call("get_model_version_by_alias", "no-model", "champion")
    call("get_registered_model", "no-model")
    call("set_registered_model_alias", MODEL, "challenger", 2)
    call("set_registered_model_alias", MODEL, "v3", 3)
    call("set_registered_model_alias", MODEL, "bad alias", 3)
    call("set_registered_model_alias", "no-model", "champion", 1)
    call("set_model_version_tag", MODEL, 2, "k", "v")
    call("set_model_version_tag", MODEL, 3, "../k", "v")
    call("delete_model_version", MODEL, 2)
    call("delete_model_version", "no-model", 1)
    call("delete_registered_model_alias", "no-model", "champion")
    call("get_model_version", "bad/name", 1)
    download = scratch / "download"
    download.mkdir()
    path = call("download_artifacts", a, "model/artifacts", str(download))
    assert Path(path).joinpath("model.json").read_text() == '{"intercept": 12.5}\n'
    call("download_artifacts", a, "reports/report.md", str(download))
    call("download_artifacts", a, "none", str(download))
    return answers


def _registry_rows(path: Path) -> dict[str, list]:
    """The registry tables' rows, timestamps left out."""
    queries = {
        "registered_models": "select name, description, workspace from registered_models",
        "model_versions": "select name, version, description, user_id, current_stage, source, "
        "run_id, status, status_message, run_link, storage_location, workspace "
        "from model_versions",
        "model_version_tags": "select * from model_version_tags",
        "registered_model_aliases": "select * from registered_model_aliases",
        "registered_model_tags": "select * from registered_model_tags",
        "runs": "select run_uuid, name, status, end_time is null, artifact_uri, "
        "lifecycle_stage from runs",
        "tags": "select * from tags",
    }
    with sqlite3.connect(path) as db:
        return {t: sorted(map(repr, db.execute(q))) for t, q in queries.items()}


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_the_same_calls_give_the_same_answers_and_rows(
    stores: tuple[Path, Path, dict[str, str]], tmp_path: Path
) -> None:
    ours_path, theirs_path, runs = stores
    ours = SqliteClient.open(ours_path, EXPERIMENT)
    assert ours is not None
    scratch = tmp_path / "scratch-ours", tmp_path / "scratch-theirs"
    mine = play(ours, runs, scratch[0])
    mlflows = play(MlflowSide(f"sqlite:///{theirs_path}"), runs, scratch[1])

    def same(value: Any) -> str:
        text = repr(value)
        for folder in ("ours", "theirs", "scratch-ours", "scratch-theirs"):
            text = text.replace(str(tmp_path / folder), "<root>")
        return text

    assert len(mine) == len(mlflows)
    for got, want in zip(mine, mlflows, strict=True):
        assert same(got) == same(want), f"{same(got)}\n!=\n{same(want)}"
    errors = [a for a in mlflows if a[2] == "error"]
    assert {e[3] for e in errors} == {NOT_FOUND, "INVALID_PARAMETER_VALUE"} and len(errors) == 20
    # Both stores, read back through MLflow: the same runs, versions, aliases and files.
    rows = _registry_rows(ours_path), _registry_rows(theirs_path)
    assert same(rows[0]) == same(rows[1])
    versions = {row.split(",")[1] for row in rows[0]["model_versions"]}
    assert versions == {" 1", " 2", " 3"}, "a deleted version keeps its row and number"
    assert any(
        "Deleted_Internal" in r and "REDACTED-SOURCE-PATH" in r for r in rows[0]["model_versions"]
    )
    for path in (ours_path, theirs_path):  # MLflow's time rules, held by both stores
        with sqlite3.connect(path) as db:
            model = db.execute("select creation_time, last_updated_time from registered_models")
            times = dict(
                db.execute("select version, last_updated_time - creation_time from model_versions")
            )
            (created, updated), (last,) = (
                model.fetchone(),
                db.execute("select max(creation_time) from model_versions").fetchone(),
            )
        # Tags and aliases change no time; a deletion its version's and the model's.
        assert times[1] == times[3] == 0 and times[2] >= 0
        assert updated >= last >= created
    assert _files(ours_path.parent / "mlruns") == _files(theirs_path.parent / "mlruns")
    readers = [MlflowSide(f"sqlite:///{p}") for p in (ours_path, theirs_path)]
    reads = [
        [
            describe(reader.get_run(runs["a"])),
            describe(reader.get_run(runs["b"])),
            describe(reader.get_registered_model(MODEL)),
            describe(reader.search_model_versions(f"name = '{MODEL}'")),
            describe(reader.get_model_version(MODEL, 3)),
            [f.path for f in reader.list_artifacts(runs["a"], "model")],
        ]
        for reader in readers
    ]
    assert same(reads[0]) == same(reads[1])


def test_a_query_it_does_not_know_is_refused(
    stores: tuple[Path, Path, dict[str, str]],
) -> None:
    client = SqliteClient.open(stores[0], EXPERIMENT)
    assert client is not None
    for query in (
        "metrics.rmse < 5",
        "tags.stage != 'train'",
        "tags.stage = 'train' or tags.stage = 'x'",
        "attributes.run_name = 'x'",
        "tags.stage LIKE 'tr%'",
    ):
        with pytest.raises(ValueError, match="unsupported"):
            client.search_runs(["1"], query)
    with pytest.raises(ValueError, match="order_by"):
        client.search_runs(["1"], "", order_by=["metrics.rmse DESC"])
    with pytest.raises(ValueError, match="run_view_type"):
        client.search_runs(["1"], "", 3)  # ViewType.ALL: deleted runs too
    for query in ("version_number = 1", "name LIKE 'x%'", "source_path = 'x'"):
        with pytest.raises(ValueError, match="unsupported"):
            client.search_model_versions(query)
    with pytest.raises(ValueError, match="runs:/"):
        client.register_model(f"models:/{MODEL}/1", MODEL)
    # A runs:/ folder without an MLmodel (MLflow would look for a logged model).
    with pytest.raises(ValueError, match="MLmodel"):
        client.register_model(f"runs:/{stores[2]['a']}/model", MODEL)
    with pytest.raises(SqliteClientError) as missing:
        client.register_model(f"runs:/{'0' * 32}/model", MODEL)
    assert missing.value.error_code == NOT_FOUND
    with sqlite3.connect(stores[0]) as db:
        assert db.execute("select count(*) from registered_models").fetchone() == (0,)


def test_stores_it_cannot_honour_go_to_mlflow(
    stores: tuple[Path, Path, dict[str, str]], tmp_path: Path
) -> None:
    path, _, runs = stores
    assert SqliteClient.open(tmp_path / "none.db", EXPERIMENT) is None
    assert SqliteClient.open(path, "another-experiment") is None
    changes = [
        "insert into webhooks (webhook_id, name, url, status, workspace) values "
        "('w', 'w', 'http://localhost:1/hook', 'ACTIVE', 'default')",
        "insert into registered_models (name, workspace) values ('p', 'default'); "
        "insert into registered_model_tags (key, value, name, workspace) values "
        "('mlflow.prompt.is_prompt', 'true', 'p', 'default')",
        "update experiments set artifact_location = 's3://bucket/x' where experiment_id = 0",
    ]
    for change in changes:
        copy = tmp_path / f"copy-{changes.index(change)}.db"
        shutil.copyfile(path, copy)
        with sqlite3.connect(copy) as db:
            db.executescript(change)
        assert SqliteClient.open(copy, EXPERIMENT) is None, change
        writer = DirectStore.open(copy, EXPERIMENT)
        assert SqliteClient.for_store(writer) is None, change
        assert writer.connection.execute("select count(*) from runs").fetchone() == (3,)
        writer.close()
    # A run whose artifacts are elsewhere, in a store otherwise fine: refused by name.
    with sqlite3.connect(path) as db:
        db.execute(
            "update runs set artifact_uri = 's3://bucket/r' where run_uuid = ?", (runs["a"],)
        )
    client = SqliteClient.open(path, EXPERIMENT)
    with pytest.raises(NonLocalArtifacts, match="s3://bucket/r"):
        client.log_artifact(runs["a"], str(path))


def test_it_needs_no_mlflow(stores: tuple[Path, Path, dict[str, str]], tmp_path: Path) -> None:
    """The point: a train stage's registry calls without MLflow's import."""
    path, _, runs = stores
    _model_folder(tmp_path / "scratch")
    code = (
        "import sys, time\n"
        "start = time.perf_counter()\n"
        "from pathlib import Path\n"
        "from stage_runtime.sqlite_client import SqliteClient\n"
        f"client = SqliteClient.open(Path({str(path)!r}), {EXPERIMENT!r})\n"
        f"run = {runs['a']!r}\n"
        f"client.log_artifacts(run, {str(tmp_path / 'scratch' / 'model')!r}, 'model')\n"
        f"version = client.register_model(f'runs:/{{run}}/model', {MODEL!r}, tags={{'k': 'v'}})\n"
        f"client.set_registered_model_alias({MODEL!r}, 'challenger', version.version)\n"
        f"client.search_model_versions(\"name = '{MODEL}'\")\n"
        "client.set_tag(run, 'model_version', version.version)\n"
        "print(version.version, 'mlflow' in sys.modules, time.perf_counter() - start)\n"
    )
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).parents[1],
        env={**os.environ},
    )
    elapsed = time.perf_counter() - started
    number, imported, seconds = proc.stdout.split()
    assert (number, imported) == ("1", "False"), proc.stderr
    print(f"direct registry calls {float(seconds):.3f} s in a process of {elapsed:.3f} s")
    version = MlflowSide(f"sqlite:///{path}").get_model_version_by_alias(MODEL, "challenger")
    assert (version.version, version.tags, version.run_id) == (1, {"k": "v"}, runs["a"])


def test_concurrent_registrations_get_distinct_versions(
    stores: tuple[Path, Path, dict[str, str]], tmp_path: Path
) -> None:
    """Parallel experiments register into one store: each process its own number (the
    highest is read and the version written in one BEGIN IMMEDIATE transaction)."""
    path, _, runs = stores
    client = SqliteClient.open(path, EXPERIMENT)
    client.log_artifacts(runs["a"], str(_model_folder(tmp_path / "scratch")), "model")
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from stage_runtime.sqlite_client import SqliteClient\n"
        f"client = SqliteClient.open(Path({str(path)!r}), {EXPERIMENT!r})\n"
        f"print(client.register_model('runs:/{runs['a']}/model', {MODEL!r}).version)\n"
    )
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", code],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).parents[1],
        )
        for _ in range(4)
    ]
    outputs = [p.communicate(timeout=120) for p in processes]
    assert all(p.returncode == 0 for p in processes), outputs
    assert sorted(int(out) for out, _ in outputs) == [1, 2, 3, 4]
    found = MlflowSide(f"sqlite:///{path}").search_model_versions(f"name = '{MODEL}'")
    assert sorted(v.version for v in found) == [1, 2, 3, 4]
