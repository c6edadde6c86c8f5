"""Lineage of a model: from a registered version, run or model file back to the raw TLC files;
from a batch-scoring predictions file (flows.score) to the month it scored, the model it
scored with, and on to that model's raw files.

The chain is followed through the MLflow record (stage_runtime.record): the producer of an input is
the finished run whose `out/<path>` tag has that md5. It is checked against git (the dvc.lock
of the commit that records the model) and the DVC cache (re-hashing the bytes: DVC itself
trusts recorded hashes).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stage_runtime import record
from stages.common import file_md5, load_yaml
from workspaces.worktrees import dvc_cache_dir, worktree


class LineageError(RuntimeError):
    """The chain cannot be followed: the message says which link is missing."""


class NotFoundError(LineageError):
    """What was asked for (a model version, a run, a file's producer) is not in the record."""


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
        return record.tagged_files(self.tags, record.OUTPUT)


@dataclass
class Lineage:
    model: FileNode
    model_version: dict[str, Any] | None
    commit: str | None = None
    checks: dict[str, Any] = field(default_factory=dict)
    # When traced from a predictions file: that file, produced by its score run, whose
    # inputs are the scored month (`source`) and `model`.
    predictions: FileNode | None = None

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
        uri = record.tracking_uri()
        self.client = client or record.connect(uri, create=False)
        experiment = record.experiment_id(self.client)
        if experiment is None:
            raise NotFoundError(
                f"no MLflow experiment {record.experiment_name()!r} in {uri}: has the pipeline run?"
            )
        self.experiment_ids = [experiment]

    def _stage(self, run: Any) -> StageNode:
        data = run.data
        return StageNode(
            data.tags.get(record.STAGE_TAG, "?"),
            run.info.run_id,
            dict(data.tags),
            dict(data.params),
            dict(data.metrics),
        )

    def expand(self, node: StageNode) -> StageNode:
        pipeline_run = node.tags.get(record.PIPELINE_RUN_TAG)
        for path, md5 in sorted(record.tagged_files(node.tags, record.INPUT).items()):
            run = record.find_producer(self.client, self.experiment_ids, path, md5, pipeline_run)
            producer = self.expand(self._stage(run)) if run else None
            child = FileNode(path, md5, producer)
            if producer is not None:
                child.source = record.tagged_files(producer.tags, record.SOURCE).get(path)
            node.inputs.append(child)
        return node

    def resolve_version(self, ref: str) -> Any:
        """The model version of `models:/<name>/<version|latest>` or `models:/<name>@<alias>`."""
        from mlflow.exceptions import MlflowException

        try:
            version = record.find_model_version(self.client, ref)
        except ValueError as exc:
            raise NotFoundError(str(exc)) from None
        except MlflowException:
            version = None
        if version is None:
            name, _, number = ref.removeprefix("models:/").rpartition("/")
            if number == "latest":
                raise NotFoundError(f"{ref}: no registered model {name!r} has a version")
            raise NotFoundError(f"{ref}: no such registered model version")
        return version

    def _run(self, run_id: str) -> Any:
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_run(run_id)
        except MlflowException:
            raise NotFoundError(f"{run_id}: no such MLflow run in this store") from None

    def trace(self, ref: str) -> Lineage:
        """`ref`: models:/<name>/<version|latest>, an MLflow run id, or the path of a model
        file or of a predictions file written by batch scoring."""
        version = None
        if ref.startswith("models:/"):
            mv = self.resolve_version(ref)
            version = _version_info(mv)
            run = self._run(mv.run_id)
        elif Path(ref).is_file():
            run = self._producer_of_file(Path(ref))
        else:
            run = self._run(ref)
        node = self.expand(self._stage(run))
        if node.stage.startswith(record.SCORE_STAGE + "@"):
            return self._scored(node)
        model_path = next((p for p in node.outputs if p.endswith("model.json")), None)
        if model_path is None:
            raise LineageError(f"run {node.run_id} ({node.stage}) wrote no model file")
        model = FileNode(model_path, node.outputs[model_path], node)
        return Lineage(model, version)

    def _scored(self, score: StageNode) -> Lineage:
        """A score run's lineage: its predictions, the month it read, the model it used."""
        out_path, out_md5 = next(iter(score.outputs.items()))
        sources = record.tagged_files(score.tags, record.SOURCE)
        model = None
        for child in score.inputs:
            child.source = sources.get(child.path)
            if child.producer is not None and child.producer.stage == "train":
                model = child
        if model is None:
            raise LineageError(
                f"score run {score.run_id}: no train run in MLflow wrote the model file it "
                "scored with"
            )
        number = score.tags.get(record.SCORED_MODEL_VERSION_TAG)
        name = model.producer.tags.get(record.MODEL_NAME_TAG)
        version = None
        if name and number:
            version = _version_info(self.resolve_version(f"models:/{name}/{number}"))
        return Lineage(model, version, predictions=FileNode(out_path, out_md5, score))

    def _producer_of_file(self, path: Path) -> Any:
        """The train run of a model file, or the score run of a predictions file."""
        md5 = file_md5(path)
        run = record.find_producer(self.client, self.experiment_ids, record.lineage_path(path), md5)
        # A copy under another name: any train or score run that wrote these bytes.
        for stage_filter in (
            f"tags.{record.STAGE_TAG} = 'train'",
            f"tags.{record.STAGE_TAG} LIKE '{record.SCORE_STAGE}@%'",
        ):
            if run is not None:
                break
            runs = self.client.search_runs(
                self.experiment_ids,
                filter_string=stage_filter + " and attributes.status = 'FINISHED'",
                order_by=["attributes.start_time DESC"],
                max_results=5000,
            )
            wrote = [
                r for r in runs if md5 in record.tagged_files(r.data.tags, record.OUTPUT).values()
            ]
            run = wrote[0] if wrote else None
        if run is None:
            raise NotFoundError(
                f"{path}: no train or score run in MLflow wrote a file with md5 {md5}"
            )
        return run


def _version_info(mv: Any) -> dict[str, Any]:
    return {"name": mv.name, "version": mv.version, "run_id": mv.run_id, "tags": dict(mv.tags)}


# --------------------------------------------------------------------------- git and DVC


def _git(*args: str, cwd: Path | None = None) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, capture_output=True, text=True, check=True
    ).stdout


