"""`keep_freed_memory`: with it, featurising batch after batch (16 clips of 10 s, the previous output dropped
first, as a training loop does) reuses pages already touched; without it glibc hands freed blocks back and each
call faults thousands of pages in again. Each case runs in a fresh process (the setting is process-wide).

Without the setting, how many blocks glibc hands back depends on the process's history: its mmap threshold
rises each time a block above it is freed (LLVM compiling numba's kernels, a thread's allocations), and a child
measured 2k-25k faults from run to run. The children therefore start from glibc's documented default, fixed
(`MALLOC_MMAP_THRESHOLD_=131072`, which also stops that drift): the figure without the setting is then the
default's own, and `keep_freed_memory` (a `mallopt` call, which overrides the variable) is what changes it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from ast_hf.allocator import _glibc, keep_freed_memory

SCRIPT = """
import resource, sys
import numpy as np
from ast_hf.allocator import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else False
from ast_hf import ASTFeatureExtractor
clips = [np.random.default_rng(i).standard_normal(160000).astype(np.float32) for i in range(16)]
fe = ASTFeatureExtractor()
out = fe(clips, sampling_rate=16000, return_tensors="pt")
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    del out  # a caller drops the previous batch before asking for the next, as a training loop does
    out = fe(clips, sampling_rate=16000, return_tensors="pt")
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""

needs_glibc = pytest.mark.skipif(_glibc() is None, reason="mallopt is glibc's; elsewhere nothing is changed")

GLIBC_DEFAULT = {"MALLOC_MMAP_THRESHOLD_": "131072"}


def faults(mode: str, **env) -> tuple[bool, int]:
    run = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, check=True,
                         env=os.environ | GLIBC_DEFAULT | env)
    applied, count = run.stdout.split()
    return applied == "True", int(count)


@needs_glibc
def test_freed_tensors_are_reused_without_page_faults():
    applied, kept = faults("keep")
    _, default = faults("default")
    assert applied
    assert default >= 5 * 1000  # thousands of 4 kB pages per call, faulted in again each time
    assert kept < default / 4  # measured: 1-2049 (one output's pages at most) against ~90000


@needs_glibc
def test_switched_off_by_the_environment():
    applied, count = faults("keep", AST_HF_KEEP_FREED_MEMORY="0")
    assert not applied and count >= 5 * 1000


@pytest.mark.parametrize("limit", [0, -1, 1.5, True, "64MB"])
def test_bad_limits_are_refused(limit):
    with pytest.raises(ValueError, match="limit_bytes must be a positive number of bytes"):
        keep_freed_memory(limit)


def test_limits_beyond_mallopts_int_are_refused():
    """mallopt takes a C int, and ctypes passed a larger Python int cut to its low 32 bits: a 4 GB + 4 kB limit
    became a 4 kB mmap threshold (every block above 4 kB mmapped afresh, the opposite of what was asked), and
    True was returned. Run in a child: a regression would change this process's malloc."""
    script = ("from ast_hf.allocator import keep_freed_memory\n"
              "try:\n    keep_freed_memory((4 << 30) + 4096)\nexcept ValueError as error:\n    print(error)\n"
              "else:\n    print('applied')\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert "limit_bytes must be at most 2147483647" in out
