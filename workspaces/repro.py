"""DVC as a flow sees it: the stage graph and what is stale, DVC commands run in one DVC process
in its own process group, and what a stage's failure means (bad input, transient, other).

No Prefect here: the flows decide what to retry from the exceptions raised below.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stages.common import BAD_INPUT_PREFIX, IO_PREFIX, TRANSIENT_PREFIX

# Another DVC process holds the repository lock or an output's rwlock: worth a retry.
LOCK_BUSY = re.compile(r"Unable to acquire lock|is busy")
SKIPPED = re.compile(r"Stage '[^']+' didn't change, skipping")
# DVC's run-cache had this stage's outputs for these deps and params: checked out, not run.
RESTORED = re.compile(r"Stage '[^']+' is cached - skipping run")
# After SIGINT, the stage gets this long to stop before SIGKILL.
KILL_GRACE_SECONDS = 10.0
# Leads each command's process group; stops it if this process dies (workspaces/guard.py).
GUARD = Path(__file__).with_name("guard.py")
# Runs a flow's DVC commands in one process (workspaces/dvc_worker.py), not one per stage.
WORKER = Path(__file__).with_name("dvc_worker.py")
# How long a DVC process whose input ended gets to exit before its group is stopped.
WORKER_EXIT_SECONDS = 10.0


class StageError(RuntimeError):
    """A stage run failed for a reason not known to pass: not retried."""


class BadStageInput(StageError):
    """The stage refused its input: fails at once, with the stage's own message."""


class TransientStageFailure(StageError):
    """A held lock, a timeout or a failure the stage itself calls transient: retried."""


@dataclass(frozen=True)
class CommandResult:
    returncode: int
    lines: list[str]
    timed_out: bool


@dataclass(frozen=True)
class PlannedStage:
    name: str
    # DVC's own verdict before anything ran (Stage.changed(), what `dvc status` reports).
    changed: bool
    upstream: frozenset[str]


def prune_lock(repo: Path, stages: Iterable[str]) -> list[str]:
    """Remove dvc.lock's entries of stages dvc.yaml no longer has (a month that left
    `data.months`); their names, in lock order. DVC's repro leaves them, and a stale
    `ingest@<month>` entry would claim a raw file the pipeline no longer reads.

    Edited with DVC's own YAML round trip on a copy that replaces dvc.lock in one rename."""
    from dvc.utils.serialize import modify_yaml

    from stage_runtime.record import LOCK_FILE, read_lock

    lock_file = repo / LOCK_FILE
    keep = set(stages)
    stale = [name for name in read_lock(lock_file) if name not in keep]
    if not stale:
        return []
    fd, tmp_name = tempfile.mkstemp(prefix=".dvc.lock.", dir=repo)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        tmp.write_bytes(lock_file.read_bytes())
        with modify_yaml(tmp) as document:
            for name in stale:
                del document["stages"][name]
        os.replace(tmp, lock_file)
    finally:
        tmp.unlink(missing_ok=True)
    return stale


def stage_plan(repo: Path) -> list[PlannedStage]:
    """Every pipeline stage of `repo` (foreach items expanded), dependencies first.

    Read through DVC's own index, so the order is the one `dvc repro` would use (ties broken by
    name). Asking DVC once which stages changed spares a `dvc repro` process per unchanged
    stage; if the repository is locked, every stage is left to its own `dvc repro`.
    """
    from dvc.repo import Repo

    with Repo(str(repo)) as dvc_repo:
        return _plan_of(dvc_repo)


