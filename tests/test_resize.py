"""The preprocessing resize is Pillow's ``Image.resize(size, Image.BILINEAR)`` bit for bit (detectron2's
``ResizeShortestEdge`` at test time), and every input becomes 8-bit RGB before it, as the official reader does."""
from __future__ import annotations

import math

import av
import numpy as np
import pytest
import torch
from PIL import Image

from univs_engine.io import video as vid
from univs_engine.io.video import (
    PIXEL_MEAN,
    PIXEL_STD,
    VideoSource,
    pil_to_rgb8,
    preprocess_frames,
    resize_frames,
    resize_frames_numpy,
    resize_shortest_edge_size,
)


def _pillow(frames: np.ndarray, nh: int, nw: int) -> np.ndarray:
    """The official mapper, frame by frame: ``Image.fromarray(img).resize((new_w, new_h), Image.BILINEAR)``."""
    return np.stack([np.asarray(Image.fromarray(f).resize((nw, nh), Image.BILINEAR)) for f in frames])


def _frames(rng: np.random.Generator, t: int, h: int, w: int) -> np.ndarray:
    """Noise (every rounding case) over the lower half, ramps and a flat patch (ties, clipped ends) above."""
    out = rng.integers(0, 256, (t, h, w, 3), dtype=np.uint8)
    top = h // 2
    ramp = (np.arange(top)[:, None, None] * 7 + np.arange(w)[None, :, None] * 3 + np.array([0, 85, 170])) % 256
    out[:, :top] = ramp.astype(np.uint8)
    out[:, : top // 2, : w // 3] = rng.integers(0, 256, (t, 1, 1, 3), dtype=np.uint8)
    return out


def _random_cases(n: int = 60, seed: int = 20240611) -> list[tuple[int, int, int, int]]:
    """(h, w, nh, nw): sources log-uniform from 17x23 to 2160x3840; half of the targets from the shortest-edge
    rule at the preset sizes, half independent per axis (so up- and downscaling mix, aspect changes)."""
    rng = np.random.default_rng(seed)
    cases = []
    for k in range(n):
        h = int(round(math.exp(rng.uniform(math.log(17), math.log(2160)))))
        w = int(round(math.exp(rng.uniform(math.log(23), math.log(3840)))))
        if k % 2 == 0:
            min_size = int(rng.choice([256, 360, 480, 640, 800]))
            nh, nw = resize_shortest_edge_size(h, w, min_size, 1333 if min_size >= 480 else 640)
        else:
            nh = int(round(math.exp(rng.uniform(math.log(17), math.log(1400)))))
            nw = int(round(math.exp(rng.uniform(math.log(23), math.log(1400)))))
        cases.append((h, w, nh, nw))
    # and the largest sizes for sure: 4K and 1080p to the preset sizes
    return cases + [(2160, 3840, 640, 1138), (1080, 1920, 640, 1138), (1080, 1920, 256, 455)]


CASES = _random_cases()


def test_random_cases_cover_both_directions():
    down = sum(nh < h and nw < w for h, w, nh, nw in CASES)
    up = sum(nh > h and nw > w for h, w, nh, nw in CASES)
    mixed = sum((nh - h) * (nw - w) < 0 for h, w, nh, nw in CASES)
    big = sum(h * w >= 1920 * 1080 for h, w, _, _ in CASES)
    assert len(CASES) >= 50 and down >= 10 and up >= 10 and mixed >= 5 and big >= 3, (down, up, mixed, big)
    assert min(h for h, *_ in CASES) < 40 and max(w for _, w, *_ in CASES) > 2000


@pytest.fixture
def strips_always(monkeypatch):
    """Send every size through the threaded strip path (by default small inputs are resized by Pillow whole,
    which would make the comparison below Pillow against itself)."""
    monkeypatch.setattr(vid, "_PARALLEL_MIN_PIXELS", 0)
    monkeypatch.setattr(vid, "_SIZES_SEEN", _EverySize())


class _EverySize(set):
    """Every size counts as met before, so that the pass order is probed and strips are used on the first call."""

    def __contains__(self, key):
        return True


def _check(rng, h, w, nh, nw, threads=2):
    t = 1 if h * w > 400_000 else 3  # big frames: one is enough (and keeps the test fast)
    frames = _frames(rng, t, h, w)
    ours = resize_frames_numpy(frames, (nh, nw), threads)
    ref = _pillow(frames, nh, nw)
    assert ours.shape == ref.shape and ours.dtype == np.uint8
    diff = int((ours != ref).sum())
    assert diff == 0, f"{h}x{w} -> {nh}x{nw}: {diff} values differ from Pillow"


def test_equal_to_pillow_on_random_sizes(strips_always):
    rng = np.random.default_rng(7)
    for h, w, nh, nw in CASES:
        _check(rng, h, w, nh, nw)


def test_equal_to_pillow_for_any_thread_split(strips_always):
    """The threaded path cuts passes into strips; the cut must never show (odd clip lengths, thin strips)."""
    rng = np.random.default_rng(3)
    frames = _frames(rng, 5, 731, 1283)
    ref = _pillow(frames, 397, 699)
    for threads in (1, 2, 3, 4):
        np.testing.assert_array_equal(resize_frames_numpy(frames, (397, 699), threads), ref)
    one = frames[:1]
    for size in [(731, 411), (1002, 1283), (40, 2000)]:  # horizontal only, vertical only, squashed
        np.testing.assert_array_equal(resize_frames_numpy(one, size, 3), _pillow(one, *size))
    # height shrinks far more than width: Pillow >= 13 runs the vertical pass first, older ones never do;
    # the strips follow whichever order the installed Pillow uses
    tall = _frames(rng, 2, 1500, 200)
    for size in [(30, 300), (64, 150), (900, 190)]:
        np.testing.assert_array_equal(resize_frames_numpy(tall, size, 3), _pillow(tall, *size))


def test_pass_order_matters_and_unknown_order_falls_back(monkeypatch, strips_always):
    """Strips in the wrong pass order are caught by the comparison; without a known order, whole frames are used."""
    rng = np.random.default_rng(8)
    frames = _frames(rng, 2, 1200, 300)
    size = (40, 500)
    ref = _pillow(frames, *size)
    order = vid._pillow_pass_order(1200, 300, *size)
    assert order in ("hv", "vh")
    wrong = "vh" if order == "hv" else "hv"
    monkeypatch.setattr(vid, "_pillow_pass_order", lambda *a: wrong)
    assert (resize_frames_numpy(frames, size, 3) != ref).any()  # 2 frames on 3 workers: both in strips
    monkeypatch.setattr(vid, "_pillow_pass_order", lambda *a: None)
    np.testing.assert_array_equal(resize_frames_numpy(frames, size, 3), ref)


def test_pass_order_is_probed_from_the_second_call_with_a_size(monkeypatch):
    calls = []
    monkeypatch.setattr(vid, "_SIZES_SEEN", set())
    monkeypatch.setattr(vid, "_pillow_pass_order", lambda *a: calls.append(a) or "hv")
    frames = _frames(np.random.default_rng(1), 3, 600, 800)
    ref = _pillow(frames, 300, 400)
    np.testing.assert_array_equal(resize_frames_numpy(frames, (300, 400), 2), ref)  # whole frames, no probe
    assert calls == []
    np.testing.assert_array_equal(resize_frames_numpy(frames, (300, 400), 2), ref)  # the third frame in strips
    assert calls == [(600, 800, 300, 400)]
    resize_frames_numpy(frames[:2], (300, 400), 2)  # one frame per worker: no strips, no probe
    resize_frames_numpy(frames[:, :20, :20], (10, 10), 2)  # small: Pillow on whole frames, in this thread
    assert len(calls) == 1


def test_odd_cases(strips_always):
    rng = np.random.default_rng(11)
    for h, w, nh, nw in [
        (1, 1, 5, 7), (1, 37, 1, 20), (1, 37, 3, 80), (41, 1, 19, 1), (41, 1, 90, 2), (7, 5, 1, 1),
        (2, 3840, 1, 1333), (2160, 3, 1333, 1), (19, 3000, 4, 640), (3000, 19, 640, 4), (17, 23, 17, 24),
        (17, 23, 16, 23), (480, 640, 960, 1280), (720, 1280, 360, 640),  # exact 2x: half-way ties everywhere
    ]:
        _check(rng, h, w, nh, nw)
    # the shortest-edge rule with an extreme aspect: the long side caps the scale
    h, w = 24, 3000
    nh, nw = resize_shortest_edge_size(h, w, 640, 1333)
    assert (nh, nw) == (11, 1333)
    _check(rng, h, w, nh, nw)


def test_same_size_is_a_no_op():
    frames = _frames(np.random.default_rng(5), 2, 640, 960)
    assert resize_frames_numpy(frames, (640, 960)) is frames
    t = torch.from_numpy(frames).permute(0, 3, 1, 2)
    assert resize_frames(t, (640, 960)) is t
    x, size = preprocess_frames(frames, 640, 1333)  # short side already 640: no resampling at all
    m = torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1)
    s = torch.tensor(PIXEL_STD).view(1, 3, 1, 1)
    expect = (t.float() - m) / s  # 640 x 960 is a multiple of 32: no padding either
    assert size == (640, 960) and x.shape == (2, 3, 640, 960)
    assert torch.equal(x, expect)


