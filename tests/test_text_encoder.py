"""CLIP text tower, tokenization, text prompts, category embeddings, loaders and vocabularies (reference stage f)."""
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import load_reference, reference_path
from univs_engine.config import TextEncoderConfig, get_config
from univs_engine.modeling.text_encoder import (
    TextEncoder,
    TextEncoderLoadError,
    TextPromptEncoder,
    load_category_embeddings,
    load_text_encoder,
)
from univs_engine.text import (
    EOT_TOKEN,
    PROMPT_TEMPLATES,
    SOT_TOKEN,
    clean_strings,
    tokenize,
    tokenize_categories,
    tokenize_expressions,
)
from univs_engine import vocabularies as V

EXPRESSION = "a person riding a bike"
TOL = 1e-4
SMALL = get_config("small").text


@pytest.fixture(scope="module", autouse=True)
def _threads():
    n = torch.get_num_threads()
    torch.set_num_threads(min(n, 2))
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def ref_f():
    return load_reference("univs_r50_f_text_prompt.safetensors")


def _filled(cfg, mw):
    model = TextEncoder(cfg).eval().requires_grad_(False)
    model.load_state_dict(mw.make_state_dict(model.state_dict()), strict=True)
    return model


@pytest.fixture(scope="module")
def rn50x4(make_weights):
    return _filled(TextEncoderConfig(), make_weights)


@pytest.fixture(scope="module")
def small(make_weights):
    return _filled(SMALL, make_weights)


# ---------------------------------------------------------------------------------------------------------------
# tokenization
# ---------------------------------------------------------------------------------------------------------------
def test_token_ids_match_reference(ref_f):
    ids = tokenize_expressions([EXPRESSION])
    assert ids.dtype == torch.int64 and ids.shape == (1, 81, 77)
    assert torch.equal(ids, ref_f["token_ids"])


def test_templates():
    assert len(PROMPT_TEMPLATES) == 81 and len(set(PROMPT_TEMPLATES)) == 81
    assert PROMPT_TEMPLATES[0] == "{}." and PROMPT_TEMPLATES[1] == "a photo of a {}."
    assert PROMPT_TEMPLATES[-1] == "a tattoo of the {}."


def test_truncation_keeps_no_eot():
    ids = tokenize(["dog " * 100])[0]
    assert ids.shape == (77,) and ids[0] == SOT_TOKEN
    assert (ids == EOT_TOKEN).sum() == 0 and (ids != 0).all()  # EOT dropped, not re-appended
    import open_clip

    assert open_clip.tokenize(["dog " * 100])[0, -1] == EOT_TOKEN  # open_clip's own __call__ differs
    short = tokenize(["a dog"])[0]
    assert short[:4].tolist() == [SOT_TOKEN, 320, 1929, EOT_TOKEN] and (short[4:] == 0).all()


def test_cleaning():
    assert clean_strings("Giant_panda (2), left-most/right!") == "giant panda  left most right"
    assert clean_strings(["A.B", "x#y;z"]) == ["ab", "xyz"]
    # the tokenizer itself: html unescape, whitespace collapse, lower case
    assert torch.equal(tokenize("A   Dog &amp; cat"), tokenize("a dog & cat"))
    # category rule: clean_strings, then '/' ',' removed and '+' -> ' ' inside the templates
    a = tokenize_categories(["Cigar/Cigarette "])[0]
    b = tokenize_expressions(["cigar cigarette"])[0]
    assert torch.equal(a, b)


# ---------------------------------------------------------------------------------------------------------------
# tower: keys, weight rule, numerics against stage (f)
# ---------------------------------------------------------------------------------------------------------------
def test_key_manifest(rn50x4):
    manifest = json.loads(reference_path("univs_clip_rn50x4_text_encoder_keys.json").read_text())
    want = {e["key"]: tuple(e["shape"]) for e in manifest["entries"]}
    got = {k: tuple(v.shape) for k, v in rn50x4.state_dict().items()}
    assert got == want
    assert len(got) == manifest["num_state_dict_entries"] == 149
    assert sum(p.numel() for p in rn50x4.parameters()) == manifest["total_parameters"]
    assert all(v.dtype == torch.float32 for v in rn50x4.state_dict().values())


def test_weight_rule_fingerprint(rn50x4):
    w = rn50x4.token_embedding.weight
    assert torch.allclose(w.flatten()[:4], torch.tensor([-0.025314, -0.026409, 0.049337, 0.015198]), atol=1e-6)
    assert abs(w.double().sum().item() - 177.872186) < 1e-5


