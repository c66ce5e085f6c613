"""Whole-model checks: key manifests of every official config, end-to-end parity from the frames,
and checkpoint loading/conversion with clear errors."""
import hashlib
import json
import os
import pickle

import pytest
import torch
from safetensors.torch import save_file

from conftest import reference_r50, load_reference, reference_path
from univs_engine.checkpoint import CheckpointError, convert_checkpoint, load_checkpoint
from univs_engine.config import get_config
from univs_engine.inference.core import ClipGeometry
from univs_engine.inference.vos import PromptedClipLoop
from univs_engine.presets import TaskSettings
from univs_engine.modeling.univs import build_univs

MANIFESTS = {"r50": "univs_r50_stage3_keys.json", "swint": "univs_swint_stage3_keys.json",
             "swinb": "univs_swinb_stage3_keys.json", "swinl": "univs_swinl_stage3_keys.json"}


def meta_state_dict(name):
    with torch.device("meta"):
        return build_univs(get_config(name)).state_dict()


@pytest.mark.parametrize("name", sorted(MANIFESTS))
def test_state_dict_matches_official_manifest(name):
    manifest = json.loads(reference_path(MANIFESTS[name]).read_text())
    ours = meta_state_dict(name)
    theirs = {e["key"]: (tuple(e["shape"]), e["dtype"]) for e in manifest["entries"]}
    assert sorted(set(theirs) - set(ours)) == []  # missing
    assert sorted(set(ours) - set(theirs)) == []  # unexpected
    bad = [k for k, v in ours.items() if (tuple(v.shape), str(v.dtype).removeprefix("torch.")) != theirs[k]]
    assert bad == []
    assert len(ours) == manifest["num_state_dict_entries"]


DEVICE = os.environ.get("UNIVS_TEST_DEVICE", "cpu")  # e.g. cuda: the same parity check on a GPU


@pytest.fixture(scope="module")
def r50():
    return reference_r50(DEVICE)


@torch.no_grad()
def test_end_to_end_from_frames_matches_stage_g(r50, make_weights):
    """Stage (g) starting from the normalised frames: encoder + pixel decoder + decoder + clip loop."""
    frames = load_reference("univs_r50_a_input.safetensors", DEVICE)["frames_normalized"]
    e = load_reference("univs_r50_e_visual_prompt.safetensors")
    g = load_reference("univs_r50_g_vos_e2e.safetensors")
    emb = make_weights.make_tensor("clip_cls_text_emb", (3938, 640)).to(DEVICE)
    loop = PromptedClipLoop(r50, TaskSettings(clip_len=2, prompt_tokens=32),
                            ClipGeometry(3, (256, 256), (256, 256), (256, 256)), class_embeddings=emb)
    torch.manual_seed(0)
    mask = e["prompt_mask_frame0"].float()[None].to(DEVICE)
    out = list(loop.run(lambda a, b: frames[a:b], 1, {0: (torch.tensor([0]), mask)}))
    logits = torch.stack([o[1] for o in out], 1).cpu()
    assert (g.pick("vos_mask_logits", logits) - g["vos_mask_logits"]).abs().max() < 1e-4
    assert torch.equal(g.pick("vos_masks", logits > 0), g["vos_masks"] > 0)


def test_preprocessing_matches_stage_a():
    from univs_engine.io.video import preprocess_frames

    a = load_reference("univs_r50_a_input.safetensors")
    raw = a["preproc_raw_uint8_chw"].permute(1, 2, 0)[None]  # already at its test size: no resize
    x, size = preprocess_frames(raw, min_size=200, max_size=1333)
    assert size == (200, 300)
    assert (a.pick("preproc_normalized_padded", x[0]) - a["preproc_normalized_padded"]).abs().max() < 1e-4


# ---------------------------------------------------------------- loading and conversion
@pytest.fixture(scope="module")
def small_ckpt(tmp_path_factory, make_weights):
    model = build_univs(get_config("small"))
    sd = make_weights.make_state_dict(model.state_dict())
    path = tmp_path_factory.mktemp("ckpt") / "small.pth"
    ema = {k.replace("backbone.", "backbone_t.", 1).replace("sem_seg_head.", "sem_seg_head_t.", 1): v + 1
           for k, v in sd.items()}
    torch.save({"model": {**sd, **ema}, "iteration": 7}, path)
    return path, sd


def test_official_layout_loads_strictly_with_ema_choice(small_ckpt):
    path, sd = small_ckpt
    student = load_checkpoint(path)
    key = "sem_seg_head.predictor.query_feat.weight"
    assert torch.equal(student.state_dict()[key], sd[key])
    teacher = load_checkpoint(path, use_ema=True)
    assert torch.equal(teacher.state_dict()[key], sd[key] + 1)
    # the tied temperature quirk: cls_temp takes reid_temp's value
    p = "sem_seg_head.predictor."
    assert torch.equal(student.state_dict()[p + "cls_temp.weight"], sd[p + "reid_temp.weight"])


def test_convert_is_atomic_and_never_touches_the_source(small_ckpt, tmp_path):
    path, sd = small_ckpt
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    dst = convert_checkpoint(path, tmp_path / "small.safetensors")
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before
    assert [p.name for p in tmp_path.iterdir()] == ["small.safetensors"]  # no temp file left behind
    model = load_checkpoint(dst)
    assert model.cfg.name == "small"
    with pytest.raises(CheckpointError, match="already exists"):
        convert_checkpoint(path, dst)
    with pytest.raises(CheckpointError, match="onto itself"):
        convert_checkpoint(dst, dst, overwrite=True)


def expect_error(path, match, **kw):
    with pytest.raises(CheckpointError, match=match) as info:
        load_checkpoint(path, **kw)
    assert str(path) in str(info.value)  # every message names the file


def test_clear_errors_for_bad_files(small_ckpt, tmp_path):
    path, sd = small_ckpt
    expect_error(tmp_path / "nope.pth", "does not exist")
    (tmp_path / "empty.pth").write_bytes(b"")
    expect_error(tmp_path / "empty.pth", "empty")
    (tmp_path / "junk.pth").write_bytes(b"this is not a checkpoint at all" * 10)
    expect_error(tmp_path / "junk.pth", "not a readable PyTorch checkpoint")
    data = path.read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    expect_error(tmp_path / "cut.pth", "truncated")
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "ok.safetensors"))
    cut = (tmp_path / "ok.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(cut[: len(cut) // 2])
    expect_error(tmp_path / "cut.safetensors", "truncated or corrupt")
    torch.save({"token_embedding.weight": torch.zeros(3, 4), "positional_embedding": torch.zeros(2, 4)},
               tmp_path / "clip.pth")
    expect_error(tmp_path / "clip.pth", "text-encoder file")
    torch.save({"model": {"encoder.layer.0.weight": torch.zeros(2)}}, tmp_path / "other.pth")
    expect_error(tmp_path / "other.pth", "not a UniVS checkpoint")
    expect_error(path, "does not fit the swint model", config="swint")
    with open(tmp_path / "evil.pth", "wb") as f:
        pickle.dump({"model": {"x": torch.zeros(1)}, "payload": print}, f)
    expect_error(tmp_path / "evil.pth", "code")
