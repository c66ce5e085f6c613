"""COCO-style run-length encoding of binary masks (vectorised numpy, no pycocotools).

Conventions (identical to the COCO / YouTube-VIS tools):

* A mask ``[H, W]`` is flattened in **column-major** (Fortran) order, i.e. pixel ``(y, x)`` has flat index
  ``x * H + y``.
* ``counts`` alternates run lengths of 0s and 1s and always **starts with a run of 0s** (which may be 0).
  An all-zero mask is ``[H*W]``, an all-one mask ``[0, H*W]``, a mask of zero pixels ``[0]``.
* The compressed string form (``{"size": [H, W], "counts": "<ascii>"}``) stores every count (from the fourth
  on as the difference to the count two places before) as a little-endian sequence of 5-bit groups; each group
  becomes one character ``chr(48 + group)``, plus 0x20 when more groups follow; the last group's bit 4 is the sign.

Worked example (the one in ``tests/test_rle.py``)::

    mask = [[0, 1, 1],   column-major: (0,0)=0 (1,0)=1 | (0,1)=1 (1,1)=0 | (0,2)=1 (1,2)=1
            [1, 0, 1]]   -> 0 1 1 0 1 1 -> counts [1, 2, 1, 2]
    string: "1", "2", "1", then 2 - counts[1] = 0 -> "0"   =>  "1210"
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from .masks import binary_mask

__all__ = [
    "rle_encode",
    "rle_decode",
    "rle_area",
    "rle_bbox",
    "rle_bbox_xywh",
    "rle_fg_indices",
    "counts_to_string",
    "string_to_counts",
    "encode_coco",
    "decode_coco",
    "empty_counts",
]

_COUNT_DTYPE = np.uint32


def _as_bool_mask(mask: Any) -> np.ndarray:
    """``mask`` (numpy or torch, bool or integer) as a 2-D numpy bool array; float masks are refused."""
    return binary_mask(mask, floats="refuse", squeeze=False)


def rle_encode(mask: Any) -> np.ndarray:
    """Encode a 2-D bool mask into COCO counts (uint32, column-major, first run = zeros)."""
    arr = _as_bool_mask(mask)
    flat = arr.T.reshape(-1)  # column-major flattening
    n = flat.size
    if n == 0:
        return np.zeros(1, dtype=_COUNT_DTYPE)
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate(([0], change, [n]))
    counts = np.diff(bounds)
    if flat[0]:
        counts = np.concatenate(([0], counts))
    return counts.astype(_COUNT_DTYPE, copy=False)


def _check_counts(counts: np.ndarray, height: int, width: int) -> None:
    total = int(counts.sum(dtype=np.int64))
    if total != height * width:
        raise ValueError(f"RLE counts sum to {total}, expected height*width = {height}*{width} = {height * width}")


def rle_decode(counts: Sequence[int] | np.ndarray, height: int, width: int) -> np.ndarray:
    """Decode COCO counts into a C-contiguous bool mask ``[height, width]``."""
    c = np.asarray(counts, dtype=np.int64)
    _check_counts(c, height, width)
    values = np.zeros(c.size, dtype=np.bool_)
    values[1::2] = True
    flat = np.repeat(values, c)
    return np.ascontiguousarray(flat.reshape(width, height).T)


def empty_counts(height: int, width: int) -> np.ndarray:
    """Counts of an all-zero ``[height, width]`` mask."""
    return np.array([height * width], dtype=_COUNT_DTYPE)


def rle_area(counts: Sequence[int] | np.ndarray) -> int:
    """Number of foreground pixels (sum of the odd runs); no decoding."""
    c = np.asarray(counts)
    return int(c[1::2].sum(dtype=np.int64))


def _fg_runs(counts: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start flat index and length of every non-empty foreground run."""
    c = np.asarray(counts, dtype=np.int64)
    ends = np.cumsum(c)
    starts = ends - c
    fs, fl = starts[1::2], c[1::2]
    keep = fl > 0
    return fs[keep], fl[keep]


def rle_bbox(counts: Sequence[int] | np.ndarray, height: int, width: int) -> tuple[int, int, int, int] | None:
    """Tight box ``(x0, y0, x1, y1)`` with inclusive maxima (the official UniVS convention), ``None`` if empty.

    Computed from the runs only: a run that crosses a column boundary covers rows 0..H-1 of the box.
    """
    starts, lengths = _fg_runs(counts)
    if starts.size == 0 or height == 0:
        return None
    last = starts + lengths - 1
    xs, xe = starts // height, last // height
    ys, ye = starts % height, last % height
    multi = xe > xs
    y0 = 0 if multi.any() else int(ys.min())
    y1 = height - 1 if multi.any() else int(ye.max())
    return int(xs.min()), y0, int(xe.max()), y1