def test_preprocess_is_pillow_then_official_normalisation():
    """End to end: the padded float tensor equals the official mapper + ``(x - mean) / std`` + zero padding."""
    rng = np.random.default_rng(9)
    m = torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1)
    s = torch.tensor(PIXEL_STD).view(1, 3, 1, 1)
    for h, w, min_size, max_size, square in [(200, 344, 640, 1333, None), (1080, 1920, 256, 640, None),
                                             (333, 251, 480, 1333, None), (90, 60, 40, 50, 64)]:
        frames = _frames(rng, 2, h, w)
        x, (nh, nw) = preprocess_frames(torch.from_numpy(frames), min_size, max_size, 32, square)
        pil = torch.from_numpy(_pillow(frames, nh, nw)).permute(0, 3, 1, 2)
        ref = (pil.float() - m) / s
        assert torch.equal(x[:, :, :nh, :nw], ref), (h, w, min_size)
        assert x.shape[-2] % 32 == 0 and x.shape[-1] % 32 == 0 and x.is_contiguous()
        assert not x[:, :, nh:].any() and not x[:, :, :, nw:].any()
    # through the tensor API as well (a [T, 3, H, W] tensor, result on the same device)
    frames = _frames(rng, 2, 200, 344)
    out = resize_frames(torch.from_numpy(frames).permute(0, 3, 1, 2).contiguous(), (640, 1101))
    assert out.shape == (2, 3, 640, 1101) and out.dtype == torch.uint8
    np.testing.assert_array_equal(out.permute(0, 2, 3, 1).numpy(), _pillow(frames, 640, 1101))


