"""Lazy video input (file / image folder / in-memory array) and the official resize, pad and un-pad rules.

:class:`VideoSource` never decodes more than it must and never holds the whole video:

* files are indexed once by demuxing (no decoding) — this gives the exact frame count even when the container's
  ``stream.frames`` is 0 — and decoded with FFmpeg's threaded decoder; seeks go to the keyframe that starts the
  wanted frame's GOP and decode forward;
* iteration runs decode/read in a background thread with a small bounded queue, so decoding overlaps compute;
* reverse iteration (backward propagation) decodes chunks of at most ``reverse_chunk_bytes`` of RGB frames and
  yields each chunk backwards.

Preprocessing follows detectron2 at test time: ``ResizeShortestEdge`` shape rule, Pillow's own
``BILINEAR`` resize of uint8 frames (bit-exact, spread over threads), per-channel normalisation, zero padding
bottom/right to a multiple of ``size_divisibility`` (or to a fixed square).
"""
from __future__ import annotations

import bisect
import functools
import os
import queue
import re
import threading
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence, TypeVar

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "VideoSource",
    "IMAGE_EXTENSIONS",
    "PIXEL_MEAN",
    "PIXEL_STD",
    "natural_sort_key",
    "resize_shortest_edge_size",
    "resize_frames",
    "resize_frames_numpy",
    "preprocess_frames",
    "postprocess_masks",
    "iter_rgba_frames",
    "pil_to_rgb8",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
PIXEL_MEAN = (123.675, 116.280, 103.530)
PIXEL_STD = (58.395, 57.120, 57.375)

T = TypeVar("T")


def natural_sort_key(name: str) -> list[Any]:
    """Sort key that orders ``frame2.png`` before ``frame10.png``."""
    return [int(tok) if tok.isdigit() else tok.lower() for tok in re.split(r"(\d+)", name)]


