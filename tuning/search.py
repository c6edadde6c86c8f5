"""A search, without Prefect: check everything, open the study and its MLflow parent run, and
run one worker's share of the trials. flows.tune orchestrates; extra workers are processes:

    python -m tuning.search --workspace . --name NAME --model-type xgboost --trials 10 \
        --worker 1 --threads 1          # what flows.tune starts for --workers 2

Each worker prints one JSON line with its trials' cost.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stage_runtime import record
from stages.common import BadInputError, load_params
from tuning import space as spaces
from tuning import trials as study_trials
from workspaces.worktrees import git_file

log = logging.getLogger("tuning")
# A study name becomes part of a DVC experiment name (a git ref) and of MLflow run names.
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,99}$")


@dataclass(frozen=True)
class Plan:
    """A checked search: nothing of it can be refused once trials start."""

    repo: Path
    name: str
    model_type: str
    space: list[spaces.SearchParam]
    params: dict[str, Any]  # the validated base, model and tune sections
    storage_url: str


def plan(
    repo: Path,
    model_type: str,
    trials: int,
    *,
    timeout: float | None = None,
    workers: int = 1,
    name: str | None = None,
    committed_features: bool = False,
) -> Plan:
    """Every check before a trial runs; BadInputError names what is wrong.

    `committed_features`: the winner will run in a worktree of HEAD, so HEAD's dvc.lock must
    record the features the trials read (the same md5), or the winner would train on others.
    """
    spaces.check_run(trials, timeout, workers)
    name = name or f"tune-{model_type}"
    if not NAME_RE.match(name):
        raise BadInputError(f"--name {name!r}: letters, digits, '-' and '_' only (a git ref)")
    params = load_params("base", "model", "tune", path=repo / "params.yaml")
    cluster = params["model"].xgboost.cluster
    if model_type == "xgboost" and cluster != "none":
        # Trials report every few rounds to Optuna's pruner from inside the fit; they run in
        # the tuning processes (--workers of them), not on the Dask cluster.
        log.warning(
            "model.xgboost.cluster=%s: the trials fit in the tuning processes; the winner's "
            "train stage uses the cluster",
            cluster,
        )
    search_space = spaces.search_space(params["tune"], params["model"], model_type)
    locked = study_trials.locked_features(repo)
    if committed_features:
        head = git_file(repo, "HEAD", record.LOCK_FILE)
        committed = study_trials.locked_features(repo, head) if head is not None else {}
        if committed != locked:
            raise BadInputError(
                "the features in dvc.lock are not those of HEAD's dvc.lock; the winner runs in a "
                "worktree of HEAD: commit dvc.lock first (or pass --no-winner)"
            )
    return Plan(repo, name, model_type, search_space, params, study_trials.storage_url(repo))


def open_study(p: Plan, worker: int = 0) -> tuple[Any, Any]:
    """The stored study, its sampler seeded for this worker, and the MLflow client. The
    study's parent run exists afterwards: the first process creates it, under the SQLite
    storage's lock (PostgreSQL: two first processes at the same instant could make two)."""
    import optuna

    tune = p.params["tune"]
    storage = study_trials.open_storage(p.storage_url)
    client = record.connect(record.tracking_uri(p.repo))
    lock = record.sqlite_path(p.storage_url)
    with study_trials.maybe_lock(lock.with_name(lock.name + ".lock") if lock else None, p.name):
        study = study_trials.load_study(storage, p.name, p.model_type, tune.pruner)
        if study.user_attrs.get(study_trials.PARENT_ATTR) is None:
            run = client.create_run(
                record.ensure_experiment(client, record.tracking_uri(p.repo)),
                tags={
                    study_trials.STUDY_TAG: p.name,
                    study_trials.ROLE_TAG: "study",
                    study_trials.MODEL_TYPE_TAG: p.model_type,
                    "tune.storage": study_trials.redacted(p.storage_url),
                    "tune.sampler": f"TPESampler(seed={tune.seed})",
                },
                run_name=p.name,
            )
            study.set_user_attr(study_trials.PARENT_ATTR, run.info.run_id)
    seed = spaces.sampler_seed(tune.seed, worker, len(study.get_trials(deepcopy=False)))
    study.sampler = optuna.samplers.TPESampler(seed=seed)
    return study, client


def parent_run_id(study: Any) -> str:
    return study.user_attrs[study_trials.PARENT_ATTR]


def work(p: Plan, trials: int, timeout: float | None, worker: int, threads: int) -> dict[str, Any]:
    """One worker's trials, in this process, on the features read once."""
    features = study_trials.load_features(p.repo)
    study, client = open_study(p, worker=worker)
    recorder = study_trials.Recorder(
        client,
        record.ensure_experiment(client, record.tracking_uri(p.repo)),
        parent_run_id(study),
        p.name,
        features.md5,
    )
    objective = study_trials.Objective(
        features,
        p.space,
        p.params["model"],
        p.model_type,
        seed=p.params["base"].seed,
        threads=threads,
        interval_rounds=p.params["tune"].pruner.interval_rounds,
        recorder=recorder,
    )
    return {"worker": worker} | study_trials.run_trials(study, objective, trials, timeout)


def worker_command(
    p: Plan, trials: int, timeout: float | None, worker: int, threads: int
) -> list[str]:
    """The argument list of an extra worker process (never a shell: no param reaches one)."""
    cmd = [
        sys.executable,
        "-m",
        "tuning.search",
        "--workspace",
        str(p.repo),
        "--name",
        p.name,
        "--model-type",
        p.model_type,
        "--trials",
        str(trials),
        "--worker",
        str(worker),
        "--threads",
        str(threads),
    ]
    return cmd + (["--timeout", str(timeout)] if timeout else [])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tuning.search", description=__doc__)
    parser.add_argument("--workspace", default=".", type=Path)
    parser.add_argument("--name", required=True)
    parser.add_argument("--model-type", required=True)
    parser.add_argument("--trials", required=True, type=int)
    parser.add_argument("--timeout", type=float)
    parser.add_argument("--worker", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s tune worker %(message)s")
    try:
        p = plan(
            args.workspace.resolve(),
            args.model_type,
            args.trials,
            timeout=args.timeout,
            name=args.name,
        )
        stats = work(p, args.trials, args.timeout, args.worker, args.threads)
    except BadInputError as exc:
        print(f"BAD INPUT in tune worker {args.worker}: {exc}", file=sys.stderr)  # noqa: T201
        return 65
    print(json.dumps(stats))  # noqa: T201 - read by flows.tune
    return 0


if __name__ == "__main__":
    sys.exit(main())
