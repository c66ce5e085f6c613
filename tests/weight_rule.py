"""Deterministic synthetic weights for the UniVS parity references: this repository's own implementation.

The official reference numbers were computed with weights that depend only on a state_dict entry's key, shape
and dtype, so any implementation of the same rule reproduces them without shipping weights:

* the key's CRC-32 (of its UTF-8 bytes) seeds a fresh CPU ``torch.Generator``, which draws a float32 standard
  normal tensor ``r`` of the entry's shape;
* statistics: ``...running_var`` is ``1 + 0.1 |r|``, ``...running_mean`` is ``0.1 r``;
* rank-1 tensors whose key ends in ``.weight`` (norm scales) are ``1 + 0.1 r``; any other rank 0 or 1 tensor
  is ``0.02 r``;
* everything of rank >= 2 is ``r`` divided by the square root of its fan-in (product of all dims but the first);
* integer entries: ``...num_batches_tracked`` counters are zero, other integer buffers (e.g. Swin's
  ``relative_position_index``) are structural and keep the model's own value (``make_tensor`` gives None);
* floating results are cast to the entry's dtype.

The same rule, under made-up keys, gives the CLIP class-name embeddings: ``make_tensor("clip_cls_text_emb",
(3938, 640))``. tests/test_weight_rule.py pins published fingerprints and, when the full reference set is
present, compares this module with the reference's own implementation on every manifest key.
"""
from __future__ import annotations

import math
import zlib

import torch

# The official decoder builds cls_temp and reid_temp on one shared storage; loading a state_dict writes
# cls_temp, then reid_temp into it, so the reference numbers use reid_temp's value for both.
TIED_KEYS = {"sem_seg_head.predictor.cls_temp.weight": "sem_seg_head.predictor.reid_temp.weight"}


def _standard_normal(key: str, shape: tuple[int, ...]) -> torch.Tensor:
    """float32 N(0, 1) tensor of ``shape``, seeded by CRC-32 of the key alone."""
    generator = torch.Generator().manual_seed(zlib.crc32(key.encode("utf-8")))
    return torch.randn(shape, generator=generator, dtype=torch.float32)


def _scaled(key: str, r: torch.Tensor) -> torch.Tensor:
    """The per-kind scaling of the normal draw ``r`` (any shape, float32)."""
    if key.endswith("running_var"):
        return 1.0 + 0.1 * r.abs()
    if key.endswith("running_mean"):
        return 0.1 * r
    if r.dim() == 1 and key.endswith(".weight"):
        return 1.0 + 0.1 * r
    if r.dim() <= 1:
        return 0.02 * r
    return r / math.sqrt(math.prod(r.shape[1:]))


def make_tensor(key: str, shape, dtype: torch.dtype = torch.float32) -> torch.Tensor | None:
    """The rule's value for one entry: a tensor of ``shape``/``dtype``, or None for a structural integer buffer."""
    shape = tuple(int(n) for n in shape)
    if not dtype.is_floating_point:
        # The draw would not change anything here: every key has its own generator.
        return torch.zeros(shape, dtype=dtype) if key.endswith("num_batches_tracked") else None
    return _scaled(key, _standard_normal(key, shape)).to(dtype)


def make_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Same keys (in order), shapes and dtypes as ``state_dict``, values from the rule (structural buffers copied)."""
    out = {}
    for key, value in state_dict.items():
        made = make_tensor(key, value.shape, value.dtype)
        out[key] = value.clone() if made is None else made
    return out


def official_effective_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What the official model holds after loading ``state_dict``: tied entries take their source's value."""
    out = dict(state_dict)
    for key, source in TIED_KEYS.items():
        if key in out and source in out:
            out[key] = out[source].clone()
    return out


def rule_digest(make_tensor, manifest) -> str:
    """sha256 over every tensor ``make_tensor`` makes for a key-manifest file (key, dtype and bytes, in order)."""
    import hashlib
    import json
    from pathlib import Path

    h = hashlib.sha256()
    for e in json.loads(Path(manifest).read_text())["entries"]:
        t = make_tensor(e["key"], tuple(e["shape"]), getattr(torch, e["dtype"]))
        h.update(e["key"].encode())
        h.update(b"keep" if t is None else str(t.dtype).encode() + t.contiguous().numpy().tobytes())
    return h.hexdigest()
