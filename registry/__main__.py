"""python -m registry: the champion and challenger of the registered model, and promotion by hand.

    python -m registry show                          # champion, challenger, their decisions
    python -m registry promote 3 --reason "roll back: v5 mis-scores airport trips"

The model name is params.yaml's model.registered_name unless --model is given. Exit status:
0 done, 2 bad arguments, 3 no such version or model, 4 the tracking store cannot be used.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

EXIT_OK, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_STORE = 0, 2, 3, 4


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m registry",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", help="registered model name (default: params.yaml)")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("show", help="champion and challenger with their recorded decisions")
    promote = commands.add_parser("promote", help="make a version the champion (or roll back)")
    promote.add_argument("version", help="the version number to promote")
    promote.add_argument("--reason", required=True, help="why, recorded on the version")
    return parser


def _describe(alias: str, version: Any | None) -> str:
    from registry.champion import TAG_PREFIX

    if version is None:
        return f"{alias}: none"
    tags = version.tags
    line = f"{alias}: v{version.version}"
    if "validation.rmse" in tags:
        line += f"  validation RMSE {float(tags['validation.rmse']):.4f}"
    if "test.rmse" in tags:
        line += f"  test RMSE {float(tags['test.rmse']):.4f}"
    outcome = tags.get(TAG_PREFIX + "outcome")
    if outcome:
        line += f"\n  {outcome} by {tags.get(TAG_PREFIX + 'decided_by', '?')}"
        line += f" at {tags.get(TAG_PREFIX + 'decided_at', '?')}: {tags.get(TAG_PREFIX + 'reason')}"
    return line


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from registry import champion
    from stage_runtime import record

    try:
        name = args.model
        if not name:
            from stages.common import load_params

            name = load_params("model")["model"].registered_name
        client = record.connect(create=False)
        if args.command == "show":
            for alias in (champion.CHAMPION, champion.CHALLENGER):
                print(_describe(alias, champion.version_with_alias(client, name, alias)))  # noqa: T201
            return EXIT_OK
        decision = champion.promote_by_hand(client, name, args.version, args.reason)
    except champion.PromotionError as exc:
        print(f"registry: {exc}", file=sys.stderr)  # noqa: T201 - the one line a person reads
        return EXIT_NOT_FOUND
    except (record.TrackingUnavailableError, record.TrackingStoreError) as exc:
        print(f"registry: {exc}", file=sys.stderr)  # noqa: T201
        return EXIT_STORE
    print(f"{name} v{args.version}: {decision.outcome} ({decision.reason})")  # noqa: T201
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
