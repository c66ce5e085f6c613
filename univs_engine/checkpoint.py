"""Loading UniVS checkpoints as users have them: official detectron2 `.pth` files or `.safetensors`.

A checkpoint never executes code: `.pth` files are read with `torch.load(weights_only=True)` (see
`torch_load_tensors`), and a file holding pickled Python objects is refused. Weights are checked before
they reach a model (`check_weights` / `load_weights`: keys, shapes, dtypes, NaN/inf). Problems are reported
as `CheckpointError` naming the file and what is wrong with it; a file that cannot be written is a
`CheckpointWriteError` (also an `OSError`) and never leaves a partial file under its final name.
"""
from __future__ import annotations

import errno as _errno
import json
import os
import pickle
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .atomic import atomic_file, temp_file
from .config import PRESETS, UniVSConfig, get_config

MODEL_PREFIXES = ("backbone.", "sem_seg_head.")
EMA_PREFIXES = {"backbone_t.": "backbone.", "sem_seg_head_t.": "sem_seg_head."}
TEXT_ENCODER_KEYS = ("token_embedding.weight", "positional_embedding", "text_projection")


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used, with the file named in the message."""


class CheckpointWriteError(CheckpointError, OSError):
    """A checkpoint could not be written (unwritable or read-only folder, full disk, a folder in the way).

    Also an OSError, with `errno` set when known; the message is one line naming the path and the reason."""


@dataclass
class KeyReport:
    """Differences between a checkpoint and a model's state dict."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple, tuple]] = field(default_factory=list)  # key, ckpt shape, model shape

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def describe(self, limit: int = 5) -> str:
        def clip(items):
            items = list(items)
            more = f" ... (+{len(items) - limit} more)" if len(items) > limit else ""
            return ", ".join(map(str, items[:limit])) + more

        parts = []
        if self.missing:
            parts.append(f"{len(self.missing)} missing: {clip(self.missing)}")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} unexpected: {clip(self.unexpected)}")
        if self.mismatched:
            parts.append(f"{len(self.mismatched)} with other shapes: "
                         + clip(f"{k} {tuple(a)} vs model {tuple(b)}" for k, a, b in self.mismatched))
        return "; ".join(parts) or "all keys match"


