#!/usr/bin/env bash
# The main job, offline and end to end: set up, then run the demo into demo_out/ (or the folder given).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
exec .venv/bin/ast-hf demo --out "${1:-demo_out}"
