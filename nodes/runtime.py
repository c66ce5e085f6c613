"""Glue between ComfyUI services and the engine, written as plain functions.

ComfyUI modules (``folder_paths``, ``comfy.model_management``, ``comfy.utils``, ``comfy.model_patcher``) are
passed in as arguments, so tests drive these functions with small fakes and ComfyUI is never imported here.
"""
from __future__ import annotations

import io as _io
import os
import shutil
import uuid
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

__all__ = [
    "MODEL_FOLDER",
    "BUILTIN_MODEL",
    "NONE_OPTION",
    "MODEL_EXTENSIONS",
    "register_model_folder",
    "model_file_options",
    "resolve_model_file",
    "resolve_device",
    "resolve_precision",
    "UniVSHandle",
    "make_progress",
    "reuse_record",
    "make_cancel",
    "video_to_path",
    "wrap_model",
    "editor_frames",
    "SAMPLE_NAME",
    "place_sample_video",
]

SAMPLE_NAME = "univs_sample.mp4"  # the file name the templates' Load Video nodes ask for

MODEL_FOLDER = "univs"
BUILTIN_MODEL = "univs_small (built-in)"
NONE_OPTION = "none"
MODEL_EXTENSIONS = {".safetensors", ".sft", ".pth", ".pt", ".pkl", ".bin", ".ckpt"}


# =============================================================================================== model files
def register_model_folder(folder_paths: Any) -> list[str]:
    """Register ``models/univs`` (kept alongside any ``univs:`` entries from extra_model_paths.yaml).

    Returns the folder list. Only model-file extensions are listed (a bare ``add_model_folder_path`` of a new
    name would list every file, README or not).
    """
    default = os.path.join(folder_paths.models_dir, MODEL_FOLDER)
    try:
        os.makedirs(default, exist_ok=True)  # so users see where the files go
    except OSError:
        pass
    folder_paths.add_model_folder_path(MODEL_FOLDER, default)
    paths, exts = folder_paths.folder_names_and_paths[MODEL_FOLDER]
    folder_paths.folder_names_and_paths[MODEL_FOLDER] = (paths, set(exts) | MODEL_EXTENSIONS)
    return list(paths)


def model_file_options(folder_paths: Any, builtin: bool = True, none: bool = False) -> list[str]:
    """Combo options: the built-in model and/or "none" first, then the files found in the ``univs`` folders."""
    try:
        files = list(folder_paths.get_filename_list(MODEL_FOLDER))
    except Exception:  # folder not registered (never in practice) -> only the fixed options
        files = []
    head = ([BUILTIN_MODEL] if builtin else []) + ([NONE_OPTION] if none else [])
    return head + [f for f in files if f not in head]


def resolve_model_file(folder_paths: Any, name: str, input_name: str) -> str | None:
    """Combo value -> ``"small"`` (built-in), ``None`` ("none") or the full path; ValueError names the folders."""
    if name in (None, "", NONE_OPTION):
        return None
    if name == BUILTIN_MODEL:
        return "small"
    path = folder_paths.get_full_path(MODEL_FOLDER, name)
    if path is None or not os.path.isfile(path):
        folders = folder_paths.get_folder_paths(MODEL_FOLDER)
        raise ValueError(
            f"{input_name}: {name!r} was not found in the UniVS model folders {folders} (models/univs or a 'univs:' "
            "entry of extra_model_paths.yaml); put the file there and refresh the node"
        )
    return path


def converted_checkpoint(path: str) -> str:
    """An official ``.pth`` is converted once to ``.safetensors`` beside it: later loads are faster and read
    no pickle at all. The ``.pth`` is never modified; an existing ``.safetensors`` is used as it is; a
    ``.safetensors`` that cannot be written there (read-only folder or file system, full disk, a folder in
    the way: any OSError of the destination) keeps using the ``.pth``, with a log line saying why. A ``.pth``
    that is itself refused (pickled code, broken weights) raises its CheckpointError."""
    import logging
    from pathlib import Path

    from univs_engine.checkpoint import CheckpointWriteError, convert_checkpoint

    src = Path(path)
    if src.suffix not in (".pth", ".pt"):
        return path
    dst = src.with_suffix(".safetensors")
    if dst.is_file():
        return str(dst)
    try:
        return str(convert_checkpoint(src, dst))
    except (CheckpointWriteError, OSError) as e:  # CheckpointWriteError is an OSError too
        logging.getLogger("univs").warning("UniVS: not converting %s to %s (%s); loading the .pth directly",
                                           src.name, dst, e)
        return path


