"""SVG images of evaluate's DVC plots, for its MLflow runs (the UI shows images, not CSV).

Written as text by this module, not drawn by matplotlib: importing matplotlib cost 0.5-1 s, so
evaluate ran it in a process of its own and still waited for it about 0.8 s (FINDINGS, issue
13 target 1); three charts of points and lines are a few hundred lines of SVG. Reads the plot
tables evaluate wrote (CSV), imports nothing beyond the standard library.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from html import escape as html_escape
from pathlib import Path

SCATTER = "predicted_vs_actual"
LINES = (("residuals_by_hour", "hour"), ("residuals_by_distance", "distance_bucket"))
DRAWN = (SCATTER, *(name for name, _ in LINES))  # the tables drawn, in this order
# One colour per split, in the order of their names (matplotlib's first three).
COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd")
FONT = 'font-family="DejaVu Sans, Arial, sans-serif" font-size="12"'


def escape(text: str) -> str:
    """Text for an SVG element (html's escape: xml.sax.saxutils imports http.client)."""
    return html_escape(text, quote=False)


def read_table(path: Path, columns: Sequence[str]) -> dict[str, list[dict[str, str]]]:
    """A plot table's rows by split, splits in name order; ValueError naming the file and the
    column when one the chart needs is missing."""
    by_split: dict[str, list[dict[str, str]]] = {}
    with open(path, newline="") as rows:
        reader = csv.DictReader(rows)
        missing = [c for c in ("split", *columns) if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: no column {', '.join(missing)} (plot table)")
        for row in reader:
            by_split.setdefault(row["split"], []).append(row)
    return dict(sorted(by_split.items()))


def number(path: Path, row: dict[str, str], column: str) -> float:
    try:
        return float(row[column])
    except (TypeError, ValueError):
        raise ValueError(f"{path}: {column} {row[column]!r} is not a number") from None


def nice_ticks(high: float, count: int = 5) -> list[float]:
    """Round tick values from 0 to at least `high`: steps of 1, 2 or 5 times a power of ten."""
    if high <= 0 or not math.isfinite(high):
        return [0.0, 1.0]
    raw = high / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    return [i * step for i in range(math.ceil(high / step - 1e-9) + 1)]


class Chart:
    """One SVG chart: a plot area with axes from 0 on y (and x when numeric), ticks, a title,
    axis labels and a legend of the splits."""

    def __init__(
        self, width: int, height: int, title: str, labels: tuple[str, str], below: int = 50
    ):
        """`labels`: the x and y axes'; `below`: the room under the plot area for the x
        axis's tick labels and label (rotated bucket labels need about 100 pixels)."""
        x_label, y_label = labels
        self.left, self.right, self.top, self.bottom = 60, width - 15, 35, height - below
        self.parts = [
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" {FONT}>',
            f'<rect width="{width}" height="{height}" fill="white"/>',
            f'<text x="{width / 2:g}" y="20" text-anchor="middle" font-size="14">'
            f"{escape(title)}</text>",
            f'<text x="{(self.left + self.right) / 2:g}" y="{height - 8}" '
            f'text-anchor="middle">{escape(x_label)}</text>',
            f'<text transform="translate(14 {(self.top + self.bottom) / 2:g}) rotate(-90)" '
            f'text-anchor="middle">{escape(y_label)}</text>',
        ]

    def x(self, fraction: float) -> float:
        return self.left + fraction * (self.right - self.left)

    def y(self, fraction: float) -> float:
        return self.bottom - fraction * (self.bottom - self.top)

    def axes(self, x_ticks: list[tuple[float, str]], y_ticks: list[float], rotate: bool) -> None:
        """Axis lines, and ticks at fractions of the plot area with their labels."""
        top = y_ticks[-1]
        for value in y_ticks:
            y = self.y(value / top)
            self.parts.append(
                f'<line x1="{self.left}" x2="{self.right}" y1="{y:.1f}" y2="{y:.1f}" '
                f'stroke="#dddddd"/><text x="{self.left - 5}" y="{y + 4:.1f}" '
                f'text-anchor="end">{value:g}</text>'
            )
        for fraction, label in x_ticks:
            x, y = self.x(fraction), self.bottom + 16
            turn = f' transform="rotate(-45 {x:.1f} {y})" text-anchor="end"' if rotate else ""
            anchor = "" if rotate else ' text-anchor="middle"'
            self.parts.append(
                f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{self.bottom}" y2="{self.bottom + 4}" '
                f'stroke="black"/><text x="{x:.1f}" y="{y}"{turn}{anchor}>{escape(label)}</text>'
            )
        self.parts.append(
            f'<polyline points="{self.left},{self.top} {self.left},{self.bottom} '
            f'{self.right},{self.bottom}" fill="none" stroke="black"/>'
        )

    def legend(self, names: Sequence[str]) -> None:
        for i, name in enumerate(names):
            y = self.top + 12 + 16 * i
            self.parts.append(
                f'<circle cx="{self.left + 14}" cy="{y - 4}" r="4" fill="{COLOURS[i]}"/>'
                f'<text x="{self.left + 22}" y="{y}">{escape(name)}</text>'
            )

    def write(self, path: Path) -> Path:
        path.write_text("\n".join([*self.parts, "</svg>"]) + "\n")
        return path


def scatter(table: Path, path: Path) -> Path:
    """Predicted against actual minutes, one colour per split, and the diagonal."""
    by_split = read_table(table, ("actual", "predicted"))
    points = {
        split: [(number(table, r, "actual"), number(table, r, "predicted")) for r in rows]
        for split, rows in by_split.items()
    }
    high = max((max(a, p) for pairs in points.values() for a, p in pairs), default=1.0)
    ticks = nice_ticks(high)
    top = ticks[-1]
    chart = Chart(500, 500, "Predicted vs actual", ("actual (min)", "predicted (min)"))
    chart.axes([(t / top, f"{t:g}") for t in ticks], ticks, rotate=False)
    for colour, pairs in zip(COLOURS, points.values(), strict=False):
        chart.parts.append(f'<g fill="{colour}" fill-opacity="0.4">')
        chart.parts += [
            f'<circle cx="{chart.x(a / top):.1f}" cy="{chart.y(p / top):.1f}" r="1.5"/>'
            for a, p in pairs
        ]
        chart.parts.append("</g>")
    chart.parts.append(
        f'<line x1="{chart.x(0)}" y1="{chart.y(0)}" x2="{chart.x(1)}" y2="{chart.y(1)}" '
        f'stroke="black" stroke-width="0.8"/>'
    )
    chart.legend(list(points))
    return chart.write(path)


def lines(table: Path, x: str, path: Path) -> Path:
    """RMSE by `x` (hour, distance bucket: categories in the table's order), one line per
    split."""
    by_split = read_table(table, (x, "rmse"))
    categories = list(dict.fromkeys(r[x] for rows in by_split.values() for r in rows))
    place = {c: (i + 0.5) / len(categories) for i, c in enumerate(categories)}
    series = {
        split: [(place[r[x]], number(table, r, "rmse")) for r in rows]
        for split, rows in by_split.items()
    }
    high = max((v for values in series.values() for _, v in values), default=1.0)
    ticks = nice_ticks(high)
    top = ticks[-1]
    chart = Chart(700, 450, f"RMSE by {x}", (x, "RMSE (min)"), below=110)
    chart.axes([(place[c], c) for c in categories], ticks, rotate=True)
    for colour, values in zip(COLOURS, series.values(), strict=False):
        coordinates = [(chart.x(f), chart.y(v / top)) for f, v in values]
        joined = " ".join(f"{cx:.1f},{cy:.1f}" for cx, cy in coordinates)
        chart.parts.append(f'<polyline points="{joined}" fill="none" stroke="{colour}"/>')
        chart.parts += [
            f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="3" fill="{colour}"/>' for cx, cy in coordinates
        ]
    chart.legend(list(series))
    return chart.write(path)


def draw(tables: dict[str, Path], directory: Path) -> list[Path]:
    """The SVG of each plot table in `directory`: predicted against actual minutes, and the
    RMSE by pickup hour and by distance bucket, one series per split."""
    paths = [scatter(tables[SCATTER], directory / f"{SCATTER}.svg")]
    paths += [lines(tables[name], x, directory / f"{name}.svg") for name, x in LINES]
    return paths
