#!/usr/bin/env bash
# One GRPO step WITH TOOLS (multi-turn agent rollouts) of `recthinker rl` vs TRL's GRPOTrainer
# with an `environment_factory` whose tools are ours, served by one long-lived `recthinker
# tools serve` (MCP, the official Python client), in one run: the SFT model (tool calls), LoRA
# r16 / alpha 32, f32, B=4 episodes x G=4 samples, the same training episodes (those our
# step draws) and prompts, at most 3 tool calls and 160 new tokens per turn, 3,072 tokens of
# context, tool results cut at 800 characters, temperature 1, the PROTOCOL.md reward, every
# group trained (TRL has no zero-variance filter), one thread per core each. Reports the
# second step of each (the first includes warm-up), ours split into rollout/train, and
# the ratio. Settings mirror configs/results/rl.toml; see trl_grpo_agent.py for how TRL is
# made to play the protocol.
#
# Settings (environment): B, G, MAX_TURNS, NEW (tokens per turn), MAX_CONTEXT, TOOL_MAX_CHARS,
# RANK (LoRA rank; 0 = full fine-tuning), MICRO (TRL's rows per forward/backward, gradient
# accumulation over the step; default G, as ours trains one group at a time; 0 = all rows at
# once, which at B=4 G=4 needs more than 24 GiB), RECTHINKER_THREADS, MODEL, DATA, BIN (needs
# `tools serve`), DUMP (a file: TRL's rollouts as JSON lines). Smoke test:
#   B=1 G=2 MAX_TURNS=1 NEW=48 bash scripts/bench/grpo_agent_step.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
B=${B:-4} G=${G:-4} MAX_TURNS=${MAX_TURNS:-3} NEW=${NEW:-160} MAX_CONTEXT=${MAX_CONTEXT:-3072}
TOOL_MAX_CHARS=${TOOL_MAX_CHARS:-800} HIST=${HIST:-5} MICRO=${MICRO:-$G} RANK=${RANK:-16} LR=${LR:-1e-4} SEED=${SEED:-0}
THREADS=${RECTHINKER_THREADS:-$(nproc)}
BIN=${BIN:-target/release/recthinker}
PY=.venv/bin/python
MODEL=${MODEL:-checkpoints/pipeline/sft-export}
DATA=${DATA:-checkpoints/pipeline/ml-100k.h5}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
[ -x "$BIN" ] || cargo build --release -p trainer
"$BIN" tools serve --help >/dev/null 2>&1 || { echo "$BIN has no \`tools serve\` (the MCP server): rebuild it (cargo build --release -p trainer)"; exit 1; }
[ -f "$MODEL/config.json" ] || { echo "no model at $MODEL: run scripts/run_pipeline.sh (its SFT export calls tools) or set MODEL"; exit 1; }
[ -f "$DATA" ] || "$BIN" data prepare --out "$DATA"
"$PY" -c "import trl, peft, mcp" 2>/dev/null || .venv/bin/pip install -q trl peft mcp
"$PY" - <<'PY'
import trl
if not trl.__version__.startswith("1.16."):
    print(f"note: trl {trl.__version__} (the benchmark was written against 1.16.x)")
PY
export RECTHINKER_THREADS=$THREADS OMP_NUM_THREADS=$THREADS TRL_EXPERIMENTAL_SILENCE=1

# Peak resident memory of a command (its largest process), KiB, into $1.
peak() {
  local out=$1
  shift
  "$PY" -c 'import resource, subprocess, sys
r = subprocess.call(sys.argv[2:])
open(sys.argv[1], "w").write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))
sys.exit(r)' "$out" "$@"
}