def resolve_device(choice: str, mm: Any) -> torch.device:
    """``auto`` = ComfyUI's torch device (honours --cpu, --directml, ...); ``cpu``; ``gpu`` = ComfyUI's device too."""
    if choice == "cpu":
        return torch.device("cpu")
    dev = mm.get_torch_device()
    if choice == "gpu" and torch.device(dev).type == "cpu":
        raise ValueError("device: 'gpu' was chosen but ComfyUI runs on the CPU (started with --cpu or no GPU found)")
    return torch.device(dev)


def resolve_precision(choice: str, device: torch.device, mm: Any) -> torch.dtype:
    """``auto``: fp32 on CPU/MPS; bf16 on GPUs ComfyUI says support it; else fp32. fp16/bf16 are refused on CPU."""
    choice = (choice or "auto").lower()
    is_cpu = torch.device(device).type == "cpu"
    if choice == "fp32":
        return torch.float32
    if choice in ("fp16", "bf16"):
        if is_cpu or torch.device(device).type == "mps":
            where = "the CPU" if is_cpu else "MPS (never run there: the engine keeps MPS in fp32)"
            raise ValueError(f"precision: {choice} is not supported on {where}; use fp32 or auto")
        return torch.float16 if choice == "fp16" else torch.bfloat16
    if choice != "auto":
        raise ValueError(f"precision: unknown value {choice!r} (auto, fp32, fp16, bf16)")
    if is_cpu or torch.device(device).type == "mps":
        return torch.float32
    try:
        if mm.should_use_bf16(device, prioritize_performance=False):
            return torch.bfloat16
    except Exception:
        pass
    return torch.float32


@dataclass
class UniVSHandle:
    """The UNIVS_MODEL value: engine model + ComfyUI ModelPatcher (when available) + load settings."""

    model: Any
    patcher: Any = None
    name: str = ""
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dtype: torch.dtype = torch.float32
    offload_after_run: bool = False
    has_text_encoder: bool = False

    def prepare(self, mm: Any = None) -> Any:
        """Load onto the run device (through ComfyUI's memory manager when wrapped) and return the model."""
        if self.patcher is not None and mm is not None:
            mm.load_models_gpu([self.patcher], force_full_load=True)
        self.model.to(self.device)
        return self.model

    def release(self, mm: Any = None) -> None:
        """After a run: give the memory back when asked to (``offload_after_run``)."""
        if not self.offload_after_run:
            return
        if self.patcher is not None and hasattr(self.patcher, "offload_device"):
            self.model.to(self.patcher.offload_device)
            if hasattr(self.patcher, "detach"):
                try:
                    self.patcher.detach(unpatch_all=False)
                except Exception:
                    pass
        if mm is not None:
            mm.soft_empty_cache()

    def __repr__(self) -> str:
        return f"UniVSHandle({self.name!r}, device={self.device}, dtype={self.dtype})"


def wrap_model(model: Any, device: torch.device, model_patcher_mod: Any, mm: Any) -> Any:
    """Wrap the network (and its text encoder) in a ComfyUI ModelPatcher so the memory manager sees it.

    Returns ``None`` when wrapping is not possible, after a warning naming the cause: the model is then moved
    by hand, and ComfyUI's memory manager neither counts nor unloads it."""
    import logging

    log = logging.getLogger("univs")
    if model_patcher_mod is None or mm is None:
        log.warning("UniVS: the model is not registered with ComfyUI's memory manager (%s is not available); it "
                    "is moved to %s by hand and ComfyUI will not unload it to free memory",
                    "comfy.model_patcher" if model_patcher_mod is None else "comfy.model_management", device)
        return None
    try:
        bundle = torch.nn.Module()
        bundle.net = model.net
        enc = getattr(getattr(model, "text", None), "encoder", None)
        if isinstance(enc, torch.nn.Module):
            bundle.text_encoder = enc
        cls = getattr(model_patcher_mod, "CoreModelPatcher", None) or model_patcher_mod.ModelPatcher
        offload = mm.unet_offload_device() if torch.device(device).type != "cpu" else torch.device("cpu")
        return cls(bundle, load_device=device, offload_device=offload)
    except Exception as e:  # the ModelPatcher API differs between ComfyUI versions: run without it, and say so
        log.warning("UniVS: the model is not registered with ComfyUI's memory manager (wrapping it in a "
                    "ModelPatcher failed: %s: %s); it is moved to %s by hand and ComfyUI will not unload it to "
                    "free memory", type(e).__name__, e, device)
        return None


