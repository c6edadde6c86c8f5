"""Reverse lineage: which model versions, DVC experiments and predictions files used some bytes.

The question a team asks when a data bug is found in a file: which models must be retrained,
which promotion decisions re-made, which predictions re-scored? The walk goes forward through
the MLflow record (stage_runtime.record): the consumers of a file are the finished runs with an
`in/<path>` tag holding its md5, under any name (the bytes carry the bug, not the name: a
month scored from a downloaded copy, a model file read from the registry); their outputs'
consumers follow, and so on, each run and file once.

The record is per run, not per output: `features` reads every month and writes every split,
yet learns its vocabularies and the training table from the train months only
(stages/features.py). So a chain remembers the month it carries (the foreach item of the
first `ingest@<month>`/`prepare@<month>` run on it) and the split each run gave that month
(its `data.months.<month>` param). A chain whose month is a validation or test month stops at
`train`: the model's bytes do not depend on it. It still reaches `evaluate`, and a version
evaluated on a month is listed as such: a bug there invalidates its promotion decision.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lineage.trace import NotFoundError
from stage_runtime import record
from stages.common import file_md5

TRAINED, EVALUATED, MODEL, SCORED = "trained on", "evaluated on", "is its model", "scored"
# What to do about a use, strongest first: a version trained on the bytes is retrained.
STRENGTH = (TRAINED, MODEL, EVALUATED)
HELD_OUT = ("validation", "test")
MD5 = re.compile(r"[0-9a-f]{32}")


class UsageError(ValueError):
    """What was asked cannot name bytes (a folder)."""


@dataclass
class Use:
    """One model version, DVC experiment or predictions file whose lineage has the bytes."""

    target: str  # `nyc-taxi-trip-duration-minutes/3`, the experiment, the predictions path
    how: str  # `trained on`, `evaluated on (validation)`, `scored with v3 (trained on)`, ...
    chain: list[str]  # the stages between, then the target: ingest@2024-02 -> ... -> v3
    run_id: str  # the run where the chain reached it
    aliases: list[str] = field(default_factory=list)
    version: str | None = None  # of an experiment's train or evaluate run, of a score run
    md5: str | None = None  # of a predictions file


@dataclass
class UsedBy:
    """The uses of one file's bytes."""

    path: str | None
    md5: str
    produced_by: str | None  # the stage of the run that wrote these bytes, if one did
    versions: list[Use] = field(default_factory=list)
    experiments: list[Use] = field(default_factory=list)
    predictions: list[Use] = field(default_factory=list)
    runs_read: int = 0  # finished runs downstream of the bytes

    def found(self) -> bool:
        return bool(self.versions or self.experiments or self.predictions)


