"""Deterministic synthetic annotated videos covering the six UniVS tasks.

A video shows a small "world": *things* (flat textured shapes: circles, squares, stars, ...) that move,
rotate, grow or shrink, occlude each other by depth order and enter or leave the view, painted over
*stuff* (sky, ground, water, grass, wall) that tiles the whole background and pans with the camera.
Every pixel of every frame is annotated, so one generated video serves all tasks:

* VIS  -> ``masks`` [N,T,H,W] + ``categories`` (index into ``THING_CLASSES``)
* VSS  -> ``semantic`` [T,H,W] over ``CLASSES = THING_CLASSES + STUFF_CLASSES`` (no void: stuff covers
  everything that is not a thing)
* VPS  -> ``panoptic`` [T,H,W] segment ids + ``segments`` (thing ids ``1 + i``, stuff ids
  ``STUFF_ID_OFFSET + stuff index``; one tube per thing and per stuff class)
* VOS / PVOS -> ``prompts[i]`` (mask, points, negative point, box, scribble on the thing's first well
  visible frame)
* RefVOS -> ``expressions[i]`` (built from attributes, position and motion; unique within the video)

Split convention (seeds never overlap between splits): video ``i`` of split ``s`` is generated with seed
``SPLIT_SEED_BASE[s] + i``; each split owns a block of ``SPLIT_SIZE`` seeds, so train uses seeds
``0 .. 999_999``, val ``1_000_000 ..`` and test ``2_000_000 ..``. ``generate_dataset(seed, n)`` yields the
videos of seeds ``seed .. seed + n - 1``; ``split_seeds("val", n)`` gives the held-out seeds.

Command line (writes an H.264 mp4 and a JSON sidecar with the prompts and expressions)::

    python -m univs_train.synthetic --out assets/sample.mp4 --seed 7 --frames 48 --size 320x240   (repository root)
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from univs_engine.atomic import atomic_file
from univs_engine.rle import rle_encode

__all__ = [
    "THING_CLASSES", "STUFF_CLASSES", "CLASSES", "NUM_THING_CLASSES", "STUFF_ID_OFFSET",
    "COLOURS", "SIZES", "TEXTURES", "SPLIT_SEED_BASE", "SPLIT_SIZE",
    "SyntheticConfig", "ThingInfo", "Prompt", "Segment", "SyntheticVideo",
    "generate_video", "generate_dataset", "split_seeds", "write_mp4", "write_sample",
]

# ----------------------------------------------------------------------------------------------------
# Vocabulary
# ----------------------------------------------------------------------------------------------------
THING_CLASSES: Tuple[str, ...] = ("circle", "square", "triangle", "star", "hexagon", "diamond", "cross", "ring")
STUFF_CLASSES: Tuple[str, ...] = ("sky", "ground", "water", "grass", "wall")
CLASSES: Tuple[str, ...] = THING_CLASSES + STUFF_CLASSES
NUM_THING_CLASSES = len(THING_CLASSES)
STUFF_ID_OFFSET = 1000  # panoptic id of stuff class s (index into STUFF_CLASSES) is STUFF_ID_OFFSET + s

COLOURS: Dict[str, Tuple[int, int, int]] = {
    "red": (225, 35, 35),
    "green": (30, 205, 60),
    "blue": (35, 65, 235),
    "yellow": (245, 225, 30),
    "purple": (155, 50, 210),
    "orange": (250, 135, 20),
    "cyan": (30, 215, 225),
    "white": (245, 245, 245),
}
SIZES: Tuple[str, ...] = ("small", "large")
TEXTURES: Tuple[str, ...] = ("plain", "striped", "dotted", "checkered")
MOTIONS: Tuple[str, ...] = ("moving left", "moving right", "moving up", "moving down", "staying still")

SPLIT_SIZE = 1_000_000
SPLIT_SEED_BASE: Dict[str, int] = {"train": 0, "val": SPLIT_SIZE, "test": 2 * SPLIT_SIZE}

# radius of the bounding circle as a fraction of min(H, W)
_RADIUS_RANGE = {"small": (0.05, 0.075), "large": (0.12, 0.16)}
_DIRECTIONS = {"moving left": (-1.0, 0.0), "moving right": (1.0, 0.0),
               "moving up": (0.0, -1.0), "moving down": (0.0, 1.0)}


def split_seeds(split: str, n_videos: int) -> range:
    """Seeds of the first ``n_videos`` videos of ``split`` ("train", "val" or "test")."""
    if split not in SPLIT_SEED_BASE:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(SPLIT_SEED_BASE)}")
    if not 0 <= n_videos <= SPLIT_SIZE:
        raise ValueError(f"a split holds at most {SPLIT_SIZE} videos")
    base = SPLIT_SEED_BASE[split]
    return range(base, base + n_videos)


# ----------------------------------------------------------------------------------------------------
# Data classes
# ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SyntheticConfig:
    """Knobs of the generator. Sizes are in pixels, speeds in pixels per frame."""

    num_frames: int = 16
    height: int = 256
    width: int = 256
    min_things: int = 2
    max_things: int = 5
    p_enter: float = 0.3  # chance that a thing enters the view after frame 0
    p_leave: float = 0.25  # chance that a thing leaves the view before the last frame
    p_still: float = 0.15  # chance that a thing does not translate
    max_camera_speed: float = 1.5
    min_stuff: int = 2
    max_stuff: int = 4
    noise: int = 3  # amplitude of the additive sensor noise (0 disables it)
    antialias: bool = False  # soften thing edges in the frames (masks stay binary)
    min_prompt_area: int = 24  # every kept thing shows at least this many pixels on some frame
    prompt_area_frac: float = 0.3  # prompt frame: first frame showing >= this fraction of the thing's largest area


@dataclass(frozen=True)
class ThingInfo:
    """Attributes of one thing; ``category`` indexes ``THING_CLASSES``."""

    category: int
    colour: str
    size: str
    texture: str
    motion: str  # one of MOTIONS (screen-space direction of travel)
    hpos: Optional[str]  # "left" / "right" when the thing stays in that half of the view, else None
    vpos: Optional[str]  # "top" / "bottom" likewise
    first_frame: int  # first frame with a visible pixel
    last_frame: int  # last frame with a visible pixel
    depth: int  # painting order: larger is nearer the camera

    @property
    def name(self) -> str:
        return THING_CLASSES[self.category]


@dataclass
class Prompt:
    """Visual prompts of one thing on its prompt frame (all coordinates in pixels, ``(x, y)``)."""

    frame: int
    mask: np.ndarray  # bool [H, W]
    points: np.ndarray  # int32 [P, 2], 1 <= P <= 3, positive clicks inside the mask
    negative_points: np.ndarray  # int32 [1, 2], a click outside the mask near the object ([0, 2] if none exists)
    box: np.ndarray  # float32 [4] xyxy; x1, y1 exclusive (max index + 1)
    scribble: np.ndarray  # bool [H, W], a one-pixel-wide polyline inside the mask
    scribble_points: np.ndarray  # int32 [K, 2] vertices of that polyline


@dataclass(frozen=True)
class Segment:
    """One panoptic segment (a tube over the whole video)."""

    id: int  # value in ``SyntheticVideo.panoptic``
    category: int  # index into CLASSES
    isthing: bool
    thing: int  # index into ``things`` (-1 for stuff)


@dataclass
class SyntheticVideo:
    seed: int
    frames: np.ndarray  # uint8 [T, H, W, 3] RGB
    masks: np.ndarray  # bool [N, T, H, W], visible part of each thing (after occlusion and cropping)
    things: List[ThingInfo]
    semantic: np.ndarray  # int32 [T, H, W], index into CLASSES
    panoptic: np.ndarray  # int32 [T, H, W], segment ids (see ``segments``)
    segments: List[Segment]
    expressions: List[str]  # one referring expression per thing, unique within the video
    prompts: List[Prompt]  # one per thing
    camera: np.ndarray  # int32 [T, 2] (x, y) top-left corner of the view in the stuff world

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def height(self) -> int:
        return int(self.frames.shape[1])

    @property
    def width(self) -> int:
        return int(self.frames.shape[2])

    @property
    def num_things(self) -> int:
        return len(self.things)

    @property
    def categories(self) -> np.ndarray:
        """int64 [N] index into THING_CLASSES."""
        return np.array([t.category for t in self.things], dtype=np.int64)

    @property
    def colours(self) -> List[str]:
        return [t.colour for t in self.things]

    @property
    def sizes(self) -> List[str]:
        return [t.size for t in self.things]

    def sidecar(self, fps: float | None = None) -> Dict[str, Any]:
        """JSON-ready description of the video: vocabulary, things, first-frame prompts, expressions."""
        objects = []
        for i, (info, prompt, expr) in enumerate(zip(self.things, self.prompts, self.expressions)):
            objects.append({
                "id": i + 1,
                "category_id": info.category,
                "category": info.name,
                "colour": info.colour,
                "size": info.size,
                "texture": info.texture,
                "motion": info.motion,
                "first_frame": info.first_frame,
                "last_frame": info.last_frame,
                "expression": expr,
                "prompt": {
                    "frame": prompt.frame,
                    "points": prompt.points.tolist(),
                    "negative_points": prompt.negative_points.tolist(),
                    "box": [float(v) for v in prompt.box],
                    "scribble": prompt.scribble_points.tolist(),
                    "mask_rle": {"size": list(prompt.mask.shape), "counts": rle_encode(prompt.mask).tolist()},
                },
            })
        return {
            "seed": self.seed,
            "num_frames": self.num_frames,
            "height": self.height,
            "width": self.width,
            **({"fps": fps} if fps is not None else {}),
            "thing_classes": list(THING_CLASSES),
            "stuff_classes": list(STUFF_CLASSES),
            "coordinates": "pixels, points (x, y), box xyxy with x1/y1 exclusive; "
                           "mask_rle is COCO uncompressed RLE (column-major, starts with a run of 0s)",
            "objects": objects,
            "stuff": [CLASSES[s.category] for s in self.segments if not s.isthing],
        }


# ----------------------------------------------------------------------------------------------------
# Shapes (unit polygons inside the unit circle; a ring also carries a hole)
# ----------------------------------------------------------------------------------------------------
def _regular(n: int, radius: float = 1.0, phase: float = -math.pi / 2) -> np.ndarray:
    a = phase + np.arange(n) * 2 * math.pi / n
    return np.stack([radius * np.cos(a), radius * np.sin(a)], axis=1)


def _star() -> np.ndarray:
    a = -math.pi / 2 + np.arange(10) * math.pi / 5
    r = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
    return np.stack([r * np.cos(a), r * np.sin(a)], axis=1)


def _cross(w: float = 0.36) -> np.ndarray:
    return np.array([(-w, -1), (w, -1), (w, -w), (1, -w), (1, w), (w, w), (w, 1), (-w, 1), (-w, w), (-1, w), (-1, -w),
                     (-w, -w)], dtype=np.float64) * 0.95


_SHAPES: Dict[str, Tuple[np.ndarray, Optional[np.ndarray]]] = {
    "circle": (_regular(40), None),
    "square": (_regular(4, phase=-math.pi / 4), None),
    "triangle": (_regular(3) * np.array([1.0, 1.0]) + np.array([0.0, 0.12]), None),
    "star": (_star(), None),
    "hexagon": (_regular(6, phase=0.0), None),
    "diamond": (np.array([(0.0, -1.0), (0.58, 0.0), (0.0, 1.0), (-0.58, 0.0)]), None),
    "cross": (_cross(), None),
    "ring": (_regular(40), _regular(40, radius=0.55)),
}


# ----------------------------------------------------------------------------------------------------
# Scene sampling
# ----------------------------------------------------------------------------------------------------
@dataclass
class _Thing:
    category: int
    colour: str
    size: str
    texture: str
    motion: str
    radius0: float
    growth: float  # radius(t) = radius0 * (1 + growth * t / (T - 1))
    center0: np.ndarray  # (x, y) at t = 0
    velocity: np.ndarray  # (vx, vy)
    angle0: float
    omega: float
    tex_freq: float
    depth: int = 0

    def radius(self, t: float, n_frames: int) -> float:
        return self.radius0 * (1.0 + self.growth * t / max(n_frames - 1, 1))

    def bound_radius(self, n_frames: int) -> float:
        return max(self.radius(0, n_frames), self.radius(n_frames - 1, n_frames))


def _sample_things(rng: np.random.Generator, cfg: SyntheticConfig) -> List[_Thing]:
    T, H, W = cfg.num_frames, cfg.height, cfg.width
    side = min(H, W)
    n = int(rng.integers(cfg.min_things, cfg.max_things + 1))
    things: List[_Thing] = []
    used = set()
    colour_names = list(COLOURS)
    for _ in range(n):
        # appearance tuples are unique within a video, so attributes always suffice to tell things apart
        for _attempt in range(100):
            app = (int(rng.integers(NUM_THING_CLASSES)), colour_names[int(rng.integers(len(colour_names)))],
                   SIZES[int(rng.integers(len(SIZES)))], TEXTURES[int(rng.integers(len(TEXTURES)))])
            if app not in used:
                break
        used.add(app)
        category, colour, size, texture = app
        lo, hi = _RADIUS_RANGE[size]
        radius0 = float(rng.uniform(lo, hi)) * side
        growth = float(rng.uniform(-0.25, 0.3))
        r_tmp = _Thing(category, colour, size, texture, "", radius0, growth, np.zeros(2), np.zeros(2), 0.0, 0.0, 1.0)
        rb = r_tmp.bound_radius(T)

        u = rng.random()
        mode = "enter" if u < cfg.p_enter else ("leave" if u < cfg.p_enter + cfg.p_leave else "inside")
        if T < 3:
            mode = "inside"
        still = mode == "inside" and rng.random() < cfg.p_still
        motion = "staying still" if still else list(_DIRECTIONS)[int(rng.integers(4))]
        if still:
            direction = np.zeros(2)
        else:  # near-cardinal heading, so that the motion word is unambiguous
            base = np.arctan2(_DIRECTIONS[motion][1], _DIRECTIONS[motion][0])
            ang = base + rng.uniform(-0.3, 0.3)
            direction = np.array([np.cos(ang), np.sin(ang)])
        main = int(np.argmax(np.abs(direction))) if not still else 0
        extent = np.array([W, H], dtype=np.float64)

        if mode == "enter":
            t_in = int(rng.integers(1, max(2, T // 2)))
            pos_in = np.array([rng.uniform(rb, W - rb), rng.uniform(rb, H - rb)])
            # just outside the border the thing moves away from
            pos_in[main] = -rb - 1 if direction[main] > 0 else extent[main] + rb + 1
            travel = (2 * rb + 0.15 * extent[main]) / max(T - 1 - t_in, 1)
            speed = max(float(rng.uniform(0.6, 2.0)) * side / 256, travel / abs(direction[main]))
            velocity = direction * speed
            center0 = pos_in - velocity * t_in
        elif mode == "leave":
            t_out = int(rng.integers(max(2, T // 2), T))
            center0 = np.array([rng.uniform(rb, W - rb), rng.uniform(rb, H - rb)])
            exit_coord = extent[main] + rb + 1 if direction[main] > 0 else -rb - 1
            speed = abs(exit_coord - center0[main]) / (abs(direction[main]) * t_out)
            velocity = direction * speed
        else:
            center0 = np.array([rng.uniform(rb, W - rb), rng.uniform(rb, H - rb)])
            speed = 0.0 if still else float(rng.uniform(0.4, 2.0)) * side / 256
            velocity = direction * speed
        omega = float(rng.uniform(-0.08, 0.08))
        things.append(_Thing(category, colour, size, texture, motion, radius0, growth, center0, velocity,
                             float(rng.uniform(0, 2 * math.pi)), omega, float(rng.uniform(2.0, 3.2))))
    for depth, idx in enumerate(rng.permutation(len(things))):
        things[int(idx)].depth = depth
    return things


# ----------------------------------------------------------------------------------------------------
# Stuff world (a canvas larger than the view; the camera crops it)
# ----------------------------------------------------------------------------------------------------
def _smooth_noise(rng: np.random.Generator, h: int, w: int, cell_y: float, cell_x: float) -> np.ndarray:
    gh, gw = max(2, int(math.ceil(h / cell_y)) + 2), max(2, int(math.ceil(w / cell_x)) + 2)
    grid = rng.random((gh, gw), dtype=np.float32)
    up = cv2.resize(grid, (int(gw * cell_x), int(gh * cell_y)), interpolation=cv2.INTER_CUBIC)
    return np.clip(up[:h, :w], 0.0, 1.0)


def _stuff_texture(name: str, rng: np.random.Generator, h: int, w: int, unit: float) -> np.ndarray:
    ys = np.arange(h, dtype=np.float32)[:, None]
    xs = np.arange(w, dtype=np.float32)[None, :]
    if name == "sky":
        top, bottom = np.array([110, 165, 235], np.float32), np.array([185, 212, 245], np.float32)
        g = (ys / max(h - 1, 1))[..., None]
        base = top * (1 - g) + bottom * g
        cloud = np.clip((_smooth_noise(rng, h, w, 22 * unit, 34 * unit) - 0.55) * 4.0, 0, 1)[..., None]
        return base * (1 - 0.8 * cloud) + np.array([245, 246, 250], np.float32) * 0.8 * cloud
    if name == "ground":
        n1 = _smooth_noise(rng, h, w, 7 * unit, 7 * unit)
        n2 = rng.random((h, w), dtype=np.float32)
        return np.array([140, 100, 62], np.float32) * (0.75 + 0.3 * n1 + 0.12 * n2)[..., None]
    if name == "water":
        phase = float(rng.uniform(0, 2 * math.pi))
        s = np.sin(ys * (0.55 / unit) + 2.2 * np.sin(xs * (0.045 / unit) + phase))
        shade = 0.82 + 0.14 * s + 0.25 * (s > 0.93)
        return np.array([28, 88, 158], np.float32) * shade[..., None]
    if name == "grass":
        blades = _smooth_noise(rng, h, w, 6 * unit, 1.2 * unit)
        return np.array([58, 140, 48], np.float32) * (0.65 + 0.55 * blades)[..., None]
    if name == "wall":
        bh, bw = max(4, int(round(12 * unit))), max(8, int(round(26 * unit)))
        row = (ys // bh).astype(np.int64)
        shifted = xs + (row % 2) * (bw // 2)
        col = (shifted // bw).astype(np.int64)
        shade_tab = rng.uniform(0.8, 1.1, size=(int(row.max()) + 2, int(col.max()) + 2)).astype(np.float32)
        brick = np.array([168, 82, 62], np.float32) * shade_tab[row, col][..., None]
        mortar = ((ys % bh) < max(1, bh // 6)) | ((shifted % bw) < max(1, bw // 12))
        return np.where(mortar[..., None], np.array([205, 200, 190], np.float32), brick)
    raise KeyError(name)


def _stuff_world(rng: np.random.Generator, cfg: SyntheticConfig, hw: int, ww: int) -> Tuple[np.ndarray, np.ndarray]:
    """Returns (label map int [hw, ww] indexing STUFF_CLASSES, RGB float32 [hw, ww, 3])."""
    k = int(rng.integers(cfg.min_stuff, cfg.max_stuff + 1))
    chosen = [int(c) for c in rng.choice(len(STUFF_CLASSES), size=k, replace=False)]
    # sky (if any) is the top layer, wall next; the rest in random order
    order = sorted(chosen, key=lambda c: (0 if STUFF_CLASSES[c] == "sky" else 1 if STUFF_CLASSES[c] == "wall" else 2))
    head = [c for c in order if STUFF_CLASSES[c] in ("sky", "wall")]
    tail = [c for c in order if c not in head]
    tail = [tail[int(i)] for i in rng.permutation(len(tail))]
    layers = head + tail
    xs = np.arange(ww, dtype=np.float64)
    ys = np.arange(hw, dtype=np.float64)[:, None]
    layer_idx = np.zeros((hw, ww), dtype=np.int64)
    for j in range(1, len(layers)):
        frac = j / len(layers) + rng.uniform(-0.06, 0.06)
        amp1, amp2 = rng.uniform(0.01, 0.05) * hw, rng.uniform(0.0, 0.02) * hw
        lam1, lam2 = rng.uniform(0.6, 1.5) * cfg.width, rng.uniform(0.15, 0.35) * cfg.width
        ph1, ph2 = rng.uniform(0, 2 * math.pi, size=2)
        boundary = (frac * hw + amp1 * np.sin(2 * math.pi * xs / lam1 + ph1)
                    + amp2 * np.sin(2 * math.pi * xs / lam2 + ph2))
        layer_idx += (ys >= boundary[None, :]).astype(np.int64)
    labels = np.asarray(layers, dtype=np.int64)[layer_idx]
    # optional blobs (a pond, a patch of grass, ...) in the lower half
    for _ in range(int(rng.integers(0, 3))):
        cls = int(rng.integers(len(STUFF_CLASSES)))
        if STUFF_CLASSES[cls] == "sky":
            continue
        centre = (int(rng.uniform(0, ww)), int(rng.uniform(0.55, 0.95) * hw))
        axes = (int(rng.uniform(0.12, 0.3) * cfg.width), int(rng.uniform(0.05, 0.12) * cfg.height))
        blob = np.zeros((hw, ww), np.uint8)
        cv2.ellipse(blob, centre, axes, float(rng.uniform(-20, 20)), 0, 360, 1, -1)
        labels[blob.astype(bool)] = cls
    unit = min(cfg.height, cfg.width) / 256.0
    rgb = np.empty((hw, ww, 3), np.float32)
    for cls in np.unique(labels):
        sel = labels == cls
        rgb[sel] = _stuff_texture(STUFF_CLASSES[int(cls)], rng, hw, ww, max(unit, 0.25))[sel]
    return labels, rgb


# ----------------------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------------------
def _shade(texture: str, u: np.ndarray, v: np.ndarray, freq: float) -> np.ndarray:
    if texture == "plain":
        return 1.0 - 0.12 * (v + 1.0) * 0.5
    if texture == "striped":
        return np.where(np.sin(u * freq * math.pi) > 0, 1.0, 0.5)
    if texture == "dotted":
        fu, fv = (u * freq) % 1.0 - 0.5, (v * freq) % 1.0 - 0.5
        return np.where(fu * fu + fv * fv < 0.08, 0.45, 1.0)
    if texture == "checkered":
        return np.where((np.floor(u * freq) + np.floor(v * freq)) % 2 == 0, 1.0, 0.55)
    raise KeyError(texture)


def _paint_thing(th: _Thing, t: int, cfg: SyntheticConfig, frame: np.ndarray, idmap: np.ndarray, index: int) -> None:
    H, W = cfg.height, cfg.width
    r = th.radius(t, cfg.num_frames)
    if r < 0.5:
        return
    c = th.center0 + th.velocity * t
    a = th.angle0 + th.omega * t
    ca, sa = math.cos(a), math.sin(a)
    x0, y0 = max(int(math.floor(c[0] - r)) - 1, 0), max(int(math.floor(c[1] - r)) - 1, 0)
    x1, y1 = min(int(math.ceil(c[0] + r)) + 2, W), min(int(math.ceil(c[1] + r)) + 2, H)
    if x1 <= x0 or y1 <= y0:
        return
    outer, hole = _SHAPES[THING_CLASSES[th.category]]
    rot = np.array([[ca, -sa], [sa, ca]])
    local = np.zeros((y1 - y0, x1 - x0), np.uint8)
    shift = 4  # sub-pixel vertices (fixed point, 1/16 pixel)

    def poly(unit: np.ndarray) -> np.ndarray:
        # pixel (i, j) covers [j, j+1) x [i, i+1): vertices are moved by -0.5 to address pixel centres
        pts = unit @ rot.T * r + c - np.array([x0 + 0.5, y0 + 0.5])
        return np.round(pts * (1 << shift)).astype(np.int32)

    cv2.fillPoly(local, [poly(outer)], 1, lineType=cv2.LINE_8, shift=shift)
    if hole is not None:
        cv2.fillPoly(local, [poly(hole)], 0, lineType=cv2.LINE_8, shift=shift)
    m = local.astype(bool)
    if not m.any():
        return
    iy, ix = np.nonzero(m)
    dx, dy = ix + x0 + 0.5 - c[0], iy + y0 + 0.5 - c[1]
    u, v = (ca * dx + sa * dy) / r, (-sa * dx + ca * dy) / r
    colour = np.asarray(COLOURS[th.colour], np.float32) * _shade(th.texture, u, v, th.tex_freq)[:, None]
    region = frame[y0:y1, x0:x1]
    region[iy, ix] = colour
    if cfg.antialias:
        # tint the one-pixel rim just outside the mask towards the thing's mean colour; pixels of the mask
        # keep their pure colour, so masks and frames stay consistent
        alpha = cv2.blur(local.astype(np.float32), (3, 3))
        alpha[m] = 0.0
        ry, rx = np.nonzero(alpha > 0)
        a = 0.5 * alpha[ry, rx, None]
        region[ry, rx] = a * colour.mean(axis=0) + (1 - a) * region[ry, rx]
    idmap[y0:y1, x0:x1][m] = index


def _render(things: Sequence[_Thing], stuff_rgb: np.ndarray, camera: np.ndarray, cfg: SyntheticConfig,
            rng_noise: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    T, H, W = cfg.num_frames, cfg.height, cfg.width
    frames = np.empty((T, H, W, 3), np.float32)
    idmap = np.full((T, H, W), -1, np.int16)
    order = sorted(range(len(things)), key=lambda i: things[i].depth)
    for t in range(T):
        ox, oy = int(camera[t, 0]), int(camera[t, 1])
        frames[t] = stuff_rgb[oy:oy + H, ox:ox + W]
        for i in order:
            _paint_thing(things[i], t, cfg, frames[t], idmap[t], i)
    if cfg.noise > 0:
        bank = rng_noise.integers(-cfg.noise, cfg.noise + 1, size=(3, H, W, 3), dtype=np.int16).astype(np.float32)
        frames += bank[np.arange(T) % 3]
    return np.clip(np.round(frames), 0, 255).astype(np.uint8), idmap


# ----------------------------------------------------------------------------------------------------
# Annotations derived from the rendered masks
# ----------------------------------------------------------------------------------------------------
def _positions(masks: np.ndarray, areas: np.ndarray, min_area: int) -> Tuple[List[Optional[str]], List[Optional[str]]]:
    N, T, H, W = masks.shape
    hpos: List[Optional[str]] = []
    vpos: List[Optional[str]] = []
    ys = np.arange(H, dtype=np.float64)
    xs = np.arange(W, dtype=np.float64)
    for i in range(N):
        keep = areas[i] >= min_area
        m = masks[i, keep]
        a = areas[i, keep].astype(np.float64)
        cx = (m.sum(axis=1) @ xs) / a  # [T'] centroid x
        cy = (m.sum(axis=2) @ ys) / a
        hpos.append("left" if np.all(cx < 0.45 * W) else "right" if np.all(cx > 0.55 * W) else None)
        vpos.append("top" if np.all(cy < 0.45 * H) else "bottom" if np.all(cy > 0.55 * H) else None)
    return hpos, vpos


_FACETS = ("size", "colour", "texture", "hpos", "vpos", "motion")


def _phrase(info: ThingInfo, facets: Sequence[str]) -> str:
    words = ["the"]
    if "size" in facets:
        words.append(info.size)
    if "colour" in facets:
        words.append(info.colour)
    if "texture" in facets:
        words.append(info.texture)
    words.append(info.name)
    h = info.hpos if "hpos" in facets else None
    v = info.vpos if "vpos" in facets else None
    if h and v:
        words.append(f"at the {v} {h}")
    elif v:
        words.append(f"at the {v}")
    elif h:
        words.append(f"on the {h}")
    if "motion" in facets:
        words.append(info.motion)
    return " ".join(words)


def _expressions(things: Sequence[ThingInfo], rng: np.random.Generator) -> List[str]:
    """Greedy: random starting facets, then add facets until no other thing matches all of them."""

    def value(info: ThingInfo, f: str):
        return getattr(info, f)

    out = []
    for i, info in enumerate(things):
        usable = [f for f in _FACETS if value(info, f) is not None]
        order = [usable[int(j)] for j in rng.permutation(len(usable))]
        n_start = int(rng.integers(0, 3))
        chosen = order[:n_start]
        rest = order[n_start:]

        def ambiguous(facets: Sequence[str]) -> bool:
            return any(o.category == info.category and all(value(o, f) == value(info, f) for f in facets)
                       for j, o in enumerate(things) if j != i)

        while ambiguous(chosen) and rest:
            chosen.append(rest.pop(0))
        if ambiguous(chosen):  # cannot happen: appearance tuples are unique
            raise RuntimeError("could not build a unique referring expression")
        out.append(_phrase(info, chosen))
    return out


def _make_prompt(mask: np.ndarray, frame: int, rng: np.random.Generator) -> Prompt:
    H, W = mask.shape
    m8 = mask.astype(np.uint8)
    dist = cv2.distanceTransform(np.pad(m8, 1), cv2.DIST_L2, 3)[1:-1, 1:-1]
    dmax = float(dist.max())
    core = np.argwhere(dist >= 0.5 * dmax)  # (y, x) of the interior
    best = np.argwhere(dist == dmax)[0]
    n_pos = int(rng.integers(1, 4))
    extra = core[rng.permutation(len(core))[: n_pos - 1]] if len(core) > 1 else np.zeros((0, 2), np.int64)
    pts_yx = np.concatenate([best[None], extra], axis=0)
    points = pts_yx[:, ::-1].astype(np.int32)

    ys, xs = np.nonzero(mask)
    box = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)

    k = max(3, int(round(0.25 * math.sqrt(len(ys)))))
    ring = cv2.dilate(m8, np.ones((2 * k + 1, 2 * k + 1), np.uint8)).astype(bool) & ~mask
    cand = np.argwhere(ring)
    if len(cand) == 0:
        cand = np.argwhere(~mask)
    if len(cand):
        negative = cand[[int(rng.integers(len(cand)))]][:, ::-1].astype(np.int32)
    else:
        negative = np.zeros((0, 2), np.int32)

    n_sc = int(rng.integers(2, 5))
    verts = core[rng.permutation(len(core))[:n_sc]].astype(np.float64)
    if len(core) > 2:  # order the vertices along the main axis of the interior
        centred = core - core.mean(axis=0)
        _, _, vt = np.linalg.svd(centred.astype(np.float64), full_matrices=False)
        verts = verts[np.argsort((verts - core.mean(axis=0)) @ vt[0])]
    scribble_pts = verts[:, ::-1].astype(np.int32)
    canvas = np.zeros((H, W), np.uint8)
    cv2.polylines(canvas, [scribble_pts.reshape(-1, 1, 2)], False, 1, thickness=1, lineType=cv2.LINE_8)
    canvas[scribble_pts[:, 1], scribble_pts[:, 0]] = 1
    scribble = canvas.astype(bool) & mask
    return Prompt(frame=frame, mask=mask.copy(), points=points, negative_points=negative, box=box,
                  scribble=scribble, scribble_points=scribble_pts)


# ----------------------------------------------------------------------------------------------------
# Public generator
# ----------------------------------------------------------------------------------------------------
def generate_video(seed: int, config: SyntheticConfig | None = None, **overrides: Any) -> SyntheticVideo:
    """Generate one annotated video; the same (seed, config) always gives the same arrays."""
    cfg = replace(config or SyntheticConfig(), **overrides)
    if cfg.num_frames < 1 or cfg.height < 16 or cfg.width < 16:
        raise ValueError("need num_frames >= 1 and a frame of at least 16x16 pixels")
    if not 1 <= cfg.min_things <= cfg.max_things:
        raise ValueError("need 1 <= min_things <= max_things")
    T, H, W = cfg.num_frames, cfg.height, cfg.width
    root = np.random.SeedSequence([int(seed), 0x5EED])
    rng_scene, rng_stuff, rng_noise, rng_ann = (np.random.default_rng(s) for s in root.spawn(4))

    # camera pan: integer offsets of the view inside a larger stuff canvas
    cam_v = np.array([rng_scene.uniform(-1, 1) * cfg.max_camera_speed,
                      rng_scene.uniform(-0.3, 0.3) * cfg.max_camera_speed])
    span = np.abs(cam_v) * max(T - 1, 0)
    hw, ww = H + int(math.ceil(span[1])) + 1, W + int(math.ceil(span[0])) + 1
    start = np.where(cam_v >= 0, 0.0, span)
    camera = np.round(start[None, :] + cam_v[None, :] * np.arange(T)[:, None]).astype(np.int32)
    camera = np.clip(camera, 0, np.array([ww - W, hw - H]))
    stuff_labels, stuff_rgb = _stuff_world(rng_stuff, cfg, hw, ww)

    things = _sample_things(rng_scene, cfg)
    noise_seed = int(rng_noise.integers(2**62))
    while True:
        frames, idmap = _render(things, stuff_rgb, camera, cfg, np.random.default_rng(noise_seed))
        counts = np.stack([(idmap == i).sum(axis=(1, 2)) for i in range(len(things))]) if things else np.zeros((0, T))
        ok = counts.max(axis=1) >= cfg.min_prompt_area if len(things) else np.zeros(0, bool)
        if ok.all():
            break
        # a thing never seen well enough (hidden or off screen): drop it and render again
        things = [th for th, k in zip(things, ok) if k]

    N = len(things)
    masks = idmap[None] == np.arange(N, dtype=np.int16)[:, None, None, None]
    areas = counts

    view_labels = np.stack([stuff_labels[oy:oy + H, ox:ox + W] for ox, oy in camera])  # [T, H, W]
    thing_cat = np.array([th.category for th in things], np.int32)
    semantic = (view_labels + NUM_THING_CLASSES).astype(np.int32)
    panoptic = (view_labels + STUFF_ID_OFFSET).astype(np.int32)
    fg = idmap >= 0
    if N:
        semantic[fg] = thing_cat[idmap[fg]]
        panoptic[fg] = idmap[fg].astype(np.int32) + 1

    hpos, vpos = _positions(masks, areas, cfg.min_prompt_area)
    infos = []
    for i, th in enumerate(things):
        vis = np.flatnonzero(areas[i] > 0)
        infos.append(ThingInfo(category=th.category, colour=th.colour, size=th.size, texture=th.texture,
                               motion=th.motion, hpos=hpos[i], vpos=vpos[i], first_frame=int(vis[0]),
                               last_frame=int(vis[-1]), depth=th.depth))
    expressions = _expressions(infos, rng_ann)
    prompts = []
    for i in range(N):
        need = max(cfg.min_prompt_area, cfg.prompt_area_frac * float(areas[i].max()))
        t0 = int(np.flatnonzero(areas[i] >= need)[0])
        prompts.append(_make_prompt(masks[i, t0], t0, rng_ann))

    segments = [Segment(id=i + 1, category=int(things[i].category), isthing=True, thing=i) for i in range(N)]
    present_stuff = np.flatnonzero(np.bincount(view_labels[~fg], minlength=len(STUFF_CLASSES)))
    segments += [Segment(id=STUFF_ID_OFFSET + int(s), category=NUM_THING_CLASSES + int(s), isthing=False, thing=-1)
                 for s in present_stuff]
    return SyntheticVideo(seed=int(seed), frames=frames, masks=masks, things=infos, semantic=semantic,
                          panoptic=panoptic, segments=segments, expressions=expressions, prompts=prompts,
                          camera=camera)


def generate_dataset(seed: int, n_videos: int, config: SyntheticConfig | None = None,
                     **overrides: Any) -> Iterator[SyntheticVideo]:
    """Yield ``n_videos`` videos with seeds ``seed, seed + 1, ...`` (lazily; see the split convention)."""
    cfg = replace(config or SyntheticConfig(), **overrides)
    for i in range(n_videos):
        yield generate_video(seed + i, cfg)


# ----------------------------------------------------------------------------------------------------
# Writing: mp4 (H.264, the engine's preview writer) + JSON sidecar, both atomically
# ----------------------------------------------------------------------------------------------------
def write_mp4(frames: np.ndarray, path: str | os.PathLike, fps: float = 12.0, crf: int = 28) -> None:
    """Encode uint8 RGB frames [T, H, W, 3] as H.264/yuv420p mp4 (H and W must be even), atomically."""
    from univs_engine.io.writers import OverlayVideoWriter  # noqa: PLC0415  (imports torch: only when writing)

    T, H, W, _ = frames.shape
    if H % 2 or W % 2:
        raise ValueError("H.264 with yuv420p needs even frame sizes")
    with OverlayVideoWriter(path, W, H, fps, overwrite=True, crf=crf) as writer:
        for f in frames:
            writer.write(f)


def _write_json(obj: Any, path: Path) -> None:
    text = json.dumps(obj, indent=1)
    # keep purely numeric lists (points, boxes, RLE counts) on one line
    text = re.sub(r"\[[\d\s,.\-\[\]]*\]", lambda m: re.sub(r"\s+", "", m.group(0)).replace(",", ", "), text)
    with atomic_file(path) as tmp:
        tmp.write_text(text + "\n", encoding="utf-8")


def write_sample(out: str | os.PathLike, seed: int = 7, frames: int = 48, width: int = 320, height: int = 240,
                 fps: float = 12.0, crf: int = 28, **overrides: Any) -> Tuple[Path, Path]:
    """Render one video and write ``out`` (mp4) plus ``out`` with a .json suffix (the sidecar)."""
    video = generate_video(seed, num_frames=frames, height=height, width=width, **overrides)
    out = Path(out)
    write_mp4(video.frames, out, fps=fps, crf=crf)
    sidecar = out.with_suffix(".json")
    _write_json(video.sidecar(fps=fps), sidecar)
    return out, sidecar


def _parse_size(text: str) -> Tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"size must look like WIDTHxHEIGHT, got {text!r}") from exc
    return w, h


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Write a synthetic annotated sample video (mp4 + JSON sidecar).")
    ap.add_argument("--out", required=True, help="output .mp4 path; the sidecar gets the same name with .json")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--frames", type=int, default=48)
    ap.add_argument("--size", type=_parse_size, default=(320, 240), help="WIDTHxHEIGHT, e.g. 320x240")
    ap.add_argument("--fps", type=float, default=12.0)
    ap.add_argument("--crf", type=int, default=28, help="x264 constant rate factor (higher = smaller file)")
    args = ap.parse_args(argv)
    w, h = args.size
    mp4, side = write_sample(args.out, seed=args.seed, frames=args.frames, width=w, height=h, fps=args.fps,
                             crf=args.crf)
    print(f"wrote {mp4} ({mp4.stat().st_size} bytes) and {side}")


if __name__ == "__main__":
    main()
