"""`univs` command line: segment a video, convert checkpoints, train the small model, evaluate.

Nothing heavy (torch, numpy) is imported before the arguments are parsed, so ``univs --help`` answers at once.
Every user mistake (a bad option value, an option the task does not use, a bad input file, an output that
cannot be written) ends in one line ``univs: error: ...`` naming the input, exit status 2, before any frame is
processed.
"""
from __future__ import annotations

import argparse
import os
import re
import signal
import sys
import threading
from collections import Counter
from pathlib import Path

OUTPUT_NAMES = ("tracks.npz", "legend.json", "ids", "masks", "color", "preview.mp4", "results.json")
OUTPUT_FOLDERS = ("ids", "masks", "color")
TASKS = {"vos": "track", "pvos": "track", "refvos": "track", "vis": "instance", "vss": "semantic", "vps": "panoptic"}
# options that only prompt-guided tasks use, with their spelling
TRACK_OPTIONS = {"prompts": "--prompts", "frame": "--frame", "points": "--points", "neg_points": "--neg-points",
                 "box": "--box", "mask": "--mask", "text": "--text", "direction": "--direction",
                 "prompt_mode": "--prompt-mode"}
MAX_OBJECT_ID = 255     # the ids/ palette PNGs hold ids 1..255
MAX_CLICKS = 1000
MAX_CLASSES = 5000
MAX_CLASS_CHARS = 200


class Aborted(KeyboardInterrupt):
    """A signal that ends the command at once (nothing more is written)."""

    def __init__(self, signum: int = signal.SIGINT):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


# ---------------------------------------------------------------------- option values (argparse types)
def _number(token: str) -> float:
    from .parsing import number

    try:
        return number(token, "")
    except ValueError:
        raise argparse.ArgumentTypeError(f"{token[:30]!r} is not a finite number (|x| <= 1e9)") from None


def _numbers(text: str) -> list[float]:
    tokens = [t for t in text.replace(";", ",").split(",") if t.strip()]
    if len(tokens) > 2 * MAX_CLICKS:
        raise argparse.ArgumentTypeError(f"{len(tokens)} numbers, more than the {2 * MAX_CLICKS} accepted")
    return [_number(t) for t in tokens]


def _points(text: str) -> list[tuple[float, float]]:
    """``x,y;x,y`` -> [(x, y), ...] (pixels)."""
    vals = _numbers(text)
    if not vals or len(vals) % 2:
        raise argparse.ArgumentTypeError(f"expected x,y pairs like 120,80;140,90 (pixels), got {text[:40]!r}")
    return list(zip(vals[::2], vals[1::2]))


def _box(text: str) -> tuple[float, float, float, float]:
    """``x0,y0,x1,y1`` -> a non-empty box (pixels)."""
    vals = _numbers(text)
    if len(vals) != 4:
        raise argparse.ArgumentTypeError(f"expected 4 numbers x0,y0,x1,y1 (pixels), got {text[:40]!r}")
    x0, y0, x1, y1 = vals
    if x1 <= x0 or y1 <= y0:
        raise argparse.ArgumentTypeError(f"{text[:40]!r} is empty or inverted (need x1 > x0 and y1 > y0)")
    return x0, y0, x1, y1


def _count(text: str) -> int:
    """A frame index or count: a whole number >= 0."""
    if not re.fullmatch(r"\s*[0-9]{1,9}\s*", text):
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text[:30]!r}")
    return int(text)


def _classes(text: str) -> list[str]:
    """Comma-separated class names (at least one)."""
    names = [" ".join(c.split()) for c in text.split(",")]
    names = [c for c in names if c]
    if not names:
        raise argparse.ArgumentTypeError("no class name given (e.g. --classes person,dog,car)")
    if len(names) > MAX_CLASSES or max(len(c) for c in names) > MAX_CLASS_CHARS:
        raise argparse.ArgumentTypeError(f"at most {MAX_CLASSES} names of at most {MAX_CLASS_CHARS} characters")
    return names