@dataclass
class Index:
    """The record, indexed by md5: who read and who wrote each file, the registered versions."""

    runs: list[record.StageRecord]
    versions: list[record.VersionRecord]
    consumers: dict[str, list[tuple[record.StageRecord, str]]] = field(default_factory=dict)
    producers: dict[str, list[tuple[record.StageRecord, str]]] = field(default_factory=dict)
    by_model: dict[str, list[record.VersionRecord]] = field(default_factory=dict)
    by_number: dict[tuple[str, str], record.VersionRecord] = field(default_factory=dict)
    by_run: dict[str, list[record.VersionRecord]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        finished = {run.run_id for run in self.runs}
        for run in self.runs:
            for path, md5 in run.inputs.items():
                self.consumers.setdefault(md5, []).append((run, path))
            for path, md5 in run.outputs.items():
                self.producers.setdefault(md5, []).append((run, path))
        for version in self.versions:
            if version.run_id not in finished:
                continue  # its run failed or was killed: not a model anyone can use
            self.by_number[(version.name, version.version)] = version
            self.by_run.setdefault(version.run_id, []).append(version)
            if version.model_md5:
                self.by_model.setdefault(version.model_md5, []).append(version)

    def registered_by(self, run: record.StageRecord) -> list[record.VersionRecord]:
        """The versions a train run registered (or found registered with the same bytes)."""
        found = {(v.name, v.version): v for v in self.by_run.get(run.run_id, [])}
        if run.model_version in self.by_number:
            found[run.model_version] = self.by_number[run.model_version]
        return [found[key] for key in sorted(found)]

    def recorded_md5s(self, path: str) -> list[str]:
        """Every md5 the record holds for a file name (written or read), oldest first."""
        seen: dict[str, None] = {}
        for run in self.runs:
            for files in (run.outputs, run.inputs):
                if path in files:
                    seen.setdefault(files[path])
        return list(seen)


@dataclass(frozen=True)
class _Step:
    """A file reached: its md5, the chain of stages to it, the month it carries and the split
    the last run that named that month gave it."""

    md5: str
    chain: tuple[str, ...]
    month: str | None
    split: str | None
    via: str | None = None  # the run that wrote it on this chain (None: the bytes asked about)


def _label(version: record.VersionRecord) -> str:
    return f"v{version.version}"


def _evaluated(split: str | None) -> str:
    return f"{EVALUATED} ({split})" if split in HELD_OUT else EVALUATED


class _Uses:
    """The uses found, each target once with its strongest use and the shortest chain to it."""

    def __init__(self) -> None:
        self.found: dict[tuple[str, str], Use] = {}

    def add(self, kind: str, use: Use) -> None:
        key = (kind, use.target)
        old = self.found.get(key)
        if old is None or _rank(use.how) < _rank(old.how):
            self.found[key] = use

    def of(self, kind: str) -> list[Use]:
        return sorted(
            (u for (k, _), u in self.found.items() if k == kind), key=lambda u: _sort_key(u.target)
        )


def _rank(how: str) -> int:
    for rank, strength in enumerate(STRENGTH):
        if how.startswith(strength):
            return rank
    return len(STRENGTH)


def _sort_key(target: str) -> tuple[str, int, str]:
    name, _, number = target.rpartition("/")
    return (name, int(number), "") if number.isdigit() else (target, 0, "")


def walk(index: Index, md5: str, path: str | None = None) -> UsedBy:
    """Every use of the bytes `md5` (named `path`, if known), breadth first: the chain kept
    for each use is a shortest one. Pure: reads only the index."""
    producer = _producer(index, md5, path)
    month = producer.item if producer and producer.item in producer.month_splits else None
    result = UsedBy(path, md5, producer.stage if producer else None)
    uses = _Uses()
    start_chain = (producer.stage,) if producer else ()
    for version in index.by_model.get(md5, []):
        uses.add("version", _version_use(version, MODEL, [*start_chain, _label(version)], md5))
    queue = deque([_Step(md5, start_chain, month, None)])
    seen_files: set[tuple[str, str | None, str | None]] = set()
    seen_runs: set[tuple[str, str | None, str | None]] = set()
    runs_read: set[str] = set()
    while queue:
        step = queue.popleft()
        if (step.md5, step.month, step.split) in seen_files:
            continue
        seen_files.add((step.md5, step.month, step.split))
        for run, read_as in index.consumers.get(step.md5, []):
            if step.via is not None and _resolved_producer(index, run, read_as, step.md5) not in (
                None,
                step.via,
            ):
                continue  # the same bytes, but this run's trace goes through another writer
            month = step.month
            if month is None and run.item in run.month_splits:
                month = run.item
            split = run.month_splits.get(month, step.split) if month else step.split
            if run.stage == record.TRAIN_STAGE and split in HELD_OUT:
                continue  # a held-out month does not reach the model's bytes (module doc)
            if (run.run_id, month, split) in seen_runs:
                continue
            seen_runs.add((run.run_id, month, split))
            runs_read.add(run.run_id)
            chain = (*step.chain, run.stage)
            _record_uses(index, uses, run, step, chain=chain, split=split)
            if run.stage == record.TRAIN_STAGE:  # its model file is a version's
                chain += tuple(_label(v) for v in index.registered_by(run))
            for out_md5 in run.outputs.values():
                queue.append(_Step(out_md5, chain, month, split, run.run_id))
    result.versions = uses.of("version")
    result.experiments = uses.of("experiment")
    result.predictions = uses.of("predictions")
    result.runs_read = len(runs_read)
    return result


def _resolved_producer(
    index: Index, consumer: record.StageRecord, path: str, md5: str
) -> str | None:
    """The run the backward trace (lineage.trace) takes as the writer of what `consumer` read:
    one of its own execution, else the newest that wrote these bytes under that name; None
    when none did (a copy under another name: any writer of the bytes). Forward and backward
    then agree: a version is listed for some bytes exactly when its trace reaches them, even
    where two chains wrote identical files (an encoders file of unchanged training months)."""
    named = [run for run, out_path in index.producers.get(md5, []) if out_path == path]
    if not named:
        return None
    own = [run for run in named if run.pipeline_run and run.pipeline_run == consumer.pipeline_run]
    return max(own or named, key=lambda run: run.start_time).run_id


def _producer(index: Index, md5: str, path: str | None) -> record.StageRecord | None:
    """The oldest finished run that wrote these bytes, under this name when one did."""
    written = index.producers.get(md5, [])
    named = [run for run, out_path in written if out_path == path]
    candidates = named or [run for run, _ in written]
    return candidates[0] if candidates else None


def _version_use(version: record.VersionRecord, how: str, chain: list[str], run_id: str) -> Use:
    return Use(
        f"{version.name}/{version.version}",
        how,
        chain,
        run_id,
        aliases=list(version.aliases),
        version=version.version,
    )


def _record_uses(
    index: Index,
    uses: _Uses,
    run: record.StageRecord,
    step: _Step,
    *,
    chain: tuple[str, ...],
    split: str | None,
) -> None:
    """What `run`, reached with the bytes of `step`, makes a user of them."""
    came_as_model = step.md5 in index.by_model
    # The versions whose model file the run read beside the bytes (evaluate, score).
    models = [
        v for md5 in run.inputs.values() if md5 != step.md5 for v in index.by_model.get(md5, [])
    ]
    experiment_how = f"read by {run.stage}"
    experiment_version = None
    if run.stage == record.TRAIN_STAGE:
        for version in index.registered_by(run):
            uses.add(
                "version", _version_use(version, TRAINED, [*chain, _label(version)], run.run_id)
            )
            experiment_how, experiment_version = TRAINED, version.version
    elif run.stage == record.EVALUATE_STAGE and not came_as_model:
        for version in models:
            how = _evaluated(split)
            uses.add("version", _version_use(version, how, [*chain, _label(version)], run.run_id))
            experiment_how, experiment_version = how, version.version
    elif run.stage == record.EVALUATE_STAGE:  # it evaluated the model these bytes are
        experiment_how = "evaluated this model"
        experiment_version = index.by_model[step.md5][0].version
    if run.stage.startswith(record.SCORE_STAGE + "@"):
        scored_with = index.by_model.get(step.md5, []) if came_as_model else models
        number = scored_with[0].version if scored_with else None
        if came_as_model:
            how = f"{SCORED} with v{number}" if number else f"{SCORED} with this model"
        else:
            how = f"{SCORED} these trips" + (f" with v{number}" if number else "")
        for out_path, out_md5 in sorted(run.outputs.items()):
            uses.add(
                "predictions",
                Use(out_path, how, [*chain, out_path], run.run_id, version=number, md5=out_md5),
            )
    if run.experiment:
        uses.add(
            "experiment",
            Use(
                run.experiment,
                experiment_how,
                [*chain, run.experiment],
                run.run_id,
                version=experiment_version,
            ),
        )


# --------------------------------------------------------------------------- the store


def targets(what: str, index: Index) -> list[tuple[str | None, str]]:
    """(name, md5) of the bytes `what` names: a file's bytes; a bare md5; a file name that is
    not on disk (a clone without the data, a month republished since): every md5 the record
    holds for that name, each a question of its own."""
    path = Path(what)
    if path.is_dir():
        raise UsageError(f"{what}: a folder; name a file in it, or an md5")
    if path.is_file():
        return [(record.lineage_path(path), file_md5(path))]
    if MD5.fullmatch(what.lower()):
        return [(None, what.lower())]
    name = record.lineage_path(path)
    md5s = index.recorded_md5s(name)
    if not md5s:
        raise NotFoundError(
            f"{what}: no such file, and no finished run in the record read or wrote a file of "
            "that name (or give its md5)"
        )
    return [(name, md5) for md5 in md5s]


def load_index(client: Any, experiment_ids: list[str]) -> Index:
    """The record in two kinds of queries: the finished runs (one page per 1000 runs) and the
    versions of each registered model a train run names (two calls per model)."""
    runs = record.finished_stage_runs(client, experiment_ids)
    names = sorted({run.model_version[0] for run in runs if run.model_version})
    versions = [v for name in names for v in record.registered_versions(client, name)]
    return Index(runs, versions)


def used_by(what: str, client: Any, experiment_ids: list[str]) -> list[UsedBy]:
    """The uses of the bytes `what` names (targets): one UsedBy per md5."""
    index = load_index(client, experiment_ids)
    return [walk(index, md5, name) for name, md5 in targets(what, index)]


def render_lines(results: Iterable[UsedBy]) -> list[str]:
    """The human report: per md5, each use with its chain (rich markup)."""
    lines = []
    for result in results:
        source = f", written by {result.produced_by}" if result.produced_by else ""
        lines.append(f"[bold]{result.path or 'bytes'}[/] md5 {result.md5}{source}")
        if not result.found():
            lines.append(
                "  used by no model version, DVC experiment or predictions file "
                f"({result.runs_read} finished run(s) downstream)"
            )
            continue
        for title, items in (
            ("model versions", result.versions),
            ("DVC experiments", result.experiments),
            ("predictions files", result.predictions),
        ):
            if items:
                lines.append(f"  {title}:")
            for use in items:
                label = use.target
                if items is result.versions:
                    label = f"{use.target.rpartition('/')[0]} v{use.version}"
                elif items is result.experiments and use.version:
                    label += f" (v{use.version})"
                elif items is result.predictions:
                    label += f" md5 {use.md5}"
                aliases = f" [magenta]@{', @'.join(use.aliases)}[/]" if use.aliases else ""
                lines.append(f"    [cyan]{label}[/]{aliases}: {use.how}")
                lines.append(f"      {' -> '.join(use.chain)}")
    return lines
