#!/usr/bin/env bash
# The longer run behind docs/results.md (MovieLens-100k, SmolLM2-135M-Instruct, CPU):
#   synth on every training episode (configs/results/synth.toml) -> SFT
#   (configs/results/sft.toml) -> export of the best validated checkpoint -> GRPO
#   (configs/results/rl.toml) -> export of its last checkpoint,
#   evaluating the SFT model and the SFT+GRPO model on the test split,
#   sparse and dense, USERS users each (the baselines' 100 by default).
# Reuses checkpoints/pipeline/{ml-100k.h5, sft.jsonl, baseline-*} from scripts/run_pipeline.sh
# (run that first). A stage whose output exists is skipped; `sft`/`rl` also take --resume.
# An experiment runs the same script on its own configs and directories, e.g.
#   CONFIGS=configs/results/explore OUT=checkpoints/results-explore \
#   REL=checkpoints/results-explore/adapter CONSTRAINED=0 scripts/results_run.sh
# (its configs' paths must point under OUT).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/recthinker}
DATA=checkpoints/pipeline/ml-100k.h5
OUT=${OUT:-checkpoints/results}
CONFIGS=${CONFIGS:-configs/results}
CONSTRAINED=${CONSTRAINED:-1}   # 0: skip the constrained-answer rows
USERS=${USERS:-100}
mkdir -p "$OUT"
[ -x "$BIN" ] || cargo build --release -p trainer
start=$(date +%s)
stamp() { echo "[$(( $(date +%s) - start ))s] $*"; }

evaluate() { # name model
  for subset in sparse dense; do
    [ -f "$OUT/eval-$1-$subset.json" ] && continue
    "$BIN" eval --data "$DATA" --model "$2" --subset $subset --limit-users "$USERS" --max-new-tokens 192 \
      --out "$OUT/eval-$1-$subset.json" --trajectories "$OUT/eval-$1-$subset.jsonl"
  done
}

stamp "baselines' per-episode ranks (the paired bootstrap's inputs)"
for subset in sparse dense; do
  for m in bpr transitions fusion:adaptive; do
    f="$OUT/per-episode-${m//:/-}-$subset.jsonl"
    [ -f "$f" ] || "$BIN" baseline --data "$DATA" --method "$m" --subset $subset \
      --out "$OUT/baseline-${m//:/-}-$subset.json" --per-episode "$f"
  done
done
if [ ! -f "$OUT/sft.jsonl" ]; then
  stamp "synth (scripted teacher, every training episode)"
  "$BIN" synth --config "$CONFIGS/synth.toml"
fi
if [ ! -d "$OUT/sft-export" ]; then
  stamp "SFT"
  "$BIN" sft --config "$CONFIGS/sft.toml" $( [ -d "$OUT/sft/checkpoints" ] && echo --resume )
  "$BIN" export --checkpoint "$OUT/sft" --select best --out "$OUT/sft-export"
fi
# One job at a time: each gets both cores, and the stamps are honest durations.
stamp "evaluate the SFT model"
evaluate sft "$OUT/sft-export" > "$OUT/eval-sft.log" 2>&1
if [ ! -d "$OUT/final-export" ]; then
  stamp "GRPO from the SFT model"
  "$BIN" rl --config "$CONFIGS/rl.toml" $( [ -d "$OUT/rl/checkpoints" ] && echo --resume )
  # The last checkpoint is released (validation on 16 users is too small to select on).
  "$BIN" export --checkpoint "$OUT/rl" --select latest --out "$OUT/final-export"
fi
# The released model: base + SFT (r32, merged) + GRPO (r16) as one rank-32 PEFT adapter on the
# public base (truncated SVD of the difference; extraction.json says how much it keeps), with
# the configs that made it. It is what the SFT+GRPO rows evaluate.
REL=${REL:-checkpoints/released/smollm2-135m-recthinker}
if [ ! -f "$REL/adapter_model.safetensors" ]; then
  stamp "extract the released adapter"
  "$BIN" adapter --model "$OUT/final-export" --base checkpoints/base/SmolLM2-135M-Instruct \
    --rank 32 --out "$REL"
  cp "$CONFIGS"/{synth,sft,rl}.toml "$REL/"
fi
stamp "evaluate the SFT+GRPO model (the released adapter)"
evaluate sft-grpo "$REL"
for subset in sparse dense; do # the same model with the answer constrained to a permutation
  [ "$CONSTRAINED" = 0 ] && break
  [ -f "$OUT/eval-sft-grpo-constrained-$subset.json" ] && continue
  "$BIN" eval --data "$DATA" --model "$REL" --subset $subset --limit-users "$USERS" --max-new-tokens 192 \
    --constrained-answers --out "$OUT/eval-sft-grpo-constrained-$subset.json" \
    --trajectories "$OUT/eval-sft-grpo-constrained-$subset.jsonl"
done
stamp "done"
cp checkpoints/pipeline/baseline-*.json "$OUT/" 2>/dev/null || true
.venv/bin/python scripts/results_table.py "$OUT"
pairs() { # file-prefix-A file-prefix-B
  for subset in sparse dense; do echo --pair $subset "$OUT/$1-$subset.jsonl" "$OUT/$2-$subset.jsonl"; done
}
.venv/bin/python scripts/paired_bootstrap.py $(pairs eval-sft-grpo per-episode-bpr) --names agent bpr --json "$OUT/boot-agent-bpr.json"
.venv/bin/python scripts/paired_bootstrap.py $(pairs eval-sft-grpo eval-sft) --names grpo sft --json "$OUT/boot-grpo-sft.json"
.venv/bin/python scripts/paired_bootstrap.py $(pairs eval-sft-grpo per-episode-fusion-adaptive) --names agent teacher --json "$OUT/boot-agent-teacher.json"
.venv/bin/python scripts/paired_bootstrap.py $(pairs eval-sft per-episode-bpr) --names sft bpr --json "$OUT/boot-sft-bpr.json"
.venv/bin/python scripts/paired_bootstrap.py $(pairs eval-sft-grpo per-episode-transitions) --names agent transitions --json "$OUT/boot-agent-transitions.json"
.venv/bin/python scripts/paired_bootstrap.py $(pairs per-episode-fusion-adaptive per-episode-bpr) --names teacher bpr --json "$OUT/boot-teacher-bpr.json"
