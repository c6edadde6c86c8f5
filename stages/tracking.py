"""MLflow record of a stage run: params, the md5 of every input and output, metrics, the model.

Every stage runs its work inside `stage_run(...)`. Its outputs are staged (temporary files);
only after the run is fully recorded (and, for train, the model registered) are they moved
into place. If the store cannot be reached, the stage fails after bounded retries and no
output appears without its lineage.

Tags written on every run, which `flows.trace` follows:
  stage, pipeline_run_id, git_commit, git_dirty, dvc_exp_name (inside `dvc exp run`),
  in/<path> and out/<path> = the file's md5 (what dvc.lock records), source/<path> = address.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from stages.common import BadInputError, StagedOutputs, TransientError, file_md5, load_yaml

log = logging.getLogger("stages.tracking")
EXPERIMENT_ENV = "MLFLOW_EXPERIMENT_NAME"
DEFAULT_EXPERIMENT = "taxi-trip-duration"
PIPELINE_RUN_ENV = "PIPELINE_RUN_ID"
PARENT_RUN_ENV = "PIPELINE_PARENT_RUN_ID"
# A dead tracking server must cost seconds, not MLflow's default of minutes of retries.
_CLIENT_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "15",
    "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "false",
    # pip_requirements are explicit; uv.lock detection and progress bars only cost time.
    "MLFLOW_UV_AUTO_DETECT": "false",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}
CONNECT_ATTEMPTS = 3
MODEL_REQUIREMENTS = ["numpy", "pandas", "scipy", "xgboost", "pyarrow"]


class TrackingUnavailableError(TransientError):
    """The MLflow tracking store did not answer: a transient failure, worth a retry."""


def project_root(start: Path | None = None) -> Path:
    """The repository the store belongs to, also from DVC's temporary experiment workspaces."""
    here = (start or Path.cwd()).resolve()
    parts = here.parts
    if ".dvc" in parts:  # .../<root>/.dvc/tmp/exps/<tmp>: dvc exp run --queue/--temp
        return Path(*parts[: parts.index(".dvc")])
    try:
        common = subprocess.run(
            ["git", "rev-parse", "--path-format=absolute", "--git-common-dir"],
            cwd=here,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return Path(common).parent  # a git worktree shares its main repository's store
    except (OSError, subprocess.CalledProcessError):
        return here


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI, else mlflow.db at the root of the repository DVC runs for."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    # DVC_ROOT names the parent repository, also from DVC's temporary experiment workspaces;
    # project_root() then maps a git worktree to its main repository.
    dvc_root = os.environ.get("DVC_ROOT")
    root = project_root(Path(dvc_root) if dvc_root else None)
    return f"sqlite:///{root / 'mlflow.db'}"


def _proc_stat(pid: int) -> tuple[int, str]:
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[1]), fields[19]  # parent pid, start time


def pipeline_run_id() -> str:
    """The id that groups one pipeline execution's stage runs.

    The flow sets PIPELINE_RUN_ID; under a bare `dvc repro` every stage is a child of the same
    dvc process, so its pid and start time name the execution.
    """
    if os.environ.get(PIPELINE_RUN_ENV):
        return os.environ[PIPELINE_RUN_ENV]
    with contextlib.suppress(OSError, ValueError, IndexError):
        pid = os.getppid()
        while pid > 1:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            parent, started = _proc_stat(pid)
            if any(Path(a.decode(errors="replace")).name == "dvc" for a in argv[:2]):
                return f"dvc-{pid}-{started}"
            pid = parent
    return f"standalone-{os.getpid()}-{time.time_ns()}"


def git_state() -> dict[str, str]:
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


def lock_lineage(lock_file: Path = Path("dvc.lock")) -> dict[str, str]:
    """Tags tying a model to the pipeline state it came from: dvc.lock's md5 and raw file md5s.

    Read while train runs: by then DVC has written the entries of every upstream stage.
    """
    if not lock_file.is_file():
        return {}
    lock = load_yaml(lock_file.read_text()) or {}
    tags = {"dvc_lock_md5": file_md5(lock_file)}
    for stage, entry in (lock.get("stages") or {}).items():
        if stage.split("@")[0].startswith("ingest"):
            for out in entry.get("outs", []):
                tags[f"raw/{out['path']}"] = out["md5"]
    return tags


def flatten(prefix: str, value: Any) -> dict[str, Any]:
    """{'model': {'xgboost': {'n_rounds': 4}}} -> {'model.xgboost.n_rounds': 4}."""
    if isinstance(value, BaseModel):
        value = value.model_dump()
    if isinstance(value, Mapping):
        flat: dict[str, Any] = {}
        for key, item in value.items():
            flat.update(flatten(f"{prefix}.{key}" if prefix else str(key), item))
        return flat
    return {prefix: value}


