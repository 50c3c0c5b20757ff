"""Exact (erf) GELU for float32 CPU training, compiled (numba): the forward also writes the GELU's derivative.

torch's GELU keeps its input for the backward, where `gelu_backward` evaluates erf and exp over it again. Here one
pass over the input h writes gelu(h) and gelu'(h), which share one exp and one division; the autograd function
keeps gelu'(h) in place of h (the same memory) and its backward is one multiply (what a training step gains:
docs/training.md).

The arithmetic is torch's vectorised GELU's: x / 2 (1 + erf(x / sqrt 2)), erf by Abramowitz and Stegun's 7.1.26
(the polynomial torch's `Vectorized<float>::erf` uses), gelu'(x) = (1 + erf(x / sqrt 2)) / 2 + x exp(-x^2 / 2) /
sqrt(2 pi), all in float32; exp is Cephes' polynomial (`softmax_cpu`) where torch has its own, so values agree
with torch's to a few 1e-7 (tests bound both against float64 by torch's own error). NaN gives NaN; +inf gives +inf
(torch's gives NaN).

One thread runs it, between torch's parallel GEMMs: spread over numba's thread pool (as `softmax_cpu` is) it ran
slower in the training step than on one thread (numba's pool and torch's OpenMP threads, which spin for a while
after each parallel region, competing for the same cores), and the serial kernel is already faster than torch's
two-thread GELU and its backward together.
"""

from __future__ import annotations

import numba
import numpy as np
import torch

from .softmax_cpu import _bits_from_float, _exp_nonpositive, _float_from_bits, _fma

SQRT_HALF = np.float32(0.7071067811865476)
INV_SQRT_2PI = np.float32(0.3989422804014327)
SIGN_BIT = np.uint32(0x80000000)


# error_model="numpy": no division-by-zero check (1 + p|z| >= 1), whose branch kept LLVM from vectorising the loop.
@numba.njit(cache=True, inline="always", error_model="numpy")
def _gelu_and_derivative(x):
    z = x * SQRT_HALF
    t = np.float32(1.0) / _fma(np.float32(0.3275911), abs(z), np.float32(1.0))
    r = _fma(np.float32(1.061405429), t, np.float32(-1.453152027))
    r = _fma(r, t, np.float32(1.421413741))
    r = _fma(r, t, np.float32(-0.284496736))
    r = _fma(r, t, np.float32(0.254829592))
    gauss = _exp_nonpositive(-(z * z))  # exp(-x^2 / 2)
    erf_magnitude = np.float32(1.0) - r * t * gauss
    erf = _float_from_bits(_bits_from_float(erf_magnitude) | (_bits_from_float(z) & SIGN_BIT))
    half_cdf = np.float32(0.5) * (np.float32(1.0) + erf)
    return x * half_cdf, half_cdf + x * INV_SQRT_2PI * gauss


@numba.njit(cache=True, nogil=True, boundscheck=False, error_model="numpy")
def _gelu_serial(x, out, derivative):
    for i in range(x.shape[0]):
        value, slope = _gelu_and_derivative(x[i])
        out[i] = value
        derivative[i] = slope


def gelu_and_derivative(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(gelu(x), gelu'(x)), each a new contiguous tensor of x's shape.

    Raises:
        ValueError: x is not a float32 CPU tensor.
    """
    if x.dtype != torch.float32 or x.device.type != "cpu":
        raise ValueError(f"gelu_and_derivative takes a float32 CPU tensor, got {x.dtype} on {x.device}")
    flat = x.detach().contiguous().view(-1)
    out, derivative = torch.empty_like(flat), torch.empty_like(flat)
    if flat.numel():
        _gelu_serial(flat.numpy(), out.numpy(), derivative.numpy())
    return out.view(x.shape), derivative.view(x.shape)


class _Gelu(torch.autograd.Function):
    """GELU whose forward keeps gelu'(x) for the backward (instead of x)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        out, derivative = gelu_and_derivative(x)
        ctx.save_for_backward(derivative)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (derivative,) = ctx.saved_tensors
        return grad * derivative


def gelu(x: torch.Tensor) -> torch.Tensor:
    """`F.gelu(x)` (exact, erf) for a float32 CPU tensor, differentiable, with the backward one multiply."""
    return _Gelu.apply(x)


__all__ = ["gelu", "gelu_and_derivative"]
