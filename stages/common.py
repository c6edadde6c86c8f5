"""What every stage does alike: read and validate params, write outputs atomically, hash files.

Kept free of heavy imports (no pandas, no mlflow): every stage process pays for what is
imported here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import hashlib
import json
import logging
import math
import os
import re
import shutil
import sys
import tempfile
import types
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml

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


class _Invalid(ValueError):
    """A value that does not fit its declared param type; the message says what was expected."""


def _month(value: str) -> str:
    if not _MONTH_RE.match(value):
        raise _Invalid("expected a month as YYYY-MM (01-12)")
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


Split = Literal["train", "validation", "test"]
SPLITS: tuple[Split, ...] = ("train", "validation", "test")

# ----------------------------------------------------------------------------- params schema
# The sections are frozen dataclasses checked by the small schema below, not pydantic models:
# every stage process validates its params, and importing pydantic and building its models cost
# each one about 0.25 s of a cold `dvc repro`'s ten (benchmarks/results/FINDINGS.md, issue 13).


@dataclasses.dataclass(frozen=True)
class Rule:
    """What one param must be beyond its type: bounds, a pattern, a minimum length."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    pattern: str | None = None
    min_length: int | None = None

    def problem(self, value: Any) -> str | None:
        if self.ge is not None and value < self.ge:
            return f"expected a value >= {self.ge:g}"
        if self.gt is not None and value <= self.gt:
            return f"expected a value > {self.gt:g}"
        if self.le is not None and value > self.le:
            return f"expected a value <= {self.le:g}"
        if self.pattern is not None and not re.search(self.pattern, value):
            return f"expected a string matching {self.pattern!r}"
        if self.min_length is not None and len(value) < self.min_length:
            return f"expected a length of at least {self.min_length}"
        return None


def param(**rule: Any) -> Any:
    """A required param of a section, with its Rule (`seed: int = param(ge=0)`)."""
    return dataclasses.field(metadata={"rule": Rule(**rule)})


# A str checked by `_month` (Annotated metadata: the checks run after the type's).
Month = Annotated[str, _month]


def _typed(kind: Any, value: Any, key: str, problems: list[str]) -> Any:
    """`value` as the declared type `kind`; a problem (key: what was expected, got what) is
    appended for every part that does not fit, and None returned in its place."""
    try:
        return _converted(kind, value, key, problems)
    except _Invalid as exc:
        problems.append(f"{key}: {exc} (got {value!r})")
        return None


def _converted(kind: Any, value: Any, key: str, problems: list[str]) -> Any:
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):  # `X | None`: the only unions declared
        if value is None and type(None) in args:
            return None
        (kind,) = (a for a in args if a is not type(None))
        return _converted(kind, value, key, problems)
    if origin in _SHAPES:
        return _SHAPES[origin](args, value, key, problems)
    if isinstance(kind, type) and issubclass(kind, Section):
        return kind.from_raw(value, key, problems)
    return _scalar(kind, value)


def _checked(args: tuple, value: Any, key: str, problems: list[str]) -> Any:
    # Annotated[type, check, ...]: the checks run on the value of the type.
    value = _converted(args[0], value, key, problems)
    for check in args[1:]:
        value = check(value)
    return value


def _choice(args: tuple, value: Any, key: str, problems: list[str]) -> Any:
    if not any(type(value) is type(a) and value == a for a in args):
        raise _Invalid("expected one of " + ", ".join(map(repr, args)))
    return value


def _mapping(args: tuple, value: Any, key: str, problems: list[str]) -> Any:
    if not isinstance(value, dict):
        raise _Invalid("expected a mapping")
    return {
        _typed(args[0], k, f"{key}.{k}", problems): _typed(args[1], v, f"{key}.{k}", problems)
        for k, v in value.items()
    }


def _items(args: tuple, value: Any, key: str, problems: list[str]) -> Any:
    if not isinstance(value, list):
        raise _Invalid("expected a list")
    return [_typed(args[0], v, f"{key}[{i}]", problems) for i, v in enumerate(value)]


