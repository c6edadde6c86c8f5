"""A retraining that retrains: when the source publishes a month the pipeline has not used,
move the window onto it, run the pipeline, and keep the result as a commit on a branch.

    python -m flows.retrain                      # once: retrain if there is a new month
    python -m flows.retrain --branch retrain     # the branch that holds the retrained windows
    python -m flows.retrain serve [--cron ...]   # the scheduled deployment (cron: params.yaml)

The source is the one ingest reads (the TLC address, or TLC_SOURCE). Its newest month N, when
`data.months` of the branch does not hold it, becomes the window's validation month and the
window moves (timeline.window: train on the `retrain.train_months` months before N, test on
the month before those). The pipeline flow runs in a worktree of the branch (so the user's
workspace is never touched), months whose source was republished are re-ingested, the model
is registered by train and handed to promotion by evaluate (the champion rule), and params.yaml
+ dvc.lock + metrics are committed on the branch.

Why a commit on a branch and not a DVC experiment: the new window is the pipeline's new
definition, not a variation to compare and discard; the next retraining starts from it and
asks it which months were used; a branch is what a team reviews, merges or reverts, and what
`git log` shows a year later (`dvc exp` refs are local until pushed, and `dvc exp gc` drops
them). The branch is created from HEAD the first time. With nothing new, one line says so and
nothing else happens (no Prefect server, no worktree).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_BRANCH = "retrain"
EXIT_BAD_INPUT, EXIT_SOURCE = 65, 69


class RetrainError(RuntimeError):
    """A retraining that cannot start (a month of the window missing at the source, the
    branch checked out elsewhere): the message says which."""


@dataclass(frozen=True)
class Plan:
    """What a retraining found: the base it starts from and, when there is one, the window."""

    branch: str
    base: str  # the commit the branch points at (HEAD when the branch does not exist yet)
    branch_exists: bool
    source: str
    newest: str
    used: dict[str, str]
    window: Any | None  # timeline.window.Window; None: no new month
    # Months of the branch's window the source republished since they were ingested: with or
    # without a new month, they are ingested again and the model retrained on them.
    republished: tuple[str, ...] = ()

    @property
    def months(self) -> dict[str, str]:
        """`data.months` of the retraining: the moved window, or the same months again."""
        return self.window.months if self.window is not None else self.used

    @property
    def nothing_to_do(self) -> bool:
        return self.window is None and not self.republished

    def line(self) -> str:
        if self.window is None and self.republished:
            return (
                f"republished at {self.source}: {', '.join(self.republished)} (same months, "
                "new bytes): re-ingesting and retraining"
            )
        if self.window is None:
            split = self.used.get(self.newest)
            return (
                f"nothing new: the newest month at {self.source} is {self.newest}, already "
                f"used ({split}) by branch {self.branch if self.branch_exists else 'HEAD'}"
            )
        return f"new month {self.newest} at {self.source}: {self.window.describe()}"


def _git(repo: Path, *args: str) -> str:
    proc = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RetrainError(f"git {' '.join(args)}: {proc.stderr.strip()}")
    return proc.stdout


def branch_commit(repo: Path, branch: str) -> str | None:
    proc = subprocess.run(
        ["git", "rev-parse", "--verify", "--quiet", f"refs/heads/{branch}"],
        cwd=repo,
        capture_output=True,
        text=True,
        check=False,
    )
    return proc.stdout.strip() if proc.returncode == 0 else None


def plan(repo: Path, branch: str = DEFAULT_BRANCH, env: Any = os.environ) -> Plan:
    """Ask the source for its newest month and compare it with the branch's params."""
    from stages.common import PARAMS_FILE, validate_params_text
    from stages.tlc import trip_address
    from timeline import source, window

    tip = branch_commit(repo, branch)
    base = tip or _git(repo, "rev-parse", "HEAD").strip()
    text = _git(repo, "show", f"{base}:{PARAMS_FILE}")
    params = validate_params_text(text, f"{PARAMS_FILE} at {base[:10]}")
    data, rules = params["data"], params["retrain"]
    used = dict(data.months)
    known = max(used)
    sample = trip_address(data.colour, data.trips_url, known, env)
    http = source.is_http(sample)  # an HTTP source is probed, a local one listed
    where = sample.rsplit("/", 1)[0] if http else str(Path(sample).parent)
    published = source.published_months(data, known, env)
    if not published:
        raise source.SourceError(f"{where}: no {data.colour} trip file published")
    newest = published[-1]
    if newest in used:
        return Plan(
            branch, base, tip is not None, where, newest, used, None,
            _republished(repo, base, data, used, env),
        )  # fmt: skip
    win = window.ending_at(newest, rules.train_months)
    missing = [m for m in win.months if not http and m not in published]
    if missing:
        raise RetrainError(
            f"the window ending at {newest} ({win.describe()}) needs {', '.join(missing)}, "
            f"which {where} does not hold"
        )
    kept = {m: s for m, s in used.items() if m in win.months}
    return Plan(
        branch, base, tip is not None, where, newest, used, win,
        _republished(repo, base, data, kept, env),
    )  # fmt: skip


