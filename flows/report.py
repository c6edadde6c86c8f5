"""What one pipeline execution produced, as Prefect artifacts: a markdown report, a metrics table.

Read from the files DVC tracks (metrics/, dvc.lock) and, when there is one, the MLflow store.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from stage_runtime import record
from stages.common import read_json

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
    return [
        {"stage": name, "path": path, "md5": md5}
        for name, stage in record.read_lock(repo / record.LOCK_FILE).items()
        for path, md5 in stage.outs.items()
    ]


class RecordReader:
    """The MLflow client the report reads with, opened in a thread while the stages run:
    importing MLflow and its store's schema check take 2-3 s, which the flow process would
    otherwise add after the last stage (it only waits on stage processes meanwhile). A
    SQLite store that does not exist yet (the first run creates it) is opened afterwards."""

    def __init__(self, repo: Path) -> None:
        self.uri = record.tracking_uri(repo)
        self._client: Any = None
        self._error: Exception | None = None
        # Not a daemon: the interpreter never exits in the middle of this thread's imports.
        self._thread = threading.Thread(target=self._open, name="report-mlflow-client")
        self._thread.start()

    def _open(self) -> None:
        try:
            import mlflow  # noqa: F401 - most of the cost, and safe before the store exists

            path = record.sqlite_path(self.uri)
            if path is None or path.is_file():
                self._client = record.connect(self.uri, create=False)
        except Exception as exc:  # reported when the client is asked for
            self._error = exc

    def client(self) -> Any:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._client or record.connect(self.uri, create=False)


def mlflow_summary(
    repo: Path, pipeline_run_id: str, model_md5: str, reader: RecordReader | None = None
) -> dict[str, Any] | None:
    """This execution's stage runs and model version in MLflow; None when there is no record.

    When DVC skipped train, no run of this execution holds the model: the run that produced
    the model's bytes (its `out/` tag) is reported instead. The version before it is given
    with its evaluation tags, for the summary's comparison.
    """
    reader = reader or RecordReader(repo)
    uri = reader.uri
    try:
        client = reader.client()
        experiment_id = record.experiment_id(client)
        if experiment_id is None:
            return None
        ids = [experiment_id]
        runs = record.runs_of_execution(client, ids, pipeline_run_id)
        train = [r for r in runs if r.data.tags.get(record.STAGE_TAG) == "train"]
        if not train and model_md5:
            found = record.find_producer(client, ids, MODEL_PATH, model_md5)
            train = [found] if found else []
        tags = train[0].data.tags if train else {}
        name, version = tags.get(record.MODEL_NAME_TAG), tags.get(record.MODEL_VERSION_TAG)
        previous = _previous_version(client, name, version) if name and version else None
        decision = _decision(client, name, version) if name and version else None
    except Exception as exc:  # the report must not fail a finished pipeline
        log.warning("MLflow record not available: %s", exc)
        return None
    base = uri if uri.startswith("http") else DEFAULT_MLFLOW_UI
    link = f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs/"
    return {
        "uri": uri,
        "stage_runs": {r.data.tags.get(record.STAGE_TAG, "?"): link + r.info.run_id for r in runs},
        "model_name": name,
        "model_version": version,
        "previous_version": previous,
        "decision": decision,
        "train_run": link + train[0].info.run_id if train else None,
    }


def _previous_version(client: Any, name: str, version: str) -> dict[str, Any] | None:
    """The newest version below `version`, with its tags (evaluate puts its RMSEs there)."""
    older = [
        v for v in client.search_model_versions(f"name = '{name}'") if int(v.version) < int(version)
    ]
    if not older:
        return None
    newest = max(older, key=lambda v: int(v.version))
    return {"version": newest.version, **dict(newest.tags)}


def _decision(client: Any, name: str, version: str) -> dict[str, Any] | None:
    """The version's champion decision as evaluate (or a person) recorded it, and the
    version that is champion now."""
    from registry import champion

    tags = client.get_model_version(name, version).tags
    outcome = tags.get(champion.TAG_PREFIX + "outcome")
    current = champion.version_with_alias(client, name, champion.CHAMPION)
    if outcome is None:
        return None
    return {
        "outcome": outcome,
        "verdict": champion.VERDICTS.get(outcome, outcome),
        "reason": tags.get(champion.TAG_PREFIX + "reason", ""),
        "champion": str(current.version) if current is not None else None,
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
    if not any(o["status"] in ("ran", "restored") for o in outcomes):
        lines.append(
            f"No stage ran, so MLflow holds nothing new: the model is the one dvc.lock records "
            f"(md5 `{model_md5}`); `python -m lineage {MODEL_PATH}` finds its run and version."
        )
    elif record is None:
        lines.append("No MLflow record found for this run.")
    else:
        version = record["model_version"]
        lines.append(f"- model: `{record['model_name']}` version {version or 'unknown'}")
        decision = record.get("decision")
        if decision:
            lines.append(f"- champion decision: {decision['verdict']}: {decision['reason']}")
            lines.append(f"- champion now: version {decision['champion']}")
        lines.append(f"- train run: {record['train_run'] or 'none'} (store `{record['uri']}`)")
        lines += [f"- {stage}: {url}" for stage, url in sorted(record["stage_runs"].items())]
    lines += ["", "## Data hashes (dvc.lock)", "", *_table(hashes)]
    return "\n".join(lines) + "\n"


def publish(
    repo: Path,
    outcomes: list[dict[str, Any]],
    pipeline_run_id: str,
    experiment: str | None,
    reader: RecordReader | None = None,
) -> dict[str, Any]:
    """Create the markdown and table artifacts; return what they show. `reader`: the MLflow
    client opened while the stages ran, if the flow started one."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    hashes = data_hashes(repo)
    model_md5 = next((h["md5"] for h in hashes if h["path"] == MODEL_PATH), "")
    # Nothing ran, nothing new in MLflow: spare the 2-3 s of importing and opening it.
    ran = any(o["status"] in ("ran", "restored") for o in outcomes)
    summary = {
        "quality": quality_rows(repo),
        "metrics": metric_rows(repo),
        "hashes": hashes,
        "mlflow": mlflow_summary(repo, pipeline_run_id, model_md5, reader) if ran else None,
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
