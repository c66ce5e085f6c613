"""Backbones, MSDeformAttn and pixel decoder vs the official reference tensors and key manifests.

Reference set: the full one, or the reduced one carried in tests/reference_reduced (see tests/conftest.py):
then each output is compared on the fixed subset stored for it (``ref.pick``), and the pixel decoder, which
needs whole backbone maps, runs on our own backbone output (itself checked against stage (b) first).

Tolerances: every tensor is compared with an ABSOLUTE max error of 1e-4 in fp32 (the references
have magnitudes up to ~10; measured errors are ~1e-5 or less). The Swin-T file stores two pixel-decoder
outputs only as sums over 256 channels (values up to ~40); a sum of 256 terms each within ~1e-5 can
drift by more, so those two use 5e-4 absolute.
"""
from __future__ import annotations

import json
import os
from dataclasses import replace

import pytest
import torch

from conftest import REDUCED, load_reference, reference_path
from univs_engine import get_config
from univs_engine.modeling.image_encoder import (FrozenBatchNorm2d, ResNet, SwinTransformer,
                                                 build_image_encoder, freeze_batch_norm)
from univs_engine.modeling.ms_deform_attn import MSDeformAttn, ms_deform_attn_core, ms_deform_attn_gather
from univs_engine.modeling.pixel_decoder import MSDeformAttnPixelDecoder

torch.set_num_threads(2)

BACKBONE = "backbone."
PIXEL_DECODER = "sem_seg_head.pixel_decoder."
ATOL = 1e-4
DEVICE = os.environ.get("UNIVS_TEST_DEVICE", "cpu")  # e.g. cuda: the same parity checks on a GPU
ATOL_CHANNEL_SUM = 5e-4
LEVELS = ("res2", "res3", "res4", "res5")


def fill_(module: torch.nn.Module, prefix: str, make_weights) -> torch.nn.Module:
    """Fill with the reference weight rule; it seeds by the FULL checkpoint key, so prefix, generate, strip."""
    sd = make_weights.make_state_dict({prefix + k: v for k, v in module.state_dict().items()})
    module.load_state_dict({k[len(prefix):]: v for k, v in sd.items()}, strict=True)
    return module.to(DEVICE).eval()


def max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a.float().cpu() - b.float().cpu()).abs().max().item()


def state_entries(module: torch.nn.Module, prefix: str):
    buffers = {name for name, _ in module.named_buffers()}
    return [
        (prefix + k, list(v.shape), str(v.dtype).replace("torch.", ""), "buffer" if k in buffers else "parameter")
        for k, v in module.state_dict().items()
    ]


def manifest_entries(name: str, prefix: str):
    manifest = json.loads(reference_path(f"univs_{name}_stage3_keys.json").read_text())
    return [(e["key"], e["shape"], e["dtype"], e["kind"]) for e in manifest["entries"] if e["key"].startswith(prefix)]


# ----------------------------------------------------------------------------------------------
# Key manifests (cheap: built on the meta device, no weights)
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["r50", "swint", "swinb", "swinl"])
def test_state_dict_matches_manifest(name):
    cfg = get_config(name)
    with torch.device("meta"):
        backbone = build_image_encoder(cfg)
        decoder = MSDeformAttnPixelDecoder(cfg, backbone.out_channels)
    assert state_entries(backbone, BACKBONE) == manifest_entries(name, BACKBONE)
    assert state_entries(decoder, PIXEL_DECODER) == manifest_entries(name, PIXEL_DECODER)


# ----------------------------------------------------------------------------------------------
# R50: stage (b) backbone and stage (c) pixel decoder
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def r50_backbone_out(make_weights):
    backbone = fill_(build_image_encoder(get_config("r50")), BACKBONE, make_weights)
    frames = load_reference("univs_r50_a_input.safetensors", DEVICE)["frames_normalized"]
    with torch.no_grad():
        return backbone(frames)


