"""features: encoders fitted on real cleaned trips, vectorised encoding, JSON round trip."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from stages.common import BadInputError, FeaturesParams, read_json, write_json
from stages.encoding import UNKNOWN, encode, n_rows
from stages.features import fit_encoders, read_zones
from tests.conftest import assert_tables_equal, clean_month, project_section

FEATURES = project_section("features")


@pytest.fixture(scope="module")
def train(small_tlc: Path) -> pd.DataFrame:
    return clean_month(small_tlc, "2025-01")


@pytest.fixture(scope="module")
def zones(small_tlc: Path) -> pd.DataFrame:
    return read_zones(small_tlc / "taxi_zone_lookup.csv")


@pytest.fixture(scope="module")
def encoders(train, zones) -> dict:
    return fit_encoders(train, zones, FEATURES, max_distance_miles=100)


def test_pairs_are_those_seen_min_pair_count_times(train, encoders):
    counts = train.groupby(["pickup_zone", "dropoff_zone"]).size()
    expected = sorted(f"{a}-{b}" for (a, b), n in counts.items() if n >= FEATURES.min_pair_count)
    assert sorted(encoders["pairs"]) == expected
    assert len(expected) > 10


def test_min_pair_count_shrinks_the_vocabulary(train, zones, encoders):
    every_pair = fit_encoders(
        train,
        zones,
        FeaturesParams(min_pair_count=1, clip_distance_miles=60),
        max_distance_miles=100,
    )
    n_distinct = len(train.groupby(["pickup_zone", "dropoff_zone"]).size())
    assert len(every_pair["pairs"]) == n_distinct
    assert len(encoders["pairs"]) < n_distinct


def test_zones_and_boroughs_come_from_the_lookup(encoders, zones):
    assert encoders["zones"] == sorted(zones["LocationID"].tolist())
    assert len(encoders["zone_borough"]) == len(encoders["zones"])
    assert "Manhattan" in encoders["boroughs"] and encoders["boroughs"] == sorted(
        set(encoders["boroughs"])
    )


def test_encode_dtypes_and_known_codes(train, encoders):
    table = encode(train, encoders)
    assert n_rows(table) == len(train)
    assert {name: str(column.dtype) for name, column in table.items()} == {
        "pair_code": "int32",
        "pickup_zone_code": "int16",
        "dropoff_zone_code": "int16",
        "pickup_borough_code": "int8",
        "dropoff_borough_code": "int8",
        "hour": "int8",
        "weekday": "int8",
        "trip_distance": "float64",
        "duration_minutes": "float64",
    }
    # a pair in the vocabulary gets its 1-based position; every known zone a code > 0
    first = encoders["pairs"][0]
    a, b = map(int, first.split("-"))
    rows = (train["pickup_zone"] == a) & (train["dropoff_zone"] == b)
    pair_sorted = sorted(encoders["pairs"], key=lambda p: tuple(map(int, p.split("-"))))
    assert (table["pair_code"][rows.to_numpy()] == pair_sorted.index(first) + 1).all()
    assert (table["pickup_zone_code"] > 0).all()
    assert table["hour"].tolist() == train["pickup_datetime"].dt.hour.tolist()
    assert table["trip_distance"].max() <= FEATURES.clip_distance_miles


def test_unseen_pair_and_zone_get_code_zero(train, encoders):
    row = train.iloc[[0]].copy()
    seen = set(encoders["pairs"])
    # a pair of known zones never seen together in January
    known = encoders["zones"]
    pickup, dropoff = next((a, b) for a in known for b in known if f"{a}-{b}" not in seen)
    unseen_pair = row.assign(pickup_zone=np.int32(pickup), dropoff_zone=np.int32(dropoff))
    coded = encode(unseen_pair, encoders)
    assert coded["pair_code"][0] == UNKNOWN
    assert coded["pickup_zone_code"][0] > 0

    unknown_zone = row.assign(pickup_zone=np.int32(999))
    coded = encode(unknown_zone, encoders)
    assert coded["pickup_zone_code"][0] == UNKNOWN
    assert coded["pickup_borough_code"][0] == UNKNOWN
    assert coded["pair_code"][0] == UNKNOWN


def test_encoders_json_round_trip_encodes_identically(train, encoders, tmp_path, small_tlc):
    path = tmp_path / "encoders.json"
    write_json(path, encoders)
    loaded = read_json(path)
    assert loaded == json.loads(json.dumps(encoders))
    february = clean_month(small_tlc, "2025-02")
    assert_tables_equal(encode(february, loaded), encode(february, encoders))
    assert (encode(february, loaded)["pair_code"] == UNKNOWN).any()


def test_encode_in_chunks_equals_one_chunk(train, encoders, monkeypatch):
    from stages import encoding

    whole = encode(train, encoders)
    monkeypatch.setattr(encoding, "CHUNK_ROWS", 997)
    assert_tables_equal(encode(train, encoders), whole)


def test_hour_and_weekday_are_pandas_fields(train):
    from stages.encoding import _hour_and_weekday

    times = train["pickup_datetime"]
    hour, weekday = _hour_and_weekday(times)
    assert np.array_equal(hour, times.dt.hour.to_numpy(np.int8))
    assert np.array_equal(weekday, times.dt.day_of_week.to_numpy(np.int8))
    before_1970 = pd.Series(pd.to_datetime(["1969-12-31 23:30", "1969-12-29 05:00"]))
    hour, weekday = _hour_and_weekday(before_1970)
    assert hour.tolist() == [23, 5] and weekday.tolist() == [2, 0]  # Wednesday, Monday
    local = times.head(50).dt.tz_localize("UTC").dt.tz_convert("America/New_York")
    assert np.array_equal(_hour_and_weekday(local)[0], local.dt.hour.to_numpy(np.int8))
    with pytest.raises(ValueError, match="pickup"):
        _hour_and_weekday(pd.Series(pd.to_datetime(["2025-01-02 10:00", None])))


def test_pair_codes_for_keys_outside_the_table(encoders):
    """Zone ids the lookup does not have (negative, past the pair table) are UNKNOWN, like any
    unseen pair; every code equals the binary-search answer."""
    from stages.encoding import _codes

    vocabulary = np.array([3, 7, 265_265])
    values = np.array([-5, -1, 0, 3, 4, 7, 265_265, 265_266, 2**40])
    expected = [UNKNOWN, UNKNOWN, UNKNOWN, 1, UNKNOWN, 2, 3, UNKNOWN, UNKNOWN]
    assert _codes(values, vocabulary).tolist() == expected
    assert _codes(values, np.array([3, 7, 2**40])).tolist()[-1] == 3  # binary search path


def test_zone_lookup_missing_boroughs_are_unknown_and_bad_files_are_named(small_tlc, tmp_path):
    lookup = (small_tlc / "taxi_zone_lookup.csv").read_text()
    assert '"N/A"' in lookup  # zone 265: the real lookup's missing borough
    zones = read_zones(small_tlc / "taxi_zone_lookup.csv")
    boroughs = dict(zip(zones["LocationID"].tolist(), zones["Borough"].tolist(), strict=True))
    assert boroughs[264] == boroughs[265] == "Unknown" and boroughs[1] == "EWR"
    as_pandas = pd.read_csv(small_tlc / "taxi_zone_lookup.csv").fillna({"Borough": "Unknown"})
    assert zones["Borough"].tolist() == as_pandas["Borough"].tolist()
    no_borough = tmp_path / "no_borough.csv"
    no_borough.write_text('"LocationID","Zone"\n1,"Newark Airport"\n')
    with pytest.raises(BadInputError, match=r"no_borough\.csv: .*without column\(s\) Borough"):
        read_zones(no_borough)
    bad_id = tmp_path / "bad_id.csv"
    bad_id.write_text('"LocationID","Borough"\n1,"EWR"\nx,"Queens"\n')
    with pytest.raises(BadInputError, match=r"bad_id\.csv: column LocationID: expected integer"):
        read_zones(bad_id)
