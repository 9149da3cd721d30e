"""Which evidence an agent asked for, and what it earned: per `recthinker eval --trajectories`
file, episodes by the `by` argument of their last `rank_candidates` call ("none" without
one) with their mean NDCG@10 (invalid answers count 0) and how often the answer is exactly
that call's ranking. With two files of the same episodes (--compare A B), how many answers
and evidence choices differ between them.

    python scripts/evidence_choices.py eval-sft-sparse.jsonl eval-sft-grpo-sparse.jsonl
    python scripts/evidence_choices.py --compare eval-sft-dense.jsonl eval-sft-grpo-dense.jsonl
"""
import argparse
import json
import math
import sys
from collections import defaultdict


def ndcg(rank):
    return 1.0 / math.log2(rank + 1) if rank is not None and rank <= 10 else 0.0


def load(path):
    rows = {}
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                r = json.loads(line)
                ep = r["episode"]
                key = (ep["split"], ep["subset"], ep["user"], ep["pos"], r.get("sample", 0))
            except (ValueError, KeyError, TypeError) as e:
                sys.exit(f"{path}:{n}: not an eval trajectory line ({e})")
            rows[key] = r
    if not rows:
        sys.exit(f"{path}: no trajectories")
    return rows


def choice(r):
    """The last rank_candidates call's `by` and the ranking it returned (None without one)."""
    calls = [c for c in r.get("tool_calls") or [] if c.get("name") == "rank_candidates" and c.get("ok")]
    if not calls:
        return "none", None
    c = calls[-1]
    by = (c.get("arguments") or {}).get("by", "all")
    first = (c.get("observation") or "").split("\n", 1)[0]
    try:
        ranking = [int(x) for x in first.rsplit(": ", 1)[1].split(",")]
    except (IndexError, ValueError):
        ranking = None
    return str(by), ranking


def summary(path, rows):
    by = defaultdict(list)
    for r in rows.values():
        name, ranking = choice(r)
        score = ndcg(r.get("rank")) if r.get("valid") else 0.0
        by[name].append((score, ranking is not None and r.get("answer") == ranking))
    n = len(rows)
    print(f"{path}: {n} episodes, NDCG@10 {sum(s for v in by.values() for s, _ in v) / n:.3f}")
    for name, v in sorted(by.items(), key=lambda kv: -len(kv[1])):
        print(f"  by {name:14} {len(v):4} episodes  NDCG@10 {sum(s for s, _ in v) / len(v):.3f}  "
              f"answer = its ranking {sum(c for _, c in v)}")


def compare(a_path, b_path):
    a, b = load(a_path), load(b_path)
    common = sorted(set(a) & set(b))
    if not common:
        sys.exit(f"{a_path} and {b_path} share no episode")
    answers = sum(a[k].get("answer") != b[k].get("answer") for k in common)
    moves = defaultdict(int)
    for k in common:
        ca, cb = choice(a[k])[0], choice(b[k])[0]
        if ca != cb:
            moves[f"{ca} -> {cb}"] += 1
    print(f"{len(common)} common episodes: {answers} answers differ; evidence changed on "
          f"{sum(moves.values())}: {dict(moves)}")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("files", nargs="*")
    p.add_argument("--compare", nargs=2, metavar=("A", "B"))
    a = p.parse_args()
    if not a.files and not a.compare:
        p.error("give trajectory files, or --compare A B")
    for f in a.files:
        summary(f, load(f))
    if a.compare:
        compare(*a.compare)


if __name__ == "__main__":
    main()
