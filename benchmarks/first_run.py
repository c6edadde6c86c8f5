"""The README's first command on a fresh machine: `make pipeline` with uv missing, empty caches.

A fresh clone of HEAD, run as a new user would: HOME, uv's and pip's caches in empty
directories, uv not on PATH. Timed in the parts a person waits for: installing uv (the
Makefile's `python3 -m pip install --user uv`), `make env` (uv downloads and installs the
locked environment), then `make pipeline` (the stages' own seconds, as its summary prints
them, and the rest: starting the project's Prefect server on a new database while Prefect is
imported, the flow engine, the report). Package downloads come from the registries, so the
figures depend on the network as much as on this machine.

    python -m benchmarks.first_run [--source DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.overhead import timed

ROOT = Path(__file__).resolve().parents[1]
STAGE_LINE = re.compile(r"✓ (\S+)\s+ran\s+([\d.]+) s")
TIMEOUT_SECONDS = 1800


def _timed(cmd: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, str]:
    """Wall time and all output of `cmd`; RuntimeError naming it when it fails."""
    seconds, proc = timed(cmd, cwd, env, timeout=TIMEOUT_SECONDS)
    return seconds, proc.stdout + proc.stderr


def _mib(path: Path) -> float:
    total = sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())
    return round(total / 2**20, 1)


def new_user_env(workdir: Path, tlc_source: Path) -> dict[str, str]:
    """This environment as a new user's: their own empty HOME and caches, no uv on PATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UV_", "VIRTUAL_ENV"))}
    if "PYENV_ROOT" not in env and (Path.home() / ".pyenv").is_dir():
        env["PYENV_ROOT"] = str(Path.home() / ".pyenv")  # pyenv's shims look under HOME
    # XDG_CACHE_HOME too: the pristine MLflow store (stage_runtime.sqlite_store) lives in the user's
    # cache, and a new user has none yet.
    for name in (
        "MLFLOW_TRACKING_URI",
        "MLFLOW_REGISTRY_URI",
        "PREFECT_API_URL",
        "PREFECT_HOME",
        "XDG_CACHE_HOME",
    ):
        env.pop(name, None)
    # Neither uv nor a virtual environment (this one's `python3` refuses `pip install --user`).
    path = [
        p
        for p in env.get("PATH", "").split(os.pathsep)
        if not (Path(p) / "uv").exists() and not (Path(p).parent / "pyvenv.cfg").exists()
    ]
    home = workdir / "home"
    home.mkdir(parents=True, exist_ok=True)
    env |= {
        "HOME": str(home),
        "PATH": os.pathsep.join(path),
        "UV_CACHE_DIR": str(workdir / "uv-cache"),
        "PIP_CACHE_DIR": str(workdir / "pip-cache"),
        "TLC_SOURCE": str(tlc_source),
    }
    return env


def first_run(workdir: Path, tlc_source: Path) -> dict[str, Any]:
    """Clone, install uv, `make env`, `make pipeline`: seconds of each, and what was installed."""
    clone = workdir / "clone"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True)
    env = new_user_env(workdir, tlc_source)
    uv_install, _ = _timed(
        ["python3", "-m", "pip", "install", "--quiet", "--user", "uv"], clone, env
    )
    env_seconds, _ = _timed(["make", "-s", "env"], clone, env)
    try:
        pipeline, output = _timed(["make", "-s", "pipeline"], clone, env)
    finally:
        stop = ["make", "-s", "prefect-stop"]
        subprocess.run(stop, cwd=clone, env=env, capture_output=True, check=False)
    stages = {name: float(sec) for name, sec in STAGE_LINE.findall(output)}
    return {
        "uv_install_seconds": round(uv_install, 2),
        "make_env_seconds": round(env_seconds, 2),
        "make_pipeline_seconds": round(pipeline, 2),
        "stages_ran": len(stages),
        "stage_seconds": round(sum(stages.values()), 2),
        "outside_stages_seconds": round(pipeline - sum(stages.values()), 2),
        "total_seconds": round(uv_install + env_seconds + pipeline, 2),
        "venv_mib": _mib(clone / ".venv"),
        "uv_cache_mib": _mib(workdir / "uv-cache"),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.first_run", description=__doc__)
    parser.add_argument("--source", type=Path, default=ROOT.parent / "shared" / "nyc-taxi")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="first-run-"))
    try:
        result = first_run(workdir, args.source.resolve())
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
