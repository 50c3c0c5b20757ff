"""Softmax over the last dimension of bfloat16 attention scores on the CPU, in place, compiled (numba).

The per-head bf16 attention (`onednn.attention_per_head`) spent a large share of a bf16 forward in torch's softmax of
its [queries, tokens] score blocks (benchmarks/). Here each row takes four passes, all vectorised: the row's
maximum (an integer maximum over the scores' bits, which orders floats as numbers are ordered and, unlike a float
maximum, LLVM vectorises), exp(score - maximum) into a float32 row, its sum, and the normalised row rounded to
bfloat16 (to nearest, ties to even) over the scores.

Nothing is left to LLVM's fastmath: a row's bits must not depend on which kernel ran it (serial or parallel) or on
how LLVM compiled that kernel, and with a reassociable sum they did (the serial and the parallel kernel, one loaded
from numba's cache and one compiled afresh, vectorised the sum in different orders). The exp's multiply-adds are
explicit FMAs and the sum is written as vector code (`_lane_sum`), both fast without fastmath's licence.

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
# The partial sums of a row's exps (`_lane_sum`): one AVX-512 vector of float32, two AVX2 ones.
LANES = 16


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


@intrinsic
def _fma(typingctx, a, b, c):
    """a * b + c in float32, rounded once (llvm.fma: the hardware's FMA, or its exact emulation)."""
    def codegen(context, builder, signature, args):
        f32 = ir.FloatType()
        fma = builder.module.declare_intrinsic("llvm.fma", [f32], ir.FunctionType(f32, [f32, f32, f32]))
        return builder.call(fma, args)
    return types.float32(types.float32, types.float32, types.float32), codegen


@numba.njit(cache=True)
def _power_of_two(n):
    """2^n in float32 for integer -126 <= n <= 127 (its exponent bits)."""
    return _float_from_bits(np.uint32((n + np.int32(127)) << np.int32(23)))


@numba.njit(cache=True)
def _exp_nonpositive(x):
    """exp(x) in float32 for x <= 0, subnormal results included: Cephes' expf (x = n ln2 + r, |r| <= ln2 / 2, a
    degree-7 polynomial in r, in FMAs) times 2^n, applied as two powers of two so that 2^n below float32's normal range
    rounds once, into the subnormals, as exp itself would; 0 below `EXP_UNDERFLOW`."""
    clamped = x if x > EXP_UNDERFLOW else EXP_UNDERFLOW
    n = np.int32(_fma(clamped, np.float32(1.4426950408889634), np.float32(-0.5)))  # round(x / ln2) for x <= 0
    r = _fma(np.float32(-n), np.float32(0.6931471805599453), clamped)
    p = np.float32(1.9875691500e-4)
    p = _fma(p, r, np.float32(1.3981999507e-3))
    p = _fma(p, r, np.float32(8.3334519073e-3))
    p = _fma(p, r, np.float32(4.1665795894e-2))
    p = _fma(p, r, np.float32(1.6666665459e-1))
    p = _fma(p, r, np.float32(5.0000001201e-1))
    y = _fma(p, r * r, r) + np.float32(1.0)
    half = n >> np.int32(1)  # n >= -150: both halves stay within the normal exponents
    y = y * _power_of_two(half) * _power_of_two(n - half)
    return y if x > EXP_UNDERFLOW else np.float32(0.0)


@intrinsic
def _lane_sum(typingctx, values, blocks):
    """The sum of values[:blocks * LANES] (a contiguous float32 array, blocks >= 1) in one fixed order, written as
    vector IR so that LLVM cannot reorder it: LANES partial sums (lane k adds elements k, k + LANES, ... in turn),
    then the lanes halved pairwise (lane k plus lane k + width) down to one number."""
    def codegen(context, builder, signature, args):
        f32 = ir.FloatType()
        vector = ir.VectorType(f32, LANES)
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        count = args[1]
        entry = builder.block
        loop = builder.append_basic_block("lane_sum.loop")
        done = builder.append_basic_block("lane_sum.done")
        builder.branch(loop)
        builder.position_at_end(loop)
        block = builder.phi(count.type)
        partial = builder.phi(vector)
        address = builder.bitcast(builder.gep(data, [builder.mul(block, ir.Constant(count.type, LANES))]),
                                  vector.as_pointer())
        added = builder.fadd(partial, builder.load(address, align=4))
        following = builder.add(block, ir.Constant(count.type, 1))
        block.add_incoming(ir.Constant(count.type, 0), entry)
        block.add_incoming(following, loop)
        partial.add_incoming(ir.Constant(vector, [0.0] * LANES), entry)
        partial.add_incoming(added, loop)
        builder.cbranch(builder.icmp_signed("<", following, count), loop, done)
        builder.position_at_end(done)
        width = LANES
        while width > 1:
            width //= 2
            upper = builder.shuffle_vector(added, added, ir.Constant(ir.VectorType(ir.IntType(32), LANES),
                                                                     [width + k if k < width else k
                                                                      for k in range(LANES)]))
            added = builder.fadd(added, upper)
        return builder.extract_element(added, ir.Constant(ir.IntType(32), 0))
    if not (isinstance(values, types.Array) and values.dtype == types.float32 and values.ndim == 1
            and values.layout == "C" and isinstance(blocks, types.Integer)):
        return None
    return types.float32(values, blocks), codegen


@numba.njit(cache=True, boundscheck=False)
def _softmax_row(row, buffer):
    """Softmax of one row of bf16 bits (uint16 [tokens], tokens >= 1) in place; `buffer`: float32 scratch of
    tokens rounded up to a multiple of LANES (its length is the sum's length: the caller sizes it once). A row with
    a NaN or +inf, or of -inf alone, becomes NaN, as in torch (x - max is NaN somewhere). Every operation is IEEE's,
    in the order written (no fastmath), so a row gets the same bits whichever kernel runs it."""
    tokens = row.shape[0]
    # maximum and minimum over integer keys: flipping the magnitude bits of negative floats orders their bits as
    # signed ints order the numbers (negative NaNs below -inf, positive ones above +inf)
    top = np.int32(-2147483647 - 1)
    bottom = np.int32(2147483647)
    for j in range(tokens):
        key = np.int32(np.uint32(row[j]) << np.uint32(16))
        key = key ^ ((key >> np.int32(31)) & np.int32(0x7FFFFFFF))
        top = key if key > top else top
        bottom = key if key < bottom else bottom
    if top >= KEY_PLUS_INFINITY or top == KEY_MINUS_INFINITY or bottom < KEY_MINUS_INFINITY:
        for j in range(tokens):
            row[j] = BF16_NAN
        return
    top = top ^ ((top >> np.int32(31)) & np.int32(0x7FFFFFFF))
    maximum = _float_from_bits(np.uint32(top))
    for j in range(tokens):
        buffer[j] = _exp_nonpositive(_float_from_bits(np.uint32(row[j]) << np.uint32(16)) - maximum)
    for j in range(tokens, buffer.shape[0]):  # zeros pad the last block of the sum
        buffer[j] = np.float32(0.0)
    total = _lane_sum(buffer, buffer.shape[0] // LANES)
    inverse = np.float32(1.0) / total
    for j in range(tokens):
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
    if scores.numel() == 0:
        return scores
    rows = scores.view(torch.uint16).numpy()
    threads = min(numba_threads(), rows.shape[0]) or 1
    blocks = (rows.shape[1] + LANES - 1) // LANES
    buffers = np.empty((threads, blocks * LANES), np.float32)
    (_softmax_rows_parallel if threads > 1 else _softmax_rows_serial)(rows, buffers)
    return scores
