"""stage_runtime/pyfunc_folder.py: the folder MLflow's own save_model writes, file for file, for a
model fitted on real trips; and refused (nothing written) where MLflow would write otherwise."""

from __future__ import annotations

import datetime
import os
import re
import shutil
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from stage_runtime.pyfunc_folder import (
    NotMirroredError,
    example_files,
    mlflow_example,
    save_pyfunc_folder,
)
from stage_runtime.tracking import MODEL_CODE, MODEL_REQUIREMENTS, PYFUNC_MODEL
from stages import model as models
from stages import request
from stages.common import write_json
from stages.encoding import encode
from stages.features import fit_encoders, read_zones
from tests.conftest import PROJECT_PARAMS, ROOT, clean_month, project_section

# The two MLmodel entries that differ between any two saves (uuid4, the clock).
PER_SAVE = ("model_uuid", "utc_time_created")


@pytest.fixture(scope="module")
def inputs(small_tlc: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """What StageRun._log_model hands to save_model: a ridge model fitted on a real month,
    its encoders, the model's code, the first trips of the month as the request example."""
    clean = clean_month(small_tlc, "2025-01")
    zones = read_zones(small_tlc / "taxi_zone_lookup.csv")
    encoders = fit_encoders(clean, zones, project_section("features"), max_distance_miles=100)
    params = project_section("model")
    assert params.type == "ridge", PROJECT_PARAMS["model"]
    fitted = models.fit(encode(clean, encoders), encoders, params, seed=42, threads=1)
    root = tmp_path_factory.mktemp("pyfunc-inputs")
    models.save(fitted, root / "model.json")
    (root / "features").mkdir()
    write_json(root / "features" / "encoders.json", encoders)
    package = root / "code" / "stages"
    package.mkdir(parents=True)
    for path in MODEL_CODE:
        shutil.copyfile(ROOT / path, package / Path(path).name)
    return {"root": root, "package": package, "example": request.example_request(clean, 5)}


def save_args(inputs: dict, encoders: str) -> dict:
    return {
        "python_model": str(PYFUNC_MODEL),
        "artifacts": {"model": str(inputs["root"] / "model.json"), "encoders": encoders},
        "code_paths": [str(inputs["package"])],
        "pip_requirements": MODEL_REQUIREMENTS,
        "input_example": inputs["example"],
    }


def files(folder: Path) -> dict[str, Path]:
    return {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file()}


def mlflow_save(path: Path, args: dict) -> None:
    import mlflow

    # train hands the example in as columns; MLflow takes a table as a DataFrame.
    frame = mlflow_example(args["input_example"])
    mlflow.pyfunc.save_model(
        path=str(path), signature=request.signature(), **args | {"input_example": frame}
    )


@pytest.mark.parametrize("cwd", ["project", "elsewhere"])
def test_same_folder_as_mlflow_save_model(cwd, inputs, tmp_path, monkeypatch):
    import mlflow

    # In the project (uv.lock and pyproject.toml beside it) MLflow copies the uv files into
    # the model unless told not to (train tells it: record.apply_client_defaults); elsewhere
    # it does not. The encoders path relative, as train has it.
    monkeypatch.delenv("MLFLOW_UV_AUTO_DETECT", raising=False)
    monkeypatch.delenv("MLFLOW_LOG_UV_FILES", raising=False)
    if cwd == "project":
        monkeypatch.chdir(ROOT)
        encoders = str(inputs["root"] / "features" / "encoders.json")
    else:
        monkeypatch.chdir(inputs["root"])
        encoders = "features/encoders.json"
    args = save_args(inputs, encoders)
    theirs, ours = tmp_path / "mlflow", tmp_path / "ours"
    mlflow_save(theirs, args)
    before = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
    save_pyfunc_folder(ours, signature=request.signature_dict(), **args)
    after = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)

    their_files, our_files = files(theirs), files(ours)
    assert list(our_files) == list(their_files)
    assert ("uv.lock" in our_files) == (cwd == "project")
    assert {"MLmodel", "conda.yaml", "python_env.yaml", "requirements.txt"} <= set(our_files)
    assert "code/stages/request.py" in our_files and "artifacts/encoders.json" in our_files
    for name, path in our_files.items():
        assert path.stat().st_mode == their_files[name].stat().st_mode, name
        if name != "MLmodel":
            assert path.read_bytes() == their_files[name].read_bytes(), name
        if name.startswith("artifacts/") or name in ("uv.lock", "pyproject.toml"):
            # Copied with their times (shutil.copy2), as MLflow copies them.
            assert path.stat().st_mtime_ns == their_files[name].stat().st_mtime_ns, name

    their_model = yaml.safe_load((theirs / "MLmodel").read_text())
    our_model = yaml.safe_load((ours / "MLmodel").read_text())
    for key in PER_SAVE:
        assert our_model.pop(key) != their_model.pop(key)
    assert our_model == their_model
    assert our_model["flavors"]["python_function"]["artifacts"]["encoders"]["uri"] == encoders

    def lines(path: Path) -> list[str]:
        text = (path / "MLmodel").read_text().splitlines()
        return [line for line in text if not line.startswith(tuple(f"{k}:" for k in PER_SAVE))]

    assert lines(ours) == lines(theirs)
    assert len(lines(ours)) == len((ours / "MLmodel").read_text().splitlines()) - len(PER_SAVE)
    # The uuid and the time in MLflow's forms: uuid4().hex, str() of a naive UTC datetime.
    made = yaml.safe_load((ours / "MLmodel").read_text())
    assert uuid.UUID(made["model_uuid"]).version == 4 and len(made["model_uuid"]) == 32
    created = datetime.datetime.fromisoformat(made["utc_time_created"])
    assert str(created) == made["utc_time_created"] and before <= created <= after

    # MLflow loads ours and predicts what it predicts with its own.
    example = pd.DataFrame(inputs["example"])
    predicted = mlflow.pyfunc.load_model(str(ours)).predict(example)
    expected = mlflow.pyfunc.load_model(str(theirs)).predict(example)
    assert isinstance(predicted, np.ndarray) and predicted.shape == (len(example),)
    np.testing.assert_array_equal(predicted, expected)
    assert np.all(np.isfinite(predicted)) and np.all(predicted > 0)


