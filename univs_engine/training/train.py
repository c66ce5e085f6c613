"""Train the small UniVS model on the synthetic video world (CPU friendly).

Stage 0 teaches the backbone shapes from object crops (standing in for ImageNet pre-training); stage 1
is image-level (clips of one frame), stage 2 clip-level (clips of `clip_len` frames), as the paper's
first two stages; stage 3 (the last `stage3_iterations`) uses longer clips with the backbone and pixel
decoder frozen, at a lower learning rate. Clips are generated on the fly from training-split seeds that
are a function of (seed, iteration), and every random decision draws from generators saved in the
checkpoint, so an interrupted run resumed from its checkpoint continues where it stopped.

    univs train --out /tmp/univs_train      # the defaults are the shipped model's recipe
    python -m univs_engine.training.train --out /tmp/univs_train     (the same)
"""
from __future__ import annotations

import argparse
import json
import math
import numbers
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable, Sequence

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..checkpoint import (CheckpointError, atomic_write, check_finite, load_weights, looks_like_safetensors,
                          torch_load_tensors)
from ..config import get_config
from ..data.synthetic import SPLIT_SIZE
from .criterion import LossConfig, TrainingModel, compute_losses
from .data import JITTERED_CROP, PLAIN_CROP, clip_crops, sample_clip, sample_crops

CHECKPOINT_NAME = "last.pt"


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


def save_checkpoint(path, model, optimizer, iteration, tc: TrainConfig, py, gen, history, wall) -> None:
    write_state_file({
        "model": model.state_dict(), "optimizer": optimizer.state_dict(), "iteration": iteration,
        "train_config": asdict(tc), "rng": _rng_state(py, gen), "history": history, "wall_time": wall,
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


def _restore(state: dict, path: Path, model, optimizer, py: random.Random, gen: torch.Generator,
             before_rng: Callable[[], None] | None = None) -> None:
    """Load a checked training state into the run's model, optimizer and generators (CheckpointError if it
    does not fit them); `before_rng` runs between the optimizer and the generators, as it always has."""
    load_weights(model, state["model"], path, "the training model of this run", what="training checkpoint")
    try:
        optimizer.load_state_dict(state["optimizer"])
    except (ValueError, KeyError, TypeError, RuntimeError, IndexError) as e:
        raise CheckpointError(f"training checkpoint {path} does not fit this run's optimizer: "
                              f"{str(e).splitlines()[0][:200] if str(e) else type(e).__name__}") from None
    if before_rng is not None:
        before_rng()
    try:
        _set_rng_state(state["rng"], py, gen)
    except (ValueError, KeyError, TypeError, RuntimeError, IndexError) as e:
        raise CheckpointError(f"training checkpoint {path}: its random-generator state cannot be restored: "
                              f"{str(e).splitlines()[0][:200] if str(e) else type(e).__name__}") from None


def _config_of(state: dict, path: Path) -> TrainConfig:
    try:
        return TrainConfig.from_dict(dict(state["train_config"]))
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"training checkpoint {path}: its train_config is not valid ({e})") from None


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on norms, biases, embeddings, queries and temperatures."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        skip = p.ndim < 2 or any(k in name for k in ("embed", "query_feat", "temp", "prompt_", "positional"))
        (no_decay if skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def main_iterations(tc: TrainConfig) -> int:
    """End of stages 1-2 (the warmup + cosine schedule, which starts after stage 0)."""
    return tc.iterations - tc.stage3_iterations


def stage_of(it: int, tc: TrainConfig) -> int:
    if it < tc.pretrain_iterations:
        return 0
    if it >= main_iterations(tc):
        return 3
    first = tc.pretrain_iterations
    return 1 if it - first < int(tc.stage1_fraction * (main_iterations(tc) - first)) else 2


def lr_factor(it: int, tc: TrainConfig) -> float:
    main = main_iterations(tc)
    if it < tc.pretrain_iterations:
        return tc.pretrain_lr / tc.lr * min(1.0, (it + 1) / 50)
    if it >= main:
        p = (it - main) / max(tc.stage3_iterations, 1)
        return tc.stage3_lr_ratio * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(p, 1.0))))
    it, main = it - tc.pretrain_iterations, main - tc.pretrain_iterations
    if it < tc.warmup:
        return 0.1 + 0.9 * it / max(tc.warmup, 1)
    p = (it - tc.warmup) / max(main - tc.warmup, 1)
    return tc.min_lr_ratio + (1 - tc.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(p, 1.0)))


