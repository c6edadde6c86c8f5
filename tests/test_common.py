"""stages/common.py: params validation (every bad value refused with the param named), the
stage's item, and staged outputs committed all or nothing."""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path

import pytest
import yaml

from stages.common import (
    BadInputError,
    StagedOutputs,
    check_month,
    file_md5,
    load_params,
    parse_section,
    process_identity,
    read_json,
    stage_item,
    validate_params_text,
    write_json,
)
from tests.conftest import PROJECT_PARAMS, ROOT


def section(name: str) -> dict:
    return copy.deepcopy(PROJECT_PARAMS[name])


def refused(name: str, raw: dict) -> str:
    with pytest.raises(BadInputError) as info:
        parse_section(name, raw)
    return str(info.value)


def test_project_params_are_valid():
    params = load_params(
        "base", "data", "prepare", "features", "model", "evaluate", path=ROOT / "params.yaml"
    )
    assert params["data"].months_of("train") == ["2025-01"]
    assert params["model"].type in ("lasso", "ridge", "xgboost")


def test_negative_alpha_names_model_alpha():
    raw = section("model") | {"alpha": -1}
    message = refused("model", raw)
    assert "model.alpha" in message and "-1" in message


def test_unknown_model_type_names_model_type():
    message = refused("model", section("model") | {"type": "random_forest"})
    assert "model.type" in message and "random_forest" in message


@pytest.mark.parametrize(
    "month", ["2025-13", "2025-1", "2025-00", "25-01", "2025/01", "../etc/passwdx"]
)
def test_malformed_month_key_names_the_month(month):
    raw = section("data")
    raw["months"] = {month: "train", "2025-02": "validation", "2025-03": "test"}
    message = refused("data", raw)
    assert "data.months" in message and month in message


@pytest.mark.parametrize("month", ["2025-13", "2025-1", ""])
def test_check_month_refuses(month):
    with pytest.raises(BadInputError, match="YYYY-MM"):
        check_month(month)


def test_check_month_accepts_real_month():
    assert check_month("2025-03") == "2025-03"


def test_misspelt_key_is_refused_by_name():
    raw = section("model")
    raw["alhpa"] = raw.pop("alpha")
    message = refused("model", raw)
    assert "model.alhpa" in message
    assert "model.alpha" in message  # now missing: named too


def test_unknown_section_is_refused():
    with pytest.raises(BadInputError, match="modle"):
        parse_section("modle", {})


def test_min_duration_not_below_max_is_refused():
    raw = section("prepare") | {"min_duration_minutes": 60, "max_duration_minutes": 60}
    message = refused("prepare", raw)
    assert "min_duration_minutes" in message and "max_duration_minutes" in message


@pytest.mark.parametrize("split", ["train", "validation", "test"])
def test_each_split_needs_a_month(split):
    raw = section("data")
    raw["months"] = {m: s for m, s in raw["months"].items() if s != split}
    message = refused("data", raw)
    assert "data" in message and "months: no month is assigned to " + split in message


def test_load_params_names_the_file_and_param(tmp_path):
    params = copy.deepcopy(PROJECT_PARAMS)
    params["model"]["alpha"] = -0.5
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    with pytest.raises(BadInputError) as info:
        load_params("model", path=path)
    assert str(path) in str(info.value) and "model.alpha" in str(info.value)


def test_missing_section_is_refused(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"base": PROJECT_PARAMS["base"]}))
    with pytest.raises(BadInputError, match="'model' is missing"):
        load_params("model", path=path)


def test_json_round_trip_and_md5(tmp_path):
    import hashlib

    path = tmp_path / "out" / "m.json"
    write_json(path, {"b": 1, "a": [1.5, "x"]})
    assert read_json(path) == {"a": [1.5, "x"], "b": 1}
    assert file_md5(path) == hashlib.md5(path.read_bytes()).hexdigest()
    assert list(path.parent.iterdir()) == [path]  # no temporary file left behind


def test_read_json_names_the_file(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text("{not json")
    with pytest.raises(BadInputError, match="broken.json"):
        read_json(path)


@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "1e309"])
def test_non_finite_alpha_is_refused(value):
    raw = section("model") | {"alpha": float(value)}
    assert "model.alpha" in refused("model", raw) and "finite" in refused("model", raw)


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("max_iter", True, "expected an integer"),  # YAML's true is no 1
        ("max_iter", 2.5, "expected an integer"),
        ("alpha", "0.5", "expected a number"),  # a quoted number is a string
        ("registered_name", 7, "expected a string"),
        ("xgboost", [1], "expected a mapping"),
    ],
)
def test_a_value_of_the_wrong_type_is_refused_by_name(key, value, expected):
    message = refused("model", section("model") | {key: value})
    assert f"model.{key}: {expected} (got {value!r})" in message


