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
    from timeline import upstream
    from workspaces import experiments
    from workspaces.worktrees import worktree

    logger = get_run_logger()
    repo = Path(workspace).resolve()
    p = retraining.plan(repo, branch)
    logger.info("%s", p.line())
    if p.window is None:
        return {"status": "nothing new", "newest": p.newest, "summary": [p.line()]}
    holder = retraining.checked_out_in(repo, branch)
    if holder is not None:
        raise retraining.RetrainError(
            f"branch {branch} is checked out in {holder}: switch it to another branch first "
            "(a retraining moves the branch; that workspace's files would go stale)"
        )
    with worktree(repo, p.base, prefix="retrain-") as tree:
        # Months kept in the window whose source was republished are ingested again.
        republished = [
            c for c in upstream.changed(upstream.check(tree)) if c.month in p.window.months
        ]
        for check in republished:
            logger.warning("%s: re-ingested", check.line())
        experiments.apply_overrides(tree, {"data.months": p.window.months})
        result = pipeline(workspace=str(tree), reingest=[f"ingest@{c.month}" for c in republished])
        commit = retraining.commit_window(tree, repo, p, result)
    record = result.get("mlflow") or {}
    metrics = {m["split"]: m["rmse"] for m in result.get("metrics") or []}
    decision = record.get("decision") or {}
    summary = [
        p.line(),
        f"branch {branch} -> {commit[:10]} (params.yaml, dvc.lock, metrics)",
        f"validation RMSE {metrics.get('validation')} min ({p.newest}), "
        f"test RMSE {metrics.get('test')} min ({p.window.test})",
        f"model: {record.get('model_name')} version {record.get('model_version')}"
        + (f", {decision['verdict']}: {decision['reason']}" if decision else ""),
        f"trace it: python -m lineage models:/{record.get('model_name')}/"
        f"{record.get('model_version')}",
    ]
    if republished:
        summary.insert(1, "re-ingested: " + ", ".join(c.month for c in republished))
    create_markdown_artifact(
        "# Retraining\n\n" + "\n".join(f"- {line}" for line in summary) + "\n",
        key="retrain-report",
        description=f"Retraining on {p.newest}",
    )
    return {
        "status": "retrained",
        "newest": p.newest,
        "window": p.window.months,
        "commit": commit,
        "model_version": record.get("model_version"),
        "validation_rmse": metrics.get("validation"),
        "test_rmse": metrics.get("test"),
        "republished": [c.month for c in republished],
        "summary": summary,
    }