# =============================================================================================== prefetching
class _Done:
    """End-of-stream marker passed through the prefetch queue (optionally carrying the worker's exception)."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException | None = None) -> None:
        self.error = error


def _prefetched(make_iter: Callable[[], Iterator[T]], depth: int) -> Iterator[T]:
    """Run ``make_iter()`` in a daemon thread, handing items over through a queue of ``depth`` slots.

    The iterator is created, consumed and closed inside the worker thread (so a decoder never crosses threads).
    Closing the returned generator early stops the worker. Worker exceptions are re-raised in the consumer.
    """
    if depth <= 0:
        yield from make_iter()
        return
    q: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def worker() -> None:
        done = _Done()
        try:
            it = make_iter()
            try:
                for item in it:
                    if not put(item):
                        return
            finally:
                close = getattr(it, "close", None)
                if close is not None:
                    close()
        except BaseException as e:  # noqa: BLE001 - forwarded to the consumer
            done = _Done(e)
        put(done)

    thread = threading.Thread(target=worker, name="univs-video-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if isinstance(item, _Done):
                if item.error is not None:
                    raise item.error
                return
            yield item
    finally:
        stop.set()
        while True:  # unblock a worker waiting on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                break
        thread.join(timeout=10)


# =============================================================================================== backends
class _CallableBackend:
    """Frames produced on demand by a function of the index (e.g. converted one at a time from a float batch)."""

    kind = "array"

    def __init__(self, get_frame: Callable[[int], np.ndarray], num_frames: int, height: int, width: int,
                 fps: float | None, name: str) -> None:
        if num_frames <= 0:
            raise ValueError(f"{name}: empty video (0 frames)")
        if height <= 0 or width <= 0:
            raise ValueError(f"{name}: frames have zero size {[height, width]}")
        self._get = get_frame
        self.name = name
        self.num_frames, self.height, self.width = int(num_frames), int(height), int(width)
        self.fps = float(fps) if fps else 30.0

    def frame(self, i: int) -> np.ndarray:
        return self._get(i)

    def read(self, indices: Sequence[int]) -> Iterator[tuple[int, np.ndarray]]:
        for i in indices:
            yield i, self.frame(i)

    def close(self) -> None:
        pass


def _array_frame(frames: np.ndarray | torch.Tensor, i: int) -> np.ndarray:
    f = frames[i]
    if isinstance(f, torch.Tensor):
        return np.ascontiguousarray(f.detach().cpu().numpy())
    return np.ascontiguousarray(f)


class _ArrayBackend(_CallableBackend):
    """Frames held in memory by the caller: uint8 ``[T, H, W, 3]`` numpy array or torch tensor."""

    def __init__(self, frames: Any, fps: float | None) -> None:
        desc = f"in-memory {type(frames).__name__}"
        shape = tuple(frames.shape)
        if len(shape) != 4 or shape[-1] != 3:
            raise ValueError(f"{desc}: expected frames of shape [T, H, W, 3], got {list(shape)}")
        if isinstance(frames, torch.Tensor):
            if frames.dtype != torch.uint8:
                nan = frames.is_floating_point() and bool(torch.isnan(frames).any())
                raise ValueError(self._dtype_message(desc, str(frames.dtype), nan))
        else:
            arr = np.asarray(frames)
            if arr.dtype != np.uint8:
                nan = np.issubdtype(arr.dtype, np.floating) and bool(np.isnan(arr).any())
                raise ValueError(self._dtype_message(desc, str(arr.dtype), nan))
            frames = arr
        super().__init__(partial(_array_frame, frames), shape[0], shape[1], shape[2], fps, desc)

    @staticmethod
    def _dtype_message(desc: str, dtype: str, nan: bool) -> str:
        msg = f"{desc}: expected uint8 RGB frames, got dtype {dtype}"
        if nan:
            msg += " containing NaN values"
        return msg + " (convert float frames in [0, 1] with (x * 255).round().clip(0, 255) as uint8)"


def pil_to_rgb8(im: Any) -> np.ndarray:
    """A PIL image of any mode -> uint8 ``[H, W, 3]`` RGB, as detectron2's ``read_image(path, format="RGB")``.

    That is ``np.asarray(im.convert("RGB"))`` (``convert_PIL_to_numpy``), whatever the mode: grey ``L``/``1`` is
    replicated to three channels, ``LA``/``RGBA``/``P`` with transparency lose their alpha (no compositing), palette
    images are looked up, ``CMYK``/``YCbCr`` are converted, and 16/32-bit integer or float images (``I;16``, ``I``,
    ``F``) are clipped to 0..255, not rescaled, exactly as Pillow's conversion does for the official reader.
    """
    rgb = np.asarray(im.convert("RGB"))
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:  # Pillow guarantees it; keep the contract explicit
        raise ValueError(f"image of mode {im.mode} did not convert to 8-bit RGB (got {rgb.dtype} {list(rgb.shape)})")
    return rgb


class _FolderBackend:
    """A folder of jpg/png frames in natural sort order (EXIF orientation applied, as detectron2 does)."""

    kind = "folder"

    def __init__(self, folder: Path, fps: float | None) -> None:
        from PIL import Image  # noqa: PLC0415

        files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
        if not files:
            raise ValueError(f"{folder}: folder contains no images ({'/'.join(IMAGE_EXTENSIONS)})")
        files.sort(key=lambda p: natural_sort_key(p.name))
        size0: tuple[int, int] | None = None
        for p in files:
            try:
                with Image.open(p) as im:
                    w, h = im.size
                    if im.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # rotated by 90 degrees
                        w, h = h, w
            except Exception as e:  # noqa: BLE001 - PIL raises many types
                raise ValueError(f"{p}: unreadable image ({e})") from e
            if size0 is None:
                size0 = (h, w)
            elif (h, w) != size0:
                raise ValueError(
                    f"{p}: frame size {h}x{w} (HxW) differs from the first frame {files[0].name} ({size0[0]}x{size0[1]})"
                )
        assert size0 is not None
        self.files = files
        self.name = str(folder)
        self.num_frames = len(files)
        self.height, self.width = size0
        self.fps = float(fps) if fps else 30.0

    def frame(self, i: int) -> np.ndarray:
        from PIL import Image, ImageOps  # noqa: PLC0415

        p = self.files[i]
        try:
            with Image.open(p) as im:
                arr = pil_to_rgb8(ImageOps.exif_transpose(im))
        except Exception as e:  # noqa: BLE001
            raise ValueError(f"{p}: unreadable image ({e})") from e
        if arr.shape[:2] != (self.height, self.width):
            raise ValueError(f"{p}: frame size changed to {arr.shape[0]}x{arr.shape[1]}")
        return arr

    def read(self, indices: Sequence[int]) -> Iterator[tuple[int, np.ndarray]]:
        for i in indices:
            yield i, self.frame(i)

    def close(self) -> None:
        pass


class _FileBackend:
    """A video file decoded with PyAV; frame ``i`` is the ``i``-th frame in presentation order."""

    kind = "file"

    def __init__(
        self, path: Path, fps: float | None, reverse_chunk_bytes: int, threads: int, autorotate: bool = True
    ) -> None:
        import av  # noqa: PLC0415

        self._av = av
        self.path = path
        self._autorotate = autorotate
        self._rot_k = 0  # quarter turns counter-clockwise applied to every decoded frame
        self._size: tuple[int, int] | None = None
        self.name = str(path)
        self._threads = threads
        self._lock = threading.Lock()
        self._ra: dict[str, Any] | None = None  # random-access cursor for frame(i)
        container = self._open()
        try:
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate or stream.base_rate
            self.fps = float(fps) if fps else (float(rate) if rate else 30.0)
            self._build_index(container, stream)
        finally:
            container.close()
        if self.num_frames == 0:
            raise ValueError(f"{path}: empty video (0 frames)")
        first = self.frame(0)  # proves the file decodes and gives the true (displayed) frame size
        self.height, self.width = int(first.shape[0]), int(first.shape[1])
        self._size = (self.height, self.width)
        self._chunk = max(1, int(reverse_chunk_bytes) // max(1, self.height * self.width * 3))

    # ----------------------------------------------------------------------------------------- opening / index
    def _open(self) -> Any:
        av = self._av
        try:
            container = av.open(str(self.path), mode="r")
        except av.error.FFmpegError as e:
            raise ValueError(f"{self.path}: unreadable or corrupt video file ({e})") from e
        if not container.streams.video:
            container.close()
            raise ValueError(f"{self.path}: file has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        if self._threads:
            stream.codec_context.thread_count = self._threads
        return container

    def _build_index(self, container: Any, stream: Any) -> None:
        """Demux once: presentation-ordered pts list, decode positions and keyframes."""
        av = self._av
        pkts: list[tuple[int | None, int | None, bool]] = []
        try:
            for pkt in container.demux(stream):
                if pkt.size == 0 or pkt.is_discard:
                    continue
                pkts.append((pkt.pts, pkt.dts, bool(pkt.is_keyframe)))
        except av.error.FFmpegError as e:
            raise ValueError(f"{self.path}: corrupt video file, demuxing failed ({e})") from e
        pts_list = [p[0] for p in pkts]
        usable = bool(pkts) and all(p is not None for p in pts_list) and len(set(pts_list)) == len(pts_list)
        self._seekable = usable
        if not usable:
            # No reliable timestamps: count by decoding (slow but exact); access is sequential from the start.
            self.num_frames = self._count_by_decoding() if pkts else 0
            return
        order = sorted(range(len(pkts)), key=lambda k: pkts[k][0])  # presentation order -> decode position
        self._pts = [pkts[k][0] for k in order]
        self._pts_to_idx = {p: i for i, p in enumerate(self._pts)}
        self._dec_pos = order
        pres_of_dec = [0] * len(order)
        for i, d in enumerate(order):
            pres_of_dec[d] = i
        self._pres_of_dec = pres_of_dec
        self._key_dec = [d for d, p in enumerate(pkts) if p[2]]
        self._pkts = pkts
        self.num_frames = len(pkts)

    def _count_by_decoding(self) -> int:
        container = self._open()
        try:
            return sum(1 for _ in container.decode(container.streams.video[0]))
        except self._av.error.FFmpegError as e:
            raise ValueError(f"{self.path}: corrupt video file, decoding failed ({e})") from e
        finally:
            container.close()

    def _seek_key(self, i: int) -> int:
        """Presentation index of the keyframe to seek to so that frame ``i`` decodes correctly."""
        if not self._seekable or not self._key_dec:
            return 0
        d = self._dec_pos[i]
        k = bisect.bisect_right(self._key_dec, d) - 1
        # leading pictures of an open GOP are displayed before their keyframe: use the previous GOP
        while k > 0 and self._pkts[self._key_dec[k]][0] > self._pts[i]:
            k -= 1
        return self._pres_of_dec[self._key_dec[k]] if k >= 0 else 0

    # ----------------------------------------------------------------------------------------- decoding
    def _decode_from(self, container: Any, key_idx: int) -> Iterator[tuple[int, Any]]:
        """Position at keyframe ``key_idx`` (presentation index) and yield ``(index, av.VideoFrame)`` onwards.

        Without usable timestamps the file is reopened and decoded from the start, counting frames.
        """
        av = self._av
        own = None
        if not self._seekable:
            container = own = self._open()
        stream = container.streams.video[0]
        try:
            if self._seekable:
                pts, dts, _ = self._pkts[self._dec_pos[key_idx]]
                target = pts if dts is None else min(pts, dts)
                container.seek(target, backward=True, any_frame=False, stream=stream)
            counter = 0
            for frame in container.decode(stream):
                if self._seekable:
                    idx = self._pts_to_idx.get(frame.pts)
                    if idx is None:
                        continue
                else:
                    idx = counter
                    counter += 1
                yield idx, frame
        except av.error.FFmpegError as e:
            raise ValueError(f"{self.path}: corrupt video data while decoding ({e})") from e
        finally:
            if own is not None:
                own.close()

    @staticmethod
    def _find(it: Iterator[tuple[int, Any]], w: int, last: int) -> tuple[Any, int, bool]:
        """Advance ``it`` to frame ``w``: ``(frame or None, last index seen, landed_after_w_immediately)``."""
        first = True
        for idx, frame in it:
            if idx == w:
                return frame, idx, False
            if idx > w:
                return None, idx, first
            first = False
            last = idx
        return None, last, False

    def _seek_find(self, container: Any, w: int) -> tuple[Iterator[tuple[int, Any]], Any, int]:
        """Seek to the keyframe of ``w`` and decode up to it, stepping a GOP back if the demuxer overshoots."""
        key = self._seek_key(w)
        while True:
            it = self._decode_from(container, key)
            frame, last, late = self._find(it, w, -1)
            if frame is not None:
                return it, frame, last
            it.close()
            if not (late and key > 0):
                raise ValueError(f"{self.path}: frame {w} could not be decoded (truncated or corrupt file?)")
            key = self._seek_key(key - 1)

    def _can_continue(self, last: int, w: int) -> bool:
        """Whether decoding on from frame ``last`` reaches ``w`` without a (cheaper) forward seek."""
        return w > last and (not self._seekable or self._seek_key(w) <= last + 1)

    def _span(self, container: Any, wanted: Sequence[int]) -> Iterator[tuple[int, Any]]:
        """Yield ``(index, av frame)`` for ascending ``wanted``, seeking forward whenever that saves decoding."""
        it: Iterator[tuple[int, Any]] | None = None
        last = -1
        try:
            for w in wanted:
                frame = None
                if it is not None and self._can_continue(last, w):
                    frame, last, _ = self._find(it, w, last)
                if frame is None:
                    if it is not None:
                        it.close()
                    it, frame, last = self._seek_find(container, w)
                yield w, frame
        finally:
            if it is not None:
                it.close()

    def _rgb(self, frame: Any, idx: int = 0) -> np.ndarray:
        """av frame -> uint8 RGB, rotated upright like ffmpeg's autorotate, size-checked.

        Every pixel format becomes 8-bit RGB here, explicitly, through FFmpeg's ``rgb24`` conversion: grey is
        replicated, 10/12/16-bit samples are rescaled to 8 bits and an alpha plane is dropped.
        """
        rgb = frame.to_ndarray(format="rgb24")
        if self._size is None and self._autorotate:  # first frame: read the display matrix once
            self._rot_k = int(round(float(getattr(frame, "rotation", 0) or 0) / 90.0)) % 4
        if self._rot_k:
            rgb = np.ascontiguousarray(np.rot90(rgb, self._rot_k))
        if self._size is not None and rgb.shape[:2] != self._size:
            raise ValueError(
                f"{self.path}: frame {idx} has size {rgb.shape[0]}x{rgb.shape[1]}, "
                f"the video started at {self._size[0]}x{self._size[1]}"
            )
        return rgb

    def read(self, indices: Sequence[int]) -> Iterator[tuple[int, np.ndarray]]:
        """Yield frames in the order of ``indices`` (ascending, or descending in bounded chunks)."""
        indices = list(indices)
        if not indices:
            return
        container = self._open()
        try:
            if all(a < b for a, b in zip(indices, indices[1:])):
                for idx, frame in self._span(container, indices):
                    yield idx, self._rgb(frame, idx)
            elif all(a > b for a, b in zip(indices, indices[1:])):
                rest = indices
                while rest:
                    # one chunk: wanted frames of the GOP that holds rest[0], at most self._chunk of them
                    key = self._seek_key(rest[0])
                    n = 1
                    while n < len(rest) and n < self._chunk and rest[n] >= key:
                        n += 1
                    chunk, rest = rest[:n][::-1], rest[n:]
                    frames = [(i, self._rgb(f, i)) for i, f in self._span(container, chunk)]
                    while frames:
                        yield frames.pop()
            else:
                for i in indices:
                    for idx, frame in self._span(container, [i]):
                        yield idx, self._rgb(frame, idx)
        finally:
            container.close()

    def frame(self, i: int) -> np.ndarray:
        """Random access through a cursor: increasing indices continue decoding instead of seeking again."""
        with self._lock:
            ra = self._ra
            if ra is None:
                ra = self._ra = {"container": self._open(), "it": None, "last": -1, "rgb": None}
            if ra["last"] == i and ra["rgb"] is not None:
                return ra["rgb"].copy()
            frame = None
            if ra["it"] is not None and self._can_continue(ra["last"], i):
                frame, ra["last"], _ = self._find(ra["it"], i, ra["last"])
            if frame is None:
                if ra["it"] is not None:
                    ra["it"].close()
                    ra["it"] = None
                ra["rgb"] = None
                ra["it"], frame, ra["last"] = self._seek_find(ra["container"], i)
            ra["rgb"] = self._rgb(frame, i)
            return ra["rgb"].copy()

    def close(self) -> None:
        with self._lock:
            if self._ra is not None:
                if self._ra["it"] is not None:
                    self._ra["it"].close()
                self._ra["container"].close()
                self._ra = None


# =============================================================================================== public reader
class VideoSource:
    """Lazily read RGB uint8 frames from a video file, a folder of images or an in-memory array.

    Args:
        source: path of a video file or of a folder of ``.jpg``/``.jpeg``/``.png`` frames (natural sort order),
            or a uint8 ``[T, H, W, 3]`` numpy array / torch tensor (RGB).
        fps: overrides the frame rate (files report their own; folders and arrays default to 30).
        prefetch: queue depth of the background reader used by :meth:`iter_frames` (0 = no thread).
        reverse_chunk_bytes: memory bound of one chunk of decoded frames during reverse iteration of a file.
        threads: decoder threads (0 = FFmpeg's automatic choice).
        autorotate: turn file frames upright according to the display matrix (phone videos), as ffmpeg does.

    Raises ``FileNotFoundError`` for a missing path and ``ValueError`` (naming the input) for unreadable or corrupt
    files, empty videos, folders without images, frames of different sizes, non-uint8/NaN arrays and wrong shapes.
    """

    def __init__(
        self,
        source: str | os.PathLike[str] | np.ndarray | torch.Tensor,
        *,
        fps: float | None = None,
        prefetch: int = 4,
        reverse_chunk_bytes: int = 256 << 20,
        threads: int = 0,
        autorotate: bool = True,
    ) -> None:
        self._prefetch = int(prefetch)
        if isinstance(source, (np.ndarray, torch.Tensor)):
            self._b: Any = _ArrayBackend(source, fps)
        elif isinstance(source, (str, os.PathLike)):
            path = Path(source)
            if path.is_dir():
                self._b = _FolderBackend(path, fps)
            elif path.is_file():
                self._b = _FileBackend(path, fps, reverse_chunk_bytes, threads, autorotate)
            elif path.exists():
                raise ValueError(f"{path}: neither a regular file nor a folder")
            else:
                raise FileNotFoundError(f"video source not found: {path}")
        else:
            raise TypeError(f"unsupported video source type {type(source).__name__}")

    @classmethod
    def from_callable(cls, get_frame: Callable[[int], np.ndarray], num_frames: int, height: int, width: int, *,
                      fps: float = 30.0, name: str = "frames") -> "VideoSource":
        """A source whose frame ``i`` is ``get_frame(i)`` (uint8 ``[height, width, 3]`` RGB), e.g. a float image
        batch converted one frame at a time instead of copied whole."""
        src = cls.__new__(cls)
        src._prefetch = 0
        src._b = _CallableBackend(get_frame, num_frames, height, width, fps, name)
        return src

    # ----------------------------------------------------------------------------------------- properties
    @property
    def kind(self) -> str:
        """``"file"``, ``"folder"`` or ``"array"``."""
        return self._b.kind

    @property
    def name(self) -> str:
        """Path or description of the source (used in error messages)."""
        return self._b.name

    @property
    def num_frames(self) -> int:
        """Exact number of frames."""
        return self._b.num_frames

    @property
    def height(self) -> int:
        return self._b.height

    @property
    def width(self) -> int:
        return self._b.width

    @property
    def fps(self) -> float:
        return self._b.fps

    @property
    def frame_names(self) -> list[str]:
        """Per-frame names: file stems for folders, ``%05d`` otherwise (for writers that mirror the input)."""
        if self._b.kind == "folder":
            return [p.stem for p in self._b.files]
        return [f"{i:05d}" for i in range(self.num_frames)]

    def __len__(self) -> int:
        return self.num_frames

    def __repr__(self) -> str:
        return (
            f"VideoSource({self.name!r}, kind={self.kind}, frames={self.num_frames}, "
            f"size={self.height}x{self.width}, fps={self.fps:g})"
        )

    # ----------------------------------------------------------------------------------------- access
    def _check(self, i: int) -> int:
        i = int(i)
        if not 0 <= i < self.num_frames:
            raise IndexError(f"{self.name}: frame index {i} out of range [0, {self.num_frames})")
        return i

    def frame(self, i: int) -> np.ndarray:
        """Frame ``i`` as a uint8 ``[H, W, 3]`` RGB array."""
        return self._b.frame(self._check(i))

    def __getitem__(self, i: int) -> np.ndarray:
        return self.frame(i)

    def indices(self, start: int | None = None, stop: int | None = None, step: int = 1) -> range:
        """Frame indices visited by :meth:`iter_frames` (``range`` semantics, clipped to the video)."""
        if step == 0:
            raise ValueError("step must not be 0")
        n = self.num_frames
        if step > 0:
            a = 0 if start is None else max(0, int(start))
            b = n if stop is None else min(n, int(stop))
        else:
            a = n - 1 if start is None else min(n - 1, int(start))
            b = -1 if stop is None else max(-1, int(stop))
        return range(a, b, step)

    def iter_frames(
        self, start: int | None = None, stop: int | None = None, step: int = 1
    ) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(index, uint8 [H, W, 3] RGB)`` for ``range(start, stop, step)``.

        With a negative ``step`` frames come backwards (``start`` defaults to the last frame, ``stop`` to -1, i.e.
        down to and including frame 0), e.g. ``iter_frames(k, -1, -1)`` for backward propagation from frame ``k``.
        Indices follow ``range`` semantics (no negative wrap-around) and are clipped to ``[0, num_frames)``.
        """
        idx = list(self.indices(start, stop, step))
        if not idx:
            return iter(())
        if self._b.kind == "array":
            return self._b.read(idx)
        return _prefetched(lambda: self._b.read(idx), self._prefetch)

    def __iter__(self) -> Iterator[np.ndarray]:
        for _i, f in self.iter_frames():
            yield f

    def iter_clips(
        self, clip_len: int, stride: int | None = None, start: int = 0, stop: int | None = None
    ) -> Iterator[tuple[list[int], np.ndarray]]:
        """Yield ``(indices, uint8 [t, H, W, 3])`` clips of at most ``clip_len`` frames every ``stride`` frames.

        Decodes every frame once; holds only ``clip_len`` frames. The last clip ends at ``stop`` (may be shorter).
        """
        if clip_len <= 0:
            raise ValueError("clip_len must be positive")
        stride = clip_len if stride is None else int(stride)
        if stride <= 0:
            raise ValueError("stride must be positive")
        rng = self.indices(start, stop, 1)
        if len(rng) == 0:
            return
        buf: dict[int, np.ndarray] = {}
        frames_it = self.iter_frames(rng.start, rng.stop, 1)
        clip_start = rng.start
        for i, f in frames_it:
            buf[i] = f
            clip_end = min(clip_start + clip_len, rng.stop)
            while i == clip_end - 1:
                ids = list(range(clip_start, clip_end))
                yield ids, np.stack([buf[j] for j in ids])
                if clip_end >= rng.stop:
                    return
                clip_start += stride
                for j in [j for j in buf if j < clip_start]:
                    del buf[j]
                clip_end = min(clip_start + clip_len, rng.stop)

    def close(self) -> None:
        """Release the random-access decoder (iterators own and close their own decoders)."""
        self._b.close()

    def __enter__(self) -> "VideoSource":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


GREY_TOLERANCE = 12      # grey levels two channels of one pixel may differ by in a grey frame (codec rounding)
GREY_COLOUR_SHARE = 1e-3  # a frame with more colourful pixels than this share is a colour frame


def is_grayscale(source: "VideoSource", start: int = 0, stop: int | None = None, samples: int = 8) -> bool:
    """Whether frames [start, stop) carry no colour: none of `samples` evenly spread frames has more than
    GREY_COLOUR_SHARE of its pixels with channels differing by more than GREY_TOLERANCE. A colour video with
    black or grey frames (fades, titles) is colour as soon as one sampled frame has colour."""
    stop = source.num_frames if stop is None else stop
    for i in np.unique(np.linspace(start, stop - 1, max(1, samples)).round().astype(int)):
        f = source.frame(int(i)).astype(np.int16)
        spread = np.maximum(np.abs(f[..., 0] - f[..., 1]), np.abs(f[..., 1] - f[..., 2]))
        if (spread > GREY_TOLERANCE).mean() > GREY_COLOUR_SHARE:
            return False
    return True


def iter_rgba_frames(path: str | os.PathLike[str]) -> Iterator[np.ndarray]:
    """Decode a video with alpha (ProRes 4444, VP9/VP8 with ``alpha_mode``) into uint8 ``[H, W, 4]`` RGBA.

    FFmpeg's native VP9 decoder drops the alpha plane, so VP8/VP9 streams flagged ``alpha_mode=1`` are decoded
    with libvpx. Videos without alpha yield an opaque alpha channel.
    """
    import av  # noqa: PLC0415

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"video file not found: {path}")
    try:
        container = av.open(str(path))
    except av.error.FFmpegError as e:
        raise ValueError(f"{path}: unreadable or corrupt video file ({e})") from e
    try:
        stream = container.streams.video[0]
        name = stream.codec_context.name
        alpha_mode = str(stream.metadata.get("alpha_mode", stream.metadata.get("ALPHA_MODE", "0")))
        if name in ("vp9", "vp8") and alpha_mode == "1":
            ctx = av.CodecContext.create("libvpx-vp9" if name == "vp9" else "libvpx", "r")
            for pkt in container.demux(stream):
                if pkt.size == 0:
                    continue
                for frame in ctx.decode(pkt):
                    yield frame.to_ndarray(format="rgba")
            for frame in ctx.decode(None):
                yield frame.to_ndarray(format="rgba")
        else:
            for frame in container.decode(stream):
                yield frame.to_ndarray(format="rgba")
    finally:
        container.close()


