"""The Prefect flows on the real pipeline: real dvc in a temporary git repo, real Prefect.

Prefect runs against `prefect_test_harness` (a temporary server, once per session).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from stages.common import BadInputError, file_md5
from tests.conftest import dvc_project, run, running
from workspaces import experiments, repro

STAGES = [
    "ingest@2025-01",
    "ingest@2025-02",
    "ingest@2025-03",
    "ingest_zones",
    "prepare@2025-01",
    "prepare@2025-02",
    "prepare@2025-03",
    "features",
    "train",
    "evaluate",
]
FIRST_OUTPUT = "data/raw/green_tripdata_2025-01.parquet"
# The first stage's output, write-locked by another process the way a running dvc locks it.
HOLD_RWLOCK = """
import os, sys
from dvc.fs import LocalFileSystem
from dvc.rwlock import rwlock
repo, out = sys.argv[1], sys.argv[2]
tmp = os.path.join(repo, ".dvc", "tmp")
os.makedirs(tmp, exist_ok=True)
with rwlock(tmp, LocalFileSystem(), "test: another dvc", [], [os.path.join(repo, out)], False):
    print("held", flush=True)
    sys.stdin.readline()
"""
EXP_SHOW_META = {"Experiment", "rev", "typ", "Created", "parent", "State", "Executor"}


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "180"
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


def task_runs(flow_run_id: str) -> dict[str, object]:
    """The flow run's task runs by name, read back from the Prefect server."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    return {r.name: r for r in runs}


def final_states(flow_run_id: str, wait_seconds: float = 15) -> dict[str, str]:
    """Task run state names once the server has them all (task states arrive as events,
    shortly after the flow returns)."""
    deadline = time.monotonic() + wait_seconds
    while True:
        states = {
            name: run.state.name if run.state else "(no state yet)"
            for name, run in task_runs(flow_run_id).items()
        }
        # A task run's name and final state arrive as events too: a late one still shows its
        # generated name (`repro_stage-22f`) and Pending.
        pending = {"Scheduled", "Pending", "Running", "(no state yet)"} & set(states.values())
        settled = set(states) == set(STAGES) and not pending
        if settled or time.monotonic() > deadline:
            return states
        time.sleep(0.2)


def artifacts(flow_run_id: str) -> dict[str, object]:
    """The flow run's artifacts by key, read back from the Prefect server."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    return {a.key: a for a in found}


def exp_row(repo: Path, name: str) -> dict[str, object]:
    import dvc.api

    rows = [r for r in dvc.api.exp_show(repo=str(repo)) if r["Experiment"] == name]
    assert len(rows) == 1, f"experiment {name} not in `dvc exp show` of {repo}"
    return {k: v for k, v in rows[0].items() if k not in EXP_SHOW_META}


# --------------------------------------------------------------------------- fast


def test_classify_reads_dvc_and_stage_messages() -> None:
    ok = repro.CommandResult(0, ["Stage 'train' didn't change, skipping"], False)
    assert repro.classify("train", ok, 60) == "skipped"
    assert repro.classify("train", repro.CommandResult(0, ["Running"], False), 60) == "ran"
    cached = ["Stage 'train' is cached - skipping run, checking out outputs"]
    assert repro.classify("train", repro.CommandResult(0, cached, False), 60) == "restored"
    bad = repro.CommandResult(
        255,
        [
            "BAD INPUT in stage train: params.yaml: invalid params:",
            "  model.alpha: expected a value >= 0 (got -1)",
            "ERROR: failed to reproduce 'train': failed to run: python -m stages.train, exited "
            "with 65",
        ],
        False,
    )
    with pytest.raises(repro.BadStageInput, match=r"(?s)invalid params:.*model\.alpha"):
        repro.classify("train", bad, 60)
    busy = repro.CommandResult(
        255, ["ERROR: failed to reproduce 'train': '/r/models/model.json' is busy"], False
    )
    with pytest.raises(repro.TransientStageFailure):
        repro.classify("train", busy, 60)
    with pytest.raises(repro.TransientStageFailure, match="within 60 s"):
        repro.classify("train", repro.CommandResult(-2, [], True), 60)
    other = repro.CommandResult(255, ["ERROR: unexpected error"], False)
    with pytest.raises(repro.StageError) as info:
        repro.classify("train", other, 60)
    assert not isinstance(info.value, repro.TransientStageFailure)


def test_timeout_stops_the_whole_process_group(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    project = dvc_project(
        tmp_path / "project", {"slow": f"sleep 60 & echo $! > {pid_file}; echo started; wait"}
    )
    started = time.monotonic()
    result = repro.run_dvc(
        ["repro", "--single-item", "slow"],
        project,
        os.environ,
        timeout=8.0,
        on_line=lambda line: None,
    )
    assert result.timed_out and "started" in result.lines, result.lines
    assert time.monotonic() - started < 8 + 10  # the timeout and the grace at most
    child = int(pid_file.read_text())
    time.sleep(0.2)
    assert not running(child)  # the grandchild went with its group


@pytest.mark.parametrize("sigint", ["default", "ignored"])
def test_a_failing_workspace_stops_only_its_own_stages(tmp_path: Path, sigint: str) -> None:
    """Parallel experiments (compare, backtest) run in threads of one process: the one that
    fails stops its running stage, never the other workspace's. Also when this process
    inherited SIGINT ignored (started in the background by a shell without job control, as
    a worker or CI can be): the guard gives its command SIGINT's default action back."""
    import signal

    handler = signal.SIG_IGN if sigint == "ignored" else signal.getsignal(signal.SIGINT)
    previous = signal.signal(signal.SIGINT, handler)
    try:
        _stop_one_of_two_workspaces(tmp_path)
    finally:
        signal.signal(signal.SIGINT, previous)


