"""The MLflow record of the pipeline, defined once: where it lives, its tag scheme, its queries.

Every stage run is an MLflow run in one experiment. Its tags tie it to files by md5 (the md5
DVC 3 records in dvc.lock), so a chain of runs can be followed from a model to raw bytes:

    in/<path>      md5 of a file the run read          out/<path>   md5 of a file it wrote
    code/<path>    md5 of a project module it ran      source/<path> where a raw file came from
    raw/<path>     (on model versions) md5 of a raw file of the pipeline the model came from

`<path>` is the file's name in the project (lineage_path). The producer of a file is the
finished run whose `out/<path>` tag holds its md5 (find_producer). The stage-run recorder
(stage_runtime/tracking.py), the lineage tools (lineage.trace) and the flow's report use what is
defined here and nothing else. Light to import: no mlflow until a client is asked for.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stages.common import Section, load_yaml

EXPERIMENT_ENV = "MLFLOW_EXPERIMENT_NAME"
DEFAULT_EXPERIMENT = "taxi-trip-duration"
TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
# The flow sets it to its flow run id; every stage run of one execution carries it.
PIPELINE_RUN_ENV = "PIPELINE_RUN_ID"
STORE_FILE = "mlflow.db"
ARTIFACTS_DIR = "mlruns"
LOCK_FILE = "dvc.lock"

INPUT, OUTPUT, CODE, SOURCE, RAW = "in", "out", "code", "source", "raw"
# The identity an HTTP source gave for a raw file when it was ingested (ETag, Last-Modified,
# Content-Length: timeline.source), to tell later whether it was republished.
UPSTREAM = "upstream"
TAG_KINDS = (INPUT, OUTPUT, CODE, SOURCE, RAW, UPSTREAM)
# Tags of a stage run besides the file tags.
STAGE_TAG = "stage"
PIPELINE_RUN_TAG = "pipeline_run_id"
MODEL_NAME_TAG = "model_name"
MODEL_VERSION_TAG = "model_version"
# Batch scoring (flows.score) records a run of stage `score@<month>`: in/ the month's file and
# the model file it scored with (the producer of that md5 is the model's train run), out/ the
# predictions, and the registered version it resolved the model URI to.
SCORE_STAGE = "score"
# The stages reverse lineage tells apart: a model is trained by `train`, judged by `evaluate`.
TRAIN_STAGE, EVALUATE_STAGE = "train", "evaluate"
SCORED_MODEL_URI_TAG, SCORED_MODEL_VERSION_TAG = "scored_model_uri", "scored_model_version"
# Tags of a model version besides raw/ and in/: its run and its files.
RUN_ID_TAG = "run_id"
MODEL_MD5_TAG = "model_md5"
LOCK_MD5_TAG = "dvc_lock_md5"

# A dead tracking server must cost seconds, not MLflow's default of minutes of retries.
_CLIENT_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
    "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "false",
    # pip_requirements are explicit; uv.lock detection and progress bars only cost time.
    "MLFLOW_UV_AUTO_DETECT": "false",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}
CONNECT_ATTEMPTS = 3
# A server that accepts connections but never answers is given this long per attempt.
HEALTH_TIMEOUT_SECONDS = 3.0


def apply_client_defaults() -> None:
    """The MLflow settings of this project's processes (a user's own setting wins): bounded
    retries and timeouts, no pickles, no uv files beside a logged model. Applied by `connect`
    and by every stage run (stage_runtime.tracking.stage_run), so a model folder written without
    MLflow (stage_runtime.pyfunc_folder) follows them as MLflow's own writer would."""
    for key, value in _CLIENT_DEFAULTS.items():
        os.environ.setdefault(key, value)


class TrackingUnavailableError(RuntimeError):
    """The MLflow tracking store did not answer: a transient failure, worth a retry."""


