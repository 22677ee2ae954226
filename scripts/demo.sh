#!/usr/bin/env bash
# Set up, then run the main job: train the default models on the built-in 8x8 digits, evaluate
# them, draw samples and write reports (runs/demo/index.html). Extra arguments go to `dgm demo`
# (e.g. --quick for a smoke run of a few epochs).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
PY=${PYTHON:-python3}
exec "$PY" -m dgm demo --out runs/demo "$@"