# =============================================================================================== progress, cancel
def make_progress(pbar: Any) -> Callable[[int, int], None]:
    """Engine ``progress(done, total)`` -> ``ProgressBar.update_absolute`` (which also checks for interrupts)."""

    def progress(done: int, total: int) -> None:
        pbar.update_absolute(int(done), int(total))

    return progress


def make_cancel(mm: Any) -> Callable[[], bool]:
    """Engine ``cancel()`` -> ComfyUI's interrupt flag (the Cancel button)."""

    def cancel() -> bool:
        return bool(mm.processing_interrupted())

    return cancel


# =============================================================================================== sample video
def place_sample_video(source: str | os.PathLike, input_dir: str | os.PathLike) -> str | None:
    """Copy the pack's sample clip into ComfyUI's input folder as ``SAMPLE_NAME`` unless a file of that name is
    already there (a user's file is never replaced). Returns the path, or None when the folder is not writable.

    The copy goes to a temporary name first and is linked into place, so a concurrent or interrupted start never
    leaves a half-written video under the final name.
    """
    from univs_engine.atomic import atomic_file

    dst = os.path.join(os.fspath(input_dir), SAMPLE_NAME)
    if os.path.lexists(dst):
        return dst
    try:
        with atomic_file(dst, overwrite=False) as tmp, open(tmp, "wb") as out, open(source, "rb") as src:
            shutil.copyfileobj(src, out)
    except OSError:  # FileExistsError included: a file that appeared meanwhile is kept, never overwritten
        return dst if os.path.lexists(dst) else None
    return dst


# =============================================================================================== VIDEO input
def video_to_path(video: Any, temp_dir: str) -> tuple[str, bool]:
    """Core VIDEO (``VideoInput``) -> a file path the engine can stream from; ``(path, is_temporary)``.

    A file-backed, untrimmed video is read in place. A trimmed one is re-encoded once into ``temp_dir``
    (streamed by PyAV, bounded memory); an in-memory one (BytesIO) is written there as is.
    """
    if not hasattr(video, "get_stream_source"):
        raise ValueError(f"video: expected a VIDEO from LoadVideo / CreateVideo, got {type(video).__name__}")
    trimmed = False
    if hasattr(video, "get_active_trim_window"):
        start, duration = video.get_active_trim_window()
        trimmed = bool(start) or bool(duration)
    os.makedirs(temp_dir, exist_ok=True)
    if trimmed:
        path = os.path.join(temp_dir, f"univs_trim_{uuid.uuid4().hex[:10]}.mp4")
        video.save_to(path)
        return path, True
    src = video.get_stream_source()
    if isinstance(src, (str, os.PathLike)):
        if not os.path.isfile(src):
            raise ValueError(f"video: source file {src} does not exist")
        return os.fspath(src), False
    if isinstance(src, (_io.BytesIO, _io.BufferedIOBase)) or hasattr(src, "read"):
        path = os.path.join(temp_dir, f"univs_video_{uuid.uuid4().hex[:10]}.mp4")
        if hasattr(src, "seek"):
            src.seek(0)
        with open(path, "wb") as fh:
            shutil.copyfileobj(src, fh, length=8 << 20)
        return path, True
    raise ValueError(f"video: unsupported stream source {type(src).__name__}")


# =============================================================================================== prompt-editor frames
EDITOR_SUBFOLDER = "univs_editor"
EDITOR_CACHE_FILES = 1000  # JPEGs kept in the editor's temp folder (at least the frames of the latest call stay)
EDITOR_JPEG_QUALITY = 85


