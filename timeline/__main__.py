"""python -m timeline upstream: the months the source republished since they were ingested."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from stages.common import BadInputError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m timeline", description=__doc__)
    parser.add_argument("command", choices=["upstream"])
    parser.add_argument("--workspace", type=Path, default=Path())
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    from timeline import upstream

    try:
        checks = upstream.check(args.workspace.resolve())
    except BadInputError as exc:
        print(f"timeline: {exc}", file=sys.stderr)  # noqa: T201 - the line a person reads
        return 2
    if args.json:
        print(json.dumps([c.__dict__ for c in checks], indent=2))  # noqa: T201
    else:
        for c in checks:
            print(c.line())  # noqa: T201 - the command's output
        if not checks:
            print("no month ingested yet (dvc.lock has no ingest stage)")  # noqa: T201
    return 1 if upstream.changed(checks) else 0


if __name__ == "__main__":
    sys.exit(main())
