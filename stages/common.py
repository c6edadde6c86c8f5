"""What every stage does alike: read and validate params, write outputs atomically, hash files.

Kept free of heavy imports (no pandas, no mlflow): every stage process pays for what is
imported here.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

PARAMS_FILE = Path("params.yaml")
# Exit status of a stage that refused its input (sysexits EX_DATAERR). The Prefect flow
# reads it to fail at once instead of retrying.
EXIT_BAD_INPUT = 65
# Exit status of a stage that failed for a reason worth retrying (sysexits EX_TEMPFAIL).
EXIT_TRANSIENT = 75
# Exit status of a stage the machine refused: a read-only file, a full disk (EX_IOERR).
EXIT_IO = 74
# Trips per chunk wherever a stage works through a table piece by piece (prepare's batches,
# encode, the linear fit's moments and predictions): a chunk's temporaries stay near 4 MiB,
# under glibc's 32 MiB mmap threshold, so the heap reuses them chunk after chunk instead of
# faulting in fresh pages for n-long ones (benchmarks/results/FINDINGS.md, issue 13 target 4).
CHUNK_ROWS = 1 << 19
# The first words of the one line each of those failures prints (the flow reads them).
BAD_INPUT_PREFIX = "BAD INPUT in stage"
TRANSIENT_PREFIX = "TRANSIENT FAILURE in stage"
IO_PREFIX = "CANNOT WRITE in stage"

log = logging.getLogger("stages")


class BadInputError(ValueError):
    """Input data or params that cannot be used; the message names the file, column or param."""


class TransientError(RuntimeError):
    """A failure that may pass: an unreachable tracking store or download source."""


class EnvironmentRefusal(RuntimeError):
    """The machine refuses what the stage must do: a read-only store, a full disk."""


# --------------------------------------------------------------------------- params schema

_MONTH_RE = re.compile(r"^(\d{4})-(0[1-9]|1[0-2])$")


def _month(value: str) -> str:
    if not _MONTH_RE.match(value):
        raise ValueError("expected a month as YYYY-MM (01-12)")
    return value


def check_month(value: str) -> str:
    """A month string as the TLC names its files (YYYY-MM), or BadInputError."""
    try:
        return _month(value)
    except ValueError as exc:
        raise BadInputError(f"data.months: {exc}, got {value!r}") from None


# DVC names the stage it runs in this variable: `prepare@2025-01` for a foreach item.
STAGE_ENV = "DVC_STAGE"


def stage_item(given: str | None) -> str:
    """The foreach item (`data.months` key) of the stage DVC runs, or `given` when run by hand.

    dvc.yaml never interpolates a param into a `cmd`: DVC runs `cmd` through a shell, and a
    param value there (`-S "data.colour=green$(...)"`) would be executed before any stage
    could validate it. A stage learns its item from DVC's own stage name instead.
    """
    under_dvc = os.environ.get(STAGE_ENV, "").rpartition(":")[2]
    item = under_dvc.partition("@")[2] if "@" in under_dvc else None
    if given and item and given != item:
        raise BadInputError(f"{given!r} (command line) differs from DVC's stage {under_dvc!r}")
    if not (given or item):
        raise BadInputError(f"no item: pass it on the command line or run under DVC ({STAGE_ENV})")
    return given or item or ""


def fill_path(template: str, **fields: str) -> Path:
    """A declared path from dvc.yaml's `{field}` template and validated param values."""
    return Path(template.format(**fields))


Month = Annotated[str, AfterValidator(_month)]
Split = Literal["train", "validation", "test"]
SPLITS: tuple[Split, ...] = ("train", "validation", "test")


class _Section(BaseModel):
    # Unknown keys are errors: `-S model.alhpa=0.05` must not silently do nothing.
    # inf and nan are errors too: `model.alpha=1e309` must fail here, not after the fit.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class BaseParams(_Section):
    seed: int = Field(ge=0)
    threads: int = Field(ge=1, le=256)


class DataParams(_Section):
    colour: Literal["green", "yellow"]
    months: dict[Month, Split]
    trips_url: str
    zones_url: str

    @model_validator(mode="after")
    def _every_split_has_a_month(self) -> DataParams:
        missing = [s for s in SPLITS if s not in self.months.values()]
        if missing:
            raise ValueError(f"months: no month is assigned to {', '.join(missing)}")
        return self

    def months_of(self, split: Split) -> list[str]:
        return sorted(m for m, s in self.months.items() if s == split)


