"""oneDNN fast paths for CPU inference, and the one switch that turns every one of them off.

oneDNN uses AVX-512 wherever the CPU has it, whatever its vendor: float32 matmuls at 1.1-1.5x the GFLOP/s of
torch's default BLAS path on AMD EPYC, bfloat16 at ~2x (benchmarks/). `AST_HF_ONEDNN=0` in the environment (read at
import) sends the model back to plain torch ops.

The paths, all measured in benchmarks/ and tested against the plain ones, apply to CPU inference (no autograd)
in a dtype of `DTYPES`, outside CPU autocast, torch.compile and ONNX export (`cpu_inference`):
- float32 linears through oneDNN with the GELU fused, or through torch's BLAS where this host's probe finds it
  faster (`float32_linear`); bf16 linears through oneDNN (`linear_layer`, on top of the raw `linear`), over their
  rows in two halves for the shapes where that measured faster (`bf16_row_split`);
- bfloat16 attention as per-head oneDNN matmuls with a compiled softmax between (`attention_per_head`,
  `softmax_cpu`), and float32 attention as per-head oneDNN matmuls with torch's softmax where this host's probe
  finds it faster than torch's fused kernel (`float32_attention`);
- the encoder run over a few clips at a time (`clips_per_call`, `CPU_TOKENS_PER_CALL`);
- in float32 CPU training (autograd recording, no autocast), the model's linears as one autograd function whose
  three GEMMs (forward, input and weight gradients) each run through oneDNN or torch's op, whichever this host
  measured faster for that GEMM at that shape (`differentiable_linear`, `float32_training_kernels`), and the
  MLP's GELU compiled, keeping its derivative for the backward (`gelu_cpu`);
- for bfloat16 models, a per-host choice of arithmetic (`bf16_policy`): CPUs whose bf16 GEMM is slower than their
  fp32 GEMM (bf16 dot products without AMX on some Intel Xeons) run a bf16 model's encoder in float32 (a float32
  twin of it, made once; `bf16_runs_in_float32`) and its other linears with the weights upcast once; the others
  run them in bf16, with attention through whichever of torch's fused kernel and per-head oneDNN matmuls is
  faster here.
"""

from __future__ import annotations

import functools
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from . import probe_cache

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

# Float32 tokens the encoder takes per call on the CPU (two 10.24 s clips): activations of a few clips stay in cache
# (measured 5-10% faster per clip than a whole batch of 8) and peak memory stops growing with the batch size. A
# budget of bytes: bf16 activations are half the size, so bf16 calls take twice the tokens (four clips; AMX's bf16
# GEMMs ran faster over the larger row count: a batch of 8 3% faster than in two-clip calls, benchmarks/).
CPU_TOKENS_PER_CALL = 2560


def _raw_cpu_ops_apply(x: torch.Tensor) -> bool:
    """Whether the raw oneDNN ops may take `x`: on the CPU in a dtype of `DTYPES`, outside CPU autocast (the raw
    ops do not cast: under `Trainer(bf16=True)` evaluation a bf16 activation met an fp32 weight and oneDNN refused
    the pair; torch's ops cast as autocast asks), torch.compile (inductor only lowers the oneDNN linear for weights
    it froze as constants) and ONNX export (no ONNX translation)."""
    return (x.device.type == "cpu" and x.dtype in DTYPES and not torch.is_autocast_enabled("cpu")
            and not torch.compiler.is_compiling() and not torch.onnx.is_in_onnx_export())


def cpu_inference(x: torch.Tensor) -> bool:
    """True where the inference fast paths apply to `x`: no autograd recording, and `_raw_cpu_ops_apply`."""
    return not torch.is_grad_enabled() and _raw_cpu_ops_apply(x)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
           gelu: bool = False) -> torch.Tensor:
    """x @ weight^T (+ bias), then exact GELU if `gelu`, as one oneDNN call; not differentiable.

    x [..., in_features], weight [out_features, in_features] -> [..., out_features]; a dtype in `DTYPES`, on CPU.
    """
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "gelu" if gelu else "none", [],
                                              "none" if gelu else "")


