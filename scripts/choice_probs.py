"""The probability of each `rank_candidates` preset's first word where the agent names it
("... ranked by" -> " all" | " what", then " users" | " tends" | " is"), read with
transformers at every choice point of a model's `eval --trajectories` files (the chat
template's rendering of each trajectory up to that point).

    .venv/bin/python scripts/choice_probs.py MODEL_DIR eval-sft-sparse.jsonl eval-sft-dense.jsonl
"""
import json, sys, torch
from transformers import AutoTokenizer, AutoModelForCausalLM
model_dir, files = sys.argv[1], sys.argv[2:]
tok = AutoTokenizer.from_pretrained(model_dir)
m = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32).eval()
torch.set_num_threads(2)
words = {"all": " all", "what": " what"}
ids = {k: tok.encode(v, add_special_tokens=False) for k, v in words.items()}
print("first tokens", ids)
sub = {"users": " users", "tends": " tends", "is": " is"}
sids = {k: tok.encode(v, add_special_tokens=False)[0] for k, v in sub.items()}
tot = {"all": 0.0, "what": 0.0}; n = 0; greedy_all = 0; subtot = {k: 0.0 for k in sub}
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
            logits = m(x).logits[0, -1]
        p = logits.softmax(-1)
        pa, pw = p[ids["all"][0]].item(), p[ids["what"][0]].item()
        tot["all"] += pa; tot["what"] += pw; n += 1; greedy_all += pa > pw
        with torch.no_grad():
            x2 = tok(text + " what", return_tensors="pt", add_special_tokens=False).input_ids
            p2 = m(x2).logits[0, -1].softmax(-1)
        for kk, t in sids.items():
            subtot[kk] += p2[t].item()
if n == 0:
    sys.exit("no assistant turn names a preset ('ranked by') in these files")
print(f"{n} choice points: mean P(' all') {tot['all']/n:.3f}, P(' what') {tot['what']/n:.3f}; ' all' more likely on {greedy_all}")
print("after ' what':", {k: round(v / n, 3) for k, v in subtot.items()})
