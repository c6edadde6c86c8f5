"""The folder `mlflow.pyfunc.save_model` writes for a model from code, written without MLflow.

`import mlflow` costs 1.5-2 s a process, and save_model another 0.3-0.5 s, nearly all of it
warn_dependency_requirement_mismatches scanning the installed packages (a warning: it changes
no file). For the one form of call the train stage makes
(stage_runtime.tracking.StageRun._log_model):

    mlflow.pyfunc.save_model(path=..., python_model=<a .py file>, artifacts={name: file},
        code_paths=[...], pip_requirements=[...], signature=..., input_example=<DataFrame>)

save_pyfunc_folder writes the same files with the same bytes (MLmodel differs only in its
model_uuid and utc_time_created, made as MLflow makes them), following MLflow 3.17.2's code
step by step: pyfunc.save_model, pyfunc.model._save_model_with_class_artifacts_params,
models.Model.to_dict, models.utils._Example, utils.environment (_process_pip_requirements,
_mlflow_conda_env, _PythonEnv), utils.uv_utils.copy_uv_project_files. Every value that comes
from the environment is read where MLflow reads it (mlflow/version.py's VERSION, sys.version_info,
importlib.metadata for pip/setuptools/wheel, cloudpickle.__version__, the working directory).

Anything MLflow would do differently with these inputs (another MLflow version, a setting in
the environment, a requirement it would merge or lock, an example column type whose schema
check is not mirrored here, a model file whose type hints or streaming MLflow would act on, an
artifact path it would rename) raises NotMirroredError before a file is written: the caller
then calls MLflow's save_model itself. tests/test_pyfunc_folder.py holds the folder to MLflow's
file for file.
"""

from __future__ import annotations

import ast
import base64
import copy
import datetime
import importlib.metadata
import importlib.util
import json
import os
import shutil
import sys
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from stage_runtime.sqlite_store import mlflow_package_dir

# The MLflow release whose save_model this module reproduces; another one is refused.
MIRRORED_MLFLOW = "3.17.2"
# Top-level names in the folder (mlflow.models.utils, mlflow.utils.environment).
MLMODEL = "MLmodel"
EXAMPLE_FILE = "input_example.json"
SERVING_FILE = "serving_input_example.json"
CONDA_FILE = "conda.yaml"
PYTHON_ENV_FILE = "python_env.yaml"
REQUIREMENTS_FILE = "requirements.txt"
ARTIFACTS_DIR = "artifacts"
CODE_DIR = "code"
UV_FILES = ("uv.lock", "pyproject.toml")  # copied together, when both are in the cwd
PYTHON_VERSION_FILE = ".python-version"  # copied with them when present
RESERVED = {
    MLMODEL,
    EXAMPLE_FILE,
    SERVING_FILE,
    CONDA_FILE,
    PYTHON_ENV_FILE,
    REQUIREMENTS_FILE,
    ARTIFACTS_DIR,
    CODE_DIR,
    "constraints.txt",
    PYTHON_VERSION_FILE,
    *UV_FILES,
}
# Column types whose check of the example against the signature is mirrored, with the one
# pandas dtype kind accepted for each (exact matches: MLflow's upcasts are not mirrored).
CHECKED_TYPES = {"long": "int64", "double": "float64", "datetime": "datetime64"}
MLFLOW_NAMES = ("mlflow", "mlflow-skinny", "mlflow-tracing")
# Environment variables that change what save_model writes, in ways not mirrored here.
REFUSED_VARIABLES = (
    "MLFLOW_LOG_MODEL_COMPRESSION",  # adds python_model_compression to MLmodel
    "DATABRICKS_RUNTIME_VERSION",  # adds databricks_runtime to MLmodel, other code paths
    "DATABRICKS_ENV_VERSION",
)
REFUSED_SWITCHES = (
    "MLFLOW_LOCK_MODEL_DEPENDENCIES",  # requirements.txt locked by `uv pip compile`
    "_MLFLOW_TESTING",  # another mlflow pin
)