# `AST_HF_BF16_MATMUL`: "auto" (default: measure at first use), "bf16" or "fp32" (force one branch).
BF16_MATMUL_CHOICES = ("auto", "bf16", "fp32")
# The probes' GEMM: a 2048-token slice through the MLP's first matmul at base width (768 -> 3072).
PROBE_GEMM_SHAPE = (2048, 768, 3072)
# `AST_HF_FP32_LINEAR`: "auto" (default: measure at first use), "onednn" or "blas" (force one).
FP32_LINEAR_CHOICES = ("auto", "onednn", "blas")
# The probe's attention: one clip of 10.24 s (1214 tokens) and two heads of 64 dims.
PROBE_ATTENTION_SHAPE = (1, 2, 1214, 64)
# `AST_HF_FP32_ATTENTION`: "auto" (default: measure at first use), "fused" or "per_head" (force one).
FP32_ATTENTION_CHOICES = ("auto", "fused", "per_head")
# Per-head float32 attention must measure this much faster than the fused kernel to be chosen, so that timing
# noise cannot flip the choice (and the last bits of the outputs) between runs; sequences shorter than this many
# tokens take the fused kernel without measuring (`float32_attention`).
FP32_ATTENTION_MARGIN = 1.1
FP32_ATTENTION_MIN_TOKENS = 512
# `attention_per_head` takes the queries of a head in blocks whose scores [rows, tokens] take about this many bytes:
# a block's scores stay in cache between the two matmuls and the softmax, and a long clip's memory stays bounded.
ATTENTION_BLOCK_BYTES = 4 << 20


@dataclass(frozen=True)
class BF16Policy:
    """How a bfloat16 model computes in CPU inference here.

    matmul: "bf16" (bf16 GEMMs) or "fp32" (activations upcast, weights upcast once and cached, fp32 GEMMs, results
        rounded back to bf16). attention: "fused" (torch's `scaled_dot_product_attention` in bf16), "per_head"
        (`attention_per_head`, oneDNN bf16 matmuls) or "fp32" (the fused kernel in float32).
    seconds: {probe: best wall seconds} of what was measured to decide.
    """

    matmul: str
    attention: str
    seconds: dict


def _setting(variable: str, choices: tuple[str, ...]) -> str:
    """The environment `variable`'s value, lower-cased ("auto" where unset), one of `choices`.

    Raises:
        ValueError: any other value, naming the variable and the accepted ones.
    """
    choice = os.environ.get(variable, "auto").lower()
    if choice not in choices:
        raise ValueError(f"{variable}={choice!r}: use one of {', '.join(choices)}")
    return choice


def best_seconds(kernels: dict[str, Callable[[], object]], repeats: int = 3) -> dict[str, float]:
    """Best wall seconds of each zero-argument callable: one warm-up call each (oneDNN builds its primitive on the
    first), then `repeats` rounds timing them in turn, so that a slow stretch of a shared machine hits all alike."""
    for kernel in kernels.values():
        kernel()
    best = dict.fromkeys(kernels, float("inf"))
    for _ in range(repeats):
        for name, kernel in kernels.items():
            start = time.perf_counter()
            kernel()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def _measure_gemms() -> dict[str, float]:
    """Best wall seconds of one `PROBE_GEMM_SHAPE` GEMM in float32 and in bfloat16 through oneDNN."""
    tokens, width, out = PROBE_GEMM_SHAPE
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(tokens, width, generator=generator)
    w = torch.randn(out, width, generator=generator)
    a16, w16 = a.bfloat16(), w.bfloat16()
    with torch.no_grad():
        return best_seconds({"gemm fp32": lambda: linear(a, w), "gemm bf16": lambda: linear(a16, w16)})


def _time_attentions(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, repeats: int) -> dict[str, float]:
    """Best wall seconds ("fused", "per_head") of softmax(q k^T) v through torch's fused kernel and through
    `attention_per_head` (`best_seconds`)."""
    with torch.no_grad():
        return best_seconds({"fused": lambda: F.scaled_dot_product_attention(q, k, v),
                             "per_head": lambda: attention_per_head(q, k, v)}, repeats)


def _measure_attention() -> dict[str, float]:
    """Best wall seconds of one bf16 `PROBE_ATTENTION_SHAPE` attention through torch's fused kernel and per head."""
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(PROBE_ATTENTION_SHAPE, generator=generator).bfloat16() for _ in range(3))
    seconds = _time_attentions(q, k, v, repeats=3)
    return {"attention fused": seconds["fused"], "attention per head": seconds["per_head"]}