def find_commit(path: str, md5: str, repo: Path = Path()) -> str | None:
    """The newest commit (experiments included) whose dvc.lock records `path` with `md5`."""
    seen_blobs: set[str] = set()
    for commit in _git("rev-list", "--all", "--date-order", cwd=repo).split():
        try:
            blob = _git("rev-parse", f"{commit}:{record.LOCK_FILE}", cwd=repo).strip()
        except subprocess.CalledProcessError:
            continue
        if blob in seen_blobs:
            continue
        seen_blobs.add(blob)
        locked = record.locked_outputs(record.parse_lock(_git("cat-file", "blob", blob, cwd=repo)))
        if locked.get(path) == md5:
            return commit
    return None


def cache_object(cache: Path, md5: str) -> Path:
    return cache / "files" / "md5" / md5[:2] / md5[2:]


def fetch_missing(lineage: Lineage, nodes: list[FileNode], repo: Path = Path()) -> None:
    """Bring the cache objects of `nodes` that this clone lacks from the DVC remote: the data
    of the commit whose dvc.lock records the model (a clone that did not train it)."""
    cache = dvc_cache_dir(repo)
    if all(cache_object(cache, n.md5).is_file() for n in nodes):
        return
    if lineage.commit is None:
        lineage.commit = find_commit(lineage.model.path, lineage.model.md5, repo)
    if lineage.commit is None:
        return
    from workspaces.remote import RemoteError, ensure_remote, fetch_revision

    remote = ensure_remote(repo)
    if remote is None:
        return
    try:
        fetch_revision(repo, lineage.commit, remote)
    except RemoteError as exc:
        raise NotFoundError(str(exc)) from None


def verify(lineage: Lineage, repo: Path = Path()) -> bool:
    """Each hash of the chain must equal dvc.lock at the model's commit and the cached bytes."""
    lineage.commit = find_commit(lineage.model.path, lineage.model.md5, repo)
    lock = (
        record.locked_outputs(
            record.parse_lock(_git("show", f"{lineage.commit}:{record.LOCK_FILE}", cwd=repo))
        )
        if lineage.commit
        else {}
    )
    cache = dvc_cache_dir(repo)
    fetch_missing(lineage, lineage.files(), repo)
    ok = lineage.commit is not None
    for node in lineage.files():
        obj = cache_object(cache, node.md5)
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
    cache = dvc_cache_dir(repo)
    nodes = lineage.raw_files()
    if with_features:
        nodes += [f for f in lineage.files() if f.producer and f.producer.stage == "features"]
    if dest.exists() and not dest.is_dir():
        raise FileExistsError(f"{dest}: exists and is not a directory")
    fetch_missing(lineage, nodes, repo)
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    for node in nodes:
        obj = cache_object(cache, node.md5)
        if not obj.is_file():
            raise NotFoundError(f"{node.path} (md5 {node.md5}) is not in the DVC cache {cache}")
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
        raise NotFoundError("no commit's dvc.lock records this model: commit it (or dvc exp save)")
    work = Path(tempfile.mkdtemp(prefix="reproduce-", dir=keep))
    try:
        raw = restore(lineage, work / "raw", repo=repo)
        env = dict(
            os.environ,
            TLC_SOURCE=str(raw[0].parent),
            MLFLOW_TRACKING_URI=f"sqlite:///{work / record.STORE_FILE}",
            PIPELINE_RUN_ID=f"reproduce-{lineage.model.md5[:8]}",
        )
        with worktree(repo, lineage.commit, checkout=False, prefix="reproduce-") as tree:
            proc = subprocess.run(
                ["dvc", "repro", "--force"],
                check=False,
                cwd=tree,
                env=env,
                capture_output=True,
                text=True,
            )
            if proc.returncode != 0:
                raise LineageError(f"dvc repro at {lineage.commit} failed:\n{proc.stderr[-2000:]}")
            new_md5 = file_md5(tree / lineage.model.path)
            metrics = {}
            for path in sorted((tree / "metrics").rglob("*.json")):
                rel = path.relative_to(tree).as_posix()
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
        if keep is None:
            shutil.rmtree(work, ignore_errors=True)
