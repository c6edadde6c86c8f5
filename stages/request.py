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

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from stages.common import BadInputError
from stages.encoding import Table

if TYPE_CHECKING:  # imported where a request is read: features and train only name its columns
    import pandas as pd

ZONE_COLUMNS = {"PULocationID": "pickup_zone", "DOLocationID": "dropoff_zone"}
DISTANCE_COLUMN = "trip_distance"
PICKUP_COLUMNS = ("lpep_pickup_datetime", "tpep_pickup_datetime", "pickup_datetime")
# The cleaned-trip columns a request becomes (stages.prepare.CLEAN_COLUMNS without the target).
TRIP_COLUMNS = ("pickup_datetime", "pickup_zone", "dropoff_zone", "trip_distance")
UNSEEN_ZONE = 0  # not a TLC LocationID: encodes as the unseen-zone code


class RequestError(BadInputError):
    """A scoring request the model cannot take: the message names the column."""


def signature_dict() -> dict[str, Any]:
    """The request's MLflow signature in `ModelSignature.to_dict()` form, built without MLflow
    (train logs the model with stage_runtime.pyfunc_folder): zone ids and distance required, one of
    the pickup timestamps (optional each: which one depends on the taxi colour) in, minutes out.
    tests/test_request.py holds it equal to the signature MLflow's own types build."""
    inputs = (
        [{"type": "long", "name": column, "required": True} for column in ZONE_COLUMNS]
        + [{"type": "double", "name": DISTANCE_COLUMN, "required": True}]
        + [{"type": "datetime", "name": column, "required": False} for column in PICKUP_COLUMNS]
    )
    outputs = [{"type": "tensor", "tensor-spec": {"dtype": "float64", "shape": [-1]}}]
    return {"inputs": json.dumps(inputs), "outputs": json.dumps(outputs), "params": None}


def signature() -> Any:
    """signature_dict() as MLflow's ModelSignature."""
    from mlflow.models import ModelSignature

    return ModelSignature.from_dict(signature_dict())


def input_schema() -> Any:
    """The MLflow schema requests are checked against (signature_dict's inputs)."""
    return signature().inputs


def example_request(clean: Table, rows: int) -> dict[str, np.ndarray]:
    """The first `rows` cleaned trips as a request (the neutral pickup column)."""

    def head(column: str, dtype: Any) -> np.ndarray:
        return np.asarray(clean[column])[:rows].astype(dtype)

    return {
        "PULocationID": head("pickup_zone", np.int64),
        "DOLocationID": head("dropoff_zone", np.int64),
        "trip_distance": head("trip_distance", np.float64),
        "pickup_datetime": head("pickup_datetime", "datetime64[us]"),
    }


def _pickup_column(request: pd.DataFrame) -> str:
    given = [c for c in PICKUP_COLUMNS if c in request.columns]
    if len(given) != 1:
        found = f"found {', '.join(given)}" if given else "found none"
        raise RequestError(
            f"the pickup time must be in exactly one column of {', '.join(PICKUP_COLUMNS)} "
            f"({found})"
        )
    return given[0]


@dataclass(frozen=True)
class RowProblem:
    """Rows of a request the model cannot score, for one reason."""

    column: str
    rows: np.ndarray  # boolean mask over the request's rows
    message: str  # what is wrong with them, naming the column

    def describe(self) -> str:
        first = int(np.flatnonzero(self.rows)[0])
        return self.message.format(first=first, count=int(self.rows.sum()))


def _zone_ids(values: pd.Series, column: str, nulls: np.ndarray) -> np.ndarray:
    """Integer zone ids (nulls as UNSEEN_ZONE, refused separately); RequestError otherwise."""
    import pandas as pd

    whole = pd.api.types.is_integer_dtype(values) or bool(nulls.all())
    if not whole and pd.api.types.is_float_dtype(values) and nulls.any():
        present = values.to_numpy(np.float64)[~nulls]  # a null turns an int column to float
        whole = bool(np.all(np.isfinite(present) & (present == np.round(present))))
    if not whole:
        raise RequestError(f"column {column!r}: expected integer TLC zone ids, got {values.dtype}")
    return values.fillna(UNSEEN_ZONE).to_numpy(np.int64)


