"""The DVC pipeline as a Prefect flow: DVC decides what is stale; Prefect runs, retries, shows.

Stages run one at a time in dependency order: DVC does not support two stages of one workspace
at once (parallel runs need isolated workspaces, see flows.compare), and one pipeline run holds
a workspace at a time (stage_runtime.locks.workspace_lock). The command line is flows.pipeline.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.runtime import flow_run, task_run
from prefect.states import Completed

from flows import report
from flows.console import STAGE_EVENT
from stage_runtime import record
from stage_runtime.locks import workspace_lock
from stage_runtime.record import PIPELINE_RUN_ENV
from stages.common import BAD_INPUT_PREFIX, IO_PREFIX, TRANSIENT_PREFIX
from workspaces import experiments, repro
from workspaces.remote import ensure_remote, team_remote_in

RETRIES = 3
RETRY_DELAY_SECONDS = 2.0
RETRY_JITTER_FACTOR = 0.5
STAGE_TIMEOUT_SECONDS = 3600.0
PARAMS_FILE = "params.yaml"


def worth_retrying(task: Any, task_run: Any, state: Any) -> bool:
    """Retry a held lock or transient failure; bad input or an unknown error fails at once."""
    return isinstance(state.result(raise_on_failure=False), repro.TransientStageFailure)


def _level(line: str) -> int:
    """Stage output at INFO, except the lines that say why a stage failed."""
    failed = line.startswith(("ERROR", BAD_INPUT_PREFIX, TRANSIENT_PREFIX, IO_PREFIX))
    return logging.ERROR if failed else logging.INFO


@task(
    task_run_name="{stage}",
    retries=RETRIES,
    retry_delay_seconds=RETRY_DELAY_SECONDS,
    retry_jitter_factor=RETRY_JITTER_FACTOR,
    retry_condition_fn=worth_retrying,
)
def repro_stage(
    stage: str,
    workspace: str,
    pipeline_run_id: str,
    timeout_seconds: float,
    unchanged: bool,
    *,
    experiment_name: str | None = None,
    force: bool = False,
) -> Any:
    """`dvc repro --single-item <stage>`, its output streamed into the Prefect log; run by the
    flow run's DVC process (repro.dvc_process), not a process of its own.

    `unchanged`: DVC already found the stage and everything upstream unchanged; no process.
    `force`: run it even so (`--force`): an ingest whose source republished the month.
    """
    logger = get_run_logger()
    if unchanged:
        outcome = {"stage": stage, "status": "skipped", "attempts": 1, "seconds": 0.0}
        logger.info("%s: DVC status unchanged, not run", stage, extra=_event("end", outcome))
        return Completed(name="Skipped", message=f"{stage}: unchanged (dvc status)", data=outcome)
    logger.info("%s: dvc repro --single-item", stage, extra=_event("start", {"stage": stage}))
    env = {**os.environ, PIPELINE_RUN_ENV: pipeline_run_id}
    if experiment_name:  # the stage runs record it as under `dvc exp run` (dvc_exp_name)
        env["DVC_EXP_NAME"] = experiment_name
    started = time.perf_counter()
    result = repro.run_dvc(
        ["repro", "--single-item", *(["--force"] if force else []), stage],
        Path(workspace),
        env,
        timeout_seconds,
        lambda line: logger.log(_level(line), "%s", line),
    )
    try:
        status = repro.classify(stage, result, timeout_seconds)
    except repro.StageError:
        failed = {"stage": stage, "status": "failed", "attempts": task_run.run_count}
        logger.error("%s: failed", stage, extra=_event("end", failed))
        raise
    outcome = {
        "stage": stage,
        "status": status,
        "attempts": task_run.run_count,
        "seconds": round(time.perf_counter() - started, 2),
    }
    if status == "skipped":
        logger.info("%s: unchanged, DVC skipped it", stage, extra=_event("end", outcome))
        message = f"{stage}: unchanged, skipped by DVC"
        return Completed(name="Skipped", message=message, data=outcome)
    if status == "restored":
        logger.info("%s: restored from DVC's run-cache", stage, extra=_event("end", outcome))
        message = f"{stage}: outputs of an earlier run with these deps and params, not run again"
        return Completed(name="Restored", message=message, data=outcome)
    logger.info("%s: ran in %.1f s", stage, outcome["seconds"], extra=_event("end", outcome))
    return outcome


def _event(phase: str, outcome: dict[str, Any]) -> dict[str, Any]:
    """A stage event for the command line's progress display (flows.console)."""
    return {STAGE_EVENT: {"phase": phase, **outcome}}


