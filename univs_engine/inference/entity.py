"""Category-guided entity loop (VIS "instance", VPS "panoptic"): the official "entity" unified inference,
state kept bounded.

Clips of T frames with stride s. Every clip is decoded with the learnable queries plus one prompt query per
entity tracked so far (its memory pool re-encoded from its current masks, as in vos.py). Entities are
updated from their prompt predictions, then new entities are detected among the learnable queries (matched
to known ones by bi-softmax + Hungarian). Accumulated mask logits are handed out in the official output
windows once no later clip can change them, and dropped. semantic.py runs VSS, panoptic.py composes VPS id
maps, category.py drives the three tasks into a `univs_engine.results.Tracks`.

Accumulated logits are kept at the decoder's 1/4 resolution: every contribution the official code adds at
the padded resolution is a bilinear upsampling of a 1/4-resolution map, and upsampling is linear, so the
padded-resolution values are recovered exactly (up to float rounding) whenever they are needed; padded- and
output-size maps are made one frame at a time.

Where this differs from the official code (everything else follows it literally, including its quirks:
non-greedy NMS, absolute frame indices used as memory-slot indices, the previous frame encoded with the
current clip's features, blank first-appearance slots of later entities):
* `detect_after_empty_start` (default True): the official never adds an entity after a first clip that
  found none; set False for the official behaviour.
* output windows are also emitted when memory_frames >= window or stride > 1 (the official would then
  keep every frame until the end); identical for the released settings.
* VIS results: the official writes one result per (entity, class) with score >= 0.005 and keeps the
  per-video top-k of those; here each entity keeps its best class, and survives when that result does.
* prompt cells are drawn from a seeded generator (the official is unseeded).
* `stuff_prompts` (default True, official): False leaves stuff entities' prompt predictions out of their
  update, so that their learnable-query matches carry them (for a model whose prompt queries cannot
  segment stuff: the small model's presets).
* `match_continuity` (default 0, official): above 0, a learnable query matched to a tracked entity adds its
  masks only where they overlap the entity's accumulated masks (IoU above the value), so an entity that lost
  its object does not take over another one (the small model's VIS preset).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterator, Sequence

import numpy as np
import torch

from ..modeling.mask_decoder import PromptQueries
from ..modeling.position_encoding import frame_phase
from ..modeling.prompt_encoder import mask_box, sample_mask_prompts
from ..presets import TaskSettings
from .core import ClipGeometry, FrameFeatures, fp32, mask_quality, memory_prompts, temporal_consistency, upsample
from . import core  # core.to_host: the copy point tests/test_host_syncs.py counts
from .matching import (bisoftmax_similarity, box_nms_keep, hungarian, mask_nms_keep, max_overlap, suppressed,
                       video_box_iou)
from .memory import PromptMemory

if TYPE_CHECKING:
    from ..modeling.univs import UniVS

# hard-coded in the official first-clip panoptic detection
VPS_FIRST_TOPK, VPS_FIRST_THINGS, VPS_FIRST_STUFF, VPS_STUFF_MASK_NMS = 100, 70, 30, 0.6
NEW_ENTITY_MAX_IOU = 0.5  # a query overlapping a known entity this much is not new


# ---------------------------------------------------------------------------------------------- state
@dataclass
class EntityWindow:
    """Final frames [start, start + F) of every entity known when the window was emitted.

    logits [N, F, h4, w4]: accumulated mask logits at 1/4 of the padded size (`padded_logits` gives the
    padded resolution); occurrence [N, F]: how many predictions were added per frame; probs [N, K]: class
    probabilities (mean over the entity's clip slots, quality-weighted); quality [N]: accumulated mask
    quality; ids [N]: entity ids (0, 1, ... in order of detection), on the host."""

    start: int
    ids: torch.Tensor
    logits: torch.Tensor
    occurrence: torch.Tensor
    probs: torch.Tensor
    quality: torch.Tensor
    padded_size: tuple[int, int]
    is_last: bool = False

    @property
    def num_frames(self) -> int:
        return self.logits.shape[1]

    @property
    def frames(self) -> range:
        return range(self.start, self.start + self.num_frames)

    def padded_logits(self, j: int, average: bool = False) -> torch.Tensor:
        """Logits of window frame j at the padded resolution [N, Hp, Wp]; average=True divides by the
        occurrence count (the VIS output), False keeps the sum (the VPS output)."""
        x = self.logits[:, j]
        if average:
            x = x / self.occurrence[:, j].clamp(min=1)[:, None, None]
        return upsample(x[None], self.padded_size)[0]


@dataclass
class EntityState:
    """Bounded per-video entity state (the official targets dict, minus what is never read again).

    logits [N, F, h4, w4] / occurrence [N, F] cover frames [end - F, end); boxes [N, <=T+s, 4] and
    embds [N, <=consistency slots, C] keep only the slots that are still read; class probabilities are a
    running sum over closed slots plus the open last slot."""

    ids: torch.Tensor
    first: torch.Tensor
    logits: torch.Tensor
    occurrence: torch.Tensor
    boxes: torch.Tensor
    embds: torch.Tensor
    prob_sum: torch.Tensor
    prob_last: torch.Tensor
    quality: torch.Tensor
    num_slots: int = 1
    end: int = 0
    next_id: int = 0
    memory: PromptMemory | None = None

    @property
    def num(self) -> int:
        return self.ids.shape[0]

    def mean_probs(self) -> torch.Tensor:
        return (self.prob_sum + self.prob_last) / self.num_slots


@dataclass
class _Detections:
    """Queries selected as new entities, with what the official writes for them."""

    index: torch.Tensor      # [M] learnable-query indices, in the official order (on the host after the first clip)
    probs: torch.Tensor      # [Q, K] quality-weighted class probabilities of all queries
    boxes: torch.Tensor      # [Q, T, 4] normalised boxes at 1/4 resolution
    quality: torch.Tensor    # [Q]


class EntityClipLoop:
    """Category-guided tracking of every entity of a vocabulary (VIS "instance" or VPS "panoptic").

    frames(start, stop) must return normalised, padded frames [n, 3, Hp, Wp]; class_embeddings [K, D] are
    the vocabulary's text embeddings (probabilities are sigmoids over exactly these K classes); things [K]
    bool marks thing classes (panoptic; default: all things).
    """

    def __init__(self, model: "UniVS", task: str, settings: TaskSettings, geometry: ClipGeometry,
                 class_embeddings: torch.Tensor, things: torch.Tensor | Sequence[bool] | None = None,
                 generator: torch.Generator | None = None):
        if task not in ("instance", "panoptic"):
            raise ValueError(f"EntityClipLoop runs instance or panoptic, not {task!r}")
        if class_embeddings is None or class_embeddings.shape[0] == 0:
            raise ValueError("class_embeddings [K, D] are required (the vocabulary to segment)")
        self.model, self.task, self.s, self.g = model, task, settings, geometry
        self.padded_size = geometry.padded_size
        self.class_embeddings = class_embeddings
        K = class_embeddings.shape[0]
        self.things = (torch.ones(K, dtype=torch.bool) if things is None
                       else torch.as_tensor(things, dtype=torch.bool).flatten())
        if self.things.shape[0] != K:
            raise ValueError(f"things has {self.things.shape[0]} entries for {K} classes")
        self.generator = generator
        self.state: EntityState | None = None
        self.max_frames_held = 0
        self.hooks: dict[str, Callable] = {}  # name -> fn(**kw): lets tests observe internals

    def _hook(self, name: str, **kw) -> None:
        if name in self.hooks:
            self.hooks[name](**kw)

    @property
    def frames_held(self) -> int:
        return 0 if self.state is None else self.state.logits.shape[1]

    # ------------------------------------------------------------------ public
    @torch.no_grad()
    def run(self, frames: Callable[[int, int], torch.Tensor],
            cancel: Callable[[], bool] | None = None) -> Iterator[EntityWindow]:
        """Yield the output windows in frame order; together they cover every frame exactly once.
        cancel() is polled before each clip; when it returns True the loop stops without a final window."""
        s, L = self.s, self.g.num_frames
        T, stride = s.clip_len, s.step
        self.state, self.max_frames_held = None, 0
        features = FrameFeatures(self.model, frames, L, T)
        is_last = False
        for i in range(0, L, stride):
            if is_last and i + T > L:
                break
            if cancel is not None and cancel():
                return
            is_last = i + T >= L
            n = min(T, L - i)
            out = self._decode(features.clip(i, n), i, n, stride)
            self._hook("clip_output", call=i, out=out)
            with fp32(out.pred_masks.device):
                self._write_clip(out, i, n)
            st = self.state
            self.max_frames_held = max(self.max_frames_held, st.logits.shape[1])
            if s.is_output_clip(i) or is_last:
                yield self._emit(st, i, is_last)
            if not is_last:
                self._pad(st, min(stride, L - i - T))
                self.max_frames_held = max(self.max_frames_held, st.logits.shape[1])
            features.release(i + stride)

    def _emit(self, st: "EntityState", i: int, is_last: bool) -> "EntityWindow":
        """The oldest output window (everything at the last clip), removed from the state."""
        F_ = st.logits.shape[1] if is_last else min(self.s.out_window, st.logits.shape[1])
        win = EntityWindow(st.end - st.logits.shape[1], st.ids.clone(), st.logits[:, :F_].clone(),
                           st.occurrence[:, :F_].clone(), st.mean_probs().clone(), st.quality.clone(),
                           self.padded_size, is_last)
        st.logits, st.occurrence = st.logits[:, F_:], st.occurrence[:, F_:]
        self._hook("window", call=i, window=win)
        return win

    def _write_clip(self, out, i, n):
        """The clip's predictions into the state: tracked entities first, then new ones."""
        Ql = self.model.decoder.num_queries
        probs = out.pred_logits.float().sigmoid()
        masks, embds = out.pred_masks.float(), out.pred_embds.float()
        st = self.state
        if st is not None and st.num > 0:
            self._update_tracked(st, masks[Ql:], embds[Ql:], i, n)
        if i % self.s.detect_interval == 0 or st is None or st.num == 0:
            det = self._detect(st, probs[:Ql], masks[:Ql], embds[:Ql], i, n)
            self._hook("new", call=i, index=det.index)
            self._add_entities(det, masks[:Ql], embds[:Ql], i, n)

    # ------------------------------------------------------------------ decoding
    def _decode(self, feats, i, n, stride):
        mask_features, multi = feats
        dec = self.model.decoder
        levels = dec.embed_levels(multi, torch.arange(i, i + n, device=mask_features.device), self.s.pe_variant)
        st = self.state
        prompts = self._visual_prompts(st, levels, i, n, stride) if st is not None and st.num > 0 else None
        return dec(levels, mask_features, prompts, self.class_embeddings, self.s.self_attn_mask)

    def _phase(self, absolute: int, slot: int, n: int, device) -> torch.Tensor:
        variant = self.s.pe_variant or self.model.cfg.pe_variant
        z = frame_phase(torch.tensor([absolute], device=device), n, variant, self.model.cfg.num_frames_pe)
        return z[min(slot, z.shape[0] - 1)] if variant == "FixedT" else z[0]

    def _masks_at(self, st: EntityState, j: int, rows=None) -> torch.Tensor:
        """Binary masks (float) of state frame j (negative index) at the padded resolution."""
        x = st.logits[:, j] if rows is None else st.logits[rows, j]
        return (upsample(x[None], self.padded_size)[0] > 0).float()

    def _visual_prompts(self, st: EntityState, levels, i, n, stride) -> PromptQueries:
        """Entities as visual prompts: the memory pool is created at the first clip that has entities
        (its first slot encodes the previous frame's masks with this clip's first-frame features, as the
        official does), later clips open `stride` slots; then the clip's older frames are re-encoded from
        the current masks and the pool is read. The previous frame needs n + stride frames of state;
        with T == 1 it is re-encoded every clip (official)."""
        feat, pos, _ = levels.prompt_level
        R, T = self.s.prompt_tokens, self.s.clip_len
        dev = feat.device
        created = st.memory is None
        if created:
            z = feat.new_zeros(st.num, R, T + stride, feat.shape[1])
            st.memory = PromptMemory(z, z.clone(), keep=self.s.window + n)
        else:
            st.memory.append(stride)
        if created or T == 1:  # the previous frame is encoded only here (or every clip when T == 1)
            appeared = torch.nonzero((st.first <= max(0, i - 1)) & (st.first != -1)).flatten()
            for k in range(stride):
                j = -(n + stride) + k
                enc = sample_mask_prompts(feat[k], pos[k], self._masks_at(st, j, appeared), R,
                                          self._phase(i - stride + k, k, n, dev), boxes=st.boxes[appeared, j],
                                          generator=self.generator)
                self._hook("prompt_tokens", call=i, frame=i - stride + k, tokens=enc)
                st.memory.tokens[appeared, :, j] = enc.tokens
                st.memory.pe[appeared, :, j] = enc.pe
        for k in range(n - stride):
            j = -n + k
            masks = self._masks_at(st, j)
            enc = sample_mask_prompts(feat[k], pos[k], masks, R, self._phase(i + k, k, n, dev),
                                      boxes=st.boxes[:, j], generator=self.generator)
            self._hook("prompt_tokens", call=i, frame=i + k, tokens=enc)
            st.memory.write(masks.flatten(1).sum(1) > 0, enc.tokens, enc.pe, j)
        # first appearances are absolute frame indices used as slot indices (an official quirk)
        prompts = memory_prompts(self.model, st.memory, st.first, n, self.s.window)
        self._hook("prompt_queries", call=i, prompts=prompts)
        return prompts

    # ------------------------------------------------------------------ tracked entities
    def _up_frame(self, low: torch.Tensor, t: int) -> torch.Tensor:
        """Frame t of [N, T, h4, w4] logits at the padded resolution -> [N, Hp, Wp]. Work is done one
        frame at a time so that N x T padded-resolution maps never exist at once."""
        return upsample(low[:, t][None], self.padded_size)[0]

    def _update_tracked(self, st: EntityState, low, embds, i, n):
        """Prompt predictions of the tracked entities (official write_prompt_predictions_*): consistent
        entities (and, for instances, those that keep their pixels) add their logits to the clip frames."""
        s, N = self.s, st.num
        h, w = self.g.image_size
        thr = s.consistency * (0.5 if i < s.clip_len else 1.0)
        sim = temporal_consistency(st.embds[:, -s.consistency_slots:], embds)
        keep = sim > thr
        pos, tot = low.new_zeros(N), low.new_zeros(N)
        nonblank = low.new_zeros(N, n)
        for t in range(n):  # quality on the cropped padded-resolution masks (official)
            u = self._up_frame(low, t)
            c = u[:, :h, :w].flatten(1)
            pos += (c > 1).sum(1)
            tot += (c > -1).sum(1)
            nonblank[:, t] = (u.flatten(1) > 0).any(1).float()
        q = pos / tot.clamp(min=1)
        if self.task == "instance":  # pixel competition among the entities (per pixel, so per frame)
            score = st.mean_probs().max(-1).values * sim * q
            won, over = torch.zeros_like(pos), torch.zeros_like(pos)
            own_area = torch.zeros_like(pos)
            for t in range(n):
                sig = self._up_frame(low, t)[:, :h, :w].sigmoid().flatten(1)
                winner = (score[:, None] * sig).argmax(0).masked_fill((sig < 0.5).all(0), -1)
                fg, slot = winner >= 0, winner.clamp(min=0)
                won.scatter_add_(0, slot, fg.to(won.dtype))
                own_area += (sig > 0.5).sum(1)
                mine = fg & (sig.gather(0, slot[None])[0] > 0.5)
                over.scatter_add_(0, slot, mine.to(over.dtype))
            keep = keep & (won / own_area.clamp(min=1) > s.overlap_entity) & (over > 0)
        if not s.stuff_prompts:  # stuff entities follow their learnable-query matches only
            keep = keep & self.things.to(keep.device)[st.mean_probs().argmax(-1)]
        self._hook("tracked", call=i, similarity=sim, keep=keep, quality=q)
        # every entity is updated, the dropped ones by zero, so that no host read decides which
        k = keep.to(low.dtype)
        st.occurrence[:, -n:] += nonblank * k[:, None]
        st.logits[:, -n:] += low * k.view(-1, 1, 1, 1)
        Hp, Wp = self.padded_size
        norm = torch.tensor([Wp, Hp, Wp, Hp], device=low.device)
        for t in range(n):
            box = mask_box(self._up_frame(st.logits[:, -n:], t) > 0).float() / norm
            st.boxes[:, t - n] = torch.where(keep[:, None], box, st.boxes[:, t - n])
        self._average_embds(st, keep, embds.mean(1))
        st.quality += q * k

    @staticmethod
    def _average_embds(st: EntityState, rows, new):
        """embds[rows, -1] = (old + new) / (1 + [old non-blank]). rows: indices (new [len(rows), C]) or a bool
        mask over all entities (new [N, C]), applied without reading it."""
        if rows.dtype == torch.bool:
            old = st.embds[:, -1]
            nonblank = (old != 0).any(-1, keepdim=True)
            st.embds[:, -1] = torch.where(rows[:, None], (old + new) / (nonblank + 1.0), old)
            return
        old = st.embds[rows, -1]
        nonblank = (old != 0).any(-1, keepdim=True)
        st.embds[rows, -1] = (old + new) / (nonblank + 1.0)

    def _add_masks(self, st: EntityState, rows, low, q, n):
        """Matched learnable-query masks join the entities' accumulated logits (with `match_continuity`, only
        those overlapping what the entity has: decided on the device, a rejected match adds zeros)."""
        if len(rows) == 0:
            return
        if self.s.match_continuity > 0:
            a, b = low > 0, st.logits[rows, -n:] > 0
            inter, union = (a & b).flatten(1).sum(1), (a | b).flatten(1).sum(1)
            ok = (inter > self.s.match_continuity * union).to(low.dtype)
            low, q = low * ok.view(-1, 1, 1, 1), q * ok
        for t in range(n):
            st.occurrence[rows, t - n] += (self._up_frame(low, t).flatten(1) > 0).any(1).float()
        st.logits[rows, -n:] += low
        st.quality[rows] += q

    # ------------------------------------------------------------------ new entities
    def _detect(self, st, probs, masks, embds, i, n) -> _Detections:
        if self.task == "instance":
            return self._detect_instances(st, probs, masks, embds, i, n)
        return self._detect_pixels(st, probs, masks, embds, i, n)

    def _boxes(self, masks):
        h4, w4 = masks.shape[-2:]
        return mask_box(masks > 0).float() / torch.tensor([w4, h4, w4, h4], device=masks.device)

    def _detect_instances(self, st, probs, masks, embds, i, n) -> _Detections:
        """Official detect_newly_entities_per_clip_instance. The candidates (stable, top-k by score, non-greedy
        box NMS) and their bi-softmax similarities are computed on the device and leave it in one copy."""
        s = self.s
        q = mask_quality(masks)
        probs = probs * q[:, None]
        boxes = self._boxes(masks)
        score = probs.max(-1).values
        stable = q > s.stability if s.stability > 0 else torch.ones_like(q, dtype=torch.bool)
        ranked = score.masked_fill(~stable, float("-inf")).argsort(descending=True, stable=True)[:s.topk]
        iou = video_box_iou(boxes[ranked], boxes[ranked]).amax(-1) * stable[ranked][:, None]
        chosen = torch.zeros_like(stable).scatter(0, ranked, suppressed(iou, s.box_nms) & stable[ranked])
        bi = bisoftmax_similarity(st.embds[:, -3:], embds, s.new_object, chosen) if st is not None else None
        ranked, chosen, score_h, *bi = core.to_host(ranked, chosen, score, *([] if bi is None else [bi]))
        idx = ranked[chosen[ranked]]
        if st is None:  # first clip: confident queries only
            new = idx[score_h[idx] > max(s.class_threshold, 0.1)]
            return _Detections(torch.from_numpy(new), probs, boxes, q)
        rows, cols, sim = hungarian(bi[0], idx)
        m = sim > s.new_object
        r, c = torch.from_numpy(rows[m]), torch.from_numpy(idx[cols[m]])
        st.prob_last[r] = 0.5 * (st.prob_last[r] + probs[c])
        self._average_embds(st, r, embds[c].mean(1))
        strong = sim > 2 * s.new_object
        r2, c2 = torch.from_numpy(rows[strong]), torch.from_numpy(idx[cols[strong]])
        self._add_masks(st, r2, masks[c2], q[c2], n)
        self._hook("matched", call=i, rows=r, cols=c, strong_rows=r2, strong_cols=c2, similarity=torch.from_numpy(sim))
        new = self._unmatched(st, idx, c2.numpy(), score_h, masks, n, s.class_threshold)
        return _Detections(new, probs, boxes, q)

    def _detect_pixels(self, st, probs, masks, embds, i, n) -> _Detections:
        """Official detect_newly_entities_per_clip_pixel (panoptic: things and stuff)."""
        s = self.s
        boxes = self._boxes(masks)
        q = mask_quality(masks)
        probs = probs * q[:, None]
        scores, labels = probs.max(-1)
        if st is None:  # the first clip (once per video) picks its candidates with a few host reads
            order = scores.argsort(descending=True, stable=True)[:VPS_FIRST_TOPK]
            thing = self.things.to(order.device)[labels[order]]
            th, sf = order[thing][:VPS_FIRST_THINGS], order[~thing][:VPS_FIRST_STUFF]
            if len(th):
                th = th[box_nms_keep(boxes[th], s.box_nms)]
            if len(sf):
                sf = sf[mask_nms_keep(masks[sf, 0] > 0, VPS_STUFF_MASK_NMS)]
            new = torch.cat([th, sf])
            return _Detections(new[scores[new] > s.class_threshold], probs, boxes, q)
        bi, score_h = core.to_host(bisoftmax_similarity(st.embds[:, -3:], embds, s.new_object), scores)
        rows, cols, sim = hungarian(bi)
        m = sim > s.new_object
        r, c = torch.from_numpy(rows[m]), torch.from_numpy(cols[m])
        self._add_masks(st, r, masks[c], q[c], n)
        st.prob_last[r] = 0.5 * (st.prob_last[r] + probs[c])
        self._average_embds(st, r, embds[c].mean(1))
        self._hook("matched", call=i, rows=r, cols=c, strong_rows=r, strong_cols=c, similarity=torch.from_numpy(sim))
        everyone = np.arange(probs.shape[0])
        return _Detections(self._unmatched(st, everyone, cols[m], score_h, masks, n, 2 * s.class_threshold),
                           probs, boxes, q)

    def _unmatched(self, st, idx: np.ndarray, matched: np.ndarray, score: np.ndarray, masks, n, threshold
                   ) -> torch.Tensor:
        """Candidates (in order) that were not matched, are confident and overlap no entity much (host indices
        and scores in; the overlaps leave the device in one copy) -> host indices."""
        cand = idx[~np.isin(idx, matched) & (score[idx] > threshold)]
        if len(cand) == 0 or st.num == 0:
            return torch.from_numpy(cand if len(cand) == 0 or self.s.detect_after_empty_start else cand[:0])
        # the official compares with the accumulated padded-resolution logits resized back to 1/4
        iou, rows = None, torch.from_numpy(cand)
        for t in range(n):
            gt = upsample(self._up_frame(st.logits[:, -n:], t)[None], masks.shape[-2:])[0] > 0
            it = max_overlap(masks[rows, t:t + 1] > 0, gt[:, None])
            iou = it if iou is None else torch.maximum(iou, it)
        (iou,) = core.to_host(iou)
        return torch.from_numpy(cand[iou < NEW_ENTITY_MAX_IOU])

    def _add_entities(self, det: _Detections, masks, embds, i, n):
        """Official write_newly_entities_into_annotations_per_clip (creates the state on the first call)."""
        st, k = self.state, det.index
        M, dev = len(k), masks.device
        low, box = masks[k], det.boxes[k]
        mean_embd = embds[k].mean(1, keepdim=True)
        K = det.probs.shape[1]
        if st is None:
            self.state = EntityState(
                ids=torch.arange(M), first=torch.full((M,), i, dtype=torch.long, device=dev),
                logits=low.clone(), occurrence=torch.ones(M, n, device=dev), boxes=box.clone(), embds=mean_embd,
                prob_sum=det.probs.new_zeros(M, K), prob_last=det.probs[k].clone(), quality=det.quality[k].clone(),
                num_slots=1, end=i + n, next_id=M)
            return
        if M == 0:
            return
        pad = lambda x, total: torch.cat([x.new_zeros(M, total - x.shape[1], *x.shape[2:]), x], 1)  # noqa: E731
        st.logits = torch.cat([st.logits, pad(low, st.logits.shape[1])])
        st.occurrence = torch.cat([st.occurrence, pad(torch.ones(M, n, device=dev), st.occurrence.shape[1])])
        st.boxes = torch.cat([st.boxes, pad(box, st.boxes.shape[1])])
        st.embds = torch.cat([st.embds, pad(mean_embd, st.embds.shape[1])])
        st.prob_sum = torch.cat([st.prob_sum, det.probs.new_zeros(M, K)])  # earlier slots are zeros
        st.prob_last = torch.cat([st.prob_last, det.probs[k]])
        st.quality = torch.cat([st.quality, det.quality[k]])
        st.ids = torch.cat([st.ids, torch.arange(st.next_id, st.next_id + M)])
        st.next_id += M
        st.first = torch.cat([st.first, torch.full((M,), i, dtype=torch.long, device=dev)])
        if st.memory is not None:  # blank prompt slots for the new entities
            st.memory.add_targets(M)  # a first slot already dropped was blank: the saved copy is blank too
            st.memory.set_first_frames(st.first)

    def _pad(self, st: EntityState, new: int):
        """Open `new` frames for the next clip (official pad_zero_annotations_for_next_clip); drop slots
        that can no longer be read."""
        N = st.num
        st.logits = torch.cat([st.logits, st.logits.new_zeros(N, new, *st.logits.shape[2:])], 1)
        st.occurrence = torch.cat([st.occurrence, st.occurrence.new_zeros(N, new)], 1)
        keep_boxes = self.s.clip_len + min(self.s.stride, self.s.clip_len)
        st.boxes = torch.cat([st.boxes, st.boxes.new_zeros(N, new, 4)], 1)[:, -keep_boxes:]
        keep_embds = max(3, self.s.consistency_slots)
        st.embds = torch.cat([st.embds, st.embds[:, -3:].mean(1, keepdim=True)], 1)[:, -keep_embds:]
        st.prob_sum = st.prob_sum + st.prob_last
        st.num_slots += 1
        st.end += new


