"""What the host is, for the header of every benchmark table: figures from one host do not carry to another.

CPU model and flags from /proc/cpuinfo (bf16 dot products: avx512_bf16; AMX tiles: amx_bf16 / amx_tile), the SIMD
level torch dispatches to, any cap set through ATEN_CPU_CAPABILITY / ONEDNN_MAX_CPU_ISA / MKL_ENABLE_INSTRUCTIONS /
NUMBA_CPU_NAME and NUMBA_CPU_FEATURES or the others of `CAP_VARIABLES` (rows measured so are a capped run on this
machine, not another machine), the CPU numba compiles ast-hf's kernels for and how wide their vectors are, torch's
BLAS, and the oneDNN kernels our CPU paths actually get for a float32 and a bfloat16 matmul (read from ONEDNN_VERBOSE
in a fresh process, since oneDNN prints its choice only when it first builds a primitive), and how a bf16 model
computes here (`onednn.bf16_policy`).
"""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys

# Every variable that changes which kernels run (`ast_hf.probe_cache.KERNEL_ENVIRONMENT`: oneDNN also reads its older
# DNNL_ name; MKL_CBWR / MKL_DEBUG_CPU_TYPE pick MKL's code path; ONEDNN_DEFAULT_FPMATH_MODE=BF16 computes float32
# matmuls in bf16), and numba's.
CAP_VARIABLES = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "ONEDNN_DEFAULT_FPMATH_MODE",
                 "MKL_ENABLE_INSTRUCTIONS", "MKL_CBWR", "MKL_DEBUG_CPU_TYPE", "NUMBA_CPU_NAME", "NUMBA_CPU_FEATURES",
                 "AST_HF_ONEDNN")

_PROBE = """
import torch
from ast_hf import onednn
x = torch.randn(256, 768)
w = torch.randn(3072, 768)
print("PROBE float32", flush=True)
onednn.linear(x, w)
if onednn.BF16_UNITS:
    print("PROBE bfloat16", flush=True)
    onednn.linear(x.bfloat16(), w.bfloat16())
"""


def onednn_kernels() -> dict[str, str]:
    """{"float32": "brg_matmul:avx512_core", "bfloat16": "brg_matmul:avx512_core_amx", ...}: the implementation
    oneDNN picked for one matmul of each dtype our CPU paths run here (empty where oneDNN is off or absent)."""
    env = dict(os.environ, ONEDNN_VERBOSE="1")
    try:
        out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, env=env, timeout=120,
                             check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return {}
    kernels, dtype = {}, None
    for line in out.splitlines():
        if line.startswith("PROBE "):
            dtype = line.split()[1]
        elif dtype and line.startswith("onednn_verbose") and ",exec," in line and dtype not in kernels:
            fields = line.split(",")
            # onednn_verbose,<timestamp>,primitive,exec,cpu,<kind>,<implementation>,...
            kernels[dtype] = f"{fields[5]}:{fields[6]}" if len(fields) > 6 else line
    return kernels


def numba_target() -> tuple[str, int]:
    """(CPU name, widest vector in bits) of the code numba compiles here for ast-hf's kernels (the filterbank, the
    bf16 softmax, the training GELU), read from the machine code of a small float32 loop.

    Why read the code: numba takes its target features from NUMBA_CPU_FEATURES, else from the host, whatever
    NUMBA_CPU_NAME says, so NUMBA_CPU_NAME=haswell alone still compiles 512-bit AVX-512 code on an AVX-512 host."""
    import llvmlite.binding as llvm
    import numba
    import numpy as np

    @numba.njit(error_model="numpy")
    def scale(x, out):
        for i in range(x.shape[0]):
            out[i] = x[i] * np.float32(2.0) + np.float32(1.0)

    x = np.ones(64, np.float32)
    scale(x, np.empty_like(x))
    code = "".join(scale.inspect_asm().values())
    bits = 512 if "zmm" in code else 256 if "ymm" in code else 128
    return numba.config.CPU_NAME or llvm.get_host_cpu_name(), bits


def describe() -> str:
    """One line naming the host: CPU model, SIMD level (and caps), bf16/AMX units, BLAS, oneDNN kernels."""
    import torch

    from ast_hf import onednn
    from ast_hf.probe_cache import cpu_identity

    model, flags = cpu_identity()
    units = ", ".join(unit for unit, flag in (("AVX-512", "avx512f"), ("AVX-512 bf16", "avx512_bf16"),
                                              ("AMX bf16", "amx_bf16")) if flag in flags) or "no AVX-512"
    caps = [f"{name}={os.environ[name]}" for name in CAP_VARIABLES if name in os.environ]
    blas = re.search(r"BLAS_INFO=(\w+)", torch.__config__.show())
    kernels = onednn_kernels()
    parts = [f"{model} ({platform.machine()}, {os.cpu_count()} CPUs; {units})",
             f"torch dispatches {torch.backends.cpu.get_cpu_capability()}",
             f"BLAS {blas.group(1) if blas else 'unknown'}",
             "oneDNN " + (", ".join(f"{k} {v}" for k, v in kernels.items()) or "not used"),
             "numba compiles for {} ({}-bit vectors)".format(*numba_target())]
    if onednn.DTYPES:
        parts.append(f"float32 linears: {onednn.float32_linear()} (AST_HF_FP32_LINEAR="
                     f"{os.environ.get('AST_HF_FP32_LINEAR', 'auto')})")
        parts.append(f"float32 attention of a 10.24 s clip: {onednn.float32_attention(12, 1214, 1214, 64)} "
                     f"(AST_HF_FP32_ATTENTION={os.environ.get('AST_HF_FP32_ATTENTION', 'auto')})")
    if onednn.DTYPES and onednn.BF16_UNITS:
        policy = onednn.bf16_policy()
        parts.append(f"bf16 models: {policy.matmul} matmuls, {policy.attention} attention (AST_HF_BF16_MATMUL="
                     f"{os.environ.get('AST_HF_BF16_MATMUL', 'auto')})")
    if caps:
        parts.append("CAPPED RUN: " + " ".join(caps) + " (this machine with its ISA capped, not another machine)")
    return "; ".join(parts)
