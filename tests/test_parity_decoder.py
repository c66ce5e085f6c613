"""Parity of the mask decoder, visual prompts and the prompted clip loop with the official outputs.

Inputs are the official pixel-decoder outputs of stage (c), so these tests isolate the decoder and the
driver from the image encoder (tested in test_parity_image_encoder.py). Weights: the shared rule.
"""
import os

import pytest
import torch
from safetensors.torch import load_file

from conftest import reference_path
from univs_engine.config import get_config
from univs_engine.inference.vos import ClipSettings, PromptedClipLoop
from univs_engine.modeling.mask_decoder import VideoMaskDecoder

TOL = 1e-4
PREFIX = "sem_seg_head.predictor."
DEVICE = os.environ.get("UNIVS_TEST_DEVICE", "cpu")  # e.g. cuda: the same parity checks on a GPU


def maxdiff(a, b):
    return (a.float().cpu() - b.float().cpu()).abs().max().item()


@pytest.fixture(scope="module")
def ref():
    return {s: load_file(reference_path(f"univs_r50_{s}.safetensors"), device=DEVICE)
            for s in ("c_pixel_decoder", "d_decoder_learnable", "e_visual_prompt", "f_text_prompt", "g_vos_e2e")}


class DecoderOnly(torch.nn.Module):
    """Stands in for UniVS: the decoder plus an encoder that returns the stage-(c) features."""

    def __init__(self, decoder, features):
        super().__init__()
        self.cfg, self.dec, self.features = decoder.cfg, decoder, features
        self.register_buffer("pixel_mean", torch.zeros(3, 1, 1))

    @property
    def decoder(self):
        return self.dec

    def encode_frames(self, frames):
        idx = frames[:, 0, 0, 0].long()  # the fake frames carry their own index
        return self.features["mask_features"][idx], [self.features[f"multi_scale_{l}"][idx] for l in range(3)]


@pytest.fixture(scope="module")
def setup(ref, make_weights):
    torch.set_num_threads(2)
    dec = VideoMaskDecoder(get_config("r50")).eval()
    sd = make_weights.make_state_dict({PREFIX + k: v for k, v in dec.state_dict().items()})
    sd = make_weights.official_effective_state_dict(sd)  # the tied cls/reid temperature
    dec.load_state_dict({k[len(PREFIX):]: v for k, v in sd.items()}, strict=True)
    emb = make_weights.make_tensor("clip_cls_text_emb", (3938, 640)).to(DEVICE)
    return DecoderOnly(dec, ref["c_pixel_decoder"]).to(DEVICE).eval(), emb


def fake_frames(a, b):
    return torch.arange(a, b).float().view(-1, 1, 1, 1).expand(-1, 3, 4, 4)


def levels(model, c):
    return model.decoder.embed_levels([c[f"multi_scale_{l}"] for l in range(3)], torch.arange(3, device=DEVICE))


@torch.no_grad()
def test_learnable_queries_match_stage_d(ref, setup):
    model, emb = setup
    c, d = ref["c_pixel_decoder"], ref["d_decoder_learnable"]
    out = model.decoder(levels(model, c), c["mask_features"], class_embeddings=emb, keep_layers=True)
    for layer in range(10):  # report the first diverging layer, not just the end result
        assert maxdiff(out.embds_per_layer[layer], d["pred_embds_per_layer"][layer, 0]) < TOL, layer
    assert maxdiff(out.pred_masks, d["pred_masks"][0]) < TOL
    assert maxdiff(out.pred_logits, d["pred_logits"][0]) < TOL


def run_loop(model, emb, clip_len, mask):
    loop = PromptedClipLoop(model, ClipSettings(clip_len=clip_len, prompt_tokens=32), 3, (256, 256), (256, 256),
                            class_embeddings=emb)
    seen = {"tokens": [], "prompts": [], "out": []}
    loop.hooks["prompt_tokens"] = lambda **kw: seen["tokens"].append(kw["tokens"])
    loop.hooks["prompt_queries"] = lambda **kw: seen["prompts"].append(kw["prompts"])
    loop.hooks["clip_output"] = lambda **kw: seen["out"].append(kw["out"])
    torch.manual_seed(0)  # the official run drew its random prompt cells from the seeded global RNG
    frames = list(loop.run(fake_frames, 1, {0: (torch.tensor([0]), mask.float()[None])}))
    return frames, seen


