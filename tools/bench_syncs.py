"""Host reads per frame of every task loop (an upper bound measured on the CPU: see tests/test_host_syncs.py),
with the call sites that make them.

    python tools/bench_syncs.py [--tasks "vos (boxes),pvos,refvos,vis,vss,vps"] [--sites 8]

Counts every read of a device value by Python outside inference.core.to_host (plus one per to_host call) for runs
of 6 and 16 frames of a generated 96x128 clip with the shipped model; per frame = the difference / 10, so one-time
setup cancels. Prompt cells are drawn as on a GPU (DeviceDraw; the CPU's permutation draws read two counts per
encoding, which costs nothing there).
"""
from __future__ import annotations

import argparse
import collections
import sys
import traceback
from pathlib import Path

from _pytest.monkeypatch import MonkeyPatch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import test_host_syncs as H  # noqa: E402  (the instrument)
from univs_engine import api  # noqa: E402

SHORT, LONG, TASKS, clip = H.SHORT, H.LONG, H.TASKS, H.clip


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
    with MonkeyPatch.context() as mp:
        H.device_draws(mp)
        mode = H.run_counted(Sites(), model, task, frames, mp)
    mode.sites["inference/core.py to_host"] = mode.counts["to_host"]
    return mode


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--sites", type=int, default=6, help="call sites listed per task")
    args = ap.parse_args()
    model = api.load_model("small")
    H.mark_model(model)
    print(f"{'task':>18} {'reads/frame':>12}  top call sites (reads per frame)")
    for task in args.tasks.split(","):
        a, b = count(model, task, SHORT), count(model, task, LONG)
        per = {k: (b.sites[k] - a.sites[k]) / (LONG - SHORT) for k in b.sites}
        total = (sum(b.counts.values()) - sum(a.counts.values())) / (LONG - SHORT)
        top = ", ".join(f"{k} {v:.1f}" for k, v in sorted(per.items(), key=lambda kv: -kv[1])[:args.sites] if v > 0)
        print(f"{task:>18} {total:>12.1f}  {top}", flush=True)


if __name__ == "__main__":
    main()
