"""features: clean months -> integer-coded feature tables per split, and the encoders as JSON.

Vocabularies are learnt from the training months only and written as plain, diffable JSON
(no pickled encoder). Encoding (stages.encoding) looks codes up in tables indexed by zone id
and pair key, a chunk of trips at a time.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from stage_runtime.tracking import stage_run
from stages.common import (
    SPLITS,
    BadInputError,
    FeaturesParams,
    load_params,
    run_stage,
    write_json,
)
from stages.encoding import PAIR_BASE, dense_range, encode
from stages.request import example_request

log = logging.getLogger("stages.features")
EXAMPLE_TRIPS = 5  # real training trips, logged with the model as its input example


def read_zones(path: Path) -> pd.DataFrame:
    zones = pd.read_csv(path, usecols=["LocationID", "Borough"])
    return zones.assign(Borough=zones["Borough"].fillna("Unknown"))


def fit_encoders(
    train: pd.DataFrame, zones: pd.DataFrame, params: FeaturesParams, max_distance_miles: float
) -> dict:
    """Vocabularies of zones, boroughs and frequent pickup-dropoff pairs, from training trips,
    and the distance range of the trips the model learns from (prepare's filter): a request
    outside it is refused when the model scores raw trips (stages.request)."""
    pair_keys = (
        train["pickup_zone"].to_numpy(np.int64) * PAIR_BASE + train["dropoff_zone"].to_numpy()
    )
    if dense_range(pair_keys):  # zone ids: a bincount, not a sort (0.01 s at 2.85M trips)
        frequent = np.flatnonzero(np.bincount(pair_keys) >= params.min_pair_count)
    else:
        keys, counts = np.unique(pair_keys, return_counts=True)
        frequent = keys[counts >= params.min_pair_count]
    zones = zones.sort_values("LocationID")
    return {
        "pairs": [f"{k // PAIR_BASE}-{k % PAIR_BASE}" for k in frequent.tolist()],
        "zones": zones["LocationID"].astype(int).tolist(),
        "zone_borough": zones["Borough"].tolist(),
        "boroughs": sorted(zones["Borough"].unique().tolist()),
        "clip_distance_miles": params.clip_distance_miles,
        "max_distance_miles": max_distance_miles,
    }


def read_split(paths: list[Path]) -> pd.DataFrame:
    for path in paths:
        if not path.is_file():
            raise BadInputError(f"{path}: cleaned trips not found (run prepare)")
    return pd.concat([pd.read_parquet(path) for path in paths], ignore_index=True)


def main(argv: list[str] | None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clean", required=True, help="cleaned month pattern with {month}")
    parser.add_argument("--zones", required=True, type=Path)
    parser.add_argument("--out", required=True, help="feature table pattern with {split}")
    parser.add_argument("--encoders", required=True, type=Path)
    parser.add_argument("--example", required=True, type=Path, help="the model's input example")
    args = parser.parse_args(argv)

    params = load_params("data", "prepare", "features")
    clean_paths = {
        split: [Path(args.clean.format(month=m)) for m in params["data"].months_of(split)]
        for split in SPLITS
    }
    inputs = [path for paths in clean_paths.values() for path in paths] + [args.zones]
    with stage_run("features", params, inputs=inputs) as run:
        splits = {split: read_split(paths) for split, paths in clean_paths.items()}
        encoders = fit_encoders(
            splits["train"],
            read_zones(args.zones),
            params["features"],
            max_distance_miles=params["prepare"].max_distance_miles,
        )
        tables = {split: encode(trips, encoders) for split, trips in splits.items()}
        for split, table in tables.items():
            table.to_parquet(
                run.output(args.out.format(split=split)), index=False, compression="zstd"
            )
        write_json(run.output(args.encoders), encoders)
        example_request(splits["train"], EXAMPLE_TRIPS).to_parquet(
            run.output(args.example), index=False
        )
        run.log_metrics(
            {f"{s}_rows": len(t) for s, t in tables.items()}
            | {"vocabulary_pairs": len(encoders["pairs"])}
        )
    log.info(
        "rows %s; %d pickup-dropoff pairs in the vocabulary",
        {s: len(t) for s, t in tables.items()},
        len(encoders["pairs"]),
    )


if __name__ == "__main__":
    run_stage("features", main)