def _expression(text: str) -> tuple[str, str]:
    """``label: expression`` (or just the expression) -> (label, expression)."""
    label, _, expr = text.partition(":") if ":" in text else ("", "", text)
    label, expr = label.strip(), expr.strip()
    if not expr:
        raise argparse.ArgumentTypeError(f"{text[:40]!r} has no expression")
    return label or expr, expr


def _device(text: str) -> str:
    if not re.fullmatch(r"cpu|cuda(:[0-9]{1,2})?", text):
        raise argparse.ArgumentTypeError(f"{text[:30]!r} is not a supported device: use cpu, cuda or cuda:N")
    return text


# ---------------------------------------------------------------------- checks before the run
def check_task_options(args) -> None:
    """Refuse options the chosen task does not use, and prompt options that make no target."""
    category = TASKS[args.task] != "track"
    given = [flag for key, flag in TRACK_OPTIONS.items() if getattr(args, key) is not None]
    if category and given:
        raise ValueError(f"{given[0]} does not apply to --task {args.task} (category-guided: it takes --classes)")
    if not category and args.classes is not None:
        raise ValueError(f"--classes applies to --task vis, vss or vps, not {args.task}")
    if (args.matte_band is not None or args.matte_smoothness is not None) and not args.alpha:
        raise ValueError("--matte-band / --matte-smoothness shape the alpha videos: add --alpha mov or webm")
    if args.matte_band is not None or args.matte_smoothness is not None:
        from .matting import MatteSettings

        MatteSettings(args.matte_band or 0, args.matte_smoothness or MatteSettings.smoothness)  # range check
    if category:
        return
    if args.neg_points and not (args.points or args.box or args.mask):
        raise ValueError("--neg-points: negative clicks alone make no target; add --points, --box or --mask")
    if args.frame is not None and not (args.points or args.box or args.mask or args.text):
        raise ValueError("--frame applies to --points/--box/--mask/--text, and none was given")
    if not (args.prompts or args.points or args.box or args.mask or args.text):
        raise ValueError(f"no prompt given: --task {args.task} needs --points, --box, --mask, --text or --prompts")


def _matte_settings(args):
    """The alpha videos' soft-edge settings, None for hard edges."""
    from .matting import MatteSettings

    if not args.matte_band:
        return None
    return MatteSettings(args.matte_band, args.matte_smoothness or MatteSettings.smoothness)


def check_device(name: str) -> None:
    """A one-line error when ``name`` is not a device of this machine."""
    import torch

    if name == "cpu":
        return
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    index = int(name.partition(":")[2] or 0)
    if index >= count:
        available = ", ".join(["cpu"] + [f"cuda:{i}" for i in range(count)])
        why = "no CUDA GPU is available here" if count == 0 else f"this machine has {count} CUDA device(s)"
        raise ValueError(f"--device {name}: {why} (available: {available})")


def output_folder(args) -> Path:
    """--out, checked before anything runs: a writable place whose outputs may be (over)written."""
    if not args.out.strip():
        raise ValueError("--out: empty path")
    out = Path(os.path.realpath(args.out))  # 'sub/../x' is x: no stray sub/ is created
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {args.out}: exists and is not a folder")
    base = next(p for p in (out, *out.parents) if p.exists())
    if not base.is_dir() or not os.access(base, os.W_OK | os.X_OK):
        raise ValueError(f"--out {args.out}: cannot be created or written ({base} is not a writable folder)")
    if out.is_dir():
        _check_existing(args, out)
    return out


