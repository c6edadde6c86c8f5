"""XGBoost on a Dask cluster (params model.xgboost.cluster): the feature file read as Dask
partitions, boosted by `xgboost.dask`, the booster returned as the same XGBoost JSON that a
single-process train writes (stages.model.save), so the model file and its record are those
of any other XGBoost model.

`local` starts a LocalCluster of `workers` processes for the fit and stops it after; an
address connects to a running scheduler, whose workers must be able to read the feature file
at the same path (a shared volume or object store in a real deployment: README).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from stages.common import BadInputError, ModelParams, TransientError
from stages.encoding import TARGET
from stages.model import XGB_COLUMNS, XGB_TYPES, booster_params, import_xgboost, xgb_row_order

log = logging.getLogger("stages.cluster")
# Seconds to reach a scheduler before the stage fails as transient (the flow retries it).
CONNECT_TIMEOUT_S = 5


@contextlib.contextmanager
def client_for(cluster: str, workers: int, threads: int) -> Iterator[Any]:
    """A Dask client: on a LocalCluster started here (`local`) or on the scheduler at the
    address `cluster`. A scheduler that does not answer is a TransientError naming it."""
    from distributed import Client, LocalCluster

    # The scheduler's and workers' per-event INFO lines would drown the stage's log.
    logging.getLogger("distributed").setLevel(logging.WARNING)
    if cluster == "local":
        # One thread per worker on a machine of `threads` cores: the workers, not OpenMP
        # inside each, share the cores.
        per_worker = max(1, threads // workers)
        with (
            LocalCluster(
                n_workers=workers,
                threads_per_worker=per_worker,
                processes=True,
                dashboard_address=None,
            ) as local,
            Client(local) as client,
        ):
            yield client
        return
    try:
        client = Client(cluster, timeout=f"{CONNECT_TIMEOUT_S}s")
    except (OSError, TimeoutError) as exc:
        raise TransientError(
            f"Dask scheduler {cluster} (model.xgboost.cluster) did not answer within "
            f"{CONNECT_TIMEOUT_S} s: {exc}"
        ) from None
    with client:
        yield client


def read_partitions(client: Any, features: Path, partitions: int) -> Any:
    """The training features as a Dask DataFrame of `partitions` parts, each part's rows in
    xgb_row_order (the cache-friendly order of a single-process fit, within each part).

    Part i is placed on the i-th worker (by address, round robin): left to the scheduler,
    every part of a one-file table landed on one worker and XGBoost trained there alone.
    """
    import dask.dataframe as dd
    from distributed import wait

    # An absolute path: the workers' working directories are not the stage's.
    frame = dd.read_parquet(str(Path(features).resolve()), columns=[*XGB_COLUMNS, TARGET])
    missing = [c for c in (*XGB_COLUMNS, TARGET) if c not in frame.columns]
    if missing:
        raise BadInputError(f"{features}: missing columns {', '.join(missing)}")
    frame = frame.repartition(npartitions=partitions)
    ordered = frame.map_partitions(lambda part: part.iloc[xgb_row_order(part)], meta=frame._meta)
    workers = sorted(client.scheduler_info()["workers"])
    if not workers:
        raise TransientError(f"Dask scheduler {client.scheduler.address}: no workers")
    futures = [
        client.compute(part, workers=[workers[i % len(workers)]], allow_other_workers=False)
        for i, part in enumerate(ordered.to_delayed())
    ]
    wait(futures)
    return dd.from_delayed(futures, meta=frame._meta)


def fit_on_cluster(
    features: Path, params: ModelParams, seed: int, threads: int
) -> tuple[dict[str, Any], float]:
    """Fit XGBoost on the cluster params.xgboost names; the model document and its RMSE on
    the training trips, both computed on the workers."""
    import_xgboost()  # before the LocalCluster's workers inherit the environment
    from xgboost import dask as dxgb

    xp = params.xgboost
    with client_for(xp.cluster, xp.workers, threads) as client:
        frame = read_partitions(client, features, xp.workers)
        X = frame[list(XGB_COLUMNS)].astype(np.float32).to_dask_array(lengths=True)
        y = frame[TARGET].astype(np.float64).to_dask_array(lengths=True)
        dtrain = dxgb.DaskDMatrix(
            client,
            X,
            y,
            feature_names=list(XGB_COLUMNS),
            feature_types=list(XGB_TYPES),
            enable_categorical=True,
        )
        # nthread is left to each worker (its own threads), not this process's base.threads.
        trained = dxgb.train(
            client,
            {k: v for k, v in booster_params(xp, seed, threads).items() if k != "nthread"},
            dtrain,
            num_boost_round=xp.n_rounds,
        )
        booster = trained["booster"]
        predicted = dxgb.predict(client, booster, dtrain)
        train_rmse = float(np.sqrt(((predicted - y) ** 2).mean().compute()))
    log.info("xgboost trained on Dask cluster %s (%d partitions)", xp.cluster, xp.workers)
    return {"type": "xgboost", "raw": bytes(booster.save_raw("json"))}, train_rmse
