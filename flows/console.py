"""What a person sees in the terminal when a flow runs: a line per stage, then a summary.

Prefect's own console log is turned down to warnings for command-line runs (the full log,
stage output included, still goes to the Prefect API and its UI; `--verbose` shows it here).
The flow's stage task logs a `stage` event when a stage starts and ends; the handler below
turns those into a progress line and, on a terminal, a spinner while a stage runs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# Set before Prefect is imported (its logging and settings read them once).
QUIET_ENV = {
    "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": "WARNING",
    # The temporary server's telemetry insert races its fresh SQLite file and prints a
    # "database is locked" traceback (stack-pitfalls.md); nothing here needs telemetry.
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
}
STAGE_EVENT = "pipeline_stage"  # the `extra` key of the stage task's start/end log records
# What the summary says of the flow's `dvc push` (flows.pipeline_flow.push_outputs), by status.
PUSH_PHRASES = {
    "pushed": "data pushed to DVC remote {remote}",
    "up to date": "DVC remote {remote} already up to date",
}
EXIT_FAILED, EXIT_BAD_INPUT, EXIT_TRANSIENT = 1, 65, 75


def prepare_environment(verbose: bool) -> None:
    for key, value in QUIET_ENV.items():
        if verbose and key.startswith("PREFECT_LOGGING"):
            continue
        os.environ.setdefault(key, value)


def _console() -> Any:
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)


class StageProgress(logging.Handler):
    """Renders the stage task's start/end events: a spinner while running, a line when done."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.console = _console()
        self.status: Any = None

    def emit(self, record: logging.LogRecord) -> None:
        event = getattr(record, STAGE_EVENT, None)
        if not event:
            return
        if event["phase"] == "start":
            self._stop()
            if self.console.is_terminal:
                self.status = self.console.status(f"running [bold]{event['stage']}[/] …")
                self.status.start()
            return
        self._stop()
        mark = {"ran": "[green]✓[/]", "skipped": "[dim]·[/]", "restored": "[cyan]↺[/]"}.get(
            event["status"], "[red]✗[/]"
        )
        detail = {
            "ran": f"{event.get('seconds', 0):.1f} s",
            "restored": "from DVC's run-cache",
        }.get(event["status"], "unchanged")
        if event.get("attempts", 1) > 1:
            detail += f", attempt {event['attempts']}"
        self.console.print(f"  {mark} {event['stage']:<18} {event['status']:<8} {detail}")

    def _stop(self) -> None:
        if self.status is not None:
            self.status.stop()
            self.status = None


class _WithoutTraceback(logging.Formatter):
    """Prefect's console lines without the tracebacks it attaches to a failed run's errors:
    the summary says what failed; the traceback stays in the run's log in the Prefect API."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        saved = record.exc_info, record.exc_text
        record.exc_info = record.exc_text = None
        try:
            return self.inner.format(record)
        finally:
            record.exc_info, record.exc_text = saved


_QUIETED: list[bool] = []  # Prefect's logging set up and quieted once per process
_QUIETING = threading.Lock()


def console_without_tracebacks() -> None:
    """Prefect's logging set up, its console handlers without tracebacks (once; the command
    line may do it ahead, in the thread that imports Prefect)."""
    with _QUIETING:
        if not _QUIETED:
            _quiet_prefect_console()
            _QUIETED.append(True)


def _quiet_prefect_console() -> None:
    from prefect.logging.configuration import ensure_logging_setup
    from prefect.logging.handlers import PrefectConsoleHandler

    # Importing Prefect's flow sets its logging up; a second setup_logging took 0.1-0.2 s.
    ensure_logging_setup()
    for name in ("", "prefect", "prefect.flow_runs", "prefect.task_runs"):
        for handler in logging.getLogger(name).handlers:
            if isinstance(handler, PrefectConsoleHandler) and not isinstance(
                handler.formatter, _WithoutTraceback
            ):
                handler.setFormatter(_WithoutTraceback(handler.formatter or logging.Formatter()))


@contextlib.contextmanager
def quiet_prefect(verbose: bool = False) -> Iterator[None]:
    """A command-line flow run: stage progress on the terminal, no heartbeat thread (it rounds
    every run up to the next second; a one-off run has no deployment to reveal it crashed)."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    if not verbose:
        console_without_tracebacks()
    progress = StageProgress()
    logger = logging.getLogger("prefect.task_runs")
    logger.addHandler(progress)
    try:
        with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
            yield
    finally:
        progress._stop()
        logger.removeHandler(progress)


