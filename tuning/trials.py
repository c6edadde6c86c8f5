"""A study's trials: the stored Optuna study, the features every trial reuses, the objective,
and each trial's MLflow child run.

A trial costs its fit: the features the pipeline built are read once per process (their md5
checked against dvc.lock), no DVC stage runs, and its record is three calls to the store
(create the run, one batch of params, metrics and tags, end it).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from stage_runtime import record
from stages import model as models
from stages.common import BadInputError, ModelParams, PrunerParams, file_md5, load_yaml, read_json
from stages.evaluate import regression_metrics
from tuning.space import SearchParam, suggest, with_values

log = logging.getLogger("tuning")

# Optuna's tables live in their own database: MLflow's SQLite file is migrated by MLflow's
# alembic, and Optuna's alembic keeps its revision in the same `alembic_version` table, so in
# one file each sees the other's revision (README, "Tuning"). Team mode: a PostgreSQL URL.
STORAGE_ENV = "TUNE_STORAGE_URL"
STORAGE_FILE = "optuna.db"
# SQLite: a writer waits this long for another process's transaction (--workers).
SQLITE_BUSY_SECONDS = 60
# The MLflow record of a study: one parent run, one child run per trial.
STUDY_TAG = "tune.study"
ROLE_TAG = "tune.role"  # "study" (the parent) or "trial"
TRIAL_TAG = "tune.trial"
STATE_TAG = "tune.state"  # COMPLETE, PRUNED or FAIL, as Optuna names the trial's state
MODEL_TYPE_TAG = "model_type"
PARENT_TAG = "mlflow.parentRunId"  # what the MLflow UI nests child runs by
# The study keeps its parent run's id and model type (Optuna user attributes).
PARENT_ATTR, MODEL_TYPE_ATTR = "mlflow_parent_run_id", "model_type"
# The feature files a trial reads, as the train and evaluate commands of dvc.yaml name them.
TRAIN, VALIDATION, ENCODERS = "train", "validation", "encoders"


# --------------------------------------------------------------------------- storage


def storage_url(root: Path) -> str:
    """TUNE_STORAGE_URL (team mode: PostgreSQL), else `optuna.db` beside the MLflow store."""
    if os.environ.get(STORAGE_ENV):
        return os.environ[STORAGE_ENV]
    store = record.sqlite_path(record.tracking_uri(root))
    return f"sqlite:///{(store.parent if store else root) / STORAGE_FILE}"


def redacted(url: str) -> str:
    """A storage URL without its password, fit for a tag or a log line."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def open_storage(url: str) -> Any:
    """Optuna's RDB storage at `url`; a new SQLite file is created by one process at a time
    (its first connection creates the tables, and two at once race)."""
    import optuna

    sqlite = record.sqlite_path(url)
    kwargs = {"connect_args": {"timeout": SQLITE_BUSY_SECONDS}} if sqlite else {}
    lock = sqlite.with_name(sqlite.name + ".lock") if sqlite else None
    with maybe_lock(lock, f"create Optuna storage {sqlite}"):
        return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)


@contextlib.contextmanager
def maybe_lock(path: Path | None, purpose: str) -> Iterator[None]:
    if path is None:
        yield
        return
    from stage_runtime.locks import file_lock

    with file_lock(path, purpose):
        yield