class NotMirroredError(Exception):
    """The call would make MLflow write something this module does not reproduce: use
    mlflow.pyfunc.save_model instead. Raised before anything is written."""


# -- the environment, read where MLflow reads it ----------------------------------------------


def mlflow_version() -> str:
    """mlflow.version.VERSION, read from the installed mlflow/version.py without importing
    mlflow (its __init__ is the cost being avoided)."""
    package = mlflow_package_dir()
    if package is None:
        raise NotMirroredError("mlflow is not installed")
    source = package / "version.py"
    for node in ast.parse(source.read_text()).body:
        if (
            isinstance(node, ast.Assign)
            and [getattr(t, "id", None) for t in node.targets] == ["VERSION"]
            and isinstance(node.value, ast.Constant)
        ):
            version = node.value.value
            break
    else:
        raise NotMirroredError(f"{source}: no VERSION constant")
    if version != MIRRORED_MLFLOW:
        raise NotMirroredError(f"mlflow {version} installed; this module mirrors {MIRRORED_MLFLOW}")
    try:
        distribution = importlib.metadata.version("mlflow")
    except importlib.metadata.PackageNotFoundError:
        distribution = None
    if distribution != version:  # mlflow-skinny alone, or a broken install
        raise NotMirroredError(
            f"mlflow/version.py says {version}, the mlflow distribution {distribution}"
        )
    return version


def python_version() -> str:
    """mlflow.utils.PYTHON_VERSION."""
    return f"{sys.version_info.major}.{sys.version_info.minor}.{sys.version_info.micro}"


def package_version(name: str) -> str | None:
    """mlflow.utils.environment._get_package_version."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _switch(name: str, default: bool) -> bool:
    """An MLflow boolean environment variable as _BooleanEnvironmentVariable.get reads it."""
    if name not in os.environ:
        return default
    value = os.environ[name].lower()
    if value not in ("true", "false", "1", "0"):
        raise NotMirroredError(f"{name}={os.environ[name]!r}: MLflow refuses this value")
    return value in ("true", "1")


def _check_environment() -> None:
    for name in REFUSED_VARIABLES:
        if os.environ.get(name):
            raise NotMirroredError(f"{name} is set: MLflow's save_model writes differently then")
    for name in REFUSED_SWITCHES:
        if _switch(name, False):
            raise NotMirroredError(f"{name} is on: MLflow's save_model writes differently then")


def uv_files(cwd: Path) -> list[Path]:
    """The uv project files copy_uv_project_files puts beside the model: uv.lock and
    pyproject.toml when both are in the working directory (and .python-version with them),
    unless MLFLOW_UV_AUTO_DETECT or MLFLOW_LOG_UV_FILES turns that off."""
    if not _switch("MLFLOW_UV_AUTO_DETECT", True) or not _switch("MLFLOW_LOG_UV_FILES", True):
        return []
    if not all((cwd / name).exists() for name in UV_FILES):
        return []
    files = [cwd / name for name in UV_FILES]
    if (cwd / PYTHON_VERSION_FILE).exists():
        files.append(cwd / PYTHON_VERSION_FILE)
    for path in files:
        if not path.is_file():  # MLflow's copy would fail half-way and only warn
            raise NotMirroredError(f"{path}: not a regular file")
    return files


# -- requirements (mlflow.utils.environment._process_pip_requirements) ------------------------


def _requirement_lines(lines: Sequence[str]) -> list[str]:
    """mlflow.utils.requirements_utils._parse_requirements for a list of strings: stripped,
    inline comments cut, continued lines joined, comments and blank lines dropped."""
    if lines is None or isinstance(lines, str) or not all(isinstance(x, str) for x in lines):
        raise NotMirroredError(
            "pip_requirements: only a list of requirement strings is mirrored (None makes "
            "MLflow infer them, a string names a file)"
        )
    stripped = []
    for raw in lines:
        line = raw.strip()
        stripped.append(line[: line.find(" #")].rstrip() if " #" in line else line)
    joined, pending = [], []
    for line in stripped:
        if line.endswith("\\"):
            pending.append(line.rstrip("\\"))
        else:
            pending.append(line)
            joined.append("".join(pending))
            pending.clear()
    if pending:
        joined.append("".join(pending))
    return [line for line in joined if line and not line.startswith("#")]


def pip_requirements_lines(requirements: Sequence[str], version: str) -> list[str]:
    """requirements.txt's lines: `mlflow==VERSION` first unless an mlflow requirement is given,
    each requirement as packaging's Requirement prints it (markers in double quotes)."""
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.version import Version

    lines = _requirement_lines(requirements)
    parsed = []
    for line in lines:
        if line.startswith("-"):  # -r/-c files, pip options: not mirrored
            raise NotMirroredError(f"pip requirement {line!r}: options and files are not mirrored")
        try:
            parsed.append(Requirement(line))
        except InvalidRequirement:  # a path or URL, kept as written by MLflow: not mirrored
            raise NotMirroredError(f"pip requirement {line!r}: not a PEP 508 requirement") from None
    if not any(r.name.lower() in MLFLOW_NAMES for r in parsed):
        if Version(version).is_devrelease:
            raise NotMirroredError(f"mlflow {version} is a dev release: pinned otherwise")
        parsed.insert(0, Requirement(f"mlflow=={version}"))
    keys = [(r.name, str(r.marker) if r.marker else "") for r in parsed]
    if len(set(keys)) != len(keys):  # MLflow merges them (and may run pip to check)
        raise NotMirroredError(f"pip_requirements: a package is listed twice ({lines})")
    if any(r.name == "databricks-connect" for r in parsed):
        raise NotMirroredError("pip_requirements: databricks-connect changes the list")
    return [str(r) for r in parsed]


