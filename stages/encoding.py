"""The features' encoding: trips -> the integer codes and numbers every model reads.

One implementation for the features stage (training, validation and test months) and for the
registered model scoring raw trips (stages.request): a trip is encoded the same way wherever it
is scored. Vocabularies come from the encoders file the features stage writes.

The one owner of the table the stages pass on: columns by name, each a 1-d numpy array (a
`Table`), read and written as parquet with pyarrow. The stages that train and evaluate never
import pandas for it (0.3 s of every such process; FINDINGS, issue 13 target 1). Encoding and
the models read a table only by column name (`table[name]`, `name in table`, `n_rows`), so a
pandas DataFrame (a request the served model receives, a notebook's frame) is a table too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from stages.common import CHUNK_ROWS, BadInputError, atomic_path

# Column name -> 1-d array, all of one length: a dict of numpy arrays, or a pandas DataFrame.
Table = Mapping[str, Any]

TARGET = "duration_minutes"
# pickup * PAIR_BASE + dropoff: a pair key that sorts and prints as the two zone ids.
PAIR_BASE = 1000
UNKNOWN = 0  # code 0 of every vocabulary: not seen in the training months
# The feature table's columns (before the target) and their types.
FEATURE_DTYPES = {
    "pair_code": np.int32,
    "pickup_zone_code": np.int16,
    "dropoff_zone_code": np.int16,
    "pickup_borough_code": np.int8,
    "dropoff_borough_code": np.int8,
    "hour": np.int8,
    "weekday": np.int8,
    "trip_distance": np.float64,
}
# A feature table as train and evaluate read it: the features, then the target.
FEATURE_COLUMNS = (*FEATURE_DTYPES, TARGET)


# Vocabularies of non-negative values below this are looked up in a dense table (TLC zone ids
# and pair keys: under 2**18); others by binary search.
DENSE_LIMIT = 1 << 22


def dense_range(values: np.ndarray) -> bool:
    """Whether every value is a small non-negative integer: a dense table (or np.bincount)
    indexed by value beats sorting or binary search."""
    return len(values) > 0 and int(values.min()) >= 0 and int(values.max()) < DENSE_LIMIT


def _codes(values: np.ndarray, vocabulary: np.ndarray) -> np.ndarray:
    """1-based position of each value in the sorted vocabulary, UNKNOWN where absent.

    Small vocabularies are a table indexed by value: one gather per trip instead of a binary
    search (at 2.85M trips 0.03 s instead of 0.18 s for the pairs).
    """
    if len(vocabulary) == 0:
        return np.zeros(len(values), dtype=np.int32)
    if not dense_range(vocabulary):
        pos = np.searchsorted(vocabulary, values)
        found = vocabulary[np.minimum(pos, len(vocabulary) - 1)] == values
        return np.where(found, pos + 1, UNKNOWN).astype(np.int32)
    top = int(vocabulary[-1])
    # The last slot is UNKNOWN; values outside [0, top] are clipped onto it (-1 is that slot).
    table = np.zeros(top + 2, dtype=np.int32)
    table[vocabulary] = np.arange(1, len(vocabulary) + 1, dtype=np.int32)
    return table[np.clip(values, -1, top + 1)]


def n_rows(table: Table) -> int:
    """The number of rows of a table (the length of its first column)."""
    return len(table[next(iter(table))])


def column_array(column: Any) -> np.ndarray:
    """A numeric or timestamp column as numpy, nulls as NaN or NaT (integers with nulls become
    floats), as pandas reads it; taken from the column's buffers, because pyarrow's to_numpy
    of any array that is not zero-copy goes through pandas, whose import is 0.5-0.8 s."""
    import pyarrow as pa

    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    kind = column.type
    if not _numbers_or_times(kind):
        raise TypeError(f"column_array: {kind} is neither a number nor a timestamp")
    if pa.types.is_timestamp(kind):
        dtype, stored = np.dtype(f"datetime64[{kind.unit}]"), np.dtype(np.int64)
    elif pa.types.is_floating(kind):
        dtype = stored = np.dtype(f"f{kind.bit_width // 8}")
    else:
        sign = "i" if pa.types.is_signed_integer(kind) else "u"
        dtype = stored = np.dtype(f"{sign}{kind.bit_width // 8}")
    validity, data = column.buffers()[:2]
    values = np.frombuffer(
        data, dtype=stored, count=len(column), offset=column.offset * stored.itemsize
    )
    values = values.view(dtype)
    if not column.null_count:
        return values
    bits = np.unpackbits(np.frombuffer(validity, dtype=np.uint8), bitorder="little")
    null = ~bits[column.offset : column.offset + len(column)].astype(bool)
    values = values.astype(np.float64) if dtype.kind in "iu" else values.copy()
    values[null] = np.datetime64("NaT") if dtype.kind == "M" else np.nan
    return values


def arrow_array(values: np.ndarray) -> Any:
    """A numeric or datetime numpy array without missing values as an arrow array over the same
    memory (pa.array() would import pandas, to check whether it was given pandas objects)."""
    import pyarrow as pa

    data = np.ascontiguousarray(values)
    buffer = pa.py_buffer(data.view(np.int64) if data.dtype.kind == "M" else data)
    return pa.Array.from_buffers(pa.from_numpy_dtype(data.dtype), len(data), [None, buffer])


def read_table(path: Path, columns: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """A parquet file's columns (all, or `columns`, each required) as numpy arrays
    (column_array: nulls as NaN or NaT); BadInputError naming the file, and the column, when
    it is not a parquet file, lacks a column or has one that is not numbers or times."""
    parquet = _checked_parquet(path, columns)
    try:
        table = parquet.read(columns=None if columns is None else list(columns))
    except (OSError, ValueError) as exc:
        raise BadInputError(_not_parquet(path, exc)) from None
    return {name: column_array(table.column(name)) for name in table.column_names}


def count_rows(path: Path, columns: Sequence[str]) -> int:
    """The rows of a parquet file, from its footer (no column is read), after the checks
    read_table makes of `columns`: for a process that hands the file to others to read."""
    return _checked_parquet(path, columns).metadata.num_rows


def _checked_parquet(path: Path, columns: Sequence[str] | None) -> Any:
    """The file's pq.ParquetFile, whose schema has every one of `columns` (all of its columns
    when None) as numbers or times; BadInputError naming the file and column otherwise."""
    import pyarrow.parquet as pq

    try:
        # ParquetFile, not pq.read_table: that goes through pyarrow.dataset, which imports pandas.
        parquet = pq.ParquetFile(path)
    except (OSError, ValueError) as exc:
        raise BadInputError(_not_parquet(path, exc)) from None
    schema = parquet.schema_arrow
    missing = [c for c in columns or () if c not in schema.names]
    if missing:
        raise BadInputError(f"{path}: no column(s) {', '.join(missing)}")
    for name in schema.names if columns is None else columns:
        kind = schema.field(name).type
        if not _numbers_or_times(kind):
            raise BadInputError(
                f"{path}: column {name}: expected numbers or timestamps, got {kind}"
            )
    return parquet


def _numbers_or_times(kind: Any) -> bool:
    """The arrow types column_array reads."""
    import pyarrow as pa

    return pa.types.is_timestamp(kind) or pa.types.is_floating(kind) or pa.types.is_integer(kind)


def _not_parquet(path: Path, exc: BaseException) -> str:
    return f"{path}: not a readable parquet file: {exc}"


def concat_tables(tables: Sequence[Table]) -> dict[str, np.ndarray]:
    """Tables of the same columns, one after another (one table: its columns, not a copy)."""
    if len(tables) == 1:
        return {name: np.asarray(column) for name, column in tables[0].items()}
    return {name: np.concatenate([np.asarray(t[name]) for t in tables]) for name in tables[0]}


def write_table(table: Table, path: Path) -> None:
    """A table as one parquet file (zstd), written atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    names = list(table)
    arrow = pa.Table.from_arrays([arrow_array(np.asarray(table[n])) for n in names], names)
    with atomic_path(path) as tmp:
        pq.write_table(arrow, tmp, compression="zstd")


