"""Video input (files, folders, arrays), preprocessing rules and the streaming writers."""
from __future__ import annotations

import json
import math
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

from univs_engine import rle
from univs_engine.io import (
    PIXEL_MEAN,
    PIXEL_STD,
    VideoSource,
    iter_rgba_frames,
    postprocess_masks,
    preprocess_frames,
    resize_shortest_edge_size,
)
from univs_engine.io import writers as wr
from univs_engine.results import Tracks

from conftest import reference_path

H, W, N = 48, 64, 24


def _frame(i: int, h: int = H, w: int = W) -> np.ndarray:
    """Frame whose index is written as 6 black/white vertical bars (robust to lossy coding)."""
    a = np.full((h, w, 3), 60, np.uint8)
    for b in range(6):
        a[:, b * 10 : b * 10 + 10] = 255 if (i >> b) & 1 else 0
    return a


def _index_of(frame: np.ndarray) -> int:
    return sum(int(frame[H // 2, b * 10 + 5].mean() > 127) << b for b in range(6))


def _encode(path: Path, codec: str, n: int = N, rate: int = 25, **opts: str) -> Path:
    c = av.open(str(path), "w")
    s = c.add_stream(codec, rate=rate)
    s.width, s.height, s.pix_fmt = W, H, "yuv420p"
    s.options = opts
    for i in range(n):
        for p in s.encode(av.VideoFrame.from_ndarray(_frame(i), format="rgb24")):
            c.mux(p)
    for p in s.encode(None):
        c.mux(p)
    c.close()
    return path


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("videos")
    return {
        # B-frames and short GOPs: presentation order != decode order, several keyframes
        "mp4": _encode(d / "clip.mp4", "libx264", g="5", bf="2"),
        # WebM: stream.frames is 0, the count must come from the index
        "webm": _encode(d / "clip.webm", "libvpx-vp9", g="7"),
    }


def _tracks_with_blob(n: int = N) -> Tracks:
    tr = Tracks(n, H, W)
    tr.add_object(1, "ball", category=0)
    tr.add_object(2, "box", category=1)
    for f in range(n):
        m = np.zeros((H, W), bool)
        m[10:25, 2 + f : 18 + f] = True
        tr.set_mask(f, 1, m)
        if f % 2 == 0:
            tr.set_mask(f, 2, ~m & (np.arange(W)[None, :] > 40) & (np.arange(H)[:, None] > 20))
    return tr


# ============================================================================================ VideoSource: files
@pytest.mark.parametrize("kind", ["mp4", "webm"])
def test_file_count_size_and_order(videos, kind):
    v = VideoSource(videos[kind])
    assert (v.num_frames, v.height, v.width, v.kind) == (N, H, W, "file")
    assert v.fps == pytest.approx(25.0)
    fwd = list(v.iter_frames())
    assert [i for i, _ in fwd] == list(range(N))
    assert all(_index_of(f) == i and f.dtype == np.uint8 and f.shape == (H, W, 3) for i, f in fwd)
    back = list(v.iter_frames(step=-1))
    assert [i for i, _ in back] == list(range(N - 1, -1, -1))
    assert all(_index_of(f) == i for i, f in back)
    for i in [17, 3, 4, 5, 23, 0, 11]:  # random access, seeks both ways
        assert _index_of(v.frame(i)) == i
    assert [i for i, _ in v.iter_frames(2, 20, 6)] == [2, 8, 14]
    assert [i for i, _ in v.iter_frames(9, -1, -4)] == [9, 5, 1]
    v.close()


def test_reverse_iteration_in_small_chunks(videos):
    v = VideoSource(videos["mp4"], reverse_chunk_bytes=3 * H * W * 3)  # 3 frames per chunk
    out = [(i, _index_of(f)) for i, f in v.iter_frames(20, 3, -1)]
    assert [i for i, _ in out] == list(range(20, 3, -1))
    assert all(i == j for i, j in out)
    # early exit stops the prefetch thread cleanly
    for i, _ in v.iter_frames(step=-1):
        if i < N - 3:
            break
    clips = list(v.iter_clips(clip_len=5, stride=5))
    assert [c[0] for c in clips][-1] == [20, 21, 22, 23]
    assert all(_index_of(frame) == idx for ids, arr in clips for idx, frame in zip(ids, arr))


def test_file_errors(tmp_path, videos):
    with pytest.raises(FileNotFoundError, match="missing.mp4"):
        VideoSource(tmp_path / "missing.mp4")
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\x00\x01 this is not a video" * 50)
    with pytest.raises(ValueError, match="junk.mp4.*corrupt"):
        VideoSource(junk)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(videos["mp4"].read_bytes()[:300])  # moov atom lost
    with pytest.raises(ValueError, match="cut.mp4"):
        VideoSource(cut)
    for ext, message in [("avi", "empty video \\(0 frames\\)"), ("mov", "file has no video stream")]:
        empty = tmp_path / f"empty.{ext}"  # valid header, no frames
        c = av.open(str(empty), "w")
        s = c.add_stream("mpeg4", rate=25)
        s.width, s.height, s.pix_fmt = W, H, "yuv420p"
        c.start_encoding()
        c.close()
        with pytest.raises(ValueError, match=f"empty.{ext}: {message}"):
            VideoSource(empty)


def test_display_rotation_is_applied(tmp_path):
    path = tmp_path / "portrait.mp4"
    c = av.open(str(path), "w")
    s = c.add_stream("libx264", rate=25)
    s.width, s.height, s.pix_fmt = W, H, "yuv420p"
    if not hasattr(s, "set_display_rotation"):
        c.close()
        pytest.skip("PyAV cannot write a display matrix")
    s.set_display_rotation(90)  # counter-clockwise, as phones store portrait video
    a = np.zeros((H, W, 3), np.uint8)
    a[:12, :12] = 255  # marker in the top-left corner of the coded picture
    for p in s.encode(av.VideoFrame.from_ndarray(a, format="rgb24")):
        c.mux(p)
    for p in s.encode(None):
        c.mux(p)
    c.close()
    v = VideoSource(path)
    assert (v.height, v.width) == (W, H)
    f = v.frame(0)
    assert f[-6, 6].mean() > 200 and f[6, 6].mean() < 50  # rotated 90 deg counter-clockwise: now bottom-left
    raw = VideoSource(path, autorotate=False)
    assert (raw.height, raw.width) == (H, W)


# ============================================================================================ folders and arrays
def test_folder_natural_order_and_errors(tmp_path):
    d = tmp_path / "frames"
    d.mkdir()
    for i in [0, 2, 10, 1]:
        Image.fromarray(_frame(i)).save(d / f"frame{i}.png")
    (d / "notes.txt").write_text("ignored")
    v = VideoSource(d, fps=12)
    assert (v.num_frames, v.height, v.width, v.fps, v.kind) == (4, H, W, 12.0, "folder")
    assert v.frame_names == ["frame0", "frame1", "frame2", "frame10"]
    assert [_index_of(f) for _, f in v.iter_frames()] == [0, 1, 2, 10]
    assert [_index_of(f) for _, f in v.iter_frames(step=-1)] == [10, 2, 1, 0]

    Image.fromarray(_frame(3, h=H + 2)).save(d / "frame3.png")
    with pytest.raises(ValueError, match="frame3.png"):
        VideoSource(d)
    empty = tmp_path / "nothing"
    empty.mkdir()
    (empty / "a.txt").write_text("x")
    with pytest.raises(ValueError, match="nothing.*no images"):
        VideoSource(empty)


def test_array_sources_and_errors():
    frames = np.stack([_frame(i) for i in range(5)])
    v = VideoSource(frames)
    assert (v.num_frames, v.height, v.width, v.kind) == (5, H, W, "array")
    assert [_index_of(f) for _, f in v.iter_frames(step=-2)] == [4, 2, 0]
    t = VideoSource(torch.from_numpy(frames))
    np.testing.assert_array_equal(t.frame(3), frames[3])
    with pytest.raises(ValueError, match="uint8.*float32"):
        VideoSource(frames.astype(np.float32))
    bad = frames.astype(np.float32)
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        VideoSource(bad)
    with pytest.raises(ValueError, match="NaN"):
        VideoSource(torch.from_numpy(bad))
    with pytest.raises(ValueError, match=r"\[T, H, W, 3\]"):
        VideoSource(frames[0])
    with pytest.raises(ValueError, match=r"\[T, H, W, 3\]"):
        VideoSource(frames[..., :2])
    with pytest.raises(ValueError, match="0 frames"):
        VideoSource(frames[:0])
    with pytest.raises(IndexError):
        v.frame(5)


# ============================================================================================ preprocessing
def test_resize_shortest_edge_size():
    assert resize_shortest_edge_size(200, 300, 100, 1333) == (100, 150)
    assert resize_shortest_edge_size(480, 640, 800, 1333) == (800, 1067)  # 1066.67 -> 1067
    assert resize_shortest_edge_size(640, 480, 800, 1333) == (1067, 800)
    assert resize_shortest_edge_size(100, 1000, 800, 1333) == (133, 1333)  # long side capped
    assert resize_shortest_edge_size(720, 1280, 800, 1024) == (576, 1024)
    assert resize_shortest_edge_size(500, 500, 480, None) == (480, 480)


def test_preprocess_matches_official_normalize_and_pad():
    from safetensors.torch import load_file

    ref = load_file(str(reference_path("univs_r50_a_input.safetensors")))
    raw = ref["preproc_raw_uint8_chw"].permute(1, 2, 0)[None]  # [1, 200, 300, 3]
    x, size = preprocess_frames(raw.numpy(), min_size=200, max_size=1333)  # 200 short side: no resize
    assert size == (200, 300) and x.shape == (1, 3, 224, 320) and x.dtype == torch.float32
    torch.testing.assert_close(x[0], ref["preproc_normalized_padded"], rtol=0, atol=1e-5)
    assert torch.equal(ref["pixel_mean"], torch.tensor(PIXEL_MEAN))


def test_preprocess_resize_is_pil_bilinear_and_pads():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (2, 60, 90, 3), dtype=np.uint8)
    x, (nh, nw) = preprocess_frames(torch.from_numpy(frames), min_size=40, max_size=1333, size_divisibility=32)
    assert (nh, nw) == (40, 60) and x.shape == (2, 3, 64, 64)
    assert torch.all(x[:, :, 40:] == 0) and torch.all(x[:, :, :, 60:] == 0)
    pil = torch.from_numpy(np.array(Image.fromarray(frames[1]).resize((nw, nh), Image.BILINEAR))).permute(2, 0, 1)
    mean, std = torch.tensor(PIXEL_MEAN).view(3, 1, 1), torch.tensor(PIXEL_STD).view(3, 1, 1)
    assert torch.equal(x[1, :, :nh, :nw], (pil.float() - mean) / std)  # Pillow's resize exactly (tests/test_resize.py)
    sq, size = preprocess_frames(frames, min_size=40, max_size=50, square=64)
    assert size == (33, 50) and sq.shape == (2, 3, 64, 64)
    with pytest.raises(ValueError, match="uint8"):
        preprocess_frames(frames.astype(np.float32), 40, 1333)
    with pytest.raises(ValueError, match="shape"):
        preprocess_frames(frames[0], 40, 1333)


def test_postprocess_masks():
    logits = torch.linspace(-1, 1, 16).view(1, 1, 4, 4).repeat(3, 2, 1, 1)  # [N=3, T=2, 4, 4]
    out = postprocess_masks(logits, padded_size=(16, 16), image_size=(12, 10), out_size=(24, 20))
    assert out.shape == (3, 2, 24, 20)
    up = torch.nn.functional.interpolate(logits[:1], size=(16, 16), mode="bilinear", align_corners=False)[..., :12, :10]
    ref = torch.nn.functional.interpolate(up, size=(24, 20), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out[:1], ref)
    near = postprocess_masks(logits[0], (16, 16), (12, 10), (24, 20), final_mode="nearest")
    assert near.shape == (2, 24, 20)


# ============================================================================================ writers
def test_available_encoders():
    enc = wr.available_encoders()
    assert set(enc) >= {"libx264", "mpeg4", "prores_ks", "libvpx-vp9"}
    assert enc["mpeg4"] or enc["libx264"]


def test_mask_and_id_pngs(tmp_path):
    tr = _tracks_with_blob(6)
    out = wr.export_mask_pngs(tr, tmp_path / "masks")
    files = sorted((out / "1").iterdir())
    assert [f.name for f in files] == [f"{i:05d}.png" for i in range(6)]
    a = np.asarray(Image.open(files[3]))
    assert a.dtype == np.uint8 and set(np.unique(a)) == {0, 255}
    np.testing.assert_array_equal(a == 255, tr.mask(3, 1))
    assert not np.asarray(Image.open(out / "2" / "00001.png")).any()  # blank frames are written too

    out16 = wr.export_mask_pngs(tr, tmp_path / "m16", obj_ids=[1], bit_depth=16, frame_names=[f"f{i}.jpg" for i in range(6)])
    a16 = np.asarray(Image.open(out16 / "1" / "f2.png"))
    assert a16.dtype == np.uint16 and a16.max() == 65535
    np.testing.assert_array_equal(a16 > 0, tr.mask(2, 1))

    pal = wr.export_id_pngs(tr, tmp_path / "palette")
    im = Image.open(pal / "00002.png")
    assert im.mode == "P"
    assert im.getpalette()[3:6] == [128, 0, 0]  # DAVIS/VOC colour of id 1
    np.testing.assert_array_equal(np.asarray(im), tr.id_map(2))

    pan = wr.export_id_pngs(tr, tmp_path / "pan", mode="panoptic_rgb")
    np.testing.assert_array_equal(wr.panoptic_rgb_to_id(np.asarray(Image.open(pan / "00000.png"))), tr.id_map(0))
    col = wr.export_color_pngs(tr, tmp_path / "color")
    np.testing.assert_array_equal(np.asarray(Image.open(col / "00000.png")), tr.color_map(0))
    with pytest.raises(ValueError, match="do not fit"):
        with wr.IdPngWriter(tmp_path / "big") as w:
            w.write(0, np.full((2, 2), 300))
    assert not (tmp_path / "big").exists()


def test_overwrite_protection_and_abort(tmp_path):
    tr = _tracks_with_blob(3)
    out = wr.export_mask_pngs(tr, tmp_path / "seq")
    with pytest.raises(FileExistsError, match="seq.*overwrite=True"):
        wr.export_mask_pngs(tr, tmp_path / "seq")
    with pytest.raises(RuntimeError):  # a failing export leaves the existing folder untouched
        with wr.MaskPngWriter(tmp_path / "seq", overwrite=True) as w:
            w.write(0, 9, np.ones((H, W), bool))
            raise RuntimeError("boom")
    assert sorted(p.name for p in out.iterdir()) == ["1", "2"]
    wr.export_mask_pngs(tr, tmp_path / "seq", obj_ids=[2], overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["2"]
    j = tmp_path / "r.json"
    j.write_text("user data")
    with pytest.raises(FileExistsError):
        wr.write_ytvis_json(j, tr, video_id=1)
    assert j.read_text() == "user data"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json", "seq"]  # no temp leftovers


def test_ytvis_json_writer(tmp_path):
    tr = _tracks_with_blob(4)
    path = wr.write_ytvis_json(tmp_path / "results.json", tr, video_id=5, category_ids={0: 1, 1: 2})
    res = json.loads(path.read_text())
    assert [r["category_id"] for r in res] == [1, 2] and res[0]["video_id"] == 5
    assert len(res[1]["segmentations"]) == 4
    np.testing.assert_array_equal(rle.decode_coco(res[0]["segmentations"][2]), tr.mask(2, 1))
    assert not rle.decode_coco(res[1]["segmentations"][1]).any()
    with wr.YtvisJsonWriter(tmp_path / "multi.json") as w:
        w.add_tracks(tr, 1)
        w.add_tracks(tr, 2)
    assert len(json.loads((tmp_path / "multi.json").read_text())) == 4


@pytest.mark.parametrize("suffix,codec", [(".mov", "prores_ks"), (".webm", "libvpx-vp9")])
def test_alpha_video(tmp_path, videos, suffix, codec):
    if not wr.available_encoders()[codec]:
        pytest.skip(f"{codec} not available")
    tr = _tracks_with_blob()
    src = VideoSource(videos["mp4"])
    path = wr.export_alpha_video(tr, 1, tmp_path / f"ball{suffix}", source=src)
    rgba = list(iter_rgba_frames(path))
    assert len(rgba) == N and rgba[0].shape == (H, W, 4)
    for f in [0, 7, 23]:
        alpha = rgba[f][..., 3]
        assert np.mean((alpha > 127) == tr.mask(f, 1)) > 0.97  # lossy chroma/alpha edges
    assert VideoSource(path).num_frames == N
    flat = wr.export_alpha_video(tr, 2, tmp_path / f"flat{suffix}")  # no source: object colour
    first = next(iter_rgba_frames(flat))
    assert np.mean((first[..., 3] > 127) == tr.mask(0, 2)) > 0.97


def test_overlay_video(tmp_path, videos):
    tr = _tracks_with_blob()
    src = VideoSource(videos["mp4"])
    path = wr.export_overlay_video(tr, src, tmp_path / "preview.mp4")
    back = VideoSource(path)
    assert (back.num_frames, back.height, back.width) == (N, H, W)
    assert back.fps == pytest.approx(src.fps)
    f0 = back.frame(5)
    inside = f0[15, 10 + 5].astype(int)
    assert np.abs(inside - np.array(tr.info(1).color)).sum() < np.abs(_frame(5)[15, 15].astype(int) - np.array(tr.info(1).color)).sum()
    with pytest.raises(ValueError, match="does not match"):
        wr.export_overlay_video(_tracks_with_blob(N - 1), src, tmp_path / "bad.mp4")
    # odd sizes are padded to even for H.264
    with wr.OverlayVideoWriter(tmp_path / "odd.mp4", 33, 21, fps=10) as w:
        for i in range(3):
            w.write(np.zeros((21, 33, 3), np.uint8))
    odd = VideoSource(tmp_path / "odd.mp4")
    assert odd.num_frames == 3 and (odd.height, odd.width) == (22, 34)
    if wr.available_encoders()["mpeg4"]:
        with wr.OverlayVideoWriter(tmp_path / "m4.mp4", W, H, fps=10, codec="mpeg4") as w:
            w.write(_frame(1))
        assert VideoSource(tmp_path / "m4.mp4").num_frames == 1
    assert not math.isnan(back.fps)
