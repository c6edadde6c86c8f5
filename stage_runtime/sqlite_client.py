"""The part of MLflow's client the train and evaluate stages use, done with sqlite3 on a SQLite
store and local artifacts, without importing MLflow (1.5-2 s a process).

`SqliteClient` answers the calls of `mlflow.tracking.MlflowClient` the stages make (runs:
get, search, tags, end; artifacts: log, download; the model registry: versions, aliases,
version tags, `mlflow.register_model` of a `runs:/` URI) with the rows MLflow 3.17's
SqlAlchemyStore and SqlAlchemyRegistryStore write (mlflow/store/tracking/sqlalchemy_store.py,
mlflow/store/model_registry/sqlalchemy_store.py), and the files its LocalArtifactRepository
copies. tests/test_sqlite_client.py runs the same calls through both clients on two copies of
one store and compares what MLflow reads back from each.

Only what those calls need: a filter or URI of another form raises ValueError naming it, so a
new query fails loudly instead of being answered wrongly. `SqliteClient.open` answers None when
the store holds something this client cannot honour (see its docstring); the caller then uses
MLflow's client, as it does for a store DirectStore.open refuses.

Results are small objects with the attributes MLflow's entities have for these calls. Version
numbers are ints, as MLflow's SQL store returns them from every call here (get, get by alias,
search, register; `RegisteredModel.aliases` maps alias -> int); a REST store would return text.
Errors MLflow raises as MlflowException are `SqliteClientError` with MLflow's `error_code` and
message (not a subclass of MlflowException: that would import MLflow).
"""

from __future__ import annotations

import base64
import json
import math
import os
import posixpath
import re
import shutil
import time
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stage_runtime.sqlite_store import (
    KEY_PATTERN,
    MAX_TAG_VALUE,
    RUN_NAME_TAG,
    WORKSPACE,
    DirectStore,
    resolves_elsewhere,
)

NOT_FOUND = "RESOURCE_DOES_NOT_EXIST"
ACTIVE_ONLY = 1  # mlflow.entities.ViewType.ACTIVE_ONLY
INVALID = "INVALID_PARAMETER_VALUE"
# MLflow's constants (mlflow/store/..., mlflow/utils/validation.py, mlflow/prompt/constants.py).
_SEARCH_RUNS_DEFAULT, _SEARCH_RUNS_MAX = 1000, 50000
_SEARCH_VERSIONS_DEFAULT, _SEARCH_VERSIONS_MAX = 10000, 200000
_STAGE_NONE, _STAGE_DELETED = "None", "Deleted_Internal"
_RUN_STATUSES = ("RUNNING", "SCHEDULED", "FINISHED", "FAILED", "KILLED")
_IS_PROMPT_TAG = "mlflow.prompt.is_prompt"
_MAX_REGISTRY_TAG_KEY, _MAX_REGISTRY_TAG_VALUE, _MAX_ALIAS = 250, 100_000, 255
_ALIAS = re.compile(r"^[\w\-]*$")
_VERSION_ALIAS = re.compile(r"^[vV]\d+$")
_MLMODEL = "MLmodel"


class SqliteClientError(Exception):
    """What MLflow raises as MlflowException for the same call: `error_code` is MLflow's
    (`RESOURCE_DOES_NOT_EXIST`, `INVALID_PARAMETER_VALUE`), the message is MLflow's."""

    def __init__(self, message: str, error_code: str):
        super().__init__(message)
        self.message = message
        self.error_code = error_code


class NonLocalArtifacts(ValueError):
    """A run whose artifacts are not on this file system: MLflow's client must move them."""


# --------------------------------------------------------------------------- entities


@dataclass
class RunInfo:
    run_id: str
    run_name: str | None
    experiment_id: str
    user_id: str | None
    status: str
    start_time: int | None
    end_time: int | None
    artifact_uri: str
    lifecycle_stage: str

    @property
    def run_uuid(self) -> str:
        return self.run_id


@dataclass
class RunData:
    metrics: dict[str, float]
    params: dict[str, str]
    tags: dict[str, str]


@dataclass
class Run:
    info: RunInfo
    data: RunData