# The error codes with which MLflow's client (and stage_runtime.sqlite_client) says a model,
# version or alias does not exist; read from the exception, so no caller imports MLflow's
# exception class (that import is MLflow's whole import).
NOT_FOUND_CODES = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")


def is_not_found(exc: BaseException) -> bool:
    """An MLflow error saying the model, version or alias asked for does not exist."""
    return getattr(exc, "error_code", None) in NOT_FOUND_CODES


class TrackingStoreError(RuntimeError):
    """The tracking store answered but cannot be used (read-only, corrupt, disk full)."""


# --------------------------------------------------------------------------- tag scheme


def tag_key(kind: str, path: str) -> str:
    """`in/data/raw/x.parquet`: the key of a file tag; `kind` is one of TAG_KINDS."""
    if kind not in TAG_KINDS:
        raise ValueError(f"unknown lineage tag kind {kind!r}")
    return f"{kind}/{path}"


def file_tags(kind: str, files: Mapping[str, str]) -> dict[str, str]:
    """{path: value} as tags of one kind."""
    return {tag_key(kind, path): value for path, value in files.items()}


def tagged_files(tags: Mapping[str, str], kind: str) -> dict[str, str]:
    """The {path: value} of one kind of file tag, back from a run's or version's tags."""
    prefix = f"{kind}/"
    return {k.removeprefix(prefix): v for k, v in tags.items() if k.startswith(prefix)}


def lineage_path(path: Path | str, root: Path | None = None) -> str:
    """The name a file goes by in the record: relative to the project when inside it.

    dvc.yaml passes relative paths; a stage run by hand may get absolute ones, and MLflow
    refuses tag keys such as `out//tmp/x` that do not survive path normalisation.
    """
    absolute = Path(os.path.abspath(path))
    try:
        return absolute.relative_to(root or Path.cwd()).as_posix()
    except ValueError:
        return "external" + absolute.as_posix()


def lineage_uri(name: str) -> str:
    """A file URI for a lineage name (what the MLflow dataset view links to)."""
    if name.startswith("external/"):
        return Path(name.removeprefix("external")).as_uri()
    return Path(name).resolve().as_uri()


def flatten(prefix: str, value: Any) -> dict[str, Any]:
    """{'model': {'xgboost': {'n_rounds': 4}}} -> {'model.xgboost.n_rounds': 4}."""
    if isinstance(value, Section):
        value = value.as_dict()
    if isinstance(value, Mapping):
        flat: dict[str, Any] = {}
        for key, item in value.items():
            flat.update(flatten(f"{prefix}.{key}" if prefix else str(key), item))
        return flat
    return {prefix: value}


# --------------------------------------------------------------------------- dvc.lock


@dataclass(frozen=True)
class LockedStage:
    """One stage entry of dvc.lock: the md5 of every dependency and output, its params."""

    name: str
    deps: dict[str, str]
    outs: dict[str, str]
    params: dict[str, Any] = field(default_factory=dict)


def parse_lock(text: str) -> dict[str, LockedStage]:
    """Every stage of a dvc.lock text, by DVC's stage address (`prepare@2025-01`)."""
    document = load_yaml(text) or {}
    stages = {}
    for name, entry in (document.get("stages") or {}).items():
        params = {}
        for values in (entry.get("params") or {}).values():
            params.update(flatten("", values))
        stages[name] = LockedStage(
            name,
            {d["path"]: d.get("md5", "") for d in entry.get("deps") or []},
            {o["path"]: o.get("md5", "") for o in entry.get("outs") or []},
            params,
        )
    return stages


def read_lock(path: Path | str = LOCK_FILE) -> dict[str, LockedStage]:
    """dvc.lock's stages, or {} when there is no dvc.lock yet."""
    path = Path(path)
    return parse_lock(path.read_text()) if path.is_file() else {}


