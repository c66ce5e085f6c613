"""Compact per-video segmentation results: one RLE per object per frame, kept on the CPU.

A :class:`Tracks` grows frame by frame while the engine runs and never holds dense masks of the whole video;
dense arrays are produced only for the one frame asked for (:meth:`Tracks.mask`, :meth:`Tracks.id_map`, ...).

Storage rules

* Only non-empty masks are stored: ``set_mask`` with an all-False mask removes the entry, so ``has_mask`` means
  "the object is visible in this frame" and ``confidence`` of such a frame is ``nan``.
* Counts are kept as uint16 when every run fits (frames up to 65535 pixels or short runs), else uint32.
* Overlaps: :meth:`Tracks.id_map` and :meth:`Tracks.color_map` paint objects in insertion order
  (``add_object`` order), so where masks overlap the **later-added** object wins.
* Shown objects: ``min_score`` is the score a result needs to be shown (the task's class threshold for
  category-guided instance results, 0 otherwise); :meth:`Tracks.shown_ids` lists the objects that reach it.
  What a user sees (previews, colour / id maps, masks, SEGS) draws the shown objects by default, while the
  stored results and evaluation exports keep every object.

File format of :meth:`Tracks.save` (a single uncompressed ``.npz``, loadable with ``allow_pickle=False``):

=================  =========================================================================================
``meta``           uint8 bytes of a UTF-8 JSON object: ``format`` ("univs-tracks"), ``version`` (2),
                   ``num_frames``, ``height``, ``width``, ``fps`` (null when unknown), ``min_score`` (absent
                   in older files: 0), ``objects`` = list of ``{obj_id, label, category, isthing, score}`` in
                   insertion order
``segmented``      uint8 [ceil(num_frames / 8)] packed bits: frames a run processed (version 1 files:
                   every frame)
``entry_obj``      int64 [E]   object id of each stored mask
``entry_frame``    int64 [E]   frame index of each stored mask
``entry_conf``     float64 [E] confidence
``entry_offset``   int64 [E+1] slice of ``counts`` that holds each entry's RLE counts
``counts``         uint32 [sum] all COCO counts, concatenated
=================  =========================================================================================
"""
from __future__ import annotations

import colorsys
import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from . import rle as _rle
from .atomic import atomic_file
from .masks import binary_mask

__all__ = ["ObjectInfo", "Tracks", "object_color"]

_FORMAT = "univs-tracks"
_VERSION = 2


def object_color(obj_id: int) -> tuple[int, int, int]:
    """Deterministic, saturated RGB colour for an object id (golden-ratio hue walk; never black)."""
    h = (0.13 + obj_id * 0.618033988749895) % 1.0
    s = 0.65 + 0.3 * ((obj_id * 7) % 4) / 3.0
    v = 0.95 - 0.2 * ((obj_id * 3) % 3) / 2.0
    r, g, b = colorsys.hsv_to_rgb(h, s, v)
    return int(round(r * 255)), int(round(g * 255)), int(round(b * 255))


@dataclass
class ObjectInfo:
    """Metadata of one tracked object."""

    obj_id: int
    label: str = ""
    category: int | None = None
    isthing: bool = True
    score: float = 1.0
    color: tuple[int, int, int] = field(default=(0, 0, 0))


def _compact(counts: np.ndarray) -> np.ndarray:
    """Store counts in the smallest unsigned dtype that holds them."""
    if counts.size and int(counts.max()) < 65536:
        return counts.astype(np.uint16)
    return counts.astype(np.uint32)


