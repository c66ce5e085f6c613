"""Training losses of UniVS: Hungarian matching, point-sampled dice + BCE mask loss, sigmoid focal
classification and the ReID contrastive loss (paper, supplementary B.1).

Masks are handled clip-wise: a prediction [T, h, w] (1/4 resolution logits) is compared with a ground-truth
tube [T, H, W] (input resolution) at sampled points, all frames of the clip together (dice over the tube).
Point sampling follows Mask2Former: uniform random points for the matching cost, importance-sampled
uncertain points (oversample x3, 75 % most uncertain) for the loss.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment


# ----------------------------------------------------------------------------------------------- points
def point_sample(maps: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """maps [N, 1, H, W], coords [N, P, 2] (x, y) in [0, 1] -> values [N, P] (bilinear, zero padding)."""
    grid = 2.0 * coords[:, :, None, :] - 1.0  # [N, P, 1, 2]
    return F.grid_sample(maps, grid.to(maps.dtype), mode="bilinear", align_corners=False)[:, 0, :, 0]


def uncertain_point_coords(logits: torch.Tensor, num_points: int, oversample_ratio: float = 3.0,
                           importance_sample_ratio: float = 0.75,
                           generator: torch.Generator | None = None) -> torch.Tensor:
    """Mask2Former's importance sampling. logits [N, 1, h, w] -> coords [N, num_points, 2] in [0, 1].

    Oversample random points, keep the `importance_sample_ratio` fraction with the smallest |logit|
    (most uncertain), fill up with uniform random points."""
    n = logits.shape[0]
    dev = logits.device
    n_sampled = int(num_points * oversample_ratio)
    coords = torch.rand(n, n_sampled, 2, device=dev, generator=generator)
    with torch.no_grad():
        uncertainty = -point_sample(logits.detach(), coords).abs()
    n_uncertain = int(importance_sample_ratio * num_points)
    n_random = num_points - n_uncertain
    idx = uncertainty.topk(n_uncertain, dim=1).indices
    picked = torch.gather(coords, 1, idx[..., None].expand(-1, -1, 2))
    if n_random > 0:
        picked = torch.cat([picked, torch.rand(n, n_random, 2, device=dev, generator=generator)], dim=1)
    return picked


# ----------------------------------------------------------------------------------------------- losses
def dice_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """logits/targets [N, P] -> [N] (1 - soft dice, +1 smoothing as Mask2Former)."""
    p = logits.sigmoid()
    num = 2 * (p * targets).sum(-1)
    den = p.sum(-1) + targets.sum(-1)
    return 1 - (num + 1) / (den + 1)


def bce_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """logits/targets [N, P] -> [N] mean BCE per row."""
    return F.binary_cross_entropy_with_logits(logits, targets, reduction="none").mean(-1)


def sigmoid_focal_loss(logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25,
                       gamma: float = 2.0) -> torch.Tensor:
    """Elementwise focal loss (RetinaNet) on logits of any shape."""
    p = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss


def batch_dice_cost(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """logits [Q, P], targets [N, P] -> [Q, N] dice cost."""
    p = logits.sigmoid()
    num = 2 * p @ targets.t()
    den = p.sum(-1)[:, None] + targets.sum(-1)[None, :]
    return 1 - (num + 1) / (den + 1)


def batch_bce_cost(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """logits [Q, P], targets [N, P] -> [Q, N] mean BCE of every pair."""
    P = logits.shape[1]
    pos = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits), reduction="none")
    neg = F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits), reduction="none")
    return (pos @ targets.t() + neg @ (1 - targets).t()) / P


def focal_class_cost(logits: torch.Tensor, labels: torch.Tensor, alpha: float = 0.25,
                     gamma: float = 2.0) -> torch.Tensor:
    """logits [Q, K], labels [N] -> [Q, N] focal classification cost (Deformable-DETR style)."""
    p = logits.sigmoid()[:, labels]
    neg = (1 - alpha) * p ** gamma * -(1 - p + 1e-8).log()
    pos = alpha * (1 - p) ** gamma * -(p + 1e-8).log()
    return pos - neg


# ----------------------------------------------------------------------------------------------- matching
def sample_tube_points(pred: torch.Tensor, gt: torch.Tensor, coords: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """pred [Q, T, h, w] logits, gt [N, T, H, W] {0,1}, coords [T, P, 2] shared by all ->
    (pred points [Q, T*P], gt points [N, T*P])."""
    Q, T = pred.shape[:2]
    N = gt.shape[0]
    pp = torch.stack([point_sample(pred[:, t:t + 1], coords[t][None].expand(Q, -1, -1)) for t in range(T)], 1)
    if N:
        gp = torch.stack([point_sample(gt[:, t:t + 1].float(), coords[t][None].expand(N, -1, -1)) for t in range(T)], 1)
    else:
        gp = pred.new_zeros(0, T, coords.shape[1])
    return pp.flatten(1), gp.flatten(1)


@torch.no_grad()
def hungarian_match(pred_masks: torch.Tensor, pred_logits: torch.Tensor | None, gt_masks: torch.Tensor,
                    gt_labels: torch.Tensor, num_points: int = 1024, w_mask: float = 5.0, w_dice: float = 5.0,
                    w_class: float = 2.0, generator: torch.Generator | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Match queries to ground-truth tubes (scipy linear_sum_assignment on mask BCE + dice + class costs).

    pred_masks [Q, T, h, w] logits; pred_logits [Q, K] or None; gt_masks [N, T, H, W]; gt_labels [N].
    Returns (query indices, target indices), both int64 [min(Q, N)], sorted by query.
    """
    Q, T = pred_masks.shape[:2]
    N = gt_masks.shape[0]
    if N == 0 or Q == 0:
        empty = torch.zeros(0, dtype=torch.long)
        return empty, empty
    coords = torch.rand(T, num_points, 2, device=pred_masks.device, generator=generator)
    pp, gp = sample_tube_points(pred_masks.float(), gt_masks, coords)
    cost = w_mask * batch_bce_cost(pp, gp) + w_dice * batch_dice_cost(pp, gp)
    if pred_logits is not None and w_class:
        cost = cost + w_class * focal_class_cost(pred_logits.float(), gt_labels)
    cost = torch.nan_to_num(cost.cpu(), nan=1e6, posinf=1e6, neginf=-1e6).numpy()
    qi, ti = linear_sum_assignment(cost)
    order = np.argsort(qi)
    return torch.as_tensor(qi[order], dtype=torch.long), torch.as_tensor(ti[order], dtype=torch.long)


