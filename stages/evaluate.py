"""evaluate: RMSE, MAE and R² on the validation and test months, the data for DVC plots, and
every trip's prediction (DVC-cached: a fresh clone, which has the metrics from git but not the
predictions, runs evaluate again, so every registered version gets its evaluation).

Then the champion decision (registry.champion): the model's version is compared with the
registry's `champion` on the same cleaned validation month and promoted only when better by
`promote.min_improvement_minutes`. The decision lives in the registry, not in the outputs:
they stay a function of code, params and data."""

from __future__ import annotations

import argparse
import csv
import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from registry import champion
from stage_runtime.tracking import StageRun, stage_run
from stages import model as models
from stages import plot_images
from stages.common import (
    BadInputError,
    EvaluateParams,
    load_params,
    read_json,
    run_stage,
    write_json,
)
from stages.encoding import FEATURE_COLUMNS, Table, read_table, write_table

log = logging.getLogger("stages.evaluate")
EVAL_SPLITS = ("validation", "test")
# pd.cut's label precision: the first bucket's left edge is lowered by 10**-precision so that
# the lowest distance falls in it (include_lowest), and the labels print the edges rounded.
LABEL_PRECISION = 3
# A plot table: its columns in order, each a sequence of cells.
PlotTable = dict[str, Sequence[Any]]


