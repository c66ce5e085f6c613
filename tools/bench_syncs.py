"""Host reads per frame of every task loop (an upper bound measured on the CPU: see tests/test_host_syncs.py),
with the call sites that make them.

    python tools/bench_syncs.py [--tasks "vos (boxes),refvos,vis,vss,vps"] [--sites 8]

Counts every read of a tensor value by Python outside inference.core.to_host (plus one per to_host call) for runs
of 6 and 16 frames of a generated 96x128 clip with the shipped model; per frame = the difference / 10, so one-time
setup cancels. On the CPU host-side state (prompt frames, the official CPU permutations) counts too.
"""
from __future__ import annotations

import argparse
import collections
import sys
import traceback
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import test_host_syncs as H  # noqa: E402  (the instrument)
from univs_engine import api  # noqa: E402
from univs_engine.inference import core  # noqa: E402

SHORT, LONG = 6, 16


def clip(frames: int) -> np.ndarray:
    """A textured background with two shapes moving in opposite directions, 96x128."""
    v = np.repeat(np.random.default_rng(0).integers(60, 120, (1, 96, 128, 3), dtype=np.uint8), frames, 0)
    for t in range(frames):
        v[t, 20:50, 10 + 3 * t:40 + 3 * t] = (230, 40, 40)
        v[t, 50:80, 90 - 2 * t:115 - 2 * t] = (40, 200, 60)
    return v


TASKS = {
    "vos (boxes)": lambda m, v: api.track(m, v, [api.Prompt(1, 0, box=(10, 20, 40, 50)),
                                                 api.Prompt(2, 0, box=(90, 50, 115, 80))]),
    "vos (mask)": lambda m, v: api.track(m, v, [api.Prompt(1, 0, mask=v[0, :, :, 0] > 200)]),
    "refvos": lambda m, v: api.track(m, v, [api.Prompt(1, 0, text="the red square moving right")]),
    "vis": lambda m, v: api.segment(m, v, "instance"),
    "vss": lambda m, v: api.segment(m, v, "semantic"),
    "vps": lambda m, v: api.segment(m, v, "panoptic"),
}


class Sites(H.HostReads):
    """HostReads that also remembers the engine line of each read."""

    def __init__(self):
        super().__init__()
        self.sites = collections.Counter()

    def on_read(self, func) -> None:
        super().on_read(func)
        frames = [f for f in traceback.extract_stack()[:-1] if "univs_engine" in f.filename]
        if frames:
            self.sites[f"{frames[-1].filename.split('univs_engine/')[1]}:{frames[-1].lineno}"] += 1


def count(model, task: str, frames: int) -> Sites:
    mode, to_host = Sites(), core.to_host

    def copy(*tensors):
        mode.counts["to_host"] += 1
        mode.sites["inference/core.py to_host"] += 1
        mode.inside_copy = True
        try:
            return to_host(*tensors)
        finally:
            mode.inside_copy = False

    core.to_host = copy
    try:
        with mode:
            TASKS[task](model, clip(frames))
    finally:
        core.to_host = to_host
    return mode


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--sites", type=int, default=6, help="call sites listed per task")
    args = ap.parse_args()
    model = api.load_model("small")
    H.mark_model(model)
    print(f"{'task':>12} {'reads/frame':>12}  top call sites (reads per frame)")
    for task in args.tasks.split(","):
        a, b = count(model, task, SHORT), count(model, task, LONG)
        per = {k: (b.sites[k] - a.sites[k]) / (LONG - SHORT) for k in b.sites}
        total = (sum(b.counts.values()) - sum(a.counts.values())) / (LONG - SHORT)
        top = ", ".join(f"{k} {v:.1f}" for k, v in sorted(per.items(), key=lambda kv: -kv[1])[:args.sites] if v > 0)
        print(f"{task:>12} {total:>12.1f}  {top}", flush=True)


if __name__ == "__main__":
    main()
