"""Prompt-guided clip loop (VOS, PVOS, RefVOS): the official inference, state kept bounded.

Frames are processed in clips of T frames with stride s. Each clip, every target is a prompt query:
visual targets read their tokens from the memory pool (re-encoded from the latest masks), text targets
from their expression. Predicted mask logits accumulate over overlapping clips; a frame is final once
the clip starting at it has run, and is then handed to the caller and dropped from the state.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import torch
import torch.nn.functional as F

from ..modeling.mask_decoder import PromptQueries
from ..modeling.position_encoding import frame_phase
from ..modeling.prompt_encoder import PermutationDraw, mask_box, sample_mask_prompts
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..modeling.univs import UniVS
from .memory import PromptMemory


@dataclass
class ClipSettings:
    """Per-task knobs of the official launch scripts (see univs_engine.presets)."""

    clip_len: int = 5          # T
    stride: int = 1            # s
    memory_frames: int = 5     # NUM_PREV_FRAMES_MEMORY
    prompt_tokens: int = 256   # R, VISUAL_PROMPT_PIXELS_PER_IMAGE
    self_attn_mask: str = "sep"
    consistency_threshold: float = 0.5  # hard-coded in the official VOS driver

    @property
    def window(self) -> int:
        return max(self.memory_frames, self.clip_len)


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


def mask_quality(logits: torch.Tensor) -> torch.Tensor:
    """#(logit > 1) / #(logit > -1) per target over all frames and pixels. logits [N, ...] -> [N]."""
    flat = logits.flatten(1)
    return (flat > 1).sum(1) / (flat > -1).sum(1).clamp(min=1)


def pair_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of binary masks paired along dim 0: [N, H, W] x [N, H, W] -> [N]."""
    a, b = a.flatten(1) > 0, b.flatten(1) > 0
    return (a & b).sum(1) / (a | b).sum(1).clamp(min=1)


def temporal_consistency(prev: torch.Tensor, cur: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of current embeddings [N, T, C] to recent ones [N, Tp, C], recent slots
    weighted by exp(5 v / Tp) and blank slots ignored -> [N]."""
    cur = cur / cur.norm(dim=-1, keepdim=True).clamp(min=1e-3)
    prev = prev / prev.norm(dim=-1, keepdim=True).clamp(min=1e-3)
    cos = torch.einsum("nvc,ntc->nvt", prev, cur).mean(-1)
    Tp = prev.shape[1]
    w = (torch.arange(1, Tp + 1, dtype=cos.dtype, device=cos.device) / Tp * 5.0).exp()
    w = w * (prev != 0).any(-1).to(cos.dtype)
    w = w / w.sum(-1, keepdim=True).clamp(min=1e-3)
    return (cos * w).sum(-1)


@dataclass
class TrackState:
    """Bounded per-video state. masks/logits/boxes/embds hold the most recent frames only:
    logits [N, F, Hp, Wp] for frames [end - F, end); boxes [N, F, 4]; embds [N, F, C]."""

    first_frames: torch.Tensor  # [N] absolute first-appearance frame, -1 if not yet seen
    logits: torch.Tensor
    boxes: torch.Tensor
    embds: torch.Tensor
    end: int = 0                # frames [0, end) have state
    memory: PromptMemory | None = None

    @property
    def masks(self) -> torch.Tensor:
        return (self.logits > 0).float()


