"""What the machinery costs around the model work: stage start-up, dvc, Prefect, MLflow.

Everything runs as real processes: `python -c 'import stages.x'`, `dvc repro` in a temporary
copy of the project (git + DVC initialised, reading the real months from the TLC mirror), and
the MLflow store those stage runs wrote, from which each stage's `mlflow_seconds` is read.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping
from itertools import cycle, islice
from pathlib import Path
from typing import Any

import yaml

from flows.local_server import IDLE_ENV
from workspaces.scratch import INIT_COMMANDS, scratch_project

ROOT = Path(__file__).resolve().parents[1]
IMPORT_REPEATS = 3
NOOP_REPEATS = 3
TOP_OFFENDERS = 4
SERVER_START_TIMEOUT = 120


def timed(
    cmd: list[str], cwd: Path, env: dict | None = None, timeout: float = 1800
) -> tuple[float, subprocess.CompletedProcess]:
    started = time.perf_counter()
    proc = subprocess.run(
        cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr[-2000:]}")
    return seconds, proc


def stage_modules() -> list[str]:
    return sorted(
        f"stages.{p.stem}" for p in (ROOT / "stages").glob("*.py") if not p.stem.startswith("_")
    )


def importtime_offenders(stderr: str, top: int = TOP_OFFENDERS) -> list[dict[str, Any]]:
    """Packages by import time spent in their own modules, from `python -X importtime`.

    Self times are summed per top-level package, so nothing is counted twice; the project's
    own `stages` package is left out.
    """
    totals: dict[str, int] = {}
    for line in stderr.splitlines():
        fields = line.removeprefix("import time:").split("|")
        if len(fields) != 3 or not fields[0].strip().isdigit():
            continue
        package = fields[2].strip().split(".")[0]
        if package != "stages":
            totals[package] = totals.get(package, 0) + int(fields[0])
    ranked = sorted(totals.items(), key=lambda kv: -kv[1])[:top]
    return [{"package": name, "seconds": round(us / 1e6, 3)} for name, us in ranked]


def import_costs() -> dict[str, Any]:
    """Process start-up per stage module: wall time of `python -c 'import stages.x'`."""

    def best(code: str) -> float:
        return min(timed([sys.executable, "-c", code], ROOT)[0] for _ in range(IMPORT_REPEATS))

    bare = best("pass")
    modules = {}
    for module in stage_modules():
        _, proc = timed([sys.executable, "-X", "importtime", "-c", f"import {module}"], ROOT)
        modules[module] = {
            "seconds": round(best(f"import {module}"), 3),
            "top_imports": importtime_offenders(proc.stderr),
        }
    return {"bare_python_seconds": round(bare, 3), "modules": modules}


def project_env(workdir: Path, tlc_source: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "TLC_SOURCE": str(tlc_source),
            "MLFLOW_TRACKING_URI": f"sqlite:///{workdir / 'mlflow.db'}",
            "PREFECT_HOME": str(workdir / "prefect-home"),
            "GIT_AUTHOR_NAME": "bench",
            "GIT_AUTHOR_EMAIL": "bench@example.invalid",
            "GIT_COMMITTER_NAME": "bench",
            "GIT_COMMITTER_EMAIL": "bench@example.invalid",
        }
    )
    env.pop("VIRTUAL_ENV_PROMPT", None)
    return env


def mlflow_seconds(tracking_uri: str) -> dict[str, Any]:
    """Each stage run's own `mlflow_seconds` metric, as the stages recorded it."""
    code = (
        "import json, mlflow\n"
        f"mlflow.set_tracking_uri({tracking_uri!r})\n"
        "runs = mlflow.search_runs(search_all_experiments=True, output_format='list')\n"
        "print(json.dumps([[r.info.run_name, r.data.metrics.get('mlflow_seconds')] for r in runs]))"
    )
    _, proc = timed([sys.executable, "-c", code], ROOT)
    import json

    runs = json.loads(proc.stdout.strip().splitlines()[-1])
    per_stage: dict[str, list[float]] = {}
    for name, seconds in runs:
        if seconds is not None:
            per_stage.setdefault(name, []).append(seconds)
    return {
        "stage_runs": sum(len(v) for v in per_stage.values()),
        "total_seconds": round(sum(sum(v) for v in per_stage.values()), 3),
        "per_stage_seconds": {
            k: round(statistics.mean(v), 3) for k, v in sorted(per_stage.items())
        },
    }


