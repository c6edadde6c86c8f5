"""One DVC process for a flow run's DVC commands, run one after another.

    python -u workspaces/dvc_worker.py <marker>     (started by workspaces.repro.DvcWorker)

A `dvc repro --single-item` process per stage paid Python's start and DVC's imports every time
(about 1 s a stage here: FINDINGS.md, "One DVC process for a flow run"); this process pays them
once. Each request is a JSON line, `{"args": [...], "env": {...}}`: the command line after
`dvc` and the whole environment it runs with (DVC hands it to the stage's command). The request
runs as DVC's own command line does (`dvc.cli.main`), in this process's directory, with its
output and the stage's on stdout as they come; then `<marker> <exit status>` ends the answer.

Requests are read from a private copy of stdin: the stage commands get /dev/null, so nothing a
stage does can read the next request. End of input: the process ends. Run as a script (the
guard's way), so the project is not importable here and only DVC is.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import sys

# What DVC's first `repro` imports (0.4-0.5 s of the first request's 0.6-1.2 s here): imported
# while the flow still works on other things, not when the first stage is asked for. Optional:
# a module a DVC release no longer has is skipped.
WARM_UP = (
    "dvc.repo",
    "dvc.repo.index",
    "dvc.repo.reproduce",
    "dvc.commands.repro",
    "dvc.dvcfile",
    "dvc.stage",
)


def serve(marker: str) -> int:
    requests = os.fdopen(os.dup(0), "r")
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    try:
        from dvc.cli import main as dvc
        from dvc.ui import ui

        for module in WARM_UP:
            with contextlib.suppress(ImportError):
                importlib.import_module(module)
        for line in requests:
            request = json.loads(line)
            os.environ.clear()
            os.environ.update(request["env"])
            # Off, as in a new process: DVC's main turns it on unless the command is quiet, and
            # has no call to turn it off (tests/test_dvc_worker.py fails if this stops working).
            ui._enabled = False
            status = dvc(request["args"])
            sys.stderr.flush()
            sys.stdout.write(f"{marker} {status}\n")
            sys.stdout.flush()
    except KeyboardInterrupt:  # between requests: the flow is stopping this process
        return 130
    except BrokenPipeError:  # the flow died: nobody reads the answer
        return 141  # 128 + SIGPIPE, as DVC's command line says it
    return 0


if __name__ == "__main__":
    del sys.path[0]  # this folder: its modules' names (repro, remote, locks) are not DVC's
    status = serve(sys.argv[1])
    # Every answer is written and flushed, and DVC closed each repository it opened: the
    # interpreter's teardown (about 0.4 s of DVC's modules here) would only delay the flow,
    # which waits for this process to end.
    with contextlib.suppress(OSError):
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(status)
