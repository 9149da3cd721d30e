#!/usr/bin/env bash
# SFT throughput of `recthinker sft` vs TRL's SFTTrainer + PEFT on SmolLM2-135M-Instruct, in
# one run: LoRA r32 / alpha 64 on q,k,v,o,gate,up,down (configs/results/sft.toml), f32, the
# same synthesized conversations in the same order (the order our step reads them in), batch
# 4 of micro-batch 1, max length 1536, loss on assistant turns only (the same tokens on both
# sides: checked), one thread per core each. Reports tokens/s (trained and total) of the
# steps after a warm-up step, the ratio, and each process's peak resident memory.
#
# Settings (environment): STEPS timed steps (3; one warm-up step runs before them), BATCH,
# MICRO, MAX_LEN, RECTHINKER_THREADS, TRAIN_FILE (a `recthinker synth` JSONL; default the
# pipeline's, else a small set is synthesized), MODEL, DATA, BIN. Smoke test:
#   STEPS=1 BATCH=2 MAX_LEN=1024 bash scripts/bench/sft_step.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
STEPS=${STEPS:-3} BATCH=${BATCH:-4} MICRO=${MICRO:-1} MAX_LEN=${MAX_LEN:-1536}
THREADS=${RECTHINKER_THREADS:-$(nproc)} SEED=${SEED:-0}
# f32, or bf16: autocast on both sides (ours `autocast = "bf16"`, TRL `bf16=True`); weights,
# gradients and optimizer state stay f32 on both.
PRECISION=${PRECISION:-f32}
case $PRECISION in f32) AUTOCAST=off;; bf16) AUTOCAST=bf16;; *) echo "PRECISION=$PRECISION: expected f32 or bf16" >&2; exit 2;; esac
BIN=${BIN:-target/release/recthinker}
PY=.venv/bin/python
MODEL=${MODEL:-checkpoints/base/SmolLM2-135M-Instruct}
DATA=${DATA:-checkpoints/pipeline/ml-100k.h5}
TRAIN_FILE=${TRAIN_FILE:-checkpoints/pipeline/sft.jsonl}
TARGETS='"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"'
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
[ -x "$BIN" ] || cargo build --release -p trainer
"$PY" -c "import trl, peft" 2>/dev/null || .venv/bin/pip install -q trl peft
"$PY" - <<'PY'
import trl
if not trl.__version__.startswith("1.16."):
    print(f"note: trl {trl.__version__} (the benchmark was written against 1.16.x)")
PY
. scripts/bench/sft_common.sh
ensure_train_file
export RECTHINKER_THREADS=$THREADS OMP_NUM_THREADS=$THREADS

# Peak resident memory of a command (its largest process), KiB, into $1.
peak() {
  local out=$1
  shift
  "$PY" -c 'import resource, subprocess, sys
r = subprocess.call(sys.argv[2:])
open(sys.argv[1], "w").write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))
sys.exit(r)' "$out" "$@"
}

cat > "$WORK/sft.toml" <<TOML
run_dir = "$WORK/run"
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
autocast = "$AUTOCAST"
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
peak "$WORK/ours.rss" "$BIN" sft --config "$WORK/sft.toml" 2>"$WORK/ours.err" || { cat "$WORK/ours.err"; exit 1; }
peak "$WORK/trl.rss" "$PY" scripts/bench/trl_sft.py --model "$MODEL" --train-file "$TRAIN_FILE" \
  --steps $((STEPS + 1)) --batch $BATCH --micro $MICRO --max-len $MAX_LEN --seed $SEED --threads $THREADS --precision $PRECISION \
  --out-dir "$WORK/trl" >"$WORK/trl.out" 2>"$WORK/trl.err" || { tail -30 "$WORK/trl.err"; exit 1; }

echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(env -u OMP_NUM_THREADS nproc) cores, threads=$THREADS"
echo "settings: $(basename "$MODEL"), LoRA r32 alpha 64 (q,k,v,o,gate,up,down), $PRECISION, batch $BATCH, micro-batch $MICRO, max_len $MAX_LEN, $STEPS timed steps after 1 warm-up, $(basename "$TRAIN_FILE") ($(grep -c . "$TRAIN_FILE") conversations, seed $SEED)"
echo "trl $("$PY" -c 'import trl; print(trl.__version__)'), peft $("$PY" -c 'import peft; print(peft.__version__)'), torch $("$PY" -c 'import torch; print(torch.__version__)')"
"$PY" - "$WORK/run/metrics.jsonl" "$WORK/trl.out" "$WORK/ours.rss" "$WORK/trl.rss" "$WORK/ours.err" <<'PY'
import json, re, sys
metrics, trl_out, ours_rss, trl_rss, ours_err = sys.argv[1:]
ours = [json.loads(l) for l in open(metrics) if l.strip()]
t = json.loads(open(trl_out).read().strip().splitlines()[-1])
mine = t["tokens_as_ours"]
print(f"conversations per step (indices into the file): {t['conversations']}")
print(f"tokens: TRL's ids = ours for {mine['same_ids']}/{mine['conversations']} conversations, ids and loss mask for "
      f"{mine['same_ids_and_mask']}/{mine['conversations']}; trained tokens per step: our log {[o['tokens'] for o in ours]}, "
      f"our tokenization redone in Python {mine['trained_per_step']}")
m = re.search(r"(\d+) trainable parameters", open(ours_err).read())
print(f"trainable parameters: ours {m.group(1) if m else '?'}, TRL {t['trainable_params']}")
timed = ours[1:]
o_sec = sum(o["seconds"] for o in timed)
o_trained = sum(o["tokens"] for o in timed)
o_total = sum(mine["total_per_step"][1:])
t_sec = sum(s["seconds"] for s in t["steps"])
t_trained = sum(s["trained_tokens"] for s in t["steps"])
t_total = sum(s["total_tokens"] for s in t["steps"])
fmt = lambda xs: ", ".join("%.1f" % x for x in xs)
print(f"ours:  steps {fmt(o['seconds'] for o in timed)} s (warm-up {ours[0]['seconds']:.1f} s); "
      f"{o_trained / o_sec:.1f} trained tok/s, {o_total / o_sec:.1f} total tok/s; peak RSS {int(open(ours_rss).read()) / 2**20:.2f} GiB")
print(f"TRL:   steps {fmt(s['seconds'] for s in t['steps'])} s (warm-up {t['first_step_seconds']:.1f} s); "
      f"{t_trained / t_sec:.1f} trained tok/s, {t_total / t_sec:.1f} total tok/s; peak RSS {int(open(trl_rss).read()) / 2**20:.2f} GiB")
print(f"SFT throughput: ratio {(o_total / o_sec) / (t_total / t_sec):.2f}x (total tokens/s, ours / TRL; "
      f"trained tokens/s {(o_trained / o_sec) / (t_trained / t_sec):.2f}x)")
PY
