"""Backtest: the pipeline's own stages on every window of a range of months, side by side.

    python -m flows.backtest --from 2023-12 --to 2024-04 [--model-type ridge,xgboost]
                             [--train-months 1] [--parallel 2] [--json results.json]

Windows follow the retraining's rule (timeline.window): train on `--train-months` months
(default: params.yaml retrain.train_months), validate on the next, test on the month before
the training months; every window whose months lie in the range, for every model type. Each is
a DVC experiment (`<run>-<validation month>-<type>`: `dvc exp show` lists them, `dvc exp
apply` restores one) run by the pipeline flow in its own worktree of HEAD sharing the DVC
cache, `--parallel` at a time (flows.compare's experiment flow). Models are registered as
`<model.registered_name>-backtest`, so each stays traceable to its months while the champion
that serves is never compared with a model of the past. A window that fails (a month missing
at the source) is reported with its reason; the others complete.

Results: the RMSE-by-month table and the plot as Prefect artifacts, an MLflow parent run with
one child run per window (the plot and the JSON as its artifacts), `--json`, and the table here.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner

from timeline import backtest as bt

PARALLEL_RUNS = 2  # two cores: one experiment's stages on each
EXIT_BAD_INPUT, EXIT_FAILED = 65, 1


@flow(name="backtest", task_runner=ThreadPoolTaskRunner(max_workers=PARALLEL_RUNS))
def backtest(
    workspace: str = ".",
    *,
    first: str,
    last: str,
    model_types: list[str] | None = None,
    train_months: int | None = None,
    parallel: int = PARALLEL_RUNS,
    retries: int = 3,
) -> dict[str, Any]:
    """Every window of `first`..`last` for every model type, as DVC experiments.

    `parallel`: what the flow's task runner allows (the command line sets both), recorded."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    from flows.compare import run_here
    from stage_runtime import record
    from stages.common import load_params
    from timeline.window import windows_within

    logger = get_run_logger()
    repo = Path(workspace).resolve()
    params = load_params("model", "retrain", path=repo / "params.yaml")
    k = train_months or params["retrain"].train_months
    types = model_types or ["ridge", "xgboost"]
    runs = bt.plan_runs(windows_within(first, last, k), types)
    prefix = str(flow_run.name)
    started = time.perf_counter()
    futures = [
        run_here.submit(
            str(repo),
            run.experiment_name(prefix),
            run.overrides(params["model"].registered_name),
            retries,
        )
        for run in runs
    ]
    rows = []
    for run, future in zip(runs, futures, strict=True):
        state = future.wait() or future.state
        if state.is_completed():
            rows.append(bt.row(run, future.result(), None))
        else:
            error = " ".join(str(state.result(raise_on_failure=False)).split())[:400]
            logger.error("window %s, %s: %s", run.window.describe(), run.model_type, error)
            rows.append(bt.row(run, None, error))
    seconds = round(time.perf_counter() - started, 1)
    table = bt.rmse_table(rows)
    result = {
        "from": first,
        "to": last,
        "train_months": k,
        "model_types": types,
        "wall_seconds": seconds,
        "parallel": parallel,
        "rows": rows,
        "failures": bt.failures(rows),
    }
    create_table_artifact(rows, key="backtest-runs", description=f"Backtest {first}..{last}")
    create_markdown_artifact(
        f"# Backtest {first}..{last}\n\nValidation RMSE (minutes) by month and model type; "
        f"each model trained on the {k} month(s) before its validation month.\n\n{table}\n",
        key="backtest-rmse-by-month",
        description="Validation RMSE by month",
    )
    client = record.connect(record.tracking_uri(repo))
    with tempfile.TemporaryDirectory() as tmp:
        plot = bt.render_plot(rows, Path(tmp) / "rmse_by_month.png")
        results = Path(tmp) / "backtest.json"
        bt.write_json(results, result)
        result["mlflow_run_id"] = bt.record(
            client,
            record.ensure_experiment(client, record.tracking_uri(repo)),
            name=f"backtest {first}..{last} ({prefix})",
            rows=rows,
            params={
                "from": first,
                "to": last,
                "train_months": k,
                "model_types": ",".join(types),
                "parallel": parallel,
            },
            seconds=seconds,
            files=[plot, results],
        )
    result["table"] = table
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m flows.backtest",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--from", dest="first", required=True, help="first month, YYYY-MM")
    parser.add_argument("--to", dest="last", required=True, help="last month, YYYY-MM")
    parser.add_argument("--model-type", default="ridge,xgboost", help="comma-separated")
    parser.add_argument("--train-months", type=int, help="default: params.yaml retrain")
    parser.add_argument("--parallel", type=int, default=PARALLEL_RUNS, help="runs at a time")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--workspace", default=".")
    parser.add_argument("--verbose", action="store_true", help="Prefect's full log here too")
    args = parser.parse_args(argv)
    repo = Path(args.workspace).resolve()
    from flows import console
    from timeline.window import windows_within

    try:
        types = bt.model_types(args.model_type)
        if args.parallel < 1:
            raise ValueError(f"--parallel: expected at least 1, got {args.parallel}")
        if args.train_months is not None:
            windows_within(args.first, args.last, args.train_months)
    except Exception as exc:  # the command line's own checks: one line, before any run
        console.say(f"[red bold]backtest refused[/]: {exc}")
        return EXIT_BAD_INPUT
    from flows.local_server import server_for_this_run

    server = server_for_this_run(repo, keep=True)
    console.prepare_environment(args.verbose)
    if server is not None:
        server.wait_ready()
    runner = backtest.with_options(task_runner=ThreadPoolTaskRunner(max_workers=args.parallel))
    with console.quiet_prefect(args.verbose):
        state = runner(
            workspace=str(repo),
            first=args.first,
            last=args.last,
            model_types=types,
            train_months=args.train_months,
            parallel=args.parallel,
            return_state=True,
        )
    if not state.is_completed():
        console.say(f"[red bold]backtest failed[/]: {state.result(raise_on_failure=False)}")
        return EXIT_FAILED
    result = state.result()
    if args.json:
        bt.write_json(args.json, result)
    console.say(result["table"])
    for line in result["failures"]:
        console.say(f"[red]failed[/] {line}")
    done = sum(r["status"] == "completed" for r in result["rows"])
    console.say(
        f"{done} of {len(result['rows'])} runs completed in {result['wall_seconds']} s "
        f"({args.parallel} at a time); MLflow run {result['mlflow_run_id']} holds the plot"
        + (f"; results in {args.json}" if args.json else "")
    )
    return 0 if done == len(result["rows"]) else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