def clip_seed(tc: TrainConfig, it: int, b: int) -> int:
    """Training-split video seed of clip b of iteration it (never a val/test seed)."""
    return (tc.seed * 7_919_993 + it * 64 + b) % SPLIT_SIZE


def _rng_state(py: random.Random, gen: torch.Generator) -> dict:
    return {"python": py.getstate(), "torch": torch.get_rng_state(), "generator": gen.get_state()}


def _set_rng_state(state: dict, py: random.Random, gen: torch.Generator) -> None:
    py.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    gen.set_state(state["generator"])


# ------------------------------------------------------------------------------------------ training
def build_training_model(tc: TrainConfig) -> TrainingModel:
    torch.manual_seed(tc.seed)
    return TrainingModel(get_config(tc.config), norm=tc.norm, crop_head=tc.pretrain_iterations > 0)


PLAIN_CROP_FRACTION = 0.3  # of stage 0


def _crop_loss(model: TrainingModel, crops: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    return model.crop_loss(torch.cat([c for c, _ in crops]), torch.cat([y for _, y in crops]))


def _step(model: TrainingModel, optimizer, tc: TrainConfig, it: int, stage: int, py: random.Random,
          gen: torch.Generator) -> tuple[int, dict[str, float]]:
    """One optimisation step of `stage` -> (clip length, loss parts with the total)."""
    if stage == 0:
        # plain crops first: jittered ones from scratch barely train (loss 1.9 after 800 iterations, chance 2.08)
        jitter = PLAIN_CROP if it < PLAIN_CROP_FRACTION * tc.pretrain_iterations else JITTERED_CROP
        total = _crop_loss(model, [sample_crops(clip_seed(tc, it, b), tc.size, jitter=jitter)
                                   for b in range(tc.pretrain_videos)])
        T, parts = 0, {"crop_ce": float(total.detach())}
    else:
        T = {1: 1, 2: tc.clip_len, 3: tc.stage3_clip_len}[stage]
        B = tc.batch_images if stage == 1 else tc.batch_clips
        if model.encoder_frozen != (stage == 3):
            model.freeze_encoder(stage == 3)
        vf = tc.video_frames if T > 1 else max(4, tc.video_frames // 2)
        clips = [sample_clip(clip_seed(tc, it, b), T, tc.size, vf, tc.max_prompts) for b in range(B)]
        loss = compute_losses(model, clips, tc.loss, py, gen)
        total, parts = loss.total, dict(loss.parts)
        if tc.loss.w_crop > 0 and model.crop_head is not None and stage < 3:
            crop_ce = _crop_loss(model, [clip_crops(c) for c in clips])
            total = total + tc.loss.w_crop * crop_ce
            parts["crop_ce"] = float(crop_ce.detach())
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    params = [p for p in model.parameters() if p.grad is not None]
    gnorm = torch.nn.utils.clip_grad_norm_(params, tc.grad_clip) if tc.grad_clip else torch.zeros(())
    if not torch.isfinite(total):
        raise FloatingPointError(f"non-finite loss at iteration {it}: {parts}")
    optimizer.step()
    return T, dict(parts, total=float(total.detach()), grad_norm=float(gnorm))


def train(out_dir: str | os.PathLike, iterations: int | None = None, resume: bool = True, seed: int | None = None,
          config: TrainConfig | None = None, progress: bool = True, threads: int | None = 2,
          export: str | os.PathLike | None | bool = None, stop_after: int | None = None, **overrides) -> dict:
    """Train (or resume) a run in `out_dir`; returns a summary dict.

    `iterations`/`seed` override the TrainConfig; further keyword arguments override its fields. With
    resume=True an existing `out_dir/last.pt` is continued (its saved TrainConfig wins, except
    `iterations`). `stop_after` ends this call after that many iterations (a checkpoint is written), as an
    interruption would. When the run is complete the weights are exported to `export` (default
    out_dir/univs_small.safetensors; export=False skips it).
    """
    if threads:
        torch.set_num_threads(threads)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / CHECKPOINT_NAME
    tc = config or TrainConfig()
    state = None
    if resume and ckpt_path.is_file():
        state = load_training_checkpoint(ckpt_path)
        tc = _config_of(state, ckpt_path)
    if iterations is not None:
        tc.iterations = int(iterations)
    if seed is not None and state is None:
        tc.seed = int(seed)
    # a resumed run keeps its config, except logging, the stage-3 extension of the schedule, the token rows
    # and the loss weights (fine-tuning extensions)
    resumable = ("checkpoint_minutes", "checkpoint_every", "log_every", "stage3_iterations", "stage3_clip_len",
                 "stage3_lr_ratio", "token_rows", "token_lr_mult")
    loss_fields = {f.name for f in fields(LossConfig)}
    for k, v in overrides.items():
        if k in loss_fields:  # loss weights etc. (may change on resume, e.g. for a fine-tuning extension)
            setattr(tc.loss, k, v)
        elif state is None or k in resumable:
            setattr(tc, k, v)
    if not 0 <= tc.stage3_iterations <= tc.iterations:
        raise ValueError(f"stage3_iterations (--stage3-iterations) is {tc.stage3_iterations}; it must lie in "
                         f"[0, iterations = {tc.iterations}]")
    if not 0 <= tc.pretrain_iterations <= main_iterations(tc):
        raise ValueError(f"pretrain_iterations (--pretrain-iterations) is {tc.pretrain_iterations}; it must lie in "
                         f"[0, iterations - stage3_iterations = {main_iterations(tc)}]: give fewer stage-0 "
                         "iterations or more iterations in all")

    model = build_training_model(tc)
    optimizer = torch.optim.AdamW(param_groups(model, tc.weight_decay), lr=tc.lr, betas=(0.9, 0.999))

    def add_token_rows() -> None:
        # its own parameter group (added last, so earlier optimizer states still load)
        model.enable_token_delta()
        optimizer.add_param_group({"params": [model.token_delta], "weight_decay": 0.0, "lr_mult": tc.token_lr_mult})

    py = random.Random(tc.seed)
    gen = torch.Generator().manual_seed(tc.seed)
    start, history, wall = 0, [], 0.0
    if state is not None:
        had_rows = "token_delta" in state["model"]
        if had_rows:
            add_token_rows()
        # fine-tuning extension of a run trained without token rows: added before the generators are restored
        _restore(state, ckpt_path, model, optimizer, py, gen,
                 before_rng=add_token_rows if tc.token_rows and not had_rows else None)
        start, history, wall = int(state["iteration"]), list(state["history"]), float(state.get("wall_time", 0.0))
    elif tc.token_rows:
        add_token_rows()
    for g in optimizer.param_groups:
        if "lr_mult" in g:
            g["lr_mult"] = tc.token_lr_mult
    model.train()
    (out / "train_config.json").write_text(json.dumps(asdict(tc), indent=1))

    end = tc.iterations if stop_after is None else min(tc.iterations, start + stop_after)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=tc.iterations, initial=start, desc="univs train", dynamic_ncols=True, file=sys.stderr)
    t_last_ckpt = time.time()
    t0 = time.time()
    wall0 = wall
    running: dict[str, float] = {}
    it = start
    log_file = open(out / "log.jsonl", "a")
    try:
        while it < end:
            stage = stage_of(it, tc)
            for g in optimizer.param_groups:
                g["lr"] = tc.lr * lr_factor(it, tc) * g.get("lr_mult", 1.0)
            T, parts = _step(model, optimizer, tc, it, stage, py, gen)
            it += 1
            for k, v in parts.items():
                running[k] = running.get(k, 0.0) + v
            if it % tc.log_every == 0 or it == end:
                n = tc.log_every if it % tc.log_every == 0 else max(it % tc.log_every, 1)
                rec = {"iteration": it, "stage": stage, "T": T, "lr": optimizer.param_groups[0]["lr"],
                       "wall": round(wall0 + time.time() - t0, 1), **{k: round(v / n, 4) for k, v in running.items()}}
                history.append(rec)
                log_file.write(json.dumps(rec) + "\n")
                log_file.flush()
                running = {}
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{parts['total']:.2f}", T=T)
            due = time.time() - t_last_ckpt >= tc.checkpoint_minutes * 60
            if due or (tc.checkpoint_every and it % tc.checkpoint_every == 0) or it == end:
                save_checkpoint(ckpt_path, model, optimizer, it, tc, py, gen, history, wall0 + time.time() - t0)
                t_last_ckpt = time.time()
    finally:
        log_file.close()
        if bar is not None:
            bar.close()
    wall = wall0 + time.time() - t0
    summary = {"iteration": it, "iterations": tc.iterations, "wall_time_s": round(wall, 1), "checkpoint": str(ckpt_path)}
    if it >= tc.iterations and export is not False:
        from .export import export_model, run_metadata

        dst = Path(export) if export else out / "univs_small.safetensors"
        export_model(model, dst, extra_metadata=run_metadata(tc, it, wall))
        summary["export"] = str(dst)
    return summary


def parse_args(argv: Sequence[str] | None = None) -> tuple[argparse.Namespace, TrainConfig, dict]:
    """`univs train` options -> (namespace, config of a new run, overrides that also apply when resuming)."""
    tc, lc = TrainConfig(), LossConfig()
    ap = argparse.ArgumentParser(prog="univs train", description="Train the small UniVS model on synthetic videos. "
                                 "With no options but --out this is the run that made the shipped model.")
    ap.add_argument("--out", required=True, help="run folder (checkpoint last.pt, log.jsonl, exported weights)")
    ap.add_argument("--iterations", type=int, default=None,
                    help=f"total iterations, stages 0-3 (default {tc.iterations}; on resume: the run's own unless "
                         "given)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-resume", action="store_true", help="start from scratch even if out/last.pt exists")
    ap.add_argument("--lr", type=float, default=tc.lr)
    ap.add_argument("--size", type=int, default=tc.size, help="square frame size (multiple of 32)")
    ap.add_argument("--clip-len", type=int, default=tc.clip_len)
    ap.add_argument("--batch-images", type=int, default=tc.batch_images)
    ap.add_argument("--batch-clips", type=int, default=tc.batch_clips)
    ap.add_argument("--stage1-fraction", type=float, default=tc.stage1_fraction)
    ap.add_argument("--pretrain-iterations", type=int, default=tc.pretrain_iterations,
                    help="stage 0, the first N iterations: the backbone learns to name object crops (cross-entropy, "
                         "a head dropped at export), standing in for the ImageNet pre-training of official backbones")
    ap.add_argument("--stage3-iterations", type=int, default=None,
                    help=f"last N iterations: stage 3 (long clips, frozen backbone + pixel decoder; default "
                         f"{tc.stage3_iterations}); may extend a finished run when given with a larger --iterations")
    ap.add_argument("--stage3-clip-len", type=int, default=tc.stage3_clip_len)
    ap.add_argument("--checkpoint-minutes", type=float, default=tc.checkpoint_minutes)
    ap.add_argument("--threads", type=int, default=2,
                    help="torch CPU threads (the shipped run used 2 on a 2-core machine, ~1.4x faster than 1)")
    ap.add_argument("--stop-after", type=int, default=None, help="stop this call after N iterations (resumable)")
    ap.add_argument("--export", default=None, help="where to write the final .safetensors")
    ap.add_argument("--w-cls", type=float, default=None,
                    help=f"classification loss weight (default {lc.w_cls}); may be changed when resuming")
    ap.add_argument("--w-crop", type=float, default=None,
                    help=f"weight of the stage-0 crop loss kept on during stages 1-2 (default {lc.w_crop}); may be "
                         "changed when resuming")
    ap.add_argument("--no-progress", action="store_true")
    a = ap.parse_args(argv)
    if a.size % 32:
        ap.error("--size must be a multiple of 32")
    return a, *_run_config(a)


def _run_config(a: argparse.Namespace) -> tuple[TrainConfig, dict]:
    """(config of a new run, overrides that also apply when resuming) from parsed `univs train` options."""
    tc = TrainConfig(iterations=a.iterations or TrainConfig.iterations, seed=a.seed, lr=a.lr, size=a.size,
                     clip_len=a.clip_len, batch_images=a.batch_images, batch_clips=a.batch_clips,
                     stage1_fraction=a.stage1_fraction, pretrain_iterations=a.pretrain_iterations,
                     checkpoint_minutes=a.checkpoint_minutes)
    extra = {}
    if a.stage3_iterations is not None:
        extra = {"stage3_iterations": a.stage3_iterations, "stage3_clip_len": a.stage3_clip_len}
    for k in ("w_cls", "w_crop"):
        if getattr(a, k) is not None:
            extra[k] = getattr(a, k)
    return tc, extra


def main(argv: Sequence[str] | None = None) -> int:
    """`univs train` entry point. Its defaults are the recipe of the shipped model (univs_engine/weights/MODEL_CARD.md)."""
    a, tc, extra = parse_args(argv)
    try:
        summary = train(a.out, a.iterations, resume=not a.no_resume, config=tc, progress=not a.no_progress,
                        threads=a.threads, export=a.export, stop_after=a.stop_after,
                        checkpoint_minutes=a.checkpoint_minutes, **extra)
    except CheckpointError as e:  # a refused or unwritable checkpoint: one line, no traceback
        print(f"univs train: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
