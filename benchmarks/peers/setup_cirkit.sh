#!/usr/bin/env bash
# Sets up an isolated virtual environment for the GPL peer library cirkit (libcirkit 0.3.1).
#
# cirkit is GPL: it lives only in this venv and runs only as a separate process
# (benchmarks/peers/cirkit_digits.py); the dgm package never imports it.
#
# The venv sees the system's site-packages, so the system's CPU torch is reused: libcirkit is
# installed with --no-deps, and only those of its own requirements that are not importable yet
# are installed (never torch, so pip cannot pull a multi-GB CUDA build).
#
# Idempotent. Prints the venv's python path on its last line.
set -euo pipefail

CIRKIT_VERSION="0.3.1"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
TMP_DIR="$ROOT/benchmarks/results/tmp"          # git-ignored
VENV="$TMP_DIR/cirkit-venv"
WHEEL_CACHE="$TMP_DIR/cirkit-wheels"
PY="$VENV/bin/python"

if [ ! -x "$PY" ]; then
    echo "creating venv $VENV" >&2
    mkdir -p "$TMP_DIR"
    python3 -m venv --system-site-packages "$VENV"
fi

installed_version() {
    "$PY" - <<'EOF'
import importlib.metadata as md
try:
    print(md.version("libcirkit"))
except md.PackageNotFoundError:
    print("")
EOF
}

if [ "$(installed_version)" != "$CIRKIT_VERSION" ]; then
    # Look for the wheel in the cache (or a wheel already downloaded to /tmp/cirkitdl);
    # otherwise fetch it with pip (the configured package registry), without dependencies.
    WHEEL="libcirkit-$CIRKIT_VERSION-py3-none-any.whl"
    mkdir -p "$WHEEL_CACHE"
    if [ ! -f "$WHEEL_CACHE/$WHEEL" ]; then
        if [ -f "/tmp/cirkitdl/$WHEEL" ]; then
            cp "/tmp/cirkitdl/$WHEEL" "$WHEEL_CACHE/"
        else
            "$PY" -m pip download "libcirkit==$CIRKIT_VERSION" --no-deps -d "$WHEEL_CACHE" >&2
        fi
    fi
    echo "installing $WHEEL (--no-deps)" >&2
    "$PY" -m pip install --no-deps "$WHEEL_CACHE/$WHEEL" >&2
fi

# The requirements of libcirkit (no extras, no torch) that are not importable in the venv.
MISSING="$("$PY" - <<'EOF'
import importlib.metadata as md
import importlib.util
import re

missing = []
for req in md.requires("libcirkit") or []:
    if ";" in req:  # extras (dev, docs, notebooks) and other markers: skip
        continue
    name = re.match(r"[A-Za-z0-9_.-]+", req).group(0)
    if name.lower() == "torch":
        continue
    module = name.lower().replace("-", "_")
    if importlib.util.find_spec(module) is None:
        missing.append(req.replace(" ", ""))
    else:
        try:
            have = md.version(name)
        except md.PackageNotFoundError:
            have = "?"
        import sys
        print(f"already importable: {name} {have} (cirkit asks {req})", file=sys.stderr)
print(" ".join(missing))
EOF
)"

if [ -n "$MISSING" ]; then
    echo "installing missing requirements: $MISSING" >&2
    # Keep whatever torch the system has: pin it so that no requirement can replace it.
    TORCH_VERSION="$("$PY" -c 'import torch; print(torch.__version__)' 2>/dev/null || true)"
    PIN="$(mktemp)"
    trap 'rm -f "$PIN"' EXIT
    if [ -n "$TORCH_VERSION" ]; then
        echo "torch==$TORCH_VERSION" > "$PIN"
        # shellcheck disable=SC2086
        "$PY" -m pip install -c "$PIN" $MISSING >&2
    else
        # shellcheck disable=SC2086
        "$PY" -m pip install $MISSING >&2
    fi
fi

"$PY" -c "import cirkit, torch; import cirkit.pipeline, cirkit.templates.data_modalities" >&2
echo "$PY"
