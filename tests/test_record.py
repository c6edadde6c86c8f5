"""The record's scheme (stage_runtime/record.py): tag keys, lineage names, the dvc.lock reader."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import yaml

from stage_runtime import record
from stage_runtime.tracking import model_lineage, pipeline_run_id

LOCK = {
    "schema": "2.0",
    "stages": {
        "ingest@2025-01": {
            "cmd": "python -m stages.ingest trips",
            "deps": [{"path": "stages/ingest.py", "md5": "cc"}],
            "params": {"params.yaml": {"data.colour": "green"}},
            "outs": [{"path": "data/raw/a.parquet", "md5": "aa"}],
        },
        "features": {
            "deps": [{"path": "data/clean", "md5": "dd.dir"}],
            "params": {"params.yaml": {"features": {"min_pair_count": 5}}},
            "outs": [{"path": "data/features/train.parquet", "md5": "ff"}],
        },
    },
}


def test_tag_keys_round_trip() -> None:
    tags = record.file_tags(record.INPUT, {"data/raw/a.parquet": "aa"})
    tags |= record.file_tags(record.CODE, {"stages/ingest.py": "cc"})
    assert tags == {"in/data/raw/a.parquet": "aa", "code/stages/ingest.py": "cc"}
    assert record.tagged_files(tags, record.INPUT) == {"data/raw/a.parquet": "aa"}
    assert record.tagged_files(tags, record.CODE) == {"stages/ingest.py": "cc"}
    with pytest.raises(ValueError, match="unknown lineage tag kind"):
        record.tag_key("input", "x")


def test_producer_filter_names_path_md5_and_execution() -> None:
    query = record.producer_filter("data/x.parquet", "ab", "flow-1")
    assert "tags.`out/data/x.parquet` = 'ab'" in query
    assert "attributes.status = 'FINISHED'" in query and "pipeline_run_id = 'flow-1'" in query


def test_lock_reader(tmp_path: Path) -> None:
    path = tmp_path / "dvc.lock"
    path.write_text(yaml.safe_dump(LOCK))
    stages = record.read_lock(path)
    assert stages["ingest@2025-01"].deps == {"stages/ingest.py": "cc"}
    assert stages["features"].params == {"features.min_pair_count": 5}
    assert record.locked_outputs(stages)["data/features/train.parquet"] == "ff"
    assert record.raw_outputs(stages) == {"data/raw/a.parquet": "aa"}
    assert record.read_lock(tmp_path / "missing.lock") == {}


def test_model_lineage_lists_raw_files_and_lock_md5(tmp_path: Path) -> None:
    path = tmp_path / "dvc.lock"
    path.write_text(yaml.safe_dump(LOCK))
    tags = model_lineage(path)
    assert tags["raw/data/raw/a.parquet"] == "aa"
    assert "raw/data/features/train.parquet" not in tags
    assert tags["dvc_lock_md5"] == hashlib.md5(path.read_bytes()).hexdigest()


def test_flatten_nests_keys_with_dots() -> None:
    assert record.flatten("", {"model": {"alpha": 1.0, "xgboost": {"n_rounds": 3}}}) == {
        "model.alpha": 1.0,
        "model.xgboost.n_rounds": 3,
    }


def test_project_root_of_a_dvc_temporary_experiment_workspace(tmp_path: Path) -> None:
    workspace = tmp_path / "repo" / ".dvc" / "tmp" / "exps" / "tmpabc"
    workspace.mkdir(parents=True)
    assert record.project_root(workspace) == tmp_path / "repo"


def test_tracking_uri_is_the_store_at_the_project_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    workspace = tmp_path / "repo" / ".dvc" / "tmp" / "exps" / "tmpabc"
    workspace.mkdir(parents=True)
    assert record.tracking_uri(workspace) == f"sqlite:///{tmp_path / 'repo' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    assert record.tracking_uri(workspace) == "http://mlflow.example:5000"


def test_pipeline_run_id_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIPELINE_RUN_ID", "flow-123")
    assert pipeline_run_id() == "flow-123"


def test_paths_inside_the_project_are_relative(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert record.lineage_path("data/clean/trips_2025-01.parquet") == (
        "data/clean/trips_2025-01.parquet"
    )
    assert record.lineage_path(tmp_path / "models" / "model.json") == "models/model.json"
    assert record.lineage_path("./data/../data/raw/x.csv") == "data/raw/x.csv"


def test_paths_outside_the_project_survive_mlflow_key_normalisation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = tmp_path / "project"
    project.mkdir()
    monkeypatch.chdir(project)
    name = record.lineage_path(tmp_path / "elsewhere" / "model.json")
    key = record.tag_key(record.OUTPUT, name)
    # MLflow refuses keys that change under normalisation (`out//tmp/...`, `..`).
    assert os.path.normpath(key) == key
    assert name.endswith("/elsewhere/model.json")
    assert record.lineage_uri(name) == (tmp_path / "elsewhere" / "model.json").as_uri()
    assert record.lineage_path("../elsewhere/model.json") == name


def test_folder_md5_is_dvcs_own():
    """The md5 dvc.lock records for a folder, from its files' md5s as the record tags them,
    equals the one DVC's own tree hashing gives (nested paths, any order)."""
    from dvc_data.hashfile.hash_info import HashInfo
    from dvc_data.hashfile.meta import Meta
    from dvc_data.hashfile.tree import Tree

    files = {"pkg/b.py": "bb" * 16, "pkg/a.py": "aa" * 16, "pkg/sub/c.py": "cc" * 16}
    tree = Tree()
    for path, md5 in files.items():
        tree.add(tuple(path.split("/")[1:]), Meta(), HashInfo("md5", md5))
    tree.digest()
    assert record.folder_md5("pkg", files) == tree.hash_info.value
    assert record.folder_md5("pkg/", files) == tree.hash_info.value
    with pytest.raises(ValueError, match="outside pkg"):
        record.folder_md5("pkg", {**files, "other/d.py": "dd" * 16})
