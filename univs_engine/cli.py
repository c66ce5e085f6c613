"""`univs` command line: segment a video, convert checkpoints, train the small model, evaluate."""
from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

import numpy as np

OUTPUT_NAMES = ("tracks.npz", "legend.json", "ids", "masks", "color", "preview.mp4", "results.json")
TASKS = {"vos": "track", "pvos": "track", "refvos": "track", "vis": "instance", "vss": "semantic", "vps": "panoptic"}


def _floats(text: str, n: int | None = None) -> list[float]:
    vals = [float(v) for v in text.replace(";", ",").split(",") if v.strip()]
    if n is not None and len(vals) != n:
        raise argparse.ArgumentTypeError(f"expected {n} comma-separated numbers, got {text!r}")
    return vals


def _points(text: str) -> list[tuple[float, float]]:
    vals = _floats(text)
    if len(vals) % 2:
        raise argparse.ArgumentTypeError(f"points must be x,y pairs: {text!r}")
    return list(zip(vals[::2], vals[1::2]))


def prompts_from_args(args, height: int, width: int):
    """Prompts from --points/--neg-points/--box/--mask/--text and a --prompts JSON file."""
    from .api import Prompt

    prompts = []
    if args.prompts:
        prompts += prompts_from_json(Path(args.prompts), args.task == "refvos" and not args.text)
    obj = 1 + max([p.obj_id for p in prompts], default=0)
    if args.points or args.box or args.mask:
        pts = _points(args.points) if args.points else []
        neg = _points(args.neg_points) if args.neg_points else []
        mask = None
        if args.mask:
            from PIL import Image

            mask = np.asarray(Image.open(args.mask).convert("L")) > 127
        prompts.append(Prompt(obj, args.frame, "target", pts + neg, [1] * len(pts) + [0] * len(neg),
                              tuple(_floats(args.box, 4)) if args.box else None, mask))
        obj += 1
    for line in args.text or []:
        label, _, expr = line.partition(":") if ":" in line else ("", "", line)
        prompts.append(Prompt(obj, args.frame, label.strip() or expr.strip(), text=expr.strip()))
        obj += 1
    return prompts


def prompts_from_json(path: Path, use_text: bool):
    """The sidecar format of the bundled sample (and the synthetic world): objects[].prompt."""
    from .api import Prompt
    from .rle import rle_decode

    data = json.loads(path.read_text())
    out = []
    for o in data.get("objects", []):
        p = o["prompt"]
        label = o.get("category", "")
        if use_text and o.get("expression"):
            out.append(Prompt(int(o["id"]), int(p["frame"]), label, text=o["expression"]))
        elif "mask_rle" in p:  # the most precise form wins; the others describe the same target
            h, w = p["mask_rle"]["size"]
            out.append(Prompt(int(o["id"]), int(p["frame"]), label,
                              mask=rle_decode(np.asarray(p["mask_rle"]["counts"]), h, w)))
        else:
            pos, neg = p.get("points", []), p.get("negative_points", [])
            out.append(Prompt(int(o["id"]), int(p["frame"]), label, [tuple(x) for x in pos + neg],
                              [1] * len(pos) + [0] * len(neg), tuple(p["box"]) if "box" in p else None))
    return out


def cmd_segment(args) -> int:
    import torch
    from tqdm import tqdm

    from .api import Cancelled, load_model, segment, track
    from .io.video import VideoSource
    from .io.writers import (export_alpha_video, export_color_pngs, export_id_pngs, export_mask_pngs,
                             export_overlay_video, write_ytvis_json)

    out = Path(args.out)
    existing = [n for n in OUTPUT_NAMES if (out / n).exists()]
    if existing and not args.overwrite:  # before the long run, not after it
        raise FileExistsError(f"{out} already holds {', '.join(existing)}; pass --overwrite to replace them")
    source = VideoSource(args.video)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    model = load_model(args.model, args.text_encoder, args.class_embeddings, args.device, dtype)
    stop_requested = {"flag": False}

    def on_sigint(*_):
        stop_requested["flag"] = True  # finish the current clip, then write what is done

    signal.signal(signal.SIGINT, on_sigint)
    bar = tqdm(total=source.num_frames, unit="frame", desc=f"univs {args.task}")

    def progress(done, total):
        bar.total = total
        bar.n = done
        bar.refresh()

    cancel = lambda: stop_requested["flag"]  # noqa: E731
    try:
        if TASKS[args.task] == "track":
            prompts = prompts_from_args(args, source.height, source.width)
            tracks = track(model, source, prompts, args.direction, args.start, args.stop, progress, cancel,
                           preset=args.task)
        else:
            vocab = [c.strip() for c in args.classes.split(",")] if args.classes else None
            tracks = segment(model, source, TASKS[args.task], vocab, progress, cancel)
    except Cancelled as c:
        tracks = c.tracks
        print("stopped: writing the frames finished so far", file=sys.stderr)
    bar.close()
    out.mkdir(parents=True, exist_ok=True)
    tracks.save(out / "tracks.npz")
    (out / "legend.json").write_text(json.dumps(tracks.legend(), indent=1))
    export_id_pngs(tracks, out / "ids", overwrite=args.overwrite)
    if TASKS[args.task] == "track":
        export_mask_pngs(tracks, out / "masks", overwrite=args.overwrite)
    else:
        export_color_pngs(tracks, out / "color", overwrite=args.overwrite)
    if args.task == "vis":
        write_ytvis_json(out / "results.json", tracks, video_id=1, overwrite=args.overwrite)
    for obj in tracks.object_ids if args.alpha else []:
        export_alpha_video(tracks, obj, out / f"alpha_{obj}.{args.alpha}", source, overwrite=args.overwrite)
    export_overlay_video(tracks, source, out / "preview.mp4", overwrite=args.overwrite)
    print(f"wrote {out}/ ({len(tracks.object_ids)} objects): " + ", ".join(sorted(p.name for p in out.iterdir())))
    return 0