_SHAPES: dict[Any, Callable[[tuple, Any, str, list[str]], Any]] = {
    Annotated: _checked,
    Literal: _choice,
    dict: _mapping,
    list: _items,
}


def _scalar(kind: type, value: Any) -> Any:
    # YAML's types as written: no "3" for 3 and no true for 1; 3.0 is an integer, 1 a number.
    if kind is bool:
        if not isinstance(value, bool):
            raise _Invalid("expected true or false")
        return value
    if kind is str:
        if not isinstance(value, str):
            raise _Invalid("expected a string")
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Invalid("expected an integer" if kind is int else "expected a number")
    if not math.isfinite(value):
        raise _Invalid("expected a finite number")
    if kind is int:
        if not float(value).is_integer():
            raise _Invalid("expected an integer")
        return int(value)
    return float(value)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Section:
    """A params section: built only through `from_raw`, which refuses unknown keys (`-S
    model.alhpa=0.05` must not silently do nothing), missing ones, wrong types, inf and nan
    (`model.alpha=1e309` fails here, not after the fit) and values outside their Rule."""

    @classmethod
    @functools.cache
    def param_types(cls) -> dict[str, Any]:
        """Each param's declared type, by name, in the order of the section."""
        hints = typing.get_type_hints(cls, include_extras=True)
        return {f.name: hints[f.name] for f in dataclasses.fields(cls)}

    @classmethod
    def from_raw(cls: type[S], raw: Any, key: str, problems: list[str]) -> S | None:
        """The section checked from `raw` (YAML's values); None, with problems appended, if not."""
        if not isinstance(raw, dict):
            problems.append(f"{key}: expected a mapping (got {raw!r})")
            return None
        found, kinds = len(problems), cls.param_types()
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            where = f"{key}.{f.name}"
            if f.name not in raw:
                if f.default is dataclasses.MISSING:
                    problems.append(f"{where}: required")
                continue
            value = _typed(kinds[f.name], raw[f.name], where, problems)
            rule = f.metadata.get("rule")
            message = rule.problem(value) if rule and value is not None else None
            if message:
                problems.append(f"{where}: {message} (got {raw[f.name]!r})")
            values[f.name] = value
        problems.extend(
            f"{key}.{k}: not a param here (got {raw[k]!r})" for k in raw if k not in kinds
        )
        if len(problems) > found:
            return None
        section = cls(**values)
        message = section.problem()
        if message:
            problems.append(f"{key}: {message}")
            return None
        return section

    def problem(self) -> str | None:
        """What is wrong across params of the section (a range out of order), if anything."""
        return None

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


S = TypeVar("S", bound=Section)


@dataclasses.dataclass(frozen=True, kw_only=True)
class BaseParams(Section):
    seed: int = param(ge=0)
    threads: int = param(ge=1, le=256)


@dataclasses.dataclass(frozen=True, kw_only=True)
class DataParams(Section):
    colour: Literal["green", "yellow"]
    months: dict[Month, Split]
    trips_url: str
    zones_url: str

    def problem(self) -> str | None:
        missing = [s for s in SPLITS if s not in self.months.values()]
        return f"months: no month is assigned to {', '.join(missing)}" if missing else None

    def months_of(self, split: Split) -> list[str]:
        return sorted(m for m, s in self.months.items() if s == split)


@dataclasses.dataclass(frozen=True, kw_only=True)
class PrepareParams(Section):
    min_duration_minutes: float = param(ge=0)
    max_duration_minutes: float = param(gt=0)
    max_distance_miles: float = param(gt=0)

    def problem(self) -> str | None:
        if self.min_duration_minutes >= self.max_duration_minutes:
            return "min_duration_minutes must be below max_duration_minutes"
        return None


@dataclasses.dataclass(frozen=True, kw_only=True)
class FeaturesParams(Section):
    min_pair_count: int = param(ge=1)
    clip_distance_miles: float = param(gt=0)


