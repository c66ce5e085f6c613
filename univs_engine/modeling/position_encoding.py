"""Sine positional encodings (2D for the pixel decoder, 3D for the video mask decoder).

All encodings are computed over the full (padded) feature map, with no padding mask, as the official
model does: padding therefore changes the numbers, which is why the resize/pad rules matter.
"""
from __future__ import annotations

import math

import torch


def _interleave_sin_cos(x: torch.Tensor) -> torch.Tensor:
    """[..., D] angles -> [..., D] with sin on even and cos on odd channels (DETR layout)."""
    return torch.stack((x[..., 0::2].sin(), x[..., 1::2].cos()), dim=-1).flatten(-2)


def _inverse_frequencies(num_feats: int, temperature: float, device) -> torch.Tensor:
    i = torch.arange(num_feats, dtype=torch.float32, device=device)
    return temperature ** (2 * torch.div(i, 2, rounding_mode="floor") / num_feats)


def _normalized_grid(h: int, w: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Cumulative-sum coordinates 1..h and 1..w scaled to (0, 2pi] -> ([h, w], [h, w])."""
    eps, scale = 1e-6, 2 * math.pi
    y = torch.arange(1, h + 1, dtype=torch.float32, device=device)
    x = torch.arange(1, w + 1, dtype=torch.float32, device=device)
    y = y / (h + eps) * scale
    x = x / (w + eps) * scale
    return y[:, None].expand(h, w), x[None, :].expand(h, w)


def sine_position_2d(h: int, w: int, num_feats: int = 128, temperature: float = 10000.0,
                     device=None) -> torch.Tensor:
    """2D sine encoding of an h x w map -> [2*num_feats, h, w] (y channels first, then x)."""
    y, x = _normalized_grid(h, w, device)
    freqs = _inverse_frequencies(num_feats, temperature, device)
    pos_y = _interleave_sin_cos(y[..., None] / freqs)
    pos_x = _interleave_sin_cos(x[..., None] / freqs)
    return torch.cat((pos_y, pos_x), dim=-1).permute(2, 0, 1)


def frame_phase(frame_indices: torch.Tensor, num_frames_in_clip: int, variant: str,
                num_max_frames: int = 128) -> torch.Tensor:
    """Temporal angle per frame -> [T].

    ArbitraryT (default): absolute frame index * 2pi / num_max_frames, so any two frames of a video keep
    their true distance. FixedT: slot k of the clip -> (k+1)/T * 2pi, independent of absolute time.
    """
    scale = 2 * math.pi
    if variant == "ArbitraryT":
        return frame_indices.to(torch.float32) / num_max_frames * scale
    if variant == "FixedT":
        k = torch.arange(1, num_frames_in_clip + 1, dtype=torch.float32, device=frame_indices.device)
        return k / (num_frames_in_clip + 1e-6) * scale
    raise ValueError(f"unknown 3D position encoding variant {variant!r} (ArbitraryT or FixedT)")


def sine_position_3d(h: int, w: int, z: torch.Tensor, num_feats: int = 128,
                     temperature: float = 10000.0) -> torch.Tensor:
    """3D sine encoding for T frames with temporal angles z [T] -> [T, 2*num_feats, h, w].

    Spatial part as in 2D (num_feats each for y and x); the temporal part has 2*num_feats channels and
    is added to the concatenated spatial part.
    """
    device = z.device
    pos_yx = sine_position_2d(h, w, num_feats, temperature, device)  # [C, h, w]
    freqs_z = _inverse_frequencies(2 * num_feats, temperature, device)
    pos_z = _interleave_sin_cos(z[:, None] / freqs_z)  # [T, C]
    return pos_yx[None] + pos_z[:, :, None, None]


def sine_position_points(points_xy: torch.Tensor, z: torch.Tensor, num_feats: int = 128,
                         temperature: float = 10000.0) -> torch.Tensor:
    """3D encoding at arbitrary normalised points (x, y in [0, 1]) -> [N, 2*num_feats].

    points_xy [N, 2]; z [N] temporal angles. Used for point prompts and the empty-mask fallback.
    """
    scale = 2 * math.pi
    freqs = _inverse_frequencies(num_feats, temperature, points_xy.device)
    freqs_z = _inverse_frequencies(2 * num_feats, temperature, points_xy.device)
    pos_x = _interleave_sin_cos(points_xy[:, 0:1] * scale / freqs)
    pos_y = _interleave_sin_cos(points_xy[:, 1:2] * scale / freqs)
    pos_z = _interleave_sin_cos(z[:, None] / freqs_z)
    return torch.cat((pos_y, pos_x), dim=-1) + pos_z
