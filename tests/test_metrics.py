"""Metrics against hand-worked cases (expected values derived by hand in the comments)."""
import math

import numpy as np
import pytest

from univs_engine.metrics.davis import (
    DavisEvaluator, boundary_f, boundary_radius, davis_jf, davis_statistics, disk, masks_from_labels,
    region_similarity, seg2bmap,
)
from univs_engine.metrics.vps import (
    VPQ_WINDOWS, STQEvaluator, VPQEvaluator, evaluate_vps, panoptic_to_semantic_instance,
)
from univs_engine.metrics.vss import (
    VSSEvaluator, confusion_matrix, iou_from_confusion, miou_from_confusion, window_consistency,
)
from univs_engine.metrics.ytvis import (
    IOU_THRESHOLDS, DetectionTrack, GroundTruthTrack, evaluate_ytvis, spatiotemporal_iou,
)


# ----------------------------------------------------------------------------------------------------
# DAVIS
# ----------------------------------------------------------------------------------------------------
def square(h=10, w=10, r0=2, r1=5, c0=2, c1=5):
    m = np.zeros((h, w), bool)
    m[r0:r1 + 1, c0:c1 + 1] = True
    return m


def test_disk_and_radius():
    np.testing.assert_array_equal(disk(1), [[0, 1, 0], [1, 1, 1], [0, 1, 0]])
    # x^2 + y^2 <= 4
    np.testing.assert_array_equal(disk(2), [[0, 0, 1, 0, 0], [0, 1, 1, 1, 0], [1, 1, 1, 1, 1], [0, 1, 1, 1, 0],
                                            [0, 0, 1, 0, 0]])
    assert boundary_radius(10, 10) == 1  # ceil(0.008 * 14.14) = ceil(0.113)
    assert boundary_radius(480, 854) == 8  # ceil(0.008 * 979.65) = ceil(7.84)
    assert boundary_radius(480, 854, bound_th=3) == 3


def test_seg2bmap_square():
    # a 4x4 block at rows/cols 2..5: inside pixels on the last row/column differ from their E/S/SE
    # neighbour, outside pixels at row 1 / col 1 have a foreground E/S/SE neighbour -> the outline of
    # rows/cols 1..5 (16 pixels), i.e. the boundary is shifted half a pixel towards the origin.
    expected = np.zeros((10, 10), bool)
    expected[1, 1:6] = expected[5, 1:6] = expected[1:6, 1] = expected[1:6, 5] = True
    np.testing.assert_array_equal(seg2bmap(square()), expected)
    # image-border rules: a full mask has boundary only ... nowhere (last row looks east, last col south)
    assert not seg2bmap(np.ones((4, 5), bool)).any()
    # a single pixel in the bottom-right corner is never a boundary; one in the last row only looks east
    m = np.zeros((3, 3), bool)
    m[2, 2] = True
    np.testing.assert_array_equal(seg2bmap(m), [[0, 0, 0], [0, 1, 1], [0, 1, 0]])


def test_region_similarity_hand():
    g = square()
    assert region_similarity(g, g) == 1.0
    assert region_similarity(np.zeros((4, 4)), np.zeros((4, 4))) == 1.0  # empty vs empty
    assert region_similarity(g, np.zeros_like(g)) == 0.0
    # shift right by one column: inter 4x3 = 12, union 4x5 = 20
    assert region_similarity(g, square(c0=3, c1=6)) == pytest.approx(0.6)
    # shift by two: inter 4x2 = 8, union 4x6 = 24
    assert region_similarity(g, square(c0=4, c1=7)) == pytest.approx(1 / 3)
    # void pixels leave both counts: void column 7 removes one column of the union -> 8 / 20
    void = np.zeros_like(g)
    void[:, 7] = True
    assert region_similarity(g, square(c0=4, c1=7), void) == pytest.approx(0.4)


