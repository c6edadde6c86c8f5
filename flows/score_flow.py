"""Batch scoring as a Prefect flow: a whole TLC month through a registered model, traceable
both ways (the command line: flows.score).

The month comes from where ingest takes it (TLC_SOURCE, else params.yaml's TLC address) with
ingest's checks (published sha256 when a mirror lists one, the TLC schema, every row decoded).
The model is loaded the way any consumer loads it (`mlflow.pyfunc.load_model` on the
registry URI, `@champion` by default), from files downloaded and hashed first. Every trip
of the file gets a row: `row_id` (its position in the file), the request columns, and
`predicted_minutes`, or null with `refused_because` naming the column when the model cannot
score it (the month's own zero-distance or null rows), found by the model's own checks.

The MLflow run (stage `score@<month>`, stage_runtime.record) records the month's md5 and address,
the model file's md5 (whose producer is the model's train run), the version the URI
resolved to and the predictions' md5: `python -m lineage <predictions file>` follows it back
to the model and on to the raw training months. The predictions are written atomically, only
once that record is written.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from stage_runtime import record
from stages import request
from stages.common import (
    BadInputError,
    TransientError,
    atomic_path,
    check_month,
    file_md5,
    load_params,
    read_json,
)

SCORING_INPUTS = Path("data/scoring")  # the months scored, as fetched (git-ignored, like data/)
DEFAULT_OUT = "predictions/{colour}_tripdata_{month}.parquet"
CHUNK_ROWS = 500_000  # rows per predict call: bounded memory on a yellow-taxi month
RETRIES, RETRY_DELAY_SECONDS = 3, 2.0


def default_model_uri(name: str) -> str:
    from registry.champion import CHAMPION

    return f"models:/{name}@{CHAMPION}"


def request_columns(available: list[str]) -> list[str]:
    """The columns of a TLC file the model reads (its pickup column depends on the colour)."""
    wanted = [*request.ZONE_COLUMNS, request.DISTANCE_COLUMN, *request.PICKUP_COLUMNS]
    return [c for c in wanted if c in available]


def score_trips(pyfunc: Any, encoders: dict, trips: Any) -> tuple[np.ndarray, np.ndarray]:
    """Minutes per trip (NaN where refused) and, per refused trip, the column of its first
    problem. The rows the model cannot score are found with the model's own request checks
    (stages.request with its encoders file) and left out; the rest go through the pyfunc in
    chunks, exactly as a consumer's request would."""
    _, problems = request.read_request(trips, encoders)
    reasons = np.full(len(trips), None, dtype=object)
    for problem in reversed(problems):  # the first problem of a row wins
        reasons[problem.rows] = problem.column
    refused = request.refused_rows(problems, len(trips))
    valid = trips.loc[~refused]
    minutes = np.full(len(trips), np.nan)
    if len(valid):
        minutes[~refused] = np.concatenate(
            [
                np.asarray(pyfunc.predict(valid.iloc[start : start + CHUNK_ROWS]), np.float64)
                for start in range(0, len(valid), CHUNK_ROWS)
            ]
        )
    return minutes, reasons


def predictions_table(trips: Any, minutes: np.ndarray, refused_because: np.ndarray) -> Any:
    """One row per trip of the file, in file order."""
    import pandas as pd

    table = trips.reset_index(drop=True).copy()
    table.insert(0, "row_id", np.arange(len(table), dtype=np.int64))
    table["predicted_minutes"] = pd.Series(minutes, dtype="float64")
    table["refused_because"] = pd.Series(refused_because, dtype="string")
    return table


def _transient(task: Any, task_run: Any, state: Any) -> bool:
    return isinstance(state.result(raise_on_failure=False), TransientError | ConnectionError)


@task(retries=RETRIES, retry_delay_seconds=RETRY_DELAY_SECONDS, retry_condition_fn=_transient)
def fetch_month(month: str, colour: str, trips_url: str) -> dict[str, str]:
    """The month's file from the source, checked like ingest checks it, in data/scoring."""
    from stages.ingest import check_published_sha256, fetch
    from stages.tlc import check_trip_file, trip_address, trip_file_name

    name = trip_file_name(colour, check_month(month))
    source = trip_address(colour, trips_url, month)
    path = SCORING_INPUTS / name
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fetch(source, tmp)
        check_published_sha256(source, tmp)
        check_trip_file(tmp, colour, source)
    return {"path": str(path), "source": source, "md5": file_md5(path)}


