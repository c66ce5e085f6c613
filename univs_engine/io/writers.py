"""Streaming result writers: PNG sequences, alpha videos, overlay previews and YouTube-VIS JSON.

Every writer takes one frame at a time and never holds the whole video. Outputs are written atomically:

* single files (videos, JSON) go to a hidden temp file in the destination folder and are moved into place on
  :meth:`close` (:class:`univs_engine.atomic.AtomicFile`);
* PNG sequences are written into a hidden temp folder next to the destination and renamed on :meth:`close`
  (:class:`univs_engine.atomic.AtomicDir`).

An existing destination is never replaced silently: constructors raise ``FileExistsError`` unless
``overwrite=True``, and a destination that is a symbolic link is always refused (a write never follows a link
out of the output folder). New files and folders get the usual permissions (``0o666`` / ``0o777`` less the
umask). Using a writer as a context manager commits on success and discards the temp output when the block
raises. The ``export_*`` helpers stream a whole :class:`~univs_engine.results.Tracks` (plus the video for
RGB content) through these writers; what they draw (masks, id / colour maps, previews) defaults to the objects
the tracks show (``Tracks.shown_ids``: score >= ``Tracks.min_score``), while the YouTube-VIS JSON keeps every
result.

Encoders (checked at run time with :func:`available_encoders`): overlay mp4 uses ``libx264`` (yuv420p, CRF)
and falls back to ``mpeg4``; alpha ``.mov`` uses ``prores_ks`` (ProRes 4444, ``yuva444p10le``) falling back to
``prores``, ``qtrle`` (argb) or ``png``; alpha ``.webm`` uses ``libvpx-vp9`` (``yuva420p``) falling back to
``libvpx`` (VP8). Read alpha back with :func:`univs_engine.io.video.iter_rgba_frames`.
"""
from __future__ import annotations

import functools
import json
import os
import warnings
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import numpy as np

from ..atomic import AtomicDir, AtomicFile
from ..masks import binary_mask, mask_array
from ..matting import MatteSettings, soft_matte

if TYPE_CHECKING:  # pragma: no cover
    from ..results import Tracks
    from .video import VideoSource

__all__ = [
    "available_encoders",
    "voc_palette",
    "panoptic_id_to_rgb",
    "panoptic_rgb_to_id",
    "render_overlay",
    "render_tracks_overlay",
    "MaskPngWriter",
    "IdPngWriter",
    "ColorPngWriter",
    "AlphaVideoWriter",
    "OverlayVideoWriter",
    "YtvisJsonWriter",
    "write_ytvis_json",
    "write_json",
    "save_tracks",
    "export_mask_pngs",
    "export_id_pngs",
    "export_color_pngs",
    "export_alpha_video",
    "export_overlay_video",
]

_KNOWN_ENCODERS = ("libx264", "mpeg4", "prores_ks", "prores", "qtrle", "png", "libvpx-vp9", "libvpx")


@functools.lru_cache(maxsize=None)
def _has_encoder(name: str) -> bool:
    import av  # noqa: PLC0415

    try:
        av.codec.Codec(name, "w")
        return True
    except Exception:  # noqa: BLE001 - unknown codec raises different types across PyAV versions
        return False


def available_encoders() -> dict[str, bool]:
    """Which of the encoders used here the installed PyAV/FFmpeg provides."""
    return {name: _has_encoder(name) for name in _KNOWN_ENCODERS}


def _atomic_file(path: str | os.PathLike[str], overwrite: bool) -> AtomicFile:
    """The temp file of a writer: never through a symbolic link, the target's extension kept (PyAV picks the
    container from it)."""
    return AtomicFile(path, overwrite=overwrite, refuse_symlink=True, suffix=".tmp" + Path(path).suffix)


