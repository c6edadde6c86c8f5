"""dvc.yaml itself: what DVC hands to a shell, and what each stage declares."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from tests.conftest import ROOT


def stage_definitions() -> dict[str, dict]:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def test_no_command_interpolates_a_param() -> None:
    """DVC runs `cmd` through a shell: a `${...}` there would run whatever a param holds."""
    for name, stage in stage_definitions().items():
        cmd = (stage.get("do") or stage)["cmd"]
        assert not re.search(r"\$\{", cmd), f"stage {name}: {cmd}"


PROJECT_PACKAGES = ("stages", "stage_runtime", "lineage", "registry", "workspaces")


def imported_project_files(module: str) -> set[str]:
    """Every project file `module` imports, directly or not (read from the code, not run).

    Imports inside functions count: a stage imports them when it runs.
    """
    import ast

    seen: set[str] = set()
    names_seen: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        if name in names_seen:
            continue
        names_seen.add(name)
        parts = name.split(".")
        # A package's __init__ runs before any of its modules.
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]
        base = ROOT.joinpath(*parts)
        path = base / "__init__.py" if base.is_dir() else base.with_suffix(".py")
        if not path.is_file():
            continue
        seen.add(path.relative_to(ROOT).as_posix())
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                todo.append(node.module)
                todo += [f"{node.module}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                todo += [alias.name for alias in node.names]
    return {p for p in seen if p.split("/")[0] in PROJECT_PACKAGES}


def test_every_stage_depends_on_the_code_it_runs(monkeypatch) -> None:
    """A change to any module a stage imports (or ships inside a model) makes it stale, and
    nothing else does: a code folder a stage declares whole (stage_runtime) holds only modules
    that every stage imports, and the record lists them file by file (code_files)."""
    from stage_runtime.record import folder_modules
    from stage_runtime.tracking import CODE_FOLDERS, MODEL_CODE, code_files

    monkeypatch.chdir(ROOT)  # dvc.yaml's paths, as a stage process sees them
    for name, stage in stage_definitions().items():
        body = stage.get("do") or stage
        module = re.search(r"python -m (\S+)", body["cmd"]).group(1)
        expected = imported_project_files(module)
        if name == "train":
            expected |= set(MODEL_CODE)
        folders = [d for d in body["deps"] if d in CODE_FOLDERS]
        assert folders == list(CODE_FOLDERS), f"stage {name}: declares {folders}"
        in_folders = {m for folder in folders for m in folder_modules(Path(folder))}
        assert in_folders <= expected, f"stage {name} does not import {in_folders - expected}"
        declared = {d for d in body["deps"] if d.endswith(".py")} | in_folders
        assert declared == expected, (
            f"stage {name}: missing {sorted(expected - declared)}, "
            f"not imported {sorted(declared - expected)}"
        )
        recorded = code_files(name)
        assert set(recorded) == expected, f"stage {name}: the record lists {sorted(recorded)}"


def test_the_committed_lock_matches_the_code(monkeypatch) -> None:
    """A fresh clone's `dvc repro` must find the committed dvc.lock current: every code file
    it records has the md5 it records (the lock is regenerated and committed with the code)."""
    from stage_runtime.record import folder_md5, folder_modules
    from stage_runtime.tracking import CODE_FOLDERS
    from stages.common import file_md5

    monkeypatch.chdir(ROOT)  # dvc.lock's paths
    lock = yaml.safe_load((ROOT / "dvc.lock").read_text())["stages"]
    for stage, entry in lock.items():
        for dep in entry.get("deps", []):
            path = dep["path"]
            if path.endswith(".py"):
                md5 = file_md5(path)
            elif path in CODE_FOLDERS:
                md5 = folder_md5(path, {m: file_md5(m) for m in folder_modules(Path(path))})
            else:
                continue
            assert md5 == dep["md5"], f"{stage}: {path} changed since dvc.lock"