def folder_modules(folder: Path) -> list[str]:
    """The `.py` files of a code folder a stage declares whole, as DVC hashes it (.dvcignore
    leaves __pycache__ out); folder_md5 of their md5s is dvc.lock's md5 of the folder."""
    return sorted(p.as_posix() for p in folder.rglob("*.py") if "__pycache__" not in p.parts)


def folder_md5(folder: str, md5s: Mapping[str, str]) -> str:
    """The md5 dvc.lock records for a folder, from the md5 of each file in it (paths from the
    project root, as the record's `code/` tags hold them): DVC 3's md5 of the folder's JSON
    listing (relative path and md5 of each file, sorted by path) plus `.dir`. So the record's
    file-by-file tags of a folder dependency can be checked against dvc.lock's one entry."""
    prefix = folder.rstrip("/") + "/"
    if any(not path.startswith(prefix) for path in md5s):
        raise ValueError(f"folder_md5: a file outside {folder}: {sorted(md5s)}")
    listing = sorted(
        ({"md5": md5, "relpath": path.removeprefix(prefix)} for path, md5 in md5s.items()),
        key=lambda entry: entry["relpath"],
    )
    digest = hashlib.md5(json.dumps(listing, sort_keys=True).encode("utf-8")).hexdigest()
    return digest + ".dir"


def locked_outputs(stages: Mapping[str, LockedStage]) -> dict[str, str]:
    """path -> md5 of every stage output a dvc.lock records."""
    return {path: md5 for stage in stages.values() for path, md5 in stage.outs.items()}


def raw_outputs(stages: Mapping[str, LockedStage]) -> dict[str, str]:
    """path -> md5 of the raw files (the outputs of the ingest stages)."""
    return {
        path: md5
        for name, stage in stages.items()
        if name.split("@")[0].startswith("ingest")
        for path, md5 in stage.outs.items()
    }


# --------------------------------------------------------------------------- the store


def project_root(start: Path | None = None) -> Path:
    """The repository the store belongs to, also from DVC's temporary experiment workspaces
    (`<root>/.dvc/tmp/exps/<tmp>`) and git worktrees (their main repository's root)."""
    here = (start or Path.cwd()).resolve()
    parts = here.parts
    if ".dvc" in parts:
        return Path(*parts[: parts.index(".dvc")])
    from stage_runtime.locks import git_common_dir

    try:
        return git_common_dir(here).parent
    except (OSError, subprocess.CalledProcessError):
        return here


def tracking_uri(start: Path | None = None) -> str:
    """MLFLOW_TRACKING_URI, else mlflow.db at the root of the repository DVC runs for."""
    if os.environ.get(TRACKING_URI_ENV):
        return os.environ[TRACKING_URI_ENV]
    # DVC_ROOT names the parent repository, also from DVC's temporary experiment workspaces.
    dvc_root = os.environ.get("DVC_ROOT")
    root = project_root(start or (Path(dvc_root) if dvc_root else None))
    return f"sqlite:///{root / STORE_FILE}"


def sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///` URI, else None."""
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


def experiment_name() -> str:
    return os.environ.get(EXPERIMENT_ENV, DEFAULT_EXPERIMENT)


def _check_http(uri: str) -> None:
    """GET /health with a short timeout: a hung server is found in seconds, not minutes."""
    import urllib.error  # only for a server: http.client costs every stage 25-40 ms
    import urllib.request

    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=HEALTH_TIMEOUT_SECONDS):
            return
    except urllib.error.HTTPError as exc:
        if exc.code < 500:
            return  # it answers; an auth proxy or an older server may not serve /health
        raise
    except TimeoutError as exc:
        raise TimeoutError(f"no answer within {HEALTH_TIMEOUT_SECONDS:g} s") from exc