def regression_metrics(actual: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    residual = predicted - actual
    total = np.sum((actual - actual.mean()) ** 2)
    return {
        "rmse": round(float(np.sqrt(np.mean(residual**2))), 6),
        "mae": round(float(np.mean(np.abs(residual))), 6),
        "r2": round(float(1.0 - np.sum(residual**2) / total), 6) if total > 0 else float("nan"),
        "rows": len(actual),
    }


def _round_frac(x: float, precision: int) -> float:
    """An edge as pd.cut prints it: `precision` digits, after the leading zeros of a fraction."""
    if not np.isfinite(x) or x == 0:
        return x
    fraction, whole = np.modf(x)
    digits = precision if whole != 0 else -int(np.floor(np.log10(abs(fraction)))) - 1 + precision
    return float(np.around(x, digits))


def bucket_labels(edges: Sequence[float]) -> list[str]:
    """The buckets' labels as pd.cut(..., include_lowest=True) prints its intervals:
    `(-0.001, 1.0]`, `(1.0, 2.0]`, ... (the precision raised until the edges print apart)."""
    precision = LABEL_PRECISION
    while len({_round_frac(float(e), precision) for e in edges}) < len(edges) and precision < 19:
        precision += 1
    shown = [_round_frac(float(e), precision) for e in edges]
    shown[0] = float(shown[0] - 10.0**-precision)
    return [f"({float(lo)}, {float(hi)}]" for lo, hi in zip(shown, shown[1:], strict=False)]


def distance_buckets(values: np.ndarray, edges: Sequence[float]) -> np.ndarray:
    """Each trip's distance bucket (right-closed, the lowest edge included; bucket_labels
    names them), -1 outside every bucket, as pd.cut(..., include_lowest=True) assigns them."""
    values = np.asarray(values, dtype=np.float64)
    bounds = np.asarray(edges, dtype=np.float64)
    buckets = np.searchsorted(bounds, values, side="left") - 1
    buckets[values == bounds[0]] = 0
    buckets[~((values >= bounds[0]) & (values <= bounds[-1]))] = -1  # NaN too
    return buckets


def residual_groups(
    split: str, column: str, keys: np.ndarray, residual: np.ndarray, names: Sequence[Any]
) -> PlotTable:
    """Mean residual, trips and RMSE per key present (keys >= 0, in key order), each group's
    trips in file order; the key printed as names[key]."""
    kept = np.flatnonzero(keys >= 0)
    order = kept[np.argsort(keys[kept], kind="stable")]
    present, starts = np.unique(keys[order], return_index=True)
    groups = np.split(residual[order], starts[1:])
    return {
        column: [names[k] for k in present.tolist()],
        # np.round, as pandas' DataFrame.round (Python's round differs in the last digit).
        "mean_residual": [float(np.round(np.mean(g), 4)) for g in groups],
        "trips": [len(g) for g in groups],
        "rmse": [float(np.round(np.sqrt(np.mean(g**2)), 4)) for g in groups],
        "split": [split] * len(groups),
    }


def plot_tables(
    split: str, features: Table, predicted: np.ndarray, params: EvaluateParams
) -> dict[str, PlotTable]:
    """Rows for DVC plots: sampled predicted vs actual, and residuals by hour and distance."""
    actual = np.asarray(features[models.TARGET], dtype=np.float64)
    residual = (predicted - actual).round(4)
    sampled = slice(None, None, params.plot_every_nth)
    hours = np.asarray(features["hour"]).astype(np.int64)
    edges = params.distance_buckets_miles
    buckets = distance_buckets(np.asarray(features["trip_distance"]), edges)
    return {
        "predicted_vs_actual": {
            "split": [split] * len(actual[sampled]),
            "actual": actual[sampled].round(4).tolist(),
            "predicted": predicted[sampled].round(4).tolist(),
        },
        "residuals_by_hour": residual_groups(split, "hour", hours, residual, range(24)),
        "residuals_by_distance": residual_groups(
            split, "distance_bucket", buckets, residual, bucket_labels(edges)
        ),
    }


def write_csv(parts: Sequence[PlotTable], path: Path) -> None:
    """Tables of the same columns, one after another, as one CSV file with a header."""
    with open(path, "w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file, lineterminator="\n")
        writer.writerow(list(parts[0]))
        for part in parts:
            writer.writerows(zip(*part.values(), strict=True))


def main(argv: list[str] | None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--features", required=True, help="feature table pattern with {split}")
    parser.add_argument("--encoders", required=True, type=Path)
    parser.add_argument("--model", required=True, type=Path)
    parser.add_argument("--metrics", required=True, type=Path)
    parser.add_argument("--plots", required=True, help="plot table pattern with {name}")
    parser.add_argument(
        "--predictions", required=True, help="per-trip predictions pattern with {split}"
    )
    parser.add_argument("--clean", required=True, help="cleaned month pattern with {month}")
    args = parser.parse_args(argv)

    params = load_params("base", "data", "evaluate", "promote")
    feature_paths = {split: Path(args.features.format(split=split)) for split in EVAL_SPLITS}
    clean_paths = {
        split: [Path(args.clean.format(month=m)) for m in params["data"].months_of(split)]
        for split in EVAL_SPLITS
    }
    inputs = [*feature_paths.values(), args.encoders, args.model]
    inputs += [path for paths in clean_paths.values() for path in paths]
    with stage_run("evaluate", params, inputs=inputs, client=True) as run:
        encoders = read_json(args.encoders)
        model = models.load(args.model)
        metrics, parts = {}, {}
        for split, path in feature_paths.items():
            features = read_table(path, FEATURE_COLUMNS)
            predicted = models.predict(model, features, encoders, params["base"].threads)
            actual = np.asarray(features[models.TARGET])
            metrics[split] = regression_metrics(actual, predicted)
            write_table(
                {"actual": actual, "predicted": predicted},
                run.output(args.predictions.format(split=split)),
            )
            for name, table in plot_tables(split, features, predicted, params["evaluate"]).items():
                parts.setdefault(name, []).append(table)
        plot_files = {name: run.output(args.plots.format(name=name)) for name in parts}
        for name, tables in parts.items():
            write_csv(tables, plot_files[name])
        write_json(run.output(args.metrics), metrics)
        run.log_metrics(metrics)
        with tempfile.TemporaryDirectory() as image_dir:
            images = plot_images.draw(plot_files, Path(image_dir))
            model_run = run.producer_of(args.model)
            run.report_to(model_run, images, "plots", version_metrics=metrics)
        registered = run.model_version_of(model_run)
        if registered is None:
            log.warning("%s: no registered version of this model: no champion decision", args.model)
        else:
            scores = champion.Scores(
                registered[1],
                {split: metrics[split]["rmse"] for split in EVAL_SPLITS},
                {split: split_data(run, clean_paths[split]) for split in EVAL_SPLITS},
            )
            run.after_commit(
                lambda: promote_or_keep(
                    run,
                    registered[0],
                    scores,
                    clean_paths=clean_paths,
                    min_improvement=params["promote"].min_improvement_minutes,
                    threads=params["base"].threads,
                )
            )
    log.info("%s", metrics)


def split_data(run: StageRun, paths: list[Path]) -> str:
    """What a split's data is: the cleaned files and their md5 (as recorded for the run)."""
    from stage_runtime import record

    return champion.data_label(
        {record.lineage_path(p): run.inputs[record.lineage_path(p)] for p in paths}
    )


def rescore(model_dir: Path, clean_paths: dict[str, list[Path]], threads: int) -> dict[str, float]:
    """RMSE per split of the model and encoders files in `model_dir` on these cleaned trips."""
    from stages.features import read_split

    model = models.load(model_dir / "model.json")
    encoders = read_json(model_dir / "encoders.json")
    rmse = {}
    for split, paths in clean_paths.items():
        trips = read_split(paths)
        predicted = models.predict_trips(model, encoders, trips, threads)
        rmse[split] = regression_metrics(np.asarray(trips[models.TARGET]), predicted)["rmse"]
    return rmse


def promote_or_keep(
    run: StageRun,
    name: str,
    scores: champion.Scores,
    *,
    clean_paths: dict[str, list[Path]],
    min_improvement: float,
    threads: int,
) -> None:
    """The champion decision, once the outputs are in place (StageRun.after_commit)."""

    def champion_scores(version: Any) -> tuple[champion.Scores, bool]:
        recorded = champion.recorded_scores(version)
        if recorded is not None and recorded.data == scores.data:
            return recorded, False
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(run.client.download_artifacts(version.run_id, "model/artifacts", tmp))
            try:
                rmse = rescore(local, clean_paths, threads)
            except BadInputError as exc:
                raise champion.PromotionError(
                    f"champion v{version.version} cannot be scored on this data: {exc}"
                ) from None
        return champion.Scores(str(version.version), rmse, scores.data), True

    decision = champion.decide_and_record(
        run.client,
        name,
        scores,
        min_improvement=min_improvement,
        champion_scores=champion_scores,
        repo=Path.cwd(),
    )
    log.info(
        "%s v%s %s: %s", name, scores.version, champion.VERDICTS[decision.outcome], decision.reason
    )


if __name__ == "__main__":
    run_stage("evaluate", main)
