"""Category-guided clip loops (VIS, VPS, VSS): the official "entity" unified inference, state kept bounded.

Instance / panoptic (`EntityClipLoop`): clips of T frames with stride 1. Every clip is decoded with the
learnable queries plus one prompt query per entity tracked so far (its memory pool re-encoded from its
current masks, as in vos.py). Entities are updated from their prompt predictions, then new entities are
detected among the learnable queries (matched to known ones by bi-softmax + Hungarian). Accumulated mask
logits are handed out in the official output windows once no later clip can change them, and dropped.

Semantic (`SemanticClipLoop`): non-overlapping clips, learnable queries only, no tracking.

`compose_panoptic` turns an output window into panoptic id maps; `iter_category_task` / `run_category_task`
drive any of the three tasks over a video and fill a `univs_engine.results.Tracks`.

Accumulated logits are kept at the decoder's 1/4 resolution: every contribution the official code adds at
the padded resolution is a bilinear upsampling of a 1/4-resolution map, and upsampling is linear, so the
padded-resolution values are recovered exactly (up to float rounding) whenever they are needed; padded- and
output-size maps are made one frame at a time.

Where this differs from the official code (everything else follows univs_facts §5.3-5.6 literally,
including its quirks: non-greedy NMS, absolute frame indices used as memory-slot indices, the previous
frame encoded with the current clip's features, blank first-appearance slots of later entities):
* `detect_after_empty_start` (default True): the official never adds an entity after a first clip that
  found none; set False for the official behaviour.
* output windows are also emitted when memory_frames >= window or stride > 1 (the official would then
  keep every frame until the end); identical for the released settings.
* VIS results: the official writes one result per (entity, class) with score >= 0.005 and keeps the
  per-video top-k of those; here each entity keeps its best class, and survives when that result does.
* prompt cells are drawn from a seeded generator (the official is unseeded).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

from ..modeling.mask_decoder import PromptQueries
from ..modeling.position_encoding import frame_phase
from ..modeling.prompt_encoder import mask_box, sample_mask_prompts
from .memory import PromptMemory
from .vos import mask_quality, temporal_consistency

if TYPE_CHECKING:
    from ..modeling.univs import UniVS
    from ..results import Tracks

TASKS = ("instance", "semantic", "panoptic")
_ALIASES = {"instance": "instance", "vis": "instance", "vis_ovis": "instance", "semantic": "semantic",
            "vss": "semantic", "panoptic": "panoptic", "vps": "panoptic"}

# hard-coded in the official first-clip panoptic detection
VPS_FIRST_TOPK, VPS_FIRST_THINGS, VPS_FIRST_STUFF, VPS_STUFF_MASK_NMS = 100, 70, 30, 0.6
NEW_ENTITY_MAX_IOU = 0.5  # a query overlapping a known entity this much is not new


# ---------------------------------------------------------------------------------------------- settings
@dataclass
class EntitySettings:
    """Test-time knobs of the category-guided tasks. Defaults: the official R50 VIS (YouTube-VIS 21)
    launch script; `for_task` gives the other rows of the table (univs_facts §1.4)."""

    task: str = "instance"          # instance (VIS), panoptic (VPS) or semantic (VSS)
    clip_len: int = 5               # T
    stride: int = 1                 # CLIP_STRIDE (semantic always uses T)
    memory_frames: int = 5          # NUM_PREV_FRAMES_MEMORY
    prompt_tokens: int = 128        # R
    self_attn_mask: str = "sep"
    frames_window: int = 5          # NUM_FRAMES_WINDOW (sets the output window)
    box_nms: float = 0.85           # BOX_NMS_THRESH
    new_object: float = 0.1         # DETECT_NEWLY_OBJECT_THRESHOLD
    consistency: float = 0.25       # TEMPORAL_CONSISTENCY_THRESHOLD
    stability: float = 0.25         # STABILITY_SCORE_THRESH (instance only)
    overlap: float = 0.8            # OVERLAP_THRESHOLD (panoptic composition)
    overlap_entity: float = 0.5     # OVERLAP_THRESHOLD_ENTITY (instance pixel competition)
    class_threshold: float = 0.25   # APPLY_CLS_THRES
    topk: int = 35                  # DETECTIONS_PER_IMAGE (per clip and per video)
    detect_interval: int = 1        # DETECT_NEWLY_INTERVAL_FRAMES
    output_window: int | None = None  # frames per output window; None = the official formula
    # The official later-clip detection never adds an entity while none is tracked (its overlap test sees
    # an empty tensor), so a video whose first clip finds nothing stays empty. True lifts that.
    detect_after_empty_start: bool = True
    pe_variant: str | None = None   # 3D position encoding; None = the model config's (ArbitraryT)

    def __post_init__(self):
        if self.task not in _ALIASES:
            raise ValueError(f"unknown task {self.task!r}; choose one of {', '.join(TASKS)}")
        self.task = _ALIASES[self.task]
        if self.clip_len < 1 or self.stride < 1 or self.memory_frames < 1 or self.detect_interval < 1:
            raise ValueError("clip_len, stride, memory_frames and detect_interval must be >= 1")

    @property
    def window(self) -> int:
        """Recent memory slots read by ProCA: max(memory_frames, T)."""
        return max(self.memory_frames, self.clip_len)

    @property
    def out_window(self) -> int:
        """Frames per output window: (ceil(max(NUM_FRAMES_WINDOW, T) / 5) + 1) * 5 = 10 officially."""
        if self.output_window is not None:
            return max(1, int(self.output_window))
        return (math.ceil(max(self.frames_window, self.clip_len) / 5) + 1) * 5

    def is_output_clip(self, i: int) -> bool:
        """Whether the clip starting at frame i emits the oldest output window: i > memory_frames and
        i = memory_frames (mod window), the official rule for stride 1. Generalised so that the state
        stays bounded where the official would never emit before the end: once per `window` frames for
        any stride <= window, and also when memory_frames >= window."""
        s = min(self.stride, self.clip_len)
        return i > self.memory_frames and (i - self.memory_frames) % self.out_window < s

    @property
    def consistency_slots(self) -> int:
        """Embedding slots compared by the temporal-consistency check: max(mem // stride, 3)."""
        return max(int(self.memory_frames / min(self.stride, self.clip_len)), 3)

    @classmethod
    def for_task(cls, task: str, **overrides) -> "EntitySettings":
        """Official R50 settings of a task: instance / vis (YouTube-VIS 21), vis_ovis, panoptic / vps
        (VIPSeg), semantic / vss (VSPW); keyword arguments override single fields."""
        if task not in _ALIASES:
            raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
        base = dict(_R50[task if task in _R50 else {"instance": "vis", "panoptic": "vps",
                                                     "semantic": "vss"}[task]])
        base.update(overrides)
        return cls(**base)

    @classmethod
    def from_preset(cls, task: str, preset, **overrides) -> "EntitySettings":
        """From a `univs_engine.presets.TaskPreset` (the per-backbone launch-script values)."""
        kw = dict(task=task, clip_len=preset.clip_len, memory_frames=preset.memory_frames,
                  prompt_tokens=preset.prompt_tokens, self_attn_mask=preset.self_attn_mask,
                  box_nms=preset.nms, new_object=preset.new_object, consistency=preset.consistency,
                  stability=preset.stability, overlap=preset.overlap, class_threshold=preset.class_threshold,
                  topk=preset.topk, pe_variant=preset.pe_variant)
        kw.update(overrides)
        return cls(**kw)


_R50 = {
    "vis": dict(task="instance"),
    "vis_ovis": dict(task="instance", class_threshold=0.2, topk=50),
    "vps": dict(task="panoptic", prompt_tokens=64, box_nms=0.75, new_object=0.05, consistency=0.05,
                overlap=0.6, class_threshold=0.15, topk=100),
    "vss": dict(task="semantic", class_threshold=0.05, topk=50),
}


# ---------------------------------------------------------------------------------------------- helpers
def video_box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-frame IoU of xyxy boxes: a [N, T, 4], b [M, T, 4] -> [N, M, T] (union clamped >= 1e-3)."""
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    lt = torch.max(a[:, None, :, :2], b[None, :, :, :2])
    rb = torch.min(a[:, None, :, 2:], b[None, :, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (area_a[:, None] + area_b[None] - inter).clamp(min=1e-3)


def suppressed(iou: torch.Tensor, threshold: float) -> torch.Tensor:
    """Official (non-greedy) NMS on a score-sorted pairwise IoU matrix [N, N]: a candidate is dropped when
    its IoU with ANY higher-scored candidate (dropped or not) reaches the threshold -> keep mask [N]."""
    if iou.shape[0] == 0:
        return torch.zeros(0, dtype=torch.bool, device=iou.device)
    return torch.triu(iou, diagonal=1).max(0).values < threshold


def box_nms_keep(boxes: torch.Tensor, threshold: float) -> torch.Tensor:
    """boxes [N, T, 4] sorted by descending score; IoU = max over frames -> keep mask [N]."""
    return suppressed(video_box_iou(boxes, boxes).amax(-1) if boxes.shape[0] else boxes.new_zeros(0, 0),
                      threshold)


def mask_iou_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Binary masks a [N, ...], b [M, ...] -> IoU [N, M] (union clamped >= 1)."""
    a, b = a.flatten(1).float(), b.flatten(1).float()
    inter = a @ b.t()
    union = a.sum(1)[:, None] + b.sum(1)[None] - inter
    return inter / union.clamp(min=1)


def mask_nms_keep(masks: torch.Tensor, threshold: float) -> torch.Tensor:
    """masks [N, H, W] bool sorted by descending score -> keep mask [N] (non-greedy, as `suppressed`)."""
    return suppressed(mask_iou_matrix(masks, masks), threshold)


def bisoftmax_similarity(track_embds: torch.Tensor, query_embds: torch.Tensor, threshold: float) -> torch.Tensor:
    """Quasi-track similarity: track_embds [N, S, C] (raw decoder embeddings), query_embds [M, T, C] ->
    [N, M] = mean over the S*T frame pairs of (softmax over queries + softmax over tracks) / 2, with
    values below `threshold` set to 0."""
    N, M = track_embds.shape[0], query_embds.shape[0]
    sim = torch.einsum("ntc,mfc->nmtf", track_embds, query_embds).flatten(2)
    if N == 0 or M == 0:
        return sim.new_zeros(N, M)
    bi = (sim.softmax(1) + sim.softmax(0)).mean(-1) / 2.0
    return bi.masked_fill(bi < threshold, 0.0)


def bisoftmax_match(track_embds: torch.Tensor, query_embds: torch.Tensor, threshold: float):
    """Hungarian assignment on 1 - bi-softmax similarity -> (track rows [P], query cols [P], sim [P]) for all
    assigned pairs (P = min(N, M)); a pair counts as matched when sim > threshold."""
    bi = bisoftmax_similarity(track_embds, query_embds, threshold)
    dev = bi.device
    if bi.numel() == 0:
        empty = torch.zeros(0, dtype=torch.long, device=dev)
        return empty, empty.clone(), bi.new_zeros(0)
    rows, cols = linear_sum_assignment((1 - bi).cpu().double().numpy())
    rows = torch.as_tensor(rows, dtype=torch.long, device=dev)
    cols = torch.as_tensor(cols, dtype=torch.long, device=dev)
    return rows, cols, bi[rows, cols]


def max_overlap(queries: torch.Tensor, tracks: torch.Tensor) -> torch.Tensor:
    """Largest per-frame IoU of each query mask with any track mask: queries [M, T, P] bool, tracks
    [N, T, P] bool -> [M] (0 when there are no tracks)."""
    if tracks.shape[0] == 0 or queries.shape[0] == 0:
        return queries.new_zeros(queries.shape[0], dtype=torch.float32)
    a, b = queries.flatten(2).float(), tracks.flatten(2).float()
    inter = torch.einsum("mtp,ntp->mnt", a, b)
    union = a.sum(-1)[:, None] + b.sum(-1)[None] - inter
    return (inter / union.clamp(min=1)).flatten(1).amax(1)


def semantic_segmentation(probs: torch.Tensor, mask_logits: torch.Tensor) -> torch.Tensor:
    """VSS per-pixel labels: probs [Q, K] class probabilities, mask_logits [Q, T, H, W] (output size) ->
    labels [T, H, W] = argmax_c sum_q prob[q, c] * quality[q] * sigmoid(mask_q)."""
    w = probs * mask_quality(mask_logits)[:, None]
    return torch.einsum("qc,qthw->cthw", w, mask_logits.sigmoid()).argmax(0)


def to_output(logits: torch.Tensor, image_size: tuple[int, int], out_size: tuple[int, int],
              mode: str = "bilinear") -> torch.Tensor:
    """[N, Hp, Wp] padded-resolution logits -> crop to the resized image -> [N, H, W] at out_size."""
    h, w = image_size
    x = logits[:, None, :h, :w].float()
    if x.shape[0] == 0:
        return x.new_zeros(0, *out_size)
    kw = dict(align_corners=False) if mode == "bilinear" else {}
    return F.interpolate(x, size=tuple(out_size), mode=mode, **kw)[:, 0]


def _upsample(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """[N, T, h, w] -> [N, T, H, W] bilinear (align_corners False); empty-safe."""
    if x.shape[0] == 0 or x.shape[1] == 0:
        return x.new_zeros(*x.shape[:2], *size)
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


def _fp32(device: torch.device):
    """Post-processing runs in fp32 even inside a caller's autocast region (counts and IoUs are matmuls
    of 0/1 masks; bf16 would round them)."""
    return torch.autocast(device_type=torch.device(device).type, enabled=False)


def _frame_features(model, frames, cache: dict, i: int, n: int, clip_len: int, num_frames: int):
    """Encoder outputs for frames [i, i+n), each frame encoded once (in windows of max(5, T) frames)."""
    todo = [f for f in range(i, i + n) if f not in cache]
    if todo:
        stop = min(max(todo[0] + max(5, clip_len), todo[-1] + 1), num_frames)
        mask_feats, multi = model.encode_frames(frames(todo[0], stop))
        for k, f in enumerate(range(todo[0], stop)):
            cache[f] = (mask_feats[k], [m[k] for m in multi])
    clip = [cache[f] for f in range(i, i + n)]
    return torch.stack([c[0] for c in clip]), [torch.stack([c[1][l] for c in clip]) for l in range(3)]


# ---------------------------------------------------------------------------------------------- state
@dataclass
class EntityWindow:
    """Final frames [start, start + F) of every entity known when the window was emitted.

    logits [N, F, h4, w4]: accumulated mask logits at 1/4 of the padded size (`padded_logits` gives the
    padded resolution); occurrence [N, F]: how many predictions were added per frame; probs [N, K]: class
    probabilities (mean over the entity's clip slots, quality-weighted); quality [N]: accumulated mask
    quality; ids [N]: entity ids (0, 1, ... in order of detection)."""

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
        return _upsample(x[None], self.padded_size)[0]


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

    index: torch.Tensor      # [M] learnable-query indices, in the official order
    probs: torch.Tensor      # [Q, K] quality-weighted class probabilities of all queries
    boxes: torch.Tensor      # [Q, T, 4] normalised boxes at 1/4 resolution
    quality: torch.Tensor    # [Q]


class EntityClipLoop:
    """Category-guided tracking of every entity of a vocabulary (VIS "instance" or VPS "panoptic").

    frames(start, stop) must return normalised, padded frames [n, 3, Hp, Wp]; class_embeddings [K, D] are
    the vocabulary's text embeddings (probabilities are sigmoids over exactly these K classes); things [K]
    bool marks thing classes (panoptic; default: all things).
    """

    def __init__(self, model: "UniVS", settings: EntitySettings, num_frames: int, image_size: tuple[int, int],
                 padded_size: tuple[int, int], class_embeddings: torch.Tensor,
                 things: torch.Tensor | Sequence[bool] | None = None, generator: torch.Generator | None = None):
        if settings.task not in ("instance", "panoptic"):
            raise ValueError(f"EntityClipLoop runs instance or panoptic, not {settings.task!r}")
        if class_embeddings is None or class_embeddings.shape[0] == 0:
            raise ValueError("class_embeddings [K, D] are required (the vocabulary to segment)")
        self.model, self.s = model, settings
        self.num_frames, self.image_size, self.padded_size = num_frames, tuple(image_size), tuple(padded_size)
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
        s, L = self.s, self.num_frames
        T, stride = s.clip_len, min(s.stride, s.clip_len)
        W = s.out_window
        self.state, self.max_frames_held = None, 0
        cache: dict[int, tuple] = {}
        is_last = False
        for i in range(0, L, stride):
            if is_last and i + T > L:
                break
            if cancel is not None and cancel():
                return
            is_last = i + T >= L
            n = min(T, L - i)
            feats = _frame_features(self.model, frames, cache, i, n, T, L)
            out = self._decode(feats, i, n, stride)
            self._hook("clip_output", call=i, out=out)
            with _fp32(out.pred_masks.device):
                self._write_clip(out, i, n)
            st = self.state
            self.max_frames_held = max(self.max_frames_held, st.logits.shape[1])
            if s.is_output_clip(i) or is_last:
                F_ = st.logits.shape[1] if is_last else min(W, st.logits.shape[1])
                win = EntityWindow(st.end - st.logits.shape[1], st.ids.clone(), st.logits[:, :F_].clone(),
                                   st.occurrence[:, :F_].clone(), st.mean_probs().clone(), st.quality.clone(),
                                   self.padded_size, is_last)
                st.logits, st.occurrence = st.logits[:, F_:], st.occurrence[:, F_:]
                self._hook("window", call=i, window=win)
                yield win
            if not is_last:
                self._pad(st, min(stride, L - i - T))
                self.max_frames_held = max(self.max_frames_held, st.logits.shape[1])
            for f in [k for k in cache if k < i + stride]:
                del cache[f]

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
        return (_upsample(x[None], self.padded_size)[0] > 0).float()

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
        # first appearances are absolute frame indices used as slot indices (official quirk, §8.10)
        st.memory.set_first_frames(st.first)
        clip_t, clip_p = st.memory.recent(n)
        mem_t, mem_p = st.memory.proca_tokens(self.s.window)
        prompts = self.model.decoder.visual_prompt_queries(clip_t, clip_p, mem_t, mem_p)
        self._hook("prompt_queries", call=i, prompts=prompts)
        return prompts

    # ------------------------------------------------------------------ tracked entities
    def _up_frame(self, low: torch.Tensor, t: int) -> torch.Tensor:
        """Frame t of [N, T, h4, w4] logits at the padded resolution -> [N, Hp, Wp]. Work is done one
        frame at a time so that N x T padded-resolution maps never exist at once."""
        return _upsample(low[:, t][None], self.padded_size)[0]

    def _update_tracked(self, st: EntityState, low, embds, i, n):
        """Prompt predictions of the tracked entities (official write_prompt_predictions_*): consistent
        entities (and, for instances, those that keep their pixels) add their logits to the clip frames."""
        s, N = self.s, st.num
        h, w = self.image_size
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
        if s.task == "instance":  # pixel competition among the entities (per pixel, so per frame)
            score = st.mean_probs().max(-1).values * sim * q
            won, over = torch.zeros_like(pos), torch.zeros_like(pos)
            own_area = torch.zeros_like(pos)
            for t in range(n):
                sig = self._up_frame(low, t)[:, :h, :w].sigmoid().flatten(1)
                winner = (score[:, None] * sig).argmax(0)
                winner[(sig < 0.5).all(0)] = -1
                fg = winner >= 0
                won += torch.bincount(winner[fg], minlength=N)
                own_area += (sig > 0.5).sum(1)
                mine = fg & (sig.gather(0, winner.clamp(min=0)[None])[0] > 0.5)
                over += torch.bincount(winner[mine], minlength=N)
            keep = keep & (won / own_area.clamp(min=1) > s.overlap_entity) & (over > 0)
        self._hook("tracked", call=i, similarity=sim, keep=keep, quality=q)
        idx = torch.nonzero(keep).flatten()
        if len(idx) == 0:
            return
        st.occurrence[idx, -n:] += nonblank[idx]
        st.logits[idx, -n:] += low[idx]
        Hp, Wp = self.padded_size
        norm = torch.tensor([Wp, Hp, Wp, Hp], device=low.device)
        for t in range(n):
            acc = self._up_frame(st.logits[idx, -n:], t) > 0
            st.boxes[idx, t - n] = mask_box(acc).float() / norm
        self._average_embds(st, idx, embds[idx].mean(1))
        st.quality[idx] += q[idx]

    @staticmethod
    def _average_embds(st: EntityState, rows, new):
        """embds[:, -1] = (old + new) / (1 + [old non-blank])."""
        old = st.embds[rows, -1]
        nonblank = (old != 0).any(-1, keepdim=True)
        st.embds[rows, -1] = (old + new) / (nonblank + 1.0)

    def _add_masks(self, st: EntityState, rows, low, q, n):
        """Matched learnable-query masks join the entities' accumulated logits."""
        if len(rows) == 0:
            return
        for t in range(n):
            st.occurrence[rows, t - n] += (self._up_frame(low, t).flatten(1) > 0).any(1).float()
        st.logits[rows, -n:] += low
        st.quality[rows] += q

    # ------------------------------------------------------------------ new entities
    def _detect(self, st, probs, masks, embds, i, n) -> _Detections:
        if self.s.task == "instance":
            return self._detect_instances(st, probs, masks, embds, i, n)
        return self._detect_pixels(st, probs, masks, embds, i, n)

    def _boxes(self, masks):
        h4, w4 = masks.shape[-2:]
        return mask_box(masks > 0).float() / torch.tensor([w4, h4, w4, h4], device=masks.device)

    def _detect_instances(self, st, probs, masks, embds, i, n) -> _Detections:
        """Official detect_newly_entities_per_clip_instance."""
        s = self.s
        q = mask_quality(masks)
        probs = probs * q[:, None]
        boxes = self._boxes(masks)
        idx = torch.arange(probs.shape[0], device=probs.device)
        if s.stability > 0:
            idx = idx[q > s.stability]
        order = probs[idx].max(-1).values.argsort(descending=True, stable=True)[:s.topk]
        idx = idx[order]
        if len(idx) > 1:
            idx = idx[box_nms_keep(boxes[idx], s.box_nms)]
        if st is None:  # first clip: confident queries only
            new = idx[probs[idx].max(-1).values > max(s.class_threshold, 0.1)]
            return _Detections(new, probs, boxes, q)
        rows, cols, sim = bisoftmax_match(st.embds[:, -3:], embds[idx], s.new_object)
        m = sim > s.new_object
        r, c = rows[m], idx[cols[m]]
        st.prob_last[r] = 0.5 * (st.prob_last[r] + probs[c])
        self._average_embds(st, r, embds[c].mean(1))
        strong = sim > 2 * s.new_object
        r2, c2 = rows[strong], idx[cols[strong]]
        self._add_masks(st, r2, masks[c2], q[c2], n)
        self._hook("matched", call=i, rows=r, cols=c, strong_rows=r2, strong_cols=c2, similarity=sim)
        new = self._unmatched(st, idx, c2, probs, masks, n, s.class_threshold)
        return _Detections(new, probs, boxes, q)

    def _detect_pixels(self, st, probs, masks, embds, i, n) -> _Detections:
        """Official detect_newly_entities_per_clip_pixel (panoptic: things and stuff)."""
        s = self.s
        boxes = self._boxes(masks)
        q = mask_quality(masks)
        probs = probs * q[:, None]
        scores, labels = probs.max(-1)
        if st is None:
            order = scores.argsort(descending=True, stable=True)[:VPS_FIRST_TOPK]
            thing = self.things.to(order.device)[labels[order]]
            th, sf = order[thing][:VPS_FIRST_THINGS], order[~thing][:VPS_FIRST_STUFF]
            if len(th):
                th = th[box_nms_keep(boxes[th], s.box_nms)]
            if len(sf):
                sf = sf[mask_nms_keep(masks[sf, 0] > 0, VPS_STUFF_MASK_NMS)]
            new = torch.cat([th, sf])
            return _Detections(new[scores[new] > s.class_threshold], probs, boxes, q)
        rows, cols, sim = bisoftmax_match(st.embds[:, -3:], embds, s.new_object)
        m = sim > s.new_object
        r, c = rows[m], cols[m]
        self._add_masks(st, r, masks[c], q[c], n)
        st.prob_last[r] = 0.5 * (st.prob_last[r] + probs[c])
        self._average_embds(st, r, embds[c].mean(1))
        self._hook("matched", call=i, rows=r, cols=c, strong_rows=r, strong_cols=c, similarity=sim)
        idx = torch.arange(probs.shape[0], device=probs.device)
        return _Detections(self._unmatched(st, idx, c, probs, masks, n, 2 * s.class_threshold), probs, boxes, q)

    def _unmatched(self, st, idx, matched, probs, masks, n, threshold) -> torch.Tensor:
        """Candidates (in order) that were not matched, are confident and overlap no entity much."""
        taken = torch.zeros(probs.shape[0], dtype=torch.bool, device=probs.device)
        taken[matched] = True
        cand = idx[~taken[idx] & (probs[idx].max(-1).values > threshold)]
        if len(cand) == 0:
            return cand
        if st.num == 0:
            return cand if self.s.detect_after_empty_start else cand[:0]
        # the official compares with the accumulated padded-resolution logits resized back to 1/4
        iou = None
        for t in range(n):
            gt = _upsample(self._up_frame(st.logits[:, -n:], t)[None], masks.shape[-2:])[0] > 0
            it = max_overlap(masks[cand, t:t + 1] > 0, gt[:, None])
            iou = it if iou is None else torch.maximum(iou, it)
        return cand[iou < NEW_ENTITY_MAX_IOU]

    def _add_entities(self, det: _Detections, masks, embds, i, n):
        """Official write_newly_entities_into_annotations_per_clip (creates the state on the first call)."""
        st, k = self.state, det.index
        M, dev = len(k), masks.device
        low, box = masks[k], det.boxes[k]
        mean_embd = embds[k].mean(1, keepdim=True)
        K = det.probs.shape[1]
        if st is None:
            self.state = EntityState(
                ids=torch.arange(M, device=dev), first=torch.full((M,), i, dtype=torch.long, device=dev),
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
        st.ids = torch.cat([st.ids, torch.arange(st.next_id, st.next_id + M, device=dev)])
        st.next_id += M
        st.first = torch.cat([st.first, torch.full((M,), i, dtype=torch.long, device=dev)])
        if st.memory is not None:  # blank prompt slots for the new entities
            mem = st.memory
            z = mem.tokens.new_zeros(M, *mem.tokens.shape[1:])
            base = mem.tokens.shape[0]
            mem.tokens, mem.pe = torch.cat([mem.tokens, z]), torch.cat([mem.pe, z.clone()])
            for r in range(M):
                if i < mem.start:  # first slot already dropped: it was blank
                    mem.first[base + r] = (z[r, :, 0].clone(), z[r, :, 0].clone())
            mem.set_first_frames(st.first)

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


# ---------------------------------------------------------------------------------------------- semantic
class SemanticClipLoop:
    """VSS: non-overlapping clips of T frames, learnable queries only, one label map per frame.

    Mask logits go to the padded size (bilinear), are cropped and resized to out_size (nearest); the
    quality of each query is measured on those resized masks (official order)."""

    def __init__(self, model: "UniVS", settings: EntitySettings, num_frames: int, image_size: tuple[int, int],
                 padded_size: tuple[int, int], class_embeddings: torch.Tensor,
                 out_size: tuple[int, int] | None = None, max_elements: int = 1 << 25):
        if class_embeddings is None or class_embeddings.shape[0] == 0:
            raise ValueError("class_embeddings [K, D] are required (the vocabulary to segment)")
        self.model, self.s = model, settings
        self.num_frames, self.image_size, self.padded_size = num_frames, tuple(image_size), tuple(padded_size)
        self.out_size = tuple(out_size) if out_size is not None else self.image_size
        self.class_embeddings = class_embeddings
        self.max_elements = max_elements  # bounds the [queries, H, W] temporaries
        self.max_frames_held = 0
        self.hooks: dict[str, Callable] = {}

    @torch.no_grad()
    def run(self, frames: Callable[[int, int], torch.Tensor],
            cancel: Callable[[], bool] | None = None) -> Iterator[tuple[int, torch.Tensor]]:
        """Yield (frame index, labels [H_out, W_out] long, 0-based class index) for every frame in order."""
        T, L = self.s.clip_len, self.num_frames
        dec = self.model.decoder
        cache: dict[int, tuple] = {}
        for i in range(0, L, T):
            if cancel is not None and cancel():
                return
            n = min(T, L - i)
            mask_features, multi = _frame_features(self.model, frames, cache, i, n, T, L)
            levels = dec.embed_levels(multi, torch.arange(i, i + n, device=mask_features.device), self.s.pe_variant)
            out = dec(levels, mask_features, None, self.class_embeddings, self.s.self_attn_mask)
            Ql = dec.num_queries
            probs = out.pred_logits[:Ql].float().sigmoid()
            masks = out.pred_masks[:Ql].float()
            if "clip_output" in self.hooks:
                self.hooks["clip_output"](call=i, out=out)
            self.max_frames_held = max(self.max_frames_held, len(cache))
            with _fp32(masks.device):
                labels = list(self._labels(probs, masks))
            for t, lab in enumerate(labels):
                yield i + t, lab
            for f in [k for k in cache if k < i + T]:
                del cache[f]

    def _chunks(self, Q: int):
        step = max(1, self.max_elements // max(1, self.out_size[0] * self.out_size[1]))
        return [slice(a, min(a + step, Q)) for a in range(0, Q, step)]

    def _out(self, low: torch.Tensor) -> torch.Tensor:
        return to_output(_upsample(low[:, None], self.padded_size)[:, 0], self.image_size, self.out_size, "nearest")

    def _labels(self, probs, masks) -> Iterator[torch.Tensor]:
        Q, n = masks.shape[:2]
        chunks = self._chunks(Q)
        pos = masks.new_zeros(Q)
        tot = masks.new_zeros(Q)
        for t in range(n):  # pass 1: quality over the clip's resized masks
            for c in chunks:
                x = self._out(masks[c, t])
                pos[c] += (x > 1).flatten(1).sum(1)
                tot[c] += (x > -1).flatten(1).sum(1)
        w = probs * (pos / tot.clamp(min=1))[:, None]
        for t in range(n):  # pass 2: class maps
            sem = None
            for c in chunks:
                part = torch.einsum("qk,qhw->khw", w[c], self._out(masks[c, t]).sigmoid())
                sem = part if sem is None else sem + part
            yield sem.argmax(0)


# ---------------------------------------------------------------------------------------------- panoptic
@dataclass
class PanopticMemory:
    """Persistent segment ids: things[entity id] and stuff[class index] -> segment id (positive)."""

    things: dict[int, int] = field(default_factory=dict)
    stuff: dict[int, int] = field(default_factory=dict)


def compose_panoptic(logits, probs: torch.Tensor, things: torch.Tensor | Sequence[bool], memory: PanopticMemory,
                     overlap: float = 0.6, ids: torch.Tensor | Sequence[int] | None = None) -> list[torch.Tensor]:
    """One output window -> panoptic id maps (official save_results_vps).

    logits: accumulated entity logits at the output size, a tensor [N, F, H, W] or a sequence of F tensors
    [N, H, W] (computed lazily if it is a lazy sequence); probs [N, K] mean class probabilities; things [K]
    thing flags; ids [N] entity ids (default 0..N-1). Returns F int32 maps [H, W] (0 = void). `memory`
    carries segment ids across windows and is updated.

    Per entity: class = argmax prob, score = max prob x mask quality (over the window), stuff entities not
    yet known as things x0.75. Per pixel: winner = argmax score x logit, void where every sigmoid < 0.5;
    an entity owns winner pixels where its sigmoid >= 0.5; things keeping < overlap (0.5 x overlap for
    things seen before) of their own sigmoid >= 0.5 area are dropped; stuff of one class shares one id.
    """
    frames = (lambda f: logits[:, f]) if isinstance(logits, torch.Tensor) else (lambda f: logits[f])
    F_ = logits.shape[1] if isinstance(logits, torch.Tensor) else len(logits)
    N = probs.shape[0]
    ids = list(range(N)) if ids is None else [int(x) for x in ids]
    things = torch.as_tensor(things, dtype=torch.bool).flatten().cpu()
    if N == 0:
        return [torch.zeros(frames(f).shape[-2:], dtype=torch.int32) for f in range(F_)]
    pos = torch.zeros(N)
    tot = torch.zeros(N)
    for f in range(F_):
        x = frames(f).float()
        pos += (x > 1).flatten(1).sum(1).cpu()
        tot += (x > -1).flatten(1).sum(1).cpu()
    scores, classes = probs.float().cpu().max(-1)
    scores = scores * (pos / tot.clamp(min=1))
    isthing = things[classes]
    known = set(memory.things)  # snapshot: entities emitted as things in earlier windows
    for k in range(N):
        if ids[k] not in known and not isthing[k]:
            scores[k] *= 0.75
    winner_area = torch.zeros(N, dtype=torch.long)
    own_area = torch.zeros(N, dtype=torch.long)
    region_area = torch.zeros(N, dtype=torch.long)
    owners = []
    for f in range(F_):
        x = frames(f).float()
        sig = x.sigmoid()
        winner = (scores.to(x.device).view(-1, 1, 1) * x).argmax(0)
        winner[(sig < 0.5).all(0)] = -1
        fg = winner >= 0
        winner_area += torch.bincount(winner[fg].cpu(), minlength=N)
        own_area += (sig >= 0.5).flatten(1).sum(1).cpu()
        mine = sig.gather(0, winner.clamp(min=0)[None])[0] >= 0.5
        owner = torch.where(fg & mine, winner, torch.full_like(winner, -1)).cpu()
        region_area += torch.bincount(owner[owner >= 0], minlength=N)
        owners.append(owner)
    existing = list(memory.things.values()) + list(memory.stuff.values())
    counter = max(existing) + 1 if existing else 0
    segment = torch.zeros(N + 1, dtype=torch.int32)  # index 0: void (owner -1)
    for k in range(N):
        if not (winner_area[k] > 0 and own_area[k] > 0 and region_area[k] > 0):
            continue
        if isthing[k]:
            thr = 0.5 * overlap if ids[k] in known else overlap
            if float(winner_area[k]) / float(own_area[k]) < thr:
                continue
            if ids[k] not in memory.things:
                counter += 1
                memory.things[ids[k]] = counter
            segment[k + 1] = memory.things[ids[k]]
        else:
            c = int(classes[k])
            if c not in memory.stuff:
                counter += 1
                memory.stuff[c] = counter
            segment[k + 1] = memory.stuff[c]
    return [segment[o + 1] for o in owners]


# ---------------------------------------------------------------------------------------------- instance scores
class InstanceScores:
    """Per-video VIS scoring (official vis_clip_instances_to_coco_json_video), accumulated window by window.

    Each window's class vector of an entity is weighted by its temporal consistency (1 on its first window,
    then (nonblank_prev + nonblank) / 2 if non-blank) and averaged over the non-blank windows; the mask
    quality is the entity's accumulated quality / (int(max over entities) + 1) at the latest window."""

    def __init__(self):
        self.acc: dict[int, torch.Tensor] = {}
        self.count: dict[int, int] = {}
        self.prev: dict[int, bool] = {}
        self.quality: dict[int, float] = {}

    def add(self, ids: torch.Tensor, probs: torch.Tensor, quality: torch.Tensor) -> None:
        probs, quality = probs.float().cpu(), quality.float().cpu()
        norm = int(quality.max()) + 1 if len(quality) else 1
        for r, e in enumerate(ids.tolist()):
            s = probs[r]
            nb = bool(s.sum() > 0)
            w = float(nb) if e not in self.acc else float(nb) * (float(self.prev[e]) + float(nb)) / 2
            ws = s * w
            self.acc[e] = self.acc.get(e, torch.zeros_like(s)) + ws
            self.count[e] = self.count.get(e, 0) + int(ws.sum() > 0)
            self.prev[e] = nb
            self.quality[e] = float(quality[r]) / norm

    def final(self, topk: int, min_class_score: float = 0.05) -> dict[int, tuple[int, float]]:
        """Entity id -> (class index, score) for the entities whose best (entity, class) result survives the
        official per-video top-k (k = max(1.5 x #(class scores > 0.05), topk); class scores < 0.005 are
        never results)."""
        best: dict[int, tuple[int, float]] = {}
        all_scores, above = [], 0
        for e, acc in self.acc.items():
            score = acc / max(self.count[e], 1)
            ok = score >= 0.1 * min_class_score
            above += int((score[ok] > min_class_score).sum())
            vals = (score[ok] * self.quality[e]).tolist()
            all_scores += vals
            if vals:
                c = int(torch.nonzero(ok).flatten()[int(np.argmax(vals))])
                best[e] = (c, float(score[c]) * self.quality[e])
        if not all_scores:
            return {}
        k = max(int(above * 1.5), topk)
        thr = sorted(all_scores, reverse=True)[min(k, len(all_scores) - 1)]
        return {e: cs for e, cs in best.items() if cs[1] >= thr}


# ---------------------------------------------------------------------------------------------- driver
class _LazyFrames:
    """Window frames at the output size, computed on access: w[f] -> [N, H, W] logits."""

    def __init__(self, win: EntityWindow, image_size, out_size, average: bool):
        self.win, self.image_size, self.out_size, self.average = win, image_size, out_size, average

    def __len__(self):
        return self.win.num_frames

    def __getitem__(self, f):
        return to_output(self.win.padded_logits(f, self.average), self.image_size, self.out_size)


def _attr(obj, *path, default=None):
    for name in path:
        obj = getattr(obj, name, None)
        if obj is None:
            return default
    return obj


def iter_category_task(model: "UniVS", task: str, frames: Callable[[int, int], torch.Tensor],
                       class_embeddings: torch.Tensor, tracks: "Tracks", names: Sequence[str] | None = None,
                       things: Sequence[bool] | torch.Tensor | None = None, settings=None, *,
                       num_frames: int | None = None, image_size: tuple[int, int] | None = None,
                       padded_size: tuple[int, int] | None = None, out_size: tuple[int, int] | None = None,
                       frame_ids: Sequence[int] | None = None, generator: torch.Generator | None = None,
                       cancel: Callable[[], bool] | None = None) -> Iterator[tuple[int, int]]:
    """Run one category-guided task and fill `tracks`; yield (frames done, total) after each frame.

    task: instance (one object per entity, id = entity id + 1, with label/category/score), semantic (one
    object per class present, id = class index + 1) or panoptic (things and stuff segments, id = segment
    id, isthing set). Frame k of the run is written to tracks frame frame_ids[k] (default k). Sizes not
    given are read from `frames` (image_size, padded_size, order, source.height/width) when it has them.
    Stops cleanly when cancel() returns True (frames written so far stay; instance labels are then scored
    from the windows seen so far)."""
    task = _ALIASES.get(task, task)
    if task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, not {task!r}")
    if settings is None:
        settings = EntitySettings.for_task(task)
    elif not isinstance(settings, EntitySettings):  # a univs_engine.presets.TaskPreset
        settings = EntitySettings.from_preset(task, settings)
    if settings.task != task:
        settings = replace(settings, task=task)
    order = _attr(frames, "order")
    num_frames = num_frames if num_frames is not None else (len(order) if order is not None else tracks.num_frames)
    image_size = image_size or _attr(frames, "image_size")
    padded_size = padded_size or _attr(frames, "padded_size")
    image_size = tuple(image_size) if image_size is not None else None
    padded_size = tuple(padded_size) if padded_size is not None else None
    out_size = tuple(out_size or (tracks.height, tracks.width))
    frame_ids = list(frame_ids if frame_ids is not None else (order if order is not None else range(num_frames)))
    if image_size is None or padded_size is None:
        raise ValueError("image_size and padded_size are required (or a frames object that has them)")
    if len(frame_ids) < num_frames:
        raise ValueError(f"frame_ids has {len(frame_ids)} entries for {num_frames} frames")
    K = class_embeddings.shape[0]
    if names is not None and len(names) != K:
        raise ValueError(f"{len(names)} class names for {K} class embeddings")
    if generator is None:  # prompt cells are drawn at random: seed them so runs repeat
        generator = torch.Generator().manual_seed(0)
    names = list(names) if names is not None else [str(c) for c in range(K)]
    things = torch.ones(K, dtype=torch.bool) if things is None else torch.as_tensor(things, dtype=torch.bool)
    done = 0
    if task == "semantic":
        loop = SemanticClipLoop(model, settings, num_frames, image_size, padded_size, class_embeddings, out_size)
        for k, labels in loop.run(frames, cancel):
            for c in torch.unique(labels).tolist():
                oid = c + 1
                if oid not in tracks:
                    tracks.add_object(oid, label=names[c], category=c, isthing=bool(things[c]))
                tracks.set_mask(frame_ids[k], oid, labels == c)
            tracks.mark_segmented(frame_ids[k])
            done += 1
            yield done, num_frames
            if cancel is not None and cancel():
                return
        return

    loop = EntityClipLoop(model, settings, num_frames, image_size, padded_size, class_embeddings, things, generator)
    scores = InstanceScores()
    memory = PanopticMemory()
    last: EntityWindow | None = None
    stopped = False
    try:
        for win in loop.run(frames, cancel):
            last = win
            if task == "instance":
                scores.add(win.ids, win.probs, win.quality)
                lazy = _LazyFrames(win, image_size, out_size, average=True)
                for j in range(win.num_frames):
                    with _fp32(win.logits.device):
                        logits = lazy[j]
                    for r, e in enumerate(win.ids.tolist()):
                        m = logits[r] > 0
                        if not bool(m.any()):
                            continue
                        if e + 1 not in tracks:
                            tracks.add_object(e + 1)
                        tracks.set_mask(frame_ids[win.start + j], e + 1, m,
                                        confidence=float(logits[r].sigmoid()[m].mean()))
                    tracks.mark_segmented(frame_ids[win.start + j])
                    done += 1
                    yield done, num_frames
                    if cancel is not None and cancel():
                        stopped = True
                        break
            else:
                with _fp32(win.logits.device):
                    maps = compose_panoptic(_LazyFrames(win, image_size, out_size, average=False), win.probs,
                                            things, memory, settings.overlap, win.ids)
                seg_things = {v: e for e, v in memory.things.items()}
                classes = win.probs.argmax(-1).tolist()
                row = {e: r for r, e in enumerate(win.ids.tolist())}
                stuff_class = {v: c for c, v in memory.stuff.items()}
                for j, m in enumerate(maps):
                    for seg in torch.unique(m).tolist():
                        if seg == 0:
                            continue
                        if seg not in tracks:
                            if seg in seg_things:
                                c = classes[row[seg_things[seg]]]
                                tracks.add_object(seg, label=names[c], category=c, isthing=True)
                            else:
                                c = stuff_class[seg]
                                tracks.add_object(seg, label=names[c], category=c, isthing=False)
                        tracks.set_mask(frame_ids[win.start + j], seg, m == seg)
                    tracks.mark_segmented(frame_ids[win.start + j])
                    done += 1
                    yield done, num_frames
                    if cancel is not None and cancel():
                        stopped = True
                        break
            if stopped:
                break
    finally:
        _finish(task, tracks, scores, memory, last, names, things, settings)


def _finish(task, tracks, scores: InstanceScores, memory: PanopticMemory, last, names, things, settings):
    """Labels known only at the end of the video."""
    if task == "instance":
        kept = scores.final(settings.topk)
        for e in list(scores.acc):
            oid = e + 1
            if oid not in tracks:
                continue
            if e not in kept:
                tracks.remove_object(oid)
                continue
            c, sc = kept[e]
            tracks.update_object(oid, label=names[c], category=c, isthing=bool(things[c]), score=sc)
    elif task == "panoptic" and last is not None:
        classes = last.probs.argmax(-1).tolist()
        row = {e: r for r, e in enumerate(last.ids.tolist())}
        for e, seg in memory.things.items():
            if seg in tracks and e in row:
                c = classes[row[e]]
                tracks.update_object(seg, label=names[c], category=c, isthing=bool(things[c]))


def run_category_task(model: "UniVS", task: str, frames: Callable[[int, int], torch.Tensor],
                      class_embeddings: torch.Tensor, names: Sequence[str] | None = None,
                      things: Sequence[bool] | torch.Tensor | None = None, settings=None, *,
                      progress: Callable[[int, int], None] | None = None, cancel: Callable[[], bool] | None = None,
                      cancelled: Callable[["Tracks"], BaseException] | None = None, tracks: "Tracks | None" = None,
                      num_frames: int | None = None, image_size: tuple[int, int] | None = None,
                      padded_size: tuple[int, int] | None = None, out_size: tuple[int, int] | None = None,
                      frame_ids: Sequence[int] | None = None, total_frames: int | None = None,
                      generator: torch.Generator | None = None) -> "Tracks":
    """Run a category-guided task to the end and return the filled Tracks (see iter_category_task).

    progress(done, total) is called after every frame. When cancel() returns True the run stops; with
    `cancelled` given, cancelled(tracks) is raised (e.g. univs_engine.api.Cancelled), else the partial
    tracks are returned."""
    from ..results import Tracks

    if tracks is None:
        order = _attr(frames, "order")
        n = num_frames if num_frames is not None else (len(order) if order is not None else None)
        if n is None:
            raise ValueError("num_frames is required when frames has no `order`")
        total = total_frames or _attr(frames, "source", "num_frames") or (
            max(frame_ids) + 1 if frame_ids is not None else n)
        size = out_size or (_attr(frames, "source", "height"), _attr(frames, "source", "width"))
        if size[0] is None:
            size = image_size or _attr(frames, "image_size")
        tracks = Tracks(total, size[0], size[1])
    stopped: list[bool] = []

    def check() -> bool:
        if cancel is not None and not stopped and cancel():
            stopped.append(True)
        return bool(stopped)

    for done, total in iter_category_task(model, task, frames, class_embeddings, tracks, names, things, settings,
                                          num_frames=num_frames, image_size=image_size, padded_size=padded_size,
                                          out_size=out_size, frame_ids=frame_ids, generator=generator, cancel=check):
        if progress is not None:
            progress(done, total)
    if stopped and cancelled is not None:
        raise cancelled(tracks)
    return tracks
