"""Video semantic segmentation: mIoU and video consistency (VSPW protocol).

* mIoU: a confusion matrix (rows = ground truth, columns = prediction) is accumulated over every frame
  of every video; pixels whose ground truth is outside [0, num_classes) (e.g. 255) are void and left out.
  IoU_c = TP / (row_c + col_c - TP); the mean runs over the classes that occur in the ground truth
  (a class seen only in predictions still costs the classes it was confused with).
* mVC_n: for every window of n consecutive frames, take the pixels whose ground-truth label is the same
  in all n frames; the window's score is the fraction of those pixels whose *predicted* label is also the
  same in all n frames (whatever that label is). Scores of all windows of all videos are pooled and
  averaged (windows without constant-GT pixels are skipped). Void labels are compared like any other
  label here. The VSPW tool starts windows at 0 .. T-n-1 (it never scores the window that ends on the
  last frame) and skips videos with T <= n; ``vspw_windows=True`` (default) reproduces that, ``False``
  scores all T-n+1 windows.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Sequence, Tuple

import numpy as np

__all__ = ["confusion_matrix", "iou_from_confusion", "miou_from_confusion", "window_consistency",
           "VSSEvaluator", "evaluate_vss"]


def confusion_matrix(gt: np.ndarray, pred: np.ndarray, num_classes: int) -> np.ndarray:
    """int64 [C, C] counts; ground truth outside [0, C) is void. Predictions must lie in [0, C)."""
    gt = np.asarray(gt).astype(np.int64).ravel()
    pred = np.asarray(pred).astype(np.int64).ravel()
    if gt.shape != pred.shape:
        raise ValueError("gt and pred must have the same shape")
    keep = (gt >= 0) & (gt < num_classes)
    p = pred[keep]
    if p.size and (p.min() < 0 or p.max() >= num_classes):
        raise ValueError("predicted labels must lie in [0, num_classes)")
    counts = np.bincount(gt[keep] * num_classes + p, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def iou_from_confusion(conf: np.ndarray) -> np.ndarray:
    """Per-class IoU [C] (NaN where the class is in neither ground truth nor prediction)."""
    conf = np.asarray(conf, np.float64)
    tp = np.diag(conf)
    union = conf.sum(axis=0) + conf.sum(axis=1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / union, np.nan)


def miou_from_confusion(conf: np.ndarray) -> float:
    """Mean IoU over the classes present in the ground truth (rows with pixels)."""
    present = np.asarray(conf).sum(axis=1) > 0
    if not present.any():
        return float("nan")
    return float(np.mean(iou_from_confusion(conf)[present]))


def window_consistency(gt: np.ndarray, pred: np.ndarray, n: int, vspw_windows: bool = True) -> np.ndarray:
    """Consistency score of each n-frame window of one video ([T, H, W] label maps); NaN = no constant GT."""
    gt = np.asarray(gt)
    pred = np.asarray(pred)
    if gt.shape != pred.shape or gt.ndim != 3:
        raise ValueError("gt and pred must both be [T, H, W]")
    T = gt.shape[0]
    n_windows = T - n if vspw_windows else T - n + 1
    if n < 1 or n_windows <= 0:
        return np.zeros(0)
    # label changes between consecutive frames, cumulated over time: a window [i, i+n) is constant at a
    # pixel iff no change happens between frames i and i+n-1
    zeros = np.zeros((1, *gt.shape[1:]), np.int32)
    g_changes = np.concatenate([zeros, np.cumsum(gt[1:] != gt[:-1], axis=0, dtype=np.int32)])
    p_changes = np.concatenate([zeros, np.cumsum(pred[1:] != pred[:-1], axis=0, dtype=np.int32)])
    start = np.arange(n_windows)
    g_const = g_changes[start + n - 1] == g_changes[start]
    p_const = p_changes[start + n - 1] == p_changes[start]
    denom = g_const.sum(axis=(1, 2)).astype(np.float64)
    num = (g_const & p_const).sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, num / np.where(denom > 0, denom, 1), np.nan)


@dataclass
class VSSEvaluator:
    """Accumulate videos ([T, H, W] label maps) and report mIoU, per-class IoU, pixel accuracy, mVC_n."""

    num_classes: int
    vc_windows: Sequence[int] = (8, 16)
    vspw_windows: bool = True
    conf: np.ndarray = field(init=False)
    _vc: Dict[int, List[np.ndarray]] = field(init=False)

    def __post_init__(self) -> None:
        self.conf = np.zeros((self.num_classes, self.num_classes), np.int64)
        self._vc = {n: [] for n in self.vc_windows}

    def add(self, gt: np.ndarray, pred: np.ndarray) -> None:
        gt = np.asarray(gt)
        pred = np.asarray(pred)
        if gt.ndim == 2:
            gt, pred = gt[None], pred[None]
        self.conf += confusion_matrix(gt, pred, self.num_classes)
        for n in self.vc_windows:
            self._vc[n].append(window_consistency(gt, pred, n, self.vspw_windows))

    def result(self) -> Dict[str, object]:
        out: Dict[str, object] = {
            "mIoU": miou_from_confusion(self.conf),
            "per_class_IoU": iou_from_confusion(self.conf),
            "pixel_acc": float(np.trace(self.conf) / self.conf.sum()) if self.conf.sum() else float("nan"),
        }
        for n, parts in self._vc.items():
            scores = np.concatenate(parts) if parts else np.zeros(0)
            scores = scores[~np.isnan(scores)]
            out[f"mVC{n}"] = float(scores.mean()) if scores.size else float("nan")
        return out


def evaluate_vss(videos: Sequence[Tuple[np.ndarray, np.ndarray]], num_classes: int,
                 vc_windows: Sequence[int] = (8, 16), vspw_windows: bool = True) -> Dict[str, object]:
    """One-call form: ``videos`` is a sequence of (gt [T, H, W], pred [T, H, W])."""
    ev = VSSEvaluator(num_classes, vc_windows, vspw_windows)
    for gt, pred in videos:
        ev.add(gt, pred)
    return ev.result()