@task(
    task_run_name="dvc push",
    retries=RETRIES,
    retry_delay_seconds=5.0,
    retry_jitter_factor=RETRY_JITTER_FACTOR,
    retry_condition_fn=worth_retrying,
)
def push_outputs(workspace: str, timeout_seconds: float) -> dict[str, Any]:
    """`dvc push` of the workspace's outputs to its default remote (team mode), retried.

    DVC uploads each cache object whole and the directory listings last, so an interrupted
    push leaves nothing half-written that a later pull would take for data.
    """
    logger = get_run_logger()
    remote = ensure_remote(Path(workspace))
    if remote is None:
        logger.info("no DVC remote: nothing pushed")
        return {"remote": None, "status": "skipped"}
    started = time.perf_counter()
    result = repro.run_dvc(
        ["push", "--remote", remote],
        Path(workspace),
        os.environ,
        timeout_seconds,
        lambda line: logger.info("%s", line),
    )
    if result.timed_out or result.returncode != 0:
        tail = "\n".join(result.lines[-5:])
        raise repro.TransientStageFailure(f"dvc push to {remote} failed:\n{tail}")
    seconds = round(time.perf_counter() - started, 2)
    logger.info("pushed to DVC remote %s in %.1f s", remote, seconds)
    attempts = task_run.run_count
    # DVC's words when the remote already holds every object of the workspace
    status = "up to date" if any("up to date" in line for line in result.lines) else "pushed"
    return {"remote": remote, "status": status, "seconds": seconds, "attempts": attempts}


@flow(name="taxi-pipeline")
def pipeline(
    workspace: str = ".",
    *,
    overrides: dict[str, Any] | None = None,
    experiment_name: str | None = None,
    plan: list[dict[str, Any]] | None = None,
    dvc_remote: str | None = None,
    reingest: list[str] | None = None,
    retries: int = RETRIES,
    retry_delay_seconds: float = RETRY_DELAY_SECONDS,
    retry_jitter_factor: float = RETRY_JITTER_FACTOR,
    stage_timeout_seconds: float = STAGE_TIMEOUT_SECONDS,
) -> dict[str, Any]:
    """Every stage of `workspace`'s dvc.yaml in order; with overrides, saved as a DVC experiment.

    Overrides (`{"model.alpha": 0.05}`) are validated, then written to params.yaml by the code
    `dvc exp run -S` uses, so both paths train on the same params. `plan`: DVC's verdict on
    what is stale, when the caller already asked (repro.plan_to_json); ignored with overrides.
    `dvc_remote`: the workspace's default DVC remote the caller found with the plan ("" for
    none: then nothing is pushed outside team mode); None: the push task asks DVC.
    `reingest`: ingest stages to run even though DVC finds them unchanged (the source
    republished their month: timeline.upstream), and with them everything downstream.
    On any failure or interrupt the running stage is stopped first, then params.yaml is put
    back as it was.
    """
    repo = Path(workspace).resolve()
    run_id = str(flow_run.id)
    experiment = overrides is not None or experiment_name is not None
    runner = repro_stage.with_options(
        retries=retries,
        retry_delay_seconds=retry_delay_seconds,
        retry_jitter_factor=retry_jitter_factor,
    )
    if repro.handles_interrupts():
        # The command line's handler over the SIGTERM bridge Prefect installs for a flow run
        # (restored when the run ends): a `kill` is remembered like a Ctrl-C.
        signal.signal(signal.SIGTERM, repro.interrupt)
    with (
        workspace_lock(repo, f"flow run {flow_run.name} ({run_id})"),
        repro.dvc_process(repo) as dvc,
    ):
        original_params = (repo / PARAMS_FILE).read_bytes()
        lock_file = repo / record.LOCK_FILE
        original_lock = lock_file.read_bytes() if lock_file.is_file() else None
        # The outputs DVC leaves to git (metrics, plots): no cache to check them out from.
        original_outputs = _snapshot(repo) if experiment else {}
        outcomes = []
        saved = None
        reader = None
        try:
            if overrides:
                experiments.apply_overrides(repo, overrides)
            stages = repro.plan_from_json(plan) if plan and not experiment else None
            name = (experiment_name or f"flow-{flow_run.name}") if experiment else None
            ran: set[str] = set()
            planned = stages or repro.stage_plan(repo)
            forced = _forced(reingest, planned)
            if experiment or forced or any(stage.changed for stage in planned):
                dvc.start()  # DVC's imports overlap the record reader's
                reader = report.RecordReader(repo)  # opened while the stages run
            for stage in planned:
                repro.check_interrupted()
                force = stage.name in forced
                unchanged = not (force or stage.changed or stage.upstream & ran)
                state = runner(
                    stage.name,
                    str(repo),
                    run_id,
                    stage_timeout_seconds,
                    unchanged,
                    experiment_name=name,
                    force=force,
                    return_state=True,
                )
                outcome = state.result()  # a failed stage raises its own error here
                outcomes.append(outcome)
                if outcome["status"] in ("ran", "restored"):  # its outputs changed
                    ran.add(stage.name)
            repro.check_interrupted()
            _prune_lock(repo, planned)
            if name:
                saved = experiments.save_experiment(repo, name, os.environ)
                get_run_logger().info("saved DVC experiment %s", saved)
            pushed = _push(repo, dvc_remote, bool(ran), retries, stage_timeout_seconds)
        except BaseException:
            stopped = repro.stop_all(repo)  # before params.yaml changes under a running stage
            if experiment:
                _put_back(
                    repo,
                    original_params,
                    original_lock,
                    original_outputs,
                    stopped=stopped,
                    logger=get_run_logger(),
                )
            raise
    summary = report.publish(repo, outcomes, run_id, saved, reader)
    return {
        "pipeline_run_id": run_id,
        "stages": outcomes,
        "experiment": saved,
        "pushed": pushed,
        "metrics": summary["metrics"],
        "mlflow": summary["mlflow"],
        "upstream": _upstream_notice(repo),
    }


