"""The synthetic video world: determinism, annotation consistency, prompts, expressions, speed, files."""
import json
import time
from pathlib import Path

import numpy as np
import pytest

from univs_engine.rle import decode_coco
from univs_train.synthetic import (
    CLASSES, COLOURS, NUM_THING_CLASSES, STUFF_CLASSES, STUFF_ID_OFFSET, THING_CLASSES, SyntheticConfig,
    generate_dataset, generate_video, split_seeds, write_mp4,
)

ROOT = Path(__file__).resolve().parents[1]
SMALL = SyntheticConfig(num_frames=20, height=96, width=128)


@pytest.fixture(scope="module")
def sample():
    return list(generate_dataset(100, 8, SMALL))


def test_vocabulary():
    assert CLASSES == THING_CLASSES + STUFF_CLASSES
    assert 6 <= len(THING_CLASSES) <= 8 and 4 <= len(STUFF_CLASSES) <= 5
    assert NUM_THING_CLASSES == len(THING_CLASSES)


def test_deterministic_for_a_seed():
    a = generate_video(11, SMALL)
    b = generate_video(11, SMALL)
    c = generate_video(12, SMALL)
    for name in ("frames", "masks", "semantic", "panoptic", "camera"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert a.expressions == b.expressions and a.things == b.things
    for pa, pb in zip(a.prompts, b.prompts):
        np.testing.assert_array_equal(pa.points, pb.points)
        np.testing.assert_array_equal(pa.scribble, pb.scribble)
    assert not np.array_equal(a.frames, c.frames)


def test_shapes_and_dtypes(sample):
    v = sample[0]
    T, H, W = SMALL.num_frames, SMALL.height, SMALL.width
    assert v.frames.shape == (T, H, W, 3) and v.frames.dtype == np.uint8
    assert v.masks.shape == (v.num_things, T, H, W) and v.masks.dtype == bool
    assert v.semantic.shape == (T, H, W) and v.panoptic.shape == (T, H, W)
    assert v.categories.shape == (v.num_things,)
    assert len(v.expressions) == len(v.prompts) == v.num_things >= 1


def test_annotations_consistent(sample):
    for v in sample:
        masks = v.masks
        assert masks.sum(axis=0).max() <= 1  # visible parts never overlap
        fg = masks.any(axis=0)
        # semantic map: thing category under each mask, a stuff class everywhere else
        for i, info in enumerate(v.things):
            assert (v.semantic[masks[i]] == info.category).all()
            np.testing.assert_array_equal(v.panoptic == i + 1, masks[i])
            vis = np.flatnonzero(masks[i].any(axis=(1, 2)))
            assert (vis[0], vis[-1]) == (info.first_frame, info.last_frame)
            assert masks[i].sum(axis=(1, 2)).max() >= SyntheticConfig().min_prompt_area
        assert (v.semantic[~fg] >= NUM_THING_CLASSES).all() and (v.semantic < len(CLASSES)).all()
        # panoptic segments: stuff ids map to stuff classes and agree with the semantic map
        seg_of = {s.id: s for s in v.segments}
        assert set(np.unique(v.panoptic).tolist()) == set(seg_of)
        for s in v.segments:
            sel = v.panoptic == s.id
            assert (v.semantic[sel] == s.category).all()
            assert s.isthing == (s.id < STUFF_ID_OFFSET)


def test_frames_match_masks(sample):
    """The mean colour under each visible mask points towards that thing's colour."""
    names = list(COLOURS)
    palette = np.array([COLOURS[n] for n in names], np.float64)
    palette /= np.linalg.norm(palette, axis=1, keepdims=True)
    for v in sample[:4]:
        for i, info in enumerate(v.things):
            frames = np.flatnonzero(v.masks[i].sum(axis=(1, 2)) >= 20)
            t = frames[len(frames) // 2]
            mean = v.frames[t][v.masks[i, t]].astype(np.float64).mean(axis=0)
            assert names[int(np.argmax(palette @ (mean / np.linalg.norm(mean))))] == info.colour


def test_expressions_unique_and_descriptive(sample):
    for v in sample:
        assert len(set(v.expressions)) == len(v.expressions)
        for info, expr in zip(v.things, v.expressions):
            assert expr.startswith("the ") and info.name in expr.split()
            for word in expr.split():  # every attribute word used is true of the thing
                if word in COLOURS:
                    assert word == info.colour
                if word in ("small", "large"):
                    assert word == info.size


def test_prompts_inside_masks(sample):
    for v in sample:
        for i, p in enumerate(v.prompts):
            m = v.masks[i, p.frame]
            np.testing.assert_array_equal(p.mask, m)
            assert v.things[i].first_frame <= p.frame
            assert 1 <= len(p.points) <= 3 and m[p.points[:, 1], p.points[:, 0]].all()
            assert p.negative_points.shape == (1, 2)
            assert not m[p.negative_points[:, 1], p.negative_points[:, 0]].any()
            ys, xs = np.nonzero(m)
            np.testing.assert_array_equal(p.box, [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
            assert p.scribble.any() and not (p.scribble & ~m).any()
            assert p.scribble.sum() < m.sum() or m.sum() <= 3


def test_entering_leaving_and_camera(sample):
    T = SMALL.num_frames
    things = [t for v in sample for t in v.things]
    assert any(t.first_frame > 0 for t in things)  # enters after the start
    assert any(t.last_frame < T - 1 for t in things)  # leaves before the end
    assert any(t.motion == "moving left" for t in things) and any(t.motion != "staying still" for t in things)
    assert any((v.camera[-1] != v.camera[0]).any() for v in sample)  # the stuff layout pans
    assert any(len([s for s in v.segments if not s.isthing]) >= 2 for v in sample)


def test_split_convention():
    train, val, test = split_seeds("train", 1000), split_seeds("val", 1000), split_seeds("test", 10)
    assert set(train).isdisjoint(val) and set(val).isdisjoint(test)
    assert [v.seed for v in generate_dataset(val[0], 2, SMALL, num_frames=2)] == [val[0], val[0] + 1]
    with pytest.raises(ValueError):
        split_seeds("holdout", 1)


def test_sidecar_masks_are_plain_coco_rle():
    """The sidecar's prompt masks: COCO uncompressed RLE (the engine's `univs_engine.rle`), lists of ints."""
    v = generate_video(3, SMALL)
    for o, p in zip(v.sidecar()["objects"], v.prompts):
        rle = o["prompt"]["mask_rle"]
        assert rle["size"] == list(p.mask.shape) and all(type(c) is int for c in rle["counts"])
        np.testing.assert_array_equal(decode_coco(rle), p.mask)
    assert json.loads(json.dumps(v.sidecar()))["objects"] == v.sidecar()["objects"]  # plain JSON


def test_render_speed():
    generate_video(0, num_frames=4, height=64, width=64)  # warm-up
    elapsed = float("inf")
    for _ in range(2):  # best of two, to be robust to a busy machine
        start = time.perf_counter()
        v = generate_video(5, num_frames=64, height=256, width=256)
        elapsed = min(elapsed, time.perf_counter() - start)
    assert v.frames.shape == (64, 256, 256, 3)
    assert elapsed < 2.0, f"64x256x256 took {elapsed:.2f}s"


def test_write_mp4_roundtrip(tmp_path):
    av = pytest.importorskip("av")
    v = generate_video(3, num_frames=6, height=64, width=96)
    out = tmp_path / "clip.mp4"
    write_mp4(v.frames, out, fps=6)
    with av.open(str(out)) as c:
        decoded = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
    assert decoded.shape == v.frames.shape
    assert np.abs(decoded.astype(int) - v.frames).mean() < 12  # lossy, but the same pictures
    assert [p.name for p in tmp_path.iterdir()] == ["clip.mp4"]  # no temp file left behind


def test_committed_sample_matches_generator():
    mp4, side = ROOT / "assets" / "sample.mp4", ROOT / "assets" / "sample.json"
    assert mp4.exists() and mp4.stat().st_size < 300_000
    meta = json.loads(side.read_text())
    v = generate_video(meta["seed"], num_frames=meta["num_frames"], height=meta["height"], width=meta["width"])
    assert [o["expression"] for o in meta["objects"]] == v.expressions
    for o, p in zip(meta["objects"], v.prompts):
        assert o["prompt"]["frame"] == p.frame and o["prompt"]["box"] == p.box.tolist()
        np.testing.assert_array_equal(decode_coco(o["prompt"]["mask_rle"]), p.mask)
