"""Fixtures built from the real TLC files in ../shared/nyc-taxi (never from invented columns)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from stages.common import parse_section
from workspaces.scratch import scratch_project

ROOT = Path(__file__).resolve().parents[1]
SHARED_TLC = ROOT.parent / "shared" / "nyc-taxi"
MONTHS = ("2025-01", "2025-02", "2025-03")
SAMPLE_STRIDE = 15  # every 15th trip: about 3,200 real trips a month
# The project's own params.yaml: what the unit tests hold the stage functions to.
PROJECT_PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())


def project_section(name: str):
    """A validated section of the project's params.yaml."""
    return parse_section(name, PROJECT_PARAMS[name])


def clean_month(mirror: Path, month: str):
    """One month of `mirror` read and cleaned with the project's prepare params."""
    from stages.prepare import clean_trips, read_trips

    trips = read_trips(mirror / f"green_tripdata_{month}.parquet", "green")
    return clean_trips(trips, month, project_section("prepare"))[0].to_pandas()


def encoded_months(mirror: Path, *months: str) -> tuple[dict, list]:
    """The features stage on real months of `mirror`: encoders fitted on the first month
    (the project's features params), and every month encoded with them."""
    from stages.encoding import encode
    from stages.features import fit_encoders, read_zones

    clean = [clean_month(mirror, month) for month in months]
    zones = read_zones(mirror / "taxi_zone_lookup.csv")
    encoders = fit_encoders(clean[0], zones, project_section("features"), max_distance_miles=100)
    return encoders, [encode(month, encoders) for month in clean]


def assert_tables_equal(found: Mapping[str, Any], expected: Mapping[str, Any]) -> None:
    """Two tables (stages.encoding.Table) with the same columns in order, of the same dtypes
    and values."""
    assert list(found) == list(expected)
    for name in expected:
        found_column, expected_column = np.asarray(found[name]), np.asarray(expected[name])
        assert found_column.dtype == expected_column.dtype, name
        np.testing.assert_array_equal(found_column, expected_column, err_msg=name)


def kept_rows(mirror: Path, month: str) -> np.ndarray:
    """Which raw trips of a month of `mirror` prepare keeps (a boolean mask in file order):
    the raw rows whose cleaned twins are clean_month's, in the same order."""
    from stages.prepare import drop_rules, read_trips, trip_arrays

    trips = trip_arrays(read_trips(mirror / f"green_tripdata_{month}.parquet", "green"))
    rejected = np.zeros(len(trips["duration_minutes"]), dtype=bool)
    for mask in drop_rules(trips, month, project_section("prepare")).values():
        rejected |= mask
    return ~rejected


@pytest.fixture(scope="session")
def shared_tlc() -> Path:
    if not (SHARED_TLC / "green_tripdata_2025-01.parquet").is_file():
        pytest.fail(f"the offline TLC mirror is missing: {SHARED_TLC}")
    return SHARED_TLC


def sample_month(source: Path, dest: Path, stride: int = SAMPLE_STRIDE) -> int:
    """Every `stride`-th trip of a real month, with the file's own schema."""
    table = pq.read_table(source)
    sample = table.take(list(range(0, table.num_rows, stride)))
    pq.write_table(sample, dest)
    return sample.num_rows


@pytest.fixture(scope="session")
def small_tlc(shared_tlc: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A local TLC mirror (usable as TLC_SOURCE) holding samples of the three real months."""
    mirror = tmp_path_factory.mktemp("tlc-mirror")
    for month in MONTHS:
        name = f"green_tripdata_{month}.parquet"
        sample_month(shared_tlc / name, mirror / name)
    shutil.copyfile(shared_tlc / "taxi_zone_lookup.csv", mirror / "taxi_zone_lookup.csv")
    return mirror


def run(
    cmd: list[str], cwd: Path, env: dict | None = None, check: bool = True, timeout: float = 600
) -> subprocess.CompletedProcess:
    """Run a command; on an unexpected failure show its output in the test report."""
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's zombie waits for a reaper that may never come)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def dvc_project(path: Path, commands: dict[str, str]) -> Path:
    """A DVC project (no git) in `path`, a stage per name running its shell command: what DVC
    does around a stage's process, without the pipeline. No deps: DVC runs them every time."""
    path.mkdir(parents=True, exist_ok=True)
    run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], path)
    run([sys.executable, "-m", "dvc", "config", "core.analytics", "false"], path)
    stages = {name: {"cmd": cmd} for name, cmd in commands.items()}
    (path / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}))
    return path


