"""The whole DVC pipeline end to end: real `dvc` commands in a temporary git + DVC repository.

Each test builds the pipeline once on the sampled mirror (`project`) and then checks several
things against that one build, so the module stays within a few minutes on two cores.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import yaml

from stages.common import file_md5
from tests.conftest import MONTHS, run

pytestmark = pytest.mark.slow

OUTPUTS = [
    "data/raw/taxi_zone_lookup.csv",
    *(f"data/raw/green_tripdata_{m}.parquet" for m in MONTHS),
    *(f"data/clean/trips_{m}.parquet" for m in MONTHS),
    *(f"metrics/data_quality/{m}.json" for m in MONTHS),
    "data/features/train.parquet",
    "data/features/validation.parquet",
    "data/features/test.parquet",
    "data/features/encoders.json",
    "models/model.json",
    "metrics/train.json",
    "metrics/evaluate.json",
    "plots/predicted_vs_actual.csv",
    "plots/residuals_by_hour.csv",
    "plots/residuals_by_distance.csv",
]


def dvc(repo: Path, *args: str, check: bool = True):
    return run(["dvc", *args], repo, dict(os.environ), check=check)


def snapshot(repo: Path) -> dict[str, bytes]:
    """Bytes of dvc.lock and of every pipeline output."""
    return {p: (repo / p).read_bytes() for p in ["dvc.lock", *OUTPUTS]}


def lock(repo: Path) -> dict:
    return yaml.safe_load((repo / "dvc.lock").read_text())


def out_md5(repo: Path, stage: str) -> str:
    (out,) = lock(repo)["stages"][stage]["outs"]
    return out["md5"]


def edit_params(repo: Path, change) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    change(params)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def commit(repo: Path, message: str) -> None:
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", message], repo)


def test_repro_builds_everything_with_source_hashes(project: Path, small_tlc: Path):
    dvc(project, "repro")
    commit(project, "pipeline outputs")
    built = project
    for path in OUTPUTS:
        assert (built / path).is_file(), path
    # The raw files are the mirror's bytes: dvc.lock's md5 is the source file's md5.
    for month in MONTHS:
        name = f"green_tripdata_{month}.parquet"
        assert out_md5(built, f"ingest@{month}") == file_md5(small_tlc / name)
    assert out_md5(built, "ingest_zones") == file_md5(small_tlc / "taxi_zone_lookup.csv")

    quality = json.loads((built / "metrics/data_quality/2025-01.json").read_text())
    assert quality["rows_in"] - sum(quality["dropped"].values()) == quality["rows_out"]
    assert quality["dropped"]["pickup_outside_month"] > 0  # the real January quirk
    metrics = json.loads((built / "metrics/evaluate.json").read_text())
    for split in ("validation", "test"):
        assert set(metrics[split]) >= {"rmse", "mae", "r2"}
        assert 0.3 < metrics[split]["r2"] < 1

    # Second time: nothing to do, and nothing changes.
    before = snapshot(built)
    again = dvc(built, "repro")
    assert "Data and pipelines are up to date" in again.stdout + again.stderr
    assert snapshot(built) == before

    # Determinism: forcing train (and so evaluate) again gives the same bytes.
    dvc(built, "repro", "--force", "train")
    dvc(built, "repro")
    assert snapshot(built) == before


def test_experiments_are_listed_with_their_metrics(built: Path):
    dvc(built, "exp", "run", "-S", "model.alpha=0.05", "--name", "ridge-alpha-005")
    dvc(built, "exp", "run", "-S", "model.type=xgboost", "--name", "xgboost")
    shown = json.loads(dvc(built, "exp", "show", "--json").stdout)

    def records(node):
        if isinstance(node, dict):
            if "name" in node and isinstance(node.get("data"), dict):
                yield node["name"], node["data"]
            for value in node.values():
                yield from records(value)
        elif isinstance(node, list):
            for value in node:
                yield from records(value)

    experiments = dict(records(shown))
    assert {"ridge-alpha-005", "xgboost"} <= set(experiments), list(experiments)
    rmse = {}
    # The second run starts from the workspace the first left (alpha 0.05): DVC's semantics.
    for name, expected in [("ridge-alpha-005", ("ridge", 0.05)), ("xgboost", ("xgboost", 0.05))]:
        data = experiments[name]
        model = data["params"]["params.yaml"]["data"]["model"]
        assert (model["type"], model["alpha"]) == expected
        evaluation = data["metrics"]["metrics/evaluate.json"]["data"]
        rmse[name] = evaluation["validation"]["rmse"]
        assert evaluation["test"]["rmse"] > 0
        assert data["metrics"]["metrics/train.json"]["data"]["model_type"] == expected[0]
    assert rmse["ridge-alpha-005"] != rmse["xgboost"]


def failing_repro(repo: Path, *names: str) -> str:
    proc = dvc(repo, "repro", check=False)
    assert proc.returncode != 0, proc.stdout + proc.stderr
    for name in names:
        assert name in proc.stderr, proc.stderr
    return proc.stderr


def test_bad_input_fails_clearly_and_leaves_outputs_and_lock(
    built: Path, small_tlc: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    good_params = (built / "params.yaml").read_bytes()
    before = snapshot(built)

    def restore() -> None:
        (built / "params.yaml").write_bytes(good_params)
        assert snapshot(built) == before

    # (a) a negative alpha
    edit_params(built, lambda p: p["model"].update(alpha=-1))
    failing_repro(built, "model.alpha", "BAD INPUT in stage train")
    restore()

    # (b) an unknown model type
    edit_params(built, lambda p: p["model"].update(type="random_forest"))
    failing_repro(built, "model.type", "random_forest")
    restore()

    # (c) a new month whose file in the mirror is truncated
    mirror = tmp_path / "mirror"
    shutil.copytree(small_tlc, mirror)
    january = (small_tlc / "green_tripdata_2025-01.parquet").read_bytes()
    (mirror / "green_tripdata_2025-04.parquet").write_bytes(january[: len(january) // 2])
    monkeypatch.setenv("TLC_SOURCE", str(mirror))
    edit_params(built, lambda p: p["data"]["months"].update({"2025-04": "test"}))
    failing_repro(built, str(mirror / "green_tripdata_2025-04.parquet"), "not a readable parquet")
    assert not (built / "data/raw/green_tripdata_2025-04.parquet").exists()
    monkeypatch.setenv("TLC_SOURCE", str(small_tlc))
    restore()

    # (d) prepare thresholds that filter out every trip
    edit_params(built, lambda p: p["prepare"].update(max_distance_miles=0.001))
    failing_repro(built, "month 2025-0", "every one of")
    restore()

    # (e) a malformed month key
    edit_params(built, lambda p: p["data"]["months"].update({"2025-13": "test"}))
    failing_repro(built, "data.months", "2025-13")
    restore()

    # (f) a non-finite alpha is refused before anything is fitted
    edit_params(built, lambda p: p["model"].update(alpha=float("inf")))
    failing_repro(built, "model.alpha", "finite")
    restore()

    # and the good params still need nothing
    assert "Data and pipelines are up to date" in dvc(built, "repro").stdout


def test_no_param_value_reaches_a_shell(built: Path, tmp_path: Path):
    """Shell payloads in every param a stage name or path is built from: never executed."""
    canary = tmp_path / "CANARY"
    payload = f"$(touch {canary})"
    good_params = (built / "params.yaml").read_bytes()
    before = snapshot(built)

    def restore() -> None:
        (built / "params.yaml").write_bytes(good_params)
        assert snapshot(built) == before
        assert not canary.exists()

    edit_params(built, lambda p: p["data"].update(colour=f"green{payload}"))
    failing_repro(built, "BAD INPUT", "data.colour", "got 'green$(touch")
    restore()

    def month_key(p: dict) -> None:
        p["data"]["months"][f"2025-01{payload}"] = p["data"]["months"].pop("2025-01")

    edit_params(built, month_key)
    failing_repro(built, "BAD INPUT", "data.months", "expected a month as YYYY-MM")
    restore()

    edit_params(built, lambda p: p["model"].update(type=f"ridge{payload}"))
    failing_repro(built, "BAD INPUT in stage train", "model.type")
    restore()

    # dvc exp run -S leaves its payload in params.yaml: the next dvc repro refuses it again.
    proc = dvc(built, "exp", "run", "-S", f"data.colour='green{payload}'", check=False)
    assert proc.returncode != 0 and "data.colour" in proc.stderr, proc.stderr
    assert not canary.exists()
    assert yaml.safe_load((built / "params.yaml").read_text())["data"]["colour"].endswith(payload)
    failing_repro(built, "data.colour")
    # dvc exp run took the raw files of the good colour out of the workspace (they are no
    # outputs of its pipeline); DVC's cache still holds them.
    (built / "params.yaml").write_bytes(good_params)
    dvc(built, "checkout")
    restore()