class Tracks:
    """Segmentation results of one video, stored as per-frame RLE of every object.

    ``Tracks(num_frames, height, width)``; objects are registered with :meth:`add_object` and masks set per frame
    with :meth:`set_mask`. Frame indices are 0-based and must lie in ``[0, num_frames)``.
    """

    _min_score: float = 0.0  # class default: a Tracks pickled before min_score existed shows every object

    def __init__(self, num_frames: int, height: int, width: int) -> None:
        if num_frames < 0 or height <= 0 or width <= 0:
            raise ValueError(f"invalid Tracks size: num_frames={num_frames}, height={height}, width={width}")
        self.num_frames = int(num_frames)
        self.height = int(height)
        self.width = int(width)
        self.fps: float | None = None  # the source video's frame rate, when known
        # The score an object needs to be shown (shown_ids); lower-scored results are kept but not drawn.
        self.min_score: float = 0.0
        # Frames a run processed: an unprocessed frame must not look like "object absent" (a partial run, or a
        # propagation over part of the video).
        self._segmented = np.zeros(self.num_frames, dtype=bool)
        self._objects: dict[int, ObjectInfo] = {}
        # obj_id -> frame_idx -> (counts, confidence)
        self._masks: dict[int, dict[int, tuple[np.ndarray, float]]] = {}

    # ------------------------------------------------------------------------------------------ objects
    def add_object(
        self,
        obj_id: int,
        label: str = "",
        category: int | None = None,
        isthing: bool = True,
        score: float = 1.0,
    ) -> ObjectInfo:
        """Register an object (appended to the paint order). Raises ``ValueError`` if the id exists."""
        obj_id = int(obj_id)
        if obj_id in self._objects:
            raise ValueError(f"object {obj_id} already exists")
        if obj_id <= 0:
            raise ValueError(f"object ids must be positive (0 is the background), got {obj_id}")
        info = ObjectInfo(
            obj_id=obj_id,
            label=str(label),
            category=None if category is None else int(category),
            isthing=bool(isthing),
            score=float(score),
            color=object_color(obj_id),
        )
        self._objects[obj_id] = info
        self._masks[obj_id] = {}
        return info

    def update_object(self, obj_id: int, **fields: Any) -> ObjectInfo:
        """Change ``label``, ``category``, ``isthing``, ``score`` or ``color`` of an existing object."""
        info = self.info(obj_id)
        for k, v in fields.items():
            if k not in ("label", "category", "isthing", "score", "color"):
                raise ValueError(f"cannot update field {k!r}")
            setattr(info, k, v)
        return info

    def remove_object(self, obj_id: int) -> None:
        """Forget an object and all its masks."""
        self._require(obj_id)
        del self._objects[obj_id]
        del self._masks[obj_id]

    @property
    def object_ids(self) -> list[int]:
        """Object ids in insertion (paint) order."""
        return list(self._objects)

    @property
    def min_score(self) -> float:
        """The score an object needs to be shown (:meth:`shown_ids`); 0 shows every object."""
        return self._min_score

    @min_score.setter
    def min_score(self, value: float) -> None:
        v = float(value)
        if not math.isfinite(v):
            raise ValueError(f"min_score must be a finite number, got {value!r}")
        self._min_score = v

    def shown_ids(self) -> list[int]:
        """Object ids (paint order) whose score reaches ``min_score``: the objects outputs draw by default."""
        return [oid for oid, info in self._objects.items() if self.is_shown(oid)]

    def is_shown(self, obj_id: int) -> bool:
        """Whether the object's score reaches ``min_score``."""
        return float(self.info(obj_id).score) >= self._min_score

    def info(self, obj_id: int) -> ObjectInfo:
        """Metadata of one object."""
        return self._objects[self._require(obj_id)]

    def __contains__(self, obj_id: object) -> bool:
        return obj_id in self._objects

    def __len__(self) -> int:
        return len(self._objects)

    def _require(self, obj_id: int) -> int:
        obj_id = int(obj_id)
        if obj_id not in self._objects:
            raise KeyError(f"unknown object id {obj_id}; known: {self.object_ids}")
        return obj_id

    def _check_frame(self, frame_idx: int) -> int:
        f = int(frame_idx)
        if not 0 <= f < self.num_frames:
            raise IndexError(f"frame index {frame_idx} out of range [0, {self.num_frames})")
        return f

    # ------------------------------------------------------------------------------------------ masks
    def set_mask(self, frame_idx: int, obj_id: int, mask: Any, confidence: float = 1.0) -> None:
        """Store (overwrite) the mask of ``obj_id`` in ``frame_idx``; an empty mask clears the entry."""
        f = self._check_frame(frame_idx)
        oid = self._require(obj_id)
        arr = binary_mask(mask, self.height, self.width, "mask", floats="refuse", squeeze=False)
        self._store(f, oid, _rle.rle_encode(arr), confidence)

    def set_masks(self, frame_idx: int, obj_ids: Sequence[int], masks: Any, confidences: Sequence[float] | None = None) -> None:
        """Store several masks of one frame: ``masks`` is ``[N, H, W]`` matching ``obj_ids``."""
        if hasattr(masks, "detach"):
            masks = masks.detach().cpu().numpy()
        masks = np.asarray(masks)
        if masks.ndim != 3 or masks.shape[0] != len(obj_ids):
            raise ValueError(f"masks must be [N={len(obj_ids)}, H, W], got shape {masks.shape}")
        for i, oid in enumerate(obj_ids):
            self.set_mask(frame_idx, oid, masks[i], 1.0 if confidences is None else float(confidences[i]))

    def set_rle(self, frame_idx: int, obj_id: int, counts: Sequence[int] | np.ndarray, confidence: float = 1.0) -> None:
        """Store already-encoded COCO counts (validated against the frame size)."""
        f = self._check_frame(frame_idx)
        oid = self._require(obj_id)
        c = np.asarray(counts, dtype=np.int64)
        if c.ndim != 1 or c.size == 0 or (c < 0).any():
            raise ValueError("counts must be a non-empty 1-D array of non-negative run lengths")
        total = int(c.sum())
        if total != self.height * self.width:
            raise ValueError(f"counts sum to {total}, expected {self.height * self.width}")
        self._store(f, oid, c, confidence)

    def mark_segmented(self, frame_idx: int) -> None:
        """Record that ``frame_idx`` was processed (``set_mask`` / ``set_rle`` do this themselves)."""
        self._segmented[self._check_frame(frame_idx)] = True

    def is_segmented(self, frame_idx: int) -> bool:
        return bool(self._segmented[self._check_frame(frame_idx)])

    def weak_frames(self, ratio: float = 0.5, obj_ids: Sequence[int] | None = None) -> list[int]:
        """Segmented frames where a correction is most likely needed: an object's confidence falls below
        `ratio` x its median confidence, or the object is missing between two frames that have it (lost, then
        found again). Confidences are relative to each object's own level, which differs between models."""
        weak: set[int] = set()
        for oid in self.object_ids if obj_ids is None else obj_ids:
            frames = self.frames_with(oid)
            if not frames:
                continue
            conf = np.array([self.confidence(f, oid) for f in frames])
            level = float(np.median(conf))
            weak.update(f for f, c in zip(frames, conf) if c < ratio * level)
            weak.update(f for f in range(frames[0], frames[-1]) if self.is_segmented(f) and not self.has_mask(f, oid))
        return sorted(weak)

    def segmented_frames(self, frames: Iterable[int] | None = None) -> list[int]:
        """The processed frames among ``frames`` (default: the whole video), in the given order."""
        if frames is None:
            return np.flatnonzero(self._segmented).tolist()
        return [f for f in frames if self.is_segmented(f)]

    def _store(self, f: int, oid: int, counts: np.ndarray, confidence: float) -> None:
        self._segmented[f] = True
        per_obj = self._masks[oid]
        if _rle.rle_area(counts) == 0:
            per_obj.pop(f, None)
            return
        per_obj[f] = (_compact(counts), float(confidence))

    def clear_mask(self, frame_idx: int, obj_id: int) -> None:
        """Remove the mask of one object in one frame (no-op if absent)."""
        self._masks[self._require(obj_id)].pop(self._check_frame(frame_idx), None)

    def rle(self, frame_idx: int, obj_id: int) -> np.ndarray:
        """COCO counts of the mask (an all-zero RLE if absent)."""
        entry = self._masks[self._require(obj_id)].get(self._check_frame(frame_idx))
        if entry is None:
            return _rle.empty_counts(self.height, self.width)
        return entry[0].astype(np.uint32)

    def mask(self, frame_idx: int, obj_id: int) -> np.ndarray:
        """Dense bool mask ``[H, W]`` (zeros if never set)."""
        entry = self._masks[self._require(obj_id)].get(self._check_frame(frame_idx))
        if entry is None:
            return np.zeros((self.height, self.width), dtype=bool)
        return _rle.rle_decode(entry[0], self.height, self.width)

    def has_mask(self, frame_idx: int, obj_id: int) -> bool:
        """Whether a non-empty mask is stored for this object and frame."""
        return self._check_frame(frame_idx) in self._masks[self._require(obj_id)]

    def frames_with(self, obj_id: int) -> list[int]:
        """Sorted frame indices where the object has a (non-empty) mask."""
        return sorted(self._masks[self._require(obj_id)])

    def confidence(self, frame_idx: int, obj_id: int) -> float:
        """Stored confidence, ``nan`` if the object has no mask in this frame."""
        entry = self._masks[self._require(obj_id)].get(self._check_frame(frame_idx))
        return math.nan if entry is None else entry[1]

    def box(self, frame_idx: int, obj_id: int) -> tuple[int, int, int, int] | None:
        """Tight box ``(x0, y0, x1, y1)``, maxima inclusive (official convention); ``None`` if absent."""
        entry = self._masks[self._require(obj_id)].get(self._check_frame(frame_idx))
        return None if entry is None else _rle.rle_bbox(entry[0], self.height, self.width)

    def area(self, frame_idx: int, obj_id: int) -> int:
        """Foreground pixel count (0 if absent)."""
        entry = self._masks[self._require(obj_id)].get(self._check_frame(frame_idx))
        return 0 if entry is None else _rle.rle_area(entry[0])

    def objects_in(self, frame_idx: int) -> list[int]:
        """Ids (paint order) of the objects visible in a frame."""
        f = self._check_frame(frame_idx)
        return [oid for oid in self._objects if f in self._masks[oid]]

    # ------------------------------------------------------------------------------------------ composites
    def _ids(self, obj_ids: Iterable[int] | None) -> list[int]:
        if obj_ids is None:
            return self.object_ids
        wanted = {self._require(o) for o in obj_ids}
        return [o for o in self._objects if o in wanted]  # keep paint order

    def union(self, frame_idx: int, obj_ids: Iterable[int] | None = None) -> np.ndarray:
        """Bool ``[H, W]`` union of the given (default: all) objects."""
        f = self._check_frame(frame_idx)
        flat = np.zeros(self.height * self.width, dtype=bool)  # column-major buffer
        for oid in self._ids(obj_ids):
            entry = self._masks[oid].get(f)
            if entry is not None:
                flat[_rle.rle_fg_indices(entry[0])] = True
        return np.ascontiguousarray(flat.reshape(self.width, self.height).T)

    def id_map(self, frame_idx: int, obj_ids: Iterable[int] | None = None) -> np.ndarray:
        """int32 ``[H, W]`` map of object ids (0 = background); on overlap the later-added object wins."""
        f = self._check_frame(frame_idx)
        flat = np.zeros(self.height * self.width, dtype=np.int32)
        for oid in self._ids(obj_ids):
            entry = self._masks[oid].get(f)
            if entry is not None:
                flat[_rle.rle_fg_indices(entry[0])] = oid
        return np.ascontiguousarray(flat.reshape(self.width, self.height).T)

    def color_map(self, frame_idx: int, obj_ids: Iterable[int] | None = None) -> np.ndarray:
        """uint8 ``[H, W, 3]`` image: each object painted in its colour, background black."""
        ids = self.id_map(frame_idx, obj_ids)
        keys = np.array([0, *self._ids(obj_ids)], dtype=np.int64)
        colors = np.zeros((keys.size, 3), dtype=np.uint8)
        for i, oid in enumerate(keys[1:], start=1):
            colors[i] = self._objects[int(oid)].color
        order = np.argsort(keys)
        return colors[order[np.searchsorted(keys[order], ids)]]

    def legend(self) -> list[dict[str, Any]]:
        """One dict per object: id, label, category, color, score, isthing, first_frame, last_frame, shown
        (whether the score reaches ``min_score``)."""
        out = []
        for oid, info in self._objects.items():
            frames = self._masks[oid]
            out.append(
                {
                    "id": oid,
                    "label": info.label,
                    "category": info.category,
                    "color": tuple(info.color),
                    "score": info.score,
                    "isthing": info.isthing,
                    "first_frame": min(frames) if frames else None,
                    "last_frame": max(frames) if frames else None,
                    "shown": self.is_shown(oid),
                }
            )
        return out

    # ------------------------------------------------------------------------------------------ export
    def iter_ytvis(self, video_id: int, category_ids: dict[int, int] | None = None) -> Iterator[dict[str, Any]]:
        """Yield the YouTube-VIS result dicts one object at a time (see :meth:`to_ytvis_json`)."""
        blank = {"size": [self.height, self.width], "counts": _rle.counts_to_string(_rle.empty_counts(self.height, self.width))}
        for oid, info in self._objects.items():
            cat = info.category
            if cat is not None and category_ids is not None:
                if cat not in category_ids:
                    raise KeyError(f"object {oid}: category {cat} missing from category_ids")
                cat = category_ids[cat]
            frames = self._masks[oid]
            segs = []
            for f in range(self.num_frames):
                entry = frames.get(f)
                if entry is None:
                    segs.append(dict(blank))
                else:
                    segs.append({"size": [self.height, self.width], "counts": _rle.counts_to_string(entry[0])})
            yield {
                "video_id": int(video_id),
                "score": float(info.score),
                "category_id": cat,
                "segmentations": segs,
                "height": self.height,
                "width": self.width,
            }

    def to_ytvis_json(self, video_id: int, category_ids: dict[int, int] | None = None) -> list[dict[str, Any]]:
        """YouTube-VIS results of this video: one dict per object.

        ``{video_id, score, category_id, segmentations, height, width}``; ``segmentations`` has one compressed RLE
        ``{"size": [H, W], "counts": str}`` per frame (an all-zero RLE where the object is absent, never null).
        ``category_id`` is ``info.category`` mapped through ``category_ids`` (e.g. contiguous -> dataset id) when
        given; objects without a category get ``None``.
        """
        return list(self.iter_ytvis(video_id, category_ids))

    # ------------------------------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the tracks to ``path`` (single ``.npz``, format in the module docstring), atomically."""
        path = Path(path)
        meta = {
            "format": _FORMAT,
            "version": _VERSION,
            "num_frames": self.num_frames,
            "height": self.height,
            "width": self.width,
            "fps": self.fps,
            "min_score": self._min_score,
            "objects": [
                {"obj_id": i.obj_id, "label": i.label, "category": i.category, "isthing": i.isthing, "score": i.score}
                for i in self._objects.values()
            ],
        }
        objs, frames, confs, chunks = [], [], [], []
        for oid, per in self._masks.items():
            for f in sorted(per):
                c, conf = per[f]
                objs.append(oid)
                frames.append(f)
                confs.append(conf)
                chunks.append(c.astype(np.uint32))
        lengths = np.array([c.size for c in chunks], dtype=np.int64)
        offsets = np.concatenate(([0], np.cumsum(lengths))).astype(np.int64)
        counts = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.uint32)
        arrays = {
            "meta": np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8),
            "entry_obj": np.asarray(objs, dtype=np.int64),
            "entry_frame": np.asarray(frames, dtype=np.int64),
            "entry_conf": np.asarray(confs, dtype=np.float64),
            "entry_offset": offsets,
            "counts": counts,
            "segmented": np.packbits(self._segmented),
        }
        with atomic_file(path, fsync=True) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "Tracks":
        """Read a file written by :meth:`save`."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"tracks file not found: {path}")
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(bytes(z["meta"]).decode("utf-8"))
                objs, frames, confs = z["entry_obj"], z["entry_frame"], z["entry_conf"]
                offsets, counts = z["entry_offset"], z["counts"]
                segmented = z["segmented"] if "segmented" in z.files else None
        except (OSError, KeyError, ValueError) as e:
            raise ValueError(f"not a valid tracks file: {path} ({e})") from e
        if meta.get("format") != _FORMAT or int(meta.get("version", -1)) > _VERSION:
            raise ValueError(f"not a tracks file of a supported version: {path}")
        tr = cls(meta["num_frames"], meta["height"], meta["width"])
        tr.fps = meta.get("fps")
        try:
            tr.min_score = float(meta.get("min_score") or 0.0)
        except (TypeError, ValueError) as e:
            raise ValueError(f"not a valid tracks file: {path} (min_score: {e})") from e
        for o in meta["objects"]:
            tr.add_object(o["obj_id"], o["label"], o["category"], o["isthing"], o["score"])
        for i in range(objs.size):
            tr.set_rle(int(frames[i]), int(objs[i]), counts[offsets[i] : offsets[i + 1]], float(confs[i]))
        if segmented is None:  # version 1 recorded no processed frames: those files came from complete runs
            tr._segmented[:] = True
        else:
            tr._segmented[:] = np.unpackbits(segmented, count=tr.num_frames).astype(bool)
        return tr

    # ------------------------------------------------------------------------------------------ bookkeeping
    def nbytes(self) -> int:
        """Approximate memory held by this object (RLE arrays, per-entry containers and metadata)."""
        total = sys.getsizeof(self._masks) + sys.getsizeof(self._objects)
        for oid, per in self._masks.items():
            total += sys.getsizeof(per) + sys.getsizeof(self._objects[oid]) + 200  # dataclass fields, label
            for counts, _conf in per.values():
                total += sys.getsizeof(counts) + 56 + 24  # array (with data) + tuple + float
        return total

    def __repr__(self) -> str:
        n = sum(len(p) for p in self._masks.values())
        shown = f", shown={len(self.shown_ids())}, min_score={self.min_score:g}" if self.min_score else ""
        return (
            f"Tracks(num_frames={self.num_frames}, height={self.height}, width={self.width}, "
            f"objects={len(self._objects)}{shown}, masks={n}, nbytes={self.nbytes()})"
        )
