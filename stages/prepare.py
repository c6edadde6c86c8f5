"""prepare: one raw month -> clean trips with duration_minutes, and rows dropped per rule.

The month is read, cleaned and written a batch at a time (write_clean): memory stays flat
however many trips the month has. The rules work on the batch's columns as numpy arrays,
nulls read as NaN and NaT the way pandas reads them; the stage does not import pandas, which
was 0.3-0.5 s of each prepare process's start (FINDINGS, issue 13 target 1).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from stage_runtime.tracking import stage_run
from stages.common import (
    CHUNK_ROWS,
    BadInputError,
    PrepareParams,
    check_month,
    fill_path,
    load_params,
    run_stage,
    stage_item,
    write_json,
)
from stages.encoding import arrow_array, column_array
from stages.tlc import check_trip_schema, trip_columns

log = logging.getLogger("stages.prepare")
CLEAN_COLUMNS = [
    "pickup_datetime",
    "pickup_zone",
    "dropoff_zone",
    "trip_distance",
    "duration_minutes",
]
ZONE_COLUMNS = ("pickup_zone", "dropoff_zone")
# Clock ticks per second of each numpy datetime unit a parquet timestamp can have.
_TICKS_PER_SECOND = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}


@contextlib.contextmanager
def _trip_file(path: Path, colour: str) -> Iterator[tuple[pq.ParquetFile, dict[str, str]]]:
    """The file, schema-checked, and its columns the pipeline uses (source -> its name); a
    file that cannot be read, then or while reading it in the block, is bad input naming it."""
    try:
        parquet = pq.ParquetFile(path)
        check_trip_schema(parquet.schema_arrow, colour, str(path))
        yield parquet, trip_columns(colour)
    except (OSError, ValueError) as exc:
        if isinstance(exc, BadInputError):
            raise
        raise BadInputError(f"{path}: not a readable parquet file: {exc}") from None


def read_trips(path: Path, colour: str) -> pa.Table:
    """The columns the pipeline uses, under its own names."""
    with _trip_file(path, colour) as (parquet, columns):
        table = parquet.read(columns=list(columns))
    return table.rename_columns([columns[c] for c in table.column_names])


def duration_minutes(pickup: np.ndarray, dropoff: np.ndarray) -> np.ndarray:
    """dropoff - pickup in minutes, NaN where either is NaT; computed as pandas'
    `(dropoff - pickup).dt.total_seconds() / 60` is (ticks / ticks per second / 60), and like
    it an OverflowError when a difference leaves int64 (damaged timestamps)."""
    common = np.promote_types(pickup.dtype, dropoff.dtype)
    start, end = pickup.astype(common).view(np.int64), dropoff.astype(common).view(np.int64)
    with np.errstate(over="ignore"):
        ticks = end - start
    nat = np.isnat(pickup) | np.isnat(dropoff)
    # a - b overflowed where a and b differ in sign and the result's sign is not a's.
    if np.any((((end ^ start) & (end ^ ticks)) < 0) & ~nat):
        raise OverflowError("Overflow in int64 subtraction of the trip timestamps")
    minutes = ticks / _TICKS_PER_SECOND[np.datetime_data(common)[0]] / 60.0
    minutes[nat] = np.nan
    return minutes


def trip_arrays(trips: pa.Table | pa.RecordBatch) -> dict[str, np.ndarray]:
    """The trips' columns as numpy arrays (nulls as NaN or NaT), duration_minutes added."""
    arrays = {name: column_array(trips.column(name)) for name in trips.column_names}
    arrays["duration_minutes"] = duration_minutes(
        arrays["pickup_datetime"], arrays["dropoff_datetime"]
    )
    return arrays


def _missing(values: np.ndarray) -> np.ndarray:
    if values.dtype.kind == "M":
        return np.isnat(values)
    if values.dtype.kind == "f":
        return np.isnan(values)
    return np.zeros(len(values), dtype=bool)  # an integer column read without nulls


def drop_rules(
    trips: Mapping[str, np.ndarray], month: str, params: PrepareParams
) -> dict[str, np.ndarray]:
    """Each cleaning rule as a boolean mask of the rows it rejects, in the order they apply
    (`trips`: trip_arrays)."""
    start = np.datetime64(f"{month}-01", "us")
    end = (start.astype("datetime64[M]") + 1).astype("datetime64[us]")
    pickup = trips["pickup_datetime"]
    duration = trips["duration_minutes"]
    distance = trips["trip_distance"]
    with np.errstate(invalid="ignore"):  # NaN compares False: the first rule has it already
        return {
            "missing_values": np.logical_or.reduce([_missing(trips[c]) for c in CLEAN_COLUMNS]),
            "pickup_outside_month": (pickup < start) | (pickup >= end),
            "duration_out_of_range": (duration < params.min_duration_minutes)
            | (duration > params.max_duration_minutes),
            "distance_not_positive": distance <= 0,
            "distance_too_long": distance > params.max_distance_miles,
        }


