#!/bin/bash
# Issue 13, target 4 in the pipeline itself: the real January replicated 256x
# (benchmarks/scaled_data.py: 12.4M raw trips, 11.4M clean, about a season of yellow taxi) as
# the training month of a fresh clone, 2025-02 and 2025-03 the real months. Prints each
# command's wall time and the largest process under it (GNU time's maximum RSS over dvc and
# the stage processes).
#
#   benchmarks/season.sh [workdir]      # default /tmp/taxi-season; about 4 min and 2 GB of disk
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
work=${1:-/tmp/taxi-season}
tlc=${TLC_SOURCE:-$root/../shared/nyc-taxi}
rm -rf "$work"
mkdir -p "$work/source"
git clone -q "$root" "$work/clone"
cd "$work/clone"
make env >/dev/null
.venv/bin/python - "$tlc" "$work/source" <<'PY'
import sys
from pathlib import Path

from benchmarks.scaled_data import write_scaled

tlc, out = Path(sys.argv[1]), Path(sys.argv[2])
written = write_scaled(tlc / "green_tripdata_2025-01.parquet", [256], out / "scaled", seed=42)
written[256].rename(out / "green_tripdata_2025-01.parquet")
PY
for name in green_tripdata_2025-02.parquet green_tripdata_2025-03.parquet taxi_zone_lookup.csv; do
  ln -s "$tlc/$name" "$work/source/$name"
done
export TLC_SOURCE=$work/source
# The stages' `python` is the project's environment, as under `uv run`.
export PATH="$work/clone/.venv/bin:$PATH"
timed() { /usr/bin/time -f "$1: %e s wall, largest process %M KiB" "${@:2}"; }
timed "dvc repro (ridge)" dvc repro >"$work/repro.log" 2>&1 || { tail "$work/repro.log"; exit 1; }
grep -E "fitted|INFO \{|wall" "$work/repro.log" | cut -c1-160
timed "dvc exp run -S model.type=xgboost" dvc exp run -S model.type=xgboost \
  >"$work/exp.log" 2>&1 || { tail "$work/exp.log"; exit 1; }
grep -E "fitted|INFO \{|wall" "$work/exp.log" | cut -c1-160
