"""stages/cluster.py: XGBoost on a Dask cluster (model.xgboost.cluster)."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from stages import cluster
from stages import model as m
from stages.common import BadInputError, TransientError, parse_section
from stages.encoding import encode, write_table
from stages.features import fit_encoders, read_zones
from tests.conftest import PROJECT_PARAMS, clean_month, project_section


def xgb_params(**xgb_changes):
    """The project's XGBoost params (its rounds too: the comparison is of the real fit)."""
    raw = PROJECT_PARAMS["model"] | {"type": "xgboost"}
    raw["xgboost"] = raw["xgboost"] | xgb_changes
    return parse_section("model", raw)


@pytest.mark.parametrize(
    "address", ["none", "local", "tcp://10.0.0.5:8786", "tls://dask.example:8786"]
)
def test_cluster_param_accepts_none_local_and_addresses(address):
    assert xgb_params(cluster=address).xgboost.cluster == address


@pytest.mark.parametrize("address", ["", "yes", "10.0.0.5:8786", "tcp://host", "tcp://h:1;rm"])
def test_cluster_param_refuses_anything_else(address):
    with pytest.raises(BadInputError, match=r"model\.xgboost\.cluster"):
        xgb_params(cluster=address)


def test_a_scheduler_that_is_down_fails_fast_naming_it():
    started = time.perf_counter()
    with (
        pytest.raises(TransientError, match=r"tcp://127\.0\.0\.1:9 .*model\.xgboost\.cluster"),
        cluster.client_for("tcp://127.0.0.1:9", workers=2, threads=2),
    ):
        pass
    assert time.perf_counter() - started < cluster.CONNECT_TIMEOUT_S + 10


@pytest.fixture(scope="module")
def data(shared_tlc: Path, tmp_path_factory: pytest.TempPathFactory):
    """The real months, whole: on the tests' 1-in-16 sample (2,861 trips) two workers'
    sketches of 1,430 trips each give trees 0.05 min apart in validation RMSE from one
    process's; on the 44,585 trips of January 0.006 apart."""
    clean = {month: clean_month(shared_tlc, month) for month in ("2025-01", "2025-02")}
    zones = read_zones(shared_tlc / "taxi_zone_lookup.csv")
    encoders = fit_encoders(
        clean["2025-01"], zones, project_section("features"), max_distance_miles=100
    )
    path = tmp_path_factory.mktemp("cluster") / "train.parquet"
    write_table(encode(clean["2025-01"], encoders), path)  # as the features stage writes it
    return path, encode(clean["2025-02"], encoders), encoders


def rmse(model, validation: pd.DataFrame, encoders: dict) -> float:
    predicted = m.predict(model, validation, encoders, threads=1)
    return float(np.sqrt(np.mean((predicted - validation[m.TARGET]) ** 2)))


@pytest.mark.slow
def test_two_local_workers_match_one_process(data, tmp_path):
    """A LocalCluster of 2 workers started here, reached by its address as a remote
    scheduler would be: the model is an ordinary XGBoost model file, scores within 0.02 of
    the single-process fit, and is byte-identical across two fits. With one worker it is the
    single-process model byte for byte; with two it is not (README)."""
    from distributed import LocalCluster

    features, validation, encoders = data
    train = pd.read_parquet(features)
    single = m.fit(train, encoders, xgb_params(), seed=42, threads=2)
    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as local:
        params = xgb_params(cluster=local.scheduler_address, workers=2)
        twice = [cluster.fit_on_cluster(features, params, seed=42, threads=2) for _ in range(2)]
        one, _ = cluster.fit_on_cluster(
            features, xgb_params(cluster=local.scheduler_address, workers=1), seed=42, threads=2
        )
    (first, train_rmse), (second, _) = twice
    m.save(first, tmp_path / "model.json")
    loaded = m.load(tmp_path / "model.json")
    assert loaded["type"] == "xgboost"
    assert abs(rmse(loaded, validation, encoders) - rmse(single, validation, encoders)) < 0.02
    assert 0 < train_rmse < rmse(loaded, validation, encoders)
    assert first["raw"] == second["raw"]
    assert one["raw"] == single["raw"]
    digests = {hashlib.md5(x["raw"]).hexdigest() for x in (first, single)}
    assert len(digests) == 2, "2 workers merge sketches and histograms: not the same trees"