@dataclass
class ModelVersion:
    name: str
    version: int
    creation_timestamp: int | None
    last_updated_timestamp: int | None
    description: str | None
    user_id: str | None
    current_stage: str | None
    source: str | None
    run_id: str | None
    status: str | None
    status_message: str | None
    run_link: str | None
    tags: dict[str, str] = field(default_factory=dict)
    aliases: list[str] = field(default_factory=list)


@dataclass
class RegisteredModel:
    name: str
    creation_timestamp: int | None
    last_updated_timestamp: int | None
    description: str | None
    tags: dict[str, str]
    aliases: dict[str, int]


class PagedList(list):
    """A page of results and the token of the next page (None on the last), as MLflow's."""

    def __init__(self, items: Iterable[Any], token: bytes | None):
        super().__init__(items)
        self.token = token


# --------------------------------------------------------------------------- validation


def _invalid(message: str) -> SqliteClientError:
    return SqliteClientError(message, INVALID)


def _invalid_value(path: str, value: Any, message: str) -> str:
    shown = json.dumps(value, sort_keys=True, separators=(",", ":"))
    return f"Invalid value {shown} for parameter '{path}' supplied: {message}"


def _bad_path(name: str) -> str:
    return (
        "Names may be treated as files in certain cases, and must not resolve to other names"
        f" when treated as such. This name would resolve to {posixpath.normpath(name)!r}"
    )


def _model_name(name: str) -> None:
    if name is None or name.strip() == "":
        raise _invalid(
            "Missing value for required parameter 'name'. See the API docs for more "
            "information about request parameters."
        )
    if "/" in name or ":" in name:
        raise _invalid(f"Invalid model name '{name}'. Names cannot contain '/' or ':'.")
    if resolves_elsewhere(name):
        raise _invalid(_invalid_value("name", name, _bad_path(name)))


def _version_number(version: Any) -> int:
    try:
        return int(version)
    except (TypeError, ValueError):
        raise _invalid(f"Parameter 'version' must be an integer, got '{version}'.") from None


def _alias_name(alias: str) -> None:
    if not alias:
        raise _invalid("Registered model alias name cannot be empty.")
    if not _ALIAS.match(alias):
        raise _invalid(
            f"Invalid alias name: '{alias}'. Names may only contain alphanumerics, "
            "underscores (_), and dashes (-)."
        )
    if len(alias) > _MAX_ALIAS:
        raise _invalid(
            f"Registered model alias name exceeds the maximum length of {_MAX_ALIAS} characters"
        )


def _tag(key: str, value: Any, max_value: int) -> tuple[str, str]:
    """MLflow's tag rules (_validate_tag_name, length limits); the value as str(value)."""
    if key is None:
        raise _invalid("Missing value for required parameter 'key'.")
    if not KEY_PATTERN.match(key):
        raise _invalid(
            _invalid_value(
                "key",
                key,
                "Names may only contain alphanumerics, underscores (_), dashes (-), periods (.),"
                " spaces ( ), colon(:) and slashes (/).",
            )
        )
    if resolves_elsewhere(key):
        raise _invalid(_invalid_value("key", key, _bad_path(key)))
    if value is None:
        raise _invalid("Tag value cannot be None")
    value = str(value)
    for what, text, limit in (("key", key, _MAX_REGISTRY_TAG_KEY), ("value", value, max_value)):
        if len(text) > limit:
            raise _invalid(f"'{what}' exceeds the maximum length of {limit} characters")
    return key, value


# --------------------------------------------------------------------------- filters

# One `<key> = '<value>'` clause; the key either a backquoted `...` or bare.
_CLAUSE = re.compile(r"^\s*(?P<key>[\w.]+\.`[^`]+`|[\w.]+)\s*=\s*'(?P<value>[^']*)'\s*$")
_AND = re.compile(r"\s+and\s+", re.IGNORECASE)