def load_study(storage: Any, name: str, model_type: str, pruner: PrunerParams) -> Any:
    """The study `name` (created if new) with the median pruner (the caller seeds its TPE
    sampler); a study of another model type is refused (its params would not fit this space)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=name,
        storage=storage,
        direction="minimize",
        load_if_exists=True,
        pruner=optuna.pruners.MedianPruner(
            n_startup_trials=pruner.startup_trials,
            n_warmup_steps=pruner.warmup_rounds,
            interval_steps=pruner.interval_rounds,
        ),
    )
    known = study.user_attrs.get(MODEL_TYPE_ATTR)
    if known is None:
        study.set_user_attr(MODEL_TYPE_ATTR, model_type)
    elif known != model_type:
        raise BadInputError(
            f"study {name!r} searches {known}, not {model_type}: use another --name"
        )
    return study


# --------------------------------------------------------------------------- features


@dataclass(frozen=True)
class Features:
    """What every trial reads, loaded once: the training and validation tables, the encoders,
    and the md5 of each file (the md5 dvc.lock records for it)."""

    train: pd.DataFrame
    validation: pd.DataFrame
    encoders: dict
    md5: dict[str, str] = field(default_factory=dict)


def feature_paths(repo: Path) -> dict[str, str]:
    """The training, validation and encoders files as dvc.yaml's train and evaluate commands
    name them (paths are declared once, there)."""
    stages = load_yaml((repo / "dvc.yaml").read_text())["stages"]

    def option(stage: str, name: str) -> str:
        args = shlex.split(stages[stage]["cmd"])
        return args[args.index(name) + 1]

    return {
        TRAIN: option("train", "--features"),
        VALIDATION: option("evaluate", "--features").format(split="validation"),
        ENCODERS: option("train", "--encoders"),
    }


def locked_features(repo: Path, lock_text: str | None = None) -> dict[str, str]:
    """path -> md5 that a dvc.lock (the workspace's, or `lock_text`) records for the features."""
    stages = (
        record.parse_lock(lock_text)
        if lock_text is not None
        else record.read_lock(repo / record.LOCK_FILE)
    )
    outputs = record.locked_outputs(stages)
    return {path: outputs.get(path, "") for path in feature_paths(repo).values()}


def load_features(repo: Path) -> Features:
    """The features as the pipeline left them; BadInputError when a file is missing or its
    bytes are not those dvc.lock records (run the pipeline first)."""
    locked = locked_features(repo)
    for path, md5 in locked.items():
        if not md5:
            raise BadInputError(f"{path}: not in dvc.lock: run the pipeline first (make pipeline)")
        if not (repo / path).is_file():
            raise BadInputError(f"{path}: missing: run the pipeline first (make pipeline)")
        actual = file_md5(repo / path)
        if actual != md5:
            raise BadInputError(
                f"{path}: md5 {actual} is not dvc.lock's {md5}: run the pipeline first "
                "(dvc repro), so trials and the winner's run read the same features"
            )
    paths = feature_paths(repo)
    return Features(
        train=pd.read_parquet(repo / paths[TRAIN]),
        validation=pd.read_parquet(repo / paths[VALIDATION]),
        encoders=read_json(repo / paths[ENCODERS]),
        md5=locked,
    )


# --------------------------------------------------------------------------- the record


@dataclass
class Recorder:
    """Writes each trial as an MLflow child run of the study's parent run.

    In a thread of its own, started when the next trial's fit starts (`during_fit`): the
    three calls to the store (50-100 ms on SQLite) then overlap a fit that releases the GIL,
    not the next trial's sampling. `flush()` writes what is left, waits for all of them and
    raises the first error; the times recorded are the trial's own, not the queue's.
    """

    client: Any
    experiment_id: str
    parent_run_id: str
    study: str
    inputs: dict[str, str]  # the feature files' md5, as `in/<path>` tags (stage_runtime.record)
    waiting: list[dict[str, Any]] = field(default_factory=list)
    pending: list[Future] = field(default_factory=list)
    executor: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="trial-record")
    )

    def submit(self, number: int, **record: Any) -> None:
        self.waiting.append({"number": number, "ended": time.time(), **record})

    def during_fit(self) -> None:
        waiting, self.waiting = self.waiting, []
        self.pending += [self.executor.submit(self.trial, **record) for record in waiting]

    def flush(self) -> None:
        self.during_fit()
        futures, self.pending = self.pending, []
        for future in futures:
            future.result()

    def trial(
        self,
        number: int,
        *,
        state: str,
        params: ModelParams,
        metrics: dict[str, float],
        steps: list[tuple[int, float]],
        started: float,
        ended: float,
    ) -> str:
        from mlflow.entities import Metric, Param, RunTag

        now_ms = int(ended * 1000)
        tags = {
            PARENT_TAG: self.parent_run_id,
            STUDY_TAG: self.study,
            ROLE_TAG: "trial",
            TRIAL_TAG: str(number),
            STATE_TAG: state,
            MODEL_TYPE_TAG: params.type,
            **record.file_tags(record.INPUT, self.inputs),
        }
        run = self.client.create_run(
            self.experiment_id,
            start_time=int(started * 1000),
            tags=tags,
            run_name=f"{self.study}-trial-{number}",
        )
        run_id = run.info.run_id
        flat = record.flatten("model", params)
        metrics = metrics | {"trial_seconds": round(ended - started, 4)}
        self.client.log_batch(
            run_id,
            metrics=[Metric(k, float(v), now_ms, 0) for k, v in metrics.items()]
            + [Metric("validation_rmse_by_round", v, now_ms, step) for step, v in steps],
            params=[Param(k, str(v)) for k, v in flat.items()],
            tags=[RunTag("mlflow.runName", f"{self.study}-trial-{number}")],
        )
        status = "FAILED" if state == "FAIL" else "FINISHED"
        self.client.set_terminated(run_id, status=status, end_time=now_ms)
        return run_id


