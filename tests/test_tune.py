"""The hyperparameter search (tuning/, flows/tune.py): the space from params.yaml, every bad
range refused naming the param before a trial runs, the winner's overrides, the worker
shares; a trial on real features; and (slow) a small study end to end on a scratch project.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from stages.common import BadInputError, parse_section
from tests.conftest import PROJECT_PARAMS, project_section, run
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


# --------------------------------------------------------------------------- storage, report


def test_storage_is_beside_the_mlflow_store_unless_named(tmp_path, monkeypatch):
    from tuning import trials

    monkeypatch.delenv(trials.STORAGE_ENV, raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}")
    assert trials.storage_url(tmp_path) == f"sqlite:///{tmp_path / 'store' / 'optuna.db'}"
    team = "postgresql+psycopg2://optuna:s3cret@127.0.0.1:15432/optuna"
    monkeypatch.setenv(trials.STORAGE_ENV, team)
    assert trials.storage_url(tmp_path) == team
    shown = trials.redacted(team)
    assert "s3cret" not in shown and "127.0.0.1:15432/optuna" in shown


def test_report_rows_and_markdown_from_a_study():
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="s", sampler=optuna.samplers.TPESampler(seed=1))
    space = spaces.search_space(project_section("tune"), project_section("model"), "ridge")

    def objective(trial):
        alpha = spaces.suggest(trial, space)["alpha"]
        if trial.number == 1:
            trial.report(9.0, 10)
            raise optuna.TrialPruned()
        return 4.5 + abs(alpha - 1)

    study.optimize(objective, n_trials=3)
    from tuning import report

    rows = report.trial_rows(study)
    assert [r["state"] for r in rows] == ["COMPLETE", "PRUNED", "COMPLETE"]
    assert rows[1]["pruned_at_round"] == 10 and rows[1]["rmse_at_pruning"] == 9.0
    assert rows[1]["validation_rmse"] is None
    overrides = spaces.overrides("ridge", space, study.best_params)
    text = report.best_markdown(study, overrides, None)
    assert f"-S model.alpha={overrides['model.alpha']!r}" in text
    assert "2 complete, 1 pruned" in text


# --------------------------------------------------------------------------- slow: end to end


def tune_cli(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """`python -m flows.tune` in the project, with its own temporary Prefect server."""
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "180"
    return run([sys.executable, "-m", "flows.tune", *args], repo, env, check=check, timeout=900)


def study_runs(repo: Path, name: str) -> tuple[object, list[object]]:
    """The study's MLflow parent run and its child runs."""
    from stage_runtime import record

    client = record.connect(f"sqlite:///{repo / 'mlflow.db'}", create=False)
    experiment = record.experiment_id(client)
    parents = client.search_runs(
        [experiment], f"tags.`tune.study` = '{name}' and tags.`tune.role` = 'study'"
    )
    assert len(parents) == 1
    children = client.search_runs(
        [experiment], f"tags.`mlflow.parentRunId` = '{parents[0].info.run_id}'", max_results=500
    )
    return parents[0], children


@pytest.mark.slow
def test_bad_input_is_refused_before_any_trial(built):
    proc = tune_cli(built, "--model-type", "ridge", "--trials", "0", check=False)
    assert proc.returncode == 65
    assert "--trials 0: expected at least 1 trial" in proc.stderr
    params = yaml.safe_load((built / "params.yaml").read_text())
    params["tune"]["xgboost"]["max_depth"] = {"low": 12, "high": 3}
    params["model"]["xgboost"]["cluster"] = "local"
    (built / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    proc = tune_cli(built, "--model-type", "xgboost", "--trials", "5", check=False)
    assert proc.returncode == 65
    assert "tune.xgboost.max_depth: low 12 > high 3" in proc.stderr
    # Said, not silently ignored: trials do not run on a Dask cluster.
    assert "model.xgboost.cluster=local: the trials fit in the tuning processes" in proc.stderr
    assert not (built / "optuna.db").exists()  # no study was opened


@pytest.mark.slow
def test_a_small_study_its_winner_and_a_second_process_joining(built):
    """3 ridge trials by 2 worker processes: 3 child runs, the winner a DVC experiment and a
    registered version traced to the raw months; a second process adds 2 trials to the study."""
    import dvc.api

    from stage_runtime import record
    from tuning import trials

    proc = tune_cli(
        built, "--model-type", "ridge", "--trials", "3", "--workers", "2", "--name", "t"
    )
    assert "winner: DVC experiment t-trial-" in proc.stdout, proc.stdout + proc.stderr
    parent, children = study_runs(built, "t")
    assert len(children) == 3
    locked = record.locked_outputs(record.read_lock(built / "dvc.lock"))
    for child in children:
        assert child.data.tags[trials.STATE_TAG] == "COMPLETE"
        assert child.data.metrics["fit_seconds"] > 0
        inputs = record.tagged_files(child.data.tags, record.INPUT)
        assert inputs and all(locked[path] == md5 for path, md5 in inputs.items())
    best = min(children, key=lambda c: c.data.metrics["validation_rmse"])
    experiment = parent.data.tags["dvc_exp_name"]
    assert experiment == f"t-trial-{best.data.tags[trials.TRIAL_TAG]}"
    assert parent.data.metrics["winner_validation_rmse"] == best.data.metrics["validation_rmse"]
    names = {row["Experiment"] for row in dvc.api.exp_show(repo=str(built))}
    assert experiment in names
    version = parent.data.tags[record.MODEL_VERSION_TAG]
    trace = run(
        [sys.executable, "-m", "lineage", f"models:/nyc-taxi-trip-duration-minutes/{version}"],
        built,
    )
    for month in ("2025-01", "2025-02", "2025-03"):
        assert f"green_tripdata_{month}.parquet" in trace.stdout
    artifacts = {
        Path(a.path).name
        for a in record.connect(f"sqlite:///{built / 'mlflow.db'}", create=False).list_artifacts(
            parent.info.run_id, "optuna"
        )
    }
    assert "optimization_history.png" in artifacts

    # A second process joins the same study and adds to it, under the same parent run.
    proc = tune_cli(built, "--model-type", "ridge", "--trials", "2", "--name", "t", "--no-winner")
    assert "5 trials" in proc.stdout, proc.stdout + proc.stderr
    assert len(study_runs(built, "t")[1]) == 5
    # ... and one of another model type is refused, naming the study's own.
    proc = tune_cli(built, "--model-type", "lasso", "--trials", "1", "--name", "t", check=False)
    assert proc.returncode == 65 and "searches ridge, not lasso" in proc.stderr


@pytest.mark.slow
def test_the_flow_publishes_the_trials_table_and_the_best_params(built, monkeypatch):
    """In process, on a Prefect test server: the artifacts a person reads in the UI."""
    monkeypatch.setenv("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    from prefect.testing.utilities import prefect_test_harness

    from flows.tune_flow import tune
    from tests.test_flow import artifacts

    with prefect_test_harness(server_startup_timeout=180):
        state = tune(
            workspace=str(built), model_type="ridge", trials=2, name="a", winner=False,
            return_state=True,
        )  # fmt: skip
        assert state.is_completed(), state.message
        found = artifacts(str(state.state_details.flow_run_id))
    assert {"tune-trials", "tune-best-params"} <= set(found)
    rows = json.loads(found["tune-trials"].data)
    assert [row["trial"] for row in rows] == [0, 1]
    assert all(row["state"] == "COMPLETE" and row["alpha"] > 0 for row in rows)
    assert "-S model.type=ridge -S model.alpha=" in found["tune-best-params"].data
