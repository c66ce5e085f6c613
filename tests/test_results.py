"""Tracks: compact per-frame RLE storage, composites, YouTube-VIS export, persistence, bounded memory."""
from __future__ import annotations

import json
import os
import math

import numpy as np
import pytest
import torch

from univs_engine import rle
from univs_engine.results import ObjectInfo, Tracks, object_color

H, W = 12, 16


def _rect(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros((H, W), bool)
    m[y0:y1, x0:x1] = True
    return m


@pytest.fixture()
def tracks() -> Tracks:
    tr = Tracks(5, H, W)
    tr.add_object(3, label="cat", category=7, score=0.9)
    tr.add_object(1, label="dog", category=2, isthing=True, score=0.5)
    tr.set_mask(0, 3, _rect(2, 6, 3, 9), confidence=0.8)
    tr.set_mask(0, 1, _rect(4, 8, 6, 12))  # overlaps object 3 on rows 4-5, cols 6-8
    tr.set_mask(2, 1, torch.from_numpy(_rect(0, 1, 0, 1)))
    return tr


def test_objects(tracks: Tracks):
    assert tracks.object_ids == [3, 1]
    info = tracks.info(3)
    assert isinstance(info, ObjectInfo)
    assert (info.obj_id, info.label, info.category, info.isthing, info.score) == (3, "cat", 7, True, 0.9)
    assert info.color == object_color(3) and info.color != (0, 0, 0)
    assert Tracks(1, 2, 2).add_object(3).color == info.color  # deterministic per id
    with pytest.raises(ValueError, match="already exists"):
        tracks.add_object(3)
    with pytest.raises(ValueError, match="positive"):
        tracks.add_object(0)
    with pytest.raises(KeyError, match="unknown object id 9"):
        tracks.info(9)
    tracks.remove_object(3)
    assert tracks.object_ids == [1]
    with pytest.raises(KeyError):
        tracks.mask(0, 3)


def test_masks(tracks: Tracks):
    np.testing.assert_array_equal(tracks.mask(0, 3), _rect(2, 6, 3, 9))
    assert tracks.mask(1, 3).dtype == bool and not tracks.mask(1, 3).any()  # never set -> zeros
    assert tracks.has_mask(0, 3) and not tracks.has_mask(1, 3)
    assert tracks.frames_with(1) == [0, 2]
    assert tracks.confidence(0, 3) == pytest.approx(0.8)
    assert math.isnan(tracks.confidence(1, 3))
    assert tracks.box(0, 3) == (3, 2, 8, 5)  # inclusive maxima
    assert tracks.box(1, 3) is None
    assert tracks.area(0, 3) == 24 and tracks.area(4, 1) == 0
    assert tracks.objects_in(0) == [3, 1] and tracks.objects_in(2) == [1]
    # overwrite, then clear with an empty mask
    tracks.set_mask(0, 3, _rect(0, 1, 0, 2), confidence=0.1)
    assert tracks.area(0, 3) == 2 and tracks.confidence(0, 3) == pytest.approx(0.1)
    tracks.set_mask(0, 3, np.zeros((H, W), bool))
    assert not tracks.has_mask(0, 3) and tracks.frames_with(3) == []
    # rle access and direct RLE insertion
    tracks.set_rle(4, 3, rle.rle_encode(_rect(1, 2, 1, 3)), 0.7)
    np.testing.assert_array_equal(tracks.mask(4, 3), _rect(1, 2, 1, 3))
    assert tracks.rle(4, 3).tolist() == rle.rle_encode(_rect(1, 2, 1, 3)).tolist()
    tracks.set_masks(1, [3, 1], np.stack([_rect(0, 2, 0, 2), _rect(5, 6, 5, 6)]), [0.3, 0.4])
    assert tracks.area(1, 3) == 4 and tracks.confidence(1, 1) == pytest.approx(0.4)


def test_mask_errors(tracks: Tracks):
    with pytest.raises(ValueError, match="does not match"):
        tracks.set_mask(0, 3, np.zeros((H + 1, W), bool))
    with pytest.raises(ValueError, match="threshold"):
        tracks.set_mask(0, 3, np.zeros((H, W), np.float32))
    with pytest.raises(IndexError, match="out of range"):
        tracks.set_mask(5, 3, np.zeros((H, W), bool))
    with pytest.raises(KeyError):
        tracks.set_mask(0, 42, np.zeros((H, W), bool))
    with pytest.raises(ValueError, match="sum to"):
        tracks.set_rle(0, 3, [5, 5])


def test_composites(tracks: Tracks):
    u = tracks.union(0)
    np.testing.assert_array_equal(u, _rect(2, 6, 3, 9) | _rect(4, 8, 6, 12))
    np.testing.assert_array_equal(tracks.union(0, [3]), _rect(2, 6, 3, 9))
    ids = tracks.id_map(0)
    assert ids.dtype == np.int32
    assert ids[4, 7] == 1  # overlap: object 1 was added after object 3 -> it wins
    assert ids[2, 3] == 3 and ids[0, 0] == 0
    assert tracks.id_map(0, [3])[4, 7] == 3
    cm = tracks.color_map(0)
    assert cm.dtype == np.uint8 and cm.shape == (H, W, 3)
    assert tuple(cm[4, 7]) == tracks.info(1).color and tuple(cm[2, 3]) == tracks.info(3).color
    assert tuple(cm[0, 15]) == (0, 0, 0)
    legend = tracks.legend()
    assert [d["id"] for d in legend] == [3, 1]
    assert legend[1] == {
        "id": 1, "label": "dog", "category": 2, "color": tracks.info(1).color, "score": 0.5,
        "isthing": True, "first_frame": 0, "last_frame": 2, "shown": True,
    }


def test_ytvis_json(tracks: Tracks):
    res = tracks.to_ytvis_json(video_id=11, category_ids={7: 70, 2: 20})
    assert len(res) == 2
    r = res[0]
    assert set(r) == {"video_id", "score", "category_id", "segmentations", "height", "width"}
    assert (r["video_id"], r["category_id"], r["height"], r["width"]) == (11, 70, H, W)
    assert r["score"] == pytest.approx(0.9)
    assert len(r["segmentations"]) == 5
    np.testing.assert_array_equal(rle.decode_coco(r["segmentations"][0]), _rect(2, 6, 3, 9))
    blank = r["segmentations"][1]  # absent -> all-zero RLE, never null
    assert blank["size"] == [H, W] and not rle.decode_coco(blank).any()
    json.loads(json.dumps(res))  # serialisable
    assert tracks.to_ytvis_json(1)[1]["category_id"] == 2  # unmapped
    with pytest.raises(KeyError, match="category 2"):
        tracks.to_ytvis_json(1, {7: 70})


def test_save_load_round_trip(tracks: Tracks, tmp_path):
    path = tracks.save(tmp_path / "sub" / "t.npz")
    assert [p.name for p in path.parent.iterdir()] == ["t.npz"]  # no temp file left
    back = Tracks.load(path)
    assert (back.num_frames, back.height, back.width) == (5, H, W)
    assert back.object_ids == tracks.object_ids
    for oid in tracks.object_ids:
        a, b = tracks.info(oid), back.info(oid)
        assert (a.label, a.category, a.isthing, a.score, a.color) == (b.label, b.category, b.isthing, b.score, b.color)
        assert back.frames_with(oid) == tracks.frames_with(oid)
        for f in range(5):
            np.testing.assert_array_equal(back.mask(f, oid), tracks.mask(f, oid))
            assert back.confidence(f, oid) == pytest.approx(tracks.confidence(f, oid), nan_ok=True)
    tracks.save(path)  # overwriting a save file is atomic and allowed
    with np.load(path, allow_pickle=False) as z:
        assert json.loads(bytes(z["meta"]))["format"] == "univs-tracks"


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        Tracks.load(tmp_path / "nope.npz")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="bad.npz"):
        Tracks.load(bad)


