"""The compiled bf16 softmax (ast_hf.softmax_cpu) against a float64 softmax of the same bf16 scores, and against
torch's own bf16 softmax on the same host: the reference for how close a float32-inside, rounded-once softmax gets.
The per-head attention that calls it is compared to torch's fused kernel in test_modeling.py and
test_bf16_policy.py."""

import os
import subprocess
import sys

import pytest
import torch

from ast_hf.softmax_cpu import softmax_bf16_

pytestmark = pytest.mark.numeric


def bf16_scores(rows, tokens, scale, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(rows, tokens, generator=g)).bfloat16()


def ulp_bf16(x: torch.Tensor) -> torch.Tensor:
    """The spacing of bf16 numbers at |x| (float64; the smallest subnormal's spacing below the normals)."""
    exponent = torch.floor(torch.log2(x.abs().clamp_min(2.0 ** -126)))
    return torch.exp2(exponent - 7)


@pytest.mark.parametrize("rows, tokens, scale", [(1214, 1214, 3.0), (97, 1214, 30.0), (7, 5, 1.0), (1, 1, 1.0),
                                                 (33, 1000, 0.01)])
def test_within_one_ulp_of_the_exact_softmax_and_as_close_as_torch(rows, tokens, scale):
    """Every cell within one bf16 ulp of the float64 softmax of the same scores (the correctly rounded value is
    within half of one), no cell further from it than torch's own bf16 softmax gets plus one ulp, and torch's
    result to the last bit in all but a few cells (the two float32 exps differ by an ulp or two, which moves a
    rounding only next to a bf16 boundary)."""
    scores = bf16_scores(rows, tokens, scale)
    exact = scores.double().softmax(-1)
    theirs = scores.softmax(-1)
    ours = softmax_bf16_(scores.clone())
    assert ours.dtype == torch.bfloat16 and ours.shape == scores.shape
    error = (ours.double() - exact).abs()
    assert bool((error <= ulp_bf16(exact)).all()), float((error / ulp_bf16(exact)).max())
    assert float(error.max()) <= float((theirs.double() - exact).abs().max()) + float(ulp_bf16(exact).max())
    assert float((ours != theirs).double().mean()) < 1e-3
    assert torch.allclose(ours.double().sum(-1), torch.ones(rows, dtype=torch.float64), rtol=0, atol=tokens * 2e-3)


def test_writes_over_its_input_and_returns_it():
    scores = bf16_scores(4, 9, 1.0)
    want = scores.softmax(-1)
    got = softmax_bf16_(scores)
    assert got.data_ptr() == scores.data_ptr()
    torch.testing.assert_close(got, want, rtol=0, atol=2 ** -8)


def test_masked_and_minus_infinity_scores_get_exactly_zero():
    """The attention masks keys with bf16's lowest number; -inf, far negative and underflowing scores give 0, as
    torch's softmax does, and a single real key takes all the weight."""
    scores = bf16_scores(6, 40, 2.0)
    scores[:, 25:] = torch.finfo(torch.bfloat16).min
    scores[1, 3] = float("-inf")
    scores[2, :25] = -1e4
    scores[2, 0] = 0.0
    got = softmax_bf16_(scores.clone())
    want = scores.softmax(-1)
    assert bool((got[:, 25:] == 0).all()) and float(got[1, 3]) == 0.0
    assert float(got[2, 0]) == 1.0 and bool((got[2, 1:] == 0).all())
    torch.testing.assert_close(got, want, rtol=0, atol=2 ** -8)


