"""What every clip loop shares: frame geometry, per-frame encoder features, the memory-pool read, mask
quality, the semantic map and the mapping of padded-resolution logits to output frames.

The prompt-guided loop (vos.py) and the category-guided loops (entity.py) keep only their own update
rules; everything here is the same computation for both.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterable, Protocol, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..modeling.mask_decoder import PromptQueries
from .memory import PromptMemory

if TYPE_CHECKING:
    from ..modeling.univs import UniVS

# Frames are encoded in batches of at least this many (or a whole clip): the backbone and pixel decoder treat
# frames independently, so the batch changes speed only; the parity references were produced this way.
ENCODE_BATCH = 5


class Cancelled(RuntimeError):
    """Raised when the caller's cancel() returned True; `.tracks` holds the frames finished so far."""

    def __init__(self, tracks):
        super().__init__("cancelled by the user")
        self.tracks = tracks


@dataclass(frozen=True)
class ClipGeometry:
    """Sizes of one run: `num_frames` run positions; each frame resized to `image_size` (h, w) and padded
    (bottom/right) to `padded_size`; results are returned at `out_size`."""

    num_frames: int
    image_size: tuple[int, int]
    padded_size: tuple[int, int]
    out_size: tuple[int, int]


class ClipFrames(Protocol):
    """A run's input: frames(a, b) -> normalised padded frames [b - a, 3, Hp, Wp] of run positions [a, b);
    `frame_ids[k]` is the video frame at run position k."""

    geometry: ClipGeometry
    frame_ids: Sequence[int]

    def __call__(self, a: int, b: int) -> torch.Tensor: ...


class TensorFrames:
    """ClipFrames over frames already in memory: video [L, 3, Hp, Wp] (normalised, padded)."""

    def __init__(self, video: torch.Tensor, image_size: tuple[int, int] | None = None,
                 out_size: tuple[int, int] | None = None, frame_ids: Sequence[int] | None = None):
        padded = tuple(video.shape[-2:])
        image = tuple(image_size or padded)
        self.video = video
        self.geometry = ClipGeometry(video.shape[0], image, padded, tuple(out_size or image))
        self.frame_ids = list(frame_ids) if frame_ids is not None else list(range(video.shape[0]))

    def __call__(self, a: int, b: int) -> torch.Tensor:
        return self.video[a:b]


class FrameFeatures:
    """Encoder outputs per run position, each frame encoded once and released once no clip needs it."""

    def __init__(self, model: "UniVS", frames: Callable[[int, int], torch.Tensor], num_frames: int, clip_len: int):
        self.model, self.frames, self.num_frames = model, frames, num_frames
        self.batch = max(ENCODE_BATCH, clip_len)
        self.cache: dict[int, tuple[torch.Tensor, list[torch.Tensor]]] = {}

    def clip(self, i: int, n: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Frames [i, i+n) -> (mask_features [n, C, H/4, W/4], three multi-scale maps [n, C, h, w])."""
        todo = [f for f in range(i, i + n) if f not in self.cache]
        if todo:
            # batches start at multiples of the batch size, so a run resumed mid-video (vos.LoopSnapshot)
            # encodes every frame in the same batch as a run from the start, hence to the same bits
            start = todo[0] - todo[0] % self.batch
            stop = min(max(start + self.batch, todo[-1] + 1), self.num_frames)
            mask_feats, multi = self.model.encode_frames(self.frames(start, stop))
            for k, f in enumerate(range(start, stop)):
                if f >= todo[0]:
                    self.cache[f] = (mask_feats[k], [m[k] for m in multi])
        clip = [self.cache[f] for f in range(i, i + n)]
        return torch.stack([c[0] for c in clip]), [torch.stack([c[1][lv] for c in clip]) for lv in range(3)]

    def release(self, before: int) -> None:
        """Drop the frames before run position `before`."""
        for f in [k for k in self.cache if k < before]:
            del self.cache[f]

    def __len__(self) -> int:
        return len(self.cache)


def memory_prompts(model: "UniVS", memory: PromptMemory, first_frames: torch.Tensor, n: int,
                   window: int) -> PromptQueries:
    """Read the pool: the clip's n most recent slots, and for ProCA each target's first-appearance slot plus
    the last `window` slots -> the decoder's visual prompt queries."""
    memory.set_first_frames(first_frames)
    clip_t, clip_p = memory.recent(n)
    mem_t, mem_p = memory.proca_tokens(window)
    return model.decoder.visual_prompt_queries(clip_t, clip_p, mem_t, mem_p)


def to_host(*tensors: torch.Tensor) -> list[np.ndarray]:
    """The loops' one device-to-host copy per frame: the tensors packed as bytes into one buffer on the device,
    copied once, and unpacked into numpy arrays of the same shapes (reduced floats come back as float32).
    Every result that leaves a loop goes through here, so tests/test_host_syncs.py can count copies."""
    parts = [t.detach().float() if t.dtype in (torch.bfloat16, torch.float16) else t.detach() for t in tensors]
    raw = [t.contiguous().view(-1).view(torch.uint8) for t in parts]
    flat = (torch.cat(raw) if len(raw) > 1 else raw[0]).cpu().numpy() if raw else np.zeros(0, np.uint8)
    out, at = [], 0
    for t, r in zip(parts, raw):
        dtype = np.bool_ if t.dtype == torch.bool else torch.empty(0, dtype=t.dtype).numpy().dtype
        out.append(flat[at:at + r.numel()].view(dtype).reshape(tuple(t.shape)))
        at += r.numel()
    return out


def pack_bits(masks: torch.Tensor) -> torch.Tensor:
    """Bool masks [...] -> uint8 [ceil(numel / 8)], 8 pixels a byte (most significant first, as np.packbits), so
    that a window of masks crosses to the host at 1/8 of its size; `unpack_bits` undoes it."""
    flat = masks.flatten()
    flat = F.pad(flat.to(torch.uint8), (0, -flat.numel() % 8))
    weights = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8, device=masks.device)
    return (flat.view(-1, 8) * weights).sum(1, dtype=torch.uint8)


