"""The decoder's results depend on the values of its inputs only, never on their memory layout.

The pixel decoder hands its multi-scale maps over as strided views into one [T, sum hw, C] buffer, the clip
loops as stacked (contiguous) copies, a caller may pass channels-last tensors: all must decode alike.
Agreement is required to the bit, not to a tolerance: the decoder thresholds its mask logits at 0 to build
the next layer's attention mask, so one ulp of layout-dependent rounding can flip an attention-mask entry
and grow to O(0.1) later (on the reference text-prompt run: 0.25 in the query embeddings from layer 4 on).
Small random weights and inputs, no reference data.
"""
import pytest
import torch

from univs_engine.config import get_config
from univs_engine.inference.core import ClipGeometry
from univs_engine.inference.vos import PromptedClipLoop, TextTargets
from univs_engine.presets import TaskSettings
from univs_engine.modeling.mask_decoder import VideoMaskDecoder

T = 2
SIZES = [(2, 2), (4, 4), (8, 8)]  # 1/32, 1/16, 1/8 of a 64 x 64 frame
FRAME = (64, 64)
KINDS = ["learnable", "visual", "text"]  # prompt queries


def pixel_decoder_views(x):
    """The maps as MSDeformAttnPixelDecoder returns them: views into one [T, sum hw, C] memory."""
    memory = torch.cat([m.flatten(2).transpose(1, 2) for m in x], 1).contiguous()
    parts = memory.split([h * w for h, w in SIZES], dim=1)
    return [p.transpose(1, 2).reshape(T, -1, h, w) for p, (h, w) in zip(parts, SIZES)]


LAYOUTS = {  # (mask_features, maps) -> the same values in another layout
    "pixel-decoder": lambda mf, maps: (mf, pixel_decoder_views(maps)),
    "channels-last": lambda mf, maps: (mf.contiguous(memory_format=torch.channels_last),
                                       [m.contiguous(memory_format=torch.channels_last) for m in maps]),
}


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    # the full models' width: with C = 256 a projection's GEMM rounds differently for a contiguous input
    # (bias fused into the accumulation) than for a strided one; with the small model's 64 it does not
    cfg = get_config("small").with_(hidden_dim=256, nheads=8)
    dec = VideoMaskDecoder(cfg).eval()
    for name, p in dec.named_parameters():
        if name.endswith("bias"):  # the default zero biases would hide that
            p.data.normal_(0, 0.1)
    mask_features = torch.randn(T, cfg.hidden_dim, FRAME[0] // 4, FRAME[1] // 4)
    maps = [torch.randn(T, cfg.hidden_dim, h, w) for h, w in SIZES]
    text = TextTargets(torch.randn(1, cfg.text_dim), torch.randn(1, 77, cfg.text_dim))
    return dec, mask_features, maps, text


def relaid(layout, mask_features, maps):
    mf, ms = LAYOUTS[layout](mask_features, maps)
    assert torch.equal(mf, mask_features) and all(torch.equal(a, b) for a, b in zip(ms, maps))
    assert not any(m.is_contiguous() for m in ms)
    return mf, ms


def assert_same(a, b, what):
    assert torch.equal(a, b), f"{what}: max abs diff {(a - b).abs().max().item():.3g} between layouts"


def decode(dec, mask_features, maps, text, kind):
    levels = dec.embed_levels(maps, torch.arange(T))
    prompts = None
    if kind == "text":
        prompts = dec.text_prompt_queries(text.sentence, text.words, levels)
    elif kind == "visual":
        g = torch.Generator().manual_seed(1)
        tokens, pe = (torch.randn(2, 8, T, dec.cfg.hidden_dim, generator=g) for _ in range(2))
        prompts = dec.visual_prompt_queries(tokens, pe, tokens[:, :, 0], pe[:, :, 0])
    return dec(levels, mask_features, prompts, keep_layers=True)


@pytest.fixture(scope="module")
def contiguous(setup):
    with torch.no_grad():
        return {kind: decode(*setup, kind) for kind in KINDS}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("kind", KINDS)
@torch.no_grad()
def test_decoder_is_layout_invariant(setup, contiguous, layout, kind):
    dec, mask_features, maps, text = setup
    ref = contiguous[kind]
    out = decode(dec, *relaid(layout, mask_features, maps), text, kind)
    assert_same(out.embds_per_layer, ref.embds_per_layer, "query embeddings per layer")
    assert_same(out.pred_masks, ref.pred_masks, "pred_masks")
    if kind == "text":
        assert_same(out.pred_logits, ref.pred_logits, "pred_logits")
        assert_same(out.pred_reid, ref.pred_reid, "pred_reid")


class FakeModel(torch.nn.Module):
    """The decoder plus an encoder that returns fixed features (frame k: index k) in a given layout."""

    def __init__(self, decoder, mask_features, maps):
        super().__init__()
        self.cfg, self.decoder, self.mask_features, self.maps = decoder.cfg, decoder, mask_features, maps
        self.register_buffer("pixel_mean", torch.zeros(3, 1, 1))

    def encode_frames(self, frames):
        idx = frames[:, 0, 0, 0].long()
        return self.mask_features[idx], [m[idx] for m in self.maps]


def run_loop(dec, mask_features, maps, text):
    loop = PromptedClipLoop(FakeModel(dec, mask_features, maps), TaskSettings(clip_len=T, prompt_tokens=8),
                            ClipGeometry(T, FRAME, FRAME, FRAME), generator=torch.Generator().manual_seed(0))
    frames = lambda a, b: torch.arange(a, b).float().view(-1, 1, 1, 1).expand(-1, 3, 4, 4)  # noqa: E731
    mask = torch.zeros(1, *FRAME)
    mask[:, 20:45, 15:50] = 1
    return list(loop.run(frames, 1, {0: (torch.tensor([0]), mask)})) + list(loop.run(frames, 1, text=text))


@torch.no_grad()
def test_prompted_clip_loop_is_layout_invariant(setup):
    dec, mask_features, maps, text = setup
    ref = run_loop(dec, mask_features, maps, text)
    out = run_loop(dec, *relaid("pixel-decoder", mask_features, maps), text)
    for (f, logits, embds), (f_ref, logits_ref, embds_ref) in zip(out, ref, strict=True):
        assert f == f_ref
        assert_same(logits, logits_ref, f"frame {f} mask logits")
        assert_same(embds, embds_ref, f"frame {f} embeddings")
