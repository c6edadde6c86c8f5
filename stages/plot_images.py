"""PNG images of evaluate's DVC plots, for its MLflow runs (the UI shows images, not CSV).

Drawn in a process of their own that evaluate starts first thing, before its own imports:
importing matplotlib (0.5-1 s, more than drawing the three figures) then runs on the other
core while evaluate imports pandas and scores the splits, instead of after it. The process
imports neither pandas nor any project module; it reads one JSON line on stdin,
`{"tables": {name: csv}, "directory": dir}` (the plot tables evaluate wrote, absolute paths),
draws from the CSV files and answers with the PNGs' paths as one JSON line on stdout. An empty
stdin (evaluate stopped before its tables) draws nothing.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

SCATTER = "predicted_vs_actual"
LINES = (("residuals_by_hour", "hour"), ("residuals_by_distance", "distance_bucket"))
DRAWN = (SCATTER, *(name for name, _ in LINES))  # the tables drawn, in this order
# A stuck renderer fails evaluate instead of holding the pipeline (three small figures take
# well under a second once matplotlib is imported).
RENDER_TIMEOUT_SECONDS = 120.0


class RenderError(RuntimeError):
    """The image process failed or did not answer; the message says how."""


def read_table(path: Path) -> dict[str, list[dict[str, str]]]:
    """A plot table's rows by split, splits in name order (as pandas' groupby gives them)."""
    by_split: dict[str, list[dict[str, str]]] = {}
    with open(path, newline="") as rows:
        for row in csv.DictReader(rows):
            by_split.setdefault(row["split"], []).append(row)
    return dict(sorted(by_split.items()))


def draw(tables: dict[str, Path], directory: Path) -> list[Path]:
    """The PNG of each plot table in `directory`: predicted against actual minutes, and the
    RMSE by pickup hour and by distance bucket, one series per split."""
    # Figures made directly, not through pyplot: no backend, no global figure registry, and
    # pyplot's import (0.1-0.2 s) left out.
    import numpy as np
    from matplotlib.figure import Figure

    logging.getLogger("matplotlib").setLevel(logging.WARNING)

    paths = []
    fig = Figure(figsize=(5, 5))
    ax = fig.subplots()
    for split, rows in read_table(tables[SCATTER]).items():
        # Arrays, not lists: matplotlib masks a list point by point (0.1 s for 4,500 points).
        actual = np.array([r["actual"] for r in rows], dtype=float)
        predicted = np.array([r["predicted"] for r in rows], dtype=float)
        ax.scatter(actual, predicted, s=3, alpha=0.4, label=split)
    ax.plot([0, 60], [0, 60], color="black", linewidth=0.8)
    ax.set(xlabel="actual (min)", ylabel="predicted (min)", title="Predicted vs actual")
    # A fixed corner: "best" tests every point against every candidate place when drawn.
    ax.legend(loc="upper left")
    paths.append(directory / f"{SCATTER}.png")
    fig.savefig(paths[-1], dpi=100)
    for name, x in LINES:
        fig = Figure(figsize=(7, 4))
        ax = fig.subplots()
        for split, rows in read_table(tables[name]).items():
            ax.plot([r[x] for r in rows], [float(r["rmse"]) for r in rows], marker="o", label=split)
        ax.set(xlabel=x, ylabel="RMSE (min)", title=f"RMSE by {x}")
        ax.tick_params(axis="x", labelrotation=45)
        ax.legend()
        # Fixed margins that fit the rotated bucket labels: tight_layout measured every tick
        # label's extent first, a third of the drawing time.
        fig.subplots_adjust(left=0.09, right=0.98, top=0.92, bottom=0.27)
        paths.append(directory / f"{name}.png")
        fig.savefig(paths[-1], dpi=100)
    return paths


class Renderer:
    """The running image process of one evaluate run."""

    def __init__(self, process: subprocess.Popen):
        self.process = process

    def render(
        self, tables: dict[str, Path], directory: Path, timeout: float = RENDER_TIMEOUT_SECONDS
    ) -> list[Path]:
        """Hand the tables over and wait for the images."""
        request = {
            "tables": {name: str(Path(path).resolve()) for name, path in tables.items()},
            "directory": str(Path(directory).resolve()),
        }
        try:
            out, err = self.process.communicate(json.dumps(request) + "\n", timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise RenderError(
                f"plot images ({' '.join(self.process.args[1:])}): no answer in {timeout:g} s"
            ) from None
        if self.process.returncode != 0:
            last = (err.strip().splitlines() or ["no message"])[-1]
            raise RenderError(
                f"plot images ({' '.join(self.process.args[1:])}) exited "
                f"{self.process.returncode}: {last}"
            )
        return [Path(p) for p in json.loads(out)]


def start() -> subprocess.Popen:
    """The image process, started now: it imports matplotlib while the caller works. If the
    caller dies first, the process reads the end of its stdin and exits without drawing."""
    return subprocess.Popen(
        [sys.executable, "-m", __name__],
        cwd=Path(__file__).resolve().parents[1],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@contextlib.contextmanager
def renderer(process: subprocess.Popen | None = None) -> Iterator[Renderer]:
    """The image process (`process`, one start() gave earlier, or one started now), never
    left behind: stopped on the way out if the caller did not use it."""
    process = process or start()
    try:
        yield Renderer(process)
    finally:
        if process.poll() is None:
            with contextlib.suppress(OSError):
                process.stdin.close()  # the process then exits without drawing
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()


def main() -> None:
    # The imports are the slow part: done before the wait for evaluate's tables (savefig
    # draws a PNG with the Agg canvas).
    import importlib

    for module in ("matplotlib.figure", "matplotlib.backends.backend_agg"):
        importlib.import_module(module)

    line = sys.stdin.readline()
    if not line.strip():
        return
    request: dict[str, Any] = json.loads(line)
    tables = {name: Path(path) for name, path in request["tables"].items()}
    paths = draw(tables, Path(request["directory"]))
    sys.stdout.write(json.dumps([str(p) for p in paths]) + "\n")


if __name__ == "__main__":
    main()
