"""Plain conversion helpers between ComfyUI data formats and the UniVS engine.

Nothing here imports ComfyUI, so the functions are unit-tested directly. Conventions (ComfyUI):

* IMAGE: ``torch.Tensor [B, H, W, C]`` float32 in 0..1, channel last (C = 3; 1 or 4 are accepted and handled).
* MASK:  ``torch.Tensor [B, H, W]`` float32 in 0..1 (a squeezed ``[H, W]`` is accepted).
* Points: a STRING holding JSON ``[{"x": .., "y": ..}, ...]`` in pixels (KJNodes PointsEditor / core SAM3 format).
* BOUNDING_BOX (core): ``{"x", "y", "width", "height"}`` in pixels, a list of them, or a per-frame list of lists.
* BBOX (community): ``(x0, y0, x1, y1)`` pixel tuples (KJNodes, SAM2 pack, Florence2), or a list of them.

Every error is a ``ValueError`` whose message names the node input it came from; the text parsers are bounded
(JSON nesting, number range, list lengths, range expansion) through ``univs_engine.parsing``.
"""
from __future__ import annotations

import re
from typing import Any, Sequence

import numpy as np
import torch

from univs_engine.masks import binary_mask
from univs_engine.parsing import int_range, number, parse_json

__all__ = [
    "image_to_uint8",
    "image_frame_getter",
    "image_frame_to_uint8",
    "uint8_to_image",
    "normalize_mask",
    "mask_frame_to_bool",
    "bool_masks_to_tensor",
    "parse_points",
    "parse_boxes",
    "parse_vocabulary",
    "parse_expressions",
    "parse_int_list",
    "image_batch_source",
]


# =============================================================================================== images
def _check_image(image: Any, name: str) -> torch.Tensor:
    if isinstance(image, np.ndarray):
        image = torch.from_numpy(image)
    if not isinstance(image, torch.Tensor):
        raise ValueError(f"{name}: expected an IMAGE tensor [B, H, W, C], got {type(image).__name__}")
    if image.dim() == 3:
        image = image.unsqueeze(0)
    if image.dim() != 4:
        raise ValueError(f"{name}: expected an IMAGE tensor [B, H, W, C], got shape {tuple(image.shape)}")
    if image.shape[0] == 0:
        raise ValueError(f"{name}: the image batch is empty")
    if image.shape[-1] not in (1, 3, 4):
        raise ValueError(
            f"{name}: expected 1, 3 or 4 channels in the last dimension (channel-last IMAGE), got shape "
            f"{tuple(image.shape)}"
        )
    return image


def _frame_to_uint8(frame: torch.Tensor) -> np.ndarray:
    """[H, W, C] float 0..1 (or uint8) -> uint8 [H, W, 3] RGB."""
    if frame.shape[-1] == 1:
        frame = frame.expand(*frame.shape[:-1], 3)
    elif frame.shape[-1] == 4:
        frame = frame[..., :3]
    if frame.dtype == torch.uint8:
        return np.ascontiguousarray(frame.cpu().numpy())
    f = frame.detach().to("cpu", torch.float32)
    return f.mul(255.0).add_(0.5).clamp_(0, 255).to(torch.uint8).numpy()


def image_frame_getter(image: Any, tracks: Any, name: str = "images"):
    """None, or frame f of an IMAGE batch covering the tracks' video as uint8 [H, W, 3] (checked once)."""
    if image is None:
        return None
    image = _check_image(image, name)
    if tuple(image.shape[:3]) != (tracks.num_frames, tracks.height, tracks.width):
        raise ValueError(f"{name}: {image.shape[0]} frames of {image.shape[2]}x{image.shape[1]} do not match the "
                         f"tracks ({tracks.num_frames} frames of {tracks.width}x{tracks.height})")
    return lambda f: _frame_to_uint8(image[f])


def image_to_uint8(image: Any, name: str = "images") -> np.ndarray:
    """ComfyUI IMAGE ``[B, H, W, C]`` float 0..1 -> numpy uint8 ``[B, H, W, 3]`` (alpha dropped, grey expanded)."""
    image = _check_image(image, name)
    return np.stack([_frame_to_uint8(image[i]) for i in range(image.shape[0])])


def image_frame_to_uint8(image: Any, index: int, name: str = "images") -> np.ndarray:
    """One frame of an IMAGE batch as uint8 ``[H, W, 3]``."""
    image = _check_image(image, name)
    if not 0 <= int(index) < image.shape[0]:
        raise ValueError(f"{name}: frame {index} out of range (the batch has {image.shape[0]} frames)")
    return _frame_to_uint8(image[int(index)])


