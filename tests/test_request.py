"""The request a registered model takes: real raw TLC trips in, checks naming the column."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from stages import model as models
from stages.encoding import UNKNOWN, encode, n_rows
from stages.features import fit_encoders, read_zones
from stages.request import (
    PICKUP_COLUMNS,
    TRIP_COLUMNS,
    RequestError,
    example_request,
    input_schema,
    signature,
    signature_dict,
    trips_from_request,
)
from tests.conftest import assert_tables_equal, clean_month, kept_rows, project_section

RAW_COLUMNS = ["lpep_pickup_datetime", "PULocationID", "DOLocationID", "trip_distance"]


@pytest.fixture(scope="module")
def encoders(small_tlc: Path) -> dict:
    zones = read_zones(small_tlc / "taxi_zone_lookup.csv")
    return fit_encoders(clean_month(small_tlc, "2025-01"), zones, project_section("features"), 100)


@pytest.fixture(scope="module")
def raw(small_tlc: Path) -> pd.DataFrame:
    """The real February file as a caller has it (every column, the file's own types)."""
    return pq.read_table(small_tlc / "green_tripdata_2025-02.parquet").to_pandas()


@pytest.fixture(scope="module")
def kept(raw: pd.DataFrame, small_tlc: Path) -> pd.DataFrame:
    """The raw trips prepare keeps, in file order (their cleaned twins are clean_month's)."""
    return raw.loc[kept_rows(small_tlc, "2025-02")].reset_index(drop=True)


def test_raw_trips_encode_exactly_as_the_features_stage_does(kept, encoders, small_tlc):
    clean = clean_month(small_tlc, "2025-02")
    trips = trips_from_request(kept, encoders)
    assert list(trips.columns) == list(TRIP_COLUMNS)
    expected = encode(clean, encoders)
    del expected[models.TARGET]
    assert_tables_equal(encode(trips, encoders), expected)


def test_the_example_is_a_valid_request_of_real_trips(small_tlc, encoders):
    example = example_request(clean_month(small_tlc, "2025-01"), 5)
    assert n_rows(example) == 5
    assert set(example) <= set(input_schema().input_names())
    assert len(trips_from_request(pd.DataFrame(example), encoders)) == 5


def test_every_pickup_column_name_is_accepted_and_exactly_one_is_required(kept, encoders):
    base = kept[RAW_COLUMNS].head(20)
    reference = trips_from_request(base, encoders)
    for name in PICKUP_COLUMNS:
        renamed = base.rename(columns={"lpep_pickup_datetime": name})
        pd.testing.assert_frame_equal(trips_from_request(renamed, encoders), reference)
    with pytest.raises(RequestError, match="exactly one column"):
        trips_from_request(base.drop(columns=["lpep_pickup_datetime"]), encoders)
    both = base.assign(tpep_pickup_datetime=base["lpep_pickup_datetime"])
    with pytest.raises(RequestError, match="exactly one column.*found lpep"):
        trips_from_request(both, encoders)


def test_timestamps_as_text_and_with_a_zone_are_new_york_wall_clock(kept, encoders):
    base = kept[RAW_COLUMNS].head(5)
    as_text = base.assign(lpep_pickup_datetime=base["lpep_pickup_datetime"].astype(str))
    expected = trips_from_request(base, encoders)["pickup_datetime"]
    assert (trips_from_request(as_text, encoders)["pickup_datetime"] == expected).all()
    utc = base.assign(
        lpep_pickup_datetime=base["lpep_pickup_datetime"]
        .dt.tz_localize("America/New_York")
        .dt.tz_convert("UTC")
    )
    assert (trips_from_request(utc, encoders)["pickup_datetime"] == expected).all()


def test_unknown_zones_score_as_the_unseen_zone_code(kept, encoders):
    request = kept[RAW_COLUMNS].head(3).copy()
    request["PULocationID"] = [0, 99999, -5]
    codes = encode(trips_from_request(request, encoders), encoders)
    assert (codes["pickup_zone_code"] == UNKNOWN).all()
    assert (codes["pair_code"] == UNKNOWN).all()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r: r.drop(columns=["DOLocationID"]), "missing column.*'DOLocationID'"),
        (lambda r: r.assign(trip_distance=-1.0), "'trip_distance': -1 miles at row 0"),
        (lambda r: r.assign(trip_distance=84731.0), "'trip_distance': 84731 miles.*at most 100"),
        (lambda r: r.assign(trip_distance=0.0), "'trip_distance'.*more than 0"),
        (lambda r: r.assign(trip_distance=np.inf), "'trip_distance'"),
        (lambda r: r.assign(trip_distance="far"), "'trip_distance': expected miles as numbers"),
        (lambda r: r.assign(PULocationID=r["PULocationID"] * 1.5), "'PULocationID': expected"),
        (lambda r: r.assign(DOLocationID=None), "'DOLocationID': 3 null value"),
        (lambda r: r.assign(trip_distance=np.nan), "'trip_distance': 3 null"),
        (lambda r: r.assign(lpep_pickup_datetime=pd.NaT), "'lpep_pickup_datetime': 3 null"),
        (lambda r: r.assign(lpep_pickup_datetime="soon"), "'lpep_pickup_datetime': expected"),
    ],
)
def test_a_bad_request_names_its_column(kept, encoders, change, message):
    request = kept[RAW_COLUMNS].head(3).reset_index(drop=True)
    with pytest.raises(RequestError, match=message):
        trips_from_request(change(request), encoders)


def test_a_request_that_is_not_a_table_is_refused(encoders):
    with pytest.raises(RequestError, match="expected a table of trips"):
        trips_from_request([{"PULocationID": 1}], encoders)  # type: ignore[arg-type]


def test_the_signature_dict_is_the_one_mlflows_types_build():
    """signature_dict is written by hand (train logs the model without MLflow): it must be
    what MLflow's own schema types give for the request."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema, TensorSpec

    typed = ModelSignature(
        Schema(
            [ColSpec("long", column) for column in ("PULocationID", "DOLocationID")]
            + [ColSpec("double", "trip_distance")]
            + [
                ColSpec("datetime", column, required=False)
                for column in ("lpep_pickup_datetime", "tpep_pickup_datetime", "pickup_datetime")
            ]
        ),
        Schema([TensorSpec(np.dtype("float64"), (-1,))]),
    )
    assert signature_dict() == typed.to_dict()
    assert signature().to_dict() == typed.to_dict()
