#!/usr/bin/env bash
# The main job, from a fresh machine: setup, release build, then the whole pipeline on the
# embedded default (MovieLens-100k + SmolLM2-135M-Instruct, CPU), sized for about 15 minutes
# on a 2-core machine:
#   prepare -> baselines -> synth -> SFT (LoRA) -> GRPO -> eval -> export,
# ending with a results table. Outputs go to checkpoints/pipeline (configs/*.toml name it).
# Longer runs: raise steps in configs/sft.toml and configs/rl.toml, and EVAL_USERS.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release -p trainer
BIN=target/release/recthinker
BASE=checkpoints/base/SmolLM2-135M-Instruct
RUN=checkpoints/pipeline
EVAL_USERS=${EVAL_USERS:-4}
mkdir -p "$RUN"
start=$(date +%s)
stamp() { echo "[$(( $(date +%s) - start ))s] $*"; }

if [ ! -f "$RUN/ml-100k.h5" ]; then
  stamp "prepare MovieLens-100k (splits, candidates, episodes, CF models)"
  "$BIN" data prepare --dataset ml-100k --out "$RUN/ml-100k.h5" --seed 42
fi

stamp "classical baselines (test split, 100 users per subset)"
for subset in sparse dense; do
  for m in random pop itemknn bpr sasrec ease transitions; do
    "$BIN" baseline --data "$RUN/ml-100k.h5" --method $m --subset $subset --out "$RUN/baseline-$m-$subset.json"
  done
done

stamp "synthesize SFT trajectories (scripted teacher + rejection filter)"
"$BIN" synth --config configs/synth.toml

stamp "SFT (LoRA) on the synthesized trajectories"
"$BIN" sft --config configs/sft.toml
"$BIN" export --checkpoint "$RUN/sft" --out "$RUN/sft-export"

stamp "GRPO from the SFT model"
"$BIN" rl --config configs/rl.toml
"$BIN" export --checkpoint "$RUN/rl" --out "$RUN/final-export"

stamp "evaluate ($EVAL_USERS users per subset, test split)"
for subset in sparse dense; do
  for pair in "sft:$RUN/sft-export" "sft-grpo:$RUN/final-export"; do
    name=${pair%%:*}; model=${pair#*:}
    "$BIN" eval --data "$RUN/ml-100k.h5" --model "$model" --subset $subset --limit-users "$EVAL_USERS" \
      --max-new-tokens 192 --out "$RUN/eval-$name-$subset.json" --trajectories "$RUN/eval-$name-$subset.jsonl"
  done
done

stamp "done; the exported model is $RUN/final-export (loads in transformers)"
.venv/bin/python scripts/results_table.py "$RUN"