def wait_for_server(uri: str) -> None:
    """_check_http until the tracking server answers: TrackingUnavailableError after
    CONNECT_ATTEMPTS (about 10 s for a dead or hung server)."""
    for attempt in range(1, CONNECT_ATTEMPTS + 1):
        try:
            _check_http(uri)
            return
        except OSError as exc:
            if attempt == CONNECT_ATTEMPTS:
                raise TrackingUnavailableError(
                    f"MLflow tracking store {uri} did not answer after {attempt} attempts: "
                    f"{_first_line(exc)}"
                ) from None
            time.sleep(attempt)


@contextlib.contextmanager
def _store_creation_lock(uri: str) -> Iterator[None]:
    """Processes opening one SQLite store take turns for their first query: on a new file
    that query runs MLflow's migrations, and two at once corrupt the schema."""
    path = sqlite_path(uri)
    if path is None:
        yield
        return
    from stage_runtime.locks import file_lock

    with file_lock(path.with_name(path.name + ".lock"), f"open MLflow store {path}"):
        yield


def connect(uri: str | None = None, create: bool = True) -> Any:
    """An MlflowClient whose store answered, with the experiment in place (`create`), or for
    reading only (`create=False`: a missing SQLite file is not created).

    TrackingUnavailableError after CONNECT_ATTEMPTS (about 10 s for a dead or hung server);
    TrackingStoreError, at once, for a store that answers but refuses (read-only, corrupt).
    """
    uri = uri or tracking_uri()
    path = sqlite_path(uri)
    if not create and path is not None and not path.is_file():
        raise TrackingStoreError(f"no MLflow store at {path}: has the pipeline run here?")
    apply_client_defaults()
    # MLflow logs a store error with its whole traceback before raising it; the caller
    # reports it in one line (TrackingStoreError, or the stage's CANNOT WRITE / TRANSIENT).
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
    if uri.startswith(("http://", "https://")):
        wait_for_server(uri)
    error: Exception | None = None
    for attempt in range(1, CONNECT_ATTEMPTS + 1):
        try:
            with _store_creation_lock(uri):
                import mlflow
                from mlflow.tracking import MlflowClient

                # The process-wide URIs too: MLflow's model functions read those.
                mlflow.set_tracking_uri(uri)
                mlflow.set_registry_uri(uri)
                client = MlflowClient(tracking_uri=uri, registry_uri=uri)
                if create:
                    ensure_experiment(client, uri)
                else:
                    client.search_experiments(max_results=1)
            return client
        except Exception as exc:  # any store failure: retried, then named
            error = exc
            if _is_refusal(exc):
                raise TrackingStoreError(f"MLflow store {uri}: {_first_line(exc)}") from None
            if attempt < CONNECT_ATTEMPTS:
                time.sleep(attempt)
    raise TrackingUnavailableError(
        f"MLflow tracking store {uri} did not answer after {CONNECT_ATTEMPTS} attempts: "
        f"{_first_line(error)}"
    )


def _first_line(exc: BaseException | None) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def _is_refusal(exc: BaseException) -> bool:
    """Errors of a store that answered and will refuse again: no use retrying."""
    text = str(exc).lower()
    return any(
        reason in text
        for reason in ("readonly database", "read-only", "disk is full", "no space left")
    )


def ensure_experiment(client: Any, uri: str) -> str:
    """The pipeline's experiment id, created on first use with its artifacts beside the store.

    An explicit artifact location: MLflow's default (`./mlruns` of the current directory)
    would put artifacts inside whatever workspace ran first, e.g. a temporary one of
    `dvc exp run --temp` that DVC deletes afterwards.
    """
    name = experiment_name()
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    path = sqlite_path(uri)
    location = artifact_location(path) if path else None
    try:
        return client.create_experiment(name, artifact_location=location)
    except Exception:  # another process created it meanwhile
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def artifact_location(store: Path) -> str:
    """The pipeline experiment's artifacts: `mlruns/` beside its SQLite store, as a file URI."""
    return (store.parent / ARTIFACTS_DIR).as_uri()


