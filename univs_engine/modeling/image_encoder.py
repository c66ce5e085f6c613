"""Image encoders (backbones): detectron2-layout ResNet and Swin-Det-layout Swin Transformer.

Both take a normalised, padded batch of frames [B, 3, H, W] and return
``dict(res2=..., res3=..., res4=..., res5=...)`` (NCHW, strides 4, 8, 16, 32). State-dict names match
the official UniVS checkpoints (``backbone.*`` without the prefix), so released weights load with
``strict=True``.

Normalisation layers of the ResNet (``norm=`` argument):

* ``"FrozenBN"`` (default, what the released R50 uses): fixed per-channel affine from BN statistics;
  ``weight``, ``bias``, ``running_mean``, ``running_var`` are all buffers.
* ``"AffineFrozenBN"``: same keys and same maths, but ``weight``/``bias`` are learnable parameters;
  the statistics stay frozen. State dicts are interchangeable with ``"FrozenBN"`` in both directions.
* ``"BN"``: ``nn.BatchNorm2d`` (batch statistics in training). Its state dict additionally holds
  ``num_batches_tracked``; loading a FrozenBN state dict into it is accepted (the counter starts at 0),
  and :func:`freeze_batch_norm` turns a trained BN model back into the FrozenBN layout for export.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ResNetConfig, SwinConfig, UniVSConfig

__all__ = [
    "FrozenBatchNorm2d",
    "BatchNorm2d",
    "Conv2dNorm",
    "ResNet",
    "SwinTransformer",
    "build_image_encoder",
    "freeze_batch_norm",
    "make_norm2d",
]

FeatureDict = Dict[str, torch.Tensor]


# ----------------------------------------------------------------------------------------------
# Normalisation and conv helpers
# ----------------------------------------------------------------------------------------------
class FrozenBatchNorm2d(nn.Module):
    """BatchNorm with fixed statistics: y = (x - running_mean) / sqrt(running_var + eps) * weight + bias.

    With ``learnable_affine=False`` (detectron2 FrozenBN) all four tensors are buffers; with ``True``
    weight and bias are parameters. Either way the state-dict keys are the same four names.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, learnable_affine: bool = False):
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        if learnable_affine:
            self.weight = nn.Parameter(torch.ones(num_features))
            self.bias = nn.Parameter(torch.zeros(num_features))
        else:
            self.register_buffer("weight", torch.ones(num_features))
            self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features) - eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Eval-mode batch_norm is one fused op and is differentiable w.r.t. input, weight and bias.
        return F.batch_norm(x, self.running_mean.to(x.dtype), self.running_var.to(x.dtype),
                            self.weight.to(x.dtype), self.bias.to(x.dtype), training=False, eps=self.eps)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        # Accept state dicts written by nn.BatchNorm2d (they carry a step counter we do not keep).
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, learnable_affine={isinstance(self.weight, nn.Parameter)}"


class BatchNorm2d(nn.BatchNorm2d):
    """nn.BatchNorm2d that also loads FrozenBN state dicts (no ``num_batches_tracked`` key)."""

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        key = prefix + "num_batches_tracked"
        if self.track_running_stats and key not in state_dict:
            state_dict[key] = torch.zeros((), dtype=torch.long)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)


NORM_CHOICES = ("FrozenBN", "AffineFrozenBN", "BN")


def make_norm2d(norm: str, channels: int) -> nn.Module:
    """Normalisation layer by name: FrozenBN | AffineFrozenBN | BN | GN (32 groups)."""
    if norm == "FrozenBN":
        return FrozenBatchNorm2d(channels)
    if norm == "AffineFrozenBN":
        return FrozenBatchNorm2d(channels, learnable_affine=True)
    if norm == "BN":
        return BatchNorm2d(channels)
    if norm == "GN":
        return nn.GroupNorm(32, channels)
    raise ValueError(f"unknown norm {norm!r}; choose one of {NORM_CHOICES + ('GN',)}")


@torch.no_grad()
def freeze_batch_norm(module: nn.Module) -> nn.Module:
    """Replace every nn.BatchNorm2d in ``module`` by a FrozenBatchNorm2d with its current statistics.

    Returns the module (modified in place; a bare BatchNorm2d argument is returned converted).
    Use it to export a model trained with ``norm="BN"`` in the checkpoint layout of the official R50.
    """
    if isinstance(module, nn.BatchNorm2d):
        tensors = [t for t in (module.running_mean, module.weight) if t is not None]
        frozen = FrozenBatchNorm2d(module.num_features, eps=module.eps)
        if tensors:
            frozen = frozen.to(tensors[0].device)
        if module.affine:
            frozen.weight.copy_(module.weight)
            frozen.bias.copy_(module.bias)
        if module.track_running_stats:
            frozen.running_mean.copy_(module.running_mean)
            frozen.running_var.copy_(module.running_var)
        return frozen
    for name, child in module.named_children():
        new = freeze_batch_norm(child)
        if new is not child:
            setattr(module, name, new)
    return module