def lineage_path(path: Path | str) -> str:
    """The name a file goes by in lineage tags: relative to the project when inside it.

    dvc.yaml passes relative paths; a stage run by hand may get absolute ones, and MLflow
    refuses tag keys such as `out//tmp/x` that do not survive path normalisation.
    """
    absolute = Path(os.path.abspath(path))
    try:
        return absolute.relative_to(Path.cwd()).as_posix()
    except ValueError:
        return "external" + absolute.as_posix()


def _file_uri(lineage_name: str) -> str:
    if lineage_name.startswith("external/"):
        return Path(lineage_name.removeprefix("external")).as_uri()
    return Path(lineage_name).resolve().as_uri()


def connect(uri: str) -> Any:
    """An MlflowClient whose store answered; TrackingUnavailableError after bounded retries."""
    for key, value in _CLIENT_DEFAULTS.items():
        os.environ.setdefault(key, value)
    import mlflow
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(uri)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    for attempt in range(1, CONNECT_ATTEMPTS + 1):
        try:
            client.search_experiments(max_results=1)
            return client
        except Exception as exc:  # noqa: BLE001 - any store failure means "unavailable"
            error = exc
            if attempt < CONNECT_ATTEMPTS:
                time.sleep(attempt)
    raise TrackingUnavailableError(
        f"MLflow tracking store {uri} did not answer after {CONNECT_ATTEMPTS} attempts: {error}"
    )


def _experiment_id(client: Any) -> str:
    name = os.environ.get(EXPERIMENT_ENV, DEFAULT_EXPERIMENT)
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return client.create_experiment(name)
    except Exception:  # another stage created it meanwhile
        return client.get_experiment_by_name(name).experiment_id


def init_store() -> str:
    """Create the store and the experiment once, before anything runs stages in parallel.

    Many processes opening a fresh SQLite store at once race on its migrations and corrupt it.
    Returns the experiment id.
    """
    return _experiment_id(connect(tracking_uri()))