def test_encode_text_matches_reference(rn50x4, ref_f):
    ids = ref_f["token_ids"][0]
    with torch.no_grad():
        words, eot = rn50x4.encode_text(ids[:4])
        eot_all = rn50x4.encode_eot(ids)
    assert words.shape == (4, 77, 640) and eot.shape == (4, 640)
    word_key, eot_key = "text_word_feats_template0", "text_eot_feats_all_templates"
    err_words = (ref_f.pick(word_key, words[0]) - ref_f[word_key]).abs().max().item()
    err_eot4 = (ref_f.pick(eot_key, eot) - ref_f[eot_key][:4]).abs().max().item()
    err_eot = (ref_f.pick(eot_key, eot_all) - ref_f[eot_key]).abs().max().item()
    print(f"max abs err: word feats {err_words:.2e}, eot (full length) {err_eot4:.2e}, eot (trimmed) {err_eot:.2e}")
    assert err_words < TOL and err_eot4 < TOL and err_eot < TOL
    assert (eot_all[:4] - eot).abs().max().item() < 1e-5  # length trimming changes nothing


def test_expression_prompt_matches_reference(rn50x4, ref_f):
    penc = TextPromptEncoder(rn50x4)
    sentence, words = penc.encode_expressions([EXPRESSION])
    assert sentence.shape == (1, 640) and words.shape == (1, 77, 640)
    ref_s, ref_w = ref_f["exp_sentence_feats"], ref_f["exp_word_feats"]  # both stored whole
    for t in range(ref_s.shape[1]):  # the reference repeats over T = 3 frames
        assert torch.equal(ref_s[:, t], ref_s[:, 0]) and torch.equal(ref_w[:, :, t], ref_w[:, :, 0])
    err_s = (sentence - ref_s[:, 0]).abs().max().item()
    err_w = (words - ref_w[:, :, 0]).abs().max().item()
    print(f"max abs err: exp_sentence_feats {err_s:.2e}, exp_word_feats {err_w:.2e}")
    assert err_s < TOL and err_w < TOL
    # batching several expressions gives the same rows
    s2, w2 = penc.encode_expressions(["the dog on the left", EXPRESSION])
    assert (s2[1] - sentence[0]).abs().max() < 1e-5 and (w2[1] - words[0]).abs().max() < 1e-5
    assert penc.encode_expressions([])[0].shape == (0, 640)


# ---------------------------------------------------------------------------------------------------------------
# category embeddings and their caches (small tower)
# ---------------------------------------------------------------------------------------------------------------
NAMES = ["person", "giant_panda", "Cigar/Cigarette", "hair drier", "wall-other-merged", "Bulletin+Board (x2)"]


def test_category_embeddings_follow_official_procedure(small):
    penc = TextPromptEncoder(small, max_tokens=300)  # small budget: several chunks
    emb = penc.encode_categories(NAMES)
    assert emb.shape == (len(NAMES), 128) and emb.dtype == torch.float32
    with torch.no_grad():
        for i, name in enumerate(NAMES):  # literal procedure: full-length forward of the 81 templates, mean of EOTs
            ids = tokenize_categories([name])[0]
            _, eot = small.encode_text(ids)
            assert (emb[i] - eot.mean(0)).abs().max().item() < 1e-5


def test_category_memory_cache(small, monkeypatch):
    penc = TextPromptEncoder(small)
    first = penc.encode_categories(NAMES)
    monkeypatch.setattr(penc, "_compute_categories", lambda *a, **k: pytest.fail("recomputed"))
    second = penc.encode_categories(NAMES)
    assert torch.equal(first, second)
    second.zero_()  # callers get copies
    assert torch.equal(penc.encode_categories(NAMES), first)
    monkeypatch.undo()
    # new weights invalidate the cache
    sd = {k: v.clone() for k, v in small.state_dict().items()}
    model2 = TextEncoder(SMALL).eval()
    model2.load_state_dict(sd)
    penc2 = TextPromptEncoder(model2)
    base = penc2.encode_categories(NAMES[:2])
    sd["text_projection"] = sd["text_projection"] * 2
    model2.load_state_dict(sd)
    assert torch.allclose(penc2.encode_categories(NAMES[:2]), base * 2, atol=1e-5)


