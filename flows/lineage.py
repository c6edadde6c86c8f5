"""Lineage of a model: from a registered version, run or model file back to the raw TLC files.

The chain is followed through MLflow: every stage run tags `in/<path>` and `out/<path>` with
the file's md5, so the producer of an input is the finished run whose output has that md5.
It is checked against git (the dvc.lock of the commit that records the model) and the DVC
cache (re-hashing the bytes: DVC itself trusts recorded hashes).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stages.common import file_md5, load_yaml
from stages.tracking import DEFAULT_EXPERIMENT, EXPERIMENT_ENV, tracking_uri


class LineageError(RuntimeError):
    """The chain cannot be followed: the message says which link is missing."""


@dataclass
class FileNode:
    path: str
    md5: str
    producer: StageNode | None = None
    source: str | None = None
    checks: dict[str, Any] = field(default_factory=dict)


@dataclass
class StageNode:
    stage: str
    run_id: str
    tags: dict[str, str]
    params: dict[str, str]
    metrics: dict[str, float]
    inputs: list[FileNode] = field(default_factory=list)

    @property
    def outputs(self) -> dict[str, str]:
        return {k.removeprefix("out/"): v for k, v in self.tags.items() if k.startswith("out/")}


@dataclass
class Lineage:
    model: FileNode
    model_version: dict[str, Any] | None
    commit: str | None = None
    checks: dict[str, Any] = field(default_factory=dict)

    def files(self) -> list[FileNode]:
        """Every file of the chain, model first, each once."""
        seen: dict[tuple[str, str], FileNode] = {}
        todo = [self.model]
        while todo:
            node = todo.pop(0)
            if (node.path, node.md5) in seen:
                continue
            seen[(node.path, node.md5)] = node
            if node.producer:
                todo.extend(node.producer.inputs)
        return list(seen.values())

    def raw_files(self) -> list[FileNode]:
        return [f for f in self.files() if f.producer and f.producer.stage.startswith("ingest")]


class Tracer:
    def __init__(self, client: Any | None = None) -> None:
        from mlflow.tracking import MlflowClient

        uri = tracking_uri()
        self.client = client or MlflowClient(tracking_uri=uri, registry_uri=uri)
        name = os.environ.get(EXPERIMENT_ENV, DEFAULT_EXPERIMENT)
        experiment = self.client.get_experiment_by_name(name)
        if experiment is None:
            raise LineageError(f"no MLflow experiment {name!r} in {uri}: has the pipeline run?")
        self.experiment_ids = [experiment.experiment_id]

    def _stage(self, run: Any) -> StageNode:
        data = run.data
        return StageNode(
            data.tags.get("stage", "?"),
            run.info.run_id,
            dict(data.tags),
            dict(data.params),
            dict(data.metrics),
        )

    def producer(self, path: str, md5: str, pipeline_run_id: str | None) -> StageNode | None:
        """The run that wrote these bytes, preferring the same pipeline execution."""
        base = f"tags.`out/{path}` = '{md5}' and attributes.status = 'FINISHED'"
        filters = [f"{base} and tags.pipeline_run_id = '{pipeline_run_id}'", base]
        for filter_string in filters if pipeline_run_id else filters[1:]:
            runs = self.client.search_runs(
                self.experiment_ids,
                filter_string=filter_string,
                order_by=["attributes.start_time DESC"],
                max_results=1,
            )
            if runs:
                return self._stage(runs[0])
        return None

    def expand(self, node: StageNode) -> StageNode:
        for key, md5 in sorted(node.tags.items()):
            if not key.startswith("in/"):
                continue
            path = key.removeprefix("in/")
            producer = self.producer(path, md5, node.tags.get("pipeline_run_id"))
            child = FileNode(path, md5, producer)
            if producer is not None:
                child.source = producer.tags.get(f"source/{path}")
                self.expand(producer)
            node.inputs.append(child)
        return node

    def trace(self, ref: str) -> Lineage:
        """`ref`: models:/<name>/<version>, an MLflow run id, or the path of a model file."""
        version = None
        if ref.startswith("models:/"):
            name, _, number = ref.removeprefix("models:/").rpartition("/")
            mv = self.client.get_model_version(name, number)
            version = {
                "name": mv.name,
                "version": mv.version,
                "run_id": mv.run_id,
                "tags": dict(mv.tags),
            }
            run = self.client.get_run(mv.run_id)
        elif Path(ref).is_file():
            md5 = file_md5(ref)
            runs = self.client.search_runs(
                self.experiment_ids,
                filter_string="tags.stage = 'train'",
                order_by=["attributes.start_time DESC"],
                max_results=5000,
            )
            run = next(
                (
                    r
                    for r in runs
                    if md5 in {v for k, v in r.data.tags.items() if k.startswith("out/")}
                ),
                None,
            )
            if run is None:
                raise LineageError(f"{ref}: no train run in MLflow wrote a file with md5 {md5}")
        else:
            run = self.client.get_run(ref)
        train = self.expand(self._stage(run))
        model_path = next((p for p in train.outputs if p.endswith("model.json")), None)
        if model_path is None:
            raise LineageError(f"run {train.run_id} ({train.stage}) wrote no model file")
        model = FileNode(model_path, train.outputs[model_path], train)
        return Lineage(model, version)


# --------------------------------------------------------------------------- git and DVC


def _git(*args: str, cwd: Path | None = None) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, capture_output=True, text=True, check=True
    ).stdout


def lock_outputs(lock_text: str) -> dict[str, str]:
    """path -> md5 of every stage output a dvc.lock records."""
    lock = load_yaml(lock_text) or {}
    return {
        out["path"]: out.get("md5", "")
        for entry in (lock.get("stages") or {}).values()
        for out in entry.get("outs", [])
    }


def find_commit(path: str, md5: str, repo: Path = Path()) -> str | None:
    """The newest commit (experiments included) whose dvc.lock records `path` with `md5`."""
    seen_blobs: set[str] = set()
    for commit in _git("rev-list", "--all", "--date-order", cwd=repo).split():
        try:
            blob = _git("rev-parse", f"{commit}:dvc.lock", cwd=repo).strip()
        except subprocess.CalledProcessError:
            continue
        if blob in seen_blobs:
            continue
        seen_blobs.add(blob)
        if lock_outputs(_git("cat-file", "blob", blob, cwd=repo)).get(path) == md5:
            return commit
    return None


def cache_dir(repo: Path = Path()) -> Path:
    out = subprocess.run(
        ["dvc", "cache", "dir"], check=False, cwd=repo, capture_output=True, text=True
    )
    return Path(out.stdout.strip()) if out.returncode == 0 else repo / ".dvc" / "cache"


def cache_object(cache: Path, md5: str) -> Path:
    return cache / "files" / "md5" / md5[:2] / md5[2:]


def verify(lineage: Lineage, repo: Path = Path()) -> bool:
    """Each hash of the chain must equal dvc.lock at the model's commit and the cached bytes."""
    lineage.commit = find_commit(lineage.model.path, lineage.model.md5, repo)
    lock = (
        lock_outputs(_git("show", f"{lineage.commit}:dvc.lock", cwd=repo)) if lineage.commit else {}
    )
    cache = cache_dir(repo)
    fetched = False
    ok = lineage.commit is not None
    for node in lineage.files():
        obj = cache_object(cache, node.md5)
        if not obj.is_file() and not fetched and lineage.commit:
            # Not in the local cache: ask the DVC remote (if any) for that commit's data.
            subprocess.run(
                ["dvc", "fetch", "--rev", lineage.commit],
                check=False,
                cwd=repo,
                capture_output=True,
                text=True,
            )
            fetched = True
        node.checks = {
            "dvc_lock": lock.get(node.path),
            "lock_matches": lock.get(node.path) == node.md5,
            "in_cache": obj.is_file(),
            "cache_rehash_matches": obj.is_file() and file_md5(obj) == node.md5,
        }
        ok &= node.checks["lock_matches"] and node.checks["cache_rehash_matches"]
        if node.producer is None and node is not lineage.model:
            node.checks["producer_found"] = False
            ok = False
    lineage.checks = {"commit": lineage.commit, "ok": ok}
    return ok