class StageRun:
    """What a stage tells MLflow while it works; outputs are staged until the run is recorded."""

    def __init__(
        self, client: Any, experiment_id: str, run_id: str, outputs: StagedOutputs
    ) -> None:
        self.client = client
        self.experiment_id = experiment_id
        self.run_id = run_id
        self.outputs = outputs
        self.inputs: dict[str, str] = {}
        self.sources: dict[str, str] = {}
        self.metrics: dict[str, float] = {}
        self._model: dict[str, Any] | None = None
        self.model_version: Any = None

    def output(self, target: Path | str) -> Path:
        """The temporary path to write a declared output to."""
        return self.outputs.path(target)

    def add_input(self, path: Path | str) -> None:
        if not Path(path).is_file():
            raise BadInputError(f"{path}: input not found (has the stage producing it run?)")
        self.inputs[lineage_path(path)] = file_md5(path)

    def add_source(self, path: Path | str, address: str) -> None:
        self.sources[lineage_path(path)] = address

    def log_metrics(self, metrics: Mapping[str, Any]) -> None:
        for key, value in flatten("", metrics).items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                self.metrics[key] = float(value)

    def register_model(
        self, model_path: Path | str, encoders_path: Path | str, name: str, tags: Mapping[str, str]
    ) -> None:
        """Log the model (pickle-free pyfunc over its JSON files) and register a new version."""
        self._model = {
            "model": str(model_path),
            "encoders": str(encoders_path),
            "name": name,
            "tags": dict(tags),
        }

    def producer_of(self, path: Path | str) -> str | None:
        """The run that wrote this input file (same md5), newest first."""
        path = lineage_path(path)
        md5 = self.inputs[path]
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`out/{path}` = '{md5}' and attributes.status = 'FINISHED'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        return runs[0].info.run_id if runs else None

    def report_to(self, run_id: str | None, files: list[Path], artifact_dir: str) -> None:
        """Attach files to this run, and files and metrics to `run_id` (the model's run)."""
        from mlflow.entities import Metric

        for target in [self.run_id] + ([run_id] if run_id else []):
            for path in files:
                self.client.log_artifact(target, str(path), artifact_dir)
        if run_id:
            now = int(time.time() * 1000)
            self.client.log_batch(
                run_id, metrics=[Metric(k, v, now, 0) for k, v in sorted(self.metrics.items())]
            )

    # -- called by stage_run -------------------------------------------------------------

    def _record(self) -> None:
        from mlflow.entities import Metric, RunTag

        outputs = {lineage_path(t): file_md5(tmp) for t, tmp in self.outputs.files.items()}
        tags = {f"in/{p}": h for p, h in self.inputs.items()}
        tags |= {f"out/{p}": h for p, h in outputs.items()}
        tags |= {f"source/{p}": a for p, a in self.sources.items()}
        now = int(time.time() * 1000)
        self.client.log_batch(
            self.run_id,
            metrics=[Metric(k, v, now, 0) for k, v in sorted(self.metrics.items())],
            tags=[RunTag(k, v) for k, v in sorted(tags.items())],
        )
        self._log_datasets(outputs)
        if self._model is not None:
            self._log_and_register(outputs)

    def _log_datasets(self, outputs: dict[str, str]) -> None:
        """The same files as MLflow datasets, so the UI's dataset view shows them with digests."""
        from mlflow.data.http_dataset_source import HTTPDatasetSource
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.entities import DatasetInput, InputTag

        entries = []
        for context, files in (("input", self.inputs), ("output", outputs)):
            for path, md5 in files.items():
                address = self.sources.get(path) or _file_uri(path)
                dataset = MetaDataset(HTTPDatasetSource(address), name=path, digest=md5)
                entries.append(
                    DatasetInput(
                        dataset._to_mlflow_entity(), [InputTag("mlflow.data.context", context)]
                    )
                )
        if entries:
            self.client.log_inputs(self.run_id, datasets=entries)

    def _log_and_register(self, outputs: dict[str, str]) -> None:
        import mlflow

        spec = self._model
        model_tmp = self.outputs.files[Path(spec["model"])]
        with tempfile.TemporaryDirectory() as staging:
            # The artifact keeps the output's name and bytes, so its md5 equals dvc.lock's.
            model_copy = Path(staging) / Path(spec["model"]).name
            model_copy.write_bytes(model_tmp.read_bytes())
            with mlflow.start_run(run_id=self.run_id):
                info = mlflow.pyfunc.log_model(
                    name="model",
                    python_model=str(Path(__file__).with_name("pyfunc_model.py")),
                    artifacts={"model": str(model_copy), "encoders": spec["encoders"]},
                    code_paths=[str(Path(__file__).parent)],
                    pip_requirements=MODEL_REQUIREMENTS,
                )
        model_md5 = outputs[lineage_path(spec["model"])]
        tags = {"run_id": self.run_id, **spec["tags"], "model_md5": model_md5}
        self.model_version = mlflow.register_model(info.model_uri, spec["name"], tags=tags)
        self.client.set_tag(self.run_id, "model_name", spec["name"])
        self.client.set_tag(self.run_id, "model_version", str(self.model_version.version))
        log.info("registered %s version %s", spec["name"], self.model_version.version)

    def _unregister(self) -> None:
        if self.model_version is not None:
            with contextlib.suppress(Exception):
                self.client.delete_model_version(
                    self.model_version.name, self.model_version.version
                )


@contextlib.contextmanager
def stage_run(
    stage: str, params: Mapping[str, BaseModel], inputs: list[Path] | None = None
) -> Iterator[StageRun]:
    """Record one stage run in MLflow; move its outputs into place only once it is recorded."""
    started = time.perf_counter()
    stage = os.environ.get("DVC_STAGE", stage)  # DVC's own address of the stage, when under DVC
    uri = tracking_uri()
    client = connect(uri)
    tags = {
        "stage": stage,
        "pipeline_run_id": pipeline_run_id(),
        **git_state(),
        "mlflow.runName": stage,
    }
    for env, tag in (
        ("DVC_EXP_NAME", "dvc_exp_name"),
        ("DVC_EXP_BASELINE_REV", "dvc_exp_baseline"),
    ):
        if os.environ.get(env):
            tags[tag] = os.environ[env]
    if os.environ.get(PARENT_RUN_ENV):
        tags["mlflow.parentRunId"] = os.environ[PARENT_RUN_ENV]
    experiment_id = _experiment_id(client)
    run = client.create_run(experiment_id, tags=tags, run_name=stage)
    from mlflow.entities import Param

    client.log_batch(
        run.info.run_id,
        params=[Param(k, str(v)) for k, v in sorted(flatten("", dict(params)).items())],
    )
    record = StageRun(client, experiment_id, run.info.run_id, StagedOutputs())
    for path in inputs or []:
        record.add_input(path)
    overhead = time.perf_counter() - started
    try:
        yield record
        started = time.perf_counter()
        record._record()
        record.metrics["mlflow_seconds"] = overhead + time.perf_counter() - started
        client.log_metric(record.run_id, "mlflow_seconds", record.metrics["mlflow_seconds"])
        client.set_terminated(record.run_id, "FINISHED")
        record.outputs.commit()
    except BaseException:
        record.outputs.discard()
        record._unregister()
        with contextlib.suppress(Exception):
            client.set_terminated(record.run_id, "FAILED")
        raise