def _pickup_times(values: pd.Series, column: str) -> np.ndarray:
    import pandas as pd

    try:
        if not pd.api.types.is_datetime64_any_dtype(values):
            values = pd.to_datetime(values, format="ISO8601")
    except (ValueError, TypeError, OverflowError) as exc:
        raise RequestError(
            f"column {column!r}: expected timestamps like 2025-02-01T08:30:00 ({exc})"
        ) from None
    if getattr(values.dt, "tz", None) is not None:  # TLC times are New York wall-clock times
        values = values.dt.tz_convert("America/New_York").dt.tz_localize(None)
    return values.to_numpy("datetime64[us]")


def read_request(request: pd.DataFrame, encoders: dict) -> tuple[pd.DataFrame, list[RowProblem]]:
    """Every row of the request as a cleaned trip (TRIP_COLUMNS), and the rows that cannot be
    scored (a null, a distance outside the model's range). A problem of a whole column (one
    missing, a wrong type, no pickup column) raises RequestError."""
    import pandas as pd

    if not isinstance(request, pd.DataFrame):
        raise RequestError(f"expected a table of trips, got {type(request).__name__}")
    missing = [c for c in (*ZONE_COLUMNS, DISTANCE_COLUMN) if c not in request.columns]
    if missing:
        raise RequestError(f"missing column(s) {', '.join(map(repr, missing))}")
    pickup_column = _pickup_column(request)
    problems: list[RowProblem] = []

    def nulls_of(column: str) -> np.ndarray:
        nulls = request[column].isna().to_numpy()
        if nulls.any():
            problems.append(
                RowProblem(
                    column,
                    nulls,
                    f"column {column!r}: {{count}} null value(s) (first at row {{first}}); "
                    "every trip needs a value",
                )
            )
        return nulls

    trips = {}
    zones = np.asarray(encoders["zones"], dtype=np.int64)
    for column, name in ZONE_COLUMNS.items():
        ids = _zone_ids(request[column], column, nulls_of(column))
        trips[name] = np.where(np.isin(ids, zones), ids, UNSEEN_ZONE)

    values = request[DISTANCE_COLUMN]
    if not pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
        raise RequestError(
            f"column {DISTANCE_COLUMN!r}: expected miles as numbers, got {values.dtype}"
        )
    nulls = nulls_of(DISTANCE_COLUMN)
    distance = values.to_numpy(np.float64)
    limit = float(encoders["max_distance_miles"])
    outside = ~nulls & ~((distance > 0) & (distance <= limit))  # inf is outside too
    if outside.any():
        first = int(np.flatnonzero(outside)[0])
        problems.append(
            RowProblem(
                DISTANCE_COLUMN,
                outside,
                f"column {DISTANCE_COLUMN!r}: {distance[first]:g} miles at row {{first}} "
                f"({{count}} such row(s)); expected more than 0 and at most {limit:g} miles, "
                "the range the model was trained on",
            )
        )
    trips[DISTANCE_COLUMN] = distance

    nulls_of(pickup_column)
    trips["pickup_datetime"] = _pickup_times(request[pickup_column], pickup_column)
    return pd.DataFrame(trips, columns=list(TRIP_COLUMNS)), problems


def trips_from_request(request: pd.DataFrame, encoders: dict) -> pd.DataFrame:
    """The request as cleaned trips (TRIP_COLUMNS), or RequestError naming the column of the
    first problem: every row must be scorable."""
    trips, problems = read_request(request, encoders)
    if problems:
        raise RequestError(problems[0].describe())
    return trips


def refused_rows(problems: list[RowProblem], rows: int) -> np.ndarray:
    """The rows of a request that any problem refuses (a boolean mask)."""
    refused = np.zeros(rows, dtype=bool)
    for problem in problems:
        refused |= problem.rows
    return refused
