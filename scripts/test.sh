#!/usr/bin/env bash
# The whole test suite: set up, lint, then pytest (extra arguments are passed on to every pytest pass).
#
# The numeric tests (marked `numeric`: features, model parity, conversion, position embeddings) run twice more, as
# other kinds of host would run them: with the vector ISA capped to AVX2 (ATen's, oneDNN's, MKL's and numba's
# kernels, as on an AVX2-only CPU; numba needs NUMBA_CPU_FEATURES as well as NUMBA_CPU_NAME, or it keeps the
# host's AVX-512) and with ast-hf's oneDNN fast paths off (AST_HF_ONEDNN=0, as where torch has no
# oneDNN), so one machine covers the host classes CI may be given.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
.venv/bin/ruff check src tests benchmarks examples

numeric_pass() {  # $1: a label; the rest: pytest arguments. No numeric test among the selected ones is a pass.
  local label=$1 status=0
  shift
  echo "== numeric tests, $label"
  .venv/bin/python -m pytest -q -m numeric "$@" || status=$?
  [ "$status" -eq 0 ] || [ "$status" -eq 5 ] || exit "$status"
}

.venv/bin/python -m pytest -q "$@"
ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 NUMBA_CPU_NAME=haswell \
  NUMBA_CPU_FEATURES=-avx512f numeric_pass "vector ISA capped to AVX2" "$@"
AST_HF_ONEDNN=0 numeric_pass "without the oneDNN fast paths (AST_HF_ONEDNN=0)" "$@"
