#!/usr/bin/env bash
# Data-parallel SFT on CPU: `recthinker sft` as 2 ranks x T threads (torchrun, Gloo) vs 1 rank
# x 2T threads, the same global batch and data order (the same run: checked by comparing the
# losses), SmolLM2-135M-Instruct with LoRA r32 / alpha 64 on q,k,v,o,gate,up,down, f32.
# Prints each run's trained tokens/s over the steps after a warm-up step, the ratio, and the
# 2-rank run's gradient all-reduce time per step (`allreduce_seconds` in its metrics).
#
# Settings (environment): STEPS timed steps (3; one warm-up step runs before them), BATCH (4:
# 2 rows per rank), MICRO (1), MAX_LEN (1536), THREADS per rank (1), TRAIN_FILE (a `recthinker
# synth` JSONL; default the pipeline's, else a small set is synthesized), MODEL, DATA, BIN.
# On a shared machine the numbers are only as good as the idle cores: say so when recording.
# Smoke test:
#   STEPS=1 BATCH=2 MAX_LEN=512 bash scripts/bench/data_parallel.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
STEPS=${STEPS:-3} BATCH=${BATCH:-4} MICRO=${MICRO:-1} MAX_LEN=${MAX_LEN:-1536}
THREADS=${THREADS:-1} SEED=${SEED:-0}
BIN=${BIN:-target/release/recthinker}
PY=.venv/bin/python
TORCHRUN=.venv/bin/torchrun
MODEL=${MODEL:-checkpoints/base/SmolLM2-135M-Instruct}
DATA=${DATA:-checkpoints/pipeline/ml-100k.h5}
TRAIN_FILE=${TRAIN_FILE:-checkpoints/pipeline/sft.jsonl}
TARGETS='"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"'
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
[ -x "$BIN" ] || cargo build --release -p trainer
. scripts/bench/sft_common.sh
ensure_train_file

config() {
  cat > "$WORK/$1.toml" <<TOML
run_dir = "$WORK/$1"
model = "$MODEL"
train_file = "$TRAIN_FILE"
seed = $SEED
steps = $((STEPS + 1))
batch_size = $BATCH
micro_batch = $MICRO
max_len = $MAX_LEN
save_every = 1000000
keep_checkpoints = 1
eval_every = 0
report_to = ["jsonl"]
[lora]
rank = 32
alpha = 64.0
target_modules = [$TARGETS]
[optim]
lr = 1e-3
weight_decay = 0.0
warmup_steps = 0
min_lr_ratio = 1.0
max_grad_norm = 1.0
TOML
}
config one
config two
RECTHINKER_THREADS=$((2 * THREADS)) OMP_NUM_THREADS=$((2 * THREADS)) \
  "$BIN" sft --config "$WORK/one.toml" 2>"$WORK/one.err" || { tail -30 "$WORK/one.err"; exit 1; }
RECTHINKER_THREADS=$THREADS OMP_NUM_THREADS=$THREADS \
  "$TORCHRUN" --nproc-per-node 2 --master-addr 127.0.0.1 --master-port "${MASTER_PORT:-29533}" \
  --no-python "$BIN" sft --config "$WORK/two.toml" >"$WORK/two.out" 2>&1 || { tail -40 "$WORK/two.out"; exit 1; }

echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(env -u OMP_NUM_THREADS nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "settings: $(basename "$MODEL"), LoRA r32 alpha 64 (q,k,v,o,gate,up,down), f32, global batch $BATCH, micro-batch $MICRO, max_len $MAX_LEN, $STEPS timed steps after 1 warm-up, $(basename "$TRAIN_FILE")"
"$PY" - "$WORK/one/metrics.jsonl" "$WORK/two/metrics.jsonl" "$THREADS" <<'PY'
import json, sys
one, two = ([json.loads(l) for l in open(p) if l.strip()] for p in sys.argv[1:3])
t = int(sys.argv[3])
for a, b in zip(one, two):
    if abs(a["loss"] - b["loss"]) > 1e-4 * max(1.0, abs(a["loss"])) or a["tokens"] != b["tokens"]:
        sys.exit(f"the runs differ at step {a['step']}: loss {a['loss']} vs {b['loss']}, tokens {a['tokens']} vs {b['tokens']}")
def rate(rows):
    timed = rows[1:]
    return sum(r["tokens"] for r in timed) / sum(r["seconds"] for r in timed), timed
r1, t1 = rate(one)
r2, t2 = rate(two)
ar = [r.get("allreduce_seconds", float("nan")) for r in t2]
step2 = sum(r["seconds"] for r in t2) / len(t2)
print(f"same run: losses {[round(r['loss'], 5) for r in one]} (1 rank) = {[round(r['loss'], 5) for r in two]} (2 ranks)")
print(f"1 rank x {2 * t} threads: {r1:.1f} trained tok/s (steps {', '.join('%.2f' % r['seconds'] for r in t1)} s)")
print(f"2 ranks x {t} thread{'s' if t > 1 else ''}: {r2:.1f} trained tok/s (steps {', '.join('%.2f' % r['seconds'] for r in t2)} s)")
print(f"all-reduce per step (2 ranks): {sum(ar) / len(ar) * 1000:.1f} ms of {step2:.2f} s ({sum(ar) / len(ar) / step2 * 100:.1f}%)")
print(f"data-parallel SFT: ratio {r2 / r1:.2f}x (tokens/s, 2 ranks x {t} / 1 rank x {2 * t})")
PY
