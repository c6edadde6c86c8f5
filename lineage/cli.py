"""Trace a model to the exact raw files it was trained on; verify, restore or reproduce it.

python -m lineage models:/nyc-taxi-trip-duration-minutes/3
python -m lineage <mlflow run id> --verify
python -m lineage models/model.json --restore /tmp/raw [--with-features]
python -m lineage predictions/green_tripdata_2025-03.parquet --verify   # batch scoring's output
python -m lineage models:/nyc-taxi-trip-duration-minutes/latest --reproduce --json
python -m lineage --used-by data/raw/green_tripdata_2024-02.parquet   # what used these bytes

Exit status: 0 traced (and verified / reproduced, when asked); 1 a check failed (a hash
differs from dvc.lock or the cache, the reproduction differs); 2 usage (bad arguments, a
--restore destination that is a file); 3 not found (model version, run, producer, commit or
cached file; for --used-by: nothing in the record used the bytes); 4 the MLflow store
cannot be reached or used.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from lineage.trace import FileNode, Lineage, LineageError, NotFoundError, Tracer
from stage_runtime import record

KEY_PARAMS = ("model.type", "model.alpha", "data.months", "data.colour", "prepare.")
EXIT_OK, EXIT_MISMATCH, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_STORE = 0, 1, 2, 3, 4


def _mark(checks: dict[str, Any]) -> str:
    if not checks:
        return ""
    good = checks.get("lock_matches") and checks.get("cache_rehash_matches")
    return " [green]✓ verified[/]" if good else f" [red]✗ {checks}[/]"


def render(lineage: Lineage) -> Any:
    from rich.tree import Tree

    mv = lineage.model_version
    title = f"[bold]{mv['name']} v{mv['version']}[/]" if mv else "[bold]model[/]"
    root = lineage.predictions or lineage.model
    if lineage.predictions is not None:
        title = f"[bold]predictions[/] (scored with {title})"
    tree = Tree(f"{title}  {root.path} md5 {root.md5}{_mark(root.checks)}")

    shown: set[str] = set()

    def add(branch: Any, node: FileNode) -> None:
        stage = node.producer
        if stage is None and node.source is None:
            branch.add(f"[red]no MLflow run wrote {node.path} md5 {node.md5}[/]")
            return
        if stage is None:  # a month scored as fetched from its source
            return
        params = ", ".join(
            f"{k}={v}" for k, v in sorted(stage.params.items()) if k.startswith(KEY_PARAMS)
        )
        git = f"commit {stage.tags.get('git_commit', '?')[:10]}"
        git += " (dirty)" if stage.tags.get("git_dirty") == "true" else ""
        exp = f" exp {stage.tags['dvc_exp_name']}" if "dvc_exp_name" in stage.tags else ""
        if stage.run_id in shown:  # a run reached by two paths: its inputs once
            branch.add(f"[cyan]{stage.stage}[/] run {stage.run_id} (inputs shown above)")
            return
        shown.add(stage.run_id)
        run_branch = branch.add(
            f"[cyan]{stage.stage}[/] run {stage.run_id} {git}{exp}"
            + (f"\n{params}" if params else "")
        )
        for child in stage.inputs:
            source = f"\n  ← {child.source}" if child.source else ""
            add(run_branch.add(f"{child.path} md5 {child.md5}{_mark(child.checks)}{source}"), child)

    add(tree, root)
    return tree


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m lineage",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "ref",
        nargs="?",
        help="models:/<name>/<version|latest>, an MLflow run id, a model file or a predictions "
        "file of flows.score",
    )
    parser.add_argument(
        "--used-by",
        metavar="FILE_OR_MD5",
        help="the reverse: every model version, DVC experiment and predictions file whose "
        "lineage includes these bytes (a file's, an md5, or every md5 the record holds for a "
        "file name that is not on disk)",
    )
    parser.add_argument(
        "--verify",
        action="store_true",
        help="check every hash against dvc.lock at the model's commit and the cache",
    )
    parser.add_argument(
        "--restore", type=Path, metavar="DIR", help="write the exact raw files of this model"
    )
    parser.add_argument("--with-features", action="store_true", help="--restore features too")
    parser.add_argument(
        "--reproduce",
        action="store_true",
        help="re-run the pipeline at the model's commit and compare",
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    return parser


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    """The parsed command line; a bad combination exits with status 2 (argparse's usage)."""
    parser = _parser()
    args = parser.parse_args(argv)
    if (args.ref is None) == (args.used_by is None):
        parser.error("give a model reference to trace, or --used-by FILE_OR_MD5 (not both)")
    if args.used_by is not None and (
        args.verify or args.restore or args.reproduce or args.with_features
    ):
        parser.error("--used-by takes only --json")
    return args


def _error(message: str, status: int) -> int:
    print(f"lineage: {message}", file=sys.stderr)  # noqa: T201 - the one line a person reads
    return status


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    if args.used_by is not None:
        return _used_by(args.used_by, args.json)
    return _trace(args)


def _trace(args: argparse.Namespace) -> int:
    if args.restore and args.restore.exists() and not args.restore.is_dir():
        return _error(f"--restore {args.restore}: exists and is not a directory", EXIT_USAGE)
    from lineage.trace import reproduce, restore, verify

    report: dict[str, Any] = {}
    ok = True
    try:
        lineage = Tracer().trace(args.ref)
        if args.verify:
            ok = verify(lineage)
        if args.restore:
            report["restored"] = [
                str(p) for p in restore(lineage, args.restore, args.with_features)
            ]
        if args.reproduce:
            report["reproduce"] = reproduce(lineage)
            ok &= report["reproduce"]["byte_identical"] and report["reproduce"]["metrics_equal"]
    except NotFoundError as exc:
        return _error(str(exc), EXIT_NOT_FOUND)
    except (record.TrackingUnavailableError, record.TrackingStoreError) as exc:
        return _error(str(exc), EXIT_STORE)
    except LineageError as exc:
        return _error(str(exc), EXIT_MISMATCH)
    except OSError as exc:
        return _error(f"{exc.filename or ''}: {exc.strerror or exc}", EXIT_USAGE)

    _show(lineage, report, args)
    return EXIT_OK if ok else EXIT_MISMATCH


def _show(lineage: Lineage, report: dict[str, Any], args: argparse.Namespace) -> None:
    if args.json:
        output = json.dumps({"lineage": asdict(lineage), **report}, indent=2, default=str)
        print(output)  # noqa: T201 - the command's output
        return
    from rich.console import Console

    console = Console()
    console.print(render(lineage))
    if args.verify:
        state = "[green]verified[/]" if lineage.checks["ok"] else "[red]MISMATCH[/]"
        console.print(f"verify: {state} against dvc.lock at commit {lineage.commit}")
    for path in report.get("restored", []):
        console.print(f"restored {path}")
    if "reproduce" in report:
        console.print(f"reproduce: {report['reproduce']}")


def _used_by(what: str, as_json: bool) -> int:
    from lineage.used_by import UsageError, render_lines, used_by

    try:
        tracer = Tracer()
        results = used_by(what, tracer.client, tracer.experiment_ids)
    except NotFoundError as exc:
        return _error(str(exc), EXIT_NOT_FOUND)
    except (record.TrackingUnavailableError, record.TrackingStoreError) as exc:
        return _error(str(exc), EXIT_STORE)
    except UsageError as exc:
        return _error(str(exc), EXIT_USAGE)
    except OSError as exc:
        return _error(f"{exc.filename or what}: {exc.strerror or exc}", EXIT_USAGE)
    if as_json:
        print(json.dumps([asdict(r) for r in results], indent=2))  # noqa: T201 - the output
    else:
        from rich.console import Console

        Console(highlight=False, soft_wrap=True).print("\n".join(render_lines(results)))
    if any(r.found() for r in results):
        return EXIT_OK
    md5s = ", ".join(r.md5 for r in results)
    return _error(
        f"{what} (md5 {md5s}): no model version, DVC experiment or predictions file in the "
        "record used these bytes",
        EXIT_NOT_FOUND,
    )
