"""Category-guided tasks over a video (VIS "instance", VSS "semantic", VPS "panoptic") into Tracks.

`iter_category_task` runs the task's loop (entity.py or semantic.py) and writes each final frame to a
`univs_engine.results.Tracks`: instance entities as objects (id = entity id + 1, labelled and scored at the
end of the video), semantic classes (id = class index + 1), panoptic segments (persistent segment ids).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterator, Sequence

import numpy as np
import torch

from ..presets import CATEGORY_TASKS, TaskSettings, get_settings
from . import core
from .core import Cancelled, ClipFrames, fp32, to_output
from .entity import EntityClipLoop, EntityWindow
from .panoptic import PanopticMemory, compose_panoptic
from .semantic import SemanticClipLoop

if TYPE_CHECKING:
    from ..modeling.univs import UniVS
    from ..results import Tracks

TASKS = tuple(CATEGORY_TASKS)
_ALIASES = {**{t: t for t in TASKS}, **{p: t for t, p in CATEGORY_TASKS.items()}, "vis_ovis": "instance"}


def canonical_task(task: str) -> str:
    """instance / semantic / panoptic for those names or their preset names (vis, vis_ovis, vss, vps)."""
    if task not in _ALIASES:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, not {task!r}")
    return _ALIASES[task]


@dataclass(frozen=True)
class Vocabulary:
    """The classes to segment: names [K], text embeddings [K, D], thing flags [K] (stuff has no instances)."""

    names: list[str]
    embeddings: torch.Tensor
    things: torch.Tensor

    @classmethod
    def of(cls, embeddings: torch.Tensor, names: Sequence[str] | None = None,
           things: Sequence[bool] | torch.Tensor | None = None) -> "Vocabulary":
        """Checked vocabulary; names default to the class indices, things to all True."""
        K = embeddings.shape[0]
        if K == 0:
            raise ValueError("the vocabulary is empty: class_embeddings [K, D] need K >= 1")
        names = list(names) if names is not None else [str(c) for c in range(K)]
        flags = torch.ones(K, dtype=torch.bool) if things is None else torch.as_tensor(things, dtype=torch.bool)
        if len(names) != K or flags.numel() != K:
            raise ValueError(f"{len(names)} class names and {flags.numel()} thing flags for {K} class embeddings")
        return cls(names, embeddings, flags.flatten())

    def add_object(self, tracks: "Tracks", oid: int, c: int, isthing: bool | None = None) -> None:
        """Create object `oid` labelled as class c (first sight only)."""
        if oid not in tracks:
            flag = bool(self.things[c]) if isthing is None else isthing
            tracks.add_object(oid, label=self.names[c], category=c, isthing=flag)


# ---------------------------------------------------------------------------------------------- instance scores
class InstanceScores:
    """Per-video VIS scoring (official vis_clip_instances_to_coco_json_video), accumulated window by window.

    Each window's class vector of an entity is weighted by its temporal consistency (1 on its first window,
    then (nonblank_prev + nonblank) / 2 if non-blank) and averaged over the non-blank windows; the mask
    quality is the entity's accumulated quality / (int(max over entities) + 1) at the latest window."""

    def __init__(self):
        self.acc: dict[int, torch.Tensor] = {}
        self.count: dict[int, int] = {}
        self.prev: dict[int, bool] = {}
        self.quality: dict[int, float] = {}

    def add(self, ids: Sequence[int], probs: np.ndarray, quality: np.ndarray) -> None:
        """One window's entity ids [N], class probabilities [N, K] and accumulated qualities [N] (host values)."""
        probs, quality = torch.from_numpy(probs).float(), torch.from_numpy(quality).float()
        norm = int(quality.max()) + 1 if len(quality) else 1
        for r, e in enumerate(ids):
            s = probs[r]
            nb = bool(s.sum() > 0)
            w = float(nb) if e not in self.acc else float(nb) * (float(self.prev[e]) + float(nb)) / 2
            ws = s * w
            self.acc[e] = self.acc.get(e, torch.zeros_like(s)) + ws
            self.count[e] = self.count.get(e, 0) + int(ws.sum() > 0)
            self.prev[e] = nb
            self.quality[e] = float(quality[r]) / norm

    def final(self, topk: int, min_class_score: float = 0.05) -> dict[int, tuple[int, float]]:
        """Entity id -> (class index, score) for the entities whose best (entity, class) result survives the
        official per-video top-k (k = max(1.5 x #(class scores > 0.05), topk); class scores < 0.005 are
        never results)."""
        best: dict[int, tuple[int, float]] = {}
        all_scores, above = [], 0
        for e, acc in self.acc.items():
            score = acc / max(self.count[e], 1)
            ok = score >= 0.1 * min_class_score
            above += int((score[ok] > min_class_score).sum())
            vals = (score[ok] * self.quality[e]).tolist()
            all_scores += vals
            if vals:
                c = int(torch.nonzero(ok).flatten()[int(np.argmax(vals))])
                best[e] = (c, float(score[c]) * self.quality[e])
        if not all_scores:
            return {}
        k = max(int(above * 1.5), topk)
        thr = sorted(all_scores, reverse=True)[min(k, len(all_scores) - 1)]
        return {e: cs for e, cs in best.items() if cs[1] >= thr}


