"""Temporal-consistency measures (univs_engine.metrics.consistency) on small arrays with hand-worked answers."""
from __future__ import annotations

import numpy as np
import torch
import pytest

from univs_engine.metrics.consistency import (Lifetime, empty_fraction, false_positive_share, identity_switches,
                                              track_lifetimes, unlabelled_fraction)


def test_unlabelled_fraction_per_frame():
    maps = np.array([[[0, 1], [1, 1]],      # 1 of 4 void
                     [[0, 0], [2, 0]],      # 3 of 4
                     [[3, 3], [3, 3]]])     # none
    np.testing.assert_allclose(unlabelled_fraction(maps), [0.25, 0.75, 0.0])
    # another void id (VSS maps use the class count as "no class")
    np.testing.assert_allclose(unlabelled_fraction(maps, void=3), [0.0, 0.0, 1.0])
    with pytest.raises(ValueError):
        unlabelled_fraction(np.zeros((4, 4)))


def _lifetime_case():
    # 4 frames of 1 x 4 pixels. Segment 5 (pixels 0-1) lives in every frame; segment 7 (pixels 2-3) in frames
    # 0-1 only (void 0 afterwards).
    gt = np.array([[[5, 5, 7, 7]], [[5, 5, 7, 7]], [[5, 5, 0, 0]], [[5, 5, 0, 0]]])
    pred = np.array([[[1, 1, 3, 3]],   # 5 <- track 1 (IoU 1), 7 <- track 3 (IoU 1)
                     [[1, 1, 3, 0]],   # 5 <- 1; 7 <- 3 at IoU 1/2 exactly (counts)
                     [[2, 2, 0, 0]],   # 5 <- track 2: the segment is split
                     [[0, 9, 9, 9]]])  # 5: track 9 has IoU 1/4 -> missed
    return gt, pred


def test_track_lifetimes_hand_worked():
    gt, pred = _lifetime_case()
    life = track_lifetimes(gt, pred, gt_void=0)
    assert set(life) == {5, 7}
    assert life[5] == Lifetime(segment=5, present=4, best_track=1, coverage=0.5, tracks=2, missed=1)
    assert life[7] == Lifetime(segment=7, present=2, best_track=3, coverage=1.0, tracks=1, missed=0)


def test_track_lifetimes_threshold_segments_and_ties():
    gt, pred = _lifetime_case()
    # a stricter IoU drops frame 1 of segment 7 (IoU 1/2)
    assert track_lifetimes(gt, pred, segments=[7], iou=0.6)[7].coverage == 0.5
    # only the listed segments; void (0) is a segment when gt_void is None
    assert set(track_lifetimes(gt, pred, segments=[5])) == {5}
    assert track_lifetimes(gt, pred)[0].present == 2
    # two tracks covering the same number of frames: the smaller id is the best one
    tie = track_lifetimes(np.ones((2, 1, 2), int), np.array([[[4, 4]], [[2, 2]]]), gt_void=0)[1]
    assert (tie.best_track, tie.coverage, tie.tracks) == (2, 0.5, 2)
    # never predicted: no track, coverage 0
    none = track_lifetimes(np.ones((3, 1, 2), int), np.zeros((3, 1, 2), int), gt_void=0)[1]
    assert (none.best_track, none.coverage, none.tracks, none.missed) == (None, 0.0, 0, 3)
    with pytest.raises(ValueError):
        track_lifetimes(gt, pred[:2])


def test_stuff_dropped_after_two_frames_is_half_a_lifetime():
    """The failure of issue 17: a region labelled on frames 0-1 and void afterwards."""
    gt = np.full((4, 2, 2), 8)
    pred = gt.copy()
    pred[2:] = 0
    assert track_lifetimes(gt, pred)[8].coverage == 0.5
    np.testing.assert_allclose(unlabelled_fraction(pred), [0, 0, 1, 1])


def test_empty_fraction():
    gt = np.zeros((3, 3, 1, 2), bool)
    pred = np.zeros_like(gt)
    gt[0] = True                  # target 0 present in all 3 frames ...
    pred[0, :2, 0, 0] = True      # ... predicted on frames 0-1 only -> 1/3 empty
    gt[1, 0, 0, 1] = True         # target 1 present on frame 0 only, predicted on frame 1 only -> 1/1 empty
    pred[1, 1] = True
    pred[2, 2] = True             # target 2 never present -> 0
    np.testing.assert_allclose(empty_fraction(gt, pred), [1 / 3, 1.0, 0.0])
    with pytest.raises(ValueError):
        empty_fraction(gt[0], pred[0])


def test_identity_switches_hand_worked():
    # 5 frames of 1 x 4 pixels: objects 1 (pixels 0-1) and 2 (pixels 2-3) all along
    gt = np.tile(np.array([[[1, 1, 2, 2]]]), (5, 1, 1))
    pred = np.array([[[4, 4, 6, 6]],   # track 4 on object 1, track 6 on object 2
                     [[4, 4, 0, 0]],   # track 6 ends
                     [[0, 0, 4, 4]],   # track 4 jumps to object 2: one switch
                     [[0, 4, 0, 0]],   # track 4 on half of object 1 (IoU 1/2 counts): back, a second switch
                     [[0, 0, 0, 4]]])  # IoU 1/2 with object 2: a third
    assert identity_switches(gt, pred) == {4: 3, 6: 0}
    # a stricter IoU only keeps the full-object frames 0-2: one switch
    assert identity_switches(gt, pred, iou=0.6) == {4: 1, 6: 0}
    # frames matching nothing do not reset: 1 -> nothing -> 1 is no switch
    gap = np.array([[[4, 4, 0, 0]], [[0, 0, 0, 0]], [[4, 4, 0, 0]]])
    assert identity_switches(gt[:3], gap, tracks=[4]) == {4: 0}
    with pytest.raises(ValueError):
        identity_switches(gt, pred[:2])