@functools.cache
def bf16_policy() -> BF16Policy:
    """This host's `BF16Policy`, decided at the first bf16 use and kept (for the process, and on disk per host).

    "auto" (`AST_HF_BF16_MATMUL` unset): one GEMM of `PROBE_GEMM_SHAPE` in both dtypes (best of 3 after a warm-up,
    a fraction of a second); bf16 matmuls where bf16 is faster, else float32. With bf16 matmuls the attention is
    measured too (`PROBE_ATTENTION_SHAPE`, fused kernel against per-head oneDNN). `AST_HF_BF16_MATMUL=bf16` or
    `fp32` forces the matmul branch. The measured policy is kept on disk for this host (`probe_cache`);
    `bf16_policy.cache_clear()` forgets the process's copy.
    """
    choice = _setting("AST_HF_BF16_MATMUL", BF16_MATMUL_CHOICES)
    if choice == "fp32":
        return BF16Policy("fp32", "fp32", {})
    if choice == "bf16":
        return _measure_bf16_policy(matmul="bf16")
    kept = probe_cache.remembered("bf16_policy", lambda: asdict(_measure_bf16_policy()),
                                  _valid_bf16_policy)
    return BF16Policy(**kept)


def _measure_bf16_policy(matmul: str | None = None) -> BF16Policy:
    """`bf16_policy` as measured now; `matmul` given: only the attention is measured."""
    seconds = _measure_gemms() if matmul is None else {}
    if matmul is None and seconds["gemm bf16"] >= seconds["gemm fp32"]:
        return BF16Policy("fp32", "fp32", seconds)
    seconds |= _measure_attention()
    attention = "fused" if seconds["attention fused"] < seconds["attention per head"] else "per_head"
    return BF16Policy("bf16", attention, seconds)


def _valid_bf16_policy(value) -> bool:
    """Whether a kept value is a `BF16Policy` as a dict (probe_cache)."""
    return (isinstance(value, dict) and set(value) == {"matmul", "attention", "seconds"}
            and (value["matmul"], value["attention"]) in {("fp32", "fp32"), ("bf16", "fused"), ("bf16", "per_head")}
            and isinstance(value["seconds"], dict))


# `AST_HF_BF16_ROW_SPLIT`: "auto" (default: measured per shape at first sight), "on" or "off" (force one).
BF16_ROW_SPLIT_CHOICES = ("auto", "on", "off")
# Linears over fewer rows are never split (each half would be too small to gain); a split must be this much faster
# to be taken, so that timing noise cannot flip the choice (and the last bits of the outputs) between runs.
BF16_ROW_SPLIT_MIN_ROWS = 512
BF16_ROW_SPLIT_MARGIN = 1.2


@functools.lru_cache(maxsize=256)
def bf16_row_split(rows: int, in_features: int, out_features: int) -> bool:
    """Whether a bf16 linear of `rows` x `in_features` -> `out_features` runs as two oneDNN calls over half the
    rows each: measured once per shape (best of 3 in turn after a warm-up, a few ms) and kept for the process
    and on disk for this host (`probe_cache`).

    Why: oneDNN's bf16 GEMM picks its blocking and threading from the shape, and at some row counts the pick is
    poor: on the AMX host measured (2 threads) 768-wide outputs over 768-1280 rows ran at about half the rate of
    640 or 1536+ rows, and one 10.24 s clip is 1214 rows (README, benchmarks/results/). Which shapes suffer is the
    library's and the host's business, so it is measured, not listed. `AST_HF_BF16_ROW_SPLIT=on|off` forces it;
    `bf16_row_split.cache_clear()` forgets the process's answers."""
    choice = _setting("AST_HF_BF16_ROW_SPLIT", BF16_ROW_SPLIT_CHOICES)
    if choice != "auto" or rows < BF16_ROW_SPLIT_MIN_ROWS:
        return choice == "on" and rows >= 2
    return probe_cache.remembered(f"bf16_row_split {rows}x{in_features}x{out_features}",
                                  lambda: _halves_faster(rows, in_features, out_features),
                                  lambda value: isinstance(value, bool))


