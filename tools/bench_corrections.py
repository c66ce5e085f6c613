"""Incremental corrections measured: a full tracking run of a long clip, then a correction near its end re-run
with the run's record (only frames from the correction are recomputed), against the same corrected prompts
run from the start. Prints the times, their ratio and whether every mask is equal.

The clip is the bundled sample played forwards and backwards until it has --frames frames (objects move
smoothly, so tracking continues); the built-in model, CPU.

    python tools/bench_corrections.py [--frames 500] [--at 400] [--threads 2]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from univs_engine.api import Prompt, RunOptions, load_model, track  # noqa: E402
from univs_engine.io.video import VideoSource  # noqa: E402
from univs_engine.prompts_file import read_prompts_file  # noqa: E402
from univs_engine.reuse import RunRecord  # noqa: E402


def long_clip(frames: int) -> np.ndarray:
    src = VideoSource(ROOT / "assets" / "sample.mp4")
    clip = np.stack([src.frame(i) for i in range(src.num_frames)])
    loop = np.concatenate([clip, clip[-2:0:-1]])  # ping-pong without repeating the end frames
    return np.concatenate([loop] * (frames // len(loop) + 1))[:frames]


def correction(tracks, frame: int) -> Prompt:
    """A click on the centre of the first object present on `frame` (what an artist would add)."""
    obj = next(o for o in tracks.object_ids if tracks.has_mask(frame, o))
    ys, xs = np.nonzero(tracks.mask(frame, obj))
    return Prompt(obj, frame, points=[(float(xs.mean()), float(ys.mean()))])


def equal(a, b) -> tuple[int, int]:
    same = total = 0
    for o in b.object_ids:
        for f in range(b.num_frames):
            total += 1
            same += bool(np.array_equal(a.mask(f, o), b.mask(f, o)))
    return same, total


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=500)
    ap.add_argument("--at", type=int, default=400)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    video = long_clip(a.frames)
    model = load_model("small")
    prompts = read_prompts_file(ROOT / "assets" / "sample.json", False, *video.shape[:3])
    options = RunOptions(direction="forward")
    record = RunRecord()
    t0 = time.perf_counter()
    first = track(model, video, prompts, options, reuse=record)
    full = time.perf_counter() - t0
    corrected = list(prompts) + [correction(first, a.at)]
    t0 = time.perf_counter()
    again = track(model, video, corrected, options, reuse=record)
    incremental = time.perf_counter() - t0
    t0 = time.perf_counter()
    scratch = track(model, video, corrected, options)
    from_start = time.perf_counter() - t0
    same, total = equal(again, scratch)
    kept = sum(t.nbytes for rec in record.passes.values() for snap in rec.snapshots
               for t in (snap.state.logits, snap.state.boxes, snap.state.embds)
               + ((snap.state.memory.tokens, snap.state.memory.pe) if snap.state.memory is not None else ()))
    print(json.dumps({"frames": a.frames, "correction_at": a.at, "objects": len(scratch.object_ids),
                      "full_run_s": round(full, 1), "correction_with_record_s": round(incremental, 1),
                      "corrected_from_start_s": round(from_start, 1),
                      "ratio": round(incremental / from_start, 3), "equal_masks": f"{same}/{total}",
                      "snapshots": sum(len(r.snapshots) for r in record.passes.values()),
                      "snapshot_MiB": round(kept / 2**20, 1)}, indent=1))
    return 0 if same == total else 1


if __name__ == "__main__":
    raise SystemExit(main())
