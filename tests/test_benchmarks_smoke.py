"""The benchmark harness runs end to end on a sample of the real months and writes its tables."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from benchmarks.report import REFERENCE_COURSE_64X_S, exponent, machine_slowdown, serving_markdown
from tests.conftest import ROOT, SHARED_TLC, run


def test_exponent_of_linear_and_quadratic_cost():
    assert exponent([(1e3, 2.0), (1e4, 20.0), (1e5, 200.0)]) == 1.0
    assert exponent([(1e3, 1.0), (1e4, 100.0)]) == 2.0
    assert exponent([(1e3, 1.0)]) is None


def test_machine_slowdown_is_the_geometric_mean_against_the_reference():
    twice = {("course", s, 64): {"seconds": 2 * v} for s, v in REFERENCE_COURSE_64X_S.items()}
    assert machine_slowdown(twice) == pytest.approx(2.0)
    mixed = dict(twice) | {
        ("course", "features", 64): {"seconds": 8 * REFERENCE_COURSE_64X_S["features"]}
    }
    assert machine_slowdown(mixed) == pytest.approx((2**3 * 8) ** 0.25)
    del twice["course", "prepare", 64]
    assert machine_slowdown(twice) is None  # the course's script not run at 64x


@pytest.mark.slow
def test_dvc_floor_project_goes_back_to_earlier_params_from_the_run_cache(tmp_path: Path):
    """Target 2's reference: the bench's protocol in the two-stage project restores both
    stages on every return and runs none, as it does in the pipeline; the figure is the
    median of the returns."""
    from benchmarks.overhead import back_to_earlier_params, dvc_floor_project, project_env

    env = project_env(tmp_path, SHARED_TLC)
    result = back_to_earlier_params({"floor": dvc_floor_project(tmp_path, env)}, env, returns=3)
    floor = result["floor"]
    assert floor["restored_from_run_cache"] == ["evaluate", "train"]
    assert floor["ran"] == []
    assert len(floor["returns_seconds"]) == 3
    assert floor["earlier_params_seconds"] == sorted(floor["returns_seconds"])[1]


def test_harness_on_sampled_months_writes_results(small_tlc: Path, tmp_path: Path):
    out = tmp_path / "results"
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.run",
        "--scales",
        "1",
        "--models",
        "ridge",
        "xgboost",
        "--course-xgb-rounds",
        "3",
        "--quality-xgb-rounds",
        "0",
        "--overhead",
        "none",
        "--source",
        str(small_tlc),
        "--out",
        str(out),
    ]
    run(cmd, ROOT, timeout=120)

    results = json.loads((out / "results.json").read_text())
    machine = results["machine"]
    assert machine["cpu_count"] >= 1 and machine["date"].startswith("20")
    assert {"pandas", "scikit-learn", "xgboost"} <= set(machine["libraries"])
    assert "--scales 1" in machine["command"]

    rows = results["measurements"]
    measured = {(r["impl"], r["stage"], r.get("model")) for r in rows}
    assert measured >= {
        ("ours", "prepare", None),
        ("course", "prepare", None),
        ("ours", "features", None),
        ("course", "features", None),
        ("ours", "train", "ridge"),
        ("ours", "train", "xgboost"),
        ("course", "train", "lasso"),
        ("course", "train", "xgboost"),
    }
    for row in rows:
        assert "error" not in row, row
        assert row["seconds"] > 0 and row["rows"] > 0 and row["peak_rss_mib"] > 0, row
    quality = {(q["impl"], q["model"]) for q in results["quality"]}
    assert {("ours", "ridge"), ("course", "lasso"), ("course", "xgboost")} <= quality
    assert all(q["validation_rmse"] > 0 for q in results["quality"])
    assert {t["target"].split(":")[0] for t in results["targets"]}

    markdown = (out / "results.md").read_text()
    for heading in ("## Targets", "## Ours vs the course's script", "## Model quality at 1x"):
        assert heading in markdown
    assert "| 1x | features + train linear |" in markdown


@pytest.mark.slow
def test_serving_benchmark_on_a_built_project(built: Path, tmp_path: Path):
    out = tmp_path / "serving.json"
    cmd = [sys.executable, "-m", "benchmarks.serving", "--tracking-uri"]
    cmd += [os.environ["MLFLOW_TRACKING_URI"], "--source", str(SHARED_TLC)]
    cmd += ["--workdir", str(tmp_path / "work"), "--json", str(out)]
    cmd += ["--single-requests", "10", "--batch-rows", "500", "--batch-repeats", "2"]
    run(cmd, ROOT, timeout=120)

    result = json.loads(out.read_text())
    single, batch = result["single"], result["batch"]
    assert result["model_uri"] == "models:/nyc-taxi-trip-duration-minutes@champion"
    assert single["requests"] == 10 and 0 < single["p50_ms"] <= single["p99_ms"]
    assert batch["rows"] == 500 and len(batch["seconds"]) == 2
    assert batch["best_trips_per_second"] >= batch["median_trips_per_second"] > 0
    assert batch["max_abs_difference_from_in_process"] <= 1e-9
    markdown = "\n".join(serving_markdown(result))
    assert "## Serving" in markdown and "| 500 trips | 2 |" in markdown
