"""What a smaller dvc.lock would buy: every stage's runtime modules declared as one folder.

Each stage declares the runtime modules it imports (lineage's record and stores,
stages/common.py, stages/tracking.py, workspaces/locks.py), four lines of dvc.lock each, and DVC
round-trips the whole dvc.lock after every stage. This experiment copies those files into one
folder of a scratch project and declares the folder instead (the stages still import the
originals: DVC's cost is what is measured), then runs, alternated with an unchanged project, a
cold `dvc repro`, no-op `dvc repro` and the bench's return to earlier params (issue 13, target
2). FINDINGS.md, "Issue 13, seventh session", holds a run.

    python -m benchmarks.runtime_dir --pairs 3
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.overhead import ROOT, back_to_earlier_params, project_env, timed
from workspaces.scratch import scratch_project

RUNTIME = (
    "lineage/__init__.py",
    "lineage/http_store.py",
    "lineage/pyfunc_folder.py",
    "lineage/record.py",
    "lineage/sqlite_client.py",
    "lineage/sqlite_store.py",
    "stages/common.py",
    "stages/tracking.py",
    "workspaces/__init__.py",
    "workspaces/locks.py",
)
FOLDER = "runtime_copy"
MEASURES = ("cold", "noop", "back", "apply", "lock_lines")


def one_folder(dvc_yaml: str) -> str:
    """dvc.yaml with the runtime modules of every stage replaced by one folder dependency."""
    for path in RUNTIME:
        dvc_yaml = re.sub(rf"(?m)^ +- {re.escape(path)}\n", "", dvc_yaml)
    return re.sub(r"(?m)^( +)deps:\n", lambda m: f"{m[1]}deps:\n{m[1]}  - {FOLDER}\n", dvc_yaml)


def declare_one_folder(repo: Path) -> None:
    (repo / FOLDER).mkdir()
    for path in RUNTIME:
        shutil.copyfile(repo / path, repo / FOLDER / path.replace("/", "__"))
    (repo / "dvc.yaml").write_text(one_folder((repo / "dvc.yaml").read_text()))


def measure(workdir: Path, tlc_source: Path, folder: bool) -> dict[str, Any]:
    env = project_env(workdir, tlc_source)
    repo = scratch_project(workdir / "project", env)
    if folder:
        declare_one_folder(repo)
    cold, _ = timed(["dvc", "repro"], repo, env)
    noop = min(timed(["dvc", "repro"], repo, env)[0] for _ in range(2))
    lock_lines = len((repo / "dvc.lock").read_text().splitlines())
    back = back_to_earlier_params(repo, env)
    return {
        "cold": round(cold, 2),
        "noop": round(noop, 2),
        "back": back["earlier_params_seconds"],
        "apply": back["exp_apply_seconds"],
        "lock_lines": lock_lines,
        "restored": back["restored_from_run_cache"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--tlc-source", type=Path, default=ROOT.parent / "shared" / "nyc-taxi")
    args = parser.parse_args()
    results: dict[str, list[dict[str, Any]]] = {"files": [], "folder": []}
    for pair in range(args.pairs):
        for variant, rows in results.items():
            with tempfile.TemporaryDirectory(prefix=f"runtime-{variant}-") as workdir:
                row = measure(Path(workdir), args.tlc_source.resolve(), variant == "folder")
            print(f"pair {pair + 1} {variant}: {row}", flush=True)
            rows.append(row)
    for variant, rows in results.items():
        medians = {k: statistics.median(r[k] for r in rows) for k in MEASURES}
        print(f"medians {variant}: {medians}")


if __name__ == "__main__":
    main()