# none | local | a Dask scheduler address: tcp:// or tls://, a host, a port.
CLUSTER_PATTERN = r"^(none|local|(tcp|tls)://[A-Za-z0-9._\[\]:-]+:[0-9]{1,5})$"


@dataclasses.dataclass(frozen=True, kw_only=True)
class XGBoostParams(Section):
    n_rounds: int = param(ge=1)
    learning_rate: float = param(gt=0, le=1)
    max_depth: int = param(ge=1, le=64)
    min_child_weight: float = param(ge=0)
    subsample: float = param(gt=0, le=1)
    colsample_bytree: float = param(gt=0, le=1)
    max_cat_to_onehot: int = param(ge=1)
    reg_lambda: float = param(ge=0)  # L2 on leaf weights (XGBoost's `lambda`)
    gamma: float = param(ge=0)  # the loss reduction a split must make
    # Where XGBoost trains: `none` in this process; `local` on a Dask LocalCluster of
    # `workers` processes started by train; or a running Dask scheduler's address
    # (tcp://host:8786), whose workers read the feature file as Dask partitions.
    cluster: str = param(pattern=CLUSTER_PATTERN)
    workers: int = param(ge=1, le=256)  # partitions of the data; processes for `local`


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelParams(Section):
    registered_name: str = param(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    type: Literal["lasso", "ridge", "xgboost"]
    alpha: float = param(ge=0)
    max_iter: int = param(ge=1)
    xgboost: XGBoostParams


@dataclasses.dataclass(frozen=True, kw_only=True)
class EvaluateParams(Section):
    plot_every_nth: int = param(ge=1)
    distance_buckets_miles: list[float] = param(min_length=2)

    def problem(self) -> str | None:
        edges = self.distance_buckets_miles
        if any(b <= a for a, b in zip(edges, edges[1:], strict=False)):
            return "distance_buckets_miles must be strictly increasing"
        return None


@dataclasses.dataclass(frozen=True, kw_only=True)
class PromoteParams(Section):
    # A challenger becomes champion only when its validation RMSE is lower by at least this.
    min_improvement_minutes: float = param(ge=0)


@dataclasses.dataclass(frozen=True, kw_only=True)
class SearchRange(Section):
    low: float
    high: float
    log: bool = False


@dataclasses.dataclass(frozen=True, kw_only=True)
class PrunerParams(Section):
    startup_trials: int = param(ge=0)
    warmup_rounds: int = param(ge=0)
    interval_rounds: int = param(ge=1)


@dataclasses.dataclass(frozen=True, kw_only=True)
class TuneParams(Section):
    """The hyperparameter search (flows.tune): read by no stage, validated with the file so an
    override of any section sees it. Only the shape is checked here; tuning.space checks the
    ranges against the model section (a param that exists, low < high, within its bounds)."""

    seed: int = param(ge=0)
    metric: Literal["validation_rmse"]
    pruner: PrunerParams
    lasso: dict[str, SearchRange] | None = None
    ridge: dict[str, SearchRange] | None = None
    xgboost: dict[str, SearchRange] | None = None


@dataclasses.dataclass(frozen=True, kw_only=True)
class RetrainParams(Section):
    """The months over time (flows.retrain, flows.backtest; their window rule: timeline.window):
    read by no stage, validated with the file like `tune`."""

    train_months: int = param(ge=1, le=24)
    cron: str = param(min_length=9)  # five cron fields, at least "* * * * *"


SECTIONS: dict[str, type[Section]] = {
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


def parse_section(name: str, raw: Any, path: Path | str = PARAMS_FILE) -> Any:
    """Validate one params section; the error names every offending key and what was expected."""
    if name not in SECTIONS:
        raise BadInputError(f"{path}: unknown params section {name!r}")
    if raw is None:
        raise BadInputError(f"{path}: section {name!r} is missing")
    problems: list[str] = []
    section = SECTIONS[name].from_raw(raw, name, problems)
    if section is None:
        raise BadInputError(f"{path}: invalid params:\n  " + "\n  ".join(problems))
    return section


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
