"""The results: machine description, comparison tables, scaling exponents, targets met."""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

LIBRARIES = (
    "numpy",
    "pandas",
    "pyarrow",
    "scipy",
    "scikit-learn",
    "xgboost",
    "xgboost-cpu",  # the same library, CPU-only build (pyproject.toml)
    "dvc",
    "prefect",
    "mlflow",
)
# (label, ours stage key, course stage key): each line of the side-by-side table.
PAIRS = (
    ("prepare", "prepare", "prepare"),
    ("features", "features", "features"),
    ("train linear (ours ridge vs course Lasso)", "train ridge", "train lasso"),
    ("train lasso (alpha 0.1 both)", "train lasso", "train lasso"),
    ("train xgboost", "train xgboost", "train xgboost"),
    ("features + train linear", "features+train ridge", "features+train lasso"),
)
TARGET_SPEEDUP, TARGET_SCALE, TARGET_EXPONENT, TARGET_PEAK_MIB = 5.0, 16, 1.0, 4096
TARGET_NOOP_S, TARGET_PREFECT_S, TARGET_XGB_RMSE = 1.5, 1.0, 5.0
# Issue 15: `make pipeline` over bare `dvc repro` when nothing is stale, and for a one-stage
# change over the stages' own `dvc repro --single-item` (the same work, the project's kept
# Prefect server running).
TARGET_MAKE_NOOP_ADDED_S, TARGET_ONE_STAGE_ADDED_S = 1.5, 2.0
# Issue 13, target 1: a stage's MLflow record (its `mlflow_seconds`, SQLite store) and a cold
# `dvc repro` of the three real months, at least half of it the stages' own work.
TARGET_RECORD_S, TARGET_COLD_REPRO_S = 0.4, 10.0
# Issue 13, target 2: back to a param set run before (DVC's run-cache), and `dvc exp apply`.
TARGET_RUN_CACHE_S = 3.0
# Issue 13, target 3: XGBoost's train at 64x, its validation RMSE at 1x (the real months),
# and how much a boosting round's cost grows from 16x to 64x (4x the rows).
TARGET_XGB_64X_S, TARGET_XGB_1X_RMSE, TARGET_XGB_ROUND_GROWTH = 20.0, 4.45, 4.4
# Issue 13, target 4: a season of yellow-taxi volume (256x January, ~11.4M trips) through
# prepare, features and train on this machine: its peak RSS, and how the cost of
# prepare+features+train grows from 16x to 256x; at 64x, features + linear train against the
# course's script and the peak RSS of every stage.
TARGET_SEASON_SCALE, TARGET_SEASON_PEAK_MIB, TARGET_SEASON_EXPONENT = 256, 8192, 1.05
TARGET_64X_SPEEDUP, TARGET_64X_PEAK_MIB = 20.0, 1024
# How fast this machine is, told by the course's script (code that does not change with ours):
# its seconds at 64x on the machine where issue 13's time targets were set and first met (the
# bench of 2026-11-27 12:45, results committed in 8f00e9c). The machines of later sessions
# differ (one ran the same commit's cold repro in 19-21 s instead of 9-12 s); the report gives
# the ratio so that its seconds can be read against those targets.
REFERENCE_COURSE_64X_S = {
    "prepare": 7.14,
    "features": 9.42,
    "train lasso": 10.58,
    "train xgboost": 18.79,
}
REFERENCE_BENCH = "2026-11-27 12:45, 8f00e9c"
# The spans the cost exponents are fitted over (both ends included).
SPANS = ((4, 64), (16, TARGET_SEASON_SCALE))


def machine(command: str, loadavg_start: tuple[float, ...]) -> dict[str, Any]:
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": command,
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "libraries": versions,
        "loadavg_start": [round(x, 2) for x in loadavg_start],
    }


def machine_slowdown(table: dict) -> float | None:
    """How many times longer the course's script took at 64x than on the reference machine
    (geometric mean over its stages); None when it did not run at 64x."""
    ratios = [
        table["course", stage, 64]["seconds"] / seconds
        for stage, seconds in REFERENCE_COURSE_64X_S.items()
        if ("course", stage, 64) in table
    ]
    if len(ratios) != len(REFERENCE_COURSE_64X_S):
        return None
    return math.exp(sum(math.log(r) for r in ratios) / len(ratios))


