"""Multi-scale deformable attention (Deformable DETR), pure PyTorch.

The sampling core is the free function :func:`ms_deform_attn_core` so that a fused kernel (e.g. Triton)
can be swapped in later without touching the module or its weights: set ``module.core = fn`` on an
instance, or ``MSDeformAttn.core = staticmethod(fn)`` for all instances (same signature as the core).
Three cores give the same result: ``grid_sample`` (any device, differentiable; used wherever gradients are needed),
``gather`` (:func:`ms_deform_attn_gather`, one weighted gather of value rows: the CPU default) and ``triton``
(:mod:`.ms_deform_triton`, the CUDA default when Triton is installed). :func:`default_core` picks one per device;
``UNIVS_DEFORM_CORE=grid_sample|gather|triton`` forces one (see :func:`select_core`).
"""
from __future__ import annotations

import math
import os
from typing import Callable, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MSDeformAttn", "ms_deform_attn_core", "ms_deform_attn_gather", "select_core", "core_named",
           "default_core"]

SpatialShapes = Union[torch.Tensor, Sequence[Tuple[int, int]]]


def _shape_list(spatial_shapes: SpatialShapes) -> list[tuple[int, int]]:
    if isinstance(spatial_shapes, torch.Tensor):
        return [(int(h), int(w)) for h, w in spatial_shapes.tolist()]
    return [(int(h), int(w)) for h, w in spatial_shapes]


def ms_deform_attn_core(value: torch.Tensor, spatial_shapes: SpatialShapes, sampling_locations: torch.Tensor,
                        attention_weights: torch.Tensor) -> torch.Tensor:
    """Weighted bilinear sampling of multi-level value maps.

    Args:
        value: [B, S, heads, d] with S = sum over levels of H_l * W_l (levels concatenated row-major).
        spatial_shapes: (H_l, W_l) per level, as an [L, 2] tensor or a list of pairs.
        sampling_locations: [B, Q, heads, L, P, 2], (x, y) normalised to [0, 1] (0 = left/top edge of the
            map, 1 = right/bottom edge; pixel centres at (i + 0.5) / size).
        attention_weights: [B, Q, heads, L, P] (already softmax-normalised over L * P).

    Returns:
        [B, Q, heads * d]. Samples outside the map read zeros (bilinear, ``align_corners=False``).
    """
    b, _, heads, d = value.shape
    _, q, _, n_levels, n_points, _ = sampling_locations.shape
    shapes = _shape_list(spatial_shapes)
    values = value.split([h * w for h, w in shapes], dim=1)
    grids = 2.0 * sampling_locations - 1.0  # grid_sample convention: [-1, 1] spans the map's outer edges
    sampled = []
    for lvl, (h, w) in enumerate(shapes):
        v = values[lvl].permute(0, 2, 3, 1).reshape(b * heads, d, h, w)
        g = grids[:, :, :, lvl].transpose(1, 2).reshape(b * heads, q, n_points, 2)
        sampled.append(F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False))
    # [B*heads, d, Q, L, P] -> [B*heads, d, Q, L*P]
    stacked = torch.stack(sampled, dim=-2).flatten(-2)
    weights = attention_weights.transpose(1, 2).reshape(b * heads, 1, q, n_levels * n_points)
    out = (stacked * weights.to(stacked.dtype)).sum(-1)  # [B*heads, d, Q]
    return out.view(b, heads * d, q).transpose(1, 2).contiguous()