class _Writer:
    """Context-manager plumbing shared by all writers (commit on success, discard on error)."""

    _target: AtomicFile | AtomicDir
    _closed = False

    def _finish(self) -> None:
        """Flush the format-specific state before the temp output is committed."""

    def _discard(self) -> None:
        """Release resources without committing."""

    def close(self) -> Path:
        """Finish the output and move it into place; returns the final path."""
        if self._closed:
            return self._target.path
        self._closed = True
        try:
            self._finish()
            return self._target.commit()
        except BaseException:
            self._target.abort()
            raise

    def abort(self) -> None:
        """Drop everything written so far (the destination is left untouched)."""
        if self._closed:
            return
        self._closed = True
        try:
            self._discard()
        finally:
            self._target.abort()

    @property
    def path(self) -> Path:
        return self._target.path

    def __enter__(self) -> Any:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


# =============================================================================================== colours
def voc_palette(n: int = 256) -> np.ndarray:
    """The PASCAL VOC / DAVIS palette ``[n, 3]`` uint8 (id 1 = (128, 0, 0), 2 = (0, 128, 0), ...)."""
    ids = np.arange(n, dtype=np.int64)
    pal = np.zeros((n, 3), dtype=np.int64)
    c = ids.copy()
    for bit in range(8):
        for ch in range(3):
            pal[:, ch] |= ((c >> ch) & 1) << (7 - bit)
        c >>= 3
    return pal.astype(np.uint8)


def panoptic_id_to_rgb(id_map: np.ndarray) -> np.ndarray:
    """panopticapi encoding: ``id = R + 256 * G + 256**2 * B`` -> uint8 ``[H, W, 3]``."""
    ids = np.asarray(id_map).astype(np.int64)
    if (ids < 0).any() or (ids >= 1 << 24).any():
        raise ValueError("panoptic ids must be in [0, 2**24)")
    return np.stack([ids & 255, (ids >> 8) & 255, (ids >> 16) & 255], axis=-1).astype(np.uint8)


def panoptic_rgb_to_id(rgb: np.ndarray) -> np.ndarray:
    """Inverse of :func:`panoptic_id_to_rgb` (int32 ``[H, W]``)."""
    c = np.asarray(rgb).astype(np.int32)
    return c[..., 0] + 256 * c[..., 1] + 65536 * c[..., 2]


# =============================================================================================== PNG sequences
def _frame_name(frame_idx: int, frame_names: Sequence[str] | None) -> str:
    if frame_names is not None:
        return f"{Path(frame_names[frame_idx]).stem}.png"
    return f"{frame_idx:05d}.png"


class _PngSequence(_Writer):
    def __init__(
        self,
        out_dir: str | os.PathLike[str],
        frame_names: Sequence[str] | None,
        overwrite: bool,
        compress_level: int,
    ) -> None:
        self._target = AtomicDir(out_dir, overwrite=overwrite)
        self.frame_names = frame_names
        self.compress_level = compress_level
        self.files_written = 0

    def _save(self, rel: Path, image: Any) -> None:
        dest = self._target.tmp / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        image.save(dest, format="PNG", compress_level=self.compress_level)
        self.files_written += 1


class MaskPngWriter(_PngSequence):
    """One PNG sequence per object: ``<out_dir>/<obj_id>/<frame>.png`` (8-bit 0/255 or 16-bit 0/65535).

    This is the Ref-YouTube-VOS submission layout (one folder per expression/object).
    """

    def __init__(
        self,
        out_dir: str | os.PathLike[str],
        bit_depth: int = 8,
        frame_names: Sequence[str] | None = None,
        overwrite: bool = False,
        compress_level: int = 3,
    ) -> None:
        if bit_depth not in (8, 16):
            raise ValueError(f"bit_depth must be 8 or 16, got {bit_depth}")
        super().__init__(out_dir, frame_names, overwrite, compress_level)
        self.bit_depth = bit_depth

    def write(self, frame_idx: int, obj_id: int, mask: Any) -> None:
        """Write the mask of one object in one frame."""
        from PIL import Image  # noqa: PLC0415

        m = binary_mask(mask, what=f"mask of object {obj_id}, frame {frame_idx}", floats="nonzero", squeeze=False)
        if self.bit_depth == 8:
            img = Image.fromarray(m.astype(np.uint8) * np.uint8(255))
        else:
            img = Image.fromarray(m.astype(np.uint16) * np.uint16(65535))
        self._save(Path(str(obj_id)) / _frame_name(frame_idx, self.frame_names), img)