def _clauses(filter_string: str | None) -> list[tuple[str, str]]:
    """`a = 'x' and b.`c` = 'y'` as [(key, value)]: only conjunctions of equalities of a
    single-quoted literal (split outside quotes); anything else is a ValueError."""
    text = (filter_string or "").strip()
    if not text:
        return []
    parts, start, quoted = [], 0, None
    for match in re.finditer(r"['`]|\s+and\s+", text, re.IGNORECASE):
        token = match.group(0)
        if token in ("'", "`"):
            quoted = None if quoted == token else (quoted or token)
        elif quoted is None:
            parts.append(text[start : match.start()])
            start = match.end()
    parts.append(text[start:])
    found = []
    for part in parts:
        clause = _CLAUSE.match(part)
        if clause is None:
            raise ValueError(
                f"filter {filter_string!r}: unsupported clause {part.strip()!r} (only "
                "`<key> = '<value>'` joined by `and`); use MLflow's client"
            )
        found.append((clause["key"], clause["value"]))
    return found


def _split_key(key: str) -> tuple[str, str]:
    prefix, _, name = key.partition(".")
    if name.startswith("`") and name.endswith("`"):
        name = name[1:-1]
    elif "`" in key:
        raise ValueError(f"filter key {key!r}: unsupported quoting")
    return prefix, name


def _page_offset(page_token: Any) -> int:
    if not page_token:
        return 0
    try:
        return int(json.loads(base64.b64decode(page_token))["offset"])
    except (ValueError, KeyError, TypeError):
        raise _invalid(f"Invalid page token, decoded value={page_token!r}") from None


def _page_token(offset: int) -> bytes:
    return base64.b64encode(json.dumps({"offset": offset}).encode("utf-8"))


# --------------------------------------------------------------------------- artifacts


def local_artifact_path(uri: str) -> Path:
    """The folder of a local artifact URI (`file://...` or a plain path); NonLocalArtifacts
    for any other scheme (s3, mlflow-artifacts, http, ...)."""
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme == "file" and parsed.netloc in ("", "localhost"):
        return Path(urllib.parse.unquote(parsed.path))  # url2pathname on POSIX
    if parsed.scheme == "" and uri:
        return Path(uri)
    raise NonLocalArtifacts(
        f"artifact location {uri!r} is not on this file system: use MLflow's client"
    )


def _append_to_uri_path(uri: str, path: str) -> str:
    """MLflow's append_to_uri_path for a local artifact URI (mlflow/utils/uri.py): the path
    joined as given (a trailing slash kept), nothing appended for an empty path."""
    if not path:
        return uri
    parsed = urllib.parse.urlparse(uri)
    if not parsed.scheme:
        return posixpath.join(uri, path.lstrip("/")) if uri else path
    joined = posixpath.join(parsed.path, path.lstrip("/")) if parsed.path else path
    return urllib.parse.urlunparse(parsed._replace(path=joined))


def _relative(path: str | None) -> str:
    """An artifact path as MLflow accepts it: relative, no `..` (validate_path_is_safe)."""
    if not path:
        return ""
    normal = posixpath.normpath(path)
    if Path(path).is_absolute() or normal == ".." or normal.startswith("../") or "\\" in path:
        raise _invalid(f"Invalid path: {path}")
    return "" if normal == "." else normal


