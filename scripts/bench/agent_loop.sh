#!/usr/bin/env bash
# The agent loop's throughput: `recthinker eval` episodes/s and generated tokens/s vs the same
# command built from an earlier commit (default 451d621: one padded batch per chunk of
# episodes, no prefix cache, no continuous batching), in one run: the same dense validation
# users (USERS, default 32), the same model, greedy, the five paper tools (the suite that
# commit has), batch 16 on both sides, the same threads. Each version reads the store its own
# `data prepare` writes. The answers must be identical (checked; a difference is printed).
#
#   bash scripts/bench/agent_loop.sh            # MODEL=checkpoints/pipeline/sft-export
#   OLD=451d621 USERS=32 MODEL=DIR bash scripts/bench/agent_loop.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
OLD=${OLD:-451d621}
USERS=${USERS:-32}
MODEL=${MODEL:-checkpoints/pipeline/sft-export}
BATCH=${BATCH:-16}
THREADS=${RECTHINKER_THREADS:-$(nproc)}
BIN=${BIN:-target/release/recthinker}
WT=${WT:-../recthinker-$OLD}
OLD_TARGET=${OLD_TARGET:-$WT/target}
NEW_DATA=${NEW_DATA:-checkpoints/pipeline/ml-100k.h5}
OLD_DATA=$WT/checkpoints/ml-100k.h5
PY=.venv/bin/python
export RECTHINKER_THREADS=$THREADS

[ -x "$BIN" ] || cargo build --release -p trainer
[ -d "$WT" ] || git worktree add "$WT" "$OLD"
ln -sfn "$(pwd)/.venv" "$WT/.venv"
[ -e "$WT/checkpoints/base" ] || { mkdir -p "$WT/checkpoints"; ln -sfn "$(pwd)/checkpoints/base" "$WT/checkpoints/base"; }
(cd "$WT" && CARGO_TARGET_DIR=$OLD_TARGET cargo build --release -p trainer)
OLD_BIN=$OLD_TARGET/release/recthinker
[ -f "$NEW_DATA" ] || "$BIN" data prepare --out "$NEW_DATA"
[ -f "$OLD_DATA" ] || "$OLD_BIN" data prepare --out "$OLD_DATA"
[ -d "$MODEL" ] || { echo "no model at $MODEL (run scripts/run_pipeline.sh or set MODEL)" >&2; exit 1; }

WORK=$(mktemp -d)
run() { # name binary data [extra flags]
  local name=$1 bin=$2 data=$3; shift 3
  "$bin" eval --data "$data" --model "$MODEL" --split valid --subset dense --limit-users "$USERS" \
    --batch "$BATCH" --out "$WORK/$name.json" --trajectories "$WORK/$name.jsonl" "$@" 2>/dev/null
}
# Old first, then ours, then the old one again: the machine's drift shows in the two old runs.
run old1 "$OLD_BIN" "$OLD_DATA"
run new "$BIN" "$NEW_DATA" --tool-suite paper
run old2 "$OLD_BIN" "$OLD_DATA"

echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores, threads=$THREADS"
echo "commit $(git rev-parse --short HEAD) vs $OLD; $USERS dense validation users; model $MODEL; batch $BATCH; greedy"
"$PY" - "$WORK" <<'PY'
import json, sys
w = sys.argv[1]
rep = {n: json.load(open(f"{w}/{n}.json")) for n in ["old1", "new", "old2"]}
traj = {n: {(t["episode"]["user"], t["episode"]["pos"]): t for t in map(json.loads, open(f"{w}/{n}.jsonl"))}
        for n in ["old1", "new", "old2"]}
for n, r in rep.items():
    print(f"{n:5} episodes/s {r['episodes_per_second']:.4f}  generated tokens/s {r['generated_tokens_per_second']:.1f}  "
          f"tokens {r['tokens_generated']}  NDCG@10 {r['ndcg@10']:.4f}  valid {r['valid_rate']:.2f}  calls {r['mean_tool_calls']:.2f}")
same = sum(traj["new"][k]["answer"] == traj["old1"][k]["answer"] and
           [m["content"] for m in traj["new"][k]["messages"]] == [m["content"] for m in traj["old1"][k]["messages"]]
           for k in traj["old1"] if k in traj["new"])
print(f"identical conversations and answers: {same}/{len(traj['old1'])}")
for k in traj["old1"]:
    a, b = traj["old1"][k], traj["new"].get(k)
    if b is None or a["answer"] != b["answer"]:
        print(f"  differs: user {k[0]} pos {k[1]}: old {a['answer']} new {b and b['answer']}")
old_eps = (rep["old1"]["episodes_per_second"] + rep["old2"]["episodes_per_second"]) / 2
old_tok = (rep["old1"]["generated_tokens_per_second"] + rep["old2"]["generated_tokens_per_second"]) / 2
print(f"ratio (ours / mean of the two old runs): episodes/s {rep['new']['episodes_per_second'] / old_eps:.2f}x, "
      f"generated tokens/s {rep['new']['generated_tokens_per_second'] / old_tok:.2f}x")
PY
