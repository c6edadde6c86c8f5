"""ingest and the TLC file checks (stages/ingest.py, stages/tlc.py) on real sampled months."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from stages.common import BadInputError
from stages.ingest import check_published_sha256, fetch, resolve_source
from stages.tlc import check_trip_file, check_zone_file, trip_file_name

JAN = trip_file_name("green", "2025-01")
URL = "https://d37ci6vzurychx.cloudfront.net/trip-data"


@pytest.fixture
def sample(small_tlc: Path) -> pa.Table:
    return pq.read_table(small_tlc / JAN)


def write(table: pa.Table, path: Path) -> Path:
    pq.write_table(table, path)
    return path


def refused(path: Path, colour: str = "green") -> str:
    with pytest.raises(BadInputError) as info:
        check_trip_file(path, colour, str(path))
    assert str(path) in str(info.value)
    return str(info.value)


def test_resolve_source_without_override_is_the_params_url():
    assert resolve_source(f"{URL}/{JAN}", JAN, None) == f"{URL}/{JAN}"
    assert resolve_source(f"{URL}/{JAN}", JAN, "") == f"{URL}/{JAN}"


def test_resolve_source_directory_and_url(tmp_path):
    assert resolve_source(f"{URL}/{JAN}", JAN, str(tmp_path)) == str(tmp_path / JAN)
    assert resolve_source(f"{URL}/{JAN}", JAN, f"file://{tmp_path}") == str(tmp_path / JAN)
    mirror = "http://mirror.example.invalid/tlc/"
    assert resolve_source(f"{URL}/{JAN}", JAN, mirror) == f"{mirror}{JAN}"


def test_fetch_from_local_dir_copies_bytes(shared_tlc, tmp_path):
    dest = tmp_path / JAN
    fetch(str(shared_tlc / JAN), dest)
    assert dest.read_bytes() == (shared_tlc / JAN).read_bytes()


def test_fetch_missing_local_file_names_it(tmp_path):
    with pytest.raises(BadInputError, match="green_tripdata_2031-01.parquet"):
        fetch(str(tmp_path / "green_tripdata_2031-01.parquet"), tmp_path / "out.parquet")


def test_published_sha256_of_the_real_mirror_matches(shared_tlc, tmp_path):
    dest = tmp_path / JAN
    shutil.copyfile(shared_tlc / JAN, dest)
    check_published_sha256(str(shared_tlc / JAN), dest)  # the real SHA256SUMS lists it


def test_published_sha256_mismatch_is_refused(small_tlc, tmp_path):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    shutil.copyfile(small_tlc / JAN, mirror / JAN)
    wrong = hashlib.sha256(b"other bytes").hexdigest()
    (mirror / "SHA256SUMS").write_text(f"{wrong} *{JAN}\n")
    with pytest.raises(BadInputError, match="sha256") as info:
        check_published_sha256(str(mirror / JAN), mirror / JAN)
    assert JAN in str(info.value) and wrong in str(info.value)


def test_real_sample_passes_and_counts_rows(small_tlc, sample):
    assert check_trip_file(small_tlc / JAN, "green", JAN) == sample.num_rows


def test_truncated_parquet_is_refused(small_tlc, tmp_path):
    path = tmp_path / JAN
    data = (small_tlc / JAN).read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert "not a readable parquet file" in refused(path)


def test_non_parquet_file_is_refused(shared_tlc, tmp_path):
    path = tmp_path / JAN
    shutil.copyfile(shared_tlc / "taxi_zone_lookup.csv", path)
    assert "not a readable parquet file" in refused(path)


def test_zero_byte_file_is_refused(tmp_path):
    path = tmp_path / JAN
    path.touch()
    assert "not a readable parquet file" in refused(path)


def test_missing_column_is_named(sample, tmp_path):
    path = write(sample.drop_columns(["DOLocationID"]), tmp_path / JAN)
    assert "missing column 'DOLocationID'" in refused(path)


def test_renamed_column_is_named(sample, tmp_path):
    names = ["distance" if n == "trip_distance" else n for n in sample.column_names]
    path = write(sample.rename_columns(names), tmp_path / JAN)
    assert "missing column 'trip_distance'" in refused(path)


def test_yellow_style_file_read_as_green_names_the_colour(sample, tmp_path):
    names = [n.replace("lpep_", "tpep_") for n in sample.column_names]
    path = write(sample.rename_columns(names), tmp_path / JAN)
    message = refused(path, "green")
    assert "yellow" in message and "data.colour" in message
    assert "missing column 'lpep_pickup_datetime'" in message
    # and the same file is accepted as yellow, the colour it says it is
    assert check_trip_file(path, "yellow", str(path)) == sample.num_rows


def test_wrong_dtype_is_named(sample, tmp_path):
    i = sample.schema.get_field_index("trip_distance")
    as_text = pc.cast(sample.column(i), pa.string())
    path = write(sample.set_column(i, "trip_distance", as_text), tmp_path / JAN)
    message = refused(path)
    assert "'trip_distance'" in message and "string" in message and "a number" in message


def test_empty_month_with_real_schema_is_refused(sample, tmp_path):
    path = write(sample.slice(0, 0), tmp_path / JAN)
    assert "0 rows" in refused(path)


def test_month_without_cbd_congestion_fee_works(sample, tmp_path):
    assert "cbd_congestion_fee" in sample.column_names  # the 2025 files have it
    path = write(sample.drop_columns(["cbd_congestion_fee"]), tmp_path / JAN)
    assert check_trip_file(path, "green", str(path)) == sample.num_rows


def test_zone_lookup_real_and_broken(shared_tlc, tmp_path):
    assert check_zone_file(shared_tlc / "taxi_zone_lookup.csv", "zones") == 265
    broken = tmp_path / "taxi_zone_lookup.csv"
    lines = (shared_tlc / "taxi_zone_lookup.csv").read_text().splitlines()
    broken.write_text("\n".join([lines[0].replace("Borough", "Boro"), *lines[1:]]) + "\n")
    with pytest.raises(BadInputError, match="Borough"):
        check_zone_file(broken, str(broken))
