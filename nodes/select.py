"""Cheap post-processing of UNIVS_TRACKS: object selection, masks, boxes, overlays, SEGS, legend.

These never run the model; they read the compact per-frame RLE masks of ``univs_engine.results.Tracks`` and
materialise dense arrays only for the selected objects and frames. No ComfyUI imports.
"""
from __future__ import annotations

import json
import math
import re
from collections import namedtuple
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "SEG",
    "check_tracks",
    "select_objects",
    "frame_range",
    "refine_mask",
    "EdgeOptions",
    "union_mask_tensor",
    "object_mask_tensors",
    "mask_tensors",
    "segmented_frames",
    "bounding_boxes_per_frame",
    "bbox_per_frame",
    "legend_json",
    "overlay_frame",
    "flag_frame",
    "WEAK_RATIO",
    "weak_report",
    "build_segs",
]

# Impact Pack's SEG record (same field names and order, so its nodes read ours).
SEG = namedtuple(
    "SEG",
    ["cropped_image", "cropped_mask", "confidence", "crop_region", "bbox", "label", "control_net_wrapper"],
    defaults=[None],
)


def check_tracks(tracks: Any, name: str = "tracks") -> Any:
    for attr in ("num_frames", "height", "width", "object_ids", "mask", "info"):
        if not hasattr(tracks, attr):
            raise ValueError(f"{name}: expected UNIVS_TRACKS from PropagateMasks or PanopticVideo, got {type(tracks).__name__}")
    return tracks


def select_objects(tracks: Any, select: str = "", name: str = "select") -> list[int]:
    """``select`` text -> object ids in paint order.

    Empty, ``*`` or ``all`` = every shown object (``Tracks.shown_ids``: score at least the task's threshold
    ``Tracks.min_score``; every object for prompt-guided tracks). Otherwise comma/newline-separated tokens: an
    integer (or ``a-b`` range) is an object id; any other token matches object labels case-insensitively
    (``person`` picks every person); ids and labels pick objects below the threshold too. A leading ``!``
    excludes (``all, !person``; only exclusions = the shown objects less those). Unknown ids or labels raise
    ``ValueError`` listing what exists; so does text that is not a string. A range costs the number of objects,
    not its width.
    """
    check_tracks(tracks)
    ids = list(tracks.object_ids)
    shown = _shown_ids(tracks, ids)
    if select is not None and not isinstance(select, str):
        raise ValueError(f"{name}: expected text, got {type(select).__name__}")
    text = (select or "").strip()
    if not text or text.lower() in ("*", "all"):
        return shown
    labels: dict[str, list[int]] = {}
    for oid in ids:
        labels.setdefault((tracks.info(oid).label or "").strip().lower(), []).append(oid)
    chosen: set[int] = set()
    excluded: set[int] = set()
    any_positive = False
    tokens = text.replace("\n", ",").replace(";", ",").split(",")
    if len(tokens) > MAX_SELECT_TOKENS:
        raise ValueError(f"{name}: {len(tokens)} entries, more than the {MAX_SELECT_TOKENS} accepted")
    for raw in tokens:
        tok = raw.strip()
        if not tok:
            continue
        neg = tok.startswith("!")
        if neg:
            tok = tok[1:].strip()
        any_positive |= not neg
        (excluded if neg else chosen).update(_select_token(tok, ids, labels, name, shown))
    if not any_positive:
        chosen = set(shown)
    return [oid for oid in ids if oid in chosen and oid not in excluded]


MAX_SELECT_TOKENS = 10_000
_ID_RANGE = re.compile(r"([0-9]{1,18})(?:\s*-\s*([0-9]{1,18}))?")


def _shown_ids(tracks: Any, ids: list[int]) -> list[int]:
    """The objects drawn by default: score >= the tracks' ``min_score`` (every object for tracks without one)."""
    shown = getattr(tracks, "shown_ids", None)
    return list(shown()) if callable(shown) else ids


