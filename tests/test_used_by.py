"""Reverse lineage (lineage.used_by): the pure walk over a record of two pipelines, and end to
end on real months (slow)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from lineage.trace import NotFoundError
from lineage.used_by import Index, UsageError, targets, walk
from stage_runtime.record import StageRecord, VersionRecord
from tests.conftest import run, sample_month

MODEL = "nyc-taxi-trip-duration-minutes"


def _md5(name: str) -> str:
    """A stand-in md5 for a file of the unit record, distinct per name."""
    return hashlib.md5(name.encode()).hexdigest()


def _run(
    run_id: str,
    stage: str,
    inputs: dict[str, str],
    outputs: dict[str, str],
    months: dict[str, str] | None = None,
    experiment: str | None = None,
    version: str | None = None,
) -> StageRecord:
    return StageRecord(
        run_id,
        stage,
        0,
        {path: _md5(content) for path, content in inputs.items()},
        {path: _md5(content) for path, content in outputs.items()},
        months or {},
        experiment,
        (MODEL, version) if version else None,
    )


def _pipeline(tag: str, months: dict[str, str], version: str, experiment: str | None = None):
    """features, train and evaluate of one pipeline over already cleaned months; the contents
    of its outputs are named after `tag`, so two pipelines write different bytes."""
    clean = {f"data/clean/trips_{m}.parquet": f"clean-{m}" for m in months}
    splits = ("train", "validation", "test")
    features_out = {f"data/features/{s}.parquet": f"{s}-{tag}" for s in splits}
    features_out["data/features/encoders.json"] = f"encoders-{tag}"
    held_out = {p: c for p, c in clean.items() if months[p[-15:-8]] != "train"}
    return [
        _run(
            f"features-{tag}",
            "features",
            clean | {"data/raw/taxi_zone_lookup.csv": "zones"},
            features_out,
            months,
            experiment,
        ),
        _run(
            f"train-{tag}",
            "train",
            {
                "data/features/train.parquet": f"train-{tag}",
                "data/features/encoders.json": f"encoders-{tag}",
            },
            {"models/model.json": f"model-{tag}"},
            experiment=experiment,
            version=version,
        ),
        _run(
            f"evaluate-{tag}",
            "evaluate",
            {
                "data/features/validation.parquet": f"validation-{tag}",
                "data/features/test.parquet": f"test-{tag}",
                "data/features/encoders.json": f"encoders-{tag}",
                "models/model.json": f"model-{tag}",
            }
            | held_out,
            {
                "data/predictions/validation.parquet": f"pred-validation-{tag}",
                "data/predictions/test.parquet": f"pred-test-{tag}",
            },
            months,
            experiment,
        ),
    ]


def _ingest_and_prepare(month: str, months: dict[str, str]) -> list[StageRecord]:
    raw = f"data/raw/green_tripdata_{month}.parquet"
    return [
        _run(f"ingest-{month}", f"ingest@{month}", {}, {raw: f"raw-{month}"}, months),
        _run(
            f"prepare-{month}",
            f"prepare@{month}",
            {raw: f"raw-{month}"},
            {f"data/clean/trips_{month}.parquet": f"clean-{month}"},
            months,
        ),
    ]


A_MONTHS = {"2024-01": "train", "2024-02": "validation", "2024-03": "test"}
B_MONTHS = {"2024-02": "train", "2024-03": "validation", "2024-04": "test"}


@pytest.fixture
def index() -> Index:
    """Version 1 trained on 2024-01 (2024-02 validation, 2024-03 test); version 2, a DVC
    experiment, trained on 2024-02 (2024-03 validation, 2024-04 test) reusing the cleaned
    2024-02 and 2024-03 of the first run (DVC did not rerun prepare). Scoring: 2024-04 with
    version 1 from a copy of the raw file elsewhere, 2024-03 with version 2."""
    runs = [_run("zones", "ingest_zones", {}, {"data/raw/taxi_zone_lookup.csv": "zones"})]
    for month in A_MONTHS:
        runs += _ingest_and_prepare(month, A_MONTHS)
    runs += _pipeline("a", A_MONTHS, "1")
    runs += _ingest_and_prepare("2024-04", B_MONTHS)
    runs += _pipeline("b", B_MONTHS, "2", experiment="exp-b")
    runs += [
        _run(
            "score-1",
            "score@2024-04",
            {
                "external/tmp/x/green_tripdata_2024-04.parquet": "raw-2024-04",
                "models/model.json": "model-a",
            },
            {"predictions/green_tripdata_2024-04.parquet": "scores-1"},
        ),
        _run(
            "score-2",
            "score@2024-03",
            {
                "data/raw/green_tripdata_2024-03.parquet": "raw-2024-03",
                "models/model.json": "model-b",
            },
            {"predictions/green_tripdata_2024-03.parquet": "scores-2"},
        ),
    ]
    versions = [
        VersionRecord(MODEL, "1", "train-a", _md5("model-a"), ("champion",)),
        VersionRecord(MODEL, "2", "train-b", _md5("model-b"), ("challenger",)),
        # A version whose run did not finish (not in the record's finished runs): never listed.
        VersionRecord(MODEL, "3", "killed-run", _md5("model-a")),
    ]
    return Index(runs, versions)


def _uses(result, kind: str) -> dict[str, tuple[str, str]]:
    return {u.target: (u.how, " -> ".join(u.chain)) for u in getattr(result, kind)}


def test_a_month_lists_the_version_trained_on_it_and_the_one_evaluated_on_it(index):
    raw = "data/raw/green_tripdata_2024-02.parquet"
    result = walk(index, _md5("raw-2024-02"), raw)
    assert result.produced_by == "ingest@2024-02"
    assert _uses(result, "versions") == {
        f"{MODEL}/1": (
            "evaluated on (validation)",
            "ingest@2024-02 -> prepare@2024-02 -> evaluate -> v1",
        ),
        f"{MODEL}/2": (
            "trained on",
            "ingest@2024-02 -> prepare@2024-02 -> features -> train -> v2",
        ),
    }
    assert [u.aliases for u in result.versions] == [["champion"], ["challenger"]]
    assert _uses(result, "experiments") == {
        "exp-b": ("trained on", "ingest@2024-02 -> prepare@2024-02 -> features -> train -> exp-b")
    }
    # Version 2 scored 2024-03: those predictions carry the bug through its model.
    assert _uses(result, "predictions") == {
        "predictions/green_tripdata_2024-03.parquet": (
            "scored with v2",
            "ingest@2024-02 -> prepare@2024-02 -> features -> train -> v2 -> score@2024-03 -> "
            "predictions/green_tripdata_2024-03.parquet",
        )
    }


def test_a_held_out_month_never_reaches_the_model_bytes(index):
    """2024-01 trained version 1 only; 2024-04, test month of version 2 and scored with
    version 1 from a copy under another name, reaches no model's bytes."""
    trained = walk(index, _md5("raw-2024-01"))
    assert _uses(trained, "versions") == {
        f"{MODEL}/1": ("trained on", "ingest@2024-01 -> prepare@2024-01 -> features -> train -> v1")
    }
    assert set(_uses(trained, "predictions")) == {"predictions/green_tripdata_2024-04.parquet"}
    assert trained.experiments == []

    test_month = walk(index, _md5("raw-2024-04"))
    assert _uses(test_month, "versions") == {
        f"{MODEL}/2": ("evaluated on (test)", "ingest@2024-04 -> prepare@2024-04 -> evaluate -> v2")
    }
    assert _uses(test_month, "experiments") == {
        "exp-b": ("evaluated on (test)", "ingest@2024-04 -> prepare@2024-04 -> evaluate -> exp-b")
    }
    # Matched by md5 alone: the score run read the raw bytes under another name.
    assert _uses(test_month, "predictions") == {
        "predictions/green_tripdata_2024-04.parquet": (
            "scored these trips with v1",
            "ingest@2024-04 -> score@2024-04 -> predictions/green_tripdata_2024-04.parquet",
        )
    }