def _republished(repo: Path, base: str, data: Any, months: dict[str, str], env: Any) -> tuple:
    """The months of `months` that base's dvc.lock ingested and the source has republished."""
    from stage_runtime import record
    from timeline import upstream
    from workspaces.worktrees import git_file

    text = git_file(repo, base, record.LOCK_FILE)
    lock = record.parse_lock(text) if text is not None else {}
    checks = upstream.check_months(data, lock, repo, env)
    return tuple(c.month for c in upstream.changed(checks) if c.month in months)


def checked_out_in(repo: Path, branch: str) -> str | None:
    """The worktree that has `branch` checked out, if any (its files would go stale)."""
    path = None
    for line in _git(repo, "worktree", "list", "--porcelain").splitlines():
        if line.startswith("worktree "):
            path = line.removeprefix("worktree ")
        elif line == f"branch refs/heads/{branch}":
            return path
    return None


def commit_window(workspace: Path, repo: Path, p: Plan, result: dict[str, Any]) -> str:
    """Commit params.yaml, dvc.lock and the git-tracked outputs in the worktree, then move the
    branch to it, only if it still points where the retraining started (compare and set)."""
    from stage_runtime.locks import shared_git_state
    from workspaces.experiments import git_tracked_outputs

    outputs = git_tracked_outputs(workspace)
    paths = ["params.yaml", "dvc.lock", *outputs]
    _git(workspace, "add", "--", *[p for p in paths if (workspace / p).exists()])
    # Metrics of months the window left (data quality per month) are no stage's output now.
    quality = _git(workspace, "ls-files", "--", "metrics/data_quality").split()
    stale = [path for path in quality if path not in outputs]
    if stale:
        _git(workspace, "rm", "--quiet", "--", *stale)
    record = result.get("mlflow") or {}
    version = record.get("model_version")
    metrics = {m["split"]: m["rmse"] for m in result.get("metrics") or []}
    what = (
        f"window ending {p.newest} ({p.window.describe()})"
        if p.window is not None
        else f"republished {', '.join(p.republished)}"
    )
    message = (
        f"retrain: {what}\n\n"
        f"model {record.get('model_name')} version {version}; validation RMSE "
        f"{metrics.get('validation')}, test RMSE {metrics.get('test')}; "
        f"pipeline run {result.get('pipeline_run_id')}\n"
    )
    # The committer the environment names, else the retraining itself.
    identity = {"NAME": "taxi-pipeline retrain", "EMAIL": "retrain@localhost"}
    env = {
        f"GIT_{role}_{field}": value
        for role in ("AUTHOR", "COMMITTER")
        for field, value in identity.items()
    } | dict(os.environ)
    proc = subprocess.run(
        ["git", "commit", "--quiet", "--no-verify", "-m", message],
        cwd=workspace,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RetrainError(f"git commit in {workspace}: {proc.stdout}{proc.stderr}".strip())
    commit = _git(workspace, "rev-parse", "HEAD").strip()
    old = p.base if p.branch_exists else ""
    with shared_git_state(repo, f"git update-ref refs/heads/{p.branch}"):
        # The old value "" means "must not exist yet": two retrainings never both win.
        _git(repo, "update-ref", "-m", "retrain", f"refs/heads/{p.branch}", commit, old)
    return commit


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.retrain", description=__doc__)
    parser.add_argument("command", nargs="?", choices=["run", "serve"], default="run")
    parser.add_argument("--workspace", default=".")
    parser.add_argument("--branch", default=DEFAULT_BRANCH)
    parser.add_argument("--cron", help="schedule for serve (default: params.yaml retrain.cron)")
    parser.add_argument("--verbose", action="store_true", help="Prefect's full log here too")
    args = parser.parse_args(argv)
    repo = Path(args.workspace).resolve()
    from flows import console
    from stages.common import BadInputError
    from timeline.source import SourceError

    if args.command == "run":
        try:
            found = plan(repo, args.branch)
        except (RetrainError, BadInputError) as exc:
            console.say(f"[red bold]retrain refused[/]: {exc}")
            return EXIT_BAD_INPUT
        except SourceError as exc:
            console.say(f"[red bold]retrain: source unavailable[/]: {exc}")
            return EXIT_SOURCE
        if found.nothing_to_do:
            print(found.line())  # noqa: T201 - the one line a scheduled run prints
            return 0
    from flows.local_server import server_for_this_run

    server = server_for_this_run(repo, keep=args.command == "run")
    console.prepare_environment(args.verbose)
    from flows.retrain_flow import retrain

    if server is not None:
        server.wait_ready()
    if args.command == "serve":
        from stages.common import load_params

        cron = args.cron or load_params("retrain", path=repo / "params.yaml")["retrain"].cron
        retrain.serve(
            name="monthly", cron=cron, parameters={"workspace": str(repo), "branch": args.branch}
        )
        return 0
    with console.quiet_prefect(args.verbose):
        state = retrain(workspace=str(repo), branch=args.branch, return_state=True)
    if not state.is_completed():
        console.say(f"[red bold]retrain failed[/]: {state.result(raise_on_failure=False)}")
        return 1
    for line in state.result()["summary"]:
        console.say(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
