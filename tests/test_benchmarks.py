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


@pytest.mark.parametrize("variable, value", [("DNNL_MAX_CPU_ISA", "AVX2"), ("MKL_CBWR", "AVX2"),
                                             ("MKL_DEBUG_CPU_TYPE", "5"), ("ONEDNN_DEFAULT_FPMATH_MODE", "BF16")])
def test_a_run_under_any_kernel_cap_is_labelled_capped(monkeypatch, variable, value):
    """oneDNN honours DNNL_MAX_CPU_ISA as it does ONEDNN_MAX_CPU_ISA (float32 matmuls ran brg_matmul:avx2 on an
    AVX-512 host), and MKL_CBWR / MKL_DEBUG_CPU_TYPE / ONEDNN_DEFAULT_FPMATH_MODE change the kernels too (ast_hf's
    probe cache keys on all of them): the header called such runs uncapped."""
    from benchmarks import host

    from ast_hf.probe_cache import KERNEL_ENVIRONMENT

    assert set(KERNEL_ENVIRONMENT) <= set(host.CAP_VARIABLES)
    monkeypatch.setattr(host, "onednn_kernels", lambda: {})  # no fresh process, no compile: the label is the point
    monkeypatch.setattr(host, "numba_target", lambda: ("haswell", 256))
    for name in host.CAP_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert "CAPPED RUN" not in host.describe()
    monkeypatch.setenv(variable, value)
    assert f"CAPPED RUN: {variable}={value}" in host.describe()


def _run_cli_on_rows(monkeypatch, out, rows):
    """`python -m benchmarks` in this process on one made-up section returning `rows` (no model, no host probe)."""
    import benchmarks.__main__ as cli
    from benchmarks import host

    import ast_hf.allocator

    monkeypatch.setitem(cli.SECTIONS, "made-up", lambda quick, repeats: rows)
    monkeypatch.setattr(host, "describe", lambda: "a test host")
    monkeypatch.setattr(ast_hf.allocator, "keep_freed_memory", lambda: False)  # leave this process's malloc alone
    assert cli.main(["--sections", "made-up", "--quick", "--repeats", "1", "--out", str(out)]) == 0


def test_results_json_is_strict_json_written_atomically(tmp_path, monkeypatch):
    """results.json was written in place (an interruption left a truncated file where the last run's results were)
    and held a bare NaN for every row without a transformers side, which JSON readers other than Python's refuse."""
    import json
    from pathlib import Path

    from benchmarks.harness import Timing

    rows = [dict(section="long audio", case="no counterpart", ours=Timing("ours", [0.2]), theirs=None),
            dict(section="forward", case="paired", ours=Timing("ours", [1.0]), theirs=Timing("theirs", [2.0]))]
    out = tmp_path / "bench"
    _run_cli_on_rows(monkeypatch, out, rows)
    text = (out / "results.json").read_text()

    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")

    raw = json.loads(text, parse_constant=refuse)
    assert [r["case"] for r in raw] == ["no counterpart", "paired"]
    assert raw[0]["ratio"] is None and raw[1]["ratio"] == 2.0

    write_text = Path.write_text

    def interrupted(path, data, *args, **kwargs):  # the disk fills half way through results.json
        if "results.json" in path.name:
            write_text(path, data[:10], *args, **kwargs)
            raise OSError("No space left on device")
        return write_text(path, data, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", interrupted)
    with pytest.raises(OSError, match="No space"):
        _run_cli_on_rows(monkeypatch, out, rows[1:])
    assert (out / "results.json").read_text() == text
    assert sorted(p.name for p in out.iterdir()) == ["results.json", "results.md", "results.png"]


def test_memory_children_measure_the_forward_not_our_kernel_probes(monkeypatch):
    """A fresh process measuring our forward's memory first probed its kernel choices (ast_hf.onednn) inside the
    measured call: with --quick ~95 of the ~123 MiB reported for ast-hf were the probes' buffers, against a
    transformers forward that probes nothing. The children now run the kernels this process chose, unprobed."""
    from benchmarks import sections

    from ast_hf import onednn

    measuring, probed = [], []

    def peak_memory_mib(fn):
        measuring.append(True)
        try:
            fn()
        finally:
            measuring.pop()
        return 1.0

    for name in ("_faster_float32_linear", "_faster_float32_attention"):
        real = getattr(onednn, name)

        def probe(*args, real=real, name=name):
            if measuring:
                probed.append(name)
            return real(*args)

        monkeypatch.setattr(onednn, name, probe)

    def forget():  # what a fresh process knows: no answer in memory, none on disk
        onednn.float32_linear.cache_clear()
        onednn.float32_attention.cache_clear()

    def in_fresh_process(job, side, *flags, env=None):
        assert job == "forward-memory"
        with monkeypatch.context() as fresh:
            for variable, value in (env or {}).items():
                fresh.setenv(variable, value)
            forget()
            try:
                return sections.forward_memory_child(side, "--quick" in flags)
            finally:
                forget()

    monkeypatch.setenv("AST_HF_PROBE_CACHE", "0")
    monkeypatch.setattr(sections, "peak_memory_mib", peak_memory_mib)
    monkeypatch.setattr(sections, "_in_fresh_process", in_fresh_process)
    try:
        (row,) = sections.forward_memory(quick=True)
    finally:
        forget()
    assert row["ours"] == row["theirs"] == 1.0
    assert probed == []
