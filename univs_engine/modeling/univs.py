"""The UniVS network: image encoder -> pixel decoder -> unified video mask decoder.

Attribute names reproduce the official state-dict layout (`backbone.*`, `sem_seg_head.pixel_decoder.*`,
`sem_seg_head.predictor.*`), so official checkpoints load without renaming.
"""
from __future__ import annotations

import torch
from torch import nn

from ..config import UniVSConfig
from .image_encoder import build_image_encoder
from .mask_decoder import VideoMaskDecoder
from .pixel_decoder import MSDeformAttnPixelDecoder


class SegHead(nn.Module):
    """Container that only exists to keep the official `sem_seg_head.` key prefix."""

    def __init__(self, cfg: UniVSConfig, in_channels):
        super().__init__()
        self.pixel_decoder = MSDeformAttnPixelDecoder(cfg, in_channels)
        self.predictor = VideoMaskDecoder(cfg)


class UniVS(nn.Module):
    """Per-frame encoders plus the clip-level decoder. The clip loops of univs_engine/inference drive it: vos.py for
    prompted targets, entity.py and semantic.py (run by category.py) for categories."""

    def __init__(self, cfg: UniVSConfig):
        super().__init__()
        self.cfg = cfg
        self.backbone = build_image_encoder(cfg)
        self.sem_seg_head = SegHead(cfg, self.backbone.out_channels)
        self.register_buffer("pixel_mean", torch.tensor(cfg.pixel_mean).view(-1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(cfg.pixel_std).view(-1, 1, 1), persistent=False)

    @property
    def decoder(self) -> VideoMaskDecoder:
        return self.sem_seg_head.predictor

    def encode_frames(self, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """images [T, 3, H, W] normalised and padded to a multiple of 32 ->
        (mask_features [T, C, H/4, W/4], multi-scale maps [1/32, 1/16, 1/8] each [T, C, h, w]).
        Frames are independent here, so callers may encode any window of frames at once. Without gradients on the
        CPU they run one at a time: five 640p frames at once make 200-300 MB activations (the 1/4-scale maps, the
        FFN's hidden layer) whose fresh pages cost more than their arithmetic (R50 640p pixel decoder, 2 threads:
        3.0 s per frame batched, 2.1 s one by one)."""
        if images.shape[0] > 1 and images.device.type == "cpu" and not torch.is_grad_enabled():
            parts = [self._encode(images[k:k + 1]) for k in range(images.shape[0])]
            return torch.cat([p[0] for p in parts]), [torch.cat([p[1][lv] for p in parts]) for lv in range(3)]
        return self._encode(images)

    def _encode(self, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        return self.sem_seg_head.pixel_decoder.forward_features(self.backbone(images))


def build_univs(cfg: UniVSConfig) -> UniVS:
    """Build an (uninitialised) UniVS for a config; load weights with univs_engine.checkpoint."""
    return UniVS(cfg).eval()