def _check_existing(args, out: Path) -> None:
    names = list(OUTPUT_NAMES)
    if args.alpha:
        names += sorted(p.name for p in out.glob(f"alpha_*.{args.alpha}"))
    existing = [n for n in names if os.path.lexists(out / n)]
    for n in existing:
        if (out / n).is_symlink():
            raise ValueError(f"--out {args.out}: {n} is a symbolic link; refusing to write through it (remove it)")
        if (out / n).is_dir() != (n in OUTPUT_FOLDERS):
            raise ValueError(f"--out {args.out}: {n} exists but is not a {'folder' if n in OUTPUT_FOLDERS else 'file'}")
    if existing and not args.overwrite:
        raise FileExistsError(f"{out} already holds {', '.join(existing)}; pass --overwrite to replace them")


def make_output_folder(out: Path) -> Path | None:
    """Create --out (ordinary permissions) and prove it takes files, before the first frame is processed.
    Returns the topmost folder created (None when --out existed)."""
    import tempfile

    top = next((p for p in (*reversed(out.parents), out) if not p.exists()), None)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=out):
        pass
    return top


def remove_if_empty(out: Path, top: Path | None) -> None:
    """Remove the folders make_output_folder created when nothing was written into them."""
    for folder in (out, *out.parents) if top is not None else ():
        try:
            folder.rmdir()
        except OSError:
            return
        if folder == top:
            return


def frame_range(args, source) -> tuple[int, int]:
    n = source.num_frames
    start, stop = args.start or 0, n if args.stop is None else args.stop
    if not 0 <= start < stop <= n:
        raise ValueError(f"--start {start} --stop {stop}: the video has {n} frames; need start < stop <= {n}")
    return start, stop


# ---------------------------------------------------------------------- prompts
def prompts_from_args(args, source, start: int = 0, stop: int | None = None) -> list:
    """Prompts from a --prompts JSON file and --points/--neg-points/--box/--mask/--text, checked against the
    frames start..stop-1 (--frame defaults to start)."""
    from .prompts_file import read_prompts_file

    stop = source.num_frames if stop is None else stop
    prompts = []
    if args.prompts:
        prompts += read_prompts_file(args.prompts, args.task == "refvos" and not args.text, source.num_frames,
                                     source.height, source.width)
    prompts += _option_prompts(args, source, 1 + max([p.obj_id for p in prompts], default=0), start, stop)
    _check_prompts(prompts, args, start, stop)
    return prompts


def _option_prompts(args, source, obj: int, start: int, stop: int) -> list:
    """One target from the click/box/mask options, one per --text; ids from ``obj`` on. Clicks and the box
    are held to the engine's rules (univs_engine/prompt_checks.py) here, before the model is loaded."""
    from .api import Prompt
    from .prompt_checks import check_box, check_points

    frame = start if args.frame is None else args.frame
    if not start <= frame < stop:
        raise ValueError(f"--frame {frame}: outside the frames processed, {start}..{stop - 1}")
    out = []
    if args.points or args.box or args.mask:
        size = source.width, source.height
        pts = check_points(args.points or [], *size, "--points")
        neg = check_points(args.neg_points or [], *size, "--neg-points")
        box = None if args.box is None else check_box(args.box, *size, "--box")
        mask = read_mask(args.mask, source) if args.mask else None
        out.append(Prompt(obj, frame, "target", pts + neg, [1] * len(pts) + [0] * len(neg), box, mask))
    for label, expr in args.text or []:
        out.append(Prompt(obj + len(out), frame, label, text=expr))
    return out


def _check_prompts(prompts: list, args, start: int, stop: int) -> None:
    top = max([p.obj_id for p in prompts], default=0)
    if top > MAX_OBJECT_ID:
        raise ValueError(f"object id {top}: ids go up to {MAX_OBJECT_ID} (the ids/ PNGs hold one byte per pixel)")
    twice = [key for key, n in Counter((p.obj_id, p.frame) for p in prompts).items() if n > 1]
    if twice:
        raise ValueError(f"--prompts {args.prompts}: object {twice[0][0]} is prompted twice on frame {twice[0][1]}")
    outside = [p for p in prompts if not start <= p.frame < stop]
    if outside:
        raise ValueError(f"--prompts {args.prompts}: object {outside[0].obj_id} is prompted on frame "
                         f"{outside[0].frame}, outside the frames processed, {start}..{stop - 1} (--start/--stop)")