def dvc_overhead(workdir: Path, tlc_source: Path) -> dict[str, Any]:
    """`dvc repro` from nothing, then with nothing to do, in a temporary copy of the project."""
    env = project_env(workdir, tlc_source)
    repo = scratch_project(workdir / "project", env)
    full, _ = timed(["dvc", "repro"], repo, env)
    noop = []
    for _ in range(NOOP_REPEATS):
        seconds, proc = timed(["dvc", "repro"], repo, env)
        noop.append(seconds)
    result: dict[str, Any] = {
        "full_seconds": round(full, 3),
        "noop_seconds": [round(s, 3) for s in noop],
        "noop_best_seconds": round(min(noop), 3),
        "noop_output": proc.stdout.strip().splitlines()[-1:],
    }
    result["mlflow"] = mlflow_seconds(env["MLFLOW_TRACKING_URI"])
    floor = dvc_floor_project(workdir, env)
    returns = back_to_earlier_params({"pipeline": repo, "floor": floor}, env)
    result["run_cache"] = returns["pipeline"] | {"dvc_floor": returns["floor"]}
    return result


# DVC's own cost for target 2: the same protocol in a project of two stages that do nothing
# (train writes a param to a file, evaluate reads it). What remains of the pipeline's figure
# over this one is what its ten stages, dvc.yaml and dvc.lock add to DVC's experiment run.
FLOOR_FILES = {
    "params.yaml": "model:\n  alpha: 1.0\n",
    "train.py": "import yaml\n"
    "alpha = yaml.safe_load(open('params.yaml'))['model']['alpha']\n"
    "open('model.txt', 'w').write(str(alpha))\n",
    "evaluate.py": "import json\n"
    "json.dump({'alpha': float(open('model.txt').read())}, open('metrics.json', 'w'))\n",
    "dvc.yaml": "stages:\n"
    "  train:\n    cmd: python train.py\n    deps: [train.py]\n    params: [model]\n"
    "    outs: [model.txt]\n"
    "  evaluate:\n    cmd: python evaluate.py\n    deps: [evaluate.py, model.txt]\n"
    "    metrics: [{metrics.json: {cache: false}}]\n",
}


def dvc_floor_project(workdir: Path, env: dict[str, str]) -> Path:
    """A built git + DVC project of two trivial stages (FLOOR_FILES), set up as a scratch
    project is (INIT_COMMANDS)."""
    repo = workdir / "dvc-floor"
    repo.mkdir(parents=True)
    for name, text in FLOOR_FILES.items():
        (repo / name).write_text(text)
    for cmd in (*INIT_COMMANDS, ["dvc", "repro", "-q"]):
        timed(cmd, repo, env)
    return repo


# Target 2's figure is the median of several returns: one `dvc exp run` that restores from the
# run-cache took 3.04 and 4.43 s in two benches of the same code at the same machine speed, and
# 2.75-4.86 s within one minute (FINDINGS). Each return is timed once, as a user runs it.
RUN_CACHE_RETURNS = 6


def back_to_earlier_params(
    repos: Mapping[str, Path], env: dict[str, str], returns: int = RUN_CACHE_RETURNS
) -> dict[str, dict[str, Any]]:
    """Issue 13, target 2, in each project of `repos` (the pipeline, DVC's floor project):
    `dvc exp run -S model.alpha=0.05` (trains), then `returns` runs alternating the built
    params (`model.alpha=1.0`) and 0.05, each an earlier param set that DVC's run-cache
    restores, then `dvc exp apply` of the first experiment (a checkout from the cache).

    The projects take turns run by run, so a slow minute of the machine falls on both."""
    for repo in repos.values():
        for cmd in (["git", "add", "-A"], ["git", "commit", "-qm", "built"]):
            subprocess.run(cmd, cwd=repo, env=env, capture_output=True, check=True)
    result: dict[str, dict[str, Any]] = {name: {"returns_seconds": []} for name in repos}
    restored: dict[str, set[str]] = {name: set() for name in repos}
    ran: dict[str, set[str]] = {name: set() for name in repos}
    for name, repo in repos.items():
        first = ["dvc", "exp", "run", "-S", "model.alpha=0.05", "-n", "alpha-005"]
        result[name]["new_params_seconds"] = round(timed(first, repo, env)[0], 3)
    for alpha in islice(cycle(("1.0", "0.05")), returns):
        for name, repo in repos.items():
            seconds, proc = timed(["dvc", "exp", "run", "-S", f"model.alpha={alpha}"], repo, env)
            log = proc.stdout + proc.stderr
            result[name]["returns_seconds"].append(round(seconds, 3))
            restored[name].update(re.findall(r"Stage '([^']+)' is cached", log))
            ran[name].update(re.findall(r"Running stage '([^']+)'", log))
    for name, repo in repos.items():
        apply, _ = timed(["dvc", "exp", "apply", "alpha-005"], repo, env)
        result[name].update(
            earlier_params_seconds=round(statistics.median(result[name]["returns_seconds"]), 3),
            restored_from_run_cache=sorted(restored[name]),
            ran=sorted(ran[name]),
            exp_apply_seconds=round(apply, 3),
        )
    return result


