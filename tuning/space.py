"""The search space of a model type, from params.yaml's `tune:` section: parsed, checked, and
turned into Optuna suggestions, model params for a trial, and the winner's overrides.

Pure functions, no Optuna or MLflow import: every bad range is refused here, naming the
param (`tune.xgboost.max_depth: low 12 > high 3`), before a study is opened.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from stages.common import BadInputError, ModelParams, TuneParams, XGBoostParams

MODEL_TYPES = ("lasso", "ridge", "xgboost")
# What a linear model's search may vary; the rest of `model` names the model, not its fit.
LINEAR_PARAMS = ("alpha", "max_iter")


@dataclass(frozen=True)
class SearchParam:
    """One param of the search: its name in the space, where it lives in params.yaml."""

    name: str  # `max_depth`: the key under tune.<type> and Optuna's param name
    key: str  # `model.xgboost.max_depth`: the params.yaml key, as `dvc exp run -S` names it
    low: float
    high: float
    log: bool
    integer: bool


def search_space(tune: TuneParams, model: ModelParams, model_type: str) -> list[SearchParam]:
    """The checked space of `model_type`: every param a model param of the right kind, its
    range non-empty, ordered, positive on a log scale, and both ends valid values of that
    param (the model section's own bounds: subsample <= 1, max_depth <= 64, ...)."""
    if model_type not in MODEL_TYPES:
        raise BadInputError(
            f"--model-type {model_type!r}: expected one of {', '.join(MODEL_TYPES)}"
        )
    ranges = getattr(tune, model_type)
    if not ranges:
        raise BadInputError(f"tune.{model_type}: no search space for {model_type} in params.yaml")
    kinds = (XGBoostParams if model_type == "xgboost" else ModelParams).param_types()
    allowed = set(kinds) if model_type == "xgboost" else set(LINEAR_PARAMS)
    prefix = "model.xgboost" if model_type == "xgboost" else "model"
    space = []
    for name, bounds in ranges.items():
        where = f"tune.{model_type}.{name}"
        if name not in allowed:
            raise BadInputError(
                f"{where}: unknown param (expected one of {', '.join(sorted(allowed))})"
            )
        integer = kinds[name] is int
        low, high = bounds.low, bounds.high
        if integer and not (low.is_integer() and high.is_integer()):
            raise BadInputError(f"{where}: an integer param, got low {low:g}, high {high:g}")
        if low > high:
            raise BadInputError(f"{where}: low {low:g} > high {high:g}")
        if low == high:
            raise BadInputError(f"{where}: empty range (low = high = {low:g})")
        if bounds.log and low <= 0:
            raise BadInputError(f"{where}: a log scale needs low > 0, got {low:g}")
        param = SearchParam(name, f"{prefix}.{name}", low, high, bounds.log, integer)
        for end, value in (("low", low), ("high", high)):
            try:
                with_values(model, model_type, [param], {name: _typed(param, value)})
            except BadInputError as exc:
                raise BadInputError(f"{where}: {end} {value:g}: {exc}") from None
        space.append(param)
    return space


def _typed(param: SearchParam, value: float) -> float | int:
    return int(value) if param.integer else float(value)


def suggest(trial: Any, space: list[SearchParam]) -> dict[str, float | int]:
    """One value per param from an Optuna trial (its sampler decides which)."""
    values: dict[str, float | int] = {}
    for p in space:
        if p.integer:
            values[p.name] = trial.suggest_int(p.name, int(p.low), int(p.high), log=p.log)
        else:
            values[p.name] = trial.suggest_float(p.name, p.low, p.high, log=p.log)
    return values


def with_values(
    model: ModelParams, model_type: str, space: list[SearchParam], values: dict[str, Any]
) -> ModelParams:
    """The model section with `model.type` and the searched params set, validated as the
    stages validate it (BadInputError names the param)."""
    document = model.as_dict()
    document["type"] = model_type
    for p in space:
        section = document["xgboost"] if p.key.startswith("model.xgboost.") else document
        section[p.name] = values[p.name]
    problems: list[str] = []
    params = ModelParams.from_raw(document, "model", problems)
    if params is None:
        raise BadInputError(f"not a valid {problems[0]}")
    return params


def overrides(model_type: str, space: list[SearchParam], values: dict[str, Any]) -> dict[str, Any]:
    """The params as `dvc exp run -S` takes them: `{"model.type": "xgboost",
    "model.xgboost.max_depth": 7, ...}` (floats keep every digit: workspaces.experiments
    writes them with repr, so the winner trains on exactly the trial's values)."""
    return {"model.type": model_type} | {p.key: values[p.name] for p in space if p.name in values}


def check_run(trials: int, timeout: float | None, workers: int) -> None:
    """The command line's numbers: at least one trial and one worker, a positive timeout."""
    if trials < 1:
        raise BadInputError(f"--trials {trials}: expected at least 1 trial")
    if workers < 1:
        raise BadInputError(f"--workers {workers}: expected at least 1 worker")
    if workers > trials:
        raise BadInputError(f"--workers {workers}: more workers than trials ({trials})")
    if timeout is not None and not timeout > 0:
        raise BadInputError(f"--timeout {timeout:g}: expected a positive number of seconds")


def shares(trials: int, workers: int) -> list[int]:
    """The trials each worker runs: `trials` split as evenly as possible, first ones first."""
    return [trials // workers + (i < trials % workers) for i in range(workers)]


def sampler_seed(seed: int, worker: int, finished_before: int) -> int:
    """The TPE seed of one worker: distinct workers draw distinct startup points (the same
    seed would make both propose the same params), and a resumed study continues from another
    point of the stream than its first run (which already tried those)."""
    return seed + 1000 * worker + finished_before
