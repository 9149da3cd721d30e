"""The probability of each `rank_candidates` preset's first word where the agent names it
("... ranked by" -> " all" | " collaborative" | " sequential" | " popular", or " what", the
first word of three presets in the teacher's older wording, then " users" | " tends" | " is"),
read with transformers at every choice point of a model's `eval --trajectories` files (the
chat template's rendering of each trajectory up to that point).

    .venv/bin/python scripts/choice_probs.py MODEL_DIR eval-sft-sparse.jsonl eval-sft-dense.jsonl
"""
import json, sys, torch
from transformers import AutoTokenizer, AutoModelForCausalLM
if len(sys.argv) < 3:
    sys.exit(__doc__)
model_dir, files = sys.argv[1], sys.argv[2:]
tok = AutoTokenizer.from_pretrained(model_dir)
m = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32).eval()
torch.set_num_threads(2)
words = ["all", "collaborative", "sequential", "popular", "what"]
ids = {w: tok.encode(" " + w, add_special_tokens=False) for w in words}
print("first tokens", ids)
sub = {"users": " users", "tends": " tends", "is": " is"}
sids = {k: tok.encode(v, add_special_tokens=False)[0] for k, v in sub.items()}
tot = {w: 0.0 for w in words}; top = {w: 0 for w in words}; n = 0
subtot = {k: 0.0 for k in sub}
for f in files:
    for line in open(f):
        r = json.loads(line)
        msgs = r["messages"]
        k = next((i for i, mm in enumerate(msgs) if mm["role"] == "assistant" and "ranked by" in mm["content"]), None)
        if k is None:
            continue
        head = msgs[k]["content"]
        cut = head[: head.index("ranked by") + len("ranked by")]
        conv = [{"role": mm["role"], "content": mm["content"]} for mm in msgs[:k]]
        text = tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=True) + cut
        x = tok(text, return_tensors="pt", add_special_tokens=False).input_ids
        with torch.no_grad():
            p = m(x).logits[0, -1].softmax(-1)
        probs = {w: p[ids[w][0]].item() for w in words}
        for w in words:
            tot[w] += probs[w]
        top[max(probs, key=probs.get)] += 1
        n += 1
        with torch.no_grad():
            x2 = tok(text + " what", return_tensors="pt", add_special_tokens=False).input_ids
            p2 = m(x2).logits[0, -1].softmax(-1)
        for kk, t in sids.items():
            subtot[kk] += p2[t].item()
if n == 0:
    sys.exit("no assistant turn names a preset ('ranked by') in these files")
print(f"{n} choice points; mean probability of each first word:", {w: round(v / n, 3) for w, v in tot.items()})
print("the most likely of them, at how many points:", top)
print("after ' what':", {k: round(v / n, 3) for k, v in subtot.items()})