def ms_deform_attn_gather(value: torch.Tensor, spatial_shapes: SpatialShapes, sampling_locations: torch.Tensor,
                          attention_weights: torch.Tensor) -> torch.Tensor:
    """:func:`ms_deform_attn_core`'s arguments and result, as one weighted sum of value rows (``embedding_bag``).

    Each sample's four bilinear corners become rows (b, position, head) of ``value`` seen as [B*S*heads, d], in the
    order ``value`` already has (no copy), weighted by corner weight x attention weight (0 for a corner outside its
    map); every output row (b, query, head) sums its L*P*4 rows. ``grid_sample`` instead reads each channel of a
    [d, H, W] map at a stride of H*W and needs the [.., L, P] samples stacked before weighting: on the CPU at R50
    640p shapes this core is about 3x faster (tools/bench_speed.py --cores). Corner positions follow the official
    CUDA kernel (x * W - 0.5); ``grid_sample`` goes through [-1, 1] and differs by float rounding (~1e-5 px).
    """
    b, s_total, heads, d = value.shape
    _, q, _, n_levels, n_points, _ = sampling_locations.shape
    shapes = _shape_list(spatial_shapes)
    dev, i32 = value.device, torch.int32
    size = torch.tensor([[w, h] for h, w in shapes], dtype=sampling_locations.dtype, device=dev).view(n_levels, 1, 2)
    width = torch.tensor([w for _, w in shapes], dtype=i32, device=dev).view(n_levels, 1)
    height = torch.tensor([h for h, _ in shapes], dtype=i32, device=dev).view(n_levels, 1)
    start = torch.tensor([0] + [h * w for h, w in shapes][:-1], device=dev).cumsum(0).to(i32).view(n_levels, 1)
    # [B, Q, heads, L, P, 2] in pixels of each level; far-off locations are clamped so int32 cannot overflow
    xy = (sampling_locations * size - 0.5).clamp_(-2.0, 1e7)
    corner = xy.floor()
    frac = xy - corner
    corner = corner.to(i32)
    x0, y0, fx, fy = corner[..., 0], corner[..., 1], frac[..., 0], frac[..., 1]
    wx0 = (1 - fx) * ((x0 >= 0) & (x0 < width))
    wx1 = fx * ((x0 >= -1) & (x0 < width - 1))
    wy0 = attention_weights * (1 - fy) * ((y0 >= 0) & (y0 < height))
    wy1 = attention_weights * fy * ((y0 >= -1) & (y0 < height - 1))
    weights = torch.stack([wy0 * wx0, wy0 * wx1, wy1 * wx0, wy1 * wx1], -1)
    pos = torch.arange(b, dtype=i32, device=dev).view(b, 1, 1, 1, 1) * s_total + start + y0 * width + x0
    pos = torch.stack([pos, pos + 1, pos + width, pos + width + 1], -1)
    # an outside corner has weight 0; clamping only keeps its row index inside the table
    rows = pos * heads + torch.arange(heads, dtype=i32, device=dev).view(heads, 1, 1, 1)
    rows = rows.clamp_(0, b * s_total * heads - 1)
    bags = b * q * heads
    out = F.embedding_bag(rows.view(bags, -1), value.reshape(b * s_total * heads, d),
                          per_sample_weights=weights.view(bags, -1).to(value.dtype), mode="sum")
    return out.view(b, q, heads * d)


CORE_ENV = "UNIVS_DEFORM_CORE"  # grid_sample | gather | triton | auto (unset): the core, forced for every device


def core_named(name: str) -> Callable[..., torch.Tensor]:
    """The sampling core called `name`: "grid_sample", "gather", "triton" (needs the ``triton`` package) or
    "auto"/"default" (:func:`default_core`, the per-device choice)."""
    if name in ("auto", "default"):
        return default_core
    if name == "grid_sample":
        return ms_deform_attn_core
    if name == "gather":
        return ms_deform_attn_gather
    if name == "triton":
        from .ms_deform_triton import ms_deform_attn_triton, triton
        if triton is None:
            raise RuntimeError("the triton deformable-attention core needs the `triton` package (pip install triton)")
        return ms_deform_attn_triton
    raise ValueError(f"unknown deformable-attention core {name!r}: use grid_sample, gather, triton or auto")


def select_core(device: torch.device | str) -> Callable[..., torch.Tensor]:
    """The sampling core for tensors on `device`: the Triton kernel on CUDA when Triton is importable (falling back
    to ``grid_sample`` if the kernel cannot be built there), the gather core on the CPU, ``grid_sample`` elsewhere.
    ``UNIVS_DEFORM_CORE=grid_sample|gather|triton`` forces one (triton where it cannot run raises)."""
    name = os.environ.get(CORE_ENV, "").strip().lower() or "auto"
    kind = torch.device(device).type
    if name == "gather" or (name in ("auto", "default") and kind == "cpu"):
        return ms_deform_attn_gather
    if name == "grid_sample" or (name in ("auto", "default") and kind != "cuda"):
        return ms_deform_attn_core  # (no Triton import off CUDA)
    if name not in ("auto", "default", "triton"):
        raise ValueError(f"{CORE_ENV}={name!r}: use grid_sample, gather, triton or auto")
    from .ms_deform_triton import ms_deform_attn_triton, ms_deform_attn_triton_or_grid_sample, triton_available
    if triton_available(device):
        return ms_deform_attn_triton if name == "triton" else ms_deform_attn_triton_or_grid_sample
    if name == "triton":
        raise RuntimeError(f"{CORE_ENV}=triton: the Triton kernel needs the `triton` package and CUDA tensors (or "
                           f"TRITON_INTERPRET=1 for CPU tensors); the tensors are on {torch.device(device)}")
    return ms_deform_attn_core


