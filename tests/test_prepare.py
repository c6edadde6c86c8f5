"""prepare.clean_trips on real sampled trips: rows dropped per rule, computed independently."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from stages.common import BadInputError, PrepareParams
from stages.prepare import CLEAN_COLUMNS, clean_file, clean_trips, duration_minutes, read_trips
from tests.conftest import project_section

PARAMS = project_section("prepare")


@pytest.fixture(scope="module")
def trips(small_tlc: Path) -> pa.Table:
    return read_trips(small_tlc / "green_tripdata_2025-01.parquet", "green")


@pytest.fixture(scope="module")
def january(trips: pa.Table) -> pd.DataFrame:
    """The same trips in pandas, for the checks written independently of the stage."""
    return trips.to_pandas()


def test_read_trips_uses_pipeline_names(trips, january):
    assert (
        trips.column_names
        == list(january.columns)
        == [
            "pickup_datetime",
            "dropoff_datetime",
            "pickup_zone",
            "dropoff_zone",
            "trip_distance",
        ]
    )
    assert len(january) > 3000


def test_drop_counts_add_up_and_match_plain_pandas(trips, january):
    clean, report = clean_trips(trips, "2025-01", PARAMS)
    dropped = report["dropped"]
    assert report["rows_in"] == len(january)
    assert report["rows_out"] == len(clean)
    assert report["rows_in"] - sum(dropped.values()) == report["rows_out"]

    # The same rules, first rule wins, written independently with plain pandas.
    t = january.copy()
    t["minutes"] = (t["dropoff_datetime"] - t["pickup_datetime"]).dt.total_seconds() / 60
    missing = t[["pickup_datetime", "pickup_zone", "dropoff_zone", "trip_distance", "minutes"]]
    missing = missing.isna().any(axis=1)
    t = t[~missing]
    outside = ~t["pickup_datetime"].between("2025-01-01", "2025-02-01", inclusive="left")
    t = t[~outside]
    bad_duration = (t["minutes"] < 1) | (t["minutes"] > 60)
    t = t[~bad_duration]
    not_positive = t["trip_distance"] <= 0
    t = t[~not_positive]
    too_long = t["trip_distance"] > 100
    t = t[~too_long]
    assert dropped == {
        "missing_values": int(missing.sum()),
        "pickup_outside_month": int(outside.sum()),
        "duration_out_of_range": int(bad_duration.sum()),
        "distance_not_positive": int(not_positive.sum()),
        "distance_too_long": int(too_long.sum()),
    }
    assert report["rows_out"] == len(t)
    assert dropped["duration_out_of_range"] > 0 and dropped["distance_not_positive"] > 0


def test_clean_output_is_within_the_rules(trips):
    clean = clean_trips(trips, "2025-01", PARAMS)[0].to_pandas()
    assert list(clean.columns) == CLEAN_COLUMNS
    assert clean["duration_minutes"].between(1, 60).all()
    assert (clean["trip_distance"] > 0).all() and (clean["trip_distance"] <= 100).all()
    assert clean["pickup_datetime"].dt.month.eq(1).all()
    assert str(clean["pickup_zone"].dtype) == "int32"
    assert not clean.isna().any().any()


def test_pickup_outside_month_on_the_real_january_quirk(trips, january):
    # The real January file holds trips picked up in December 2024 and February 2025.
    p = january["pickup_datetime"]
    stray = (p < "2025-01-01") | (p >= "2025-02-01")
    assert stray.sum() > 0
    _, report = clean_trips(trips, "2025-01", PARAMS)
    missing = january.isna().any(axis=1)
    assert report["dropped"]["pickup_outside_month"] == int((stray & ~missing).sum())
    # Read as February, nearly all of January falls outside the month instead.
    _, as_feb = clean_trips(trips, "2025-02", PARAMS)
    assert as_feb["rows_out"] == int(((p >= "2025-02-01") & (p < "2025-03-01")).sum()) - int(
        (
            ((p >= "2025-02-01") & (p < "2025-03-01"))
            & (
                missing
                | ~((january["dropoff_datetime"] - p).dt.total_seconds().div(60).between(1, 60))
                | (january["trip_distance"] <= 0)
                | (january["trip_distance"] > 100)
            )
        ).sum()
    )


def test_duration_thresholds_change_the_count(trips):
    narrow = PrepareParams(min_duration_minutes=5, max_duration_minutes=20, max_distance_miles=100)
    _, wide_report = clean_trips(trips, "2025-01", PARAMS)
    _, narrow_report = clean_trips(trips, "2025-01", narrow)
    assert (
        narrow_report["dropped"]["duration_out_of_range"]
        > wide_report["dropped"]["duration_out_of_range"]
    )


def test_month_where_every_trip_is_filtered_names_the_month(trips, january):
    # TLC distances are in hundredths of a mile: none is positive and at most 0.001.
    impossible = PrepareParams(
        min_duration_minutes=1, max_duration_minutes=60, max_distance_miles=0.001
    )
    with pytest.raises(BadInputError, match="month 2025-01: every one of") as info:
        clean_trips(trips, "2025-01", impossible)
    assert str(len(january)) in str(info.value)


def test_damaged_bytes_are_bad_input_naming_the_file(shared_tlc: Path, tmp_path: Path):
    """Bytes damaged in the middle of a real month (as a corrupted cache object restored by
    `dvc checkout` would be): refused naming the file, never an unexpected exception."""
    import random

    original = (shared_tlc / "green_tripdata_2025-01.parquet").read_bytes()
    refused_values = 0
    for seed in range(30):
        rnd = random.Random(seed)
        damaged = bytearray(original)
        start = rnd.randrange(4, len(damaged) - 20_000)
        for i in range(start, start + rnd.choice([8, 64, 512])):
            damaged[i] = rnd.randrange(256)
        path = tmp_path / "green_tripdata_2025-01.parquet"
        path.write_bytes(bytes(damaged))
        try:
            clean_file(path, "green", "2025-01", project_section("prepare"))
        except BadInputError as exc:
            assert str(path) in str(exc)
            refused_values += "out of range" in str(exc)
    assert refused_values > 0  # seeds whose damaged timestamps overflowed the duration


def test_clean_file_in_batches_equals_the_whole_file(small_tlc: Path, monkeypatch, trips, tmp_path):
    """Batches far smaller than the month: the same trips, in file order, and the same report
    as cleaning the whole table at once."""
    from stages import prepare

    path = small_tlc / "green_tripdata_2025-01.parquet"
    whole, whole_report = clean_trips(trips, "2025-01", PARAMS)
    monkeypatch.setattr(prepare, "CHUNK_ROWS", 997)
    batched, batched_report = clean_file(path, "green", "2025-01", PARAMS)
    assert batched.equals(whole)
    assert batched_report == whole_report
    # The stage's path: batch after batch into the clean file.
    out = tmp_path / "trips_2025-01.parquet"
    assert prepare.write_clean(path, out, "green", "2025-01", PARAMS) == whole_report
    pd.testing.assert_frame_equal(pd.read_parquet(out), whole.to_pandas())


def test_write_clean_of_a_month_with_nothing_left_writes_nothing(small_tlc: Path, tmp_path):
    from stages import prepare

    out = tmp_path / "trips_2024-06.parquet"
    with pytest.raises(BadInputError, match="every one of"):
        prepare.write_clean(
            small_tlc / "green_tripdata_2025-01.parquet", out, "green", "2024-06", PARAMS
        )
    assert not out.exists()  # the writer had started: every batch was empty


def test_duration_minutes_is_pandas_total_seconds_bit_for_bit(january):
    """The stage computes durations without pandas; they equal pandas' to the last bit."""
    pickup, dropoff = january["pickup_datetime"], january["dropoff_datetime"]
    ours = duration_minutes(pickup.to_numpy(), dropoff.to_numpy())
    theirs = ((dropoff - pickup).dt.total_seconds() / 60).to_numpy()
    assert ours.tobytes() == theirs.tobytes()