def test_a_file_between_stages_and_a_model_file(index):
    features = walk(index, _md5("validation-b"), "data/features/validation.parquet")
    assert _uses(features, "versions") == {
        f"{MODEL}/2": ("evaluated on", "features -> evaluate -> v2")
    }
    zones = walk(index, _md5("zones"))
    assert {u.how for u in zones.versions} == {"trained on"}
    assert len(zones.versions) == 2
    model = walk(index, _md5("model-a"), "models/model.json")
    # Version 3 has these bytes too, but its run never finished.
    assert _uses(model, "versions") == {f"{MODEL}/1": ("is its model", "train -> v1")}
    model_b = walk(index, _md5("model-b"), "models/model.json")
    assert [(u.target, u.how, u.version) for u in model_b.experiments] == [
        ("exp-b", "evaluated this model", "2")
    ]
    assert set(_uses(model, "predictions")) == {"predictions/green_tripdata_2024-04.parquet"}


def test_cycles_end_and_unused_bytes_find_nothing():
    loop = [
        _run("r1", "one", {"a": "x"}, {"b": "y"}),
        _run("r2", "two", {"b": "y"}, {"a": "x", "c": "z"}),
        _run("r3", "train", {"c": "z"}, {"m": "model"}, version="1"),
    ]
    index = Index(loop, [VersionRecord(MODEL, "1", "r3", _md5("model"))])
    result = walk(index, _md5("x"))
    assert result.produced_by == "two"
    assert _uses(result, "versions") == {
        f"{MODEL}/1": ("trained on", "two -> one -> two -> train -> v1")
    }
    assert result.runs_read == 3
    nothing = walk(index, _md5("unread"))
    assert not nothing.found() and nothing.runs_read == 0