def test_r50_backbone_parity(r50_backbone_out):
    ref = load_reference("univs_r50_b_backbone.safetensors")
    out = r50_backbone_out
    assert max_err(ref.pick("res2_frame0", out["res2"][:1]), ref["res2_frame0"]) <= ATOL
    assert max_err(ref.pick("res3_frame0", out["res3"][:1]), ref["res3_frame0"]) <= ATOL
    assert max_err(ref.pick("res4", out["res4"]), ref["res4"]) <= ATOL
    assert max_err(ref.pick("res5", out["res5"]), ref["res5"]) <= ATOL


@pytest.fixture(scope="module")
def r50_pixel_decoder(make_weights):
    cfg = get_config("r50")
    return fill_(MSDeformAttnPixelDecoder(cfg, cfg.backbone.out_channels), PIXEL_DECODER, make_weights)


def _check_pixel_decoder(ref, mask_features, maps, frames):
    assert max_err(ref.pick("mask_features", mask_features), ref["mask_features"][frames]) <= ATOL
    for i, m in enumerate(maps):
        assert max_err(ref.pick(f"multi_scale_{i}", m), ref[f"multi_scale_{i}"][frames]) <= ATOL


def _frame0_backbone_maps(r50_backbone_out):
    """Stage-(b) maps of frame 0, each [1, C, h, w]: the official ones with the full set, else our own
    (compared with stage (b) in test_r50_backbone_parity)."""
    if REDUCED:
        return {k: v[:1] for k, v in r50_backbone_out.items()}
    b = load_reference("univs_r50_b_backbone.safetensors", DEVICE)
    return dict(res2=b["res2_frame0"], res3=b["res3_frame0"], res4=b["res4"][:1], res5=b["res5"][:1])


def test_r50_pixel_decoder_parity_frame0(r50_pixel_decoder, r50_backbone_out):
    """Full set: from the stored stage-(b) tensors, which isolates the pixel decoder from the backbone;
    reduced set: from our own frame-0 backbone maps."""
    ref = load_reference("univs_r50_c_pixel_decoder.safetensors")
    feats = _frame0_backbone_maps(r50_backbone_out)
    with torch.no_grad():
        mask_features, maps = r50_pixel_decoder.forward_features(feats)
    assert mask_features.shape == (1, 256, 64, 64)
    assert [tuple(m.shape[-2:]) for m in maps] == [(8, 8), (16, 16), (32, 32)]
    _check_pixel_decoder(ref, mask_features, maps, slice(0, 1))


def test_r50_backbone_to_pixel_decoder_all_frames(r50_pixel_decoder, r50_backbone_out):
    """All 3 frames, chained from our own backbone output."""
    ref = load_reference("univs_r50_c_pixel_decoder.safetensors")
    with torch.no_grad():
        mask_features, maps = r50_pixel_decoder.forward_features(r50_backbone_out)
    _check_pixel_decoder(ref, mask_features, maps, slice(None))


def test_pixel_decoder_ignores_autocast(r50_pixel_decoder, r50_backbone_out):
    feats = {k: v[:1].to(torch.bfloat16) for k, v in r50_backbone_out.items()}
    with torch.no_grad(), torch.autocast(torch.device(DEVICE).type, dtype=torch.bfloat16):
        mask_features, maps = r50_pixel_decoder.forward_features(feats)
    assert mask_features.dtype == torch.float32 and all(m.dtype == torch.float32 for m in maps)