def conda_env(requirements: list[str]) -> dict[str, Any]:
    """mlflow.utils.environment._mlflow_conda_env(additional_pip_deps=..., install_mlflow=False)."""
    pip = package_version("pip")
    return {
        "name": "mlflow-env",
        "channels": ["conda-forge"],
        "dependencies": [
            f"python={python_version()}",
            f"pip<={pip}" if pip is not None else "pip",
            {"pip": list(requirements)},
        ],
    }


def python_env() -> dict[str, Any]:
    """_PythonEnv.current().to_dict() without its empty entries."""
    build = []
    for package in ("pip", "setuptools", "wheel"):
        version = package_version(package)
        build.append(f"{package}=={version}" if version else package)
    env = {
        "python": python_version(),
        "build_dependencies": build,
        "dependencies": [f"-r {REQUIREMENTS_FILE}"],
    }
    return {k: v for k, v in env.items() if v}


# -- the input example (mlflow.models.utils._Example, mlflow.utils.proto_json_utils) ----------


class _NumpyEncoder(json.JSONEncoder):
    """mlflow.utils.proto_json_utils.NumpyEncoder."""

    # Branch for branch MLflow's, so that any value dumps as MLflow dumps it.
    def try_convert(self, o: Any) -> tuple[Any, bool]:  # noqa: PLR0911
        import numpy as np

        # A pd.Timestamp exists only if pandas was imported (train's example does not need it).
        pd = sys.modules.get("pandas")
        times = (datetime.date, datetime.datetime, datetime.time)
        if pd is not None:
            times = (pd.Timestamp, *times)

        def encode_binary(x: bytes) -> str:
            return base64.encodebytes(x).decode("ascii")

        if isinstance(o, np.ndarray):
            if o.dtype == object:
                return [self.try_convert(x)[0] for x in o.tolist()], True
            elif o.dtype == np.bytes_:
                return np.vectorize(encode_binary)(o), True
            else:
                return o.tolist(), True
        if isinstance(o, np.generic):
            return o.item(), True
        if isinstance(o, bytes | bytearray):
            return encode_binary(o), True
        if isinstance(o, np.datetime64):
            return np.datetime_as_string(o), True
        if isinstance(o, times):
            return o.isoformat(), True
        # MLflow dumps pydantic models too; none can exist unless pydantic was imported.
        pydantic = sys.modules.get("pydantic")
        if pydantic is not None and isinstance(o, pydantic.BaseModel):
            return o.model_dump(), True
        return o, False

    def default(self, o: Any) -> Any:
        result, converted = self.try_convert(o)
        return result if converted else super().default(o)