# --------------------------------------------------------------------------- the objective


def pruning_callback(trial: Any, interval: int, steps: list[tuple[int, float]]) -> Any:
    """An XGBoost callback: every `interval` rounds, report the validation RMSE of that round
    to Optuna (kept in `steps` for the record) and stop the fit when the pruner says so. Its
    own time (`seconds`: a write to the study and the pruner's query) is overhead, not fit."""
    import optuna

    xgb = models.import_xgboost()

    class Pruning(xgb.callback.TrainingCallback):
        seconds = 0.0

        def after_iteration(self, model: Any, epoch: int, evals_log: dict) -> bool:
            if (epoch + 1) % interval:
                return False
            started = time.perf_counter()
            value = float(evals_log["watch"]["rmse"][-1])
            steps.append((epoch + 1, value))
            trial.report(value, epoch + 1)
            prune = trial.should_prune()
            self.seconds += time.perf_counter() - started
            if prune:
                raise optuna.TrialPruned(f"validation RMSE {value:.4f} at round {epoch + 1}")
            return False

    return Pruning()


@dataclass
class Objective:
    """One trial: params from the space, a fit on the training features, the validation RMSE
    as evaluate computes it (stages.model.predict, stages.evaluate.regression_metrics). The
    test month is never read."""

    features: Features
    space: list[SearchParam]
    model: ModelParams  # the model section of params.yaml: what the space does not vary
    model_type: str
    seed: int
    threads: int
    interval_rounds: int
    recorder: Recorder
    # Summed over this process's trials: fitting and predicting, and the pruning reports
    # made during the fits; the rest of their wall time is the overhead.
    fit_seconds: float = 0.0
    pruning_seconds: float = 0.0
    trials_run: int = 0

    def __call__(self, trial: Any) -> float:
        import optuna

        started = time.time()
        params = with_values(self.model, self.model_type, self.space, suggest(trial, self.space))
        steps: list[tuple[int, float]] = []
        callbacks = []
        if self.model_type == "xgboost":
            callbacks = [pruning_callback(trial, self.interval_rounds, steps)]
        self.recorder.during_fit()
        fit_started = time.perf_counter()
        state, metrics = "FAIL", {}
        try:
            model = models.fit(
                self.features.train,
                self.features.encoders,
                params,
                seed=self.seed,
                threads=self.threads,
                watch=self.features.validation if callbacks else None,
                callbacks=callbacks,
            )
            predicted = models.predict(
                model, self.features.validation, self.features.encoders, self.threads
            )
            actual = self.features.validation[models.TARGET].to_numpy()
            metrics = {
                f"validation_{k}": v for k, v in regression_metrics(actual, predicted).items()
            }
            state = "COMPLETE"
            return metrics["validation_rmse"]
        except optuna.TrialPruned:
            state = "PRUNED"
            metrics = {"pruned_at_round": steps[-1][0], "validation_rmse_at_pruning": steps[-1][1]}
            raise
        finally:
            pruning = sum(c.seconds for c in callbacks)
            fit = time.perf_counter() - fit_started - pruning
            self.fit_seconds += fit
            self.pruning_seconds += pruning
            self.trials_run += 1
            metrics |= {"fit_seconds": round(fit, 4), "pruning_seconds": round(pruning, 4)}
            self.recorder.submit(
                trial.number,
                state=state,
                params=params,
                metrics=metrics,
                steps=steps,
                started=started,
            )


def run_trials(study: Any, objective: Objective, trials: int, timeout: float | None) -> dict:
    """`trials` trials in this process (fewer if `timeout` seconds pass first), their records
    written, and what they cost: wall time; fitting and predicting; the pruning reports made
    during the fits (a write to the study and the pruner's query each); and the rest per
    trial, the overhead (sampling, the stored study, what the MLflow record still costs)."""
    started = time.perf_counter()
    try:
        study.optimize(objective, n_trials=trials, timeout=timeout, gc_after_trial=False)
    finally:
        objective.recorder.flush()
    wall = time.perf_counter() - started
    ran = max(objective.trials_run, 1)
    rest = wall - objective.fit_seconds - objective.pruning_seconds
    return {
        "trials": objective.trials_run,
        "wall_seconds": round(wall, 3),
        "fit_seconds": round(objective.fit_seconds, 3),
        "pruning_seconds": round(objective.pruning_seconds, 3),
        "pruning_per_trial_seconds": round(objective.pruning_seconds / ran, 4),
        "overhead_per_trial_seconds": round(rest / ran, 4),
    }