def uint8_to_image(frames: Any) -> torch.Tensor:
    """uint8 ``[B, H, W, 3]`` (or ``[H, W, 3]``) -> ComfyUI IMAGE float32 0..1."""
    t = torch.as_tensor(np.asarray(frames))
    if t.dim() == 3:
        t = t.unsqueeze(0)
    if t.dim() != 4 or t.shape[-1] != 3:
        raise ValueError(f"expected uint8 frames [B, H, W, 3], got shape {tuple(t.shape)}")
    return t.to(torch.float32).div_(255.0)


def image_batch_source(image: Any, name: str = "images", fps: float = 30.0):
    """IMAGE batch -> ``univs_engine.io.VideoSource`` that converts one frame at a time to uint8 (a whole-batch
    conversion would add a uint8 copy of the clip)."""
    from univs_engine.io.video import VideoSource

    image = _check_image(image, name)
    return VideoSource.from_callable(lambda i: _frame_to_uint8(image[i]), image.shape[0], image.shape[1],
                                     image.shape[2], fps=fps, name=name)


# =============================================================================================== masks
def normalize_mask(mask: Any, name: str = "mask") -> torch.Tensor:
    """MASK in any common layout (``[H,W]``, ``[B,H,W]``, ``[B,1,H,W]``, ``[B,H,W,1]``) -> float ``[B, H, W]``."""
    if isinstance(mask, np.ndarray):
        mask = torch.from_numpy(mask)
    if not isinstance(mask, torch.Tensor):
        raise ValueError(f"{name}: expected a MASK tensor, got {type(mask).__name__}")
    m = mask
    if m.dim() == 2:
        m = m.unsqueeze(0)
    elif m.dim() == 4 and m.shape[1] == 1:
        m = m[:, 0]
    elif m.dim() == 4 and m.shape[-1] == 1:
        m = m[..., 0]
    if m.dim() != 3:
        raise ValueError(f"{name}: expected a MASK [B, H, W], got shape {tuple(mask.shape)}")
    if m.dtype == torch.bool:
        m = m.to(torch.float32)
    return m.to(torch.float32)


def mask_frame_to_bool(mask: Any, frame: int = 0, name: str = "mask", threshold: float = 0.5) -> np.ndarray:
    """Pick one ``[H, W]`` mask out of a MASK batch and threshold it.

    A batch of one is used as is; a longer batch is read as a per-frame mask sequence and ``frame`` picks from it.
    """
    m = normalize_mask(mask, name)
    if m.shape[0] == 1:
        sel = m[0]
    elif 0 <= frame < m.shape[0]:
        sel = m[frame]
    else:
        raise ValueError(
            f"{name}: the mask batch has {m.shape[0]} masks; with more than one mask it is read as one mask per "
            f"video frame, and frame {frame} is outside it"
        )
    out = binary_mask(sel, what=name, floats=threshold, allow_nan=True)  # NaN pixels: outside the mask
    if not out.any():
        raise ValueError(f"{name}: the mask is empty (no pixel above {threshold}) on frame {frame}")
    return out


def bool_masks_to_tensor(masks: Sequence[np.ndarray], height: int, width: int) -> torch.Tensor:
    """List of bool ``[H, W]`` arrays -> MASK float32 ``[T, H, W]`` (an empty list gives ``[1, H, W]`` zeros)."""
    if len(masks) == 0:
        return torch.zeros((1, height, width), dtype=torch.float32)
    out = torch.empty((len(masks), height, width), dtype=torch.float32)
    for i, m in enumerate(masks):
        out[i] = torch.from_numpy(np.asarray(m, dtype=np.float32))
    return out


# =============================================================================================== points, boxes
MAX_ITEMS = 10_000  # points or boxes in one input; classes or expressions in one text


def _number(v: Any, name: str, what: str) -> float:
    return number(v, f"{name}: {what}")


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def _maybe_json(value: Any, name: str) -> Any:
    if isinstance(value, str):
        return parse_json(value, name) if value.strip() else None
    return value


def _bounded(items: Sequence[Any], name: str, what: str) -> Sequence[Any]:
    if len(items) > MAX_ITEMS:
        raise ValueError(f"{name}: {len(items)} {what}, more than the {MAX_ITEMS} accepted")
    return items


