"""Official per-task test settings (the released launch scripts), as named presets.

Each preset is a `TaskPreset`; override fields with `dataclasses.replace`. Values: univs_facts §1.4.
"""
from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class TaskPreset:
    clip_len: int = 5              # T (INPUT.SAMPLING_FRAME_NUM)
    min_size: int = 640            # INPUT.MIN_SIZE_TEST
    max_size: int = 1333
    square: int | None = None      # pad to a square canvas (Swin stage-2)
    prompt_tokens: int = 256       # R
    memory_frames: int = 5
    self_attn_mask: str = "sep"
    pe_variant: str = "ArbitraryT"
    nms: float = 0.85
    new_object: float = 0.1
    consistency: float = 0.25
    stability: float = 0.25
    overlap: float = 0.8
    class_threshold: float = 0.25
    topk: int = 35
    stuff_from_semantics: bool = False  # PVOS: stuff targets take their class's pixels of the semantic map


R50 = {
    "vis": TaskPreset(prompt_tokens=128),
    "vis_ovis": TaskPreset(prompt_tokens=128, class_threshold=0.2, topk=50),
    "vss": TaskPreset(prompt_tokens=128, class_threshold=0.05, topk=50),
    "vps": TaskPreset(prompt_tokens=64, nms=0.75, new_object=0.05, consistency=0.05, overlap=0.6,
                      class_threshold=0.15, topk=100),
    "vos": TaskPreset(prompt_tokens=256),
    "pvos": TaskPreset(prompt_tokens=256, stuff_from_semantics=True),
    "refvos": TaskPreset(prompt_tokens=32, self_attn_mask="sep-blocked"),
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

TASKS = tuple(R50)


def get_preset(task: str, model_name: str = "r50") -> TaskPreset:
    """Settings for `task` (vis, vis_ovis, vss, vps, vos, pvos, refvos) and a model config name."""
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
