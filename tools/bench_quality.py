"""Quality of a model on the held-out split of the generated world, per task, through the public API
and the metrics of univs_engine.metrics (the same path a user takes).

    python tools/bench_quality.py [--model small] [--videos 8] [--frames 12] [--size 256] [--split val|test]

Prints VOS / PVOS / RefVOS J&F, VIS mAP, VSS mIoU, VPS VPQ and STQ. `quality_report` is reused by
tests/test_quality.py, which asserts floors a few points under the numbers in the model card.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if "univs_train" not in sys.modules and str(ROOT) not in sys.path:  # the generated world: in the clone, not installed
    sys.path.append(str(ROOT))


def held_out(n_videos: int, frames: int, size: int, split: str = "val"):
    from univs_train.synthetic import generate_video, split_seeds

    return [generate_video(seed, num_frames=frames, height=size, width=size)
            for seed in split_seeds(split, n_videos)]


def _prompted(video, tracks, ids, gts, first_frames):
    """J&F on the frames after each target's prompt frame."""
    from univs_engine.metrics.davis import davis_jf

    pred = np.stack([np.stack([tracks.mask(t, i) for t in range(video.num_frames)]) for i in ids])
    valid = np.zeros((len(ids), video.num_frames), bool)
    for k, f in enumerate(first_frames):
        valid[k, f + 1:] = True
    return davis_jf(gts, pred, valid=valid)


def quality_report(model, videos, tasks=("vos", "pvos", "refvos", "vis", "vss", "vps")) -> dict[str, float]:
    from univs_engine.api import Prompt, RunOptions, segment, track
    from univs_train.synthetic import CLASSES, THING_CLASSES
    from univs_engine.metrics.vps import evaluate_vps
    from univs_engine.metrics.vss import VSSEvaluator
    from univs_engine.metrics.ytvis import evaluate_ytvis

    out: dict[str, list] = {k: [] for k in ("vos", "pvos", "refvos")}
    gts, dts, vss, vps = [], [], VSSEvaluator(len(CLASSES)), []
    thing_ids = list(range(len(THING_CLASSES)))
    for v, video in enumerate(videos):
        n = video.num_things
        frames = [p.frame for p in video.prompts]
        if "vos" in tasks:
            tr = track(model, video.frames, [Prompt(i + 1, p.frame, mask=p.mask) for i, p in enumerate(video.prompts)])
            out["vos"].append(_prompted(video, tr, list(range(1, n + 1)), video.masks, frames).JF)
        if "refvos" in tasks:
            tr = track(model, video.frames, [Prompt(i + 1, 0, text=e) for i, e in enumerate(video.expressions)])
            out["refvos"].append(_prompted(video, tr, list(range(1, n + 1)), video.masks, [0] * n).JF)
        if "pvos" in tasks:  # things and stuff regions, each prompted on the first frame by its mask
            segs = [s for s in video.segments if (video.panoptic[0] == s.id).any()]
            masks = np.stack([video.panoptic == s.id for s in segs])
            tr = track(model, video.frames, [Prompt(k + 1, 0, CLASSES[s.category], mask=m[0])
                                             for k, (s, m) in enumerate(zip(segs, masks))], RunOptions(settings="pvos"))
            out["pvos"].append(_prompted(video, tr, list(range(1, len(segs) + 1)), masks, [0] * len(segs)).JF)
        if "vis" in tasks:
            tr = segment(model, video.frames, "instance")
            for i, thing in enumerate(video.things):
                gts.append((v, thing.category, video.masks[i]))
            for obj in tr.object_ids:
                info = tr.info(obj)
                if info.category is not None and info.category in thing_ids:
                    dts.append((v, info.category, info.score,
                                np.stack([tr.mask(t, obj) for t in range(video.num_frames)])))
        if "vss" in tasks:
            tr = segment(model, video.frames, "semantic")
            pred = np.full(video.semantic.shape, len(CLASSES), np.int64)
            for obj in tr.object_ids:
                for t in range(video.num_frames):
                    pred[t][tr.mask(t, obj)] = obj - 1
            vss.add(video.semantic, pred)
        if "vps" in tasks:
            tr = segment(model, video.frames, "panoptic")
            pred = np.stack([tr.id_map(t) for t in range(video.num_frames)])
            cats = {o: tr.info(o).category for o in tr.object_ids}
            gcat = {s.id: s.category for s in video.segments}
            vps.append((video.panoptic, gcat, pred, cats))
    report = {f"{k.upper()} J&F": float(np.mean(vals)) for k, vals in out.items() if vals}
    if "vis" in tasks:
        report["VIS mAP"] = float(evaluate_ytvis(gts, dts, categories=thing_ids)["AP"])
        # the same tracks with every category merged: how well instances are found and followed
        report["VIS AP (class-agnostic)"] = float(evaluate_ytvis([(v, 0, m) for v, _, m in gts],
                                                                 [(v, 0, sc, m) for v, _, sc, m in dts])["AP"])
    if "vss" in tasks:
        report["VSS mIoU"] = float(vss.result()["mIoU"])
    if "vps" in tasks:
        res = evaluate_vps(vps, len(CLASSES), thing_ids)
        report["VPS VPQ"], report["VPS STQ"] = float(res["VPQ"]), float(res["STQ"])
    return report


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="small")
    ap.add_argument("--videos", type=int, default=8)
    ap.add_argument("--frames", type=int, default=12)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--tasks", default="vos,pvos,refvos,vis,vss,vps")
    ap.add_argument("--split", default="val", choices=("val", "test"),
                    help="held-out split (presets were tuned on val; report test)")
    args = ap.parse_args()
    import torch

    from univs_engine.api import load_model

    torch.set_num_threads(2)
    model = load_model(args.model)
    videos = held_out(args.videos, args.frames, args.size, args.split)
    t = time.perf_counter()
    report = quality_report(model, videos, tuple(args.tasks.split(",")))
    print(f"held-out generated world ({args.split}): {args.videos} videos x {args.frames} frames at {args.size}x{args.size}, "
          f"model {args.model} ({time.perf_counter() - t:.0f} s)")
    for k, v in report.items():
        print(f"{k:>12} {v:.3f}")


if __name__ == "__main__":
    main()
