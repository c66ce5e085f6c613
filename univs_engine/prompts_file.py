"""The ``univs segment --prompts`` file: one prompt per object, in the sidecar format of ``assets/sample.json``.

    {"objects": [{"id": 1, "category": "dancer", "expression": "the dancer in red",
                  "prompt": {"frame": 0, "points": [[x, y], ...], "negative_points": [[x, y], ...],
                             "box": [x0, y0, x1, y1],
                             "mask_rle": {"size": [H, W], "counts": [run lengths]}}}]}

Per object: ``id`` (1..255) and ``prompt.frame`` are required; the most precise cue wins: ``expression`` when
text is asked for (``--task refvos`` without ``--text``), else ``mask_rle`` (uncompressed COCO RLE of the
frame's full size, column-major), else ``points`` / ``negative_points`` / ``box`` (pixels). Other keys are
ignored. Every malformed value raises ``ValueError`` naming the file and the place in it; nothing is allocated
beyond the video's frame size.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from .parsing import integer, number, parse_json
from .prompt_checks import check_box, check_point

__all__ = ["MAX_FILE_BYTES", "MAX_OBJECTS", "MAX_POINTS", "read_prompts_file", "parse_prompts"]

MAX_FILE_BYTES = 64 << 20
MAX_OBJECTS = 255   # the ids/ palette PNGs hold ids 1..255
MAX_POINTS = 1000   # clicks per object


def read_prompts_file(path: str | os.PathLike[str], use_text: bool, num_frames: int, height: int,
                      width: int) -> list:
    """Read and validate a prompts file against the video (``num_frames``, ``height``, ``width``)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: prompts file not found" if not path.exists() else f"{path}: not a regular file")
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise ValueError(f"{path}: {size} bytes, more than the {MAX_FILE_BYTES} a prompts file may have")
    return parse_prompts(path.read_bytes(), str(path), use_text, num_frames, height, width)


def parse_prompts(text: str | bytes, where: str, use_text: bool, num_frames: int, height: int, width: int) -> list:
    """Prompts-file text -> ``univs_engine.api.Prompt`` list (``where`` names the file in errors)."""
    data = parse_json(text, where)
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a JSON object with an 'objects' list, got {_kind(data)}")
    objects = data.get("objects")
    if not isinstance(objects, list):
        raise ValueError(f"{where}: 'objects' must be a list of objects, got {_kind(objects)}")
    if len(objects) > MAX_OBJECTS:
        raise ValueError(f"{where}: {len(objects)} objects, more than the {MAX_OBJECTS} accepted")
    video = (num_frames, height, width)
    return [_object_prompt(o, f"{where}: objects[{k}]", use_text, video) for k, o in enumerate(objects)]


def _kind(value: Any) -> str:
    return "nothing" if value is None else type(value).__name__


def _member(d: dict, key: str, where: str, kind: type) -> Any:
    """``d[key]`` of type ``kind``; None when absent or null."""
    value = d.get(key)
    if value is not None and not isinstance(value, kind):
        raise ValueError(f"{where}.{key}: must be a {kind.__name__}, got {_kind(value)}")
    return value


def _required(d: dict, key: str, where: str) -> Any:
    if d.get(key) is None:
        raise ValueError(f"{where}: '{key}' is missing")
    return d[key]


def _object_prompt(o: Any, where: str, use_text: bool, video: tuple[int, int, int]):
    from .api import Prompt

    if not isinstance(o, dict):
        raise ValueError(f"{where}: must be an object, got {_kind(o)}")
    num_frames, height, width = video
    oid = integer(_required(o, "id", where), f"{where}.id", 1, MAX_OBJECTS)
    p = _required(o, "prompt", where)
    if not isinstance(p, dict):
        raise ValueError(f"{where}.prompt: must be an object, got {_kind(p)}")
    frame = integer(_required(p, "frame", f"{where}.prompt"), f"{where}.prompt.frame", 0, num_frames - 1)
    label = _member(o, "category", where, str) or ""
    expression = _member(o, "expression", where, str)
    if use_text and expression and expression.strip():
        return Prompt(oid, frame, label, text=expression)
    where = f"{where}.prompt"
    if p.get("mask_rle") is not None:  # the most precise form wins; the others describe the same target
        return Prompt(oid, frame, label, mask=_rle_mask(p["mask_rle"], f"{where}.mask_rle", height, width))
    pos = _points(p.get("points"), f"{where}.points", height, width)
    neg = _points(p.get("negative_points"), f"{where}.negative_points", height, width)
    box = None if p.get("box") is None else _box(p["box"], f"{where}.box", height, width)
    if not pos and box is None:
        raise ValueError(f"{where}: no target: give points, a box or mask_rle"
                         + (" (or an expression)" if use_text else ""))
    return Prompt(oid, frame, label, pos + neg, [1] * len(pos) + [0] * len(neg), box)


def _points(value: Any, where: str, height: int, width: int) -> list[tuple[float, float]]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ValueError(f"{where}: must be a list of [x, y] pairs, got {_kind(value)}")
    if len(value) > MAX_POINTS:
        raise ValueError(f"{where}: {len(value)} points, more than the {MAX_POINTS} accepted")
    out = []
    for k, pt in enumerate(value):
        if not isinstance(pt, list) or len(pt) != 2:
            raise ValueError(f"{where}[{k}]: must be an [x, y] pair, got {str(pt)[:40]}")
        x, y = number(pt[0], f"{where}[{k}] x"), number(pt[1], f"{where}[{k}] y")
        out.append(check_point(x, y, width, height, f"{where}[{k}]"))
    return out


def _box(value: Any, where: str, height: int, width: int) -> tuple[float, float, float, float]:
    if not isinstance(value, list) or len(value) != 4:
        raise ValueError(f"{where}: must be [x0, y0, x1, y1], got {str(value)[:60]}")
    return check_box([number(v, f"{where}[{k}]") for k, v in enumerate(value)], width, height, where)


def _rle_mask(rle: Any, where: str, height: int, width: int) -> np.ndarray:
    """Uncompressed COCO RLE of exactly the frame size -> bool mask (validated before anything is allocated)."""
    from .rle import rle_decode

    if not isinstance(rle, dict):
        raise ValueError(f"{where}: must be an object with 'size' and 'counts', got {_kind(rle)}")
    size = rle.get("size")
    if not isinstance(size, list) or len(size) != 2:
        raise ValueError(f"{where}.size: must be [height, width], got {str(size)[:40]}")
    h, w = (integer(v, f"{where}.size[{k}]", 1, 1 << 20) for k, v in enumerate(size))
    if (h, w) != (height, width):
        raise ValueError(f"{where}.size: [{h}, {w}] differs from the video frame size [{height}, {width}]")
    counts = rle.get("counts")
    if not isinstance(counts, list) or not counts or len(counts) > h * w + 1:
        raise ValueError(f"{where}.counts: must be a list of 1..{h * w + 1} run lengths (uncompressed COCO RLE)")
    if not all(type(c) is int and 0 <= c <= h * w for c in counts):
        raise ValueError(f"{where}.counts: run lengths must be whole numbers in 0..{h * w}")
    if sum(counts) != h * w:
        raise ValueError(f"{where}.counts: run lengths sum to {sum(counts)}, not height*width = {h * w}")
    return rle_decode(np.asarray(counts, dtype=np.int64), h, w)
