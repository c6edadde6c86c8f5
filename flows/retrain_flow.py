"""The retraining as a Prefect flow (the command line and the why: flows.retrain)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

from flows import retrain as retraining


@flow(name="retrain-on-new-month")
def retrain(workspace: str = ".", branch: str = retraining.DEFAULT_BRANCH) -> dict[str, Any]:
    """Find the source's newest month; if new, run the pipeline on the moved window in a
    worktree of `branch` and commit it there. Nothing new: one log line, nothing else."""
    from prefect.artifacts import create_markdown_artifact

    from flows.pipeline_flow import pipeline
    from workspaces import experiments
    from workspaces.worktrees import worktree

    logger = get_run_logger()
    repo = Path(workspace).resolve()
    p = retraining.plan(repo, branch)
    logger.info("%s", p.line())
    if p.nothing_to_do:
        return {"status": "nothing new", "newest": p.newest, "summary": [p.line()]}
    holder = retraining.checked_out_in(repo, branch)
    if holder is not None:
        raise retraining.RetrainError(
            f"branch {branch} is checked out in {holder}: switch it to another branch first "
            "(a retraining moves the branch; that workspace's files would go stale)"
        )
    with worktree(repo, p.base, prefix="retrain-") as tree:
        experiments.apply_overrides(tree, {"data.months": p.months})
        for month in p.republished:  # kept in the window, republished: ingested again
            logger.warning("%s: republished at the source, ingested again", month)
        result = pipeline(workspace=str(tree), reingest=[f"ingest@{m}" for m in p.republished])
        commit = retraining.commit_window(tree, repo, p, result)
    record = result.get("mlflow") or {}
    metrics = {m["split"]: m["rmse"] for m in result.get("metrics") or []}
    decision = record.get("decision") or {}
    summary = [
        p.line(),
        f"branch {branch} -> {commit[:10]} (params.yaml, dvc.lock, metrics)",
        f"validation RMSE {metrics.get('validation')} min, test RMSE {metrics.get('test')} "
        f"min ({', '.join(f'{s} {m}' for m, s in p.months.items())})",
        f"model: {record.get('model_name')} version {record.get('model_version')}"
        + (f", {decision['verdict']}: {decision['reason']}" if decision else ""),
        f"trace it: python -m lineage models:/{record.get('model_name')}/"
        f"{record.get('model_version')}",
    ]
    if p.republished and p.window is not None:
        summary.insert(1, "re-ingested (republished): " + ", ".join(p.republished))
    create_markdown_artifact(
        "# Retraining\n\n" + "\n".join(f"- {line}" for line in summary) + "\n",
        key="retrain-report",
        description=f"Retraining: {p.line()}",
    )
    return {
        "status": "retrained",
        "newest": p.newest,
        "window": p.months,
        "commit": commit,
        "model_version": record.get("model_version"),
        "validation_rmse": metrics.get("validation"),
        "test_rmse": metrics.get("test"),
        "republished": list(p.republished),
        "summary": summary,
    }