class IdPngWriter(_PngSequence):
    """One id PNG per frame: ``<out_dir>/<frame>.png``.

    ``mode``: ``"palette"`` (DAVIS-style indexed PNG with the VOC palette or ``palette``; ids 0..255),
    ``"gray8"`` / ``"gray16"`` (plain class/object ids, e.g. VSPW semantic maps), ``"panoptic_rgb"``
    (panopticapi ``R + 256 G + 256^2 B`` encoding).
    """

    MODES = ("palette", "gray8", "gray16", "panoptic_rgb")

    def __init__(
        self,
        out_dir: str | os.PathLike[str],
        mode: str = "palette",
        palette: np.ndarray | None = None,
        frame_names: Sequence[str] | None = None,
        overwrite: bool = False,
        compress_level: int = 3,
    ) -> None:
        if mode not in self.MODES:
            raise ValueError(f"mode must be one of {self.MODES}, got {mode!r}")
        super().__init__(out_dir, frame_names, overwrite, compress_level)
        self.mode = mode
        pal = voc_palette() if palette is None else np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
        self._palette = np.zeros((256, 3), dtype=np.uint8)
        self._palette[: min(256, len(pal))] = pal[:256]

    def write(self, frame_idx: int, id_map: Any) -> None:
        """Write the id map ``[H, W]`` of one frame."""
        from PIL import Image  # noqa: PLC0415

        ids = mask_array(id_map, what=f"id map of frame {frame_idx}", squeeze=False).astype(np.int64)
        lo, hi = (int(ids.min()), int(ids.max())) if ids.size else (0, 0)
        limit = {"palette": 255, "gray8": 255, "gray16": 65535, "panoptic_rgb": (1 << 24) - 1}[self.mode]
        if lo < 0 or hi > limit:
            raise ValueError(f"frame {frame_idx}: ids in [{lo}, {hi}] do not fit mode {self.mode!r} (0..{limit})")
        if self.mode == "palette":
            img = Image.frombytes("P", (ids.shape[1], ids.shape[0]), np.ascontiguousarray(ids, dtype=np.uint8).tobytes())
            img.putpalette(self._palette.reshape(-1).tolist())
        elif self.mode == "gray8":
            img = Image.fromarray(ids.astype(np.uint8))
        elif self.mode == "gray16":
            img = Image.fromarray(ids.astype(np.uint16))
        else:
            img = Image.fromarray(panoptic_id_to_rgb(ids))
        self._save(Path(_frame_name(frame_idx, self.frame_names)), img)


class ColorPngWriter(_PngSequence):
    """One RGB PNG per frame (colour-coded semantic / panoptic visualisation): ``<out_dir>/<frame>.png``."""

    def __init__(
        self,
        out_dir: str | os.PathLike[str],
        frame_names: Sequence[str] | None = None,
        overwrite: bool = False,
        compress_level: int = 3,
    ) -> None:
        super().__init__(out_dir, frame_names, overwrite, compress_level)

    def write(self, frame_idx: int, rgb: Any) -> None:
        """Write a uint8 ``[H, W, 3]`` image."""
        from PIL import Image  # noqa: PLC0415

        a = np.asarray(rgb.detach().cpu().numpy() if hasattr(rgb, "detach") else rgb)
        if a.ndim != 3 or a.shape[2] != 3 or a.dtype != np.uint8:
            raise ValueError(f"frame {frame_idx}: expected uint8 [H, W, 3], got {a.dtype} {a.shape}")
        self._save(Path(_frame_name(frame_idx, self.frame_names)), Image.fromarray(a))