def experiment_id(client: Any) -> str | None:
    """The pipeline's experiment id in this store, or None when nothing was recorded yet."""
    experiment = client.get_experiment_by_name(experiment_name())
    return experiment.experiment_id if experiment else None


# --------------------------------------------------------------------------- queries


def producer_filter(path: str, md5: str, pipeline_run_id: str | None = None) -> str:
    """The search filter for finished runs that wrote `path` with these bytes."""
    query = f"tags.`{tag_key(OUTPUT, path)}` = '{md5}' and attributes.status = 'FINISHED'"
    if pipeline_run_id:
        query += f" and tags.{PIPELINE_RUN_TAG} = '{pipeline_run_id}'"
    return query


def find_producer(
    client: Any, experiment_ids: list[str], path: str, md5: str, pipeline_run_id: str | None = None
) -> Any | None:
    """The newest finished run that wrote `path` with md5 `md5`; of one execution if given."""
    for run_id in [pipeline_run_id, None] if pipeline_run_id else [None]:
        runs = client.search_runs(
            experiment_ids,
            filter_string=producer_filter(path, md5, run_id),
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        if runs:
            return runs[0]
    return None


def runs_of_execution(client: Any, experiment_ids: list[str], pipeline_run_id: str) -> list[Any]:
    """Every stage run of one pipeline execution."""
    return client.search_runs(
        experiment_ids, filter_string=f"tags.{PIPELINE_RUN_TAG} = '{pipeline_run_id}'"
    )


def versions_of_run(client: Any, model_name: str, run_id: str) -> list[Any]:
    """The registered versions a run created (also those whose creation it never heard of)."""
    return client.search_model_versions(f"name = '{model_name}' and run_id = '{run_id}'")


def find_model_version(client: Any, model_uri: str) -> Any | None:
    """The registered version `models:/<name>/<version>`, `models:/<name>/latest` or
    `models:/<name>@<alias>` names now; None when there is no such model, version or alias.
    ValueError for a URI of another form; other store errors propagate."""
    ref = model_uri.removeprefix("models:/").rstrip("/")
    name, at, alias = ref.partition("@")
    if not at:
        name, _, number = ref.rpartition("/")
    if ref == model_uri or not name or not (alias if at else number):
        raise ValueError(
            f"{model_uri}: expected models:/<name>/<version>, .../latest or models:/<name>@<alias>"
        )
    try:
        if at:
            return client.get_model_version_by_alias(name, alias)
        if number.lower() == "latest":
            versions = client.search_model_versions(f"name = '{name}'")
            return max(versions, key=lambda v: int(v.version)) if versions else None
        return client.get_model_version(name, number)
    except Exception as exc:
        if is_not_found(exc):
            return None
        raise


def lineage_of_version(tags: Mapping[str, str]) -> dict[str, str]:
    """What makes two model versions the same model: its bytes, the raw files and the
    features it was trained on, the code packaged with it (not the run, the commit or
    dvc.lock's md5)."""
    keep = {MODEL_MD5_TAG}
    kinds = (f"{RAW}/", f"{INPUT}/", f"{CODE}/")
    return {k: v for k, v in tags.items() if k in keep or k.startswith(kinds)}


def same_model_version(client: Any, model_name: str, tags: Mapping[str, str]) -> Any | None:
    """A registered version of these model bytes with the same lineage whose run finished."""
    wanted = lineage_of_version(tags)
    if MODEL_MD5_TAG not in wanted:
        return None
    candidates = client.search_model_versions(
        f"name = '{model_name}' and tags.{MODEL_MD5_TAG} = '{wanted[MODEL_MD5_TAG]}'"
    )
    for version in sorted(candidates, key=lambda v: int(v.version)):
        if lineage_of_version(version.tags) != wanted:
            continue
        try:
            finished = client.get_run(version.run_id).info.status == "FINISHED"
        except Exception:  # its run was deleted: not a version to reuse
            finished = False
        if finished:
            return version
    return None


# --------------------------------------------------------------------------- reverse lineage

# A run's params hold the split each month fed as `data.months.<month>` (flatten of the
# `data` section): what tells a month a model trained on from one it was evaluated on.
MONTH_SPLIT_PARAM = "data.months."
EXPERIMENT_NAME_TAG = "dvc_exp_name"
# Runs are read in pages of this many (MLflow's default page; its threshold is 50,000).
PAGE_SIZE = 1000


@dataclass(frozen=True)
class StageRecord:
    """What reverse lineage reads of one finished stage run: its files by md5, the split it
    gave each month, the DVC experiment it ran in, the model version it registered."""

    run_id: str
    stage: str
    start_time: int
    inputs: dict[str, str]
    outputs: dict[str, str]
    month_splits: dict[str, str] = field(default_factory=dict)
    experiment: str | None = None
    model_version: tuple[str, str] | None = None  # (name, version) of a train run
    pipeline_run: str | None = None  # the execution it belongs to (PIPELINE_RUN_TAG)

    @property
    def item(self) -> str | None:
        """The foreach item of the stage (`prepare@2024-02` -> `2024-02`), if any."""
        return self.stage.partition("@")[2] or None


def stage_record(run: Any) -> StageRecord:
    """A StageRecord of an MLflow run."""
    tags, params = run.data.tags, run.data.params
    name, number = tags.get(MODEL_NAME_TAG), tags.get(MODEL_VERSION_TAG)
    return StageRecord(
        run.info.run_id,
        tags.get(STAGE_TAG, "?"),
        int(run.info.start_time or 0),
        tagged_files(tags, INPUT),
        tagged_files(tags, OUTPUT),
        {
            key.removeprefix(MONTH_SPLIT_PARAM): value
            for key, value in params.items()
            if key.startswith(MONTH_SPLIT_PARAM)
        },
        tags.get(EXPERIMENT_NAME_TAG),
        (name, number) if name and number else None,
        tags.get(PIPELINE_RUN_TAG),
    )


def finished_stage_runs(client: Any, experiment_ids: list[str]) -> list[StageRecord]:
    """Every finished run of the experiments, oldest first, in pages: one query a page.

    One scan rather than one `in/<path>` query per file: a consumer is found by the md5 it
    read under any name (a month scored from a downloaded copy, a model file of the registry),
    and MLflow cannot search a tag value whatever its key. A few hundred runs: one page.
    """
    records, token = [], None
    while True:
        page = client.search_runs(
            experiment_ids,
            filter_string="attributes.status = 'FINISHED'",
            order_by=["attributes.start_time ASC"],
            max_results=PAGE_SIZE,
            page_token=token,
        )
        records.extend(stage_record(run) for run in page)
        token = page.token
        if not token:
            return records


@dataclass(frozen=True)
class VersionRecord:
    """A registered model version as reverse lineage reads it."""

    name: str
    version: str
    run_id: str
    model_md5: str | None
    aliases: tuple[str, ...] = ()


def registered_versions(client: Any, model_name: str) -> list[VersionRecord]:
    """Every version of a registered model with its aliases, in pages of one query each."""
    try:
        aliases = dict(client.get_registered_model(model_name).aliases or {})
    except Exception as exc:
        if not is_not_found(exc):
            raise
        return []  # no such model (any more): none of its versions can be listed
    by_version: dict[str, list[str]] = {}
    for alias, number in aliases.items():
        by_version.setdefault(str(number), []).append(alias)
    versions, token = [], None
    while True:
        page = client.search_model_versions(
            f"name = '{model_name}'", max_results=PAGE_SIZE, page_token=token
        )
        versions.extend(
            VersionRecord(
                v.name,
                str(v.version),
                v.run_id,
                (v.tags or {}).get(MODEL_MD5_TAG),
                tuple(sorted(by_version.get(str(v.version), []))),
            )
            for v in page
        )
        token = page.token
        if not token:
            return versions
