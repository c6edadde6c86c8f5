"""Batch scoring's command line (the flow: flows.score_flow).

    python -m flows.score --month 2025-03                                  # the champion
    python -m flows.score --month 2025-03 --model models:/NAME/4 --out predictions/v4.parquet
    python -m flows.score serve --month 2025-03 --cron "0 6 * * *"       # a deployment

Without PREFECT_API_URL a temporary Prefect server is started for the run, as for
flows.pipeline. Exit status: 0 scored; 2 bad arguments; 65 bad input (a month not published,
a damaged file, an unknown model or version); 1 other failures.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

SCORE_CRON = "0 6 * * *"


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m flows.score",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("command", nargs="?", choices=["run", "serve"], default="run")
    parser.add_argument("--month", required=True, help="YYYY-MM: the TLC month to score")
    parser.add_argument("--model", help="registry URI (default: models:/<name>@champion)")
    parser.add_argument("--out", help="predictions file (default: predictions/<file name>)")
    parser.add_argument("--cron", default=SCORE_CRON, help="schedule for serve")
    parser.add_argument("--verbose", action="store_true", help="Prefect's full log here too")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from stages.common import BadInputError, check_month

    try:
        check_month(args.month)
    except BadInputError as exc:
        print(f"score: --month: {exc}", file=sys.stderr)  # noqa: T201
        return 2
    from flows.local_server import server_for_this_run

    server = server_for_this_run(Path.cwd(), keep=args.command == "run")
    from flows import console

    console.prepare_environment(args.verbose)
    from flows.score_flow import score_month

    if server is not None:
        server.wait_ready()
    parameters = {"month": args.month, "model_uri": args.model, "out": args.out}
    if args.command == "serve":
        score_month.serve(name="score-month", cron=args.cron, parameters=parameters)
        return 0
    with console.quiet_prefect(args.verbose):
        state = score_month(**parameters, return_state=True)
    if not state.is_completed():
        error = state.result(raise_on_failure=False)
        print(f"score failed: {error}", file=sys.stderr)  # noqa: T201
        return console.EXIT_BAD_INPUT if isinstance(error, BadInputError) else console.EXIT_FAILED
    result = state.result()
    print(  # noqa: T201 - the summary a person reads
        f"{result['month']}: {result['scored']} trips scored, {result['refused']} refused "
        f"(mean {result['mean_predicted_minutes']} min)\n"
        f"model: {result['model']}\npredictions: {result['out']}\n"
        f"trace: python -m lineage {result['out']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
