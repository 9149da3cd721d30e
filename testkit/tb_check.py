"""Checks a run's TensorBoard event files (RUN_DIR/tb) against its metrics.jsonl, with
TensorBoard's own readers: tbparse (each event file read by TensorBoard's
EventAccumulator, then concatenated, so a step written twice shows twice) and one
EventAccumulator over the whole directory (as the TensorBoard UI loads a run). Both must
give exactly the numeric values of metrics.jsonl, as float32, per (step, tag).

Usage: tb_check.py RUN_DIR   (prints the number of scalars; exits 1 on a difference)
"""

import json
import os
import sys

import numpy as np
from tbparse import SummaryReader
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

run = sys.argv[1]
tb = os.path.join(run, "tb")
want = []
with open(os.path.join(run, "metrics.jsonl")) as f:
    for line in f:
        m = json.loads(line)
        for k, v in m.items():
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                want.append((m["step"], k, float(np.float32(v))))
want.sort()

df = SummaryReader(tb).scalars
per_file = sorted((int(r.step), r.tag, float(r.value)) for r in df.itertuples())

acc = EventAccumulator(tb, size_guidance={"scalars": 0})
acc.Reload()
whole = sorted(
    (e.step, tag, float(np.float32(e.value)))
    for tag in acc.Tags()["scalars"]
    for e in acc.Scalars(tag)
)

for name, got in [("tbparse", per_file), ("EventAccumulator", whole)]:
    if got != want:
        extra = sorted(set(got) - set(want))[:10]
        missing = sorted(set(want) - set(got))[:10]
        print(f"{name}: {len(got)} scalars, metrics.jsonl {len(want)}; "
              f"extra {extra}; missing {missing}", file=sys.stderr)
        sys.exit(1)
print(len(want))