def read_mask(path: str, source):
    """--mask PNG -> bool mask of the frame size (the size is checked before the image is decoded)."""
    import numpy as np
    from PIL import Image

    try:
        with Image.open(path) as img:
            if img.size != (source.width, source.height):
                raise ValueError(f"--mask {path}: {img.size[0]}x{img.size[1]} differs from the video frame size "
                                 f"{source.width}x{source.height}")
            return np.asarray(img.convert("L")) > 127
    except (OSError, Image.DecompressionBombError) as e:
        raise ValueError(f"--mask {path}: not a readable image ({e})") from None


# ---------------------------------------------------------------------- interrupts, unreadable frames
class Interrupts:
    """SIGINT and SIGTERM. While frames are processed the first one asks the run to stop after the current clip
    (what is finished is written, marked partial); a second one, or one during setup or writing, aborts at once
    (``Aborted``; writers leave nothing half-written under a final name)."""

    def __init__(self) -> None:
        self.name: str | None = None
        self.running = False
        self._old: dict = {}

    def __enter__(self) -> "Interrupts":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)

    def _handle(self, signum, _frame) -> None:
        if not self.running or self.name is not None:
            raise Aborted(signum)
        self.name = signal.Signals(signum).name
        sys.stderr.write(f"\nunivs: {self.name}: stopping after the current clip ({self.name} again aborts "
                         "without writing)\n")


class FrameGuard:
    """The video as the model reads it. A frame that cannot be read stops the run like Ctrl-C (``error`` names
    it) and is replaced, as is every frame read after it, by the last good frame so that the current clip can
    finish; :meth:`finished` then drops the frames from the bad one on."""

    def __init__(self, source) -> None:
        from .io.video import VideoSource

        self.inner = source
        self.error: str | None = None
        self.bad, self.forward = -1, True
        self._stream, self._next, self._step, self._last = None, -1, 1, None
        self.source = VideoSource.from_callable(self._frame, source.num_frames, source.height, source.width,
                                                fps=source.fps, name=source.name)

    def _frame(self, i: int):
        if self.error is None:
            try:
                return self._read(i)
            except (ValueError, OSError) as e:
                self.bad, self.forward = i, self._last is None or i > self._last[0]
                self.error = f"stopped at frame {i}: {e}"
        if self._last is None:
            import numpy as np

            return np.zeros((self.inner.height, self.inner.width, 3), np.uint8)
        return self._last[1]

    def _read(self, i: int):
        """Frame i, from one decoding stream while reads are consecutive (forwards or backwards)."""
        if self._stream is None or i != self._next:
            self._step = -1 if self._last is not None and i == self._last[0] - 1 else 1
            self.close()
            self._stream = self.inner.iter_frames(i, None if self._step > 0 else -1, self._step)
        item = next(self._stream, None)
        if item is None:
            raise ValueError("the decoder returned no frame")
        self._next, self._last = i + self._step, (i, item[1])
        return item[1]

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None

    def finished(self, tracks):
        """``tracks`` without the frames at and beyond the unreadable one (in the reading direction)."""
        keep = [f for f in tracks.segmented_frames() if (f < self.bad if self.forward else f > self.bad)]
        return subset(tracks, keep)


def subset(tracks, frames: list[int]):
    """A copy of ``tracks`` holding only ``frames`` (the only frames marked processed)."""
    from .results import Tracks

    keep = set(frames)
    out = Tracks(tracks.num_frames, tracks.height, tracks.width)
    out.fps, out.min_score = tracks.fps, tracks.min_score
    for oid in tracks.object_ids:
        i = tracks.info(oid)
        out.add_object(oid, i.label, i.category, i.isthing, i.score)
        for f in tracks.frames_with(oid):
            if f in keep:
                out.set_rle(f, oid, tracks.rle(f, oid), tracks.confidence(f, oid))
    for f in frames:
        out.mark_segmented(f)
    return out


