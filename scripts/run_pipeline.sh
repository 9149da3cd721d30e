#!/usr/bin/env bash
# The main job, from a fresh machine: setup, release build, then the furthest the pipeline
# goes today (the policy model generating on the default base model; later stages are
# added here as they land).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release -p trainer
BIN=target/release/recthinker
MODEL=checkpoints/base/SmolLM2-135M-Instruct
echo "== generate (greedy, chat template) with $MODEL"
"$BIN" generate --model "$MODEL" --chat --max-new-tokens 64 \
  --prompt "A user loved Toy Story, Aladdin and The Lion King. Recommend one more movie and say why."
