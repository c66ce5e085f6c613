"""Peak memory vs video length: prompt-guided tracking of a generated 720p video.

Each length runs in a fresh process; prints a table of peak resident memory (and peak GPU memory on
CUDA) together with the size of the stored results, which is the only part allowed to grow.

    python tools/bench_memory.py --lengths 100 500 2000 [--model small] [--device cpu]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def make_video(path: Path, frames: int, height: int = 720, width: int = 1280, fps: int = 25) -> None:
    """A textured background with two squares moving across it (H.264)."""
    import av

    rng = np.random.default_rng(0)
    background = rng.integers(0, 255, (height // 8, width // 8, 3), dtype=np.uint8).repeat(8, 0).repeat(8, 1)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for t in range(frames):
            img = background.copy()
            x = int((t * 7) % (width - 200))
            img[200:400, x:x + 200] = (230, 40, 40)
            img[450:600, width - 200 - x // 2:width - 50 - x // 2] = (40, 40, 230)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def run_one(video: str, model: str, device: str) -> dict:
    import torch

    from univs_engine.api import Prompt, load_model, track

    torch.set_num_threads(2)
    m = load_model(model, device=device)
    box1, box2 = (x := 0, 200, x + 200, 400), (1080, 450, 1230, 600)
    start = time.perf_counter()
    tracks = track(m, video, [Prompt(1, 0, box=box1), Prompt(2, 0, box=box2)])
    peak_gpu = torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else float("nan")
    return {"frames": tracks.num_frames, "seconds": time.perf_counter() - start,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "results_mib": tracks.nbytes() / 2**20, "peak_gpu_mib": peak_gpu}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lengths", type=int, nargs="+", default=[100, 500, 2000])
    ap.add_argument("--model", default="small")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(run_one(args.child, args.model, args.device)))
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.lengths:
            video = Path(tmp) / f"v{n}.mp4"
            make_video(video, n)
            out = subprocess.run([sys.executable, __file__, "--child", str(video), "--model", args.model,
                                  "--device", args.device], capture_output=True, text=True, check=True,
                                 env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    base = rows[0]["peak_rss_mib"] - rows[0]["results_mib"]
    print(f"{'frames':>7} {'s':>7} {'fps':>6} {'peak RSS MiB':>13} {'results MiB':>12} {'RSS-results vs first':>21} "
          f"{'peak GPU MiB':>13}")
    for r in rows:
        rel = (r["peak_rss_mib"] - r["results_mib"]) / base - 1
        print(f"{r['frames']:>7} {r['seconds']:>7.1f} {r['frames'] / r['seconds']:>6.1f} {r['peak_rss_mib']:>13.1f} "
              f"{r['results_mib']:>12.2f} {rel:>+20.1%} {r['peak_gpu_mib']:>13.1f}")


if __name__ == "__main__":
    main()
