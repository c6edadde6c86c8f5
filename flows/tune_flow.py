"""The hyperparameter search as a Prefect flow (the command line and what it does: flows.tune).

The search itself (space, study, trials, their MLflow record) is the `tuning` package; this
module orchestrates: worker processes, artifacts, the winner's pipeline run, the parent run's
result.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tuning import search as searching
from tuning import space as spaces
from workspaces import repro

WORKER_STOP_SECONDS = 10.0


@task(task_run_name="trials of {name}", cache_policy=NO_CACHE)
def search(
    workspace: str, name: str, model_type: str, *, trials: int, timeout: float | None, workers: int
) -> list[dict[str, Any]]:
    """This process's share of the trials, and one process per other worker, in parallel."""
    logger = get_run_logger()
    p = searching.plan(Path(workspace), model_type, trials, timeout=timeout, name=name)
    threads = max(1, p.params["base"].threads // workers)
    shares = spaces.shares(trials, workers)
    started = []
    try:
        for worker in range(1, workers):
            log_file = tempfile.TemporaryFile(mode="w+")
            process = subprocess.Popen(
                searching.worker_command(p, shares[worker], timeout, worker, threads),
                cwd=p.repo,
                stdout=subprocess.PIPE,
                stderr=log_file,
                text=True,
                start_new_session=True,  # stopped as a group below, never by a terminal's ^C
            )
            started.append((worker, process, log_file))
        results = [searching.work(p, shares[0], timeout, 0, threads)]
        for worker, process, log_file in started:
            out, _ = process.communicate()
            if process.returncode != 0:
                log_file.seek(0)
                tail = "".join(log_file.readlines()[-5:])
                raise RuntimeError(f"tune worker {worker} exited {process.returncode}:\n{tail}")
            results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for _, process, log_file in started:
            _stop(process)
            log_file.close()
    for result in results:
        logger.info("worker %s: %s", result["worker"], result)
    return results


def _stop(process: subprocess.Popen) -> None:
    """A worker still running (this process failed or was interrupted): SIGINT to its group,
    a bounded wait, then SIGKILL; nothing is left behind."""
    if process.poll() is None:
        repro.stop_group(process, signal.SIGINT, WORKER_STOP_SECONDS)


@flow(name="tune-hyperparameters")
def tune(
    workspace: str = ".",
    *,
    model_type: str = "xgboost",
    trials: int = 50,
    timeout: float | None = None,
    name: str | None = None,
    workers: int = 1,
    winner: bool = True,
    retries: int = 3,
) -> dict[str, Any]:
    """Search, report, then run the best params through the pipeline as a DVC experiment."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    from tuning import report

    logger = get_run_logger()
    repo = Path(workspace).resolve()
    p = searching.plan(
        repo, model_type, trials, timeout=timeout, workers=workers, name=name,
        committed_features=winner,
    )  # fmt: skip
    study, client = searching.open_study(p)
    parent = searching.parent_run_id(study)
    client.update_run(parent, status="RUNNING")
    try:
        started = time.perf_counter()
        costs = search(
            str(repo), p.name, model_type, trials=trials, timeout=timeout, workers=workers
        )
        seconds = time.perf_counter() - started
        study = searching.open_study(p)[0]  # every process's trials
        by_state = report.counts(study)
        if not by_state.get("COMPLETE"):
            raise RuntimeError(f"study {p.name}: no trial completed ({by_state})")
        best = study.best_trial
        overrides = spaces.overrides(model_type, p.space, best.params)
        ran = sum(c["trials"] for c in costs)
        rest = sum(c["wall_seconds"] - c["fit_seconds"] - c["pruning_seconds"] for c in costs)
        overhead = rest / max(ran, 1)
        pruning = sum(c["pruning_seconds"] for c in costs) / max(ran, 1)
        logger.info(
            "study %s: best trial %d, validation RMSE %.4f: %s",
            p.name, best.number, best.value, overrides,
        )  # fmt: skip
        create_table_artifact(
            report.trial_rows(study), key="tune-trials", description=f"Trials of {p.name}"
        )
        winner_row = _run_winner(repo, p.name, best.number, overrides, retries) if winner else None
        create_markdown_artifact(
            report.best_markdown(study, overrides, winner_row),
            key="tune-best-params",
            description=f"Best params of {p.name}",
        )
        _record_parent(
            client,
            parent,
            study,
            best=best,
            overrides=overrides,
            winner=winner_row,
            overhead=overhead,
        )
    except BaseException:
        with contextlib.suppress(Exception):
            client.set_terminated(parent, status="FAILED")
        raise
    client.set_terminated(parent, status="FINISHED")
    return {
        "study": p.name,
        "model_type": model_type,
        "trials": by_state,
        "trials_this_run": ran,
        "seconds": round(seconds, 1),
        "overhead_per_trial_seconds": round(overhead, 4),
        "pruning_per_trial_seconds": round(pruning, 4),
        "costs": costs,
        "best": {"trial": best.number, "validation_rmse": best.value, "params": overrides},
        "winner": winner_row,
        "parent_run_id": parent,
        "storage": searching.study_trials.redacted(p.storage_url),
    }


def _run_winner(
    repo: Path, study: str, trial: int, overrides: dict[str, Any], retries: int
) -> dict[str, Any]:
    """The best params through the pipeline flow as DVC experiment `<study>-trial-<n>`, in a
    worktree of HEAD (flows.compare.experiment); an experiment of that name already saved
    (a resumed study whose best did not change) is reported, not run again."""
    from flows.compare import experiment, experiment_row
    from workspaces import experiments

    name = f"{study}-trial-{trial}"
    try:
        ref = experiments.experiment_ref(repo, name)
        get_run_logger().info("DVC experiment %s already saved (%s): not run again", name, ref)
    except experiments.ExperimentError:
        experiment(str(repo), name, overrides, retries)
        ref = experiments.experiment_ref(repo, name)
    return experiment_row(repo, name, overrides) | {"ref": ref}


def _record_parent(
    client: Any,
    run_id: str,
    study: Any,
    *,
    best: Any,
    overrides: dict[str, Any],
    winner: dict[str, Any] | None,
    overhead: float,
) -> None:
    """The study's result on its parent run: the best trial and params, the winner's DVC
    experiment and model version (the tags the stage runs use), the plots."""
    from mlflow.entities import Metric, RunTag

    from stage_runtime import record
    from stage_runtime.tracking import EXPERIMENT_TAGS
    from tuning import report

    now = int(time.time() * 1000)
    metrics = {"best_validation_rmse": best.value, "overhead_per_trial_seconds": overhead}
    metrics |= {f"trials_{s.lower()}": n for s, n in report.counts(study).items()}
    tags = {"tune.best_trial": str(best.number)}
    if winner:
        tags |= {
            EXPERIMENT_TAGS["DVC_EXP_NAME"]: winner["experiment"],
            "dvc_exp_ref": winner["ref"],
            record.MODEL_VERSION_TAG: str(winner["model_version"]),
        }
        metrics |= {"winner_validation_rmse": winner["validation_rmse"]}
        metrics |= {"winner_test_rmse": winner["test_rmse"]}
    # Tags and metrics, not params: a resumed study's best changes, and MLflow refuses a
    # param a second value; each metric's step is the study's number of trials.
    tags |= {f"best.{k}": str(v) for k, v in overrides.items()}
    step = len(study.trials)
    client.log_batch(
        run_id,
        metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()],
        tags=[RunTag(k, v) for k, v in tags.items()],
    )
    with tempfile.TemporaryDirectory() as tmp:
        for path in report.render_plots(study, Path(tmp)):
            client.log_artifact(run_id, str(path), "optuna")