# =============================================================================================== video writers
def _first_encoder(path, names: list[str], what: str) -> str:
    """The first of `names` this PyAV/FFmpeg build has (a warning when it is not the preferred first one)."""
    usable = [c for c in names if _has_encoder(c)]
    if not usable:
        raise RuntimeError(f"{path}: no {what} in this PyAV/FFmpeg build (tried {names}); "
                           f"available: {[k for k, v in available_encoders().items() if v]}")
    if usable[0] != names[0]:
        warnings.warn(f"{names[0]} encoder unavailable; writing {path} with {usable[0]}", stacklevel=3)
    return usable[0]


class _VideoFile(_Writer):
    """PyAV encoder writing into an atomic temp file."""

    def __init__(self, path: str | os.PathLike[str], width: int, height: int, fps: float, codec: str, pix_fmt: str,
                 options: dict[str, str], overwrite: bool, container_options: dict[str, str] | None = None) -> None:
        import av  # noqa: PLC0415

        if width <= 0 or height <= 0:
            raise ValueError(f"invalid video size {width}x{height}")
        if not fps or fps <= 0:
            raise ValueError(f"invalid fps {fps}")
        self._target = _atomic_file(path, overwrite)
        self.width, self.height, self.fps = int(width), int(height), float(fps)
        self.codec, self.pix_fmt = codec, pix_fmt
        self.frames_written = 0
        container = None
        try:
            container = av.open(str(self._target.tmp), mode="w", container_options=container_options or {})
            stream = container.add_stream(codec, rate=Fraction(self.fps).limit_denominator(100000))
            stream.width, stream.height = self._enc_size()
            stream.pix_fmt = pix_fmt
            stream.options = dict(options)
        except Exception:
            if container is not None:
                container.close()
            self._target.abort()
            raise
        self._container, self._stream = container, stream

    def _enc_size(self) -> tuple[int, int]:
        return self.width, self.height

    def _encode(self, array: np.ndarray, fmt: str) -> None:
        import av  # noqa: PLC0415

        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(array), format=fmt)
        for packet in self._stream.encode(frame):
            self._container.mux(packet)
        self.frames_written += 1

    def _finish(self) -> None:
        try:
            for packet in self._stream.encode(None):
                self._container.mux(packet)
        finally:
            self._container.close()

    def _discard(self) -> None:
        try:
            self._container.close()
        except Exception:  # noqa: BLE001 - best effort while aborting
            pass

    def _check_rgb(self, rgb: Any) -> np.ndarray:
        a = np.asarray(rgb.detach().cpu().numpy() if hasattr(rgb, "detach") else rgb)
        if a.shape != (self.height, self.width, 3) or a.dtype != np.uint8:
            raise ValueError(
                f"{self.path}: expected uint8 frames of shape {(self.height, self.width, 3)}, got {a.dtype} {a.shape}"
            )
        return a


_ALPHA_CODECS = {
    ".mov": (("prores_ks", "yuva444p10le", {"profile": "4"}), ("prores", "yuva444p10le", {"profile": "4"}),
             ("qtrle", "argb", {}), ("png", "rgba", {})),
    ".webm": (("libvpx-vp9", "yuva420p", {"crf": "20", "b": "0"}), ("libvpx", "yuva420p", {"crf": "10", "b": "1M"})),
}


