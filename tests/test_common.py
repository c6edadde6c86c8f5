"""Params validation (stages/common.py): every bad value is refused with the param named."""

from __future__ import annotations

import copy

import pytest
import yaml

from stages.common import (
    BadInputError,
    check_month,
    file_md5,
    load_params,
    parse_section,
    read_json,
    write_json,
)
from tests.conftest import PROJECT_PARAMS, ROOT


def section(name: str) -> dict:
    return copy.deepcopy(PROJECT_PARAMS[name])


def refused(name: str, raw: dict) -> str:
    with pytest.raises(BadInputError) as info:
        parse_section(name, raw)
    return str(info.value)


def test_project_params_are_valid():
    params = load_params(
        "base", "data", "prepare", "features", "model", "evaluate", path=ROOT / "params.yaml"
    )
    assert params["data"].months_of("train") == ["2025-01"]
    assert params["model"].type in ("lasso", "ridge", "xgboost")


def test_negative_alpha_names_model_alpha():
    raw = section("model") | {"alpha": -1}
    message = refused("model", raw)
    assert "model.alpha" in message and "-1" in message


def test_unknown_model_type_names_model_type():
    message = refused("model", section("model") | {"type": "random_forest"})
    assert "model.type" in message and "random_forest" in message


@pytest.mark.parametrize("month", ["2025-13", "2025-1", "2025-00", "25-01", "2025/01"])
def test_malformed_month_key_names_the_month(month):
    raw = section("data")
    raw["months"] = {month: "train", "2025-02": "validation", "2025-03": "test"}
    message = refused("data", raw)
    assert "data.months" in message and month in message


@pytest.mark.parametrize("month", ["2025-13", "2025-1", ""])
def test_check_month_refuses(month):
    with pytest.raises(BadInputError, match="YYYY-MM"):
        check_month(month)


def test_check_month_accepts_real_month():
    assert check_month("2025-03") == "2025-03"


def test_misspelt_key_is_refused_by_name():
    raw = section("model")
    raw["alhpa"] = raw.pop("alpha")
    message = refused("model", raw)
    assert "model.alhpa" in message
    assert "model.alpha" in message  # now missing: named too


def test_unknown_section_is_refused():
    with pytest.raises(BadInputError, match="modle"):
        parse_section("modle", {})


def test_min_duration_not_below_max_is_refused():
    raw = section("prepare") | {"min_duration_minutes": 60, "max_duration_minutes": 60}
    message = refused("prepare", raw)
    assert "min_duration_minutes" in message and "max_duration_minutes" in message


@pytest.mark.parametrize("split", ["train", "validation", "test"])
def test_each_split_needs_a_month(split):
    raw = section("data")
    raw["months"] = {m: s for m, s in raw["months"].items() if s != split}
    message = refused("data", raw)
    assert "data" in message and "months: no month is assigned to " + split in message


def test_load_params_names_the_file_and_param(tmp_path):
    params = copy.deepcopy(PROJECT_PARAMS)
    params["model"]["alpha"] = -0.5
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    with pytest.raises(BadInputError) as info:
        load_params("model", path=path)
    assert str(path) in str(info.value) and "model.alpha" in str(info.value)


def test_missing_section_is_refused(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"base": PROJECT_PARAMS["base"]}))
    with pytest.raises(BadInputError, match="'model' is missing"):
        load_params("model", path=path)


def test_json_round_trip_and_md5(tmp_path):
    import hashlib

    path = tmp_path / "out" / "m.json"
    write_json(path, {"b": 1, "a": [1.5, "x"]})
    assert read_json(path) == {"a": [1.5, "x"], "b": 1}
    assert file_md5(path) == hashlib.md5(path.read_bytes()).hexdigest()
    assert list(path.parent.iterdir()) == [path]  # no temporary file left behind


def test_read_json_names_the_file(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text("{not json")
    with pytest.raises(BadInputError, match="broken.json"):
        read_json(path)
