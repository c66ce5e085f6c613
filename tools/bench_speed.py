"""Speed table: frames per second and per-stage time of prompt-guided tracking (VOS, RefVOS) and of
the category-guided tasks, for a model config at a given short side, on CPU or CUDA.

    python tools/bench_speed.py --config r50 --size 640 --frames 12 [--device cuda] [--dtype bf16]

Weights follow the reference rule (speed does not depend on their values). Stage times come from
wrapping the model's components; on CUDA every stage is synchronised, which costs a little speed.
"""
from __future__ import annotations

import argparse
import time
from collections import defaultdict
from contextlib import contextmanager

import numpy as np
import torch

STAGES = defaultdict(float)


def timed(obj, name, label, device):
    fn = getattr(obj, name)

    def wrapper(*a, **kw):
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        out = fn(*a, **kw)
        if device == "cuda":
            torch.cuda.synchronize()
        STAGES[label] += time.perf_counter() - t
        return out

    setattr(obj, name, wrapper)


@contextmanager
def instrument(net, device):
    from univs_engine.inference import vos

    timed(net.backbone, "forward", "backbone", device)
    timed(net.sem_seg_head.pixel_decoder, "forward_features", "pixel decoder", device)
    timed(net.sem_seg_head.predictor, "forward", "mask decoder", device)
    orig_sample = vos.sample_mask_prompts
    holder = type("H", (), {"sample_mask_prompts": staticmethod(orig_sample)})
    timed(holder, "sample_mask_prompts", "prompt encoding", device)
    vos.sample_mask_prompts = holder.sample_mask_prompts
    timed(vos.PromptedClipLoop, "_write_predictions", "post-processing", device)
    try:
        yield
    finally:
        vos.sample_mask_prompts = orig_sample


def video(frames, size):
    h, w = size, size * 16 // 9
    rng = np.random.default_rng(0)
    v = rng.integers(0, 255, (frames, h, w, 3), dtype=np.uint8)
    for t in range(frames):
        v[t, h // 4:h // 2, w // 8 + 4 * t: w // 4 + 4 * t] = 240
    return v


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="r50")
    ap.add_argument("--size", type=int, default=640)
    ap.add_argument("--frames", type=int, default=12)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32")
    ap.add_argument("--targets", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import importlib.util
    import sys
    from pathlib import Path

    from univs_engine.api import Prompt, UniVSModel, track
    from univs_engine.config import get_config
    from univs_engine.modeling.univs import build_univs

    ref = Path(__file__).resolve().parents[2] / "shared" / "reference"
    net = build_univs(get_config(args.config))
    if (ref / "make_weights.py").exists():
        sys.path.insert(0, str(ref))
        import make_weights as mw

        net.load_state_dict(mw.official_effective_state_dict(mw.make_state_dict(net.state_dict())))
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    model = UniVSModel(net).to(args.device, dtype)
    v = video(args.frames, args.size)
    H, W = v.shape[1:3]
    prompts = [Prompt(k + 1, 0, box=(W // 8 + 10 * k, H // 4, W // 4 + 10 * k, H // 2)) for k in range(args.targets)]
    track(model, v[:3], prompts)  # warm-up
    STAGES.clear()
    with instrument(net, args.device):
        t = time.perf_counter()
        track(model, v, prompts)
        total = time.perf_counter() - t
    print(f"VOS, {args.config} at {H}x{W}, {args.frames} frames, {args.targets} target(s), {args.device} {args.dtype}, "
          f"{args.threads} threads")
    print(f"{'stage':>18} {'ms/frame':>10} {'share':>7}")
    for k, v_ in sorted(STAGES.items(), key=lambda kv: -kv[1]):
        print(f"{k:>18} {1000 * v_ / args.frames:>10.1f} {v_ / total:>7.1%}")
    print(f"{'total':>18} {1000 * total / args.frames:>10.1f}   FPS {args.frames / total:.2f}")


if __name__ == "__main__":
    main()
