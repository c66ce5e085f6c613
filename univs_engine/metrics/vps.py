"""Video panoptic segmentation: VPQ (VIPSeg protocol) and STQ (Weber et al., STEP).

Panoptic input of one video: an id map [T, H, W] (``void_id`` = unlabeled / unassigned) and a mapping
segment id -> category. A segment id names one tube over the whole video (for stuff, typically one id per
class).

VPQ: for a window size k, every run of k consecutive frames (start 0 .. T-k) is one "image": tubes are
cut to the window and matched like PQ does (same category and IoU > 0.5, so matches are unique; the
union leaves out predicted pixels that fall on void ground truth). Matched pairs add their IoU and a TP
to their category, unmatched ground-truth tubes an FN, unmatched predicted tubes an FP unless more than
half of their pixels lie on void. Counts are pooled over windows and videos; PQ_k is the mean over the
categories that have any TP/FP/FN of IoU_sum / (TP + FP/2 + FN/2); VPQ is the mean of PQ_k over the
window sizes. The VIPSeg tool (and the copy in the UniVS repository) uses k in {1, 2, 4, 6, 8}, the
default here; pass ``windows=`` for another set.

STQ = sqrt(AQ * SQ).
  AQ: over ground-truth *thing* tubes g (ground-truth thing pixels with instance 0 are crowd and are left
  out of both sides), AQ = (1 / #tubes) * sum_g (1/|g|) sum_p |p & g| * IoU(p, g), where p runs over
  predicted thing tubes (any thing class; association is class-agnostic) and IoU is the tube IoU.
  Predicted tube sizes count all of their thing pixels (also those on void ground truth).
  SQ: class IoU from a confusion matrix pooled over all videos, with void ground-truth pixels removed;
  the mean runs over every class whose union is non-zero (predicted "void" on labeled ground truth
  forms its own column and counts like a class, as in the reference implementation).
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Dict, Hashable, Iterable, Mapping, Optional, Sequence, Tuple

import numpy as np

__all__ = [
    "VPQ_WINDOWS", "PQStats", "vpq_stats", "pq_from_stats", "VPQEvaluator", "STQEvaluator",
    "panoptic_to_semantic_instance", "evaluate_vps",
]

VPQ_WINDOWS: Tuple[int, ...] = (1, 2, 4, 6, 8)


@dataclass
class PQStats:
    """Per-category accumulators (index = category)."""

    num_classes: int
    tp: np.ndarray = field(init=False)
    fp: np.ndarray = field(init=False)
    fn: np.ndarray = field(init=False)
    iou: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.tp = np.zeros(self.num_classes, np.int64)
        self.fp = np.zeros(self.num_classes, np.int64)
        self.fn = np.zeros(self.num_classes, np.int64)
        self.iou = np.zeros(self.num_classes, np.float64)

    def __iadd__(self, other: "PQStats") -> "PQStats":
        self.tp += other.tp
        self.fp += other.fp
        self.fn += other.fn
        self.iou += other.iou
        return self


def _compact(ids: np.ndarray, categories: Mapping[int, int], void_id: int,
             what: str) -> Tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """(unique ids, inverse [same shape], category per unique id (-1 = void), index of void or -1)."""
    uniq, inv = np.unique(ids, return_inverse=True)
    cats = np.full(len(uniq), -1, np.int64)
    void_idx = -1
    for j, u in enumerate(uniq.tolist()):
        if u == void_id:
            void_idx = j
            continue
        if u not in categories:
            raise KeyError(f"{what} segment id {u} has no category")
        cats[j] = int(categories[u])
    return uniq, inv.reshape(ids.shape), cats, void_idx


def vpq_stats(gt_pan: np.ndarray, gt_categories: Mapping[int, int], pred_pan: np.ndarray,
              pred_categories: Mapping[int, int], window: int, num_classes: int, void_id: int = 0) -> PQStats:
    """Tube PQ counts of one video for one window size (all windows of ``window`` frames, stride 1)."""
    gt_pan = np.asarray(gt_pan)
    pred_pan = np.asarray(pred_pan)
    if gt_pan.shape != pred_pan.shape or gt_pan.ndim != 3:
        raise ValueError("gt_pan and pred_pan must both be [T, H, W]")
    stats = PQStats(num_classes)
    T = gt_pan.shape[0]
    n_win = T - window + 1
    if window < 1 or n_win <= 0:
        return stats
    _, g_inv, g_cat, g_void = _compact(gt_pan, gt_categories, void_id, "ground-truth")
    _, p_inv, p_cat, p_void = _compact(pred_pan, pred_categories, void_id, "predicted")
    if (g_cat >= num_classes).any() or (p_cat >= num_classes).any():
        raise ValueError("category outside [0, num_classes)")
    G, P = len(g_cat), len(p_cat)
    t_idx = np.arange(T).reshape(T, 1, 1)
    flat = ((t_idx * G + g_inv) * P + p_inv).ravel()
    per_frame = np.bincount(flat, minlength=T * G * P).reshape(T, G, P)
    cum = np.concatenate([np.zeros((1, G, P), np.int64), np.cumsum(per_frame, axis=0)])
    inter = (cum[window:] - cum[:n_win]).astype(np.float64)  # [W, G, P] pixel counts per window
    g_area = inter.sum(axis=2)  # [W, G]
    p_area = inter.sum(axis=1)  # [W, P]
    p_on_void = inter[:, g_void, :] if g_void >= 0 else np.zeros_like(p_area)
    g_real = g_cat >= 0
    p_real = p_cat >= 0
    union = g_area[:, :, None] + p_area[:, None, :] - inter - p_on_void[:, None, :]
    same = (g_cat[:, None] == p_cat[None, :]) & g_real[:, None] & p_real[None, :]
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(inter > 0, inter / np.where(union > 0, union, 1), 0.0)
    match = same[None] & (inter > 0) & (iou > 0.5)  # IoU > 0.5 makes matches one-to-one
    w_i, g_i, p_i = np.nonzero(match)
    cats = g_cat[g_i]
    stats.tp += np.bincount(cats, minlength=num_classes)[:num_classes]
    stats.iou += np.bincount(cats, weights=iou[w_i, g_i, p_i], minlength=num_classes)[:num_classes]
    g_matched = match.any(axis=2)
    p_matched = match.any(axis=1)
    fn = (g_area > 0) & g_real[None] & ~g_matched
    stats.fn += np.bincount(np.broadcast_to(g_cat, fn.shape)[fn], minlength=num_classes)[:num_classes]
    with np.errstate(invalid="ignore", divide="ignore"):
        mostly_void = np.where(p_area > 0, p_on_void / np.where(p_area > 0, p_area, 1), 0.0) > 0.5
    fp = (p_area > 0) & p_real[None] & ~p_matched & ~mostly_void
    stats.fp += np.bincount(np.broadcast_to(p_cat, fp.shape)[fp], minlength=num_classes)[:num_classes]
    return stats


def pq_from_stats(stats: PQStats, classes: Optional[Iterable[int]] = None) -> Dict[str, float]:
    """PQ / SQ / RQ averaged over ``classes`` (default: all) that have any TP, FP or FN."""
    idx = np.arange(stats.num_classes) if classes is None else np.asarray(sorted(set(classes)), np.int64)
    tp, fp, fn, iou = stats.tp[idx], stats.fp[idx], stats.fn[idx], stats.iou[idx]
    used = (tp + fp + fn) > 0
    n = int(used.sum())
    if n == 0:
        return {"pq": float("nan"), "sq": float("nan"), "rq": float("nan"), "n": 0}
    denom = tp + 0.5 * fp + 0.5 * fn
    pq = iou[used] / denom[used]
    sq = np.where(tp[used] > 0, iou[used] / np.maximum(tp[used], 1), 0.0)
    rq = tp[used] / denom[used]
    return {"pq": float(pq.mean()), "sq": float(sq.mean()), "rq": float(rq.mean()), "n": n}


@dataclass
class VPQEvaluator:
    num_classes: int
    thing_classes: Sequence[int]
    windows: Sequence[int] = VPQ_WINDOWS
    void_id: int = 0
    _stats: Dict[int, PQStats] = field(init=False)

    def __post_init__(self) -> None:
        self._stats = {k: PQStats(self.num_classes) for k in self.windows}

    def add(self, gt_pan: np.ndarray, gt_categories: Mapping[int, int], pred_pan: np.ndarray,
            pred_categories: Mapping[int, int]) -> None:
        for k in self.windows:
            self._stats[k] += vpq_stats(gt_pan, gt_categories, pred_pan, pred_categories, k, self.num_classes,
                                        self.void_id)

    def result(self) -> Dict[str, object]:
        things = set(int(c) for c in self.thing_classes)
        stuff = set(range(self.num_classes)) - things
        per_window = {}
        for k, st in self._stats.items():
            per_window[k] = {"all": pq_from_stats(st), "thing": pq_from_stats(st, things),
                             "stuff": pq_from_stats(st, stuff)}

        def avg(part: str) -> float:
            vals = np.array([per_window[k][part]["pq"] for k in per_window], np.float64)
            vals = vals[~np.isnan(vals)]
            return float(vals.mean()) if vals.size else float("nan")

        return {"VPQ": avg("all"), "VPQ_thing": avg("thing"), "VPQ_stuff": avg("stuff"), "per_window": per_window}


def panoptic_to_semantic_instance(pan: np.ndarray, categories: Mapping[int, int], thing_classes: Iterable[int],
                                  void_id: int = 0, ignore_label: int = 255) -> Tuple[np.ndarray, np.ndarray]:
    """Panoptic ids -> (semantic [.. ] with ``ignore_label`` on void, instance = segment id on things, else 0)."""
    pan = np.asarray(pan)
    uniq, inv = np.unique(pan, return_inverse=True)
    things = set(int(c) for c in thing_classes)
    sem_lut = np.full(len(uniq), ignore_label, np.int64)
    inst_lut = np.zeros(len(uniq), np.int64)
    for j, u in enumerate(uniq.tolist()):
        if u == void_id:
            continue
        c = int(categories[u])
        sem_lut[j] = c
        if c in things:
            inst_lut[j] = u
    inv = inv.reshape(pan.shape)
    return sem_lut[inv], inst_lut[inv]


@dataclass
class _SeqAcc:
    conf: np.ndarray
    gt: Dict[int, int] = field(default_factory=lambda: defaultdict(int))
    pred: Dict[int, int] = field(default_factory=lambda: defaultdict(int))
    inter: Dict[Tuple[int, int], int] = field(default_factory=lambda: defaultdict(int))
    frames: int = 0


def _count_into(d: Dict, keys: np.ndarray) -> None:
    u, c = np.unique(keys, return_counts=True)
    for k, n in zip(u.tolist(), c.tolist()):
        d[k] += n


@dataclass
class STQEvaluator:
    """Segmentation and Tracking Quality. Feed (semantic, instance) maps [T, H, W] per video."""

    num_classes: int
    thing_classes: Sequence[int]
    ignore_label: int = 255
    _seqs: Dict[Hashable, _SeqAcc] = field(init=False, default_factory=dict)

    _SHIFT = 1 << 32  # tube key = semantic * _SHIFT + instance

    def add(self, gt_semantic: np.ndarray, gt_instance: np.ndarray, pred_semantic: np.ndarray,
            pred_instance: np.ndarray, sequence_id: Hashable | None = None) -> None:
        gs = np.asarray(gt_semantic).astype(np.int64)
        gi = np.asarray(gt_instance).astype(np.int64)
        ps = np.asarray(pred_semantic).astype(np.int64)
        pi = np.asarray(pred_instance).astype(np.int64)
        if not (gs.shape == gi.shape == ps.shape == pi.shape):
            raise ValueError("all maps must have the same shape")
        if sequence_id is None:
            sequence_id = len(self._seqs)
        C = self.num_classes
        acc = self._seqs.get(sequence_id)
        if acc is None:
            acc = self._seqs[sequence_id] = _SeqAcc(conf=np.zeros((C + 1, C + 1), np.int64))
        acc.frames += gs.shape[0] if gs.ndim == 3 else 1
        # semantic part: the ignore label becomes the extra index C
        g_lab = np.where(gs == self.ignore_label, C, gs)
        p_lab = np.where(ps == self.ignore_label, C, ps)
        if (g_lab < 0).any() or (g_lab > C).any() or (p_lab < 0).any() or (p_lab > C).any():
            raise ValueError("semantic labels must lie in [0, num_classes) or equal ignore_label")
        acc.conf += np.bincount((g_lab * (C + 1) + p_lab).ravel(), minlength=(C + 1) ** 2).reshape(C + 1, C + 1)
        # association part (thing tubes only; ground-truth thing pixels with instance 0 are crowd)
        things = np.asarray(sorted(set(int(c) for c in self.thing_classes)), np.int64)
        g_thing = np.isin(gs, things)
        p_thing = np.isin(ps, things)
        crowd = g_thing & (gi == 0)
        g_thing &= ~crowd
        p_thing &= ~crowd
        g_key = gs * self._SHIFT + gi
        p_key = ps * self._SHIFT + pi
        _count_into(acc.gt, g_key[g_thing])
        _count_into(acc.pred, p_key[p_thing])
        both = g_thing & p_thing
        if both.any():
            pair_g, pair_p = g_key[both], p_key[both]
            u, inv = np.unique(np.stack([pair_g, pair_p], axis=1), axis=0, return_inverse=True)
            counts = np.bincount(inv.ravel(), minlength=len(u))
            for (a, b), n in zip(u.tolist(), counts.tolist()):
                acc.inter[(a, b)] += n

    def result(self) -> Dict[str, object]:
        C = self.num_classes
        aq_sum, n_tubes = [], []
        iou_seq = []
        total = np.zeros((C + 1, C + 1), np.int64)
        for acc in self._seqs.values():
            outer = 0.0
            for (g, p), tpa in acc.inter.items():
                gsz, psz = acc.gt[g], acc.pred[p]
                outer += tpa * (tpa / (gsz + psz - tpa)) / gsz
            aq_sum.append(outer)
            n_tubes.append(len(acc.gt))
            conf = acc.conf.copy()
            conf[C, :] = 0  # void ground truth is not evaluated
            total += conf
            iou_seq.append(_mean_iou_nonzero_union(conf))
        aq_sum_a = np.asarray(aq_sum, np.float64)
        n_tubes_a = np.asarray(n_tubes, np.float64)
        aq = float(aq_sum_a.sum() / max(n_tubes_a.sum(), 1e-15)) if len(aq_sum) else float("nan")
        sq = _mean_iou_nonzero_union(total)
        aq_per = aq_sum_a / np.maximum(n_tubes_a, 1e-15)
        iou_per = np.asarray(iou_seq, np.float64)
        return {"STQ": float(np.sqrt(aq * sq)), "AQ": aq, "SQ": sq,
                "STQ_per_seq": np.sqrt(aq_per * iou_per), "AQ_per_seq": aq_per, "SQ_per_seq": iou_per,
                "sequences": list(self._seqs)}


def _mean_iou_nonzero_union(conf: np.ndarray) -> float:
    tp = np.diag(conf).astype(np.float64)
    union = conf.sum(axis=0) + conf.sum(axis=1) - tp
    n = int(np.count_nonzero(union))
    if n == 0:
        return float("nan")
    return float(np.sum(tp / np.maximum(union, 1e-15)) / n)


def evaluate_vps(videos: Sequence[Tuple[np.ndarray, Mapping[int, int], np.ndarray, Mapping[int, int]]],
                 num_classes: int, thing_classes: Sequence[int], windows: Sequence[int] = VPQ_WINDOWS,
                 void_id: int = 0) -> Dict[str, object]:
    """VPQ and STQ in one call. Each video is (gt_pan, gt_categories, pred_pan, pred_categories)."""
    vpq = VPQEvaluator(num_classes, thing_classes, windows, void_id)
    stq = STQEvaluator(num_classes, thing_classes, ignore_label=num_classes)
    for gt_pan, gt_cats, pred_pan, pred_cats in videos:
        vpq.add(gt_pan, gt_cats, pred_pan, pred_cats)
        gs, gi = panoptic_to_semantic_instance(gt_pan, gt_cats, thing_classes, void_id, num_classes)
        ps, pi = panoptic_to_semantic_instance(pred_pan, pred_cats, thing_classes, void_id, num_classes)
        stq.add(gs, gi, ps, pi)
    out = vpq.result()
    out.update({k: v for k, v in stq.result().items() if k in ("STQ", "AQ", "SQ")})
    return out
