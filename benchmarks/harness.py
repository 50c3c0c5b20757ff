"""Timing and memory measurement shared by every benchmark section.

Both sides of a comparison run in the same process, interleaved (ours, theirs, ours, theirs, ...) after a
warm-up, so that a change in machine load hits both alike; medians and min-max are reported, and ratios are
theirs / ours (above 1: ast-hf is faster).
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass, field


@dataclass
class Timing:
    name: str
    seconds: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    def summary(self, scale: float = 1.0, unit: str = "ms") -> str:
        factor = {"ms": 1e3, "s": 1.0}[unit] / scale
        return (f"{self.median * factor:.1f} {unit} ({min(self.seconds) * factor:.1f}-"
                f"{max(self.seconds) * factor:.1f})")


def interleaved(candidates: dict, repeats: int, warmup: int = 1) -> dict[str, Timing]:
    """Time each zero-argument callable `repeats` times, alternating between them, after `warmup` calls each.

    The order flips every repeat (ours, theirs / theirs, ours / ...): whichever runs second inherits the
    allocator state the first left (measured: the later one of a pair took up to 2x the page faults), so a
    fixed order would favour one side."""
    for fn in candidates.values():
        for _ in range(warmup):
            fn()
    timings = {name: Timing(name) for name in candidates}
    order = list(candidates.items())
    for i in range(repeats):
        for name, fn in (order if i % 2 == 0 else order[::-1]):
            start = time.perf_counter()
            fn()
            timings[name].seconds.append(time.perf_counter() - start)
    return timings


def paired_ratio(slow: Timing, fast: Timing) -> float:
    """Median over repeats of slow[i] / fast[i]: each pair ran back to back, so a stretch of machine load
    (this VM has ones that slow everything ~1.5x for seconds) hits both members of a pair instead of
    shifting one side's median."""
    return statistics.median(s / f for s, f in zip(slow.seconds, fast.seconds, strict=True))


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min) / {five:.2f} (5 min) on {os.cpu_count()} CPUs"


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_memory_mib(fn) -> float:
    """MiB by which the resident set size rose above its starting value while `fn()` ran (sampled every 0.2 ms
    in a thread; torch releases the GIL in its kernels, and large tensors are returned to the OS when freed)."""
    import threading

    base = _rss_bytes()
    peak = [base]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _rss_bytes())
            time.sleep(0.0002)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        fn()
    finally:
        done.set()
        thread.join()
    return (max(peak[0], _rss_bytes()) - base) / 2**20