def _halves_faster(rows: int, in_features: int, out_features: int) -> bool:
    """Whether two oneDNN bf16 linears over half the rows each measure `BF16_ROW_SPLIT_MARGIN` times as fast as one
    over all of them (`bf16_row_split`)."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(rows, in_features, generator=generator).to(torch.bfloat16)
    w = torch.randn(out_features, in_features, generator=generator).to(torch.bfloat16)
    half = rows // 2
    with torch.no_grad():
        seconds = best_seconds({"whole": lambda: linear(x, w), "halves": lambda: (linear(x[:half], w),
                                                                               linear(x[half:], w))}, 3)
    return seconds["halves"] * BF16_ROW_SPLIT_MARGIN < seconds["whole"]


def bf16_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                gelu: bool = False) -> torch.Tensor:
    """`linear` for bf16 `x` [..., in_features], over its rows in two halves where `bf16_row_split` found that
    faster for this shape (each row's result is computed alike either way)."""
    rows = x.numel() // x.shape[-1]
    if not bf16_row_split(rows, x.shape[-1], weight.shape[0]):
        return linear(x, weight, bias, gelu)
    flat, half = x.reshape(rows, x.shape[-1]), rows // 2
    out = torch.cat([linear(flat[:half], weight, bias, gelu), linear(flat[half:], weight, bias, gelu)])
    return out.view(*x.shape[:-1], weight.shape[0])


@functools.cache
def float32_linear() -> str:
    """Which kernel runs float32 linears in CPU inference here: "onednn" (`linear`, the GELU fused) or "blas"
    (torch's `F.linear`, MKL or OpenBLAS, then GELU), decided at the first float32 use and kept.

    Why: neither wins everywhere. On AMD EPYC torch's MKL skips its AVX-512 kernels and oneDNN is faster; on Intel
    Xeons MKL's GEMMs are the faster at the model's shapes, more so as the batch grows, and its separate GELU costs
    little once it runs in place; where oneDNN's ISA is capped below MKL's (`ONEDNN_MAX_CPU_ISA` alone) MKL is far
    ahead (benchmarks/results/). "auto" (`AST_HF_FP32_LINEAR` unset) times the whole MLP block (`PROBE_GEMM_SHAPE`:
    its first matmul with the GELU, then the second) both ways, best of 5 in turn after a warm-up (about 0.6 s),
    and keeps the faster, on disk for this host too (`probe_cache`, so later processes skip the probe);
    `float32_linear.cache_clear()` forgets the process's choice."""
    choice = _setting("AST_HF_FP32_LINEAR", FP32_LINEAR_CHOICES)
    if choice != "auto":
        return choice
    return probe_cache.remembered("float32_linear", _faster_float32_linear, lambda value: value in ("onednn", "blas"))


def _faster_float32_linear() -> str:
    """"blas" or "onednn", whichever ran the MLP block faster just now (`float32_linear`)."""
    seconds = _measure_float32_linears()
    return "blas" if seconds["blas"] < seconds["onednn"] else "onednn"


def _measure_float32_linears(repeats: int = 5) -> dict[str, float]:
    """Best wall seconds of the MLP block at `PROBE_GEMM_SHAPE` (linear + GELU, then linear back to the width)
    through oneDNN (GELU fused) and through torch (`_blas_linear`), the two timed in turn after a warm-up each
    (they are often within 10%: interleaving keeps a slow stretch of a shared machine from deciding)."""
    tokens, width, hidden = PROBE_GEMM_SHAPE
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(tokens, width, generator=generator)
    up, down = torch.randn(hidden, width, generator=generator), torch.randn(width, hidden, generator=generator)
    kernels = {"onednn": lambda: linear(linear(x, up, None, gelu=True), down),
               "blas": lambda: _blas_linear(_blas_linear(x, up, None, gelu=True), down)}
    with torch.no_grad():
        return best_seconds(kernels, repeats)


def _blas_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                 gelu: bool = False) -> torch.Tensor:
    """`F.linear` (torch's BLAS: MKL or OpenBLAS), then exact GELU in place on its fresh output if `gelu`: one pass
    over the widest activation, no second tensor of its size. Inference only (an in-place GELU has no autograd)."""
    out = F.linear(x, weight, bias)
    return torch.ops.aten.gelu_(out) if gelu else out


# Attribute of a bf16 weight holding (data pointer, version, float32 copy) for the "fp32" policy: the copy lives
# and dies with its weight.
FLOAT32_COPY_ATTRIBUTE = "_ast_hf_float32_copy"


