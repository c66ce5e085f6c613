"""Loading UniVS checkpoints as users have them: official detectron2 `.pth` files or `.safetensors`.

A checkpoint never executes code: `.pth` files are read with `torch.load(weights_only=True)`. Problems
are reported as `CheckpointError` naming the file and what is wrong with it.
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .config import PRESETS, UniVSConfig, get_config

MODEL_PREFIXES = ("backbone.", "sem_seg_head.")
EMA_PREFIXES = {"backbone_t.": "backbone.", "sem_seg_head_t.": "sem_seg_head."}
TEXT_ENCODER_KEYS = ("token_embedding.weight", "positional_embedding", "text_projection")


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used, with the file named in the message."""


@dataclass
class KeyReport:
    """Differences between a checkpoint and a model's state dict."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple, tuple]] = field(default_factory=list)  # key, ckpt shape, model shape

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def describe(self, limit: int = 10) -> str:
        def clip(items):
            items = list(items)
            more = f" ... (+{len(items) - limit} more)" if len(items) > limit else ""
            return ", ".join(map(str, items[:limit])) + more

        parts = []
        if self.missing:
            parts.append(f"{len(self.missing)} missing: {clip(self.missing)}")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} unexpected: {clip(self.unexpected)}")
        if self.mismatched:
            parts.append(f"{len(self.mismatched)} with other shapes: "
                         + clip(f"{k} {tuple(a)} vs model {tuple(b)}" for k, a, b in self.mismatched))
        return "; ".join(parts) or "all keys match"


def compare_keys(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> KeyReport:
    """Compare checkpoint tensors with a model state dict (keys and shapes)."""
    rep = KeyReport()
    rep.missing = [k for k in expected if k not in state]
    rep.unexpected = [k for k in state if k not in expected]
    rep.mismatched = [(k, tuple(state[k].shape), tuple(v.shape)) for k, v in expected.items()
                      if k in state and tuple(state[k].shape) != tuple(v.shape)]
    return rep


def read_state_dict(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read tensors (and safetensors metadata) from `.pth`/`.pt` or `.safetensors` without running code."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist (or is not a file)")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes): the download or copy did not finish")
    if path.suffix == ".safetensors":
        try:
            from safetensors import safe_open

            with safe_open(str(path), "pt") as f:
                meta = f.metadata() or {}
            return load_file(str(path)), meta
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"checkpoint {path} is not a readable .safetensors file "
                                  f"(truncated or corrupt?): {e}") from None
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001  torch raises many types for bad files
        msg = str(e).splitlines()[0][:300]
        if "weights_only" in str(e) or "Unsupported global" in str(e):
            raise CheckpointError(f"checkpoint {path} contains Python objects that would have to run code to "
                                  f"load; refusing (only tensors are accepted): {msg}") from None
        raise CheckpointError(f"checkpoint {path} is not a readable PyTorch checkpoint "
                              f"(truncated, corrupt or another format): {msg}") from None
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]  # detectron2 Checkpointer layout
    if not isinstance(obj, dict) or not any(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"checkpoint {path} holds no state dict (found {type(obj).__name__})")
    state = {k.removeprefix("module."): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    return state, {}


def infer_config(state: dict[str, torch.Tensor], path: Path, meta: dict[str, str]) -> UniVSConfig:
    """Which preset a state dict belongs to, from its metadata or its shapes."""
    if "univs_config" in meta:
        return get_config(meta["univs_config"])
    if any(k in state for k in TEXT_ENCODER_KEYS) and not any(k.startswith(MODEL_PREFIXES) for k in state):
        raise CheckpointError(f"{path} is a CLIP text-encoder file, not a UniVS checkpoint: pass it as the "
                              f"text encoder, and the UniVS checkpoint (e.g. univs_r50_stage3*.pth) as the model")
    if not any(k.startswith(MODEL_PREFIXES) for k in state):
        sample = ", ".join(list(state)[:5])
        raise CheckpointError(f"{path} is not a UniVS checkpoint: no backbone.* / sem_seg_head.* keys "
                              f"(first keys: {sample})")
    stem = state.get("backbone.stem.conv1.weight")
    if stem is not None:
        small = PRESETS["small"]
        return small if stem.shape[0] == small.backbone.stem_out else PRESETS["r50"]
    patch = state.get("backbone.patch_embed.proj.weight")
    if patch is not None:
        for name in ("swint", "swinb", "swinl"):
            cfg = PRESETS[name]
            deep = f"backbone.layers.2.blocks.{cfg.backbone.depths[2] - 1}.norm1.weight"
            if patch.shape[0] == cfg.backbone.embed_dim and deep in state:
                return cfg
    raise CheckpointError(f"{path}: cannot tell which UniVS backbone this checkpoint is for")


def select_weights(state: dict[str, torch.Tensor], use_ema: bool) -> dict[str, torch.Tensor]:
    """Model tensors only; with use_ema the stage-3 EMA teacher (backbone_t./sem_seg_head_t.) replaces
    the student's parameters (buffers stay the student's, as the official demo does)."""
    out = {k: v for k, v in state.items() if k.startswith(MODEL_PREFIXES)}
    if use_ema:
        teacher = {EMA_PREFIXES[p] + k[len(p):]: v for k, v in state.items() for p in EMA_PREFIXES if k.startswith(p)}
        if not teacher:
            raise CheckpointError("use_ema was requested but the checkpoint has no EMA teacher weights "
                                  "(backbone_t.* / sem_seg_head_t.*); only stage-3 files have them")
        out.update({k: v for k, v in teacher.items() if k in out and not k.endswith(("running_mean", "running_var"))})
    return out


def load_checkpoint(path: str | os.PathLike, use_ema: bool = False, config: str | None = None):
    """Build the right model for a checkpoint and load it -> UniVS (eval mode, fp32, CPU)."""
    from .modeling.univs import build_univs

    path = Path(path)
    state, meta = read_state_dict(path)
    cfg = get_config(config) if config else infer_config(state, path, meta)
    model = build_univs(cfg)
    weights = select_weights(state, use_ema)
    rep = compare_keys(weights, model.state_dict())
    if not rep.ok:
        raise CheckpointError(f"checkpoint {path} does not fit the {cfg.name} model config: {rep.describe()}. "
                              f"Is the config right for this file (backbone mismatch)?")
    # official quirk: cls_temp and reid_temp share storage, so the loaded value is reid_temp's
    key = "sem_seg_head.predictor."
    weights[key + "cls_temp.weight"] = weights[key + "reid_temp.weight"]
    model.load_state_dict(weights, strict=True)
    return model


def atomic_save_safetensors(tensors: dict[str, torch.Tensor], dst: Path, metadata: dict[str, str]) -> None:
    """Write to a temporary file in the destination folder, then rename: never a half-written file."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=dst.name + ".", suffix=".tmp", dir=dst.parent)
    os.close(fd)
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp, metadata=metadata)
        os.replace(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def convert_checkpoint(src: str | os.PathLike, dst: str | os.PathLike | None = None, use_ema: bool = False,
                       overwrite: bool = False) -> Path:
    """Convert an official `.pth` into `.safetensors` (model tensors only, config in the metadata).

    The source is never modified; an existing destination is kept unless overwrite=True."""
    src = Path(src)
    dst = Path(dst) if dst else src.with_suffix(".safetensors")
    if dst.resolve() == src.resolve():
        raise CheckpointError(f"refusing to convert {src} onto itself; choose another output path")
    if dst.exists() and not overwrite:
        raise CheckpointError(f"{dst} already exists; pass overwrite=True (--overwrite) to replace it")
    state, meta = read_state_dict(src)
    cfg = infer_config(state, src, meta)
    weights = select_weights(state, use_ema)
    from .modeling.univs import build_univs

    with torch.device("meta"):
        expected = build_univs(cfg).state_dict()
    rep = compare_keys(weights, expected)
    if not rep.ok:
        raise CheckpointError(f"checkpoint {src} does not fit the {cfg.name} model config: {rep.describe()}")
    info = {"univs_config": cfg.name, "source": src.name, "ema": json.dumps(use_ema)}
    atomic_save_safetensors(weights, dst, info)
    return dst
