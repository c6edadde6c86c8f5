"""A stage run written straight into MLflow's SQLite store, without importing MLflow.

`import mlflow` and SQLAlchemy's store (its ORM models, alembic) cost a stage process 1.5-2 s
before it writes a row (benchmarks/results/FINDINGS.md); the run record itself is a few
inserts. This writer does those inserts with the standard library's sqlite3, the rows MLflow's
SqlAlchemyStore writes for `create_run`, `log_batch`, `log_inputs` and `set_terminated` (MLflow
3.17, mlflow/store/tracking/sqlalchemy_store.py), read back by MLflow like any other run.

Used only on a store MLflow has already built: `DirectStore.open` answers None when the file is
missing, when its `alembic_version` is not the head revision of the installed MLflow's
migrations (a new, older or newer schema: MLflow's own client then creates or refuses it, as
before), or when the pipeline's experiment does not exist yet. The model registry, searches
and artifacts are stage_runtime.sqlite_client's, on the same connection. tests/test_sqlite_store.py
holds the two writers to the same result, read back through MLflow.

A new store is a copy of a pristine one (`create_store`): MLflow builds an empty store once
per (MLflow version, schema head) in the user's cache folder, 68 alembic migrations and its
import (about 2-3 s), and every new store after that is that file copied, its Default
experiment and the pipeline's experiment written as MLflow writes them. So the first stage on
a new store records directly too.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import json
import math
import os
import posixpath
import re
import shutil
import sqlite3
import tempfile
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

# What MLflow's validation allows in a param, metric or tag key (mlflow.utils.validation).
KEY_PATTERN = re.compile(r"^[/\w.\- :]*$")
_MAX_KEY, _MAX_PARAM_VALUE, MAX_TAG_VALUE = 250, 6000, 8000
RUN_NAME_TAG = "mlflow.runName"
# MLflow stores +-inf as the largest finite double, NaN as 0 with is_nan set.
_FLOAT_MAX = 1.7976931348623157e308
# A writer waits this long for another process's transaction (SQLite allows one writer).
BUSY_TIMEOUT_SECONDS = 30.0


def mlflow_package_dir() -> Path | None:
    """The installed `mlflow` package's folder, found without importing it (its __init__ is
    the 1.5-2 s this module avoids); None when MLflow is not installed."""
    spec = importlib.util.find_spec("mlflow")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def mlflow_head_revision() -> str | None:
    """The alembic head of the installed MLflow's migrations, read from its files (no import):
    the one revision no other revision names as its `down_revision`."""
    package = mlflow_package_dir()
    if package is None:
        return None
    versions = package / "store/db_migrations/versions"
    revisions, parents = set(), set()
    for script in versions.glob("*.py"):
        text = script.read_text()
        found = re.search(r"^revision\s*=\s*['\"](\w+)['\"]", text, re.M)
        down = re.search(r"^down_revision\s*=\s*(.+)$", text, re.M)
        if found:
            revisions.add(found.group(1))
        if down:
            parents.update(re.findall(r"['\"](\w+)['\"]", down.group(1)))
    heads = revisions - parents
    return heads.pop() if len(heads) == 1 else None


# Where pristine stores are kept, by the user's cache convention (XDG), one per MLflow
# version and schema head.
CACHE_DIR_NAME = "taxi-duration-pipeline"
DEFAULT_EXPERIMENT_ID = 0  # MLflow's Default experiment, in every store it builds
WORKSPACE = "default"  # the only one the pipeline writes (MLflow 3's workspaces)


def template_dir() -> Path:
    """`$XDG_CACHE_HOME/taxi-duration-pipeline/mlflow-stores`, else under `~/.cache`."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / CACHE_DIR_NAME / "mlflow-stores"


def store_revision(path: Path) -> str | None:
    """The `alembic_version` a store file records, None when it has none."""
    with contextlib.closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as db:
        tables = {r[0] for r in db.execute("select name from sqlite_master")}
        if "alembic_version" not in tables:
            return None
        row = db.execute("select version_num from alembic_version").fetchone()
        return row[0] if row else None


def store_template() -> Path | None:
    """The pristine store of the installed MLflow's schema, built by MLflow on first use;
    None when MLflow's head cannot be read. A file in the cache whose recorded revision is
    not the head is never used (it is rebuilt)."""
    head = mlflow_head_revision()
    if head is None:
        return None
    version = importlib.metadata.version("mlflow")
    template = template_dir() / f"mlflow-{version}-{head}.db"
    if template.is_file() and store_revision(template) == head:
        return template
    template.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=template.parent, prefix=".build-") as building:
        built = Path(building) / "mlflow.db"
        _build_with_mlflow(built)
        if store_revision(built) != head:
            return None  # MLflow built another schema than its files name: do not keep it
        os.replace(built, template)  # atomic: a reader sees no file or a whole one
    return template


