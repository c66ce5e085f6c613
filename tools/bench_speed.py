"""Speed table: frames per second of every task at R50 (or another config) and a given short side, for a grid of
execution modes, on CPU or CUDA, all in one process (compiled graphs are shared between rows of the same shapes).

    python tools/bench_speed.py --config r50 --size 640 --frames 12 [--device cuda] [--dtype bf16]
        [--tasks vos1,vos5,vis,vps,refvos] [--modes eager,compiled,graphs] [--cores default,grid_sample,triton]
        [--stages]

Modes: ``eager``; ``compiled`` (torch.compile of the three model stages, fullgraph); ``graphs`` (the same with
``mode="reduce-overhead"``: CUDA graphs on CUDA). Cores: the deformable-attention sampling core (``default`` is what
the engine picks for the device). Each row runs once untimed (warm-up and compilation, reported as ``first s``), then
timed; ``agree`` is the fraction of mask pixels equal to the task's first row. ``--stages`` adds the per-stage table
of the first VOS row. Weights follow the reference weight rule (speed does not depend on their values; the repository's
own rule in tests/weight_rule.py, so no reference files are needed).
"""
from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
STAGES = defaultdict(float)
TASKS = ("vos1", "vos5", "vis", "vps", "refvos")


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timed(obj, name, label, device):
    fn = getattr(obj, name)

    def wrapper(*a, **kw):
        sync(device)
        t = time.perf_counter()
        out = fn(*a, **kw)
        sync(device)
        STAGES[label] += time.perf_counter() - t
        return out

    setattr(obj, name, wrapper)
    return fn


@contextmanager
def instrument(net, device):
    """Times the backbone, pixel decoder and mask decoder (synchronised on CUDA, which costs a little speed)."""
    parts = [(net.backbone, "forward", "backbone"),
             (net.sem_seg_head.pixel_decoder, "forward_features", "pixel decoder"),
             (net.sem_seg_head.predictor, "forward", "mask decoder")]
    saved = [(obj, name, timed(obj, name, label, device)) for obj, name, label in parts]
    try:
        yield
    finally:
        for obj, name, fn in saved:
            setattr(obj, name, fn)


def video(frames, size):
    """Noise with a bright box moving right (the VOS target) and a darker one moving down."""
    h, w = size, size * 16 // 9
    rng = np.random.default_rng(0)
    v = rng.integers(0, 255, (frames, h, w, 3), dtype=np.uint8)
    for t in range(frames):
        v[t, h // 4:h // 2, w // 8 + 4 * t: w // 4 + 4 * t] = 240
        v[t, h // 8 + 3 * t: h // 4 + 3 * t, w // 2: w // 2 + w // 10] = 30
    return v


def build_model(args):
    from univs_engine.api import UniVSModel
    from univs_engine.config import get_config
    from univs_engine.modeling.text_encoder import TextEncoder, TextPromptEncoder
    from univs_engine.modeling.univs import build_univs

    sys.path.insert(0, str(ROOT / "tests"))
    import weight_rule

    net = build_univs(get_config(args.config))
    net.load_state_dict(weight_rule.official_effective_state_dict(weight_rule.make_state_dict(net.state_dict())))
    emb = weight_rule.make_tensor("clip_cls_text_emb", (3938, net.cfg.text_dim))[:40]
    text = TextPromptEncoder(TextEncoder(net.cfg.text))
    model = UniVSModel(net, text=text, class_embeddings={"builtin": emb},
                       vocabulary=[f"class {i}" for i in range(40)], vocabulary_isthing=[i < 30 for i in range(40)])
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    return model.to(args.device, dtype)


def run_task(model, task, v):
    """-> Tracks of one task on the clip `v`."""
    from univs_engine.api import Prompt, segment, track

    H, W = v.shape[1:3]
    if task.startswith("vos"):
        n = int(task[3:])
        boxes = [(W // 8 + 10 * k, H // 4, W // 4 + 10 * k, H // 2) for k in range(n)]
        return track(model, v, [Prompt(k + 1, 0, box=b) for k, b in enumerate(boxes)])
    if task == "refvos":
        return track(model, v, [Prompt(1, 0, text="the bright box moving right")])
    return segment(model, v, {"vis": "instance", "vps": "panoptic"}[task])


def id_maps(tracks):
    return np.stack([tracks.id_map(f) for f in range(tracks.num_frames)])


@contextmanager
def execution(model, mode: str, core: str):
    """Runs the model compiled or eager, with a chosen deformable-attention core; restores both after."""
    from univs_engine.modeling import ms_deform_attn

    saved_core = ms_deform_attn.MSDeformAttn.__dict__["core"]  # the staticmethod itself
    if core != "default":
        ms_deform_attn.MSDeformAttn.core = staticmethod(ms_deform_attn.core_named(core))
    from univs_engine import compiled

    if mode != "eager":
        compiled.compile_model(model.net, mode={"compiled": "default", "graphs": "reduce-overhead"}[mode])
    try:
        yield
    finally:
        compiled.uncompile(model.net)
        ms_deform_attn.MSDeformAttn.core = saved_core


def bench_row(model, task, v, mode, core, device):
    """-> (seconds of the first run, seconds of the timed run, id maps of the timed run)."""
    with execution(model, mode, core):
        sync(device)
        t0 = time.perf_counter()
        run_task(model, task, v)
        sync(device)
        t1 = time.perf_counter()
        tracks = run_task(model, task, v)
        sync(device)
        t2 = time.perf_counter()
    return t1 - t0, t2 - t1, id_maps(tracks)


def print_stages(model, v, device, frames):
    STAGES.clear()
    with instrument(model.net, device):
        t = time.perf_counter()
        run_task(model, "vos1", v)
        total = time.perf_counter() - t
    print(f"\n{'stage (vos1, eager)':>22} {'ms/frame':>10} {'share':>7}")
    for k, s in sorted(STAGES.items(), key=lambda kv: -kv[1]):
        print(f"{k:>22} {1000 * s / frames:>10.1f} {s / total:>7.1%}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="r50")
    ap.add_argument("--size", type=int, default=640)
    ap.add_argument("--frames", type=int, default=12)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32")
    ap.add_argument("--tasks", default="vos1", help=f"comma-separated, of {', '.join(TASKS)} (vosN: N box targets)")
    ap.add_argument("--modes", default="eager", help="comma-separated, of eager, compiled, graphs")
    ap.add_argument("--cores", default="default", help="comma-separated, of default, grid_sample, gather, triton")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    ap.add_argument("--stages", action="store_true", help="also print the per-stage times of eager vos1")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = build_model(args)
    v = video(args.frames, args.size)
    H, W = v.shape[1:3]
    print(f"{args.config} at {H}x{W}, {args.frames} frames, {args.device} {args.dtype}, "
          f"{torch.get_num_threads()} CPU threads, torch {torch.__version__}")
    print(f"{'task':>7} {'mode':>9} {'core':>12} {'first s':>8} {'ms/frame':>9} {'FPS':>8} {'agree':>8}")
    for task in args.tasks.split(","):
        first = None
        for mode in args.modes.split(","):
            for core in args.cores.split(","):
                warm, took, maps = bench_row(model, task, v, mode, core, args.device)
                first = maps if first is None else first
                agree = float((maps == first).mean())
                print(f"{task:>7} {mode:>9} {core:>12} {warm:>8.1f} {1000 * took / args.frames:>9.1f} "
                      f"{args.frames / took:>8.2f} {agree:>8.2%}", flush=True)
    if args.stages:
        print_stages(model, v, args.device, args.frames)


if __name__ == "__main__":
    main()