# ---------------------------------------------------------------------------------------------- task runs
class _Run:
    """One task's loop over `frames`: positions() writes each final frame's masks and yields its run
    position; finish() adds what is known only at the end (also after a cancel)."""

    def __init__(self, model, task, frames: ClipFrames, vocab: Vocabulary, tracks: "Tracks",
                 settings: TaskSettings, generator: torch.Generator):
        self.model, self.task, self.frames, self.vocab, self.tracks = model, task, frames, vocab, tracks
        self.s, self.generator, self.g = settings, generator, frames.geometry

    def positions(self, cancel) -> Iterator[int]:
        raise NotImplementedError

    def finish(self) -> None:
        pass

    def _entity_loop(self) -> EntityClipLoop:
        return EntityClipLoop(self.model, self.task, self.s, self.g, self.vocab.embeddings, self.vocab.things,
                              self.generator)


class _SemanticRun(_Run):
    def positions(self, cancel) -> Iterator[int]:
        loop = SemanticClipLoop(self.model, self.s, self.g, self.vocab.embeddings)
        for k, labels in loop.run(self.frames, cancel):
            (labels,) = core.to_host(labels)
            for c in np.unique(labels).tolist():
                self.vocab.add_object(self.tracks, c + 1, c)
                self.tracks.set_mask(self.frames.frame_ids[k], c + 1, labels == c)
            yield k


class _InstanceRun(_Run):
    def __init__(self, *args):
        super().__init__(*args)
        self.scores = InstanceScores()

    def positions(self, cancel) -> Iterator[int]:
        for win in self._entity_loop().run(self.frames, cancel):
            window = _WindowFrames(win, self.g, average=True)
            packed, confidence, shape = [], [], ()
            for j in range(len(window)):
                with fp32(win.logits.device):
                    logits = window[j]
                masks = logits > 0
                packed.append(core.pack_bits(masks))
                shape = tuple(masks.shape)
                confidence.append((logits.sigmoid() * masks).flatten(1).sum(1) / masks.flatten(1).sum(1).clamp(min=1))
            # the window leaves the device in one copy
            probs, quality, *frames = core.to_host(win.probs, win.quality, *packed, *confidence)
            ids = win.ids.tolist()
            self.scores.add(ids, probs, quality)
            F_ = len(packed)
            for j in range(F_):
                masks = core.unpack_bits(frames[j], shape)
                self._write(self.frames.frame_ids[win.start + j], ids, masks, frames[F_ + j])
                yield win.start + j

    def _write(self, frame: int, ids: list[int], masks: np.ndarray, confidence: np.ndarray) -> None:
        for r, e in enumerate(ids):
            if masks[r].any():
                if e + 1 not in self.tracks:
                    self.tracks.add_object(e + 1)
                self.tracks.set_mask(frame, e + 1, masks[r], confidence=float(confidence[r]))

    def finish(self) -> None:
        """Labels and scores from the whole video; entities outside the per-video top-k are removed."""
        kept = self.scores.final(self.s.topk)
        for e in list(self.scores.acc):
            oid = e + 1
            if oid not in self.tracks:
                continue
            if e not in kept:
                self.tracks.remove_object(oid)
                continue
            c, score = kept[e]
            self.tracks.update_object(oid, label=self.vocab.names[c], category=c, isthing=bool(self.vocab.things[c]),
                                      score=score)


