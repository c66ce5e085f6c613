"""Public API: load a model, then track prompted targets or segment categories through a video.

    model = load_model("small")                       # or an official checkpoint path
    tracks = track(model, "clip.mp4", [Prompt(obj_id=1, frame=0, box=(10, 20, 80, 120))])
    tracks = segment(model, "clip.mp4", task="panoptic", vocabulary=["person", "car", "road"])

Frames are decoded lazily and results are kept compactly (univs_engine.results.Tracks), so memory
does not grow with video length beyond the stored masks.
"""
from __future__ import annotations

import contextlib
import logging
import os
import pickle
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .checkpoint import (CheckpointError, check_finite, describe_load_failure, load_checkpoint, load_weights,
                         read_state_dict)
from .config import UniVSConfig
from .inference import core
from .inference.core import Cancelled, ClipGeometry
from .inference.vos import LoopSnapshot, PromptedClipLoop, StuffHelp, TextTargets
from .io.video import VideoSource, preprocess_frames
from .masks import binary_mask
from .modeling.univs import UniVS
from .presets import TaskSettings, get_settings
from .prompt_checks import check_box, check_point
from .results import Tracks
from .reuse import (PassRecord, RunRecord, annotation_digests, copy_tracks, kept_snapshots, pass_key, resume_point,
                    snapshot_spacing)

PACKAGE_DIR = Path(__file__).resolve().parent
SMALL_MODEL_NAMES = ("small", "univs_small")
log = logging.getLogger("univs")

__all__ = ["Cancelled", "Prompt", "RunOptions", "UniVSModel", "correct", "load_model", "resolve_vocabulary",
           "segment", "track"]


@dataclass
class Prompt:
    """One target. Coordinates are pixels of the original frame; give any mix of points, box, mask,
    scribble (a bool mask of strokes) or text. obj_id identifies the target across prompts: a second
    prompt for the same id on a later frame corrects it from there on."""

    obj_id: int
    frame: int = 0
    label: str = ""
    points: Sequence[tuple[float, float]] = ()
    point_labels: Sequence[int] = ()
    box: tuple[float, float, float, float] | None = None
    mask: np.ndarray | None = None
    scribble: np.ndarray | None = None
    text: str | None = None


@dataclass
class UniVSModel:
    """A loaded network with what it needs to read text: the text encoder (optional) and cached
    category embeddings."""

    net: UniVS
    text: object | None = None          # TextPromptEncoder
    class_embeddings: dict[str, torch.Tensor] = field(default_factory=dict)
    vocabulary: list[str] = field(default_factory=list)
    vocabulary_isthing: list[bool] = field(default_factory=list)
    name: str = ""
    precision: torch.dtype = torch.float32  # compute dtype; weights stay fp32 (autocast)

    @property
    def cfg(self) -> UniVSConfig:
        return self.net.cfg

    @property
    def device(self) -> torch.device:
        return self.net.pixel_mean.device

    @property
    def dtype(self) -> torch.dtype:
        return self.precision

    def to(self, device=None, dtype=None) -> "UniVSModel":
        """Move to `device`; `dtype` (bf16/fp16) selects autocast precision, weights stay fp32 because
        the pixel decoder runs in fp32 as the official model does."""
        self.net.to(device=device)
        if self.text is not None and hasattr(self.text, "encoder"):
            self.text.encoder.to(device=device)
        if dtype is not None:
            self.precision = dtype
        return self

    def autocast(self):
        """The precision context for a run (a no-op in fp32)."""
        return core.autocast(self.device, self.precision)

    def compile(self, requested: bool | None = True) -> bool:
        """torch.compile the backbone, pixel decoder and decoder in place (`univs_engine.compiled`: fullgraph,
        CUDA graphs on CUDA); None = only on CUDA with Triton. Call after `to()`. -> whether it is compiled."""
        from . import compiled

        if compiled.enabled(self.device, requested):
            compiled.compile_model(self.net, compiled.mode_for(self.device))
        return compiled.is_compiled(self.net)


def small_model_path() -> Path:
    """The model trained and shipped by this project."""
    path = PACKAGE_DIR / "weights" / "univs_small.safetensors"
    if path.is_file():
        return path
    raise CheckpointError("the built-in small model file univs_small.safetensors is missing from "
                          f"{PACKAGE_DIR / 'weights'}; reinstall the package or retrain it (README: univs train)")