def editor_frames(image: Any, temp_dir: str, max_frames: int = 240, max_side: int = 768,
                  keep: int = EDITOR_CACHE_FILES) -> dict[str, Any]:
    """Down-scaled JPEGs of an IMAGE batch for the web prompt editor -> the node's ``ui`` entries
    (``univs_frames``: one ``{filename, subfolder, type, frame}`` per shown frame; ``univs_size``: ``[W, H, T]``).

    At most ``max_frames`` frames are shown (every ``step``-th), scaled so the long side is at most ``max_side``.
    A file is named by a hash of everything it is made from (the frame's 8-bit pixels, the output size and the
    JPEG quality), so an unchanged frame is not encoded again and two clips that differ in a shown frame never
    share its file. ``temp_dir/univs_editor`` is a small LRU cache: a reused file is touched, and the least
    recently used files beyond ``keep`` (never those of this call) are deleted.
    """
    import hashlib

    import numpy as np
    from PIL import Image

    from univs_engine.atomic import atomic_file

    from .convert import _check_image, _frame_to_uint8

    image = _check_image(image, "image")
    T, H, W = int(image.shape[0]), int(image.shape[1]), int(image.shape[2])
    step = max(1, -(-T // max_frames))
    scale = min(1.0, max_side / max(H, W))
    size = (max(1, round(W * scale)), max(1, round(H * scale)))
    folder = os.path.join(temp_dir, EDITOR_SUBFOLDER)
    os.makedirs(folder, exist_ok=True)
    frames, used = [], set()
    for i in range(0, T, step):
        pixels = np.ascontiguousarray(_frame_to_uint8(image[i]))
        digest = hashlib.blake2b(f"{W}x{H}>{size[0]}x{size[1]}q{EDITOR_JPEG_QUALITY}".encode(), digest_size=16)
        digest.update(memoryview(pixels).cast("B"))
        name = f"f_{digest.hexdigest()}.jpg"
        path = os.path.join(folder, name)
        if os.path.exists(path):
            os.utime(path)  # most recently used
        else:
            img = Image.fromarray(pixels)
            if scale < 1.0:
                img = img.resize(size, Image.BILINEAR)
            with atomic_file(path, suffix=".jpg") as tmp:  # the browser never reads a half-written file
                img.save(tmp, format="JPEG", quality=EDITOR_JPEG_QUALITY)
        used.add(name)
        frames.append({"filename": name, "subfolder": EDITOR_SUBFOLDER, "type": "temp", "frame": i})
    _evict_editor_frames(folder, used, keep)
    return {"univs_frames": frames, "univs_size": [W, H, T]}


def _evict_editor_frames(folder: str, used: set[str], keep: int) -> None:
    """Delete the least recently used editor JPEGs beyond ``keep`` files, sparing ``used``."""
    entries = []
    with os.scandir(folder) as it:
        for e in it:
            if e.name.startswith("f_") and e.name.endswith(".jpg") and e.name not in used:
                try:
                    entries.append((e.stat().st_mtime_ns, e.path))
                except OSError:
                    continue
    excess = len(entries) + len(used) - max(keep, len(used))
    for _mtime, path in sorted(entries)[:max(0, excess)]:
        try:
            os.remove(path)
        except OSError:
            pass


# ---------------------------------------------------------------------------------------------- corrections
REUSE_ENTRIES = 2  # (model, video) pairs whose last tracking run is kept for incremental corrections
_reuse: list[tuple[Any, Any, Any]] = []  # (weakref to the model, weakref to the video input, RunRecord), oldest first


def reuse_record(model: Any, video_input: Any):
    """The RunRecord of the last tracking run of `model` on this very video input (an IMAGE tensor or VIDEO
    object, the same object while ComfyUI serves it from its cache), so that a re-run after a correction
    recomputes only from the corrected frame. Identity, not content: a new input object starts afresh."""
    from univs_engine.reuse import RunRecord

    for k, (m, v, record) in enumerate(_reuse):
        if m() is model and v() is video_input:
            _reuse.append(_reuse.pop(k))
            return record
    record = RunRecord()
    try:
        _reuse.append((weakref.ref(model), weakref.ref(video_input), record))
    except TypeError:  # an input that cannot be referenced weakly is never matched again: no reuse
        return record
    del _reuse[:-REUSE_ENTRIES]
    return record
