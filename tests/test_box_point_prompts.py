"""Box and point prompts through the official sampler branches (facts §2.4, quirk 21): the cells a box selects
(asymmetric bounds) and its fallback point, the bilinear point sample and its encoding, the loop using these
tokens on the prompt frame, and end-to-end tracking of the sample clip from boxes and from clicks."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from univs_engine.api import Prompt, RunOptions, track
from univs_engine.config import get_config
from univs_engine.inference import vos
from univs_engine.inference.core import ClipGeometry
from univs_engine.inference.vos import PromptedClipLoop
from univs_engine.modeling.position_encoding import sine_position_points
from univs_engine.modeling.prompt_encoder import (ShapePrompt, box_cells, sample_box_prompts,
                                                  sample_point_prompts, sample_shape_prompts)
from univs_engine.modeling.univs import build_univs
from univs_engine.presets import TaskSettings
from univs_engine.prompts_file import parse_prompts

ROOT = Path(__file__).resolve().parents[1]
C, h, w = 16, 4, 8          # a 1/8 map of a 32 x 64 padded input
Z = torch.tensor(0.7)       # temporal angle of the frame


@pytest.fixture(scope="module")
def maps():
    g = torch.Generator().manual_seed(3)
    return torch.randn(C, h, w, generator=g), torch.randn(C, h, w, generator=g)


def cells_of(mask):
    return [tuple(c) for c in torch.nonzero(mask).tolist()]


# ------------------------------------------------------------------------------------------------ box branch
def test_box_cells_use_the_asymmetric_official_bounds():
    # x: 0.15 * 8 = 1.2 -> floor 1, 0.42 * 8 = 3.36 -> ceil 4: 1 < x <= 4 -> {2, 3, 4} (cell 1 holds the left edge
    # and is out, cell 4 lies past the right edge and is in). y: 0.4 -> 0, 2.2 -> 3: {1, 2, 3}.
    frac = torch.tensor([[0.15, 0.1, 0.42, 0.55]])
    assert cells_of(box_cells(frac, h, w)[0]) == [(y, x) for y in (1, 2, 3) for x in (2, 3, 4)]
    # bounds on cell edges: x 2..4 -> {3, 4}; y 1..3 -> {2, 3}
    exact = torch.tensor([[0.25, 0.25, 0.5, 0.75]])
    assert cells_of(box_cells(exact, h, w)[0]) == [(2, 3), (2, 4), (3, 3), (3, 4)]


def test_box_tokens_are_the_cells_inside_tiled_or_drawn(maps):
    feat, pos = maps
    box = torch.tensor([[0.15, 0.1, 0.42, 0.55]])
    order = [(y, x) for y in (1, 2, 3) for x in (2, 3, 4)]  # row-major
    few = sample_box_prompts(feat, pos, box, 20, Z, rand=lambda s: torch.full(s, 0.5))
    for j in range(20):  # 9 cells < R: tiled in row-major order
        y, x = order[j % 9]
        assert torch.equal(few.tokens[0, j], feat[:, y, x]) and torch.equal(few.pe[0, j], pos[:, y, x])
    drawn = []
    many = sample_box_prompts(feat, pos, box, 4, Z, rand=lambda s: torch.full(s, 0.5),
                              draw=lambda n: drawn.append(n) or torch.arange(n - 1, -1, -1))
    assert drawn == [9]  # one permutation over the 9 cells, its first R kept
    for j, (y, x) in enumerate(order[::-1][:4]):
        assert torch.equal(many.tokens[0, j], feat[:, y, x])
    assert many.valid.tolist() == [True]


def bilinear(feat, x, y):
    """Hand-written bilinear sample at normalised (x, y), align_corners False, zero outside."""
    u, v = x * feat.shape[2] - 0.5, y * feat.shape[1] - 0.5
    x0, y0 = math.floor(u), math.floor(v)
    out = torch.zeros(feat.shape[0])
    for yy, wy in ((y0, 1 - (v - y0)), (y0 + 1, v - y0)):
        for xx, wx in ((x0, 1 - (u - x0)), (x0 + 1, u - x0)):
            if 0 <= yy < feat.shape[1] and 0 <= xx < feat.shape[2]:
                out += wy * wx * feat[:, yy, xx]
    return out


def test_box_covering_no_cell_falls_back_to_a_point_near_its_centre(maps):
    feat, pos = maps
    box = torch.tensor([[7.2 / 8, 0.25, 1.0, 0.75]])  # inside the last column: floor(7.2) = 7 < x <= 8 is off the map
    assert not box_cells(box, h, w).any()
    draws = []
    enc = sample_box_prompts(feat, pos, box, 6, Z, rand=lambda s: draws.append(s) or torch.tensor([[0.75, 0.25]]),
                             draw=lambda n: pytest.fail("no cell, no permutation"))
    assert draws == [(1, 2)]
    # offsets 2 * rand - 1 = (0.5, -0.5) times a quarter of the box size, from its centre
    px, py = 0.95 + 0.5 * 0.25 * 0.1, 0.5 - 0.5 * 0.25 * 0.5
    assert torch.allclose(enc.points, torch.tensor([[px, py]]))
    want = bilinear(feat, px, py)
    assert torch.allclose(enc.tokens[0], want.expand(6, C), atol=1e-5)
    assert torch.equal(enc.pe[0], sine_position_points(torch.tensor([[px, py]]), Z[None], C // 2).expand(6, C))
    assert enc.valid.tolist() == [True]


# ---------------------------------------------------------------------------------------------- point branch
def official_point_pe(x, y, z, num_feats):
    """The 3D sine encoding at a normalised point, written out: [sin/cos of y * 2pi / t_i, then of x], plus the
    temporal part with twice the channels (ArbitraryT: z = frame / 128 * 2pi)."""
    out = torch.zeros(2 * num_feats)
    for i in range(num_feats):
        t = 10000 ** (2 * (i // 2) / num_feats)
        f = math.sin if i % 2 == 0 else math.cos
        out[i] += f(y * 2 * math.pi / t)
        out[num_feats + i] += f(x * 2 * math.pi / t)
    for i in range(2 * num_feats):
        t = 10000 ** (2 * (i // 2) / (2 * num_feats))
        out[i] += (math.sin if i % 2 == 0 else math.cos)(z / t)
    return out


def test_point_token_is_the_bilinear_sample_and_its_encoding(maps):
    feat, pos = maps
    x, y = 0.3, 0.45  # feature-grid coordinates (1.9, 1.3): four neighbours with unequal weights
    enc = sample_point_prompts(feat, [torch.tensor([[x, y]])], 5, Z)
    want = (0.7 * 0.1 * feat[:, 1, 1] + 0.7 * 0.9 * feat[:, 1, 2] + 0.3 * 0.1 * feat[:, 2, 1]
            + 0.3 * 0.9 * feat[:, 2, 2])
    assert torch.allclose(bilinear(feat, x, y), want, atol=1e-6)
    assert torch.allclose(enc.tokens[0], want.expand(5, C), atol=1e-5)  # one click fills all R tokens
    pe = sine_position_points(torch.tensor([[x, y]]), Z[None], C // 2)
    assert torch.equal(enc.pe[0], pe.expand(5, C))
    assert torch.allclose(pe[0], official_point_pe(x, y, float(Z), C // 2), atol=1e-5)
    assert enc.valid.tolist() == [True]


def test_several_clicks_are_tiled_over_the_tokens_and_bad_clicks_dropped(maps):
    feat, _ = maps
    pts = torch.tensor([[0.3, 0.45], [0.8, 0.2]])
    enc = sample_point_prompts(feat, [pts, torch.tensor([[1.5, 0.5]])], 5, Z)
    one, two = (sample_point_prompts(feat, [p[None]], 1, Z).tokens[0, 0] for p in pts)
    assert all(torch.equal(enc.tokens[0, j], (one, two)[j % 2]) for j in range(5))
    assert enc.valid.tolist() == [True, False] and not enc.tokens[1].any()


def test_shapes_keep_their_order_and_match_the_branches(maps):
    feat, pos = maps
    box, pts = torch.tensor([0.15, 0.1, 0.42, 0.55]), torch.tensor([[0.3, 0.45]])
    rand = lambda s: torch.full(s, 0.5)  # noqa: E731
    enc = sample_shape_prompts(feat, pos, [ShapePrompt(points=pts), ShapePrompt(box=box)], 20, Z, rand=rand)
    assert torch.equal(enc.tokens[0], sample_point_prompts(feat, [pts], 20, Z).tokens[0])
    assert torch.equal(enc.tokens[1], sample_box_prompts(feat, pos, box[None], 20, Z, rand=rand).tokens[0])
    with pytest.raises(ValueError, match="exactly one"):
        ShapePrompt(box=box, points=pts)


# ------------------------------------------------------------------------------------------------- the loop
@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    torch.set_num_threads(2)
    return build_univs(get_config("small")).eval()


def run_loop(net, annotations, frames, seed=0):
    geometry = ClipGeometry(6, (64, 64), (64, 64), (64, 64))
    loop = PromptedClipLoop(net, TaskSettings(clip_len=3, prompt_tokens=8), geometry,
                            generator=torch.Generator().manual_seed(seed))
    seen = []
    loop.hooks["prompt_tokens"] = lambda call, frame, tokens: seen.append((call, frame, tokens.tokens.clone()))
    out = [lg for _, lg, _ in loop.run(lambda a, b: frames[a:b], 2, annotations)]
    return out, seen


def test_the_loop_takes_shape_tokens_on_their_frame_and_masks_elsewhere(net, monkeypatch):
    frames = torch.randn(6, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    masks = torch.zeros(2, 64, 64)
    masks[0, 8:30, 8:30] = 1
    masks[1, 30:50, 20:40] = 1
    plain, plain_seen = run_loop(net, {0: (torch.tensor([0]), masks[:1]), 2: (torch.tensor([1]), masks[1:])}, frames)
    same, _ = run_loop(net, {0: (torch.tensor([0]), masks[:1], [None]), 2: (torch.tensor([1]), masks[1:], [None])},
                       frames)
    assert all(torch.equal(a, b) for a, b in zip(plain, same))  # no shape: the mask path, bit for bit

    made = []
    real = vos.sample_shape_prompts
    monkeypatch.setattr(vos, "sample_shape_prompts", lambda *a, **k: made.append(real(*a, **k)) or made[-1])
    box = ShapePrompt(box=torch.tensor([20 / 64, 30 / 64, 40 / 64, 50 / 64]))
    _, seen = run_loop(net, {0: (torch.tensor([0]), masks[:1]), 2: (torch.tensor([1]), masks[1:], [box])}, frames)
    at2 = [(call, tok) for call, frame, tok in seen if frame == 2]
    assert [call for call, _ in at2] == [1, 2] and len(made) == 2  # frame 2 is encoded by the clips at 1 and 2
    for (_, tok), shaped in zip(at2, made):
        assert torch.equal(tok[1], shaped.tokens[0])          # the box branch's tokens for the box target
    target0 = [torch.equal(a[2][0], b[2][0]) for a, b in zip(seen, plain_seen) if a[1] < 2]
    assert target0 and all(target0)  # the mask target's tokens before frame 2 are untouched


# ------------------------------------------------------------------------------------------------ end to end
STOP = 24  # frames 0..23 of assets/sample.mp4: objects 1 and 3 from frame 0, object 2 from frame 17
# Measured (2-core CPU, small model, this clip), objects 1/2/3: mean IoU with the mask-prompt run over each
# object's frames, boxes 0.985/0.982/0.996, clicks 0.987/0.982/0.996; prompt-frame IoU with the sample's masks,
# boxes 0.860/0.885/0.949, clicks 0.886/0.890/0.939. Floors a few points under.
FLOOR_VS_MASK_RUN, FLOOR_PROMPT_FRAME = 0.93, 0.80


@pytest.fixture(scope="module")
def sample():
    meta = json.loads((ROOT / "assets" / "sample.json").read_text())
    masks = parse_prompts(json.dumps(meta), "sample.json", False, meta["num_frames"], meta["height"], meta["width"])
    return meta["objects"], {p.obj_id: p for p in masks}


@pytest.fixture(scope="module")
def trained():
    from univs_engine.api import load_model

    torch.set_num_threads(2)
    return load_model("small")


def iou(a, b):
    return (a & b).sum() / max((a | b).sum(), 1)


@pytest.fixture(scope="module")
def mask_run(trained, sample):
    objects, by_id = sample
    return track(trained, ROOT / "assets" / "sample.mp4", list(by_id.values()), RunOptions(stop=STOP))


@pytest.mark.parametrize("kind", ["box", "points"])
def test_boxes_and_clicks_follow_the_objects(trained, sample, mask_run, kind, monkeypatch):
    import univs_engine.api as api

    objects, by_id = sample
    monkeypatch.setattr(api, "refine_prompt", lambda *a: pytest.fail("official mode must not refine"))
    prompts = [Prompt(o["id"], o["prompt"]["frame"], box=tuple(o["prompt"]["box"])) if kind == "box" else
               Prompt(o["id"], o["prompt"]["frame"], points=[tuple(p) for p in o["prompt"]["points"]])
               for o in objects]
    tracks = track(trained, ROOT / "assets" / "sample.mp4", prompts, RunOptions(stop=STOP, prompt_mode="official"))
    for o in objects:
        f0, obj = o["prompt"]["frame"], o["id"]
        assert iou(tracks.mask(f0, obj), by_id[obj].mask) > FLOOR_PROMPT_FRAME, (obj, "prompt frame")
        scores = [iou(tracks.mask(f, obj), mask_run.mask(f, obj)) for f in range(f0, STOP)]
        assert np.mean(scores) > FLOOR_VS_MASK_RUN, (obj, np.round(scores, 3))


def test_prompt_modes_are_checked(trained, sample):
    objects, _ = sample
    o = objects[0]
    neg = Prompt(o["id"], 0, points=[tuple(o["prompt"]["points"][0]), tuple(o["prompt"]["negative_points"][0])],
                 point_labels=[1, 0])
    with pytest.raises(ValueError, match="prompt_mode 'official'"):
        track(trained, ROOT / "assets" / "sample.mp4", [neg], RunOptions(stop=2, prompt_mode="official"))
    with pytest.raises(ValueError, match="prompt_mode must be"):
        track(trained, ROOT / "assets" / "sample.mp4", [neg], RunOptions(stop=2, prompt_mode="exact"))


@pytest.mark.parametrize("argv, words", [
    (["--task", "vis", "--prompt-mode", "official"], ["--prompt-mode does not apply to --task vis"]),
    (["--points", "199,68", "--neg-points", "208,78", "--prompt-mode", "official", "--stop", "2"],
     ["prompt_mode 'official'", "negative clicks"]),
    (["--box", "189,52,218,83", "--prompt-mode", "exact"], ["argument --prompt-mode", "invalid choice"]),
])
def test_cli_prompt_mode(capsys, tmp_path, argv, words):
    from univs_engine.cli import main

    rc = main(["segment", str(ROOT / "assets" / "sample.mp4"), "--out", str(tmp_path / "out")] + argv)
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err and all(w in err for w in words), err