def key(row: dict) -> str:
    if row["stage"] == "dask":
        return f"dask xgboost {row['workers']} workers"
    return row["stage"] if row["stage"] != "train" else f"train {row['model']}"


def timings(rows: list[dict]) -> dict[tuple[str, str, int], dict]:
    """(impl, stage key, scale) -> measurement; features+train sums added."""
    table = {
        (r["impl"], key(r), r["scale"]): r
        for r in rows
        if "error" not in r and r.get("purpose") != "quality"
    }
    for (impl, stage, scale), r in list(table.items()):
        features = table.get((impl, "features", scale))
        if stage.startswith("train") and stage != "train xgboost" and features:
            table[impl, f"features+{stage}", scale] = {
                "seconds": features["seconds"] + r["seconds"],
                "rows": r["rows"],
                "peak_rss_mib": max(features["peak_rss_mib"], r["peak_rss_mib"]),
                "process_peak_rss_mib": max(
                    features["process_peak_rss_mib"], r["process_peak_rss_mib"]
                ),
            }
    return table


def exponent(points: list[tuple[float, float]]) -> float | None:
    """Slope of log(cost) against log(rows): 1.0 is linear."""
    points = [(x, y) for x, y in points if x > 0 and y > 0]
    if len(points) < 2:
        return None
    xs, ys = np.log([p[0] for p in points]), np.log([p[1] for p in points])
    return round(float(np.polyfit(xs, ys, 1)[0]), 3)


def scaling(table: dict, span: tuple[int, int]) -> list[dict[str, Any]]:
    """Cost exponents of each stage (and of prepare+features+train per model type) over the
    scales within `span`, for the stages measured at both of its ends."""
    low, high = span
    label = f"{low}x-{high}x"

    def within(n: int) -> bool:
        return low <= n <= high

    out = []
    for impl, stage in sorted({(i, s) for i, s, _ in table if not s.startswith("dask")}):
        if not all((impl, stage, end) in table for end in span):
            continue
        pts = [
            (r["rows"], r["seconds"], r["peak_rss_mib"])
            for (i, s, n), r in table.items()
            if (i, s) == (impl, stage) and within(n)
        ]
        if impl == "ours" and stage.startswith("train"):
            model = stage.split()[-1]
            totals = []
            for (i, s, n), r in table.items():
                parts = [table.get(("ours", p, n)) for p in ("prepare", "features")]
                if (i, s) == (impl, stage) and within(n) and all(parts):
                    seconds = r["seconds"] + sum(p["seconds"] for p in parts)
                    totals.append((parts[0]["rows"], seconds))
            if len(totals) >= 2:
                out.append(
                    {
                        "impl": impl,
                        "stage": f"prepare+features+train {model}",
                        "span": label,
                        "time_exponent": exponent(totals),
                        "memory_exponent": None,
                        "points": len(totals),
                    }
                )
        if len(pts) < 2:
            continue
        out.append(
            {
                "impl": impl,
                "stage": stage,
                "span": label,
                "points": len(pts),
                "time_exponent": exponent([(p[0], p[1]) for p in pts]),
                "memory_exponent": exponent([(p[0], p[2]) for p in pts]),
            }
        )
    return out


def quality(rows: list[dict]) -> list[dict[str, Any]]:
    out = []
    for r in rows:
        if r["stage"] == "train" and r["scale"] == 1 and "validation_rmse" in r:
            out.append(
                {
                    "impl": r["impl"],
                    "model": r["model"],
                    "params": r.get("params", {}),
                    "validation_rmse": round(r["validation_rmse"], 3),
                    "fit_seconds": round(r["seconds"], 2),
                }
            )
    return out


