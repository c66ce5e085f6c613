"""UNIVS_PROMPTS: the chainable prompt list passed between the prompt-builder nodes and the executors.

A prompt list is a plain ``tuple`` of :class:`PromptSpec` (immutable, so ComfyUI's output cache can share it
between branches). Builders append to a copy; :func:`to_engine_prompts` validates the list against the video
and turns it into ``univs_engine.api.Prompt`` objects. No ComfyUI imports.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable

import numpy as np

from univs_engine.parsing import integer, number, parse_json
from univs_engine.prompt_checks import check_box, check_point

from .convert import mask_frame_to_bool, parse_boxes, parse_expressions, parse_points

__all__ = [
    "PromptSpec",
    "chain_prompts",
    "build_target_prompts",
    "build_text_prompts",
    "to_engine_prompts",
    "describe_prompts",
]


@dataclass(frozen=True, eq=False)
class PromptSpec:
    """One cue for one object on one frame (``obj_id`` 0 means "next free id", resolved by :func:`chain_prompts`).

    ``point_inputs`` (one per point) and ``box_input`` name the node input each click and the box came from, so
    that :func:`to_engine_prompts` can say which input holds a value outside the frame.
    """

    obj_id: int
    frame: int = 0
    label: str = ""
    points: tuple[tuple[float, float], ...] = ()
    point_labels: tuple[int, ...] = ()
    box: tuple[float, float, float, float] | None = None
    mask: np.ndarray | None = field(default=None, repr=False)
    text: str | None = None
    source: str = ""
    point_inputs: tuple[str, ...] = ()
    box_input: str = ""

    @property
    def kind(self) -> str:
        parts = []
        if self.text:
            parts.append("text")
        if self.points:
            parts.append("points")
        if self.box is not None:
            parts.append("box")
        if self.mask is not None:
            parts.append("mask")
        return "+".join(parts) or "empty"


def _as_tuple(prompts: Any, name: str = "prompts") -> tuple[PromptSpec, ...]:
    if prompts is None:
        return ()
    if isinstance(prompts, PromptSpec):
        return (prompts,)
    if isinstance(prompts, (list, tuple)) and all(isinstance(p, PromptSpec) for p in prompts):
        return tuple(prompts)
    raise ValueError(f"{name}: expected UNIVS_PROMPTS from a UniVS prompt node, got {type(prompts).__name__}")


def chain_prompts(previous: Any, new: Iterable[PromptSpec]) -> tuple[PromptSpec, ...]:
    """Append ``new`` to ``previous`` and give every ``obj_id == 0`` entry the next free id (in order)."""
    prev = _as_tuple(previous)
    used = {p.obj_id for p in prev}
    next_id = max(used, default=0) + 1
    out = list(prev)
    for p in new:
        if p.obj_id < 0:
            raise ValueError(f"object_id: must be 0 (new object) or positive, got {p.obj_id}")
        if p.obj_id == 0:
            while next_id in used:
                next_id += 1
            p = replace(p, obj_id=next_id)
        used.add(p.obj_id)
        next_id = max(next_id, p.obj_id + 1)
        out.append(p)
    return tuple(out)


def build_target_prompts(
    *,
    frame_index: int,
    object_id: int,
    label: str = "",
    positive_coords: Any = None,
    negative_coords: Any = None,
    bboxes: Any = None,
    mask: Any = None,
    editor_state: Any = None,
    previous: Any = None,
) -> tuple[PromptSpec, ...]:
    """PromptTarget's logic: clicks / boxes / mask for one object (or one object per box) -> chained list.

    * points (positive and negative) and at most one box describe one object;
    * several boxes without points give one object per box (ids ``object_id``, ``object_id + 1``, ... or the next
      free ids when ``object_id`` is 0), as core SAM3 does;
    * ``editor_state`` (the JSON written by the web prompt editor) adds its objects too.
    """
    if frame_index < 0:
        raise ValueError(f"frame_index: must be >= 0, got {frame_index}")
    pos = parse_points(positive_coords, "positive_coords")
    neg = parse_points(negative_coords, "negative_coords")
    boxes = parse_boxes(bboxes, "bboxes", frame=frame_index)
    m = None if mask is None else mask_frame_to_bool(mask, frame_index, "mask")
    label = (label or "").strip()
    if neg and not pos and not boxes and m is None:
        raise ValueError("negative_coords: negative clicks alone do not define an object; add a positive click, box or mask")
    specs: list[PromptSpec] = []
    if pos or neg or m is not None or len(boxes) <= 1:
        if len(boxes) > 1:
            raise ValueError(
                f"bboxes: {len(boxes)} boxes were given together with points or a mask; one object takes at most "
                "one box (give several boxes alone to get one object per box)"
            )
        if pos or neg or boxes or m is not None:
            specs.append(
                PromptSpec(
                    obj_id=int(object_id),
                    frame=int(frame_index),
                    label=label,
                    points=tuple(pos) + tuple(neg),
                    point_labels=(1,) * len(pos) + (0,) * len(neg),
                    box=boxes[0] if boxes else None,
                    mask=m,
                    source="PromptTarget",
                    point_inputs=("positive_coords",) * len(pos) + ("negative_coords",) * len(neg),
                    box_input="bboxes" if boxes else "",
                )
            )
    else:
        for k, b in enumerate(boxes):
            oid = 0 if object_id == 0 else int(object_id) + k
            specs.append(PromptSpec(obj_id=oid, frame=int(frame_index), label=label, box=b, source="PromptTarget",
                                    box_input="bboxes"))
    specs.extend(parse_editor_state(editor_state))
    if not specs:
        raise ValueError(
            "PromptTarget: no cue given; connect or draw at least one of positive_coords, bboxes, mask "
            "(or click in the prompt editor)"
        )
    return chain_prompts(previous, specs)


def parse_editor_state(state: Any) -> list[PromptSpec]:
    """The web prompt editor's widget value -> prompt specs.

    Format (JSON): ``{"version": 1, "objects": [{"id": 1, "label": "", "frames": {"0": {"points": [[x, y, 1], ...],
    "box": [x0, y0, x1, y1] | null}}}]}``; coordinates in pixels of the original frame. Empty/blank -> ``[]``.
    Any other shape or value raises ``ValueError`` naming the editor and the place.
    """
    if state is None or (isinstance(state, str) and not state.strip()):
        return []
    if isinstance(state, str):
        state = parse_json(state, "editor: the prompt editor state")
    if not isinstance(state, dict):
        raise ValueError("editor: the prompt editor state must be a JSON object")
    objects = _editor_member(state, "objects", list, "editor")
    if len(objects) > MAX_EDITOR_OBJECTS:
        raise ValueError(f"editor: {len(objects)} objects, more than the {MAX_EDITOR_OBJECTS} accepted")
    specs = []
    for k, obj in enumerate(objects):
        specs.extend(_editor_object(obj, k))
    return specs


MAX_EDITOR_OBJECTS = 1000
MAX_EDITOR_POINTS = 1000


def _editor_member(d: dict, key: str, kind: type, where: str) -> Any:
    """``d[key]`` of type ``kind`` (absent or null -> an empty one)."""
    value = d.get(key)
    if value is None:
        return kind()
    if not isinstance(value, kind):
        raise ValueError(f"{where}: '{key}' must be a {'list' if kind is list else 'JSON object'}, "
                         f"got {type(value).__name__}")
    return value


def _editor_object(obj: Any, k: int) -> list[PromptSpec]:
    if not isinstance(obj, dict):
        raise ValueError(f"editor: object {k} must be a JSON object, got {type(obj).__name__}")
    oid = integer(obj.get("id", 0), f"editor: object {k} id", 0, 1 << 31)
    label = obj.get("label") or ""
    if not isinstance(label, str):
        raise ValueError(f"editor: object {oid} has a non-text label")
    frames = _editor_member(obj, "frames", dict, f"editor: object {oid}")
    cues = sorted(((integer(f, f"editor: object {oid} frame key {str(f)[:20]!r}", 0, 1 << 31), c)
                   for f, c in frames.items()), key=lambda fc: fc[0])
    return [s for frame, c in cues if (s := _editor_cues(c, oid, frame, label)) is not None]


def _editor_cues(cues: Any, oid: int, frame: int, label: str) -> PromptSpec | None:
    where = f"editor: object {oid} frame {frame}"
    if not isinstance(cues, dict):
        raise ValueError(f"{where}: must be a JSON object with points and box")
    points = _editor_member(cues, "points", list, where)
    if len(points) > MAX_EDITOR_POINTS:
        raise ValueError(f"{where}: {len(points)} points, more than the {MAX_EDITOR_POINTS} accepted")
    pts, lbls = [], []
    for p in points:
        if not isinstance(p, (list, tuple)) or not 2 <= len(p) <= 3:
            raise ValueError(f"{where}: bad point {str(p)[:40]} (need [x, y] or [x, y, 0|1])")
        pts.append((number(p[0], f"{where}: point x"), number(p[1], f"{where}: point y")))
        lbls.append(integer(p[2], f"{where}: point label", 0, 1) if len(p) > 2 else 1)
    box = cues.get("box")
    boxes = parse_boxes(box, f"{where}: box") if box else []
    if not pts and not boxes:
        return None
    if pts and not any(lbls) and not boxes:
        raise ValueError(f"editor: object {oid} on frame {frame} has only negative clicks; add a positive click or "
                         "a box")
    return PromptSpec(obj_id=oid, frame=frame, label=label, points=tuple(pts), point_labels=tuple(lbls),
                      box=boxes[0] if boxes else None, source="prompt editor", point_inputs=("editor",) * len(pts),
                      box_input="editor" if boxes else "")


def build_text_prompts(*, expressions: str, frame_hint: int = 0, object_id: int = 0, previous: Any = None) -> tuple[PromptSpec, ...]:
    """TextRefer's logic: one object per expression line (``label: expression`` sets the label)."""
    if frame_hint < 0:
        raise ValueError(f"frame_hint: must be >= 0, got {frame_hint}")
    specs = []
    for k, (label, expr) in enumerate(parse_expressions(expressions)):
        oid = 0 if object_id == 0 else int(object_id) + k
        specs.append(PromptSpec(obj_id=oid, frame=int(frame_hint), label=label, text=expr, source="TextRefer"))
    return chain_prompts(previous, specs)


