"""`univs eval`: score prediction folders/files in the DAVIS and YouTube-VIS layouts.

DAVIS: GT and predictions are folders `<root>/<video>/<frame>.png` of indexed (palette or grey) PNGs,
object ids as pixel values (0 = background). YouTube-VIS: the ground-truth annotation JSON
(videos, annotations with per-frame RLE or null) and a results JSON (video_id, category_id, score,
segmentations).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from .metrics.davis import DavisEvaluator
from .metrics.ytvis import evaluate_ytvis
from .parsing import integer, number, parse_json
from .rle import decode_coco

MAX_SIDE, MAX_FRAMES, MAX_VIDEO_PIXELS = 16384, 100_000, 1 << 31  # what a JSON file may ask to allocate


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
    """Mask AP of YouTube-VIS results against a YouTube-VIS style annotation file. A malformed file is a
    ValueError naming the file and the entry."""
    gt = _read_json(gt_json, "ground-truth file")
    sizes = _video_sizes(gt, f"ground-truth file {gt_json}")
    gts, where = [], f"ground-truth file {gt_json}"
    for k, a in enumerate(_list(gt, "annotations", where)):
        at = f"{where}: annotations[{k}]"
        vid = _video_of(a, sizes, at)
        gts.append((vid, integer(_get(a, "category_id", at), f"{at}.category_id"),
                    _masks(_get(a, "segmentations", at), sizes[vid], f"{at}.segmentations"), bool(a.get("iscrowd", 0))))
    results = _read_json(results_json, "results file")
    where = f"results file {results_json}"
    if not isinstance(results, list):
        raise ValueError(f"{where}: must be a JSON list of results, got {type(results).__name__}")
    dts = []
    for k, d in enumerate(results):
        at = f"{where}: [{k}]"
        vid = _video_of(d, sizes, at)
        dts.append((vid, integer(_get(d, "category_id", at), f"{at}.category_id"),
                    number(_get(d, "score", at), f"{at}.score"),
                    _masks(_get(d, "segmentations", at), sizes[vid], f"{at}.segmentations")))
    categories = [integer(_get(c, "id", f"{gt_json}: categories"), f"{gt_json}: categories id")
                  for c in gt.get("categories", [])] if isinstance(gt.get("categories", []), list) else None
    res = evaluate_ytvis(gts, dts, categories=categories or None, video_ids=list(sizes))
    return {k: v for k, v in res.items() if isinstance(v, float)}


def _read_json(path: str | Path, what: str):
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{what} {path} does not exist (or is not a file)")
    return parse_json(path.read_bytes(), f"{what} {path}")


def _get(d, key: str, where: str):
    if not isinstance(d, dict):
        raise ValueError(f"{where}: must be a JSON object, got {type(d).__name__}")
    if key not in d:
        raise ValueError(f"{where}: the key {key!r} is missing")
    return d[key]


def _list(d, key: str, where: str) -> list:
    value = _get(d, key, where)
    if not isinstance(value, list):
        raise ValueError(f"{where}: {key} must be a list, got {type(value).__name__}")
    return value


def _video_sizes(gt, where: str) -> dict[int, tuple[int, int, int]]:
    """video id -> (height, width, frames), each checked."""
    sizes = {}
    for k, v in enumerate(_list(gt, "videos", where)):
        at = f"{where}: videos[{k}]"
        h, w = (integer(_get(v, key, at), f"{at}.{key}", 1, MAX_SIDE) for key in ("height", "width"))
        n = v.get("length", len(v.get("file_names", []))) if isinstance(v, dict) else 0
        n = integer(n, f"{at}.length", 0, MAX_FRAMES)
        if h * w * max(n, 1) > MAX_VIDEO_PIXELS:
            raise ValueError(f"{at}: {w}x{h} x {n} frames is more than {MAX_VIDEO_PIXELS} pixels")
        sizes[integer(_get(v, "id", at), f"{at}.id")] = (h, w, n)
    return sizes


def _video_of(entry, sizes: dict, where: str) -> int:
    vid = integer(_get(entry, "video_id", where), f"{where}.video_id")
    if vid not in sizes:
        raise ValueError(f"{where}: video_id {vid} is not a video of the ground truth")
    return vid


def _masks(segs, size: tuple[int, int, int], where: str) -> np.ndarray:
    """Per-frame RLEs (or null) -> [n, H, W] bool; every RLE must have the video's frame size."""
    h, w, n = size
    if not isinstance(segs, list):
        raise ValueError(f"{where}: must be a list of per-frame RLEs, got {type(segs).__name__}")
    if not segs:
        return np.zeros((n, h, w), bool)
    if n and len(segs) != n:
        raise ValueError(f"{where}: {len(segs)} frames, but the video has {n}")
    if len(segs) * h * w > MAX_VIDEO_PIXELS:
        raise ValueError(f"{where}: {len(segs)} frames of {w}x{h} is more than {MAX_VIDEO_PIXELS} pixels")
    out = np.zeros((len(segs), h, w), bool)
    for t, rle in enumerate(segs):
        if rle:
            size = _get(rle, "size", f"{where}[{t}]")
            if not isinstance(size, list) or [integer(x, f"{where}[{t}].size", 0, MAX_SIDE) for x in size] != [h, w]:
                raise ValueError(f"{where}[{t}].size: {str(size)[:40]} differs from the video's frame size [{h}, {w}]")
            if not isinstance(_get(rle, "counts", f"{where}[{t}]"), (str, list)):
                raise ValueError(f"{where}[{t}].counts: must be an RLE string or a list of run lengths")
            try:
                out[t] = decode_coco(rle)
            except (ValueError, TypeError, OverflowError) as e:
                raise ValueError(f"{where}[{t}]: not a valid RLE ({e})") from None
    return out
