"""The Python peer of `recthinker bench generate`: transformers `generate`, same model,
prompts, batch, greedy decoding, fixed token count, thread count and timing method."""
import argparse
import json
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

ap = argparse.ArgumentParser()
ap.add_argument("--model", default="checkpoints/base/SmolLM2-135M-Instruct")
ap.add_argument("--prompts", required=True)
ap.add_argument("--batch", type=int, default=1)
ap.add_argument("--new-tokens", type=int, default=64)
ap.add_argument("--repeats", type=int, default=2)
ap.add_argument("--threads", type=int, default=1)
ap.add_argument("--device", default="cpu")
ap.add_argument("--dtype", default="f32")
a = ap.parse_args()

torch.set_num_threads(a.threads)
dtype = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}[a.dtype]
tok = AutoTokenizer.from_pretrained(a.model)
tok.padding_side = "left"
model = AutoModelForCausalLM.from_pretrained(a.model, dtype=dtype).to(a.device).eval()
lines = [l for l in open(a.prompts).read().splitlines() if l.strip()]
texts = [tok.apply_chat_template([{"role": "user", "content": lines[i % len(lines)]}],
                                 add_generation_prompt=True, tokenize=False) for i in range(a.batch)]
enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(a.device)


def timed(n):
    start = time.perf_counter()
    with torch.no_grad():
        model.generate(**enc, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                       pad_token_id=tok.pad_token_id or tok.eos_token_id)
    if a.device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start


timed(2)  # warm-up
t1 = min(timed(1) for _ in range(a.repeats))
tn = min(timed(a.new_tokens) for _ in range(a.repeats))
print(json.dumps({
    "impl": "transformers", "batch": a.batch, "new_tokens": a.new_tokens,
    "prompt_tokens": int(enc["attention_mask"].sum()), "prefill_s": t1, "total_s": tn,
    "decode_tokens_per_s": a.batch * (a.new_tokens - 1) / max(tn - t1, 1e-9),
    "threads": torch.get_num_threads(), "device": a.device, "dtype": a.dtype,
}))