class _PanopticRun(_Run):
    def __init__(self, *args):
        super().__init__(*args)
        self.memory = PanopticMemory()

    def positions(self, cancel) -> Iterator[int]:
        for win in self._entity_loop().run(self.frames, cancel):
            with fp32(win.logits.device):
                maps = compose_panoptic(_WindowFrames(win, self.g, average=False),
                                        win.probs, self.vocab.things, self.memory, self.s.overlap, win.ids)
            thing_entity = {v: e for e, v in self.memory.things.items()}
            stuff_class = {v: c for c, v in self.memory.stuff.items()}
            for j, m in enumerate(maps):
                for seg in torch.unique(m).tolist():
                    if seg == 0:
                        continue
                    if seg in thing_entity:
                        self.vocab.add_object(self.tracks, seg, self.memory.classes[thing_entity[seg]], isthing=True)
                    else:
                        self.vocab.add_object(self.tracks, seg, stuff_class[seg], isthing=False)
                    self.tracks.set_mask(self.frames.frame_ids[win.start + j], seg, m == seg)
                yield win.start + j

    def finish(self) -> None:
        """Thing segments take the class their entity has at the end of the video."""
        for e, seg in self.memory.things.items():
            if seg in self.tracks and e in self.memory.classes:
                c = self.memory.classes[e]
                self.tracks.update_object(seg, label=self.vocab.names[c], category=c, isthing=bool(self.vocab.things[c]))


class _WindowFrames:
    """An output window's frames at the output size, computed on access: w[j] -> [N, H, W] logits."""

    def __init__(self, win: EntityWindow, geometry, average: bool):
        self.win, self.g, self.average = win, geometry, average

    def __len__(self) -> int:
        return self.win.num_frames

    def __getitem__(self, j: int) -> torch.Tensor:
        return to_output(self.win.padded_logits(j, self.average), self.g)


_RUNS = {"semantic": _SemanticRun, "instance": _InstanceRun, "panoptic": _PanopticRun}


# ---------------------------------------------------------------------------------------------- driver
def iter_category_task(model: "UniVS", task: str, frames: ClipFrames, vocab: Vocabulary, tracks: "Tracks",
                       settings: TaskSettings | None = None, generator: torch.Generator | None = None,
                       cancel: Callable[[], bool] | None = None) -> Iterator[tuple[int, int]]:
    """Run one category-guided task and fill `tracks`; yield (frames done, total) after each frame.

    Run position k is written to tracks frame frames.frame_ids[k]. settings default to the official R50
    ones of the task. Stops cleanly when cancel() returns True (frames written so far stay; instance labels
    are then scored from the windows seen so far)."""
    task = canonical_task(task)
    settings = settings or get_settings(task)
    if generator is None:  # prompt cells are drawn at random: seed them so runs repeat
        generator = torch.Generator().manual_seed(0)
    total = frames.geometry.num_frames
    if len(frames.frame_ids) < total:
        raise ValueError(f"frame_ids has {len(frames.frame_ids)} entries for {total} frames")
    run = _RUNS[task](model, task, frames, vocab, tracks, settings, generator)
    try:
        for done, k in enumerate(run.positions(cancel), 1):
            tracks.mark_segmented(frames.frame_ids[k])
            yield done, total
            if cancel is not None and cancel():
                return
    finally:
        run.finish()


def run_category_task(model: "UniVS", task: str, frames: ClipFrames, vocab: Vocabulary,
                      settings: TaskSettings | None = None, tracks: "Tracks | None" = None,
                      progress: Callable[[int, int], None] | None = None,
                      cancel: Callable[[], bool] | None = None) -> "Tracks":
    """Run a category-guided task to the end and return the filled Tracks (see iter_category_task); a new
    Tracks covers frames [0, max(frame_ids)] at the output size.

    progress(done, total) is called after every frame. When cancel() returns True the run stops and
    `Cancelled` is raised with the partial tracks."""
    from ..results import Tracks

    if tracks is None:
        tracks = Tracks(max(frames.frame_ids) + 1, *frames.geometry.out_size)
    stopped: list[bool] = []

    def check() -> bool:  # once cancel() said stop, stay stopped
        if cancel is not None and not stopped and cancel():
            stopped.append(True)
        return bool(stopped)

    for done, total in iter_category_task(model, task, frames, vocab, tracks, settings, cancel=check):
        if progress is not None:
            progress(done, total)
    if stopped:
        raise Cancelled(tracks)
    return tracks