# ----------------------------------------------------------------------------------------------
# Swin-T: backbone (frame 0) and pixel decoder
# ----------------------------------------------------------------------------------------------
def test_swint_backbone_and_pixel_decoder_parity(make_weights):
    cfg = get_config("swint")
    backbone = fill_(build_image_encoder(cfg), BACKBONE, make_weights)
    assert isinstance(backbone, SwinTransformer) and backbone.out_channels == (96, 192, 384, 768)
    decoder = fill_(MSDeformAttnPixelDecoder(cfg, backbone.out_channels), PIXEL_DECODER, make_weights)
    ref = load_reference("univs_swint_bde_small.safetensors")
    frame0 = load_reference("univs_r50_a_input.safetensors", DEVICE)["frames_normalized"][:1]
    with torch.no_grad():
        feats = backbone(frame0)
        mask_features, maps = decoder.forward_features(feats)
    for k in LEVELS:
        key = f"backbone_{k}_frame0"
        assert max_err(ref.pick(key, feats[k]), ref[key]) <= ATOL, k
    for i in (0, 1):
        key = f"pixel_decoder_multi_scale_{i}_frame0"
        assert max_err(ref.pick(key, maps[i]), ref[key]) <= ATOL, key
    key = "pixel_decoder_multi_scale_2_frame0_sum_over_channels"
    assert max_err(ref.pick(key, maps[2].sum(1)), ref[key]) <= ATOL_CHANNEL_SUM
    key = "pixel_decoder_mask_features_frame0_sum_over_channels"
    assert max_err(ref.pick(key, mask_features.sum(1)), ref[key]) <= ATOL_CHANNEL_SUM


def test_swin_padding_and_odd_sizes():
    """Sizes that are not multiples of the patch/window: padding paths, odd patch merging."""
    torch.manual_seed(0)
    cfg = get_config("swint").backbone
    small = replace(cfg, embed_dim=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8))
    model = SwinTransformer(small).eval()
    x = torch.randn(2, 3, 70, 90)
    with torch.no_grad():
        out = model(x)
    # 70x90 -> patch grid 18x23 -> 9x12 -> 5x6 -> 3x3
    assert [tuple(out[k].shape) for k in LEVELS] == [
        (2, 32, 18, 23), (2, 64, 9, 12), (2, 128, 5, 6), (2, 256, 3, 3)]
    with torch.no_grad():  # frames are independent (the shift mask is shared across the batch)
        single = model(x[1:])
    for k in LEVELS:
        assert max_err(single[k], out[k][1:]) <= 1e-5


# ----------------------------------------------------------------------------------------------
# Small preset, trainable norms
# ----------------------------------------------------------------------------------------------
def test_small_preset_resnet_and_pixel_decoder():
    torch.manual_seed(0)
    cfg = get_config("small")
    backbone = build_image_encoder(cfg)
    assert isinstance(backbone, ResNet) and backbone.out_channels == (32, 64, 128, 256)
    assert tuple(backbone.state_dict()["res2.0.conv1.weight"].shape) == (8, 16, 1, 1)
    decoder = MSDeformAttnPixelDecoder(cfg, backbone.out_channels)
    with torch.no_grad():
        feats = backbone.eval()(torch.randn(2, 3, 96, 128))
        mask_features, maps = decoder.eval().forward_features(feats)
    assert [tuple(feats[k].shape[1:]) for k in LEVELS] == [(32, 24, 32), (64, 12, 16), (128, 6, 8), (256, 3, 4)]
    assert mask_features.shape == (2, 64, 24, 32)
    assert [tuple(m.shape) for m in maps] == [(2, 64, 3, 4), (2, 64, 6, 8), (2, 64, 12, 16)]


