"""The stage-run recorder: one MLflow run per stage run, written in the scheme of
stage_runtime.record.

Every stage does its work inside `stage_run(...)` and writes its outputs to staged temporary
files. At the end, in this order:
  1. the run is recorded: params, metrics, `in/` `out/` `code/` `source/` tags, datasets, and
     for train the logged model (artifacts upload before anything is committed);
  2. the outputs are moved into place, all or none (StagedOutputs.commit);
  3. train registers the model version, so a version exists only for files that are in
     place, then the registry steps a stage asked for (after_commit: train marks the new
     version challenger, evaluate decides on the champion); if one fails the previous
     outputs are put back and the new version deleted;
  4. the run is marked FINISHED.
On any failure (an exception, Ctrl-C, SIGTERM) the staged files are dropped, committed ones
rolled back, versions the run created are deleted (looked up in the registry, not taken from
a return value that an interrupt may have cut off) and the run is marked FAILED. A SIGKILL
leaves a RUNNING run: the next train removes versions whose run did not finish
(reconcile_orphans).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import sqlite3
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from stage_runtime import http_store, record
from stage_runtime.pyfunc_folder import NotMirroredError, mlflow_example, save_pyfunc_folder
from stage_runtime.sqlite_client import SqliteClient
from stage_runtime.sqlite_store import DirectStore, create_store, http_source
from stages.common import (
    STAGE_ENV,
    BadInputError,
    EnvironmentRefusal,
    StagedOutputs,
    TransientError,
    file_md5,
    load_yaml,
    process_identity,
)

log = logging.getLogger("stage_runtime.tracking")
# XGBoost as pyproject.toml has it: the CPU-only build where PyPI has one. Without the markers
# MLflow looks for the `xgboost` distribution, finds none, and imports the module to read its
# version: 1.8 s of every train, ridge included.
MODEL_REQUIREMENTS = [
    "numpy",
    "pandas",
    "scipy",
    "xgboost-cpu; sys_platform != 'darwin'",
    "xgboost; sys_platform == 'darwin'",
    "pyarrow",
    "pyyaml",
]
# The file MLflow runs to load a logged model (models from code), and the project modules it
# imports; they ship inside every registered model, so train depends on them in dvc.yaml.
PYFUNC_MODEL = Path(__file__).resolve().parents[1] / "stages" / "pyfunc_model.py"
MODEL_CODE = (
    "stages/common.py",
    "stages/encoding.py",
    "stages/model.py",
    "stages/pyfunc_model.py",
    "stages/request.py",
)
# Code folders dvc.yaml declares as one dependency of every stage (DVC hashes the folder; the
# record lists its modules file by file).
CODE_FOLDERS = ("stage_runtime",)
# Tags naming the process that owns a run, so a later run can tell a dead one (SIGKILL).
HOST_TAG, PROCESS_TAG = "host", "process"
# Inside `dvc exp run`, DVC names the experiment and its baseline in these variables.
EXPERIMENT_TAGS = {"DVC_EXP_NAME": "dvc_exp_name", "DVC_EXP_BASELINE_REV": "dvc_exp_baseline"}


def pipeline_run_id() -> str:
    """The id that groups one pipeline execution's stage runs.

    The flow sets PIPELINE_RUN_ID; under a bare `dvc repro` every stage is a child of the same
    dvc process, so that process's identity names the execution.
    """
    if os.environ.get(record.PIPELINE_RUN_ENV):
        return os.environ[record.PIPELINE_RUN_ENV]
    with contextlib.suppress(OSError, ValueError, IndexError):
        pid = os.getppid()
        while pid > 1:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if any(Path(a.decode(errors="replace")).name == "dvc" for a in argv[:2]):
                return f"dvc-{process_identity(pid)}"
            stat = Path(f"/proc/{pid}/stat").read_text()
            pid = int(stat[stat.rindex(")") + 2 :].split()[1])
    return f"standalone-{os.getpid()}-{time.time_ns()}"


def git_state() -> dict[str, str]:
    import subprocess

    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return {"git_commit": "none"}
    return {"git_commit": commit, "git_dirty": str(bool(dirty)).lower()}


def code_files(stage: str, dvc_yaml: Path = Path("dvc.yaml")) -> dict[str, str]:
    """md5 of the code this stage runs: the `.py` dependencies dvc.yaml declares for it, and
    the modules of a code folder it declares (stage_runtime), file by file: the files DVC
    hashes for dvc.lock (tests/test_dvc_yaml.py holds that list to every module the stage
    imports). Run by hand outside a DVC project: the project modules this process imported."""
    name = stage.rpartition(":")[2].partition("@")[0]
    with contextlib.suppress(OSError, KeyError, TypeError, AttributeError):
        definition = load_yaml(dvc_yaml.read_text())["stages"][name]
        deps = (definition.get("do") or definition)["deps"]
        files = [d for d in deps if d.endswith(".py")]
        files += [m for d in deps if d in CODE_FOLDERS for m in record.folder_modules(Path(d))]
        return {f: file_md5(f) for f in sorted(files)}
    root = Path.cwd().resolve()
    files = {}
    for module in list(sys.modules.values()):
        path = Path(getattr(module, "__file__", None) or "/").resolve()
        if path.suffix == ".py" and path.is_relative_to(root) and ".venv" not in path.parts:
            files[path.relative_to(root).as_posix()] = file_md5(path)
    return files


def model_lineage(lock_file: Path = Path(record.LOCK_FILE)) -> dict[str, str]:
    """Tags tying a model version to the pipeline state it came from: dvc.lock's md5 and the
    md5 of every raw file. Read while train runs: DVC has written every upstream entry."""
    if not lock_file.is_file():
        return {}
    tags = record.file_tags(record.RAW, record.raw_outputs(record.read_lock(lock_file)))
    return {record.LOCK_MD5_TAG: file_md5(lock_file), **tags}


class ClientWriter:
    """The run record through MLflow's client: a tracking server, or a SQLite store that
    MLflow must first create or migrate. The same calls as
    stage_runtime.sqlite_store.DirectStore."""

    def __init__(self, client: Any, uri: str) -> None:
        self.client = client
        self.experiment_id = record.ensure_experiment(client, uri)

    def create_run(self, tags: Mapping[str, str], run_name: str) -> str:
        return self.client.create_run(
            self.experiment_id, tags=dict(tags), run_name=run_name
        ).info.run_id

    def log_batch(
        self,
        run_id: str,
        metrics: Mapping[str, float] | None = None,
        params: Mapping[str, str] | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> None:
        from mlflow.entities import Metric, Param, RunTag

        now = int(time.time() * 1000)
        self.client.log_batch(
            run_id,
            metrics=[Metric(k, v, now, 0) for k, v in (metrics or {}).items()],
            params=[Param(k, v) for k, v in (params or {}).items()],
            tags=[RunTag(k, v) for k, v in (tags or {}).items()],
        )

    def log_inputs(self, run_id: str, datasets: list[tuple[str, str, str, str]]) -> None:
        from mlflow.entities import Dataset, DatasetInput, InputTag

        entries = [
            DatasetInput(
                Dataset(name=name, digest=digest, source_type="http", source=source),
                [InputTag("mlflow.data.context", context)],
            )
            for name, digest, source, context in datasets
        ]
        self.client.log_inputs(run_id, datasets=entries)

    def set_terminated(self, run_id: str, status: str) -> None:
        self.client.set_terminated(run_id, status)

    def close(self) -> None:
        pass


Writer = DirectStore | http_store.HttpStore | ClientWriter


def open_writer(uri: str) -> Writer:
    """The cheapest writer for the run record: sqlite3 straight into a SQLite store MLflow has
    built (no `import mlflow`: 1.5-2 s a process), a new one copied from a pristine store,
    the REST API of a tracking server through urllib (stage_runtime.http_store), else MLflow's
    client (connect_store)."""
    if http_store.usable(uri):
        return connect_server(uri)
    path = record.sqlite_path(uri)
    if path is not None:
        if not path.exists():
            # A copy of the pristine store MLflow built once (stage_runtime.sqlite_store), not
            # MLflow's import and 68 migrations in this process. When it cannot be made,
            # MLflow's client below creates the store, or names what stops it, as before.
            try:
                create_store(path, record.experiment_name(), record.artifact_location(path))
            except Exception as exc:
                log.warning("%s: not copied from a pristine MLflow store: %s", path, exc)
        with contextlib.suppress(sqlite3.Error, OSError, ValueError, TypeError):
            store = DirectStore.open(path, record.experiment_name())
            if store is not None:
                return store
        # A store the direct writer will not touch: MLflow's client creates, migrates or
        # names what is wrong with it, as it always did.
    return ClientWriter(connect_store(uri), uri)


class StageRun:
    """What a stage tells MLflow while it works; outputs are staged until the run is recorded.

    `writer` writes the run record; `client` serves models, the registry and searches: on a
    SQLite store with local artifacts stage_runtime.sqlite_client's SqliteClient on the writer's own
    connection (no `import mlflow`), else MLflow's client, opened on first use, so stages that
    only record a run never import MLflow.
    """

    def __init__(
        self,
        stage: str,
        writer: Writer,
        uri: str,
        run_id: str,
        outputs: StagedOutputs,
    ) -> None:
        self.stage = stage
        self.writer = writer
        self.uri = uri
        self.experiment_id = writer.experiment_id
        self.run_id = run_id
        self.outputs = outputs
        self.inputs: dict[str, str] = {}
        self.sources: dict[str, str] = {}
        self.upstream: dict[str, str] = {}
        self.metrics: dict[str, float] = {}
        self._model: dict[str, Any] | None = None
        self._model_uri: str | None = None
        self._after_commit: list[Callable[[], None]] = []
        self.model_version: Any = None
        self.registered_new = False  # a new version (not an identical one found registered)
        self._client: Any = None
        if isinstance(writer, ClientWriter):
            self._client = writer.client
        elif isinstance(writer, DirectStore):
            self._client = SqliteClient.for_store(writer)
        self._opening: threading.Thread | None = None
        self._opened: dict[str, Any] = {}
        # Seconds the stage waited for MLflow's client (part of its mlflow_seconds), and the
        # seconds opening it took in all (in a thread, beside the stage's own work).
        self.client_wait_seconds = 0.0
        self.client_open_seconds = 0.0

    def open_client_early(self) -> None:
        """Start connecting MLflow's client in a thread now (import mlflow, SQLAlchemy's store:
        1.5-2 s), for a stage that will need it, so it overlaps the stage's own work (nothing
        to do when the client is a SqliteClient)."""
        if self._client is None and self._opening is None:
            self._opening = threading.Thread(target=self._open, name="mlflow-client")
            self._opening.start()

    def _open(self) -> None:
        started = time.perf_counter()
        try:
            self._opened["client"] = connect_store(self.uri)
        except BaseException as exc:  # handed to the stage when it asks for the client
            self._opened["error"] = exc
        self.client_open_seconds = time.perf_counter() - started

    def join_client(self) -> None:
        """Wait for a client being opened (a thread still importing must not be abandoned)."""
        if self._opening is not None:
            self._opening.join()

    @property
    def client(self) -> Any:
        """MLflow's client on the same store, connected when a stage first asks for it."""
        if self._client is None:
            started = time.perf_counter()
            if self._opening is None:
                self._open()
            else:
                self._opening.join()
            self.client_wait_seconds += time.perf_counter() - started
            if "error" in self._opened:
                raise self._opened["error"]
            self._client = self._opened["client"]
        return self._client

    def output(self, target: Path | str) -> Path:
        """The temporary path to write a declared output to."""
        return self.outputs.path(target)

    def add_input(self, path: Path | str, name: str | None = None) -> None:
        """Record a file read; `name`: its project name when it was read from elsewhere (a
        registered model's files downloaded from MLflow are `models/model.json`)."""
        if not Path(path).is_file():
            raise BadInputError(f"{path}: input not found (has the stage producing it run?)")
        self.inputs[name or record.lineage_path(path)] = file_md5(path)

    def add_source(self, path: Path | str, address: str, upstream: str | None = None) -> None:
        """Where a raw file came from, and the identity the source gave it (HTTP headers)."""
        self.sources[record.lineage_path(path)] = address
        if upstream:
            self.upstream[record.lineage_path(path)] = upstream

    def log_metrics(self, metrics: Mapping[str, Any]) -> None:
        for key, value in record.flatten("", metrics).items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                self.metrics[key] = float(value)

    def register_model(
        self,
        model_path: Path | str,
        encoders_path: Path | str,
        name: str,
        tags: Mapping[str, str],
        *,
        signature: Any = None,
        example: Any = None,
    ) -> None:
        """Log the model (pickle-free pyfunc over its JSON files) and register a new version
        once the outputs are in place. `signature`: the MLflow signature of its request, in
        `ModelSignature.to_dict()` form (stages.request.signature_dict); `example`: a few real
        trips as a request, logged as the input example."""
        self._model = {
            "model": Path(model_path),
            "encoders": Path(encoders_path),
            "name": name,
            "tags": dict(tags),
            "signature": signature,
            "example": example,
        }

    def after_commit(self, step: Callable[[], None]) -> None:
        """Run `step` once the outputs are in place and the model registered (registry state
        such as aliases): a step that fails fails the stage and rolls its outputs back."""
        self._after_commit.append(step)

    def model_version_of(self, run_id: str | None) -> tuple[str, str] | None:
        """(name, version) of the model version the run `run_id` registered, if any."""
        if not run_id:
            return None
        tags = self.client.get_run(run_id).data.tags
        name, version = tags.get(record.MODEL_NAME_TAG), tags.get(record.MODEL_VERSION_TAG)
        return (name, version) if name and version else None

    def producer_of(self, path: Path | str) -> str | None:
        """The run that wrote this input file (same md5), newest first."""
        name = record.lineage_path(path)
        run = record.find_producer(self.client, [self.experiment_id], name, self.inputs[name])
        return run.info.run_id if run else None

    def report_to(
        self,
        run_id: str | None,
        files: list[Path],
        artifact_dir: str,
        version_metrics: Mapping[str, Any] | None = None,
    ) -> None:
        """Attach files to this run, and files and metrics to `run_id` (the model's run) and
        `version_metrics` as tags of its registered version (`validation.rmse`, ...)."""
        for target in [self.run_id] + ([run_id] if run_id else []):
            for path in files:
                self.client.log_artifact(target, str(path), artifact_dir)
        if not run_id:
            return
        self.writer.log_batch(run_id, metrics=dict(sorted(self.metrics.items())))
        registered = self.model_version_of(run_id)
        if registered and version_metrics:
            name, version = registered
            for key, value in record.flatten("", version_metrics).items():
                self.client.set_model_version_tag(name, version, key, str(value))

    # -- called by stage_run -------------------------------------------------------------

    def _record(self) -> None:
        outputs = {record.lineage_path(t): file_md5(tmp) for t, tmp in self.outputs.files.items()}
        code = code_files(self.stage)
        tags = record.file_tags(record.INPUT, self.inputs)
        tags |= record.file_tags(record.OUTPUT, outputs)
        tags |= record.file_tags(record.CODE, code)
        tags |= record.file_tags(record.SOURCE, self.sources)
        tags |= record.file_tags(record.UPSTREAM, self.upstream)
        self.writer.log_batch(
            self.run_id, metrics=dict(sorted(self.metrics.items())), tags=dict(sorted(tags.items()))
        )
        self._log_datasets(outputs)
        if self._model is not None:
            self._log_model(outputs)

    def _log_datasets(self, outputs: dict[str, str]) -> None:
        """The same files as MLflow datasets, so the UI's dataset view shows them with digests."""
        entries = []
        for context, files in (("input", self.inputs), ("output", outputs)):
            for path, md5 in files.items():
                address = self.sources.get(path) or record.lineage_uri(path)
                entries.append((path, md5, http_source(address), context))
        if entries:
            self.writer.log_inputs(self.run_id, entries)

    def _log_model(self, outputs: dict[str, str]) -> None:
        """The model's artifacts: the exact bytes of the model and encoders files (their md5
        equals dvc.lock's) and the code that loads them, nothing pickled.

        The folder is the one `mlflow.pyfunc.save_model` writes, written by
        stage_runtime.pyfunc_folder (no `import mlflow`, none of save_model's dependency scan);
        MLflow writes it when that module does not mirror the case. Uploaded with the client, not
        through `mlflow.start_run`: leaving that context would mark the run FINISHED before its
        outputs are committed.
        """
        spec = self._model
        with tempfile.TemporaryDirectory() as staging:
            model_copy = Path(staging) / spec["model"].name
            shutil.copyfile(self.outputs.files[spec["model"]], model_copy)
            package = Path(staging) / "code" / "stages"
            package.mkdir(parents=True)
            for path in MODEL_CODE:
                shutil.copyfile(path, package / Path(path).name)
            saved = Path(staging) / "model"
            arguments = {
                "python_model": str(PYFUNC_MODEL),
                "artifacts": {"model": str(model_copy), "encoders": str(spec["encoders"])},
                "code_paths": [str(package)],
                "pip_requirements": MODEL_REQUIREMENTS,
                "input_example": spec["example"],
            }
            try:
                save_pyfunc_folder(saved, signature=spec["signature"], **arguments)
            except NotMirroredError as exc:
                log.info("model folder written by MLflow: %s", exc)
                import mlflow
                from mlflow.models import ModelSignature

                signature = ModelSignature.from_dict(spec["signature"])
                arguments["input_example"] = mlflow_example(arguments["input_example"])
                mlflow.pyfunc.save_model(path=str(saved), signature=signature, **arguments)
            self.client.log_artifacts(self.run_id, str(saved), "model")
        self._model_uri = f"runs:/{self.run_id}/model"
        spec["tags"][record.MODEL_MD5_TAG] = outputs[record.lineage_path(spec["model"])]
        # The code packaged with it: the same model bytes served by other code is another version.
        spec["tags"] |= record.file_tags(record.CODE, {p: file_md5(p) for p in MODEL_CODE})

    def _register(self) -> None:
        """The last step: a version exists only once its files are in place."""
        if self._model is None:
            return
        spec = self._model
        tags = {record.RUN_ID_TAG: self.run_id, **spec["tags"]}
        existing = record.same_model_version(self.client, spec["name"], tags)
        if existing is not None:
            # The same bytes from the same data (another clone, a forced rerun): one version.
            self.model_version = existing
            log.info(
                "model identical to %s version %s (same model md5 and lineage): not registered "
                "again",
                spec["name"],
                existing.version,
            )
        else:
            if isinstance(self.client, SqliteClient):
                self.model_version = self.client.register_model(
                    self._model_uri, spec["name"], tags=tags
                )
            else:
                import mlflow

                self.model_version = mlflow.register_model(self._model_uri, spec["name"], tags=tags)
            self.registered_new = True
            log.info("registered %s version %s", spec["name"], self.model_version.version)
        self.client.set_tag(self.run_id, record.MODEL_NAME_TAG, spec["name"])
        self.client.set_tag(self.run_id, record.MODEL_VERSION_TAG, self.model_version.version)

    def _unregister(self) -> None:
        """Delete every version this run created, as the registry knows them."""
        if self._model is None:
            return
        with contextlib.suppress(Exception):
            for version in record.versions_of_run(self.client, self._model["name"], self.run_id):
                self.client.delete_model_version(version.name, version.version)
                log.info("deleted %s version %s of a failed run", version.name, version.version)


