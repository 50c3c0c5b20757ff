"""Keep freed memory in the process instead of handing it back to the kernel after every large tensor.

glibc's malloc serves large blocks with fresh `mmap`s and trims the top of its heap when a large block is freed;
the next tensor of that size then costs one page fault per 4 kB page on its first write. A featurised batch of 16
clips (an 8 MB output, the FFT's 4 MB temporaries) paid ~5100 faults per call once the caller had dropped the
previous batch, which is what a training loop or a tagger does (benchmarks/: the feature extraction row, 1.40x
against 1.57x transformers' with this setting, both sides in the same process, before the compiled filterbank
kernels; how many faults depends on the process's history, as glibc raises its mmap threshold as it goes).
Allocators tuned for PyTorch on CPUs (jemalloc, tcmalloc, Intel's launch scripts) keep such memory for the same
reason.

This is a process-wide setting, so the library never applies it on import: ast-hf's command line applies it
(`AST_HF_KEEP_FREED_MEMORY=0` leaves malloc alone), and a program of your own may call `keep_freed_memory()`.
The cost: memory freed after a peak stays with the process for reuse (RSS does not shrink back) instead of
going back to the system.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import sys

# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# Blocks up to this size come from the heap, and the heap is trimmed only when this much lies free at its top.
KEEP_BYTES = 64 << 20
# mallopt takes a C int: a larger value would reach glibc cut to its low 32 bits (4 GB + 5 as 5 bytes).
MAX_LIMIT_BYTES = (1 << 31) - 1


@functools.cache
def _glibc():
    if not sys.platform.startswith("linux"):
        return None
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if hasattr(libc, "gnu_get_libc_version") else None  # glibc (which has mallopt), not musl


def keep_freed_memory(limit_bytes: int = KEEP_BYTES) -> bool:
    """Have glibc's malloc serve blocks up to `limit_bytes` from its heap and keep up to that much freed memory for
    reuse (`mallopt` M_MMAP_THRESHOLD and M_TRIM_THRESHOLD). Returns whether it was applied: False on other C
    libraries (musl, macOS, Windows), where nothing changes, and when `AST_HF_KEEP_FREED_MEMORY=0`.

    Raises:
        ValueError: `limit_bytes` is not a positive int, or is above `MAX_LIMIT_BYTES` (mallopt's C int).
    """
    if isinstance(limit_bytes, bool) or not isinstance(limit_bytes, int) or limit_bytes <= 0:
        raise ValueError(f"limit_bytes must be a positive number of bytes, got {limit_bytes!r}")
    if limit_bytes > MAX_LIMIT_BYTES:
        raise ValueError(f"limit_bytes must be at most {MAX_LIMIT_BYTES} (2 GB - 1: glibc's mallopt takes a C int), "
                         f"got {limit_bytes}")
    if os.environ.get("AST_HF_KEEP_FREED_MEMORY", "1") == "0":
        return False
    libc = _glibc()
    if libc is None:
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, limit_bytes)) and bool(libc.mallopt(M_TRIM_THRESHOLD, limit_bytes))


__all__ = ["keep_freed_memory", "KEEP_BYTES"]
