"""Train the small UniVS model on the synthetic video world (CPU friendly).

Stage 0 teaches the backbone shapes from object crops (standing in for ImageNet pre-training); stage 1
is image-level (clips of one frame), stage 2 clip-level (clips of `clip_len` frames), as the paper's
first two stages; stage 3 (the last `stage3_iterations`) uses longer clips with the backbone and pixel
decoder frozen, at a lower learning rate. Clips are generated on the fly from training-split seeds that
are a function of (seed, iteration), and every random decision draws from generators saved in the
checkpoint, so an interrupted run resumed from its checkpoint continues where it stopped.

    univs train --out /tmp/univs_train              # from a clone; the defaults are the shipped model's recipe
    python -m univs_train.train --out /tmp/univs_train     (the same, from the repository root)
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Sequence

import torch

from univs_engine.atomic import atomic_file
from univs_engine.checkpoint import CheckpointError

from .clips import JITTERED_CROP, PLAIN_CROP, clip_crops, sample_clip, sample_crops
from .criterion import LossConfig, TrainingModel, compute_losses
from .export import export_model, run_metadata
from .state import (RunState, TrainConfig, build_training_model, config_of, load_training_checkpoint, restore_run,
                    save_checkpoint)
from .synthetic import SPLIT_SIZE

CHECKPOINT_NAME = "last.pt"
# a resumed run keeps its config, except logging, the stage-3 extension of the schedule, the token rows and the
# loss weights (fine-tuning extensions)
RESUMABLE = ("checkpoint_minutes", "checkpoint_every", "log_every", "stage3_iterations", "stage3_clip_len",
             "stage3_lr_ratio", "token_rows", "token_lr_mult")


@dataclass
class TrainOptions:
    """One call of `train`: the run folder and how this call runs. The run's recipe is its TrainConfig (saved
    with the run); the rest is about this call only."""
    out_dir: str | os.PathLike      # run folder: last.pt, train_config.json, log.jsonl, the exported weights
    config: TrainConfig | None = None  # a new run's recipe (default TrainConfig()); a resumed run keeps its own
    iterations: int | None = None   # total iterations (also extends or shortens a resumed run)
    seed: int | None = None         # seed of a new run
    resume: bool = True             # continue out_dir/last.pt when it exists
    progress: bool = True           # tqdm bar on stderr
    threads: int | None = 2         # torch CPU threads (None: as they are)
    export: str | os.PathLike | None | bool = None  # the weights of a finished run: this path, default
    #                                 out_dir/univs_small.safetensors (None), or none (False)
    stop_after: int | None = None   # end this call after N iterations (checkpoint written), as an interruption would
    overrides: dict = field(default_factory=dict)  # TrainConfig / LossConfig fields (on resume: RESUMABLE, loss ones)


# ------------------------------------------------------------------------------------------ schedule
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


# ------------------------------------------------------------------------------------------ training
PLAIN_CROP_FRACTION = 0.3  # of stage 0


def _crop_loss(model: TrainingModel, crops: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    return model.crop_loss(torch.cat([c for c, _ in crops]), torch.cat([y for _, y in crops]))


def _step(run: RunState, stage: int) -> tuple[int, dict[str, float]]:
    """One optimisation step of `stage` at iteration run.iteration -> (clip length, loss parts with the total)."""
    model, tc, it = run.model, run.config, run.iteration
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
        loss = compute_losses(model, clips, tc.loss, run.py, run.gen)
        total, parts = loss.total, dict(loss.parts)
        if tc.loss.w_crop > 0 and model.crop_head is not None and stage < 3:
            crop_ce = _crop_loss(model, [clip_crops(c) for c in clips])
            total = total + tc.loss.w_crop * crop_ce
            parts["crop_ce"] = float(crop_ce.detach())
    run.optimizer.zero_grad(set_to_none=True)
    total.backward()
    params = [p for p in model.parameters() if p.grad is not None]
    gnorm = torch.nn.utils.clip_grad_norm_(params, tc.grad_clip) if tc.grad_clip else torch.zeros(())
    if not torch.isfinite(total):
        raise FloatingPointError(f"non-finite loss at iteration {it}: {parts}")
    run.optimizer.step()
    return T, dict(parts, total=float(total.detach()), grad_norm=float(gnorm))


def _resolve_config(opts: TrainOptions, state: dict | None, path: Path) -> TrainConfig:
    """The run's TrainConfig: a resumed run's own (saved) one or a copy of opts.config, with opts' overrides."""
    tc = config_of(state, path) if state is not None else copy.deepcopy(opts.config or TrainConfig())
    if opts.iterations is not None:
        tc.iterations = int(opts.iterations)
    if opts.seed is not None and state is None:
        tc.seed = int(opts.seed)
    loss_fields = {f.name for f in fields(LossConfig)}
    for k, v in opts.overrides.items():
        if k in loss_fields:  # loss weights etc. (may change on resume, e.g. for a fine-tuning extension)
            setattr(tc.loss, k, v)
        elif state is None or k in RESUMABLE:
            setattr(tc, k, v)
    if not 0 <= tc.stage3_iterations <= tc.iterations:
        raise ValueError(f"stage3_iterations (--stage3-iterations) is {tc.stage3_iterations}; it must lie in "
                         f"[0, iterations = {tc.iterations}]")
    if not 0 <= tc.pretrain_iterations <= main_iterations(tc):
        raise ValueError(f"pretrain_iterations (--pretrain-iterations) is {tc.pretrain_iterations}; it must lie in "
                         f"[0, iterations - stage3_iterations = {main_iterations(tc)}]: give fewer stage-0 "
                         "iterations or more iterations in all")
    return tc


