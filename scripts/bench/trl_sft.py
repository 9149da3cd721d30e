"""The Python peer of `recthinker sft` steps: TRL's SFTTrainer with a PEFT LoRA adapter on the
same model, the same conversations in the same order (the order our step reads them in:
scripts/bench/rust_order.py), the same batch and micro-batch, maximum length, thread count
and loss mask (assistant turns and the last turn's end token; `assistant_only_loss=True`
with a template whose generation markers give exactly our mask, checked token by token).

Prints one JSON line: per step its seconds and tokens (trained and total), the first
step's separately (it includes warm-up), the process's peak resident memory, and how the
tokens compare with our tokenization of the same conversations."""
import argparse
import json
import os
import sys
import time

import torch
from datasets import Dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from trl import SFTConfig, SFTTrainer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from peer_common import CHAT_TEMPLATE, check_template, our_tokens  # noqa: E402
from rust_order import batch_indices, self_check  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--model", required=True)
ap.add_argument("--train-file", required=True, help="JSONL of {messages} (recthinker synth)")
ap.add_argument("--steps", type=int, default=4, help="optimizer steps, the first one warm-up")
ap.add_argument("--batch", type=int, default=4)
ap.add_argument("--micro", type=int, default=1)
ap.add_argument("--max-len", type=int, default=1536)
ap.add_argument("--seed", type=int, default=0, help="our SFT seed: decides the conversations' order")
ap.add_argument("--rank", type=int, default=32)
ap.add_argument("--alpha", type=float, default=64.0)
ap.add_argument("--targets", default="q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj")
ap.add_argument("--lr", type=float, default=1e-3)
ap.add_argument("--threads", type=int, default=1)
ap.add_argument("--precision", choices=["f32", "bf16"], default="f32", help="bf16: the Trainer's autocast (weights stay f32)")
ap.add_argument("--gradient-checkpointing", action="store_true", help="SFTConfig's default; off here as ours does not recompute")
ap.add_argument("--out-dir", default="/tmp/trl-sft-bench")
a = ap.parse_args()
if a.batch % a.micro:
    raise SystemExit("--batch must be a multiple of --micro")
torch.set_num_threads(a.threads)
self_check()

lines = [json.loads(line) for line in open(a.train_file) if line.strip()]
steps_idx = [batch_indices(len(lines), a.seed, s, a.batch) for s in range(a.steps)]
convs = [lines[i]["messages"] for idx in steps_idx for i in idx]

tok = AutoTokenizer.from_pretrained(a.model)
check_template(tok, convs[0][:2])
ours = [our_tokens(tok, m, a.max_len) for m in convs]  # with the model's own template
tok.chat_template = CHAT_TEMPLATE

model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32)
cfg = SFTConfig(
    output_dir=a.out_dir, max_steps=a.steps, per_device_train_batch_size=a.micro,
    gradient_accumulation_steps=a.batch // a.micro, learning_rate=a.lr, lr_scheduler_type="constant",
    weight_decay=0.0, max_grad_norm=1.0, warmup_steps=0, use_cpu=True, bf16=a.precision == "bf16", fp16=False,
    gradient_checkpointing=a.gradient_checkpointing, max_length=a.max_len, assistant_only_loss=True,
    packing=False, padding_free=False, train_sampling_strategy="sequential", dataloader_num_workers=0,
    report_to=[], save_strategy="no", logging_steps=1, seed=a.seed, disable_tqdm=True,
)
peft = LoraConfig(r=a.rank, lora_alpha=a.alpha, lora_dropout=0.0, bias="none", task_type="CAUSAL_LM",
                  target_modules=a.targets.split(","))


class Timer(TrainerCallback):
    def __init__(self):
        self.steps = []

    def on_step_begin(self, args, state, control, **kw):
        self.t = time.perf_counter()

    def on_step_end(self, args, state, control, **kw):
        self.steps.append(time.perf_counter() - self.t)


timer = Timer()
trainer = SFTTrainer(model=model, args=cfg, train_dataset=Dataset.from_list([{"messages": m} for m in convs]),
                     processing_class=tok, peft_config=peft, callbacks=[timer])

# The tokens TRL trains on, against ours: ids and loss mask per conversation.
data = trainer.train_dataset
if len(data) != len(convs):
    raise SystemExit(f"TRL dropped {len(convs) - len(data)} conversations with no trained token left after "
                     f"truncation to {a.max_len} tokens: the steps would no longer match ours; raise --max-len")
theirs = [(r["input_ids"], [int(x != -100) for x in r["labels"]]) for r in data]
same_ids = sum(t[0] == o[0] for t, o in zip(theirs, ours))
same_mask = sum(t[0] == o[0] and t[1] == o[1] for t, o in zip(theirs, ours))
# Trained tokens as both count them: mask positions from the second on (the first token is
# never predicted).
trl_trained = [sum(sum(theirs[s * a.batch + j][1][1:]) for j in range(a.batch)) for s in range(a.steps)]
trl_total = [sum(len(theirs[s * a.batch + j][0]) for j in range(a.batch)) for s in range(a.steps)]
our_trained = [sum(sum(ours[s * a.batch + j][1][1:]) for j in range(a.batch)) for s in range(a.steps)]
our_total = [sum(len(ours[s * a.batch + j][0]) for j in range(a.batch)) for s in range(a.steps)]

trainer.train()


def vm_hwm_kib():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return None


print(json.dumps({
    "impl": "trl", "first_step_seconds": timer.steps[0],
    "steps": [{"seconds": t, "trained_tokens": trl_trained[s], "total_tokens": trl_total[s]}
              for s, t in enumerate(timer.steps) if s > 0],
    "conversations": steps_idx,
    "tokens_as_ours": {"conversations": len(ours), "same_ids": same_ids, "same_ids_and_mask": same_mask,
                       "trained_per_step": our_trained, "total_per_step": our_total},
    "peak_rss_kib": vm_hwm_kib(), "threads": torch.get_num_threads(),
    "trainable_params": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
}))