@task(retries=RETRIES, retry_delay_seconds=RETRY_DELAY_SECONDS, retry_condition_fn=_transient)
def resolve_model(model_uri: str, into: str) -> dict[str, str]:
    """The registered version behind `model_uri`, its files downloaded into `into`."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from stage_runtime.tracking import connect_store

    client = connect_store(record.tracking_uri())
    store = f"MLflow at {record.tracking_uri()}"
    try:
        version = record.find_model_version(client, model_uri)
    except ValueError as exc:
        raise BadInputError(f"--model {exc}") from None
    except MlflowException as exc:
        raise TransientError(f"{store}: {exc.message}") from None
    if version is None:
        raise BadInputError(f"--model {model_uri}: no such registered model version")
    try:
        local = mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=into)
    except MlflowException as exc:
        raise TransientError(f"{store}: {exc.message}") from None
    model_file = Path(local) / "artifacts" / "model.json"
    md5 = file_md5(model_file)
    # The model file's project name as its train run recorded it (the same bytes).
    wrote = record.tagged_files(client.get_run(version.run_id).data.tags, record.OUTPUT)
    name = next((path for path, digest in wrote.items() if digest == md5), None)
    if name is None:
        raise BadInputError(
            f"--model {model_uri}: version {version.version}'s model file (md5 {md5}) is not "
            f"an output of its run {version.run_id}: it cannot be traced"
        )
    return {
        "uri": model_uri,
        "name": version.name,
        "version": str(version.version),
        "local": local,
        "model_file": str(model_file),
        "model_file_name": name,
    }


@task
def score_and_record(
    month: str, model: dict[str, str], month_file: dict[str, str], out: str
) -> dict[str, Any]:
    """Predict every trip; record the run; move the predictions into place."""
    import mlflow
    import pyarrow.parquet as pq
    from mlflow.exceptions import MlflowException

    from stage_runtime.tracking import stage_run

    pyfunc = mlflow.pyfunc.load_model(model["local"])
    encoders = read_json(Path(model["local"]) / "artifacts" / "encoders.json")
    source = pq.ParquetFile(month_file["path"])
    params = {"score": {"month": month, "model_uri": model["uri"], "out": out}}
    with stage_run(f"{record.SCORE_STAGE}@{month}", params) as run:
        run.add_input(month_file["path"])
        run.add_source(month_file["path"], month_file["source"])
        run.add_input(model["model_file"], name=model["model_file_name"])
        run.client.set_tag(run.run_id, record.SCORED_MODEL_URI_TAG, model["uri"])
        run.client.set_tag(run.run_id, record.SCORED_MODEL_VERSION_TAG, model["version"])
        trips = source.read(columns=request_columns(source.schema_arrow.names)).to_pandas()
        try:
            minutes, reasons = score_trips(pyfunc, encoders, trips)
        except (request.RequestError, MlflowException) as exc:
            message = getattr(exc, "message", str(exc))
            raise BadInputError(f"{month_file['path']}: {message}") from None
        table = predictions_table(trips, minutes, reasons)
        table.to_parquet(run.output(out), index=False, compression="zstd")
        scored = int(np.isfinite(minutes).sum())
        summary = {
            "rows": len(table),
            "scored": scored,
            "refused": len(table) - scored,
            "mean_predicted_minutes": round(float(np.nanmean(minutes)), 4),
        }
        run.log_metrics(summary)
    return summary | {"run_id": run.run_id, "out": out}


@flow(name="score-month")
def score_month(month: str, model_uri: str | None = None, out: str | None = None) -> dict:
    """Score one TLC month with a registered model (the champion by default)."""
    params = load_params("data", "model")
    data = params["data"]
    model_uri = model_uri or default_model_uri(params["model"].registered_name)
    out = out or DEFAULT_OUT.format(colour=data.colour, month=month)
    month_file = fetch_month(month, data.colour, data.trips_url)
    with tempfile.TemporaryDirectory(prefix="score-model-") as into:
        model = resolve_model(model_uri, into)
        result = score_and_record(month, model, month_file, out)
    result |= {
        "month": month,
        "source": month_file["source"],
        "model": f"{model['name']} v{model['version']} ({model_uri})",
    }
    get_run_logger().info("scored %s: %s", month, result)
    report = [
        f"# Scored {month}",
        "",
        f"- source: `{result['source']}` (md5 `{month_file['md5']}`)",
        f"- model: {result['model']}",
        f"- predictions: `{out}`: {result['scored']} trips scored, {result['refused']} "
        "refused (`refused_because` names the column)",
        f"- MLflow run: `{result['run_id']}`; trace: `python -m lineage {out}`",
    ]
    create_markdown_artifact("\n".join(report), key="score-report", description=f"Scored {month}")
    return result