def test_equality_check_catches_torch_rounding(monkeypatch, strips_always):
    """The checks above fail with the resize this engine used before (torch's uint8 antialias, 14-bit weights)."""

    def torch_resize(frame, width, height):
        x = torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1)[None].contiguous()
        y = torch.nn.functional.interpolate(x, size=(height, width), mode="bilinear", align_corners=False,
                                            antialias=True)
        return y[0].permute(1, 2, 0).numpy()

    monkeypatch.setattr(vid, "_pil_bilinear", torch_resize)
    rng = np.random.default_rng(7)
    with pytest.raises(AssertionError, match="differ from Pillow"):
        _check(rng, 200, 344, 640, 1101)
    failed = 0
    for h, w, nh, nw in CASES[:12]:
        try:
            _check(rng, h, w, nh, nw)
        except AssertionError:
            failed += 1
    assert failed >= 8, failed


# ============================================================================================ inputs become RGB8
def _save_modes(d):
    """One image per PIL mode the official reader may meet, with what ``convert("RGB")`` must give."""
    rng = np.random.default_rng(2)
    h, w = 30, 44
    rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    grey = rng.integers(0, 256, (h, w), dtype=np.uint8)
    alpha = rng.integers(0, 256, (h, w), dtype=np.uint8)
    deep = rng.integers(0, 65536, (h, w), dtype=np.uint16)
    cases = {
        "grey_L.png": (Image.fromarray(grey), np.repeat(grey[..., None], 3, -1)),
        "grey_alpha_LA.png": (Image.fromarray(np.dstack([grey, alpha])), np.repeat(grey[..., None], 3, -1)),
        "rgba.png": (Image.fromarray(np.dstack([rgb, alpha])), rgb),  # alpha dropped, not composited
        "deep_16bit.png": (Image.fromarray(deep), np.repeat(np.minimum(deep, 255).astype(np.uint8)[..., None], 3, -1)),
        "bilevel_1.png": (Image.fromarray(grey > 127), np.repeat((grey > 127)[..., None], 3, -1).astype(np.uint8) * 255),
        "palette_P.png": (Image.fromarray(rgb).quantize(16), None),
        "cmyk.jpg": (Image.fromarray(rgb).convert("CMYK"), None),
    }
    for name, (im, _) in cases.items():
        im.save(d / name)
    return cases, (h, w)