def targets(
    table: dict, scale_rows: list[dict], quality_rows: list[dict], extra: dict
) -> list[dict[str, Any]]:
    def verdict(name: str, value: float | None, met: bool | None, note: str = "") -> dict:
        shown = None if value is None else round(value, 3)
        return {"target": name, "value": shown, "met": None if value is None else met, "note": note}

    ours = table.get(("ours", "features+train ridge", TARGET_SCALE))
    theirs = table.get(("course", "features+train lasso", TARGET_SCALE))
    speedup = theirs["seconds"] / ours["seconds"] if ours and theirs else None

    def totals_exponents(span: tuple[int, int]) -> dict[str, float]:
        return {
            s["stage"].split()[-1]: s["time_exponent"]
            for s in scale_rows
            if s["impl"] == "ours"
            and s["span"] == f"{span[0]}x-{span[1]}x"
            and s["stage"].startswith("prepare+features+train")
            and s["time_exponent"] is not None
        }

    def ours_peaks(scale: int) -> dict[str, float]:
        return {
            stage: r["process_peak_rss_mib"]
            for (i, stage, n), r in table.items()
            if i == "ours" and n == scale and not stage.startswith(("dask", "features+"))
        }

    exps = list(totals_exponents(SPANS[0]).values())
    season_exps = totals_exponents(SPANS[1])
    season_wanted = {"ridge", "xgboost"} & set(season_exps)
    season_peaks = ours_peaks(TARGET_SEASON_SCALE)
    peaks_64 = ours_peaks(64)
    peaks = list(peaks_64.values())
    ours_64 = table.get(("ours", "features+train ridge", 64))
    theirs_64 = table.get(("course", "features+train lasso", 64))
    speedup_64 = theirs_64["seconds"] / ours_64["seconds"] if ours_64 and theirs_64 else None
    dvc = extra.get("dvc", {})
    prefect = extra.get("prefect", {})
    q = {
        (r["impl"], r["model"]): r["validation_rmse"]
        for r in quality_rows
        if r["impl"] == "ours" or r["params"].get("max_rounds", 0) >= 1000 or r["model"] == "lasso"
    }
    course_lasso = q.get(("course", "lasso"))
    pre = prefect.get("make_before_python_seconds") or 0.0  # make's work before Python
    make_noop_added = (
        prefect["noop_added_seconds"] + pre if "noop_added_seconds" in prefect else None
    )
    one_stage = prefect.get("one_stage_change") or {}
    one_stage_added = one_stage["added_seconds"] + pre if "added_seconds" in one_stage else None
    xgb = {n: table.get(("ours", "train xgboost", n)) for n in (16, 64)}
    per_round = {n: r["seconds"] / r["params"]["n_rounds"] for n, r in xgb.items() if r}
    growth = per_round[64] / per_round[16] if len(per_round) == 2 else None
    kept_noop = prefect.get("noop_kept_server") or {}
    kept_noop_added = kept_noop["added_seconds"] + pre if "added_seconds" in kept_noop else None
    record = dvc.get("mlflow") or {}
    per_stage = record.get("per_stage_seconds") or {}
    slowest = max(per_stage, key=per_stage.get) if per_stage else None
    cold = dvc.get("full_seconds")
    cache = dvc.get("run_cache") or {}
    floor = cache.get("dvc_floor") or {}  # DVC's own time for target 2, two trivial stages
    return [
        verdict(
            f"features+train at {TARGET_SCALE}x: course Lasso / ours ridge >= {TARGET_SPEEDUP}",
            speedup,
            speedup is not None and speedup >= TARGET_SPEEDUP,
        ),
        verdict(
            f"ours cost vs rows, 4x->64x: exponent <= {TARGET_EXPONENT}",
            max(exps) if exps else None,
            bool(exps) and max(exps) <= TARGET_EXPONENT,
            "largest exponent over prepare+features+train per model type",
        ),
        verdict(
            f"ours peak RSS at 64x < {TARGET_PEAK_MIB} MiB",
            max(peaks) if peaks else None,
            bool(peaks) and max(peaks) < TARGET_PEAK_MIB,
            "" if peaks else "the 64x scale was not run",
        ),
        verdict(
            f"ours at {TARGET_SEASON_SCALE}x (prepare, features, train): peak RSS < "
            f"{TARGET_SEASON_PEAK_MIB} MiB",
            max(season_peaks.values()) if season_peaks else None,
            bool(season_peaks) and max(season_peaks.values()) < TARGET_SEASON_PEAK_MIB,
            _largest(season_peaks, "MiB") if season_peaks else "the 256x scale was not run",
        ),
        verdict(
            f"ours cost vs rows, 16x->{TARGET_SEASON_SCALE}x: exponent <= "
            f"{TARGET_SEASON_EXPONENT} (prepare+features+train, ridge and xgboost)",
            max(season_exps[m] for m in season_wanted) if season_wanted else None,
            len(season_wanted) == 2
            and max(season_exps[m] for m in season_wanted) <= TARGET_SEASON_EXPONENT,
            ", ".join(f"{m} {e}" for m, e in sorted(season_exps.items()))
            + " (least-squares slope over 16x, 64x, 256x)",
        ),
        verdict(
            f"features + linear train at 64x: course Lasso / ours ridge >= {TARGET_64X_SPEEDUP}",
            speedup_64,
            speedup_64 is not None and speedup_64 >= TARGET_64X_SPEEDUP,
            f"ours {ours_64['seconds']:.2f} s, course {theirs_64['seconds']:.2f} s"
            if speedup_64
            else "",
        ),
        verdict(
            f"ours peak RSS of every stage at 64x < {TARGET_64X_PEAK_MIB} MiB",
            max(peaks_64.values()) if peaks_64 else None,
            bool(peaks_64) and max(peaks_64.values()) < TARGET_64X_PEAK_MIB,
            _largest(peaks_64, "MiB") if peaks_64 else "",
        ),
        verdict(
            f"no-op dvc repro < {TARGET_NOOP_S} s",
            dvc.get("noop_best_seconds"),
            (dvc.get("noop_best_seconds") or math.inf) < TARGET_NOOP_S,
        ),
        verdict(
            f"Prefect flow adds < {TARGET_PREFECT_S} s over bare dvc repro (running server)",
            prefect.get("added_seconds"),
            (prefect.get("added_seconds") or math.inf) < TARGET_PREFECT_S,
            prefect.get("note", prefect.get("error", "")),
        ),
        verdict(
            f"no-op make pipeline (no server) <= bare dvc repro + {TARGET_MAKE_NOOP_ADDED_S} s",
            make_noop_added,
            make_noop_added is not None and make_noop_added <= TARGET_MAKE_NOOP_ADDED_S,
            "median over pairs of the command line, plus `make env bytecode` "
            f"{prefect.get('make_before_python_seconds')} s",
        ),
        verdict(
            f"no-op make pipeline, kept server running <= bare dvc repro + "
            f"{TARGET_MAKE_NOOP_ADDED_S} s",
            kept_noop_added,
            kept_noop_added is not None and kept_noop_added <= TARGET_MAKE_NOOP_ADDED_S,
            "the state after any run that did work (Prefect imported during the plan)",
        ),
        verdict(
            f"one-stage change: make pipeline <= its stages' dvc repro --single-item + "
            f"{TARGET_ONE_STAGE_ADDED_S} s",
            one_stage_added,
            one_stage_added is not None and one_stage_added <= TARGET_ONE_STAGE_ADDED_S,
            "model.alpha changed (train and evaluate run), the kept server running; median "
            "over 3 rows, with `make env`",
        ),
        verdict(
            f"a stage's MLflow record (`mlflow_seconds`, SQLite store) <= {TARGET_RECORD_S} s",
            per_stage.get(slowest) if slowest else None,
            bool(per_stage) and max(per_stage.values()) <= TARGET_RECORD_S,
            f"largest, {slowest}; all: " + ", ".join(f"{k} {v}" for k, v in per_stage.items())
            if per_stage
            else "",
        ),
        verdict(
            f"cold dvc repro (3 real months, every record) <= {TARGET_COLD_REPRO_S} s, "
            "MLflow at most half",
            cold,
            None not in (cold, record.get("total_seconds"))
            and cold <= TARGET_COLD_REPRO_S
            and record["total_seconds"] <= cold / 2,
            f"the stages' mlflow_seconds: {record.get('total_seconds')} s",
        ),
        verdict(
            f"back to earlier params (dvc exp run -S model.alpha=1.0 after 0.05, and back and "
            f"forth) <= {TARGET_RUN_CACHE_S} s, from the run-cache; median",
            cache.get("earlier_params_seconds"),
            cache.get("earlier_params_seconds") is not None
            and cache["earlier_params_seconds"] <= TARGET_RUN_CACHE_S
            and not cache.get("ran"),
            f"each return: {_seconds_list(cache.get('returns_seconds'))}; restored: "
            f"{', '.join(cache.get('restored_from_run_cache') or []) or 'none'}; ran: "
            f"{', '.join(cache.get('ran') or []) or 'none'}; new params "
            f"{cache.get('new_params_seconds')} s; DVC's own floor, the same runs taking turns "
            f"with these in a project of two trivial stages: median "
            f"{floor.get('earlier_params_seconds')} s "
            f"({_seconds_list(floor.get('returns_seconds'))}; "
            f"exp apply {floor.get('exp_apply_seconds')} s)",
        ),
        verdict(
            f"dvc exp apply of an earlier experiment <= {TARGET_RUN_CACHE_S} s",
            cache.get("exp_apply_seconds"),
            (cache.get("exp_apply_seconds") or math.inf) <= TARGET_RUN_CACHE_S,
        ),
        verdict(
            f"ours XGBoost validation RMSE < {TARGET_XGB_RMSE}",
            q.get(("ours", "xgboost")),
            (q.get(("ours", "xgboost")) or math.inf) < TARGET_XGB_RMSE,
        ),
        verdict(
            f"ours XGBoost train at 64x <= {TARGET_XGB_64X_S} s",
            xgb[64]["seconds"] if xgb[64] else None,
            bool(xgb[64]) and xgb[64]["seconds"] <= TARGET_XGB_64X_S,
            f"{xgb[64]['params']['n_rounds']} rounds, {xgb[64]['rows']:,} trips" if xgb[64] else "",
        ),
        verdict(
            f"ours XGBoost validation RMSE at 1x <= {TARGET_XGB_1X_RMSE}",
            q.get(("ours", "xgboost")),
            (q.get(("ours", "xgboost")) or math.inf) <= TARGET_XGB_1X_RMSE,
        ),
        verdict(
            f"ours XGBoost cost per round 16x->64x grows <= {TARGET_XGB_ROUND_GROWTH}x",
            growth,
            growth is not None and growth <= TARGET_XGB_ROUND_GROWTH,
            "fit seconds / rounds; 4x the rows"
            + (f" ({per_round[16] * 1000:.1f} -> {per_round[64] * 1000:.1f} ms)" if growth else ""),
        ),
        verdict(
            "ours ridge validation RMSE < the course's Lasso",
            q.get(("ours", "ridge")),
            None not in (q.get(("ours", "ridge")), course_lasso)
            and q[("ours", "ridge")] < course_lasso,
            f"course Lasso: {course_lasso}",
        ),
    ]


