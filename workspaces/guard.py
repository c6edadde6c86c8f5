"""Run a command that must not outlive the process that started it.

    python -m workspaces.guard <command> [args...]

The flow runs each `dvc repro` in a process group of its own, so that a timeout or Ctrl-C can
stop the stage with it. But if the flow's process dies outright (SIGKILL, a worker killed, a
host that loses its agent), nothing would stop that group: the stage would go on writing and
DVC would record it for a run nobody watches. The guard leads the group, asks the kernel for
SIGTERM when its parent dies (Linux PR_SET_PDEATHSIG), and on it stops the group as a timeout
would: SIGINT (the stage rolls its outputs back and marks its MLflow run KILLED), a grace
period, then SIGKILL. Its exit status is the command's.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time

GRACE_SECONDS = 10.0
_PR_SET_PDEATHSIG = 1


def _stop_group(child: subprocess.Popen) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(0, signal.SIGINT)
    deadline = time.monotonic() + GRACE_SECONDS
    while child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.killpg(0, signal.SIGKILL)  # the rest of the group, this process last


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: python -m workspaces.guard <command> [args...]", file=sys.stderr)  # noqa: T201
        return 2
    parent = os.getppid()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # the parent died before the signal was set
        return 1
    # SIGINT reaches the whole group (a timeout, Ctrl-C): the command handles it; so do we,
    # by waiting for it. Set before the command starts, which then begins with SIGINT's default
    # action even where this process inherited it ignored (a flow or worker started in the
    # background by a shell without job control, or under nohup): an ignored SIGINT would
    # survive the exec, and the command would run on until the SIGKILL after the grace.
    signal.signal(signal.SIGINT, lambda signum, frame: None)
    child = subprocess.Popen(argv)

    def on_term(signum: int, frame: object) -> None:
        _stop_group(child)

    signal.signal(signal.SIGTERM, on_term)
    while True:
        try:
            return child.wait()
        except InterruptedError:
            continue


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
