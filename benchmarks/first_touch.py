"""Memory a process touches for the first time vs memory it reuses, on this machine.

    python -m benchmarks.first_touch     # 128 MiB filled three times in a fresh process

The first fill faults in pages the process has never had; the next ones reuse them. On the
Firecracker VM of this project's machines the first can cost 10-20x the next when the guest's
memory has not been touched since it was reclaimed (FINDINGS, issue 13 target 4), which is
why the stages keep their temporaries small and reused.
"""

from __future__ import annotations

import time

import numpy as np

MIB = 128


def fill_seconds(mib: int = MIB, times: int = 3) -> list[float]:
    """Seconds to allocate and fill `mib` MiB, `times` times (each freed before the next)."""
    out = []
    for _ in range(times):
        started = time.perf_counter()
        block = np.ones(mib * 1024 * 1024 // 8)
        out.append(time.perf_counter() - started)
        del block
    return out


def main() -> None:
    seconds = fill_seconds()
    per_mib = ", ".join(f"{s * 1000 / MIB:.2f}" for s in seconds)
    print(f"{MIB} MiB filled 3 times: {per_mib} ms/MiB")


if __name__ == "__main__":
    main()