def compare_keys(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> KeyReport:
    """Compare checkpoint tensors with a model state dict (keys and shapes)."""
    rep = KeyReport()
    rep.missing = [k for k in expected if k not in state]
    rep.unexpected = [k for k in state if k not in expected]
    rep.mismatched = [(k, tuple(state[k].shape), tuple(v.shape)) for k, v in expected.items()
                      if k in state and tuple(state[k].shape) != tuple(v.shape)]
    return rep


_PICKLE_HINTS = ("global", "class", "blocked", "reduce", "build", "newobj", "allowlist")


def _torch_reason(exc: BaseException) -> str:
    """torch's own reason for a failed load, without its advice (to load the file unsafely, which would run
    its code: never passed on to a user)."""
    inner = exc.__context__ if isinstance(exc, pickle.UnpicklingError) and exc.__context__ is not None else exc
    lines = [ln.strip() for ln in str(inner).splitlines() if ln.strip()]
    keep = [ln for ln in lines if not re.search(r"weights_only|trusted source|file an issue|documentation of torch|"
                                                r"arbitrary code|torch\.serialization", ln, re.IGNORECASE)]
    return " ".join(keep)[:200]


def looks_like_safetensors(path: str | os.PathLike) -> bool:
    """A safetensors file by its content (even a truncated one): an 8-byte header size, then a JSON object."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(9)
    except OSError:
        return False
    return len(head) == 9 and 2 <= int.from_bytes(head[:8], "little") <= 100_000_000 and head[8:9] == b"{"


def _looks_pickled(path: Path) -> bool:
    """A torch archive (zip holding data.pkl) or a bare pickle stream (protocol 2+)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(2)
    except OSError:
        return False
    if looks_like_safetensors(path):
        return False
    return head == b"PK" or (len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5)


def describe_load_failure(path: str | os.PathLike, exc: BaseException, what: str = "checkpoint") -> CheckpointError:
    """The CheckpointError for a failed torch.load of `path`: pickled Python objects are named as such (what
    they refer to, when torch says), anything else is "not readable"; torch's advice is never repeated."""
    path = Path(path)
    reason = _torch_reason(exc)
    if isinstance(exc, pickle.UnpicklingError) and (
            _looks_pickled(path) or any(h in reason.lower() for h in _PICKLE_HINTS)):
        named = re.search(r"GLOBAL ([\w.]+)", str(exc.__context__ or exc))
        detail = f" (it refers to {named.group(1)})" if named else ""
        return CheckpointError(
            f"{what} {path} holds pickled Python objects, which would run code when loaded; this project never "
            f"loads them, only plain tensors{detail}. Use a file that holds only a state dict of tensors "
            f"(.pth) or a .safetensors file")
    detail = f": {reason}" if reason else ""
    return CheckpointError(f"{what} {path} is not a readable PyTorch checkpoint "
                           f"(truncated, corrupt or another format){detail}")


def torch_load_tensors(path: str | os.PathLike, what: str = "checkpoint"):
    """`torch.load(weights_only=True)` with errors a user can act on (CheckpointError naming the file).

    The only torch.load of the project's checkpoint readers: plain containers (dict, list, tuple), numbers,
    strings and tensors load; anything needing other Python objects is refused, and the message never
    repeats torch's advice to retry the load unsafely."""
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Detected pickle protocol 4 ...": the error below says it all
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001  torch raises many types for bad files
        raise describe_load_failure(path, e, what) from None


def read_state_dict(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read tensors (and safetensors metadata) from `.pth`/`.pt` or `.safetensors` without running code."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist (or is not a file)")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes): the download or copy did not finish")
    if path.suffix in (".safetensors", ".sft") or looks_like_safetensors(path):
        try:
            from safetensors import safe_open

            with safe_open(str(path), "pt") as f:
                meta = f.metadata() or {}
            return load_file(str(path)), meta
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"checkpoint {path} is not a readable .safetensors file "
                                  f"(truncated or corrupt?): {e}") from None
    obj = torch_load_tensors(path)
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]  # detectron2 Checkpointer layout
    if not isinstance(obj, dict) or not any(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"checkpoint {path} holds no state dict (found {type(obj).__name__})")
    state = {str(k).removeprefix("module."): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    return state, {}


# ------------------------------------------------------------------------------------------ weight checks
def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def check_finite(tensors: Mapping[str, torch.Tensor], path, what: str = "checkpoint") -> None:
    """Refuse NaN / inf in floating tensors, naming the file and the first bad key."""
    for k, v in tensors.items():
        if isinstance(v, torch.Tensor) and (v.is_floating_point() or v.is_complex()) and v.numel():
            finite = torch.isfinite(v)
            if not bool(finite.all()):
                bad = int((~finite).sum())
                kinds = "/".join(n for n, hit in (("NaN", bool(torch.isnan(v).any())),
                                                  ("inf", bool(torch.isinf(v).any()))) if hit)
                raise CheckpointError(f"{what} {path}: tensor {k} holds {kinds} values ({bad} of {v.numel()}); "
                                      f"refusing broken weights (a diverged or corrupted run?)")


def check_weights(weights: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor], path,
                  target: str = "the model", what: str = "checkpoint", key_prefix: str = "") -> None:
    """Everything that must hold before `weights` are loaded into a module whose state dict is `expected`
    (meta tensors are fine): the same keys and shapes (a CheckpointError lists the missing, unexpected and
    mis-shaped keys, first few of each with counts), floating point exactly where the model has it (an
    integer or bool tensor would be cast silently), and finite values. Messages name keys as the file does
    (`key_prefix` + the module's key)."""
    if key_prefix:
        weights = {key_prefix + k: v for k, v in weights.items()}
        expected = {key_prefix + k: v for k, v in expected.items()}
    rep = compare_keys(weights, expected)
    if not rep.ok:
        raise CheckpointError(f"{what} {path} does not fit {target}: {rep.describe()}")
    for k, v in weights.items():
        if not isinstance(v, torch.Tensor):
            raise CheckpointError(f"{what} {path}: entry {k} is a {type(v).__name__}, not a tensor")
        want = expected[k]
        if v.is_floating_point() != want.is_floating_point() or v.is_complex() != want.is_complex():
            kind = "floating point" if want.is_floating_point() else "integers"
            raise CheckpointError(f"{what} {path}: tensor {k} is {_dtype_name(v.dtype)} but {target} expects "
                                  f"{kind} ({_dtype_name(want.dtype)}); refusing weights of the wrong type")
    check_finite(weights, path, what)