def reconcile_orphans(client: Any, model_name: str) -> list[str]:
    """Delete versions whose run did not finish: killed (RUNNING, its process gone on this
    host) or failed after registering. Returns the versions deleted."""
    deleted = []
    host = socket.gethostname()
    for version in client.search_model_versions(f"name = '{model_name}'"):
        try:
            run = client.get_run(version.run_id)
        except Exception:  # its run was deleted: nothing traces it
            run = None
        status = run.info.status if run else "DELETED"
        if status == "FINISHED":
            continue
        if status == "RUNNING":
            tags = run.data.tags
            owner = tags.get(PROCESS_TAG, "")
            pid = owner.partition("-")[0]
            alive = not pid.isdigit() or process_identity(int(pid)) == owner
            if tags.get(HOST_TAG) != host or alive:
                continue  # another machine's run, or one still at work
            client.set_terminated(run.info.run_id, "KILLED")
        client.delete_model_version(version.name, version.version)
        deleted.append(version.version)
        log.warning(
            "deleted %s version %s: its run %s ended %s before the version was committed",
            model_name,
            version.version,
            version.run_id,
            status,
        )
    return deleted


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM (a timeout, `kill`) unwinds like Ctrl-C, so the cleanup below runs."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may handle signals (a flow's task in a worker thread)
        return
    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def stage_run(
    stage: str, params: Mapping[str, Any], inputs: list[Path] | None = None, client: bool = False
) -> Iterator[StageRun]:
    """Record one stage run in MLflow; move its outputs into place only once it is recorded.

    `client`: the stage will use MLflow's client (models, the registry): it is opened in a
    thread from the start. Every stage records its run without it when the store allows.
    `mlflow_seconds`: the stage's time on its record outside its own work, the wait for the
    client included; `mlflow_client_seconds`: what opening the client took, in its thread.
    """
    started = time.perf_counter()
    # The project's MLflow settings, whichever writer and client the stage ends up with (a
    # model folder written without MLflow follows them as MLflow's own would: no uv files).
    record.apply_client_defaults()
    stage = os.environ.get(STAGE_ENV, stage)  # DVC's own address of the stage, when under DVC
    uri = record.tracking_uri()
    tags = {
        record.STAGE_TAG: stage,
        record.PIPELINE_RUN_TAG: pipeline_run_id(),
        HOST_TAG: socket.gethostname(),
        PROCESS_TAG: process_identity(os.getpid()) or str(os.getpid()),
        **git_state(),
    }
    for env, tag in EXPERIMENT_TAGS.items():
        if os.environ.get(env):
            tags[tag] = os.environ[env]
    with _terminate_as_interrupt():
        outputs = StagedOutputs()
        try:
            writer = open_writer(uri)
            run_id = writer.create_run(tags, run_name=stage)
        except Exception as exc:
            outputs.finish()
            raise _as_stage_error(exc, uri, outputs.dir) from None
        stage_record = StageRun(stage, writer, uri, run_id, outputs)
        if client:
            stage_record.open_client_early()
        try:
            params_flat = sorted(record.flatten("", dict(params)).items())
            writer.log_batch(run_id, params={k: str(v) for k, v in params_flat})
            for path in inputs or []:
                stage_record.add_input(path)
            overhead = time.perf_counter() - started
            yield stage_record
            waited = stage_record.client_wait_seconds  # during the work; later waits are timed
            started = time.perf_counter()
            stage_record._record()
            outputs.commit()
            stage_record._register()
            for step in stage_record._after_commit:
                step()
            seconds = overhead + time.perf_counter() - started + waited
            stage_record.metrics["mlflow_seconds"] = seconds
            timings = {"mlflow_seconds": seconds}
            if stage_record.client_open_seconds:
                timings["mlflow_client_seconds"] = stage_record.client_open_seconds
            writer.log_batch(run_id, metrics=timings)
            writer.set_terminated(run_id, "FINISHED")
            outputs.finish()
        except BaseException as exc:
            outputs.discard()
            stage_record._unregister()
            with contextlib.suppress(Exception):
                writer.set_terminated(run_id, "KILLED" if _interrupted(exc) else "FAILED")
            raise _as_stage_error(exc, uri, outputs.dir) from None
        finally:
            stage_record.join_client()
            writer.close()


