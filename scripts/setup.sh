#!/usr/bin/env bash
# Install dgm and its test tools into the current Python environment.
# torch is pinned to the CPU build that this machine keeps on local disk; if a torch is already
# installed (a CUDA build, say), it is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  "$PY" -m pip install --quiet --disable-pip-version-check "torch==2.13.0"
fi
"$PY" -m pip install --quiet --disable-pip-version-check -e ".[test]"
