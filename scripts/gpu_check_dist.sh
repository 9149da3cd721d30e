#!/usr/bin/env bash
# The GPU check of data parallelism (issue 12), for a machine with NVIDIA GPUs; it cannot run
# on the CPU-only development machine. Builds the `dist` crate with its `nccl` feature (the
# CUDA runtime/crt/cccl headers from pip wheels when no CUDA toolkit is installed) and runs:
#   1. `dist-selftest gpu` as a world of ONE through a real NCCL process group on cuda:0:
#      bf16 gradients all-reduced (sum, avg; exact small integers), broadcast, barrier, and
#      the time of a 64 MiB bf16 all-reduce;
#   2. with 2 or more GPUs, the same under torchrun, one rank per GPU;
#   3. with 2 or more GPUs (unless NGPU_SFT=0), a 2-step LoRA SFT of a small model (MODEL)
#      on `device = "cuda"` (each rank on cuda:LOCAL_RANK) under torchrun with the trainer's
#      `nccl` feature, compared with the same run as one process.
# Prints one line per check; record what it prints in docs/benchmarks.md (data parallel).
#
# Settings (environment): CUDA_INCLUDE (':'-separated; default: the pip wheels installed into
# $HDRS), HDRS (/tmp/cuda-headers), CUDA_WHEELS ("nvidia-cuda-crt==13.0.*
# nvidia-cuda-cccl==13.0.*": match torch's CUDA), TIMEOUT_S (120), MODEL (step 3).
# Not yet run anywhere: the development machine has no GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
export LIBTORCH=${LIBTORCH:-$PWD/.venv/libtorch}
PY=.venv/bin/python
TORCHRUN=.venv/bin/torchrun
HDRS=${HDRS:-/tmp/cuda-headers}
TIMEOUT_S=${TIMEOUT_S:-120}
command -v nvidia-smi >/dev/null || { echo "no nvidia-smi: this check needs a GPU machine"; exit 1; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
NGPU=$(nvidia-smi --list-gpus | wc -l)
"$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available(), "nccl", torch.cuda.nccl.version())'

if [ -z "${CUDA_INCLUDE:-}" ]; then
  # The pip wheels torch uses lack crt/ and nv/target (see dist/build.rs); fetch those headers.
  if [ ! -d "$HDRS/nvidia" ]; then
    read -r -a wheels <<< "${CUDA_WHEELS:-nvidia-cuda-crt==13.0.* nvidia-cuda-cccl==13.0.*}"
    .venv/bin/pip install -q --target "$HDRS" --no-deps "${wheels[@]}"
  fi
  CUDA_INCLUDE=$(find "$HDRS/nvidia" -maxdepth 3 -type d -name include | paste -sd: -)
fi
export CUDA_INCLUDE
echo "CUDA_INCLUDE=$CUDA_INCLUDE"

cargo build --release -p dist --features nccl --bin dist-selftest
SELFTEST=target/release/dist-selftest
export DIST_SELFTEST_TIMEOUT_S=$TIMEOUT_S

echo "== 1. world size 1 through NCCL (cuda:0)"
env -u TORCHELASTIC_USE_AGENT_STORE RANK=0 WORLD_SIZE=1 LOCAL_RANK=0 \
  MASTER_ADDR=127.0.0.1 MASTER_PORT=${MASTER_PORT:-29561} CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0} \
  "$SELFTEST" gpu

if [ "$NGPU" -ge 2 ]; then
  echo "== 2. $NGPU ranks under torchrun, one per GPU"
  "$TORCHRUN" --nproc-per-node "$NGPU" --master-addr 127.0.0.1 --master-port 29562 \
    --no-python "$SELFTEST" gpu
  # Gloo on CPU tensors beside NCCL, as the trainer's host values use it.
  "$TORCHRUN" --nproc-per-node "$NGPU" --master-addr 127.0.0.1 --master-port 29563 \
    --no-python "$SELFTEST" collectives
else
  echo "== 2. skipped: one GPU (torchrun with one rank per GPU needs 2 or more)"
fi

if [ "$NGPU" -ge 2 ] && [ "${NGPU_SFT:-1}" = 1 ]; then
  echo "== 3. data-parallel SFT on 2 GPUs (NCCL) vs 1 process"
  cargo build --release -p trainer --features nccl --bin recthinker
  WORK=$(mktemp -d)
  trap 'rm -rf "$WORK"' EXIT
  # A small model: MODEL, else the tests' tiny Llama, else SmolLM2-135M-Instruct.
  MODEL=${MODEL:-target/test-models/tiny-llama-v1}
  [ -f "$MODEL/model.safetensors" ] || MODEL=checkpoints/base/SmolLM2-135M-Instruct
  [ -f "$MODEL/model.safetensors" ] || { echo "no model: set MODEL to an HF directory"; exit 1; }
  "$PY" - "$WORK/sft.jsonl" <<'PY'
import json, sys
with open(sys.argv[1], "w") as f:
    for i in range(8):
        f.write(json.dumps({"messages": [
            {"role": "system", "content": "You rank movies."},
            {"role": "user", "content": f"User {i}. Candidates: 1. Heat 2. Fargo 3. Casino"},
            {"role": "assistant", "content": f"<think>Done{'!' * i}.</think>\n<answer>{i % 2 + 2}, 1, 3</answer>"}]}) + "\n")
PY
  for name in one two; do
    cat > "$WORK/$name.toml" <<TOML
run_dir = "$WORK/$name"
model = "$MODEL"
train_file = "$WORK/sft.jsonl"
device = "cuda"
seed = 5
steps = 2
batch_size = 4
micro_batch = 2
save_every = 1
report_to = ["jsonl"]
[lora]
rank = 4
alpha = 8.0
target_modules = ["q_proj", "v_proj", "down_proj"]
[optim]
lr = 0.01
warmup_steps = 1
TOML
  done
  CUDA_VISIBLE_DEVICES=0 target/release/recthinker sft --config "$WORK/one.toml" 2>"$WORK/one.err" || { tail "$WORK/one.err"; exit 1; }
  "$TORCHRUN" --nproc-per-node 2 --master-addr 127.0.0.1 --master-port 29564 --no-python \
    target/release/recthinker sft --config "$WORK/two.toml" >"$WORK/two.out" 2>&1 || { tail -30 "$WORK/two.out"; exit 1; }
  "$PY" - "$WORK" <<'PY'
import json, sys
from safetensors.torch import load_file
w = sys.argv[1]
a = load_file(f"{w}/one/checkpoints/step-000002/weights.safetensors")
b = load_file(f"{w}/two/checkpoints/step-000002/weights.safetensors")
rel = max(((a[k].float() - b[k].float()).abs().max() / b[k].float().abs().max().clamp_min(1e-12)).item() for k in a)
m = [json.loads(l) for l in open(f"{w}/two/metrics.jsonl")]
print(f"SFT 2 GPUs vs 1: max relative parameter difference {rel:.3e}; all-reduce per step "
      f"{sum(x['allreduce_seconds'] for x in m) / len(m) * 1000:.2f} ms")
PY
fi
echo "gpu_check_dist: done"