class PrepareParams(_Section):
    min_duration_minutes: float = Field(ge=0)
    max_duration_minutes: float = Field(gt=0)
    max_distance_miles: float = Field(gt=0)

    @model_validator(mode="after")
    def _range_is_ordered(self) -> PrepareParams:
        if self.min_duration_minutes >= self.max_duration_minutes:
            raise ValueError("min_duration_minutes must be below max_duration_minutes")
        return self


class FeaturesParams(_Section):
    min_pair_count: int = Field(ge=1)
    clip_distance_miles: float = Field(gt=0)


# none | local | a Dask scheduler address: tcp:// or tls://, a host, a port.
CLUSTER_PATTERN = r"^(none|local|(tcp|tls)://[A-Za-z0-9._\[\]:-]+:[0-9]{1,5})$"


class XGBoostParams(_Section):
    n_rounds: int = Field(ge=1)
    learning_rate: float = Field(gt=0, le=1)
    max_depth: int = Field(ge=1, le=64)
    min_child_weight: float = Field(ge=0)
    subsample: float = Field(gt=0, le=1)
    colsample_bytree: float = Field(gt=0, le=1)
    max_cat_to_onehot: int = Field(ge=1)
    reg_lambda: float = Field(ge=0)  # L2 on leaf weights (XGBoost's `lambda`)
    gamma: float = Field(ge=0)  # the loss reduction a split must make
    # Where XGBoost trains: `none` in this process; `local` on a Dask LocalCluster of
    # `workers` processes started by train; or a running Dask scheduler's address
    # (tcp://host:8786), whose workers read the feature file as Dask partitions.
    cluster: str = Field(pattern=CLUSTER_PATTERN)
    workers: int = Field(ge=1, le=256)  # partitions of the data; processes for `local`


class ModelParams(_Section):
    registered_name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    type: Literal["lasso", "ridge", "xgboost"]
    alpha: float = Field(ge=0)
    max_iter: int = Field(ge=1)
    xgboost: XGBoostParams


class EvaluateParams(_Section):
    plot_every_nth: int = Field(ge=1)
    distance_buckets_miles: list[float] = Field(min_length=2)

    @model_validator(mode="after")
    def _buckets_increase(self) -> EvaluateParams:
        edges = self.distance_buckets_miles
        if any(b <= a for a, b in zip(edges, edges[1:], strict=False)):
            raise ValueError("distance_buckets_miles must be strictly increasing")
        return self


class PromoteParams(_Section):
    # A challenger becomes champion only when its validation RMSE is lower by at least this.
    min_improvement_minutes: float = Field(ge=0)


class SearchRange(_Section):
    low: float
    high: float
    log: bool = False


class PrunerParams(_Section):
    startup_trials: int = Field(ge=0)
    warmup_rounds: int = Field(ge=0)
    interval_rounds: int = Field(ge=1)


class TuneParams(_Section):
    """The hyperparameter search (flows.tune): read by no stage, validated with the file so an
    override of any section sees it. Only the shape is checked here; tuning.space checks the
    ranges against the model section (a param that exists, low < high, within its bounds)."""

    seed: int = Field(ge=0)
    metric: Literal["validation_rmse"]
    pruner: PrunerParams
    lasso: dict[str, SearchRange] | None = None
    ridge: dict[str, SearchRange] | None = None
    xgboost: dict[str, SearchRange] | None = None


class RetrainParams(_Section):
    """The months over time (flows.retrain, flows.backtest; their window rule: timeline.window):
    read by no stage, validated with the file like `tune`."""

    train_months: int = Field(ge=1, le=24)
    cron: str = Field(min_length=9)  # five cron fields, at least "* * * * *"


SECTIONS: dict[str, type[_Section]] = {
    "base": BaseParams,
    "data": DataParams,
    "prepare": PrepareParams,
    "features": FeaturesParams,
    "model": ModelParams,
    "evaluate": EvaluateParams,
    "promote": PromoteParams,
    "tune": TuneParams,
    "retrain": RetrainParams,
}

S = TypeVar("S", bound=_Section)


def parse_section(name: str, raw: Any, path: Path | str = PARAMS_FILE) -> _Section:
    """Validate one params section; the error names every offending key and what was expected."""
    if name not in SECTIONS:
        raise BadInputError(f"{path}: unknown params section {name!r}")
    if raw is None:
        raise BadInputError(f"{path}: section {name!r} is missing")
    try:
        return SECTIONS[name].model_validate(raw)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            key = ".".join([name, *(str(p) for p in err["loc"])])
            got = "" if err["type"] == "missing" else f" (got {err['input']!r})"
            problems.append(f"{key}: {err['msg']}{got}")
        raise BadInputError(f"{path}: invalid params:\n  " + "\n  ".join(problems)) from None