def load_model(checkpoint: str | os.PathLike = "small", text_encoder: str | os.PathLike | None = None,
               class_embeddings: str | os.PathLike | None = None, device: str | torch.device = "cpu",
               dtype: torch.dtype = torch.float32, use_ema: bool = False) -> UniVSModel:
    """Load UniVS. `checkpoint` is "small" (shipped) or an official/converted checkpoint file.

    Official models come as three files: the checkpoint, the CLIP RN50x4 text-encoder file (needed
    for text prompts and typed vocabularies) and the category-embedding file (built-in vocabularies
    without a text encoder)."""
    from .modeling.text_encoder import TextPromptEncoder, load_category_embeddings, load_text_encoder

    if str(checkpoint) in SMALL_MODEL_NAMES:
        return _load_small(small_model_path(), device, dtype)
    if Path(checkpoint).suffix == ".safetensors" and _is_small_format(checkpoint):
        return _load_small(Path(checkpoint), device, dtype)  # a retrained small model (univs train)
    net = load_checkpoint(checkpoint, use_ema=use_ema)
    model = UniVSModel(net, name=Path(checkpoint).name)
    if text_encoder is not None:
        with _safe_load_errors(text_encoder, "text encoder file"):
            te = load_text_encoder(text_encoder, net.cfg.text)
        check_finite(te.state_dict(), text_encoder, "text encoder file")
        model.text = TextPromptEncoder(te)
    if class_embeddings is not None:
        with _safe_load_errors(class_embeddings, "category embedding file"):
            emb = load_category_embeddings(class_embeddings)
        check_finite({"embeddings": emb}, class_embeddings, "category embedding file")
        model.class_embeddings["combined"] = emb
    return model.to(device, dtype)


@contextlib.contextmanager
def _safe_load_errors(path, what: str):
    """A text-encoder / embedding file torch refused is reported as the checkpoints are: pickled Python
    objects named as such, and never torch's advice to load the file unsafely."""
    from .modeling.text_encoder import TextEncoderLoadError

    try:
        yield
    except TextEncoderLoadError as e:
        cause = e.__cause__
        if cause is not None and ("weights_only" in str(e) or isinstance(cause, pickle.UnpicklingError)):
            raise TextEncoderLoadError(str(describe_load_failure(path, cause, what))) from None
        raise


def _is_small_format(path) -> bool:
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            return (f.metadata() or {}).get("format", "").startswith("univs-small")
    except Exception:  # noqa: BLE001  unreadable files get the checkpoint loader's clear error instead
        return False