def test_every_problem_is_named_at_once_nested_ones_by_their_full_key():
    raw = section("model") | {"alpha": -1, "type": "forest"}
    raw["xgboost"] = raw["xgboost"] | {"max_depth": 65, "subsample": 0}
    lines = refused("model", raw).splitlines()[1:]
    assert [line.split(":")[0].strip() for line in lines] == [
        "model.type", "model.alpha", "model.xgboost.max_depth", "model.xgboost.subsample"
    ]  # fmt: skip


def test_a_section_is_its_yaml_values_typed_and_round_trips():
    model = parse_section("model", section("model") | {"max_iter": 3000.0, "alpha": 2})
    assert (model.max_iter, type(model.max_iter), model.alpha, type(model.alpha)) == (
        3000, int, 2.0, float
    )  # fmt: skip
    assert parse_section("model", model.as_dict()) == model
    tune = parse_section("tune", section("tune") | {"lasso": None})
    assert tune.lasso is None and tune.xgboost["max_depth"].log is False


def test_whole_params_text_is_validated():
    text = (ROOT / "params.yaml").read_text()
    assert set(validate_params_text(text, "params.yaml")) == {
        "base", "data", "prepare", "features", "model", "evaluate", "promote", "tune", "retrain"
    }  # fmt: skip
    bad = text.replace("colour: green", "colour: green$(touch x)")
    with pytest.raises(BadInputError, match=r"data\.colour"):
        validate_params_text(bad, "params.yaml")
    with pytest.raises(BadInputError, match="unknown params section"):
        validate_params_text(text + "extra: 1\n", "params.yaml")


def test_stage_item_comes_from_dvc_stage_name(monkeypatch):
    monkeypatch.setenv("DVC_STAGE", "prepare@2025-01")
    assert stage_item(None) == "2025-01"
    assert stage_item("2025-01") == "2025-01"
    with pytest.raises(BadInputError, match="differs"):
        stage_item("2025-02")
    monkeypatch.setenv("DVC_STAGE", "dvc.yaml:prepare@2025-03")
    assert stage_item(None) == "2025-03"
    monkeypatch.delenv("DVC_STAGE")
    with pytest.raises(BadInputError, match="no item"):
        stage_item(None)


def _project(tmp_path):
    (tmp_path / ".dvc").mkdir()
    return tmp_path


def test_staged_outputs_live_outside_declared_folders_and_commit_together(tmp_path):
    root = _project(tmp_path)
    (root / "data" / "clean").mkdir(parents=True)
    (root / "data" / "clean" / "a.parquet").write_text("old a")
    staged = StagedOutputs(root)
    staged.path(root / "data" / "clean" / "a.parquet").write_text("new a")
    staged.path(root / "metrics" / "b.json").write_text("new b")
    # Nothing of the staging is inside the output folder DVC hashes.
    assert [p.name for p in (root / "data" / "clean").iterdir()] == ["a.parquet"]
    assert staged.dir.is_relative_to(root / ".dvc" / "tmp")
    staged.commit()
    staged.finish()
    assert (root / "data/clean/a.parquet").read_text() == "new a"
    assert (root / "metrics/b.json").read_text() == "new b"
    assert not staged.dir.exists()


def test_a_failed_move_puts_every_previous_output_back(tmp_path):
    root = _project(tmp_path)
    for name in ("model.json", "train.json"):
        (root / name).write_text(f"old {name}")
    staged = StagedOutputs(root)
    staged.path(root / "model.json").write_text("new model")
    staged.path(root / "train.json").write_text("new metrics")
    staged.files[root / "train.json"].unlink()  # the second move fails
    with pytest.raises(FileNotFoundError):
        staged.commit()
    assert (root / "model.json").read_text() == "old model.json"
    assert (root / "train.json").read_text() == "old train.json"


def test_rollback_after_commit_restores_and_removes(tmp_path):
    root = _project(tmp_path)
    (root / "model.json").write_text("old")
    staged = StagedOutputs(root)
    staged.path(root / "model.json").write_text("new")
    staged.path(root / "new.json").write_text("first time")
    staged.commit()
    staged.discard()  # a later step (registering the model) failed
    assert (root / "model.json").read_text() == "old"
    assert not (root / "new.json").exists()