class Conv2dNorm(nn.Conv2d):
    """Conv2d followed by an optional ``.norm`` submodule and activation (detectron2 naming)."""

    def __init__(self, *args, norm: Optional[nn.Module] = None,
                 activation: Optional[Callable[[torch.Tensor], torch.Tensor]] = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.norm = norm
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = super().forward(x)
        if self.norm is not None:
            x = self.norm(x)
        if self.activation is not None:
            x = self.activation(x)
        return x


# ----------------------------------------------------------------------------------------------
# ResNet (detectron2 layout, STRIDE_IN_1X1 = False)
# ----------------------------------------------------------------------------------------------
class BasicStem(nn.Module):
    """7x7/2 conv (no bias) + norm + ReLU, then 3x3/2 max-pool (padding 1)."""

    def __init__(self, in_channels: int, out_channels: int, norm: str):
        super().__init__()
        self.conv1 = Conv2dNorm(in_channels, out_channels, kernel_size=7, stride=2, padding=3, bias=False,
                                norm=make_norm2d(norm, out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu_(self.conv1(x))
        return F.max_pool2d(x, kernel_size=3, stride=2, padding=1)


class BottleneckBlock(nn.Module):
    """1x1 -> 3x3 (carries the stride) -> 1x1, projection shortcut when the shape changes."""

    def __init__(self, in_channels: int, out_channels: int, bottleneck_channels: int, stride: int, norm: str):
        super().__init__()
        # Defined first so that the state-dict order matches the official checkpoints.
        if in_channels != out_channels or stride != 1:
            self.shortcut = Conv2dNorm(in_channels, out_channels, kernel_size=1, stride=stride, bias=False,
                                       norm=make_norm2d(norm, out_channels))
        else:
            self.shortcut = None
        self.conv1 = Conv2dNorm(in_channels, bottleneck_channels, kernel_size=1, bias=False,
                                norm=make_norm2d(norm, bottleneck_channels))
        self.conv2 = Conv2dNorm(bottleneck_channels, bottleneck_channels, kernel_size=3, stride=stride,
                                padding=1, bias=False, norm=make_norm2d(norm, bottleneck_channels))
        self.conv3 = Conv2dNorm(bottleneck_channels, out_channels, kernel_size=1, bias=False,
                                norm=make_norm2d(norm, out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu_(self.conv1(x))
        y = F.relu_(self.conv2(y))
        y = self.conv3(y)
        y = y + (x if self.shortcut is None else self.shortcut(x))
        return F.relu_(y)


class ResNet(nn.Module):
    """Bottleneck ResNet with detectron2 state-dict names (``stem.*``, ``res2.*`` ... ``res5.*``).

    ``norm`` picks the normalisation layer (see the module docstring); the default reproduces the
    official FrozenBN model.
    """

    def __init__(self, cfg: ResNetConfig = ResNetConfig(), norm: str = "FrozenBN", in_channels: int = 3):
        super().__init__()
        if norm not in NORM_CHOICES:
            raise ValueError(f"unknown ResNet norm {norm!r}; choose one of {NORM_CHOICES}")
        self.norm_type = norm
        self.stem = BasicStem(in_channels, cfg.stem_out, norm)
        self.out_channels: Tuple[int, int, int, int] = tuple(cfg.out_channels)  # type: ignore[assignment]
        self.stage_names = ("res2", "res3", "res4", "res5")
        c_in = cfg.stem_out
        for i, (name, n_blocks, c_out) in enumerate(zip(self.stage_names, cfg.depth_blocks, self.out_channels)):
            width = c_out // 4
            blocks = []
            for b in range(n_blocks):
                stride = 2 if (b == 0 and i > 0) else 1
                blocks.append(BottleneckBlock(c_in, c_out, width, stride, norm))
                c_in = c_out
            self.add_module(name, nn.Sequential(*blocks))

    @property
    def size_divisibility(self) -> int:
        return 32

    def forward(self, x: torch.Tensor) -> FeatureDict:
        if x.dim() != 4:
            raise ValueError(f"ResNet expects [B, 3, H, W], got {tuple(x.shape)}")
        x = self.stem(x)
        out: FeatureDict = {}
        for name in self.stage_names:
            x = getattr(self, name)(x)
            out[name] = x
        return out


# ----------------------------------------------------------------------------------------------
# Swin Transformer (Swin-Det layout: patch merging at the end of stages 0-2, per-output norm{i})
# ----------------------------------------------------------------------------------------------
def _relative_position_index(window: int) -> torch.Tensor:
    """[W*W, W*W] int64 index into the ((2W-1)^2, heads) bias table for every token pair."""
    ys, xs = torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    dy = ys[:, None] - ys[None, :] + (window - 1)
    dx = xs[:, None] - xs[None, :] + (window - 1)
    return dy * (2 * window - 1) + dx


def _to_windows(x: torch.Tensor, window: int) -> torch.Tensor:
    """[B, H, W, C] (H, W multiples of window) -> [B * nW, window*window, C], windows row-major."""
    b, h, w, c = x.shape
    x = x.view(b, h // window, window, w // window, window, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, window * window, c)


def _from_windows(x: torch.Tensor, window: int, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`_to_windows` -> [B, H, W, C]."""
    c = x.shape[-1]
    x = x.view(-1, h // window, w // window, window, window, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, h, w, c)


def _shift_region_mask(hp: int, wp: int, window: int, shift: int, device) -> torch.Tensor:
    """Additive mask [nW, N, N] for shifted windows: 0 within a region, -100 across regions.

    Regions of the padded, cyclically shifted map: rows/cols split at -window and -shift (3 x 3 labels).
    """
    def labels(n: int) -> torch.Tensor:
        lab = torch.zeros(n, dtype=torch.float32, device=device)
        # slices [0, n-window), [n-window, n-shift), [n-shift, n): same semantics as negative slicing
        lab[max(n - window, 0):] = 1.0
        lab[max(n - shift, 0):] = 2.0
        return lab

    region = labels(hp)[:, None] * 3.0 + labels(wp)[None, :]
    win = _to_windows(region[None, :, :, None], window).squeeze(-1)  # [nW, N]
    diff = win[:, None, :] - win[:, :, None]
    return torch.where(diff != 0, torch.tensor(-100.0, device=device), torch.tensor(0.0, device=device))


class WindowAttention(nn.Module):
    """Multi-head self-attention inside windows with a learned relative position bias."""

    def __init__(self, dim: int, window: int, num_heads: int):
        super().__init__()
        self.dim = dim
        self.window = window
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, num_heads))
        self.register_buffer("relative_position_index", _relative_position_index(window))
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def position_bias(self) -> torch.Tensor:
        n = self.window * self.window
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        return bias.view(n, n, self.num_heads).permute(2, 0, 1)  # [heads, N, N]

    def forward(self, x: torch.Tensor, shift_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x [B*nW, N, C]; shift_mask [nW, N, N] additive or None."""
        bw, n, c = x.shape
        qkv = self.qkv(x).view(bw, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # [B*nW, heads, N, d]
        mask = self.position_bias().to(q.dtype)  # [heads, N, N]
        if shift_mask is not None:
            n_win = shift_mask.shape[0]
            mask = mask[None] + shift_mask[:, None].to(q.dtype)  # [nW, heads, N, N]
            if bw != n_win:
                # 4-D SDPA with a full per-window mask is much faster on CPU than a 5-D broadcast.
                mask = mask.repeat(bw // n_win, 1, 1, 1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale)
        return self.proj(out.transpose(1, 2).reshape(bw, n, c))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class SwinBlock(nn.Module):
    """Pre-norm (shifted) window attention + MLP, both residual. Pads to window multiples after norm1."""

    def __init__(self, dim: int, num_heads: int, window: int, shift: int, mlp_ratio: float):
        super().__init__()
        self.window = window
        self.shift = shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, h: int, w: int, shift_mask: Optional[torch.Tensor]) -> torch.Tensor:
        b, _, c = x.shape
        win = self.window
        y = self.norm1(x).view(b, h, w, c)
        pad_b, pad_r = (-h) % win, (-w) % win
        if pad_b or pad_r:
            y = F.pad(y, (0, 0, 0, pad_r, 0, pad_b))
        hp, wp = h + pad_b, w + pad_r
        if self.shift:
            y = torch.roll(y, shifts=(-self.shift, -self.shift), dims=(1, 2))
        y = self.attn(_to_windows(y, win), shift_mask if self.shift else None)
        y = _from_windows(y, win, hp, wp)
        if self.shift:
            y = torch.roll(y, shifts=(self.shift, self.shift), dims=(1, 2))
        if pad_b or pad_r:
            y = y[:, :h, :w]
        x = x + y.reshape(b, h * w, c)
        return x + self.mlp(self.norm2(x))


class PatchMerging(nn.Module):
    """2x2 neighbourhood concat (pads odd sizes) -> LayerNorm(4C) -> Linear(4C -> 2C, no bias)."""

    def __init__(self, dim: int):
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        b, _, c = x.shape
        x = x.view(b, h, w, c)
        if h % 2 or w % 2:
            x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
        # channel order: (even row, even col), (odd, even), (even, odd), (odd, odd)
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x.reshape(b, -1, 4 * c)))


class SwinStage(nn.Module):
    def __init__(self, dim: int, depth: int, num_heads: int, window: int, mlp_ratio: float, downsample: bool):
        super().__init__()
        self.window = window
        self.shift = window // 2
        self.blocks = nn.ModuleList(
            SwinBlock(dim, num_heads, window, 0 if i % 2 == 0 else self.shift, mlp_ratio) for i in range(depth)
        )
        self.downsample = PatchMerging(dim) if downsample else None

    def forward(self, x: torch.Tensor, h: int, w: int):
        """Returns (stage output [B, h*w, C], next input, next h, next w)."""
        win = self.window
        hp, wp = -(-h // win) * win, -(-w // win) * win
        shift_mask = _shift_region_mask(hp, wp, win, self.shift, x.device) if len(self.blocks) > 1 else None
        for blk in self.blocks:
            x = blk(x, h, w, shift_mask)
        if self.downsample is None:
            return x, x, h, w
        return x, self.downsample(x, h, w), (h + 1) // 2, (w + 1) // 2


class PatchEmbed(nn.Module):
    def __init__(self, patch: int, in_channels: int, dim: int):
        super().__init__()
        self.patch = patch
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=patch, stride=patch)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        pad_b, pad_r = (-h) % self.patch, (-w) % self.patch
        if pad_b or pad_r:
            x = F.pad(x, (0, pad_r, 0, pad_b))
        x = self.proj(x)
        b, c, hh, ww = x.shape
        return self.norm(x.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(b, c, hh, ww)


class SwinTransformer(nn.Module):
    """Swin backbone, original detection layout; APE off, qkv bias on, qk scale head_dim^-0.5."""

    def __init__(self, cfg: SwinConfig = SwinConfig(), in_channels: int = 3):
        super().__init__()
        self.out_channels: Tuple[int, int, int, int] = tuple(cfg.out_channels)  # type: ignore[assignment]
        self.patch_embed = PatchEmbed(cfg.patch_size, in_channels, cfg.embed_dim)
        n = len(cfg.depths)
        self.layers = nn.ModuleList(
            SwinStage(self.out_channels[i], cfg.depths[i], cfg.num_heads[i], cfg.window_size, cfg.mlp_ratio,
                      downsample=i < n - 1)
            for i in range(n)
        )
        for i in range(n):
            self.add_module(f"norm{i}", nn.LayerNorm(self.out_channels[i]))

    @property
    def size_divisibility(self) -> int:
        return 32

    def forward(self, x: torch.Tensor) -> FeatureDict:
        if x.dim() != 4:
            raise ValueError(f"SwinTransformer expects [B, 3, H, W], got {tuple(x.shape)}")
        x = self.patch_embed(x)
        b, _, h, w = x.shape
        x = x.flatten(2).transpose(1, 2)
        out: FeatureDict = {}
        for i, stage in enumerate(self.layers):
            y, x, h_next, w_next = stage(x, h, w)
            y = getattr(self, f"norm{i}")(y)
            out[f"res{i + 2}"] = y.view(b, h, w, -1).permute(0, 3, 1, 2).contiguous()
            h, w = h_next, w_next
        return out


# ----------------------------------------------------------------------------------------------
def build_image_encoder(cfg: UniVSConfig, **kwargs) -> nn.Module:
    """Backbone for ``cfg.backbone`` (ResNetConfig -> ResNet, SwinConfig -> SwinTransformer).

    Extra keyword arguments go to the constructor (e.g. ``norm="BN"`` for a trainable ResNet).
    """
    if isinstance(cfg.backbone, ResNetConfig):
        return ResNet(cfg.backbone, **kwargs)
    if isinstance(cfg.backbone, SwinConfig):
        return SwinTransformer(cfg.backbone, **kwargs)
    raise TypeError(f"unsupported backbone config {type(cfg.backbone).__name__}")