def _float32_copy(weight: torch.Tensor | None) -> torch.Tensor | None:
    """`weight` in float32, made once and kept until the weight is written (its version counter or storage
    changes)."""
    if weight is None:
        return None
    entry = getattr(weight, FLOAT32_COPY_ATTRIBUTE, None)
    if entry is None or entry[0] != weight.data_ptr() or entry[1] != weight._version:
        entry = (weight.data_ptr(), weight._version, weight.detach().float())
        setattr(weight, FLOAT32_COPY_ATTRIBUTE, entry)
    return entry[2]


def bf16_runs_in_float32(x: torch.Tensor) -> bool:
    """Whether bf16 activations `x` take the float32 branch of `bf16_policy` here (CPU inference, bf16 GEMM slower
    than float32): the encoder then runs its float32 twin (`ASTEncoder.float32_twin`)."""
    return x.dtype == torch.bfloat16 and cpu_inference(x) and bf16_policy().matmul == "fp32"


# `AST_HF_FP32_TRAINING`: "auto" (default: measure each GEMM of a linear's training per shape), "onednn" (all three
# through oneDNN) or "torch" (torch's own ops, the MLP's GELU included; else `gelu_cpu`'s).
FP32_TRAINING_CHOICES = ("auto", "onednn", "torch")
# The three GEMMs of a linear in training: output = x @ W^T, grad input = grad @ W, grad weight = grad^T @ x.
TRAINING_GEMMS = ("forward", "grad_input", "grad_weight")
# oneDNN must measure this much faster than torch's op for a training GEMM to be chosen, so that timing noise cannot
# flip a near tie (and the last bits of the gradients) between runs.
FP32_TRAINING_MARGIN = 1.1
# A training probe measures at most this many rows: beyond it GEMMs run at their full rate and timing costs more.
FP32_TRAINING_PROBE_MAX_ROWS = 4096