class AlphaVideoWriter(_VideoFile):
    """RGBA video of one object: colour from the frame (or a flat ``color``), alpha from the mask.

    The container decides the codec: ``.mov`` -> ProRes 4444 (``prores_ks``, ``yuva444p10le``), ``.webm`` ->
    VP9 with alpha (``libvpx-vp9``, ``yuva420p``). If that encoder is missing the next one listed in the module
    docstring is used with a warning; if none is available a ``RuntimeError`` names what is missing.
    """

    def __init__(self, path: str | os.PathLike[str], width: int, height: int, fps: float, overwrite: bool = False,
                 codec: str | None = None) -> None:
        suffix = Path(path).suffix.lower()
        if suffix not in _ALPHA_CODECS:
            raise ValueError(f"{path}: alpha videos must be .mov (ProRes 4444) or .webm (VP9), got {suffix!r}")
        chain = _ALPHA_CODECS[suffix]
        if codec is not None:
            chain = tuple(c for c in chain if c[0] == codec)
            if not chain:
                raise ValueError(f"codec {codec!r} is not an alpha codec for {suffix} ({[c[0] for c in _ALPHA_CODECS[suffix]]})")
        name = _first_encoder(path, [c[0] for c in chain], f"alpha-capable encoder for {suffix}")
        _, pix, opts = next(c for c in chain if c[0] == name)
        super().__init__(path, width, height, fps, name, pix, opts, overwrite)

    def write(self, alpha: Any, rgb: Any | None = None, color: tuple[int, int, int] = (255, 255, 255)) -> None:
        """Append one frame.

        ``alpha``: ``[H, W]`` bool mask (-> 0/255) or uint8 alpha values (soft mattes); ``rgb``: uint8
        ``[H, W, 3]`` colour, or None for a flat ``color``.
        """
        a = mask_array(alpha, self.height, self.width, f"{self.path}: alpha", squeeze=False)
        a8 = a if a.dtype == np.uint8 else binary_mask(a, floats="nonzero").astype(np.uint8) * np.uint8(255)
        rgba = np.empty((self.height, self.width, 4), dtype=np.uint8)
        if rgb is None:
            rgba[..., :3] = np.asarray(color, dtype=np.uint8)
        else:
            rgba[..., :3] = self._check_rgb(rgb)
        rgba[..., 3] = a8
        if self.pix_fmt == "argb":
            self._encode(rgba[..., [3, 0, 1, 2]], "argb")
        else:
            self._encode(rgba, "rgba")


class OverlayVideoWriter(_VideoFile):
    """Preview video (``.mp4``): H.264 (``libx264``, yuv420p, CRF) with an ``mpeg4`` fallback.

    H.264 yuv420p needs even sizes: odd frames are padded by one replicated row/column at the bottom/right.
    """

    def __init__(self, path: str | os.PathLike[str], width: int, height: int, fps: float, overwrite: bool = False,
                 crf: int = 20, codec: str | None = None) -> None:
        chain = [c for c in ("libx264", "mpeg4") if codec is None or c == codec]
        name = _first_encoder(path, chain, "encoder")
        opts = {"crf": str(int(crf)), "preset": "veryfast"} if name == "libx264" else {"qscale": "3"}
        self._pad = name == "libx264"
        suffix = Path(path).suffix.lower()
        copts = {"movflags": "faststart"} if suffix in (".mp4", ".mov", ".m4v") else None
        super().__init__(path, width, height, fps, name, "yuv420p", opts, overwrite, copts)

    def _enc_size(self) -> tuple[int, int]:
        if self._pad:
            return self.width + self.width % 2, self.height + self.height % 2
        return self.width, self.height

    def write(self, rgb: Any) -> None:
        """Append one (already rendered) uint8 ``[H, W, 3]`` RGB frame."""
        a = self._check_rgb(rgb)
        ew, eh = self._enc_size()
        if (ew, eh) != (self.width, self.height):
            a = np.pad(a, ((0, eh - self.height), (0, ew - self.width), (0, 0)), mode="edge")
        self._encode(a, "rgb24")

    def write_tracks(self, rgb: Any, tracks: "Tracks", frame_idx: int, **overlay: Any) -> None:
        """Render ``tracks`` of ``frame_idx`` over ``rgb`` (see :func:`render_overlay`) and append it."""
        self.write(render_tracks_overlay(self._check_rgb(rgb), tracks, frame_idx, **overlay))