def test_resnet_norm_variants_share_keys():
    torch.manual_seed(0)
    cfg = get_config("small")
    frozen = ResNet(cfg.backbone)
    affine = ResNet(cfg.backbone, norm="AffineFrozenBN")
    bn = ResNet(cfg.backbone, norm="BN")
    assert list(affine.state_dict()) == list(frozen.state_dict())
    assert not any(isinstance(b, torch.nn.Parameter) for _, b in frozen.named_buffers())
    assert "stem.conv1.norm.weight" in dict(affine.named_parameters())
    assert "stem.conv1.norm.weight" in dict(bn.named_parameters())
    bn_keys = [k for k in bn.state_dict() if not k.endswith("num_batches_tracked")]
    assert bn_keys == list(frozen.state_dict())

    # train BN briefly so its statistics move, then export to the FrozenBN layout
    bn.train()
    with torch.no_grad():
        for _ in range(3):
            bn(torch.randn(4, 3, 64, 64))
    bn.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = bn(x)
    exported = freeze_batch_norm(bn)
    assert all(not isinstance(m, torch.nn.BatchNorm2d) for m in exported.modules())
    assert list(exported.state_dict()) == list(frozen.state_dict())
    frozen.load_state_dict(exported.state_dict(), strict=True)
    affine.load_state_dict(exported.state_dict(), strict=True)
    with torch.no_grad():
        for m in (exported, frozen.eval(), affine.eval()):
            got = m(x)
            for k in LEVELS:
                assert max_err(got[k], expected[k]) <= 1e-5
    # FrozenBN checkpoints load into a BN model too (num_batches_tracked starts at 0)
    bn2 = ResNet(cfg.backbone, norm="BN")
    bn2.load_state_dict(frozen.state_dict(), strict=True)
    assert isinstance(frozen.stem.conv1.norm, FrozenBatchNorm2d)


def test_affine_frozen_bn_is_trainable():
    torch.manual_seed(0)
    model = ResNet(get_config("small").backbone, norm="AffineFrozenBN").train()
    out = model(torch.randn(1, 3, 64, 64))
    sum(v.sum() for v in out.values()).backward()
    assert model.stem.conv1.norm.weight.grad is not None
    assert model.stem.conv1.norm.running_var.grad is None


# ----------------------------------------------------------------------------------------------
# MSDeformAttn core
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("core", [ms_deform_attn_core, ms_deform_attn_gather], ids=["grid_sample", "gather"])
def test_ms_deform_attn_core_against_direct_bilinear(core):
    """Each core vs an explicit bilinear interpolation (zeros outside, pixel centres at (i + 0.5) / size)."""
    torch.manual_seed(0)
    shapes = [(3, 4), (2, 2)]
    b, heads, d, q, points = 2, 2, 3, 5, 3
    value = torch.randn(b, sum(h * w for h, w in shapes), heads, d, dtype=torch.float64)
    loc = torch.rand(b, q, heads, len(shapes), points, 2, dtype=torch.float64) * 1.4 - 0.2
    weights = torch.rand(b, q, heads, len(shapes), points, dtype=torch.float64)
    got = core(value, torch.tensor(shapes), loc, weights)

    expected = torch.zeros(b, q, heads, d, dtype=torch.float64)
    start = 0
    for lvl, (h, w) in enumerate(shapes):
        v = value[:, start:start + h * w].view(b, h, w, heads, d)
        start += h * w
        for n in range(b):
            for i in range(q):
                for m in range(heads):
                    for p in range(points):
                        x = loc[n, i, m, lvl, p, 0].item() * w - 0.5
                        y = loc[n, i, m, lvl, p, 1].item() * h - 0.5
                        x0, y0 = int(torch.floor(torch.tensor(x))), int(torch.floor(torch.tensor(y)))
                        acc = torch.zeros(d, dtype=torch.float64)
                        for yy, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
                            for xx, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
                                if 0 <= yy < h and 0 <= xx < w:
                                    acc += wy * wx * v[n, yy, xx, m]
                        expected[n, i, m] += weights[n, i, m, lvl, p] * acc
    assert max_err(got, expected.view(b, q, heads * d)) <= 1e-10


def test_ms_deform_attn_core_is_swappable():
    torch.manual_seed(0)
    attn = MSDeformAttn(d_model=16, n_levels=2, n_heads=2, n_points=2)
    shapes = [(4, 4), (2, 2)]
    query = torch.randn(1, 5, 16)
    ref_pts = torch.rand(1, 5, 2, 2)
    src = torch.randn(1, 20, 16)
    base = attn(query, ref_pts, src, shapes)
    calls = []

    def spy(*args):
        calls.append(1)
        return ms_deform_attn_core(*args)

    attn.core = spy
    assert torch.equal(attn(query, ref_pts, src, torch.tensor(shapes)), base) and calls