def test_boundary_f_hand():
    g = square()  # tolerance on 10x10 is 1 pixel (disk(1) = 4-neighbourhood)
    assert boundary_f(g, g) == 1.0
    # shifted by 1: every boundary pixel has a 4-neighbour on the other outline -> P = R = 1
    assert boundary_f(g, square(c0=3, c1=6)) == pytest.approx(1.0)
    # shifted by 2: GT outline rows/cols 1..5, predicted outline rows 1..5 x cols 3..7.
    # predicted pixels within 1 of the GT outline: top row cols 3..6 (4), bottom row cols 3..6 (4),
    # left column (2,3) and (4,3) (2), right column none -> 10 of 16. GT pixels near the prediction:
    # top/bottom rows cols 2..5 (8), right column (2,5) and (4,5) (2) -> 10 of 16.
    assert boundary_f(g, square(c0=4, c1=7)) == pytest.approx(0.625)
    empty = np.zeros_like(g)
    assert boundary_f(g, empty) == 0.0  # no predicted boundary: P = 1, R = 0
    assert boundary_f(empty, g) == 0.0  # no GT boundary: P = 0, R = 1
    assert boundary_f(empty, empty) == 1.0
    # stacked frames give the per-frame values
    np.testing.assert_allclose(boundary_f(np.stack([g, g, empty]), np.stack([g, square(c0=4, c1=7), empty])),
                               [1.0, 0.625, 1.0])


def test_davis_statistics_hand():
    # mean 0.5, recall 2/4 > 0.5; quarters: ids = round([1, 1.75, 2.5, 3.25, 4] + eps) - 1 = [0, 1, 2, 2, 3]
    # first bin v[0:2] = [1, 1], last bin v[2:4] = [0, 0] -> decay 1
    m, r, d = davis_statistics([1.0, 1.0, 0.0, 0.0])
    assert (m, r, d) == (0.5, 0.5, 1.0)


def test_davis_jf_hand():
    g = square()
    empty = np.zeros_like(g)
    gt = np.stack([np.stack([g, g]), np.stack([g, g])])  # [N=2, T=2, H, W]
    pred = np.stack([np.stack([g, g]), np.stack([g, empty])])
    res = davis_jf(gt, pred)
    # object 1 perfect; object 2: frame 0 perfect, frame 1 empty -> J = F = (1 + 0) / 2
    np.testing.assert_allclose(res.J_per_object, [1.0, 0.5])
    np.testing.assert_allclose(res.F_per_object, [1.0, 0.5])
    assert res.J_mean == pytest.approx(0.75) and res.F_mean == pytest.approx(0.75) and res.JF == pytest.approx(0.75)
    # a missing predicted object counts as empty
    res2 = davis_jf(gt, pred[:1])
    np.testing.assert_allclose(res2.J_per_object, [1.0, 0.0])
    # semi-supervised protocol: with 3 frames only the middle one is scored
    gt3 = np.stack([g, g, g])[None]
    pred3 = np.stack([empty, g, empty])[None]
    assert davis_jf(gt3, pred3, skip_first_last=True).JF == 1.0
    assert davis_jf(gt3, pred3).J_per_object[0] == pytest.approx(1 / 3)
    # valid mask: only frames 1 and 2 -> J = (1 + 0) / 2
    assert davis_jf(gt3, pred3, valid=np.array([False, True, True])).J_per_object[0] == pytest.approx(0.5)


def test_davis_evaluator_and_labels():
    g = square()
    labels = np.zeros((2, 10, 10), np.int64)
    labels[:, g] = 1
    labels[:, 8:, 8:] = 2
    masks = masks_from_labels(labels)
    assert masks.shape == (2, 2, 10, 10)
    ev = DavisEvaluator()
    ev.add(masks, masks, name="a")
    shifted = masks.copy()
    shifted[0] = np.stack([square(c0=4, c1=7)] * 2)
    ev.add(masks, shifted, name="b")
    out = ev.result()
    # objects: a_1, a_2, b_2 perfect; b_1 has J = 1/3, F = 0.625 on both frames
    assert out["J"] == pytest.approx((3 + 1 / 3) / 4)
    assert out["F"] == pytest.approx((3 + 0.625) / 4)
    assert out["J&F"] == pytest.approx(((3 + 1 / 3) / 4 + (3 + 0.625) / 4) / 2)
    assert out["per_object"]["b_1"]["J"] == pytest.approx(1 / 3)