def _largest(values: dict[str, float], unit: str) -> str:
    name = max(values, key=values.get)
    return f"largest: {name} {values[name]:,.0f} {unit}"


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 100 else f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _seconds_list(seconds: list[float] | None) -> str:
    """Runs of one command in the order they ran, for the reader to see the spread."""
    return ", ".join(f"{s:.2f}" for s in seconds) + " s" if seconds else "-"


def _speed_line(slowdown: float | None) -> str:
    if slowdown is None:
        return "- machine speed: not measured (the course's script did not run at 64x)"
    return (
        f"- machine speed: the course's script took {slowdown:.2f}x its seconds on the machine"
        f" of the reference bench ({REFERENCE_BENCH}; geometric mean over its stages at 64x):"
        " the time targets below were set on that machine, their values here are this one's"
    )


def _table(header: list[str], lines: list[list[Any]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    return out + ["| " + " | ".join(_fmt(c) for c in line) + " |" for line in lines]


def markdown(results: dict[str, Any]) -> str:
    meta, table = results["machine"], timings(results["measurements"])
    libs = ", ".join(f"{k} {v}" for k, v in meta["libraries"].items())
    md = [
        "# Benchmark results",
        "",
        f"- command: `{meta['command']}`",
        f"- date: {meta['date']}; {meta['cpu_count']} cores; {meta['platform']}; "
        f"python {meta['python']}",
        f"- libraries: {libs}",
        f"- load average at start / end: {meta['loadavg_start']} / {meta.get('loadavg_end')}"
        " (other processes may share the CPU; timings are wall-clock, one fresh process per"
        " measurement, best of the repeats)",
        f"- whole run: {meta.get('total_seconds')} s",
        _speed_line(machine_slowdown(table)),
        "",
        "## Targets",
        "",
    ]
    md += _table(
        ["target", "value", "met", "note"],
        [
            [
                t["target"],
                t["value"],
                {True: "yes", False: "**no**", None: "not measured"}[t["met"]],
                t["note"],
            ]
            for t in results["targets"]
        ],
    )
    md += [
        "",
        "## Ours vs the course's script, per scale and stage",
        "",
        "Seconds of the stage's own work (inputs already in memory); rows/s over the rows the"
        " stage receives; peak RSS: the high-water mark of the measurement's own fresh process"
        " (loading its inputs and running the stage; `peak_rss_mib` in the JSON is the stage"
        " alone, the mark reset once its inputs were loaded).",
        "",
    ]
    lines = []
    for scale in sorted({n for _, _, n in table}):
        for label, ours_key, course_key in PAIRS:
            o, c = table.get(("ours", ours_key, scale)), table.get(("course", course_key, scale))
            if not (o or c):
                continue
            lines.append(
                [
                    f"{scale}x",
                    label,
                    o and o["rows"],
                    o and o["seconds"],
                    c and c["seconds"],
                    (c["seconds"] / o["seconds"]) if o and c else None,
                    o and o["rows"] / o["seconds"],
                    c and c["rows"] / c["seconds"],
                    o and o["process_peak_rss_mib"],
                    c and c["process_peak_rss_mib"],
                ]
            )
    md += _table(
        [
            "scale",
            "stage",
            "rows (ours)",
            "ours s",
            "course s",
            "course/ours",
            "ours rows/s",
            "course rows/s",
            "ours peak MiB",
            "course peak MiB",
        ],
        lines,
    )
    md += xgboost_rounds_markdown(table)
    md += dask_markdown(table)
    md += ["", "## Cost vs rows (log-log slope over the scales of each span; 1.0 = linear)", ""]
    md += _table(
        ["impl", "stage", "span", "points", "time exponent", "memory exponent"],
        [
            [
                s["impl"],
                s["stage"],
                s.get("span", "4x-"),
                s["points"],
                s["time_exponent"],
                s["memory_exponent"],
            ]
            for s in results["scaling"]
        ],
    )
    md += ["", "## Model quality at 1x (train 2025-01, validation 2025-02)", ""]
    md += _table(
        ["impl", "model", "params", "validation RMSE (min)", "fit s"],
        [
            [q["impl"], q["model"], json.dumps(q["params"]), q["validation_rmse"], q["fit_seconds"]]
            for q in results["quality"]
        ],
    )
    md += overhead_markdown(results["overhead"])
    errors = [r for r in results["measurements"] if "error" in r]
    if errors:
        md += ["", "## Failed measurements", ""]
        md += [f"- {r['impl']} {key(r)} x{r['scale']}: {r['error'][-300:]}" for r in errors]
    return "\n".join(md) + "\n"


def dask_markdown(table: dict) -> list[str]:
    """XGBoost on a Dask LocalCluster: 1 vs 2 local workers, beside the single process."""
    lines = []
    for (impl, stage, scale), r in sorted(table.items()):
        if impl == "ours" and stage.startswith("dask"):
            single = table.get(("ours", "train xgboost", scale))
            lines.append(
                [
                    f"{scale}x",
                    r["params"]["workers"],
                    r["rows"],
                    r["seconds"],
                    r.get("validation_rmse"),
                    single["seconds"] if single else None,
                    single.get("validation_rmse") if single else None,
                ]
            )
    if not lines:
        return []
    md = [
        "",
        "## XGBoost on a Dask LocalCluster (model.xgboost.cluster: local)",
        "",
        "One thread per worker; the time includes starting the cluster and reading the"
        " features as partitions. Beside it the single-process fit (base.threads threads).",
        "",
    ]
    return md + _table(
        [
            "scale",
            "workers",
            "rows",
            "dask s",
            "dask validation RMSE",
            "single process s",
            "single process validation RMSE",
        ],
        lines,
    )


def xgboost_rounds_markdown(table: dict) -> list[str]:
    """The two XGBoost fits train different numbers of rounds: compare them per round too."""
    lines, depths = [], {}
    for scale in sorted({n for _, _, n in table}):
        o, c = (
            table.get(("ours", "train xgboost", scale)),
            table.get(("course", "train xgboost", scale)),
        )
        if not (o and c):
            continue
        depths = {"ours": o["params"]["max_depth"], "course": c["params"]["max_depth"]}
        o_rounds, c_rounds = o["params"]["n_rounds"], c["params"]["rounds_trained"]
        o_per, c_per = o["seconds"] / o_rounds, c["seconds"] / c_rounds
        lines.append([f"{scale}x", o_rounds, o_per * 1000, c_rounds, c_per * 1000, c_per / o_per])
    if not lines:
        return []
    md = [
        "",
        f"XGBoost per boosting round: ours is depth {depths['ours']} on 7 integer-coded columns"
        f" (native categorical splits); the course's is depth {depths['course']} on the"
        " DictVectorizer matrix, capped at the rounds its orchestration script trains, with early"
        " stopping on the validation month.",
        "",
    ]
    return md + _table(
        [
            "scale",
            "ours rounds",
            "ours ms/round",
            "course rounds",
            "course ms/round",
            "course/ours",
        ],
        lines,
    )


def overhead_markdown(extra: dict[str, Any]) -> list[str]:
    md: list[str] = []
    for name, part in extra.items():
        if "error" in part:
            md += ["", f"Overhead part `{name}` failed: {part['error'][-500:]}"]
    extra = {name: part for name, part in extra.items() if "error" not in part}
    if "imports" in extra:
        imports = extra["imports"]
        md += [
            "",
            "## Stage process start-up (`python -c 'import stages.x'`, best of 3)",
            "",
            f"Bare `python -c pass`: {imports['bare_python_seconds']} s.",
            "",
        ]
        md += _table(
            ["module", "seconds", "slowest packages to import (python -X importtime, s)"],
            [
                [
                    m,
                    v["seconds"],
                    ", ".join(f"{t['package']} {t['seconds']}" for t in v["top_imports"]),
                ]
                for m, v in imports["modules"].items()
            ],
        )
    if "dvc" in extra:
        dvc = extra["dvc"]
        md += [
            "",
            "## Orchestration",
            "",
            f"- `dvc repro` from nothing (3 real months, every stage): {dvc['full_seconds']} s",
            f"- `dvc repro` with nothing to do: best {dvc['noop_best_seconds']} s "
            f"(runs: {dvc['noop_seconds']}; said: {' '.join(dvc['noop_output'])})",
        ]
        if "mlflow" in dvc:
            ml = dvc["mlflow"]
            per = ", ".join(f"{k} {v}" for k, v in ml["per_stage_seconds"].items())
            md.append(
                f"- MLflow logging inside the stages (their `mlflow_seconds`): "
                f"{ml['total_seconds']} s over {ml['stage_runs']} stage runs ({per})"
            )
    if "prefect" in extra:
        pf = extra["prefect"]
        md.append("- Prefect flow: " + "; ".join(f"{k}: {v}" for k, v in pf.items()))
        md += one_stage_markdown(pf.get("one_stage_change"))
    if "first_run" in extra:
        md += first_run_markdown(extra["first_run"])
    if "server" in extra and "mlflow" in extra["server"]:
        sv, ml = extra["server"], extra["server"]["mlflow"]
        per = ", ".join(f"{k} {v}" for k, v in ml["per_stage_seconds"].items())
        md.append(
            f"- The same against the team MLflow server (PostgreSQL + S3, `python -m services "
            f"up` in {sv['services_up_seconds']} s): `dvc repro` from nothing "
            f"{sv['full_seconds']} s; `mlflow_seconds` {ml['total_seconds']} s over "
            f"{ml['stage_runs']} stage runs ({per})"
        )
    elif "server" in extra:
        md.append(f"- Against the team MLflow server: not measured: {extra['server']}")
    if "serving" in extra:
        md += serving_markdown(extra["serving"])
    return md


def one_stage_markdown(one: dict[str, Any] | None) -> list[str]:
    """`model.alpha` changed: the stages alone, bare `dvc repro`, the command line."""
    if not one or "rows_seconds" not in one:
        return []
    md = [
        "",
        "## A one-stage change (`model.alpha`: train and evaluate run), seconds",
        "",
        f"The first command-line run, which starts the project's kept Prefect server: "
        f"{one['first_run_seconds']} s ({one['first_run_stage_seconds']} s of it the stages).",
        "",
    ]
    return md + _table(
        ["train + evaluate, dvc repro --single-item each", "bare dvc repro", "command line",
         "its stages", "command line - single items"],
        [[*row, round(row[2] - row[0], 2)] for row in one["rows_seconds"]],
    )  # fmt: skip


def first_run_markdown(fr: dict[str, Any]) -> list[str]:
    """The README's first command on a fresh machine (benchmarks.first_run)."""
    return [
        "",
        "## First `make pipeline` on a fresh machine (uv missing, empty caches)",
        "",
        *_table(
            ["part", "seconds"],
            [
                ["install uv (`python3 -m pip install --user uv`)", fr["uv_install_seconds"]],
                ["`make env`: uv downloads and installs uv.lock", fr["make_env_seconds"]],
                [f"`make pipeline`: its {fr['stages_ran']} stages", fr["stage_seconds"]],
                [
                    "`make pipeline`: the rest (kept Prefect server started on a new database "
                    "while Prefect is imported, flow engine, report)",
                    fr["outside_stages_seconds"],
                ],
                ["total", fr["total_seconds"]],
            ],
        ),
        "",
        f"The environment: {fr['venv_mib']} MiB in `.venv`, {fr['uv_cache_mib']} MiB "
        "downloaded into uv's cache.",
    ]


def serving_markdown(sv: dict[str, Any]) -> list[str]:
    """The registered model behind `mlflow models serve` (benchmarks.serving)."""
    single, batch = sv["single"], sv["batch"]
    md = [
        "",
        "## Serving",
        "",
        f"`{sv['command']}` (one uvicorn worker), started outside the project, answered"
        f" /ping {sv['server_start_seconds']} s after launch. Requests are real February trips"
        f" with every TLC column ({sv['columns']}), JSON `dataframe_records`, timestamps as ISO"
        " strings, sent on one keep-alive connection after a warm-up; the body is encoded"
        " beforehand. Largest difference of a batch answer from the in-process pyfunc's:"
        f" {batch['max_abs_difference_from_in_process']:g} minutes.",
        "",
    ]
    return md + _table(
        ["request", "requests", "body KiB", "p50 ms", "p99 ms", "trips/s at p50", "trips/s best"],
        [
            [
                "1 trip",
                single["requests"],
                single["request_bytes"] / 1024,
                single["p50_ms"],
                single["p99_ms"],
                1000 / single["p50_ms"],
                1000 / single["min_ms"],
            ],
            [
                f"{batch['rows']:,} trips",
                batch["repeats"],
                batch["request_bytes"] / 1024,
                float(np.median(batch["seconds"])) * 1000,
                float(np.percentile(batch["seconds"], 99)) * 1000,
                batch["rows"] / float(np.median(batch["seconds"])),
                batch["best_trips_per_second"],
            ],
        ],
    )


def write(out: Path, meta: dict, rows: list[dict], extra: dict) -> list[Path]:
    table = timings(rows)
    scale_rows = [row for span in SPANS for row in scaling(table, span)]
    quality_rows = quality(rows)
    results = {
        "machine": meta,
        "measurements": rows,
        "scaling": scale_rows,
        "quality": quality_rows,
        "overhead": extra,
        "targets": targets(table, scale_rows, quality_rows, extra),
    }
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "results.json", out / "results.md"]
    paths[0].write_text(json.dumps(results, indent=2, default=str) + "\n")
    paths[1].write_text(markdown(results))
    return paths