def restore(
    lineage: Lineage, dest: Path, with_features: bool = False, repo: Path = Path()
) -> list[Path]:
    """Copy the raw files (and the feature files) of the chain out of the DVC cache."""
    cache = cache_dir(repo)
    nodes = lineage.raw_files()
    if with_features:
        nodes += [f for f in lineage.files() if f.producer and f.producer.stage == "features"]
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    for node in nodes:
        obj = cache_object(cache, node.md5)
        if not obj.is_file():
            raise LineageError(f"{node.path} (md5 {node.md5}) is not in the DVC cache {cache}")
        target = dest / Path(node.path).name
        shutil.copyfile(obj, target)
        if file_md5(target) != node.md5:
            raise LineageError(f"{obj}: cached bytes do not hash to {node.md5}: cache corrupted")
        written.append(target)
    return written


def reproduce(lineage: Lineage, repo: Path = Path(), keep: Path | None = None) -> dict[str, Any]:
    """Re-run the pipeline at the model's commit in a temporary worktree; compare the results."""
    if lineage.commit is None:
        lineage.commit = find_commit(lineage.model.path, lineage.model.md5, repo)
    if lineage.commit is None:
        raise LineageError("no commit's dvc.lock records this model: commit it (or dvc exp save)")
    work = Path(tempfile.mkdtemp(prefix="reproduce-", dir=keep))
    worktree = work / "repo"
    cache = cache_dir(repo).resolve()
    _git("worktree", "add", "--detach", str(worktree), lineage.commit, cwd=repo)
    try:
        raw = restore(lineage, work / "raw", repo=repo)
        env = dict(
            os.environ,
            TLC_SOURCE=str(raw[0].parent),
            MLFLOW_TRACKING_URI=f"sqlite:///{work / 'mlflow.db'}",
            PIPELINE_RUN_ID=f"reproduce-{lineage.model.md5[:8]}",
        )
        subprocess.run(
            ["dvc", "config", "--local", "cache.dir", str(cache)],
            cwd=worktree,
            check=True,
            capture_output=True,
        )
        proc = subprocess.run(
            ["dvc", "repro", "--force"],
            check=False,
            cwd=worktree,
            env=env,
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            raise LineageError(f"dvc repro at {lineage.commit} failed:\n{proc.stderr[-2000:]}")
        new_md5 = file_md5(worktree / lineage.model.path)
        metrics = {}
        for path in sorted((worktree / "metrics").rglob("*.json")):
            rel = path.relative_to(worktree).as_posix()
            try:
                committed = load_yaml(_git("show", f"{lineage.commit}:{rel}", cwd=repo))
            except subprocess.CalledProcessError:
                committed = None  # not in that commit: cannot be equal
            metrics[rel] = committed == load_yaml(path.read_text())
        return {
            "commit": lineage.commit,
            "model_md5": lineage.model.md5,
            "reproduced_md5": new_md5,
            "byte_identical": new_md5 == lineage.model.md5,
            "metrics_equal": all(metrics.values()) and bool(metrics),
            "metrics_files": metrics,
        }
    finally:
        _git("worktree", "remove", "--force", str(worktree), cwd=repo)
        if keep is None:
            shutil.rmtree(work, ignore_errors=True)