def test_staging_of_dead_processes_is_removed(tmp_path):
    root = _project(tmp_path)
    dead = root / ".dvc" / "tmp" / "staging" / "999999999-1"
    dead.mkdir(parents=True)
    (dead / "trips.parquet.tmp").write_text("half written")
    live = StagedOutputs(root)
    assert not dead.exists() and live.dir.exists()
    StagedOutputs(root)  # another stage of the same process keeps this one's folder
    assert live.dir.exists()


def test_a_failed_stage_puts_back_its_last_good_outputs_from_the_dvc_cache(tmp_path):
    from stages.common import dvc_cache_dir, put_back_outputs

    root = tmp_path / "repo"
    (root / ".dvc").mkdir(parents=True)
    cache = tmp_path / "shared-cache"
    (root / ".dvc" / "config").write_text("[core]\n    remote = x\n")
    assert dvc_cache_dir(root) == root / ".dvc" / "cache"
    # A worktree's `dvc cache dir --local` wins over the project's config.
    (root / ".dvc" / "config.local").write_text(f"[cache]\n    dir = {cache}\n")
    assert dvc_cache_dir(root) == cache
    model = b'{"learner": "real bytes"}'
    md5 = hashlib.md5(model).hexdigest()
    (cache / "files" / "md5" / md5[:2]).mkdir(parents=True)
    (cache / "files" / "md5" / md5[:2] / md5[2:]).write_bytes(model)
    (root / "dvc.lock").write_text(
        "schema: '2.0'\nstages:\n  train:\n    cmd: python -m stages.train\n    outs:\n"
        f"    - path: models/model.json\n      md5: {md5}\n      size: {len(model)}\n"
        "    - path: metrics/train.json\n      hash: md5\n"
        "      md5: 0123456789abcdef0123456789abcdef\n"
    )
    # DVC deleted both before the command; only what the cache holds comes back.
    assert put_back_outputs("train", root) == ["models/model.json"]
    assert (root / "models" / "model.json").read_bytes() == model
    assert not (root / "metrics" / "train.json").exists()
    # An output in place is never overwritten; an unknown stage puts nothing back.
    (root / "models" / "model.json").write_bytes(b"newer")
    assert put_back_outputs("train", root) == []
    assert put_back_outputs("evaluate", root) == []


def test_a_zombie_has_no_process_identity():
    """A process that has exited but not been reaped is gone: a killed stage reparented to an
    init that reaps late must not look alive (reconcile_orphans, staging folders, locks)."""
    import subprocess
    import time

    child = subprocess.Popen(["sleep", "30"])
    try:
        assert process_identity(child.pid) is not None
        child.kill()
        deadline = time.monotonic() + 10
        while Path(f"/proc/{child.pid}/stat").read_text().split(")")[1].split()[0] != "Z":
            assert time.monotonic() < deadline, "the child did not become a zombie"
            time.sleep(0.01)
        assert process_identity(child.pid) is None  # exited, not yet reaped
    finally:
        child.kill()
        child.wait()
    assert process_identity(child.pid) is None


STAGE_END = """
import atexit, logging, sys, threading, time
from pathlib import Path
from stages.common import run_stage

def main(argv):
    atexit.register(lambda: Path(sys.argv[1]).write_text("atexit ran"))
    logging.getLogger("stages").info("logged")
    sys.stdout.write("no newline")
    if sys.argv[2] == "thread":
        threading.Thread(target=time.sleep, args=(0.3,)).start()

run_stage("demo", main)
sys.stdout.write(" | teardown")
"""


@pytest.mark.parametrize("mode", ["alone", "thread"])
def test_a_finished_stage_exits_without_teardown_but_with_its_exit_work(tmp_path, mode):
    """run_stage ends a finished stage with os._exit, after the atexit handlers and the
    buffered output; with a live thread left it exits the usual way (the thread is joined)."""
    import subprocess
    import sys

    marker = tmp_path / "atexit"
    done = subprocess.run(
        [sys.executable, "-c", STAGE_END, str(marker), mode],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "demo INFO logged" in done.stderr
    assert marker.read_text() == "atexit ran"
    assert done.stdout == ("no newline | teardown" if mode == "thread" else "no newline")
