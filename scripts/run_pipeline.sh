#!/usr/bin/env bash
# The main job, from a fresh machine: setup, release build, then the pipeline as far as it
# goes today on the embedded default (MovieLens-100k + SmolLM2-135M-Instruct, CPU):
#   prepare ML-100k -> the five classical baselines (sparse, dense) -> a tool call ->
#   the policy model generating. Later stages (synthesis, SFT, GRPO, eval, export) are
#   added here as they land.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release -p trainer
BIN=target/release/recthinker
MODEL=checkpoints/base/SmolLM2-135M-Instruct
RUN=${RUN_DIR:-checkpoints/pipeline}
DATA=$RUN/ml-100k.h5
SEED=${SEED:-42}
mkdir -p "$RUN"

if [ ! -f "$DATA" ]; then
  echo "== prepare MovieLens-100k (splits, candidates, episodes, CF models) -> $DATA"
  "$BIN" data prepare --dataset ml-100k --out "$DATA" --seed "$SEED"
fi
"$BIN" data stats "$DATA" | head -30

echo "== classical baselines (test split, 100 users per subset)"
for subset in sparse dense; do
  for m in random pop itemknn bpr sasrec; do
    "$BIN" baseline --data "$DATA" --method $m --subset $subset --split test --out "$RUN/baseline-$m-$subset.json"
  done
done

echo "== a tool call (episode test:dense:0)"
"$BIN" tool --data "$DATA" --episode test:dense:0 --call '{"name": "user_profile", "arguments": {}}'

echo "== generate (greedy, chat template) with $MODEL"
"$BIN" generate --model "$MODEL" --chat --max-new-tokens 64 \
  --prompt "A user loved Toy Story, Aladdin and The Lion King. Recommend one more movie and say why."