def _load_small(path: Path, device, dtype) -> UniVSModel:
    from .modeling.text_encoder import TextEncoder, TextPromptEncoder
    from .modeling.univs import build_univs

    state, meta = read_state_dict(path)
    try:
        cfg = _small_config(meta)
    except ValueError as e:
        raise CheckpointError(f"checkpoint {path}: its metadata names {e}") from None
    net = build_univs(cfg)
    weights = {k: v for k, v in state.items() if k.startswith(("backbone.", "sem_seg_head."))}
    load_weights(net, weights, path, f"the {cfg.name} model")
    text = TextEncoder(net.cfg.text)
    load_weights(text, {k[len("text_encoder."):]: v for k, v in state.items() if k.startswith("text_encoder.")},
                 path, "the text encoder", key_prefix="text_encoder.")
    unknown = [k for k in state if not k.startswith(("backbone.", "sem_seg_head.", "text_encoder."))
               and k != "class_embeddings"]
    if unknown:
        raise CheckpointError(f"checkpoint {path} does not fit the built-in model layout: {len(unknown)} unexpected: "
                              + ", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else ""))
    model = UniVSModel(net, TextPromptEncoder(text.eval()), name=path.name)
    if "class_embeddings" in state:
        emb = state["class_embeddings"]
        if not emb.is_floating_point() or emb.dim() != 2:
            raise CheckpointError(f"checkpoint {path}: tensor class_embeddings must be a 2-D floating point tensor, "
                                  f"got {tuple(emb.shape)} {str(emb.dtype).removeprefix('torch.')}")
        check_finite({"class_embeddings": emb}, path)
        names = meta.get("vocabulary", "").split("|")
        if emb.shape[1] != net.cfg.text.embed_dim or ("vocabulary" in meta and emb.shape[0] != len(names)):
            raise CheckpointError(f"checkpoint {path}: tensor class_embeddings has shape {tuple(emb.shape)}, expected "
                                  f"({len(names)}, {net.cfg.text.embed_dim}) (one row per vocabulary name)")
        model.class_embeddings["builtin"] = emb.float()
        model.vocabulary = names
        flags = meta.get("vocabulary_isthing", "").split("|")
        model.vocabulary_isthing = [f == "1" for f in flags] if len(flags) == len(model.vocabulary) \
            else [True] * len(model.vocabulary)
    return model.to(device, dtype)


def _small_config(meta) -> UniVSConfig:
    from .config import get_config

    return get_config(meta.get("univs_config", "small"))


# ---------------------------------------------------------------------- video plumbing
_STREAM_KEEP = 8  # frames a FrameFeeder keeps after streaming them (clip windows look back a few frames)


class FrameFeeder:
    """Reads frames [start, stop) of a source on demand and preprocesses them like the official model
    (resize shortest edge, normalise, pad). Indices given to frames() are positions in the run, which
    may be reversed for backward propagation."""

    def __init__(self, source: VideoSource, model: UniVSModel, settings: TaskSettings, order: Sequence[int]):
        self.source, self.model, self.settings, self.order = source, model, settings, list(order)
        # A run visits consecutive frames (forwards or backwards): one decoding stream serves them, where
        # random access would seek per frame (a backward pass over a file would decode each GOP again).
        self._step = self.order[1] - self.order[0] if len(self.order) > 1 else 1
        self._contiguous = abs(self._step) == 1 and self.order == list(
            range(self.order[0], self.order[-1] + self._step, self._step))
        self._stream: Iterator | None = None
        self._next = 0                       # run position the stream yields next
        self._recent: dict[int, np.ndarray] = {}
        x, image_size = self._prep(self._frame_at(0)[None])
        self.geometry = ClipGeometry(len(self.order), tuple(image_size), tuple(x.shape[-2:]),
                                     (source.height, source.width))

    @property
    def frame_ids(self) -> list[int]:
        return self.order

    @property
    def image_size(self) -> tuple[int, int]:
        return self.geometry.image_size

    @property
    def padded_size(self) -> tuple[int, int]:
        return self.geometry.padded_size

    def _frame_at(self, k: int) -> np.ndarray:
        """Frame at run position k: from the stream when k is at or just ahead of it, else random access
        (e.g. a prompt frame far ahead, refined before the loop starts)."""
        if k in self._recent:
            return self._recent[k]
        if self._contiguous and self._next <= k < self._next + _STREAM_KEEP:
            if self._stream is None:
                self._stream = self.source.iter_frames(self.order[0], self.order[-1] + self._step, self._step)
            while self._next <= k:
                self._recent[self._next] = next(self._stream)[1]
                self._recent.pop(self._next - _STREAM_KEEP, None)
                self._next += 1
            return self._recent[k]
        return self.source.frame(self.order[k])

    def close(self) -> None:
        """Stop the decoding stream (and its reader thread)."""
        if self._stream is not None and hasattr(self._stream, "close"):
            self._stream.close()
        self._stream, self._recent = None, {}

    def _prep(self, frames: np.ndarray):
        p, cfg = self.settings, self.model.cfg
        x, size = preprocess_frames(frames, p.min_size, p.max_size, cfg.size_divisibility, p.square,
                                    cfg.pixel_mean, cfg.pixel_std)
        return x.to(self.model.device), size

    def __call__(self, a: int, b: int) -> torch.Tensor:
        if self._contiguous and b - a > 1 and a not in self._recent and not self._next <= a < self._next + _STREAM_KEEP:
            self._restart(a)  # a clip far from the stream (a run resumed mid-video): one new stream, not seeks
        frames = np.stack([self._frame_at(k) for k in range(a, b)])
        return self._prep(frames)[0]

    def _restart(self, k: int) -> None:
        self.close()
        self._stream = self.source.iter_frames(self.order[k], self.order[-1] + self._step, self._step)
        self._next = k

    def to_padded(self, mask: np.ndarray) -> torch.Tensor:
        """A full-resolution mask -> [Hp, Wp] at the model's input resolution (top-left placed)."""
        h, w = self.image_size
        t = torch.from_numpy(np.asarray(mask, dtype=np.float32))[None, None]
        small = F.interpolate(t, size=(h, w), mode="nearest")[0, 0]
        out = torch.zeros(self.padded_size)
        out[:h, :w] = small
        return out.to(self.model.device)

    def to_original(self, logits: torch.Tensor) -> torch.Tensor:
        """[N, Hp, Wp] logits -> [N, H, W] logits at the source resolution."""
        return core.to_output(logits, self.geometry)


MIN_SIDE = 12  # measured on the sample clip scaled down: at 6 px the target is lost after its prompt frame


def as_source(video) -> VideoSource:
    """A VideoSource for a path, folder, array or VideoSource; frames smaller than MIN_SIDE are refused."""
    source = video if isinstance(video, VideoSource) else VideoSource(video, prefetch=0)
    if min(source.height, source.width) < MIN_SIDE:
        raise ValueError(f"video {source.name}: {source.width}x{source.height} frames are too small to segment "
                         f"(each side must be at least {MIN_SIDE} pixels)")
    return source


# ---------------------------------------------------------------------- prompts -> masks
def prompt_to_mask(p: Prompt, height: int, width: int) -> np.ndarray | None:
    """Rough target region from points, a box or a scribble (the mask itself if given).

    Positive points become small disks, a box its rectangle; negative points carve disks out. The
    model then refines this region on the prompt frame (see `refine_prompt`); a box or positive clicks alone
    take the official branches instead (`shape_prompt`), with this region as their fallback mask."""
    if p.text is not None and p.mask is None and p.box is None and not len(p.points) and p.scribble is None:
        return None
    region = np.zeros((height, width), bool)
    if p.mask is not None:
        region |= binary_mask(p.mask, height, width, f"mask of object {p.obj_id}")
    if p.scribble is not None:
        region |= binary_mask(p.scribble, height, width, f"scribble of object {p.obj_id}")
    if p.box is not None:
        x0, y0, x1, y1 = check_box(p.box, width, height, f"object {p.obj_id}")
        region[int(y0):int(np.ceil(y1)), int(x0):int(np.ceil(x1))] = True
    labels = list(p.point_labels) or [1] * len(p.points)
    if len(labels) != len(p.points):
        raise ValueError(f"object {p.obj_id}: {len(p.points)} points but {len(labels)} point labels")
    # clicks become disks of 4% of the short side, as in training; smaller ones can miss every 1/8 cell
    radius = max(2, round(0.04 * min(height, width)))
    yy, xx = np.ogrid[:height, :width]
    for (x, y), lab in zip(p.points, labels):
        x, y = check_point(x, y, width, height, f"object {p.obj_id}")
        disk = (xx - x) ** 2 + (yy - y) ** 2 <= radius ** 2
        region = region | disk if lab else region & ~disk
    if not region.any():
        raise ValueError(f"object {p.obj_id} on frame {p.frame}: the prompt selects no pixel "
                         f"(give a positive point, a box, a scribble or a non-empty mask)")
    return region


@torch.no_grad()
def _one_pass(model: UniVSModel, feeder: FrameFeeder, position: int, encode: Callable) -> torch.Tensor:
    """One decoder pass on the frame at run position `position` for one target whose prompt tokens are
    encode(feat [C, h, w], pos [C, h, w], frame phase) -> PromptTokens (N = 1) -> its mask logits [Hp, Wp]."""
    from .modeling.position_encoding import frame_phase

    net = model.net
    mask_features, multi = net.encode_frames(feeder(position, position + 1))
    idx = torch.tensor([position], device=mask_features.device)
    levels = net.decoder.embed_levels(multi, idx)
    feat, pos, _ = levels.prompt_level
    z = frame_phase(idx, 1, net.cfg.pe_variant, net.cfg.num_frames_pe)
    enc = encode(feat[0], pos[0], z[0])
    t = enc.tokens[:, :, None]
    prompts = net.decoder.visual_prompt_queries(t, enc.pe[:, :, None], enc.tokens, enc.pe)
    out = net.decoder(levels, mask_features, prompts)
    return F.interpolate(out.pred_masks[-1:], size=feeder.padded_size, mode="bilinear", align_corners=False)[0, 0]


def refine_prompt(model: UniVSModel, feeder: FrameFeeder, position: int, region: torch.Tensor) -> torch.Tensor:
    """Turn a rough region (box / clicks / scribble) on one frame into the model's mask for it
    (prompt_mode "refine", a project extension).

    The region's prompt tokens drive one decoder pass on that frame; its mask prediction, limited to
    the box of the region grown by half its size, becomes the target's mask prompt."""
    from .modeling.prompt_encoder import mask_box, sample_mask_prompts

    gen = torch.Generator().manual_seed(0)
    logits = _one_pass(model, feeder, position, lambda feat, pos, z: sample_mask_prompts(
        feat, pos, region[None], feeder.settings.prompt_tokens, z, generator=gen))
    x0, y0, x1, y1 = mask_box(region > 0).tolist()
    gx, gy = (x1 - x0 + 1) // 2, (y1 - y0 + 1) // 2
    keep = torch.zeros_like(region, dtype=torch.bool)
    keep[max(0, y0 - gy):y1 + gy + 1, max(0, x0 - gx):x1 + gx + 1] = True
    refined = (logits > 0) & keep
    return refined.float() if refined.sum() >= 4 else region


PROMPT_MODES = ("auto", "official", "refine")


def shape_prompt(p: Prompt, mode: str, feeder: FrameFeeder):
    """The box or positive clicks of `p` for the official box / point branch (a ShapePrompt, coordinates
    normalised by the padded input size), or None when the target goes the mask way: a mask, prompt_mode
    "refine", or (mode "auto") negative clicks, a scribble or a box with clicks, which no official branch takes."""
    from .modeling.prompt_encoder import ShapePrompt

    if p.mask is not None or mode == "refine":
        return None
    labels = list(p.point_labels) or [1] * len(p.points)
    if p.scribble is not None or not all(labels) or (p.box is not None) == bool(len(p.points)):
        if mode == "official":
            raise ValueError(f"object {p.obj_id}: prompt_mode 'official' takes a mask, a box or positive clicks "
                             "alone; negative clicks, scribbles and a box with clicks need prompt_mode "
                             "'refine' or 'auto'")
        return None
    H, W = feeder.source.height, feeder.source.width
    where = f"object {p.obj_id}"
    if p.box is not None:
        xy = np.array(check_box(p.box, W, H, where), np.float64).reshape(2, 2)
    else:  # a click names a pixel: its centre
        xy = np.array([check_point(x, y, W, H, where) for x, y in p.points], np.float64) + 0.5
    (h, w), (Hp, Wp) = feeder.image_size, feeder.padded_size
    unit = torch.from_numpy(xy * [w / W / Wp, h / H / Hp]).float()
    return ShapePrompt(box=unit.flatten()) if p.box is not None else ShapePrompt(points=unit)


def shape_prompt_mask(model: UniVSModel, feeder: FrameFeeder, position: int, shape,
                      region: torch.Tensor) -> torch.Tensor:
    """The target's mask on its prompt frame for a box or clicks: one decoder pass with the box / point branch's
    tokens; a box's mask is kept inside the box. `region` (the filled box / click disks) when < 4 pixels remain."""
    from .modeling.prompt_encoder import sample_shape_prompts

    gen = torch.Generator().manual_seed(0)
    logits = _one_pass(model, feeder, position, lambda feat, pos, z: sample_shape_prompts(
        feat, pos, [shape], feeder.settings.prompt_tokens, z, generator=gen))
    mask = (logits > 0) & (region > 0) if shape.box is not None else logits > 0
    return mask.float() if mask.sum() >= 4 else region


# ---------------------------------------------------------------------- run options
@dataclass(frozen=True)
class RunOptions:
    """How a run covers the video, for `track`, `correct` and `segment`.

    start/stop: frames [start, stop) (stop None = the end). direction (prompt-guided only): "forward" from
    each target's first prompt, "backward" towards `start`, or "both". settings: a task name of
    univs_engine.presets (official settings for the model's backbone), "auto" (track: refvos when every
    prompt is text, else vos; segment: the task's own) or a TaskSettings, e.g.
    dataclasses.replace(get_settings("vos", "r50"), clip_len=3) to override one knob. seed: prompt-cell draws.
    prompt_mode (track): how boxes and clicks become prompt tokens on their frame. "official": the trained box /
    point branches (a box or positive clicks alone; anything else is refused); "refine": a filled box / click disks
    / scribble, refined by one decoder pass into a mask prompt (a project extension, also takes negative clicks);
    "auto": official where it applies, else refine. Masks always take the mask branch."""

    start: int = 0
    stop: int | None = None
    direction: str = "forward"
    settings: str | TaskSettings = "auto"
    seed: int = 0
    prompt_mode: str = "auto"

    def frame_range(self, num_frames: int) -> tuple[int, int]:
        """[start, stop) checked against a video of num_frames frames."""
        stop = num_frames if self.stop is None else self.stop
        if not (0 <= self.start < stop <= num_frames):
            raise ValueError(f"frame range [{self.start}, {stop}) is outside the video's {num_frames} frames")
        if self.direction not in ("forward", "backward", "both"):
            raise ValueError(f"direction must be forward, backward or both, not {self.direction!r}")
        if self.prompt_mode not in PROMPT_MODES:
            raise ValueError(f"prompt_mode must be auto, official or refine, not {self.prompt_mode!r}")
        return self.start, stop

    def task_settings(self, task: str, model: UniVSModel) -> TaskSettings:
        """The settings object: a TaskSettings as given, else the named (or the task's) preset."""
        if isinstance(self.settings, TaskSettings):
            return self.settings
        return get_settings(task if self.settings == "auto" else self.settings, model.cfg.name)


# ---------------------------------------------------------------------- prompt-guided
def auto_preset(prompts: Sequence[Prompt]) -> str:
    """The task preset for a set of prompts: refvos (the official referring settings) when every prompt is
    a text expression, vos otherwise."""
    return "refvos" if prompts and all(p.text is not None for p in prompts) else "vos"


def _check_prompts(prompts: Sequence[Prompt], start: int, stop: int) -> None:
    if not prompts:
        raise ValueError("no prompt given: add at least one target (points, box, mask, scribble or text)")
    for p in prompts:
        if not (start <= p.frame < stop):
            raise ValueError(f"object {p.obj_id}: prompt frame {p.frame} is outside the frame range [{start}, {stop})")
        if p.text is not None and not p.text.strip():
            raise ValueError(f"object {p.obj_id}: the text expression is empty")


def _passes(prompts: Sequence[Prompt], direction: str, start: int, stop: int) -> list[list[int]]:
    """The frame orders to run: forward from the first prompt, backward from the last one, or both."""
    runs = []
    if direction in ("forward", "both"):
        runs.append(list(range(min(p.frame for p in prompts), stop)))
    if direction in ("backward", "both"):
        runs.append(list(range(max(p.frame for p in prompts), start - 1, -1)))
    return runs


def track(model: UniVSModel, video, prompts: Sequence[Prompt], options: RunOptions | None = None, *,
          progress: Callable[[int, int], None] | None = None, cancel: Callable[[], bool] | None = None,
          into: Tracks | None = None, reuse: RunRecord | None = None) -> Tracks:
    """Segment the prompted targets through the video (VOS / PVOS / RefVOS); see RunOptions.

    into: existing Tracks of this video to write into (frames this run covers are replaced). reuse: a RunRecord
    kept by the caller for this model and video: when only prompts from some frame on changed since its last
    run, only the frames from there are recomputed, with the same result as a run from the start (see
    univs_engine.reuse). When cancel() returns True, Cancelled is raised with the frames finished so far."""
    options = options or RunOptions()
    source = as_source(video)
    start, stop = options.frame_range(source.num_frames)
    _check_prompts(prompts, start, stop)
    settings = options.task_settings(auto_preset(prompts), model)
    _check_colour(model, source, start, stop)
    runs = _passes(prompts, options.direction, start, stop)
    ctx = _RunContext(reuse, _reuse_key(model, source, prompts, options, settings, runs))
    tracks = ctx.start_tracks(into, source)
    for p in prompts:
        if p.obj_id not in tracks.object_ids:
            tracks.add_object(p.obj_id, label=p.label or (p.text or ""))
    forward = set(runs[0]) if options.direction == "both" else set()
    total, done = sum(len(r) * _jobs_in(prompts, r) for r in runs), 0
    for order in runs:
        backward = order[0] > order[-1]
        for frame, logits, ids, steps in _run_prompted(model, source, prompts, order, settings, options, ctx):
            if cancel is not None and cancel():
                raise Cancelled(tracks)
            if frame is not None and not (backward and frame in forward):  # "both": forward owns shared frames
                _write_frame(tracks, frame, logits, ids)
            done += steps
            if progress:
                progress(done, total)
    _given_frames_are_certain(tracks, prompts)
    ctx.finish(tracks)
    return tracks


def _given_frames_are_certain(tracks: Tracks, prompts: Sequence[Prompt]) -> None:
    """A visual prompt's frame shows the mask the user gave (or drew from clicks): confidence 1."""
    for p in prompts:
        if p.text is None and tracks.has_mask(p.frame, p.obj_id):
            tracks.set_mask(p.frame, p.obj_id, tracks.mask(p.frame, p.obj_id), confidence=1.0)


def _jobs_in(prompts: Sequence[Prompt], order: list[int]) -> int:
    """Clip loops a pass runs: one for visual targets, one for text targets."""
    frames = set(order)
    inside = [p for p in prompts if p.frame in frames]
    return int(any(p.text is None for p in inside)) + int(any(p.text is not None for p in inside))


MIN_COLOUR_MODEL_NOTE = ("the built-in model was trained on colour video only and does not segment grayscale video "
                         "reliably; use a colour video or the official checkpoint")


def _check_colour(model: UniVSModel, source: VideoSource, start: int, stop: int) -> None:
    """Grayscale video with the built-in model is refused (measured: its masks spread over the frame)."""
    from .io.video import is_grayscale

    if model.cfg.name == "small" and is_grayscale(source, start, stop):
        raise ValueError(f"video {source.name}: frames {start}..{stop - 1} carry no colour: {MIN_COLOUR_MODEL_NOTE}")


def _reuse_key(model: UniVSModel, source: VideoSource, prompts: Sequence[Prompt], options: RunOptions,
               settings: TaskSettings, runs: list[list[int]]) -> tuple:
    """Everything besides visual prompts a run's result depends on (compared exactly by a RunRecord)."""
    visual = sorted({p.obj_id for p in prompts if p.text is None})
    text = sorted((p.obj_id, p.frame, p.text) for p in prompts if p.text is not None)
    passes = tuple(pass_key(order) for order in runs)
    return (id(model.net), model.name, str(model.precision), source.name, source.num_frames, source.height,
            source.width, options, settings, tuple(visual), tuple(text), passes)


@dataclass
class _RunContext:
    """A run's link to its RunRecord: what may be resumed, and what the run records (kept only if it ends)."""

    record: RunRecord | None
    key: tuple
    reusable: bool = False
    pending: dict = field(default_factory=dict)

    def start_tracks(self, into: Tracks | None, source: VideoSource) -> Tracks:
        if self.record is not None and into is not None:
            raise ValueError("track: give `into` or `reuse`, not both")
        if self.record is not None:
            self.reusable = self.record.matches(self.key)
            if not self.reusable:
                self.record.start(self.key)
            else:
                return copy_tracks(self.record.tracks)
        tracks = into if into is not None else Tracks(source.num_frames, source.height, source.width)
        tracks.fps = tracks.fps or source.fps
        return tracks

    def plan(self, order: list[int], job: "_PromptJob"):
        """None: run the loop from the start; True: nothing changed (its frames are reused); a LoopSnapshot."""
        if self.record is None or not self.reusable:
            return None
        if job.text is not None:
            return True  # text prompts are part of the key: unchanged here
        digests = annotation_digests(job.annotations)
        return resume_point(self.record.passes.get(pass_key(order)), order, job.ids, digests, job.settings.clip_len)

    def keep(self, order: list[int], job: "_PromptJob", resumed, snapshots) -> None:
        if self.record is None or job.text is not None:
            return
        old = self.record.passes.get(pass_key(order)) if self.reusable else None
        snap = resumed if isinstance(resumed, LoopSnapshot) else None
        self.pending[pass_key(order)] = PassRecord(order, job.ids, annotation_digests(job.annotations),
                                                   kept_snapshots(old, snap, snapshots))

    def finish(self, tracks: Tracks) -> None:
        if self.record is not None:
            self.record.passes.update(self.pending)
            self.record.tracks = copy_tracks(tracks)


def _write_frame(tracks: Tracks, frame: int, logits: torch.Tensor, ids: list[int]) -> None:
    """One frame's logits [N, H, W] at the source size -> masks and confidences of objects `ids`."""
    masks, quality = core.to_host(logits > 0, core.mask_quality(logits).float())
    for k, obj in enumerate(ids):
        tracks.set_mask(frame, obj, masks[k], confidence=quality[k])


def correct(model: UniVSModel, video, tracks: Tracks, prompts: Sequence[Prompt], options: RunOptions | None = None,
            *, progress: Callable[[int, int], None] | None = None, cancel: Callable[[], bool] | None = None) -> Tracks:
    """Add or correct targets from frame f = the earliest new prompt, without re-running frames before f.

    Every target already in `tracks` restarts from its own mask on frame f (or on its first later frame),
    the new prompts are applied on their frames, and frames >= f are replaced in `tracks` (in place).
    options.start and direction are set by the prompts (forward from f)."""
    if not prompts:
        raise ValueError("no prompt given: add at least one target (points, box, mask, scribble or text)")
    f = min(p.frame for p in prompts)
    given = {(p.obj_id, p.frame) for p in prompts}
    carried = []
    for obj in tracks.object_ids:
        later = [t for t in tracks.frames_with(obj) if t >= f]
        if later and (obj, later[0]) not in given:
            carried.append(Prompt(obj, later[0], tracks.info(obj).label, mask=tracks.mask(later[0], obj)))
    options = replace(options or RunOptions(), start=f, direction="forward")
    return track(model, video, carried + list(prompts), options, progress=progress, cancel=cancel, into=tracks)


def _stuff_help(model: UniVSModel, ids: list[int], labels: dict[int, str]) -> StuffHelp | None:
    """PVOS: targets whose label names a stuff class of the model's vocabulary (or VIPSeg's, for the
    official models) get that class's pixels of the semantic map. Without a vocabulary the targets run as
    in VOS, and a warning says why."""
    try:
        names, emb, things = resolve_vocabulary(model, None if model.vocabulary else "vipseg")
    except ValueError as e:
        log.warning("PVOS: stuff targets run without the semantic map (no vocabulary to name stuff classes: %s)", e)
        return None
    stuff = {n.lower(): k for k, (n, t) in enumerate(zip(names, things)) if not t}
    cls = torch.tensor([stuff.get(labels.get(i, "").strip().lower(), -1) for i in ids])
    return StuffHelp(emb.to(model.device), cls) if (cls >= 0).any() else None


@dataclass
class _PromptJob:
    """One clip loop of a pass: its targets' object ids, settings and inputs (visual annotations or text)."""

    ids: list[int]
    settings: TaskSettings
    annotations: dict[int, tuple] | None = None  # see PromptedClipLoop
    text: TextTargets | None = None
    stuff: StuffHelp | None = None


def _run_prompted(model, source, prompts, order, settings: TaskSettings, options: RunOptions, ctx: _RunContext):
    """One pass over `order` (frame indices) -> (frame, logits [N, H, W] at the source size, object ids, progress
    steps). Visual and text targets run as separate clip loops; options gives the seed and the prompt mode;
    ctx says where a loop may resume (frames before it are reused) and keeps its snapshots."""
    feeder = FrameFeeder(source, model, settings, order)
    try:
        position = {f: k for k, f in enumerate(order)}
        settings = replace(settings, clip_len=min(settings.clip_len, len(order)))
        visual = [p for p in prompts if p.frame in position and p.text is None]
        text = [p for p in prompts if p.frame in position and p.text is not None]
        jobs = ([_visual_job(model, feeder, visual, position, settings, options.prompt_mode)] if visual else []) + \
               ([_text_job(model, text, settings)] if text else [])
        gen = torch.Generator().manual_seed(options.seed)
        for job in jobs:
            yield from _run_job(model, feeder, job, gen, ctx)
    finally:
        feeder.close()


def _run_job(model, feeder: FrameFeeder, job: "_PromptJob", gen: torch.Generator, ctx: _RunContext):
    order = feeder.order
    resume = ctx.plan(order, job)
    if resume is True:  # unchanged: its frames stay as the record has them
        yield None, None, None, len(order)
        return
    loop = PromptedClipLoop(model.net, job.settings, feeder.geometry, generator=gen)
    if ctx.record is not None and job.text is None:
        loop.snapshot_every = snapshot_spacing(len(order), job.settings.clip_len, job.settings.step)
    last = 0  # progress counts reused frames as done
    with model.autocast():
        for k, logits, _ in loop.run(feeder, len(job.ids), job.annotations, job.text, job.stuff, resume=resume):
            out = feeder.to_original(logits)
            # the official text loop lets expressions overlap (visual targets compete inside the loop); as its
            # Ref-DAVIS output does, each pixel goes to one expression, here by probability x quality (val videos
            # 8-63, overlapping -> this: RefVOS J&F 0.489 -> 0.486, false-positive area 0.46 -> 0.37; by the largest
            # logit 0.476 / 0.38; the official lowest-index rule was worse still on videos 0-7)
            yield order[k], core.one_per_pixel(out) if job.text is not None else out, job.ids, k + 1 - last
            last = k + 1
    ctx.keep(order, job, resume, loop.snapshots)


def _visual_job(model, feeder: FrameFeeder, visual: list[Prompt], position: dict[int, int],
                settings: TaskSettings, mode: str = "auto") -> _PromptJob:
    """Masks, boxes, clicks and scribbles -> annotations per run position: masks at the model's resolution, and
    for targets given as a box or clicks the ShapePrompt whose tokens the loop uses on that frame (see
    RunOptions.prompt_mode)."""
    ids = sorted({p.obj_id for p in visual})
    ann: dict[int, tuple[list[int], list[torch.Tensor], list]] = {}
    for p in sorted(visual, key=lambda p: p.frame):
        k = position[p.frame]
        region = feeder.to_padded(prompt_to_mask(p, feeder.source.height, feeder.source.width))
        shape = shape_prompt(p, mode, feeder)
        if shape is not None:  # box / positive clicks: the official branch's tokens, their mask from one pass
            region = shape_prompt_mask(model, feeder, k, shape, region)
        elif p.mask is None:  # refine: let the model draw the mask first
            region = refine_prompt(model, feeder, k, region)
        rows = ann.setdefault(k, ([], [], []))
        rows[0].append(ids.index(p.obj_id))
        rows[1].append(region)
        rows[2].append(shape)
    annotations = {k: (torch.tensor(i), torch.stack(m), s) for k, (i, m, s) in ann.items()}
    stuff = _stuff_help(model, ids, {p.obj_id: p.label for p in visual}) if settings.stuff_from_semantics else None
    return _PromptJob(ids, settings, annotations=annotations, stuff=stuff)


def _text_job(model, text: list[Prompt], settings: TaskSettings) -> _PromptJob:
    if model.text is None:
        raise ValueError("text prompts need the CLIP text-encoder file: pass text_encoder= to load_model "
                         "(official: regionclip_pretrained-cc_rn50x4_only_lang_encoder.pth)")
    sentence, words = model.text.encode_expressions([p.text for p in text])
    targets = TextTargets(sentence.to(model.device), words.to(model.device))
    return _PromptJob([p.obj_id for p in text], replace(settings, self_attn_mask="sep-blocked"), text=targets)


# ---------------------------------------------------------------------- category-guided
def segment(model: UniVSModel, video, task: str = "instance", vocabulary: Sequence[str] | str | None = None,
            options: RunOptions | None = None, *, progress: Callable[[int, int], None] | None = None,
            cancel: Callable[[], bool] | None = None) -> Tracks:
    """Category-guided segmentation (VIS "instance", VSS "semantic", VPS "panoptic") of frames
    [options.start, options.stop); see RunOptions."""
    from .inference.category import Vocabulary, canonical_task, run_category_task

    if task not in ("instance", "semantic", "panoptic"):
        raise ValueError(f"task must be instance, semantic or panoptic, not {task!r}")
    options = options or RunOptions()
    if options.direction != "forward":
        raise ValueError(f"direction {options.direction!r}: category-guided tasks run forward only")
    source = as_source(video)
    start, stop = options.frame_range(source.num_frames)
    _check_colour(model, source, start, stop)
    names, embeddings, things = resolve_vocabulary(model, vocabulary)
    if task == "instance" and not all(things) and any(things):
        keep = [i for i, t in enumerate(things) if t]  # instances are things; stuff has no instances
        names, embeddings, things = [names[i] for i in keep], embeddings[keep], [True] * len(keep)
    vocab = Vocabulary.of(embeddings.to(model.device), names, things)
    settings = options.task_settings(canonical_task(task), model)
    tracks = Tracks(source.num_frames, source.height, source.width)
    tracks.fps = source.fps
    # Instance results below the task's class threshold are kept (results.json, evaluation) but not shown;
    # semantic / panoptic segments carry no per-video score (1.0): all shown.
    tracks.min_score = settings.class_threshold if task == "instance" else 0.0
    feeder = FrameFeeder(source, model, settings, range(start, stop))
    try:
        with model.autocast():
            run_category_task(model.net, task, feeder, vocab, settings, tracks, progress, cancel)
    finally:
        feeder.close()
    return tracks


def resolve_vocabulary(model: UniVSModel, vocabulary):
    """-> (names, text embeddings [K, D], is-thing flags). A built-in name ("ytvis21", "vipseg", ...) or
    a list of typed class names (needs the text encoder); None = the model's own vocabulary."""
    from . import vocabularies

    if vocabulary is None:
        if not model.vocabulary:
            raise ValueError("no vocabulary given: pass class names or a built-in vocabulary name")
        return model.vocabulary, model.class_embeddings["builtin"], list(model.vocabulary_isthing)
    if isinstance(vocabulary, str):
        names = vocabularies.get_vocabulary(vocabulary)
        things = [vocabularies.is_thing(vocabulary, i) for i in range(len(names))]
        if "combined" in model.class_embeddings and model.text is None:
            emb = vocabularies.slice_combined_embeddings(model.class_embeddings["combined"], vocabulary)
            return names, emb, things
    else:
        names = [str(v).strip() for v in vocabulary if str(v).strip()]
        if not names:
            raise ValueError("the vocabulary is empty: give at least one class name")
        things = [True] * len(names)
    if model.text is None:
        raise ValueError("typed vocabularies need the CLIP text-encoder file (load_model(text_encoder=...)); "
                         "built-in vocabularies also work with the official category-embedding file")
    return names, model.text.encode_categories(names), things
