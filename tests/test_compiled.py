"""torch.compile of the three model stages (univs_engine/compiled.py): each stage compiles as one graph
(fullgraph=True: a graph break fails the test) and matches eager fp32 within 1e-4 on CPU (inductor's C++
backend); prompt-count padding leaves the real prompts' outputs unchanged.

Compiling is slow on a small CPU (tens of seconds per graph), so the compiled checks use the small config
at a tiny frame size; UNIVS_TEST_COMPILE_R50=1 adds the R50 stack."""
import copy
import os

import pytest
import torch

from univs_engine.compiled import (bucket, compile_model, enabled, is_compiled, mode_for, pad_prompts, trim,
                                   uncompile)
from univs_engine.config import get_config
from univs_engine.modeling.univs import build_univs

TOL = 1e-4
T, H, W, NUM_PROMPTS = 2, 64, 96, 3  # 3 prompts -> bucket 4


def max_error(a, b) -> float:
    if isinstance(a, dict):
        return max(max_error(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return max(max_error(x, y) for x, y in zip(a, b))
    assert a.shape == b.shape
    return (a - b).abs().max().item()


def decoder_outputs(out) -> dict:
    return {k: v for k, v in vars(out).items() if isinstance(v, torch.Tensor)}


class Case:
    """An eager model, its compiled copy and one clip's inputs."""

    def __init__(self, name: str, size=(H, W)):
        torch.manual_seed(0)
        self.eager = build_univs(get_config(name))
        self.compiled = compile_model(copy.deepcopy(self.eager), mode_for("cpu"))
        dec = self.eager.decoder
        C, D = dec.cfg.hidden_dim, dec.cfg.text_dim
        self.frames = torch.randn(T, 3, *size)
        self.classes = torch.randn(7, D)
        with torch.no_grad():
            self.mask_features, multi = self.eager.encode_frames(self.frames)
            self.levels = dec.embed_levels(multi, torch.arange(10, 10 + T))
            memory = [torch.randn(NUM_PROMPTS, *s) for s in ((4, T, C), (4, T, C), (6, C), (6, C))]
            self.visual = dec.visual_prompt_queries(*memory)
            self.text = dec.text_prompt_queries(torch.randn(NUM_PROMPTS, D), torch.randn(NUM_PROMPTS, 77, D),
                                                self.levels)

    def decode(self, model, prompts, **kw):
        classes = None if prompts is not None and prompts.kind == "text" else self.classes
        with torch.no_grad():
            return decoder_outputs(model.decoder(self.levels, self.mask_features, prompts, classes, **kw))


@pytest.fixture(scope="module")
def small():
    return Case("small")


def test_rules():
    assert [bucket(n) for n in (1, 2, 3, 5, 16, 17, 64, 65, 130)] == [1, 2, 4, 8, 16, 32, 64, 128, 192]
    assert not enabled("cpu") and enabled("cpu", True) and not enabled("cuda", False)
    assert mode_for("cpu") == "default" and mode_for("cuda") == "reduce-overhead"


def test_compile_model_is_in_place_and_reversible(small):
    model = small.compiled
    assert is_compiled(model) and compile_model(model) is model
    assert model.state_dict().keys() == small.eager.state_dict().keys()
    plain = uncompile(copy.deepcopy(small.eager))
    assert not is_compiled(plain) and "forward" not in vars(plain.backbone)


@pytest.mark.parametrize("kw", [dict(self_attn_mask="sep"), dict(self_attn_mask="sep-blocked"),
                                dict(learnable=False)], ids=["sep", "sep-blocked", "prompts-only"])
def test_padded_prompts_leave_real_prompts_unchanged(small, kw):
    """Eager: the decoder on 3 prompts == on the same prompts padded to 8, trimmed back."""
    dec = small.eager.decoder
    for prompts in (small.visual, small.text) if "learnable" not in kw else (small.visual,):
        classes = None if prompts.kind == "text" else small.classes
        with torch.no_grad():
            ref = dec(small.levels, small.mask_features, prompts, classes, **kw)
            out = trim(dec(small.levels, small.mask_features, pad_prompts(prompts, 8), classes, **kw),
                       NUM_PROMPTS, prompts.kind == "text")
        assert max_error(decoder_outputs(ref), decoder_outputs(out)) <= 1e-5


def test_padding_without_the_mask_would_leak(small):
    """The `valid` mask is what keeps padding out: without it the 'sep' prompts see the padded copies."""
    dec, padded = small.eager.decoder, pad_prompts(small.visual, 8)
    unmasked = copy.copy(padded)
    unmasked.valid = None
    with torch.no_grad():
        a = dec(small.levels, small.mask_features, padded, learnable=False).pred_embds[:NUM_PROMPTS]
        b = dec(small.levels, small.mask_features, unmasked, learnable=False).pred_embds[:NUM_PROMPTS]
    assert (a - b).abs().max() > 1e-3


def test_encoders_compiled_match_eager(small):
    with torch.no_grad():
        ref = small.eager.backbone(small.frames)
        out = small.compiled.backbone(small.frames)
        assert max_error(ref, out) <= TOL
        ref_px = small.eager.sem_seg_head.pixel_decoder.forward_features(ref)
        out_px = small.compiled.sem_seg_head.pixel_decoder.forward_features(ref)
        assert max_error(ref_px, out_px) <= TOL
        assert max_error(ref_px, small.compiled.encode_frames(small.frames)) <= TOL


@pytest.mark.parametrize("variant", ["classes", "visual", "text"])
def test_decoder_compiled_matches_eager(small, variant):
    """The three ways the clip loops call the decoder: categories only (entity/semantic loops), visual
    prompts without learnable queries (VOS), text prompts (referring). Prompts run padded to bucket 4."""
    prompts = {"classes": None, "visual": small.visual, "text": small.text}[variant]
    kw = dict(learnable=False) if variant == "visual" else {}
    ref = small.decode(small.eager, prompts, **kw)
    out = small.decode(small.compiled, prompts, **kw)
    assert ref.keys() == out.keys()
    assert max_error(ref, out) <= TOL


@pytest.mark.skipif(os.environ.get("UNIVS_TEST_COMPILE_R50") != "1", reason="slow: set UNIVS_TEST_COMPILE_R50=1")
def test_r50_compiled_matches_eager():
    case = Case("r50", size=(64, 64))
    with torch.no_grad():
        assert max_error(case.eager.encode_frames(case.frames), case.compiled.encode_frames(case.frames)) <= TOL
    ref = case.decode(case.eager, case.visual, learnable=False)
    assert max_error(ref, case.decode(case.compiled, case.visual, learnable=False)) <= TOL
