"""evaluate's pure parts and its SVG images, on real months."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from stages import model as models
from stages import plot_images
from stages.common import parse_section
from stages.evaluate import bucket_labels, distance_buckets, plot_tables, write_csv
from tests.conftest import PROJECT_PARAMS, clean_month, encoded_months, project_section


def test_distance_buckets_are_labelled_as_pandas_prints_them_in_distance_order(shared_tlc: Path):
    edges = project_section("evaluate").distance_buckets_miles
    distances = clean_month(shared_tlc, "2025-02")["trip_distance"]
    # Real distances, and values outside every bucket (below, above, missing) beside them.
    values = pd.concat([distances, pd.Series([-1.0, edges[-1] + 1.0, np.nan])], ignore_index=True)
    values = pd.concat([values, pd.Series(edges, dtype=float)], ignore_index=True)  # the edges
    found = distance_buckets(values.to_numpy(), edges)
    labels = bucket_labels(edges)
    named = np.array([*labels, "nan"], dtype=object)[found]  # -1: the last, "nan"
    expected = pd.cut(values, edges, include_lowest=True)
    assert named.tolist() == [str(bucket) for bucket in expected]
    assert labels == [str(c) for c in expected.cat.categories]
    assert (found[len(distances) : len(distances) + 3] == -1).all()
    lows = [float(label[1:].split(",")[0]) for label in labels]
    assert lows == sorted(lows) and len(lows) == len(edges) - 1


@pytest.mark.parametrize("edges", [[0.5, 0.75, 1.0], [0, 0.0001, 0.00015, 1], [1.25, 2.5, 100]])
def test_bucket_labels_are_pd_cuts_for_fractional_edges(edges):
    expected = pd.cut(pd.Series(edges, dtype=float), edges, include_lowest=True)
    assert bucket_labels(edges) == [str(c) for c in expected.cat.categories]


def pandas_plot_tables(split, features, predicted, params) -> dict[str, pd.DataFrame]:
    """evaluate's plot tables as pandas computed them before the stage dropped pandas: the
    reference the stage's CSV files are held to, byte for byte."""
    actual = features[models.TARGET]
    frame = pd.DataFrame(
        {
            "split": split,
            "actual": actual.round(4),
            "predicted": predicted.round(4),
            "residual": (predicted - actual).round(4),
            "hour": features["hour"],
            "distance_bucket": pd.cut(
                features["trip_distance"], params.distance_buckets_miles, include_lowest=True
            ).astype(str),
        }
    )

    def by(column: str) -> pd.DataFrame:
        grouped = frame.groupby(column, observed=True, sort=False)["residual"]
        out = grouped.agg(mean_residual="mean", trips="size").reset_index()
        out["rmse"] = grouped.apply(lambda r: float(np.sqrt(np.mean(r**2)))).to_numpy()
        return out.assign(split=split).round(4)

    by_distance = by("distance_bucket")
    lows = by_distance["distance_bucket"].str[1:].str.split(",").str[0].astype(float)
    return {
        "predicted_vs_actual": frame.iloc[:: params.plot_every_nth][
            ["split", "actual", "predicted"]
        ],
        "residuals_by_hour": by("hour").sort_values("hour"),
        "residuals_by_distance": by_distance.iloc[np.argsort(lows.to_numpy())],
    }


def test_plot_tables_are_the_pandas_groupby_to_the_byte(small_tlc: Path, tmp_path: Path):
    encoders, (train, validation) = encoded_months(small_tlc, "2025-01", "2025-02")
    params = project_section("evaluate")
    model = models.fit(
        train, encoders, parse_section("model", PROJECT_PARAMS["model"]), seed=42, threads=1
    )
    ours, theirs = {}, {}
    for split, features in (("validation", validation), ("test", train)):
        predicted = models.predict(model, features, encoders, 1)
        for name, table in plot_tables(split, features, predicted, params).items():
            ours.setdefault(name, []).append(table)
        frame = pd.DataFrame(features)
        for name, table in pandas_plot_tables(split, frame, predicted, params).items():
            theirs.setdefault(name, []).append(table)
    for name, parts in ours.items():
        write_csv(parts, tmp_path / f"{name}.csv")
        pd.concat(theirs[name], ignore_index=True).to_csv(tmp_path / f"{name}.pd.csv", index=False)
        found = (tmp_path / f"{name}.csv").read_bytes()
        assert found == (tmp_path / f"{name}.pd.csv").read_bytes(), name
        assert found.count(b"\n") > 10


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
    parts: dict[str, list[dict]] = {}
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
        write_csv(p, paths[name])
    return paths


def test_every_plot_is_drawn_as_an_svg_of_its_table(tables: dict[str, Path], tmp_path: Path):
    import xml.etree.ElementTree as ET

    images = plot_images.draw(tables, tmp_path)
    assert [p.name for p in images] == [f"{name}.svg" for name in plot_images.DRAWN]
    svg = "{http://www.w3.org/2000/svg}"
    scatter = ET.parse(images[0]).getroot()  # well-formed XML, or this raises
    splits = pd.read_csv(tables[plot_images.SCATTER]).groupby("split").size()
    groups = scatter.findall(f"{svg}g")
    assert [len(g.findall(f"{svg}circle")) for g in groups] == list(splits)
    texts = {t.text for t in scatter.iter(f"{svg}text")}
    assert {"actual (min)", "predicted (min)", *splits.index} <= texts
    for image, (name, x) in zip(images[1:], plot_images.LINES, strict=True):
        root = ET.parse(image).getroot()
        table = pd.read_csv(tables[name])
        lines = root.findall(f"{svg}polyline")[1:]  # after the axes
        assert [len(line.get("points").split()) for line in lines] == list(
            table.groupby("split").size()
        )
        assert set(table[x].astype(str)) <= {t.text for t in root.iter(f"{svg}text")}


def test_a_plot_table_that_is_not_numbers_is_named(tables: dict[str, Path], tmp_path: Path):
    broken = tmp_path / "broken.csv"
    broken.write_text("split,actual,predicted\nvalidation,not-a-number,3\n")
    with pytest.raises(ValueError, match=r"broken\.csv: actual 'not-a-number' is not a number"):
        plot_images.draw(tables | {plot_images.SCATTER: broken}, tmp_path)
    broken.write_text("split,actual\nvalidation,3\n")
    with pytest.raises(ValueError, match=r"broken\.csv: no column predicted"):
        plot_images.draw(tables | {plot_images.SCATTER: broken}, tmp_path)


def test_ticks_are_round_and_cover_the_data():
    assert plot_images.nice_ticks(47.3) == [0, 10, 20, 30, 40, 50]
    assert plot_images.nice_ticks(4.7) == [0, 1, 2, 3, 4, 5]
    assert plot_images.nice_ticks(0.0) == [0.0, 1.0]
