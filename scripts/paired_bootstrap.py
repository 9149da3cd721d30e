#!/usr/bin/env python3
"""Paired bootstrap 95% intervals for the difference of two rankers on the same episodes.

Each side is a per-episode JSONL file: `recthinker eval --trajectories FILE` or
`recthinker baseline --per-episode FILE`. Episodes are paired by (split, user, pos); an
invalid or missing answer counts as NDCG 0, as in the reports. Sample 0 of each episode is
used when a file holds several samples.

    python scripts/paired_bootstrap.py \
        --pair sparse A-sparse.jsonl B-sparse.jsonl \
        --pair dense A-dense.jsonl B-dense.jsonl \
        --names agent bpr [--resamples 10000] [--seed 0] [--json out.json]

Prints, per subset and pooled over all pairs: mean NDCG@1/5/10 of A and B, the mean
difference A - B and its percentile interval over `resamples` resamples of the episodes
(pooled: resampled within each subset, so each subset keeps its size).
"""

import argparse
import json
import math
import sys

import numpy as np

CUTS = (1, 5, 10)


def ndcg_at(rank, k):
    if rank is None or rank > k:
        return 0.0
    return 1.0 / math.log2(rank + 1)


def load(path):
    """{(split, user, pos): rank or None}, sample 0 only."""
    out = {}
    with open(path) as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                v = json.loads(line)
            except json.JSONDecodeError as e:
                sys.exit(f"{path}:{n}: not JSON ({e})")
            if v.get("sample", 0) != 0:
                continue
            ep = v.get("episode")
            if not isinstance(ep, dict) or "user" not in ep:
                sys.exit(f"{path}:{n}: no episode.user field (an eval trajectory or baseline per-episode line?)")
            key = (ep.get("split"), str(ep["user"]), ep.get("pos"))
            rank = v.get("rank") if v.get("valid", True) else None
            out[key] = rank
    if not out:
        sys.exit(f"{path}: no episodes")
    return out


def paired(a_path, b_path):
    a, b = load(a_path), load(b_path)
    keys = sorted(set(a) & set(b), key=lambda k: (str(k[0]), k[1], str(k[2])))
    missing = (len(a) - len(keys), len(b) - len(keys))
    if not keys:
        sys.exit(f"{a_path} and {b_path} share no episodes")
    A = np.array([[ndcg_at(a[k], c) for c in CUTS] for k in keys])
    B = np.array([[ndcg_at(b[k], c) for c in CUTS] for k in keys])
    return A, B, missing


def interval(diffs_by_group, resamples, rng):
    """Mean difference and 95% percentile interval, resampling within each group."""
    total = sum(len(d) for d in diffs_by_group)
    boot = np.zeros((resamples, len(CUTS)))
    for d in diffs_by_group:
        idx = rng.integers(0, len(d), size=(resamples, len(d)))
        boot += d[idx].sum(axis=1)
    boot /= total
    mean = np.concatenate(diffs_by_group).mean(axis=0)
    lo, hi = np.percentile(boot, [2.5, 97.5], axis=0)
    return mean, lo, hi


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pair", nargs=3, action="append", metavar=("SUBSET", "A", "B"), required=True)
    p.add_argument("--names", nargs=2, default=["A", "B"])
    p.add_argument("--resamples", type=int, default=10000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="also write the numbers here")
    args = p.parse_args()
    rng = np.random.default_rng(args.seed)
    na, nb = args.names
    rows, groups = [], []
    for subset, a_path, b_path in args.pair:
        A, B, missing = paired(a_path, b_path)
        if any(missing):
            print(f"note: {subset}: {missing[0]} episodes only in {a_path}, {missing[1]} only in {b_path}",
                  file=sys.stderr)
        groups.append((subset, A, B))
    report = {"names": [na, nb], "resamples": args.resamples, "seed": args.seed, "subsets": {}}
    for label, parts in [(s, [(A, B)]) for s, A, B in groups] + [("pooled", [(A, B) for _, A, B in groups])]:
        if label == "pooled" and len(groups) < 2:
            continue
        diffs = [A - B for A, B in parts]
        mean, lo, hi = interval(diffs, args.resamples, rng)
        ma = np.concatenate([A for A, _ in parts]).mean(axis=0)
        mb = np.concatenate([B for _, B in parts]).mean(axis=0)
        n = sum(len(A) for A, _ in parts)
        report["subsets"][label] = {
            "episodes": n,
            **{f"{na} ndcg@{c}": float(ma[i]) for i, c in enumerate(CUTS)},
            **{f"{nb} ndcg@{c}": float(mb[i]) for i, c in enumerate(CUTS)},
            **{f"diff ndcg@{c}": [float(mean[i]), float(lo[i]), float(hi[i])] for i, c in enumerate(CUTS)},
        }
        cells = "  ".join(
            f"@{c}: {ma[i]:.3f} vs {mb[i]:.3f}, diff {mean[i]:+.3f} [{lo[i]:+.3f}, {hi[i]:+.3f}]"
            for i, c in enumerate(CUTS)
        )
        print(f"{label:>7} ({n} episodes) {na} - {nb}  {cells}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
