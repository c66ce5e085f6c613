"""Model configuration: one dataclass, named presets for the official backbones and the small model."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Tuple


@dataclass(frozen=True)
class ResNetConfig:
    """detectron2-layout bottleneck ResNet (FrozenBN, stride on the 3x3 conv)."""

    depth_blocks: Tuple[int, int, int, int] = (3, 4, 6, 3)
    stem_out: int = 64
    res2_out: int = 256  # bottleneck width of res2 = res2_out // 4; doubles every stage

    @property
    def out_channels(self) -> Tuple[int, int, int, int]:
        return tuple(self.res2_out * 2**i for i in range(4))  # type: ignore[return-value]


@dataclass(frozen=True)
class SwinConfig:
    """Original (Swin-Det) layout: PatchMerging at the end of stages 0-2, per-output norm{i}."""

    embed_dim: int = 96
    depths: Tuple[int, int, int, int] = (2, 2, 6, 2)
    num_heads: Tuple[int, int, int, int] = (3, 6, 12, 24)
    window_size: int = 7
    patch_size: int = 4
    mlp_ratio: float = 4.0

    @property
    def out_channels(self) -> Tuple[int, int, int, int]:
        return tuple(self.embed_dim * 2**i for i in range(4))  # type: ignore[return-value]


@dataclass(frozen=True)
class TextEncoderConfig:
    """CLIP text tower (RN50x4 in the official model)."""

    width: int = 640
    layers: int = 12
    heads: int = 10
    context_length: int = 77
    vocab_size: int = 49408
    embed_dim: int = 640


@dataclass(frozen=True)
class UniVSConfig:
    """Everything that fixes tensor shapes. Inference knobs (clip length, input size, thresholds) are the
    TaskSettings of univs_engine/presets.py."""

    name: str = "r50"
    backbone: ResNetConfig | SwinConfig = field(default_factory=ResNetConfig)
    hidden_dim: int = 256  # pixel-decoder conv dim, mask dim and decoder width
    num_queries: int = 200
    nheads: int = 8
    dim_feedforward: int = 2048
    dec_layers: int = 9  # official DEC_LAYERS=10 counts the prediction before the first layer
    pixel_decoder_layers: int = 6
    pixel_decoder_ffn: int = 1024
    pixel_decoder_points: int = 4
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    num_frames_pe: int = 128  # ArbitraryT: z = frame_index * 2pi / num_frames_pe
    pe_variant: str = "ArbitraryT"  # or "FixedT"
    size_divisibility: int = 32
    pixel_mean: Tuple[float, float, float] = (123.675, 116.280, 103.530)
    pixel_std: Tuple[float, float, float] = (58.395, 57.120, 57.375)

    @property
    def text_dim(self) -> int:
        return self.text.embed_dim

    def with_(self, **kw) -> "UniVSConfig":
        return replace(self, **kw)


def _swin(name: str, dim: int, depths, heads, window: int) -> UniVSConfig:
    return UniVSConfig(name=name, backbone=SwinConfig(dim, tuple(depths), tuple(heads), window))


PRESETS = {
    "r50": UniVSConfig(),
    "swint": _swin("swint", 96, (2, 2, 6, 2), (3, 6, 12, 24), 7),
    "swinb": _swin("swinb", 128, (2, 2, 18, 2), (4, 8, 16, 32), 12),
    "swinl": _swin("swinl", 192, (2, 2, 18, 2), (6, 12, 24, 48), 12),
    # The embedded model: same code, every width reduced (trained by the project, shipped in models/).
    "small": UniVSConfig(
        name="small",
        backbone=ResNetConfig(depth_blocks=(1, 1, 1, 1), stem_out=16, res2_out=32),
        hidden_dim=64,
        num_queries=20,
        nheads=4,
        dim_feedforward=256,
        dec_layers=3,
        pixel_decoder_layers=2,
        pixel_decoder_ffn=128,
        text=TextEncoderConfig(width=128, layers=2, heads=4, embed_dim=128),
    ),
}


def get_config(name: str) -> UniVSConfig:
    """Return the preset `name` (r50, swint, swinb, swinl, small)."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown model config {name!r}; choose one of {sorted(PRESETS)}") from None
