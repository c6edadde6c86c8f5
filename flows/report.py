"""What one pipeline execution produced, as Prefect artifacts: a markdown report, a metrics table.

Read from the files DVC tracks (metrics/, dvc.lock) and, when there is one, the MLflow store.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from stages.common import load_yaml, read_json
from stages.tracking import DEFAULT_EXPERIMENT, EXPERIMENT_ENV, project_root

log = logging.getLogger("flows.report")
MODEL_PATH = "models/model.json"
# `mlflow ui` serves here by default; a file store has no address of its own.
DEFAULT_MLFLOW_UI = "http://127.0.0.1:5000"


def quality_rows(repo: Path) -> list[dict[str, Any]]:
    """Rows in, dropped per cleaning rule, and out, one row per month."""
    rows = []
    for path in sorted((repo / "metrics" / "data_quality").glob("*.json")):
        quality = read_json(path)
        rows.append(
            {"month": quality["month"], "rows_in": quality["rows_in"]}
            | quality["dropped"]
            | {"rows_out": quality["rows_out"]}
        )
    return rows


def metric_rows(repo: Path) -> list[dict[str, Any]]:
    """RMSE, MAE, R² and rows per split: train from metrics/train.json, the rest from evaluate."""
    rows = []
    train_file = repo / "metrics" / "train.json"
    if train_file.is_file():
        train = read_json(train_file)
        rows.append(
            {
                "split": "train",
                "model": train.get("model_type"),
                "rmse": train.get("train_rmse"),
                "mae": None,
                "r2": None,
                "rows": train.get("train_rows"),
            }
        )
    evaluate_file = repo / "metrics" / "evaluate.json"
    model = rows[0]["model"] if rows else None
    if evaluate_file.is_file():
        for split, values in sorted(read_json(evaluate_file).items(), reverse=True):
            rows.append({"split": split, "model": model, **values})
    return rows


def data_hashes(repo: Path) -> list[dict[str, str]]:
    """Every output md5 dvc.lock records, by stage."""
    lock_file = repo / "dvc.lock"
    if not lock_file.is_file():
        return []
    lock = load_yaml(lock_file.read_text()) or {}
    return [
        {"stage": stage, "path": out["path"], "md5": out.get("md5", "")}
        for stage, entry in lock.get("stages", {}).items()
        for out in entry.get("outs", [])
    ]


def mlflow_summary(repo: Path, pipeline_run_id: str, model_md5: str) -> dict[str, Any] | None:
    """This execution's stage runs and model version in MLflow; None when there is no record.

    When DVC skipped train, no run of this execution holds the model: the run that produced
    the model's bytes (its `out/` tag) is reported instead.
    """
    uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{project_root(repo) / 'mlflow.db'}"
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        return None  # no store yet; opening one would create it
    try:
        from stages.tracking import connect

        client = connect(uri)
        experiment = client.get_experiment_by_name(
            os.environ.get(EXPERIMENT_ENV, DEFAULT_EXPERIMENT)
        )
        if experiment is None:
            return None
        ids = [experiment.experiment_id]
        runs = client.search_runs(ids, filter_string=f"tags.pipeline_run_id = '{pipeline_run_id}'")
        train = [r for r in runs if r.data.tags.get("stage") == "train"]
        if not train and model_md5:
            train = client.search_runs(
                ids,
                filter_string=f"tags.`out/{MODEL_PATH}` = '{model_md5}' and tags.stage = 'train'",
                order_by=["attributes.start_time DESC"],
                max_results=1,
            )
    except Exception as exc:  # noqa: BLE001 - the report must not fail a finished pipeline
        log.warning("MLflow record not available: %s", exc)
        return None
    base = uri if uri.startswith("http") else DEFAULT_MLFLOW_UI
    link = f"{base.rstrip('/')}/#/experiments/{experiment.experiment_id}/runs/"
    return {
        "uri": uri,
        "stage_runs": {r.data.tags.get("stage", "?"): link + r.info.run_id for r in runs},
        "model_name": train[0].data.tags.get("model_name") if train else None,
        "model_version": train[0].data.tags.get("model_version") if train else None,
        "train_run": link + train[0].info.run_id if train else None,
    }


def _table(rows: list[dict[str, Any]]) -> list[str]:
    if not rows:
        return ["(none)"]
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + " --- |" * len(keys)]
    lines += ["| " + " | ".join(_cell(r.get(k)) for k in keys) + " |" for r in rows]
    return lines


def _cell(value: Any) -> str:
    return "" if value is None else str(value)


def render_markdown(
    *,
    outcomes: list[dict[str, Any]],
    quality: list[dict[str, Any]],
    metrics: list[dict[str, Any]],
    hashes: list[dict[str, str]],
    record: dict[str, Any] | None,
    experiment: str | None,
) -> str:
    lines = ["# Pipeline run", ""]
    if experiment:
        lines += [f"DVC experiment: `{experiment}` (see `dvc exp show`)", ""]
    lines += ["## Stages", "", *_table(outcomes), "", "## Data quality (rows per cleaning rule)"]
    lines += ["", *_table(quality), "", "## Metrics (minutes)", "", *_table(metrics), ""]
    lines += ["## Model and MLflow", ""]
    model_md5 = next((h["md5"] for h in hashes if h["path"] == MODEL_PATH), "none")
    if not any(o["status"] == "ran" for o in outcomes):
        lines.append(
            f"No stage ran, so MLflow holds nothing new: the model is the one dvc.lock records "
            f"(md5 `{model_md5}`); `python -m flows.trace {MODEL_PATH}` finds its run and version."
        )
    elif record is None:
        lines.append("No MLflow record found for this run.")
    else:
        version = record["model_version"]
        lines.append(f"- model: `{record['model_name']}` version {version or 'unknown'}")
        lines.append(f"- train run: {record['train_run'] or 'none'} (store `{record['uri']}`)")
        lines += [f"- {stage}: {url}" for stage, url in sorted(record["stage_runs"].items())]
    lines += ["", "## Data hashes (dvc.lock)", "", *_table(hashes)]
    return "\n".join(lines) + "\n"


def publish(
    repo: Path, outcomes: list[dict[str, Any]], pipeline_run_id: str, experiment: str | None
) -> dict[str, Any]:
    """Create the markdown and table artifacts; return what they show."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    hashes = data_hashes(repo)
    model_md5 = next((h["md5"] for h in hashes if h["path"] == MODEL_PATH), "")
    # Nothing ran, nothing new in MLflow: spare the 2-3 s of importing and opening it.
    ran = any(o["status"] == "ran" for o in outcomes)
    summary = {
        "quality": quality_rows(repo),
        "metrics": metric_rows(repo),
        "hashes": hashes,
        "mlflow": mlflow_summary(repo, pipeline_run_id, model_md5) if ran else None,
    }
    markdown = render_markdown(
        outcomes=outcomes,
        quality=summary["quality"],
        metrics=summary["metrics"],
        hashes=hashes,
        record=summary["mlflow"],
        experiment=experiment,
    )
    create_markdown_artifact(markdown, key="pipeline-report", description="Pipeline run report")
    create_table_artifact(summary["metrics"], key="pipeline-metrics", description="Metrics")
    return summary