def test_an_example_of_columns_is_written_as_its_dataframe_is(inputs):
    """train hands the example in as numpy columns (no pandas in its process): the files are
    those of the same table as a DataFrame, whose form the test above holds to MLflow's, nulls,
    fractions of a second and a column of ints included."""
    example = dict(inputs["example"])
    assert example_files(example) == example_files(pd.DataFrame(example))
    times = example["pickup_datetime"].copy()
    times[1], times[2] = np.datetime64("NaT"), times[2] + np.timedelta64(250_001, "us")
    distance = example["trip_distance"].copy()
    distance[0] = np.nan
    odd = example | {"pickup_datetime": times, "trip_distance": distance}
    assert example_files(odd) == example_files(pd.DataFrame(odd))
    assert ".250001" in example_files(odd)[0] and '"NaT"' in example_files(odd)[0]
    with pytest.raises(NotMirroredError, match="finer than microseconds"):
        example_files(example | {"pickup_datetime": times.astype("datetime64[ns]") + 1})


def test_requirements_and_python_env_come_from_this_environment(inputs, tmp_path, monkeypatch):
    import importlib.metadata
    import sys

    monkeypatch.chdir(inputs["root"])
    save_pyfunc_folder(
        tmp_path / "m",
        signature=request.signature_dict(),
        **save_args(inputs, "features/encoders.json"),
    )
    requirements = (tmp_path / "m" / "requirements.txt").read_text().splitlines()
    assert requirements[0] == f"mlflow=={importlib.metadata.version('mlflow')}"
    assert 'xgboost-cpu; sys_platform != "darwin"' in requirements  # packaging's quotes
    env = yaml.safe_load((tmp_path / "m" / "python_env.yaml").read_text())
    assert env["python"] == ".".join(map(str, sys.version_info[:3]))
    assert f"pip=={importlib.metadata.version('pip')}" in env["build_dependencies"]
    conda = yaml.safe_load((tmp_path / "m" / "conda.yaml").read_text())
    assert conda["dependencies"][-1] == {"pip": requirements}


def _model_file(tmp_path: Path, old: str, new: str) -> str:
    """The project's model file with one change, written beside the test's folders."""
    source = PYFUNC_MODEL.read_text()
    assert source.count(old) == 1
    changed = tmp_path / "changed_model.py"
    changed.write_text(source.replace(old, new))
    return str(changed)


def int32_zones(args: dict, tmp_path: Path) -> dict:
    example = args["input_example"]
    return args | {
        "input_example": example | {"PULocationID": example["PULocationID"].astype("int32")}
    }


def no_distance(args: dict, tmp_path: Path) -> dict:
    example = {k: v for k, v in args["input_example"].items() if k != "trip_distance"}
    return args | {"input_example": example}


def numpy_twice(args: dict, tmp_path: Path) -> dict:
    return args | {"pip_requirements": [*MODEL_REQUIREMENTS, "numpy>=1.20"]}


