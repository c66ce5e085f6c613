"""A training run's recipe (`TrainConfig`) and its state on disk: the training checkpoint `last.pt`.

Used by the loop (`univs_train.train`), the export (`univs_train.export`) and the checks
(`univs_train.evaluate`); it imports none of them.
"""
from __future__ import annotations

import json
import numbers
import os
import random
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from univs_engine.checkpoint import (CheckpointError, atomic_write, check_finite, load_weights,
                                     looks_like_safetensors, torch_load_tensors)
from univs_engine.config import get_config

from .criterion import LossConfig, TrainingModel


@dataclass
class TrainConfig:
    config: str = "small"
    iterations: int = 5500
    seed: int = 0
    size: int = 256                 # square training frames
    clip_len: int = 3               # stage 2 clip length
    stage1_fraction: float = 0.35   # first part of the run is image-level (T = 1)
    batch_images: int = 6           # stage 1: clips of one frame per iteration
    batch_clips: int = 3            # stage 2: clips per iteration
    video_frames: int = 8           # frames of each generated video (the clip is cut from it)
    max_prompts: int = 4            # prompt targets per clip
    lr: float = 3e-4
    weight_decay: float = 0.05
    warmup: int = 200
    min_lr_ratio: float = 0.05      # cosine decay to lr * min_lr_ratio
    grad_clip: float = 1.0
    norm: str = "BN"                # backbone normalisation while training (exported as FrozenBN)
    checkpoint_minutes: float = 3.0
    checkpoint_every: int = 0       # also every N iterations when > 0
    log_every: int = 10
    stage3_iterations: int = 600    # the last N iterations: long clips, frozen encoder (part of `iterations`)
    stage3_clip_len: int = 5
    stage3_lr_ratio: float = 0.2    # stage-3 lr = lr * ratio, cosine to a tenth of that
    token_rows: bool = True         # train the token-table rows the synthetic text uses (a delta table)
    token_lr_mult: float = 10.0     # learning-rate multiplier of those rows
    pretrain_iterations: int = 2500 # stage 0, the first N iterations: the backbone names object crops
    pretrain_lr: float = 3e-3       # (constant, after a short warmup)
    pretrain_videos: int = 8        # training videos whose things are cropped per stage-0 iteration
    loss: LossConfig = field(default_factory=LossConfig)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        """A saved config; fields it predates take the value that meant "off" (as when the run was made)."""
        d = {**_ABSENT_MEANS_OFF, **d}
        loss = LossConfig(**{**_ABSENT_LOSS_MEANS_OFF, **d.pop("loss", {})})
        known = {f.name for f in fields(cls)}
        return cls(loss=loss, **{k: v for k, v in d.items() if k in known})


_ABSENT_MEANS_OFF = {"stage3_iterations": 0, "token_rows": False, "pretrain_iterations": 0}
_ABSENT_LOSS_MEANS_OFF = {"w_class_sep": 0.0, "w_crop": 0.0}


# ------------------------------------------------------------------------------------------ checkpoints
# A training checkpoint (`last.pt`) is a safetensors file: every tensor of the state (model, optimizer
# moments, RNG states) is a tensor of the file, and the rest (iteration, config, history, optimizer
# hyper-parameters, Python RNG state) is JSON in its metadata, with tensors referenced by name. Reading it
# runs no code. Checkpoints written before this format (torch.save pickles) are read with
# torch.load(weights_only=True): plain containers, numbers and tensors only.
STATE_FORMAT = "univs-training-state-v1"
_TENSOR, _TUPLE, _ITEMS = "__tensor__", "__tuple__", "__items__"
_MARKERS = (_TENSOR, _TUPLE, _ITEMS)