# ---------------------------------------------------------------------- segment
def cmd_segment(args) -> int:
    """Check everything, load, run (stoppable), write. Returns the exit status."""
    from .io.video import VideoSource

    check_task_options(args)
    out = output_folder(args)
    with Interrupts() as stop:
        source = VideoSource(args.video)
        start, end = frame_range(args, source)
        prompts = prompts_from_args(args, source, start, end) if TASKS[args.task] == "track" else None
        check_device(args.device)
        model = load(args)
        created = make_output_folder(out)
        try:
            tracks, why = run(args, model, source, prompts, (start, end), stop)
            return finish(args, out, tracks, why, source)
        finally:
            remove_if_empty(out, created)


def load(args):
    import torch

    from .api import load_model

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    model = load_model(args.model, args.text_encoder, args.class_embeddings, args.device, dtype)
    model.compile(args.compile)
    return model


def run(args, model, source, prompts, frames: tuple[int, int], stop: Interrupts):
    """-> (tracks, None) when complete, (tracks so far, why it stopped) when stopped early."""
    from tqdm import tqdm

    from .api import Cancelled, RunOptions, segment, track

    guard = FrameGuard(source)
    bar = tqdm(total=frames[1] - frames[0], unit="frame", desc=f"univs {args.task}")

    def progress(done, total):
        bar.total, bar.n = total, done
        bar.refresh()

    def cancel():
        return stop.name is not None or guard.error is not None

    stop.running = True
    try:
        if prompts is not None:
            options = RunOptions(frames[0], frames[1], args.direction or "forward", args.task,
                                 prompt_mode=args.prompt_mode or "auto")
            tracks = track(model, guard.source, prompts, options, progress=progress, cancel=cancel)
        else:
            options = RunOptions(*frames, settings=args.task)
            tracks = segment(model, guard.source, TASKS[args.task], args.classes, options, progress=progress,
                             cancel=cancel)
        why = None
    except Cancelled as c:
        tracks, why = c.tracks, stop.name
    finally:
        stop.running = False
        guard.close()
        bar.close()  # errors and messages start on their own line
    if guard.error is not None:
        return guard.finished(tracks), guard.error
    return tracks, why


def exit_status(why: str | None) -> int:
    """0 complete, 128 + signal number when stopped by a signal, 2 when an unreadable frame stopped it."""
    if why is None:
        return 0
    return 128 + signal.Signals[why] if why in ("SIGINT", "SIGTERM") else 2


def finish(args, out: Path, tracks, why: str | None, source) -> int:
    """Write the outputs (or say why nothing was written) and return the exit status."""
    code = exit_status(why)
    if why is None:
        write_outputs(args, out, tracks, source, None)
        print(f"wrote {out}/ ({len(tracks.object_ids)} objects): " + ", ".join(sorted(p.name for p in out.iterdir())))
        _say_hidden(tracks, args)
        return 0
    done = tracks.segmented_frames()
    head = f"univs: error: {why}" if code == 2 else f"univs: stopped by {why}"
    if not done:
        print(f"{head}; no frame was finished, nothing written", file=sys.stderr)
        return code
    write_outputs(args, out, tracks, source, why)
    n = len(done)
    print(f"{head}; wrote the {n} finished frame{'s' * (n != 1)} ({_ranges_text(done)}) to {out}/, marked "
          "partial (legend.json: \"partial\": true)", file=sys.stderr)
    _say_hidden(tracks, args, sys.stderr)
    return code


