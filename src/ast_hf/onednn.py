"""oneDNN fast paths for CPU inference, and the one switch that turns every one of them off.

oneDNN uses AVX-512 wherever the CPU has it, whatever its vendor: float32 matmuls at 1.1-1.5x the GFLOP/s of
torch's default BLAS path on AMD EPYC, bfloat16 at ~2x (benchmarks/). `AST_HF_ONEDNN=0` in the environment (read at
import) sends the model back to plain torch ops.

The paths, all measured in benchmarks/ and tested against the plain ones, apply to CPU inference (no autograd)
in a dtype of `DTYPES`, outside CPU autocast, torch.compile and ONNX export (`cpu_inference`):
- linears through oneDNN with the GELU fused (`linear_layer`, on top of the raw `linear`);
- bfloat16 attention as per-head oneDNN matmuls (`attention_per_head`);
- the encoder run over a few clips at a time (`clips_per_call`, `CPU_TOKENS_PER_CALL`).
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

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

# Tokens the encoder takes per call on the CPU (two 10.24 s clips): activations of a few clips stay in cache
# (measured 5-10% faster per clip than a whole batch of 8) and peak memory stops growing with the batch size.
CPU_TOKENS_PER_CALL = 2560


def cpu_inference(x: torch.Tensor) -> bool:
    """True where the fast paths apply to `x`: CPU inference in a dtype of `DTYPES`, outside CPU autocast (the raw
    oneDNN ops do not cast: under `Trainer(bf16=True)` evaluation a bf16 activation met an fp32 weight and oneDNN
    refused the pair; torch's ops cast as autocast asks), torch.compile (inductor only lowers the oneDNN linear for
    weights it froze as constants) and ONNX export (no ONNX translation)."""
    return (x.device.type == "cpu" and x.dtype in DTYPES and not torch.is_grad_enabled()
            and not torch.is_autocast_enabled("cpu")
            and not torch.compiler.is_compiling() and not torch.onnx.is_in_onnx_export())


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
           gelu: bool = False) -> torch.Tensor:
    """x @ weight^T (+ bias), then exact GELU if `gelu`, as one oneDNN call; not differentiable.

    x [..., in_features], weight [out_features, in_features] -> [..., out_features]; a dtype in `DTYPES`, on CPU.
    """
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "gelu" if gelu else "none", [],
                                              "none" if gelu else "")


def linear_layer(x: torch.Tensor, layer: nn.Module, gelu: bool = False) -> torch.Tensor:
    """`layer(x)` (then exact GELU if `gelu`): oneDNN with the GELU fused in CPU fp32/bf16 inference, else torch."""
    if not isinstance(layer, nn.Linear):  # e.g. an int8 dynamically quantised Linear: it runs its own kernel
        out = layer(x)
        return F.gelu(out) if gelu else out
    if cpu_inference(x):
        return linear(x, layer.weight, layer.bias, gelu)
    out = F.linear(x, layer.weight, layer.bias)
    return F.gelu(out) if gelu else out


def attention_per_head(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                       key_mask: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(q k^T / sqrt(head_dim)) v, one (clip, head) at a time with oneDNN bf16 matmuls (CPU inference).

    torch's fused CPU attention kernel accumulates bf16 products through a slow mixed-precision path on CPUs
    without AMX (as fast in bf16 as in fp32, benchmarks/); oneDNN's bf16 matmul runs at ~2x that. Scores are
    rounded to bf16 before a float32 softmax, as in eager bf16 attention; probabilities go back to bf16 for the
    second matmul, as in the fused kernel. One [tokens, tokens] score matrix is alive at a time.

    Args:
        q, k, v: [batch, heads, tokens, head_dim], bfloat16.
        key_mask: [batch, 1, 1, tokens] bool, True where a token may be attended to; None: all.

    Returns:
        context [batch, tokens, heads * head_dim].
    """
    batch, heads, tokens, head_dim = q.shape
    q = (q * head_dim ** -0.5).contiguous()
    k = k.contiguous()
    v_t = v.transpose(2, 3).contiguous()  # [batch, heads, head_dim, tokens]: p @ v = linear(p, v^T)
    context = torch.empty_like(q)
    for b in range(batch):
        for h in range(heads):
            scores = linear(q[b, h], k[b, h])
            if key_mask is not None:
                scores.masked_fill_(~key_mask[b, 0], torch.finfo(scores.dtype).min)
            probs = scores.softmax(dim=-1)  # bf16 in and out, float32 inside
            context[b, h] = linear(probs, v_t[b, h])
    return context.transpose(1, 2).reshape(batch, tokens, heads * head_dim)


def clips_per_call(hidden_states: torch.Tensor) -> int:
    """Clips of `hidden_states` [batch, tokens, D] the encoder should take per call: `CPU_TOKENS_PER_CALL` worth
    (at least one) where the fast paths apply, else the whole batch."""
    batch, tokens, _ = hidden_states.shape
    if not cpu_inference(hidden_states):
        return batch
    return max(1, CPU_TOKENS_PER_CALL // tokens)