FLOW_COMMAND = [sys.executable, "-m", "flows.pipeline"]


def server_record(workdir: Path, tlc_source: Path) -> dict[str, Any]:
    """The stages' `mlflow_seconds` against the team MLflow server (PostgreSQL + S3 through
    `python -m services up`, on free ports in `workdir`), next to dvc_overhead's SQLite."""
    from services.config import PORTS, Config, free_ports
    from services.credentials import load_or_create
    from services.envfile import client_environment

    env = project_env(workdir, tlc_source)
    clients = ("MLFLOW_", "PREFECT_", "AWS_", "TAXI_", "SERVICES_")
    stack_env = {k: v for k, v in env.items() if not k.startswith(clients)}
    ports = free_ports(len(PORTS))
    stack_env |= {name: str(port) for (name, _), port in zip(PORTS.values(), ports, strict=True)}
    stack_env |= {"SERVICES_DIR": str(workdir / "stack"), "SERVICES_WORKERS": "0"}
    # PostgreSQL runs as its own user: the folders above its data must be searchable by others
    # (a mkdtemp folder is 0700, and `services up` refused it).
    workdir.mkdir(parents=True, exist_ok=True)
    for folder in (workdir, *workdir.parents):
        mode = folder.stat()
        if mode.st_mode & 0o001 == 0 and mode.st_uid == os.getuid():
            folder.chmod(mode.st_mode | 0o001)
    try:  # `down` also after an `up` that failed half-way: it stops what did start
        up_seconds, _ = timed([sys.executable, "-m", "services", "up"], ROOT, stack_env)
        cfg = Config.from_env(stack_env)
        server_env = {**env, **client_environment(cfg, load_or_create(cfg.credentials_file))}
        server_env.pop("PREFECT_API_URL")
        repo = scratch_project(workdir / "project-server", server_env)
        full, _ = timed(["dvc", "repro"], repo, server_env)
        record = mlflow_seconds(server_env["MLFLOW_TRACKING_URI"])
    finally:
        subprocess.run(
            [sys.executable, "-m", "services", "down"],
            cwd=ROOT,
            env=stack_env,
            capture_output=True,
            check=False,
        )
    return {"services_up_seconds": round(up_seconds, 3), "full_seconds": round(full, 3)} | {
        "mlflow": record
    }


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def prefect_server(env: dict[str, str], timeout: float = SERVER_START_TIMEOUT) -> Iterator[str]:
    """A real `prefect server start` on a free local port; its API URL; stopped afterwards."""
    port = _free_port()
    server = subprocess.Popen(
        ["prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env={**env, "PREFECT_UI_ENABLED": "false", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError(f"prefect server did not answer on {url}") from None
                time.sleep(0.5)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def prefect_overhead(workdir: Path, tlc_source: Path, bare_noop_seconds: float) -> dict[str, Any]:
    """The Prefect flow with nothing to do, against bare no-op `dvc repro` in the same project;
    then the README's command line (issue 15) with no server, and with its kept server."""
    repo = workdir / "project"
    command = FLOW_COMMAND
    env = project_env(workdir, tlc_source)
    env.pop("PREFECT_API_URL", None)
    result: dict[str, Any] = {"command": " ".join(command[1:])}
    with prefect_server(env) as url:
        served = {**env, "PREFECT_API_URL": url}
        runs = [timed(command, repo, served)[0] for _ in range(NOOP_REPEATS)]
    result["server_seconds"] = [round(s, 3) for s in runs]
    result["added_seconds"] = round(min(runs) - bare_noop_seconds, 3)
    # No PREFECT_API_URL, nothing stale, no kept server: the command line answers from DVC's
    # plan and starts no server. Paired with bare `dvc repro` run just before each.
    alone = {**env, "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120"}
    result["noop_pairs_seconds"], result["noop_added_seconds"] = noop_pairs(repo, env, alone)
    result["make_before_python_seconds"] = make_before_python_seconds()
    kept = {**alone, IDLE_ENV: "30"}
    try:
        result["one_stage_change"] = one_stage_change(repo, env, kept)
        # With the kept server running: the state after any run that did work.
        pairs, added = noop_pairs(repo, env, kept)
        result["noop_kept_server"] = {"pairs_seconds": pairs, "added_seconds": added}
    finally:
        subprocess.run(
            [sys.executable, "-m", "flows.local_server", "stop", "--project", str(repo)],
            cwd=ROOT, env=env, capture_output=True, check=False,
        )  # fmt: skip
    return result


def noop_pairs(
    repo: Path, bare_env: dict[str, str], flow_env: dict[str, str]
) -> tuple[list[list[float]], float]:
    """(bare no-op `dvc repro`, the command line) pairs; the median difference."""
    pairs = []
    for _ in range(NOOP_REPEATS):
        bare = timed(["dvc", "repro"], repo, bare_env)[0]
        pairs.append((bare, timed(FLOW_COMMAND, repo, flow_env)[0]))
    rounded = [[round(b, 3), round(f, 3)] for b, f in pairs]
    return rounded, round(statistics.median(f - b for b, f in pairs), 3)


def make_before_python_seconds() -> float | None:
    """`make env bytecode` with the environment in place and the modules compiled: what `make
    pipeline` adds before Python."""
    if shutil.which("make") is None:
        return None
    command = ["make", "-s", "env", "bytecode"]
    return round(min(timed(command, ROOT)[0] for _ in range(NOOP_REPEATS)), 3)


STAGE_LINE = re.compile(r"✓ (\S+)\s+ran\s+([\d.]+) s")


def one_stage_change(repo: Path, bare_env: dict[str, str], flow_env: dict[str, str]) -> dict:
    """`model.alpha` changed (train and evaluate stale): the stages' own `dvc repro
    --single-item` times (the target's baseline), bare `dvc repro`, and the command line with
    the project's kept Prefect server, each on a fresh alpha value (the same work). The first
    command-line run starts the server and is reported on its own."""
    params_file = repo / "params.yaml"
    original = params_file.read_text()
    alphas = iter(0.3 + i / 100 for i in range(40))

    def with_new_alpha() -> None:
        params = yaml.safe_load(original)
        params["model"]["alpha"] = next(alphas)
        params_file.write_text(yaml.safe_dump(params, sort_keys=False))

    def flow() -> tuple[float, float]:
        """The command line's wall time, and the seconds its stages report."""
        seconds, proc = timed(FLOW_COMMAND, repo, flow_env)
        return seconds, sum(float(sec) for _, sec in STAGE_LINE.findall(proc.stderr))

    rows = []
    try:
        with_new_alpha()
        first, first_stages = flow()  # starts the kept server
        for _ in range(NOOP_REPEATS):
            with_new_alpha()
            single = sum(
                timed(["dvc", "repro", "--single-item", stage], repo, bare_env)[0]
                for stage in ("train", "evaluate")
            )
            with_new_alpha()
            bare = timed(["dvc", "repro"], repo, bare_env)[0]
            with_new_alpha()
            rows.append((single, bare, *flow()))
    finally:
        params_file.write_text(original)
        timed(["dvc", "repro"], repo, bare_env)
    return {
        "first_run_seconds": round(first, 3),
        "first_run_stage_seconds": round(first_stages, 3),
        "columns": ["single_items", "bare_dvc_repro", "make_pipeline", "its_stages"],
        "rows_seconds": [[round(x, 3) for x in row] for row in rows],
        "added_seconds": round(statistics.median(f - s for s, _, f, _ in rows), 3),
        "added_over_bare_seconds": round(statistics.median(f - b for _, b, f, _ in rows), 3),
        "outside_stages_seconds": round(statistics.median(f - st for _, _, f, st in rows), 3),
    }
