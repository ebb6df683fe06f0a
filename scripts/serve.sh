#!/usr/bin/env bash
# Install GPT Server into .venv and start it on the built-in default model (CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}"
.venv/bin/python -m pip install --quiet --upgrade pip
# the CPU build of torch first (a plain "torch" requirement could pull a multi-GB CUDA build)
.venv/bin/python -m pip install --quiet torch==2.13.0
.venv/bin/python -m pip install --quiet -e .
exec .venv/bin/gpt-server serve "$@"