def parse_points(value: Any, name: str = "positive_coords") -> list[tuple[float, float]]:
    """Points JSON (KJNodes / core SAM3) -> list of ``(x, y)`` pixel tuples.

    Accepts ``[{"x": 10, "y": 20}, ...]``, a single ``{"x", "y"}`` dict, ``[[x, y], ...]``, a flat ``[x, y]``
    pair, the same as a JSON string, or ``None`` / ``""`` (no points).
    """
    data = _maybe_json(value, name)
    if data is None:
        return []
    if isinstance(data, dict):
        data = [data]
    if isinstance(data, (list, tuple)) and len(data) == 2 and all(isinstance(v, (int, float)) for v in data):
        data = [data]
    if not isinstance(data, (list, tuple)):
        raise ValueError(f"{name}: expected a list of points like [{{\"x\": 10, \"y\": 20}}], got {type(data).__name__}")
    out = []
    for k, p in enumerate(_bounded(data, name, "points")):
        if isinstance(p, dict):
            if "x" not in p or "y" not in p:
                raise ValueError(f"{name}: point {k} needs keys 'x' and 'y', got {_short(sorted(map(str, p)))}")
            x, y = p["x"], p["y"]
        elif isinstance(p, (list, tuple)) and len(p) == 2:
            x, y = p
        else:
            raise ValueError(f"{name}: point {k} must be {{\"x\": .., \"y\": ..}} or [x, y], got {_short(p)}")
        out.append((_number(x, name, f"point {k} x"), _number(y, name, f"point {k} y")))
    return out


def _box_from_dict(d: dict, name: str, k: int) -> tuple[float, float, float, float]:
    if all(key in d for key in ("x", "y", "width", "height")):
        x, y = _number(d["x"], name, f"box {k} x"), _number(d["y"], name, f"box {k} y")
        w, h = _number(d["width"], name, f"box {k} width"), _number(d["height"], name, f"box {k} height")
        box = (x, y, x + w, y + h)
    elif all(key in d for key in ("x0", "y0", "x1", "y1")):
        box = tuple(_number(d[key], name, f"box {k} {key}") for key in ("x0", "y0", "x1", "y1"))  # type: ignore[assignment]
    else:
        keys = _short(sorted(map(str, d)))
        raise ValueError(f"{name}: box {k} needs keys x, y, width, height (BOUNDING_BOX), got {keys}")
    return box


def _box_from_seq(s: Sequence[Any], name: str, k: int) -> tuple[float, float, float, float]:
    if len(s) != 4:
        raise ValueError(f"{name}: box {k} must have 4 numbers (x0, y0, x1, y1), got {len(s)}")
    x0, y0, x1, y1 = (_number(v, name, f"box {k} coordinate") for v in s)
    return (x0, y0, x1, y1)


def _is_box_seq(v: Any) -> bool:
    return isinstance(v, (list, tuple)) and len(v) == 4 and all(isinstance(c, (int, float, np.number)) for c in v)


def parse_boxes(value: Any, name: str = "bboxes", frame: int | None = None) -> list[tuple[float, float, float, float]]:
    """Boxes in any common format -> list of ``(x0, y0, x1, y1)`` pixel boxes (edges, x1/y1 exclusive).

    Accepted: ``None``; core BOUNDING_BOX dict ``{x, y, width, height}``; a list of them; a per-frame list of
    lists (then ``frame`` picks the entry, e.g. the output of core SAM3 Detect); community BBOX tuples
    ``(x0, y0, x1, y1)`` or a list of them; an ``[N, 4]`` tensor/array; any of these as a JSON string.
    """
    data = _maybe_json(value, name)
    if data is None:
        return []
    if isinstance(data, (torch.Tensor, np.ndarray)):
        try:
            arr = np.asarray(data.detach().cpu() if isinstance(data, torch.Tensor) else data, dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"{name}: boxes must be numbers, got an array of {data.dtype}") from None
        if arr.ndim == 1:
            arr = arr[None]
        if arr.ndim != 2 or arr.shape[1] != 4:
            raise ValueError(f"{name}: expected boxes of shape [N, 4], got {arr.shape}")
        data = arr.tolist()
    if isinstance(data, dict):
        items: list[Any] = [data]
    elif _is_box_seq(data):
        items = [data]
    elif isinstance(data, (list, tuple)):
        items = list(data)
        # per-frame list of lists of BOUNDING_BOX dicts
        if items and all(isinstance(it, (list, tuple)) and not _is_box_seq(it) for it in items):
            if frame is None or len(items) == 1:
                items = list(items[0]) if len(items) == 1 else [b for per in items for b in per]
                if frame is None and len(data) > 1:
                    raise ValueError(f"{name}: per-frame box lists need a frame index to pick from")
            else:
                if not 0 <= frame < len(items):
                    raise ValueError(f"{name}: per-frame boxes cover {len(items)} frames; frame {frame} has none")
                items = list(items[frame])
    else:
        raise ValueError(f"{name}: unsupported box format {type(data).__name__}")
    out = []
    for k, b in enumerate(_bounded(items, name, "boxes")):
        if isinstance(b, dict):
            box = _box_from_dict(b, name, k)
        elif isinstance(b, (list, tuple)):
            box = _box_from_seq(b, name, k)
        else:
            raise ValueError(f"{name}: box {k} must be a dict or 4 numbers, got {_short(b)}")
        x0, y0, x1, y1 = box
        if x1 <= x0 or y1 <= y0:
            raise ValueError(f"{name}: box {k} {box} is empty or inverted (need x1 > x0 and y1 > y0)")
        out.append(box)
    return out


