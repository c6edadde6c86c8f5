"""The benchmark harness runs end to end on a sample of the real months and writes its tables."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from benchmarks.report import exponent
from tests.conftest import ROOT, run


def test_exponent_of_linear_and_quadratic_cost():
    assert exponent([(1e3, 2.0), (1e4, 20.0), (1e5, 200.0)]) == 1.0
    assert exponent([(1e3, 1.0), (1e4, 100.0)]) == 2.0
    assert exponent([(1e3, 1.0)]) is None


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
