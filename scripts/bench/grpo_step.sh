#!/usr/bin/env bash
# One GRPO step of recthinker vs TRL's GRPOTrainer on SmolLM2-135M-Instruct: same model
# (full fine-tuning), B=2 prompts x G=4 samples, 64 new tokens, temperature 1, single-turn
# ranking prompts (no tools: TRL has no tool loop), one thread per core each
# (RECTHINKER_THREADS to change), in one run. Reports the second step of each (the first
# includes warm-up) and our rollout/train split.
set -euo pipefail
cd "$(dirname "$0")/../.."
B=${B:-2} G=${G:-4} NEW=${NEW:-64} THREADS=${RECTHINKER_THREADS:-$(nproc)}
BIN=target/release/recthinker
PY=.venv/bin/python
MODEL=checkpoints/base/SmolLM2-135M-Instruct
DATA=${DATA:-checkpoints/pipeline/ml-100k.h5}
WORK=$(mktemp -d)
[ -x "$BIN" ] || cargo build --release -p trainer
[ -f "$DATA" ] || "$BIN" data prepare --out "$DATA"
"$PY" -c "import trl" 2>/dev/null || .venv/bin/pip install -q trl
export RECTHINKER_THREADS=$THREADS OMP_NUM_THREADS=$THREADS
cat > "$WORK/rl.toml" <<TOML
run_dir = "$WORK/run"
model = "$MODEL"
data = "$DATA"
steps = 2
episodes_per_step = $B
group_size = $G
micro_batch = $((B * G))
keep_zero_variance_groups = true   # TRL trains on every group; so do we here
[agent]
use_tools = false
temperature = 1.0
max_new_tokens = $NEW
[loss]
beta = 0.0
[optim]
lr = 1e-5
warmup_steps = 0
TOML
"$BIN" rl --config "$WORK/rl.toml" 2>/dev/null
ours=$(tail -1 "$WORK/run/metrics.jsonl")
# The same step with each row trained in full (share_prompt = false), to show what sharing
# the group's prompt saves.
sed -e "s#$WORK/run#$WORK/run-full#" -e 's/^\(micro_batch = .*\)/\1\nshare_prompt = false/' "$WORK/rl.toml" > "$WORK/rl-full.toml"
"$BIN" rl --config "$WORK/rl-full.toml" 2>/dev/null
full=$(tail -1 "$WORK/run-full/metrics.jsonl")
# The same kind of prompts for TRL: training episodes rendered by our prompt builder.
"$BIN" eval --data "$DATA" --model "$MODEL" --split train --subset all --limit-users $B --no-tools \
  --max-new-tokens 1 --out "$WORK/p.json" --trajectories "$WORK/prompts.jsonl" >/dev/null 2>&1
theirs=$("$PY" scripts/bench/trl_grpo.py --model "$MODEL" --prompts "$WORK/prompts.jsonl" --episodes $B --group $G \
  --new-tokens $NEW --threads $THREADS --out-dir "$WORK/trl" 2>/dev/null | tail -1)
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), threads=$THREADS, B=$B G=$G new_tokens=$NEW"
echo "ours:   $ours"
echo "ours, full rows: $full"
echo "theirs: $theirs"
"$PY" -c "
import json,sys
o=json.loads(sys.argv[1]); t=json.loads(sys.argv[2])
ours=o['rollout_seconds']+o['train_seconds']
f=json.loads(sys.argv[3])
print(f'GRPO step: recthinker {ours:.1f}s (rollout {o[\"rollout_seconds\"]:.1f}s, train {o[\"train_seconds\"]:.1f}s), TRL {t[\"step_seconds\"]:.1f}s, ratio {t[\"step_seconds\"]/ours:.2f}x')
print(f'  without prompt sharing in training: train {f[\"train_seconds\"]:.1f}s, step {f[\"rollout_seconds\"]+f[\"train_seconds\"]:.1f}s')
" "$ours" "$theirs" "$full"
rm -rf "$WORK"
