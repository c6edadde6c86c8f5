"""Hyperparameter search: Optuna trials tracked in MLflow, the winner a DVC experiment.

    python -m flows.tune --model-type xgboost --trials 50 [--timeout 600] [--name NAME]
    python -m flows.tune --model-type ridge --trials 20 --workers 2
    python -m flows.tune --model-type xgboost --trials 10 --name tune-xgboost --no-winner

The search space is params.yaml's `tune.<model type>`; every range is checked before a trial
runs (tuning.space). Trials fit on the features the pipeline built (their md5 checked against
dvc.lock; no DVC stage runs) and minimise the validation RMSE; each is an MLflow child run of
the study's parent run. The study lives in Optuna's RDB storage (`optuna.db` beside
`mlflow.db`, or TUNE_STORAGE_URL): the same --name resumes it, and any process with the same
--name adds trials to it (`--workers N` starts N-1 more processes; `--no-winner` joins without
running a winner). At the end the best params run through the pipeline flow as a DVC
experiment in a worktree of HEAD (as flows.compare runs a param set), so the winner is a
registered version traceable to its raw months; the parent run records its name, ref and
version. Prefect artifacts `tune-trials` and `tune-best-params`; Optuna's plots on the run.

What is reproducible: with one worker, the same study name on the same stored trials proposes
the same params (TPE seeded with `tune.seed`, plus the trials already stored, so a resumed run
goes on rather than repeating its start), and each trial's fit is deterministic (XGBoost seeded
with `base.seed`, fixed threads). With --workers 2 each process is seeded apart (seed + 1000 x
worker), but which trials each one sees finished depends on timing, so the sequence of params,
and possibly the best, differ between runs; every trial's params and value are stored, and the
winner itself is reproducible as its DVC experiment. Each worker fits with
base.threads / workers threads (2 cores: 1 each).

Exit status: 0 done; 65 bad input (named, before any trial); 75 the MLflow store did not
answer; 130 interrupted; 1 otherwise.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from typing import Any

from stages.common import BadInputError
from tuning import search as searching

EXIT_INTERRUPTED = 130


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m flows.tune",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model-type", required=True, help="lasso, ridge or xgboost")
    parser.add_argument("--trials", required=True, type=int, help="trials this run adds")
    parser.add_argument("--timeout", type=float, help="seconds; each worker stops after it")
    parser.add_argument("--name", help="study name (default tune-<model type>): resumes it")
    parser.add_argument("--workers", type=int, default=1, help="processes adding trials")
    parser.add_argument("--workspace", default=".")
    parser.add_argument(
        "--no-winner", dest="winner", action="store_false", help="trials only (join a study)"
    )
    parser.add_argument("--verbose", action="store_true", help="Prefect's full log here too")
    return parser


def _terminate_as_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    workspace = Path(args.workspace).resolve()
    try:  # refused before any server, study or trial
        searching.plan(
            workspace, args.model_type, args.trials, timeout=args.timeout, workers=args.workers,
            name=args.name, committed_features=args.winner,
        )  # fmt: skip
    except BadInputError as exc:
        print(f"BAD INPUT in tune: {exc}", file=sys.stderr)  # noqa: T201
        return 65
    signal.signal(signal.SIGTERM, _terminate_as_interrupt)
    from flows import console
    from flows.local_server import server_for_this_run

    server = server_for_this_run(workspace)
    console.prepare_environment(args.verbose)
    from flows.tune_flow import tune

    if server is not None:
        server.wait_ready()
    try:
        with console.quiet_prefect(args.verbose):
            state = tune(
                workspace=str(workspace), model_type=args.model_type, trials=args.trials,
                timeout=args.timeout, name=args.name, workers=args.workers, winner=args.winner,
                return_state=True,
            )  # fmt: skip
    except KeyboardInterrupt:
        console.interrupted()
        return EXIT_INTERRUPTED
    if not state.is_completed():
        error = state.result(raise_on_failure=False)
        print(f"tune failed: {error}", file=sys.stderr)  # noqa: T201
        from stage_runtime.record import TrackingUnavailableError

        if isinstance(error, TrackingUnavailableError):
            return console.EXIT_TRANSIENT
        return console.EXIT_BAD_INPUT if isinstance(error, BadInputError) else console.EXIT_FAILED
    print(summary(state.result()))  # noqa: T201 - the summary a person reads
    return 0


def summary(result: dict[str, Any]) -> str:
    best, winner = result["best"], result["winner"]
    states = ", ".join(f"{n} {s.lower()}" for s, n in sorted(result["trials"].items()))
    lines = [
        f"study {result['study']} ({result['storage']}): {sum(result['trials'].values())} trials "
        f"({states}); this run added {result['trials_this_run']} in {result['seconds']} s, "
        f"overhead {result['overhead_per_trial_seconds']:.3f} s per trial (pruning reports "
        f"during fits: {result['pruning_per_trial_seconds']:.3f} s)",
        f"best: trial {best['trial']}, validation RMSE {best['validation_rmse']:.4f} min: "
        + ", ".join(f"{k}={v}" for k, v in best["params"].items()),
    ]
    if winner:
        lines.append(
            f"winner: DVC experiment {winner['experiment']} ({winner['ref']}), model version "
            f"{winner['model_version']}: validation RMSE {winner['validation_rmse']}, "
            f"test RMSE {winner['test_rmse']}"
        )
    lines.append(f"mlflow: parent run {result['parent_run_id']} (one child run per trial)")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