def project_env(small_tlc: Path, repo: Path) -> dict[str, str]:
    """What commands in a test project see: the sampled mirror, a SQLite store inside the
    repository, a committer."""
    return {
        "TLC_SOURCE": str(small_tlc),
        "MLFLOW_TRACKING_URI": f"sqlite:///{repo / 'mlflow.db'}",
        "GIT_AUTHOR_NAME": "test",
        "GIT_AUTHOR_EMAIL": "test@example.invalid",
        "GIT_COMMITTER_NAME": "test",
        "GIT_COMMITTER_EMAIL": "test@example.invalid",
    }


@pytest.fixture(autouse=True)
def temporary_prefect_servers(monkeypatch: pytest.MonkeyPatch) -> None:
    """A command-line run under test gets a temporary Prefect server, never one kept for the
    project that would outlive the test (the kept server's own tests set an idle time)."""
    from flows.local_server import IDLE_ENV

    monkeypatch.setenv(IDLE_ENV, "0")


def forget_exported_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """mlflow.set_registry_uri (called by stage_runtime.record.connect in the test process) exports
    MLFLOW_REGISTRY_URI; left from an earlier test it would send a consumer started by this
    one (mlflow.pyfunc.load_model in a subprocess) to that test's store."""
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)


@pytest.fixture
def project(tmp_path: Path, small_tlc: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh git + DVC repository holding this project's pipeline, reading `small_tlc`.

    Commands run in it use this environment's python and dvc; TLC_SOURCE points at the
    sampled mirror and MLflow at a SQLite store inside the repository.
    """
    for name, value in project_env(small_tlc, tmp_path / "repo").items():
        monkeypatch.setenv(name, value)
    forget_exported_registry(monkeypatch)
    return scratch_project(tmp_path / "repo", os.environ)


@pytest.fixture(scope="session")
def built_template(small_tlc: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One `dvc repro` of a scratch project per session, its outputs committed."""
    repo = tmp_path_factory.mktemp("built") / "repo"
    env = os.environ | project_env(small_tlc, repo)
    scratch_project(repo, env)
    run(["dvc", "repro"], repo, env)
    run(["git", "add", "-A"], repo, env)
    run(["git", "commit", "-qm", "pipeline outputs"], repo, env)
    return repo


def relocate_store(db: Path, old_root: Path, new_root: Path) -> None:
    """Point a copied project's MLflow store at the copy: every text value naming `old_root`
    (artifact locations of the experiment, runs and models) names `new_root` instead."""
    import sqlite3

    old, new = str(old_root), str(new_root)
    with contextlib.closing(sqlite3.connect(db)) as store, store:
        tables = [r[0] for r in store.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        for table in tables:
            for column in store.execute(f'PRAGMA table_info("{table}")').fetchall():
                name, kind = column[1], (column[2] or "").upper()
                if "CHAR" in kind or "TEXT" in kind:
                    store.execute(
                        f'UPDATE "{table}" SET "{name}" = replace("{name}", ?, ?) '
                        f'WHERE instr("{name}", ?) > 0',
                        (old, new, old),
                    )


@pytest.fixture
def built(
    built_template: Path, small_tlc: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """A project after `dvc repro` and a commit of its outputs (`project`, built): a copy of
    the session's one build, its MLflow store pointed at the copy."""
    repo = tmp_path / "repo"
    shutil.copytree(built_template, repo, symlinks=True)
    relocate_store(repo / "mlflow.db", built_template, repo)
    for name, value in project_env(small_tlc, repo).items():
        monkeypatch.setenv(name, value)
    forget_exported_registry(monkeypatch)
    return repo


@pytest.fixture(scope="module")
def stack():
    """The team services, real processes on free ports, for one test module (tests/stack.py)."""
    from tests.stack import running_stack

    with running_stack() as started:
        yield started
