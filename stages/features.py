"""features: clean months -> integer-coded feature tables per split, and the encoders as JSON.

Vocabularies are learnt from the training months only and written as plain, diffable JSON
(no pickled encoder). Encoding is vectorised: np.searchsorted against sorted vocabularies.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from stages.common import (
    SPLITS,
    BadInputError,
    FeaturesParams,
    load_params,
    run_stage,
    write_json,
)
from stages.tracking import stage_run

log = logging.getLogger("stages.features")
# pickup * PAIR_BASE + dropoff: a pair key that sorts and prints as the two zone ids.
PAIR_BASE = 1000
UNKNOWN = 0  # code 0 of every vocabulary: not seen in the training months


def read_zones(path: Path) -> pd.DataFrame:
    zones = pd.read_csv(path, usecols=["LocationID", "Borough"])
    return zones.assign(Borough=zones["Borough"].fillna("Unknown"))


def fit_encoders(train: pd.DataFrame, zones: pd.DataFrame, params: FeaturesParams) -> dict:
    """Vocabularies of zones, boroughs and frequent pickup-dropoff pairs, from training trips."""
    pair_keys = (
        train["pickup_zone"].to_numpy(np.int64) * PAIR_BASE + train["dropoff_zone"].to_numpy()
    )
    keys, counts = np.unique(pair_keys, return_counts=True)
    frequent = keys[counts >= params.min_pair_count]
    zones = zones.sort_values("LocationID")
    return {
        "pairs": [f"{k // PAIR_BASE}-{k % PAIR_BASE}" for k in frequent.tolist()],
        "zones": zones["LocationID"].astype(int).tolist(),
        "zone_borough": zones["Borough"].tolist(),
        "boroughs": sorted(zones["Borough"].unique().tolist()),
        "clip_distance_miles": params.clip_distance_miles,
    }


def _codes(values: np.ndarray, vocabulary: np.ndarray) -> np.ndarray:
    """1-based position of each value in the sorted vocabulary, UNKNOWN where absent."""
    if len(vocabulary) == 0:
        return np.zeros(len(values), dtype=np.int32)
    pos = np.searchsorted(vocabulary, values)
    found = vocabulary[np.minimum(pos, len(vocabulary) - 1)] == values
    return np.where(found, pos + 1, UNKNOWN).astype(np.int32)


def encode(trips: pd.DataFrame, encoders: dict) -> pd.DataFrame:
    """Integer codes and numeric features, one row per trip; the target stays as it is."""
    pair_vocab = np.array(
        [int(a) * PAIR_BASE + int(b) for a, b in (p.split("-") for p in encoders["pairs"])],
        dtype=np.int64,
    )
    zone_vocab = np.asarray(encoders["zones"], dtype=np.int64)
    borough_vocab = np.asarray(encoders["boroughs"], dtype=object)
    # zone code -> borough code, with UNKNOWN mapped to UNKNOWN
    zone_to_borough = np.concatenate(
        [[UNKNOWN], np.searchsorted(borough_vocab, np.asarray(encoders["zone_borough"])) + 1]
    ).astype(np.int8)

    pickup = trips["pickup_zone"].to_numpy(np.int64)
    dropoff = trips["dropoff_zone"].to_numpy(np.int64)
    pickup_code = _codes(pickup, zone_vocab)
    dropoff_code = _codes(dropoff, zone_vocab)
    when = trips["pickup_datetime"].dt
    return pd.DataFrame(
        {
            "pair_code": _codes(pickup * PAIR_BASE + dropoff, pair_vocab),
            "pickup_zone_code": pickup_code.astype(np.int16),
            "dropoff_zone_code": dropoff_code.astype(np.int16),
            "pickup_borough_code": zone_to_borough[pickup_code],
            "dropoff_borough_code": zone_to_borough[dropoff_code],
            "hour": when.hour.to_numpy(np.int8),
            "weekday": when.day_of_week.to_numpy(np.int8),
            "trip_distance": np.minimum(
                trips["trip_distance"].to_numpy(np.float64), encoders["clip_distance_miles"]
            ),
            "duration_minutes": trips["duration_minutes"].to_numpy(np.float64),
        }
    )


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
    args = parser.parse_args(argv)

    params = load_params("data", "features")
    clean_paths = {
        split: [Path(args.clean.format(month=m)) for m in params["data"].months_of(split)]
        for split in SPLITS
    }
    inputs = [path for paths in clean_paths.values() for path in paths] + [args.zones]
    with stage_run("features", params, inputs=inputs) as run:
        splits = {split: read_split(paths) for split, paths in clean_paths.items()}
        encoders = fit_encoders(splits["train"], read_zones(args.zones), params["features"])
        tables = {split: encode(trips, encoders) for split, trips in splits.items()}
        for split, table in tables.items():
            table.to_parquet(
                run.output(args.out.format(split=split)), index=False, compression="zstd"
            )
        write_json(run.output(args.encoders), encoders)
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
