"""Data: the deterministic synthetic video world used for training, tests and the demo.

Names are resolved lazily so that ``python -m univs_engine.data.synthetic`` runs without the package
having imported the module first.
"""
from __future__ import annotations

from typing import Any

_SYNTHETIC = (
    "CLASSES", "NUM_THING_CLASSES", "STUFF_CLASSES", "STUFF_ID_OFFSET", "THING_CLASSES",
    "COLOURS", "SIZES", "TEXTURES", "SPLIT_SEED_BASE", "SPLIT_SIZE",
    "Prompt", "Segment", "SyntheticConfig", "SyntheticVideo", "ThingInfo",
    "generate_dataset", "generate_video", "split_seeds", "write_mp4", "write_sample",
    "mask_to_rle", "rle_to_mask",
)
__all__ = list(_SYNTHETIC)


def __getattr__(name: str) -> Any:
    if name in _SYNTHETIC:
        from . import synthetic  # noqa: PLC0415

        return getattr(synthetic, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
