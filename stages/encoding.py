"""The features' encoding: trips -> the integer codes and numbers every model reads.

One implementation for the features stage (training, validation and test months) and for the
registered model scoring raw trips (stages.request): a trip is encoded the same way wherever it
is scored. Vocabularies come from the encoders file the features stage writes.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

TARGET = "duration_minutes"
# pickup * PAIR_BASE + dropoff: a pair key that sorts and prints as the two zone ids.
PAIR_BASE = 1000
UNKNOWN = 0  # code 0 of every vocabulary: not seen in the training months


def _codes(values: np.ndarray, vocabulary: np.ndarray) -> np.ndarray:
    """1-based position of each value in the sorted vocabulary, UNKNOWN where absent."""
    if len(vocabulary) == 0:
        return np.zeros(len(values), dtype=np.int32)
    pos = np.searchsorted(vocabulary, values)
    found = vocabulary[np.minimum(pos, len(vocabulary) - 1)] == values
    return np.where(found, pos + 1, UNKNOWN).astype(np.int32)


def encode(trips: pd.DataFrame, encoders: dict) -> pd.DataFrame:
    """Integer codes and numeric features, one row per trip; the target, when `trips` has it
    (training and evaluation), stays as it is."""
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
    table = pd.DataFrame(
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
        }
    )
    if TARGET in trips:
        table[TARGET] = trips[TARGET].to_numpy(np.float64)
    return table