def _select_token(tok: str, ids: list[int], labels: dict[str, list[int]], name: str,
                  shown: list[int] | None = None) -> list[int]:
    """The objects one token of ``select`` names: all (the shown ones), an id, an id range a-b, or a label."""
    if tok.lower() in ("*", "all"):
        return ids if shown is None else shown
    m = _ID_RANGE.fullmatch(tok)
    if m:
        a, b = int(m.group(1)), int(m.group(2) or m.group(1))
        if b < a:
            raise ValueError(f"{name}: the range {tok} runs backwards")
        found = [i for i in ids if a <= i <= b]
        if not found:
            raise ValueError(f"{name}: no object with id {tok}; the tracks hold ids {ids}")
        return found
    found = labels.get(tok.lower(), [])
    if not found:
        known = sorted(lab for lab in labels if lab)
        shown = tok if len(tok) <= 60 else tok[:57] + "..."
        raise ValueError(f"{name}: no object labelled {shown!r}; labels in the tracks: {known}, ids: {ids}")
    return found


def frame_range(start_frame: int, end_frame: int, num_frames: int, name: str = "start_frame") -> range:
    """``start_frame`` .. ``end_frame`` inclusive (``end_frame = -1`` = last frame) -> ``range`` of frame indices."""
    if num_frames <= 0:
        raise ValueError("the video has no frames")
    end = num_frames - 1 if end_frame is None or end_frame < 0 else int(end_frame)
    if not 0 <= start_frame < num_frames:
        raise ValueError(f"{name}: {start_frame} is outside the video (frames 0..{num_frames - 1})")
    if end >= num_frames:
        raise ValueError(f"end_frame: {end_frame} is outside the video (frames 0..{num_frames - 1}; -1 = last)")
    if end < start_frame:
        raise ValueError(f"end_frame: {end_frame} is before start_frame {start_frame}")
    return range(int(start_frame), end + 1)


