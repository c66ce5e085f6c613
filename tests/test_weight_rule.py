"""The repository's own weight rule (tests/weight_rule.py), which every parity test uses.

Always run: the fingerprints published with the reference set, integer buffers, the tied temperature, and a
digest over every tensor of the R50 and CLIP text-encoder manifests compared with the digest of the reference
set's own make_weights.py (carried in tests/reference_reduced, so a plain clone checks it too). With the full set
present, also entry-for-entry equality with that make_weights.py, which names the first differing key.
"""
import functools
import importlib.util
import json
import zlib

import pytest
import torch

import weight_rule as rule
from conftest import FULL_REFERENCE, REDUCED_REFERENCE, reference_path

P = "sem_seg_head.predictor."


@functools.cache
def manifest(name):
    """((key, shape, dtype), ...) of a reference key manifest, in state_dict order."""
    entries = json.loads(reference_path(name).read_text())["entries"]
    return tuple((e["key"], tuple(e["shape"]), getattr(torch, e["dtype"])) for e in entries)


def r50_shape(key):
    return dict((k, s) for k, s, _ in manifest("univs_r50_stage3_keys.json"))[key]


def test_published_fingerprints():
    key = "backbone.stem.conv1.weight"
    assert zlib.crc32(key.encode("utf-8")) == 1166582298
    w = rule.make_tensor(key, r50_shape(key))
    assert torch.allclose(w.flatten()[:4], torch.tensor([0.042954, 0.076533, -0.071276, -0.009946]), atol=1e-6)
    assert abs(w.double().sum().item() - -13.888393) < 1e-5
    key = "backbone.stem.conv1.norm.running_var"
    var = rule.make_tensor(key, r50_shape(key))
    assert torch.allclose(var[:4], torch.tensor([1.061759, 1.057676, 1.041924, 1.162469]), atol=1e-6)
    for key, total in ((P + "query_feat.weight", 1.131755), (P + "decoder_norm.weight", 254.807736)):
        assert abs(rule.make_tensor(key, r50_shape(key)).double().sum().item() - total) < 1e-5, key


def test_tied_temperature_takes_reid_value():
    keys = [P + "cls_temp.weight", P + "reid_temp.weight", P + "query_feat.weight"]
    made = rule.make_state_dict({k: torch.empty(r50_shape(k)) for k in keys})
    # the rule's own value, which the official model loses (the set's README says 0.157899, but its own
    # make_weights.py gives 0.1578858, like this one: see the cross-check below)
    assert abs(made[keys[0]].item() - 0.157886) < 1e-6
    effective = rule.official_effective_state_dict(made)
    assert abs(effective[keys[0]].item() - -0.623182) < 1e-6
    assert torch.equal(effective[keys[0]], effective[keys[1]]) and torch.equal(effective[keys[2]], made[keys[2]])
    assert effective[keys[0]].data_ptr() != effective[keys[1]].data_ptr()  # a copy, not an alias
    assert abs(made[keys[0]].item() - 0.157886) < 1e-6  # the input is left alone


def test_integer_buffers():
    index = torch.arange(12).view(3, 4)
    made = rule.make_state_dict({"bn.num_batches_tracked": torch.tensor(5), "attn.relative_position_index": index})
    assert made["bn.num_batches_tracked"].dtype == torch.int64 and made["bn.num_batches_tracked"].item() == 0
    assert torch.equal(made["attn.relative_position_index"], index)
    assert made["attn.relative_position_index"].data_ptr() != index.data_ptr()
    assert rule.make_tensor("attn.relative_position_index", (3, 4), torch.int64) is None


RULE_MANIFESTS = ("univs_r50_stage3_keys.json", "univs_clip_rn50x4_text_encoder_keys.json")


def stored_digests() -> dict:
    return json.loads((REDUCED_REFERENCE / "weight_rule_digest.json").read_text())


def reference_sets_rule():
    path = FULL_REFERENCE / "make_weights.py"
    if not path.is_file():
        return None
    spec = importlib.util.spec_from_file_location("reference_set_make_weights", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_rule_equals_the_reference_sets_own():
    """Every tensor of the R50 and CLIP text-encoder manifests equals the reference set's own rule: through the
    carried digest always, and entry by entry (naming the first differing key) when the full set is here."""
    for name in RULE_MANIFESTS:
        assert rule.rule_digest(rule.make_tensor, reference_path(name)) == stored_digests()[name], name
    theirs = reference_sets_rule()
    if theirs is None:
        return
    swint_int = tuple(e for e in manifest("univs_swint_stage3_keys.json") if not e[2].is_floating_point)
    entries = manifest("univs_r50_stage3_keys.json") + manifest("univs_clip_rn50x4_text_encoder_keys.json")
    assert swint_int and len(entries) == 626 + 149
    for key, shape, dtype in entries + swint_int:
        a, b = rule.make_tensor(key, shape, dtype), theirs.make_tensor(key, shape, dtype)
        assert (a is None) == (b is None), key
        assert a is None or (a.dtype == b.dtype and torch.equal(a, b)), key
    small = entries[:5] + tuple(e for e in entries if e[0].endswith("_temp.weight")) + swint_int[:3]
    sd = {k: torch.ones(s, dtype=d) for k, s, d in small}
    ours, ref = rule.make_state_dict(sd), theirs.make_state_dict(sd)
    assert list(ours) == list(ref) and all(torch.equal(ours[k], ref[k]) for k in ref)
    ours, ref = rule.official_effective_state_dict(ours), theirs.official_effective_state_dict(ref)
    assert list(ours) == list(ref) and all(torch.equal(ours[k], ref[k]) for k in ref)
