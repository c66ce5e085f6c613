"""One way to turn what callers pass as a mask (numpy array, torch tensor, nested list) into a bool ``[H, W]``."""
from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["mask_array", "binary_mask"]


def mask_array(value: Any, height: int | None = None, width: int | None = None, what: str = "mask", *,
               squeeze: bool = True) -> np.ndarray:
    """``value`` as a 2-D numpy array of its own dtype, of size ``width`` x ``height`` when they are given.

    ``squeeze``: a leading dimension of 1 (``[1, H, W]``) is dropped. Errors are ValueErrors naming ``what``.
    """
    if hasattr(value, "detach"):  # torch.Tensor, without importing torch here
        value = value.detach().cpu().numpy()
    m = np.asarray(value)
    if squeeze and m.ndim == 3 and m.shape[0] == 1:
        m = m[0]
    if m.ndim != 2:
        raise ValueError(f"{what} must be a 2-D [H, W] array, got shape {m.shape}")
    if (height is not None and m.shape[0] != height) or (width is not None and m.shape[1] != width):
        expected = f"{'?' if width is None else width}x{'?' if height is None else height}"
        raise ValueError(f"{what} has size {m.shape[1]}x{m.shape[0]}, which does not match the video frames "
                         f"({expected}); resize the mask to the frame size")
    return m


def binary_mask(value: Any, height: int | None = None, width: int | None = None, what: str = "mask", *,
                floats: float | str = 0.5, allow_nan: bool = False, squeeze: bool = True) -> np.ndarray:
    """``value`` as a bool ``[H, W]`` array (see :func:`mask_array` for the shape rules).

    bool stays as it is, integers become ``!= 0``. Float masks follow ``floats``: a number ``t`` gives
    ``> t`` (NaN refused unless ``allow_nan``, where it compares False), ``"nonzero"`` gives ``!= 0``, and
    ``"refuse"`` rejects them (the caller wants masks already thresholded). Other dtypes: ``astype(bool)``, or
    rejected with ``"refuse"``.
    """
    if isinstance(floats, str) and floats not in ("refuse", "nonzero"):
        raise ValueError(f"floats must be a threshold, 'nonzero' or 'refuse', got {floats!r}")
    m = mask_array(value, height, width, what, squeeze=squeeze)
    kind = m.dtype.kind
    if kind == "b":
        return m
    if kind in "iu":
        return m != 0
    if floats == "refuse":
        raise ValueError(f"{what} must be bool or integer 0/1, got dtype {m.dtype}; threshold float masks "
                         f"(probabilities, logits) first")
    if floats == "nonzero":
        return m != 0
    if kind != "f":
        return m.astype(bool)
    if not allow_nan and np.isnan(m).any():
        raise ValueError(f"{what} contains NaN")
    return m > floats
