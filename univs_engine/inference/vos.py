"""Prompt-guided clip loop (VOS, PVOS, RefVOS): the official inference, state kept bounded.

Frames are processed in clips of T frames with stride s. Each clip, every target is a prompt query:
visual targets read their tokens from the memory pool (re-encoded from the latest masks), text targets
from their expression. Predicted mask logits accumulate over overlapping clips; a frame is final once
the clip starting at it has run, and is then handed to the caller and dropped from the state.
PVOS stuff targets with `stuff_prompts` False (not official) take their class's region of the semantic map
as their whole clip mask, at full weight, instead of the prompt prediction helped by it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterator

import torch
import torch.nn.functional as F

from ..modeling.mask_decoder import PromptQueries
from ..modeling.position_encoding import frame_phase
from ..modeling.prompt_encoder import (Draw, PromptTokens, ShapePrompt, mask_box, sample_mask_prompts,
                                       sample_shape_prompts)
from ..presets import TaskSettings
from .core import ClipGeometry, FrameFeatures, chunks, mask_quality, memory_prompts, semantic_map, temporal_consistency
from .memory import PromptMemory

if TYPE_CHECKING:
    from ..modeling.univs import UniVS


@dataclass
class StuffHelp:
    """PVOS: stuff targets are helped by the semantic map of the learnable queries, as the official
    PVOS driver does. class_embeddings [K, D]; labels [N] class index of each target if it is stuff,
    else -1."""

    class_embeddings: torch.Tensor
    labels: torch.Tensor


@dataclass
class TextTargets:
    """Referring expressions: sentence [N, D] and word features [N, 77, D]."""

    sentence: torch.Tensor
    words: torch.Tensor


def pair_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of binary masks paired along dim 0: [N, H, W] x [N, H, W] -> [N]."""
    a, b = a.flatten(1) > 0, b.flatten(1) > 0
    return (a & b).sum(1) / (a | b).sum(1).clamp(min=1)


@dataclass
class TrackState:
    """Bounded per-video state. masks/logits/boxes/embds hold the most recent frames only:
    logits [N, F, Hp, Wp] for frames [end - F, end); boxes [N, F, 4]; embds [N, F, C]."""

    first_frames: torch.Tensor  # [N] absolute first-appearance frame, -1 if not yet seen; on the CPU: the loop
    # decides on it every clip, and it only changes where prompts are written (known on the host)
    logits: torch.Tensor
    boxes: torch.Tensor
    embds: torch.Tensor
    end: int = 0                # frames [0, end) have state
    memory: PromptMemory | None = None
    shapes: dict[int, list[tuple[int, ShapePrompt]]] = field(default_factory=dict)  # frame -> (target, box/clicks)

    @property
    def masks(self) -> torch.Tensor:
        return (self.logits > 0).float()

    def copy(self, device=None) -> "TrackState":
        """An independent copy (tensors cloned, on `device` if given)."""
        move = lambda t: t.detach().to(device, copy=True)  # noqa: E731
        return TrackState(self.first_frames.clone(), move(self.logits), move(self.boxes), move(self.embds), self.end,
                          None if self.memory is None else self.memory.copy(device), dict(self.shapes))


@dataclass
class LoopSnapshot:
    """What the loop carries into the clip starting at run position `clip`: the track state and the prompt
    sampler's random state. Resuming from it reproduces the rest of a run exactly when the annotations of
    positions before clip + T - 1 are unchanged (tensors kept on the CPU)."""

    clip: int
    state: TrackState
    rng: torch.Tensor | None


@dataclass
class ClipPredictions:
    """One clip's prompt-query predictions: masks [N, n, Hp, Wp] logits, boxes [N, n, 4] (normalised),
    embds [N, n, C], quality [N]. PVOS stuff help: sem [n, Hp, Wp] class map and labels [N] (stuff class
    of each target, -1 for others), else None."""

    masks: torch.Tensor
    boxes: torch.Tensor
    embds: torch.Tensor
    quality: torch.Tensor
    sem: torch.Tensor | None = None
    labels: torch.Tensor | None = None

    def is_stuff(self, obj: int) -> bool:
        return self.labels is not None and int(self.labels[obj]) >= 0