def _gaussian_kernel(sigma: float) -> torch.Tensor:
    radius = max(1, int(math.ceil(3 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-(x**2) / (2 * sigma * sigma))
    return k / k.sum()


def refine_mask(mask: Any, grow: int = 0, feather: float = 0.0) -> torch.Tensor:
    """bool/float ``[H, W]`` or ``[T, H, W]`` -> float32 mask: grow (>0 dilate, <0 erode, pixels) then feather.

    ``feather`` is the Gaussian blur sigma in pixels (0 = hard edge).
    """
    m = torch.as_tensor(np.asarray(mask) if not isinstance(mask, torch.Tensor) else mask).to(torch.float32)
    squeeze = m.dim() == 2
    if squeeze:
        m = m.unsqueeze(0)
    x = m.unsqueeze(1)  # [T,1,H,W]
    if grow:
        r = abs(int(grow))
        k = 2 * r + 1
        if grow > 0:
            x = F.max_pool2d(x, k, stride=1, padding=r)
        else:
            x = -F.max_pool2d(-x, k, stride=1, padding=r)
    if feather and feather > 0:
        k = _gaussian_kernel(float(feather))
        r = (k.numel() - 1) // 2
        mode = "reflect" if min(x.shape[-2:]) > r else "replicate"
        x = F.pad(x, (r, r, 0, 0), mode=mode)
        x = F.conv2d(x, k.view(1, 1, 1, -1))
        x = F.pad(x, (0, 0, r, r), mode=mode)
        x = F.conv2d(x, k.view(1, 1, -1, 1))
        x = x.clamp_(0.0, 1.0)
    out = x[:, 0]
    return out[0] if squeeze else out


@dataclass(frozen=True)
class EdgeOptions:
    """How hard masks become mattes: grow (>0 dilate, <0 erode, pixels), then an edge-aware soft matte in a
    band of `band` pixels around the edge guided by the frames (0 = off; univs_engine.matting), then a Gaussian
    feather of sigma `feather` pixels."""

    grow: int = 0
    feather: float = 0.0
    band: int = 0
    smoothness: float = 3e-3

    def apply(self, masks: torch.Tensor, frames: Sequence[int], rgb: Callable[[int], np.ndarray] | None = None
              ) -> torch.Tensor:
        """masks [T, H, W] of video frames `frames` -> float32 mattes; rgb(f) gives frame f (uint8 [H, W, 3])."""
        x = masks.to(torch.float32)
        if self.grow:
            x = refine_mask(x, grow=self.grow)
        if self.band:
            from univs_engine.matting import MatteSettings, soft_matte

            if rgb is None:
                raise ValueError("edge_band: an edge-aware matte follows the frames; connect images (or video)")
            settings = MatteSettings(self.band, self.smoothness)
            x = torch.stack([torch.from_numpy(soft_matte(rgb(f), x[k].numpy() > 0.5, settings))
                             for k, f in enumerate(frames)])
        if self.feather:
            x = refine_mask(x, feather=self.feather)
        return x


def union_mask_tensor(tracks: Any, obj_ids: Sequence[int], frames: Iterable[int], edge: EdgeOptions = EdgeOptions(),
                      rgb: Callable[[int], np.ndarray] | None = None) -> torch.Tensor:
    """MASK ``[T, H, W]`` float32: union of ``obj_ids`` on each frame of ``frames``."""
    frames = list(frames)
    out = torch.zeros((len(frames), tracks.height, tracks.width), dtype=torch.float32)
    if obj_ids:
        for k, f in enumerate(frames):
            out[k] = torch.from_numpy(tracks.union(f, list(obj_ids)))
    return edge.apply(out, frames, rgb) if edge != EdgeOptions() else out


def object_mask_tensors(tracks: Any, obj_ids: Sequence[int], frames: Iterable[int], edge: EdgeOptions = EdgeOptions(),
                        rgb: Callable[[int], np.ndarray] | None = None) -> list[torch.Tensor]:
    """One MASK ``[T, H, W]`` per object."""
    frames = list(frames)
    out = []
    for oid in obj_ids:
        m = torch.zeros((len(frames), tracks.height, tracks.width), dtype=torch.float32)
        for k, f in enumerate(frames):
            if tracks.has_mask(f, oid):
                m[k] = torch.from_numpy(tracks.mask(f, oid))
        out.append(edge.apply(m, frames, rgb) if edge != EdgeOptions() else m)
    return out


def mask_tensors(tracks: Any, obj_ids: Sequence[int], frames: Iterable[int], mode: str, edge: EdgeOptions = EdgeOptions(),
                 rgb: Callable[[int], np.ndarray] | None = None) -> list[torch.Tensor]:
    """``mode`` "union": ``[union MASK]``; "per_object": one MASK per object (an empty MASK when none is selected,
    so downstream nodes still get a frame-aligned batch)."""
    frames = list(frames)
    if mode == "union":
        return [union_mask_tensor(tracks, obj_ids, frames, edge, rgb)]
    if mode != "per_object":
        raise ValueError(f"mode: {mode!r} is not one of union, per_object")
    return object_mask_tensors(tracks, obj_ids, frames, edge, rgb) or [
        torch.zeros((len(frames), tracks.height, tracks.width), dtype=torch.float32)]


def segmented_frames(tracks: Any, frames: range) -> list[int]:
    """The frames of ``frames`` a run processed; a clear error when none was (nothing to write there)."""
    done = tracks.segmented_frames(frames)
    if not done:
        raise ValueError(f"start_frame / end_frame: none of frames {frames.start}..{frames.stop - 1} was segmented; "
                         "widen the range of the run or of this node")
    return done


def _edge_box(tracks: Any, f: int, oid: int) -> tuple[int, int, int, int] | None:
    b = tracks.box(f, oid)
    if b is None:
        return None
    x0, y0, x1, y1 = (int(v) for v in b)
    return x0, y0, x1 + 1, y1 + 1  # Tracks.box is inclusive; edges here


def bounding_boxes_per_frame(tracks: Any, obj_ids: Sequence[int], frames: Iterable[int]) -> list[list[dict[str, Any]]]:
    """Core BOUNDING_BOX per frame: ``[[{x, y, width, height, score, id, label}, ...], ...]`` (one list per frame)."""
    out = []
    for f in frames:
        per = []
        for oid in obj_ids:
            b = _edge_box(tracks, f, oid)
            if b is None:
                continue
            conf = tracks.confidence(f, oid)
            per.append(
                {
                    "x": b[0],
                    "y": b[1],
                    "width": b[2] - b[0],
                    "height": b[3] - b[1],
                    "score": float(conf) if conf == conf else 1.0,
                    "id": int(oid),
                    "label": tracks.info(oid).label,
                }
            )
        out.append(per)
    return out


def bbox_per_frame(tracks: Any, obj_ids: Sequence[int], frames: Iterable[int]) -> list[tuple[int, int, int, int]]:
    """Community BBOX per frame: the union box ``(x0, y0, x1, y1)`` of the selected objects (``(0,0,0,0)`` if none)."""
    out = []
    for f in frames:
        boxes = [b for b in (_edge_box(tracks, f, oid) for oid in obj_ids) if b is not None]
        if not boxes:
            out.append((0, 0, 0, 0))
        else:
            a = np.array(boxes)
            out.append((int(a[:, 0].min()), int(a[:, 1].min()), int(a[:, 2].max()), int(a[:, 3].max())))
    return out


def legend_json(tracks: Any, obj_ids: Sequence[int] | None = None) -> str:
    """JSON list: ``{id, label, category, color "#rrggbb", score, isthing, first_frame, last_frame, shown}`` per
    object (``shown``: the score reaches the task's threshold, so an empty ``select`` draws it)."""
    keep = None if obj_ids is None else set(obj_ids)
    items = []
    for row in tracks.legend():
        if keep is not None and row["id"] not in keep:
            continue
        r = dict(row)
        c = tuple(int(v) for v in r.get("color", (0, 0, 0)))
        r["color"] = "#%02x%02x%02x" % c
        r["score"] = round(float(r.get("score", 1.0)), 4)
        r.setdefault("shown", True)
        items.append(r)
    return json.dumps(items, indent=1)


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # very old Pillow
        return ImageFont.load_default()


def flag_frame(img: np.ndarray, width: int = 4) -> np.ndarray:
    """A red border of `width` pixels around a uint8 [H, W, 3] frame (a frame to check)."""
    out = img.copy()
    w = max(1, min(width, min(img.shape[:2]) // 4))
    red = np.array([255, 40, 40], np.uint8)
    out[:w], out[-w:], out[:, :w], out[:, -w:] = red, red, red, red
    return out


# Overlay Preview's default `flag_weak`: the tracking node reports its weak frames to the prompt editor with it.
WEAK_RATIO = 0.5


def _round_conf(c: float) -> float | None:
    return None if math.isnan(c) else float(f"{c:.4g}")


def weak_report(tracks: Any, ratio: float = WEAK_RATIO, frames: Iterable[int] | None = None) -> dict[str, Any]:
    """Where the tracks most likely need a correction, per object, for the prompt editor's scrubber (the tracking
    node's ``ui["univs_weak"]``). Same rule as ``Tracks.weak_frames`` and Overlay Preview's red frames; a pure
    function of the tracks, so a cached run replays the same marks.

    ``{"ratio", "size": [W, H, T], "frames": all weak frames, sorted,
    "objects": [{"id", "label", "level": median confidence, "weak": [[frame, confidence], ...]}]}``; a
    confidence of ``None`` means the object is lost on that frame (missing between two frames that have it).
    ``frames`` limits the report to those frames (the processed range)."""
    keep = None if frames is None else set(frames)
    objects, union = [], set()
    for oid in tracks.object_ids:
        have = tracks.frames_with(oid)
        weak = [f for f in tracks.weak_frames(ratio, [oid]) if keep is None or f in keep]
        level = float(np.median([tracks.confidence(f, oid) for f in have])) if have else math.nan
        union.update(weak)
        objects.append({"id": int(oid), "label": str(tracks.info(oid).label or ""),
                        "level": _round_conf(level),
                        "weak": [[int(f), _round_conf(tracks.confidence(f, oid))] for f in weak]})
    return {"ratio": float(ratio), "size": [int(tracks.width), int(tracks.height), int(tracks.num_frames)],
            "frames": sorted(union), "objects": objects}


def overlay_frame(
    tracks: Any,
    frame_idx: int,
    obj_ids: Sequence[int],
    background: np.ndarray | None = None,
    opacity: float = 0.5,
    outline: bool = True,
    labels: bool = True,
) -> np.ndarray:
    """uint8 ``[H, W, 3]``: objects painted in their colours over ``background`` (black if ``None``)."""
    H, W = tracks.height, tracks.width
    if background is None:
        bg = np.zeros((H, W, 3), dtype=np.uint8)
    else:
        bg = np.asarray(background)
        if bg.shape[:2] != (H, W):
            raise ValueError(f"images: frame size {bg.shape[1]}x{bg.shape[0]} differs from the tracks size {W}x{H}")
    ids = tracks.id_map(frame_idx, list(obj_ids)) if obj_ids else np.zeros((H, W), dtype=np.int32)
    colors = tracks.color_map(frame_idx, list(obj_ids)).astype(np.float32) if obj_ids else np.zeros((H, W, 3), np.float32)
    fg = ids > 0
    out = bg.astype(np.float32)
    a = float(np.clip(opacity, 0.0, 1.0))
    out[fg] = out[fg] * (1.0 - a) + colors[fg] * a
    if outline and fg.any():
        t = torch.from_numpy(ids.astype(np.float32))[None, None]
        mx = F.max_pool2d(t, 3, stride=1, padding=1)
        mn = -F.max_pool2d(-t, 3, stride=1, padding=1)
        edge = ((mx != mn)[0, 0].numpy()) & fg
        out[edge] = colors[edge]
    img = np.clip(out + 0.5, 0, 255).astype(np.uint8)
    if labels and fg.any():
        from PIL import Image, ImageDraw

        pil = Image.fromarray(img)
        draw = ImageDraw.Draw(pil)
        font = _font(max(10, min(H, W) // 40))
        for oid in obj_ids:
            ys, xs = np.nonzero(ids == oid)
            if ys.size == 0:
                continue
            info = tracks.info(oid)
            text = f"{oid} {info.label}".strip()
            cx, cy = float(xs.mean()), float(ys.mean())
            draw.text((cx, cy), text, fill=tuple(int(c) for c in info.color), font=font, anchor="mm",
                      stroke_width=2, stroke_fill=(0, 0, 0))
        img = np.asarray(pil)
    return img


def _crop_region(box: tuple[int, int, int, int], W: int, H: int, crop_factor: float, min_size: int = 0) -> list[int]:
    x0, y0, x1, y1 = box
    bw, bh = x1 - x0, y1 - y0
    cw = max(bw * crop_factor, min_size, 2)
    ch = max(bh * crop_factor, min_size, 2)
    cx, cy = x0 + bw / 2.0, y0 + bh / 2.0
    nx0 = int(max(0, math.floor(cx - cw / 2)))
    ny0 = int(max(0, math.floor(cy - ch / 2)))
    nx1 = int(min(W, math.ceil(cx + cw / 2)))
    ny1 = int(min(H, math.ceil(cy + ch / 2)))
    return [nx0, ny0, max(nx1, nx0 + 1), max(ny1, ny0 + 1)]


def build_segs(
    tracks: Any,
    obj_ids: Sequence[int],
    frames: Sequence[int],
    crop_factor: float = 3.0,
    drop_size: int = 1,
    image_getter: Callable[[int], np.ndarray | None] | None = None,
) -> tuple[tuple[int, int], list[SEG]]:
    """Impact-Pack SEGS ``((H, W), [SEG, ...])`` with one SEG per object.

    With one frame the SEG is the per-image kind (``cropped_mask [h, w]``); with several frames it is the
    video/AnimateDiff kind: one crop region covering the object over all frames and ``cropped_mask [T, h, w]``.
    ``cropped_image`` is filled (float ``[1|T, h, w, 3]``) when ``image_getter`` returns frames, else ``None``.
    Objects whose box is smaller than ``drop_size`` in both sides are skipped.
    """
    H, W = tracks.height, tracks.width
    frames = list(frames)
    segs: list[SEG] = []
    for oid in obj_ids:
        boxes = [(f, _edge_box(tracks, f, oid)) for f in frames]
        present = [(f, b) for f, b in boxes if b is not None]
        if not present:
            continue
        a = np.array([b for _f, b in present])
        bbox = [int(a[:, 0].min()), int(a[:, 1].min()), int(a[:, 2].max()), int(a[:, 3].max())]
        if bbox[2] - bbox[0] < drop_size and bbox[3] - bbox[1] < drop_size:
            continue
        cr = _crop_region(tuple(bbox), W, H, crop_factor)
        masks = np.zeros((len(frames), cr[3] - cr[1], cr[2] - cr[0]), dtype=np.float32)
        for k, f in enumerate(frames):
            if tracks.has_mask(f, oid):
                masks[k] = tracks.mask(f, oid)[cr[1] : cr[3], cr[0] : cr[2]]
        crop_img = None
        if image_getter is not None:
            crops = []
            for f in frames:
                img = image_getter(f)
                if img is None:
                    crops = []
                    break
                crops.append(np.asarray(img, dtype=np.float32)[cr[1] : cr[3], cr[0] : cr[2]] / 255.0)
            if crops:
                crop_img = torch.from_numpy(np.stack(crops))
        confs = [tracks.confidence(f, oid) for f, _b in present]
        confs = [c for c in confs if c == c]
        conf = float(np.mean(confs)) if confs else float(tracks.info(oid).score)
        label = tracks.info(oid).label or str(oid)
        segs.append(SEG(crop_img, masks[0] if len(frames) == 1 else masks, conf, cr, bbox, label, None))
    return (H, W), segs
