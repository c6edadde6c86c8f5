"""Months over time, end to end through the command lines: a mirror that gains a month between
two retrainings, a republished month, a backtest with a month missing at the source.

Real dvc, Prefect (a temporary server per command), MLflow on SQLite, samples of real months.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from stage_runtime.record import connect, experiment_id, read_lock
from stages.common import file_md5, load_yaml
from stages.tlc import SOURCE_ENV, trip_file_name
from tests.conftest import run, sample_month

MODEL = "nyc-taxi-trip-duration-minutes"
pytestmark = pytest.mark.slow


def _mirror(shared: Path, dest: Path, months: list[str]) -> Path:
    dest.mkdir(exist_ok=True)
    for month in months:
        name = trip_file_name("green", month)
        sample_month(shared / name, dest / name)
    shutil.copyfile(shared / "taxi_zone_lookup.csv", dest / "taxi_zone_lookup.csv")
    return dest


def _command(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def _branch_months(repo: Path, branch: str = "retrain") -> dict[str, str]:
    text = run(["git", "show", f"{branch}:params.yaml"], repo).stdout
    return {str(k): v for k, v in load_yaml(text)["data"]["months"].items()}


def _raw_files_of(repo: Path, version: str, env: dict) -> dict[str, str]:
    traced = run(_command("lineage", f"models:/{MODEL}/{version}", "--json"), repo, env).stdout
    found: dict[str, str] = {}

    def walk(node: dict) -> None:
        producer = node.get("producer") or {}
        if producer.get("stage", "").startswith("ingest@"):
            found[node["path"]] = node["md5"]
        for child in producer.get("inputs", []):
            walk(child)

    walk(json.loads(traced)["lineage"]["model"])
    return found


def test_retrain_follows_the_source_month_by_month(
    project: Path, shared_tlc: Path, tmp_path: Path
) -> None:
    mirror = _mirror(shared_tlc, tmp_path / "mirror", ["2024-01", "2024-02", "2024-03"])
    env = os.environ | {SOURCE_ENV: str(mirror)}
    main_before = run(["git", "rev-parse", "HEAD"], project).stdout

    first = run(_command("flows.retrain"), project, env)
    assert "new month 2024-03" in first.stderr, first.stderr
    assert _branch_months(project) == {
        "2024-01": "test",
        "2024-02": "train",
        "2024-03": "validation",
    }
    # The user's branch and workspace are untouched: the run happened in a worktree.
    assert run(["git", "rev-parse", "HEAD"], project).stdout == main_before
    assert run(["git", "status", "--porcelain"], project).stdout == ""

    # The source gains a month: the window moves onto it and a new version is trained on it.
    sample_month(
        shared_tlc / trip_file_name("green", "2024-04"), mirror / "green_tripdata_2024-04.parquet"
    )
    second = run(_command("flows.retrain"), project, env)
    assert "new month 2024-04" in second.stderr, second.stderr
    assert _branch_months(project) == {
        "2024-02": "test",
        "2024-03": "train",
        "2024-04": "validation",
    }
    lock = read_lock_at(project, "retrain")
    assert sorted(n for n in lock if n.startswith("ingest@")) == [
        "ingest@2024-02",
        "ingest@2024-03",
        "ingest@2024-04",
    ]  # the months that left the window left dvc.lock too
    client = connect(f"sqlite:///{project / 'mlflow.db'}", create=False)
    versions = {v.version: v for v in client.search_model_versions(f"name = '{MODEL}'")}
    newest = str(max(int(v) for v in versions))
    raw = _raw_files_of(project, newest, env)
    april = "data/raw/green_tripdata_2024-04.parquet"
    assert raw[april] == file_md5(mirror / "green_tripdata_2024-04.parquet")

    # Nothing new: one line, no commit, no new version.
    tip = run(["git", "rev-parse", "retrain"], project).stdout
    third = run(_command("flows.retrain"), project, env)
    assert third.stdout.strip().splitlines() == [
        f"nothing new: the newest month at {mirror} is 2024-04, already used (validation) by "
        "branch retrain"
    ]
    assert run(["git", "rev-parse", "retrain"], project).stdout == tip
    assert len(client.search_model_versions(f"name = '{MODEL}'")) == len(versions)

    # The TLC republishes March: reported as upstream-changed, then re-ingested by retrain.
    march = mirror / "green_tripdata_2024-03.parquet"
    old_md5 = file_md5(march)
    sample_month(shared_tlc / march.name, march, stride=14)
    checkout = tmp_path / "retrain-branch"
    run(["git", "worktree", "add", "-q", str(checkout), "retrain"], project)
    status = run(_command("timeline", "upstream"), checkout, env, check=False)
    assert status.returncode == 1, status.stdout + status.stderr
    changed = f"upstream changed (source md5 {file_md5(march)}, ingested {old_md5})"
    assert f"data/raw/green_tripdata_2024-03.parquet: {changed}" in status.stdout
    run(["git", "worktree", "remove", "--force", str(checkout)], project)
    fourth = run(_command("flows.retrain"), project, env)
    assert "republished" in fourth.stderr and "2024-03" in fourth.stderr, fourth.stderr
    retrained = str(max(int(v.version) for v in client.search_model_versions(f"name = '{MODEL}'")))
    raw = _raw_files_of(project, retrained, env)
    assert raw["data/raw/green_tripdata_2024-03.parquet"] == file_md5(march)
    # The model of the old bytes still traces to them, and they are still in the cache.
    assert _raw_files_of(project, newest, env)["data/raw/green_tripdata_2024-03.parquet"] == old_md5
    cache = project / ".dvc" / "cache" / "files" / "md5" / old_md5[:2] / old_md5[2:]
    assert cache.is_file() and file_md5(cache) == old_md5


def read_lock_at(repo: Path, rev: str) -> dict:
    from stage_runtime.record import parse_lock

    return parse_lock(run(["git", "show", f"{rev}:dvc.lock"], repo).stdout)


def test_retrain_refuses_a_window_whose_month_the_source_lacks(
    project: Path, shared_tlc: Path, tmp_path: Path
) -> None:
    mirror = _mirror(shared_tlc, tmp_path / "mirror", ["2024-02", "2024-04"])
    env = os.environ | {SOURCE_ENV: str(mirror)}
    refused = run(_command("flows.retrain"), project, env, check=False)
    assert refused.returncode == 65
    assert "needs 2024-03, which" in refused.stderr and str(mirror) in refused.stderr
    assert (
        subprocess.run(
            ["git", "rev-parse", "--verify", "--quiet", "refs/heads/retrain"], cwd=project
        ).returncode
        != 0
    )


def test_backtest_completes_the_windows_whose_months_exist(
    project: Path, shared_tlc: Path, tmp_path: Path
) -> None:
    # 2023-12 is missing: the window that tests on it fails, the other completes.
    mirror = _mirror(shared_tlc, tmp_path / "mirror", ["2024-01", "2024-02", "2024-03"])
    env = os.environ | {SOURCE_ENV: str(mirror)}
    results = tmp_path / "results.json"
    args = ["--from", "2023-12", "--to", "2024-03", "--model-type", "ridge", "--json", str(results)]
    done = run(_command("flows.backtest", *args), project, env, check=False)
    assert done.returncode == 1, done.stdout + done.stderr
    result = json.loads(results.read_text())
    by_month = {r["validation_month"]: r for r in result["rows"]}
    assert by_month["2024-02"]["status"] == "failed"
    assert "green_tripdata_2023-12.parquet" in by_month["2024-02"]["error"]
    assert by_month["2024-03"]["status"] == "completed"
    assert "| 2024-03 |" in done.stderr and "1 of 2 runs completed" in done.stderr

    # MLflow: the parent run with one child per window and the plot.
    client = connect(f"sqlite:///{project / 'mlflow.db'}", create=False)
    parent = client.get_run(result["mlflow_run_id"])
    children = client.search_runs(
        [experiment_id(client)], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    assert sorted(c.data.params["validation_month"] for c in children) == ["2024-02", "2024-03"]
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"rmse_by_month.png", "backtest.json"} <= artifacts

    # The completed window's model is a version of the backtest registry, traced to its months.
    version = by_month["2024-03"]["model_version"]
    assert client.get_model_version(f"{MODEL}-backtest", version)
    traced = run(
        _command("lineage", f"models:/{MODEL}-backtest/{version}", "--json"), project, env
    ).stdout
    for month in ("2024-01", "2024-02", "2024-03"):
        assert f"green_tripdata_{month}.parquet" in traced
    # Nothing touched the serving registry or the user's workspace.
    assert client.search_model_versions(f"name = '{MODEL}'") == []
    assert run(["git", "status", "--porcelain"], project).stdout == ""
    assert not read_lock(project / "dvc.lock")
