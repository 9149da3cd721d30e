"""The Python peer of one recthinker GRPO step: TRL's GRPOTrainer on the same model,
batch (B prompts x G samples), completion length, sampling temperature, thread count and
reward (NDCG@10 of the parsed ranking, -1 when invalid). Prints one JSON line with the
duration of the second training step (the first includes warm-up)."""
import argparse
import json
import re
import time

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from trl import GRPOConfig, GRPOTrainer

ap = argparse.ArgumentParser()
ap.add_argument("--model", required=True)
ap.add_argument("--prompts", required=True, help="JSONL of {messages, target_index} (from recthinker eval)")
ap.add_argument("--episodes", type=int, default=2)
ap.add_argument("--group", type=int, default=4)
ap.add_argument("--new-tokens", type=int, default=64)
ap.add_argument("--threads", type=int, default=1)
ap.add_argument("--out-dir", default="/tmp/trl-grpo-bench")
a = ap.parse_args()
torch.set_num_threads(a.threads)

rows = [json.loads(l) for l in open(a.prompts)]
data = [{"prompt": r["messages"][:2], "target_index": r["episode"]["target_index"]} for r in rows]
data = (data * (2 * a.episodes))[: 2 * a.episodes]  # two steps of B prompts


def ndcg_reward(completions, target_index, **_):
    out = []
    for c, t in zip(completions, target_index):
        text = c[-1]["content"] if isinstance(c, list) else c
        m = re.search(r"<answer>(.*?)</answer>", text, re.S)
        ranks = [int(x) for x in re.findall(r"\d+", m.group(1))] if m else []
        if not ranks or len(set(ranks)) != len(ranks) or any(r < 1 or r > 10 for r in ranks):
            out.append(-1.0)
            continue
        order = ranks + [i for i in range(1, 11) if i not in ranks]
        out.append(1.0 / __import__("math").log2(order.index(t) + 2))
    return out


class Timer(TrainerCallback):
    def __init__(self):
        self.steps = []

    def on_step_begin(self, args, state, control, **kw):
        self.t = time.perf_counter()

    def on_step_end(self, args, state, control, **kw):
        self.steps.append(time.perf_counter() - self.t)


tok = AutoTokenizer.from_pretrained(a.model)
model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32)
cfg = GRPOConfig(
    output_dir=a.out_dir, per_device_train_batch_size=a.episodes * a.group, num_generations=a.group,
    max_completion_length=a.new_tokens, max_steps=2, learning_rate=1e-5, use_cpu=True, report_to=[],
    logging_steps=1, save_strategy="no", beta=0.0, num_iterations=1, steps_per_generation=1,
    temperature=1.0, gradient_accumulation_steps=1, bf16=False, seed=0,
)
timer = Timer()
trainer = GRPOTrainer(model=model, reward_funcs=ndcg_reward, args=cfg, train_dataset=Dataset.from_list(data),
                      processing_class=tok, callbacks=[timer])
trainer.train()
print(json.dumps({"impl": "trl", "step_seconds": timer.steps[-1], "first_step_seconds": timer.steps[0],
                  "rows": a.episodes * a.group, "new_tokens": a.new_tokens, "threads": torch.get_num_threads()}))
