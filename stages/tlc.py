"""Conventions of the NYC TLC trip-record files: names, columns, and what a usable file holds."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from stages.common import BadInputError

# pyarrow is imported where a file is read: the flow and timeline use this module's names and
# addresses in every run, and pyarrow's import (0.2 s) is most of theirs.
if TYPE_CHECKING:
    import pyarrow as pa

# Green cabs stamp trips lpep_*, yellow cabs tpep_*; everything else we read is shared.
_TIMESTAMP_PREFIX = {"green": "lpep", "yellow": "tpep"}
ZONE_COLUMNS = ("LocationID", "Borough", "Zone", "service_zone")


# A local directory (a mirror holding the files by their TLC names) or another base URL that
# replaces params.yaml's TLC addresses. Where the bytes come from is not a param: the same file
# from either source is the same data.
SOURCE_ENV = "TLC_SOURCE"
# The headers that identify a file served over HTTP: what changes when the TLC republishes it.
IDENTITY_HEADERS = ("ETag", "Last-Modified", "Content-Length")


def trip_file_name(colour: str, month: str) -> str:
    return f"{colour}_tripdata_{month}.parquet"


def resolve_source(default_url: str, file_name: str, override: str | None) -> str:
    """The address of `file_name`: under the override when given, else the params URL."""
    if not override:
        return default_url
    if override.startswith(("http://", "https://")):
        return f"{override.rstrip('/')}/{file_name}"
    return str(Path(override.removeprefix("file://")).expanduser().resolve() / file_name)


def trip_address(
    colour: str, trips_url: str, month: str, env: Mapping[str, str] = os.environ
) -> str:
    """Where a month's trip file is read from: params.yaml's TLC address, or TLC_SOURCE."""
    name = trip_file_name(colour, month)
    return resolve_source(f"{trips_url.rstrip('/')}/{name}", name, env.get(SOURCE_ENV))


def http_identity(headers: Mapping[str, str]) -> str:
    """A file's identity from the headers of a GET or HEAD of it ("" when it sent none)."""
    lowered = {k.lower(): v for k, v in headers.items()}
    return "; ".join(f"{h}: {lowered[h.lower()]}" for h in IDENTITY_HEADERS if h.lower() in lowered)


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
    import pyarrow as pa

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
    import pyarrow as pa
    import pyarrow.parquet as pq

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
    import pyarrow as pa
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