def test_category_memory_cache_is_a_bounded_lru_on_the_cpu(small, monkeypatch):
    penc = TextPromptEncoder(small)
    computed = []

    def fake(names, clean):
        computed.append(names[0])
        return torch.full((len(names), penc.embed_dim), float(len(computed)), dtype=small.dtype)

    monkeypatch.setattr(penc, "_compute_categories", fake)
    vocab = [[f"class {i}"] for i in range(TextPromptEncoder.MEMORY_ENTRIES + 4)]
    for v in vocab:
        penc.encode_categories(v)
    assert TextPromptEncoder.MEMORY_ENTRIES == 16 and len(penc._memory) == 16  # the 4 oldest were dropped
    assert all(t.device.type == "cpu" for t in penc._memory.values())
    penc.encode_categories(vocab[4])  # the oldest kept one becomes the most recent...
    penc.encode_categories(vocab[0])  # ...so a dropped one, computed again, evicts vocab[5] instead
    assert computed[-1] == "class 0" and len(computed) == len(vocab) + 1
    penc.encode_categories(vocab[4])
    assert len(computed) == len(vocab) + 1  # still cached
    penc.encode_categories(vocab[5])
    assert computed[-1] == "class 5"  # it had been evicted
    out = penc.encode_categories(vocab[4])
    out.zero_()  # callers get copies, on the encoder's device and dtype
    assert penc.encode_categories(vocab[4]).abs().sum() > 0 and out.dtype == small.dtype


def test_category_disk_cache(small, tmp_path, monkeypatch):
    penc = TextPromptEncoder(small, cache_dir=tmp_path)
    emb = penc.encode_categories(NAMES)
    path = penc.cache_path(NAMES)
    assert path.is_file() and [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp file left
    assert torch.equal(load_file(str(path))["embeddings"], emb)
    # a fresh encoder with the same weights reads the file instead of computing
    penc2 = TextPromptEncoder(small, cache_dir=tmp_path)
    monkeypatch.setattr(penc2, "_compute_categories", lambda *a, **k: pytest.fail("recomputed"))
    assert torch.equal(penc2.encode_categories(NAMES), emb)
    monkeypatch.undo()
    # other vocabulary -> other file; a corrupt file is recomputed and rewritten
    assert penc.cache_path(NAMES[:3]) != path
    path.write_bytes(b"garbage")
    penc3 = TextPromptEncoder(small, cache_dir=tmp_path)
    assert torch.equal(penc3.encode_categories(NAMES), emb)
    assert torch.equal(load_file(str(path))["embeddings"], emb)


# ---------------------------------------------------------------------------------------------------------------
# loaders
# ---------------------------------------------------------------------------------------------------------------
def _same_outputs(a, b):
    ids = tokenize(["a photo of a dog.", EXPRESSION])
    with torch.no_grad():
        return all(torch.equal(x, y) for x, y in zip(a.encode_text(ids), b.encode_text(ids)))


def test_loader_formats(small, tmp_path):
    sd = small.state_dict()
    torch.save({"model": sd, "iteration": 5}, tmp_path / "wrapped.pth")
    torch.save(sd, tmp_path / "bare.pth")
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "w.safetensors"))
    torch.save({"model": {**{f"lang_encoder.{k}": v for k, v in sd.items()}, "backbone.stem.weight": torch.zeros(1)}},
               tmp_path / "regionclip_full.pth")
    for name in ("wrapped.pth", "bare.pth", "w.safetensors", "regionclip_full.pth"):
        model = load_text_encoder(tmp_path / name, SMALL)
        assert not model.training and _same_outputs(model, small), name