def _start_run(opts: TrainOptions, ckpt_path: Path) -> RunState:
    """A new run, or the run of `ckpt_path` restored (with opts.resume and the file there)."""
    state = load_training_checkpoint(ckpt_path) if opts.resume and ckpt_path.is_file() else None
    tc = _resolve_config(opts, state, ckpt_path)
    model = build_training_model(tc)
    optimizer = torch.optim.AdamW(param_groups(model, tc.weight_decay), lr=tc.lr, betas=(0.9, 0.999))
    run = RunState(model, optimizer, tc, random.Random(tc.seed), torch.Generator().manual_seed(tc.seed))

    def add_token_rows() -> None:
        # its own parameter group (added last, so earlier optimizer states still load)
        model.enable_token_delta()
        optimizer.add_param_group({"params": [model.token_delta], "weight_decay": 0.0, "lr_mult": tc.token_lr_mult})

    if state is not None:
        had_rows = "token_delta" in state["model"]
        if had_rows:
            add_token_rows()
        # fine-tuning extension of a run trained without token rows: added before the generators are restored
        restore_run(state, ckpt_path, run, before_rng=add_token_rows if tc.token_rows and not had_rows else None)
    elif tc.token_rows:
        add_token_rows()
    for g in optimizer.param_groups:
        if "lr_mult" in g:
            g["lr_mult"] = tc.token_lr_mult
    return run


def _log_record(run: RunState, running: dict[str, float], stage: int, T: int) -> dict:
    """The log record of the iterations summed in `running` (means over them)."""
    tc, it = run.config, run.iteration
    n = tc.log_every if it % tc.log_every == 0 else max(it % tc.log_every, 1)
    return {"iteration": it, "stage": stage, "T": T, "lr": run.optimizer.param_groups[0]["lr"],
            "wall": round(run.wall_time, 1), **{k: round(v / n, 4) for k, v in running.items()}}


def _iterate(run: RunState, out: Path, end: int, bar) -> None:
    """Iterations run.iteration .. end: a step each, a record in out/log.jsonl every log_every iterations and at
    `end`, a checkpoint every checkpoint_minutes (and checkpoint_every iterations) and at `end`."""
    tc = run.config
    wall0, t0 = run.wall_time, time.time()
    t_last_ckpt = t0
    running: dict[str, float] = {}
    with open(out / "log.jsonl", "a") as log_file:
        while run.iteration < end:
            stage = stage_of(run.iteration, tc)
            for g in run.optimizer.param_groups:
                g["lr"] = tc.lr * lr_factor(run.iteration, tc) * g.get("lr_mult", 1.0)
            T, parts = _step(run, stage)
            run.iteration += 1
            run.wall_time = wall0 + time.time() - t0
            it = run.iteration
            for k, v in parts.items():
                running[k] = running.get(k, 0.0) + v
            if it % tc.log_every == 0 or it == end:
                rec = _log_record(run, running, stage, T)
                run.history.append(rec)
                log_file.write(json.dumps(rec) + "\n")
                log_file.flush()
                running = {}
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{parts['total']:.2f}", T=T)
            due = time.time() - t_last_ckpt >= tc.checkpoint_minutes * 60
            if due or (tc.checkpoint_every and it % tc.checkpoint_every == 0) or it == end:
                save_checkpoint(out / CHECKPOINT_NAME, run)
                t_last_ckpt = time.time()
    run.wall_time = wall0 + time.time() - t0


def train(opts: TrainOptions) -> dict:
    """Train (or resume) the run in opts.out_dir; returns a summary dict (iteration, iterations, wall_time_s,
    checkpoint, and export when the finished run's weights were exported)."""
    if opts.threads:
        torch.set_num_threads(opts.threads)
    out = Path(opts.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / CHECKPOINT_NAME
    run = _start_run(opts, ckpt_path)
    tc = run.config
    run.model.train()
    with atomic_file(out / "train_config.json") as tmp:
        tmp.write_text(json.dumps(asdict(tc), indent=1))
    end = tc.iterations if opts.stop_after is None else min(tc.iterations, run.iteration + opts.stop_after)
    bar = None
    if opts.progress:
        from tqdm import tqdm

        bar = tqdm(total=tc.iterations, initial=run.iteration, desc="univs train", dynamic_ncols=True, file=sys.stderr)
    try:
        _iterate(run, out, end, bar)
    finally:
        if bar is not None:
            bar.close()
    summary = {"iteration": run.iteration, "iterations": tc.iterations, "wall_time_s": round(run.wall_time, 1),
               "checkpoint": str(ckpt_path)}
    if run.iteration >= tc.iterations and opts.export is not False:
        dst = Path(opts.export) if opts.export else out / "univs_small.safetensors"
        export_model(run.model, dst, extra_metadata=run_metadata(tc, run.iteration, run.wall_time))
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
    opts = TrainOptions(a.out, config=tc, iterations=a.iterations, resume=not a.no_resume, progress=not a.no_progress,
                        threads=a.threads, export=a.export, stop_after=a.stop_after,
                        overrides={"checkpoint_minutes": a.checkpoint_minutes, **extra})
    try:
        summary = train(opts)
    except CheckpointError as e:  # a refused or unwritable checkpoint: one line, no traceback
        print(f"univs train: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