# =============================================================================================== text
_SPLIT_CLASSES = re.compile(r"[,\n;]+")


def parse_vocabulary(choice: str, custom: str = "", builtin: Sequence[str] = (), name: str = "vocabulary") -> str | list[str]:
    """Vocabulary widget + custom text -> a built-in vocabulary name or a list of class names.

    ``choice == "custom"`` reads ``custom`` (classes separated by commas, semicolons or new lines; duplicates and
    blanks dropped; ``#`` starts a comment line). Any other choice must be one of ``builtin`` (when given).
    """
    choice = _text(choice, name).strip()
    if choice == "custom":
        return _custom_classes(_text(custom, "custom_classes"))
    if builtin and choice not in builtin:
        raise ValueError(f"{name}: unknown built-in vocabulary {_short(choice)}; choose one of {list(builtin)} or 'custom'")
    if not choice:
        raise ValueError(f"{name}: no vocabulary chosen")
    return choice


MAX_CLASS_CHARS = 200


def _text(value: Any, name: str) -> str:
    """A widget's text (None = empty); anything else is refused."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ValueError(f"{name}: expected text, got {type(value).__name__}")
    return value


def _custom_classes(custom: str) -> list[str]:
    classes: list[str] = []
    seen: set[str] = set()
    for line in custom.splitlines():
        if line.strip().startswith("#"):
            continue
        for tok in _SPLIT_CLASSES.split(line):
            tok = " ".join(tok.split())
            if len(tok) > MAX_CLASS_CHARS:
                raise ValueError(f"custom_classes: {_short(tok)} is longer than {MAX_CLASS_CHARS} characters")
            if tok and tok.lower() not in seen:
                seen.add(tok.lower())
                classes.append(tok)
                _bounded(classes, "custom_classes", "classes")
    if not classes:
        raise ValueError("custom_classes: vocabulary is 'custom' but no class names were typed (e.g. 'person, dog, car')")
    return classes


_LABEL_PREFIX = re.compile(r"^\s*([A-Za-z0-9_][A-Za-z0-9_ \-]{0,39}?)\s*:\s*(.+)$")


def parse_expressions(text: str, name: str = "expressions") -> list[tuple[str, str]]:
    """Referring expressions, one per line -> list of ``(label, expression)``.

    ``label: expression`` sets a label (a short name of letters, digits, ``_``, ``-`` or spaces before the first
    colon); otherwise the label is the expression itself. Blank lines and lines starting with ``#`` are skipped.
    """
    out = []
    for line in _text(text, name).splitlines():
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        m = _LABEL_PREFIX.match(s)
        if m:
            label, expr = m.group(1).strip(), m.group(2).strip()
        else:
            label, expr = s, s
        if not expr:
            raise ValueError(f"{name}: line {_short(line)} has a label but no expression")
        out.append((label, expr))
        _bounded(out, name, "expressions")
    if not out:
        raise ValueError(f"{name}: type at least one referring expression (one object per line)")
    return out


def parse_int_list(text: str, name: str, limit: int = MAX_ITEMS) -> list[int]:
    """``"1, 3 5-7"`` -> ``[1, 3, 5, 6, 7]`` (commas/spaces separate, ``a-b`` is an inclusive range); at most
    ``limit`` values in all, each of at most 18 digits."""
    out: list[int] = []
    for tok in re.split(r"[,\s]+", _text(text, name).strip()):
        if not tok:
            continue
        m = re.fullmatch(r"([0-9]{1,18})-([0-9]{1,18})", tok)
        if m:
            out.extend(int_range(int(m.group(1)), int(m.group(2)), name, limit - len(out)))
        elif re.fullmatch(r"-?[0-9]{1,18}", tok):
            out.append(int(tok))
        else:
            raise ValueError(f"{name}: {_short(tok)} is not a whole number (or a range a-b)")
        if len(out) > limit:
            raise ValueError(f"{name}: more than {limit} values")
    return out
