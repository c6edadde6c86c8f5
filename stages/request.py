"""The request a registered model takes: raw TLC trips, and their checks.

The one owner of the request format. A caller has trip records as the TLC publishes them, so
the model takes their columns: `PULocationID`, `DOLocationID`, `trip_distance` and the pickup
time as `lpep_pickup_datetime` (green), `tpep_pickup_datetime` (yellow) or `pickup_datetime`.
Other columns are ignored. A request is checked column by column (RequestError names the
column and what was expected) and renamed to the cleaned-trip columns; the model then encodes
them with the features stage's own code (stages.model.predict_trips).

Documented fallback: a zone id the model's zone lookup does not have (e.g. 0, 999, -5) scores
as the unseen-zone code, like a zone that had no training trips.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from stages.common import BadInputError

ZONE_COLUMNS = {"PULocationID": "pickup_zone", "DOLocationID": "dropoff_zone"}
DISTANCE_COLUMN = "trip_distance"
PICKUP_COLUMNS = ("lpep_pickup_datetime", "tpep_pickup_datetime", "pickup_datetime")
# The cleaned-trip columns a request becomes (stages.prepare.CLEAN_COLUMNS without the target).
TRIP_COLUMNS = ("pickup_datetime", "pickup_zone", "dropoff_zone", "trip_distance")
UNSEEN_ZONE = 0  # not a TLC LocationID: encodes as the unseen-zone code


class RequestError(BadInputError):
    """A scoring request the model cannot take: the message names the column."""


def input_schema() -> Any:
    """The MLflow schema of a request: zone ids and distance required, one of the pickup
    timestamps (optional each: which one depends on the taxi colour)."""
    from mlflow.types import ColSpec, Schema

    return Schema(
        [ColSpec("long", column) for column in ZONE_COLUMNS]
        + [ColSpec("double", DISTANCE_COLUMN)]
        + [ColSpec("datetime", column, required=False) for column in PICKUP_COLUMNS]
    )


def signature() -> Any:
    """Raw trips in, minutes out."""
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    return ModelSignature(input_schema(), Schema([TensorSpec(np.dtype("float64"), (-1,))]))


def example_request(clean: pd.DataFrame, rows: int) -> pd.DataFrame:
    """The first `rows` cleaned trips as a request (the neutral pickup column)."""
    head = clean.head(rows)
    return pd.DataFrame(
        {
            "PULocationID": head["pickup_zone"].to_numpy(np.int64),
            "DOLocationID": head["dropoff_zone"].to_numpy(np.int64),
            "trip_distance": head["trip_distance"].to_numpy(np.float64),
            "pickup_datetime": head["pickup_datetime"].to_numpy("datetime64[us]"),
        }
    )


def _pickup_column(request: pd.DataFrame) -> str:
    given = [c for c in PICKUP_COLUMNS if c in request.columns]
    if len(given) != 1:
        found = f"found {', '.join(given)}" if given else "found none"
        raise RequestError(
            f"the pickup time must be in exactly one column of {', '.join(PICKUP_COLUMNS)} "
            f"({found})"
        )
    return given[0]


def _no_nulls(values: pd.Series, column: str) -> None:
    missing = values.isna().to_numpy()
    if missing.any():
        rows = np.flatnonzero(missing)
        raise RequestError(
            f"column {column!r}: {len(rows)} null value(s) (first at row {rows[0]}); "
            "every trip needs a value"
        )


def trips_from_request(request: pd.DataFrame, encoders: dict) -> pd.DataFrame:
    """The request as cleaned trips (TRIP_COLUMNS), or RequestError naming the column."""
    if not isinstance(request, pd.DataFrame):
        raise RequestError(f"expected a table of trips, got {type(request).__name__}")
    missing = [c for c in (*ZONE_COLUMNS, DISTANCE_COLUMN) if c not in request.columns]
    if missing:
        raise RequestError(f"missing column(s) {', '.join(map(repr, missing))}")
    pickup_column = _pickup_column(request)
    trips = {}
    for column, name in ZONE_COLUMNS.items():
        _no_nulls(request[column], column)
        if not pd.api.types.is_integer_dtype(request[column]):
            raise RequestError(
                f"column {column!r}: expected integer TLC zone ids, got {request[column].dtype}"
            )
        ids = request[column].to_numpy(np.int64)
        known = np.isin(ids, np.asarray(encoders["zones"], dtype=np.int64))
        trips[name] = np.where(known, ids, UNSEEN_ZONE)

    _no_nulls(request[DISTANCE_COLUMN], DISTANCE_COLUMN)
    if not pd.api.types.is_numeric_dtype(request[DISTANCE_COLUMN]) or pd.api.types.is_bool_dtype(
        request[DISTANCE_COLUMN]
    ):
        raise RequestError(
            f"column {DISTANCE_COLUMN!r}: expected miles as numbers, "
            f"got {request[DISTANCE_COLUMN].dtype}"
        )
    distance = request[DISTANCE_COLUMN].to_numpy(np.float64)
    limit = float(encoders["max_distance_miles"])
    outside = ~((distance > 0) & (distance <= limit))  # NaN-safe: inf and nan are outside
    if outside.any():
        row = int(np.flatnonzero(outside)[0])
        raise RequestError(
            f"column {DISTANCE_COLUMN!r}: {distance[row]:g} miles at row {row} "
            f"({int(outside.sum())} such row(s)); expected more than 0 and at most {limit:g} "
            "miles, the range the model was trained on"
        )
    trips[DISTANCE_COLUMN] = distance

    _no_nulls(request[pickup_column], pickup_column)
    try:
        pickup = request[pickup_column]
        if not pd.api.types.is_datetime64_any_dtype(pickup):
            pickup = pd.to_datetime(pickup, format="ISO8601")
    except (ValueError, TypeError, OverflowError) as exc:
        raise RequestError(
            f"column {pickup_column!r}: expected timestamps like 2025-02-01T08:30:00 ({exc})"
        ) from None
    if getattr(pickup.dt, "tz", None) is not None:  # TLC times are New York wall-clock times
        pickup = pickup.dt.tz_convert("America/New_York").dt.tz_localize(None)
    trips["pickup_datetime"] = pickup.to_numpy()
    return pd.DataFrame(trips, columns=list(TRIP_COLUMNS))
