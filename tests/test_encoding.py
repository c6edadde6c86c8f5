"""stages/encoding.py: the table the stages pass on (numpy columns, parquet through pyarrow),
read and written without pandas."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from stages.common import BadInputError
from stages.encoding import (
    FEATURE_DTYPES,
    concat_tables,
    count_rows,
    n_rows,
    read_table,
    write_table,
)
from tests.conftest import ROOT, assert_tables_equal, encoded_months


@pytest.fixture(scope="module")
def features(small_tlc: Path) -> dict[str, np.ndarray]:
    _, (january,) = encoded_months(small_tlc, "2025-01")
    return january


def test_a_table_round_trips_through_parquet_with_its_dtypes(features, tmp_path: Path):
    path = tmp_path / "train.parquet"
    write_table(features, path)
    assert_tables_equal(read_table(path), features)
    assert [f.name for f in pq.read_schema(path)] == [*FEATURE_DTYPES, "duration_minutes"]
    assert list(read_table(path, columns=["hour", "trip_distance"])) == ["hour", "trip_distance"]
    # pandas reads the same file to the same frame (a notebook, Dask's partitions).
    assert_tables_equal(pd.read_parquet(path), features)
    assert [p.name for p in tmp_path.iterdir()] == ["train.parquet"]  # no temporary left


@pytest.mark.parametrize("reader", [read_table, count_rows], ids=["read_table", "count_rows"])
def test_a_bad_table_file_is_refused_naming_the_file_and_column(reader, features, tmp_path: Path):
    write_table(features, tmp_path / "train.parquet")
    with pytest.raises(BadInputError, match=r"train\.parquet: no column\(s\) nope"):
        reader(tmp_path / "train.parquet", ["hour", "nope"])
    (tmp_path / "text.parquet").write_text("pair_code,hour\n1,2\n")
    with pytest.raises(BadInputError, match=r"text\.parquet: not a readable parquet file"):
        reader(tmp_path / "text.parquet", ["hour"])
    import pyarrow as pa

    pq.write_table(pa.table({"hour": ["eight"]}), tmp_path / "strings.parquet")
    with pytest.raises(BadInputError, match=r"strings\.parquet: column hour: expected numbers"):
        reader(tmp_path / "strings.parquet", ["hour"])


def test_count_rows_reads_the_footer_of_the_file_train_hands_to_the_dask_workers(
    features, tmp_path: Path
):
    path = tmp_path / "train.parquet"
    write_table(features, path)
    assert count_rows(path, ["hour", "trip_distance"]) == n_rows(features) > 1000
    assert count_rows(path, []) == n_rows(features)


def test_rows_and_concatenation_of_dicts_and_frames(features):
    frame = pd.DataFrame(features)
    assert n_rows(features) == n_rows(frame) == len(frame) > 1000
    both = concat_tables([features, frame])
    assert n_rows(both) == 2 * len(frame)
    assert_tables_equal({k: v[: len(frame)] for k, v in both.items()}, features)


# What features, train and evaluate do with their tables, in one process: clean two real months
# (prepare), encode them, fit, predict, the plot tables, the model's input example.
STAGE_PATHS = """
import dataclasses
import sys
from pathlib import Path
from stage_runtime.pyfunc_folder import example_files
from stages import model as m
from stages.evaluate import plot_tables, write_csv
from stages.features import fit_encoders, read_split, read_zones
from stages.prepare import write_clean
from stages.request import example_request
from stages.encoding import encode, read_table, write_table
from tests.conftest import project_section

mirror, out = Path(sys.argv[1]), Path(sys.argv[2])
clean = {}
for month in ("2025-01", "2025-02"):
    clean[month] = out / f"{month}.parquet"
    write_clean(mirror / f"green_tripdata_{month}.parquet", clean[month], "green", month,
                project_section("prepare"))
train = read_split([clean["2025-01"]])
encoders = fit_encoders(train, read_zones(mirror / "taxi_zone_lookup.csv"),
                        project_section("features"), 100)
write_table(encode(train, encoders), out / "train.parquet")
write_table(encode(read_split([clean["2025-02"]]), encoders), out / "validation.parquet")
write_table(example_request(train, 5), out / "example.parquet")
example_files(read_table(out / "example.parquet"))
model_params = project_section("model")
for kind in ("ridge", "lasso", "xgboost"):
    params = dataclasses.replace(model_params, type=kind, alpha=0.05,
                                 xgboost=dataclasses.replace(model_params.xgboost, n_rounds=5))
    model = m.fit(read_table(out / "train.parquet"), encoders, params, seed=42, threads=1)
    validation = read_table(out / "validation.parquet")
    predicted = m.predict(model, validation, encoders, 1)
    tables = plot_tables("validation", validation, predicted, project_section("evaluate"))
    write_csv([tables["residuals_by_hour"]], out / "hour.csv")
print("pandas" in sys.modules)
"""


def test_the_stages_that_train_and_evaluate_run_without_pandas(small_tlc: Path, tmp_path: Path):
    """pandas' import is 0.3 s of each stage process on this machine (FINDINGS, issue 13
    target 1): features, train and evaluate read, encode, fit, score and write without it.
    pyarrow imports it behind some calls (pa.table, pa.array, pq.read_table), and xgboost
    with scikit-learn (stages.model.import_xgboost keeps that out), hence this test."""
    proc = subprocess.run(
        [sys.executable, "-c", STAGE_PATHS, str(small_tlc), str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "False"
    assert (tmp_path / "hour.csv").read_text().startswith("hour,mean_residual,trips,rmse,split")