def requirements_file(args: dict, tmp_path: Path) -> dict:
    return args | {"pip_requirements": ["-r requirements.txt"]}


def same_file_name(args: dict, tmp_path: Path) -> dict:
    other = tmp_path / "other" / "model.json"
    other.parent.mkdir()
    shutil.copyfile(args["artifacts"]["model"], other)
    return args | {"artifacts": args["artifacts"] | {"copy": str(other)}}


def streaming(args: dict, tmp_path: Path) -> dict:
    stream = (
        "    def predict_stream(self, context, model_input, params=None):\n        yield 1\n\n\n"
    )
    marker = "mlflow.models.set_model("
    return args | {"python_model": _model_file(tmp_path, marker, stream + marker)}


def list_hint(args: dict, tmp_path: Path) -> dict:
    hint = _model_file(tmp_path, "model_input: pd.DataFrame", "model_input: list[str]")
    return args | {"python_model": hint}


def missing_import(args: dict, tmp_path: Path) -> dict:
    module = _model_file(tmp_path, "import numpy as np", "import numpy_not_installed as np")
    return args | {"python_model": module}


def flavor(folder: Path) -> dict:
    return yaml.safe_load((folder / "MLmodel").read_text())["flavors"]["python_function"]


# A change refused (the refusal names it), and what MLflow's save_model does with it: writes a
# model (the caller's fallback; the check shows what it writes differently, where it does),
# fails naming the text, or None: not tried.
REFUSALS = {
    "int32 zone ids (MLflow upcasts)": (int32_zones, "'PULocationID' is int32", lambda f: True),
    "a required column missing": (no_distance, "'trip_distance' missing", "trip_distance"),
    "a package listed twice (MLflow merges)": (
        numpy_twice,
        "listed twice",
        lambda f: "numpy>=1.20" in (f / "requirements.txt").read_text().splitlines(),
    ),
    "a requirements file": (requirements_file, "options and files", None),
    "two artifacts with one name (MLflow renames)": (
        same_file_name,
        "same file name",
        lambda f: (
            "artifacts/model.json" not in {a["path"] for a in flavor(f)["artifacts"].values()}
        ),
    ),
    "a model that streams": (streaming, "predict_stream", lambda f: flavor(f)["streamable"]),
    "a model input hint MLflow reads": (list_hint, "annotated pd.DataFrame", None),
    "a model importing what is not installed": (
        missing_import,
        "numpy_not_installed",
        "numpy_not_installed",
    ),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_refused_before_anything_is_written(case, inputs, tmp_path, monkeypatch):
    monkeypatch.chdir(inputs["root"])
    change, refusal, mlflow_outcome = REFUSALS[case]
    args = change(save_args(inputs, "features/encoders.json"), tmp_path)
    with pytest.raises(NotMirroredError, match=re.escape(refusal)):
        save_pyfunc_folder(tmp_path / "ours", signature=request.signature_dict(), **args)
    assert not (tmp_path / "ours").exists()
    if isinstance(mlflow_outcome, str):  # MLflow refuses it too
        with pytest.raises(Exception, match=mlflow_outcome):
            mlflow_save(tmp_path / "mlflow", args)
    elif mlflow_outcome is not None:  # the fallback: MLflow's own save_model writes it
        mlflow_save(tmp_path / "mlflow", args)
        assert (tmp_path / "mlflow" / "MLmodel").is_file()
        assert mlflow_outcome(tmp_path / "mlflow")


@pytest.mark.parametrize(
    "variable", ["MLFLOW_LOG_MODEL_COMPRESSION", "MLFLOW_LOCK_MODEL_DEPENDENCIES"]
)
def test_refused_under_settings_that_change_mlflows_folder(variable, inputs, tmp_path, monkeypatch):
    monkeypatch.chdir(inputs["root"])
    monkeypatch.setenv(variable, "gzip" if "COMPRESSION" in variable else "true")
    with pytest.raises(NotMirroredError, match=variable):
        save_pyfunc_folder(
            tmp_path / "ours",
            signature=request.signature_dict(),
            **save_args(inputs, "features/encoders.json"),
        )
    assert not (tmp_path / "ours").exists()


def test_refuses_a_folder_that_is_not_empty(inputs, tmp_path, monkeypatch):
    monkeypatch.chdir(inputs["root"])
    (tmp_path / "ours").mkdir()
    (tmp_path / "ours" / "left.txt").write_text("from before")
    with pytest.raises(NotMirroredError, match="not empty"):
        save_pyfunc_folder(
            tmp_path / "ours",
            signature=request.signature_dict(),
            **save_args(inputs, "features/encoders.json"),
        )
    assert os.listdir(tmp_path / "ours") == ["left.txt"]
