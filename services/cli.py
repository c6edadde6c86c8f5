"""The command line of the team services.

    python -m services up          # start what is not running, write .services/env
    python -m services down        # stop everything (bounded), free the ports
    python -m services status      # one line per service; exit 0 when all are up, 3 otherwise
    python -m services dvc-remote [--repo PATH]   # DVC remote `team` in PATH's local config

Exit status: 0 done; 1 a service failed (one line naming it, its log); 2 usage or a bad
setting; 3 `status` found something down.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from services import core, dvc_remote
from services.config import Config, ConfigError
from services.process import ServiceError


def _say(line: str) -> None:
    print(line, flush=True)  # noqa: T201 - the command's output


def _fail(line: str) -> None:
    print(f"services: {line}", file=sys.stderr, flush=True)  # noqa: T201 - the one line a person reads


def _up(cfg: Config) -> int:
    outcome = core.up(cfg)
    for service, what in outcome.lines:
        _say(f"  {service:<10} {what}")
    if outcome.errors:
        for error in outcome.errors:
            _fail(error)
        _fail(f"logs in {cfg.relative(cfg.logs)}; `python -m services down` stops what started")
        return 1
    changed = any(what not in {"already up", "exists"} for _, what in outcome.lines)
    if not changed:
        _say(f"services: already up, nothing changed ({outcome.seconds:.1f} s)")
    else:
        _say(f"services: up in {outcome.seconds:.1f} s")
    _say(f"  MLflow {cfg.mlflow_url}   Prefect {cfg.prefect_api_url.removesuffix('/api')}")
    _say(f"source {cfg.relative(cfg.env_file)}")
    return 0


def _down(cfg: Config) -> int:
    outcome = core.down(cfg)
    for service, what in outcome.lines:
        if what != "was not running":
            _say(f"  {service:<10} {what}")
    for error in outcome.errors:
        _fail(error)
    if outcome.errors:
        return 1
    if all(what == "was not running" for _, what in outcome.lines):
        _say("services: already down, nothing to stop")
    else:
        _say(f"services: down in {outcome.seconds:.1f} s")
    return 0


def _status(cfg: Config) -> int:
    states = core.status(cfg)
    for state in states:
        mark = "up" if state.up else "DOWN"
        pid = f"pid {state.pid}" if state.pid else ""
        _say(f"  {state.name:<10} {mark:<5} {pid:<10} {state.detail}")
    return 0 if all(s.up for s in states) else 3


def _dvc_remote(cfg: Config, repo: Path) -> int:
    remote = dvc_remote.RemoteSettings.from_env(os.environ)
    if remote is None:
        remote = dvc_remote.RemoteSettings.of_stack(cfg, core.credentials(cfg))
    try:
        _say(f"dvc remote {dvc_remote.configure(repo, remote)}")
    except dvc_remote.DvcRemoteError as exc:
        _fail(f"DVC remote: {exc}")
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m services",
        description="Team services: PostgreSQL, SeaweedFS S3, MLflow server, Prefect server "
        "and workers, state under .services/ (SERVICES_DIR).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("up", help="start what is not running; write .services/env")
    sub.add_parser("down", help="stop everything")
    sub.add_parser("status", help="one line per service (exit 3 when one is down)")
    remote = sub.add_parser("dvc-remote", help="configure the DVC remote `team` (local config)")
    remote.add_argument("--repo", type=Path, default=Path.cwd(), help="the DVC repository")
    args = parser.parse_args(argv)
    commands = {
        "up": _up,
        "down": _down,
        "status": _status,
        "dvc-remote": lambda cfg: _dvc_remote(cfg, args.repo),
    }
    try:
        return commands[args.command](Config.from_env())
    except ConfigError as exc:
        _fail(str(exc))
        return 2
    except ServiceError as exc:
        _fail(str(exc))
        return 1
    except KeyboardInterrupt:
        _fail("interrupted: `python -m services status` shows what runs")
        return 130
