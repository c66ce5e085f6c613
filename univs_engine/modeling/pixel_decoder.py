"""Mask2Former MSDeformAttn pixel decoder (the UniVS ``sem_seg_head.pixel_decoder``).

Deformable-attention encoder over the res3-res5 features (1/8, 1/16, 1/32), plus one FPN step that
adds res2 to give the 1/4-scale mask features. Frames are independent (batch = frames). The official
model runs this module with autocast disabled; :meth:`MSDeformAttnPixelDecoder.forward_features` does
the same and casts its inputs to float32, so keep this module's weights in float32 even when the rest
of the model runs in half precision.
"""
from __future__ import annotations

import contextlib
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..config import UniVSConfig
from .image_encoder import Conv2dNorm
from .ms_deform_attn import MSDeformAttn
from .position_encoding import sine_position_2d

__all__ = ["MSDeformAttnPixelDecoder", "MSDeformAttnEncoderLayer", "MSDeformAttnEncoderOnly"]

GN_GROUPS = 32
CPU_TOKEN_CHUNK = 4096  # encoder tokens per step on the CPU (see MSDeformAttnEncoderLayer.forward)


class MSDeformAttnEncoderLayer(nn.Module):
    """Post-norm encoder layer: x = LN(x + DeformAttn(x + pos)); x = LN(x + FFN(x)) (ReLU)."""

    def __init__(self, d_model: int, d_ffn: int, n_levels: int, n_heads: int, n_points: int):
        super().__init__()
        self.self_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(self, src: torch.Tensor, pos: torch.Tensor, reference_points: torch.Tensor,
                spatial_shapes: Sequence[Tuple[int, int]]) -> torch.Tensor:
        value = self.self_attn.project_values(src)
        if src.device.type != "cpu" or torch.is_grad_enabled() or src.shape[1] <= CPU_TOKEN_CHUNK:
            return self._tokens(src, pos, reference_points, value, spatial_shapes)
        # On the CPU, tokens in chunks: every step after the value projection is per token (bit-identical), and the
        # FFN's [S, 1024] hidden layer (62 MB for one 640p frame) never exists at once (R50 640p: 3.2 -> 2.6 s/frame).
        out = torch.empty_like(src)
        for a in range(0, src.shape[1], CPU_TOKEN_CHUNK):
            part = slice(a, a + CPU_TOKEN_CHUNK)
            out[:, part] = self._tokens(src[:, part], pos[:, part], reference_points[:, part], value, spatial_shapes)
        return out

    def _tokens(self, src, pos, reference_points, value, spatial_shapes) -> torch.Tensor:
        """The layer for the tokens src [B, q, C] (pos, reference points alike) over all values."""
        src = self.norm1(src + self.self_attn.attend(src + pos, reference_points, value, spatial_shapes))
        return self.norm2(src + self.linear2(F.relu(self.linear1(src))))


class MSDeformAttnEncoder(nn.Module):
    def __init__(self, layers: List[MSDeformAttnEncoderLayer]):
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, src, pos, reference_points, spatial_shapes):
        for layer in self.layers:
            src = layer(src, pos, reference_points, spatial_shapes)
        return src


def _reference_points(spatial_shapes: Sequence[Tuple[int, int]], n_levels: int, device) -> torch.Tensor:
    """Pixel centres of every level, normalised: [S, L, 2] (x, y), identical for each level slot.

    No padding mask is used by the model, so the valid ratios are 1 and no rescaling is needed.
    """
    refs = []
    for h, w in spatial_shapes:
        ys = (torch.arange(h, dtype=torch.float32, device=device) + 0.5) / h
        xs = (torch.arange(w, dtype=torch.float32, device=device) + 0.5) / w
        refs.append(torch.stack((xs[None, :].expand(h, w), ys[:, None].expand(h, w)), -1).reshape(-1, 2))
    return torch.cat(refs, 0)[:, None, :].expand(-1, n_levels, 2)


