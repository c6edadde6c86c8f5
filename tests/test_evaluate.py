"""evaluate's pure parts and its image process, on real months."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from stages import model as models
from stages import plot_images
from stages.common import parse_section
from stages.evaluate import distance_buckets, plot_tables
from tests.conftest import PROJECT_PARAMS, clean_month, encoded_months, project_section


def test_distance_buckets_are_labelled_as_pandas_prints_them_in_distance_order(shared_tlc: Path):
    edges = project_section("evaluate").distance_buckets_miles
    distances = clean_month(shared_tlc, "2025-02")["trip_distance"]
    # Real distances, and values outside every bucket (below, above, missing) beside them.
    values = pd.concat([distances, pd.Series([-1.0, edges[-1] + 1.0, np.nan])], ignore_index=True)
    found = distance_buckets(values, edges)
    assert found.astype(str).equals(pd.cut(values, edges, include_lowest=True).astype(str))
    assert found.iloc[-3:].isna().all() and found.iloc[:-3].notna().all()
    lows = [float(label[1:].split(",")[0]) for label in found.cat.categories]
    assert lows == sorted(lows) and len(lows) == len(edges) - 1


def test_plot_tables_list_distance_buckets_by_distance(tables: dict[str, Path]):
    table = pd.read_csv(tables["residuals_by_distance"])
    for _, part in table.groupby("split"):
        lows = [float(label[1:].split(",")[0]) for label in part["distance_bucket"]]
        assert lows == sorted(lows) and len(lows) > 3


@pytest.fixture(scope="module")
def tables(small_tlc: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """evaluate's plot tables of a ridge model fitted on a real month, as CSV files."""
    encoders, (train, validation) = encoded_months(small_tlc, "2025-01", "2025-02")
    model = models.fit(
        train, encoders, parse_section("model", PROJECT_PARAMS["model"]), seed=42, threads=1
    )
    parts: dict[str, list[pd.DataFrame]] = {}
    for split, features in (("validation", validation), ("test", train)):
        predicted = models.predict(model, features, encoders, 1)
        for name, table in plot_tables(
            split, features, predicted, project_section("evaluate")
        ).items():
            parts.setdefault(name, []).append(table)
    folder = tmp_path_factory.mktemp("plots")
    paths = {}
    for name, p in parts.items():
        paths[name] = folder / f"{name}.csv"
        pd.concat(p, ignore_index=True).to_csv(paths[name], index=False)
    return paths


def test_the_image_process_draws_every_plot(tables: dict[str, Path], tmp_path: Path):
    with plot_images.renderer() as images:
        pngs = images.render(tables, tmp_path)
    assert [p.name for p in pngs] == [f"{name}.png" for name in plot_images.DRAWN]
    for png in pngs:
        assert png.parent == tmp_path.resolve()
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_the_image_process_names_what_failed(tables: dict[str, Path], tmp_path: Path):
    broken = tmp_path / "broken.csv"
    broken.write_text("split,actual\nvalidation,not-a-number\n")
    with plot_images.renderer() as images, pytest.raises(plot_images.RenderError) as failed:
        images.render(tables | {plot_images.SCATTER: broken}, tmp_path)
    message = str(failed.value)
    assert "plot images (-m stages.plot_images) exited 1" in message
    assert "not-a-number" in message or "predicted" in message


def test_an_unused_image_process_is_not_left_behind():
    with plot_images.renderer() as images:
        process = images.process
    assert process.poll() is not None
