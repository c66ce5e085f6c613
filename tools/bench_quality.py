"""Quality of a model on the held-out split of the generated world, per task, through the public API
and the metrics of univs_engine.metrics (the same path a user takes).

    python tools/bench_quality.py [--model small] [--videos 8] [--frames 12] [--size 256] [--split val|test]

Prints VOS / PVOS / RefVOS J&F, VIS mAP, VSS mIoU, VPS VPQ and STQ, and the temporal-consistency measures of
univs_engine.metrics.consistency: the share of pixels the VPS / VSS output leaves unlabelled (mean over frames,
and the worst frame), the share of each GT stuff segment's frames that its single best VPS track covers and
the number of tracks it is split into, and the share of frames where a present PVOS stuff target comes back
empty. `quality_report` is reused by tests/test_quality.py, which asserts floors a few points under the
numbers in the model card. --stuff-prompts runs VPS / PVOS with the official stuff rule (the small presets
turn it off; see univs_engine/presets.py `stuff_prompts`).
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


def _stuff_settings(model, task: str, stuff_prompts: bool | None):
    """The run's settings: the task's preset, or it with `stuff_prompts` overridden."""
    from dataclasses import replace

    from univs_engine.api import RunOptions
    from univs_engine.presets import get_settings

    if stuff_prompts is None:
        return RunOptions(settings=task)
    return RunOptions(settings=replace(get_settings(task, model.cfg.name), stuff_prompts=stuff_prompts))


def _consistency(report: dict, vps: list, vss_maps: list, pvos_empty: list, thing_ids) -> None:
    """Temporal-consistency keys (univs_engine.metrics.consistency) into `report`."""
    from univs_engine.metrics.consistency import track_lifetimes, unlabelled_fraction

    for key, maps in (("vps", [(pred, 0) for _, _, pred, _ in vps]), ("vss", vss_maps)):
        if maps:
            unl = np.concatenate([unlabelled_fraction(m, void) for m, void in maps])
            report[f"{key}_unlabelled"], report[f"{key}_unlabelled_max"] = float(unl.mean()), float(unl.max())
    lives = [life for gt, gcat, pred, _ in vps for life in track_lifetimes(
        gt, pred, [s for s, c in gcat.items() if c not in thing_ids]).values() if life.present]
    if lives:
        report["vps_stuff_lifetime"] = float(np.mean([life.coverage for life in lives]))
        report["vps_stuff_tracks"] = float(np.mean([life.tracks for life in lives]))
    if pvos_empty:
        report["pvos_stuff_empty"] = float(np.mean(pvos_empty))


def quality_report(model, videos, tasks=("vos", "pvos", "refvos", "vis", "vss", "vps"),
                   stuff_prompts: bool | None = None) -> dict[str, float]:
    """Scores of `model` on `videos` per task; stuff_prompts (None = presets) overrides the VPS / PVOS
    stuff rule."""
    from univs_engine.api import Prompt, RunOptions, segment, track
    from univs_engine.metrics.consistency import empty_fraction
    from univs_train.synthetic import CLASSES, THING_CLASSES
    from univs_engine.metrics.vps import evaluate_vps
    from univs_engine.metrics.vss import VSSEvaluator
    from univs_engine.metrics.ytvis import evaluate_ytvis

    out: dict[str, list] = {k: [] for k in ("vos", "pvos", "refvos")}
    gts, dts, vss, vps = [], [], VSSEvaluator(len(CLASSES)), []
    vss_maps, pvos_empty = [], []
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
                                             for k, (s, m) in enumerate(zip(segs, masks))],
                       _stuff_settings(model, "pvos", stuff_prompts))
            out["pvos"].append(_prompted(video, tr, list(range(1, len(segs) + 1)), masks, [0] * len(segs)).JF)
            for k, s in enumerate(segs):  # frames after the prompt
                if not s.isthing:
                    pred = np.stack([tr.mask(t, k + 1) for t in range(1, video.num_frames)])
                    pvos_empty.append(float(empty_fraction(masks[k:k + 1, 1:], pred[None])[0]))
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
            vss_maps.append((pred, len(CLASSES)))
        if "vps" in tasks:
            tr = segment(model, video.frames, "panoptic", options=_stuff_settings(model, "vps", stuff_prompts))
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
    _consistency(report, vps, vss_maps, pvos_empty, thing_ids)
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
    ap.add_argument("--stuff-prompts", action="store_true",
                    help="VPS / PVOS with the official stuff rule (stuff_prompts=True) instead of the presets'")
    args = ap.parse_args()
    import torch

    from univs_engine.api import load_model

    torch.set_num_threads(2)
    model = load_model(args.model)
    videos = held_out(args.videos, args.frames, args.size, args.split)
    t = time.perf_counter()
    report = quality_report(model, videos, tuple(args.tasks.split(",")), True if args.stuff_prompts else None)
    print(f"held-out generated world ({args.split}): {args.videos} videos x {args.frames} frames at {args.size}x{args.size}, "
          f"model {args.model} ({time.perf_counter() - t:.0f} s)")
    for k, v in report.items():
        print(f"{k:>12} {v:.3f}")


if __name__ == "__main__":
    main()
