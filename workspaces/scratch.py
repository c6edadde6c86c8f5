"""A scratch project: a new git + DVC repository holding this project's pipeline definition
and code, and none of its data or records. What the end-to-end tests and the benchmarks run in.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The pipeline's definition and all the code its stages and flows import.
PROJECT_FILES = (
    "dvc.yaml",
    "params.yaml",
    "stages",
    "flows",
    "lineage",
    "stage_runtime",
    "registry",
    "tuning",
    "timeline",
    "workspaces",
    "services",
    "pyproject.toml",
    ".gitignore",
    ".dvcignore",
)


# A new git + DVC repository as the tests and benchmarks want it: DVC stages what it writes
# (autostage), and sends no analytics.
INIT_COMMANDS = (
    ["git", "init", "-q", "-b", "main"],
    ["dvc", "init", "-q"],
    ["dvc", "config", "core.autostage", "true"],
    ["dvc", "config", "core.analytics", "false"],
)


def scratch_project(dest: Path, env: Mapping[str, str]) -> Path:
    """Copy PROJECT_FILES into `dest`, `git init` + `dvc init` there and commit; return it.

    `env` is the environment of the git and dvc commands (the committer's name, ...).
    """
    dest.mkdir(parents=True)
    for name in PROJECT_FILES:
        src = ROOT / name
        if src.is_dir():
            # With the compiled modules (`make bytecode`): the copy's processes use them as the
            # project's do (copytree keeps each source's mtime, which Python checks a .pyc by).
            shutil.copytree(src, dest / name)
        elif src.exists():
            shutil.copyfile(src, dest / name)
    for cmd in (*INIT_COMMANDS, ["git", "add", "-A"], ["git", "commit", "-qm", "pipeline"]):
        proc = subprocess.run(
            cmd, cwd=dest, env=dict(env), capture_output=True, text=True, check=False
        )
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed in {dest}: {proc.stderr}")
    return dest
