"""features: clean months -> integer-coded feature tables per split, and the encoders as JSON.

Vocabularies are learnt from the training months only and written as plain, diffable JSON
(no pickled encoder). Encoding (stages.encoding) looks codes up in tables indexed by zone id
and pair key, a chunk of trips at a time.
"""

from __future__ import annotations

import argparse
import csv
import logging
from pathlib import Path

import numpy as np

from stage_runtime.tracking import stage_run
from stages.common import (
    SPLITS,
    BadInputError,
    FeaturesParams,
    load_params,
    run_stage,
    write_json,
)
from stages.encoding import (
    PAIR_BASE,
    Table,
    concat_tables,
    dense_range,
    encode,
    n_rows,
    read_table,
    write_table,
)
from stages.request import example_request

log = logging.getLogger("stages.features")
EXAMPLE_TRIPS = 5  # real training trips, logged with the model as its input example
LOOKUP_COLUMNS = ("LocationID", "Borough")  # the zone lookup's columns this stage reads
# A borough the lookup leaves blank or marks missing (zone 265 has "N/A") is "Unknown", as the
# lookup's own zone 264 is: the strings pandas' read_csv reads as missing, which this stage
# used before it read the CSV itself.
MISSING_BOROUGH = frozenset(
    {"", "#N/A", "#N/A N/A", "#NA", "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan"}
    | {"null", "-NaN", "-nan", "1.#IND", "1.#QNAN", "-1.#IND", "-1.#QNAN"}
)
UNKNOWN_BOROUGH = "Unknown"


def read_zones(path: Path) -> dict[str, np.ndarray]:
    """The zone lookup's LocationID (int64) and Borough (str) columns."""
    try:
        with open(path, newline="", encoding="utf-8") as file:
            reader = csv.DictReader(file)
            rows, header = list(reader), reader.fieldnames or []
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise BadInputError(f"{path}: cannot read the zone lookup: {exc}") from None
    missing = [c for c in LOOKUP_COLUMNS if c not in header]
    if missing:
        raise BadInputError(f"{path}: zone lookup without column(s) {', '.join(missing)}")
    if not rows:
        raise BadInputError(f"{path}: zone lookup without zones")
    try:
        ids = np.array([int(row["LocationID"]) for row in rows], dtype=np.int64)
    except (TypeError, ValueError) as exc:
        raise BadInputError(
            f"{path}: column LocationID: expected integer zone ids ({exc})"
        ) from None
    boroughs = [
        UNKNOWN_BOROUGH if (row["Borough"] or "") in MISSING_BOROUGH else row["Borough"]
        for row in rows
    ]
    return {"LocationID": ids, "Borough": np.array(boroughs, dtype=object)}


def fit_encoders(
    train: Table, zones: Table, params: FeaturesParams, max_distance_miles: float
) -> dict:
    """Vocabularies of zones, boroughs and frequent pickup-dropoff pairs, from training trips,
    and the distance range of the trips the model learns from (prepare's filter): a request
    outside it is refused when the model scores raw trips (stages.request)."""
    pair_keys = np.asarray(train["pickup_zone"], dtype=np.int64) * PAIR_BASE + np.asarray(
        train["dropoff_zone"]
    )
    if dense_range(pair_keys):  # zone ids: a bincount, not a sort (0.01 s at 2.85M trips)
        frequent = np.flatnonzero(np.bincount(pair_keys) >= params.min_pair_count)
    else:
        keys, counts = np.unique(pair_keys, return_counts=True)
        frequent = keys[counts >= params.min_pair_count]
    zone_ids = np.asarray(zones["LocationID"], dtype=np.int64)
    order = np.argsort(zone_ids, kind="stable")
    zone_boroughs = np.asarray(zones["Borough"], dtype=object)[order].tolist()
    return {
        "pairs": [f"{k // PAIR_BASE}-{k % PAIR_BASE}" for k in frequent.tolist()],
        "zones": zone_ids[order].tolist(),
        "zone_borough": zone_boroughs,
        "boroughs": sorted(set(zone_boroughs)),
        "clip_distance_miles": params.clip_distance_miles,
        "max_distance_miles": max_distance_miles,
    }


def read_split(paths: list[Path]) -> dict[str, np.ndarray]:
    for path in paths:
        if not path.is_file():
            raise BadInputError(f"{path}: cleaned trips not found (run prepare)")
    return concat_tables([read_table(path) for path in paths])


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
            write_table(table, run.output(args.out.format(split=split)))
        write_json(run.output(args.encoders), encoders)
        write_table(example_request(splits["train"], EXAMPLE_TRIPS), run.output(args.example))
        rows = {split: n_rows(table) for split, table in tables.items()}
        run.log_metrics(
            {f"{s}_rows": n for s, n in rows.items()} | {"vocabulary_pairs": len(encoders["pairs"])}
        )
    log.info(
        "rows %s; %d pickup-dropoff pairs in the vocabulary",
        rows,
        len(encoders["pairs"]),
    )


if __name__ == "__main__":
    run_stage("features", main)
