"""Experiments as `dvc exp run -S` makes them: validated param overrides, and `dvc exp save`.

Used by every flow that runs a param set (the pipeline's experiment mode, compare); what they
share with DVC is the code that writes the overrides, so both give the same params.yaml.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from stage_runtime.locks import shared_git_state
from stages.common import PARAMS_FILE, BadInputError, validate_params_text
from workspaces import repro

# `dvc exp save` commits the workspace's small files; no answer in this long is a hang.
SAVE_TIMEOUT_SECONDS = 600.0


class ExperimentError(RuntimeError):
    """`dvc exp save` failed: the message is DVC's own output."""


def override_args(overrides: Mapping[str, Any]) -> list[str]:
    """`{"model.alpha": 0.05}` as the `-S` arguments of `dvc exp run` (Hydra override syntax).

    A mapping replaces the whole section (`{"data.months": {"2024-02": "train", ...}}`): Hydra
    merges a mapping into the one there and refuses new keys, so it is deleted first
    (`~data.months`) and added again (`+data.months={2024-02:train,...}`)."""
    args = []
    for key, value in overrides.items():
        if isinstance(value, Mapping):
            items = ",".join(f"{k}:{v}" for k, v in value.items())
            args += [f"~{key}", f"+{key}={{{items}}}"]
            continue
        if isinstance(value, bool):
            text = str(value).lower()
        elif isinstance(value, str):
            text = value
        else:
            text = repr(value) if isinstance(value, float) else str(value)
        args.append(f"{key}={text}")
    return args


def apply_overrides(repo: Path, overrides: Mapping[str, Any]) -> None:
    """Write the overrides into params.yaml with the code `dvc exp run -S` uses, if valid.

    They are applied to a copy first and the whole result validated with the stages' own
    schema: a bad value (a payload in `data.colour`, an unknown key, `model.alpha=inf`) is
    refused with BadInputError naming the param, and params.yaml is left as it was.
    Otherwise the copy replaces params.yaml in one rename.
    """
    from dvc.utils.cli_parse import to_path_overrides
    from dvc.utils.hydra import apply_overrides as dvc_apply

    args = override_args(overrides)
    try:
        by_file = to_path_overrides(args)
    except Exception as exc:  # DVC's parser raises several types
        raise BadInputError(
            f"overrides {args}: not `key=value` as dvc exp run -S reads: {exc}"
        ) from None
    unknown = [str(path) for path in by_file if Path(path).name != PARAMS_FILE.name]
    if unknown:
        raise BadInputError(f"overrides {args}: only {PARAMS_FILE} can be overridden: {unknown}")
    target = repo / PARAMS_FILE
    fd, tmp_name = tempfile.mkstemp(prefix=".params.", suffix=".yaml", dir=repo)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        tmp.write_bytes(target.read_bytes())
        for item in (item for items in by_file.values() for item in items):
            try:
                dvc_apply(tmp, [item])
            except Exception as exc:  # Hydra's grammar and DVC's errors
                cause = str(exc.__cause__ or exc).splitlines()[0]
                raise BadInputError(
                    f"override {item!r} for {PARAMS_FILE}: {cause} (expected an existing "
                    "key=value as dvc exp run -S reads it; quote values with special characters)"
                ) from None
        validate_params_text(tmp.read_text(), f"{PARAMS_FILE} with overrides {args}")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def save_experiment(repo: Path, name: str, env: Mapping[str, str]) -> str:
    """`dvc exp save` the workspace as experiment `name`, its metrics and dvc.lock included.

    `dvc exp save` leaves untracked files out, and in a fresh clone the git-tracked outputs
    (metrics, plots) and dvc.lock are untracked; `dvc exp run` would have committed them.

    Saves of all worktrees of one repository take turns (stage_runtime.locks.shared_git_state):
    each writes the same shared refs under refs/exps/exec, and two at once fail or file one
    worktree's commit under the other's baseline.
    """
    args = ["exp", "save", "--name", name]
    for path in _untracked(repo, ["dvc.lock", *git_tracked_outputs(repo)]):
        args += ["--include-untracked", path]
    with shared_git_state(repo, f"dvc exp save --name {name} in {repo}"):
        # The flow run's DVC process when it has one open (repro.dvc_process).
        result = repro.run_dvc(args, repo, env, SAVE_TIMEOUT_SECONDS, lambda line: None)
    if result.timed_out or result.returncode != 0:
        raise ExperimentError("dvc exp save failed:\n" + "\n".join(result.lines))
    return name


def checkout_outputs(repo: Path) -> str:
    """`dvc checkout --force`: the outputs dvc.lock records, from the cache; "" when done,
    else DVC's last words (the caller is already failing and reports both)."""
    proc = subprocess.run(
        ["dvc", "checkout", "--force", "--quiet"],
        cwd=repo,
        capture_output=True,
        text=True,
        check=False,
    )
    return "" if proc.returncode == 0 else f" (dvc checkout: {proc.stderr.strip()[-300:]})"


def git_tracked_outputs(repo: Path) -> list[str]:
    """Outputs DVC leaves to git (`cache: false`: metrics, plots), relative to `repo`."""
    from dvc.repo import Repo

    with Repo(str(repo)) as dvc_repo:
        root = Path(dvc_repo.root_dir)
        return sorted(
            Path(out.fs_path).relative_to(root).as_posix()
            for out in dvc_repo.index.outs
            if not out.use_cache
        )


def _untracked(repo: Path, paths: list[str]) -> list[str]:
    proc = subprocess.run(
        ["git", "ls-files", "--others", "--exclude-standard", "--", *paths],
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
    )
    return proc.stdout.split()


def experiment_ref(repo: Path, name: str) -> str:
    """The git ref of DVC experiment `name` (refs/exps/<baseline>/<name>)."""
    proc = subprocess.run(
        ["git", "for-each-ref", "--format=%(refname)", "refs/exps/"],
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
    )
    refs = [ref for ref in proc.stdout.split() if ref.rsplit("/", 1)[-1] == name]
    if len(refs) != 1:
        raise ExperimentError(f"DVC experiment {name!r}: {len(refs)} refs in {repo}")
    return refs[0]


def experiment_file(repo: Path, name: str, path: str) -> str:
    """A git-tracked file (metrics, params) as experiment `name` saved it."""
    from workspaces.worktrees import git_file

    text = git_file(repo, experiment_ref(repo, name), path)
    if text is None:
        raise ExperimentError(f"DVC experiment {name!r} holds no {path}")
    return text