def test_folder_frames_become_rgb8_like_the_official_reader(tmp_path):
    cases, (h, w) = _save_modes(tmp_path)
    modes = {p.name: Image.open(p).mode for p in tmp_path.iterdir()}
    assert modes["deep_16bit.png"].startswith("I") and modes["palette_P.png"] == "P" and modes["cmyk.jpg"] == "CMYK"
    assert modes["grey_alpha_LA.png"] == "LA" and modes["rgba.png"] == "RGBA" and modes["bilevel_1.png"] == "1"
    v = VideoSource(tmp_path)
    assert (v.height, v.width) == (h, w)
    for name, frame in zip(v.frame_names, v):
        path = tmp_path / f"{name}{'.jpg' if name == 'cmyk' else '.png'}"
        assert frame.dtype == np.uint8 and frame.shape == (h, w, 3), name
        with Image.open(path) as im:  # detectron2 read_image(path, format="RGB")
            np.testing.assert_array_equal(frame, np.asarray(im.convert("RGB")), err_msg=name)
        expected = cases[path.name][1]
        if expected is not None:
            np.testing.assert_array_equal(frame, expected, err_msg=name)
    with Image.open(tmp_path / "deep_16bit.png") as im:
        assert pil_to_rgb8(im).max() == 255  # 16-bit values are clipped, as Pillow converts them
    # and then the resize is exact on those frames as on any other
    frames = np.stack(list(v))
    x, (nh, nw) = preprocess_frames(frames, 64, 1333)
    ref = torch.from_numpy(_pillow(frames, nh, nw)).permute(0, 3, 1, 2)
    m, s = torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1), torch.tensor(PIXEL_STD).view(1, 3, 1, 1)
    assert torch.equal(x[:, :, :nh, :nw], (ref.float() - m) / s)


@pytest.mark.parametrize("codec, pix_fmt, ext", [("ffv1", "gray", "mkv"), ("ffv1", "gray16le", "mkv"),
                                                 ("ffv1", "bgra", "mkv"), ("png", "rgb48be", "mov")])
def test_video_frames_become_rgb8(tmp_path, codec, pix_fmt, ext):
    """Files: FFmpeg converts any pixel format to rgb24 (grey replicated, deep samples rescaled, alpha dropped)."""
    h, w = 24, 32
    rng = np.random.default_rng(4)
    path = tmp_path / f"clip.{ext}"
    c = av.open(str(path), "w")
    s = c.add_stream(codec, rate=10)
    s.width, s.height, s.pix_fmt = w, h, pix_fmt
    expected = []
    for _ in range(3):
        if pix_fmt == "gray":
            a = rng.integers(0, 256, (h, w), dtype=np.uint8)
            frame, exp = av.VideoFrame.from_ndarray(a, format="gray"), np.repeat(a[..., None], 3, -1) / 1.0
        elif pix_fmt == "gray16le":
            a = rng.integers(0, 65536, (h, w), dtype=np.uint16)
            frame, exp = av.VideoFrame.from_ndarray(a, format="gray16le"), np.repeat(a[..., None], 3, -1) / 257.0
        elif pix_fmt == "bgra":
            a = rng.integers(0, 256, (h, w, 4), dtype=np.uint8)
            frame, exp = av.VideoFrame.from_ndarray(a, format="bgra"), a[..., 2::-1] / 1.0
        else:
            a = rng.integers(0, 65536, (h, w, 3), dtype=np.uint16)
            frame, exp = av.VideoFrame.from_ndarray(a, format="rgb48be"), a / 257.0
        expected.append(exp)
        for p in s.encode(frame):
            c.mux(p)
    for p in s.encode(None):
        c.mux(p)
    c.close()
    v = VideoSource(path)
    frames = [f for _i, f in v.iter_frames()]
    assert len(frames) == 3
    for f, exp in zip(frames, expected):
        assert f.dtype == np.uint8 and f.shape == (h, w, 3)
        # swscale's 16 -> 8 bit step is v / 257 to within its rounding (clipping or a lost channel is far off)
        assert np.abs(f - exp).max() <= (0.0 if pix_fmt in ("gray", "bgra") else 2.0), pix_fmt


@pytest.mark.parametrize("make", [
    lambda a: a[..., 0],                                   # grey [T, H, W]
    lambda a: a[..., :1],                                  # grey [T, H, W, 1]
    lambda a: np.concatenate([a, a[..., :1]], -1),         # RGBA / BGRA
    lambda a: a.astype(np.uint16) * 257,                   # 16-bit
    lambda a: torch.from_numpy(a.astype(np.int16)),        # other integer tensor
])
def test_arrays_must_already_be_rgb8(make):
    """In-memory frames are not guessed at: anything but uint8 [T, H, W, 3] is refused with a clear message."""
    a = np.random.default_rng(0).integers(0, 256, (2, 20, 30, 3), dtype=np.uint8)
    bad = make(a)
    with pytest.raises(ValueError, match=r"uint8 \[T, H, W, 3\]"):
        preprocess_frames(bad, 16, 1333)
    with pytest.raises(ValueError, match=r"uint8|\[T, H, W, 3\]"):
        VideoSource(bad)