# ----------------------------------------------------------------------------------------------------
# YouTube-VIS AP
# ----------------------------------------------------------------------------------------------------
def line(width, on, t=1):
    """[T=t, 1, width] mask with pixels `on` set in every frame."""
    m = np.zeros((t, 1, width), bool)
    m[:, 0, list(on)] = True
    return m


def test_spatiotemporal_iou_hand():
    gt = np.array([[[1, 1, 0, 0]], [[0, 0, 0, 0]]], bool)
    dt = np.array([[[0, 1, 1, 0]], [[1, 0, 0, 0]]], bool)
    # inter 1 + 0, union 3 + 1 -> 1/4 (the mean of per-frame IoUs would be 1/6)
    assert spatiotemporal_iou(dt[None], gt[None])[0, 0] == pytest.approx(0.25)
    assert spatiotemporal_iou(np.zeros((1, 2, 1, 4)), np.zeros((1, 2, 1, 4)))[0, 0] == 0.0


def test_ytvis_ap_hand_two_videos():
    W = 12
    gts = [("A", 1, line(W, range(0, 3))), ("A", 1, line(W, range(6, 9))), ("B", 1, line(W, range(0, 3)))]
    dts = [("A", 1, 0.9, line(W, range(0, 3))),  # d1: IoU 1 with g1
           ("A", 1, 0.6, line(W, range(6, 8))),  # d2: IoU 2/3 with g2
           ("B", 1, 0.8, line(W, range(8, 11))),  # d3: IoU 0 -> false positive
           ("B", 1, 0.5, line(W, range(0, 3)))]  # d4: IoU 1 with g3
    out = evaluate_ytvis(gts, dts)
    # pooled order d1 (.9), d3 (.8), d2 (.6), d4 (.5), 3 ground truths.
    # thresholds .50-.65 (d2 matches): TP FP TP TP -> recall 1/3,1/3,2/3,1; precision 1,.5,2/3,.75
    #   monotone precision 1,.75,.75,.75 -> 34 recall points (0..0.33) at 1, 67 at .75 -> 84.25 / 101
    # thresholds .70-.95 (d2 misses): TP FP FP TP -> recall 1/3,1/3,1/3,2/3; precision 1,.5,1/3,.5
    #   monotone 1,.5,.5,.5 -> 34 points at 1, 33 at .5, 34 beyond the last recall at 0 -> 50.5 / 101
    ap_lo, ap_hi = 84.25 / 101, 50.5 / 101
    assert out["AP"] == pytest.approx((4 * ap_lo + 6 * ap_hi) / 10)
    assert out["AP50"] == pytest.approx(ap_lo)
    assert out["AP75"] == pytest.approx(ap_hi)
    # recall with 100 dets: 1 at 4 thresholds, 2/3 at 6 -> 0.8; with 1 det per video: d1 and d3 -> 1/3
    assert out["AR100"] == pytest.approx(0.8)
    assert out["AR10"] == pytest.approx(0.8)
    assert out["AR1"] == pytest.approx(1 / 3)
    assert out["per_category_AP"] == {1: pytest.approx(out["AP"])}


def test_ytvis_greedy_by_score_and_single_match():
    g = line(6, range(6))
    gts = [GroundTruthTrack(0, 3, g)]
    dts = [DetectionTrack(0, 3, 0.9, line(6, range(5))),  # IoU 5/6, higher score
           DetectionTrack(0, 3, 0.8, g)]  # IoU 1
    # t <= .80 (7 thresholds): d1 takes the GT, d2 is a duplicate FP -> precision 1 at recall 1 -> AP 1
    # t >= .85 (3 thresholds): d1 misses, d2 matches -> precision .5 at every recall point -> AP .5
    assert evaluate_ytvis(gts, dts)["AP"] == pytest.approx((7 * 1 + 3 * 0.5) / 10)


