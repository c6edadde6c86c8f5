"""One measurement in a fresh process: one stage of ours or of the course's script, one scale.

benchmarks.run starts `python -m benchmarks.measure '<json spec>'` once per measurement and
reads the JSON line it prints. A fresh process per measurement keeps one measurement's imports
and memory out of the next. The kernel's peak-RSS mark is reset (/proc/self/clear_refs) once
the stage's inputs are loaded, so `peak_rss_mib` is the stage's own high-water mark with its
inputs resident; `process_peak_rss_mib` also counts loading them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import json
import os
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
TRAIN_MONTH, VALIDATION_MONTH = "2025-01", "2025-02"
COURSE_LASSO_ALPHA = 0.1
# Imported before the clock starts, by both sides: start-up cost is measured on its own.
HEAVY_MODULES = {
    ("course", "features", None): ("sklearn.feature_extraction",),
    ("ours", "train", "ridge"): ("scipy.sparse.linalg", "threadpoolctl"),
    ("ours", "train", "lasso"): ("threadpoolctl",),
    # stages.model.import_xgboost: xgboost with the OpenMP wait policy the stages use.
    ("ours", "train", "xgboost"): ("stages.model",),
    ("ours", "dask", "xgboost"): ("stages.model", "distributed", "dask.dataframe"),
    ("course", "train", "lasso"): ("sklearn.linear_model",),
    ("course", "train", "xgboost"): ("xgboost",),
}


def _status_mib(field: str) -> float:
    match = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    return int(match.group(1)) / 1024 if match else float("nan")


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


@contextlib.contextmanager
def measured(result: dict[str, Any]) -> Iterator[None]:
    """Wall time and peak RSS of the block, into `result`."""
    result["process_peak_rss_mib"] = _status_mib("VmHWM")
    result["peak_reset"] = _reset_peak_rss()
    result["rss_inputs_mib"] = _status_mib("VmRSS")
    result["loadavg_1min"] = round(os.getloadavg()[0], 2)
    started, cpu_started = time.perf_counter(), time.process_time()
    yield
    result["seconds"] = time.perf_counter() - started
    result["cpu_seconds"] = time.process_time() - cpu_started
    result["peak_rss_mib"] = _status_mib("VmHWM")
    result["process_peak_rss_mib"] = max(result["process_peak_rss_mib"], result["peak_rss_mib"])


def rmse(actual: np.ndarray, predicted: np.ndarray) -> float:
    return float(np.sqrt(np.mean((np.asarray(predicted) - np.asarray(actual)) ** 2)))


def _file(spec: dict, name: str) -> Path:
    folder = Path(spec["workdir"]) / spec["impl"]
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{name}_x{spec['scale']}"


# --------------------------------------------------------------------------- ours


def _ours_params() -> dict[str, Any]:
    from stages.common import load_params

    return load_params("base", "data", "prepare", "features", "model", path=ROOT / "params.yaml")


def _ours_clean(raw: Path, month: str, params: dict) -> tuple[pd.DataFrame, int]:
    from stages.prepare import clean_file

    clean, report = clean_file(raw, params["data"].colour, month, params["prepare"])
    return clean.to_pandas(), report["rows_in"]


def ours_prepare(spec: dict, result: dict) -> None:
    """The stage's own path: read the raw month, clean it and write the clean trips (the
    course's read_dataframe writes nothing: its output is written after the clock)."""
    from stages.prepare import write_clean

    params = _ours_params()
    with measured(result):
        report = write_clean(
            Path(spec["raw"]),
            _file(spec, "clean").with_suffix(".parquet"),
            params["data"].colour,
            TRAIN_MONTH,
            params["prepare"],
        )
    result.update(rows=report["rows_in"], rows_out=report["rows_out"])


def ours_features(spec: dict, result: dict) -> None:
    from stages.encoding import encode, n_rows, read_table, write_table
    from stages.features import fit_encoders, read_zones

    params = _ours_params()
    train = read_table(_file(spec, "clean").with_suffix(".parquet"))
    zones = read_zones(Path(spec["zones"]))
    with measured(result):
        encoders = fit_encoders(
            train, zones, params["features"], params["prepare"].max_distance_miles
        )
        features = encode(train, encoders)
    result["rows"] = n_rows(train)
    write_table(features, _file(spec, "features").with_suffix(".parquet"))
    _file(spec, "encoders").with_suffix(".json").write_text(json.dumps(encoders))
    validation, _ = _ours_clean(Path(spec["validation_raw"]), VALIDATION_MONTH, params)
    write_table(encode(validation, encoders), _file(spec, "validation").with_suffix(".parquet"))


def ours_train(spec: dict, result: dict) -> None:
    from stages import model as models
    from stages.encoding import n_rows, read_table

    params = _ours_params()
    base = params["base"]
    update: dict[str, Any] = {"type": spec["model"]}
    if spec["model"] == "lasso":
        update["alpha"] = COURSE_LASSO_ALPHA  # like for like with the course's Lasso
    model_params = dataclasses.replace(params["model"], **update)
    features = read_table(_file(spec, "features").with_suffix(".parquet"))
    encoders = json.loads(_file(spec, "encoders").with_suffix(".json").read_text())
    with measured(result):
        model = models.fit(features, encoders, model_params, seed=base.seed, threads=base.threads)
    validation = read_table(_file(spec, "validation").with_suffix(".parquet"))
    predicted = models.predict(model, validation, encoders, base.threads)
    result.update(
        rows=n_rows(features),
        validation_rmse=rmse(validation[models.TARGET], predicted),
        params={"alpha": model_params.alpha}
        if spec["model"] != "xgboost"
        else {
            "n_rounds": model_params.xgboost.n_rounds,
            "max_depth": model_params.xgboost.max_depth,
        },
    )