def test_targets_a_file_an_md5_a_recorded_name_and_a_folder(index, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("data.bin").write_bytes(b"some bytes")
    assert targets("data.bin", index) == [("data.bin", hashlib.md5(b"some bytes").hexdigest())]
    md5 = _md5("raw-2024-02")
    assert targets(md5.upper(), index) == [(None, md5)]
    # Not on disk: every md5 the record holds for that name (two pipelines, two model files).
    assert targets("models/model.json", index) == [
        ("models/model.json", _md5("model-a")),
        ("models/model.json", _md5("model-b")),
    ]
    with pytest.raises(NotFoundError, match="no finished run in the record read or wrote"):
        targets("data/raw/green_tripdata_1999-01.parquet", index)
    Path("folder").mkdir()
    with pytest.raises(UsageError, match="a folder"):
        targets("folder", index)


def test_a_stage_record_read_from_an_mlflow_run():
    from mlflow.entities import Param, Run, RunData, RunInfo, RunTag

    from stage_runtime.record import stage_record

    tags = {
        "stage": "train",
        "in/data/features/train.parquet": _md5("train"),
        "out/models/model.json": _md5("model"),
        "code/stages/train.py": _md5("code"),
        "dvc_exp_name": "exp-b",
        "model_name": MODEL,
        "model_version": "2",
    }
    params = {"data.months.2024-02": "train", "data.colour": "green", "model.alpha": "1.0"}
    run = Run(
        RunInfo("r", "0", "u", "FINISHED", 5, 6, "active"),
        RunData(
            params=[Param(k, v) for k, v in params.items()],
            tags=[RunTag(k, v) for k, v in tags.items()],
        ),
    )
    assert stage_record(run) == StageRecord(
        "r",
        "train",
        5,
        {"data/features/train.parquet": _md5("train")},
        {"models/model.json": _md5("model")},
        {"2024-02": "train"},
        "exp-b",
        (MODEL, "2"),
    )


@pytest.mark.parametrize(
    "argv",
    [[], ["models:/m/1", "--used-by", "x"], ["--used-by", "x", "--verify"]],
)
def test_the_command_line_takes_a_reference_or_used_by(argv, capsys):
    from lineage.cli import EXIT_USAGE, main

    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == EXIT_USAGE
    assert "--used-by" in capsys.readouterr().err


# --------------------------------------------------------------------------- end to end

E2E_MONTHS = ("2024-01", "2024-02", "2024-03", "2024-04")


def _set_months(repo: Path, months: dict[str, str]) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["data"]["months"] = months
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def _used_by(repo: Path, what: str, check: bool = True):
    return run(
        [sys.executable, "-m", "lineage", "--used-by", what, "--json"],
        repo,
        dict(os.environ),
        check=check,
    )


def _versions(proc) -> dict[str, str]:
    (result,) = json.loads(proc.stdout)
    return {u["version"]: u["how"] for u in result["versions"]}


@pytest.mark.slow
def test_used_by_end_to_end(project, shared_tlc, small_tlc, tmp_path, monkeypatch):
    """Version 1 trains on 2024-01 (2024-02 validation, 2024-03 test); version 2, a DVC
    experiment, on 2024-02 (2024-03 validation, 2024-04 test); version 1 scores 2024-04.
    `--used-by` a raw month lists exactly the versions whose training or evaluation used it."""
    from mlflow.tracking import MlflowClient

    mirror = tmp_path / "mirror-2024"
    mirror.mkdir()
    for month in E2E_MONTHS:
        name = f"green_tripdata_{month}.parquet"
        sample_month(shared_tlc / name, mirror / name)
    shutil.copyfile(small_tlc / "taxi_zone_lookup.csv", mirror / "taxi_zone_lookup.csv")
    monkeypatch.setenv("TLC_SOURCE", str(mirror))
    monkeypatch.chdir(project)
    env = dict(os.environ)

    _set_months(project, dict(zip(E2E_MONTHS[:3], ("train", "validation", "test"), strict=True)))
    run(["dvc", "repro"], project, env)
    run(["git", "add", "-A"], project, env)
    run(["git", "commit", "-qm", "version 1"], project, env)
    _set_months(project, dict(zip(E2E_MONTHS[1:], ("train", "validation", "test"), strict=True)))
    run(["dvc", "exp", "run"], project, env)
    score = ["--month", "2024-04", "--model", f"models:/{MODEL}/1"]
    run([sys.executable, "-m", "flows.score", *score], project, env)

    client = MlflowClient(env["MLFLOW_TRACKING_URI"], env["MLFLOW_TRACKING_URI"])
    assert {str(v.version) for v in client.search_model_versions(f"name = '{MODEL}'")} == {"1", "2"}
    expected = {
        "2024-01": {"1": "trained on"},
        "2024-02": {"1": "evaluated on (validation)", "2": "trained on"},
        "2024-03": {"1": "evaluated on (test)", "2": "evaluated on (validation)"},
        "2024-04": {"2": "evaluated on (test)"},
    }
    # The mirror's files: the same bytes as data/raw's, found by md5 under another name.
    uses = {m: _used_by(project, str(mirror / f"green_tripdata_{m}.parquet")) for m in expected}
    for month, versions in expected.items():
        assert _versions(uses[month]) == versions, (month, uses[month].stdout)

    # The acceptance: the 2024-02 raw file, by its project name, as a person reads it.
    raw = "data/raw/green_tripdata_2024-02.parquet"
    shown = run([sys.executable, "-m", "lineage", "--used-by", raw], project, env).stdout
    aliases = dict(client.get_registered_model(MODEL).aliases)
    assert aliases, "evaluate gives the first version the champion alias"
    for alias, version in aliases.items():
        line = next(line for line in shown.splitlines() if f"minutes v{version}" in line)
        assert f"@{alias}" in line, shown
    assert "ingest@2024-02 -> prepare@2024-02 -> features -> train -> v2" in shown
    assert "ingest@2024-02 -> prepare@2024-02 -> evaluate -> v1" in shown

    (result,) = json.loads(_used_by(project, raw).stdout)
    experiments = {u["target"]: (u["how"], u["version"]) for u in result["experiments"]}
    assert list(experiments.values()) == [("trained on", "2")], experiments
    assert result["predictions"] == []  # version 2 scored nothing
    # 2024-01 trained version 1, which scored 2024-04: those predictions carry it; and
    # 2024-04's trips were scored (with version 1, read from the scoring copy of the month).
    (january,) = json.loads(uses["2024-01"].stdout)
    assert [(p["target"], p["how"]) for p in january["predictions"]] == [
        ("predictions/green_tripdata_2024-04.parquet", "scored with v1")
    ]
    (april,) = json.loads(uses["2024-04"].stdout)
    assert [(p["target"], p["how"]) for p in april["predictions"]] == [
        ("predictions/green_tripdata_2024-04.parquet", "scored these trips with v1")
    ]

    # Bytes nothing used: one line, exit 3; a folder: exit 2; no traceback.
    unused = tmp_path / "unused.bin"
    unused.write_bytes(b"bytes no run read")
    for what, status, words in [
        (str(unused), 3, "no model version, DVC experiment or predictions file"),
        ("data/raw/green_tripdata_1999-01.parquet", 3, "no such file"),
        ("data", 2, "a folder"),
    ]:
        refused = _used_by(project, what, check=False)
        assert refused.returncode == status, (what, refused.stderr)
        assert words in refused.stderr and "Traceback" not in refused.stderr, refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