def to_engine_prompts(
    prompts: Any,
    *,
    num_frames: int,
    height: int,
    width: int,
    prompt_cls: Callable[..., Any] | None = None,
    start: int = 0,
    stop: int | None = None,
) -> list[Any]:
    """Validate the chained prompts against the video and build engine ``Prompt`` objects.

    Clicks and boxes must meet the engine's rules (``univs_engine/prompt_checks.py``: a click on the frame,
    ``0 <= x < width``; a box inside it, ``x1 <= width``); nothing is clipped, and an error names the node input,
    the object and the value. Cues for the same (object, frame) from several nodes are merged (points
    concatenated; a later box or mask replaces an earlier one). Labels: the first non-empty label of an object
    is used for all its prompts.
    """
    specs = _as_tuple(prompts)
    if not specs:
        raise ValueError("prompts: the prompt list is empty; connect a UniVS PromptTarget or TextRefer node")
    if prompt_cls is None:
        from univs_engine.api import Prompt as prompt_cls  # noqa: PLC0415
    stop = num_frames if stop is None else stop
    labels: dict[int, str] = {}
    merged: dict[tuple[int, int], PromptSpec] = {}
    for p in specs:
        where = f"prompts ({p.source or 'prompt'} for object {p.obj_id}, frame {p.frame})"
        if p.obj_id <= 0:
            raise ValueError(f"{where}: object ids must be positive")
        if not 0 <= p.frame < num_frames:
            raise ValueError(f"{where}: frame {p.frame} is outside the video (frames 0..{num_frames - 1})")
        if not start <= p.frame < stop:
            raise ValueError(
                f"{where}: frame {p.frame} is outside the processed range {start}..{stop - 1}; widen "
                "start_frame/end_frame or move the prompt"
            )
        points = tuple(check_point(x, y, width, height, _cue_where(p, _input_of(p, k)))
                       for k, (x, y) in enumerate(p.points))
        box = None if p.box is None else check_box(p.box, width, height, _cue_where(p, p.box_input))
        p = replace(p, points=points, box=box)
        if p.mask is not None and p.mask.shape != (height, width):
            raise ValueError(
                f"{where}: mask size {p.mask.shape[1]}x{p.mask.shape[0]} differs from the video size {width}x{height}"
            )
        if p.label and p.obj_id not in labels:
            labels[p.obj_id] = p.label
        key = (p.obj_id, p.frame)
        if key in merged:
            q = merged[key]
            merged[key] = replace(
                q,
                points=q.points + p.points,
                point_labels=q.point_labels + p.point_labels,
                box=p.box if p.box is not None else q.box,
                mask=p.mask if p.mask is not None else q.mask,
                text=p.text if p.text else q.text,
            )
        else:
            merged[key] = p
    out = []
    for (oid, frame), p in sorted(merged.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        out.append(
            prompt_cls(
                obj_id=oid,
                frame=frame,
                label=labels.get(oid, ""),
                points=[tuple(pt) for pt in p.points],
                point_labels=list(p.point_labels),
                box=p.box,
                mask=p.mask,
                text=p.text,
            )
        )
    return out


def _input_of(p: PromptSpec, k: int) -> str:
    return p.point_inputs[k] if k < len(p.point_inputs) else ""


def _cue_where(p: PromptSpec, node_input: str) -> str:
    """Error prefix for one click or box: the node input it came from, the node, the object and the frame."""
    return f"{node_input or 'prompts'} ({p.source or 'prompt'}, object {p.obj_id}, frame {p.frame})"


def describe_prompts(prompts: Any) -> str:
    """Human-readable one-line-per-prompt summary (shown in the node UI)."""
    lines = []
    for p in _as_tuple(prompts):
        extra = f" '{p.text}'" if p.text else ""
        lab = f" [{p.label}]" if p.label and p.label != p.text else ""
        lines.append(f"object {p.obj_id}{lab} @ frame {p.frame}: {p.kind}{extra}")
    return "\n".join(lines)