def cmd_convert(args) -> int:
    from .checkpoint import convert_checkpoint

    dst = convert_checkpoint(args.checkpoint, args.output, use_ema=args.ema, overwrite=args.overwrite)
    print(f"wrote {dst}")
    return 0


def cmd_eval(args) -> int:
    from .evaluate import evaluate_davis_folders, evaluate_ytvis_files

    if args.format == "davis":
        res = evaluate_davis_folders(args.gt, args.pred, skip_first_last=not args.all_frames)
    else:
        res = evaluate_ytvis_files(args.gt, args.pred)
    for k, v in res.items():
        print(f"{k:>10} {v:.4f}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="univs", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("segment", help="segment a video (file or frame folder)")
    s.add_argument("video")
    s.add_argument("--out", default="out")
    s.add_argument("--task", choices=sorted(TASKS), default="vos")
    s.add_argument("--model", default="small", help="'small' (built-in) or a UniVS checkpoint (.pth/.safetensors)")
    s.add_argument("--text-encoder", help="CLIP RN50x4 text-encoder file (official models, text prompts)")
    s.add_argument("--class-embeddings", help="official combined_datasets_cls_emb_rn50x4.pth")
    s.add_argument("--prompts", help="JSON file with objects[].prompt (see assets/sample.json)")
    s.add_argument("--frame", type=int, default=0, help="frame of --points/--box/--mask/--text")
    s.add_argument("--points", help="positive clicks x,y;x,y (pixels)")
    s.add_argument("--neg-points", help="negative clicks x,y;x,y")
    s.add_argument("--box", help="x0,y0,x1,y1 (pixels)")
    s.add_argument("--mask", help="PNG mask of the target on --frame")
    s.add_argument("--text", action="append", help="referring expression ('label: expression'); repeatable")
    s.add_argument("--classes", help="comma-separated vocabulary for vis/vss/vps (default: the model's)")
    s.add_argument("--direction", choices=["forward", "backward", "both"], default="forward")
    s.add_argument("--start", type=int, default=0)
    s.add_argument("--stop", type=int)
    s.add_argument("--device", default="cpu")
    s.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32")
    s.add_argument("--alpha", choices=["mov", "webm"], help="also write one alpha video per object "
                   "(ProRes 4444 .mov or VP9 .webm)")
    s.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    s.set_defaults(func=cmd_segment)
    c = sub.add_parser("convert", help="official .pth -> .safetensors (the source is never modified)")
    c.add_argument("checkpoint")
    c.add_argument("output", nargs="?")
    c.add_argument("--ema", action="store_true", help="take the stage-3 EMA teacher weights")
    c.add_argument("--overwrite", action="store_true")
    c.set_defaults(func=cmd_convert)
    e = sub.add_parser("eval", help="score predictions: DAVIS folders (J&F) or YouTube-VIS JSON (mAP)")
    e.add_argument("format", choices=["davis", "ytvis"])
    e.add_argument("--gt", required=True, help="DAVIS: annotation root; YouTube-VIS: annotation JSON")
    e.add_argument("--pred", required=True, help="DAVIS: prediction root; YouTube-VIS: results JSON")
    e.add_argument("--all-frames", action="store_true", help="DAVIS: also score the first and last frames")
    e.set_defaults(func=cmd_eval)
    sub.add_parser("train", help="train the small model on the generated video world (univs train --help)")
    return p


def main(argv: list[str] | None = None) -> int:
    from .checkpoint import CheckpointError

    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["train"]:  # the trainer owns its options (and its --help)
        from .training.train import main as train_main

        return train_main(argv[1:]) or 0
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (CheckpointError, ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"univs: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