def _stop_one_of_two_workspaces(tmp_path: Path) -> None:
    import threading

    results: dict[str, repro.CommandResult] = {}
    command = {"step": "echo started; sleep 5; echo done"}
    workspaces = {name: dvc_project(tmp_path / name, command) for name in ("failing", "other")}
    started = {name: threading.Event() for name in workspaces}

    def stage(name: str) -> None:
        with repro.dvc_process(workspaces[name]):
            results[name] = repro.run_dvc(
                ["repro", "--single-item", "step"],
                workspaces[name],
                os.environ,
                timeout=120,
                on_line=lambda line: line == "started" and started[name].set(),
            )

    threads = [threading.Thread(target=stage, args=(name,)) for name in workspaces]
    for thread in threads:
        thread.start()
    # Stopped once both commands run (not after a fixed second: a slow machine).
    assert all(event.wait(60) for event in started.values())
    assert repro.stop_all(workspaces["failing"]) == 1
    for thread in threads:
        thread.join()
    failing, other = results["failing"], results["other"]
    assert "started" in failing.lines and "done" not in failing.lines and failing.returncode != 0
    assert "done" in other.lines and other.returncode == 0, other.lines


def test_override_args_are_dvc_exp_run_set_syntax() -> None:
    args = experiments.override_args({"model.alpha": 0.05, "model.type": "lasso", "x.flag": True})
    assert args == ["model.alpha=0.05", "model.type=lasso", "x.flag=true"]


