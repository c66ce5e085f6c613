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

J&F follows the DAVIS 2017 convention: J and F are averaged over all objects of all videos (not per video
first). Frame protocol: each target is scored on the frames after the one it is prompted on, up to and
including the last frame (DAVIS 2017 also drops the last frame; with 12-frame clips that would drop a tenth
of the evaluated frames). RefVOS also reports its false-positive area: per expression, the share of its
predicted pixels outside its object (pooled over the scored frames), and the share of its predicted pixels on
the other things of the video (an expression that pulls in a second object); `REFVOS pulls other` is the
share of expressions with at least 10 % of their pixels on another thing. RefVOS runs all of a video's
expressions together (Ref-DAVIS); REFVOS1 runs each expression alone, as a user types one. Identity switches
(univs_engine.metrics.consistency.identity_switches) count, per video, the frames where a shown VIS track or a
VPS track matches a different object than it matched before.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TASKS = ("vos", "pvos", "refvos", "refvos1", "vis", "vss", "vps")
if "univs_train" not in sys.modules and str(ROOT) not in sys.path:  # the generated world: in the clone, not installed
    sys.path.append(str(ROOT))


def held_out(n_videos: int, frames: int, size: int, split: str = "val"):
    from univs_train.synthetic import generate_video, split_seeds

    return [generate_video(seed, num_frames=frames, height=size, width=size)
            for seed in split_seeds(split, n_videos)]


def _after_prompt(n_frames: int, first_frames) -> np.ndarray:
    """[N, T] bool: the frames after each target's prompt frame (the ones that are scored)."""
    valid = np.zeros((len(first_frames), n_frames), bool)
    for k, f in enumerate(first_frames):
        valid[k, f + 1:] = True
    return valid


def _predicted(video, tracks, ids) -> np.ndarray:
    """[N, T, H, W] bool masks of the objects ``ids`` on every frame."""
    return np.stack([np.stack([tracks.mask(t, i) for t in range(video.num_frames)]) for i in ids])


def _prompted(video, tracks, ids, gts, first_frames):
    """J&F on the frames after each target's prompt frame (a DavisResult: one entry per object)."""
    from univs_engine.metrics.davis import davis_jf

    return davis_jf(gts, _predicted(video, tracks, ids), valid=_after_prompt(video.num_frames, first_frames))


def _refvos_false_positives(video, tracks, things) -> list[tuple[float, float]]:
    """Per thing k of ``things`` (its expression is object k + 1 of ``tracks``): (share of the predicted pixels
    outside the thing, share on the video's other things)."""
    from univs_engine.metrics.consistency import false_positive_share

    ks = list(things)
    pred, valid = _predicted(video, tracks, [k + 1 for k in ks]), _after_prompt(video.num_frames, [0] * len(ks))
    gt, every = video.masks[ks], video.masks.any(0)
    others = np.stack([every & ~m for m in gt])
    return list(zip(false_positive_share(gt, pred, valid).tolist(),
                    false_positive_share(gt, pred, valid, others).tolist()))


def _merge(results):
    """DavisResults -> one whose per-object entries are all of theirs (only those are read): its ``JF`` is J&F over
    all objects of all videos, the DAVIS 2017 convention."""
    from dataclasses import replace

    cat = lambda name: np.concatenate([getattr(r, name) for r in results])  # noqa: E731
    return replace(results[0], J_per_object=cat("J_per_object"), F_per_object=cat("F_per_object"))


def _switches(gt: np.ndarray, tracks, ids) -> int:
    """Identity switches of the tracks ``ids`` (painted in that order) against the GT id maps [T, H, W]."""
    from univs_engine.metrics.consistency import identity_switches

    pred = np.stack([tracks.id_map(t, ids) for t in range(tracks.num_frames)])
    return sum(identity_switches(gt, pred).values())


def _things_map(video) -> np.ndarray:
    """[T, H, W] int: 1 + index of the thing on each pixel, 0 elsewhere."""
    ids = np.zeros(video.masks.shape[1:], np.int64)
    for i, m in enumerate(video.masks):
        ids[m] = i + 1
    return ids


def _stuff_settings(model, task: str, stuff_prompts: bool | None):
    """The run's settings: the task's preset, or it with `stuff_prompts` overridden."""
    from dataclasses import replace

    from univs_engine.api import RunOptions
    from univs_engine.presets import get_settings

    if stuff_prompts is None:
        return RunOptions(settings=task)
    return RunOptions(settings=replace(get_settings(task, model.cfg.name), stuff_prompts=stuff_prompts))


