"""Softmax over the last dimension of bfloat16 attention scores on the CPU, in place, compiled (numba).

The per-head bf16 attention (`onednn.attention_per_head`) spent a large share of a bf16 forward in torch's softmax of
its [queries, tokens] score blocks (benchmarks/). Here each row takes three passes, all vectorised: the row's
maximum (an integer maximum over the scores' bits, which orders floats as numbers are ordered and, unlike a float
maximum, LLVM vectorises), exp(score - maximum) into a float32 row with its sum, and the normalised row rounded to
bfloat16 (to nearest, ties to even) over the scores.

The arithmetic is torch's: float32 inside, one rounding to bf16 at the end. exp is Cephes' single-precision
polynomial (relative error about 1e-7 near the row's maximum, growing to a few 1e-6 for weights near float32's
underflow, as x = n ln2 + r loses bits of r), where torch uses its own vectorised exp; the bf16 results therefore
agree with torch's to the last bit except where a float32 value lies that close to a bf16 rounding boundary (tests:
at most one bf16 ulp apart, in under 1 cell in 1,000).

Rows are spread over torch's intra-op thread count (`threads.numba_threads`).
"""

from __future__ import annotations

import numba
import numpy as np
import torch
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from .threads import numba_threads

# The integer keys of +inf and -inf (`_softmax_row`), and the bits of a bf16 NaN.
KEY_PLUS_INFINITY = np.int32(0x7F800000)
KEY_MINUS_INFINITY = np.int32(-0x7F800001)  # 0xFF800000 with its magnitude bits flipped
BF16_NAN = np.uint16(0x7FC0)
# exp(x) is below half of float32's smallest subnormal number (2^-149) here: it rounds to 0.
EXP_UNDERFLOW = np.float32(-104.0)


@intrinsic
def _float_from_bits(typingctx, bits):
    """The float32 whose IEEE bits are the uint32 `bits`."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())
    return types.float32(types.uint32), codegen


@intrinsic
def _bits_from_float(typingctx, value):
    """The IEEE bits of the float32 `value`, as a uint32."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))
    return types.uint32(types.float32), codegen


@numba.njit(cache=True)
def _power_of_two(n):
    """2^n in float32 for integer -126 <= n <= 127 (its exponent bits)."""
    return _float_from_bits(np.uint32((n + np.int32(127)) << np.int32(23)))


@numba.njit(cache=True, fastmath=True)
def _exp_nonpositive(x):
    """exp(x) in float32 for x <= 0, subnormal results included: Cephes' expf (x = n ln2 + r, |r| <= ln2 / 2, a
    degree-7 polynomial in r) times 2^n, applied as two powers of two so that 2^n below float32's normal range
    rounds once, into the subnormals, as exp itself would; 0 below `EXP_UNDERFLOW`."""
    clamped = x if x > EXP_UNDERFLOW else EXP_UNDERFLOW
    n = np.int32(clamped * np.float32(1.4426950408889634) - np.float32(0.5))  # round(x / ln2) for x <= 0
    r = clamped - np.float32(n) * np.float32(0.6931471805599453)
    p = np.float32(1.9875691500e-4)
    p = p * r + np.float32(1.3981999507e-3)
    p = p * r + np.float32(8.3334519073e-3)
    p = p * r + np.float32(4.1665795894e-2)
    p = p * r + np.float32(1.6666665459e-1)
    p = p * r + np.float32(5.0000001201e-1)
    y = p * (r * r) + r + np.float32(1.0)
    half = n >> np.int32(1)  # n >= -150: both halves stay within the normal exponents
    y = y * _power_of_two(half) * _power_of_two(n - half)
    return y if x > EXP_UNDERFLOW else np.float32(0.0)


@numba.njit(cache=True, fastmath=True, boundscheck=False)
def _softmax_row(row, buffer):
    """Softmax of one row of bf16 bits (uint16 [tokens]) in place; `buffer`: float32 [tokens] scratch. A row with a
    NaN or +inf, or of -inf alone, becomes NaN, as in torch (x - max is NaN somewhere); tested on the integer keys,
    which fastmath's no-NaN assumptions leave alone."""
    # maximum and minimum over integer keys: flipping the magnitude bits of negative floats orders their bits as
    # signed ints order the numbers (negative NaNs below -inf, positive ones above +inf)
    top = np.int32(-2147483647 - 1)
    bottom = np.int32(2147483647)
    for j in range(row.shape[0]):
        key = np.int32(np.uint32(row[j]) << np.uint32(16))
        key = key ^ ((key >> np.int32(31)) & np.int32(0x7FFFFFFF))
        top = key if key > top else top
        bottom = key if key < bottom else bottom
    if top >= KEY_PLUS_INFINITY or top == KEY_MINUS_INFINITY or bottom < KEY_MINUS_INFINITY:
        for j in range(row.shape[0]):
            row[j] = BF16_NAN
        return
    top = top ^ ((top >> np.int32(31)) & np.int32(0x7FFFFFFF))
    maximum = _float_from_bits(np.uint32(top))
    total = np.float32(0.0)
    for j in range(row.shape[0]):
        e = _exp_nonpositive(_float_from_bits(np.uint32(row[j]) << np.uint32(16)) - maximum)
        buffer[j] = e
        total += e
    inverse = np.float32(1.0) / total
    for j in range(row.shape[0]):
        bits = _bits_from_float(buffer[j] * inverse)
        bits += np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))  # round to nearest, ties to even
        row[j] = np.uint16(bits >> np.uint32(16))


@numba.njit(cache=True, nogil=True, boundscheck=False)
def _softmax_rows_serial(rows, buffers):
    for i in range(rows.shape[0]):
        _softmax_row(rows[i], buffers[0])


# Parallel and serial twins, not one function compiled twice: numba's on-disk cache keys on the function.
@numba.njit(parallel=True, cache=True, nogil=True, boundscheck=False)
def _softmax_rows_parallel(rows, buffers):
    threads = buffers.shape[0]
    per_thread = (rows.shape[0] + threads - 1) // threads
    for t in numba.prange(threads):
        for i in range(t * per_thread, min(rows.shape[0], (t + 1) * per_thread)):
            _softmax_row(rows[i], buffers[t])


def softmax_bf16_(scores: torch.Tensor) -> torch.Tensor:
    """softmax(scores, dim=-1) written over `scores` and returned.

    Args:
        scores: [rows, tokens] bfloat16, contiguous, on the CPU.

    Raises:
        ValueError: another dtype, device, rank or layout.
    """
    if scores.dtype != torch.bfloat16 or scores.device.type != "cpu" or scores.dim() != 2 \
            or not scores.is_contiguous():
        raise ValueError(f"softmax_bf16_ takes a contiguous 2-D bfloat16 CPU tensor, got {scores.dtype} "
                         f"{tuple(scores.shape)} on {scores.device} (contiguous: {scores.is_contiguous()})")
    rows = scores.view(torch.uint16).numpy()
    threads = min(numba_threads(), rows.shape[0]) or 1
    buffers = np.empty((threads, rows.shape[1]), np.float32)
    (_softmax_rows_parallel if threads > 1 else _softmax_rows_serial)(rows, buffers)
    return scores
