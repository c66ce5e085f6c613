"""Visual prompt encoder: parameter-free sampling of prompt tokens from the 1/8 decoder level.

A target given as a mask (points, boxes and scribbles are turned into masks first, see
`prompt_to_mask` in univs_engine/api.py) becomes R tokens: R feature vectors of the 1/8 map inside the mask and the 3D
positional encodings at the same cells. These tokens are what the memory pool stores.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from .position_encoding import sine_position_points

FEATURE_STRIDE = 8  # prompts are sampled from the 1/8 level; masks live at padded-input resolution

PermutationDraw = Callable[[int], torch.Tensor]
"""draw(n) -> a permutation of range(n), int64 on the CPU: the sampler's only source of randomness. One
encoding draws, in this order, one permutation per object over its point candidates (pixels, row-major; the
point is the first) and then, per object whose mask covers at least R cells, one over those cells (row-major;
the first R are kept), as the official sampler calls torch.randperm. Replaceable so a run can replay
recorded draws."""


def randperm_draw(generator: torch.Generator | None = None) -> PermutationDraw:
    """The default draw: ``torch.randperm(n)`` on ``generator`` (the global CPU generator when None)."""
    return lambda n: torch.randperm(n, generator=generator, device="cpu")


@dataclass
class PromptTokens:
    """tokens/pe [N, R, C]; points [N, 2] (x, y in [0, 1]) used for the empty-cell fallback;
    valid [N] whether the object has any pixel in the mask."""

    tokens: torch.Tensor
    pe: torch.Tensor
    points: torch.Tensor
    valid: torch.Tensor


def mask_box(mask: torch.Tensor) -> torch.Tensor:
    """Tight boxes (x0, y0, x1, y1), inclusive pixel indices, zeros when empty. mask [..., H, W] -> [..., 4]."""
    rows, cols = mask.any(-1), mask.any(-2)
    h, w = mask.shape[-2:]
    ar_h = torch.arange(h, device=mask.device)
    ar_w = torch.arange(w, device=mask.device)
    y1 = (rows * ar_h).amax(-1)
    y0 = torch.where(rows, ar_h, h).amin(-1)
    x1 = (cols * ar_w).amax(-1)
    x0 = torch.where(cols, ar_w, w).amin(-1)
    box = torch.stack([x0, y0, x1, y1], -1)
    empty = ~rows.any(-1)
    return box.masked_fill(empty[..., None], 0)


def central_points(masks: torch.Tensor, boxes: torch.Tensor, generator=None,
                   draw: PermutationDraw | None = None) -> torch.Tensor:
    """One random pixel per object near its box centre (|d| < box/4), inside the mask -> [N, 2] normalised.

    masks [N, H, W] float in [0, 1]; boxes [N, 4] normalised xyxy. Objects with no central pixel fall
    back to their most confident pixels. ``draw`` replaces ``generator`` (see PermutationDraw).
    """
    draw = draw or randperm_draw(generator)
    N, H, W = masks.shape
    dev = masks.device
    ys, xs = torch.meshgrid(torch.arange(H, device=dev), torch.arange(W, device=dev), indexing="ij")
    coords = (torch.stack([xs, ys], -1).reshape(-1, 2) + 0.5) / torch.tensor([W, H], device=dev)
    flat = masks.flatten(1)
    thr = flat.max(1).values.clamp(max=0.75)[:, None]
    binary = flat >= thr
    ctr = (boxes[:, :2] + boxes[:, 2:]) / 2
    wh = boxes[:, 2:] - boxes[:, :2]
    central = ((coords[None] - ctr[:, None]).abs() < 0.25 * wh[:, None]).all(-1) & binary
    points = []
    for i in range(N):
        pool = central[i] if central[i].any() else flat[i] >= min(0.95, float(flat[i].max()))
        cand = coords[pool]
        points.append(cand[draw(len(cand))[0].to(dev)] if len(cand)
                      else torch.full((2,), 0.5, device=dev))
    return torch.stack(points) if points else coords.new_zeros(0, 2)


def sample_mask_prompts(feat: torch.Tensor, pos: torch.Tensor, masks: torch.Tensor, num_tokens: int,
                        frame_phase: torch.Tensor, boxes: torch.Tensor | None = None,
                        generator: torch.Generator | None = None,
                        draw: PermutationDraw | None = None) -> PromptTokens:
    """Encode N object masks on one frame.

    feat/pos [C, h, w]: the frame's 1/8 decoder features (with level embedding) and their 3D encoding.
    masks [N, H, W] in [0, 1] at (up to) padded resolution, H <= 8h, W <= 8w. frame_phase: the temporal
    angle of this frame (see position_encoding.frame_phase). Cells are drawn without replacement when
    a mask covers more than `num_tokens` cells (random, so pass `generator` for reproducible runs); fewer
    cells are tiled in row-major order. ``draw`` replaces ``generator`` (see PermutationDraw).
    """
    draw = draw or randperm_draw(generator)
    C, h, w = feat.shape
    N = masks.shape[0]
    canvas = masks.new_zeros(N, h * FEATURE_STRIDE, w * FEATURE_STRIDE)
    canvas[:, : masks.shape[1], : masks.shape[2]] = masks.float()
    valid = (masks > 0.5).flatten(1).any(1)
    if boxes is None:
        size = torch.tensor([canvas.shape[2], canvas.shape[1]] * 2, device=masks.device)
        boxes = mask_box(canvas > 0.5) / size
    points = central_points(canvas, boxes, draw=draw)
    point_pe = sine_position_points(points, frame_phase.expand(N), C // 2)

    # legacy nearest sampling: the top-left pixel of each 8x8 cell
    cells = F.interpolate(canvas[:, None], size=(h, w), mode="nearest")[:, 0]
    binary = cells >= min(0.5, float(cells.max())) if N else cells > 0
    weighted = (cells * binary).flatten(1)
    mean_feat = weighted @ feat.flatten(1).t() / weighted.sum(1, keepdim=True).clamp(min=0.5)

    feat_flat, pos_flat = feat.flatten(1).t(), pos.flatten(1).t()
    tokens, pe = [], []
    for i in range(N):
        idx = torch.nonzero(binary[i].flatten()).flatten()
        if len(idx) == 0:
            tokens.append(mean_feat[i].expand(num_tokens, C))
            pe.append(point_pe[i].expand(num_tokens, C))
            continue
        if len(idx) < num_tokens:
            idx = idx.repeat(num_tokens // len(idx) + 1)[:num_tokens]
        else:
            idx = idx[draw(len(idx))[:num_tokens].to(idx.device)]
        tokens.append(feat_flat[idx])
        pe.append(pos_flat[idx])
    tok = torch.stack(tokens) if N else feat.new_zeros(0, num_tokens, C)
    pes = torch.stack(pe) if N else feat.new_zeros(0, num_tokens, C)
    keep = valid[:, None, None].to(tok.dtype)
    return PromptTokens(tok * keep, pes * keep, points, valid)
