# Sourced by the SFT benchmarks (sft_step.sh, data_parallel.sh): with BIN, DATA, TRAIN_FILE
# and WORK set, keeps TRAIN_FILE when it exists (the pipeline's sft.jsonl), else points it at
# 64 conversations the scripted teacher synthesizes into $WORK (preparing DATA if missing).
ensure_train_file() {
  [ -f "$TRAIN_FILE" ] && return 0
  [ -f "$DATA" ] || "$BIN" data prepare --out "$DATA"
  TRAIN_FILE=$WORK/sft.jsonl
  cat > "$WORK/synth.toml" <<TOML
data = "$DATA"
out = "$TRAIN_FILE"
teacher = "scripted"
split = "train"
limit_episodes = 64
min_ndcg = 0.6
seed = 0
[agent]
prompt_history_len = 5
max_turns = 6
tool_max_chars = 1200
TOML
  "$BIN" synth --config "$WORK/synth.toml" >/dev/null 2>&1
}
