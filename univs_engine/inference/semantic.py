"""VSS: the semantic clip loop (learnable queries only, non-overlapping clips, one label map per frame)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Iterator

import torch

from ..presets import TaskSettings
from .core import ClipGeometry, FrameFeatures, chunks, fp32, semantic_map, to_output, upsample

if TYPE_CHECKING:
    from ..modeling.univs import UniVS


class SemanticClipLoop:
    """VSS: non-overlapping clips of T frames, learnable queries only, one label map per frame.

    Mask logits go to the padded size (bilinear), are cropped and resized to the output size (nearest); the
    quality of each query is measured on those resized masks (official order)."""

    def __init__(self, model: "UniVS", settings: TaskSettings, geometry: ClipGeometry, class_embeddings: torch.Tensor,
                 max_elements: int = 1 << 25):
        if class_embeddings is None or class_embeddings.shape[0] == 0:
            raise ValueError("class_embeddings [K, D] are required (the vocabulary to segment)")
        self.model, self.s, self.g = model, settings, geometry
        self.class_embeddings = class_embeddings
        self.max_elements = max_elements  # bounds the [queries, H, W] temporaries
        self.max_frames_held = 0
        self.hooks: dict[str, Callable] = {}

    @torch.no_grad()
    def run(self, frames: Callable[[int, int], torch.Tensor],
            cancel: Callable[[], bool] | None = None) -> Iterator[tuple[int, torch.Tensor]]:
        """Yield (frame index, labels [H_out, W_out] long, 0-based class index) for every frame in order."""
        T, L = self.s.clip_len, self.g.num_frames
        dec = self.model.decoder
        features = FrameFeatures(self.model, frames, L, T)
        for i in range(0, L, T):
            if cancel is not None and cancel():
                return
            n = min(T, L - i)
            mask_features, multi = features.clip(i, n)
            levels = dec.embed_levels(multi, torch.arange(i, i + n, device=mask_features.device), self.s.pe_variant)
            out = dec(levels, mask_features, None, self.class_embeddings, self.s.self_attn_mask)
            Ql = dec.num_queries
            if "clip_output" in self.hooks:
                self.hooks["clip_output"](call=i, out=out)
            self.max_frames_held = max(self.max_frames_held, len(features))
            with fp32(out.pred_masks.device):
                labels = list(self._labels(out.pred_logits[:Ql].float().sigmoid(), out.pred_masks[:Ql].float()))
            for t, lab in enumerate(labels):
                yield i + t, lab
            features.release(i + T)

    def _out(self, low: torch.Tensor) -> torch.Tensor:
        return to_output(upsample(low[:, None], self.g.padded_size)[:, 0], self.g, "nearest")

    def _labels(self, probs, masks) -> Iterator[torch.Tensor]:
        Q, n = masks.shape[:2]
        h, w = self.g.out_size
        parts = chunks(Q, self.max_elements // max(1, h * w))
        pos = masks.new_zeros(Q)
        tot = masks.new_zeros(Q)
        for t in range(n):  # pass 1: quality over the clip's resized masks
            for c in parts:
                x = self._out(masks[c, t])
                pos[c] += (x > 1).flatten(1).sum(1)
                tot[c] += (x > -1).flatten(1).sum(1)
        weights = probs * (pos / tot.clamp(min=1))[:, None]
        for t in range(n):  # pass 2: class maps
            yield semantic_map(weights, ((c, self._out(masks[c, t])) for c in parts))
