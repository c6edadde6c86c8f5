"""train: the training months' features -> a model file (JSON, no pickle) and training metrics."""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np

from registry import champion
from stage_runtime import record
from stage_runtime.tracking import StageRun, model_lineage, reconcile_orphans, stage_run
from stages import model as models
from stages import request
from stages.common import load_params, read_json, run_stage, write_json
from stages.encoding import FEATURE_COLUMNS, count_rows, n_rows, read_table

log = logging.getLogger("stages.train")


def main(argv: list[str] | None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--features", required=True, type=Path)
    parser.add_argument("--encoders", required=True, type=Path)
    parser.add_argument("--example", required=True, type=Path, help="the model's input example")
    parser.add_argument("--model", required=True, type=Path)
    parser.add_argument("--metrics", required=True, type=Path)
    args = parser.parse_args(argv)

    params = load_params("base", "model")
    base, model_params = params["base"], params["model"]
    inputs = [args.features, args.encoders, args.example]
    with stage_run("train", params, inputs=inputs, client=True) as run:
        encoders = read_json(args.encoders)
        if model_params.type == "xgboost" and model_params.xgboost.cluster != "none":
            from stages import cluster

            # The workers read the feature file as partitions; this process only counts it.
            rows = count_rows(args.features, FEATURE_COLUMNS)
            started = time.perf_counter()
            model, train_rmse = cluster.fit_on_cluster(
                args.features, model_params, seed=base.seed, threads=base.threads
            )
            fit_seconds = time.perf_counter() - started
        else:
            features = read_table(args.features, FEATURE_COLUMNS)
            rows = n_rows(features)
            started = time.perf_counter()
            model = models.fit(
                features, encoders, model_params, seed=base.seed, threads=base.threads
            )
            fit_seconds = time.perf_counter() - started
            predicted = models.predict(model, features, encoders, base.threads)
            train_rmse = float(np.sqrt(np.mean((predicted - features[models.TARGET]) ** 2)))
        metrics = {
            "model_type": model_params.type,
            "train_rows": rows,
            "train_rmse": round(train_rmse, 6),
        }
        models.save(model, run.output(args.model))
        write_json(run.output(args.metrics), metrics)
        run.log_metrics(metrics | {"fit_seconds": fit_seconds})
        example = read_table(args.example)
        # After the fit: MLflow's client opens in a thread meanwhile (stage_run(client=True)).
        reconcile_orphans(run.client, model_params.registered_name)
        run.register_model(
            args.model,
            args.encoders,
            model_params.registered_name,
            tags={
                "model_type": model_params.type,
                **model_lineage(),
                **record.file_tags(record.INPUT, run.inputs),
            },
            signature=request.signature_dict(),
            example=example,
        )
        run.after_commit(lambda: _mark_challenger(run, model_params.registered_name))
    log.info("%s fitted on %d trips in %.2f s", model_params.type, rows, fit_seconds)


def _mark_challenger(run: StageRun, name: str) -> None:
    """A new version is the challenger until evaluate decides (an identical model found
    registered keeps its aliases)."""
    if run.registered_new:
        champion.mark_challenger(run.client, name, run.model_version.version)


if __name__ == "__main__":
    run_stage("train", main)
