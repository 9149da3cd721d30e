#!/usr/bin/env bash
# Decode tokens/s of recthinker's engine vs transformers `generate` on SmolLM2-135M-Instruct,
# batch 1 and batch 16, same prompts, greedy, same thread count (one per core;
# RECTHINKER_THREADS to change), in one run.
# Usage: scripts/bench/generate.sh [--device cpu|cuda] [--dtype f32|bf16] [--new-tokens N]
set -euo pipefail
cd "$(dirname "$0")/../.."
DEVICE=cpu DTYPE=f32 NEW=64 THREADS=${RECTHINKER_THREADS:-$(nproc)}
while [ $# -gt 0 ]; do
  case $1 in
    --device) DEVICE=$2; shift 2;; --dtype) DTYPE=$2; shift 2;; --new-tokens) NEW=$2; shift 2;;
    *) echo "unknown argument $1" >&2; exit 2;;
  esac
done
BIN=${RECTHINKER_BIN:-target/release/recthinker}
PY=${RECTHINKER_PYTHON:-.venv/bin/python}
[ -x "$BIN" ] || cargo build --release -p trainer
CORES=$(nproc)
export RECTHINKER_THREADS=$THREADS OMP_NUM_THREADS=$THREADS
echo "machine: $CORES cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), threads=$THREADS device=$DEVICE dtype=$DTYPE new_tokens=$NEW"
for B in 1 16; do
  ours=$("$BIN" bench generate --prompts scripts/bench/prompts.txt --batch $B --new-tokens $NEW --device $DEVICE --dtype $DTYPE)
  theirs=$("$PY" scripts/bench/hf_generate.py --prompts scripts/bench/prompts.txt --batch $B --new-tokens $NEW --threads $THREADS --device $DEVICE --dtype $DTYPE 2>/dev/null | tail -1)
  echo "batch $B ours:   $ours"
  echo "batch $B theirs: $theirs"
  "$PY" -c "import json,sys; o=json.loads(sys.argv[1]); t=json.loads(sys.argv[2]); print(f'batch {o[\"batch\"]}: recthinker {o[\"decode_tokens_per_s\"]:.1f} tok/s, transformers {t[\"decode_tokens_per_s\"]:.1f} tok/s, ratio {o[\"decode_tokens_per_s\"]/t[\"decode_tokens_per_s\"]:.2f}x')" "$ours" "$theirs"
done
