"""What a backtest is and shows: its runs (a window and a model type each), the RMSE-by-month
table, the plot, and its MLflow record (a parent run with one child run per window).

The flow that runs it is flows.backtest.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from timeline.window import Window

MODEL_TYPES = ("ridge", "lasso", "xgboost")
# Backtest models are registered under their own name: they are traceable like any version,
# and the champion that serves is never compared with, or replaced by, a model of the past.
REGISTRY_SUFFIX = "-backtest"
BACKTEST_TAG = "backtest"


@dataclass(frozen=True)
class BacktestRun:
    window: Window
    model_type: str

    def overrides(self, registered_name: str) -> dict[str, Any]:
        """The params of this run, as `dvc exp run -S` would set them."""
        return {
            "data.months": self.window.months,
            "model.type": self.model_type,
            "model.registered_name": registered_name + REGISTRY_SUFFIX,
        }

    def experiment_name(self, prefix: str) -> str:
        return f"{prefix}-{self.window.label}-{self.model_type}"


def model_types(text: str) -> list[str]:
    """`ridge,xgboost` -> ["ridge", "xgboost"]; ValueError naming an unknown type."""
    types = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [t for t in types if t not in MODEL_TYPES]
    if unknown or not types:
        raise ValueError(
            f"--model-type: expected one or more of {', '.join(MODEL_TYPES)} separated by "
            f"commas, got {text!r}"
        )
    return list(dict.fromkeys(types))


def plan_runs(windows: Iterable[Window], types: Iterable[str]) -> list[BacktestRun]:
    """Every window with every model type, oldest window first."""
    types = list(types)
    return [BacktestRun(w, t) for w in windows for t in types]


def row(run: BacktestRun, result: dict[str, Any] | None, error: str | None) -> dict[str, Any]:
    """One result row: the window, the model type, its metrics or why it failed."""
    base = {
        "validation_month": run.window.validation,
        "train_months": ",".join(run.window.train),
        "test_month": run.window.test,
        "model_type": run.model_type,
    }
    if error is not None:
        return base | {"status": "failed", "error": error}
    assert result is not None
    return base | {
        "status": "completed",
        "validation_rmse": result["validation_rmse"],
        "test_rmse": result["test_rmse"],
        "train_rmse": result["train_rmse"],
        "model_version": result["model_version"],
        "experiment": result["experiment"],
    }


def rmse_table(rows: list[dict[str, Any]]) -> str:
    """Validation RMSE by month (rows) and model type (columns), as markdown."""
    types = list(dict.fromkeys(r["model_type"] for r in rows))
    months = sorted({r["validation_month"] for r in rows})
    cell = {(r["validation_month"], r["model_type"]): r for r in rows}
    lines = [
        "| validation month | " + " | ".join(types) + " |",
        "| --- | " + " | ".join("---:" for _ in types) + " |",
    ]
    for month in months:
        values = []
        for model_type in types:
            found = cell.get((month, model_type))
            if found is None:
                values.append("")
            elif found["status"] == "completed":
                values.append(f"{found['validation_rmse']:.4f}")
            else:
                values.append("failed")
        lines.append(f"| {month} | " + " | ".join(values) + " |")
    return "\n".join(lines)


def failures(rows: list[dict[str, Any]]) -> list[str]:
    return [
        f"{r['validation_month']} {r['model_type']}: {r['error']}"
        for r in rows
        if r["status"] == "failed"
    ]


def render_plot(rows: list[dict[str, Any]], path: Path) -> Path:
    """Validation (solid) and test (dashed) RMSE by validation month, one colour per type."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(9, 5))
    for model_type in dict.fromkeys(r["model_type"] for r in rows):
        done = sorted(
            (r for r in rows if r["model_type"] == model_type and r["status"] == "completed"),
            key=lambda r: r["validation_month"],
        )
        if not done:
            continue
        months = [r["validation_month"] for r in done]
        (line,) = axes.plot(
            months, [r["validation_rmse"] for r in done], marker="o", label=f"{model_type}"
        )
        axes.plot(
            months,
            [r["test_rmse"] for r in done],
            linestyle="--",
            color=line.get_color(),
            alpha=0.6,
            label=f"{model_type} (test month)",
        )
    axes.set_xlabel("validation month (the model trained on the months before it)")
    axes.set_ylabel("RMSE (minutes)")
    axes.set_title("Backtest: RMSE by month")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def record(
    client: Any,
    experiment_id: str,
    *,
    name: str,
    rows: list[dict[str, Any]],
    params: dict[str, Any],
    seconds: float,
    files: list[Path],
) -> str:
    """The parent run (params, wall time, the plot and the JSON) and one child run per row,
    each with its window, metrics, DVC experiment and model version; the parent's id."""
    from mlflow.entities import Metric, Param, RunTag

    parent = client.create_run(
        experiment_id, run_name=name, tags={BACKTEST_TAG: "true", "mlflow.runName": name}
    ).info.run_id
    try:
        now = int(time.time() * 1000)
        completed = [r for r in rows if r["status"] == "completed"]
        client.log_batch(
            parent,
            metrics=[
                Metric("wall_seconds", seconds, now, 0),
                Metric("windows_completed", len(completed), now, 0),
                Metric("windows_failed", len(rows) - len(completed), now, 0),
            ],
            params=[Param(k, str(v)) for k, v in params.items()],
        )
        for r in rows:
            child_name = f"{r['validation_month']} {r['model_type']}"
            child = client.create_run(
                experiment_id,
                run_name=child_name,
                tags={"mlflow.parentRunId": parent, BACKTEST_TAG: "true"},
            ).info.run_id
            metrics = [
                Metric(k, float(r[k]), now, 0)
                for k in ("validation_rmse", "test_rmse", "train_rmse")
                if r.get(k) is not None
            ]
            tags = [
                RunTag(k, str(r[k]))
                for k in ("experiment", "model_version", "status", "error")
                if r.get(k) is not None
            ]
            if r.get("experiment"):
                tags.append(RunTag("dvc_exp_name", r["experiment"]))
            client.log_batch(
                child,
                metrics=metrics,
                params=[
                    Param(k, str(r[k]))
                    for k in ("validation_month", "train_months", "test_month", "model_type")
                ],
                tags=tags,
            )
            client.set_terminated(child, "FINISHED" if r["status"] == "completed" else "FAILED")
        for path in files:
            client.log_artifact(parent, str(path))
    except BaseException:
        client.set_terminated(parent, "FAILED")
        raise
    client.set_terminated(parent, "FINISHED")
    return parent


def write_json(path: Path, result: dict[str, Any]) -> None:
    path.write_text(json.dumps(result, indent=2, sort_keys=True, default=str) + "\n")