def say(line: str) -> None:
    """One line for the person at the terminal (stderr, like the rest of the summary)."""
    _console().print(line)


def interrupted() -> None:
    _console().print("[yellow]interrupted[/]: the running stage was stopped, params.yaml kept")


def nothing_to_do(workspace: Path, plan: list[dict[str, Any]]) -> int:
    """A plain run whose DVC plan is all unchanged: the summary, from the files DVC tracks."""
    from flows.report import metric_rows

    result = {
        "stages": [{"stage": stage["name"], "status": "skipped"} for stage in plan],
        "metrics": metric_rows(workspace),
    }
    console = _console()
    console.print(
        f"nothing to do: DVC finds all {len(plan)} stages of {workspace} unchanged "
        "(no Prefect run started)"
    )
    for line in summary_lines(result, None)[1:-1]:  # not the pointer to this run's artifacts
        console.print(line)
    from timeline import upstream

    with contextlib.suppress(Exception):  # a quick check of a local source only
        for line in upstream.notice(upstream.check(workspace, local_only=True)):
            console.print(f"[yellow]{line}[/]")
    return 0


def summary(state: Any, prefect_ui: str | None) -> int:
    """The run's summary; the exit status (0, or 65 bad input, 75 transient, 1 other).
    `prefect_ui`: the running Prefect server the run used, None for a temporary one."""
    from workspaces.repro import BadStageInput, TransientStageFailure

    console = _console()
    if not state.is_completed():
        error = state.result(raise_on_failure=False)
        console.print(f"[red bold]pipeline failed[/]: {error}")
        if isinstance(error, BadStageInput | ValueError):
            return EXIT_BAD_INPUT
        return EXIT_TRANSIENT if isinstance(error, TransientStageFailure) else EXIT_FAILED
    result = state.result()
    for line in summary_lines(result, prefect_ui):
        console.print(line)
    return 0


def summary_lines(result: dict[str, Any], prefect_ui: str | None = None) -> list[str]:
    """The few lines that end a successful run."""
    stages = result["stages"]
    ran = [s["stage"] for s in stages if s["status"] == "ran"]
    restored = [s["stage"] for s in stages if s["status"] == "restored"]
    unchanged = len(stages) - len(ran) - len(restored)
    again = f", {len(restored)} restored from DVC's run-cache" if restored else ""
    lines = [f"[bold]{len(ran)} stage(s) ran{again}, {unchanged} unchanged[/]"]
    if result.get("experiment"):
        lines.append(f"experiment: {result['experiment']} (dvc exp show)")
    pushed = result.get("pushed") or {}
    said = PUSH_PHRASES.get(pushed.get("status", ""))
    if said:
        attempts = pushed.get("attempts", 1)
        again = f" (attempt {attempts})" if attempts > 1 else ""
        lines.append(said.format(remote=pushed["remote"]) + again)
    metrics = {m["split"]: m for m in result.get("metrics") or []}
    record = result.get("mlflow") or {}
    model = record.get("model_version")
    previous = record.get("previous_version") or {}
    for split in ("validation", "test"):
        if split not in metrics:
            continue
        rmse = metrics[split]["rmse"]
        before = previous.get(f"{split}.rmse")
        change = f" (v{previous['version']}: {float(before):.3f})" if before else ""
        lines.append(f"{split} RMSE {rmse:.3f} min{change}")
    if model:
        lines.append(f"model: {record['model_name']} version {model}")
        decision = record.get("decision")
        if decision:
            lines.append(f"  {decision['verdict']}: {decision['reason']}")
    elif not ran:
        lines.append("model: unchanged (the one dvc.lock records)")
    lines += [f"[yellow]{line}[/]" for line in result.get("upstream") or []]
    uri = record.get("uri") or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"
    mlflow_ui = uri if uri.startswith("http") else f"mlflow ui --backend-store-uri {uri}"
    run_id = result.get("pipeline_run_id")
    if prefect_ui and run_id:
        prefect = f"{prefect_ui}/runs/flow-run/{run_id}"
    else:
        prefect = prefect_ui or "prefect server start (its UI shows this run)"
    lines.append(f"look: {mlflow_ui} · {prefect} · artifact pipeline-report")
    return lines
