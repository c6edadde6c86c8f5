"""Trace a model to the exact raw files it was trained on; verify, restore or reproduce it.

python -m flows.trace models:/nyc-taxi-trip-duration-minutes/3
python -m flows.trace <mlflow run id> --verify
python -m flows.trace models/model.json --restore /tmp/raw [--with-features]
python -m flows.trace models:/nyc-taxi-trip-duration-minutes/latest --reproduce --json
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from flows.lineage import FileNode, Lineage, LineageError, Tracer, reproduce, restore, verify

KEY_PARAMS = ("model.type", "model.alpha", "data.months", "data.colour", "prepare.")


def _mark(checks: dict[str, Any]) -> str:
    if not checks:
        return ""
    good = checks.get("lock_matches") and checks.get("cache_rehash_matches")
    return " [green]✓ verified[/]" if good else f" [red]✗ {checks}[/]"


def render(lineage: Lineage) -> Any:
    from rich.tree import Tree

    mv = lineage.model_version
    title = f"[bold]{mv['name']} v{mv['version']}[/]" if mv else "[bold]model[/]"
    tree = Tree(
        f"{title}  {lineage.model.path} md5 {lineage.model.md5}{_mark(lineage.model.checks)}"
    )

    def add(branch: Any, node: FileNode) -> None:
        stage = node.producer
        if stage is None:
            branch.add(f"[red]no MLflow run wrote {node.path} md5 {node.md5}[/]")
            return
        params = ", ".join(
            f"{k}={v}" for k, v in sorted(stage.params.items()) if k.startswith(KEY_PARAMS)
        )
        git = f"commit {stage.tags.get('git_commit', '?')[:10]}"
        git += " (dirty)" if stage.tags.get("git_dirty") == "true" else ""
        exp = f" exp {stage.tags['dvc_exp_name']}" if "dvc_exp_name" in stage.tags else ""
        run_branch = branch.add(
            f"[cyan]{stage.stage}[/] run {stage.run_id} {git}{exp}"
            + (f"\n{params}" if params else "")
        )
        for child in stage.inputs:
            source = f"\n  ← {child.source}" if child.source else ""
            add(run_branch.add(f"{child.path} md5 {child.md5}{_mark(child.checks)}{source}"), child)

    add(tree, lineage.model)
    return tree


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("ref", help="models:/<name>/<version>, an MLflow run id, or a model file")
    parser.add_argument(
        "--verify",
        action="store_true",
        help="check every hash against dvc.lock at the model's commit and the cache",
    )
    parser.add_argument(
        "--restore",
        type=Path,
        metavar="DIR",
        help="write the exact raw files of this model into DIR",
    )
    parser.add_argument("--with-features", action="store_true", help="--restore features too")
    parser.add_argument(
        "--reproduce",
        action="store_true",
        help="re-run the pipeline at the model's commit and compare",
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    args = parser.parse_args(argv)

    try:
        tracer = Tracer()
        ref = args.ref
        if ref.startswith("models:/") and ref.endswith("/latest"):
            name = ref.removeprefix("models:/").rpartition("/")[0]
            latest = max(
                tracer.client.search_model_versions(f"name = '{name}'"),
                key=lambda v: int(v.version),
            )
            ref = f"models:/{name}/{latest.version}"
        lineage = tracer.trace(ref)
        report: dict[str, Any] = {}
        ok = True
        if args.verify:
            ok = verify(lineage)
        if args.restore:
            report["restored"] = [
                str(p) for p in restore(lineage, args.restore, args.with_features)
            ]
        if args.reproduce:
            report["reproduce"] = reproduce(lineage)
            ok &= report["reproduce"]["byte_identical"] and report["reproduce"]["metrics_equal"]
    except LineageError as exc:
        print(f"trace: {exc}", file=sys.stderr)  # noqa: T201
        return 2

    if args.json:
        print(json.dumps({"lineage": asdict(lineage), **report}, indent=2, default=str))  # noqa: T201
    else:
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
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