def _say_hidden(tracks, args, file=None) -> None:
    """One line when objects scored below the task's threshold were left out of what is drawn."""
    hidden = len(tracks.object_ids) - len(tracks.shown_ids())
    if hidden:
        kept = "results.json, tracks.npz" if args.task == "vis" else "tracks.npz"
        print(f"{hidden} of {len(tracks.object_ids)} objects scored below the threshold {tracks.min_score:g} and are "
              f"left out of the preview and the PNGs (kept in {kept}; legend.json: \"shown\": false)",
              file=file or sys.stdout)


def write_outputs(args, out: Path, tracks, source, why: str | None) -> None:
    """Every output, each written atomically; legend.json last (its presence means the set is complete)."""
    from .io import writers as W

    done = tracks.segmented_frames()
    shown = tracks.shown_ids()  # drawn outputs leave out objects below the task's score threshold
    legend = out / "legend.json"
    if args.overwrite and legend.is_file() and not legend.is_symlink():
        legend.unlink()  # an old legend must not vouch for the new, half-written set
    W.save_tracks(tracks, out / "tracks.npz", overwrite=args.overwrite)
    W.export_id_pngs(tracks, out / "ids", obj_ids=shown, overwrite=args.overwrite, frames=done)
    if TASKS[args.task] == "track":
        W.export_mask_pngs(tracks, out / "masks", obj_ids=shown, overwrite=args.overwrite, frames=done)
    else:
        W.export_color_pngs(tracks, out / "color", obj_ids=shown, overwrite=args.overwrite, frames=done)
    if args.task == "vis":  # evaluation input: every result, whatever its score
        W.write_ytvis_json(out / "results.json", tracks, video_id=1, overwrite=args.overwrite, frames=done)
    for obj in shown if args.alpha else []:
        W.export_alpha_video(tracks, obj, out / f"alpha_{obj}.{args.alpha}", source, overwrite=args.overwrite,
                             frames=done, matte=_matte_settings(args))
    W.export_overlay_video(tracks, source, out / "preview.mp4", obj_ids=shown, overwrite=args.overwrite, frames=done)
    W.write_json(legend, legend_of(tracks, why), overwrite=args.overwrite)


def legend_of(tracks, why: str | None) -> dict:
    """legend.json: whether the run was partial (and why), the frames it processed, the score an object needs to
    be drawn, and one entry per object (``shown``: drawn in the preview and PNGs)."""
    done = tracks.segmented_frames()
    return {"partial": why is not None, "stopped_by": why, "num_frames": tracks.num_frames,
            "segmented_frames": _ranges(done), "min_score": tracks.min_score, "objects": tracks.legend()}


def _ranges(frames: list[int]) -> list[list[int]]:
    """[0, 1, 2, 5] -> [[0, 2], [5, 5]] (inclusive)."""
    out: list[list[int]] = []
    for f in frames:
        if out and f == out[-1][1] + 1:
            out[-1][1] = f
        else:
            out.append([f, f])
    return out


def _ranges_text(frames: list[int]) -> str:
    return ", ".join(f"{a}-{b}" if a != b else f"{a}" for a, b in _ranges(frames))


# ---------------------------------------------------------------------- other commands
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


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (the usage is one --help away)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="univs", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    _segment_parser(sub)
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