def unpack_bits(packed: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The host side of `pack_bits`: uint8 [ceil(prod(shape) / 8)] -> bool array of `shape`."""
    return np.unpackbits(packed, count=int(np.prod(shape))).view(np.bool_).reshape(shape)


def mask_quality(logits: torch.Tensor) -> torch.Tensor:
    """#(logit > 1) / #(logit > -1) per target over all frames and pixels. logits [N, ...] -> [N]."""
    flat = logits.flatten(1)
    return (flat > 1).sum(1) / (flat > -1).sum(1).clamp(min=1)


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


def chunks(total: int, step: int) -> list[slice]:
    """[0, total) in slices of `step` (bounds the [queries, H, W] temporaries)."""
    step = max(1, step)
    return [slice(a, min(a + step, total)) for a in range(0, total, step)]


def semantic_map(weights: torch.Tensor, mask_logits: Iterable[tuple[slice, torch.Tensor]]) -> torch.Tensor:
    """Class per pixel: argmax_c sum_q weights[q, c] sigmoid(mask_q).

    weights [Q, K] (class probability x mask quality); mask_logits yields (query slice, logits [q, ...]) chunks
    covering the queries, so that Q full-size maps never exist at once -> labels [...] (long)."""
    sem = None
    for c, logits in mask_logits:
        part = torch.einsum("qk,q...->k...", weights[c], logits.sigmoid())
        sem = part if sem is None else sem + part
    return sem.argmax(0)


def upsample(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """[N, T, h, w] -> [N, T, H, W] bilinear (align_corners False); empty-safe."""
    if x.shape[0] == 0 or x.shape[1] == 0:
        return x.new_zeros(*x.shape[:2], *size)
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


def to_output(logits: torch.Tensor, geometry: ClipGeometry, mode: str = "bilinear") -> torch.Tensor:
    """[N, Hp, Wp] padded-resolution logits -> crop to the resized image -> [N, H, W] at the output size."""
    h, w = geometry.image_size
    x = logits[:, None, :h, :w].float()
    if x.shape[0] == 0:
        return x.new_zeros(0, *geometry.out_size)
    kw = dict(align_corners=False) if mode == "bilinear" else {}
    return F.interpolate(x, size=tuple(geometry.out_size), mode=mode, **kw)[:, 0]


def one_per_pixel(logits: torch.Tensor) -> torch.Tensor:
    """Each pixel to at most one target: the one with the largest probability x mask quality there (the weighting
    of the VOS pixel competition, so a target confident over its whole mask wins over one that is not).
    logits [N, H, W] -> the same with every other target's logit there capped at 0 (not shown, and counted as
    uncertain by `mask_quality`)."""
    if logits.shape[0] < 2:
        return logits
    weight = logits.sigmoid() * mask_quality(logits)[:, None, None]
    top = weight.argmax(0, keepdim=True) == torch.arange(logits.shape[0], device=logits.device).view(-1, 1, 1)
    return torch.where(top, logits, logits.clamp(max=0))


_AUTOCAST_DEVICES = ("cpu", "cuda", "xpu")  # torch 2.3-2.5 reject other device types even when disabled


def autocast(device: torch.device | str, dtype: torch.dtype = torch.float32):
    """Autocast to `dtype` on `device`; fp32 disables an enclosing autocast region. A no-op context on
    devices torch may not accept here (mps), which then run in fp32."""
    kind = torch.device(device).type
    if kind not in _AUTOCAST_DEVICES:
        return contextlib.nullcontext()
    return torch.autocast(kind, dtype=dtype, enabled=dtype != torch.float32)


def fp32(device: torch.device | str):
    """Post-processing runs in fp32 even inside a caller's autocast region (counts and IoUs are matmuls of
    0/1 masks; bf16 would round them)."""
    return autocast(device, torch.float32)