class PromptedClipLoop:
    """Runs the clip loop for a fixed set of targets.

    frames(start, stop) must return normalised, padded frames [n, 3, Hp, Wp]. annotations maps a frame
    index to (target indices [k], masks [k, Hp, Wp]) given at that frame (value 1 inside the mask), or to
    (target indices, masks, shapes): shapes[j] a ShapePrompt (box or clicks) or None. A target with a shape takes
    its prompt tokens on that frame from the box / point branch (sample_shape_prompts) instead of its mask, which
    still is its mask there (the frame's output, and what later clips compare their predictions to).
    """

    def __init__(self, model: "UniVS", settings: TaskSettings, geometry: ClipGeometry,
                 generator: torch.Generator | None = None, class_embeddings: torch.Tensor | None = None,
                 draw: Draw | None = None):
        """draw: replaces ``generator`` as the prompt sampler's source of randomness
        (modeling.prompt_encoder.PermutationDraw or DeviceDraw), e.g. to replay recorded draws."""
        self.model, self.s, self.g = model, settings, geometry
        self.generator, self.draw = generator, draw
        self.class_embeddings = class_embeddings
        self.hooks: dict[str, Callable] = {}  # name -> fn(**tensors): lets tests observe internals
        self.snapshot_every = 0  # > 0: keep a LoopSnapshot at every clip start that is a multiple of it
        self.snapshots: list[LoopSnapshot] = []

    def _hook(self, name: str, **kw) -> None:
        if name in self.hooks:
            self.hooks[name](**kw)

    # ------------------------------------------------------------------ public
    @torch.no_grad()
    def run(self, frames: Callable[[int, int], torch.Tensor], num_targets: int,
            annotations: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None,
            text: TextTargets | None = None,
            stuff: StuffHelp | None = None, resume: LoopSnapshot | None = None
            ) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        """Yield (frame index, logits [N, Hp, Wp], embds [N, C]) for every frame in order (from the
        snapshot's clip when resuming)."""
        T, s, L = self.s.clip_len, self.s.step, self.g.num_frames
        annotations = annotations or {}
        state = self._start(num_targets, text is not None, resume)
        features = FrameFeatures(self.model, frames, L, T)
        is_last = False
        for i in range(resume.clip if resume else 0, L, s):
            if is_last and i + T > L:
                break
            if self.snapshot_every and i % self.snapshot_every == 0:
                self.snapshots.append(self._snapshot(i, state))
            is_last = i + T >= L
            n = min(T, L - i)
            feats = features.clip(i, n)
            self._write_targets(state, i, n, annotations)
            out = self._decode(state, feats, i, n, text, stuff)
            self._write_predictions(state, out, i, n, text is not None, stuff)
            self._hook("state", call=i, state=state)
            done = range(i, i + n) if is_last else range(i, i + min(s, n))
            for f in done:
                j = f - state.end
                yield f, state.logits[:, j], state.embds[:, j]
            features.release(i + s)

    # ------------------------------------------------------------------ steps
    def _start(self, num_targets: int, is_text: bool, resume: LoopSnapshot | None) -> TrackState:
        if resume is None:
            return self._new_state(num_targets, is_text)
        if resume.state.first_frames.shape[0] != num_targets or resume.clip % self.s.step:
            raise ValueError(f"cannot resume: the snapshot has {resume.state.first_frames.shape[0]} targets at "
                             f"position {resume.clip}, this run {num_targets} targets with stride {self.s.step}")
        if resume.rng is not None:
            self.generator.set_state(resume.rng)
        return resume.state.copy(self.model.pixel_mean.device)

    def _snapshot(self, i: int, state: TrackState) -> LoopSnapshot:
        if self.draw is not None or self.generator is None:
            raise ValueError("snapshots replay the sampler's own generator: give the loop one (and no custom draw)")
        rng = None if self.generator is None else self.generator.get_state()
        return LoopSnapshot(i, state.copy("cpu"), rng)

    def _new_state(self, num_targets: int, is_text: bool) -> TrackState:
        dev = self.model.pixel_mean.device
        N, C, (Hp, Wp) = num_targets, self.model.cfg.hidden_dim, self.g.padded_size
        state = TrackState(torch.full((N,), -1, dtype=torch.long), torch.zeros(N, 0, Hp, Wp, device=dev),
                           torch.zeros(N, 0, 4, device=dev), torch.zeros(N, 0, C, device=dev))
        if is_text:  # every expression is a target from the first frame
            state.first_frames.zero_()
        return state

    def _write_targets(self, st: TrackState, i, n, annotations):
        """Open state for the clip's new frames and write annotated masks (value 1)."""
        new = n if i == 0 else min(self.s.step, self.g.num_frames - i)
        N = st.first_frames.shape[0]
        keep = self.s.window
        if st.embds.shape[1]:
            pad_embds = st.embds[:, -new:].mean(1, keepdim=True).expand(-1, new, -1)
        else:
            pad_embds = st.embds.new_zeros(N, new, st.embds.shape[2])
        z = st.logits.new_zeros(N, new, *self.g.padded_size)
        st.logits = torch.cat([st.logits[:, -keep:], z], 1)
        st.boxes = torch.cat([st.boxes[:, -keep:], st.boxes.new_zeros(N, new, 4)], 1)
        st.embds = torch.cat([st.embds[:, -keep:], pad_embds], 1)
        st.end = i + n
        st.shapes = {f: v for f, v in st.shapes.items() if f >= i}  # older frames are never encoded again
        Hp, Wp = self.g.padded_size
        for f in range(i, i + n):
            if f not in annotations:
                continue
            idx, masks, *shapes = annotations[f]
            given = [(int(t), sh) for t, sh in zip(idx.tolist(), shapes[0]) if sh is not None] if shapes else []
            if given:
                st.shapes[f] = given
            j = f - st.end
            st.logits[idx, j] = masks.to(st.logits)
            # annotation boxes follow detectron2's BitMasks convention: exclusive max corner
            box = mask_box(masks > 0).to(st.boxes) + torch.tensor([0, 0, 1, 1], device=st.boxes.device)
            st.boxes[idx, j] = box / torch.tensor([Wp, Hp, Wp, Hp], device=st.boxes.device)
            st.first_frames[idx.cpu()] = f  # annotation indices are made on the host: no copy

    def _decode(self, st: TrackState, feats, i, n, text: TextTargets | None, stuff: StuffHelp | None):
        mask_features, multi = feats
        dec = self.model.decoder
        frame_idx = torch.arange(i, i + n, device=mask_features.device)
        levels = dec.embed_levels(multi, frame_idx, self.s.pe_variant)
        if text is not None:
            prompts = dec.text_prompt_queries(text.sentence, text.words, levels)
        else:
            prompts = self._visual_prompts(st, levels, i, n)
        # visual prompts never attend to the learnable queries ('sep' masks): skip them, unless text
        # prompts borrow a learnable query's mask (l4p) or stuff targets read their semantic map
        classes = stuff.class_embeddings if stuff is not None else self.class_embeddings
        return dec(levels, mask_features, prompts, classes, self.s.self_attn_mask,
                   learnable=text is not None or stuff is not None)

    def _visual_prompts(self, st: TrackState, levels, i, n) -> PromptQueries:
        """Re-encode the clip's older frames from the current masks into the memory pool, then read it."""
        feat, pos, _ = levels.prompt_level
        masks = st.masks[:, -n:]
        boxes = st.boxes[:, -n:]
        update = 1 if i == 0 else n - self.s.step
        if i > 0:
            st.memory.append(self.s.step)
        cfg = self.model.cfg
        z = frame_phase(levels.frame_indices, n, self.s.pe_variant or cfg.pe_variant, cfg.num_frames_pe)
        for k in range(update):
            enc = sample_mask_prompts(feat[k], pos[k], masks[:, k], self.s.prompt_tokens, z[k],
                                      boxes=boxes[:, k], generator=self.generator, draw=self.draw)
            self._shape_tokens(st.shapes.get(i + k), enc, feat[k], pos[k], z[k])
            self._hook("prompt_tokens", call=i, frame=i + k, tokens=enc)
            if i == 0:
                rep = lambda x: x[:, :, None].repeat(1, 1, n, 1)  # noqa: E731
                st.memory = PromptMemory(rep(enc.tokens), rep(enc.pe), keep=self.s.window + n)
            else:
                valid = masks[:, k].flatten(1).sum(1) > 0
                st.memory.write(valid, enc.tokens, enc.pe, k - n)
        prompts = memory_prompts(self.model, st.memory, st.first_frames, n, self.s.window)
        self._hook("prompt_queries", call=i, prompts=prompts)
        return prompts

    def _shape_tokens(self, given: list[tuple[int, ShapePrompt]] | None, enc: PromptTokens, feat, pos, z) -> None:
        """Targets given as a box or clicks on this frame take the box / point branch's tokens (in place)."""
        if not given:
            return
        rows = torch.tensor([t for t, _ in given], device=enc.tokens.device)
        shaped = sample_shape_prompts(feat, pos, [sh for _, sh in given], self.s.prompt_tokens, z,
                                      generator=self.generator, draw=self.draw)
        enc.tokens[rows], enc.pe[rows] = shaped.tokens.to(enc.tokens.dtype), shaped.pe.to(enc.pe.dtype)
        enc.points[rows], enc.valid[rows] = shaped.points.to(enc.points), shaped.valid.to(enc.valid.device)

    def _semantic_map(self, out) -> torch.Tensor:
        """Class per pixel from the learnable queries -> [n, Hp, Wp]: argmax_c sum_q p[q,c] q_q sigmoid(m_q).
        Queries are upsampled 16 at a time so N x Hp x Wp maps never exist at once."""
        Ql = out.num_learnable
        h, w = self.g.image_size
        up = lambda x: F.interpolate(x, self.g.padded_size, mode="bilinear", align_corners=False)  # noqa: E731
        parts = chunks(Ql, 16)
        quality = torch.cat([mask_quality(up(out.pred_masks[c])[..., :h, :w]) for c in parts])
        probs = out.pred_logits[:Ql].float().sigmoid() * quality[:, None]
        return semantic_map(probs, ((c, up(out.pred_masks[c].float())) for c in parts))

    def _write_predictions(self, st: TrackState, out, i, n, is_text: bool, stuff: StuffHelp | None = None):
        """Turn the clip's prompt-query predictions into state (the official write_predictions)."""
        Ql = out.num_learnable
        low = out.pred_masks[Ql:]                       # [N, n, H4, W4]
        h4, w4 = low.shape[-2:]
        boxes = mask_box(low > 0).float() / torch.tensor([w4, h4, w4, h4], device=low.device)
        masks = F.interpolate(low, self.g.padded_size, mode="bilinear", align_corners=False)
        h, w = self.g.image_size
        pred = ClipPredictions(masks, boxes, out.pred_embds[Ql:], mask_quality(masks[..., :h, :w]))
        self._hook("clip_output", call=i, out=out)
        if stuff is not None and (stuff.labels >= 0).any():
            pred.sem, pred.labels = self._semantic_map(out), stuff.labels
        ff = st.first_frames
        first = (ff >= i) & (ff < i + n)
        if first.any():
            self._assign_first(st, first, pred, i, n, is_text)
        seen = (ff < i) & (ff != -1)
        if seen.any():
            self._accumulate_seen(st, seen, pred, n, is_text)

    def _assign_first(self, st: TrackState, first, pred: ClipPredictions, i, n, is_text):
        """Targets first appearing in this clip: take the prediction after their prompt frame."""
        idx = torch.nonzero(first).flatten()
        faf = st.first_frames[idx] - (i + n)            # negative position of the prompt frame
        st.embds[idx, -n:] = pred.embds[idx]
        m = pred.masks[idx]
        if is_text:
            keep = torch.ones(len(idx), dtype=torch.bool, device=m.device)
        else:
            gt_first = st.masks[idx, faf]
            pos = faf + n
            pred_first = m[torch.arange(len(idx)), pos]
            weight = m.sigmoid() * (pair_iou(gt_first, pred_first) ** 2 * pred.quality[idx]).view(-1, 1, 1, 1)
            winner = self._compete(m, weight)
            m = m * winner
            iou = pair_iou(gt_first, winner[torch.arange(len(idx)), pos])
            area = gt_first.flatten(1).sum(1) / (96 * 96)
            keep = iou > 0.15 * area.clamp(max=1)
        for k, obj in enumerate(idx.tolist()):
            start = int(faf[k]) + (0 if is_text else 1)  # the prompt frame itself keeps its given mask
            is_stuff = pred.is_stuff(obj)
            if start == 0:
                continue
            if is_stuff:  # the semantic map claims the stuff class's pixels for this target
                m[k, start:] = m[k, start:].masked_fill(pred.sem[start:] == pred.labels[obj], 10.0)
            taken = keep[k] | is_stuff  # decided on the device: a target that is not kept keeps its blank state
            st.logits[obj, start:] = torch.where(taken, m[k, start:], st.logits[obj, start:])
            st.boxes[obj, start:] = torch.where(taken, pred.boxes[obj, start:], st.boxes[obj, start:])

    def _accumulate_seen(self, st: TrackState, seen, pred: ClipPredictions, n, is_text):
        """Targets seen before this clip: consistent predictions add their logits to the clip frames."""
        idx = torch.nonzero(seen).flatten()
        sim = temporal_consistency(st.embds[idx, -self.s.window:], pred.embds[idx])
        ok = (sim > self.s.vos_consistency).float()
        m = pred.masks[idx] * ok.view(-1, 1, 1, 1)
        q, e = pred.quality[idx] * ok, pred.embds[idx] * ok.view(-1, 1, 1)
        b = pred.boxes[idx] * ok.view(-1, 1, 1)
        sim = sim * ok
        if not is_text:
            original = (m > 0).flatten(1).sum(1).clamp(min=1)
            prob, weight = m.sigmoid(), sim ** 2 * q
            for k, obj in enumerate(idx.tolist()):
                if not pred.is_stuff(obj):
                    continue
                region = pred.sem == pred.labels[obj]  # stuff: the semantic map's pixels are certain
                if not self.s.stuff_prompts:  # ... and all there is: the prompt prediction is not used
                    m[k] = torch.where(region, m.new_tensor(10.0), m.new_tensor(-10.0))
                    prob[k] = region.to(prob.dtype)
                    original[k], weight[k] = region.sum().clamp(min=1), 1.0
                prob[k] = prob[k].masked_fill(region, 1.0)
                m[k] = m[k].masked_fill(region, 10.0)
            winner = self._compete(m, prob * weight.view(-1, 1, 1, 1))
            area = winner.flatten(1).sum(1)
            winner = winner * ((area / original > 0.25) & (area > 0)).view(-1, 1, 1, 1)
            m = m * winner
        st.logits[idx, -n:] += m
        st.boxes[idx, -n:] = b
        nonblank = (st.embds[idx, -n:] != 0).any(-1, keepdim=True)
        st.embds[idx, -n:] = (st.embds[idx, -n:] + e) / (nonblank + 1.0)

    @staticmethod
    def _compete(m: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """Each pixel goes to the target with the largest weight; background where every logit <= 0.
        m, weight [N, T, H, W] -> one-hot float [N, T, H, W]."""
        winner = weight.argmax(0).masked_fill((m <= 0).all(0), -1)
        return (winner[None] == torch.arange(m.shape[0], device=m.device).view(-1, 1, 1, 1)).float()
