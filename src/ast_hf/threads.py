"""How many CPU threads a long-running command uses: the cores it may run on, less those other processes keep busy.

torch's CPU threads wait for each other at every operator; when a busy neighbour holds one of the cores, the
thread that shares it delays all the others (on a 2-core machine a training step went from 82 ms to 343 ms with
2 threads, and from 138 ms to 123 ms with 1). So commands that run for minutes (the demo, training, tagging
archives) take the cores that are free when they start, and `--threads N` overrides the choice.
"""

from __future__ import annotations

import numbers
import os
import time
from concurrent.futures import ThreadPoolExecutor

SAMPLE_SECONDS = 0.25  # how long the machine's CPU use is watched


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask; the machine's count where there is none)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _cpu_times() -> tuple[int, int] | None:
    """(busy, total) jiffies of all CPUs since boot, from /proc/stat; None where there is no /proc."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields[:8]) - idle, sum(fields[:8])


def busy_cores(seconds: float = SAMPLE_SECONDS) -> float:
    """Cores' worth of CPU time other processes used over the next `seconds` (this process sleeps meanwhile);
    0.0 where the machine does not say (no /proc/stat)."""
    before, own_before = _cpu_times(), time.process_time()
    time.sleep(seconds)
    after, own_after = _cpu_times(), time.process_time()
    if before is None or after is None or after[1] <= before[1]:
        return 0.0
    busy_fraction = (after[0] - before[0]) / (after[1] - before[1])
    cpus = os.cpu_count() or 1
    own = (own_after - own_before) / seconds
    return max(0.0, busy_fraction * cpus - own)


def choose_threads(requested: int | None = None) -> int:
    """`requested` when given (>= 1), else the usable cores less the busy ones (rounded), at least 1; under
    `torchrun` / `accelerate launch` each of the LOCAL_WORLD_SIZE processes of this machine takes its share (they
    start together, so none would see the others' load)."""
    if requested is not None:
        if isinstance(requested, bool) or not isinstance(requested, numbers.Integral) or requested < 1:
            raise ValueError(f"threads must be a positive whole number, got {requested!r}")
        return int(requested)
    cores = usable_cores()
    free = max(1, min(cores, round(cores - min(busy_cores(), cores))))
    return max(1, free // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))


def use_threads(requested: int | None = None) -> int:
    """`torch.set_num_threads(choose_threads(requested))`; returns the count.

    The machine is watched while torch imports (seconds, against the watch's `SAMPLE_SECONDS`): the import's CPU
    time is this process's own, which `busy_cores` leaves out, so the watch adds no wait to a command."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        chosen = pool.submit(choose_threads, requested)
        import torch

        threads = chosen.result()
    torch.set_num_threads(threads)
    return threads


def numba_threads() -> int:
    """Size numba's thread pool (at most NUMBA_NUM_THREADS) to torch's intra-op thread count, so that the compiled
    CPU kernels (`filterbank_cpu`, `softmax_cpu`) follow this module's choice under load; returns the count.
    1: the caller runs its serial kernel, and numba's pool never starts."""
    import numba
    import torch

    threads = min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)
    if threads > 1:
        numba.set_num_threads(threads)
    return threads


__all__ = ["choose_threads", "use_threads", "busy_cores", "usable_cores", "numba_threads"]
