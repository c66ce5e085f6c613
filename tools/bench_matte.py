"""Soft-matte quality on generated frames with a known alpha: hard mask vs plain feather vs edge-aware matte.

Each case composites a textured foreground over a textured background with a known soft alpha (a feathered
edge, motion blur, a fuzzy outline) and gives every method the same ideal hard mask (alpha > 0.5), as a
perfect segmentation would. Errors are measured where the true alpha is soft, grown by the band width:
mean absolute alpha error and gradient error (mean difference of Sobel gradient magnitudes). A last column
measures flicker on a still object under per-frame sensor noise: mean |alpha_t - alpha_t-1|.

    python tools/bench_matte.py [--size 256] [--frames 8] [--band 6]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from univs_engine.matting import MatteSettings, soft_matte  # noqa: E402


def texture(rng: np.random.Generator, size: int, base) -> np.ndarray:
    """A smooth random colour field around `base` (uint8 [H, W, 3])."""
    low = rng.normal(0, 40, (size // 16, size // 16, 3)).astype(np.float32)
    field = cv2.resize(low, (size, size), interpolation=cv2.INTER_CUBIC)
    return np.clip(np.asarray(base, np.float32) + field, 0, 255)


def shape(size: int, t: int, rng: np.random.Generator) -> np.ndarray:
    """A star-like blob moving right over the frames (float32 0/1 [H, W])."""
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    cx, cy = size * (0.35 + 0.03 * t), size * 0.5
    ang = np.arctan2(yy - cy, xx - cx)
    radius = size * (0.22 + 0.04 * np.sin(5 * ang + 0.3 * t))
    return (np.hypot(xx - cx, yy - cy) < radius).astype(np.float32)


def true_alpha(kind: str, size: int, t: int, rng: np.random.Generator) -> np.ndarray:
    s = shape(size, t, rng)
    if kind == "feathered edge":
        return cv2.GaussianBlur(s, (0, 0), 2.5)
    if kind == "motion blur":
        k = np.zeros((1, 15), np.float32)
        k[0, :] = 1 / 15
        return cv2.filter2D(s, -1, k, borderType=cv2.BORDER_CONSTANT)
    if kind == "fuzzy outline":  # hair-like: the edge frays into fine strands of partial coverage
        noise = cv2.resize(rng.random((size // 2, size // 2)).astype(np.float32), (size, size))
        dist = cv2.distanceTransform((s > 0).astype(np.uint8), cv2.DIST_L2, 5) - \
            cv2.distanceTransform((s == 0).astype(np.uint8), cv2.DIST_L2, 5)
        return np.clip(0.5 + dist / 6.0 + (noise - 0.5) * 0.9, 0, 1).astype(np.float32)
    raise ValueError(kind)


def composite(alpha, fg, bg, rng, noise=0.0) -> np.ndarray:
    img = alpha[..., None] * fg + (1 - alpha[..., None]) * bg
    if noise:
        img = img + rng.normal(0, noise, img.shape)
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)


def grad(a: np.ndarray) -> np.ndarray:
    return np.hypot(cv2.Sobel(a, cv2.CV_32F, 1, 0, ksize=3), cv2.Sobel(a, cv2.CV_32F, 0, 1, ksize=3))


def methods(band: int, smoothness: float):
    sigma = band / 2.0  # a feather reaching about as far as the band (+-2 sigma)
    return {
        "hard mask": lambda img, m: m.astype(np.float32),
        f"feather (sigma {sigma:g})": lambda img, m: cv2.GaussianBlur(m.astype(np.float32), (0, 0), sigma),
        f"edge-aware (band {band})": lambda img, m: soft_matte(img, m, MatteSettings(band, smoothness)),
    }


def run(size: int, frames: int, band: int, smoothness: float) -> list[dict]:
    rng = np.random.default_rng(0)
    rows = []
    kinds = ["feathered edge", "motion blur", "fuzzy outline"]
    for name, fn in methods(band, smoothness).items():
        row = {"method": name}
        t0 = time.perf_counter()
        for kind in kinds:
            mad, gerr = [], []
            for t in range(frames):
                a = true_alpha(kind, size, t, rng)
                img = composite(a, texture(rng, size, (200, 60, 50)), texture(rng, size, (40, 90, 160)), rng)
                pred = fn(img, a > 0.5)
                soft = (a > 0.01) & (a < 0.99)
                region = cv2.dilate(soft.astype(np.uint8), np.ones((2 * band + 1,) * 2, np.uint8)) > 0
                mad.append(np.abs(pred - a)[region].mean())
                gerr.append(np.abs(grad(pred) - grad(a))[region].mean())
            row[kind] = (float(np.mean(mad)), float(np.mean(gerr)))
        row["ms/frame"] = (time.perf_counter() - t0) * 1000 / (frames * len(kinds))
        a = true_alpha("feathered edge", size, 0, rng)
        fg, bg = texture(rng, size, (200, 60, 50)), texture(rng, size, (40, 90, 160))
        seq = [fn(composite(a, fg, bg, rng, noise=4.0), a > 0.5) for _ in range(frames)]
        row["flicker"] = float(np.mean([np.abs(x - y).mean() for x, y in zip(seq, seq[1:])]))
        rows.append(row)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--band", type=int, default=MatteSettings.band)
    ap.add_argument("--smoothness", type=float, default=MatteSettings.smoothness)
    a = ap.parse_args(argv)
    rows = run(a.size, a.frames, a.band, a.smoothness)
    kinds = [k for k in rows[0] if k not in ("method", "ms/frame", "flicker")]
    print(f"{a.frames} frames of {a.size}x{a.size} per case; alpha error / gradient error near the edge "
          f"(lower is better)\n")
    print("| method | " + " | ".join(kinds) + " | flicker (still object, noise) | ms/frame |")
    print("| --- " * (len(kinds) + 3) + "|")
    for r in rows:
        cells = [f"{r[k][0]:.4f} / {r[k][1]:.4f}" for k in kinds]
        print(f"| {r['method']} | " + " | ".join(cells) + f" | {r['flicker']:.5f} | {r['ms/frame']:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
