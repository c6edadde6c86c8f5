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
import json
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner

from flows.pipeline_flow import pipeline
from workspaces import experiments
from workspaces.worktrees import worktree

DEFAULT_PARAM_SETS: list[dict[str, Any]] = [
    {"model.type": "ridge", "model.alpha": 1.0},
    {"model.type": "ridge", "model.alpha": 0.1},
    {"model.type": "lasso", "model.alpha": 0.01},
    {"model.type": "xgboost"},
]
PARALLEL_RUNS = 2


@flow(name="taxi-experiment")
def experiment(repo: str, name: str, overrides: dict[str, Any], retries: int = 3) -> str:
    """One param set as the pipeline flow in a fresh worktree of `repo`'s HEAD, saved as DVC
    experiment `name` (what a worker of the pool runs for compare)."""
    with worktree(Path(repo), prefix="experiment-") as workspace:
        pipeline(
            workspace=str(workspace), overrides=overrides, experiment_name=name, retries=retries
        )
    return name


@task(task_run_name="experiment-{name}")
def run_here(repo: str, name: str, overrides: dict[str, Any], retries: int) -> dict[str, Any]:
    """The experiment flow in this process."""
    experiment(repo, name, overrides, retries)
    return experiment_row(Path(repo), name, overrides)


@task(task_run_name="experiment-{name} on {pool}")
def run_on_pool(
    repo: str, name: str, overrides: dict[str, Any], retries: int, pool: str
) -> dict[str, Any]:
    """The experiment flow as a run of its deployment, picked up by a worker of the pool."""
    from prefect.deployments import run_deployment

    flow_run = run_deployment(
        f"taxi-experiment/{pool}",
        parameters={"repo": repo, "name": name, "overrides": overrides, "retries": retries},
        timeout=None,
    )
    if not flow_run.state.is_completed():
        raise RuntimeError(
            f"experiment {name} ({flow_run.name} on pool {pool}): {flow_run.state.name}: "
            f"{flow_run.state.message}"
        )
    return experiment_row(Path(repo), name, overrides)


def experiment_row(repo: Path, name: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """An experiment's metrics and model version, from its saved commit and the record."""
    evaluate = json.loads(experiments.experiment_file(repo, name, "metrics/evaluate.json"))
    train = json.loads(experiments.experiment_file(repo, name, "metrics/train.json"))
    return {
        "experiment": name,
        "params": ", ".join(f"{k}={v}" for k, v in overrides.items()),
        "validation_rmse": evaluate["validation"]["rmse"],
        "validation_mae": evaluate["validation"]["mae"],
        "validation_r2": evaluate["validation"]["r2"],
        "test_rmse": evaluate["test"]["rmse"],
        "train_rmse": train["train_rmse"],
        "model_version": _model_version(repo, name),
    }


def _model_version(repo: Path, name: str) -> str | None:
    from stage_runtime import record

    try:
        client = record.connect(record.tracking_uri(repo), create=False)
        experiment_id = record.experiment_id(client)
        runs = client.search_runs(
            [experiment_id],
            filter_string=(
                f"tags.{record.STAGE_TAG} = 'train' and tags.dvc_exp_name = '{name}' "
                "and attributes.status = 'FINISHED'"
            ),
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
    except Exception:  # the table still stands without the record
        return None
    return runs[0].data.tags.get(record.MODEL_VERSION_TAG) if runs else None


def deploy_experiment(repo: Path, pool: str) -> str:
    """The `taxi-experiment/<pool>` deployment, from this folder's code, on the work pool."""
    source = experiment.from_source(source=str(repo), entrypoint="flows/compare.py:experiment")
    return str(source.deploy(name=pool, work_pool_name=pool, print_next_steps=False))


@flow(name="compare-models", task_runner=ThreadPoolTaskRunner(max_workers=PARALLEL_RUNS))
def compare_models(
    workspace: str = ".",
    param_sets: list[dict[str, Any]] | None = None,
    retries: int = 3,
    pool: str | None = None,
) -> dict[str, Any]:
    """Run every param set as a DVC experiment; table artifact; the lowest validation RMSE wins.

    `pool`: run each as a deployment run on that work pool (team mode: `make services` starts
    `taxi-process` with two workers), two at a time; else here, in threads.
    """
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    repo = Path(workspace).resolve()
    param_sets = param_sets or DEFAULT_PARAM_SETS
    names = [f"{flow_run.name}-{i}" for i in range(1, len(param_sets) + 1)]
    if pool:
        deploy_experiment(repo, pool)
        futures = [
            run_on_pool.submit(str(repo), name, overrides, retries, pool)
            for name, overrides in zip(names, param_sets, strict=True)
        ]
    else:
        futures = [
            run_here.submit(str(repo), name, overrides, retries)
            for name, overrides in zip(names, param_sets, strict=True)
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
    parser.add_argument("--pool", help="run each param set on this Prefect work pool")
    args = parser.parse_args(argv)
    compare_models(workspace=args.workspace, param_sets=args.param_sets, pool=args.pool)


if __name__ == "__main__":
    main()