def _drop_rejected(
    trips: pa.Table | pa.RecordBatch, month: str, params: PrepareParams
) -> tuple[pa.Table, dict[str, int]]:
    """Add duration_minutes, drop rejected rows; rows dropped per rule (first rule wins)."""
    arrays = trip_arrays(trips)
    keep = np.ones(trips.num_rows, dtype=bool)
    dropped = {}
    for rule, rejected in drop_rules(arrays, month, params).items():
        dropped[rule] = int(np.count_nonzero(keep & rejected))
        keep &= ~rejected
    clean = {name: arrays[name][keep] for name in CLEAN_COLUMNS}
    for name in ZONE_COLUMNS:
        clean[name] = clean[name].astype(np.int32)
    return pa.Table.from_arrays(
        [arrow_array(clean[n]) for n in CLEAN_COLUMNS], CLEAN_COLUMNS
    ), dropped


def _report(month: str, rows_in: int, dropped: dict[str, int], rows_out: int) -> dict:
    if rows_out == 0:
        raise BadInputError(
            f"month {month}: every one of {rows_in} trips was filtered out "
            f"(dropped per rule: {dropped}); check the file and the prepare params"
        )
    return {"month": month, "rows_in": rows_in, "dropped": dropped, "rows_out": rows_out}


def clean_trips(trips: pa.Table, month: str, params: PrepareParams) -> tuple[pa.Table, dict]:
    """Add duration_minutes, drop rejected rows; report rows dropped per rule (first rule wins)."""
    clean, dropped = _drop_rejected(trips, month, params)
    return clean, _report(month, trips.num_rows, dropped, clean.num_rows)


def _trip_batches(path: Path, colour: str) -> Iterator[pa.RecordBatch]:
    """read_trips, CHUNK_ROWS trips at a time, in file order."""
    with _trip_file(path, colour) as (parquet, columns):
        for batch in parquet.iter_batches(batch_size=CHUNK_ROWS, columns=list(columns)):
            yield batch.rename_columns([columns[c] for c in batch.schema.names])


def _clean_batches(
    path: Path, colour: str, month: str, params: PrepareParams, report: dict
) -> Iterator[pa.Table]:
    """The file's clean trips, batch by batch in file order; `report` (clean_trips' report)
    is filled in once the last batch is out. Values that cannot be decoded or computed with
    (damaged bytes decode as timestamps centuries apart: OverflowError) are bad input naming
    the file."""
    rows_in, rows_out, dropped = 0, 0, {}
    try:
        for trips in _trip_batches(path, colour):
            clean, batch_dropped = _drop_rejected(trips, month, params)
            rows_in, rows_out = rows_in + trips.num_rows, rows_out + clean.num_rows
            for rule, count in batch_dropped.items():
                dropped[rule] = dropped.get(rule, 0) + count
            yield clean
    except BadInputError:
        raise
    except (OverflowError, ValueError, ArithmeticError) as exc:
        raise BadInputError(
            f"{path}: values out of range or undecodable ({type(exc).__name__}: {exc}); "
            "the file looks damaged: fetch it again (dvc repro --force ingest@" + month + ")"
        ) from None
    report.update(_report(month, rows_in, dropped, rows_out))


def clean_file(path: Path, colour: str, month: str, params: PrepareParams) -> tuple[pa.Table, dict]:
    """clean_trips over the file, read and cleaned a batch at a time, the clean trips in
    memory."""
    report: dict = {}
    parts = list(_clean_batches(path, colour, month, params, report))
    return pa.concat_tables(parts), report


def write_clean(path: Path, out: Path, colour: str, month: str, params: PrepareParams) -> dict:
    """clean_trips over the file into the parquet file `out`, a batch at a time: neither the
    month's raw trips nor its clean ones are ever whole in memory, so memory stays flat
    however large the month (FINDINGS, issue 13 target 4). Returns the report. A month
    refused after some batches were written leaves no file behind."""
    report: dict = {}
    writer = None
    try:
        for clean in _clean_batches(path, colour, month, params, report):
            if writer is None:
                writer = pq.ParquetWriter(out, clean.schema, compression="zstd")
            writer.write_table(clean)
    except BaseException:
        if writer is not None:
            writer.close()
            out.unlink(missing_ok=True)
        raise
    writer.close()
    return report


def main(argv: list[str] | None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--month", help="YYYY-MM (default: the item of the DVC stage)")
    # Path templates: {colour} and {month} are filled in from validated params.
    parser.add_argument("--raw", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--quality", required=True, help="data-quality metrics JSON")
    args = parser.parse_args(argv)

    params = load_params("data", "prepare")
    month = check_month(stage_item(args.month))
    colour = params["data"].colour
    raw, out, quality = (
        fill_path(t, colour=colour, month=month) for t in (args.raw, args.out, args.quality)
    )
    with stage_run(f"prepare@{month}", params, inputs=[raw]) as run:
        report = write_clean(raw, run.output(out), colour, month, params["prepare"])
        write_json(run.output(quality), report)
        run.log_metrics(report)
    log.info(
        "%s: %d -> %d trips, dropped %s",
        month,
        report["rows_in"],
        report["rows_out"],
        report["dropped"],
    )


if __name__ == "__main__":
    run_stage("prepare", main)
