"""The flow's cost over its stages, for an A/B of two checkouts: a cold `python -m
flows.pipeline` (every stage) and the bench's one-param change, against a running Prefect
server, in a new scratch project with the real months. FINDINGS.md, "One DVC process for a
flow run", holds runs of it.

    python -m benchmarks.flow_stages /tmp/flow-ab-1     # prints one JSON line
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from benchmarks.overhead import (
    FLOW_COMMAND,
    ROOT,
    STAGE_LINE,
    one_stage_change,
    prefect_server,
    project_env,
    timed,
)
from workspaces.scratch import scratch_project


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir", type=Path, help="a new folder for the scratch project")
    parser.add_argument("--tlc-source", type=Path, default=ROOT.parent / "shared" / "nyc-taxi")
    args = parser.parse_args()
    env = project_env(args.workdir, args.tlc_source.resolve())
    env.pop("PREFECT_API_URL", None)
    repo = scratch_project(args.workdir / "project", env)
    with prefect_server(env) as url:
        served = {**env, "PREFECT_API_URL": url}
        cold, proc = timed(FLOW_COMMAND, repo, served)
        stages = sum(float(seconds) for _, seconds in STAGE_LINE.findall(proc.stderr))
        one = one_stage_change(repo, env, served)
    result = {"cold_flow_seconds": round(cold, 2), "its_stages_seconds": round(stages, 2)}
    sys.stdout.write(json.dumps({**result, "one_stage_change": one}) + "\n")


if __name__ == "__main__":
    main()
