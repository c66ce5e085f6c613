"""YouTube-VIS style video instance segmentation AP / AR.

* Track IoU is spatio-temporal: sum over frames of |pred & gt| divided by the sum over frames of
  |pred | gt| (frames where both are empty add nothing; a zero union gives IoU 0).
* Matching is done per (video, category) and per IoU threshold, as in the COCO / YTVIS evaluation:
  detections sorted by score (stable), at most ``max(max_dets)`` per video, each one takes the still
  unmatched ground truth with the highest IoU >= threshold (ties -> the later ground truth); crowd
  ground truth is put last, may absorb several detections, and detections matched to it are ignored.
* Per category, detections of all videos are pooled and sorted by score; precision is made monotone
  (running maximum from the right) and read at the 101 recall points 0:0.01:1 (first detection whose
  recall reaches the point; 0 beyond the last recall). AP of a category is the mean over recall points
  and over the IoU thresholds 0.50:0.05:0.95; categories without (non-crowd) ground truth are left out;
  mAP is the mean over categories. AR@m is the final recall with at most m detections per video,
  averaged over thresholds and categories. Only the "all areas" range is evaluated.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Dict, Hashable, Iterable, List, Optional, Sequence, Tuple

import numpy as np

__all__ = [
    "GroundTruthTrack", "DetectionTrack", "spatiotemporal_iou", "match_video_category",
    "evaluate_ytvis", "IOU_THRESHOLDS", "RECALL_THRESHOLDS",
]

# the same construction as the reference tools (linspace, not arange, to avoid drift)
IOU_THRESHOLDS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
RECALL_THRESHOLDS = np.linspace(0.0, 1.0, int(np.round((1.0 - 0.0) / 0.01)) + 1, endpoint=True)


@dataclass
class GroundTruthTrack:
    video_id: Hashable
    category_id: int
    masks: np.ndarray  # bool [T, H, W]; all-False frames where the object is absent
    iscrowd: bool = False


@dataclass
class DetectionTrack:
    video_id: Hashable
    category_id: int
    score: float
    masks: np.ndarray  # bool [T, H, W]


def spatiotemporal_iou(dt_masks: np.ndarray, gt_masks: np.ndarray, chunk: int = 1 << 20) -> np.ndarray:
    """[D, G] IoU between track masks dt [D, T, H, W] and gt [G, T, H, W] (sum-over-frames IoU)."""
    d = np.asarray(dt_masks).astype(bool).reshape(len(dt_masks), -1)
    g = np.asarray(gt_masks).astype(bool).reshape(len(gt_masks), -1)
    if d.shape[1] != g.shape[1] and len(d) and len(g):
        raise ValueError("detections and ground truth must have the same [T, H, W]")
    inter = np.zeros((len(d), len(g)), np.float64)
    for s in range(0, d.shape[1], chunk):  # float64 products are exact for any realistic pixel count
        inter += d[:, s:s + chunk].astype(np.float64) @ g[:, s:s + chunk].T.astype(np.float64)
    union = d.sum(axis=1)[:, None].astype(np.float64) + g.sum(axis=1)[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def match_video_category(ious: np.ndarray, gt_ignore: np.ndarray, iscrowd: np.ndarray,
                         iou_thresholds: np.ndarray = IOU_THRESHOLDS) -> Tuple[np.ndarray, np.ndarray]:
    """Greedy matching of score-sorted detections (rows of ``ious``) to ground truth (columns, ignored last).

    Returns (dt_matched [T, D] bool, dt_ignored [T, D] bool), T = number of thresholds.
    """
    D, G = ious.shape
    thr = np.minimum(np.asarray(iou_thresholds, np.float64), 1 - 1e-10)
    Tn = len(thr)
    dt_matched = np.zeros((Tn, D), bool)
    dt_ignored = np.zeros((Tn, D), bool)
    if D == 0 or G == 0:
        return dt_matched, dt_ignored
    gt_taken = np.zeros((Tn, G), bool)
    # a non-ignored candidate always beats an ignored one; among equals the later column wins
    bonus = np.where(gt_ignore, 0.0, 2.0)
    for di in range(D):
        row = ious[di]
        ok = (~gt_taken | iscrowd[None, :]) & (row[None, :] >= thr[:, None])
        key = np.where(ok, row[None, :] + bonus[None, :], -np.inf)
        rev = key[:, ::-1]
        best = G - 1 - np.argmax(rev, axis=1)
        hit = np.isfinite(key[np.arange(Tn), best])
        t_idx = np.flatnonzero(hit)
        dt_matched[t_idx, di] = True
        dt_ignored[t_idx, di] = gt_ignore[best[t_idx]]
        gt_taken[t_idx, best[t_idx]] = True
    return dt_matched, dt_ignored


def _normalise(items: Iterable[Any], kind: str) -> List[Any]:
    out = []
    for it in items:
        if isinstance(it, (GroundTruthTrack, DetectionTrack)):
            out.append(it)
        elif isinstance(it, dict):
            out.append(GroundTruthTrack(**it) if kind == "gt" else DetectionTrack(**it))
        else:
            out.append(GroundTruthTrack(*it) if kind == "gt" else DetectionTrack(*it))
    return out


def _sort_key(x: Hashable):
    return (0, x) if isinstance(x, (int, np.integer, float)) else (1, str(x))


def evaluate_ytvis(gts: Sequence[Any], dts: Sequence[Any], *, categories: Optional[Sequence[int]] = None,
                   video_ids: Optional[Sequence[Hashable]] = None,
                   iou_thresholds: np.ndarray = IOU_THRESHOLDS, recall_thresholds: np.ndarray = RECALL_THRESHOLDS,
                   max_dets: Sequence[int] = (1, 10, 100)) -> Dict[str, Any]:
    """AP / AR of video instance tracks.

    gts: GroundTruthTrack or (video_id, category_id, masks[, iscrowd]) tuples / dicts.
    dts: DetectionTrack or (video_id, category_id, score, masks) tuples / dicts.
    categories: evaluated category ids (default: those with ground truth); video_ids: the videos of the
    data set (default: every video that has ground truth or detections).
    Returns AP, AP50, AP75, AR1, AR10, AR100 (keys follow ``max_dets``), per_category_AP, and the raw
    precision [T, R, K] (at max_dets[-1], -1 for categories without ground truth) and recall [T, K, M].
    """
    gts = _normalise(gts, "gt")
    dts = _normalise(dts, "dt")
    iou_thresholds = np.asarray(iou_thresholds, np.float64)
    recall_thresholds = np.asarray(recall_thresholds, np.float64)
    max_dets = sorted(int(m) for m in max_dets)
    if categories is None:
        categories = sorted({int(g.category_id) for g in gts})
    cats = [int(c) for c in categories]
    if video_ids is None:
        video_ids = sorted({g.video_id for g in gts} | {d.video_id for d in dts}, key=_sort_key)
    vids = list(video_ids)
    vid_set = set(vids)

    by_gt: Dict[Tuple[Hashable, int], List[GroundTruthTrack]] = defaultdict(list)
    by_dt: Dict[Tuple[Hashable, int], List[DetectionTrack]] = defaultdict(list)
    for g in gts:
        by_gt[g.video_id, int(g.category_id)].append(g)
    for d in dts:
        if d.video_id in vid_set:
            by_dt[d.video_id, int(d.category_id)].append(d)

    Tn, R, K, M = len(iou_thresholds), len(recall_thresholds), len(cats), len(max_dets)
    precision = -np.ones((Tn, R, K, M))
    recall = -np.ones((Tn, K, M))
    max_det = max_dets[-1]
    for k, cat in enumerate(cats):
        per_video = []  # (scores [D], matched [T, D], ignored [T, D], n_gt_not_ignored)
        for v in vids:
            g_list, d_list = by_gt.get((v, cat), []), by_dt.get((v, cat), [])
            if not g_list and not d_list:
                continue
            crowd = np.array([bool(g.iscrowd) for g in g_list], bool)
            g_order = np.argsort(crowd, kind="mergesort")  # ignored ground truth last
            g_sorted = [g_list[i] for i in g_order]
            crowd = crowd[g_order]
            scores = np.array([float(d.score) for d in d_list], np.float64)
            d_order = np.argsort(-scores, kind="mergesort")[:max_det]
            d_sorted = [d_list[i] for i in d_order]
            scores = scores[d_order]
            if g_sorted and d_sorted:
                ious = spatiotemporal_iou(np.stack([d.masks for d in d_sorted]), np.stack([g.masks for g in g_sorted]))
            else:
                ious = np.zeros((len(d_sorted), len(g_sorted)))
            matched, ignored = match_video_category(ious, crowd, crowd, iou_thresholds)
            per_video.append((scores, matched, ignored, int((~crowd).sum())))
        if not per_video:
            continue
        n_pos = sum(p[3] for p in per_video)
        if n_pos == 0:
            continue
        for mi, m in enumerate(max_dets):
            scores = np.concatenate([p[0][:m] for p in per_video])
            order = np.argsort(-scores, kind="mergesort")
            matched = np.concatenate([p[1][:, :m] for p in per_video], axis=1)[:, order]
            ignored = np.concatenate([p[2][:, :m] for p in per_video], axis=1)[:, order]
            tp = np.cumsum(matched & ~ignored, axis=1, dtype=np.float64)
            fp = np.cumsum(~matched & ~ignored, axis=1, dtype=np.float64)
            nd = tp.shape[1]
            for t in range(Tn):
                if nd == 0:
                    recall[t, k, mi] = 0.0
                    precision[t, :, k, mi] = 0.0
                    continue
                rc = tp[t] / n_pos
                pr = tp[t] / (tp[t] + fp[t] + np.spacing(1))
                pr = np.maximum.accumulate(pr[::-1])[::-1]
                idx = np.searchsorted(rc, recall_thresholds, side="left")
                precision[t, :, k, mi] = np.where(idx < nd, pr[np.minimum(idx, nd - 1)], 0.0)
                recall[t, k, mi] = rc[-1]

    def mean_valid(a: np.ndarray) -> float:
        a = a[a > -1]
        return float(np.mean(a)) if a.size else -1.0

    out: Dict[str, Any] = {"AP": mean_valid(precision[..., -1])}
    for thr, name in ((0.5, "AP50"), (0.75, "AP75")):
        t = np.flatnonzero(np.isclose(iou_thresholds, thr))
        out[name] = mean_valid(precision[t][..., -1]) if len(t) else -1.0
    for mi, m in enumerate(max_dets):
        out[f"AR{m}"] = mean_valid(recall[:, :, mi])
    out["per_category_AP"] = {c: mean_valid(precision[:, :, k, -1]) for k, c in enumerate(cats)
                              if (precision[:, :, k, -1] > -1).any()}
    out["precision"] = precision[..., -1]
    out["recall"] = recall
    out["categories"] = cats
    return out