def rle_bbox_xywh(counts: Sequence[int] | np.ndarray, height: int, width: int) -> list[int]:
    """COCO box ``[x, y, w, h]`` (pycocotools ``toBbox`` semantics), ``[0, 0, 0, 0]`` if empty."""
    b = rle_bbox(counts, height, width)
    if b is None:
        return [0, 0, 0, 0]
    x0, y0, x1, y1 = b
    return [x0, y0, x1 - x0 + 1, y1 - y0 + 1]


def rle_fg_indices(counts: Sequence[int] | np.ndarray) -> np.ndarray:
    """Column-major flat indices of all foreground pixels; cost O(area), not O(H*W)."""
    starts, lengths = _fg_runs(counts)
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    offsets = np.cumsum(lengths) - lengths  # position of each run inside the output
    return np.repeat(starts - offsets, lengths) + np.arange(total, dtype=np.int64)


# --------------------------------------------------------------------------------------- compressed string form
def counts_to_string(counts: Sequence[int] | np.ndarray) -> str:
    """COCO compressed string of ``counts`` (what ``pycocotools.mask.encode`` puts in ``"counts"``)."""
    c = np.asarray(counts, dtype=np.int64)
    if c.size == 0:
        return ""
    x = c.copy()
    if c.size > 3:
        x[3:] -= c[1:-2]  # from index 3 on: delta to the count two places earlier
    # number of 5-bit groups: smallest n >= 1 with -2^(5n-1) <= x < 2^(5n-1)
    n = np.ones(x.size, dtype=np.int64)
    for k in range(1, 13):
        lim = np.int64(1) << np.int64(5 * k - 1)
        n += ((x >= lim) | (x < -lim)).astype(np.int64)
    max_n = int(n.max())
    shifts = 5 * np.arange(max_n, dtype=np.int64)
    groups = (x[:, None] >> shifts[None, :]) & 0x1F
    pos = np.arange(max_n)[None, :]
    more = pos < (n[:, None] - 1)
    chars = groups + 48 + np.where(more, 0x20, 0)
    valid = pos < n[:, None]
    return chars[valid].astype(np.uint8).tobytes().decode("ascii")


def string_to_counts(s: str | bytes) -> np.ndarray:
    """Inverse of :func:`counts_to_string` (returns uint32 counts)."""
    raw = s.encode("ascii") if isinstance(s, str) else bytes(s)
    if not raw:
        return np.zeros(0, dtype=_COUNT_DTYPE)
    b = np.frombuffer(raw, dtype=np.uint8).astype(np.int64) - 48
    if (b < 0).any() or (b > 63).any():
        raise ValueError("invalid character in compressed RLE string")
    cont = (b & 0x20) != 0
    if cont[-1]:
        raise ValueError("truncated compressed RLE string (last character has the continuation bit)")
    ends = np.flatnonzero(~cont)  # index of the last char of every value
    starts = np.concatenate(([0], ends[:-1] + 1))
    group_id = np.repeat(np.arange(ends.size), ends - starts + 1)
    k = np.arange(b.size) - starts[group_id]
    vals = np.add.reduceat((b & 0x1F) << (5 * k), starts)
    neg = (b[ends] & 0x10) != 0
    nbits = 5 * (ends - starts + 1)
    vals = np.where(neg, vals - (np.int64(1) << nbits), vals)
    counts = vals.copy()
    if vals.size > 3:
        counts[3::2] = vals[1] + np.cumsum(vals[3::2])
        if vals.size > 4:
            counts[4::2] = vals[2] + np.cumsum(vals[4::2])
    if (counts < 0).any():
        raise ValueError("compressed RLE string decodes to negative counts")
    return counts.astype(_COUNT_DTYPE)


def encode_coco(mask: Any) -> dict[str, Any]:
    """Mask -> ``{"size": [H, W], "counts": str}`` (YouTube-VIS / COCO compressed RLE)."""
    arr = _as_bool_mask(mask)
    return {"size": [int(arr.shape[0]), int(arr.shape[1])], "counts": counts_to_string(rle_encode(arr))}


def decode_coco(rle: Mapping[str, Any]) -> np.ndarray:
    """``{"size": [H, W], "counts": str | list[int]}`` -> bool mask ``[H, W]`` (compressed or plain counts)."""
    h, w = (int(v) for v in rle["size"])
    counts = rle["counts"]
    c = string_to_counts(counts) if isinstance(counts, (str, bytes)) else np.asarray(counts, dtype=np.int64)
    return rle_decode(c, h, w)
