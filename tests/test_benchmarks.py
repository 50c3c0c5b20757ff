"""The benchmark runs in --quick mode and produces its table and chart (its figures are not asserted: speed
goals are reported by the benchmark, never enforced by timed tests)."""

import os
import subprocess
import sys

import pytest

from helpers import REPO


def test_quick_benchmark_writes_its_table_and_chart(tmp_path):
    out = tmp_path / "bench"
    run = subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "--repeats", "1", "--out", str(out)],
                         cwd=REPO, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    table = (out / "results.md").read_text()
    for section in ("feature extraction", "forward", "efficiency", "forward memory", "end to end", "long audio",
                    "training step", "tokens", "demo epoch"):
        assert f"| {section} |" in table, section
    for rate in ("the best GEMM rate", "the model's linears' rate"):
        roofline = "| efficiency | roofline, batch {}: transformers vs our arithmetic at " + rate
        assert roofline.format(8) + " (per clip) |" in table and roofline.format(1) + " |" in table
    assert "load average" in table
    assert (out / "results.png").stat().st_size > 10_000
    assert (out / "results.json").is_file()


def test_interleaved_flips_order_and_ratio_pairs_repeats():
    from benchmarks.harness import Timing, interleaved, paired_ratio

    calls = []
    interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=3, warmup=0)
    assert calls == ["a", "b", "b", "a", "a", "b"]
    # a stretch of load slows both members of the second pair: the paired ratio ignores it, medians would not
    ours, theirs = Timing("ours", [1.0, 1.5, 1.5]), Timing("theirs", [1.3, 1.95, 1.2])
    assert paired_ratio(theirs, ours) == 1.3
    assert theirs.median / ours.median < 1


@pytest.mark.numeric
def test_an_avx2_cap_reaches_numbas_kernels_too():
    """The AVX2-capped pass of scripts/test.sh must compile numba's kernels (filterbank, bf16 softmax, training GELU)
    for AVX2 as well: with NUMBA_CPU_NAME=haswell alone, numba kept the host's features and wrote 512-bit AVX-512
    code, so until 2026-12-03 those kernels ran uncapped in every "capped" run."""
    if os.environ.get("ATEN_CPU_CAPABILITY", "").lower() != "avx2":
        pytest.skip("runs in the pass with the vector ISA capped to AVX2 (ATEN_CPU_CAPABILITY=avx2)")
    from benchmarks.host import numba_target

    cpu, bits = numba_target()
    assert bits <= 256, f"numba compiles {bits}-bit vectors for {cpu} under the AVX2 cap"
