"""The real January trips replicated to N times their number, as a raw TLC file.

Copy 0 is the real file, row for row. Every further copy resamples the real trips with
replacement, moves each trip's pickup and dropoff by the same random offset (up to
MAX_SHIFT_MINUTES, so durations stay real) and perturbs its distance by about 1%: the data
keep the real columns and distributions without being byte-identical copies.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

MAX_SHIFT_MINUTES = 15
DISTANCE_NOISE = 0.01
TIMESTAMPS = ("lpep_pickup_datetime", "lpep_dropoff_datetime")


def resampled_copy(table: pa.Table, rng: np.random.Generator) -> pa.Table:
    n = table.num_rows
    copy = table.take(pa.array(rng.integers(0, n, n)))
    shift_us = rng.integers(-MAX_SHIFT_MINUTES * 60, MAX_SHIFT_MINUTES * 60 + 1, n) * 1_000_000
    shift = pa.array(shift_us, type=pa.duration("us"))
    for name in TIMESTAMPS:
        column = copy.column(name)
        moved = pc.add(column.cast(pa.timestamp("us")), shift).cast(column.type)
        copy = copy.set_column(copy.schema.get_field_index(name), name, moved)
    noise = pa.array(1 + rng.normal(0, DISTANCE_NOISE, n))
    noisy = pc.round(pc.multiply(copy.column("trip_distance"), noise), 2)  # nulls stay nulls
    index = copy.schema.get_field_index("trip_distance")
    return copy.set_column(index, copy.schema.field(index), noisy)


def write_scaled(source: Path, scales: list[int], out_dir: Path, seed: int) -> dict[int, Path]:
    """One raw file per scale; a larger scale extends the smaller one's rows."""
    out_dir.mkdir(parents=True, exist_ok=True)
    table = pq.read_table(source)
    rng = np.random.default_rng(seed)
    parts = [table]
    paths = {}
    for scale in sorted(scales):
        while len(parts) < scale:
            parts.append(resampled_copy(table, rng))
        if scale == 1:
            paths[scale] = source
            continue
        path = out_dir / f"{source.stem}_x{scale}.parquet"
        pq.write_table(pa.concat_tables(parts[:scale]), path, compression="zstd")
        paths[scale] = path
    return paths
