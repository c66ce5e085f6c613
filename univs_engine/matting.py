"""Edge-aware soft mattes: a hard segmentation mask refined into an alpha matte that follows the frame.

Inside a band of `band` pixels on both sides of the mask's edge, alpha is re-estimated by a colour guided
filter (He et al., "Guided Image Filtering", 2010) of the hard mask with the frame as guide: locally alpha
is an affine function of the pixel colour, so soft edges (hair, motion blur, defocus) take the image's
transition instead of a step or a blur of uniform width. Outside the band the hard mask is kept. Each frame
depends only on its own pixels and mask, so a still region gives the same alpha on every frame.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class MatteSettings:
    """band: pixels on each side of the mask edge where alpha is re-estimated (0 = the hard mask);
    smoothness: the guided filter's regulariser on [0, 1] colours (larger: smoother alpha that follows the
    image less, smaller: sharper transitions)."""

    band: int = 8
    smoothness: float = 3e-3

    def __post_init__(self):
        if not 0 <= self.band <= 256:
            raise ValueError(f"edge band: {self.band} pixels is outside 0..256")
        if not 1e-6 <= self.smoothness <= 1.0:
            raise ValueError(f"smoothness: {self.smoothness:g} is outside 1e-6..1")


def edge_band(mask: np.ndarray, width: int) -> np.ndarray:
    """Pixels within `width` of the edge of a bool mask [H, W] (both sides) -> bool [H, W]."""
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * width + 1, 2 * width + 1))
    m = mask.astype(np.uint8)
    return (cv2.dilate(m, kernel) > 0) & ~(cv2.erode(m, kernel, borderType=cv2.BORDER_REPLICATE) > 0)


def _box(x: np.ndarray, r: int) -> np.ndarray:
    return cv2.boxFilter(x, -1, (2 * r + 1, 2 * r + 1), normalize=True, borderType=cv2.BORDER_REFLECT)


def guided_filter(guide: np.ndarray, p: np.ndarray, radius: int, eps: float) -> np.ndarray:
    """Colour guided filter: guide [H, W, 3] float32 in [0, 1], p [H, W] float32 -> q [H, W] float32."""
    mean_i = [_box(guide[..., c], radius) for c in range(3)]
    mean_p = _box(p, radius)
    cov_ip = [_box(guide[..., c] * p, radius) - mean_i[c] * mean_p for c in range(3)]
    var = {(a, b): _box(guide[..., a] * guide[..., b], radius) - mean_i[a] * mean_i[b]
           for a in range(3) for b in range(a, 3)}
    sigma = np.empty(p.shape + (3, 3), np.float32)
    for (a, b), v in var.items():
        sigma[..., a, b] = sigma[..., b, a] = v + (eps if a == b else 0.0)
    coef = np.linalg.solve(sigma, np.stack(cov_ip, -1)[..., None])[..., 0]  # [H, W, 3]
    offset = mean_p - sum(coef[..., c] * mean_i[c] for c in range(3))
    return sum(_box(np.ascontiguousarray(coef[..., c]), radius) * guide[..., c] for c in range(3)) + _box(offset, radius)


def soft_matte(image: np.ndarray, mask: np.ndarray, settings: MatteSettings = MatteSettings()) -> np.ndarray:
    """Alpha [H, W] float32 in [0, 1] of a bool mask [H, W] guided by the frame [H, W, 3] uint8.

    Only the bounding box of the edge band (plus the filter's reach) is filtered, so cost follows the
    object's outline, not the frame size."""
    mask = np.asarray(mask, bool)
    alpha = mask.astype(np.float32)
    if settings.band == 0 or not mask.any() or mask.all():
        return alpha
    band = edge_band(mask, settings.band)
    ys, xs = np.nonzero(band)
    r = settings.band
    y0, y1 = max(0, ys.min() - r), min(mask.shape[0], ys.max() + r + 1)
    x0, x1 = max(0, xs.min() - r), min(mask.shape[1], xs.max() + r + 1)
    guide = image[y0:y1, x0:x1].astype(np.float32) / 255.0
    q = guided_filter(guide, alpha[y0:y1, x0:x1].copy(), r, settings.smoothness)
    crop = alpha[y0:y1, x0:x1]
    sel = band[y0:y1, x0:x1]
    crop[sel] = np.clip(q[sel], 0.0, 1.0)
    return alpha