# ----------------------------------------------------------------------------------------------- mask loss
def mask_losses(pred: torch.Tensor, gt: torch.Tensor, num_points: int = 1024,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Point-sampled BCE and dice of paired tubes: pred [M, T, h, w] logits, gt [M, T, H, W] ->
    (bce [M], dice [M]); points are importance-sampled per (tube, frame)."""
    M, T, h, w = pred.shape
    if M == 0:
        z = pred.sum() * 0
        return z[None][:0], z[None][:0]
    flat = pred.reshape(M * T, 1, h, w).float()
    coords = uncertain_point_coords(flat, num_points, generator=generator)
    pp = point_sample(flat, coords).view(M, T * num_points)
    with torch.no_grad():
        gp = point_sample(gt.reshape(M * T, 1, *gt.shape[-2:]).float(), coords).view(M, T * num_points)
    return bce_loss(pp, gp), dice_loss(pp, gp)


# ----------------------------------------------------------------------------------------------- ReID
def reid_loss(embds: torch.Tensor, ids: torch.Tensor, groups: torch.Tensor, temperature: float = 0.1,
              aux_weight: float = 1.0) -> torch.Tensor:
    """Contrastive ReID loss (IDOL-style multi-positive contrastive + cosine auxiliary loss).

    embds [M, T, C]: query embeddings per frame; ids [M]: object id (-1 = background query: negative only);
    groups [M]: 0 learnable, 1 prompt. Tokens (query m, frame t) are compared with every token of another
    query or another frame; pairs sharing an object id are positives. Covers the paper's three terms
    L(q, q), L(q, q*), L(q*, q*). Returns a scalar (0 when no anchor has a positive).
    """
    M, T, C = embds.shape
    if M == 0:
        return embds.sum() * 0
    e = F.normalize(embds.float(), dim=-1).reshape(M * T, C)
    tid = ids.repeat_interleave(T)
    tq = torch.arange(M, device=embds.device).repeat_interleave(T)
    sim = e @ e.t()  # [MT, MT] cosine
    same_token = tq[:, None] == tq[None, :]
    same_obj = (tid[:, None] == tid[None, :]) & (tid[:, None] >= 0)
    # a query is compared with itself only in another frame
    t_idx = torch.arange(T, device=embds.device).repeat(M)
    valid = ~(same_token & (t_idx[:, None] == t_idx[None, :]))
    pos = same_obj & valid
    neg = ~same_obj & valid & (tid[:, None] >= 0)  # anchors are object tokens
    anchors = pos.any(1) & neg.any(1)
    if not anchors.any():
        aux = ((sim - pos.float()) ** 2)[valid & (tid[:, None] >= 0)]
        return aux.mean() * aux_weight if aux.numel() else embds.sum() * 0
    s = sim / temperature
    # log(1 + sum_pos sum_neg exp(s_neg - s_pos)) = log(1 + sum_neg exp(s_neg) * sum_pos exp(-s_pos))
    big = torch.finfo(s.dtype).max / 4
    lse_neg = torch.logsumexp(s.masked_fill(~neg, -big), dim=1)
    lse_pos = torch.logsumexp((-s).masked_fill(~pos, -big), dim=1)
    contrast = F.softplus(lse_neg + lse_pos)[anchors].mean()
    aux_mask = valid & (tid[:, None] >= 0)
    aux = ((sim - pos.float()) ** 2)[aux_mask].mean()
    return contrast + aux_weight * aux