def test_ytvis_categories_perfect_and_crowd():
    a, b = line(8, range(0, 3), t=2), line(8, range(4, 8), t=2)
    gts = [(0, 1, a), (0, 2, b)]
    perfect = evaluate_ytvis(gts, [(0, 1, 0.5, a), (0, 2, 0.7, b)])
    # (precision is tp / (tp + fp + eps) as in the reference tools, hence approx)
    assert perfect["AP"] == pytest.approx(1.0) and perfect["AR10"] == 1.0
    # category 2 without detections scores 0 and counts; category 9 without ground truth is left out
    half = evaluate_ytvis(gts, [(0, 1, 0.5, a), (0, 9, 0.9, b)])
    assert half["AP"] == pytest.approx(0.5)
    assert half["per_category_AP"] == {1: pytest.approx(1.0), 2: 0.0}
    # a detection on a crowd region is ignored instead of being a false positive
    crowd = [GroundTruthTrack(0, 1, a), GroundTruthTrack(0, 1, b, iscrowd=True)]
    res = evaluate_ytvis(crowd, [(0, 1, 0.9, b), (0, 1, 0.8, a)])
    assert res["AP"] == pytest.approx(1.0)
    assert IOU_THRESHOLDS[0] == 0.5 and len(IOU_THRESHOLDS) == 10


# ----------------------------------------------------------------------------------------------------
# VSS
# ----------------------------------------------------------------------------------------------------
def test_miou_hand():
    gt = np.array([[[0, 0, 1, 255], [1, 2, 2, 255]]])
    pred = np.array([[[0, 1, 1, 2], [1, 2, 3, 0]]])
    conf = confusion_matrix(gt, pred, num_classes=4)
    # void (255) pixels are dropped. class 0: TP 1, GT 2, pred 1 -> 1/2; class 1: TP 2, GT 2, pred 3 -> 2/3;
    # class 2: TP 1, GT 2, pred 1 -> 1/2; class 3 has no GT pixel and is not averaged -> 5/9
    np.testing.assert_allclose(iou_from_confusion(conf)[:3], [0.5, 2 / 3, 0.5])
    assert miou_from_confusion(conf) == pytest.approx(5 / 9)
    ev = VSSEvaluator(4, vc_windows=())
    ev.add(gt, pred)
    assert ev.result()["mIoU"] == pytest.approx(5 / 9)
    assert ev.result()["pixel_acc"] == pytest.approx(4 / 6)


def test_video_consistency_hand():
    gt = np.array([[[0, 0, 1]], [[0, 1, 1]], [[0, 1, 1]]])
    pred = np.array([[[0, 0, 1]], [[0, 0, 0]], [[1, 0, 0]]])
    # window (0,1): constant GT at px0, px2; constant pred at px0, px1 -> 1/2
    # window (1,2): constant GT everywhere; constant pred at px1, px2 -> 2/3
    np.testing.assert_allclose(window_consistency(gt, pred, 2, vspw_windows=False), [0.5, 2 / 3])
    # the VSPW tool only starts windows at 0 .. T-n-1
    np.testing.assert_allclose(window_consistency(gt, pred, 2), [0.5])
    # n = 3: one window; constant GT at px0, px2 but the prediction changes there -> 0
    np.testing.assert_allclose(window_consistency(gt, pred, 3, vspw_windows=False), [0.0])
    assert window_consistency(gt, pred, 3).size == 0  # T <= n: skipped by the VSPW tool
    # consistency is about stability, not correctness: a constant wrong prediction scores 1
    np.testing.assert_allclose(window_consistency(gt, np.full_like(gt, 5), 2, vspw_windows=False), [1.0, 1.0])