def _build_with_mlflow(path: Path) -> None:
    """An empty store as MLflow's client creates it (every migration, Default experiment)."""
    from mlflow.tracking import MlflowClient

    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments(max_results=1)


def create_store(path: Path, experiment: str, artifact_location: str) -> bool:
    """A new store at `path` copied from the pristine one, with the rows MLflow writes on its
    first use there: the Default experiment's artifacts under `./mlruns/0` of this process
    (SqlAlchemyStore._create_default_experiment) and `experiment` at `artifact_location`
    (create_experiment). The file appears whole or not at all (linked into place, never
    over an existing file). False when no template can be had or `path` exists already."""
    template = store_template()
    if template is None or path.exists():
        return False
    now = int(time.time() * 1000)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    # Created as sqlite3 creates a store file: mode 0666 less the umask.
    os.close(os.open(temporary, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    try:
        shutil.copyfile(template, temporary)
        with contextlib.closing(sqlite3.connect(temporary, isolation_level=None)) as db:
            db.execute("begin immediate")
            db.execute(
                "update experiments set artifact_location = ?, creation_time = ?, "
                "last_update_time = ? where experiment_id = ?",
                (
                    f"{Path.cwd().joinpath('mlruns').as_posix()}/{DEFAULT_EXPERIMENT_ID}",
                    now,
                    now,
                    DEFAULT_EXPERIMENT_ID,
                ),
            )
            db.execute(
                "insert into experiments (name, artifact_location, lifecycle_stage, "
                "creation_time, last_update_time, workspace) values (?, ?, 'active', ?, ?, ?)",
                (experiment, artifact_location, now, now, WORKSPACE),
            )
            db.execute("commit")
        try:
            os.link(temporary, path)
        except FileExistsError:
            return False  # another process created the store meanwhile: use that one
        return True
    finally:
        Path(temporary).unlink(missing_ok=True)


def resolves_elsewhere(name: str) -> bool:
    """MLflow's path check of a name (mlflow.utils.validation.path_not_unique): names may be
    treated as files, so one that would resolve to another name is refused."""
    normal = posixpath.normpath(name)
    return normal != name or normal == "." or normal.startswith(("..", "/"))


def _key(key: str) -> str:
    """MLflow's key rules (mlflow.utils.validation), so a key it refuses is refused here."""
    if len(key) > _MAX_KEY or not KEY_PATTERN.match(key) or resolves_elsewhere(key):
        raise ValueError(f"invalid MLflow key {key!r}: names may be treated as files")
    return key


def _metric_value(value: float) -> tuple[float, int]:
    if math.isnan(value):
        return 0.0, 1
    if math.isinf(value):
        return math.copysign(_FLOAT_MAX, value), 0
    return float(value), 0


class DirectStore:
    """One experiment of an existing MLflow SQLite store, written with sqlite3."""

    def __init__(self, connection: sqlite3.Connection, experiment_id: str, artifacts: str):
        self.connection = connection
        self.experiment_id = experiment_id
        self._artifacts = artifacts.rstrip("/")

    @classmethod
    def open(cls, path: Path, experiment: str) -> DirectStore | None:
        """The store at `path` for `experiment`, or None when MLflow's client must do it
        (no file, a schema other than the installed MLflow's head, no such experiment).
        sqlite3 errors of a store that exists (corrupt, unreadable) propagate."""
        if not path.is_file():
            return None
        connection = sqlite3.connect(path, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None)
        try:
            tables = {r[0] for r in connection.execute("select name from sqlite_master")}
            if "alembic_version" not in tables:
                connection.close()
                return None
            (revision,) = connection.execute("select version_num from alembic_version").fetchone()
            found = connection.execute(
                "select experiment_id, artifact_location from experiments "
                "where name = ? and lifecycle_stage = 'active' and workspace = 'default'",
                (experiment,),
            ).fetchone()
        except BaseException:
            connection.close()
            raise
        if revision != mlflow_head_revision() or found is None or found[1] is None:
            connection.close()
            return None
        return cls(connection, str(found[0]), found[1])

    def close(self) -> None:
        self.connection.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """One write transaction, BEGIN IMMEDIATE (the write lock first): the reads made inside
        it and the writes see the same rows, no other writer between them; rolled back on any
        exception."""
        self.connection.execute("begin immediate")
        try:
            yield
        except BaseException:
            self.connection.execute("rollback")
            raise
        self.connection.execute("commit")

    def _write(self, statements: Iterable[tuple[str, tuple]]) -> None:
        """All statements in one transaction."""
        with self.transaction():
            for sql, values in statements:
                self.connection.execute(sql, values)

    def create_run(self, tags: Mapping[str, str], run_name: str) -> str:
        run_id = uuid.uuid4().hex
        tags = {RUN_NAME_TAG: run_name, **tags}
        statements = [
            (
                "insert into runs (run_uuid, name, source_type, source_name, entry_point_name, "
                "user_id, status, start_time, end_time, deleted_time, source_version, "
                "lifecycle_stage, artifact_uri, experiment_id) values "
                "(?, ?, 'UNKNOWN', '', '', ?, 'RUNNING', ?, NULL, NULL, '', 'active', ?, ?)",
                (
                    run_id,
                    run_name,
                    tags.get("mlflow.user", "unknown"),
                    int(time.time() * 1000),
                    f"{self._artifacts}/{run_id}/artifacts",
                    int(self.experiment_id),
                ),
            )
        ]
        statements += self._tag_rows(run_id, tags)
        self._write(statements)
        return run_id

    def _tag_rows(self, run_id: str, tags: Mapping[str, str]) -> list[tuple[str, tuple]]:
        rows = []
        for key, value in tags.items():
            if len(str(value)) > MAX_TAG_VALUE:
                raise ValueError(f"tag {key!r}: value longer than {MAX_TAG_VALUE} characters")
            rows.append(
                (
                    "insert into tags (key, value, run_uuid) values (?, ?, ?) "
                    "on conflict (key, run_uuid) do update set value = excluded.value",
                    (_key(key), str(value), run_id),
                )
            )
        return rows

    def log_batch(
        self,
        run_id: str,
        metrics: Mapping[str, float] | None = None,
        params: Mapping[str, str] | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> None:
        """Params (a different value for a logged key is refused, as MLflow does), metrics
        at step 0 now (latest_metrics kept as MLflow keeps it), tags (overwritten)."""
        now = int(time.time() * 1000)
        statements = []
        for key, value in (params or {}).items():
            if len(str(value)) > _MAX_PARAM_VALUE:
                raise ValueError(f"param {key!r}: value longer than {_MAX_PARAM_VALUE} characters")
            statements.append(
                (
                    "insert into params (key, value, run_uuid) values (?, ?, ?) "
                    "on conflict (key, run_uuid) do nothing",
                    (_key(key), str(value), run_id),
                )
            )
        for key, raw in (metrics or {}).items():
            value, is_nan = _metric_value(raw)
            statements += [
                (
                    "insert or ignore into metrics (key, value, timestamp, run_uuid, step, is_nan) "
                    "values (?, ?, ?, ?, 0, ?)",
                    (_key(key), value, now, run_id, is_nan),
                ),
                # MLflow's rule: the latest is the largest (step, timestamp, value).
                (
                    "insert into latest_metrics (key, value, timestamp, step, is_nan, run_uuid) "
                    "values (?, ?, ?, 0, ?, ?) on conflict (key, run_uuid) do update set "
                    "value = excluded.value, timestamp = excluded.timestamp, step = 0, "
                    "is_nan = excluded.is_nan where (latest_metrics.step, "
                    "latest_metrics.timestamp, latest_metrics.value) < (0, excluded.timestamp, "
                    "excluded.value)",
                    (key, value, now, is_nan, run_id),
                ),
            ]
        statements += self._tag_rows(run_id, tags or {})
        self._write(statements)
        for key, value in (params or {}).items():
            (stored,) = self.connection.execute(
                "select value from params where key = ? and run_uuid = ?", (key, run_id)
            ).fetchone()
            if stored != str(value):
                raise ValueError(f"param {key!r} already logged as {stored!r}, not {value!r}")

    def log_inputs(self, run_id: str, datasets: Iterable[tuple[str, str, str, str]]) -> None:
        """Datasets as `(name, digest, source JSON, context)`, context `input` or `output`
        (the `mlflow.data.context` input tag); a dataset row is shared by the experiment."""
        statements = []
        for name, digest, source, context in datasets:
            input_id = uuid.uuid4().hex
            statements += [
                (
                    "insert or ignore into datasets (dataset_uuid, experiment_id, name, digest, "
                    "dataset_source_type, dataset_source, dataset_schema, dataset_profile) "
                    "values (?, ?, ?, ?, 'http', ?, NULL, NULL)",
                    (uuid.uuid4().hex, int(self.experiment_id), name, digest, source),
                ),
                (
                    "insert or ignore into inputs (input_uuid, source_type, source_id, "
                    "destination_type, destination_id, step) select ?, 'DATASET', "
                    "dataset_uuid, 'RUN', ?, 0 from datasets where experiment_id = ? "
                    "and name = ? and digest = ?",
                    (input_id, run_id, int(self.experiment_id), name, digest),
                ),
                (
                    "insert into input_tags (input_uuid, name, value) select ?, "
                    "'mlflow.data.context', ? where exists (select 1 from inputs where "
                    "input_uuid = ?)",
                    (input_id, context, input_id),
                ),
            ]
        self._write(statements)

    def set_terminated(self, run_id: str, status: str) -> None:
        self._write(
            [
                (
                    "update runs set status = ?, end_time = ? where run_uuid = ?",
                    (status, int(time.time() * 1000), run_id),
                )
            ]
        )


def http_source(address: str) -> str:
    """The JSON of MLflow's HTTPDatasetSource for an address (its `to_json`)."""
    return json.dumps({"url": address})