def float32_training(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether `differentiable_linear(x, weight)` may run GEMMs through oneDNN: float32 on the CPU with autograd
    recording, outside autocast, torch.compile and ONNX export (which of its GEMMs do: `float32_training_kernels`)."""
    return (x.dtype == torch.float32 and weight.dtype == torch.float32 and x.numel() > 0
            and torch.is_grad_enabled() and _raw_cpu_ops_apply(x))


def _probe_rows(rows: int) -> int:
    """The row count a training probe measures for `rows`: the nearest power of two (so batches of varying length
    share a few answers), at most `FP32_TRAINING_PROBE_MAX_ROWS`."""
    return min(1 << max(0, round(math.log2(rows))), FP32_TRAINING_PROBE_MAX_ROWS)


def float32_training_kernels(rows: int, in_features: int, out_features: int) -> tuple[str, str, str]:
    """Which kernel, "onednn" or "torch", runs each of `TRAINING_GEMMS` of a float32 linear of `rows` x
    `in_features` -> `out_features` in CPU training.

    Why: which is faster depends on the GEMM, the shape and the host, by up to 2x either way. Measured
    (benchmarks/, docs/training.md): on AMD EPYC torch's MKL runs its AVX2 code, and on a Zen 5 oneDNN's AVX-512
    GEMMs won all three at base width, on a Zen 4 the forward and input gradient only; the Zen 4 capped to AVX2 ran
    oneDNN's weight gradient (its first operand a transposed copy) at half MKL's speed while the other two tied; at
    the demo's width 128 torch's ops won most. "auto"
    (`AST_HF_FP32_TRAINING` unset) times the three GEMMs both ways on random inputs of the shape (`_probe_rows`
    rows; best of 3 in turn after a warm-up) and keeps oneDNN where it measured `FP32_TRAINING_MARGIN` times as
    fast; the answer is kept for the process and on disk for this host (`probe_cache`).
    `_measured_training_kernels.cache_clear()` forgets the process's answers."""
    choice = _setting("AST_HF_FP32_TRAINING", FP32_TRAINING_CHOICES)
    if choice != "auto":
        return (choice,) * len(TRAINING_GEMMS)
    return _measured_training_kernels(_probe_rows(rows), in_features, out_features)


@functools.lru_cache(maxsize=256)
def _measured_training_kernels(rows: int, in_features: int, out_features: int) -> tuple[str, str, str]:
    """`float32_training_kernels` under "auto", for a probe's row count."""
    kernels = probe_cache.remembered(
        f"float32_training {rows}x{in_features}x{out_features}",
        lambda: _faster_training_kernels(rows, in_features, out_features),
        lambda value: (isinstance(value, list) and len(value) == len(TRAINING_GEMMS)
                       and all(kernel in ("onednn", "torch") for kernel in value)))
    return tuple(kernels)


def _faster_training_kernels(rows: int, in_features: int, out_features: int) -> list[str]:
    """["onednn" | "torch"] per `TRAINING_GEMMS`: oneDNN where it ran that GEMM `FP32_TRAINING_MARGIN` times as fast
    as torch's op on random inputs of the shape just now."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(rows, in_features, generator=generator)
    weight = torch.randn(out_features, in_features, generator=generator)
    bias = torch.randn(out_features, generator=generator)
    grad = torch.randn(rows, out_features, generator=generator)
    chosen = []
    with torch.no_grad():
        for gemm in TRAINING_GEMMS:
            seconds = best_seconds({kernel: functools.partial(run, x, weight, bias, grad)
                                    for kernel, run in _TRAINING_GEMM[gemm].items()})
            chosen.append("onednn" if seconds["onednn"] * FP32_TRAINING_MARGIN < seconds["torch"] else "torch")
    return chosen


def _onednn_grad_weight(x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """grad^T @ x through oneDNN, for 2-D x [rows, in] and grad [rows, out] -> [out, in]. oneDNN copies a strided
    first operand and reads a strided second one in place: the copied one is the narrower of grad and x (a
    [3072, rows] copy cost 8-100 ms, the GEMM 40)."""
    if x.shape[1] < grad.shape[1]:
        return linear(x.t(), grad.t()).t()  # (x^T grad)^T
    return linear(grad.t(), x.t())


# (x [rows, in], weight [out, in], bias [out], grad [rows, out]) -> the GEMM's result, per GEMM and kernel.
_TRAINING_GEMM = {
    "forward": {"onednn": lambda x, weight, bias, grad: linear(x, weight, bias),
                "torch": lambda x, weight, bias, grad: F.linear(x, weight, bias)},
    "grad_input": {"onednn": lambda x, weight, bias, grad: linear(grad, weight.t().contiguous()),
                   "torch": lambda x, weight, bias, grad: torch.mm(grad, weight)},
    "grad_weight": {"onednn": lambda x, weight, bias, grad: _onednn_grad_weight(x, grad),
                    "torch": lambda x, weight, bias, grad: torch.mm(grad.t(), x)},
}


class _Float32Linear(torch.autograd.Function):
    """x @ weight^T + bias whose three GEMMs (the forward, grad_x = grad @ weight, grad_weight = grad^T @ x) each run
    through the kernel `kernels` names ("onednn" or "torch", in `TRAINING_GEMMS` order)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                kernels: tuple[str, str, str]) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.kernels = kernels
        return _TRAINING_GEMM["forward"][kernels[0]](x, weight, bias, None)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        grad = grad.reshape(-1, weight.shape[0])
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = _TRAINING_GEMM["grad_input"][ctx.kernels[1]](None, weight, None, grad).view(x.shape)
        if ctx.needs_input_grad[1]:
            flat_x = x.reshape(-1, weight.shape[1])
            grad_weight = _TRAINING_GEMM["grad_weight"][ctx.kernels[2]](flat_x, weight, None, grad)
        if ctx.needs_input_grad[2]:  # False where bias is None
            grad_bias = grad.sum(0)
        return grad_x, grad_weight, grad_bias, None