def test_an_interrupt_is_remembered_when_its_keyboard_interrupt_was_swallowed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Prefect swallows a KeyboardInterrupt that lands while a task run finishes; the flow
    checks between stages that no signal came."""
    monkeypatch.setattr(repro, "_INTERRUPTS", [])
    repro.check_interrupted()  # nothing received: goes on
    try:
        repro.interrupt(signal.SIGTERM, None)
    except KeyboardInterrupt:
        pass  # what Prefect's engine does with it after a task's final state
    with pytest.raises(KeyboardInterrupt, match=f"signal {int(signal.SIGTERM)}"):
        repro.check_interrupted()


# --------------------------------------------------------------------------- slow


@pytest.mark.slow
def test_flow_runs_the_pipeline_then_shows_skips(project: Path, prefect_harness: None) -> None:
    from flows.pipeline_flow import pipeline

    # The command line's early plan (a child process) is DVC's in-process verdict.
    plan = repro.stage_plan(project)
    assert [p.name for p in plan] == STAGES and all(p.changed for p in plan)
    early = repro.PlanProcess.start(project)
    assert early.result() == repro.plan_to_json(plan)
    assert early.default_remote() == ""  # a scratch project has no DVC remote

    first = pipeline(workspace=str(project), retry_delay_seconds=1)
    assert [o["stage"] for o in first["stages"]] == STAGES
    assert {o["status"] for o in first["stages"]} == {"ran"}
    assert "up to date" in run(["dvc", "status"], project).stdout
    plan = repro.PlanProcess.start(project).result()
    assert plan == repro.plan_to_json(repro.stage_plan(project))
    assert not any(p["changed"] for p in plan)
    validation = next(m for m in first["metrics"] if m["split"] == "validation")
    assert validation["rmse"] > 0 and validation["rows"] > 1000
    record = first["mlflow"]
    assert record["model_version"] == "1" and set(record["stage_runs"]) == set(STAGES)
    lock_before = (project / "dvc.lock").read_text()
    shown = artifacts(first["pipeline_run_id"])
    report = shown["pipeline-report"].data
    train_outs = yaml.safe_load(lock_before)["stages"]["train"]["outs"]
    model_md5 = next(o["md5"] for o in train_outs if o["path"] == "models/model.json")
    assert "| 2025-01 |" in report and "duration_out_of_range" in report
    assert "version 1" in report and model_md5 in report
    assert "validation" in shown["pipeline-metrics"].data

    second = pipeline(workspace=str(project))
    assert {o["status"] for o in second["stages"]} == {"skipped"}
    assert (project / "dvc.lock").read_text() == lock_before
    assert final_states(second["pipeline_run_id"]) == dict.fromkeys(STAGES, "Skipped")
    # Nothing ran: no MLflow lookup; the report names the model by its dvc.lock md5.
    assert second["mlflow"] is None
    assert model_md5 in artifacts(second["pipeline_run_id"])["pipeline-report"].data


@pytest.mark.slow
def test_held_lock_is_retried_and_the_flow_completes(project: Path, prefect_harness: None) -> None:
    from flows.pipeline_flow import pipeline

    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            HOLD_RWLOCK,
            str(project),
            "data/raw/green_tripdata_2025-01.parquet",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    refused = threading.Event()

    class ReleaseOnRefusal(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "is busy" in record.getMessage():
                refused.set()

    def release() -> None:
        refused.wait(timeout=300)
        holder.communicate("\n", timeout=30)

    handler = ReleaseOnRefusal()
    logging.getLogger("prefect.task_runs").addHandler(handler)
    releaser = threading.Thread(target=release)
    releaser.start()
    try:
        result = pipeline(
            workspace=str(project), retries=3, retry_delay_seconds=1, retry_jitter_factor=0
        )
    finally:
        refused.set()
        releaser.join()
        logging.getLogger("prefect.task_runs").removeHandler(handler)
    first = result["stages"][0]
    assert first["stage"] == "ingest@2025-01" and first["attempts"] == 2
    assert [o["status"] for o in result["stages"]] == ["ran"] * len(STAGES)
    assert "up to date" in run(["dvc", "status"], project).stdout


@pytest.mark.slow
def test_bad_input_fails_once_with_the_stage_message(project: Path, prefect_harness: None) -> None:
    from flows.pipeline_flow import pipeline

    # An override the params schema refuses: the flow fails before any stage, naming it.
    params_before = (project / "params.yaml").read_text()
    state = pipeline(
        workspace=str(project), overrides={"model.alpha": -1}, retries=3, return_state=True
    )
    assert state.is_failed() and "model.alpha" in state.message
    with pytest.raises(BadInputError, match=r"model\.alpha.*got -1"):
        state.result()
    assert task_runs(str(state.state_details.flow_run_id)) == {}
    assert (project / "params.yaml").read_text() == params_before

    # Input only a stage can judge (every trip filtered out): that stage fails once.
    (project / "params.yaml").write_text(
        params_before.replace("max_distance_miles: 100", "max_distance_miles: 0.001")
    )
    state = pipeline(workspace=str(project), retries=3, retry_delay_seconds=1, return_state=True)
    assert state.is_failed()
    assert "BAD INPUT in stage prepare@2025-01" in state.message and "every one of" in state.message
    with pytest.raises(repro.BadStageInput, match=r"month 2025-01"):
        state.result()
    runs = task_runs(str(state.state_details.flow_run_id))
    assert runs["prepare@2025-01"].run_count == 1 and runs["prepare@2025-01"].state.is_failed()
    assert "features" not in runs
    # Nothing half-done: no cleaned month, dvc.lock without prepare.
    assert not (project / "data" / "clean" / "trips_2025-01.parquet").exists()
    assert "prepare@2025-01" not in yaml.safe_load((project / "dvc.lock").read_text())["stages"]


@pytest.mark.slow
def test_deployment_parameters_never_reach_a_shell(
    project: Path, prefect_harness: None, tmp_path: Path
) -> None:
    """A run of the served deployment, started with a payload in its `overrides` parameter."""
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL

    canary = tmp_path / "CANARY"
    params_before = (project / "params.yaml").read_text()
    env = {
        **os.environ,
        "PREFECT_API_URL": PREFECT_API_URL.value(),
        "PREFECT_RUNNER_POLL_FREQUENCY": "1",
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "flows.pipeline", "serve", "--workspace", str(project)],
        cwd=Path(__file__).resolve().parents[1],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        flow_run = None
        deadline = time.monotonic() + 120
        while flow_run is None:
            try:
                flow_run = run_deployment(
                    "taxi-pipeline/scheduled",
                    parameters={"overrides": {"data.colour": f"'green$(touch {canary})'"}},
                    timeout=180,
                )
            except Exception:  # the deployment is not registered yet
                assert server.poll() is None and time.monotonic() < deadline
                time.sleep(1)
        assert flow_run.state.is_failed(), flow_run.state
        assert "data.colour" in flow_run.state.message, flow_run.state.message
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=60)
    assert not canary.exists()
    assert (project / "params.yaml").read_text() == params_before


@pytest.mark.slow
def test_experiment_mode_equals_dvc_exp_run(built: Path, tmp_path: Path) -> None:
    """The README's command line, in Prefect's ephemeral mode (no server, no harness)."""
    project = built
    twin = tmp_path / "twin"
    shutil.copytree(project, twin, symlinks=True)
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
    }
    env.pop("PREFECT_API_URL", None)
    canary = tmp_path / "CANARY"
    refused = run(
        [sys.executable, "-m", "flows.pipeline", "--set", f"data.colour='green$(touch {canary})'"],
        project,
        env,
        check=False,
    )
    assert refused.returncode != 0 and "data.colour" in refused.stderr, refused.stderr
    assert not canary.exists()
    assert run(["git", "status", "--porcelain"], project).stdout == ""

    cli = [sys.executable, "-m", "flows.pipeline", "--set", "model.alpha=0.05"]
    flow_run = run([*cli, "--name", "flow-alpha"], project, env)
    assert "experiment: flow-alpha" in flow_run.stderr
    run(["dvc", "exp", "run", "-S", "model.alpha=0.05", "-n", "cli-alpha"], twin)

    flow_exp, cli_exp = exp_row(project, "flow-alpha"), exp_row(twin, "cli-alpha")
    assert flow_exp["model.alpha"] == 0.05 and flow_exp["validation.rmse"] > 0
    # Params, metrics and the md5 of every data file and the model: all equal.
    assert flow_exp == cli_exp
    assert "flow-alpha" in run(["dvc", "exp", "list", "--name-only"], project).stdout


@pytest.mark.slow
def test_a_run_with_nothing_stale_starts_no_server(built: Path, tmp_path: Path) -> None:
    """The README's main command when DVC finds nothing stale: the summary from the files
    DVC tracks, and neither a Prefect server nor a flow run; with work to do, the flow runs
    on the project's kept server, which the next run uses and `stop` stops."""
    from flows import local_server

    home = tmp_path / "prefect-home"
    env = {**os.environ, "PREFECT_HOME": str(home), local_server.IDLE_ENV: "5"}
    env.pop("PREFECT_API_URL", None)
    noop = run([sys.executable, "-m", "flows.pipeline"], built, env)
    assert "nothing to do: DVC finds all 10 stages" in noop.stderr, noop.stderr
    assert "validation RMSE" in noop.stderr and "Traceback" not in noop.stderr
    assert not list(home.rglob("*.db")), "a Prefect database was created"
    assert local_server.running_kept_server(built) is None

    def run_with_alpha(alpha: float) -> str:
        params = yaml.safe_load((built / "params.yaml").read_text())
        params["model"]["alpha"] = alpha
        (built / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        work = run([sys.executable, "-m", "flows.pipeline"], built, env)
        assert "2 stage(s) ran, 8 unchanged" in work.stderr, work.stderr
        return work.stderr

    try:
        first = run_with_alpha(0.5)
        assert list(home.rglob("*.db")), "the run that did work left no Prefect record"
        kept = local_server.running_kept_server(built)
        assert kept is not None, "no kept server after a run that did work"
        assert f"{kept.ui}/runs/flow-run/" in first  # the summary links to the run in its UI
        second = run_with_alpha(0.6)
        assert local_server.running_kept_server(built) == kept, "a second server was started"
        assert f"{kept.ui}/runs/flow-run/" in second
        status = run([sys.executable, "-m", "flows.local_server", "status"], built, env)
        assert f"kept Prefect server {kept.ui}: answers" in status.stdout
        # Nothing stale with the kept server running (Prefect imported during the plan).
        for _ in range(3):
            noop = run([sys.executable, "-m", "flows.pipeline"], built, env)
            assert "nothing to do" in noop.stderr and "Fatal" not in noop.stderr, noop.stderr
    finally:
        stopped = run([sys.executable, "-m", "flows.local_server", "stop"], built, env)
    assert "stopped the kept Prefect server" in stopped.stdout, stopped.stdout
    assert not running(kept.pid)
    status = run([sys.executable, "-m", "flows.local_server", "status"], built, env, check=False)
    assert status.returncode == 3 and "no kept Prefect server" in status.stdout


@pytest.mark.slow
def test_compare_models_table_has_one_row_per_param_set(built: Path, prefect_harness: None) -> None:
    from flows.compare import compare_models

    project = built

    param_sets = [
        {"model.type": "ridge", "model.alpha": 1.0},
        {"model.type": "lasso", "model.alpha": 0.01},
        {"model.type": "xgboost", "model.xgboost.n_rounds": 30},
    ]
    result = compare_models(workspace=str(project), param_sets=param_sets)
    rows = result["rows"]
    assert [r["params"] for r in rows] == [
        "model.type=ridge, model.alpha=1.0",
        "model.type=lasso, model.alpha=0.01",
        "model.type=xgboost, model.xgboost.n_rounds=30",
    ]
    assert result["best"] == min(rows, key=lambda r: r["validation_rmse"])
    for row, overrides in zip(rows, param_sets, strict=True):
        shown = exp_row(project, row["experiment"])
        assert shown["validation.rmse"] == row["validation_rmse"]
        assert all(shown[k] == v for k, v in overrides.items())
    worktrees = run(["git", "worktree", "list"], project).stdout.splitlines()
    assert len(worktrees) == 1, worktrees


def _processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) of every process."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        found[int(entry.name)] = (int(stat[stat.rindex(")") + 2 :].split()[1]), cmdline)
    return found