def ours_dask(spec: dict, result: dict) -> None:
    """XGBoost on a Dask LocalCluster of spec["workers"] workers (stages.cluster), one thread
    each: the cluster's start, reading the features as partitions and the fit are timed."""
    from stages import cluster
    from stages import model as models
    from stages.encoding import n_rows, read_table

    params = _ours_params()
    base = params["base"]
    xgb_params = dataclasses.replace(
        params["model"].xgboost, cluster="local", workers=spec["workers"]
    )
    model_params = dataclasses.replace(params["model"], type="xgboost", xgboost=xgb_params)
    features = _file(spec, "features").with_suffix(".parquet")
    encoders = json.loads(_file(spec, "encoders").with_suffix(".json").read_text())
    # One thread per worker whatever base.threads says: 1 vs 2 workers, not threads.
    with measured(result):
        model, _ = cluster.fit_on_cluster(
            features, model_params, seed=base.seed, threads=spec["workers"]
        )
    validation = read_table(_file(spec, "validation").with_suffix(".parquet"))
    predicted = models.predict(model, validation, encoders, base.threads)
    result.update(
        rows=n_rows(read_table(features, columns=["hour"])),
        validation_rmse=rmse(validation[models.TARGET], predicted),
        params={"n_rounds": xgb_params.n_rounds, "workers": spec["workers"]},
    )


# --------------------------------------------------------------------------- the course


def course_prepare(spec: dict, result: dict) -> None:
    import pyarrow.parquet as pq

    from benchmarks import course

    with measured(result):
        df = course.read_dataframe(spec["raw"])
    result.update(rows=pq.ParquetFile(spec["raw"]).metadata.num_rows, rows_out=len(df))
    columns = ["PULocationID", "DOLocationID", "trip_distance", "duration"]
    df[columns].to_parquet(_file(spec, "prepared").with_suffix(".parquet"), index=False)


def course_features(spec: dict, result: dict) -> None:
    from scipy import sparse

    from benchmarks import course

    df = pd.read_parquet(_file(spec, "prepared").with_suffix(".parquet"))
    with measured(result):
        df = course.add_features(df)
        X, dv = course.vectorize(df)
    result["rows"] = len(df)
    sparse.save_npz(_file(spec, "X").with_suffix(".npz"), X, compressed=False)
    np.save(_file(spec, "y").with_suffix(".npy"), df["duration"].to_numpy())
    validation = course.add_features(course.read_dataframe(spec["validation_raw"]))
    X_val, _ = course.vectorize(validation, dv)
    sparse.save_npz(_file(spec, "X_val").with_suffix(".npz"), X_val, compressed=False)
    np.save(_file(spec, "y_val").with_suffix(".npy"), validation["duration"].to_numpy())


def course_train(spec: dict, result: dict) -> None:
    from scipy import sparse

    from benchmarks import course

    X = sparse.load_npz(_file(spec, "X").with_suffix(".npz"))
    y = np.load(_file(spec, "y").with_suffix(".npy"))
    X_val = sparse.load_npz(_file(spec, "X_val").with_suffix(".npz"))
    y_val = np.load(_file(spec, "y_val").with_suffix(".npy"))
    result["rows"] = X.shape[0]
    if spec["model"] == "lasso":
        with measured(result):
            lr = course.train_lasso(X, y)
        result["validation_rmse"] = rmse(y_val, course.predict_lasso(lr, X_val))
        result["params"] = {"alpha": course.LASSO_ALPHA}
        return
    rounds = spec["xgb_rounds"]
    with measured(result):
        booster = course.train_xgboost(X, y, X_val, y_val, num_boost_round=rounds)
    result["validation_rmse"] = rmse(y_val, course.predict_xgboost(booster, X_val))
    result["params"] = {
        "max_rounds": rounds,
        "rounds_trained": booster.num_boosted_rounds(),
        "best_iteration": booster.best_iteration,
        "max_depth": course.XGB_PARAMS["max_depth"],
    }


STAGES = {
    ("ours", "prepare"): ours_prepare,
    ("ours", "features"): ours_features,
    ("ours", "train"): ours_train,
    ("ours", "dask"): ours_dask,
    ("course", "prepare"): course_prepare,
    ("course", "features"): course_features,
    ("course", "train"): course_train,
}


def main(argv: list[str]) -> None:
    spec = json.loads(argv[0])
    for module in HEAVY_MODULES.get((spec["impl"], spec["stage"], spec.get("model")), ()):
        importlib.import_module(module)
    if spec["impl"] == "ours" and spec.get("model") == "xgboost":
        importlib.import_module("stages.model").import_xgboost()
    result: dict[str, Any] = {}
    STAGES[spec["impl"], spec["stage"]](spec, result)
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
