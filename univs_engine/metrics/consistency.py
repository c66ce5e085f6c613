"""Temporal consistency of video segmentations, which the per-frame and per-window metrics do not show.

* ``unlabelled_fraction``: per frame, the share of pixels a dense (VPS / VSS) output leaves unlabelled. A
  region that is labelled on the first frames and dropped later shows up here even where VPQ barely moves.
* ``track_lifetimes``: per ground-truth segment, how much of its life ONE predicted track covers. A stuff
  region present in every frame should be a single track over every frame. Frame t of segment g counts
  as covered by predicted track p when IoU(g_t, p_t) >= ``iou`` (0.5: at most one track per frame). Per
  segment: ``coverage`` = frames covered by its best track / frames where g is present, ``tracks`` =
  distinct tracks that cover at least one of its frames (the number the viewer sees it split into),
  ``missed`` = present frames that no track covers.
* ``empty_fraction``: for prompted targets (VOS / PVOS), the share of frames where the target is present
  in the ground truth and its prediction is empty.
* ``identity_switches``: per predicted track, how often it jumps from one ground-truth object to another
  (its matched object, IoU >= ``iou``, differs from the one it last matched). A track that loses its object
  should end, not carry on over a different one.
* ``false_positive_share``: for a prompted target (RefVOS), the share of its predicted pixels, pooled over
  the evaluated frames, that lie outside its ground truth; ``other_objects`` restricts it to pixels on other
  listed objects (an expression that pulls in a second object).

Pure numpy; id maps are integer arrays [T, H, W], masks bool [N, T, H, W].
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np


def unlabelled_fraction(id_maps: np.ndarray, void: int = 0) -> np.ndarray:
    """Share of the pixels of each frame whose id is ``void``: id_maps [T, H, W] -> [T] float."""
    maps = np.asarray(id_maps)
    if maps.ndim != 3:
        raise ValueError(f"id_maps must be [T, H, W], not shape {maps.shape}")
    return (maps == void).reshape(maps.shape[0], -1).mean(1)


@dataclass(frozen=True)
class Lifetime:
    """One ground-truth segment's coverage by predicted tracks (see the module docstring)."""

    segment: int
    present: int       # frames where the segment is present
    best_track: int | None
    coverage: float    # frames covered by best_track / present (0 when present == 0)
    tracks: int        # distinct predicted tracks covering at least one present frame
    missed: int        # present frames covered by no track


def track_lifetimes(gt: np.ndarray, pred: np.ndarray, segments: Iterable[int] | None = None,
                    iou: float = 0.5, gt_void: int | None = None, pred_void: int = 0) -> dict[int, Lifetime]:
    """Per ground-truth segment id of ``gt`` [T, H, W] (all ids but ``gt_void`` unless ``segments`` lists
    some), its lifetime in the predicted id maps ``pred`` [T, H, W] (id ``pred_void`` is no track)."""
    gt, pred, ids = _id_maps(gt, pred, gt, segments, gt_void)
    out = {}
    for g in ids:
        covered: dict[int, int] = {}
        present = missed = 0
        for t in range(gt.shape[0]):
            mask = gt[t] == g
            if not mask.any():
                continue
            present += 1
            hit = _matching_track(mask, pred[t], iou, pred_void)
            if hit is None:
                missed += 1
            else:
                covered[hit] = covered.get(hit, 0) + 1
        best = max(covered, key=lambda p: (covered[p], -p)) if covered else None
        out[g] = Lifetime(g, present, best, covered[best] / present if best is not None else 0.0, len(covered), missed)
    return out


def _id_maps(gt, pred, source, listed: Iterable[int] | None, void: int | None):
    """(gt, pred) as arrays of one [T, H, W] shape, and the sorted ids to follow: ``listed``, or every id of
    ``source`` (gt or pred), without ``void``."""
    gt, pred = np.asarray(gt), np.asarray(pred)
    if gt.shape != pred.shape or gt.ndim != 3:
        raise ValueError(f"gt {gt.shape} and pred {pred.shape} must both be [T, H, W]")
    ids = np.unique(np.asarray(source)) if listed is None else listed
    return gt, pred, sorted(int(i) for i in ids if i != void)


def _matching_track(mask: np.ndarray, pred: np.ndarray, iou: float, void: int) -> int | None:
    """The predicted id whose region has IoU >= iou with ``mask`` (the largest such IoU), or None."""
    ids, inter = np.unique(pred[mask], return_counts=True)
    best, best_iou = None, -1.0
    area = int(mask.sum())
    for p, n in zip(ids.tolist(), inter.tolist()):
        if p == void:
            continue
        v = n / (area + int((pred == p).sum()) - n)
        if v >= iou and v > best_iou:
            best, best_iou = int(p), v
    return best


def empty_fraction(gt_masks: np.ndarray, pred_masks: np.ndarray) -> np.ndarray:
    """Per target, the share of its present frames (any ground-truth pixel) with an empty prediction:
    gt_masks, pred_masks bool [N, T, H, W] -> [N] (0 for a target never present)."""
    gt, pred = np.asarray(gt_masks, bool), np.asarray(pred_masks, bool)
    if gt.shape != pred.shape or gt.ndim != 4:
        raise ValueError(f"gt {gt.shape} and pred {pred.shape} must both be [N, T, H, W]")
    present = gt.reshape(*gt.shape[:2], -1).any(-1)
    empty = present & ~pred.reshape(*pred.shape[:2], -1).any(-1)
    return empty.sum(1) / np.maximum(present.sum(1), 1)


def identity_switches(gt: np.ndarray, pred: np.ndarray, tracks: Iterable[int] | None = None,
                      iou: float = 0.5, gt_void: int | None = 0, pred_void: int = 0) -> dict[int, int]:
    """Per predicted track id of ``pred`` [T, H, W] (all ids but ``pred_void`` unless ``tracks`` lists
    some), the number of frames where it matches a ground-truth segment of ``gt`` [T, H, W] other than the
    one it matched last. Frames where it matches nothing do not reset what it matched."""
    gt, pred, ids = _id_maps(gt, pred, pred, tracks, pred_void)
    out = {}
    for p in ids:
        last, switches = None, 0
        for t in range(gt.shape[0]):
            mask = pred[t] == p
            if not mask.any():
                continue
            hit = _matching_track(mask, gt[t], iou, gt_void)
            if hit is not None:
                switches += last is not None and hit != last
                last = hit
        out[p] = int(switches)
    return out


def false_positive_share(gt_masks: np.ndarray, pred_masks: np.ndarray, valid: np.ndarray | None = None,
                         other_objects: np.ndarray | None = None) -> np.ndarray:
    """Per target, predicted pixels outside its ground truth / all its predicted pixels, pooled over the
    frames marked ``valid`` [N, T] (all when None): gt_masks, pred_masks bool [N, T, H, W] -> [N] (0 for
    an empty prediction). With ``other_objects`` [N, T, H, W] bool (pixels of the other objects of each
    target's video), only the predicted pixels on those count."""
    gt, pred = np.asarray(gt_masks, bool), np.asarray(pred_masks, bool)
    if gt.shape != pred.shape or gt.ndim != 4:
        raise ValueError(f"gt {gt.shape} and pred {pred.shape} must both be [N, T, H, W]")
    if valid is not None:
        pred = pred & np.asarray(valid, bool)[:, :, None, None]
    wrong = pred & ~gt
    if other_objects is not None:
        wrong &= np.asarray(other_objects, bool)
    area = pred.reshape(pred.shape[0], -1).sum(1)
    return wrong.reshape(wrong.shape[0], -1).sum(1) / np.maximum(area, 1)
