"""Visual prompt encoder: parameter-free sampling of prompt tokens from the 1/8 decoder level.

A target becomes R tokens: R feature vectors of the 1/8 map and their 3D positional encodings. These tokens
are what the memory pool stores. Three branches, as in the official sampler (`VisualPromptEncoder`):

* mask (`sample_mask_prompts`): R cells inside the mask;
* box (`sample_box_prompts`): R cells inside the box (asymmetric cell bounds, see `box_cells`);
* point (`sample_point_prompts`): the bilinear feature at the click, repeated.

Negative clicks and scribbles have no official branch: univs_engine/api.py turns them into a mask first
(`prompt_to_mask`, `refine_prompt`).
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
    """The official draw: ``torch.randperm(n)`` on ``generator`` (the global CPU generator when None)."""
    return lambda n: torch.randperm(n, generator=generator, device="cpu")


class DeviceDraw:
    """Draws that read nothing back from the device: the same distributions as the permutation draws (a point
    uniform over its pool, R distinct cells uniform over the object's cells) from uniform keys, so an encoding
    does not wait for the device to send its cell counts. Keys are drawn on ``generator`` on the CPU and moved
    to the device, so one seed gives the same draws on every device."""

    def __init__(self, generator: torch.Generator | None = None):
        self.generator = generator

    def keys(self, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
        return torch.rand(shape, generator=self.generator).to(device)


Draw = PermutationDraw | DeviceDraw


def default_draw(device: torch.device, generator: torch.Generator | None = None) -> Draw:
    """Permutation draws (the official ones) where the counts they need are already on the host -- the CPU --
    and device draws elsewhere."""
    return randperm_draw(generator) if torch.device(device).type == "cpu" else DeviceDraw(generator)


UniformDraw = Callable[[tuple[int, ...]], torch.Tensor]
"""rand(shape) -> float32 values uniform in [0, 1) on the CPU, as torch.rand: the box branch's only other
source of randomness (the offsets of its fallback points, drawn before its permutations)."""


def uniform_draw(generator: torch.Generator | None = None) -> UniformDraw:
    """The default uniform draw: ``torch.rand(shape)`` on ``generator`` (the global CPU generator when None)."""
    return lambda shape: torch.rand(shape, generator=generator, device="cpu")


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


def nth_true(flags: torch.Tensor, ranks: torch.Tensor) -> torch.Tensor:
    """Position of the (rank + 1)-th True of each row, counting row-major, without a host round trip (what
    ``nonzero()[rank]`` gives). flags [N, M] bool, ranks [N, K] int64 -> [N, K]; M where a row has too few."""
    return torch.searchsorted(flags.long().cumsum(1), ranks + 1)


def central_pool(masks: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The pixels a point prompt is drawn from: those near the box centre (|d| < box/4) inside the mask, or, for
    objects with none, the most confident pixels. masks [N, H, W] in [0, 1], boxes [N, 4] normalised xyxy ->
    pool [N, H*W] bool, pixel-centre coordinates [H*W, 2] normalised (x, y)."""
    N, H, W = masks.shape
    dev = masks.device
    ys, xs = torch.meshgrid(torch.arange(H, device=dev), torch.arange(W, device=dev), indexing="ij")
    coords = (torch.stack([xs, ys], -1).reshape(-1, 2) + 0.5) / torch.tensor([W, H], device=dev)
    flat = masks.flatten(1)
    peak = flat.max(1).values if N else flat.new_zeros(0)
    binary = flat >= peak.clamp(max=0.75)[:, None]
    ctr = (boxes[:, :2] + boxes[:, 2:]) / 2
    wh = boxes[:, 2:] - boxes[:, :2]
    central = ((coords[None] - ctr[:, None]).abs() < 0.25 * wh[:, None]).all(-1) & binary
    confident = flat >= peak.clamp(max=0.95)[:, None]
    return torch.where(central.any(1, keepdim=True), central, confident), coords


def pick_points(pool: torch.Tensor, coords: torch.Tensor, draw: Draw, counts: list[int] | None = None
                ) -> torch.Tensor:
    """One pool pixel per object: the first of a permutation of its pool (drawn only for non-empty pools, in
    object order), or a uniform one for a DeviceDraw; (0.5, 0.5) for an empty pool. pool [N, M], coords [M, 2],
    counts: the pool sizes when the caller has them on the host -> [N, 2]."""
    N, M = pool.shape
    if isinstance(draw, DeviceDraw):
        size = pool.sum(1)
        # floor(u * size) can round up to size for u just below 1 and a large pool
        rank = torch.minimum((draw.keys((N,), pool.device) * size).long(), (size - 1).clamp(min=0))
        empty = size == 0
    else:
        counts = pool.sum(1).tolist() if counts is None else counts
        zero = torch.zeros(1, dtype=torch.long)
        rank = torch.cat([draw(n)[:1].long() if n else zero for n in counts]) if N else zero[:0]
        rank, empty = rank.to(pool.device), torch.tensor([n == 0 for n in counts], dtype=torch.bool).to(pool.device)
    idx = nth_true(pool, rank[:, None])[:, 0].clamp(max=max(M - 1, 0))
    return torch.where(empty[:, None], torch.full_like(coords[:1], 0.5), coords[idx]) if N else coords.new_zeros(0, 2)


def sample_mask_prompts(feat: torch.Tensor, pos: torch.Tensor, masks: torch.Tensor, num_tokens: int,
                        frame_phase: torch.Tensor, boxes: torch.Tensor | None = None,
                        generator: torch.Generator | None = None,
                        draw: Draw | None = None) -> PromptTokens:
    """Encode N object masks on one frame.

    feat/pos [C, h, w]: the frame's 1/8 decoder features (with level embedding) and their 3D encoding.
    masks [N, H, W] in [0, 1] at (up to) padded resolution, H <= 8h, W <= 8w. frame_phase: the temporal
    angle of this frame (see position_encoding.frame_phase). Cells are drawn without replacement when
    a mask covers more than `num_tokens` cells (random, so pass `generator` for reproducible runs); fewer
    cells are tiled in row-major order. ``draw`` replaces ``generator`` (see PermutationDraw and DeviceDraw).
    With permutation draws the only device-to-host copy is one of 2N counts (the sizes the permutations are
    drawn over); with a DeviceDraw there is none.
    """
    draw = draw or default_draw(feat.device, generator)
    C, h, w = feat.shape
    N = masks.shape[0]
    canvas = masks.new_zeros(N, h * FEATURE_STRIDE, w * FEATURE_STRIDE)
    canvas[:, : masks.shape[1], : masks.shape[2]] = masks.float()
    valid = (masks > 0.5).flatten(1).any(1)
    if boxes is None:
        size = torch.tensor([canvas.shape[2], canvas.shape[1]] * 2, device=masks.device)
        boxes = mask_box(canvas > 0.5) / size
    pool, coords = central_pool(canvas, boxes)

    # legacy nearest sampling: the top-left pixel of each 8x8 cell
    cells = F.interpolate(canvas[:, None], size=(h, w), mode="nearest")[:, 0]
    binary = cells >= cells.max().clamp(max=0.5) if N else cells > 0
    point_counts = cell_counts = None
    if not isinstance(draw, DeviceDraw):  # the permutations' sizes, in one copy
        point_counts, cell_counts = torch.stack([pool.sum(1), binary.flatten(1).sum(1)]).tolist()
    points = pick_points(pool, coords, draw, point_counts)
    point_pe = sine_position_points(points, frame_phase.expand(N), C // 2)
    weighted = (cells * binary).flatten(1)
    mean_feat = weighted @ feat.flatten(1).t() / weighted.sum(1, keepdim=True).clamp(min=0.5)

    tok, pes = dense_tokens(feat, pos, binary, mean_feat, point_pe, num_tokens, draw, cell_counts)
    keep = valid[:, None, None].to(tok.dtype)
    return PromptTokens(tok * keep, pes * keep, points, valid)


def token_ranks(counts: list[int], num_tokens: int, draw: PermutationDraw) -> torch.Tensor:
    """Which of its cells (rank in row-major order) each of an object's R tokens takes: R drawn without
    replacement when it has at least R cells, else its cells tiled; 0 when it has none. -> [N, R] on the CPU."""
    rows = []
    for n in counts:
        if n >= num_tokens:
            rows.append(draw(n)[:num_tokens])
        else:
            rows.append(torch.arange(num_tokens) % max(n, 1))
    return torch.stack(rows) if rows else torch.zeros(0, num_tokens, dtype=torch.long)


def token_cells(flags: torch.Tensor, num_tokens: int, draw: Draw, counts: list[int] | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """The cell (flat index) each of an object's R tokens takes, as `token_ranks` says, and which objects cover
    no cell. flags [N, M] bool -> [N, R], [N] bool. A DeviceDraw takes the R cells with the largest uniform keys
    (R distinct cells, uniform) and computes the tiling on the device."""
    N, M = flags.shape
    if isinstance(draw, DeviceDraw):
        size = flags.sum(1)
        tiled = nth_true(flags, torch.arange(num_tokens, device=flags.device) % size.clamp(min=1)[:, None])
        if M >= num_tokens:
            keys = draw.keys((N, M), flags.device).masked_fill(~flags, -1.0)
            tiled = torch.where((size >= num_tokens)[:, None], keys.topk(num_tokens, 1).indices, tiled)
        return tiled.clamp(max=max(M - 1, 0)), size == 0
    counts = flags.sum(1).tolist() if counts is None else counts
    ranks = token_ranks(counts, num_tokens, draw).to(flags.device)
    empty = torch.tensor([n == 0 for n in counts], dtype=torch.bool).to(flags.device)
    return nth_true(flags, ranks).clamp(max=max(M - 1, 0)), empty


def dense_tokens(feat: torch.Tensor, pos: torch.Tensor, cells: torch.Tensor, fallback_feat: torch.Tensor,
                 fallback_pe: torch.Tensor, num_tokens: int, draw: Draw,
                 counts: list[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """R tokens per object from the cells it covers (the official get_dense_features).

    feat/pos [C, h, w]; cells [N, h, w] bool; fallback_feat/fallback_pe [N, C] fill all R tokens of an object
    covering no cell. More than R cells: R drawn without replacement (draw(n)[:R] over the cells in row-major
    order); fewer: the row-major cell list tiled to R (see `token_cells`). counts: the objects' cell counts when
    the caller has them on the host already. -> tokens, pe [N, R, C].
    """
    N = cells.shape[0]
    idx, empty = token_cells(cells.flatten(1), num_tokens, draw, counts)
    empty = empty.view(N, 1, 1)
    feat_flat, pos_flat = feat.flatten(1).t(), pos.flatten(1).t()
    tokens = torch.where(empty, fallback_feat[:, None].to(feat.dtype), feat_flat[idx])
    pe = torch.where(empty, fallback_pe[:, None].to(pos.dtype), pos_flat[idx])
    return tokens, pe


def box_cells(boxes: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """The 1/8 cells a box covers, with the official bounds: cell (y, x) is inside box (x0, y0, x1, y1) (normalised
    by the padded input size) when floor(x0 w) < x <= ceil(x1 w) and floor(y0 h) < y <= ceil(y1 h) -- asymmetric:
    the cell holding the left/top edge is out, the one past the right/bottom edge in. boxes [N, 4] -> bool [N, h, w].
    """
    scaled = boxes.float() * torch.tensor([w, h, w, h], dtype=torch.float32, device=boxes.device)
    lo, hi = scaled[:, :2].floor(), scaled[:, 2:].ceil()
    xs = torch.arange(w, device=boxes.device)
    ys = torch.arange(h, device=boxes.device)
    in_x = (xs > lo[:, 0:1]) & (xs <= hi[:, 0:1])
    in_y = (ys > lo[:, 1:2]) & (ys <= hi[:, 1:2])
    return in_y[:, :, None] & in_x[:, None, :]


def bilinear_sample(feat: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Features at normalised points (x, y in [0, 1]), bilinear with align_corners False and zero padding, as
    detectron2's point_sample. feat [C, h, w], points [K, 2] -> [K, C]."""
    grid = (2 * points - 1).to(feat.dtype).view(1, -1, 1, 2)
    return F.grid_sample(feat[None], grid, mode="bilinear", align_corners=False)[0, :, :, 0].t()


def sample_box_prompts(feat: torch.Tensor, pos: torch.Tensor, boxes: torch.Tensor, num_tokens: int,
                       frame_phase: torch.Tensor, generator: torch.Generator | None = None,
                       draw: Draw | None = None, rand: UniformDraw | None = None) -> PromptTokens:
    """Encode N boxes on one frame (the official get_box_prompt at inference).

    feat/pos [C, h, w] as for masks; boxes [N, 4] xyxy normalised by the padded input size (8w x 8h). Tokens: R
    cells of `box_cells` (drawn / tiled as in `dense_tokens`) with the map's encodings there. A box covering no
    cell (it lies in the last cell row or column) fills its R tokens with the bilinear feature at a point drawn
    uniformly within +-box/4 of its centre, and that point's encoding. Draws: rand((N, 2)) for every box first
    (the official code draws these points even when unused), then the permutations; ``draw``/``rand`` replace
    ``generator``. The official mean feature inside the box only reaches the tokens when dense sampling is off,
    which no inference path does, so it is not computed. Boxes with zero width or height give zero tokens.
    """
    draw = draw or default_draw(feat.device, generator)
    rand = rand or uniform_draw(generator)
    C, h, w = feat.shape
    N = boxes.shape[0]
    boxes = boxes.float()
    centre, wh = (boxes[:, :2] + boxes[:, 2:]) / 2, boxes[:, 2:] - boxes[:, :2]
    offsets = rand((N, 2)).to(boxes.device) * 2 - 1
    points = centre + offsets * 0.25 * wh
    point_pe = sine_position_points(points, frame_phase.expand(N), C // 2)
    cells = box_cells(boxes, h, w)
    point_feat = bilinear_sample(feat, points) if N else feat.new_zeros(0, C)
    tok, pes = dense_tokens(feat, pos, cells, point_feat, point_pe, num_tokens, draw)
    valid = (wh > 0).all(-1)
    keep = valid[:, None, None].to(tok.dtype)
    return PromptTokens(tok * keep, pes * keep, points, valid)


def sample_point_prompts(feat: torch.Tensor, points: list[torch.Tensor], num_tokens: int,
                         frame_phase: torch.Tensor) -> PromptTokens:
    """Encode N targets given as clicks on one frame (the official get_point_prompt; no randomness).

    feat [C, h, w] as for masks; points: per target [K, 2] clicks (x, y) normalised by the padded input size.
    A click's token is the bilinear feature at it (`bilinear_sample`), its encoding the 3D sine encoding at the
    point (`sine_position_points`, as forward_points_with_size). One click fills all R tokens (the official branch);
    K clicks of one target are tiled over the R tokens in click order (token j from click j mod K), as the dense
    sampler tiles a short cell list -- the official code has one point per target only. Clicks outside [0, 1] are
    dropped; a target with none left gets zero tokens. -> tokens/pe [N, R, C], points [N, 2] (first click).
    """
    C = feat.shape[0]
    tokens, pe, first, valid = [], [], [], []
    for xy in points:
        xy = xy.float().reshape(-1, 2).to(feat.device)
        xy = xy[((xy >= 0) & (xy <= 1)).all(-1)]
        if len(xy) == 0:
            tokens.append(feat.new_zeros(num_tokens, C))
            pe.append(feat.new_zeros(num_tokens, C))
            first.append(feat.new_zeros(2, dtype=torch.float32))
            valid.append(False)
            continue
        idx = torch.arange(num_tokens, device=feat.device) % len(xy)
        tokens.append(bilinear_sample(feat, xy)[idx])
        pe.append(sine_position_points(xy, frame_phase.expand(len(xy)), C // 2).to(feat.dtype)[idx])
        first.append(xy[0])
        valid.append(True)
    if not tokens:
        empty = feat.new_zeros(0, num_tokens, C)
        return PromptTokens(empty, empty.clone(), feat.new_zeros(0, 2), torch.zeros(0, dtype=torch.bool))
    return PromptTokens(torch.stack(tokens), torch.stack(pe), torch.stack(first),
                        torch.tensor(valid, device=feat.device))


@dataclass
class ShapePrompt:
    """A target given on one frame as a box or as positive clicks (exactly one), in coordinates normalised by the
    padded input size: box [4] xyxy, or points [K, 2] (x, y)."""

    box: torch.Tensor | None = None
    points: torch.Tensor | None = None

    def __post_init__(self):
        if (self.box is None) == (self.points is None):
            raise ValueError("a ShapePrompt is a box or clicks: give exactly one of box and points")


def sample_shape_prompts(feat: torch.Tensor, pos: torch.Tensor, shapes: list[ShapePrompt], num_tokens: int,
                         frame_phase: torch.Tensor, generator: torch.Generator | None = None,
                         draw: Draw | None = None, rand: UniformDraw | None = None) -> PromptTokens:
    """Encode N targets given as boxes or clicks on one frame: the boxes through `sample_box_prompts` (one call, so
    the draws come in the official order), the clicks through `sample_point_prompts`. -> PromptTokens, rows in
    the order of `shapes`."""
    C, N = feat.shape[0], len(shapes)
    out = PromptTokens(feat.new_zeros(N, num_tokens, C), feat.new_zeros(N, num_tokens, C),
                       feat.new_zeros(N, 2, dtype=torch.float32), torch.zeros(N, dtype=torch.bool, device=feat.device))
    is_box = [s.box is not None for s in shapes]
    rows = [k for k in range(N) if is_box[k]], [k for k in range(N) if not is_box[k]]
    encs = []
    if rows[0]:
        boxes = torch.stack([shapes[k].box for k in rows[0]]).to(feat.device)
        encs.append((rows[0], sample_box_prompts(feat, pos, boxes, num_tokens, frame_phase, generator, draw, rand)))
    if rows[1]:
        encs.append((rows[1], sample_point_prompts(feat, [shapes[k].points for k in rows[1]], num_tokens,
                                                   frame_phase)))
    for r, enc in encs:
        out.tokens[r], out.pe[r] = enc.tokens.to(out.tokens.dtype), enc.pe.to(out.pe.dtype)
        out.points[r], out.valid[r] = enc.points.float(), enc.valid.to(out.valid.device)
    return out