def test_memory_stays_small_for_1000_frames():
    n, h, w = 1000, 256, 256
    tr = Tracks(n, h, w)
    tr.add_object(1, "blob")
    yy, xx = np.mgrid[:h, :w]
    sizes = []
    for f in range(n):
        cy, cx = 60 + 40 * math.sin(f / 50), 30 + (f * 0.19) % 190
        tr.set_mask(f, 1, (yy - cy) ** 2 + (xx - cx) ** 2 < 15**2, confidence=0.9)
        if f in (499, 999):
            sizes.append(tr.nbytes())
    dense = n * h * w  # bytes of a dense bool video
    assert tr.frames_with(1) == list(range(n))
    assert sizes[1] < 600_000  # ~0.5 KB per frame of a small blob
    assert sizes[1] < dense / 100
    assert sizes[1] < 2.2 * sizes[0]  # linear in the number of stored masks, nothing else grows
    assert tr.area(999, 1) == int(tr.mask(999, 1).sum())


def test_segmented_frames_and_fps_survive_save_and_load(tmp_path):
    tr = Tracks(6, 4, 5)
    tr.add_object(1)
    tr.set_mask(1, 1, np.ones((4, 5), bool))
    tr.set_mask(2, 1, np.zeros((4, 5), bool))  # processed, object absent
    tr.mark_segmented(4)
    tr.fps = 12.5
    assert tr.segmented_frames() == [1, 2, 4] and tr.segmented_frames(range(2, 6)) == [2, 4]
    back = Tracks.load(tr.save(tmp_path / "t.npz"))
    assert back.segmented_frames() == [1, 2, 4] and back.fps == 12.5 and not back.is_segmented(0)
    umask = os.umask(0o022)
    os.umask(umask)
    assert (tmp_path / "t.npz").stat().st_mode & 0o777 == 0o666 & ~umask