# =============================================================================================== preprocessing
def resize_shortest_edge_size(h: int, w: int, min_size: int, max_size: int | None) -> tuple[int, int]:
    """detectron2 ``ResizeShortestEdge`` output shape: short side -> ``min_size``, long side capped at ``max_size``.

    scale = min_size / short; if long * scale > max_size both sides are rescaled so the long side equals max_size;
    each side is rounded with ``int(x + 0.5)``.
    """
    if h <= 0 or w <= 0:
        raise ValueError(f"image size must be positive, got {h}x{w}")
    scale = min_size / min(h, w)
    if h < w:
        nh, nw = float(min_size), scale * w
    else:
        nh, nw = scale * h, float(min_size)
    if max_size and max(nh, nw) > max_size:
        s = max_size / max(nh, nw)
        nh, nw = nh * s, nw * s
    return int(nh + 0.5), int(nw + 0.5)


def _as_nhwc_uint8(frames: Any) -> np.ndarray:
    """uint8 ``[T, H, W, 3]`` numpy/torch (any device) -> C-contiguous uint8 numpy ``[T, H, W, 3]`` (validated).

    Frames must already be 8-bit RGB: the readers convert every input to that explicitly (folders with
    ``Image.convert("RGB")``, files with FFmpeg's ``rgb24``); arrays of other dtypes or channel counts are rejected
    rather than guessed at (a uint16 frame could mean 0..65535 or 0..1023, a 4-channel frame RGBA or BGRA).
    """
    if isinstance(frames, torch.Tensor):
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"frames must be uint8 [T, H, W, 3], got shape {list(frames.shape)}")
        if frames.dtype != torch.uint8:
            raise ValueError(f"frames must be uint8 [T, H, W, 3], got dtype {frames.dtype}")
        frames = frames.detach().cpu().numpy()
    a = np.asarray(frames)
    if a.ndim != 4 or a.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 [T, H, W, 3], got shape {list(a.shape)}")
    if a.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 [T, H, W, 3], got dtype {a.dtype}")
    return np.ascontiguousarray(a)


