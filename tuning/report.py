"""What a study shows: the trials as table rows, the best params as markdown, and Optuna's
plots as PNG files (matplotlib; the MLflow UI shows images)."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

log = logging.getLogger("tuning")


def trial_rows(study: Any) -> list[dict[str, Any]]:
    """One row per trial of the study (every process's), in trial order."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        seconds = (
            round((t.datetime_complete - t.datetime_start).total_seconds(), 3)
            if t.datetime_complete and t.datetime_start
            else None
        )
        # Optuna gives a pruned trial the last value it reported: an RMSE at some round, not
        # the model's, so it gets a column of its own.
        pruned = t.state.name == "PRUNED" and bool(t.intermediate_values)
        last_step = max(t.intermediate_values) if pruned else None
        rows.append(
            {
                "trial": t.number,
                "state": t.state.name,
                "validation_rmse": round(t.value, 6) if t.state.name == "COMPLETE" else None,
                "pruned_at_round": last_step,
                "rmse_at_pruning": round(t.intermediate_values[last_step], 6) if pruned else None,
                "seconds": seconds,
                **{name: _short(value) for name, value in sorted(t.params.items())},
            }
        )
    return rows


def _short(value: Any) -> Any:
    return float(f"{value:.6g}") if isinstance(value, float) else value


def counts(study: Any) -> dict[str, int]:
    """Trials by state (COMPLETE, PRUNED, FAIL, RUNNING)."""
    out: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        out[t.state.name] = out.get(t.state.name, 0) + 1
    return out


def best_markdown(study: Any, overrides: dict[str, Any], winner: dict[str, Any] | None) -> str:
    """The best trial, its params as `dvc exp run -S` arguments, and the winner's run."""
    from workspaces.experiments import override_args

    best = study.best_trial
    by_state = ", ".join(f"{n} {s.lower()}" for s, n in sorted(counts(study).items()))
    lines = [
        f"# Study `{study.study_name}`",
        "",
        f"{len(study.trials)} trials ({by_state}). Best: trial {best.number}, "
        f"validation RMSE **{best.value:.4f}** min.",
        "",
        "| param | value |",
        "| --- | --- |",
        *(f"| `{k}` | {v} |" for k, v in overrides.items()),
        "",
        "The same params by hand: `dvc exp run "
        + " ".join(f"-S {arg}" for arg in override_args(overrides))
        + "`",
    ]
    if winner:
        lines += [
            "",
            f"Winner run through the pipeline as DVC experiment `{winner['experiment']}` "
            f"(`{winner['ref']}`): validation RMSE {winner['validation_rmse']}, test RMSE "
            f"{winner['test_rmse']}, model version {winner['model_version']}. "
            f"`dvc exp apply {winner['experiment']}` restores it.",
        ]
    return "\n".join(lines) + "\n"


def render_plots(study: Any, directory: Path) -> list[Path]:
    """Optimisation history, parallel coordinates and param importances as PNGs; a plot
    Optuna cannot draw yet (importances need two finished trials) is skipped, with a log."""
    import matplotlib

    matplotlib.use("Agg")
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as views

    paths = []
    for name, draw in (
        ("optimization_history", views.plot_optimization_history),
        ("parallel_coordinate", views.plot_parallel_coordinate),
        ("param_importances", views.plot_param_importances),
    ):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Optuna's matplotlib views are "experimental"
            try:
                axes = draw(study)
            except (ValueError, RuntimeError) as exc:
                log.warning("plot %s skipped: %s", name, exc)
                continue
        figure = (axes.flat[0] if hasattr(axes, "flat") else axes).get_figure()
        figure.set_size_inches(9, 5)
        figure.tight_layout()
        paths.append(directory / f"{name}.png")
        figure.savefig(paths[-1], dpi=100)
        plt.close(figure)
    return paths