@torch.no_grad()
def test_visual_prompt_matches_stage_e(ref, setup):
    model, emb = setup
    e = ref["e_visual_prompt"]
    frames, seen = run_loop(model, emb, 3, e["prompt_mask_frame0"])
    tok, pq, out = seen["tokens"][0], seen["prompts"][0], seen["out"][0]
    assert torch.allclose(tok.points, e["vpe_point_coords"])
    assert maxdiff(tok.tokens, e["vpe_query_feats_dense"][:, :, 0]) < TOL
    assert maxdiff(tok.pe, e["vpe_query_pe_dense"][:, :, 0]) < TOL
    assert maxdiff(pq.content, e["prompt_output"]) < TOL
    assert maxdiff(pq.pos, e["prompt_query_embed"]) < TOL
    assert maxdiff(pq.dense, e["prompt_feats_dense"]) < TOL
    assert maxdiff(pq.dense_pos, e["prompt_pe_dense"]) < TOL
    assert maxdiff(out.pred_masks[out.num_learnable:], e["pred_masks_prompt"][0]) < TOL
    assert maxdiff(out.pred_embds[out.num_learnable:], e["pred_embds_prompt"][0]) < TOL
    assert maxdiff(out.pred_logits[out.num_learnable:], e["pred_logits_prompt"][0]) < TOL
    logits = torch.stack([f[1] for f in frames], 1)
    assert maxdiff(logits, e["vos_mask_logits"]) < TOL
    assert maxdiff(torch.stack([f[2] for f in frames], 1), e["vos_embds"]) < TOL


@torch.no_grad()
def test_text_prompt_decoder_matches_stage_f(ref, setup):
    model, emb = setup
    c, f = ref["c_pixel_decoder"], ref["f_text_prompt"]
    lv = levels(model, c)
    pq = model.decoder.text_prompt_queries(f["exp_sentence_feats"][:, 0], f["exp_word_feats"][:, :, 0], lv)
    assert maxdiff(pq.dense, f["prompt_feats_dense_l2v"]) < TOL
    assert maxdiff(pq.content, f["prompt_output"]) < TOL
    assert maxdiff(pq.pos, f["prompt_query_embed"]) < TOL
    out = model.decoder(lv, c["mask_features"], pq, emb, keep_layers=True)
    for layer in range(10):
        assert maxdiff(out.embds_per_layer[layer, 200:], f["pred_embds_prompt_per_layer"][layer, 0]) < TOL, layer
    assert maxdiff(out.pred_masks[out.num_learnable:], f["pred_masks_prompt"][0]) < TOL
    assert maxdiff(out.pred_logits, f["pred_logits"][0]) < TOL
    assert maxdiff(out.pred_reid, f["pred_reid_logits"][0]) < TOL


@torch.no_grad()
def test_end_to_end_vos_matches_stage_g(ref, setup):
    model, emb = setup
    g = ref["g_vos_e2e"]
    frames, seen = run_loop(model, emb, 2, ref["e_visual_prompt"]["prompt_mask_frame0"])
    for k in range(2):  # call 1 re-encodes the predicted frame-1 mask, drawing 32 of its cells at random
        tok = seen["tokens"][k]
        assert torch.allclose(tok.points, g[f"vpe_call{k}_point_coords"])
        assert maxdiff(tok.tokens, g[f"vpe_call{k}_query_feats_dense"][:, :, 0]) < TOL
        assert maxdiff(tok.pe, g[f"vpe_call{k}_query_pe_dense"][:, :, 0]) < TOL
    for clip in range(2):
        pq, out = seen["prompts"][clip], seen["out"][clip]
        assert maxdiff(pq.content, g[f"fpe_clip{clip}_prompt_output"]) < TOL
        assert maxdiff(pq.dense, g[f"fpe_clip{clip}_prompt_feats_dense"]) < TOL
        assert maxdiff(pq.dense_pos, g[f"fpe_clip{clip}_prompt_pe_dense"]) < TOL
        assert maxdiff(out.pred_masks[out.num_learnable:], g[f"clip{clip}_pred_masks_prompt"][0]) < TOL
        assert maxdiff(out.pred_embds[out.num_learnable:], g[f"clip{clip}_pred_embds_prompt"][0]) < TOL
        assert maxdiff(out.pred_logits[out.num_learnable:], g[f"clip{clip}_pred_logits_prompt"][0]) < TOL
    logits = torch.stack([f[1] for f in frames], 1)
    assert maxdiff(logits, g["vos_mask_logits"]) < TOL
    assert torch.equal(logits > 0, g["vos_masks"] > 0)
    assert maxdiff(torch.stack([f[2] for f in frames], 1), g["vos_embds"]) < TOL
