"""Prints the pipeline's results table from the JSON reports in a run directory."""
import json
import os
import sys

run = sys.argv[1]
rows = []
for subset in ["sparse", "dense"]:
    for m in ["random", "pop", "itemknn", "bpr", "sasrec", "ease", "transitions", "fusion-adaptive"]:
        p = f"{run}/baseline-{m}-{subset}.json"
        if os.path.exists(p):
            r = json.load(open(p))
            rows.append((subset, m, r, None))
    for name in ["base", "base-notools", "sft", "sft-grpo", "sft-grpo-constrained"]:
        p = f"{run}/eval-{name}-{subset}.json"
        if os.path.exists(p):
            r = json.load(open(p))
            rows.append((subset, name, r, r))
print(f"{'subset':7} {'method':21} {'NDCG@1':>7} {'NDCG@5':>7} {'NDCG@10':>8} {'users':>6} {'valid':>6} {'calls':>6}")
for subset, m, r, agent in rows:
    n = r.get("users", r.get("episodes"))
    extra = f"{agent['valid_rate']:6.2f} {agent['mean_tool_calls']:6.2f}" if agent else f"{'':6} {'':6}"
    print(f"{subset:7} {m:21} {r['ndcg@1']:7.3f} {r['ndcg@5']:7.3f} {r['ndcg@10']:8.3f} {n:6} {extra}")
