"""What a bf16 autocast training step on a CPU computes in float32 instead, and where bf16 training pays at all.

CPU autocast (`Trainer(bf16=True)`, `torch.autocast("cpu", torch.bfloat16)`) runs every matmul in bf16: on a CPU
with AMX the model's linears then cost a fraction of their float32 time; where the bf16 GEMM loses to float32 the
whole step is slower (`slow_bf16_training_reason`, which `ASTTrainer` reports). Two of autocast's choices cost more
than they save, measured on the demo's model (benchmarks/results/):
- torch's fused attention kernel in bf16 has a slow backward on the CPU wherever blocks are small (short sequences,
  narrow heads): 3-7x its float32 time at the demo's 62 tokens x 32 dims, yet 0.75x at base width over 10.24 s
  (1214 tokens x 64 dims). `attention_dtype` measures both at the first step of each shape and keeps the faster;
- the patch embedding's convolution (one input channel) computes its weight gradient ~3x slower in bf16 than in
  float32 at the demo's shape (equal at base width): the model runs it in float32 where `cpu_bf16_training`.

Everything else follows autocast. `AST_HF_AUTOCAST_ATTENTION` ("auto", default; "bf16"; "fp32") forces the
attention's branch, e.g. to make runs on different hosts compute the same thing.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from . import onednn

AUTOCAST_ATTENTION_CHOICES = ("auto", "bf16", "fp32")
# bf16 attention must be this much faster than float32 to be chosen: near a tie float32 is the more exact of the
# two, and a margin keeps a noisy measurement from flipping the choice (and so the run's numbers) between runs.
BF16_MARGIN = 1.1

_chosen: dict[tuple[int, int, int], torch.dtype] = {}


def cpu_bf16_training(x: torch.Tensor) -> bool:
    """True in a differentiable CPU forward under bf16 autocast: where this module's choices apply."""
    return (x.device.type == "cpu" and torch.is_grad_enabled() and torch.is_autocast_enabled("cpu")
            and torch.get_autocast_dtype("cpu") == torch.bfloat16)


def measure_attention(shape: tuple[int, int, int, int], repeats: int = 3) -> dict[str, float]:
    """Best wall seconds of one fused attention forward + backward of `shape` [batch, heads, tokens, head_dim] in
    float32 ("fp32") and in bf16 ("bf16"), timed in turn (`onednn.best_seconds`).

    Runs inside the model's forward at the first step: outside autocast, with grad, and with saved-tensor hooks of
    its own, so that an enclosing activation checkpoint does not count the probe's tensors as the layer's."""
    generator = torch.Generator().manual_seed(0)
    identity = (lambda tensor: tensor, lambda tensor: tensor)
    with torch.autocast("cpu", enabled=False), torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(*identity):
        kernels = {}
        for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            q, k, v = (torch.randn(shape, generator=generator, dtype=dtype).requires_grad_() for _ in range(3))
            grad = torch.randn(shape, generator=generator, dtype=dtype)
            kernels[name] = lambda q=q, k=k, v=v, grad=grad: F.scaled_dot_product_attention(q, k, v).backward(grad)
        return onednn.best_seconds(kernels, repeats)


def attention_dtype(batch: int, heads: int, tokens: int, head_dim: int) -> torch.dtype:
    """The dtype CPU bf16 autocast training runs the fused attention in for this shape: bf16 where it is
    `BF16_MARGIN` times as fast as float32 (forward + backward, measured once per (heads, tokens, head_dim) with the
    first batch seen: eight passes at that shape, ~1 s at base width over 10.24 s), else float32.
    `AST_HF_AUTOCAST_ATTENTION` forces one; `attention_dtype.cache_clear()` forgets the measurements."""
    choice = os.environ.get("AST_HF_AUTOCAST_ATTENTION", "auto").lower()
    if choice not in AUTOCAST_ATTENTION_CHOICES:
        raise ValueError(f"AST_HF_AUTOCAST_ATTENTION={choice!r}: use one of {', '.join(AUTOCAST_ATTENTION_CHOICES)}")
    if choice != "auto":
        return torch.bfloat16 if choice == "bf16" else torch.float32
    key = (heads, tokens, head_dim)
    if key not in _chosen:
        seconds = measure_attention((batch, heads, tokens, head_dim))
        _chosen[key] = torch.bfloat16 if seconds["bf16"] * BF16_MARGIN < seconds["fp32"] else torch.float32
    return _chosen[key]


attention_dtype.cache_clear = _chosen.clear


def slow_bf16_training_reason() -> str | None:
    """Why bf16 autocast training would be slower than float32 on this CPU, or None where it is not expected to be.

    The linears are where autocast gains; they run through oneDNN in bf16, so `onednn.bf16_policy`'s measured GEMMs
    decide: on an AVX-512 bf16 CPU without AMX whose bf16 GEMM loses to float32 the demo's epoch took 0.93x
    transformers' float32 time in bf16 against 1.22x in float32 (benchmarks/results/)."""
    if not onednn.BF16_UNITS:
        return ("this CPU has no bf16 units oneDNN can use: bf16 autocast would be emulated, far slower than "
                "float32; train in float32")
    if onednn.bf16_policy().matmul == "fp32":
        return ("this CPU's bf16 GEMM is slower than its float32 GEMM (measured at first use; "
                "AST_HF_BF16_MATMUL forces the choice): bf16 autocast training will be slower than float32 here")
    return None