def render_overlay(
    frame: np.ndarray,
    masks: Sequence[np.ndarray],
    colors: Sequence[tuple[int, int, int]],
    labels: Sequence[str] | None = None,
    alpha: float = 0.5,
    contours: bool = True,
    thickness: int = 2,
    font_scale: float = 0.5,
) -> np.ndarray:
    """Blend coloured masks into ``frame`` (uint8 RGB), draw their contours and optional label text."""
    import cv2  # noqa: PLC0415

    out = np.array(frame, dtype=np.uint8, copy=True)
    for m, col in zip(masks, colors):
        sel = np.asarray(m, dtype=bool)
        if sel.any():
            c = np.asarray(col, dtype=np.float32)
            out[sel] = (out[sel].astype(np.float32) * (1.0 - alpha) + c * alpha + 0.5).astype(np.uint8)
    if contours:
        for m, col in zip(masks, colors):
            m8 = np.asarray(m, dtype=np.uint8)
            if m8.any():
                cs, _ = cv2.findContours(m8, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
                cv2.drawContours(out, cs, -1, tuple(int(v) for v in col), thickness, lineType=cv2.LINE_AA)
    if labels:
        for m, col, text in zip(masks, colors, labels):
            sel = np.asarray(m, dtype=bool)
            if not text or not sel.any():
                continue
            ys, xs = np.nonzero(sel)
            x, y = int(xs.min()), max(int(ys.min()) - 4, 12)
            cv2.putText(out, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, font_scale, (0, 0, 0), 3, cv2.LINE_AA)
            cv2.putText(out, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, font_scale, tuple(int(v) for v in col), 1, cv2.LINE_AA)
    return out


def render_tracks_overlay(
    frame: np.ndarray,
    tracks: "Tracks",
    frame_idx: int,
    obj_ids: Iterable[int] | None = None,
    alpha: float = 0.5,
    contours: bool = True,
    labels: bool = True,
    thickness: int = 2,
) -> np.ndarray:
    """:func:`render_overlay` of the objects of ``tracks`` visible in ``frame_idx`` (label: ``"<id> <label>"``);
    ``obj_ids`` default: the shown objects."""
    wanted = set(_shown(tracks, obj_ids))
    ids = [o for o in tracks.objects_in(frame_idx) if o in wanted]
    masks = [tracks.mask(frame_idx, o) for o in ids]
    colors = [tracks.info(o).color for o in ids]
    texts = [f"{o} {tracks.info(o).label}".strip() for o in ids] if labels else None
    return render_overlay(frame, masks, colors, texts, alpha=alpha, contours=contours, thickness=thickness)


# =============================================================================================== JSON
class YtvisJsonWriter(_Writer):
    """Streams YouTube-VIS results (a JSON list) into ``path``; add videos one at a time."""

    def __init__(self, path: str | os.PathLike[str], overwrite: bool = False) -> None:
        self._target = _atomic_file(path, overwrite)
        try:
            self._fh = open(self._target.tmp, "w", encoding="utf-8")  # noqa: SIM115 - closed in _finish/_discard
        except BaseException:
            self._target.abort()
            raise
        self._fh.write("[")
        self.count = 0

    def add(self, results: Iterable[dict[str, Any]]) -> None:
        """Append result dicts (``video_id, score, category_id, segmentations, height, width``)."""
        for r in results:
            self._fh.write(("," if self.count else "") + json.dumps(r, separators=(",", ":")))
            self.count += 1

    def add_tracks(self, tracks: "Tracks", video_id: int, category_ids: dict[int, int] | None = None,
                   frames: Iterable[int] | None = None) -> None:
        """Append all objects of one video (see ``Tracks.to_ytvis_json``); with ``frames``, the segmentation of
        every other frame is ``null`` (not processed) instead of an empty mask."""
        keep = None if frames is None else set(frames)
        for r in tracks.iter_ytvis(video_id, category_ids):
            if keep is not None:
                r["segmentations"] = [s if f in keep else None for f, s in enumerate(r["segmentations"])]
            self.add([r])

    def _finish(self) -> None:
        self._fh.write("]")
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()

    def _discard(self) -> None:
        self._fh.close()


def write_ytvis_json(
    path: str | os.PathLike[str],
    results: "Tracks | Iterable[dict[str, Any]]",
    video_id: int | None = None,
    category_ids: dict[int, int] | None = None,
    overwrite: bool = False,
    frames: Iterable[int] | None = None,
) -> Path:
    """Write YouTube-VIS results (a list of dicts, or one ``Tracks`` with its ``video_id``) atomically.

    ``frames``: with a ``Tracks``, the frames that were processed (the others get ``null`` segmentations)."""
    with YtvisJsonWriter(path, overwrite=overwrite) as w:
        if hasattr(results, "iter_ytvis"):
            if video_id is None:
                raise ValueError("video_id is required when writing a Tracks object")
            w.add_tracks(results, video_id, category_ids, frames)  # type: ignore[arg-type]
        else:
            w.add(results)  # type: ignore[arg-type]
    return w.path


def write_json(path: str | os.PathLike[str], data: Any, overwrite: bool = False) -> Path:
    """Write ``data`` as indented JSON atomically (never through a symbolic link)."""
    with _atomic_file(path, overwrite) as tmp:
        tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
    return Path(path)


def save_tracks(tracks: "Tracks", path: str | os.PathLike[str], overwrite: bool = False) -> Path:
    """``Tracks.save`` atomically, never through a symbolic link, with ordinary file permissions."""
    with _atomic_file(path, overwrite) as tmp:
        tracks.save(tmp)
    return Path(path)


# =============================================================================================== exports from Tracks
def _shown(tracks: "Tracks", obj_ids: Iterable[int] | None) -> list[int]:
    """``obj_ids`` as given, else the objects the tracks show (score >= ``min_score``; all for duck-typed tracks)."""
    if obj_ids is not None:
        return list(obj_ids)
    shown = getattr(tracks, "shown_ids", None)
    return list(shown()) if callable(shown) else list(tracks.object_ids)


def _frames(tracks: "Tracks", frames: Iterable[int] | None) -> list[int]:
    return list(range(tracks.num_frames)) if frames is None else sorted(set(frames))


def _check_source(tracks: "Tracks", source: "VideoSource | None") -> None:
    if source is None:
        return
    if (source.num_frames, source.height, source.width) != (tracks.num_frames, tracks.height, tracks.width):
        raise ValueError(
            f"video {source.name} ({source.num_frames} frames, {source.height}x{source.width}) does not match the "
            f"tracks ({tracks.num_frames} frames, {tracks.height}x{tracks.width})"
        )


def export_mask_pngs(
    tracks: "Tracks",
    out_dir: str | os.PathLike[str],
    obj_ids: Iterable[int] | None = None,
    bit_depth: int = 8,
    frame_names: Sequence[str] | None = None,
    overwrite: bool = False,
    frames: Iterable[int] | None = None,
) -> Path:
    """Per-object 0/255 (or 16-bit) PNG sequences for every frame of ``frames`` (default: all; blank masks
    included), e.g. ``tracks.segmented_frames()`` to leave out frames a run never processed; ``obj_ids``
    default: the shown objects."""
    ids = _shown(tracks, obj_ids)
    with MaskPngWriter(out_dir, bit_depth=bit_depth, frame_names=frame_names, overwrite=overwrite) as w:
        for f in _frames(tracks, frames):
            for o in ids:
                w.write(f, o, tracks.mask(f, o))
    return w.path


def export_id_pngs(
    tracks: "Tracks",
    out_dir: str | os.PathLike[str],
    mode: str = "palette",
    obj_ids: Iterable[int] | None = None,
    frame_names: Sequence[str] | None = None,
    overwrite: bool = False,
    frames: Iterable[int] | None = None,
) -> Path:
    """Per-frame id PNGs of ``Tracks.id_map`` (later-added objects win overlaps) for ``frames`` (default: all);
    ``obj_ids`` default: the shown objects."""
    ids = _shown(tracks, obj_ids)
    with IdPngWriter(out_dir, mode=mode, frame_names=frame_names, overwrite=overwrite) as w:
        for f in _frames(tracks, frames):
            w.write(f, tracks.id_map(f, ids))
    return w.path


def export_color_pngs(
    tracks: "Tracks",
    out_dir: str | os.PathLike[str],
    obj_ids: Iterable[int] | None = None,
    frame_names: Sequence[str] | None = None,
    overwrite: bool = False,
    frames: Iterable[int] | None = None,
) -> Path:
    """Per-frame colour-coded PNGs of ``Tracks.color_map`` (object colours, black background), ``frames``
    (default: all); ``obj_ids`` default: the shown objects."""
    ids = _shown(tracks, obj_ids)
    with ColorPngWriter(out_dir, frame_names=frame_names, overwrite=overwrite) as w:
        for f in _frames(tracks, frames):
            w.write(f, tracks.color_map(f, ids))
    return w.path


def export_alpha_video(
    tracks: "Tracks",
    obj_id: int,
    path: str | os.PathLike[str],
    source: "VideoSource | None" = None,
    fps: float | None = None,
    overwrite: bool = False,
    codec: str | None = None,
    frames: Iterable[int] | None = None,
    matte: "MatteSettings | None" = None,
) -> Path:
    """Alpha video of one object: the source frames (or the object's colour) with the mask as alpha.

    ``frames``: the video covers the first to the last of them (default: the whole video). ``matte``: soft
    edges guided by the source frames (univs_engine.matting), else the hard mask."""
    _check_source(tracks, source)
    rate = fps or (source.fps if source is not None else 30.0)
    color = tracks.info(obj_id).color
    span = _span(tracks, frames)
    if matte is not None and source is None:
        raise ValueError("soft alpha edges follow the video frames: pass the source video")
    with AlphaVideoWriter(path, tracks.width, tracks.height, rate, overwrite=overwrite, codec=codec) as w:
        if source is None:
            for f in span:
                w.write(tracks.mask(f, obj_id), None, color)
        else:
            for f, rgb in source.iter_frames(span.start, span.stop):
                m = tracks.mask(f, obj_id)
                w.write(m if matte is None else (soft_matte(rgb, m, matte) * 255.0 + 0.5).astype(np.uint8), rgb)
    return w.path


def _span(tracks: "Tracks", frames: Iterable[int] | None) -> range:
    """First to last of ``frames`` (default: the whole video) as a range."""
    picked = _frames(tracks, frames)
    return range(picked[0], picked[-1] + 1) if picked else range(0)


def export_overlay_video(
    tracks: "Tracks",
    source: "VideoSource",
    path: str | os.PathLike[str],
    fps: float | None = None,
    obj_ids: Iterable[int] | None = None,
    alpha: float = 0.5,
    contours: bool = True,
    labels: bool = True,
    overwrite: bool = False,
    crf: int = 20,
    frames: Iterable[int] | None = None,
) -> Path:
    """Overlay preview mp4: translucent coloured masks, contours and ``"<id> <label>"`` text over the video.

    ``frames``: the preview covers the first to the last of them (default: the whole video); ``obj_ids``
    default: the shown objects."""
    _check_source(tracks, source)
    ids = _shown(tracks, obj_ids)
    span = _span(tracks, frames)
    with OverlayVideoWriter(path, tracks.width, tracks.height, fps or source.fps, overwrite=overwrite, crf=crf) as w:
        for f, rgb in source.iter_frames(span.start, span.stop):
            w.write(render_tracks_overlay(rgb, tracks, f, ids, alpha=alpha, contours=contours, labels=labels))
    return w.path