def test_false_positive_share():
    gt = np.zeros((2, 2, 1, 4), bool)
    pred = np.zeros_like(gt)
    gt[0, :, 0, :2] = True                          # target 0: pixels 0-1 in both frames
    pred[0, 0, 0, :3] = True                        # frame 0: 1 of 3 predicted pixels is wrong
    pred[0, 1, 0, 1:] = True                        # frame 1: 2 of 3 wrong -> pooled 3 / 6
    gt[1, :, 0, 3] = True                           # target 1 never predicted -> 0
    np.testing.assert_allclose(false_positive_share(gt, pred), [0.5, 0.0])
    # only frame 0 evaluated
    np.testing.assert_allclose(false_positive_share(gt, pred, valid=np.array([[1, 0], [1, 1]], bool)), [1 / 3, 0])
    # only the pixels on another object (pixel 3) count: frame 1's pixel 3 -> 1 / 6
    other = np.zeros_like(gt)
    other[:, :, 0, 3] = True
    np.testing.assert_allclose(false_positive_share(gt, pred, other_objects=other), [1 / 6, 0])
    with pytest.raises(ValueError):
        false_positive_share(gt[0], pred[0])


# ---------------------------------------------------------------------------------------------- issue 17
@pytest.fixture(scope="module")
def sample():
    """The first 8 frames of assets/sample.mp4's generated video (seed 7, 320 x 240)."""
    from univs_train.synthetic import generate_video

    return generate_video(7, num_frames=8, height=240, width=320)


@pytest.fixture(scope="module")
def small():
    import torch

    from univs_engine.api import load_model

    torch.set_num_threads(2)
    return load_model("small")


def test_small_vps_keeps_every_stuff_region_one_track(small, sample):
    """With the official stuff rule the small model's empty stuff prompt masks erased the sky from frame 2 on
    (42-45 % of every frame unlabelled); the small preset lets the learnable queries carry stuff."""
    from univs_engine.api import segment

    tr = segment(small, sample.frames, "panoptic")
    pred = np.stack([tr.id_map(t) for t in range(sample.num_frames)])
    assert unlabelled_fraction(pred).max() < 0.1
    stuff = [s.id for s in sample.segments if not s.isthing]
    for life in track_lifetimes(sample.panoptic, pred, stuff).values():
        assert life.tracks == 1 and life.coverage >= 0.9, life


def test_small_pvos_stuff_targets_never_come_back_empty(small, sample):
    from univs_engine.api import Prompt, RunOptions, track
    from univs_train.synthetic import CLASSES

    segs = [s for s in sample.segments if (sample.panoptic[0] == s.id).any()]
    masks = np.stack([sample.panoptic == s.id for s in segs])
    tr = track(small, sample.frames, [Prompt(k + 1, 0, CLASSES[s.category], mask=m[0])
                                      for k, (s, m) in enumerate(zip(segs, masks))], RunOptions(settings="pvos"))
    pred = np.stack([np.stack([tr.mask(t, k + 1) for t in range(sample.num_frames)]) for k in range(len(segs))])
    stuff = [k for k, s in enumerate(segs) if not s.isthing]
    assert stuff and empty_fraction(masks[stuff], pred[stuff]).max() == 0.0


def test_one_per_pixel_weighs_probability_by_mask_quality():
    from univs_engine.inference.core import one_per_pixel

    # mask quality = #(logit > 1) / #(logit > -1): target 0 2/3, target 1 1/3
    logits = torch.tensor([[[2.0, -1.0, 3.0, 0.5]],
                           [[1.0, -2.0, 4.0, -0.5]]])
    out = one_per_pixel(logits)
    # pixel 2: target 1's logit is larger (4 > 3), but sigmoid(3) * 2/3 = 0.635 > sigmoid(4) / 3 = 0.327
    torch.testing.assert_close(out, torch.tensor([[[2.0, -1.0, 3.0, 0.5]], [[0.0, -2.0, 0.0, -0.5]]]))
    # equal qualities: the larger logit wins, the loser is capped at 0 (pixel 1: nobody, unchanged)
    even = torch.tensor([[[2.0, -1.0, 0.5]], [[3.0, -2.0, 0.7]]])
    torch.testing.assert_close(one_per_pixel(even), torch.tensor([[[0.0, -1.0, 0.0]], [[3.0, -2.0, 0.7]]]))
    assert torch.equal(one_per_pixel(logits[:1]), logits[:1])


def test_small_refvos_expressions_do_not_share_pixels(small, sample):
    """The official text loop lets expressions overlap (this test failed on the old output: two expressions
    shared pixels on the sample); each pixel now goes to the expression with the largest logit."""
    from univs_engine.api import Prompt, track

    tr = track(small, sample.frames, [Prompt(k + 1, 0, text=e) for k, e in enumerate(sample.expressions)])
    ids = list(range(1, len(sample.expressions) + 1))
    for t in range(sample.num_frames):
        assert (np.stack([tr.mask(t, i) for i in ids]).sum(0) <= 1).all(), f"frame {t}"