def connect_server(uri: str) -> http_store.HttpStore:
    """The tracking server's REST API with the pipeline's experiment in place, once it answers
    record.connect's health check (TransientError when it does not: seconds, not minutes); a
    refusal (a 403, a bad request) is an EnvironmentRefusal."""
    try:
        record.wait_for_server(uri)
    except record.TrackingUnavailableError as exc:
        raise TransientError(str(exc)) from None
    return http_store.HttpStore.open(uri, record.experiment_name())


def connect_store(uri: str) -> Any:
    """record.connect, its failures as the errors a stage (or a flow task) reports."""
    try:
        return record.connect(uri)
    except record.TrackingUnavailableError as exc:
        raise TransientError(str(exc)) from None
    except record.TrackingStoreError as exc:
        raise EnvironmentRefusal(str(exc)) from None


def _interrupted(exc: BaseException) -> bool:
    return isinstance(exc, KeyboardInterrupt | SystemExit)


def _as_stage_error(exc: BaseException, uri: str, staging: Path) -> BaseException:
    """Store failures in the middle of a run, as the one-line errors run_stage prints; an
    OSError that names no file (a full disk under pyarrow or sendfile) gets the staging folder."""
    if isinstance(exc, OSError) and not exc.filename:
        return EnvironmentRefusal(f"{staging} (staged outputs): {exc.strerror or exc}")
    if isinstance(exc, BadInputError | TransientError | EnvironmentRefusal | OSError):
        return exc
    if _interrupted(exc) or not type(exc).__module__.startswith(
        ("mlflow", "sqlalchemy", "sqlite3")
    ):
        return exc
    text = str(exc).lower()
    if "readonly" in text or "read-only" in text or "disk" in text:
        return EnvironmentRefusal(f"MLflow store {uri}: {str(exc).splitlines()[0]}")
    return TransientError(f"MLflow store {uri}: {str(exc).splitlines()[0]}")