def load_yaml(text: str) -> Any:
    """Safe YAML, through libyaml where PyYAML was built with it (dvc.lock: 60 ms -> 6 ms)."""
    return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def validate_params_text(text: str, name: str) -> dict[str, Any]:
    """Every section of a params file's text, validated; BadInputError names each bad key."""
    try:
        raw = load_yaml(text) or {}
    except yaml.YAMLError as exc:
        raise BadInputError(f"{name}: not YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise BadInputError(f"{name}: expected a mapping of sections, got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        raise BadInputError(f"{name}: unknown params section(s) {', '.join(map(repr, unknown))}")
    return {section: parse_section(section, raw.get(section), name) for section in SECTIONS}


def load_params(*sections: str, path: Path = PARAMS_FILE) -> dict[str, Any]:
    """Read params.yaml and validate just the sections a stage declares in dvc.yaml.

    Read with PyYAML rather than dvc.api: it is what `dvc exp run -S` edits, and importing dvc
    would cost each stage about a second.
    """
    try:
        raw = load_yaml(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise BadInputError(f"{path}: cannot read params: {exc}") from None
    return {name: parse_section(name, raw.get(name), path) for name in sections}


# --------------------------------------------------------------------------- files


@contextlib.contextmanager
def atomic_path(target: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside `target`; move it into place only if the block succeeds.

    DVC leaves partial files behind after a failed command, so no stage writes a declared
    output in place.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_json(path: Path | str, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: Path | str) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise BadInputError(f"{path}: not readable JSON: {exc}") from None


def process_identity(pid: int) -> str | None:
    """`<pid>-<start time>`: names a process uniquely across pid reuse; None if it is gone,
    a zombie included (it has exited: only its exit status waits for its parent, which for
    an orphan is an init that may take its time)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):  # zombie, dead
        return None
    return f"{pid}-{fields[19]}"


class StagedOutputs:
    """A stage's outputs, written to temporary files and moved into place together at the end.

    Temporary files live in `.dvc/tmp/staging/<pid>-<start>/`, outside every declared output
    folder (a half-written file inside `data/clean` would be an input of features), and a
    later stage removes the folders of processes that died. `commit()` moves all files into
    place or none: the files they replace are kept until `finish()`, so a failure while
    moving, or in a later step (registering the model), puts the previous outputs back.
    """

    def __init__(self, root: Path | None = None) -> None:
        root = root or Path.cwd()
        base = root / ".dvc" / "tmp" / "staging" if (root / ".dvc").is_dir() else root / ".staging"
        self._remove_orphans(base)
        self.dir = base / (process_identity(os.getpid()) or str(os.getpid()))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.files: dict[Path, Path] = {}
        self._moved: list[tuple[Path, Path | None]] = []

    @staticmethod
    def _remove_orphans(base: Path) -> None:
        if not base.is_dir():
            return
        for entry in base.iterdir():
            pid = entry.name.partition("-")[0]
            if pid.isdigit() and process_identity(int(pid)) != entry.name:
                shutil.rmtree(entry, ignore_errors=True)

    def path(self, target: Path | str) -> Path:
        """The temporary path to write `target` to."""
        target = Path(target)
        if target in self.files:
            return self.files[target]
        fd, tmp = tempfile.mkstemp(prefix=f"{target.name}.", suffix=".tmp", dir=self.dir)
        os.close(fd)
        self.files[target] = Path(tmp)
        return Path(tmp)

    def commit(self) -> None:
        """Move every staged file into place; on any failure, put everything back."""
        try:
            for i, (target, tmp) in enumerate(self.files.items()):
                target.parent.mkdir(parents=True, exist_ok=True)
                backup = None
                if target.exists() or target.is_symlink():
                    backup = self.dir / f"previous-{i}"
                    os.replace(target, backup)
                try:
                    _move(tmp, target)
                except BaseException:
                    if backup is not None:
                        os.replace(backup, target)
                    raise
                self._moved.append((target, backup))
        except BaseException:
            self.rollback()
            raise

    def rollback(self) -> None:
        """Undo commit(): the previous files back in place, new ones removed."""
        for target, backup in reversed(self._moved):
            if backup is not None:
                os.replace(backup, target)
            else:
                target.unlink(missing_ok=True)
        self._moved.clear()

    def finish(self) -> None:
        """Drop the previous files and whatever was staged but not committed."""
        self._moved.clear()
        self.files.clear()
        shutil.rmtree(self.dir, ignore_errors=True)

    def discard(self) -> None:
        self.rollback()
        self.finish()


def _move(tmp: Path, target: Path) -> None:
    try:
        os.replace(tmp, target)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        # Outputs on another file system than .dvc/tmp: copy beside the target, then rename.
        beside = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        try:
            shutil.copyfile(tmp, beside)
            os.replace(beside, target)
        finally:
            beside.unlink(missing_ok=True)


def file_md5(path: Path | str, chunk: int = 1 << 20) -> str:
    """The md5 DVC 3 records in dvc.lock for a file."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


# --------------------------------------------------------------------------- entry point


def run_stage(name: str, main: Callable[[list[str] | None], None]) -> None:
    """Run a stage's main(); every expected failure ends with one line and its exit status.

    65 bad input (not retried), 75 transient (retried by the flow), 74 the machine refused a
    write (a read-only file or store, a full disk: named, not retried).
    """
    name = os.environ.get(STAGE_ENV) or name  # DVC's address: prepare@2025-01, not prepare
    logging.basicConfig(
        level=os.environ.get("PIPELINE_LOG_LEVEL", "INFO"),
        format=f"%(asctime)s {name} %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    try:
        try:
            main(None)
        except BaseException:
            put_back_outputs(os.environ.get(STAGE_ENV, "").rpartition(":")[2])
            raise
    except BadInputError as exc:
        _fail(f"{BAD_INPUT_PREFIX} {name}: {exc}", EXIT_BAD_INPUT)
    except TransientError as exc:
        _fail(f"{TRANSIENT_PREFIX} {name}: {exc}", EXIT_TRANSIENT)
    except EnvironmentRefusal as exc:
        _fail(f"{IO_PREFIX} {name}: {exc}", EXIT_IO)
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        _fail(f"{IO_PREFIX} {name}: {where}{exc.strerror or exc}", EXIT_IO)
    exit_without_teardown()


def exit_without_teardown() -> None:
    """End a stage process that has finished its work now, without the interpreter's
    teardown: freeing every module and object of pandas, pyarrow and numpy took 0.2-0.3 s of
    each stage process's life, on DVC's clock (FINDINGS, issue 13 target 1).

    What an exit must still do is done first: the atexit handlers (logging's flush among
    them) and the standard streams. Every output was written and closed by then (atomic_path,
    StagedOutputs). Where something may still need the teardown, the process exits the usual
    way: a live thread (joined at a normal exit), a profiler or a tracer (pyinstrument and
    coverage write their reports at exit)."""
    import atexit
    import threading

    if threading.active_count() > 1 or sys.getprofile() is not None or sys.gettrace() is not None:
        return
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(0)


def dvc_cache_dir(root: Path) -> Path:
    """The DVC cache of the project at `root`, from its config files as DVC reads them
    (`.dvc/config.local` over `.dvc/config`; a relative `dir` is relative to `.dvc`), without
    importing DVC (a second for a stage)."""
    for name in ("config.local", "config"):
        path = root / ".dvc" / name
        text = path.read_text() if path.is_file() else ""
        section = re.search(r"^\[cache\]\s*$(.*?)(?=^\[|\Z)", text, re.M | re.S)
        found = section and re.search(r"^\s*dir\s*=\s*(.+?)\s*$", section.group(1), re.M)
        if found:
            return (root / ".dvc" / found.group(1)).resolve()
    return root / ".dvc" / "cache"


def put_back_outputs(stage: str, root: Path | None = None) -> list[str]:
    """A failed stage's declared outputs, as dvc.lock last recorded them, back from the DVC
    cache where they are missing; the paths put back.

    Outputs are not `persist`ent (DVC's run-cache needs that), so DVC deletes them before it
    runs the command: a stage that refuses its input, fails or is interrupted would otherwise
    leave the workspace without its last good files while dvc.lock still names them."""
    root = root or Path.cwd()
    lock = root / "dvc.lock"
    if not stage or not lock.is_file():
        return []
    try:
        entry = (load_yaml(lock.read_text()) or {}).get("stages", {}).get(stage) or {}
    except yaml.YAMLError:
        return []
    cache = dvc_cache_dir(root)
    restored = []
    for out in entry.get("outs") or []:
        target, md5 = root / out["path"], out.get("md5", "")
        source = cache / "files" / "md5" / md5[:2] / md5[2:]
        if target.exists() or not md5 or md5.endswith(".dir") or not source.is_file():
            continue
        with atomic_path(target) as tmp:
            shutil.copyfile(source, tmp)
        restored.append(out["path"])
    if restored:
        logging.getLogger("stages").warning(
            "put back the last good %s from the DVC cache (dvc.lock unchanged)", ", ".join(restored)
        )
    return restored


def _fail(line: str, status: int) -> None:
    print(line, file=sys.stderr)  # noqa: T201 - the one line a person reads
    sys.exit(status)
