"""Matte export from UNIVS_TRACKS: PNG sequences (8/16 bit, soft edges kept) and alpha videos.

Streams one frame at a time; uses the engine's atomic ``AlphaVideoWriter`` for ProRes 4444 ``.mov`` and VP9
``.webm``. No ComfyUI imports: the output folder is passed in.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from .select import EdgeOptions

__all__ = ["FORMATS", "VIDEO_FORMATS", "next_output_base", "object_groups", "export_mattes"]

FORMATS = {
    "png8": "8-bit PNG matte sequence",
    "png16": "16-bit PNG matte sequence",
    "prores4444_mov": "ProRes 4444 .mov with alpha (colour from the frames)",
    "webm_alpha": "VP9 .webm with alpha (colour from the frames)",
}
VIDEO_FORMATS = ("prores4444_mov", "webm_alpha")

_SAFE = re.compile(r"[^A-Za-z0-9_\-]+")


def _safe(name: str) -> str:
    return _SAFE.sub("_", name).strip("_") or "x"


def next_output_base(output_dir: str, prefix: str) -> Path:
    """``<output_dir>/<prefix>_00001`` with the first free counter (prefix may contain sub-folders)."""
    prefix = (prefix or "univs/matte").replace("\\", "/").strip("/")
    parts = [p for p in prefix.split("/") if p not in ("", ".")]
    if not parts or any(p == ".." for p in parts):
        raise ValueError(f"filename_prefix: {prefix!r} must be a relative name inside the output folder")
    parent = Path(output_dir).joinpath(*parts[:-1])
    stem = _safe(parts[-1])
    parent.mkdir(parents=True, exist_ok=True)
    taken = set(os.listdir(parent))
    n = 1
    while any(t == f"{stem}_{n:05d}" or t.startswith(f"{stem}_{n:05d}.") or t.startswith(f"{stem}_{n:05d}_") for t in taken):
        n += 1
    return parent / f"{stem}_{n:05d}"


def object_groups(tracks: Any, obj_ids: Sequence[int], per_object: bool) -> list[tuple[str, list[int]]]:
    """``[(name, ids), ...]``: one ``("matte", ids)`` group, or one group per object named ``<id>_<label>``."""
    if not per_object:
        return [("matte", list(obj_ids))]
    out = []
    for oid in obj_ids:
        label = tracks.info(oid).label
        out.append((f"{oid}_{_safe(label)}" if label else str(oid), [oid]))
    return out


def _matte(tracks: Any, f: int, ids: Sequence[int], edge: EdgeOptions, rgb: np.ndarray | None) -> np.ndarray:
    m = tracks.union(f, list(ids)) if ids else np.zeros((tracks.height, tracks.width), dtype=bool)
    return edge.apply(torch.from_numpy(m)[None], [f], None if rgb is None else (lambda _: rgb))[0].numpy()


def export_mattes(
    tracks: Any,
    obj_ids: Sequence[int],
    frames: Sequence[int],
    fmt: str,
    base: Path,
    per_object: bool = False,
    edge: EdgeOptions = EdgeOptions(),
    rgb_getter: Callable[[int], np.ndarray] | None = None,
    fps: float = 24.0,
    progress: Callable[[int, int], None] | None = None,
) -> list[Path]:
    """Write the mattes; returns the written folders (PNG) or files (video).

    PNG: ``<base>/<group>/<frame:05d>.png`` (frame = index in the video); video: ``<base>_<group>.mov|.webm``
    with the frames' colour (``rgb_getter``) or white where no frames are given. ``edge`` shapes the mattes'
    edges (an edge-aware matte needs ``rgb_getter``).
    """
    if fmt not in FORMATS:
        raise ValueError(f"format: unknown format {fmt!r}; choose one of {list(FORMATS)}")
    if not obj_ids:
        raise ValueError("select: no object selected, nothing to export")
    groups = object_groups(tracks, obj_ids, per_object)
    frames = list(frames)
    total = len(frames) * len(groups)
    done = 0
    out: list[Path] = []
    if fmt in ("png8", "png16"):
        from PIL import Image

        for name, ids in groups:
            folder = base / name
            folder.mkdir(parents=True, exist_ok=True)
            for f in frames:
                m = _matte(tracks, f, ids, edge, None if rgb_getter is None else rgb_getter(f))
                if fmt == "png8":
                    img = Image.fromarray((m * 255.0 + 0.5).astype(np.uint8))
                else:
                    img = Image.fromarray((m * 65535.0 + 0.5).astype(np.uint16))
                img.save(folder / f"{f:05d}.png", format="PNG", compress_level=3)
                done += 1
                if progress:
                    progress(done, total)
            out.append(folder)
        return out
    from univs_engine.io.writers import AlphaVideoWriter

    ext = ".mov" if fmt == "prores4444_mov" else ".webm"
    for name, ids in groups:
        path = base.parent / f"{base.name}_{name}{ext}"
        with AlphaVideoWriter(path, tracks.width, tracks.height, float(fps)) as w:
            for f in frames:
                rgb = None if rgb_getter is None else rgb_getter(f)
                w.write((_matte(tracks, f, ids, edge, rgb) * 255.0 + 0.5).astype(np.uint8), rgb)
                done += 1
                if progress:
                    progress(done, total)
        out.append(Path(w.path))
    return out
