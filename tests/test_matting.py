"""Edge-aware soft mattes (univs_engine/matting.py) on generated frames with a known soft alpha, and their use
by the mask and export node functions."""
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from univs_engine.matting import MatteSettings, edge_band, guided_filter, soft_matte

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import bench_matte as B  # noqa: E402


def test_edge_band_is_the_ring_around_the_edge():
    m = np.zeros((40, 40), bool)
    m[10:30, 10:30] = True
    band = edge_band(m, 3)
    assert band[10, 20] and band[8, 20] and band[12, 20] and not band[20, 20] and not band[3, 20]
    assert not band[5, 20]  # 5 px outside: beyond the 3 px band


def test_guided_filter_keeps_constants_and_reproduces_a_linear_function_of_the_guide():
    guide = np.zeros((32, 32, 3), np.float32)
    guide[..., 0] = np.linspace(0, 1, 32)[None]           # red ramps along x
    guide[..., 1] = np.linspace(0, 1, 32)[:, None] ** 2  # green along y
    q = guided_filter(guide, np.full((32, 32), 0.7, np.float32), 4, 1e-3)
    assert np.allclose(q, 0.7, atol=1e-4)
    p = (0.2 + 0.5 * guide[..., 0] + 0.3 * guide[..., 1]).astype(np.float32)  # alpha = affine in colour
    q = guided_filter(guide, p, 4, 1e-6)
    assert np.abs(q - p).max() < 2e-3
    q_smooth = guided_filter(guide, p, 4, 1.0)  # a large regulariser pulls towards the local mean instead
    assert np.abs(q_smooth - p).max() > 10 * np.abs(q - p).max()


@pytest.mark.parametrize("kind", ["feathered edge", "motion blur", "fuzzy outline"])
def test_soft_matte_beats_the_hard_mask_and_a_feather_of_the_same_width(kind):
    """Same comparison as tools/bench_matte.py (its default settings), two frames per case."""
    band, smoothness = MatteSettings.band, MatteSettings.smoothness
    rng = np.random.default_rng(1)
    errors = {name: [] for name in B.methods(band, smoothness)}
    for t in range(2):
        a = B.true_alpha(kind, 128, t, rng)
        img = B.composite(a, B.texture(rng, 128, (200, 60, 50)), B.texture(rng, 128, (40, 90, 160)), rng)
        region = cv2.dilate(((a > 0.01) & (a < 0.99)).astype(np.uint8), np.ones((2 * band + 1,) * 2, np.uint8)) > 0
        for name, fn in B.methods(band, smoothness).items():
            errors[name].append(np.abs(fn(img, a > 0.5) - a)[region].mean())
    hard, feather, soft = (float(np.mean(v)) for v in errors.values())
    assert soft < hard and soft < feather, errors


def test_soft_matte_keeps_the_mask_away_from_the_edge_and_handles_empty_masks():
    img = np.random.default_rng(0).integers(0, 255, (30, 40, 3), dtype=np.uint8)
    m = np.zeros((30, 40), bool)
    assert soft_matte(img, m).sum() == 0
    m[5:25, 5:35] = True
    alpha = soft_matte(img, m, MatteSettings(band=2))
    assert alpha.dtype == np.float32 and alpha.min() >= 0 and alpha.max() <= 1
    assert (alpha[10:20, 10:30] == 1).all() and (alpha[:2] == 0).all()
    assert np.array_equal(soft_matte(img, m, MatteSettings(band=0)), m.astype(np.float32))
    with pytest.raises(ValueError, match="edge band"):
        MatteSettings(band=-1)


def test_node_functions_make_soft_mattes_only_with_frames():
    from conftest import load_pack

    from univs_engine.results import Tracks

    load_pack()  # the pack as package univs_pack (never top-level `nodes`: ComfyUI owns that)
    from univs_pack.nodes import select as S

    rng = np.random.default_rng(2)
    a = B.true_alpha("motion blur", 64, 0, rng)
    img = B.composite(a, B.texture(rng, 64, (200, 60, 50)), B.texture(rng, 64, (40, 90, 160)), rng)
    tr = Tracks(2, 64, 64)
    tr.add_object(1)
    for f in range(2):
        tr.set_mask(f, 1, a > 0.5)
    edge = S.EdgeOptions(band=6)
    (soft,) = S.mask_tensors(tr, [1], range(2), "union", edge, lambda f: img)
    assert soft.shape == (2, 64, 64) and 0 < ((soft > 0) & (soft < 1)).float().mean() < 0.5
    assert torch.equal(soft[0], soft[1])  # the same frame gives the same matte
    with pytest.raises(ValueError, match="edge_band"):
        S.mask_tensors(tr, [1], range(2), "union", edge, None)
    (hard,) = S.mask_tensors(tr, [1], range(2), "union")
    assert set(hard.unique().tolist()) == {0.0, 1.0}


def test_alpha_video_with_soft_edges(tmp_path):
    from univs_engine.io import writers as W
    from univs_engine.io.video import VideoSource, iter_rgba_frames
    from univs_engine.results import Tracks

    rng = np.random.default_rng(3)
    alphas = [B.true_alpha("motion blur", 64, t, rng) for t in range(3)]
    frames = np.stack([B.composite(a, B.texture(rng, 64, (200, 60, 50)), B.texture(rng, 64, (40, 90, 160)), rng)
                       for a in alphas])
    tr = Tracks(3, 64, 64)
    tr.add_object(1)
    for t, a in enumerate(alphas):
        tr.set_mask(t, 1, a > 0.5)
    hard = W.export_alpha_video(tr, 1, tmp_path / "hard.mov", VideoSource(frames), fps=12)
    soft = W.export_alpha_video(tr, 1, tmp_path / "soft.mov", VideoSource(frames), fps=12, matte=MatteSettings(6))
    err = {}
    for name, path in (("hard", hard), ("soft", soft)):
        got = np.stack([f[..., 3] for f in iter_rgba_frames(path)]).astype(np.float32) / 255.0
        err[name] = float(np.abs(got - np.stack(alphas)).mean())
    assert err["soft"] < 0.7 * err["hard"], err
    with pytest.raises(ValueError, match="source video"):
        W.export_alpha_video(tr, 1, tmp_path / "x.mov", None, fps=12, matte=MatteSettings(6))
