"""evaluate: RMSE, MAE and R² on the validation and test months, and the data for DVC plots."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from stages import model as models
from stages.common import EvaluateParams, atomic_path, load_params, read_json, run_stage, write_json

log = logging.getLogger("stages.evaluate")
EVAL_SPLITS = ("validation", "test")


def regression_metrics(actual: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    residual = predicted - actual
    total = np.sum((actual - actual.mean()) ** 2)
    return {
        "rmse": round(float(np.sqrt(np.mean(residual**2))), 6),
        "mae": round(float(np.mean(np.abs(residual))), 6),
        "r2": round(float(1.0 - np.sum(residual**2) / total), 6) if total > 0 else float("nan"),
        "rows": len(actual),
    }


def plot_tables(
    split: str, features: pd.DataFrame, predicted: np.ndarray, params: EvaluateParams
) -> dict[str, pd.DataFrame]:
    """Rows for DVC plots: sampled predicted vs actual, and residuals by hour and distance."""
    actual = features[models.TARGET].to_numpy()
    frame = pd.DataFrame({
        "split": split,
        "actual": actual.round(4),
        "predicted": predicted.round(4),
        "residual": (predicted - actual).round(4),
        "hour": features["hour"].to_numpy(),
        "distance_bucket": pd.cut(features["trip_distance"], params.distance_buckets_miles,
                                  include_lowest=True).astype(str),
    })

    def by(column: str) -> pd.DataFrame:
        grouped = frame.groupby(column, observed=True, sort=True)["residual"]
        out = grouped.agg(mean_residual="mean", trips="size").reset_index()
        out["rmse"] = grouped.apply(lambda r: float(np.sqrt(np.mean(r**2)))).to_numpy()
        return out.assign(split=split).round(4)

    return {
        "predicted_vs_actual": frame.iloc[:: params.plot_every_nth][["split", "actual", "predicted"]],
        "residuals_by_hour": by("hour"),
        "residuals_by_distance": by("distance_bucket"),
    }


def main(argv: list[str] | None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--features", required=True, help="feature table pattern with {split}")
    parser.add_argument("--encoders", required=True, type=Path)
    parser.add_argument("--model", required=True, type=Path)
    parser.add_argument("--metrics", required=True, type=Path)
    parser.add_argument("--plots", required=True, help="plot table pattern with {name}")
    args = parser.parse_args(argv)

    params = load_params("base", "evaluate")
    encoders = read_json(args.encoders)
    model = models.load(args.model)

    metrics, tables = {}, {}
    for split in EVAL_SPLITS:
        features = pd.read_parquet(args.features.format(split=split))
        predicted = models.predict(model, features, encoders, params["base"].threads)
        metrics[split] = regression_metrics(features[models.TARGET].to_numpy(), predicted)
        for name, table in plot_tables(split, features, predicted, params["evaluate"]).items():
            tables.setdefault(name, []).append(table)

    for name, parts in tables.items():
        with atomic_path(args.plots.format(name=name)) as tmp:
            pd.concat(parts, ignore_index=True).to_csv(tmp, index=False)
    write_json(args.metrics, metrics)
    log.info("%s", metrics)


if __name__ == "__main__":
    run_stage("evaluate", main)