def _consistency(report: dict, recs: list[dict], thing_ids) -> None:
    """Temporal-consistency keys (univs_engine.metrics.consistency) into `report`."""
    from univs_engine.metrics.consistency import track_lifetimes, unlabelled_fraction

    vps = [r["vps"] for r in recs if "vps" in r]
    vss = [r["vss"][1:] for r in recs if "vss" in r]
    for key, maps in (("vps", [(pred, 0) for _, _, pred, _ in vps]), ("vss", vss)):
        if maps:
            unl = np.concatenate([unlabelled_fraction(m, void) for m, void in maps])
            report[f"{key}_unlabelled"], report[f"{key}_unlabelled_max"] = float(unl.mean()), float(unl.max())
    lives = [life for gt, gcat, pred, _ in vps for life in track_lifetimes(
        gt, pred, [s for s, c in gcat.items() if c not in thing_ids]).values() if life.present]
    if lives:
        report["vps_stuff_lifetime"] = float(np.mean([life.coverage for life in lives]))
        report["vps_stuff_tracks"] = float(np.mean([life.tracks for life in lives]))
    empty = [e for r in recs for e in r.get("pvos_empty", [])]
    if empty:
        report["pvos_stuff_empty"] = float(np.mean(empty))


def _video_record(model, video, tasks, stuff_prompts) -> dict:
    """What the report needs from one video: per task, the predictions against the ground truth."""
    from univs_engine.api import Prompt, segment, track
    from univs_engine.metrics.consistency import empty_fraction
    from univs_train.synthetic import CLASSES, THING_CLASSES

    rec: dict = {}
    n = video.num_things
    if "vos" in tasks:
        frames = [p.frame for p in video.prompts]
        tr = track(model, video.frames, [Prompt(i + 1, p.frame, mask=p.mask) for i, p in enumerate(video.prompts)])
        rec["vos"] = _prompted(video, tr, list(range(1, n + 1)), video.masks, frames)
    if "refvos" in tasks:
        tr = track(model, video.frames, [Prompt(i + 1, 0, text=e) for i, e in enumerate(video.expressions)])
        rec["refvos"] = _prompted(video, tr, list(range(1, n + 1)), video.masks, [0] * n)
        rec["refvos_fp"] = _refvos_false_positives(video, tr, range(n))
    if "refvos1" in tasks:  # one expression per run, as a user types one in the text -> roto template
        res, fp = [], []
        for i, e in enumerate(video.expressions):
            tr = track(model, video.frames, [Prompt(i + 1, 0, text=e)])
            res.append(_prompted(video, tr, [i + 1], video.masks[i:i + 1], [0]))
            fp += _refvos_false_positives(video, tr, [i])
        rec["refvos1"], rec["refvos1_fp"] = _merge(res), fp
    if "pvos" in tasks:  # things and stuff regions, each prompted on the first frame by its mask
        segs = [s for s in video.segments if (video.panoptic[0] == s.id).any()]
        masks = np.stack([video.panoptic == s.id for s in segs])
        tr = track(model, video.frames, [Prompt(k + 1, 0, CLASSES[s.category], mask=m[0])
                                         for k, (s, m) in enumerate(zip(segs, masks))],
                   _stuff_settings(model, "pvos", stuff_prompts))
        rec["pvos"] = _prompted(video, tr, list(range(1, len(segs) + 1)), masks, [0] * len(segs))
        stuff = [k for k, s in enumerate(segs) if not s.isthing]  # frames after the prompt
        rec["pvos_empty"] = [float(empty_fraction(masks[k:k + 1, 1:], _predicted(video, tr, [k + 1])[:, 1:])[0])
                             for k in stuff]
    if "vis" in tasks:
        tr = segment(model, video.frames, "instance")
        thing_ids = range(len(THING_CLASSES))
        rec["vis_gts"] = [(thing.category, video.masks[i]) for i, thing in enumerate(video.things)]
        rec["vis_dts"] = [(tr.info(o).category, tr.info(o).score, _predicted(video, tr, [o])[0])
                          for o in tr.object_ids if tr.info(o).category in thing_ids]
        rec["vis_switches"] = _switches(_things_map(video), tr, tr.shown_ids())
    if "vss" in tasks:
        tr = segment(model, video.frames, "semantic")
        pred = np.full(video.semantic.shape, len(CLASSES), np.int32)
        for obj in tr.object_ids:
            for t in range(video.num_frames):
                pred[t][tr.mask(t, obj)] = obj - 1
        rec["vss"] = (video.semantic, pred, len(CLASSES))
    if "vps" in tasks:
        tr = segment(model, video.frames, "panoptic", options=_stuff_settings(model, "vps", stuff_prompts))
        pred = np.stack([tr.id_map(t) for t in range(video.num_frames)])
        rec["vps"] = (video.panoptic, {s.id: s.category for s in video.segments}, pred,
                      {o: tr.info(o).category for o in tr.object_ids})
        rec["vps_switches"] = _switches(video.panoptic, tr, tr.object_ids)
    return rec


