"""Conventions of the NYC TLC trip-record files: names, columns, and what a usable file holds."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from stages.common import BadInputError

# Green cabs stamp trips lpep_*, yellow cabs tpep_*; everything else we read is shared.
_TIMESTAMP_PREFIX = {"green": "lpep", "yellow": "tpep"}
ZONE_COLUMNS = ("LocationID", "Borough", "Zone", "service_zone")


def trip_file_name(colour: str, month: str) -> str:
    return f"{colour}_tripdata_{month}.parquet"


def trip_columns(colour: str) -> dict[str, str]:
    """Source column -> the name the pipeline uses for it."""
    prefix = _TIMESTAMP_PREFIX[colour]
    return {
        f"{prefix}_pickup_datetime": "pickup_datetime",
        f"{prefix}_dropoff_datetime": "dropoff_datetime",
        "PULocationID": "pickup_zone",
        "DOLocationID": "dropoff_zone",
        "trip_distance": "trip_distance",
    }


def _expected_kind(name: str) -> tuple[str, object]:
    if name.endswith("_datetime"):
        return "a timestamp", pa.types.is_timestamp
    if name.endswith("LocationID"):
        return "an integer", pa.types.is_integer
    return "a number", lambda t: pa.types.is_integer(t) or pa.types.is_floating(t)


def check_trip_schema(schema: pa.Schema, colour: str, source: str) -> None:
    """Raise BadInputError naming every missing or mistyped column of a trip file."""
    problems = []
    for column in trip_columns(colour):
        if column not in schema.names:
            problems.append(f"missing column {column!r}")
            continue
        kind, is_kind = _expected_kind(column)
        actual = schema.field(column).type
        if not is_kind(actual):
            problems.append(f"column {column!r} is {actual}, expected {kind}")
    if problems:
        other = {"green": "yellow", "yellow": "green"}[colour]
        hint = ""
        if f"{_TIMESTAMP_PREFIX[other]}_pickup_datetime" in schema.names:
            hint = f" (it looks like a {other} taxi file: set data.colour: {other})"
        raise BadInputError(
            f"{source}: not a TLC {colour} taxi trip file{hint}: " + "; ".join(problems)
        )


def check_trip_file(path: Path, colour: str, source: str) -> int:
    """Open, schema-check and fully decode the columns we use; return the number of trips."""
    try:
        parquet = pq.ParquetFile(path)
        check_trip_schema(parquet.schema_arrow, colour, source)
        # Decoding every row group catches damage that the footer alone does not show.
        table = parquet.read(columns=list(trip_columns(colour)))
    except (pa.ArrowException, OSError) as exc:
        raise BadInputError(f"{source}: not a readable parquet file: {exc}") from None
    if table.num_rows == 0:
        raise BadInputError(f"{source}: the file holds no trips (0 rows)")
    return table.num_rows


def check_zone_file(path: Path, source: str) -> int:
    """The zone lookup must have the TLC columns and one row per integer LocationID."""
    import pyarrow.csv as pacsv

    try:
        table = pacsv.read_csv(path)
    except (pa.ArrowException, OSError) as exc:
        raise BadInputError(f"{source}: not a readable CSV file: {exc}") from None
    missing = [c for c in ZONE_COLUMNS if c not in table.column_names]
    if missing:
        raise BadInputError(f"{source}: zone lookup lacks column(s) {', '.join(missing)}")
    ids = table.column("LocationID")
    if not pa.types.is_integer(ids.type) or ids.null_count:
        raise BadInputError(f"{source}: LocationID must be integers, found {ids.type}")
    if len(set(ids.to_pylist())) != table.num_rows or table.num_rows == 0:
        raise BadInputError(f"{source}: LocationID must be unique and non-empty")
    return table.num_rows