def load_weights(module: torch.nn.Module, weights: Mapping[str, torch.Tensor], path,
                 target: str | None = None, what: str = "checkpoint", key_prefix: str = "") -> None:
    """`check_weights`, then a strict `load_state_dict`: the one way weights from a file reach a module."""
    check_weights(weights, module.state_dict(), path, target or f"the {type(module).__name__} model", what,
                  key_prefix)
    try:
        module.load_state_dict(dict(weights), strict=True)
    except (RuntimeError, ValueError, TypeError) as e:  # checked above; a last guard against a raw traceback
        raise CheckpointError(f"{what} {path} could not be loaded into {target or type(module).__name__}: "
                              f"{str(e).splitlines()[0][:300]}") from None


def infer_config(state: dict[str, torch.Tensor], path: Path, meta: dict[str, str]) -> UniVSConfig:
    """Which preset a state dict belongs to, from its metadata or its shapes."""
    if "univs_config" in meta:
        try:
            return get_config(meta["univs_config"])
        except ValueError as e:
            raise CheckpointError(f"{path}: its metadata names {e}") from None
    if any(k in state for k in TEXT_ENCODER_KEYS) and not any(k.startswith(MODEL_PREFIXES) for k in state):
        raise CheckpointError(f"{path} is a CLIP text-encoder file, not a UniVS checkpoint: pass it as the "
                              f"text encoder, and the UniVS checkpoint (e.g. univs_r50_stage3*.pth) as the model")
    if not any(k.startswith(MODEL_PREFIXES) for k in state):
        sample = ", ".join(list(state)[:5])
        raise CheckpointError(f"{path} is not a UniVS checkpoint: no backbone.* / sem_seg_head.* keys "
                              f"(first keys: {sample})")
    stem = state.get("backbone.stem.conv1.weight")
    if stem is not None:
        small = PRESETS["small"]
        return small if stem.shape[0] == small.backbone.stem_out else PRESETS["r50"]
    patch = state.get("backbone.patch_embed.proj.weight")
    if patch is not None:
        for name in ("swint", "swinb", "swinl"):
            cfg = PRESETS[name]
            deep = f"backbone.layers.2.blocks.{cfg.backbone.depths[2] - 1}.norm1.weight"
            if patch.shape[0] == cfg.backbone.embed_dim and deep in state:
                return cfg
    raise CheckpointError(f"{path}: cannot tell which UniVS backbone this checkpoint is for")


def select_weights(state: dict[str, torch.Tensor], use_ema: bool) -> dict[str, torch.Tensor]:
    """Model tensors only; with use_ema the stage-3 EMA teacher (backbone_t./sem_seg_head_t.) replaces
    the student's parameters (buffers stay the student's, as the official demo does)."""
    out = {k: v for k, v in state.items() if k.startswith(MODEL_PREFIXES)}
    if use_ema:
        teacher = {EMA_PREFIXES[p] + k[len(p):]: v for k, v in state.items() for p in EMA_PREFIXES if k.startswith(p)}
        if not teacher:
            raise CheckpointError("use_ema was requested but the checkpoint has no EMA teacher weights "
                                  "(backbone_t.* / sem_seg_head_t.*); only stage-3 files have them")
        out.update({k: v for k, v in teacher.items() if k in out and not k.endswith(("running_mean", "running_var"))})
    return out


def load_checkpoint(path: str | os.PathLike, use_ema: bool = False, config: str | None = None):
    """Build the right model for a checkpoint and load it -> UniVS (eval mode, fp32, CPU)."""
    from .modeling.univs import build_univs

    path = Path(path)
    state, meta = read_state_dict(path)
    cfg = get_config(config) if config else infer_config(state, path, meta)
    model = build_univs(cfg)
    weights = select_weights(state, use_ema)
    rep = compare_keys(weights, model.state_dict())
    if not rep.ok:
        raise CheckpointError(f"checkpoint {path} does not fit the {cfg.name} model config: {rep.describe()}. "
                              f"Is the config right for this file (backbone mismatch)?")
    # official quirk: cls_temp and reid_temp share storage, so the loaded value is reid_temp's
    key = "sem_seg_head.predictor."
    weights[key + "cls_temp.weight"] = weights[key + "reid_temp.weight"]
    load_weights(model, weights, path, f"the {cfg.name} model config")
    return model