def _segment_parser(sub) -> None:
    s = sub.add_parser("segment", help="segment a video (file or frame folder)",
                       description="Segment a video. Prompt-guided tasks (vos, pvos, refvos) take --points, "
                       "--box, --mask, --text or --prompts; category-guided ones (vis, vss, vps) take --classes.")
    s.add_argument("video", help="video file or folder of frames")
    s.add_argument("--out", default="out", help="output folder (default: out)")
    s.add_argument("--task", choices=sorted(TASKS), default="vos", help="default vos")
    s.add_argument("--model", default="small", help="'small' (built-in) or a UniVS checkpoint (.pth/.safetensors)")
    s.add_argument("--text-encoder", help="CLIP RN50x4 text-encoder file (official models, text prompts)")
    s.add_argument("--class-embeddings", help="official combined_datasets_cls_emb_rn50x4.pth")
    s.add_argument("--prompts", help="JSON file with objects[].prompt (see assets/sample.json)")
    s.add_argument("--frame", type=_count, help="frame of --points/--box/--mask/--text (default: --start)")
    s.add_argument("--points", type=_points, help="positive clicks x,y;x,y (pixels)")
    s.add_argument("--neg-points", type=_points, help="negative clicks x,y;x,y")
    s.add_argument("--box", type=_box, help="x0,y0,x1,y1 (pixels)")
    s.add_argument("--mask", help="PNG mask of the target on --frame (the video's frame size)")
    s.add_argument("--text", action="append", type=_expression,
                   help="referring expression ('label: expression'); repeatable")
    s.add_argument("--classes", type=_classes, help="comma-separated vocabulary for vis/vss/vps (default: the model's)")
    s.add_argument("--direction", choices=["forward", "backward", "both"], help="default forward")
    s.add_argument("--prompt-mode", choices=["auto", "official", "refine"],
                   help="how --box/--points become prompts: official = the trained box/point encoders (a box or "
                   "positive clicks alone), refine = a filled box/click disks refined by one model pass (also takes "
                   "--neg-points); default auto = official where it applies")
    s.add_argument("--start", type=_count, help="first frame to process (default 0)")
    s.add_argument("--stop", type=_count, help="frame to stop before (default: the end)")
    s.add_argument("--device", type=_device, default="cpu", help="cpu (default), cuda or cuda:N")
    s.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32",
                   help="compute precision (autocast; weights stay fp32)")
    s.add_argument("--compile", action="store_true", help="torch.compile the model (fullgraph; CUDA graphs on a GPU): "
                   "minutes of compiling per video size, then faster frames; not yet measured on a GPU")
    s.add_argument("--alpha", choices=["mov", "webm"], help="also write one alpha video per object "
                   "(ProRes 4444 .mov or VP9 .webm)")
    s.add_argument("--matte-band", type=_count, help="alpha videos: soft edges that follow the image, this many "
                   "pixels on each side of the mask edge (default 0: hard edges)")
    s.add_argument("--matte-smoothness", type=float, help="alpha videos: soft-edge regulariser "
                   "(default 0.003; larger = smoother, follows the image less)")
    s.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    s.set_defaults(func=cmd_segment)


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split("\n"))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["train"]:  # the trainer owns its options (and its --help); it lives in a clone, next to us
        trainer = Path(__file__).resolve().parents[1] / "univs_train"
        if not (trainer / "train.py").is_file():  # a wheel install: inference only
            print(f"univs train: error: training needs a clone of the repository (pip install -e . in it, or "
                  f"ComfyUI's git clone); this install has no univs_train/ next to {Path(__file__).parent}",
                  file=sys.stderr)
            return 2
        if "univs_train" not in sys.modules:  # by file location: the clone's root (with nodes/) stays off sys.path
            import importlib.util

            spec = importlib.util.spec_from_file_location("univs_train", trainer / "__init__.py",
                                                          submodule_search_locations=[str(trainer)])
            sys.modules["univs_train"] = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(sys.modules["univs_train"])
        from univs_train.train import main as train_main

        return train_main(argv[1:]) or 0
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help (0) or a bad option (2), already reported on one line
        return e.code if isinstance(e.code, int) else 2
    try:
        return args.func(args)
    except KeyboardInterrupt as e:
        signum = getattr(e, "signum", signal.SIGINT)
        print(f"univs: aborted by {signal.Signals(signum).name}; nothing more was written", file=sys.stderr)
        return 128 + signum
    except (ValueError, OSError) as e:  # CheckpointError is a ValueError; OSError: unreadable/unwritable files
        print(f"univs: error: {_one_line(e)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