class PromptedClipLoop:
    """Runs the clip loop for a fixed set of targets.

    frames(start, stop) must return normalised, padded frames [n, 3, Hp, Wp]. annotations maps a frame
    index to (target indices, masks [k, Hp, Wp]) given at that frame (value 1 inside the mask).
    """

    def __init__(self, model: "UniVS", settings: ClipSettings, num_frames: int, image_size: tuple[int, int],
                 padded_size: tuple[int, int], generator: torch.Generator | None = None,
                 class_embeddings: torch.Tensor | None = None, draw: PermutationDraw | None = None):
        """draw: replaces ``generator`` as the prompt sampler's source of random permutations
        (modeling.prompt_encoder.PermutationDraw), e.g. to replay recorded draws."""
        self.model, self.s = model, settings
        self.num_frames, self.image_size, self.padded_size = num_frames, image_size, padded_size
        self.generator, self.draw = generator, draw
        self.class_embeddings = class_embeddings
        self.hooks: dict[str, Callable] = {}  # name -> fn(**tensors): lets tests observe internals

    def _hook(self, name: str, **kw) -> None:
        if name in self.hooks:
            self.hooks[name](**kw)

    # ------------------------------------------------------------------ public
    @torch.no_grad()
    def run(self, frames: Callable[[int, int], torch.Tensor], num_targets: int,
            annotations: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None,
            text: TextTargets | None = None,
            stuff: StuffHelp | None = None) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        """Yield (frame index, logits [N, Hp, Wp], embds [N, C]) for every frame in order."""
        T, s, L = self.s.clip_len, min(self.s.stride, self.s.clip_len), self.num_frames
        annotations = annotations or {}
        dev = self.model.pixel_mean.device
        C = self.model.cfg.hidden_dim
        Hp, Wp = self.padded_size
        state = TrackState(torch.full((num_targets,), -1, dtype=torch.long, device=dev),
                           torch.zeros(num_targets, 0, Hp, Wp, device=dev),
                           torch.zeros(num_targets, 0, 4, device=dev), torch.zeros(num_targets, 0, C, device=dev))
        if text is not None:
            state.first_frames.zero_()
        cache: dict[int, tuple] = {}
        is_last = False
        for i in range(0, L, s):
            if is_last and i + T > L:
                break
            is_last = i + T >= L
            n = min(T, L - i)
            feats = self._features(frames, cache, i, n)
            self._write_targets(state, i, n, s, annotations)
            out = self._decode(state, feats, i, n, s, text, stuff)
            self._write_predictions(state, out, i, n, text is not None, stuff)
            self._hook("state", call=i, state=state)
            done = range(i, i + n) if is_last else range(i, i + min(s, n))
            for f in done:
                j = f - state.end
                yield f, state.logits[:, j], state.embds[:, j]
            for f in [k for k in cache if k < i + s]:
                del cache[f]

    # ------------------------------------------------------------------ steps
    def _features(self, frames, cache, i, n):
        """Per-frame encoder outputs for frames [i, i+n), computed once per frame."""
        todo = [f for f in range(i, i + n) if f not in cache]
        if todo:
            window_stop = min(max(todo[0] + max(5, self.s.clip_len), todo[-1] + 1), self.num_frames)
            mask_feats, multi = self.model.encode_frames(frames(todo[0], window_stop))
            for k, f in enumerate(range(todo[0], window_stop)):
                cache[f] = (mask_feats[k], [m[k] for m in multi])
        clip = [cache[f] for f in range(i, i + n)]
        return torch.stack([c[0] for c in clip]), [torch.stack([c[1][l] for c in clip]) for l in range(3)]

    def _write_targets(self, st: TrackState, i, n, s, annotations):
        """Open state for the clip's new frames and write annotated masks (value 1)."""
        new = n if i == 0 else min(s, self.num_frames - i)
        N = st.first_frames.shape[0]
        keep = self.s.window
        if st.embds.shape[1]:
            pad_embds = st.embds[:, -new:].mean(1, keepdim=True).expand(-1, new, -1)
        else:
            pad_embds = st.embds.new_zeros(N, new, st.embds.shape[2])
        z = st.logits.new_zeros(N, new, *self.padded_size)
        st.logits = torch.cat([st.logits[:, -keep:], z], 1)
        st.boxes = torch.cat([st.boxes[:, -keep:], st.boxes.new_zeros(N, new, 4)], 1)
        st.embds = torch.cat([st.embds[:, -keep:], pad_embds], 1)
        st.end = i + n
        Hp, Wp = self.padded_size
        for f in range(i, i + n):
            if f not in annotations:
                continue
            idx, masks = annotations[f]
            j = f - st.end
            st.logits[idx, j] = masks.to(st.logits)
            # annotation boxes follow detectron2's BitMasks convention: exclusive max corner
            box = mask_box(masks > 0).to(st.boxes) + torch.tensor([0, 0, 1, 1], device=st.boxes.device)
            st.boxes[idx, j] = box / torch.tensor([Wp, Hp, Wp, Hp], device=st.boxes.device)
            st.first_frames[idx] = f

    def _decode(self, st: TrackState, feats, i, n, s, text: TextTargets | None, stuff: StuffHelp | None):
        mask_features, multi = feats
        dec = self.model.decoder
        frame_idx = torch.arange(i, i + n, device=mask_features.device)
        levels = dec.embed_levels(multi, frame_idx)
        if text is not None:
            prompts = dec.text_prompt_queries(text.sentence, text.words, levels)
        else:
            prompts = self._visual_prompts(st, levels, i, n, s)
        # visual prompts never attend to the learnable queries ('sep' masks): skip them, unless text
        # prompts borrow a learnable query's mask (l4p) or stuff targets read their semantic map
        classes = stuff.class_embeddings if stuff is not None else self.class_embeddings
        return dec(levels, mask_features, prompts, classes, self.s.self_attn_mask,
                   learnable=text is not None or stuff is not None)

    def _visual_prompts(self, st: TrackState, levels, i, n, s) -> PromptQueries:
        """Re-encode the clip's older frames from the current masks into the memory pool, then read it."""
        feat, pos, _ = levels.prompt_level
        masks = st.masks[:, -n:]
        boxes = st.boxes[:, -n:]
        update = 1 if i == 0 else n - s
        if i > 0:
            st.memory.append(s)
        z = frame_phase(levels.frame_indices, n, self.model.cfg.pe_variant, self.model.cfg.num_frames_pe)
        for k in range(update):
            enc = sample_mask_prompts(feat[k], pos[k], masks[:, k], self.s.prompt_tokens, z[k],
                                      boxes=boxes[:, k], generator=self.generator, draw=self.draw)
            self._hook("prompt_tokens", call=i, frame=i + k, tokens=enc)
            if i == 0:
                rep = lambda x: x[:, :, None].repeat(1, 1, n, 1)  # noqa: E731
                st.memory = PromptMemory(rep(enc.tokens), rep(enc.pe), keep=self.s.window + n)
            else:
                valid = masks[:, k].flatten(1).sum(1) > 0
                st.memory.write(valid, enc.tokens, enc.pe, k - n)
        st.memory.set_first_frames(st.first_frames)
        clip_t, clip_p = st.memory.recent(n)
        mem_t, mem_p = st.memory.proca_tokens(self.s.window)
        prompts = self.model.decoder.visual_prompt_queries(clip_t, clip_p, mem_t, mem_p)
        self._hook("prompt_queries", call=i, prompts=prompts)
        return prompts

    def _semantic_map(self, out) -> torch.Tensor:
        """Class per pixel from the learnable queries -> [n, Hp, Wp]: argmax_c sum_q p[q,c] q_q sigmoid(m_q).
        Queries are upsampled a few at a time so N x Hp x Wp maps never exist at once."""
        Ql = out.num_learnable
        h, w = self.image_size
        up = lambda x: F.interpolate(x, self.padded_size, mode="bilinear", align_corners=False)  # noqa: E731
        chunks = [slice(a, min(a + 16, Ql)) for a in range(0, Ql, 16)]
        quality = torch.cat([mask_quality(up(out.pred_masks[c])[..., :h, :w]) for c in chunks])
        probs = out.pred_logits[:Ql].float().sigmoid() * quality[:, None]
        sem = torch.zeros(probs.shape[1], out.pred_masks.shape[1], *self.padded_size, device=probs.device)
        for c in chunks:
            sem += torch.einsum("qc,qthw->cthw", probs[c], up(out.pred_masks[c].float()).sigmoid())
        return sem.argmax(0)

    def _write_predictions(self, st: TrackState, out, i, n, is_text: bool, stuff: StuffHelp | None = None):
        """Turn the clip's prompt-query predictions into state (the official write_predictions)."""
        Ql = out.num_learnable
        low = out.pred_masks[Ql:]                       # [N, n, H4, W4]
        h4, w4 = low.shape[-2:]
        boxes = mask_box(low > 0).float() / torch.tensor([w4, h4, w4, h4], device=low.device)
        masks = F.interpolate(low, self.padded_size, mode="bilinear", align_corners=False)
        h, w = self.image_size
        quality = mask_quality(masks[..., :h, :w])
        embds = out.pred_embds[Ql:]
        self._hook("clip_output", call=i, out=out)
        sem = self._semantic_map(out) if stuff is not None and (stuff.labels >= 0).any() else None
        labels = stuff.labels if sem is not None else None
        ff = st.first_frames
        first = (ff >= i) & (ff < i + n)
        if first.any():
            self._assign_first(st, first, masks, boxes, embds, quality, i, n, is_text, sem, labels)
        seen = (ff < i) & (ff != -1)
        if seen.any():
            self._accumulate_seen(st, seen, masks, boxes, embds, quality, n, is_text, sem, labels)

    def _assign_first(self, st, first, masks, boxes, embds, quality, i, n, is_text, sem=None, labels=None):
        """Targets first appearing in this clip: take the prediction after their prompt frame."""
        idx = torch.nonzero(first).flatten()
        faf = st.first_frames[idx] - (i + n)            # negative position of the prompt frame
        st.embds[idx, -n:] = embds[idx]
        m = masks[idx]
        if is_text:
            keep = torch.ones(len(idx), dtype=torch.bool)
        else:
            gt_first = st.masks[idx, faf]
            pos = faf + n
            pred_first = m[torch.arange(len(idx)), pos]
            weight = m.sigmoid() * (pair_iou(gt_first, pred_first) ** 2 * quality[idx]).view(-1, 1, 1, 1)
            winner = self._compete(m, weight)
            m = m * winner
            iou = pair_iou(gt_first, winner[torch.arange(len(idx)), pos])
            area = gt_first.flatten(1).sum(1) / (96 * 96)
            keep = iou > 0.15 * area.clamp(max=1)
        for k, obj in enumerate(idx.tolist()):
            start = int(faf[k]) + (0 if is_text else 1)  # the prompt frame itself keeps its given mask
            is_stuff = labels is not None and int(labels[obj]) >= 0
            if (not keep[k] and not is_stuff) or start == 0:
                continue
            if is_stuff:  # the semantic map claims the stuff class's pixels for this target
                m[k, start:][sem[start:] == labels[obj]] = 10.0
            st.logits[obj, start:] = m[k, start:]
            st.boxes[obj, start:] = boxes[obj, start:]

    def _accumulate_seen(self, st, seen, masks, boxes, embds, quality, n, is_text, sem=None, labels=None):
        """Targets seen before this clip: consistent predictions add their logits to the clip frames."""
        idx = torch.nonzero(seen).flatten()
        sim = temporal_consistency(st.embds[idx, -self.s.window:], embds[idx])
        ok = (sim > self.s.consistency_threshold).float()
        m = masks[idx] * ok.view(-1, 1, 1, 1)
        q, e, b = quality[idx] * ok, embds[idx] * ok.view(-1, 1, 1), boxes[idx] * ok.view(-1, 1, 1)
        sim = sim * ok
        if not is_text:
            original = (m > 0).flatten(1).sum(1).clamp(min=1)
            prob = m.sigmoid()
            for k, obj in enumerate(idx.tolist()):
                if labels is not None and int(labels[obj]) >= 0:  # stuff: the semantic map's pixels are certain
                    region = sem == labels[obj]
                    prob[k][region] = 1.0
                    m[k][region] = 10.0
            winner = self._compete(m, prob * (sim ** 2 * q).view(-1, 1, 1, 1))
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
        winner = weight.argmax(0)
        winner[(m <= 0).all(0)] = -1
        return (winner[None] == torch.arange(m.shape[0], device=m.device).view(-1, 1, 1, 1)).float()