def default_core(value: torch.Tensor, spatial_shapes: SpatialShapes, sampling_locations: torch.Tensor,
                 attention_weights: torch.Tensor) -> torch.Tensor:
    """``ms_deform_attn_core``'s signature and result, by the core :func:`select_core` picks for value's device;
    always ``grid_sample`` where gradients are needed (the Triton kernel is forward only)."""
    core = select_core(value.device)
    if torch.is_grad_enabled() and (value.requires_grad or sampling_locations.requires_grad
                                    or attention_weights.requires_grad):
        core = ms_deform_attn_core
    return core(value, spatial_shapes, sampling_locations, attention_weights)


class MSDeformAttn(nn.Module):
    """Deformable attention over L feature levels, ``n_points`` samples per head and level.

    State names: ``sampling_offsets``, ``attention_weights``, ``value_proj``, ``output_proj``.
    Offset outputs are laid out (head, level, point, xy); attention logits (head, level * point).
    """

    core: Callable[..., torch.Tensor] = staticmethod(default_core)

    def __init__(self, d_model: int = 256, n_levels: int = 4, n_heads: int = 8, n_points: int = 4):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        self.d_model, self.n_levels, self.n_heads, self.n_points = d_model, n_levels, n_heads, n_points
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Deformable-DETR init: zero offset weights, offset bias pointing in n_heads directions."""
        nn.init.zeros_(self.sampling_offsets.weight)
        angles = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        direction = torch.stack([angles.cos(), angles.sin()], -1)
        direction = direction / direction.abs().max(-1, keepdim=True).values
        scale = torch.arange(1, self.n_points + 1, dtype=torch.float32)
        bias = direction[:, None, None, :] * scale[None, None, :, None]  # [heads, 1, P, 2]
        self.sampling_offsets.bias.copy_(bias.expand(self.n_heads, self.n_levels, self.n_points, 2).reshape(-1))
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.zeros_(self.value_proj.bias)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.zeros_(self.output_proj.bias)

    def forward(self, query: torch.Tensor, reference_points: torch.Tensor, input_flatten: torch.Tensor,
                spatial_shapes: SpatialShapes, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """
        Args:
            query: [B, Q, C] (content + position).
            reference_points: [B, Q, L, 2] normalised (x, y), or [B, Q, L, 4] boxes (cx, cy, w, h).
            input_flatten: [B, S, C] values of all levels, concatenated.
            spatial_shapes: (H_l, W_l) per level.
            padding_mask: optional [B, S], True where the input is padding (its value is zeroed).
        Returns:
            [B, Q, C].
        """
        return self.attend(query, reference_points, self.project_values(input_flatten, padding_mask), spatial_shapes)

    def project_values(self, input_flatten: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """input_flatten [B, S, C] (padding_mask [B, S], True = padding, zeroed) -> values [B, S, heads, C/heads]."""
        value = self.value_proj(input_flatten)
        if padding_mask is not None:
            value = value.masked_fill(padding_mask[..., None], 0.0)
        return value.view(*value.shape[:2], self.n_heads, self.d_model // self.n_heads)

    def attend(self, query: torch.Tensor, reference_points: torch.Tensor, value: torch.Tensor,
               spatial_shapes: SpatialShapes) -> torch.Tensor:
        """query [B, Q, C] and its reference points over projected values [B, S, heads, C/heads] -> [B, Q, C]. Each
        query reads only its own samples, so any subset of queries gives those queries' rows of the whole."""
        b, q, _ = query.shape
        shapes = _shape_list(spatial_shapes)
        s = value.shape[1]
        if sum(h * w for h, w in shapes) != s:
            raise ValueError(f"spatial_shapes {shapes} do not add up to the {s} input tokens")
        offsets = self.sampling_offsets(query).view(b, q, self.n_heads, self.n_levels, self.n_points, 2)
        weights = self.attention_weights(query).view(b, q, self.n_heads, self.n_levels * self.n_points)
        weights = weights.softmax(-1).view(b, q, self.n_heads, self.n_levels, self.n_points)
        if reference_points.shape[-1] == 2:
            # offsets are in pixels of each level: normalise by (W_l, H_l)
            norm = torch.tensor([[w, h] for h, w in shapes], dtype=offsets.dtype, device=offsets.device)
            locations = reference_points[:, :, None, :, None, :] + offsets / norm[None, None, None, :, None, :]
        elif reference_points.shape[-1] == 4:
            locations = (reference_points[:, :, None, :, None, :2]
                         + offsets / self.n_points * reference_points[:, :, None, :, None, 2:] * 0.5)
        else:
            raise ValueError(f"reference_points must end in 2 or 4 values, got {reference_points.shape[-1]}")
        out = self.core(value, shapes, locations, weights)
        return self.output_proj(out)