def _split_of_columns(example: Mapping[str, Any]) -> dict[str, Any]:
    """What _Example makes of `pd.DataFrame(example)` (`where(notnull, None)`, then
    `to_dict(orient="split")` without the index) for columns of numpy ints, floats and
    datetimes: the form train hands the example in, without importing pandas for it. Other
    columns are not mirrored. pandas keeps a float column's NaN and a time column's NaT
    through `where`, and MLflow's encoder writes them as `NaN` and `"NaT"`: so do these."""
    import numpy as np

    cells = []
    for name, column in example.items():
        values = np.asarray(column)
        if not isinstance(name, str) or values.ndim != 1:
            raise NotMirroredError(f"input_example: column {name!r} is not a named 1-d array")
        if values.dtype.kind == "M":
            stamps = values.astype("datetime64[us]")
            if not np.array_equal(stamps, values, equal_nan=True):
                raise NotMirroredError(f"input_example: column {name!r} is finer than microseconds")
            # pd.Timestamp.isoformat of a microsecond time is datetime's.
            cells.append(["NaT" if np.isnat(v) else v.item().isoformat() for v in stamps])
        elif values.dtype.kind in "fiub":  # NaN stays NaN, as pandas keeps it
            cells.append(values.tolist())
        else:
            raise NotMirroredError(f"input_example: column {name!r} of {values.dtype}")
    if len({len(c) for c in cells}) > 1:
        raise NotMirroredError("input_example: columns of different lengths")
    return {"columns": list(example), "data": [list(row) for row in zip(*cells, strict=True)]}


def mlflow_example(example: Any) -> Any:
    """The example as MLflow's save_model takes a table: a mapping of columns (a dict of
    tensors, for MLflow) as its DataFrame; a DataFrame as it is."""
    if not isinstance(example, Mapping):
        return example
    import pandas as pd

    return pd.DataFrame(example)


def example_files(example: Any) -> tuple[str, str, dict[str, str]]:
    """(input_example.json, serving_input_example.json, saved_input_example_info) for a
    DataFrame example, or a mapping of column name to numpy array (what `pd.DataFrame` of it
    gives), as _Example makes them (split orient, no index, nulls as null)."""
    if isinstance(example, Mapping):
        split = _split_of_columns(example)
    else:
        import pandas as pd

        if not isinstance(example, pd.DataFrame):
            raise NotMirroredError(
                "input_example: only a pandas DataFrame or a mapping of columns is mirrored, "
                f"got {type(example).__name__}"
            )
        frame = copy.deepcopy(example)
        split = frame.where(frame.notnull(), None).to_dict(orient="split")
        del split["index"]
        if all(frame.columns == range(len(frame.columns))):
            del split["columns"]
    info = {
        "artifact_path": EXAMPLE_FILE,
        "type": "dataframe",
        "pandas_orient": "split" if "columns" in split else "values",
        "serving_input_path": SERVING_FILE,
    }
    return (
        json.dumps(split, cls=_NumpyEncoder),
        json.dumps({"dataframe_split": split}, cls=_NumpyEncoder, indent=2),
        info,
    )


