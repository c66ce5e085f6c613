"""Decoding + preprocessing speed: the old torch uint8 resize against the exact Pillow resize, side by side.

    python tools/bench_preprocess.py [--frames 60] [--repeats 3] [--video clip.mp4] [--threads N]

A 1080p H.264 clip is generated (moving gradients, shapes and grain, so that the decoder has real work), then for
each preset size (R50: short side 640, long side <= 1333, clips of 5; small model: 256 / 640, clips of 3) and each
path the clip is decoded and preprocessed clip by clip, as `api.FrameFeeder` does (synchronous reader, frames
stacked per clip, resize + normalise + pad). Runs of the two paths alternate, so both see the same machine load;
the table gives frames/s of the best and the median run (higher is better; "vs old" is the change in frames/s),
the CPU time per frame summed over all threads (less sensitive to other load on the machine), and the same for
the preprocessing alone on frames already in memory.

"old torch" is the resize this engine used before (torch's uint8 antialiased bilinear on an NCHW copy, 14-bit
weights, differs from Pillow by one grey level on ~0.1 % of values); "new pillow" is `preprocess_frames` now
(Pillow's own BILINEAR, bit-exact, spread over threads). Both include the same normalisation and padding.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from univs_engine.io.video import (  # noqa: E402
    PIXEL_MEAN,
    PIXEL_STD,
    VideoSource,
    preprocess_frames,
    resize_shortest_edge_size,
)
from univs_engine.presets import R50, SMALL  # noqa: E402


def old_preprocess(frames, min_size, max_size, size_divisibility=32, square=None, mean=PIXEL_MEAN, std=PIXEL_STD):
    """The previous `preprocess_frames` (torch uint8 antialias resize), kept verbatim for comparison."""
    x = torch.from_numpy(np.ascontiguousarray(np.asarray(frames))).permute(0, 3, 1, 2)
    h, w = int(x.shape[-2]), int(x.shape[-1])
    nh, nw = resize_shortest_edge_size(h, w, min_size, max_size)
    if (h, w) != (nh, nw):
        x = F.interpolate(x.contiguous(), size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)
    m = torch.as_tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    x = (x.float() - m) / s
    ph, pw = nh, nw
    if square is not None:
        ph = pw = int(square)
    if size_divisibility and size_divisibility > 1:
        d = int(size_divisibility)
        ph, pw = (ph + d - 1) // d * d, (pw + d - 1) // d * d
    if (ph, pw) != (nh, nw):
        x = F.pad(x, (0, pw - nw, 0, ph - nh), value=0.0)
    return x.contiguous(), (nh, nw)


PATHS = {"old torch": old_preprocess, "new pillow": preprocess_frames}


def make_clip(path: Path, frames: int, h: int = 1080, w: int = 1920) -> Path:
    import av  # noqa: PLC0415

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    c = av.open(str(path), "w")
    s = c.add_stream("libx264", rate=30)
    s.width, s.height, s.pix_fmt = w, h, "yuv420p"
    s.options = {"preset": "veryfast", "crf": "20"}
    for t in range(frames):
        img = np.empty((h, w, 3), np.float32)
        img[..., 0] = 128 + 100 * np.sin(xx / 97.0 + t / 7.0)
        img[..., 1] = 128 + 100 * np.cos(yy / 61.0 - t / 11.0)
        img[..., 2] = (xx + yy + 9 * t) % 256
        for k in range(6):  # moving boxes with sharp edges
            y0, x0 = (97 * k + 13 * t) % (h - 200), (311 * k + 29 * t) % (w - 300)
            img[y0 : y0 + 200, x0 : x0 + 300] = (40 * k) % 256
        img += rng.normal(0, 6, (h, w, 1)).astype(np.float32)  # grain
        frame = av.VideoFrame.from_ndarray(np.clip(img, 0, 255).astype(np.uint8), format="rgb24")
        for p in s.encode(frame):
            c.mux(p)
    for p in s.encode(None):
        c.mux(p)
    c.close()
    return path


def run_decode(path: Path, fn, preset) -> float:
    """Decode the whole clip and preprocess it clip by clip."""
    src = VideoSource(path, prefetch=0)  # api.as_source reads synchronously
    buf = []
    for _i, f in src.iter_frames():
        buf.append(f)
        if len(buf) == preset.clip_len:
            fn(np.stack(buf), preset.min_size, preset.max_size, 32, preset.square)
            buf = []
    if buf:
        fn(np.stack(buf), preset.min_size, preset.max_size, 32, preset.square)
    src.close()


def run_memory(frames: np.ndarray, fn, preset) -> None:
    for a in range(0, len(frames), preset.clip_len):
        fn(frames[a : a + preset.clip_len], preset.min_size, preset.max_size, 32, preset.square)


def timed(runner, *args) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process over all its threads)."""
    w, c = time.perf_counter(), time.process_time()
    runner(*args)
    return time.perf_counter() - w, time.process_time() - c


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=60)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--memory-frames", type=int, default=20, help="frames for the preprocessing-only rows")
    ap.add_argument("--video", type=Path, default=None, help="use this clip instead of a generated 1080p one")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (also the resize workers)")
    ap.add_argument("--presets", nargs="+", choices=["r50", "small"], default=["r50", "small"])
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    presets = {"r50 640/1333": R50["vos"], "small 256/640": SMALL["vos"]}
    presets = {k: v for k, v in presets.items() if k.split()[0] in args.presets}

    with tempfile.TemporaryDirectory() as tmp:
        path = args.video or make_clip(Path(tmp) / "clip_1080p.mp4", args.frames)
        src = VideoSource(path)
        n, h, w = src.num_frames, src.height, src.width
        mem = np.stack([f for _i, f in src.iter_frames(0, args.memory_frames)])
        src.close()
        load0 = os.getloadavg()
        print(f"clip: {path.name if args.video else 'generated H.264'} {n} frames {h}x{w}; "
              f"torch threads {torch.get_num_threads()}, cpus {os.cpu_count()}; load average at start "
              f"{load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}")
        for name, preset in presets.items():  # warm-up (and a check that both paths agree on shapes)
            a, _ = old_preprocess(mem[:2], preset.min_size, preset.max_size)
            b, _ = preprocess_frames(mem[:2], preset.min_size, preset.max_size)
            assert a.shape == b.shape, (a.shape, b.shape)
        fps: dict[tuple[str, str, str], list[float]] = {}
        cpu: dict[tuple[str, str, str], list[float]] = {}
        for _r in range(args.repeats):
            for name, preset in presets.items():
                for kind, runner, data, count in [("decode+preprocess", run_decode, path, n),
                                                  ("preprocess only", run_memory, mem, len(mem))]:
                    for pname, fn in PATHS.items():
                        wall, cpus = timed(runner, data, fn, preset)
                        fps.setdefault((name, kind, pname), []).append(count / wall)
                        cpu.setdefault((name, kind, pname), []).append(1000 * cpus / count)
        load1 = os.getloadavg()

    print()
    print("| preset (resized size) | measured | path | best frames/s | vs old | median frames/s | vs old "
          "| CPU ms/frame (median) |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for name, preset in presets.items():
        nh, nw = resize_shortest_edge_size(h, w, preset.min_size, preset.max_size)
        for kind in ("decode+preprocess", "preprocess only"):
            old = fps[(name, kind, "old torch")]
            for pname in PATHS:
                v = fps[(name, kind, pname)]
                best, med = max(v), statistics.median(v)
                print(f"| {name} ({nh}x{nw}, clips of {preset.clip_len}) | {kind} | {pname} | {best:.1f} | "
                      f"{100 * (best / max(old) - 1):+.1f} % | {med:.1f} | "
                      f"{100 * (med / statistics.median(old) - 1):+.1f} % | "
                      f"{statistics.median(cpu[(name, kind, pname)]):.1f} |")
    print(f"\nload average at end {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}; {args.repeats} alternating runs each")


if __name__ == "__main__":
    main()