def test_vss_evaluator_pools_windows():
    ev = VSSEvaluator(num_classes=6, vc_windows=(2,), vspw_windows=False)
    gt = np.array([[[0, 0, 1]], [[0, 1, 1]], [[0, 1, 1]]])
    pred = np.array([[[0, 0, 1]], [[0, 0, 0]], [[1, 0, 0]]])
    ev.add(gt, pred)  # windows 1/2, 2/3
    ev.add(gt, gt)  # windows 1, 1
    out = ev.result()
    assert out["mVC2"] == pytest.approx((0.5 + 2 / 3 + 1 + 1) / 4)  # pooled over windows, not per video
    perfect = VSSEvaluator(num_classes=3, vc_windows=(8, 16))
    g = np.random.default_rng(0).integers(0, 3, (20, 4, 5))
    g[:, :2] = 1  # some pixels keep their label through every window
    perfect.add(g, g)
    r = perfect.result()
    assert r["mIoU"] == 1.0 and r["mVC8"] == 1.0 and r["mVC16"] == 1.0


# ----------------------------------------------------------------------------------------------------
# VPS
# ----------------------------------------------------------------------------------------------------
A, B = 0, 1  # A is a thing class, B a stuff class


def _vps_case():
    gt = np.array([[[1, 1, 2, 2]], [[1, 1, 2, 2]]])
    gt_cats = {1: A, 2: B}
    pred = np.array([[[5, 5, 6, 6]], [[5, 7, 6, 6]]])
    pred_cats = {5: A, 6: B, 7: A}
    return gt, gt_cats, pred, pred_cats


def test_vpq_hand():
    gt, gc, pred, pc = _vps_case()
    ev = VPQEvaluator(num_classes=2, thing_classes=[A], windows=(1, 2))
    ev.add(gt, gc, pred, pc)
    out = ev.result()
    # k=1, frame 0: 1~5 and 2~6 perfect. frame 1: tube 1 (2 px) vs 5 or 7 (1 px each): IoU 1/2, not > 1/2
    #   A: TP 1 (IoU 1), FN 1, FP 2 -> PQ 1 / (1 + 1 + 0.5) = 0.4;  B: 2 TPs of IoU 1 -> 1;  mean 0.7
    # k=2: tube 1 (4 px) vs tube 5 (3 px): IoU 3/4 -> TP; 7 is an FP -> A: 0.75 / 1.5 = 0.5; B: 1; mean 0.75
    assert out["per_window"][1]["all"]["pq"] == pytest.approx(0.7)
    assert out["per_window"][2]["all"]["pq"] == pytest.approx(0.75)
    assert out["VPQ"] == pytest.approx(0.725)
    assert out["VPQ_thing"] == pytest.approx(0.45)
    assert out["VPQ_stuff"] == pytest.approx(1.0)
    assert VPQ_WINDOWS == (1, 2, 4, 6, 8)


def test_vpq_void_and_perfect():
    gt = np.array([[[1, 1, 0, 0, 0]]])
    pred = np.array([[[5, 5, 5, 8, 8]]])
    ev = VPQEvaluator(num_classes=1, thing_classes=[0], windows=(1,))
    ev.add(gt, {1: 0}, pred, {5: 0, 8: 0})
    # IoU(1, 5) = 2 / (2 + 3 - 2 - 1 pixel of 5 on void) = 1 -> TP; segment 8 lies entirely on void -> no FP
    assert ev.result()["VPQ"] == pytest.approx(1.0)
    gt, gc, _, _ = _vps_case()
    relabelled = np.where(gt == 1, 40, 41)
    ev = VPQEvaluator(num_classes=2, thing_classes=[A])  # default windows; those longer than T add nothing
    ev.add(gt, gc, relabelled, {40: A, 41: B})
    assert ev.result()["VPQ"] == 1.0


