"""Incremental corrections: what a prompt-guided run keeps so that re-running it after the prompts changed only
from some frame on recomputes from there, and gives exactly what a run from the start would give.

A `RunRecord` holds the last result and, per pass, a digest of every run position's annotation and a bounded
number of loop snapshots (vos.LoopSnapshot: state and random state, no features). A new run with the same
model, video, settings and targets finds the first position P whose annotation differs and resumes from the
latest snapshot before the first clip that reads P; earlier frames are taken from the record. Anything else
(other settings or range, an added or removed target, changed text prompts) runs from the start. The caller
keeps one record per model and video (the PropagateMasks node does); the record itself only compares what
the run is given.
"""
from __future__ import annotations

import copy
import hashlib
import math
from dataclasses import dataclass, field
from typing import Any

import torch

from .inference.core import ENCODE_BATCH
from .inference.vos import LoopSnapshot

SNAPSHOTS = 48  # at most, per pass: the spacing grows with the video so memory does not


@dataclass
class PassRecord:
    """One pass (forward or backward) of the last run."""

    order: list[int]
    ids: list[int]
    annotations: dict[int, str]
    snapshots: list[LoopSnapshot] = field(default_factory=list)


@dataclass
class RunRecord:
    """Kept between runs of one model on one video; `track(..., reuse=record)` reads and updates it."""

    key: tuple = ()
    tracks: Any = None
    passes: dict[tuple[int, int, int], PassRecord] = field(default_factory=dict)
    frames_run: int = 0  # frames the last run actually processed (for progress and reports)

    def matches(self, key: tuple) -> bool:
        return self.tracks is not None and self.key == key

    def start(self, key: tuple) -> None:
        """Forget everything: the next run starts from the first frame."""
        self.key, self.tracks, self.passes = key, None, {}


def pass_key(order: list[int]) -> tuple[int, int, int]:
    return order[0], order[-1], len(order)


def annotation_digests(annotations: dict[int, tuple] | None) -> dict[int, str]:
    """Run position -> digest of what the loop is given there (target rows, masks, box / click shapes)."""
    out = {}
    for k, value in (annotations or {}).items():
        h = hashlib.blake2b(digest_size=16)
        for part in value:
            _feed(h, part)
        out[k] = h.hexdigest()
    return out


def _feed(h, value) -> None:
    if isinstance(value, torch.Tensor):
        h.update(str((value.dtype, tuple(value.shape))).encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    elif isinstance(value, (list, tuple)):
        h.update(b"[")
        for v in value:
            _feed(h, v)
        h.update(b"]")
    elif hasattr(value, "__dataclass_fields__"):
        h.update(type(value).__name__.encode())
        for name in value.__dataclass_fields__:
            _feed(h, getattr(value, name))
    else:
        h.update(repr(value).encode())


def resume_point(old: PassRecord | None, order: list[int], ids: list[int], digests: dict[int, str],
                 clip_len: int) -> LoopSnapshot | None | bool:
    """Where a pass can resume: a LoopSnapshot, True when nothing changed (nothing to run), None to run it
    from the start."""
    if old is None or old.order != order or old.ids != ids:
        return None
    changed = [k for k in set(old.annotations) | set(digests) if old.annotations.get(k) != digests.get(k)]
    if not changed:
        return True
    first_clip = min(changed) - clip_len + 1  # the first clip whose frames include the changed position
    usable = [s for s in old.snapshots if s.clip <= first_clip]
    return max(usable, key=lambda s: s.clip) if usable else None


def snapshot_spacing(num_positions: int, clip_len: int, stride: int = 1) -> int:
    """Clips between snapshots: a multiple of the encoder's batch (a resumed run then encodes no frame twice) and
    of the stride, at most SNAPSHOTS per pass."""
    unit = math.lcm(max(ENCODE_BATCH, clip_len), stride)
    return unit * max(1, -(-num_positions // (SNAPSHOTS * unit)))


def kept_snapshots(old: PassRecord | None, resumed: LoopSnapshot | None, new: list[LoopSnapshot]) -> list[LoopSnapshot]:
    """The old snapshots still valid (before the resume point) and the new ones."""
    if old is None or resumed is None:
        return list(new)
    return [s for s in old.snapshots if s.clip < resumed.clip] + list(new)


def copy_tracks(tracks):
    return copy.deepcopy(tracks)