def test_weak_frames_flag_confidence_drops_and_lost_objects():
    tr = Tracks(8, 10, 10)
    tr.add_object(1)
    tr.add_object(2)
    m = np.zeros((10, 10), bool)
    m[2:5, 2:5] = True
    for f in range(8):
        tr.set_mask(f, 1, m, confidence=0.04 if f != 3 else 0.015)  # a drop on frame 3 (low absolute level)
        if f not in (5, 6):                                         # object 2 lost on 5-6, found on 7
            tr.set_mask(f, 2, m, confidence=0.9)
    assert tr.weak_frames(0.5) == [3, 5, 6]
    assert tr.weak_frames(0.5, [1]) == [3] and tr.weak_frames(0.3, [1]) == []
    tr2 = Tracks(6, 10, 10)
    tr2.add_object(1)
    for f in range(3):
        tr2.set_mask(f, 1, m, confidence=0.5)
    tr2.mark_segmented(3)
    assert tr2.weak_frames(0.5) == []  # leaving for good is not a loss


def _scored_tracks() -> Tracks:
    """A confident object (0.9) and a doubtful one (0.02) above a 0.05 threshold, as a VIS run leaves them."""
    tr = Tracks(3, H, W)
    tr.add_object(1, label="cross", score=0.9)
    tr.add_object(2, label="circle", score=0.02)
    tr.set_mask(0, 1, _rect(0, 4, 0, 4))
    tr.set_mask(0, 2, _rect(6, 10, 6, 10))
    tr.min_score = 0.05
    return tr


def test_min_score_picks_the_shown_objects_and_flags_the_legend():
    tr = _scored_tracks()
    assert tr.shown_ids() == [1] and tr.is_shown(1) and not tr.is_shown(2)
    assert [(r["id"], r["shown"]) for r in tr.legend()] == [(1, True), (2, False)]
    assert len(tr.to_ytvis_json(1)) == 2  # evaluation results keep every object
    assert "shown=1, min_score=0.05" in repr(tr)
    tr.min_score = 0.02  # the threshold itself is shown (score >= min_score)
    assert tr.shown_ids() == [1, 2]
    fresh = Tracks(2, H, W)
    fresh.add_object(1, score=0.0)
    assert fresh.min_score == 0.0 and fresh.shown_ids() == [1]  # default: everything shown
    with pytest.raises(ValueError, match="finite"):
        tr.min_score = float("nan")


def test_min_score_survives_save_and_old_files_show_everything(tmp_path):
    tr = _scored_tracks()
    path = tr.save(tmp_path / "t.npz")
    back = Tracks.load(path)
    assert back.min_score == 0.05 and back.shown_ids() == [1]
    with np.load(path, allow_pickle=False) as z:  # a file written before min_score existed
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(bytes(arrays["meta"]))
    del meta["min_score"]
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    old = tmp_path / "old.npz"
    np.savez(old, **arrays)
    back = Tracks.load(old)
    assert back.min_score == 0.0 and back.shown_ids() == [1, 2]
    assert [r["shown"] for r in back.legend()] == [True, True]