def _hour_and_weekday(times: Any) -> tuple[np.ndarray, np.ndarray]:
    """Hour of day and day of week (Monday 0) of each pickup, as pandas' `.dt` gives them."""
    if not isinstance(times.dtype, np.dtype):  # a time-zone aware Series: pandas' local fields
        return times.dt.hour.to_numpy(np.int8), times.dt.day_of_week.to_numpy(np.int8)
    stamps = np.asarray(times).astype("datetime64[us]", copy=False)
    if np.isnat(stamps).any():
        raise ValueError("pickup_datetime: a missing pickup time cannot be encoded")
    hours = stamps.view(np.int64) // 3_600_000_000
    # 1970-01-01, hour 0 of the epoch, was a Thursday (3 with Monday as 0).
    return (hours % 24).astype(np.int8), ((hours // 24 + 3) % 7).astype(np.int8)


def encode(trips: Table, encoders: dict) -> dict[str, np.ndarray]:
    """Integer codes and numeric features, one row per trip; the target, when `trips` has it
    (training and evaluation), stays as it is.

    Trips are encoded CHUNK_ROWS at a time into the finished columns, so the temporaries (zone
    ids, pair keys) stay small and reused however many trips there are."""
    pair_vocab = np.array(
        [int(a) * PAIR_BASE + int(b) for a, b in (p.split("-") for p in encoders["pairs"])],
        dtype=np.int64,
    )
    zone_vocab = np.asarray(encoders["zones"], dtype=np.int64)
    borough_vocab = np.asarray(encoders["boroughs"], dtype=object)
    # zone code -> borough code, with UNKNOWN mapped to UNKNOWN
    zone_to_borough = np.concatenate(
        [[UNKNOWN], np.searchsorted(borough_vocab, np.asarray(encoders["zone_borough"])) + 1]
    ).astype(np.int8)

    n = n_rows(trips)
    columns = {name: np.empty(n, dtype=dtype) for name, dtype in FEATURE_DTYPES.items()}
    pickup_all, dropoff_all = np.asarray(trips["pickup_zone"]), np.asarray(trips["dropoff_zone"])
    distance_all = np.asarray(trips["trip_distance"])
    times = trips["pickup_datetime"]
    if isinstance(times.dtype, np.dtype):  # numpy times are encoded a chunk at a time
        times = np.asarray(times)
    else:
        columns["hour"][:], columns["weekday"][:] = _hour_and_weekday(times)
    for lo in range(0, n, CHUNK_ROWS):
        part = slice(lo, lo + CHUNK_ROWS)
        pickup = pickup_all[part].astype(np.int64, copy=False)
        dropoff = dropoff_all[part].astype(np.int64, copy=False)
        pickup_code = _codes(pickup, zone_vocab)
        dropoff_code = _codes(dropoff, zone_vocab)
        columns["pair_code"][part] = _codes(pickup * PAIR_BASE + dropoff, pair_vocab)
        columns["pickup_zone_code"][part] = pickup_code
        columns["dropoff_zone_code"][part] = dropoff_code
        columns["pickup_borough_code"][part] = zone_to_borough[pickup_code]
        columns["dropoff_borough_code"][part] = zone_to_borough[dropoff_code]
        if isinstance(times, np.ndarray):
            hour, weekday = _hour_and_weekday(times[part])
            columns["hour"][part], columns["weekday"][part] = hour, weekday
        np.minimum(
            distance_all[part].astype(np.float64, copy=False),
            encoders["clip_distance_miles"],
            out=columns["trip_distance"][part],
        )
    if TARGET in trips:
        columns[TARGET] = np.array(trips[TARGET], dtype=np.float64)
    return columns
