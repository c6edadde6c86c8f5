"""Compare models: several param sets, each a DVC experiment in its own workspace, side by side.

    python -m flows.compare                                          # the default param sets
    python -m flows.compare --set model.type=lasso,model.alpha=0.01 --set model.type=xgboost

Each param set runs the `taxi-pipeline` flow in its own git worktree of HEAD (sharing the DVC
cache, so unchanged stages are checked out, not rerun: workspaces.worktrees): DVC cannot run
two stages of one workspace at once, so parallel runs never share one. Two at a time by
default (2 cores); their `dvc exp save`s take turns (workspaces.experiments).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner

from flows.pipeline_flow import pipeline
from stages.common import read_json
from workspaces.worktrees import worktree

DEFAULT_PARAM_SETS: list[dict[str, Any]] = [
    {"model.type": "ridge", "model.alpha": 1.0},
    {"model.type": "ridge", "model.alpha": 0.1},
    {"model.type": "lasso", "model.alpha": 0.01},
    {"model.type": "xgboost"},
]
PARALLEL_RUNS = 2


@task(task_run_name="experiment-{name}")
def run_experiment(repo: str, name: str, overrides: dict[str, Any], retries: int) -> dict[str, Any]:
    """One param set as the pipeline flow in a worktree of HEAD; its metrics as a table row."""
    with worktree(Path(repo), prefix="compare-models-") as workspace:
        result = pipeline(
            workspace=str(workspace), overrides=overrides, experiment_name=name, retries=retries
        )
        evaluate = read_json(workspace / "metrics" / "evaluate.json")
        train = read_json(workspace / "metrics" / "train.json")
    mlflow = result["mlflow"] or {}
    return {
        "experiment": name,
        "params": ", ".join(f"{k}={v}" for k, v in overrides.items()),
        "validation_rmse": evaluate["validation"]["rmse"],
        "validation_mae": evaluate["validation"]["mae"],
        "validation_r2": evaluate["validation"]["r2"],
        "test_rmse": evaluate["test"]["rmse"],
        "train_rmse": train["train_rmse"],
        "model_version": mlflow.get("model_version"),
    }


@flow(name="compare-models", task_runner=ThreadPoolTaskRunner(max_workers=PARALLEL_RUNS))
def compare_models(
    workspace: str = ".",
    param_sets: list[dict[str, Any]] | None = None,
    retries: int = 3,
) -> dict[str, Any]:
    """Run every param set as a DVC experiment; table artifact; the lowest validation RMSE wins."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    repo = Path(workspace).resolve()
    param_sets = param_sets or DEFAULT_PARAM_SETS
    futures = [
        run_experiment.submit(str(repo), f"{flow_run.name}-{i}", overrides, retries)
        for i, overrides in enumerate(param_sets, start=1)
    ]
    rows = [future.result() for future in futures]
    best = min(rows, key=lambda row: row["validation_rmse"])
    create_table_artifact(rows, key="model-comparison", description="Models compared")
    create_markdown_artifact(
        f"Best model: `{best['experiment']}` ({best['params']}), validation RMSE "
        f"{best['validation_rmse']} min. Restore it with `dvc exp apply {best['experiment']}`.",
        key="best-model",
        description="Lowest validation RMSE",
    )
    get_run_logger().info("best model: %s (%s)", best["experiment"], best["params"])
    return {"rows": rows, "best": best}


def _param_set(text: str) -> dict[str, str]:
    pairs = [item.partition("=") for item in text.split(",")]
    if any(not sep for _, sep, _ in pairs):
        raise SystemExit(f"--set expects key=value[,key=value...], got {text!r}")
    return {key: value for key, _, value in pairs}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m flows.compare", description=__doc__)
    parser.add_argument("--workspace", default=".")
    parser.add_argument("--set", dest="param_sets", action="append", type=_param_set)
    args = parser.parse_args(argv)
    compare_models(workspace=args.workspace, param_sets=args.param_sets)


if __name__ == "__main__":
    main()
