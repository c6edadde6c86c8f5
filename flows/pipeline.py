"""The DVC pipeline as a Prefect flow: DVC decides what is stale; Prefect runs, retries, shows.

    python -m flows.pipeline                               # run once (ephemeral Prefect, no server)
    python -m flows.pipeline --set model.alpha=0.05        # the same as a DVC experiment
    python -m flows.pipeline serve [--cron "0 4 * * 1"]    # a deployment with a retraining schedule

Stages run one at a time in dependency order: DVC does not support two stages of one workspace
at once (parallel runs need isolated workspaces, see flows.compare).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from flows import dvc_stages

RETRAIN_CRON = "0 4 * * 1"  # Mondays 04:00: the TLC publishes a month at a time


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m flows.pipeline", description=__doc__)
    parser.add_argument("command", nargs="?", choices=["run", "serve"], default="run")
    parser.add_argument("--workspace", default=".")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--name", help="DVC experiment name (with --set)")
    parser.add_argument("--cron", default=RETRAIN_CRON, help="schedule for serve")
    return parser


def _early_plan(argv: list[str]) -> dvc_stages.PlanProcess | None:
    """For a plain one-off run, ask DVC what is stale while Prefect is being imported below."""
    args, _ = _parser().parse_known_args(argv)
    if args.command != "run" or args.overrides or args.name:
        return None
    return dvc_stages.PlanProcess.start(Path(args.workspace).resolve())


_EARLY_PLAN = _early_plan(sys.argv[1:]) if __name__ == "__main__" else None

# Imported after the child above has started: Prefect's import is the slow part of a no-op run.
import logging  # noqa: E402
import os  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

from prefect import flow, get_run_logger, task  # noqa: E402
from prefect.runtime import flow_run, task_run  # noqa: E402
from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings  # noqa: E402
from prefect.states import Completed  # noqa: E402

from flows import report  # noqa: E402
from workspaces import experiments  # noqa: E402

RETRIES = 3
RETRY_DELAY_SECONDS = 2.0
RETRY_JITTER_FACTOR = 0.5
STAGE_TIMEOUT_SECONDS = 3600.0


def worth_retrying(task: Any, task_run: Any, state: Any) -> bool:
    """Retry a held lock or transient failure; bad input or an unknown error fails at once."""
    return isinstance(state.result(raise_on_failure=False), dvc_stages.TransientStageFailure)


def _level(line: str) -> int:
    """Stage output at INFO, except the lines that say why a stage failed."""
    failed = line.startswith(("ERROR", dvc_stages.BAD_INPUT_PREFIX, dvc_stages.TRANSIENT_PREFIX))
    return logging.ERROR if failed else logging.INFO


@task(
    task_run_name="{stage}",
    retries=RETRIES,
    retry_delay_seconds=RETRY_DELAY_SECONDS,
    retry_jitter_factor=RETRY_JITTER_FACTOR,
    retry_condition_fn=worth_retrying,
)
def repro_stage(
    stage: str, workspace: str, pipeline_run_id: str, timeout_seconds: float, unchanged: bool
) -> Any:
    """`dvc repro --single-item <stage>`, its output streamed into the Prefect log.

    `unchanged`: DVC already found the stage and everything upstream unchanged; no process.
    """
    logger = get_run_logger()
    if unchanged:
        outcome = {"stage": stage, "status": "skipped", "attempts": 1, "seconds": 0.0}
        logger.info("%s: DVC status unchanged, not run", stage)
        return Completed(name="Skipped", message=f"{stage}: unchanged (dvc status)", data=outcome)
    env = {**os.environ, "PIPELINE_RUN_ID": pipeline_run_id}
    started = time.perf_counter()
    result = dvc_stages.run_command(
        ["dvc", "repro", "--single-item", stage],
        Path(workspace),
        env,
        timeout_seconds,
        lambda line: logger.log(_level(line), "%s", line),
    )
    status = dvc_stages.classify(stage, result, timeout_seconds)
    outcome = {
        "stage": stage,
        "status": status,
        "attempts": task_run.run_count,
        "seconds": round(time.perf_counter() - started, 2),
    }
    if status == "skipped":
        logger.info("%s: unchanged, DVC skipped it", stage)
        message = f"{stage}: unchanged, skipped by DVC"
        return Completed(name="Skipped", message=message, data=outcome)
    return outcome


@flow(name="taxi-pipeline")
def pipeline(
    workspace: str = ".",
    *,
    overrides: dict[str, Any] | None = None,
    experiment_name: str | None = None,
    retries: int = RETRIES,
    retry_delay_seconds: float = RETRY_DELAY_SECONDS,
    retry_jitter_factor: float = RETRY_JITTER_FACTOR,
    stage_timeout_seconds: float = STAGE_TIMEOUT_SECONDS,
) -> dict[str, Any]:
    """Every stage of `workspace`'s dvc.yaml in order; with overrides, saved as a DVC experiment.

    Overrides (`{"model.alpha": 0.05}`) are written to params.yaml by the code `dvc exp run -S`
    uses, so both paths train on the same params; on failure params.yaml is put back.
    """
    repo = Path(workspace).resolve()
    run_id = str(flow_run.id)
    experiment = overrides is not None or experiment_name is not None
    params_file = repo / "params.yaml"
    original_params = params_file.read_text()
    runner = repro_stage.with_options(
        retries=retries,
        retry_delay_seconds=retry_delay_seconds,
        retry_jitter_factor=retry_jitter_factor,
    )
    outcomes = []
    try:
        if overrides:
            experiments.apply_overrides(repo, overrides)
        ran: set[str] = set()
        for stage in _plan(repo, experiment):
            unchanged = not stage.changed and not stage.upstream & ran
            state = runner(
                stage.name, str(repo), run_id, stage_timeout_seconds, unchanged, return_state=True
            )
            outcome = state.result()  # a failed stage raises its own error here
            outcomes.append(outcome)
            if outcome["status"] == "ran":
                ran.add(stage.name)
    except BaseException:
        if experiment:
            params_file.write_text(original_params)
        raise
    saved = None
    if experiment:
        name = experiment_name or f"flow-{flow_run.name}"
        saved = experiments.save_experiment(repo, name, os.environ)
        get_run_logger().info("saved DVC experiment %s", saved)
    summary = report.publish(repo, outcomes, run_id, saved)
    return {
        "pipeline_run_id": run_id,
        "stages": outcomes,
        "experiment": saved,
        "metrics": summary["metrics"],
        "mlflow": summary["mlflow"],
    }


def _plan(repo: Path, experiment: bool) -> list[dvc_stages.PlannedStage]:
    """The plan the command line started early, if it is for this run; else DVC's, now."""
    global _EARLY_PLAN  # noqa: PLW0603 - taken once, by the run the command line started
    early, _EARLY_PLAN = _EARLY_PLAN, None
    plan = early.result() if early is not None and early.repo == repo else None
    if plan is None or experiment:
        return dvc_stages.stage_plan(repo)
    return plan


def _overrides(items: list[str]) -> dict[str, Any] | None:
    """`--set model.alpha=0.05` pairs; the values stay text, as `dvc exp run -S` reads them."""
    if not items:
        return None
    pairs = [item.partition("=") for item in items]
    bad = [item for item, (_, sep, _) in zip(items, pairs, strict=True) if not sep]
    if bad:
        raise SystemExit(f"--set expects key=value, got {', '.join(bad)}")
    return {key: value for key, _, value in pairs}


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    parameters = {"workspace": str(Path(args.workspace).resolve())}
    if args.overrides or args.name:
        parameters |= {"overrides": _overrides(args.overrides), "experiment_name": args.name}
    if args.command == "serve":
        pipeline.serve(name="retrain", cron=args.cron, parameters=parameters)
    else:
        # The heartbeat thread rounds every run up to the next second; a one-off run from the
        # command line has no deployment whose crashed runs it would reveal.
        with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
            pipeline(**parameters)


if __name__ == "__main__":
    main()
