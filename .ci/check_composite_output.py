#!/usr/bin/env python3
"""Pixel check of the "Replace the background" template's output video (used by .ci/comfyui_e2e.sh).

The template keeps the tracked object (the purple checkered cross of the pack's sample clip) over a solid colour
(its *Empty Image* node's ``color``). For a few frames (first, middle, last) this compares the saved video with
the source clip:

* object: the cross's pixels in the source (purple: blue and red well above green), shrunk by 2 px so the soft
  matte edge does not count, must show the source pixels in the output (>= 90 % of them within 24/255);
* background: every pixel more than 8 px away from the cross must be the new colour (>= 97 % within 16/255;
  the rest allows for stray matte pixels of the small built-in model).

The output is found in the /history entry that ``run_workflow.py --json`` prints (the SaveVideo node's file), the
source is the template's Load Video file in ComfyUI's input/ folder.

usage: check_composite_output.py TEMPLATE.json RUN_WORKFLOW_STDOUT COMFYUI_DIR
       check_composite_output.py --videos SOURCE.mp4 OUTPUT.mp4 --colour 0xF0C850      (files directly)
exit codes: 0 pass, 1 the output does not show the object over the new background, 2 usage / missing files
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

VIDEO_EXT = (".mp4", ".webm", ".mkv", ".mov")
OBJECT_TOL, BACKGROUND_TOL = 24, 16
OBJECT_MIN, BACKGROUND_MIN = 0.90, 0.97
ERODE, FAR = 2, 8


def decode(path: str) -> list[np.ndarray]:
    import av

    with av.open(path) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def _shift_or(mask: np.ndarray, r: int) -> np.ndarray:
    """Square dilation by r pixels (numpy only)."""
    out = mask.copy()
    h, w = mask.shape
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
            xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
            out[yd, xd] |= mask[ys, xs]
    return out


def object_pixels(frame: np.ndarray) -> np.ndarray:
    """The sample's cross: purple, i.e. blue and red clearly above green (sky, water, bricks, grass are not)."""
    f = frame.astype(np.int32)
    return (f[..., 2] > f[..., 1] + 60) & (f[..., 0] > f[..., 1] + 30)


def check_frame(src: np.ndarray, out: np.ndarray, colour: np.ndarray) -> tuple[list[str], dict]:
    obj = object_pixels(src)
    inner = ~_shift_or(~obj, ERODE)
    far = ~_shift_or(obj, FAR)
    diff_src = np.abs(out.astype(np.int32) - src.astype(np.int32)).max(-1)
    diff_bg = np.abs(out.astype(np.int32) - colour).max(-1)
    stats = {"object_px": int(inner.sum()), "background_px": int(far.sum()),
             "object_kept": float((diff_src[inner] <= OBJECT_TOL).mean()) if inner.any() else 0.0,
             "background_replaced": float((diff_bg[far] <= BACKGROUND_TOL).mean()) if far.any() else 0.0}
    problems = []
    if stats["object_px"] < 200:
        problems.append(f"only {stats['object_px']} object pixels in the source frame: not the sample clip?")
    elif stats["object_kept"] < OBJECT_MIN:
        problems.append(f"object: {stats['object_kept']:.1%} of its pixels show the source (need {OBJECT_MIN:.0%})")
    if stats["background_replaced"] < BACKGROUND_MIN:
        problems.append(f"background: {stats['background_replaced']:.1%} of the pixels away from the object are the "
                        f"new colour {tuple(int(c) for c in colour)} (need {BACKGROUND_MIN:.0%})")
    return problems, stats


def check_videos(source: str, output: str, colour: int) -> list[str]:
    rgb = np.array([(colour >> 16) & 255, (colour >> 8) & 255, colour & 255], dtype=np.int32)
    src, out = decode(source), decode(output)
    if not out:
        return [f"{output}: no frames"]
    if len(src) != len(out) or src[0].shape != out[0].shape:
        return [f"{output}: {len(out)} frames of {out[0].shape[1]}x{out[0].shape[0]}, the source has {len(src)} of "
                f"{src[0].shape[1]}x{src[0].shape[0]}"]
    problems = []
    for k in sorted({0, len(src) // 2, len(src) - 1}):
        p, stats = check_frame(src[k], out[k], rgb)
        print(f"    frame {k}: object pixels kept {stats['object_kept']:.1%} of {stats['object_px']}, background "
              f"replaced {stats['background_replaced']:.1%} of {stats['background_px']}")
        problems += [f"frame {k}: {x}" for x in p]
    return problems


def from_run(template: str, run_out: str, comfy: str) -> tuple[str, str, int]:
    wf = json.load(open(template))
    colours = [n["widgets_values"][3] for n in wf["nodes"] if n["type"] == "EmptyImage"]
    videos = [n["widgets_values"][0] for n in wf["nodes"] if n["type"] == "LoadVideo"]
    if len(colours) != 1 or len(videos) != 1:
        raise SystemExit(f"{template}: expected one Empty Image (the background) and one Load Video")
    lines = open(run_out).read().splitlines()
    try:
        entry = json.loads("\n".join(lines[lines.index("{"):]))
    except ValueError:
        raise SystemExit(f"{run_out}: no /history JSON (run run_workflow.py with --json)") from None
    api = (entry.get("prompt") or [None, None, {}])[2]
    found = []
    for node_id, outs in (entry.get("outputs") or {}).items():
        if (api.get(node_id) or {}).get("class_type") != "SaveVideo":
            continue
        for items in outs.values():
            for it in items if isinstance(items, list) else []:
                if isinstance(it, dict) and str(it.get("filename", "")).lower().endswith(VIDEO_EXT):
                    found.append(os.path.join(comfy, it.get("type") or "output", it.get("subfolder") or "",
                                              it["filename"]))
    if len(found) != 1:
        raise SystemExit(f"{run_out}: expected one video saved by SaveVideo, found {found}")
    return os.path.join(comfy, "input", videos[0]), found[0], int(colours[0])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("args", nargs="*", metavar="TEMPLATE RUN_OUT COMFYUI")
    ap.add_argument("--videos", nargs=2, metavar=("SOURCE", "OUTPUT"))
    ap.add_argument("--colour", type=lambda s: int(s, 0), default=None)
    a = ap.parse_args(argv)
    if a.videos:
        if a.colour is None:
            ap.error("--videos needs --colour")
        source, output, colour = a.videos[0], a.videos[1], a.colour
    elif len(a.args) == 3:
        source, output, colour = from_run(*a.args)
    else:
        ap.error("give TEMPLATE RUN_OUT COMFYUI, or --videos SOURCE OUTPUT --colour 0xRRGGBB")
    for p in (source, output):
        if not os.path.isfile(p):
            print(f"check_composite_output: {p} does not exist", file=sys.stderr)
            return 2
    print(f"    source {source}\n    output {output}\n    new background #{colour:06X}")
    problems = check_videos(source, output, colour)
    for p in problems:
        print(f"    COMPOSITE PROBLEM: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
