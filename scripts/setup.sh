#!/usr/bin/env bash
# Sets up everything ast-hf needs on a fresh Debian machine, idempotently:
#   - espeak-ng, sox and ffmpeg from Debian (speech and sound generation, audio decoding),
#   - chromium from Debian, where it installs: the web app's browser test drives it (skipped without it),
#   - a virtual environment at .venv/ in the repository root with ast-hf and its pinned dependencies.
# Re-running it is cheap: each step is skipped when already done.
set -euo pipefail
cd "$(dirname "$0")/.."

sudo_cmd=""
[ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
missing=()
for program in espeak-ng sox ffmpeg; do
  command -v "$program" >/dev/null 2>&1 || missing+=("$program")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]} from Debian" >&2
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq espeak-ng sox libsox-fmt-all ffmpeg >/dev/null
fi
# The browser is for one test only: a machine where it does not install still sets up (that test then skips).
if ! command -v chromium >/dev/null 2>&1; then
  echo "setup: installing chromium from Debian (for the web app's browser test)" >&2
  { $sudo_cmd apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq chromium; } \
    >/dev/null 2>&1 || echo "setup: chromium did not install; the browser test will be skipped" >&2
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($PYTHON --version)" >&2
  "$PYTHON" -m venv .venv
fi
# Reinstall only when pyproject.toml changed since the last successful install.
stamp=.venv/.ast-hf-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  # torch and its CUDA libraries make .venv about 7 GB; a disk that fills half way leaves a broken environment
  # and pip's "No space left on device" deep in its log, so say it before starting.
  need_gb=9
  free_gb=$(( $(df -Pk . | awk 'NR==2 {print $4}') / 1024 / 1024 ))
  if [ "$free_gb" -lt "$need_gb" ]; then
    echo "setup: installing needs about $need_gb GB free on $(df -P . | awk 'NR==2 {print $6}'); only $free_gb GB" \
         "is free there. Free some space (old clones with their .venv?) and run this again." >&2
    exit 1
  fi
  echo "setup: installing ast-hf and its dependencies into .venv (first time: several minutes)" >&2
  log=.venv/install.log
  if ! { .venv/bin/python -m pip install -q --upgrade pip && .venv/bin/python -m pip install -q -e '.[dev]'; } >"$log" 2>&1; then
    tail -n 30 "$log" >&2
    echo "setup: pip install failed; the full log is $log" >&2
    exit 1
  fi
  touch "$stamp"
fi
