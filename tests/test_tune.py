"""The hyperparameter search (tuning/, flows/tune.py): the space from params.yaml, every bad
range refused naming the param before a trial runs, the winner's overrides, the worker
shares; a trial on real features; and (slow) a small study end to end on a scratch project.
"""

from __future__ import annotations

import copy

import pytest
import yaml

from stages.common import BadInputError, parse_section
from tests.conftest import PROJECT_PARAMS, project_section
from tuning import space as spaces
from workspaces.experiments import apply_overrides


def tune_section(**changes: dict) -> object:
    raw = copy.deepcopy(PROJECT_PARAMS["tune"])
    for model_type, ranges in changes.items():
        raw[model_type] = ranges
    return parse_section("tune", raw)


def refused(tune: object, model_type: str) -> str:
    with pytest.raises(BadInputError) as info:
        spaces.search_space(tune, project_section("model"), model_type)
    return str(info.value)


# --------------------------------------------------------------------------- the space


@pytest.mark.parametrize("model_type", spaces.MODEL_TYPES)
def test_the_project_space_of_each_model_type_is_valid(model_type):
    space = spaces.search_space(project_section("tune"), project_section("model"), model_type)
    assert space
    for p in space:
        assert p.low < p.high
        assert p.key.startswith("model.xgboost." if model_type == "xgboost" else "model.")


def test_integer_params_are_sampled_as_integers():
    space = spaces.search_space(project_section("tune"), project_section("model"), "xgboost")
    kinds = {p.name: p.integer for p in space}
    assert kinds["max_depth"] and kinds["n_rounds"]
    assert not kinds["learning_rate"] and not kinds["subsample"]


def test_inverted_range_names_the_param():
    tune = tune_section(xgboost={"max_depth": {"low": 12, "high": 3}})
    assert refused(tune, "xgboost") == "tune.xgboost.max_depth: low 12 > high 3"


def test_empty_range_is_refused():
    message = refused(tune_section(ridge={"alpha": {"low": 0.5, "high": 0.5}}), "ridge")
    assert message.startswith("tune.ridge.alpha: empty range")


def test_unknown_param_is_refused_with_the_known_ones():
    message = refused(tune_section(xgboost={"max_dept": {"low": 2, "high": 8}}), "xgboost")
    assert message.startswith("tune.xgboost.max_dept: unknown param")
    assert "max_depth" in message


def test_a_linear_space_cannot_vary_the_model_name():
    message = refused(tune_section(ridge={"registered_name": {"low": 1, "high": 2}}), "ridge")
    assert message.startswith("tune.ridge.registered_name: unknown param")


def test_log_scale_needs_a_positive_low():
    message = refused(tune_section(lasso={"alpha": {"low": 0, "high": 1, "log": True}}), "lasso")
    assert message == "tune.lasso.alpha: a log scale needs low > 0, got 0"


def test_integer_param_with_fractional_bounds_is_refused():
    message = refused(tune_section(xgboost={"max_depth": {"low": 2.5, "high": 8}}), "xgboost")
    assert message.startswith("tune.xgboost.max_depth: an integer param")


def test_bounds_outside_the_model_params_own_limits_are_refused():
    message = refused(tune_section(xgboost={"subsample": {"low": 0.5, "high": 1.5}}), "xgboost")
    expected = "tune.xgboost.subsample: high 1.5: not a valid model.xgboost.subsample"
    assert message.startswith(expected)


def test_model_type_without_a_space_is_refused():
    assert refused(tune_section(lasso=None), "lasso") == (
        "tune.lasso: no search space for lasso in params.yaml"
    )
    assert refused(tune_section(ridge={}), "ridge").startswith("tune.ridge: no search space")


def test_unknown_model_type_is_refused():
    assert refused(project_section("tune"), "forest").startswith("--model-type 'forest'")


def test_shape_errors_are_refused_by_the_params_schema():
    raw = copy.deepcopy(PROJECT_PARAMS["tune"])
    raw["xgboost"]["max_depth"] = {"low": 3, "hi": 9}
    with pytest.raises(BadInputError, match=r"tune\.xgboost\.max_depth\.hi"):
        parse_section("tune", raw)


@pytest.mark.parametrize(
    ("trials", "timeout", "workers", "expected"),
    [
        (0, None, 1, "--trials 0: expected at least 1 trial"),
        (-3, None, 1, "--trials -3"),
        (5, 0.0, 1, "--timeout 0"),
        (5, None, 0, "--workers 0"),
        (2, None, 3, "--workers 3: more workers than trials (2)"),
    ],
)
def test_run_numbers_are_checked(trials, timeout, workers, expected):
    with pytest.raises(BadInputError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        spaces.check_run(trials, timeout, workers)


def test_shares_split_the_trials_exactly():
    assert spaces.shares(30, 1) == [30]
    assert spaces.shares(30, 2) == [15, 15]
    assert spaces.shares(7, 3) == [3, 2, 2]
    assert sum(spaces.shares(50, 4)) == 50


def test_workers_and_resumed_runs_get_distinct_seeds():
    seeds = {spaces.sampler_seed(42, w, n) for w in range(3) for n in (0, 30)}
    assert len(seeds) == 6
    assert spaces.sampler_seed(42, 0, 0) == 42


# --------------------------------------------------------------------------- best -> overrides


def test_overrides_are_the_keys_dvc_exp_run_sets():
    space = spaces.search_space(project_section("tune"), project_section("model"), "xgboost")
    values = {p.name: (7 if p.integer else 0.123456789012345) for p in space}
    overrides = spaces.overrides("xgboost", space, values)
    assert overrides["model.type"] == "xgboost"
    assert overrides["model.xgboost.max_depth"] == 7
    assert overrides["model.xgboost.learning_rate"] == 0.123456789012345


def test_the_winners_params_reach_params_yaml_digit_for_digit(tmp_path):
    """What the pipeline trains on is what the trial trained on: every float digit kept."""
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(PROJECT_PARAMS, sort_keys=False))
    space = spaces.search_space(project_section("tune"), project_section("model"), "xgboost")
    values = {p.name: (9 if p.integer else 0.1 + 1 / 3e7) for p in space}
    trial_params = spaces.with_values(project_section("model"), "xgboost", space, values)
    apply_overrides(tmp_path, spaces.overrides("xgboost", space, values))
    written = yaml.safe_load((tmp_path / "params.yaml").read_text())["model"]
    assert parse_section("model", written) == trial_params


def test_with_values_sets_the_type_and_validates():
    space = spaces.search_space(project_section("tune"), project_section("model"), "ridge")
    params = spaces.with_values(project_section("model"), "ridge", space, {"alpha": 0.25})
    assert (params.type, params.alpha) == ("ridge", 0.25)
    with pytest.raises(BadInputError, match="not a valid model.alpha"):
        spaces.with_values(project_section("model"), "ridge", space, {"alpha": -1.0})