# Below this many pixels per call (frames x the larger of the input and output size) threads cost more than they save.
_PARALLEL_MIN_PIXELS = 1 << 18


def _pil_bilinear(frame: np.ndarray, width: int, height: int) -> np.ndarray:
    """One uint8 ``[h, w, 3]`` frame (contiguous or not) through ``Image.resize((width, height), BILINEAR)``."""
    from PIL import Image  # noqa: PLC0415

    return np.asarray(Image.fromarray(np.ascontiguousarray(frame)).resize((width, height), Image.BILINEAR))


@functools.lru_cache(maxsize=32)
def _pillow_pass_order(h: int, w: int, nh: int, nw: int) -> str | None:
    """How the installed Pillow splits an ``h x w -> nh x nw`` BILINEAR resize into one-direction passes.

    ``"h"`` or ``"v"`` when only one side changes; ``"hv"`` (horizontal pass first, Pillow < 13 always) or ``"vh"``
    (vertical first: Pillow >= 13 does that when the height shrinks much more than the width) found by experiment:
    a noise image of this size resized in one call must equal exactly one of the two chains of one-direction
    resizes. ``None`` when that does not single out an order (then only whole frames are resized).
    """
    if nw == w:
        return "v"
    if nh == h:
        return "h"
    probe = np.random.default_rng(h * 100003 + w).integers(0, 256, (h, w, 3), dtype=np.uint8)
    ref = _pil_bilinear(probe, nw, nh)
    hv = np.array_equal(ref, _pil_bilinear(_pil_bilinear(probe, nw, h), nw, nh))
    vh = np.array_equal(ref, _pil_bilinear(_pil_bilinear(probe, w, nh), nw, nh))
    return "hv" if hv and not vh else "vh" if vh and not hv else None