_WRITE_REASONS = {
    _errno.EACCES: "permission denied (the folder is not writable)",
    _errno.EPERM: "permission denied (the folder is not writable)",
    _errno.EROFS: "read-only file system",
    _errno.ENOSPC: "no space left on device (disk full)",
    _errno.EDQUOT: "disk quota exceeded",
    _errno.EISDIR: "it is a folder, not a file name",
    _errno.ENOTDIR: "a part of the path is a file, not a folder",
    _errno.ENAMETOOLONG: "the file name is too long",
    _errno.EIO: "input/output error (failing disk or lost network mount?)",
}


def _write_error(dst: Path, exc: BaseException) -> CheckpointWriteError:
    """One line naming the path and the reason (an errno when the OS gave one)."""
    code = getattr(exc, "errno", None)
    if code is None:  # safetensors reports I/O errors as text: "... No space left on device (os error 28)"
        m = re.search(r"os error (\d+)", str(exc))
        code = int(m.group(1)) if m else None
    reason = _WRITE_REASONS.get(code) or (os.strerror(code) if code else str(exc).splitlines()[0][:200] if str(exc)
                                           else type(exc).__name__)
    err = CheckpointWriteError(f"cannot write {dst}: {reason}")
    err.errno = code
    return err


def atomic_write(dst: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """`write(tmp)` a temporary file in the destination folder, fsync it, then rename it to `dst`: never a
    half-written file under the final name, and a previous `dst` stays intact when anything fails. OS
    errors (unwritable or read-only folder, full disk, a folder in the way) become a CheckpointWriteError."""
    dst = Path(dst)
    if dst.is_dir():
        raise CheckpointWriteError(f"cannot write {dst}: it is a folder; give a file name (e.g. "
                                   f"{dst / 'model.safetensors'})")
    try:
        with atomic_file(dst, fsync=True) as tmp:
            write(str(tmp))
    except (OSError, SafetensorError) as e:
        if isinstance(e, CheckpointWriteError):
            raise
        raise _write_error(dst, e) from e
    return dst


def probe_writable(dst: str | os.PathLike) -> None:
    """Fail early (before reading a large source) when `dst`'s folder cannot take a new file."""
    dst = Path(dst)
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        temp_file(dst, ".probe").unlink()
    except OSError as e:
        raise _write_error(dst, e) from e


def atomic_save_safetensors(tensors: dict[str, torch.Tensor], dst: Path, metadata: dict[str, str]) -> None:
    """Write to a temporary file in the destination folder, then rename: never a half-written file."""
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    atomic_write(dst, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def convert_checkpoint(src: str | os.PathLike, dst: str | os.PathLike | None = None, use_ema: bool = False,
                       overwrite: bool = False) -> Path:
    """Convert an official `.pth` into `.safetensors` (model tensors only, config in the metadata).

    The source is never modified; an existing destination is kept unless overwrite=True. A destination that
    cannot be written raises CheckpointWriteError (one line: the path and why) and leaves no partial file."""
    src = Path(src)
    dst = Path(dst) if dst else src.with_suffix(".safetensors")
    if dst.resolve() == src.resolve():
        raise CheckpointError(f"refusing to convert {src} onto itself; choose another output path")
    if dst.is_dir():
        raise CheckpointWriteError(f"cannot write {dst}: it is a folder; give a file name such as "
                                   f"{dst / (src.stem + '.safetensors')}")
    if dst.exists() and not overwrite:
        raise CheckpointError(f"{dst} already exists; pass overwrite=True (--overwrite) to replace it")
    probe_writable(dst)
    state, meta = read_state_dict(src)
    cfg = infer_config(state, src, meta)
    weights = select_weights(state, use_ema)
    from .modeling.univs import build_univs

    with torch.device("meta"):
        expected = build_univs(cfg).state_dict()
    check_weights(weights, expected, src, f"the {cfg.name} model config")
    info = {"univs_config": cfg.name, "source": src.name, "ema": json.dumps(use_ema)}
    atomic_save_safetensors(weights, dst, info)
    return dst