def signature_columns(signature: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The input columns of a signature in ModelSignature.to_dict() form, refused unless each
    is a named column of a type whose check is mirrored and each schema is written as
    Schema.to_json writes it (so that MLmodel holds what MLflow would write)."""
    if not isinstance(signature, Mapping) or set(signature) != {"inputs", "outputs", "params"}:
        raise NotMirroredError(
            "signature: expected ModelSignature.to_dict() (inputs, outputs, params)"
        )
    if signature["params"] is not None:
        raise NotMirroredError("signature: a params schema is not mirrored")
    outputs = signature["outputs"]
    if outputs is not None and (
        not isinstance(outputs, str) or json.dumps(json.loads(outputs)) != outputs
    ):
        raise NotMirroredError("signature: outputs are not written as MLflow's Schema.to_json")
    inputs = signature["inputs"]
    columns = json.loads(inputs) if isinstance(inputs, str) else None
    if not isinstance(columns, list) or not columns:
        raise NotMirroredError("signature: only a column-based input schema is mirrored")
    for column in columns:
        if not isinstance(column, dict) or set(column) != {"type", "name", "required"}:
            raise NotMirroredError(f"signature: input {column!r} is not a named column")
        if column["type"] not in CHECKED_TYPES or not isinstance(column["required"], bool):
            raise NotMirroredError(f"signature: column type {column['type']!r} is not mirrored")
    # ColSpec.to_dict's key order, as Schema.to_json writes it.
    as_mlflow = [{"type": c["type"], "name": c["name"], "required": c["required"]} for c in columns]
    if json.dumps(as_mlflow) != inputs:
        raise NotMirroredError("signature: inputs are not written as MLflow's Schema.to_json")
    if len({c["name"] for c in columns}) != len(columns):
        raise NotMirroredError("signature: a column is named twice")
    return columns


def check_example(example: Any, columns: list[dict[str, Any]]) -> None:
    """The example against the signature's columns where MLflow's check
    (_enforce_named_col_schema) passes it unchanged: every required column present, each
    schema column of its type's dtype (datetime: any precision, no time zone). MLflow's upcasts
    and conversions are not mirrored: such an example is refused, not guessed."""
    import numpy as np

    names = list(example) if isinstance(example, Mapping) else list(example.columns)
    if len(set(names)) != len(names):
        raise NotMirroredError("input_example: a column name appears twice")
    for column in columns:
        name = column["name"]
        if name not in names:
            if column["required"]:
                raise NotMirroredError(f"input_example: required column {name!r} missing")
            continue
        dtype, expected = example[name].dtype, CHECKED_TYPES[column["type"]]
        if expected == "datetime64":
            ok = isinstance(dtype, np.dtype) and dtype.kind == "M"
        else:
            ok = isinstance(dtype, np.dtype) and dtype.name == expected
        if not ok:
            raise NotMirroredError(
                f"input_example: column {name!r} is {dtype}; only {expected} (numpy) is "
                f"mirrored for {column['type']!r}"
            )


# -- the python model file (models from code) -------------------------------------------------


def _check_model_imports(tree: ast.Module, path: Path) -> None:
    """MLflow runs the file, so a module-level import that is not installed fails its save:
    each top-level package is looked up (find_spec of a top-level name imports nothing)."""
    for node in tree.body:
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
        if isinstance(node, ast.ImportFrom):
            if node.level:  # the file runs as a lone module: MLflow's load would fail
                raise NotMirroredError(f"{path}: a relative import")
            names = [node.module or ""]
        for name in names:
            top = name.split(".")[0]
            if top != "__future__" and importlib.util.find_spec(top) is None:
                raise NotMirroredError(f"{path}: imports {name}, which is not installed")


def check_model_file(path: Path) -> None:
    """The model file must have the one shape whose effect on save_model is mirrored: one
    PythonModel subclass, predict(self, context, model_input: pd.DataFrame, ...) (MLflow infers
    no signature from that hint), no predict_stream (MLmodel: streamable false), no retriever
    schema (MLmodel metadata), ending with mlflow.models.set_model(TheClass()). MLflow executes
    the file; this only reads it, so any other shape is refused."""
    try:
        tree = ast.parse(path.read_text(), filename=str(path))
    except (OSError, SyntaxError, ValueError) as exc:
        raise NotMirroredError(f"{path}: not a readable Python file ({exc})") from None
    text = ast.unparse(tree)
    for word in (
        "set_retriever_schema",
        "predict_stream",
        "ChatModel",
        "ChatAgent",
        "ResponsesAgent",
        "set_model_config",
        "TypeFromExample",
    ):
        if word in text:
            raise NotMirroredError(f"{path}: uses {word}, which MLflow's save_model acts on")
    _check_model_imports(tree, path)
    imports_pandas_as_pd = any(
        isinstance(node, ast.Import)
        and any(a.name == "pandas" and a.asname == "pd" for a in node.names)
        for node in tree.body
    )
    classes = [
        node
        for node in tree.body
        if isinstance(node, ast.ClassDef)
        and [ast.unparse(b) for b in node.bases] in (["PythonModel"], ["mlflow.pyfunc.PythonModel"])
    ]
    if len(classes) != 1 or len([n for n in tree.body if isinstance(n, ast.ClassDef)]) != 1:
        raise NotMirroredError(f"{path}: expected exactly one class, a PythonModel subclass")
    methods = {n.name: n for n in classes[0].body if isinstance(n, ast.FunctionDef)}
    predict = methods.get("predict")
    if predict is None:
        raise NotMirroredError(f"{path}: {classes[0].name} has no predict method")
    names = [a.arg for a in predict.args.args]
    if names[:3] != ["self", "context", "model_input"]:
        raise NotMirroredError(f"{path}: predict(self, context, model_input, ...) expected")
    annotation = predict.args.args[2].annotation
    if annotation is None or ast.unparse(annotation) != "pd.DataFrame" or not imports_pandas_as_pd:
        raise NotMirroredError(
            f"{path}: predict's model_input must be annotated pd.DataFrame (other type hints "
            "make MLflow infer a signature)"
        )
    last = tree.body[-1] if tree.body else None
    if not (
        isinstance(last, ast.Expr)
        and isinstance(last.value, ast.Call)
        and ast.unparse(last.value.func) == "mlflow.models.set_model"
        and [ast.unparse(a) for a in last.value.args] == [f"{classes[0].name}()"]
    ):
        raise NotMirroredError(
            f"{path}: must end with mlflow.models.set_model({classes[0].name}())"
        )


# -- the folder -------------------------------------------------------------------------------


def _artifact_sources(artifacts: Mapping[str, Path | str]) -> dict[str, tuple[str, Path]]:
    """name -> (the uri MLmodel records, the file) for local files MLflow copies to
    artifacts/<file name> under their own name (no renaming for collisions, no directories)."""
    sources: dict[str, tuple[str, Path]] = {}
    taken: dict[str, str] = {}
    for name, value in artifacts.items():
        uri = str(value)
        if not isinstance(name, str) or uri.startswith("hf:/"):
            raise NotMirroredError(f"artifact {name!r}: only local files are mirrored")
        if not os.path.dirname(uri) or any(c in uri for c in "%#?:\\"):
            raise NotMirroredError(f"artifact {name!r}: {uri!r} is not a plain path with a folder")
        if not os.path.isfile(uri):
            raise NotMirroredError(f"artifact {name!r}: {uri} is not a file")
        key = os.path.basename(uri).casefold()
        if key in taken:  # MLflow shares one copy, or renames both: not mirrored
            raise NotMirroredError(f"artifacts {taken[key]!r} and {name!r}: same file name")
        taken[key] = name
        sources[name] = (uri, Path(uri))
    return sources


def _copy_targets(code_paths: Sequence[Path | str], model_file: Path) -> list[tuple[Path, str]]:
    """(source, path in the folder) of the model file and each code path, as
    _copy_file_or_tree names them (the base name of the absolute path)."""
    targets = [(model_file, model_file.name)]
    for code_path in code_paths:
        source = Path(os.path.abspath(code_path))
        if not source.exists():
            raise NotMirroredError(f"code path {code_path}: not found")
        targets.append((source, f"{CODE_DIR}/{source.name}"))
    names = [t.casefold() for _, t in targets]
    if len(set(names)) != len(names) or model_file.name in RESERVED:
        raise NotMirroredError(
            f"python_model and code paths {[str(s) for s, _ in targets]}: two share a name, "
            "or the model file is named like a file MLflow writes"
        )
    return targets


def _total_size(path: Path) -> int:
    """mlflow.utils.file_utils.get_total_file_size."""
    return sum(
        os.path.getsize(os.path.join(folder, name))
        for folder, _, files in os.walk(path)
        for name in files
    )


def save_pyfunc_folder(
    path: Path | str,
    *,
    python_model: Path | str,
    artifacts: Mapping[str, Path | str],
    code_paths: Sequence[Path | str] | None,
    pip_requirements: Sequence[str],
    signature: Mapping[str, Any],
    input_example: Any,
) -> None:
    """Write what mlflow.pyfunc.save_model(path, python_model=<file>, artifacts=...,
    code_paths=..., pip_requirements=..., signature=<signature as to_dict()>,
    input_example=<DataFrame>) writes, without MLflow. NotMirroredError (nothing written) when
    MLflow would write anything else for these inputs."""
    import cloudpickle
    import yaml

    # Every check first: a refusal leaves the folder untouched for MLflow's save_model.
    created = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
    path = Path(path)
    _check_environment()
    version = mlflow_version()
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise NotMirroredError(f"{path}: already exists and is not empty")
    model_file = Path(python_model).resolve()
    if not model_file.is_file():
        raise NotMirroredError(f"python_model {python_model}: not a file")
    check_model_file(model_file)
    targets = _copy_targets(code_paths or [], model_file)
    sources = _artifact_sources(artifacts or {})
    example_json, serving_json, example_info = example_files(input_example)
    check_example(input_example, signature_columns(signature))
    requirements = pip_requirements_lines(pip_requirements, version)
    uv_project = uv_files(Path.cwd())
    conda = conda_env(requirements)
    env = python_env()

    # In MLflow's order: model_size_bytes counts what is there before MLmodel and code/.
    path.mkdir(parents=True, exist_ok=True)
    shutil.copy(targets[0][0], path / targets[0][1])
    (path / EXAMPLE_FILE).write_text(example_json)
    (path / SERVING_FILE).write_text(serving_json)
    flavor: dict[str, Any] = {"cloudpickle_version": cloudpickle.__version__}
    if sources:
        (path / ARTIFACTS_DIR).mkdir()
        flavor["artifacts"] = {}
        for name, (uri, source) in sources.items():
            relative = f"{ARTIFACTS_DIR}/{source.name}"
            shutil.copy2(source, path / relative)
            flavor["artifacts"][name] = {"path": relative, "uri": uri}
    size = _total_size(path)
    for source, relative in targets[1:]:
        if source.is_file():
            (path / CODE_DIR).mkdir(exist_ok=True)
            shutil.copy(source, path / relative)
        else:
            shutil.copytree(source, path / relative, ignore=shutil.ignore_patterns("__pycache__"))
    flavor |= {
        "loader_module": "mlflow.pyfunc.loaders.code_model",
        "python_version": python_version(),
        "env": {"conda": CONDA_FILE, "virtualenv": PYTHON_ENV_FILE},
        "model_code_path": str(model_file),
        "streamable": False,
        "code": CODE_DIR if code_paths is not None else None,
    }
    mlmodel = {
        "utc_time_created": str(created),
        "flavors": {"python_function": flavor},
        "saved_input_example_info": example_info,
        "model_uuid": uuid.uuid4().hex,
        "mlflow_version": version,
        "prompts": None,
        "model_id": None,
        "signature": dict(signature),
        "is_signature_from_type_hint": False,
        "type_hint_from_example": False,
        "model_size_bytes": size,
    }
    if size == 0:  # MLflow sets model_size_bytes only when it is non-zero
        del mlmodel["model_size_bytes"]
    with open(path / MLMODEL, "w") as out:
        yaml.safe_dump(mlmodel, stream=out, default_flow_style=False)
    with open(path / CONDA_FILE, "w") as out:
        yaml.safe_dump(conda, stream=out, default_flow_style=False)
    (path / REQUIREMENTS_FILE).write_text("\n".join(requirements), encoding="utf-8")
    for source in uv_project:
        shutil.copy2(source, path / source.name)
    with open(path / PYTHON_ENV_FILE, "w") as out:
        yaml.safe_dump(env, out, sort_keys=False, default_flow_style=False)