def _copy_file(source: Path, target: Path, keep_stat: bool = True) -> None:
    """A file in place whole (written beside it, renamed); `keep_stat`: its mode and times
    kept, as MLflow's copy2 of one file keeps them (its copytree of a folder does not)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        shutil.copyfile(source, temporary)
        if keep_stat:
            shutil.copystat(source, temporary)
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)


# --------------------------------------------------------------------------- the client


class SqliteClient:
    """MlflowClient's calls of the train and evaluate stages on a DirectStore (module
    docstring). Every write is one DirectStore.transaction: the existence checks made inside
    it and the write see the same rows."""

    def __init__(self, store: DirectStore):
        self.store = store
        self.connection = store.connection

    @classmethod
    def open(cls, path: Path, experiment: str) -> SqliteClient | None:
        """The client of the store at `path`, or None when MLflow's client must do it: a store
        DirectStore.open refuses, or one `for_store` refuses."""
        store = DirectStore.open(path, experiment)
        if store is None:
            return None
        client = cls.for_store(store)
        if client is None:
            store.close()
        return client

    @classmethod
    def for_store(cls, store: DirectStore) -> SqliteClient | None:
        """A client on an open DirectStore (the stage's own writer: one connection), or None
        (the store left open) when the store holds what this client cannot honour: artifacts
        not on this file system (any active experiment's), registry webhooks (MLflow's client
        over SQLite does not fire them either, only its server does; a store that has them is
        left to the tools that know them), prompts in the registry (MLflow hides them from
        model calls), or models of another workspace."""
        db = store.connection
        refuse = bool(db.execute("select 1 from webhooks limit 1").fetchone())
        refuse |= bool(
            db.execute(
                "select 1 from registered_model_tags where key = ? limit 1", (_IS_PROMPT_TAG,)
            ).fetchone()
        )
        refuse |= bool(
            db.execute(
                "select 1 from registered_models where workspace != ? limit 1", (WORKSPACE,)
            ).fetchone()
        )
        for (location,) in db.execute(
            "select artifact_location from experiments where lifecycle_stage = 'active'"
        ):
            try:
                local_artifact_path(location or "")
            except NonLocalArtifacts:
                refuse = True
        return None if refuse else cls(store)

    def close(self) -> None:
        self.store.close()

    def _execute(self, statements: Iterable[tuple[str, tuple]]) -> None:
        for sql, values in statements:
            self.connection.execute(sql, values)

    def _one(self, sql: str, values: tuple = ()) -> tuple | None:
        return self.connection.execute(sql, values).fetchone()

    # ----------------------------------------------------------------------- runs

    def get_run(self, run_id: str) -> Run:
        row = self._one(
            "select run_uuid, name, experiment_id, user_id, status, start_time, end_time, "
            "artifact_uri, lifecycle_stage from runs where run_uuid = ?",
            (run_id,),
        )
        if row is None:
            raise SqliteClientError(f"Run with id={run_id} not found", NOT_FOUND)
        uuid, name, experiment_id, *rest = row
        info = RunInfo(uuid, name, str(experiment_id), *rest)
        db = self.connection
        metrics = {
            key: math.nan if is_nan else value
            for key, value, is_nan in db.execute(
                "select key, value, is_nan from latest_metrics where run_uuid = ?", (run_id,)
            )
        }
        params = dict(db.execute("select key, value from params where run_uuid = ?", (run_id,)))
        tags = dict(db.execute("select key, value from tags where run_uuid = ?", (run_id,)))
        return Run(info, RunData(metrics, params, tags))

    def _active_run(self, run_id: str) -> Run:
        run = self.get_run(run_id)
        if run.info.lifecycle_stage != "active":
            raise _invalid(
                f"The run {run_id} must be in the 'active' state. "
                f"Current state is {run.info.lifecycle_stage}."
            )
        return run

    def search_runs(
        self,
        experiment_ids: list[str] | str,
        filter_string: str = "",
        run_view_type: int = ACTIVE_ONLY,
        max_results: int = _SEARCH_RUNS_DEFAULT,
        order_by: list[str] | None = None,
        *,
        page_token: Any = None,
    ) -> PagedList:
        """Active runs of the experiments matching a conjunction of `tags.<key> = '<v>'`
        (the key bare or backquoted) and `attributes.status = '<v>'`; ordered by
        `attributes.start_time DESC|ASC` or by default (start time descending), then run id.
        MlflowClient's signature (`page_token` by keyword only): `run_view_type` is MLflow's
        ViewType.ACTIVE_ONLY (1) only."""
        if run_view_type != ACTIVE_ONLY:
            raise ValueError(
                f"run_view_type {run_view_type!r}: only active runs (ViewType.ACTIVE_ONLY = 1); "
                "use MLflow's client"
            )
        if isinstance(experiment_ids, (str, int)):
            experiment_ids = [experiment_ids]
        if not isinstance(max_results, int) or not 0 < max_results <= _SEARCH_RUNS_MAX:
            raise _invalid(
                "Invalid value for request parameter max_results. It must be at most "
                f"{_SEARCH_RUNS_MAX}, but got value {max_results}"
            )
        where, values = ["r.lifecycle_stage = 'active'"], []
        for key, value in _clauses(filter_string):
            prefix, name = _split_key(key)
            if prefix in ("tags", "tag") and name:
                where.append(
                    "exists (select 1 from tags t where t.run_uuid = r.run_uuid and "
                    "t.key = ? and t.value = ?)"
                )
                values += [name, value]
            elif prefix in ("attributes", "attribute", "attr", "run") and name == "status":
                where.append("r.status = ?")
                values.append(value)
            else:
                raise ValueError(
                    f"filter {filter_string!r}: unsupported key {key!r} (only tags.<key> and "
                    "attributes.status); use MLflow's client"
                )
        direction = "desc"
        if order_by:
            found = [
                re.fullmatch(r"\s*attributes\.start_time(\s+(asc|desc))?\s*", o, re.I)
                for o in order_by
            ]
            if len(order_by) != 1 or found[0] is None:
                raise ValueError(
                    f"order_by {order_by!r}: only ['attributes.start_time DESC|ASC'] is "
                    "supported; use MLflow's client"
                )
            direction = (found[0].group(2) or "asc").lower()
        offset = _page_offset(page_token)
        ids = [int(e) for e in experiment_ids]
        marks = ", ".join("?" * len(ids))
        sql = (
            f"select r.run_uuid from runs r where r.experiment_id in (select experiment_id "
            f"from experiments where workspace = ? and experiment_id in ({marks})) and "
            + " and ".join(where)
            + f" order by r.start_time is null, r.start_time {direction}, r.run_uuid "
            "limit ? offset ?"
        )
        rows = self.connection.execute(
            sql, (WORKSPACE, *ids, *values, max_results + 1, offset)
        ).fetchall()
        token = _page_token(offset + max_results) if len(rows) > max_results else None
        return PagedList([self.get_run(r[0]) for r in rows[:max_results]], token)

    def set_tag(self, run_id: str, key: str, value: Any) -> None:
        """A run tag, overwritten; `mlflow.runName` also renames the run, as MLflow does."""
        with self.store.transaction():
            self._active_run(run_id)
            key, value = _tag(key, value, MAX_TAG_VALUE)
            statements = self.store._tag_rows(run_id, {key: value})
            if key == RUN_NAME_TAG:
                statements.append(("update runs set name = ? where run_uuid = ?", (value, run_id)))
            self._execute(statements)

    def set_terminated(
        self, run_id: str, status: str = "FINISHED", end_time: int | None = None
    ) -> None:
        if status not in _RUN_STATUSES:
            raise _invalid(f"Invalid run status: {status}")
        end = int(time.time() * 1000) if end_time is None else int(end_time)
        with self.store.transaction():
            self._active_run(run_id)
            self.connection.execute(
                "update runs set status = ?, end_time = ? where run_uuid = ?", (status, end, run_id)
            )

    # ----------------------------------------------------------------------- artifacts

    def _artifact_dir(self, run_id: str) -> Path:
        return local_artifact_path(self.get_run(run_id).info.artifact_uri)

    def log_artifact(self, run_id: str, local_path: str, artifact_path: str | None = None) -> None:
        """The file under `<run artifacts>/<artifact_path>/`, as LocalArtifactRepository."""
        source = Path(local_path)
        target = self._artifact_dir(run_id) / _relative(artifact_path) / source.name
        if target.exists() and source.resolve() == target.resolve():
            return
        _copy_file(source, target)

    def log_artifacts(self, run_id: str, local_dir: str, artifact_path: str | None = None) -> None:
        """Every file of `local_dir` under `<run artifacts>/<artifact_path>/`, merged into
        what is there (MLflow's copytree with dirs_exist_ok, file modes not copied)."""
        root = self._artifact_dir(run_id) / _relative(artifact_path)
        root.mkdir(parents=True, exist_ok=True)
        for folder, dirs, files in os.walk(local_dir):
            relative = Path(folder).relative_to(local_dir)
            for name in dirs:
                (root / relative / name).mkdir(exist_ok=True)
            for name in files:
                _copy_file(Path(folder) / name, root / relative / name, keep_stat=False)

    def download_artifacts(self, run_id: str, path: str, dst_path: str | None = None) -> str:
        """The artifact (file or folder) copied into `dst_path` (made if missing) under its
        last name, as MLflow downloads `runs:/<run>/<path>`: `model/artifacts` lands in
        `dst_path/artifacts`; that absolute path returned. Without `dst_path`, the artifact's
        own path (MLflow's local repository)."""
        base = self._artifact_dir(run_id)
        relative = _relative(path)
        source = base / relative
        if not source.exists():
            raise SqliteClientError(
                f"Failed to download artifacts from path '{path}', please ensure that the path "
                "is correct.",
                NOT_FOUND,
            )
        if dst_path is None:
            return str(source.resolve())
        Path(dst_path).mkdir(parents=True, exist_ok=True)
        target = Path(dst_path).resolve() / posixpath.basename(relative)
        if source.is_dir():
            shutil.copytree(source, target, dirs_exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
        return str(target)

    # ----------------------------------------------------------------------- the registry

    def _model_row(self, name: str) -> tuple:
        _model_name(name)
        row = self._one(
            "select name, creation_time, last_updated_time, description from registered_models "
            "where workspace = ? and name = ?",
            (WORKSPACE, name),
        )
        if row is None:
            raise SqliteClientError(f"Registered Model with name={name} not found", NOT_FOUND)
        return row

    def get_registered_model(self, name: str) -> RegisteredModel:
        row = self._model_row(name)
        db = self.connection
        tags = dict(
            db.execute(
                "select key, value from registered_model_tags where workspace = ? and name = ?",
                (WORKSPACE, name),
            )
        )
        return RegisteredModel(*row, tags, self._aliases(name))

    def _aliases(self, name: str) -> dict[str, int]:
        return dict(
            self.connection.execute(
                "select alias, version from registered_model_aliases where workspace = ? and "
                "name = ? order by alias",
                (WORKSPACE, name),
            )
        )

    _VERSION_COLUMNS = (
        "name, version, creation_time, last_updated_time, description, user_id, current_stage, "
        "source, run_id, status, status_message, run_link"
    )

    def _version(self, row: tuple, with_aliases: bool) -> ModelVersion:
        name, number = row[0], row[1]
        tags = dict(
            self.connection.execute(
                "select key, value from model_version_tags where workspace = ? and name = ? and "
                "version = ?",
                (WORKSPACE, name, number),
            )
        )
        version = ModelVersion(*row, tags=tags)
        if with_aliases:
            version.aliases = [a for a, v in self._aliases(name).items() if v == number]
        return version

    def _version_row(self, name: str, version: int) -> tuple:
        row = self._one(
            f"select {self._VERSION_COLUMNS} from model_versions where workspace = ? and "
            "name = ? and version = ? and current_stage != ?",
            (WORKSPACE, name, version, _STAGE_DELETED),
        )
        if row is None:
            raise SqliteClientError(
                f"Model Version (name={name}, version={version}) not found", NOT_FOUND
            )
        return row

    def get_model_version(self, name: str, version: str | int) -> ModelVersion:
        _model_name(name)
        return self._version(self._version_row(name, _version_number(version)), True)

    def get_model_version_by_alias(self, name: str, alias: str) -> ModelVersion:
        """The version an alias names; `latest` (any case) is the highest live version."""
        _model_name(name)
        _alias_name(alias)
        self._model_row(name)
        if alias.lower() == "latest":
            row = self._one(
                f"select {self._VERSION_COLUMNS} from model_versions where workspace = ? and "
                "name = ? and current_stage != ? order by version desc limit 1",
                (WORKSPACE, name, _STAGE_DELETED),
            )
            if row is None:
                raise SqliteClientError(f"Latest version not found for model {name}.", NOT_FOUND)
            return self._version(row, True)
        number = self._aliases(name).get(alias)
        if number is None:
            raise _invalid(f"Registered model alias {alias} not found.")
        return self._version(self._version_row(name, number), True)

    def search_model_versions(
        self,
        filter_string: str | None = None,
        max_results: int = _SEARCH_VERSIONS_DEFAULT,
        order_by: list[str] | None = None,
        page_token: Any = None,
    ) -> PagedList:
        """Live versions matching a conjunction of `name = 'X'`, `run_id = 'Y'` and
        `tags.<key> = 'V'`, in MLflow's default order (last update descending, name, version
        descending). As MLflow's search, `aliases` is left empty."""
        if order_by:
            raise ValueError(f"order_by {order_by!r}: not supported; use MLflow's client")
        if not isinstance(max_results, int) or max_results < 1:
            raise _invalid(
                "Invalid value for max_results. It must be a positive integer,"
                f" but got {max_results}"
            )
        if max_results > _SEARCH_VERSIONS_MAX:
            raise _invalid(
                "Invalid value for request parameter max_results. It must be at most "
                f"{_SEARCH_VERSIONS_MAX}, but got value {max_results}"
            )
        where, values = ["v.workspace = ?", "v.current_stage != ?"], [WORKSPACE, _STAGE_DELETED]
        for key, value in _clauses(filter_string):
            prefix, name = _split_key(key)
            if key in ("name", "run_id"):
                where.append(f"v.{key} = ?")
                values.append(value)
            elif prefix in ("tags", "tag") and name and name != _IS_PROMPT_TAG:
                where.append(
                    "exists (select 1 from model_version_tags t where t.workspace = v.workspace "
                    "and t.name = v.name and t.version = v.version and t.key = ? and t.value = ?)"
                )
                values += [name, value]
            else:
                raise ValueError(
                    f"filter {filter_string!r}: unsupported key {key!r} (only name, run_id and "
                    "tags.<key>); use MLflow's client"
                )
        # Prompts are not model versions to MLflow's search.
        where.append(
            "v.name not in (select name from registered_model_tags where workspace = v.workspace "
            "and key = ? and value = 'true')"
        )
        values.append(_IS_PROMPT_TAG)
        offset = _page_offset(page_token)
        rows = self.connection.execute(
            f"select {', '.join('v.' + c for c in self._VERSION_COLUMNS.split(', '))} from "
            "model_versions v where "
            + " and ".join(where)
            + " order by v.last_updated_time desc, v.name, v.version desc limit ? offset ?",
            (*values, max_results + 1, offset),
        ).fetchall()
        token = _page_token(offset + max_results) if len(rows) > max_results else None
        return PagedList([self._version(r, False) for r in rows[:max_results]], token)

    def set_registered_model_alias(self, name: str, alias: str, version: str | int) -> None:
        _model_name(name)
        _alias_name(alias)
        number = _version_number(version)
        with self.store.transaction():
            self._model_row(name)
            if alias.lower() == "latest":
                raise _invalid("'latest' alias name (case insensitive) is reserved.")
            if _VERSION_ALIAS.match(alias):
                raise _invalid(f"Version alias name '{alias}' is reserved.")
            self._version_row(name, number)
            self.connection.execute(
                "insert into registered_model_aliases (alias, version, name, workspace) "
                "values (?, ?, ?, ?) on conflict (workspace, name, alias) do update set "
                "version = excluded.version",
                (alias, number, name, WORKSPACE),
            )

    def delete_registered_model_alias(self, name: str, alias: str) -> None:
        _model_name(name)
        _alias_name(alias)
        with self.store.transaction():
            self._model_row(name)
            self.connection.execute(
                "delete from registered_model_aliases where workspace = ? and name = ? and "
                "alias = ?",
                (WORKSPACE, name, alias),
            )

    def set_model_version_tag(
        self, name: str, version: str | int | None = None, key: str | None = None, value: Any = None
    ) -> None:
        """The tag's value as `str(value)`, as MLflow's client stores it (None is "None")."""
        if not version:
            raise _invalid("version or stage must be set")
        with self.store.transaction():
            self._model_row(name)
            number = _version_number(version)
            key, value = _tag(key, str(value), _MAX_REGISTRY_TAG_VALUE)
            self._version_row(name, number)
            self.connection.execute(
                "insert into model_version_tags (key, value, name, version, workspace) "
                "values (?, ?, ?, ?, ?) on conflict (workspace, key, name, version) do "
                "update set value = excluded.value",
                (key, value, name, number, WORKSPACE),
            )

    def delete_model_version(self, name: str, version: str | int) -> None:
        """MLflow keeps a deleted version's row (so its number is never reused) in stage
        `Deleted_Internal`, its source, run id and link redacted, its tags kept; the
        aliases naming it are deleted."""
        with self.store.transaction():
            self._model_row(name)
            number = _version_number(version)
            self._version_row(name, number)
            now = int(time.time() * 1000)
            key = (WORKSPACE, name, number)
            self._execute(
                [
                    (
                        "update registered_models set last_updated_time = ? where workspace = ? "
                        "and name = ?",
                        (now, WORKSPACE, name),
                    ),
                    (
                        "delete from registered_model_aliases where workspace = ? and name = ? "
                        "and version = ?",
                        key,
                    ),
                    (
                        "update model_versions set current_stage = ?, last_updated_time = ?, "
                        "description = NULL, user_id = NULL, source = 'REDACTED-SOURCE-PATH', "
                        "run_id = 'REDACTED-RUN-ID', run_link = 'REDACTED-RUN-LINK', "
                        "status_message = NULL where workspace = ? and name = ? and version = ?",
                        (_STAGE_DELETED, now, *key),
                    ),
                ]
            )

    def register_model(
        self,
        model_uri: str,
        name: str,
        await_registration_for: int | None = None,
        *,
        tags: Mapping[str, Any] | None = None,
    ) -> ModelVersion:
        """`mlflow.register_model("runs:/<run_id>/<path>", name, tags=...)`: the registered
        model created when missing, then the next version (one more than the highest number
        ever given, deleted versions included) at the run's artifacts `<path>`, READY.

        Only a `runs:/` URI whose folder holds an MLmodel file (the stages log the model's
        folder as artifacts): anything else (a logged model, `models:/`) is a ValueError.
        `await_registration_for` is accepted and unused: the version is READY at once, as
        MLflow's SQL store makes it."""
        del await_registration_for
        parsed = urllib.parse.urlparse(model_uri)
        path = parsed.path
        if parsed.scheme != "runs" or not path.startswith("/") or len(path) <= 1:
            raise ValueError(f"{model_uri!r}: only runs:/<run_id>/<path> is supported")
        run_id, _, artifact_path = path[1:].partition("/")
        _model_name(name)
        version_tags = [_tag(k, v, _MAX_REGISTRY_TAG_VALUE) for k, v in (tags or {}).items()]
        run = self.get_run(run_id)
        folder = local_artifact_path(run.info.artifact_uri) / _relative(artifact_path)
        if not (folder / _MLMODEL).is_file():
            raise ValueError(
                f"{model_uri}: no {_MLMODEL} under the run's artifacts at {artifact_path!r} "
                "(a logged model): use MLflow's client"
            )
        source = _append_to_uri_path(run.info.artifact_uri, artifact_path)
        now = int(time.time() * 1000)
        with self.store.transaction():
            self.connection.execute(
                "insert into registered_models (name, creation_time, last_updated_time, "
                "description, workspace) values (?, ?, ?, NULL, ?) on conflict do nothing",
                (name, now, now, WORKSPACE),
            )
            self.connection.execute(
                "update registered_models set last_updated_time = ? where workspace = ? and "
                "name = ?",
                (now, WORKSPACE, name),
            )
            (highest,) = self.connection.execute(
                "select max(version) from model_versions where workspace = ? and name = ?",
                (WORKSPACE, name),
            ).fetchone()
            number = (highest or 0) + 1
            self.connection.execute(
                "insert into model_versions (name, version, creation_time, last_updated_time, "
                "description, user_id, current_stage, source, run_id, status, status_message, "
                "run_link, storage_location, workspace) values "
                "(?, ?, ?, ?, NULL, NULL, ?, ?, ?, 'READY', NULL, NULL, ?, ?)",
                (name, number, now, now, _STAGE_NONE, source, run_id, source, WORKSPACE),
            )
            for key, value in dict(version_tags).items():
                self.connection.execute(
                    "insert into model_version_tags (key, value, name, version, workspace) "
                    "values (?, ?, ?, ?, ?)",
                    (key, value, name, number, WORKSPACE),
                )
        return self.get_model_version(name, number)
