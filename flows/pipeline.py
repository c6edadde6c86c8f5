"""The command line of the pipeline flow (flows.pipeline_flow).

    python -m flows.pipeline                               # run once (ephemeral Prefect, no server)
    python -m flows.pipeline --set model.alpha=0.05        # the same as a DVC experiment
    python -m flows.pipeline --reingest                    # first re-ingest republished months
    python -m flows.pipeline serve [--cron "0 4 * * 1"]    # a deployment rerunning the pipeline

For a plain run DVC is asked what is stale in a child process started before Prefect is
imported; the answer is the flow's `plan` parameter. Without PREFECT_API_URL, a Prefect
server is started for the run (flows.local_server), unless DVC's answer is that nothing is
stale: then the run says so and ends, with neither server nor Prefect (in team mode, where
every run pushes, the flow always runs). The server is kept for the next runs (stopped when
idle, or by `python -m flows.local_server stop`); `serve` has one of its own for its life.
Ctrl-C and SIGTERM stop the running stage and put params.yaml back before exiting.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

SCHEDULE_CRON = "0 4 * * 1"  # Mondays 04:00 (moving to new months: flows.retrain serve)
EXIT_INTERRUPTED = 130


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m flows.pipeline", description=__doc__)
    parser.add_argument("command", nargs="?", choices=["run", "serve"], default="run")
    parser.add_argument("--workspace", default=".")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--name", help="DVC experiment name (with --set)")
    parser.add_argument("--cron", default=SCHEDULE_CRON, help="schedule for serve")
    parser.add_argument("--verbose", action="store_true", help="Prefect's full log here too")
    parser.add_argument(
        "--reingest",
        action="store_true",
        help="re-ingest the months the source republished since dvc.lock's ingest "
        "(python -m timeline upstream lists them), then run what that makes stale",
    )
    return parser


def overrides_of(items: list[str]) -> dict[str, Any] | None:
    """`--set model.alpha=0.05` pairs; the values stay text, as `dvc exp run -S` reads them."""
    if not items:
        return None
    pairs = [item.partition("=") for item in items]
    bad = [item for item, (_, sep, _) in zip(items, pairs, strict=True) if not sep]
    if bad:
        raise SystemExit(f"--set expects key=value, got {', '.join(bad)}")
    return {key: value for key, _, value in pairs}


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    workspace = Path(args.workspace).resolve()
    parameters: dict[str, Any] = {"workspace": str(workspace)}
    if args.overrides or args.name:
        parameters |= {"overrides": overrides_of(args.overrides), "experiment_name": args.name}
    # SIGTERM unwinds like Ctrl-C: the flow stops its stage and restores params.yaml; both
    # are remembered, so the flow also stops when Prefect swallowed the KeyboardInterrupt.
    from workspaces import repro

    signal.signal(signal.SIGTERM, repro.interrupt)
    signal.signal(signal.SIGINT, repro.interrupt)
    early_plan = server = None
    if args.reingest:
        parameters["reingest"] = _republished(workspace)
    if args.command == "run" and "overrides" not in parameters and not parameters.get("reingest"):
        from workspaces.repro import PlanProcess

        early_plan = PlanProcess.start(workspace)
        if _no_server_and_no_push():
            server = _kept_server_with_prefect_importing(workspace, args.verbose)
            # Nothing stale: say so without starting a Prefect server (most of a no-op run's
            # cost). A run that does work still goes through the flow.
            plan = early_plan.result()  # kept: the flow gets the same answer
            if plan is not None and not any(stage["changed"] for stage in plan):
                from flows import console

                return console.nothing_to_do(workspace, plan)
    if server is None:
        # Without a running server, one for this run, started while Prefect is imported.
        from flows.local_server import server_for_this_run

        server = server_for_this_run(workspace, keep=args.command == "run")
    try:
        return _run(args, parameters, early_plan, server)
    except KeyboardInterrupt:
        from flows import console

        console.interrupted()
        return EXIT_INTERRUPTED


def _republished(workspace: Path) -> list[str]:
    """The ingest stages of the months the source republished (timeline.upstream)."""
    from flows import console
    from timeline import upstream

    checks = upstream.check(workspace)
    for check in checks:
        if check.status != "unchanged":
            console.say(check.line())
    stages = upstream.reingest_stages(checks)
    if not stages:
        console.say("no month was republished: nothing to re-ingest")
    return stages


def _kept_server_with_prefect_importing(workspace: Path, verbose: bool) -> Any:
    """The project's kept Prefect server if one is running (None otherwise), with Prefect
    imported in a thread meanwhile: its 1.5-2 s then overlap DVC's plan instead of following
    it. Without a kept server nothing starts before the plan says there is work."""
    from flows.local_server import idle_seconds, running_kept_server, server_for_this_run

    if idle_seconds() == 0 or running_kept_server(workspace) is None:
        return None
    server = server_for_this_run(workspace)  # the running one: nothing to start
    from flows import console

    console.prepare_environment(verbose)  # before Prefect reads its settings
    # Not a daemon: after a no-op the interpreter waits for the import to end (a daemon thread
    # abandoned mid-import at exit aborted the interpreter: SIGABRT, in `make bench`).
    threading.Thread(target=_import_prefect, args=(verbose,), name="import-prefect").start()
    return server


def _import_prefect(verbose: bool) -> None:
    """What a flow run does first: import Prefect and the flow, set up Prefect's logging."""
    with contextlib.suppress(Exception):  # the main thread's own import reports any error
        import flows.pipeline_flow  # noqa: F401
        from flows import console

        if not verbose:
            console.console_without_tracebacks()


def _no_server_and_no_push() -> bool:
    """Embedded mode: no Prefect server named, no team remote to push to (in team mode every
    run pushes, so even a no-op goes through the flow)."""
    if os.environ.get("PREFECT_API_URL"):
        return False
    from workspaces.remote import team_remote_in

    return not team_remote_in(os.environ)


def _run(args: argparse.Namespace, parameters: dict[str, Any], early_plan: Any, server: Any) -> int:
    from flows import console

    console.prepare_environment(args.verbose)
    from flows.pipeline_flow import pipeline

    if server is not None:
        server.wait_ready()
    if args.command == "serve":
        pipeline.serve(name="scheduled", cron=args.cron, parameters=parameters)
        return 0
    with console.quiet_prefect(args.verbose):
        if early_plan is not None:
            parameters["plan"] = early_plan.result()
            parameters["dvc_remote"] = early_plan.default_remote()
        state = pipeline(**parameters, return_state=True)
    # A temporary server's UI is gone after the run; a kept or named one shows it.
    temporary = server is not None and not server.kept
    ui = None if temporary else os.environ["PREFECT_API_URL"].removesuffix("/api")
    return console.summary(state, ui)


if __name__ == "__main__":
    sys.exit(main())