def _push(
    repo: Path, dvc_remote: str | None, ran: bool, retries: int, timeout_seconds: float
) -> dict[str, Any]:
    """The run's outputs pushed to the DVC remote when there is something to push."""
    team = team_remote_in(os.environ)
    if dvc_remote == "" and not team and ran:
        get_run_logger().info("no DVC remote: nothing pushed")
    elif ran or team:
        # In team mode every run pushes (a no-op when the bucket has everything), so the
        # outputs of a run whose push failed for good reach the team next time.
        return push_outputs.with_options(retries=retries)(str(repo), timeout_seconds)
    return {"status": "skipped", "remote": None}


def _upstream_notice(repo: Path) -> list[str]:
    """Months the source republished since they were ingested (timeline.upstream); a source
    that cannot be asked is not the run's failure."""
    from timeline import upstream

    try:
        lines = upstream.notice(upstream.check(repo))
    except Exception as exc:
        lines = [f"upstream not checked: {exc}"]
    for line in lines:
        get_run_logger().warning("%s", line)
    return lines


def _prune_lock(repo: Path, planned: list[repro.PlannedStage]) -> None:
    pruned = repro.prune_lock(repo, [stage.name for stage in planned])
    if pruned:
        get_run_logger().info("dvc.lock: removed %s (no such stage in dvc.yaml now)", pruned)


def _forced(reingest: list[str] | None, planned: list[repro.PlannedStage]) -> set[str]:
    forced = set(reingest or [])
    unknown = forced - {stage.name for stage in planned}
    if unknown:
        raise ValueError(f"reingest: no such stage in dvc.yaml: {sorted(unknown)}")
    return forced


def _snapshot(repo: Path) -> dict[str, bytes | None]:
    """The bytes of every output DVC leaves to git (None: absent), to put back."""
    return {
        path: (repo / path).read_bytes() if (repo / path).is_file() else None
        for path in experiments.git_tracked_outputs(repo)
    }


def _put_back(
    repo: Path,
    params: bytes,
    lock: bytes | None,
    outputs: dict[str, bytes | None],
    *,
    stopped: int,
    logger: logging.Logger | logging.LoggerAdapter,
) -> None:
    """A failed or interrupted experiment leaves the workspace as it found it: params.yaml,
    dvc.lock, its outputs from the cache and the git-tracked ones (metrics, plots) as they
    were, so `dvc status` matches what is there. The outputs are checked out even when
    dvc.lock is unchanged: a stage stopped after moving its outputs into place but before
    DVC recorded them leaves files dvc.lock does not name."""
    params_file, lock_file = repo / PARAMS_FILE, repo / record.LOCK_FILE
    if params_file.read_bytes() != params:
        params_file.write_bytes(params)
        after = f" after stopping {stopped} running stage(s)" if stopped else ""
        logger.warning("run failed: params.yaml put back%s", after)
    if lock is None:
        return
    changed = lock_file.read_bytes() != lock
    if changed:
        lock_file.write_bytes(lock)
    checkout = experiments.checkout_outputs(repo)
    for path, content in outputs.items():
        target = repo / path
        if content is None:
            target.unlink(missing_ok=True)
        elif not target.is_file() or target.read_bytes() != content:
            target.write_bytes(content)
    if changed or checkout:
        logger.warning("run failed: dvc.lock and its outputs put back%s", checkout)
    else:
        logger.info("run failed: outputs checked out as dvc.lock records them")
