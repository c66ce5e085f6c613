"""`univs eval`: score prediction folders/files in the DAVIS and YouTube-VIS layouts.

DAVIS: GT and predictions are folders `<root>/<video>/<frame>.png` of indexed (palette or grey) PNGs,
object ids as pixel values (0 = background). YouTube-VIS: the ground-truth annotation JSON
(videos, annotations with per-frame RLE or null) and a results JSON (video_id, category_id, score,
segmentations).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from .metrics.davis import DavisEvaluator
from .metrics.ytvis import evaluate_ytvis
from .rle import decode_coco


def _label_video(folder: Path) -> dict[str, np.ndarray]:
    return {p.stem: np.asarray(Image.open(p)) for p in sorted(folder.glob("*.png"))}


def evaluate_davis_folders(gt_root: str | Path, pred_root: str | Path, skip_first_last: bool = True) -> dict:
    """J&F over every video folder of gt_root (DAVIS semi-supervised protocol by default)."""
    gt_root, pred_root = Path(gt_root), Path(pred_root)
    videos = sorted(p for p in gt_root.iterdir() if p.is_dir())
    if not videos:
        raise ValueError(f"{gt_root} has no video folders (<root>/<video>/<frame>.png)")
    ev = DavisEvaluator(skip_first_last=skip_first_last)
    for vid in videos:
        gt = _label_video(vid)
        pred_dir = pred_root / vid.name
        if not pred_dir.is_dir():
            raise ValueError(f"predictions for video {vid.name} are missing: no folder {pred_dir}")
        pred = _label_video(pred_dir)
        missing = sorted(set(gt) - set(pred))
        if missing:
            raise ValueError(f"{pred_dir} lacks frames {missing[:5]} of the ground truth")
        names = sorted(gt)
        gt_l = np.stack([gt[n] for n in names])
        pred_l = np.stack([pred[n] for n in names])
        if gt_l.shape != pred_l.shape:
            raise ValueError(f"video {vid.name}: predicted frames are {pred_l.shape[1:]} but the ground truth is "
                             f"{gt_l.shape[1:]}")
        ids = [i for i in np.unique(gt_l) if i != 0]
        ev.add(np.stack([gt_l == i for i in ids]), np.stack([pred_l == i for i in ids]), vid.name)
    res = ev.result()
    res.pop("per_object")
    return res


def evaluate_ytvis_files(gt_json: str | Path, results_json: str | Path) -> dict:
    """Mask AP of YouTube-VIS results against a YouTube-VIS style annotation file."""
    gt = json.loads(Path(gt_json).read_text())
    dts_raw = json.loads(Path(results_json).read_text())
    sizes = {v["id"]: (v["height"], v["width"], v.get("length", len(v.get("file_names", [])))) for v in gt["videos"]}

    def stack(segs, vid):
        h, w, n = sizes[vid]
        return np.stack([decode_coco(s) if s else np.zeros((h, w), bool) for s in segs]) if segs else \
            np.zeros((n, h, w), bool)

    gts = [(a["video_id"], a["category_id"], stack(a["segmentations"], a["video_id"]), bool(a.get("iscrowd", 0)))
           for a in gt["annotations"]]
    dts = [(d["video_id"], d["category_id"], d["score"], stack(d["segmentations"], d["video_id"])) for d in dts_raw]
    res = evaluate_ytvis(gts, dts, categories=[c["id"] for c in gt.get("categories", [])] or None,
                         video_ids=list(sizes))
    return {k: v for k, v in res.items() if isinstance(v, float)}
