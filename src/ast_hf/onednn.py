"""oneDNN matmuls for CPU inference, and the one switch that turns every oneDNN fast path off.

oneDNN uses AVX-512 wherever the CPU has it, whatever its vendor: float32 matmuls at 1.1-1.5x the GFLOP/s of
torch's default BLAS path on AMD EPYC, bfloat16 at ~2x (benchmarks/). `AST_HF_ONEDNN=0` in the environment (read at
import) sends the model back to plain torch ops.
"""

from __future__ import annotations

import os

import torch

ENABLED = os.environ.get("AST_HF_ONEDNN", "1") != "0" and torch.backends.mkldnn.is_available()


def _builds_bf16_matmul() -> bool:
    """Whether oneDNN builds a bfloat16 matmul here. It needs AVX-512 (BW/VL/DQ) or AVX2-VNNI-2 *and* no cap below
    them (`ONEDNN_MAX_CPU_ISA=AVX2`): torch's CPU-flag check sees only the CPU, so a capped run crashed in the first
    bf16 matmul ("could not create a primitive descriptor"). One 1x1 product answers for both."""
    if not (torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()):
        return False
    one = torch.ones(1, 1, dtype=torch.bfloat16)
    try:
        torch.ops.mkldnn._linear_pointwise(one, one, None, "none", [], "")
    except RuntimeError:
        return False
    return True


# The dtypes oneDNN runs here; bf16 models stay on torch's ops where oneDNN cannot build bf16 matmuls.
BF16_UNITS = _builds_bf16_matmul()
DTYPES = ((torch.float32,) + ((torch.bfloat16,) if BF16_UNITS else ())) if ENABLED else ()


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
           gelu: bool = False) -> torch.Tensor:
    """x @ weight^T (+ bias), then exact GELU if `gelu`, as one oneDNN call; not differentiable.

    x [..., in_features], weight [out_features, in_features] -> [..., out_features]; a dtype in `DTYPES`, on CPU.
    """
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "gelu" if gelu else "none", [],
                                              "none" if gelu else "")
