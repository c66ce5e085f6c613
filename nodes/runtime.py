"""Glue between ComfyUI services and the engine, written as plain functions.

ComfyUI modules (``folder_paths``, ``comfy.model_management``, ``comfy.utils``, ``comfy.model_patcher``) are
passed in as arguments, so tests drive these functions with small fakes and ComfyUI is never imported here.
"""
from __future__ import annotations

import io as _io
import os
import shutil
import tempfile
import uuid
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
    "make_cancel",
    "video_to_path",
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
        if is_cpu:
            raise ValueError(f"precision: {choice} is not supported on the CPU; use fp32 or auto")
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

    Returns ``None`` when wrapping is not possible (then the model is moved by hand)."""
    if model_patcher_mod is None or mm is None:
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
    except Exception:
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
    from univs_engine.io.writers import normal_mode

    dst = os.path.join(os.fspath(input_dir), SAMPLE_NAME)
    if os.path.lexists(dst):
        return dst
    try:
        os.makedirs(input_dir, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".univs_sample.", suffix=".tmp", dir=input_dir)
    except OSError:
        return None
    try:
        with os.fdopen(fd, "wb") as out, open(source, "rb") as src:
            shutil.copyfileobj(src, out)
        normal_mode(tmp)  # mkstemp makes 0600; the user's other input files follow the umask
        try:
            os.link(tmp, dst)  # fails if the name appeared meanwhile: nothing is overwritten
        except FileExistsError:
            pass
        except OSError:  # file systems without hard links
            if not os.path.lexists(dst):
                os.replace(tmp, dst)
        return dst
    except OSError:
        return None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


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