def _descendants(pid: int) -> dict[int, str]:
    procs, found, todo = _processes(), {}, [pid]
    while todo:
        parent = todo.pop()
        for child, (ppid, cmd) in procs.items():
            if ppid == parent and child not in found:
                found[child] = cmd
                todo.append(child)
    return found


def _wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return value


@pytest.mark.slow
def test_interrupts_and_a_second_run_never_leave_wrong_data(built: Path, tmp_path: Path) -> None:
    """The command line, ephemeral Prefect: Ctrl-C and SIGTERM during train, and two runs at
    once in one workspace; also a stage stopped after its outputs were in place and before
    DVC recorded them."""
    project = built
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
    }
    env.pop("PREFECT_API_URL", None)
    params_before = (project / "params.yaml").read_bytes()

    def lock_state() -> tuple[str, float]:
        locked = yaml.safe_load((project / "dvc.lock").read_text())["stages"]["train"]
        model = next(o for o in locked["outs"] if o["path"] == "models/model.json")
        return model["md5"], locked["params"]["params.yaml"]["model"]["alpha"]

    # A train that runs until it is stopped (100,000 rounds on the small months take minutes),
    # so the signal lands in it however fast the stages before it are.
    slow_train = ["--set", "model.type=xgboost", "--set", "model.xgboost.n_rounds=100000"]
    for sig in (signal.SIGINT, signal.SIGTERM):
        flow = subprocess.Popen(
            [sys.executable, "-m", "flows.pipeline", *slow_train],
            cwd=project,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        _wait_for(
            lambda flow=flow: any("stages.train" in c for c in _descendants(flow.pid).values()),
            240,
            "train to start",
        )
        time.sleep(1.0)
        children = _descendants(flow.pid)
        server = [p for p, c in children.items() if "prefect server start" in c]
        signalled = time.monotonic()
        if sig == signal.SIGINT:
            os.killpg(flow.pid, sig)  # Ctrl-C in a terminal: the whole foreground group
        else:
            os.kill(flow.pid, sig)  # `kill <pid>`: the flow process alone
        _, stderr = flow.communicate(timeout=60)
        assert time.monotonic() - signalled < 30, stderr
        assert flow.returncode != 0, (signal.Signals(sig).name, stderr)
        assert "Traceback" not in stderr, stderr
        # Nothing of the run lives on: the stage, dvc, Prefect's temporary server.
        time.sleep(0.5)
        alive = _processes()
        assert not [p for p in children if p in alive], {
            p: children[p] for p in alive if p in children
        }
        assert server, children  # there was one, and it is gone
        # params.yaml as before, and dvc.lock's model is the file in place, with its params.
        assert (project / "params.yaml").read_bytes() == params_before
        model_md5, alpha = lock_state()
        assert alpha == 1.0 and model_md5 == file_md5(project / "models" / "model.json")
        assert "up to date" in run(["dvc", "status"], project).stdout

    # Two runs at once: the second is refused at once, naming the first; the first's
    # experiment holds its own params. The first is suspended (Ctrl-Z in its terminal) while
    # the second starts: a second run takes seconds to start, and the first, on the small
    # months, may finish within them and free the workspace (it did, once in CI).
    first = subprocess.Popen(
        [sys.executable, "-m", "flows.pipeline", "--set", "model.alpha=0.3", "--name", "a03"],
        cwd=project,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    lock_file = project / ".dvc" / "tmp" / "taxi-pipeline-run.lock"
    _wait_for(lambda: lock_file.is_file() and lock_file.read_text(), 240, "the first run")
    os.killpg(first.pid, signal.SIGSTOP)
    try:
        assert f"pid {first.pid}:" in lock_file.read_text()  # still held by the first
        second = run(
            [sys.executable, "-m", "flows.pipeline", "--set", "model.alpha=0.7", "--name", "a07"],
            project,
            env,
            check=False,
        )
    finally:
        os.killpg(first.pid, signal.SIGCONT)
    assert second.returncode != 0
    assert "in use by another pipeline run" in second.stderr, second.stderr
    _, first_err = first.communicate(timeout=300)
    assert first.returncode == 0, first_err
    assert exp_row(project, "a03")["model.alpha"] == 0.3
    assert "a07" not in run(["dvc", "exp", "list", "--name-only"], project).stdout


@pytest.mark.slow
def test_a_stage_stopped_between_its_outputs_and_dvc_lock_is_put_back(built: Path) -> None:
    """The window a fast stage can be stopped in: its outputs moved into place (a model and
    metrics of other params), dvc.lock not yet written. The failed experiment's put-back
    leaves the files dvc.lock names, the git-tracked ones as they were."""
    from flows.pipeline_flow import _put_back, _snapshot

    project = built
    params = (project / "params.yaml").read_bytes()
    lock = (project / "dvc.lock").read_bytes()
    outputs = _snapshot(project)
    assert "metrics/train.json" in outputs and "plots/residuals_by_hour.csv" in outputs
    model_before = (project / "models" / "model.json").read_bytes()
    (project / "models" / "model.json").write_text('{"type": "ridge", "from": "other params"}')
    (project / "metrics" / "train.json").write_text('{"train_rmse": 0.0}')
    _put_back(project, params, lock, outputs, stopped=1, logger=logging.getLogger("test"))
    assert (project / "models" / "model.json").read_bytes() == model_before
    assert (project / "metrics" / "train.json").read_bytes() == outputs["metrics/train.json"]
    assert (project / "dvc.lock").read_bytes() == lock
    assert "up to date" in run(["dvc", "status"], project).stdout