def test_duration_minutes_of_nat_is_nan_and_overflow_is_an_error():
    us = "datetime64[us]"
    pickup = np.array(["2025-01-01T00:00", "NaT"], dtype=us)
    dropoff = np.array(["2025-01-01T00:30", "2025-01-01T00:30"], dtype=us)
    assert duration_minutes(pickup, dropoff)[0] == 30.0
    assert np.isnan(duration_minutes(pickup, dropoff)[1])
    # Damaged bytes decode as timestamps whose difference leaves int64: as pandas, an error.
    far = np.array([np.iinfo(np.int64).max - 1], dtype=np.int64).view(us)
    near = np.array([-(10**18)], dtype=np.int64).view(us)
    with pytest.raises(OverflowError):
        duration_minutes(near, far)


def test_column_array_reads_as_pandas_does_nulls_and_offsets_included(small_tlc: Path):
    """column_array (from the buffers) against pyarrow's own to_numpy (through pandas), on the
    real month's columns, with nulls put in and read through a slice (an offset)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from stages.encoding import column_array

    table = pq.read_table(small_tlc / "green_tripdata_2025-01.parquet")
    every_7th = pa.array(np.arange(table.num_rows) % 7 == 0)
    for name in ["lpep_pickup_datetime", "PULocationID", "trip_distance", "passenger_count"]:
        real = table.column(name).combine_chunks()
        for column in (real, pc.if_else(every_7th, None, real)):
            for part in (column, column.slice(3, len(column) - 10)):
                ours, theirs = column_array(part), part.to_numpy(zero_copy_only=False)
                assert ours.dtype == theirs.dtype, name
                assert ours.tobytes() == theirs.tobytes(), name


def test_the_stage_path_does_not_import_pandas(small_tlc: Path, tmp_path: Path):
    """prepare's process never imports pandas (0.5-0.8 s of each prepare's start)."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    script = (
        "import sys; from pathlib import Path; from stages import prepare; "
        "from stages.common import load_params; "
        f"prepare.write_clean(Path({str(small_tlc / 'green_tripdata_2025-01.parquet')!r}), "
        f"Path({str(tmp_path / 'out.parquet')!r}), 'green', '2025-01', "
        "load_params('prepare')['prepare']); print(sorted(m for m in sys.modules if 'pandas' in m))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "[]"
    assert pq_rows(tmp_path / "out.parquet") > 0


def pq_rows(path: Path) -> int:
    import pyarrow.parquet as pq

    return pq.ParquetFile(path).metadata.num_rows