class MSDeformAttnEncoderOnly(nn.Module):
    """``transformer`` submodule: level embeddings + stacked deformable encoder layers."""

    def __init__(self, d_model: int, n_heads: int, n_layers: int, d_ffn: int, n_levels: int, n_points: int):
        super().__init__()
        self.n_levels = n_levels
        self.encoder = MSDeformAttnEncoder(
            [MSDeformAttnEncoderLayer(d_model, d_ffn, n_levels, n_heads, n_points) for _ in range(n_layers)]
        )
        self.level_embed = nn.Parameter(torch.empty(n_levels, d_model))
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        for m in self.modules():
            if isinstance(m, MSDeformAttn):
                m.reset_parameters()
        nn.init.normal_(self.level_embed)

    def forward(self, srcs: List[torch.Tensor], pos_embeds: List[torch.Tensor]):
        """srcs: L maps [B, C, H_l, W_l]; pos_embeds: L maps [C, H_l, W_l] -> ([B, S, C], shapes)."""
        shapes = [(s.shape[-2], s.shape[-1]) for s in srcs]
        src = torch.cat([s.flatten(2).transpose(1, 2) for s in srcs], 1)
        pos = torch.cat([p.flatten(1).transpose(0, 1) + self.level_embed[i] for i, p in enumerate(pos_embeds)], 0)
        ref = _reference_points(shapes, self.n_levels, src.device)
        b = src.shape[0]
        memory = self.encoder(src, pos[None], ref[None].expand(b, -1, -1, -1), shapes)
        return memory, shapes


def _no_autocast(device: torch.device):
    try:
        return torch.autocast(device_type=device.type, enabled=False)
    except (RuntimeError, ValueError):  # device type without autocast support
        return contextlib.nullcontext()


class MSDeformAttnPixelDecoder(nn.Module):
    """Pixel decoder with the official state-dict names (``sem_seg_head.pixel_decoder.*`` minus prefix).

    Args:
        cfg: model config (hidden_dim, nheads, pixel_decoder_{layers,ffn,points}).
        in_channels: backbone channels of (res2, res3, res4, res5).
    """

    in_features = ("res2", "res3", "res4", "res5")
    transformer_in_features = ("res3", "res4", "res5")

    def __init__(self, cfg: UniVSConfig, in_channels: Sequence[int]):
        super().__init__()
        if len(in_channels) != 4:
            raise ValueError(f"in_channels must give the 4 channels of res2..res5, got {in_channels}")
        dim = cfg.hidden_dim
        self.hidden_dim = dim
        n_levels = len(self.transformer_in_features)
        c2, c3, c4, c5 = in_channels
        # input projections ordered low -> high resolution: res5, res4, res3
        self.input_proj = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, dim, kernel_size=1), nn.GroupNorm(GN_GROUPS, dim)) for c in (c5, c4, c3)
        )
        for proj in self.input_proj:
            nn.init.xavier_uniform_(proj[0].weight, gain=1)
            nn.init.zeros_(proj[0].bias)
        self.transformer = MSDeformAttnEncoderOnly(dim, cfg.nheads, cfg.pixel_decoder_layers, cfg.pixel_decoder_ffn,
                                                   n_levels, cfg.pixel_decoder_points)
        self.mask_features = nn.Conv2d(dim, dim, kernel_size=1)
        # one extra FPN level (stride 8 -> common stride 4) on res2
        self.adapter_1 = Conv2dNorm(c2, dim, kernel_size=1, bias=False, norm=nn.GroupNorm(GN_GROUPS, dim))
        self.layer_1 = Conv2dNorm(dim, dim, kernel_size=3, padding=1, bias=False,
                                  norm=nn.GroupNorm(GN_GROUPS, dim), activation=F.relu)
        for conv in (self.mask_features, self.adapter_1, self.layer_1):  # caffe2 "xavier" fill
            nn.init.kaiming_uniform_(conv.weight, a=1)
            if conv.bias is not None:
                nn.init.zeros_(conv.bias)

    def forward_features(self, feats: Dict[str, torch.Tensor]) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """feats: res2..res5 [B, C_i, H_i, W_i] ->
        (mask_features [B, hidden, H/4, W/4], [map 1/32, map 1/16, map 1/8] each [B, hidden, h, w]).
        Always computed in float32 with autocast off."""
        device = feats["res5"].device
        with _no_autocast(device):
            srcs, pos = [], []
            for proj, name in zip(self.input_proj, self.transformer_in_features[::-1]):
                x = feats[name].float()
                srcs.append(proj(x))
                pos.append(sine_position_2d(x.shape[-2], x.shape[-1], self.hidden_dim // 2, device=device))
            memory, shapes = self.transformer(srcs, pos)
            b = memory.shape[0]
            maps = [
                m.transpose(1, 2).reshape(b, -1, h, w)
                for m, (h, w) in zip(memory.split([h * w for h, w in shapes], dim=1), shapes)
            ]
            lateral = self.adapter_1(feats["res2"].float())
            y = lateral + F.interpolate(maps[-1], size=lateral.shape[-2:], mode="bilinear", align_corners=False)
            y = self.layer_1(y)
            return self.mask_features(y), maps

    forward = forward_features