_SIZES_SEEN: set[tuple[int, int, int, int]] = set()  # resize geometries met before (the second one is probed)


def _strips(n: int, parts: int, min_len: int = 16) -> list[tuple[int, int]]:
    """``[0, n)`` cut into at most ``parts`` near-equal ``(start, stop)`` ranges of at least ``min_len``."""
    parts = max(1, min(parts, n // min_len))
    edges = [n * k // parts for k in range(parts + 1)]
    return list(zip(edges[:-1], edges[1:]))


def resize_frames_numpy(frames: np.ndarray, size: tuple[int, int], threads: int | None = None) -> np.ndarray:
    """PIL ``BILINEAR`` resize of uint8 RGB ``[T, H, W, 3]`` frames to ``size = (h, w)``, bit-exact.

    Every output frame equals ``np.asarray(Image.fromarray(frame).resize((w, h), Image.BILINEAR))`` with the
    installed Pillow — what detectron2's ``ResizeTransform.apply_image`` does for uint8 images at test time
    (antialiased when shrinking, 22-bit fixed-point weights, a uint8 intermediate between the two one-direction
    passes). The same size is a no-op (``frames`` itself is returned).

    Pillow releases the GIL while resampling, so large inputs are spread over ``threads`` workers (default
    ``torch.get_num_threads()``) without changing a bit: whole frames go to the workers, and the frames left over
    when their number is not a multiple of the workers (a single frame, 5 frames on 2 workers) are cut into strips.
    Each one-direction pass works on rows (horizontal) or columns (vertical) independently, so a strip is an
    ordinary one-direction ``Image.resize`` call; the passes follow the order this Pillow uses
    (:func:`_pillow_pass_order`, checked once per size, from the second call with that size on). Before that, or
    where the order cannot be established, the left-over frames are resized whole as well.
    """
    from concurrent.futures import ThreadPoolExecutor  # noqa: PLC0415
    from math import gcd  # noqa: PLC0415

    nh, nw = int(size[0]), int(size[1])
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 [T, H, W, 3], got {frames.dtype} {list(frames.shape)}")
    if nh <= 0 or nw <= 0:
        raise ValueError(f"target size must be positive, got {nh}x{nw}")
    t, h, w = int(frames.shape[0]), int(frames.shape[1]), int(frames.shape[2])
    if (h, w) == (nh, nw):
        return frames
    out = np.empty((t, nh, nw, 3), np.uint8)
    workers = max(1, int(threads) if threads is not None else min(torch.get_num_threads(), os.cpu_count() or 1))
    if workers == 1 or t * max(h * w, nh * nw) < _PARALLEL_MIN_PIXELS:
        for i in range(t):
            out[i] = _pil_bilinear(frames[i], nw, nh)
        return out

    # Whole frames are the cheapest jobs; only the t % workers frames left over (all of them when t < workers)
    # are cut into strips so that every worker gets the same share.
    n_whole = t - t % workers
    order = None
    if n_whole < t:
        key = (h, w, nh, nw)
        order = _pillow_pass_order(*key) if key in _SIZES_SEEN else None  # a one-off size is not worth the probe
        if len(_SIZES_SEEN) > 1024:
            _SIZES_SEEN.clear()
        _SIZES_SEEN.add(key)
        if order is None:
            n_whole = t

    def whole(i: int) -> None:
        out[i] = _pil_bilinear(frames[i], nw, nh)

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="univs-resize") as pool:
        jobs = [pool.submit(whole, i) for i in range(n_whole)]
        if order is not None:
            m = t - n_whole
            parts = workers // gcd(m, workers)  # m * parts jobs per pass, a multiple of the workers
            src = frames[n_whole:]
            for k, step in enumerate(order):
                sh, sw = int(src.shape[1]), int(src.shape[2])
                dst = out[n_whole:] if k == len(order) - 1 else \
                    np.empty((m, nh if step == "v" else sh, nw if step == "h" else sw, 3), np.uint8)

                def run(i: int, a: int, b: int, src: np.ndarray = src, dst: np.ndarray = dst, step: str = step) -> None:
                    if step == "h":  # rows a:b, full width
                        dst[i, a:b] = _pil_bilinear(src[i, a:b], nw, b - a)
                    else:  # columns a:b, full height
                        dst[i, :, a:b] = _pil_bilinear(src[i, :, a:b], b - a, nh)

                n = sh if step == "h" else sw
                for f in [pool.submit(run, i, a, b) for i in range(m) for a, b in _strips(n, parts)]:
                    f.result()
                src = dst
        for f in jobs:
            f.result()
    return out


def resize_frames(frames: torch.Tensor, size: tuple[int, int], threads: int | None = None) -> torch.Tensor:
    """PIL ``BILINEAR`` resize of uint8 ``[T, 3, H, W]`` frames (any device), bit-exact; see
    :func:`resize_frames_numpy`. The result is uint8 ``[T, 3, h, w]`` on the input's device (a channels-last view);
    the same size returns ``frames`` itself.
    """
    if frames.ndim != 4 or frames.shape[1] != 3 or frames.dtype != torch.uint8:
        raise ValueError(f"frames must be uint8 [T, 3, H, W], got {frames.dtype} {list(frames.shape)}")
    if tuple(frames.shape[-2:]) == tuple(size):
        return frames
    hwc = frames.detach().permute(0, 2, 3, 1).cpu().numpy()
    out = torch.from_numpy(resize_frames_numpy(np.ascontiguousarray(hwc), size, threads))
    return out.permute(0, 3, 1, 2).to(frames.device)


def preprocess_frames(
    frames: Any,
    min_size: int,
    max_size: int | None,
    size_divisibility: int = 32,
    square: int | None = None,
    mean: Sequence[float] = PIXEL_MEAN,
    std: Sequence[float] = PIXEL_STD,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, tuple[int, int]]:
    """Official test-time preprocessing of a clip.

    ``frames``: uint8 RGB ``[T, H, W, 3]`` (numpy or torch). Steps: resize to
    :func:`resize_shortest_edge_size` with PIL ``BILINEAR`` on uint8, bit-exact (:func:`resize_frames_numpy`; the
    result stays uint8, as detectron2's PIL resize does); ``(x - mean) / std`` in float32; zero pad bottom/right to
    a multiple of ``size_divisibility`` — or to ``square x square`` (then rounded up to the divisibility) when
    ``square`` is set. The resize runs on the CPU; ``device`` receives the uint8 frames for the normalisation.

    Returns ``(tensor [T, 3, Hp, Wp] float32, (nh, nw))`` where ``(nh, nw)`` is the resized size before padding.
    """
    a = _as_nhwc_uint8(frames)
    t, h, w = (int(n) for n in a.shape[:3])
    nh, nw = resize_shortest_edge_size(h, w, min_size, max_size)
    r = resize_frames_numpy(a, (nh, nw))
    if not r.flags.writeable:  # a read-only input that needed no resize: torch wants writable memory
        r = r.copy()
    x = torch.from_numpy(r).permute(0, 3, 1, 2)  # uint8 [T, 3, nh, nw], a view of the HWC frames
    if device is not None:
        x = x.to(device)
    ph, pw = nh, nw
    if square is not None:
        if nh > square or nw > square:
            raise ValueError(f"resized size {nh}x{nw} exceeds the square canvas {square}")
        ph = pw = int(square)
    if size_divisibility and size_divisibility > 1:
        d = int(size_divisibility)
        ph, pw = (ph + d - 1) // d * d, (pw + d - 1) // d * d
    m = torch.as_tensor(mean, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    out = torch.empty((t, 3, ph, pw), dtype=torch.float32, device=x.device)
    out[:, :, nh:].zero_()
    out[:, :, :nh, nw:].zero_()
    # (x - mean) / std in float32 written straight into the padded canvas: the same two roundings as the
    # official ``(x - pixel_mean) / pixel_std`` followed by zero padding, without the intermediate copies.
    out[:, :, :nh, :nw].copy_(x).sub_(m).div_(s)
    return out, (nh, nw)


def postprocess_masks(
    logits: torch.Tensor,
    padded_size: tuple[int, int],
    image_size: tuple[int, int],
    out_size: tuple[int, int],
    final_mode: str = "bilinear",
) -> torch.Tensor:
    """Mask logits at 1/4 of the padded size -> logits at the original resolution.

    ``logits`` ``[N, T, h4, w4]`` (or ``[T, h4, w4]``): bilinear (align_corners False) to ``padded_size``, crop to
    ``image_size`` (top-left), then ``final_mode`` (``"bilinear"``; VSS uses ``"nearest"``) to ``out_size``.
    Objects are processed one at a time to bound the peak memory of the padded-size intermediate.
    """
    squeeze = logits.ndim == 3
    x = logits[None] if squeeze else logits
    if x.ndim != 4:
        raise ValueError(f"logits must be [N, T, h, w] or [T, h, w], got shape {list(logits.shape)}")
    nh, nw = image_size
    if nh > padded_size[0] or nw > padded_size[1]:
        raise ValueError(f"image_size {image_size} larger than padded_size {padded_size}")
    outs = []
    for n in range(x.shape[0]):
        y = F.interpolate(x[n : n + 1].float(), size=tuple(padded_size), mode="bilinear", align_corners=False)
        y = y[..., :nh, :nw]
        if final_mode == "nearest":
            y = F.interpolate(y, size=tuple(out_size), mode="nearest")
        else:
            y = F.interpolate(y, size=tuple(out_size), mode=final_mode, align_corners=False)
        outs.append(y)
    out = torch.cat(outs, 0) if outs else x.new_zeros((0, x.shape[1], *out_size), dtype=torch.float32)
    return out[0] if squeeze else out

