"""CPU speed of this checkout against an earlier one, side by side in one run, with the masks compared.

    git worktree add /tmp/univs-before <commit>
    python tools/bench_cpu_speedup.py --baseline /tmp/univs-before [--tasks vos1,vis] [--size 640] [--frames 6]

Each (checkout, task) runs in its own process (the checkout's own univs_engine and tools/bench_speed.py: same
R50 weight rule, same clip), alternating baseline / this checkout for --rounds rounds: one untimed run (warm-up),
then one timed run. Prints ms/frame (best of the rounds), the speed-up and how many mask pixels differ between the
two checkouts' id maps (0 = identical masks).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def worker(root: Path, task: str, size: int, frames: int, threads: int, out: Path) -> None:
    """In a fresh process whose sys.path starts with `root`: time `task` and save its id maps."""
    import torch

    sys.path[:0] = [str(root), str(root / "tools")]
    import bench_speed

    torch.set_num_threads(threads)
    args = argparse.Namespace(config="r50", device="cpu", dtype="fp32")
    model = bench_speed.build_model(args)
    v = bench_speed.video(frames, size)
    bench_speed.run_task(model, task, v)
    t = time.perf_counter()
    tracks = bench_speed.run_task(model, task, v)
    ms = 1000 * (time.perf_counter() - t) / frames
    import univs_engine
    np.savez(out, ids=bench_speed.id_maps(tracks), ms=ms, engine=str(Path(univs_engine.__file__).parent))


def measure(root: Path, task: str, args, tmp: Path, tag: str):
    out = tmp / f"{tag}-{task}.npz"
    env = dict(os.environ, PYTHONPATH=str(root))
    cmd = [sys.executable, __file__, "--worker", json.dumps([str(root), task, args.size, args.frames, args.threads,
                                                            str(out)])]
    subprocess.run(cmd, check=True, env=env, cwd=root)
    with np.load(out) as f:
        if Path(str(f["engine"])).resolve() != (root / "univs_engine").resolve():
            raise SystemExit(f"{tag}: imported univs_engine from {f['engine']}, not from {root}")
        return float(f["ms"]), f["ids"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--baseline", type=Path, help="a checkout of the earlier code (git worktree add DIR COMMIT)")
    ap.add_argument("--tasks", default="vos1", help="comma-separated tasks of tools/bench_speed.py")
    ap.add_argument("--size", type=int, default=640)
    ap.add_argument("--frames", type=int, default=6)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        root, task, size, frames, threads, out = json.loads(args.worker)
        return worker(Path(root), task, size, frames, threads, Path(out))
    if args.baseline is None or not (args.baseline / "univs_engine").is_dir():
        ap.error("--baseline must be a checkout of this repository (a folder with univs_engine/)")
    import torch

    print(f"r50 at {args.size}p, {args.frames} frames, CPU fp32, {args.threads} threads, torch {torch.__version__}; "
          f"baseline {args.baseline}")
    print(f"{'task':>6} {'baseline ms/frame':>18} {'this ms/frame':>14} {'speed-up':>9} {'pixels differing':>17}")
    with tempfile.TemporaryDirectory() as tmp:
        for task in args.tasks.split(","):
            best = {"baseline": float("inf"), "this": float("inf")}
            ids = {}
            for r in range(args.rounds):
                for tag, root in (("baseline", args.baseline.resolve()), ("this", ROOT)):
                    ms, ids[tag] = measure(root, task, args, Path(tmp), f"{tag}{r}")
                    best[tag] = min(best[tag], ms)
            diff = int((ids["baseline"] != ids["this"]).sum())
            print(f"{task:>6} {best['baseline']:>18.1f} {best['this']:>14.1f} {best['baseline'] / best['this']:>8.2f}x "
                  f"{diff:>10} of {ids['this'].size}")


if __name__ == "__main__":
    main()