def collect(model, videos, tasks=TASKS, stuff_prompts: bool | None = None) -> list[dict]:
    """One record per video (see `aggregate`); stuff_prompts (None = presets) overrides the VPS / PVOS stuff rule."""
    return [_video_record(model, video, tasks, stuff_prompts) for video in videos]


def aggregate(recs: list[dict]) -> dict[str, float]:
    """The report over the videos of `recs` (any subset of `collect`'s records: the halves use it)."""
    from univs_train.synthetic import CLASSES, THING_CLASSES
    from univs_engine.metrics.vps import evaluate_vps
    from univs_engine.metrics.vss import VSSEvaluator
    from univs_engine.metrics.ytvis import evaluate_ytvis

    thing_ids = list(range(len(THING_CLASSES)))
    report = {f"{k.upper()} J&F": _merge([r[k] for r in recs]).JF
              for k in ("vos", "pvos", "refvos", "refvos1") if k in recs[0]}
    for key in ("refvos", "refvos1"):
        if f"{key}_fp" in recs[0]:
            fp = np.array([e for r in recs for e in r[f"{key}_fp"]]).reshape(-1, 2)
            report[f"{key.upper()} FP area"], report[f"{key.upper()} FP on other things"] = fp.mean(0).tolist()
            report[f"{key.upper()} pulls other"] = float((fp[:, 1] >= 0.1).mean())
    for key in ("vis", "vps"):
        if f"{key}_switches" in recs[0]:
            report[f"{key.upper()} ID switches/video"] = float(np.mean([r[f"{key}_switches"] for r in recs]))
    if "vis_gts" in recs[0]:
        gts = [(v, c, m) for v, r in enumerate(recs) for c, m in r["vis_gts"]]
        dts = [(v, c, sc, m) for v, r in enumerate(recs) for c, sc, m in r["vis_dts"]]
        report["VIS mAP"] = float(evaluate_ytvis(gts, dts, categories=thing_ids)["AP"])
        # the same tracks with every category merged: how well instances are found and followed
        report["VIS AP (class-agnostic)"] = float(evaluate_ytvis([(v, 0, m) for v, _, m in gts],
                                                                 [(v, 0, sc, m) for v, _, sc, m in dts])["AP"])
    if "vss" in recs[0]:
        vss = VSSEvaluator(len(CLASSES))
        for r in recs:
            vss.add(r["vss"][0], r["vss"][1])
        report["VSS mIoU"] = float(vss.result()["mIoU"])
    if "vps" in recs[0]:
        res = evaluate_vps([r["vps"] for r in recs], len(CLASSES), thing_ids)
        report["VPS VPQ"], report["VPS STQ"] = float(res["VPQ"]), float(res["STQ"])
    _consistency(report, recs, thing_ids)
    return report


def quality_report(model, videos, tasks=TASKS, stuff_prompts: bool | None = None) -> dict[str, float]:
    """Scores of `model` on `videos` per task; stuff_prompts (None = presets) overrides the VPS / PVOS
    stuff rule."""
    return aggregate(collect(model, videos, tasks, stuff_prompts))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="small")
    ap.add_argument("--videos", type=int, default=8)
    ap.add_argument("--frames", type=int, default=12)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--split", default="val", choices=("val", "test"),
                    help="held-out split (presets were tuned on val; report test)")
    ap.add_argument("--halves", action="store_true",
                    help="also score the two disjoint halves of the videos and print their difference (the spread)")
    ap.add_argument("--stuff-prompts", action="store_true",
                    help="VPS / PVOS with the official stuff rule (stuff_prompts=True) instead of the presets'")
    args = ap.parse_args()
    import torch

    from univs_engine.api import load_model

    torch.set_num_threads(2)
    model = load_model(args.model)
    videos = held_out(args.videos, args.frames, args.size, args.split)
    t = time.perf_counter()
    recs = collect(model, videos, tuple(args.tasks.split(",")), True if args.stuff_prompts else None)
    report = aggregate(recs)
    print(f"held-out generated world ({args.split}): {args.videos} videos x {args.frames} frames at "
          f"{args.size}x{args.size}, "
          f"model {args.model} ({time.perf_counter() - t:.0f} s)")
    if not args.halves:
        for k, v in report.items():
            print(f"{k:>26} {v:.3f}")
        return
    half = len(recs) // 2
    a, b = aggregate(recs[:half]), aggregate(recs[half:])
    print(f"{'':>26} {'all':>6} {'half A':>7} {'half B':>7} {'|A-B|':>6}   "
          f"(halves: videos 0-{half - 1}, {half}-{len(recs) - 1})")
    for k, v in report.items():
        print(f"{k:>26} {v:6.3f} {a[k]:7.3f} {b[k]:7.3f} {abs(a[k] - b[k]):6.3f}")


if __name__ == "__main__":
    main()