LORA=""
[ "$RANK" = 0 ] || LORA="[lora]
rank = $RANK
alpha = $((RANK * 2)).0
target_modules = [\"q_proj\", \"k_proj\", \"v_proj\", \"o_proj\", \"gate_proj\", \"up_proj\", \"down_proj\"]"
cat > "$WORK/rl.toml" <<TOML
run_dir = "$WORK/run"
model = "$MODEL"
data = "$DATA"
seed = $SEED
steps = 2
episodes_per_step = $B
group_size = $G
inner_epochs = 1
share_prompt = true
keep_zero_variance_groups = true   # TRL trains on every group; so do we here
eval_every = 0
save_every = 1000000
keep_checkpoints = 1
$LORA
[loss]
eps_low = 0.2
eps_high = 0.28
beta = 0.0
aggregation = "token_mean"
[agent]
temperature = 1.0
top_p = 1.0
max_turns = $MAX_TURNS
max_new_tokens = $NEW
max_context = $MAX_CONTEXT
prompt_history_len = $HIST
tool_max_chars = $TOOL_MAX_CHARS
[optim]
lr = $LR
warmup_steps = 0
min_lr_ratio = 1.0
max_grad_norm = 1.0
TOML
peak "$WORK/ours.rss" "$BIN" rl --config "$WORK/rl.toml" 2>"$WORK/ours.err" || { tail -20 "$WORK/ours.err"; exit 1; }
peak "$WORK/trl.rss" "$PY" scripts/bench/trl_grpo_agent.py --model "$MODEL" --bin "$BIN" --data "$DATA" --seed $SEED \
  --episodes $B --group $G --max-turns $MAX_TURNS --new-tokens $NEW --max-context $MAX_CONTEXT --history-len $HIST \
  --tool-max-chars $TOOL_MAX_CHARS --rank $RANK --alpha $((RANK * 2)) --lr $LR --micro-batch $MICRO --threads $THREADS \
  --out-dir "$WORK/trl" ${DUMP:+--dump "$DUMP"} >"$WORK/trl.out" 2>"$WORK/trl.err" || { tail -30 "$WORK/trl.err"; exit 1; }

echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(env -u OMP_NUM_THREADS nproc) cores, threads=$THREADS"
echo "settings: $(basename "$MODEL"), $([ "$RANK" = 0 ] && echo "full fine-tuning" || echo "LoRA r$RANK alpha $((RANK * 2))"), f32, B=$B G=$G, max_turns=$MAX_TURNS, $NEW new tokens per turn, max_context=$MAX_CONTEXT, tool results <= $TOOL_MAX_CHARS chars, temperature 1, seed $SEED; TRL micro-batch $MICRO rows (gradient accumulation)"
echo "trl $("$PY" -c 'import trl; print(trl.__version__)'), peft $("$PY" -c 'import peft; print(peft.__version__)'), mcp $("$PY" -c 'import importlib.metadata as m; print(m.version("mcp"))'), torch $("$PY" -c 'import torch; print(torch.__version__)'); TRL without activation checkpointing (its default would recompute)"
"$PY" - "$WORK/run/metrics.jsonl" "$WORK/trl.out" "$WORK/ours.rss" "$WORK/trl.rss" <<'PY'
import json, sys
metrics, trl_out, ours_rss, trl_rss = sys.argv[1:]
first, o = [json.loads(l) for l in open(metrics) if l.strip()][:2]
t = json.loads(open(trl_out).read().strip().splitlines()[-1])
gib = lambda f: int(open(f).read()) / 2**20
ours = o["rollout_seconds"] + o["train_seconds"]
print(f"episodes (train:all:INDEX) per step, both sides: {t['episodes']}")
print(f"ours:  step 2 {ours:.1f}s (rollout {o['rollout_seconds']:.1f}s, train {o['train_seconds']:.1f}s; step 1 "
      f"{first['rollout_seconds'] + first['train_seconds']:.1f}s); {o['generated_tokens']} generated tokens, "
      f"{o['tool_calls']:.2f} tool calls per row, valid {o['valid_rate']:.2f}, reward {o['reward_mean']:.3f}; "
      f"peak RSS {gib(ours_rss):.2f} GiB")
print(f"TRL:   step 2 {t['step_seconds']:.1f}s (rollout {t['rollout_seconds']:.1f}s, rest {t['step_seconds'] - t['rollout_seconds']:.1f}s; "
      f"step 1 {t['first_step_seconds']:.1f}s); {t['generated_tokens']} generated tokens, "
      f"{t['tool_calls_per_row'] or 0:.2f} tool calls per row ({t['server_calls']} to the MCP server in both steps), "
      f"reward {t['reward_mean']:.3f}; peak RSS {gib(trl_rss):.2f} GiB (the MCP server is a separate process)")
print(f"GRPO step with tools: recthinker {ours:.1f}s, TRL {t['step_seconds']:.1f}s, ratio {t['step_seconds'] / ours:.2f}x")
PY
