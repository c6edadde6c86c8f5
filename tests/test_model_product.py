"""The model as a product, end to end on real months: champion and challenger through
`dvc exp run`, promotion by hand, a champion re-scored on new data and beaten, batch scoring
of a whole month traced back to the raw training months."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from registry import champion
from stages.request import example_request
from tests.conftest import clean_month, run

pytestmark = pytest.mark.slow
NAME = "nyc-taxi-trip-duration-minutes"


def dvc(repo: Path, *args: str):
    return run(["dvc", *args], repo, os.environ)


def client():
    """A client of this test's project store (record.connect also points mlflow's own
    module-level calls, such as pyfunc.load_model, at it)."""
    from stage_runtime import record

    return record.connect(create=False)


def alias(name: str) -> str | None:
    version = champion.version_with_alias(client(), NAME, name)
    return None if version is None else str(version.version)


def tags(version: str) -> dict[str, str]:
    return dict(client().get_model_version(NAME, version).tags)


def rmse_of_version(version: str, clean: pd.DataFrame) -> float:
    """The registered version's RMSE on cleaned trips, scored as a consumer scores them."""
    import mlflow

    client()
    model = mlflow.pyfunc.load_model(f"models:/{NAME}/{version}")
    predicted = model.predict(pd.DataFrame(example_request(clean, len(clean))))
    return round(float(np.sqrt(np.mean((predicted - clean["duration_minutes"]) ** 2))), 6)


def test_champion_challenger_by_hand_and_on_new_data(built: Path, small_tlc: Path):
    # The first version became champion when the project was built.
    assert alias(champion.CHAMPION) == "1"
    assert tags("1")["promotion.outcome"] == champion.FIRST

    # A worse experiment registers a challenger that is not promoted.
    dvc(built, "exp", "run", "-S", "model.type=lasso", "-S", "model.alpha=5", "--name", "worse")
    assert alias(champion.CHAMPION) == "1" and alias(champion.CHALLENGER) == "2"
    worse = tags("2")
    assert worse["promotion.outcome"] == champion.KEPT, worse
    assert worse["promotion.champion_version"] == "1"
    assert (
        worse["promotion.champion_validation_rmse"] == f"{float(tags('1')['validation.rmse']):.6f}"
    )
    assert float(worse["promotion.validation_rmse"]) > float(tags("1")["validation.rmse"])
    assert worse["promotion.champion_rescored"] == "false"  # same validation bytes

    # A person promotes the worse one (a bad rollback, say).
    run(["python", "-m", "registry", "promote", "2", "--reason", "test"], built, os.environ)
    assert alias(champion.CHAMPION) == "2"
    assert tags("2")["promotion.outcome"] == champion.BY_HAND

    # Ridge again on new validation bytes (prepare drops other trips): the champion is scored
    # on them too, and the better model wins the alias back.
    dvc(
        built,
        "exp", "run", "-S", "model.type=ridge", "-S", "model.alpha=1.0",
        "-S", "prepare.max_duration_minutes=45", "--name", "better",
    )  # fmt: skip
    assert alias(champion.CHAMPION) == "3"
    decided = tags("3")
    assert decided["promotion.outcome"] == champion.PROMOTED, decided
    assert "better by" in decided["promotion.reason"]
    assert decided["promotion.champion_version"] == "2"
    assert decided["promotion.champion_rescored"] == "true"
    clean = clean_month(small_tlc, "2025-02")
    clean = clean[clean["duration_minutes"] <= 45].reset_index(drop=True)
    assert float(decided["promotion.champion_validation_rmse"]) == pytest.approx(
        rmse_of_version("2", clean), abs=1e-6
    )
    assert decided["promotion.validation_data"] != worse["promotion.validation_data"]


def test_batch_scoring_of_a_month_traces_to_the_training_months(built: Path, small_tlc: Path):
    env = dict(os.environ)
    env.pop("PREFECT_API_URL", None)
    proc = run(["python", "-m", "flows.score", "--month", "2025-03"], built, env)
    out = built / "predictions" / "green_tripdata_2025-03.parquet"
    assert "trips scored" in proc.stdout and str(out.relative_to(built)) in proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr

    table = pd.read_parquet(out)
    raw = pq.read_table(small_tlc / "green_tripdata_2025-03.parquet").to_pandas()
    assert len(table) == len(raw) and (table["row_id"].to_numpy() == np.arange(len(raw))).all()
    refused = table["predicted_minutes"].isna()
    assert (table.loc[refused, "refused_because"].notna()).all()
    assert (raw.loc[refused.to_numpy(), "trip_distance"].fillna(0) <= 0).any()  # the month's own
    assert refused.mean() < 0.2

    import mlflow

    client()
    model = mlflow.pyfunc.load_model(f"models:/{NAME}@{champion.CHAMPION}")
    scored = raw.loc[~refused.to_numpy()]
    np.testing.assert_allclose(
        table.loc[~refused, "predicted_minutes"].to_numpy(),
        model.predict(scored),
        rtol=0,
        atol=1e-9,
    )

    traced = run(
        ["python", "-m", "lineage", str(out.relative_to(built)), "--verify", "--json"],
        built,
        env,
    )
    lineage = json.loads(traced.stdout)["lineage"]
    assert lineage["predictions"]["path"] == "predictions/green_tripdata_2025-03.parquet"
    assert str(lineage["model_version"]["version"]) == alias(champion.CHAMPION)
    assert lineage["checks"]["ok"] is True

    def raw_files(node, found):
        producer = node.get("producer")
        if producer:
            if producer["stage"].startswith("ingest@"):
                found.add(node["path"])
            for child in producer["inputs"]:
                raw_files(child, found)
        return found

    assert "data/raw/green_tripdata_2025-01.parquet" in raw_files(lineage["model"], set())
    score_inputs = lineage["predictions"]["producer"]["inputs"]
    month = next(i for i in score_inputs if i["path"].endswith("green_tripdata_2025-03.parquet"))
    assert month["source"] == str(small_tlc / "green_tripdata_2025-03.parquet")
