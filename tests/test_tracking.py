"""Lineage names of files: what the `in/`, `out/` and `source/` tag keys are built from."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from stages.tracking import _file_uri, lineage_path


def test_paths_inside_the_project_are_relative(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    assert lineage_path("data/clean/trips_2025-01.parquet") == "data/clean/trips_2025-01.parquet"
    assert lineage_path(tmp_path / "models" / "model.json") == "models/model.json"
    assert lineage_path("./data/../data/raw/x.csv") == "data/raw/x.csv"


def test_paths_outside_the_project_survive_mlflow_key_normalisation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    project = tmp_path / "project"
    project.mkdir()
    monkeypatch.chdir(project)
    name = lineage_path(tmp_path / "elsewhere" / "model.json")
    key = f"out/{name}"
    # MLflow refuses keys that change under normalisation (`out//tmp/...`, `..`).
    assert os.path.normpath(key) == key
    assert name.endswith("/elsewhere/model.json")
    assert _file_uri(name) == (tmp_path / "elsewhere" / "model.json").as_uri()
    assert lineage_path("../elsewhere/model.json") == name