def test_rows_with_nan_or_plus_infinity_or_only_minus_infinity_are_nan_as_in_torch():
    """A NaN of either sign (x86's default NaN is negative), +inf, or a row of -inf alone: the whole row NaN, as
    torch gives it (x - max is NaN there), not a quietly finite row; the other rows untouched."""
    scores = bf16_scores(6, 30, 2.0)
    scores[0, 4] = float("nan")
    scores.view(torch.int16)[1, 9] = -63  # bits 0xFFC1: a negative NaN
    scores[2, 2] = float("inf")
    scores[3] = float("-inf")
    assert bool(torch.isnan(scores[1, 9]))
    got = softmax_bf16_(scores.clone())
    want = scores.softmax(-1)
    assert bool(torch.isnan(want[:4]).all()) and bool(torch.isnan(got[:4]).all())
    torch.testing.assert_close(got[4:], want[4:], rtol=0, atol=2 ** -8)


def test_rows_large_and_small_numbers_and_constant_rows():
    """Scores of every magnitude bf16 holds (up to 1e30: the maximum is subtracted first), and constant rows
    (every weight 1/tokens, rounded once)."""
    scores = torch.stack([torch.linspace(-1e30, 1e30, 64), torch.full((64,), 7.0), torch.full((64,), -3e38),
                          torch.linspace(-90, 0, 64)]).bfloat16()
    got = softmax_bf16_(scores.clone())
    exact = scores.double().softmax(-1)
    assert bool(((got.double() - exact).abs() <= ulp_bf16(exact)).all())
    assert bool((got[1] == torch.tensor(1 / 64).bfloat16()).all()) and bool((got[2] == got[1]).all())


def test_same_bits_with_one_thread_and_with_two():
    """Rows are independent and each is computed alike whichever thread takes it: the serial and parallel
    kernels agree to the bit."""
    scores = bf16_scores(301, 517, 4.0)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = softmax_bf16_(scores.clone())
        torch.set_num_threads(2)
        two = softmax_bf16_(scores.clone())
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, two)


# One process's run: the softmax of the same scores on each of the given thread counts, saved to a file.
CHILD = """
import sys, torch
from ast_hf.softmax_cpu import softmax_bf16_
scores = (4.0 * torch.randn(301, 517, generator=torch.Generator().manual_seed(0))).bfloat16()
results = {}
for threads in map(int, sys.argv[2].split(",")):
    torch.set_num_threads(threads)
    results[threads] = softmax_bf16_(scores.clone())
torch.save(results, sys.argv[1])
"""


@pytest.mark.parametrize("cached, then", [("1", "1,2"), ("2", "2,1")])
def test_same_bits_whether_a_kernel_was_compiled_now_or_loaded_from_numbas_cache(tmp_path, cached, then):
    """CI once failed as a fresh clone ran the suite: one process (the benchmarks' child) compiled and cached one
    kernel, and a later one loaded it and compiled the other afresh, which LLVM vectorised into another order of
    the sum. Replayed here in a cache of its own: the first child caches the kernel for `cached` threads, the second
    loads it and compiles the other one; all three results agree to the bit."""
    environment = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "numba"))  # a capped ISA stays capped

    def child(name, threads):
        subprocess.run([sys.executable, "-c", CHILD, str(tmp_path / name), threads], check=True, timeout=300,
                       env=environment)
        return torch.load(tmp_path / name, weights_only=True)

    first = child("first.pt", cached)
    second = child("second.pt", then)
    assert torch.equal(second[1], second[2]) and torch.equal(first[int(cached)], second[1])


def test_empty_scores_come_back_as_they_are():
    for shape in [(3, 0), (0, 5)]:
        empty = torch.empty(shape, dtype=torch.bfloat16)
        assert softmax_bf16_(empty) is empty and empty.shape == shape


@pytest.mark.parametrize("bad, problem", [
    (torch.zeros(3, 4), "torch.float32"),
    (torch.zeros(2, 3, 4, dtype=torch.bfloat16), "(2, 3, 4)"),
    (torch.zeros(4, 3, dtype=torch.bfloat16).t(), "contiguous: False"),
])
def test_refuses_what_it_cannot_take(bad, problem):
    with pytest.raises(ValueError, match=problem.replace("(", r"\(").replace(")", r"\)")):
        softmax_bf16_(bad)
