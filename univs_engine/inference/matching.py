"""Matching and suppression for the category-guided loops: per-frame box IoU, the official non-greedy NMS,
mask IoU, bi-softmax similarity with Hungarian assignment, and overlap with tracked entities."""
from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from . import core  # core.to_host: the copy point tests/test_host_syncs.py counts


def video_box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-frame IoU of xyxy boxes: a [N, T, 4], b [M, T, 4] -> [N, M, T] (union clamped >= 1e-3)."""
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    lt = torch.max(a[:, None, :, :2], b[None, :, :, :2])
    rb = torch.min(a[:, None, :, 2:], b[None, :, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (area_a[:, None] + area_b[None] - inter).clamp(min=1e-3)


def suppressed(iou: torch.Tensor, threshold: float) -> torch.Tensor:
    """Official (non-greedy) NMS on a score-sorted pairwise IoU matrix [N, N]: a candidate is dropped when
    its IoU with ANY higher-scored candidate (dropped or not) reaches the threshold -> keep mask [N]."""
    if iou.shape[0] == 0:
        return torch.zeros(0, dtype=torch.bool, device=iou.device)
    return torch.triu(iou, diagonal=1).max(0).values < threshold


def box_nms_keep(boxes: torch.Tensor, threshold: float) -> torch.Tensor:
    """boxes [N, T, 4] sorted by descending score; IoU = max over frames -> keep mask [N]."""
    return suppressed(video_box_iou(boxes, boxes).amax(-1) if boxes.shape[0] else boxes.new_zeros(0, 0),
                      threshold)


def mask_iou_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Binary masks a [N, ...], b [M, ...] -> IoU [N, M] (union clamped >= 1)."""
    a, b = a.flatten(1).float(), b.flatten(1).float()
    inter = a @ b.t()
    union = a.sum(1)[:, None] + b.sum(1)[None] - inter
    return inter / union.clamp(min=1)


def mask_nms_keep(masks: torch.Tensor, threshold: float) -> torch.Tensor:
    """masks [N, H, W] bool sorted by descending score -> keep mask [N] (non-greedy, as `suppressed`)."""
    return suppressed(mask_iou_matrix(masks, masks), threshold)


def bisoftmax_similarity(track_embds: torch.Tensor, query_embds: torch.Tensor, threshold: float,
                         columns: torch.Tensor | None = None) -> torch.Tensor:
    """Quasi-track similarity: track_embds [N, S, C] (raw decoder embeddings), query_embds [M, T, C] ->
    [N, M] = mean over the S*T frame pairs of (softmax over queries + softmax over tracks) / 2, with
    values below `threshold` set to 0. columns [M] bool: the softmax over queries runs over these queries only
    (as if the others were not given; their columns are meaningless), so a selection needs no host read."""
    N, M = track_embds.shape[0], query_embds.shape[0]
    sim = torch.einsum("ntc,mfc->nmtf", track_embds, query_embds).flatten(2)
    if N == 0 or M == 0:
        return sim.new_zeros(N, M)
    over_queries = sim if columns is None else sim.masked_fill(~columns[None, :, None], float("-inf"))
    bi = (over_queries.softmax(1) + sim.softmax(0)).mean(-1) / 2.0
    return bi.masked_fill(bi < threshold, 0.0)


def hungarian(bi: np.ndarray, columns: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hungarian assignment on 1 - bi-softmax similarity, on the host: bi [N, M] (a host copy) -> (track rows [P],
    query cols [P] (indices into `columns` when given), sim [P]) for all assigned pairs (P = min(N, len(cols)))."""
    if columns is not None:
        bi = bi[:, columns]
    if bi.size == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty.copy(), np.zeros(0, dtype=np.float32)
    rows, cols = linear_sum_assignment((1 - bi).astype(np.float64))
    return rows, cols, bi[rows, cols]


def bisoftmax_match(track_embds: torch.Tensor, query_embds: torch.Tensor, threshold: float):
    """`bisoftmax_similarity` and `hungarian` with one copy -> host tensors (track rows [P], query cols [P],
    sim [P]); a pair counts as matched when sim > threshold."""
    (bi,) = core.to_host(bisoftmax_similarity(track_embds, query_embds, threshold))
    return tuple(torch.from_numpy(np.ascontiguousarray(x)) for x in hungarian(bi))


def max_overlap(queries: torch.Tensor, tracks: torch.Tensor) -> torch.Tensor:
    """Largest per-frame IoU of each query mask with any track mask: queries [M, T, P] bool, tracks
    [N, T, P] bool -> [M] (0 when there are no tracks)."""
    if tracks.shape[0] == 0 or queries.shape[0] == 0:
        return queries.new_zeros(queries.shape[0], dtype=torch.float32)
    a, b = queries.flatten(2).float(), tracks.flatten(2).float()
    inter = torch.einsum("mtp,ntp->mnt", a, b)
    union = a.sum(-1)[:, None] + b.sum(-1)[None] - inter
    return (inter / union.clamp(min=1)).flatten(1).amax(1)
