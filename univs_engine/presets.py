"""Test-time settings of every task, and the official launch-script values of each backbone as presets.

One type, `TaskSettings`, is read by the prompt-guided loop (VOS, PVOS, RefVOS), the category-guided loops
(VIS, VPS, VSS), the API, the CLI and the nodes. Override fields with `dataclasses.replace`. The R50 values
are those of the released launch scripts (the field comments name the official config keys).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace


@dataclass(frozen=True)
class TaskSettings:
    # frames
    clip_len: int = 5              # T (INPUT.SAMPLING_FRAME_NUM)
    stride: int = 1                # CLIP_STRIDE (semantic segmentation always steps by T)
    min_size: int = 640            # INPUT.MIN_SIZE_TEST
    max_size: int = 1333
    square: int | None = None      # pad to a square canvas (Swin stage-2)
    # prompt memory
    prompt_tokens: int = 256       # R (VISUAL_PROMPT_PIXELS_PER_IMAGE)
    memory_frames: int = 5         # NUM_PREV_FRAMES_MEMORY
    self_attn_mask: str = "sep"
    pe_variant: str | None = None  # 3D position encoding; None = the model config's (ArbitraryT)
    # prompt-guided tasks
    vos_consistency: float = 0.5   # hard-coded in the official VOS driver
    stuff_from_semantics: bool = False  # PVOS: stuff targets take their class's pixels of the semantic map
    # False: stuff ignores its prompt-query predictions (for a model whose prompt queries cannot segment
    # stuff): VPS stuff entities are carried by their learnable-query matches only; PVOS stuff targets
    # (with stuff_from_semantics) take their class's region of the semantic map as their clip mask, with
    # full weight in the pixel competition. True = official.
    stuff_prompts: bool = True
    # category-guided tasks
    box_nms: float = 0.85          # BOX_NMS_THRESH
    new_object: float = 0.1        # DETECT_NEWLY_OBJECT_THRESHOLD
    consistency: float = 0.25      # TEMPORAL_CONSISTENCY_THRESHOLD
    stability: float = 0.25        # STABILITY_SCORE_THRESH (instance only)
    overlap: float = 0.8           # OVERLAP_THRESHOLD (panoptic composition)
    overlap_entity: float = 0.5    # OVERLAP_THRESHOLD_ENTITY (instance pixel competition)
    class_threshold: float = 0.25  # APPLY_CLS_THRES
    topk: int = 35                 # DETECTIONS_PER_IMAGE (per clip and per video)
    frames_window: int = 5         # NUM_FRAMES_WINDOW (sets the output window)
    detect_interval: int = 1       # DETECT_NEWLY_INTERVAL_FRAMES
    # > 0: a learnable query matched to a tracked entity adds its masks only when they overlap the entity's
    # accumulated masks on the clip's frames (IoU above this), so an entity that lost its object does not take
    # over another object's mask. 0 = official.
    match_continuity: float = 0.0
    output_window: int | None = None  # frames per output window; None = the official formula
    # The official later-clip detection never adds an entity while none is tracked (its overlap test sees an
    # empty tensor), so a video whose first clip finds nothing stays empty. True lifts that.
    detect_after_empty_start: bool = True

    def __post_init__(self):
        for name in ("clip_len", "stride", "memory_frames", "detect_interval", "prompt_tokens", "min_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"settings: {name} must be >= 1, not {getattr(self, name)}")

    @property
    def window(self) -> int:
        """Recent memory slots read by ProCA: max(memory_frames, T)."""
        return max(self.memory_frames, self.clip_len)

    @property
    def step(self) -> int:
        """Frames between clip starts: the stride, at most T."""
        return min(self.stride, self.clip_len)

    @property
    def out_window(self) -> int:
        """Frames per output window: (ceil(max(NUM_FRAMES_WINDOW, T) / 5) + 1) * 5 = 10 officially."""
        if self.output_window is not None:
            return max(1, int(self.output_window))
        return (math.ceil(max(self.frames_window, self.clip_len) / 5) + 1) * 5

    def is_output_clip(self, i: int) -> bool:
        """Whether the clip starting at frame i emits the oldest output window: i > memory_frames and
        i = memory_frames (mod window), the official rule for stride 1. Generalised so that the state stays
        bounded where the official would never emit before the end: once per `window` frames for any
        stride <= window, and also when memory_frames >= window."""
        return i > self.memory_frames and (i - self.memory_frames) % self.out_window < self.step

    @property
    def consistency_slots(self) -> int:
        """Embedding slots compared by the temporal-consistency check: max(mem // stride, 3)."""
        return max(int(self.memory_frames / self.step), 3)


R50 = {
    "vis": TaskSettings(prompt_tokens=128),
    "vis_ovis": TaskSettings(prompt_tokens=128, class_threshold=0.2, topk=50),
    "vss": TaskSettings(prompt_tokens=128, class_threshold=0.05, topk=50),
    "vps": TaskSettings(prompt_tokens=64, box_nms=0.75, new_object=0.05, consistency=0.05, overlap=0.6,
                        class_threshold=0.15, topk=100),
    "vos": TaskSettings(prompt_tokens=256),
    "pvos": TaskSettings(prompt_tokens=256, stuff_from_semantics=True),
    "refvos": TaskSettings(prompt_tokens=32, self_attn_mask="sep-blocked"),
}

SWIN_OVERRIDES = {  # Swin stage-3 scripts: memory 6 and top-k 50 for most tasks; FixedT for Swin-L VIS
    "memory_frames": 6, "topk": 50,
}

# The small embedded model is trained on 256 x 256 clips of 3-5 frames (see univs_engine/weights/MODEL_CARD.md) and runs at
# its training scale. Its class probabilities are low (~0.3 for a correct thing), so VIS keeps entities from
# 0.05 instead of the official 0.25 (measured with the 1500-iteration stage-0 model, 24 val videos: VIS AP
# 0.189 -> 0.240, class-agnostic 0.360 -> 0.472; 0.1 and 0.2 gave 0.240 and 0.200).
SMALL = {task: replace(p, clip_len=3, min_size=256, max_size=640, prompt_tokens=64) for task, p in R50.items()}
SMALL["vis"] = replace(SMALL["vis"], class_threshold=0.05)
SMALL["vis_ovis"] = replace(SMALL["vis_ovis"], class_threshold=0.05)
# A VIS entity that lost its object used to be re-attached by a strong learnable-query match to another object
# (an identity switch). Matches that do not overlap the entity's masks are left out (64 videos x 12 frames, 0 ->
# 0.1: ID switches per video val 0.609 -> 0.484, test 0.656 -> 0.609; mAP val 0.345 -> 0.352, test 0.306 -> 0.309;
# VPS was unchanged within one switch, so its preset keeps the official rule).
SMALL["vis"] = replace(SMALL["vis"], match_continuity=0.1)
# Its prompt queries were trained on things only and predict nothing for stuff (mask quality 0.00, mean logit
# about -17, on the later clips of assets/sample.mp4, while the same entities' embeddings stay consistent): the
# official rule adds those empty masks to every stuff entity / target, and VPS lost the sky after frame 1 (45 %
# of each later frame unlabelled) and PVOS emptied stuff targets from frame 3 on. Stuff follows the learnable
# queries (VPS) and the semantic map (PVOS) instead.
SMALL["vps"] = replace(SMALL["vps"], stuff_prompts=False)
SMALL["pvos"] = replace(SMALL["pvos"], stuff_prompts=False)

TASKS = tuple(R50)
CATEGORY_TASKS = {"instance": "vis", "semantic": "vss", "panoptic": "vps"}  # API task name -> preset


def get_settings(task: str, model_name: str = "r50") -> TaskSettings:
    """Settings for `task` (vis, vis_ovis, vss, vps, vos, pvos, refvos, or instance / semantic / panoptic)
    and a model config name (r50, swint, swinb, swinl, small)."""
    task = CATEGORY_TASKS.get(task, task)
    if task not in R50:
        raise ValueError(f"unknown task preset {task!r}; choose one of {', '.join(TASKS)}")
    if model_name == "small":
        return SMALL[task]
    preset = R50[task]
    if model_name.startswith("swin"):
        extra = dict(SWIN_OVERRIDES)
        if model_name == "swinl" and task.startswith("vis"):
            extra["pe_variant"] = "FixedT"
        if task == "refvos":
            extra["memory_frames"] = 5
        preset = replace(preset, **extra)
    return preset