def differentiable_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`F.linear(x, weight, bias)`, differentiable: in float32 CPU training (`float32_training`) each of its three
    GEMMs through the kernel `float32_training_kernels` chose for its shape (`_Float32Linear`); torch's own op where
    all three are torch's, or outside float32 CPU training."""
    if float32_training(x, weight):
        kernels = float32_training_kernels(x.numel() // x.shape[-1], weight.shape[1], weight.shape[0])
        if "onednn" in kernels:
            return _Float32Linear.apply(x, weight, bias, kernels)
    return F.linear(x, weight, bias)


def linear_layer(x: torch.Tensor, layer: nn.Module, gelu: bool = False) -> torch.Tensor:
    """`layer(x)` (then exact GELU if `gelu`). In CPU inference: bf16 through oneDNN with the GELU fused
    (`bf16_linear`), float32 through the kernel `float32_linear` chose; else (training, autocast, other devices)
    `differentiable_linear` (float32 CPU training through oneDNN where that host's probe chose it), and in float32
    CPU training the GELU `gelu_cpu`'s (unless `AST_HF_FP32_TRAINING=torch`).

    A bf16 layer on a host whose `bf16_policy` is "fp32" computes in float32 and returns bf16."""
    if not isinstance(layer, nn.Linear):  # e.g. an int8 dynamically quantised Linear: it runs its own kernel
        out = layer(x)
        return F.gelu(out) if gelu else out
    if cpu_inference(x):
        if x.dtype == torch.bfloat16 and layer.weight.dtype == torch.bfloat16 and bf16_policy().matmul == "fp32":
            out = linear(x.float(), _float32_copy(layer.weight), _float32_copy(layer.bias), gelu)
            return out.to(torch.bfloat16)
        if x.dtype == torch.bfloat16:
            return bf16_linear(x, layer.weight, layer.bias, gelu)
        if float32_linear() == "onednn":
            return linear(x, layer.weight, layer.bias, gelu)
        return _blas_linear(x, layer.weight, layer.bias, gelu)
    out = differentiable_linear(x, layer.weight, layer.bias)
    if not gelu:
        return out
    if float32_training(out, layer.weight) and _setting("AST_HF_FP32_TRAINING", FP32_TRAINING_CHOICES) != "torch":
        from .gelu_cpu import gelu as compiled_gelu  # here, not at the top: numba loads only where CPU training runs

        return compiled_gelu(out)  # keeps gelu'(out) for a backward of one multiply
    return F.gelu(out)


def bf16_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                   key_mask: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(q k^T / sqrt(head_dim)) v for bf16 CPU inference, the way `bf16_policy` chose for this host.

    Args:
        q, k, v: [batch, heads, tokens, head_dim], bfloat16.
        key_mask: [batch, 1, 1, tokens] bool, True where a token may be attended to; None: all.

    Returns:
        context [batch, tokens, heads * head_dim], bfloat16.
    """
    attention = bf16_policy().attention
    if attention == "per_head":
        return attention_per_head(q, k, v, key_mask)
    if attention == "fp32":
        q, k, v = q.float(), k.float(), v.float()
    batch, heads, tokens, head_dim = q.shape
    context = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask)
    return context.transpose(1, 2).reshape(batch, tokens, heads * head_dim).to(torch.bfloat16)


def attention_per_head(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                       key_mask: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(q k^T / sqrt(head_dim)) v, one (clip, head, block of queries) at a time with oneDNN matmuls (CPU
    inference, bfloat16 or float32).

    Why: torch's fused CPU attention kernel runs its products as many small GEMMs. In bf16 it accumulates them
    through a slow mixed-precision path on CPUs without AMX (as fast in bf16 as in fp32), where oneDNN's bf16
    matmul runs at ~2x; in float32 two large oneDNN GEMMs per block beat it on some hosts and lose on others
    (`float32_attention` measures). Scores are in the inputs' dtype before a float32 softmax (bf16: rounded, as
    in eager bf16 attention); probabilities go back to that dtype for the second matmul, as in the fused kernel.
    The bf16 softmax runs in place through `softmax_cpu.softmax_bf16_` (faster than torch's: benchmarks/).
    Queries go in blocks of about `ATTENTION_BLOCK_BYTES` of scores (a whole 10.24 s clip's 1214 in bf16, two
    blocks in float32); query rows are independent, so the blocking only bounds the memory.

    Args:
        q: [batch, heads, queries, head_dim]; k, v: [batch, heads, tokens, head_dim]; bfloat16 or float32.
        key_mask: [batch, 1, 1, tokens] bool, True where a token may be attended to; None: all.

    Returns:
        context [batch, queries, heads * head_dim].
    """
    from .softmax_cpu import softmax_bf16_  # here, not at the top: numba loads only where bf16 attention runs

    batch, heads, queries, head_dim = q.shape
    tokens = k.shape[2]
    scaled = torch.empty(q.shape, dtype=q.dtype)  # [batch, heads, queries, head_dim], each head's rows contiguous
    torch.mul(q, head_dim ** -0.5, out=scaled)
    k = k.contiguous()
    v_t = v.transpose(2, 3).contiguous()  # [batch, heads, head_dim, tokens]: p @ v = linear(p, v^T)
    context = torch.empty(batch, queries, heads, head_dim, dtype=q.dtype)
    blocks = -(-queries * tokens * q.element_size() // ATTENTION_BLOCK_BYTES)
    rows = -(-queries // blocks)
    for b in range(batch):
        for h in range(heads):
            for start in range(0, queries, rows):
                scores = linear(scaled[b, h, start:start + rows], k[b, h])
                if key_mask is not None:
                    scores.masked_fill_(~key_mask[b, 0], torch.finfo(scores.dtype).min)
                # bf16: bf16 in and out, float32 inside (in place, compiled: `softmax_cpu`)
                probs = softmax_bf16_(scores) if scores.dtype == torch.bfloat16 else scores.softmax(dim=-1)
                context[b, start:start + rows, h] = linear(probs, v_t[b, h])
    return context.view(batch, queries, heads * head_dim)


@functools.lru_cache(maxsize=256)
def float32_attention(heads: int, queries: int, tokens: int, head_dim: int) -> str:
    """How float32 attention of one clip's `heads` x `queries` x `tokens` x `head_dim` runs in CPU inference here:
    "fused" (torch's `scaled_dot_product_attention`) or "per_head" (`attention_per_head`); measured once per shape
    and kept (for the process, and on disk for this host: `probe_cache`).

    Why: neither wins everywhere. On the AMD EPYC (Zen 5) measured, per-head oneDNN GEMMs ran a 10.24 s clip's
    attention (12 x 1214 x 1214 x 64) 1.5x as fast as the fused kernel; with the ISA capped to AVX2 they were 1.4x
    slower; below ~512 tokens the two oneDNN calls per head and block cost more than they save, on both
    (benchmarks/). Shorter sequences than `FP32_ATTENTION_MIN_TOKENS` therefore take the fused kernel unmeasured.
    "auto" (`AST_HF_FP32_ATTENTION` unset) times both on one clip of this shape, its q, k, v laid out as the model
    makes them (best of 5 in turn after a warm-up: ~0.3 s for 12 x 1214 tokens), and takes per-head only if it is
    `FP32_ATTENTION_MARGIN` times as fast. `AST_HF_FP32_ATTENTION=fused|per_head` forces one;
    `float32_attention.cache_clear()` forgets the process's answers. Where oneDNN does not run
    (`AST_HF_ONEDNN=0`) the fused kernel runs, whatever was chosen."""
    choice = _setting("AST_HF_FP32_ATTENTION", FP32_ATTENTION_CHOICES)
    if choice != "auto":
        return choice
    if tokens < FP32_ATTENTION_MIN_TOKENS:
        return "fused"
    shape = (heads, queries, tokens, head_dim)
    return probe_cache.remembered(f"float32_attention {'x'.join(map(str, shape))}",
                                  lambda: _faster_float32_attention(shape),
                                  lambda value: value in ("fused", "per_head"))


def _measure_float32_attention(heads: int, queries: int, tokens: int, head_dim: int,
                               repeats: int = 5) -> dict[str, float]:
    """Best wall seconds of one clip's float32 attention of this shape through torch's fused kernel and per head, on
    q, k, v that are head views of [1, tokens, heads, head_dim] projections, as in the model."""
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, rows, heads, head_dim, generator=generator).transpose(1, 2)
               for rows in (queries, tokens, tokens))
    return _time_attentions(q, k, v, repeats)


def _faster_float32_attention(shape: tuple[int, int, int, int]) -> str:
    """"per_head" where it measured `FP32_ATTENTION_MARGIN` times as fast as the fused kernel just now at `shape`
    (heads, queries, tokens, head_dim), else "fused" (`float32_attention`)."""
    seconds = _measure_float32_attention(*shape)
    return "per_head" if seconds["per_head"] * FP32_ATTENTION_MARGIN < seconds["fused"] else "fused"


def clips_per_call(hidden_states: torch.Tensor) -> int:
    """Clips of `hidden_states` [batch, tokens, D] the encoder should take per call: the activation bytes of
    `CPU_TOKENS_PER_CALL` float32 tokens (twice the tokens in bf16; at least one clip) where the fast paths apply,
    else the whole batch."""
    batch, tokens, _ = hidden_states.shape
    if not cpu_inference(hidden_states):
        return batch
    return max(1, cpu_tokens_per_call(hidden_states.dtype) // tokens)


def cpu_tokens_per_call(dtype: torch.dtype) -> int:
    """Tokens of `dtype` the encoder takes per CPU call: the activation bytes of `CPU_TOKENS_PER_CALL` float32
    tokens (2560 in float32, 5120 in bf16)."""
    return CPU_TOKENS_PER_CALL * 4 // dtype.itemsize