def _plan_of(dvc_repo: Any) -> list[PlannedStage]:
    import networkx as nx
    from dvc.lock import LockError
    from dvc.repo import lock_repo
    from dvc.stage import PipelineStage

    root = Path(dvc_repo.root_dir)

    def address(stage: PipelineStage) -> str:
        # Stage.addressing is relative to the current directory; dvc runs in `repo`.
        dvcfile = Path(stage.path).relative_to(root).as_posix()
        return stage.name if dvcfile == "dvc.yaml" else f"{dvcfile}:{stage.name}"

    graph = dvc_repo.index.graph  # edges point from a stage to the stages it depends on
    graph = graph.subgraph([s for s in graph if isinstance(s, PipelineStage)])
    try:
        with lock_repo(dvc_repo):
            changed = {s: s.changed() for s in graph}
    except LockError:
        changed = dict.fromkeys(graph, True)
    order = nx.lexicographical_topological_sort(graph.reverse(), key=address)
    return [
        PlannedStage(
            address(s), changed[s], frozenset(address(u) for u in nx.descendants(graph, s))
        )
        for s in order
    ]


class PlanProcess:
    """`stage_plan` worked out by a child process, started before the caller's own slow imports.

    A one-off flow run spends about 0.8 s importing Prefect and 0.5-0.7 s asking DVC what is
    stale; on two cores the two overlap instead of adding up.
    """

    def __init__(self, repo: Path, proc: subprocess.Popen) -> None:
        self.repo = repo
        self._proc = proc
        self._answer: dict[str, Any] | None = None

    @classmethod
    def start(cls, repo: Path) -> PlanProcess:
        proc = subprocess.Popen(
            [sys.executable, "-m", "workspaces.repro", str(repo)],
            cwd=Path(__file__).resolve().parents[1],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        return cls(repo, proc)

    def _read(self) -> dict[str, Any] | None:
        if self._proc.returncode is None:
            out, _ = self._proc.communicate()
            if self._proc.returncode == 0:
                self._answer = json.loads(out)
        return self._answer

    def result(self) -> list[dict[str, Any]] | None:
        """The plan as plan_to_json gives it, or None if the child failed (the caller then
        asks DVC itself). Read once; later calls return the same answer."""
        answer = self._read()
        return answer["stages"] if answer else None

    def default_remote(self) -> str | None:
        """The workspace's default DVC remote as the child read DVC's config: its name, ""
        when there is none; None when the child failed (then ask `dvc remote default`)."""
        answer = self._read()
        return answer["default_remote"] if answer else None


def plan_to_json(plan: list[PlannedStage]) -> list[dict[str, Any]]:
    """The plan as JSON-able dicts (a flow parameter, the child's output)."""
    return [{"name": p.name, "changed": p.changed, "upstream": sorted(p.upstream)} for p in plan]


def plan_from_json(items: list[dict[str, Any]]) -> list[PlannedStage]:
    return [PlannedStage(i["name"], i["changed"], frozenset(i["upstream"])) for i in items]


class DvcWorker:
    """`dvc <args>` in `repo`, run by one long-lived DVC process (workspaces/dvc_worker.py).

    The process runs in a group of its own, led by workspaces/guard.py, which stops the group if
    this process dies. On a timeout, and when the caller is interrupted (Ctrl-C, SIGTERM), the
    whole group gets SIGINT, then SIGKILL, before `run` returns or raises: stopping dvc alone
    would leave the stage command running beside a retry, or finishing after its caller restored
    params.yaml. The next request then starts a new process.
    """

    def __init__(self, repo: Path) -> None:
        self.repo = repo.resolve()
        self._proc: subprocess.Popen | None = None
        self._lines: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self._marker = ""
        self._serving = threading.Lock()

    def start(self) -> subprocess.Popen:
        """The DVC process, started now if it is not running (rather than at a request)."""
        if self._proc is not None and self._proc.poll() is None:
            return self._proc
        self._marker = f"dvc-worker-{secrets.token_hex(8)} exit"
        self._proc = subprocess.Popen(
            [sys.executable, str(GUARD), sys.executable, "-u", str(WORKER), self._marker],
            cwd=self.repo,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            start_new_session=True,
        )
        self._lines = queue.SimpleQueue()
        threading.Thread(target=_pump, args=(self._proc, self._lines), daemon=True).start()
        return self._proc

    def run(
        self,
        args: list[str],
        env: Mapping[str, str],
        timeout: float,
        on_line: Callable[[str], None],
    ) -> CommandResult:
        """Run `dvc <args>` with environment `env`, passing each output line on as it comes.
        One request at a time: a second thread waits for the first's answer."""
        request = json.dumps({"args": args, "env": dict(env)}) + "\n"
        with self._serving:
            return self._exchange(self.start(), request, timeout, on_line)

    def _exchange(
        self, proc: subprocess.Popen, request: str, timeout: float, on_line: Callable[[str], None]
    ) -> CommandResult:
        """Send one request line to `proc` and read its output up to the answer's marker."""
        answer, marker = self._lines, self._marker
        lines: list[str] = []
        deadline = time.monotonic() + timeout
        with _RUNNING_LOCK:
            _RUNNING[proc] = self.repo
        try:
            assert proc.stdin is not None
            with contextlib.suppress(OSError):  # a process that died: its end of output says so
                proc.stdin.write(request)
                proc.stdin.flush()
            while True:
                try:
                    line = answer.get(timeout=max(deadline - time.monotonic(), 0.0))
                except queue.Empty:
                    self._stop()
                    return CommandResult(proc.returncode, lines, timed_out=True)
                if line is None:  # the process ended without answering (stopped, crashed)
                    self._proc = None
                    return CommandResult(proc.wait(), lines, timed_out=False)
                text, found, status = line.partition(marker)
                if text:
                    lines.append(text)
                    on_line(text)
                if found:
                    return CommandResult(int(status), lines, timed_out=False)
        except BaseException:
            self._stop()
            raise
        finally:
            with _RUNNING_LOCK:
                _RUNNING.pop(proc, None)

    def _stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            stop_group(proc)

    def close(self) -> None:
        """End the process: at the end of its input it exits; stopped if it does not."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        with contextlib.suppress(OSError):
            assert proc.stdin is not None
            proc.stdin.close()
        try:
            proc.wait(timeout=WORKER_EXIT_SECONDS)
        except subprocess.TimeoutExpired:
            stop_group(proc)


def _pump(proc: subprocess.Popen, lines: queue.SimpleQueue[str | None]) -> None:
    assert proc.stdout is not None
    for raw in proc.stdout:
        lines.put(raw.rstrip("\n"))
    lines.put(None)


# The DVC process of each workspace whose flow run holds one open (dvc_process).
_WORKERS: dict[Path, DvcWorker] = {}
_WORKERS_LOCK = threading.Lock()


@contextlib.contextmanager
def dvc_process(repo: Path) -> Iterator[DvcWorker]:
    """While open, `run_dvc` in `repo` goes to one DVC process, ended when this closes."""
    worker = DvcWorker(repo)
    with _WORKERS_LOCK:
        _WORKERS[worker.repo] = worker
    try:
        yield worker
    finally:
        with _WORKERS_LOCK:
            if _WORKERS.get(worker.repo) is worker:
                del _WORKERS[worker.repo]
        worker.close()


def run_dvc(
    args: list[str],
    repo: Path,
    env: Mapping[str, str],
    timeout: float,
    on_line: Callable[[str], None],
) -> CommandResult:
    """`dvc <args>` in `repo` by the workspace's open `dvc_process`, or by a DVC process for
    this one command when none is open (not registered: it is this call's alone)."""
    with _WORKERS_LOCK:
        worker = _WORKERS.get(repo.resolve())
    if worker is not None:
        return worker.run(args, env, timeout, on_line)
    one_off = DvcWorker(repo)
    try:
        return one_off.run(args, env, timeout, on_line)
    finally:
        one_off.close()


# Signals the command line received (SIGINT, SIGTERM). Prefect swallows a BaseException that
# lands while a task run is finishing after its state became final (its engine treats it as
# "raised after user code finished") and the flow goes on to the next stage: the flow checks
# this between stages, so an interrupt is never lost.
_INTERRUPTS: list[int] = []


def interrupt(signum: int, frame: Any) -> None:
    """The command lines' SIGINT/SIGTERM handler: remembered, then unwinds like Ctrl-C."""
    _INTERRUPTS.append(signum)
    raise KeyboardInterrupt(f"signal {signum}")


def check_interrupted() -> None:
    """Raise KeyboardInterrupt again if the command line was interrupted."""
    if _INTERRUPTS:
        raise KeyboardInterrupt(f"signal {_INTERRUPTS[-1]} received")


def handles_interrupts() -> bool:
    """Whether this is the main thread of a process whose SIGINT goes to `interrupt` (a
    command line installed it)."""
    if threading.current_thread() is not threading.main_thread():
        return False
    return signal.getsignal(signal.SIGINT) is interrupt


# Stage process groups running now, in any thread: stop_all() ends them from a signal handler
# or cleanup code that runs in another thread than the one waiting for them.
_RUNNING: dict[subprocess.Popen, Path] = {}
_RUNNING_LOCK = threading.Lock()


def stop_all(workspace: Path | None = None) -> int:
    """Stop the stage process groups this process started and is still running, those of
    `workspace` only when given (parallel flows in other threads run in other workspaces: one
    that fails must not stop theirs); how many."""
    where = workspace.resolve() if workspace is not None else None
    with _RUNNING_LOCK:
        running = [proc for proc, cwd in _RUNNING.items() if where is None or cwd == where]
    for proc in running:
        stop_group(proc)
    return len(running)


def stop_group(
    proc: subprocess.Popen, first: int = signal.SIGINT, grace: float = KILL_GRACE_SECONDS
) -> None:
    """`first` (SIGINT) to the process group, `grace` seconds for it, then SIGKILL to whatever
    of it is left. The SIGKILL also goes out when the leader stopped in time: a member that
    ignores the first signal (a shell's background job does) would otherwise live on."""
    if proc.stdin is not None:  # a DvcWorker's: it exits after its command, not waiting for more
        with contextlib.suppress(OSError):
            proc.stdin.close()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, first)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def classify(stage: str, result: CommandResult, timeout: float) -> str:
    """'ran', 'restored' (from DVC's run-cache: the outputs changed, nothing ran) or 'skipped'
    for a success; otherwise raise the error the failure deserves."""
    text = "\n".join(result.lines)
    if result.timed_out:
        raise TransientStageFailure(f"stage {stage}: no result within {timeout:g} s; stopped")
    if result.returncode == 0:
        if RESTORED.search(text):
            return "restored"
        return "skipped" if SKIPPED.search(text) else "ran"
    if bad := _block(result.lines, BAD_INPUT_PREFIX):
        raise BadStageInput(bad)
    if refused := _block(result.lines, IO_PREFIX):
        raise StageError(refused)
    tail = "\n".join(result.lines[-15:])
    if _block(result.lines, TRANSIENT_PREFIX) or LOCK_BUSY.search(text) or result.returncode < 0:
        raise TransientStageFailure(f"stage {stage} (exit {result.returncode}):\n{tail}")
    raise StageError(f"stage {stage} failed (exit {result.returncode}):\n{tail}")


def _block(lines: list[str], prefix: str) -> str:
    """The line starting with `prefix` and its indented continuation lines, or ''."""
    for i, line in enumerate(lines):
        if line.startswith(prefix):
            return "\n".join([line, *_take_indented(lines[i + 1 :])])
    return ""


def _take_indented(lines: list[str]) -> list[str]:
    taken = []
    for line in lines:
        if not line.startswith((" ", "\t")):
            break
        taken.append(line)
    return taken


def _plan_and_remote(repo: Path) -> dict[str, Any]:
    """What PlanProcess's child prints: the plan, and the default remote (the flow then knows
    whether there is anything to push without a `dvc remote default` of 0.4 s)."""
    from dvc.repo import Repo

    with Repo(str(repo)) as dvc_repo:
        return {
            "stages": plan_to_json(_plan_of(dvc_repo)),
            "default_remote": dvc_repo.config["core"].get("remote") or "",
        }


if __name__ == "__main__":  # the child of PlanProcess
    json.dump(_plan_and_remote(Path(sys.argv[1])), sys.stdout)
