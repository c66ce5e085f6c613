"""DAVIS-style region (J) and boundary (F) measures for VOS / RefVOS.

Definitions follow the DAVIS 2017 toolkit:

* J = |pred & gt| / |pred | gt| per frame; a frame where both masks are empty scores 1.
* F: both masks are reduced to one-pixel boundary maps with the seg2bmap rule (a pixel is a boundary
  pixel when it differs from its east, south or south-east neighbour; the last row only looks east, the
  last column only looks south, the bottom-right pixel is never a boundary). A boundary pixel counts as
  matched when the other map has a boundary pixel within ``ceil(bound_th * image diagonal)`` pixels
  (dilation by a disk ``x^2 + y^2 <= r^2``; ``bound_th >= 1`` is taken as the radius itself).
  precision = matched predicted / predicted boundary pixels, recall = matched GT / GT boundary pixels;
  no predicted boundary -> precision 1, no GT boundary -> recall 1; F = 2PR / (P + R), 0 when P + R = 0.
* Per object: the mean over its evaluated frames (NaN frames are skipped). Over a data set: J-mean and
  F-mean are means over all objects, J&F is their average. Recall (fraction of frames > 0.5) and decay
  (mean of the first quarter minus mean of the last quarter of frames) are also reported.

The semi-supervised protocol of the DAVIS benchmark leaves out the first and the last frame of each
sequence (``skip_first_last=True``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import cv2
import numpy as np

__all__ = [
    "disk", "seg2bmap", "region_similarity", "boundary_f", "boundary_radius", "davis_statistics",
    "DavisResult", "davis_jf", "DavisEvaluator", "masks_from_labels",
]


def disk(radius: int) -> np.ndarray:
    """uint8 [2r+1, 2r+1] structuring element with ones where x^2 + y^2 <= r^2."""
    r = int(radius)
    L = np.arange(-r, r + 1)
    return ((L[:, None] ** 2 + L[None, :] ** 2) <= r * r).astype(np.uint8)


def seg2bmap(seg: np.ndarray) -> np.ndarray:
    """One-pixel boundary map(s) of binary mask(s) [..., H, W] (boundaries shifted half a pixel to the origin)."""
    s = np.asarray(seg).astype(bool)
    east = np.zeros_like(s)
    south = np.zeros_like(s)
    south_east = np.zeros_like(s)
    east[..., :, :-1] = s[..., :, 1:]
    south[..., :-1, :] = s[..., 1:, :]
    south_east[..., :-1, :-1] = s[..., 1:, 1:]
    b = (s ^ east) | (s ^ south) | (s ^ south_east)
    b[..., -1, :] = s[..., -1, :] ^ east[..., -1, :]
    b[..., :, -1] = s[..., :, -1] ^ south[..., :, -1]
    b[..., -1, -1] = False
    return b


def boundary_radius(height: int, width: int, bound_th: float = 0.008) -> int:
    """Matching tolerance in pixels: bound_th itself if >= 1, else ceil(bound_th * diagonal)."""
    if bound_th >= 1:
        return int(bound_th)
    return int(math.ceil(bound_th * math.hypot(height, width)))


def _dilate_stack(maps: np.ndarray, radius: int) -> np.ndarray:
    """Dilate every [H, W] map of a [N, H, W] stack with disk(radius) in one cv2 call."""
    n, h, w = maps.shape
    if radius <= 0 or n == 0:
        return maps.astype(bool)
    # frames are stacked vertically with `radius` empty rows between them, so nothing leaks across
    tall = np.zeros((n, h + radius, w), np.uint8)
    tall[:, :h] = maps
    out = cv2.dilate(tall.reshape(n * (h + radius), w), disk(radius))
    return out.reshape(n, h + radius, w)[:, :h].astype(bool)


def _as_frames(a: np.ndarray) -> Tuple[np.ndarray, bool]:
    a = np.asarray(a).astype(bool)
    if a.ndim == 2:
        return a[None], True
    if a.ndim != 3:
        raise ValueError(f"expected [H, W] or [T, H, W] masks, got shape {a.shape}")
    return a, False


def region_similarity(gt: np.ndarray, pred: np.ndarray, void: Optional[np.ndarray] = None) -> np.ndarray | float:
    """J per frame for [T, H, W] inputs (a float for [H, W]); empty-vs-empty scores 1."""
    g, single = _as_frames(gt)
    p, _ = _as_frames(pred)
    if g.shape != p.shape:
        raise ValueError(f"shape mismatch {g.shape} vs {p.shape}")
    keep = np.ones_like(g) if void is None else ~_as_frames(void)[0]
    inter = (g & p & keep).sum(axis=(1, 2))
    union = (g | p) & keep
    union = union.sum(axis=(1, 2))
    j = np.where(union == 0, 1.0, inter / np.maximum(union, 1))
    return float(j[0]) if single else j


def boundary_f(gt: np.ndarray, pred: np.ndarray, void: Optional[np.ndarray] = None,
               bound_th: float = 0.008) -> np.ndarray | float:
    """Boundary F-measure per frame for [T, H, W] inputs (a float for [H, W])."""
    g, single = _as_frames(gt)
    p, _ = _as_frames(pred)
    if g.shape != p.shape:
        raise ValueError(f"shape mismatch {g.shape} vs {p.shape}")
    if void is not None:
        keep = ~_as_frames(void)[0]
        g, p = g & keep, p & keep
    radius = boundary_radius(g.shape[1], g.shape[2], bound_th)
    gb, pb = seg2bmap(g), seg2bmap(p)
    dil = _dilate_stack(np.concatenate([gb, pb]).astype(np.uint8), radius)
    g_dil, p_dil = dil[: len(gb)], dil[len(gb):]
    n_p = pb.sum(axis=(1, 2)).astype(np.float64)
    n_g = gb.sum(axis=(1, 2)).astype(np.float64)
    p_hit = (pb & g_dil).sum(axis=(1, 2))
    g_hit = (gb & p_dil).sum(axis=(1, 2))
    precision = np.where(n_p == 0, 1.0, p_hit / np.maximum(n_p, 1))
    recall = np.where(n_g == 0, 1.0, g_hit / np.maximum(n_g, 1))
    # the toolkit's special cases: no predicted boundary -> (P, R) = (1, 0), no GT boundary -> (0, 1)
    precision = np.where((n_p > 0) & (n_g == 0), 0.0, precision)
    recall = np.where((n_p == 0) & (n_g > 0), 0.0, recall)
    denom = precision + recall
    f = np.where(denom == 0, 0.0, 2 * precision * recall / np.where(denom == 0, 1, denom))
    return float(f[0]) if single else f


def davis_statistics(per_frame: np.ndarray) -> Tuple[float, float, float]:
    """(mean, recall = fraction > 0.5, decay = mean of the first quarter - mean of the last quarter).

    NaN entries (frames not evaluated) are skipped by all three, recall included.
    """
    v = np.asarray(per_frame, dtype=np.float64)
    valid = ~np.isnan(v)
    if not valid.any():
        return float("nan"), float("nan"), float("nan")
    mean = float(np.nanmean(v))
    recall = float(np.mean(v[valid] > 0.5))
    ids = (np.round(np.linspace(1, len(v), 5) + 1e-10) - 1).astype(np.int64)
    bins = [v[ids[i]: ids[i + 1] + 1] for i in range(4)]
    with np.errstate(all="ignore"):
        first = np.nanmean(bins[0]) if (~np.isnan(bins[0])).any() else np.nan
        last = np.nanmean(bins[3]) if (~np.isnan(bins[3])).any() else np.nan
    return mean, recall, float(first - last)


@dataclass
class DavisResult:
    J_per_object: np.ndarray  # [N] mean J of each object
    F_per_object: np.ndarray  # [N]
    J_per_frame: np.ndarray  # [N, T'] (NaN where a frame was not evaluated)
    F_per_frame: np.ndarray
    J_recall: np.ndarray  # [N]
    F_recall: np.ndarray
    J_decay: np.ndarray
    F_decay: np.ndarray

    @property
    def JF_per_object(self) -> np.ndarray:
        return (self.J_per_object + self.F_per_object) / 2

    @property
    def J_mean(self) -> float:
        return float(np.nanmean(self.J_per_object)) if len(self.J_per_object) else float("nan")

    @property
    def F_mean(self) -> float:
        return float(np.nanmean(self.F_per_object)) if len(self.F_per_object) else float("nan")

    @property
    def JF(self) -> float:
        return (self.J_mean + self.F_mean) / 2

    def summary(self) -> Dict[str, float]:
        return {"J&F": self.JF, "J": self.J_mean, "F": self.F_mean,
                "J_recall": float(np.mean(self.J_recall)) if len(self.J_recall) else float("nan"),
                "F_recall": float(np.mean(self.F_recall)) if len(self.F_recall) else float("nan")}


def masks_from_labels(labels: np.ndarray, num_objects: int | None = None) -> np.ndarray:
    """Palette/label maps [T, H, W] (0 = background, k = object k) -> bool masks [N, T, H, W]."""
    labels = np.asarray(labels)
    n = int(labels.max()) if num_objects is None else int(num_objects)
    return labels[None] == np.arange(1, n + 1).reshape(-1, *([1] * labels.ndim))


def davis_jf(gt_masks: np.ndarray, pred_masks: np.ndarray, *, skip_first_last: bool = False,
             valid: Optional[np.ndarray] = None, void: Optional[np.ndarray] = None,
             bound_th: float = 0.008) -> DavisResult:
    """J and F for the objects of one video.

    gt_masks [N, T, H, W] bool; pred_masks [M, T, H, W] with M <= N (missing objects count as empty
    predictions). ``valid`` [N, T] or [T] bool marks the frames that are evaluated (others are NaN and
    skipped by the means). ``skip_first_last`` drops frames 0 and T-1 (DAVIS semi-supervised protocol).
    """
    gt = np.asarray(gt_masks).astype(bool)
    pred = np.asarray(pred_masks).astype(bool)
    if gt.ndim != 4:
        raise ValueError("gt_masks must be [N, T, H, W]")
    if pred.shape[0] > gt.shape[0]:
        raise ValueError("more predicted objects than ground-truth objects")
    if pred.shape[0] < gt.shape[0]:
        pad = np.zeros((gt.shape[0] - pred.shape[0], *gt.shape[1:]), bool)
        pred = np.concatenate([pred, pad])
    if pred.shape != gt.shape:
        raise ValueError(f"shape mismatch {pred.shape} vs {gt.shape}")
    N, T, H, W = gt.shape
    frames = np.arange(T)
    if skip_first_last:
        frames = frames[1:-1]
    gt, pred = gt[:, frames], pred[:, frames]
    vd = None if void is None else np.broadcast_to(np.asarray(void, bool)[frames], gt.shape[1:])
    Tn = len(frames)
    j = region_similarity(gt.reshape(N * Tn, H, W), pred.reshape(N * Tn, H, W),
                          None if vd is None else np.broadcast_to(vd, (N, Tn, H, W)).reshape(N * Tn, H, W))
    f = boundary_f(gt.reshape(N * Tn, H, W), pred.reshape(N * Tn, H, W),
                   None if vd is None else np.broadcast_to(vd, (N, Tn, H, W)).reshape(N * Tn, H, W), bound_th)
    j = np.asarray(j, np.float64).reshape(N, Tn)
    f = np.asarray(f, np.float64).reshape(N, Tn)
    if valid is not None:
        v = np.broadcast_to(np.asarray(valid, bool), (N, T))[:, frames]
        j = np.where(v, j, np.nan)
        f = np.where(v, f, np.nan)
    js = np.array([davis_statistics(row) for row in j]).reshape(N, 3)
    fs = np.array([davis_statistics(row) for row in f]).reshape(N, 3)
    return DavisResult(J_per_object=js[:, 0], F_per_object=fs[:, 0], J_per_frame=j, F_per_frame=f,
                       J_recall=js[:, 1], F_recall=fs[:, 1], J_decay=js[:, 2], F_decay=fs[:, 2])


@dataclass
class DavisEvaluator:
    """Accumulates objects over videos; ``result()`` reports means over all objects (DAVIS convention)."""

    skip_first_last: bool = False
    bound_th: float = 0.008
    _results: List[DavisResult] = field(default_factory=list)
    _names: List[str] = field(default_factory=list)

    def add(self, gt_masks: np.ndarray, pred_masks: np.ndarray, name: str | None = None,
            valid: Optional[np.ndarray] = None) -> DavisResult:
        res = davis_jf(gt_masks, pred_masks, skip_first_last=self.skip_first_last, valid=valid,
                       bound_th=self.bound_th)
        self._results.append(res)
        base = name if name is not None else f"video{len(self._results) - 1}"
        self._names += [f"{base}_{i + 1}" for i in range(len(res.J_per_object))]
        return res

    def result(self) -> Dict[str, object]:
        if not self._results:
            return {"J&F": float("nan"), "J": float("nan"), "F": float("nan"), "per_object": {}}
        J = np.concatenate([r.J_per_object for r in self._results])
        F = np.concatenate([r.F_per_object for r in self._results])
        Jr = np.concatenate([r.J_recall for r in self._results])
        Fr = np.concatenate([r.F_recall for r in self._results])
        Jm, Fm = float(np.nanmean(J)), float(np.nanmean(F))
        return {"J&F": (Jm + Fm) / 2, "J": Jm, "F": Fm, "J_recall": float(np.mean(Jr)),
                "F_recall": float(np.mean(Fr)),
                "per_object": {n: {"J": float(a), "F": float(b), "J&F": float((a + b) / 2)}
                               for n, a, b in zip(self._names, J, F)}}
