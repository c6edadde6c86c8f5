"""evaluate: RMSE, MAE and R² on the validation and test months, the data for DVC plots, and
every trip's prediction (DVC-cached: a fresh clone, which has the metrics from git but not the
predictions, runs evaluate again, so every registered version gets its evaluation).

Then the champion decision (registry.champion): the model's version is compared with the
registry's `champion` on the same cleaned validation month and promoted only when better by
`promote.min_improvement_minutes`. The decision lives in the registry, not in the outputs:
they stay a function of code, params and data."""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

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


def distance_buckets(values: pd.Series, edges: list[float]) -> pd.Series:
    """Each trip's distance bucket, labelled as pd.cut prints its interval (`(1.0, 2.0]`),
    missing outside every bucket. Categorical, in the buckets' order, so tables and plots
    list them by distance and not as text sorts them (`(12.0, 20.0]` before `(2.0, 3.0]`);
    the labels are made once per bucket, not per trip (0.1-0.19 s a month that way)."""
    buckets = pd.cut(values, edges, include_lowest=True)
    return buckets.cat.rename_categories([str(b) for b in buckets.cat.categories])


def plot_tables(
    split: str, features: pd.DataFrame, predicted: np.ndarray, params: EvaluateParams
) -> dict[str, pd.DataFrame]:
    """Rows for DVC plots: sampled predicted vs actual, and residuals by hour and distance."""
    actual = features[models.TARGET].to_numpy()
    frame = pd.DataFrame(
        {
            "split": split,
            "actual": actual.round(4),
            "predicted": predicted.round(4),
            "residual": (predicted - actual).round(4),
            "hour": features["hour"].to_numpy(),
            "distance_bucket": distance_buckets(
                features["trip_distance"], params.distance_buckets_miles
            ),
        }
    )

    def by(column: str) -> pd.DataFrame:
        grouped = frame.groupby(column, observed=True, sort=True)["residual"]
        out = grouped.agg(mean_residual="mean", trips="size").reset_index()
        out["rmse"] = grouped.apply(lambda r: float(np.sqrt(np.mean(r**2)))).to_numpy()
        return out.assign(split=split).round(4)

    return {
        "predicted_vs_actual": frame.iloc[:: params.plot_every_nth][
            ["split", "actual", "predicted"]
        ],
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
            features = pd.read_parquet(path)
            predicted = models.predict(model, features, encoders, params["base"].threads)
            actual = features[models.TARGET].to_numpy()
            metrics[split] = regression_metrics(actual, predicted)
            pd.DataFrame({"actual": actual, "predicted": predicted}).to_parquet(
                run.output(args.predictions.format(split=split)), index=False, compression="zstd"
            )
            for name, table in plot_tables(split, features, predicted, params["evaluate"]).items():
                parts.setdefault(name, []).append(table)
        tables = {name: pd.concat(p, ignore_index=True) for name, p in parts.items()}
        plot_files = {name: run.output(args.plots.format(name=name)) for name in tables}
        for name, table in tables.items():
            table.to_csv(plot_files[name], index=False)
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
        rmse[split] = regression_metrics(trips[models.TARGET].to_numpy(), predicted)["rmse"]
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