def test_stq_hand():
    # gt frame0 [A1 A1 A2 B], frame1 [A1 A2 A2 B]; pred frame0 [a5 a5 a5 B], frame1 [a5 a6 a6 a6]
    gt = np.array([[[1, 1, 2, 3]], [[1, 2, 2, 3]]])
    pred = np.array([[[5, 5, 5, 7]], [[5, 6, 6, 6]]])
    gc, pc = {1: A, 2: A, 3: B}, {5: A, 6: A, 7: B}
    # |g1| = 3, |g2| = 3, |p5| = 4, |p6| = 3 (p6 covers a stuff pixel too); |g1&p5| = 3, |g2&p5| = 1, |g2&p6| = 2
    # AQ(g1) = (1/3) * 3 * 3/4 = 3/4;  AQ(g2) = (1/3) * (1 * 1/6 + 2 * 2/4) = 7/18;  AQ = (3/4 + 7/18) / 2 = 41/72
    # SQ: A: TP 6, 7 predicted -> 6/7; B: TP 1, GT 2, pred 1 -> 1/2; mean 19/28
    out = evaluate_vps([(gt, gc, pred, pc)], num_classes=2, thing_classes=[A], windows=(1,))
    assert out["AQ"] == pytest.approx(41 / 72)
    assert out["SQ"] == pytest.approx(19 / 28)
    assert out["STQ"] == pytest.approx(math.sqrt(41 / 72 * 19 / 28))
    # perfect segmentation with other track ids -> 1
    sem, inst = panoptic_to_semantic_instance(gt, gc, [A])
    ev = STQEvaluator(num_classes=2, thing_classes=[A])
    ev.add(sem, inst, sem, inst * 7 + 3)
    assert ev.result()["STQ"] == pytest.approx(1.0)


def test_stq_void_and_crowd():
    # one thing tube over 2 pixels, a void pixel, and a crowd (instance 0) thing pixel
    gs = np.array([[[0, 0, 255, 0]]])
    gi = np.array([[[1, 1, 0, 0]]])
    ps = np.array([[[0, 0, 0, 0]]])
    pi = np.array([[[4, 4, 4, 4]]])
    ev = STQEvaluator(num_classes=1, thing_classes=[0])
    ev.add(gs, gi, ps, pi)
    out = ev.result()
    # crowd pixel dropped from both sides; the prediction on void still counts: |p| = 3, |g| = 2, |g&p| = 2
    # AQ = (1/2) * 2 * 2/3 = 2/3; SQ: void row removed, class 0 TP 3 of 3 (crowd pixel is class 0) -> 1
    assert out["AQ"] == pytest.approx(2 / 3)
    assert out["SQ"] == pytest.approx(1.0)


# ----------------------------------------------------------------------------------------------------
# Perfect predictions on a synthetic video score 1 everywhere (interfaces fit the generator's output)
# ----------------------------------------------------------------------------------------------------
def test_perfect_predictions_on_synthetic_video():
    from univs_train.synthetic import CLASSES, NUM_THING_CLASSES, generate_video

    v = generate_video(21, num_frames=10, height=48, width=64)
    assert davis_jf(v.masks, v.masks).JF == 1.0
    gts = [(v.seed, int(c), m) for c, m in zip(v.categories, v.masks)]
    dts = [(v.seed, int(c), 0.9, m) for c, m in zip(v.categories, v.masks)]
    assert evaluate_ytvis(gts, dts)["AP"] == pytest.approx(1.0)
    ev = VSSEvaluator(len(CLASSES), vc_windows=(8,))
    ev.add(v.semantic, v.semantic)
    assert ev.result()["mIoU"] == 1.0 and ev.result()["mVC8"] == 1.0
    cats = {s.id: s.category for s in v.segments}
    out = evaluate_vps([(v.panoptic, cats, v.panoptic, cats)], len(CLASSES), list(range(NUM_THING_CLASSES)))
    assert out["VPQ"] == 1.0 and out["STQ"] == pytest.approx(1.0)