def _encode(obj, tensors: dict[str, torch.Tensor], where: str):
    """JSON-able form of `obj`; its tensors move to `tensors` (named by their place in the state)."""
    if isinstance(obj, torch.Tensor):
        name, n = where or "tensor", 1
        while name in tensors:
            n += 1
            name = f"{where}#{n}"
        tensors[name] = obj.detach().to("cpu").clone(memory_format=torch.contiguous_format)
        return {_TENSOR: name}
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, numbers.Integral):
        return int(obj)
    if isinstance(obj, numbers.Real):
        return float(obj)
    if isinstance(obj, tuple):
        return {_TUPLE: [_encode(v, tensors, f"{where}/{i}") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, tensors, f"{where}/{i}") for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        if all(isinstance(k, str) and k not in _MARKERS for k in obj):
            return {k: _encode(v, tensors, f"{where}/{k}" if where else k) for k, v in obj.items()}
        return {_ITEMS: [[_encode(k, tensors, f"{where}/key"), _encode(v, tensors, f"{where}/{k}")]
                         for k, v in obj.items()]}
    raise TypeError(f"training state holds a {type(obj).__name__} at {where or 'the top'}; only tensors, numbers, "
                    "strings, None, lists, tuples and dicts are stored")


def _decode(obj, tensors: dict[str, torch.Tensor], path: Path):
    if isinstance(obj, list):
        return [_decode(v, tensors, path) for v in obj]
    if isinstance(obj, dict):
        if len(obj) == 1 and next(iter(obj)) in _MARKERS:
            (tag, val), = obj.items()
            if tag == _TENSOR:
                if not isinstance(val, str) or val not in tensors:
                    raise CheckpointError(f"training checkpoint {path} refers to a tensor {val!r} it does not hold")
                return tensors[val]
            if not isinstance(val, list):
                raise CheckpointError(f"training checkpoint {path}: malformed {tag} entry")
            if tag == _TUPLE:
                return tuple(_decode(v, tensors, path) for v in val)
            out = {}
            for item in val:
                if not (isinstance(item, list) and len(item) == 2):
                    raise CheckpointError(f"training checkpoint {path}: malformed {tag} entry")
                key = _decode(item[0], tensors, path)
                if not isinstance(key, (str, int, float, bool, tuple)) and key is not None:
                    raise CheckpointError(f"training checkpoint {path}: a dict key is a {type(key).__name__}")
                out[key] = _decode(item[1], tensors, path)
            return out
        return {k: _decode(v, tensors, path) for k, v in obj.items()}
    return obj  # JSON scalars: None, bool, int, float, str


def write_state_file(state: dict, path: str | os.PathLike) -> Path:
    """Write a state tree (nested dicts/lists/tuples of tensors, numbers and strings) atomically: a temporary
    file in the same folder, fsync, then os.replace, so a reader never sees a partial checkpoint and a crash
    (or a full disk: CheckpointWriteError, an OSError) leaves the previous one intact."""
    tensors: dict[str, torch.Tensor] = {}
    tree = json.dumps(_encode(state, tensors, ""), separators=(",", ":"))
    meta = {"format": STATE_FORMAT, "state": tree}
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


def _is_torch_pickle(path: Path) -> bool:
    """A checkpoint written by torch.save before the safetensors format (zip archive or legacy pickle)."""
    if looks_like_safetensors(path):
        return False
    with open(path, "rb") as fh:
        head = fh.read(2)
    return head == b"PK" or (len(head) == 2 and head[0] == 0x80)


def read_state_file(path: str | os.PathLike):
    """The state tree of `write_state_file` (or of a pre-safetensors torch.save checkpoint, read with
    weights_only=True); never runs code from the file. Problems are CheckpointErrors naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"training checkpoint {path} does not exist (or is not a file)")
    if path.stat().st_size == 0:
        raise CheckpointError(f"training checkpoint {path} is empty (0 bytes): the run was interrupted while "
                              f"writing it or the copy did not finish")
    if _is_torch_pickle(path):
        return torch_load_tensors(path, what="training checkpoint")
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k).clone() for k in f.keys()}  # own memory, not a map of the file
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"training checkpoint {path} is not readable (truncated, corrupt or another "
                              f"format): {str(e).splitlines()[0][:200] if str(e) else type(e).__name__}") from None
    if meta.get("format") != STATE_FORMAT or "state" not in meta:
        raise CheckpointError(f"training checkpoint {path} is a safetensors file but not a UniVS training state "
                              f"(format {meta.get('format')!r}, expected {STATE_FORMAT!r})")
    try:
        tree = json.loads(meta["state"])
    except ValueError as e:
        raise CheckpointError(f"training checkpoint {path}: its state record is not valid JSON ({e})") from None
    return _decode(tree, tensors, path)


@dataclass
class RunState:
    """A run in progress: what its training checkpoint (`last.pt`) saves and restores."""
    model: TrainingModel
    optimizer: torch.optim.Optimizer
    config: TrainConfig
    py: random.Random               # Python generator of the run's random decisions
    gen: torch.Generator            # torch generator of the run's random decisions
    iteration: int = 0              # iterations done
    history: list[dict] = field(default_factory=list)  # the log records so far
    wall_time: float = 0.0          # seconds trained so far, all calls together


def save_checkpoint(path: str | os.PathLike, run: RunState) -> None:
    write_state_file({
        "model": run.model.state_dict(), "optimizer": run.optimizer.state_dict(), "iteration": run.iteration,
        "train_config": asdict(run.config), "rng": _rng_state(run.py, run.gen), "history": run.history,
        "wall_time": run.wall_time,
    }, path)


def load_training_checkpoint(path: str | os.PathLike) -> dict:
    """A run's `last.pt` as a dict (model, optimizer, iteration, train_config, rng, history, wall_time), its
    layout and its tensors checked (finite values); never runs code from the file."""
    path = Path(path)
    state = read_state_file(path)

    def bad(what: str):
        raise CheckpointError(f"training checkpoint {path} is not a UniVS training state: {what}")

    if not isinstance(state, dict):
        bad(f"it holds a {type(state).__name__}, not a dict")
    for key, kind in (("model", dict), ("optimizer", dict), ("train_config", dict), ("rng", dict), ("history", list)):
        if not isinstance(state.get(key), kind):
            bad(f"{key!r} is missing or not a {kind.__name__}")
    it = state.get("iteration")
    if isinstance(it, bool) or not isinstance(it, int) or it < 0:
        bad("'iteration' is missing or not a count")
    if not isinstance(state.get("wall_time", 0.0), (int, float)):
        bad("'wall_time' is not a number")
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state["model"].items()):
        bad("'model' is not a state dict of tensors")
    opt = state["optimizer"]
    if not isinstance(opt.get("state"), dict) or not isinstance(opt.get("param_groups"), list):
        bad("'optimizer' is not an optimizer state dict")
    rng = state["rng"]
    if not (isinstance(rng.get("python"), tuple) and all(isinstance(rng.get(k), torch.Tensor) and rng[k].dtype == torch.uint8
                                                           for k in ("torch", "generator"))):
        bad("'rng' is not a saved random-generator state")
    check_finite(state["model"], path, "training checkpoint")
    moments = {f"optimizer.state.{i}.{name}": v for i, s in opt["state"].items() if isinstance(s, dict)
               for name, v in s.items() if isinstance(v, torch.Tensor)}
    check_finite(moments, path, "training checkpoint")
    return state


def restore_run(state: dict, path: Path, run: RunState, before_rng: Callable[[], None] | None = None) -> None:
    """Load a checked training state into `run` (model, optimizer, generators, iteration, history, wall time;
    CheckpointError if it does not fit them); `before_rng` runs between the optimizer and the generators, as it
    always has."""
    load_weights(run.model, state["model"], path, "the training model of this run", what="training checkpoint")
    try:
        run.optimizer.load_state_dict(state["optimizer"])
    except (ValueError, KeyError, TypeError, RuntimeError, IndexError) as e:
        raise CheckpointError(f"training checkpoint {path} does not fit this run's optimizer: "
                              f"{str(e).splitlines()[0][:200] if str(e) else type(e).__name__}") from None
    if before_rng is not None:
        before_rng()
    try:
        _set_rng_state(state["rng"], run.py, run.gen)
    except (ValueError, KeyError, TypeError, RuntimeError, IndexError) as e:
        raise CheckpointError(f"training checkpoint {path}: its random-generator state cannot be restored: "
                              f"{str(e).splitlines()[0][:200] if str(e) else type(e).__name__}") from None
    run.iteration, run.history = int(state["iteration"]), list(state["history"])
    run.wall_time = float(state.get("wall_time", 0.0))


def config_of(state: dict, path: Path) -> TrainConfig:
    """The TrainConfig saved in a checked training state (CheckpointError if it is not one)."""
    try:
        return TrainConfig.from_dict(dict(state["train_config"]))
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"training checkpoint {path}: its train_config is not valid ({e})") from None


def _rng_state(py: random.Random, gen: torch.Generator) -> dict:
    return {"python": py.getstate(), "torch": torch.get_rng_state(), "generator": gen.get_state()}


def _set_rng_state(state: dict, py: random.Random, gen: torch.Generator) -> None:
    py.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    gen.set_state(state["generator"])


def build_training_model(tc: TrainConfig) -> TrainingModel:
    torch.manual_seed(tc.seed)
    return TrainingModel(get_config(tc.config), norm=tc.norm, crop_head=tc.pretrain_iterations > 0)


def load_training_model(path: str | os.PathLike) -> tuple[TrainingModel, dict, TrainConfig]:
    """(training model with the weights of checkpoint `path`, its checked state, its TrainConfig)."""
    state = load_training_checkpoint(path)
    tc = config_of(state, Path(path))
    model = build_training_model(tc)
    if "token_delta" in state["model"]:
        model.enable_token_delta()
    load_weights(model, state["model"], path, "the training model of its config", what="training checkpoint")
    return model, state, tc
