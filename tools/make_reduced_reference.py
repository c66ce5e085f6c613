"""Make tests/reference_reduced/ (carried in the repository) from the full UniVS reference set.

The parity tests use the full set (../shared/reference or $UNIVS_REFERENCE) when it exists, else this reduced
one, against the same 1e-4 bounds. What travels, per file and key (``PLAN``):

* ``COPY``: the file as it is (stage-(a) frames and preprocessing example, key manifests);
* ``WHOLE``: the tensor as it is: inputs a test feeds to the port (prompt mask, text features), exact data
  (token ids, masks, point coordinates) and tensors that are already small;
* ``(lead, step)``: ``official.flatten(lead)[..., ::step]``: the first ``lead`` dims (frames, decoder layers,
  templates) kept, every ``step``-th element of the rest. ``step`` is a prime that divides no dim size,
  so the kept elements walk over all channels, queries and pixel positions instead of repeating one column;
* keys the tests do not read are left out.

Inputs the tests need in full but which are too large to carry (the stage-(b) backbone and stage-(c) pixel
decoder outputs that feed the next stage) are recomputed by the port in reduced mode from the carried frames;
those outputs are themselves compared with the reduced official tensors.

Deterministic: one metadata entry per file (safetensors writes several in hash order), tensors in the
library's fixed order, so re-running gives byte-identical files.

    python tools/make_reduced_reference.py [--src ../shared/reference] [--dst tests/reference_reduced]
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import math
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import weight_rule  # noqa: E402  (the digest is computed the way the test recomputes it)

ROOT = Path(__file__).resolve().parents[1]
COPY, WHOLE = "copy", "whole"

PLAN = {
    "univs_r50_stage3_keys.json": COPY,
    "univs_swint_stage3_keys.json": COPY,
    "univs_swinb_stage3_keys.json": COPY,
    "univs_swinl_stage3_keys.json": COPY,
    "univs_clip_rn50x4_text_encoder_keys.json": COPY,
    "univs_r50_a_input.safetensors": COPY,  # frames are every stage's input; test_io reads the rest whole
    "univs_r50_b_backbone.safetensors": {
        "res2_frame0": (1, 53), "res3_frame0": (1, 53), "res4": (1, 53), "res5": (1, 53),
    },
    "univs_r50_c_pixel_decoder.safetensors": {
        "mask_features": (1, 53), "multi_scale_0": (1, 7), "multi_scale_1": (1, 13), "multi_scale_2": (1, 29),
    },
    "univs_r50_d_decoder_learnable.safetensors": {
        "pred_embds_per_layer": (1, 53), "pred_logits": (0, 53), "pred_masks": (0, 53),
    },
    "univs_r50_e_visual_prompt.safetensors": {
        "prompt_mask_frame0": WHOLE, "vpe_point_coords": WHOLE, "vpe_query_feats_dense": WHOLE,
        "vpe_query_pe_dense": WHOLE, "prompt_output": WHOLE, "prompt_query_embed": WHOLE,
        "prompt_feats_dense": (0, 7), "prompt_pe_dense": (0, 7),
        "pred_masks_prompt": WHOLE, "pred_embds_prompt": WHOLE, "pred_logits_prompt": WHOLE,
        "vos_mask_logits": (0, 11), "vos_embds": WHOLE,
    },
    "univs_r50_f_text_prompt.safetensors": {
        "token_ids": WHOLE, "text_word_feats_template0": (0, 13), "text_eot_feats_all_templates": (1, 13),
        "exp_sentence_feats": WHOLE, "exp_word_feats": WHOLE,  # the decoder's text inputs
        "prompt_feats_dense_l2v": (0, 7), "prompt_output": WHOLE, "prompt_query_embed": WHOLE,
        "pred_embds_prompt_per_layer": WHOLE, "pred_masks_prompt": WHOLE, "pred_logits": WHOLE,
        "pred_reid_logits": WHOLE,
    },
    "univs_r50_g_vos_e2e.safetensors": {
        **{f"vpe_call{k}_{n}": WHOLE for k in range(2) for n in ("point_coords", "query_feats_dense",
                                                                  "query_pe_dense")},
        **{f"fpe_clip{c}_prompt_output": WHOLE for c in range(2)},
        **{f"fpe_clip{c}_prompt_{n}": (0, 7) for c in range(2) for n in ("feats_dense", "pe_dense")},
        **{f"clip{c}_pred_{n}_prompt": WHOLE for c in range(2) for n in ("masks", "embds", "logits")},
        "vos_mask_logits": (0, 11), "vos_masks": WHOLE, "vos_embds": WHOLE,
    },
    "univs_r50_h_vos_long.safetensors": {  # tests/test_parity_long.py
        **{k: WHOLE for k in ("frames_uint8_thwc", "prompt_mask_frame0", "pred_masks", "mask_logits_sum",
                              "vos_boxes", "vos_embds", "prompt_cells_per_frame", "vpe_key_frame",
                              "vpe_point_coords", "vpe_dense_cell_idx", "rng_index")},
        **{f"mask_logits_t{t}": (0, 7) for t in (0, 5, 11)},
        # the recorded torch.randperm draws: cell draws (odd k, <= 356 long) whole; of the point draws (even k,
        # up to 65536 long) only the first element is used, and (0, 53) keeps it
        **{f"rng_{k:03d}_randperm": WHOLE if k % 2 else (0, 53) for k in range(22)},
    },
    "univs_swint_bde_small.safetensors": {
        "backbone_res2_frame0": (1, 53), "backbone_res3_frame0": (1, 29), "backbone_res4_frame0": (1, 13),
        "backbone_res5_frame0": (1, 7), "pixel_decoder_multi_scale_0_frame0": (1, 7),
        "pixel_decoder_multi_scale_1_frame0": (1, 13),
        "pixel_decoder_multi_scale_2_frame0_sum_over_channels": WHOLE,
        "pixel_decoder_mask_features_frame0_sum_over_channels": WHOLE,
    },
}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def reduce_tensor(t: torch.Tensor, lead: int, step: int) -> torch.Tensor:
    """t [d0..dn] -> [d0..d(lead-1), ceil(prod(d_lead..dn) / step)]: every step-th element past the lead dims."""
    return t.flatten(lead)[..., ::step].contiguous()


def reduce_file(src: Path, dst: Path, plan: dict) -> None:
    """Write the planned keys of ``src``; the metadata says how each reduced key was taken."""
    tensors = load_file(str(src))
    out, specs = {}, {}
    for key, how in plan.items():
        t = tensors[key]
        if how == WHOLE:
            out[key] = t.contiguous()
            continue
        lead, step = how
        assert all(math.gcd(n, step) == 1 for n in t.shape[lead:]), (key, tuple(t.shape), step)
        out[key] = reduce_tensor(t, lead, step)
        specs[key] = {"lead": lead, "step": step, "shape": list(t.shape)}
    meta = {"source": src.name, "source_sha256": sha256(src), "keys": specs}
    save_file(out, str(dst), metadata={"reduction": json.dumps(meta, sort_keys=True)})


RULE_DIGEST = "weight_rule_digest.json"
RULE_MANIFESTS = ("univs_r50_stage3_keys.json", "univs_clip_rn50x4_text_encoder_keys.json")


def write_rule_digest(src: Path, dst: Path) -> None:
    """The reference set's own rule (src/make_weights.py), fingerprinted, so a clone without the set can still
    check the repository's rule against it entry for entry."""
    spec = importlib.util.spec_from_file_location("reference_set_make_weights", src / "make_weights.py")
    theirs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(theirs)
    digests = {name: weight_rule.rule_digest(theirs.make_tensor, src / name) for name in RULE_MANIFESTS}
    dst.write_text(json.dumps(digests, indent=1, sort_keys=True) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--src", type=Path, default=ROOT.parent / "shared" / "reference")
    parser.add_argument("--dst", type=Path, default=ROOT / "tests" / "reference_reduced")
    args = parser.parse_args()
    args.dst.mkdir(parents=True, exist_ok=True)
    for name, plan in PLAN.items():
        src, dst = args.src / name, args.dst / name
        if plan == COPY:
            shutil.copyfile(src, dst)
        else:
            reduce_file(src, dst, plan)
        dst.chmod(0o644)  # safetensors writes 0600; the copies get the umask's mode
        print(f"{dst.stat().st_size / 1e6:8.3f} MB  {sha256(dst)[:16]}  {name}")
    write_rule_digest(args.src, args.dst / RULE_DIGEST)
    total = sum(p.stat().st_size for p in args.dst.iterdir())
    print(f"{total / 1e6:8.3f} MB  total in {args.dst}")


if __name__ == "__main__":
    main()