def test_loader_errors(small, tmp_path):
    sd = small.state_dict()
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"this is not a checkpoint")
    with pytest.raises(TextEncoderLoadError, match="bad.pth"):
        load_text_encoder(bad, SMALL)

    torch.save({"model": sd}, tmp_path / "full.pth")
    data = (tmp_path / "full.pth").read_bytes()
    (tmp_path / "trunc.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(TextEncoderLoadError, match="trunc.pth"):
        load_text_encoder(tmp_path / "trunc.pth", SMALL)

    manifest = json.loads(reference_path("univs_r50_stage3_keys.json").read_text())
    univs = {e["key"]: torch.zeros(1) for e in manifest["entries"][:50]}
    univs.update({e["key"]: torch.zeros(1) for e in manifest["entries"][-20:]})
    torch.save({"model": univs}, tmp_path / "univs_r50_stage3.pth")
    with pytest.raises(TextEncoderLoadError, match="UniVS model checkpoint"):
        load_text_encoder(tmp_path / "univs_r50_stage3.pth", SMALL)

    broken = dict(sd)
    del broken["ln_final.weight"]
    broken["extra.weight"] = torch.zeros(3)
    broken["text_projection"] = torch.zeros(128, 64)
    torch.save(broken, tmp_path / "broken.pth")
    with pytest.raises(TextEncoderLoadError) as info:
        load_text_encoder(tmp_path / "broken.pth", SMALL)
    msg = str(info.value)
    assert "broken.pth" in msg and "missing keys (1): ln_final.weight" in msg
    assert "unexpected keys (1): extra.weight" in msg and "text_projection: file (128, 64) vs model (128, 128)" in msg

    with pytest.raises(TextEncoderLoadError, match="mis-shaped"):  # small weights into the RN50x4 tower
        load_text_encoder(tmp_path / "full.pth", TextEncoderConfig())
    with pytest.raises(FileNotFoundError):
        load_text_encoder(tmp_path / "missing.pth", SMALL)


def test_category_embedding_file(tmp_path, make_weights):
    emb = make_weights.make_tensor("clip_cls_text_emb", (3938, 640))
    torch.save(emb, tmp_path / "combined_datasets_cls_emb_rn50x4.pth")
    got = load_category_embeddings(tmp_path / "combined_datasets_cls_emb_rn50x4.pth")
    assert torch.equal(got, emb)
    assert torch.equal(V.slice_combined_embeddings(got, "vipseg"), emb[2924:3048])
    torch.save(emb[:100], tmp_path / "short.pth")
    with pytest.raises(TextEncoderLoadError, match=r"\(100, 640\)"):
        load_category_embeddings(tmp_path / "short.pth")
    torch.save({"emb": emb}, tmp_path / "dict.pth")
    with pytest.raises(TextEncoderLoadError, match="bare tensor"):
        load_category_embeddings(tmp_path / "dict.pth")
    with pytest.raises(ValueError):
        V.slice_combined_embeddings(emb[:3000], "ytvis19")


# ---------------------------------------------------------------------------------------------------------------
# vocabularies
# ---------------------------------------------------------------------------------------------------------------
def test_vocabularies():
    lengths = {"ytvis21": 40, "ytvis_2021": 40, "ytvis19": 40, "ovis": 25, "vipseg": 124, "vspw": 124,
               "coco_panoptic": 133, "coco": 80}
    for name, n in lengths.items():
        assert len(V.get_vocabulary(name)) == n and len(V.get_labels(name)) == n, name
        assert V.combined_rows(name).stop - V.combined_rows(name).start == n
    assert V.get_vocabulary("ytvis19")[:3] == ["person", "giant_panda", "lizard"]
    assert V.get_vocabulary("ovis")[-1] == "Vehical" and V.get_labels("ovis")[-1] == "vehicle"
    assert V.get_vocabulary("coco") == V.get_vocabulary("coco_panoptic")[:80]
    thing_ids = [3, 5, 9, 11, 42, 44, 45] + list(range(47, 54)) + [55, 56, 57] + list(range(61, 67)) + [73, 75] \
        + list(range(77, 81)) + list(range(83, 94)) + [96, 97, 98] + list(range(100, 104)) + list(range(107, 111)) \
        + list(range(115, 120)) + [123, 124]
    assert [i + 1 for i in range(124) if V.is_thing("vipseg", i)] == thing_ids and len(thing_ids) == 58
    assert V.thing_mask("vspw").sum() == 58
    assert all(V.is_thing("coco_panoptic", i) for i in range(80)) and not any(
        V.is_thing("coco_panoptic", i) for i in range(80, 133))
    assert all(V.is_thing("ytvis21", i) for i in range(40))
    with pytest.raises(IndexError):
        V.is_thing("ovis", 25)
    with pytest.raises(KeyError):
        V.get_vocabulary("nope")
    assert V.COMBINED_INDEX["ytvis19"] == (40, 3048) and V.COMBINED_INDEX["entityseg_panoptic"] == (644, 3294)
    assert max(s + n for n, s in V.COMBINED_INDEX.values()) == V.COMBINED_NUM_ROWS == 3938
    assert V.get_dataset_ids("coco_panoptic")[-1] == 200 and V.get_dataset_ids("vipseg") == list(range(1, 125))
    assert V.dataset_key("ytvis_2021_val") == "ytvis21" and V.dataset_key("vspw_val") == "vspw"
    assert V.dataset_key("coco_2017_val_panoptic") == "coco_panoptic" and V.dataset_key("davis17_val") is None
