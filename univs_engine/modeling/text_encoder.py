"""CLIP text tower used by UniVS for text prompts (RN50x4 text transformer as packaged by RegionCLIP).

* `TextEncoder`: open_clip_torch's `TextTransformer` configured as the official `CLIPLangEncoder` (QuickGELU,
  pre-LN blocks, causal mask, LayerNorm in fp32, bias-free `text_projection` parameter). Its state-dict keys are
  the official unprefixed ones (`token_embedding.weight`, `transformer.resblocks.{i}.attn.in_proj_weight`, ...),
  so the RegionCLIP lang-encoder file loads as it is.
* `TextPromptEncoder`: expression prompts (81 templates; sentence = mean EOT feature, words = template 0) and
  category embeddings (as the official concept-embedding extraction), with an in-memory and optional on-disk cache.
* `load_text_encoder`, `load_category_embeddings`: loaders for the official files with readable errors.
"""
from __future__ import annotations

import hashlib
import json
import os
import weakref
from collections import OrderedDict
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..atomic import atomic_file
from ..config import TextEncoderConfig
from ..text import (
    CONTEXT_LENGTH,
    NUM_TEMPLATES,
    PROMPT_TEMPLATES,
    clean_strings,
    tokenize_categories,
    tokenize_expressions,
)

try:
    from open_clip.transformer import QuickGELU, TextTransformer
except ImportError as exc:  # pragma: no cover - open_clip_torch is a hard dependency
    raise ImportError("univs_engine's text encoder needs open_clip_torch (pip install open_clip_torch)") from exc

PathLike = Union[str, os.PathLike]

# Bumped whenever tokenization / template / averaging rules change (invalidates on-disk caches).
CACHE_VERSION = "univs-cat-emb-v1"


class _LayerNormFp32(nn.LayerNorm):
    """LayerNorm computed in float32 (input and affine parameters), result cast back to the input dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.float() if self.weight is not None else None
        b = self.bias.float() if self.bias is not None else None
        return F.layer_norm(x.float(), self.normalized_shape, w, b, self.eps).to(x.dtype)


class TextEncoder(TextTransformer):
    """CLIP text transformer with the official UniVS / RegionCLIP key layout."""

    def __init__(self, cfg: Optional[TextEncoderConfig] = None):
        cfg = cfg or TextEncoderConfig()
        super().__init__(
            context_length=cfg.context_length,
            vocab_size=cfg.vocab_size,
            width=cfg.width,
            heads=cfg.heads,
            layers=cfg.layers,
            mlp_ratio=4.0,
            output_dim=cfg.embed_dim,
            pool_type="argmax",
            proj_type="linear",
            proj_bias=False,
            act_layer=QuickGELU,
            norm_layer=_LayerNormFp32,
        )
        self.cfg = cfg

    @property
    def dtype(self) -> torch.dtype:
        return self.transformer.get_cast_dtype()

    @property
    def device(self) -> torch.device:
        return self.token_embedding.weight.device

    def _hidden(self, token_ids: torch.Tensor) -> torch.Tensor:
        """ln_final(transformer(embeddings)) for [N, L] ids, L <= context_length -> [N, L, width]."""
        if token_ids.dim() != 2:
            raise ValueError(f"token ids must be [N, L], got shape {tuple(token_ids.shape)}")
        n_ctx = token_ids.shape[1]
        if n_ctx > self.context_length:
            raise ValueError(f"sequence length {n_ctx} exceeds the context length {self.context_length}")
        token_ids = token_ids.to(self.device)
        dtype = self.dtype
        x = self.token_embedding(token_ids).to(dtype) + self.positional_embedding[:n_ctx].to(dtype)
        x = self.transformer(x, attn_mask=self.attn_mask[:n_ctx, :n_ctx])
        return self.ln_final(x)

    def encode_text(self, token_ids: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """token_ids [N, 77] int64 -> (word_feats [N, 77, D], eot_feats [N, D]).

        word_feats = ln_final(x) @ text_projection for every position (padding included); eot_feats = the word
        feature at argmax(token id) (the EOT token, or the largest id when truncation dropped the EOT).
        """
        x = self._hidden(token_ids)
        words = x @ self.text_projection
        eot = words[torch.arange(words.shape[0], device=words.device), token_ids.to(words.device).argmax(dim=-1)]
        return words, eot

    def encode_eot(self, token_ids: torch.Tensor, max_tokens: int = 16384) -> torch.Tensor:
        """EOT features [N, D] only. The attention is causal, so positions after the EOT cannot change it:
        sequences are grouped by length and cut after their last EOT (same values, a fraction of the work)."""
        n = token_ids.shape[0]
        out = torch.empty(n, self.text_projection.shape[1], dtype=self.dtype, device=self.device)
        if n == 0:
            return out
        eot_pos = token_ids.argmax(dim=-1).cpu()
        order = torch.argsort(eot_pos, stable=True)
        i = 0
        while i < n:
            # grow the chunk while rows * (longest length in chunk) stays within the token budget
            length = int(eot_pos[order[i]]) + 1
            j = i + 1
            while j < n:
                length_j = int(eot_pos[order[j]]) + 1
                if (j - i + 1) * length_j > max_tokens:
                    break
                length = length_j
                j += 1
            idx = order[i:j]
            ids = token_ids[idx.to(token_ids.device), :length]
            x = self._hidden(ids)
            rows = torch.arange(x.shape[0], device=x.device)
            out[idx.to(out.device)] = x[rows, eot_pos[idx].to(x.device)] @ self.text_projection
            i = j
        return out


# ------------------------------------------------------------------------------------------------------------------
# Prompt encoder (expressions and category names) with caching
# ------------------------------------------------------------------------------------------------------------------
def state_dict_fingerprint(module: nn.Module) -> str:
    """sha256 over (key, dtype, shape, bytes) of every state-dict entry."""
    h = hashlib.sha256()
    for key, t in module.state_dict().items():
        t = t.detach().to("cpu").contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


class TextPromptEncoder:
    """Text prompts for UniVS on top of a `TextEncoder`.

    Args:
        encoder: the CLIP text tower (weights loaded).
        cache_dir: optional folder for category-embedding files, keyed by a hash of the weights and vocabulary.
        max_tokens: token budget of one forward pass (rows x sequence length) when only EOT features are needed.
    """

    MEMORY_ENTRIES = 16  # vocabularies kept in memory (the least recently used one goes first)

    def __init__(self, encoder: TextEncoder, cache_dir: Optional[PathLike] = None, max_tokens: int = 16384):
        self.encoder = encoder
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.max_tokens = int(max_tokens)
        # least recently used first; CPU tensors
        self._memory: OrderedDict[Tuple[Tuple[str, ...], bool], torch.Tensor] = OrderedDict()
        self._fingerprint: Optional[str] = None
        ref = weakref.ref(self)

        def _invalidate(module, incompatible_keys):  # new weights -> drop caches
            obj = ref()
            if obj is not None:
                obj.clear_cache()

        encoder.register_load_state_dict_post_hook(_invalidate)

    # -- bookkeeping ---------------------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.encoder.device

    @property
    def embed_dim(self) -> int:
        return int(self.encoder.text_projection.shape[1])

    def clear_cache(self) -> None:
        """Forget cached category embeddings and the weight fingerprint (call after changing weights in place;
        `load_state_dict` does it automatically)."""
        self._memory.clear()
        self._fingerprint = None

    def weights_fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = state_dict_fingerprint(self.encoder)
        return self._fingerprint

    # -- expressions ---------------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_expressions(self, expressions: Sequence[str], clean: bool = True) -> Tuple[torch.Tensor, torch.Tensor]:
        """Encode referring expressions.

        Returns (sentence [N, D], words [N, 77, D]): sentence = unnormalised mean over the 81 templates of the
        EOT features; words = all 77 token features of template 0 ("{expression}."), padding included.
        With clean=True the text is first cleaned like the official dataset mapper (`clean_strings`); the
        official `get_expression_prompt` itself receives already-cleaned strings.
        """
        if isinstance(expressions, str):
            expressions = [expressions]
        expressions = list(expressions)
        if clean:
            expressions = clean_strings(expressions)
        n, d = len(expressions), self.embed_dim
        if n == 0:
            return (torch.zeros(0, d, dtype=self.encoder.dtype, device=self.device),
                    torch.zeros(0, CONTEXT_LENGTH, d, dtype=self.encoder.dtype, device=self.device))
        ids = tokenize_expressions(expressions)  # [N, 81, 77]
        words, eot0 = self.encoder.encode_text(ids[:, 0])  # template 0 needs all 77 positions
        eot_rest = self.encoder.encode_eot(ids[:, 1:].reshape(-1, ids.shape[-1]), self.max_tokens)
        eot = torch.cat([eot0[:, None], eot_rest.view(n, NUM_TEMPLATES - 1, d)], dim=1)  # [N, 81, D]
        return eot.mean(dim=1), words

    # -- categories ----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def _compute_categories(self, names: Sequence[str], clean: bool) -> torch.Tensor:
        ids = tokenize_categories(names, clean=clean)  # [N, 81, 77]
        eot = self.encoder.encode_eot(ids.view(-1, ids.shape[-1]), self.max_tokens)
        return eot.view(len(names), NUM_TEMPLATES, -1).mean(dim=1)

    def _vocab_hash(self, names: Tuple[str, ...], clean: bool) -> str:
        payload = json.dumps(
            {"version": CACHE_VERSION, "clean": clean, "templates": list(PROMPT_TEMPLATES), "names": list(names)},
            ensure_ascii=False,
        )
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()

    def cache_path(self, names: Sequence[str], clean: bool = True) -> Optional[Path]:
        """On-disk cache file of a vocabulary (None without cache_dir)."""
        if self.cache_dir is None:
            return None
        key = hashlib.sha256(
            (self.weights_fingerprint() + self._vocab_hash(tuple(names), clean)).encode()
        ).hexdigest()[:32]
        return self.cache_dir / f"univs_cat_emb_{len(names)}_{key}.safetensors"

    def _read_disk(self, path: Path, names: Tuple[str, ...], clean: bool) -> Optional[torch.Tensor]:
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                emb = f.get_tensor("embeddings")
        except Exception:
            return None  # unreadable / partial file: recompute and overwrite
        if (
            meta.get("weights") != self.weights_fingerprint()
            or meta.get("vocabulary") != self._vocab_hash(names, clean)
            or tuple(emb.shape) != (len(names), self.embed_dim)
        ):
            return None
        return emb

    def _write_disk(self, path: Path, emb: torch.Tensor, names: Tuple[str, ...], clean: bool) -> None:
        from safetensors.torch import save_file

        with atomic_file(path) as tmp:
            save_file(
                {"embeddings": emb.detach().to("cpu", torch.float32).contiguous()},
                str(tmp),
                metadata={
                    "weights": self.weights_fingerprint(),
                    "vocabulary": self._vocab_hash(names, clean),
                    "version": CACHE_VERSION,
                    "names": json.dumps(list(names), ensure_ascii=False),
                },
            )

    def encode_categories(self, names: Sequence[str], clean: bool = True) -> torch.Tensor:
        """Category embeddings [N, D] exactly as the official concept-embedding extraction computes them: row i =
        unnormalised mean over the 81 templates of the EOT features of ``clean_strings(names[i].strip())``.

        Cached per vocabulary in memory (the `MEMORY_ENTRIES` most recently used, on the CPU) and, with
        `cache_dir`, on disk (float32). Returns a fresh copy on the encoder's device and dtype.
        """
        if isinstance(names, str):
            names = [names]
        key = (tuple(names), bool(clean))
        emb = self._memory.get(key)
        if emb is None:
            path = self.cache_path(key[0], clean)
            if path is not None and path.is_file():
                emb = self._read_disk(path, key[0], clean)
            if emb is None:
                emb = self._compute_categories(key[0], clean)
                if path is not None:
                    self._write_disk(path, emb, key[0], clean)
            emb = emb.detach().cpu()  # a long session types many vocabularies: keep them off the GPU
            self._memory[key] = emb
            while len(self._memory) > self.MEMORY_ENTRIES:
                self._memory.popitem(last=False)
        else:
            self._memory.move_to_end(key)
        return emb.to(self.device, self.encoder.dtype, copy=True)

    def encode_vocabulary(self, name: str) -> torch.Tensor:
        """Category embeddings of a built-in vocabulary (see `univs_engine.vocabularies`)."""
        from ..vocabularies import get_vocabulary

        return self.encode_categories(get_vocabulary(name))


# ------------------------------------------------------------------------------------------------------------------
# Loaders
# ------------------------------------------------------------------------------------------------------------------
class TextEncoderLoadError(ValueError):
    """A text-encoder / category-embedding file could not be used; the message says why."""


_CLIP_NON_TEXT_KEYS = {"logit_scale", "logit_bias", "input_resolution", "context_length", "vocab_size"}


def _read_file(path: Path):
    if not path.is_file():
        raise FileNotFoundError(f"text encoder file not found: {path}")
    from ..checkpoint import CheckpointError, torch_load_tensors

    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as exc:  # noqa: BLE001  safetensors raises several types for bad files
            raise TextEncoderLoadError(f"could not read {path}: {exc} (truncated or not a .safetensors file)") from None
    try:
        return torch_load_tensors(path, what="text-encoder file")
    except CheckpointError as exc:  # names the file; never repeats torch's advice to load unsafely
        raise TextEncoderLoadError(str(exc)) from None


def read_text_encoder_state_dict(
    path: PathLike, expected_keys: Optional[Sequence[str]] = None
) -> Dict[str, torch.Tensor]:
    """Read the text-encoder state dict from `path`.

    Accepts the official RegionCLIP lang-encoder file (``{'model': state_dict}`` or a bare state dict, `.pth`) or
    `.safetensors`; also a full RegionCLIP checkpoint (`lang_encoder.*` keys are taken, prefix stripped, as the
    official conversion script does) and a full CLIP state dict (`visual.*` and `logit_scale` are dropped).
    """
    path = Path(path)
    obj = _read_file(path)
    if isinstance(obj, Mapping) and "model" in obj and isinstance(obj["model"], Mapping):
        obj = obj["model"]
    if not isinstance(obj, Mapping):
        raise TextEncoderLoadError(f"{path} holds a {type(obj).__name__}, not a state dict")
    sd = dict(obj)
    if any(k.startswith("lang_encoder.") for k in sd):
        sd = {k[len("lang_encoder."):]: v for k, v in sd.items() if k.startswith("lang_encoder.")}
    elif any(k.startswith(("backbone.", "sem_seg_head.")) for k in sd) and "token_embedding.weight" not in sd:
        raise TextEncoderLoadError(
            f"{path} is a UniVS model checkpoint (keys start with 'backbone.' / 'sem_seg_head.'), not the CLIP text "
            "encoder. UniVS keeps the text encoder in a separate file: RegionCLIP's "
            "'regionclip_pretrained-cc_rn50x4_only_lang_encoder.pth' (keys 'token_embedding.weight', "
            "'transformer.resblocks.0.attn.in_proj_weight', ...)."
        )
    elif expected_keys is not None and any(k.startswith("visual.") for k in sd):
        wanted = set(expected_keys)
        extra = set(sd) - wanted
        if wanted <= set(sd) and all(k.startswith("visual.") or k in _CLIP_NON_TEXT_KEYS for k in extra):
            sd = {k: v for k, v in sd.items() if k in wanted}
    bad = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise TextEncoderLoadError(f"{path}: entries that are not tensors: {bad[:10]}")
    return sd


def _format_keys(keys: List[str], limit: int = 12) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def check_state_dict(model: nn.Module, sd: Mapping[str, torch.Tensor], source: str = "state dict") -> None:
    """Strict key and shape check with one readable error listing missing, unexpected and mis-shaped keys."""
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    misshaped = [
        f"{k}: file {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or misshaped:
        cfg = getattr(model, "cfg", None)
        lines = [f"{source} does not match the CLIP text encoder" + (f" ({cfg})" if cfg is not None else "") + ":"]
        if missing:
            lines.append(f"  missing keys ({len(missing)}): {_format_keys(missing)}")
        if unexpected:
            lines.append(f"  unexpected keys ({len(unexpected)}): {_format_keys(unexpected)}")
        if misshaped:
            lines.append(f"  mis-shaped keys ({len(misshaped)}): {_format_keys(misshaped, 6)}")
        raise TextEncoderLoadError("\n".join(lines))


def load_text_encoder(
    path: PathLike,
    cfg: Optional[TextEncoderConfig] = None,
    device: Union[str, torch.device] = "cpu",
    dtype: Optional[torch.dtype] = None,
) -> TextEncoder:
    """Build a `TextEncoder` for `cfg` (default: RN50x4) and load `path` into it (strict), in eval mode."""
    model = TextEncoder(cfg)
    sd = read_text_encoder_state_dict(path, expected_keys=list(model.state_dict()))
    check_state_dict(model, sd, source=str(path))
    model.load_state_dict(sd, strict=True)
    model.eval().requires_grad_(False)
    return model.to(device=device, dtype=dtype) if dtype is not None else model.to(device)


def load_category_embeddings(
    path: PathLike, expected_shape: Optional[Tuple[Optional[int], Optional[int]]] = (3938, 640)
) -> torch.Tensor:
    """Load the official class-name embedding file (`combined_datasets_cls_emb_rn50x4.pth`: a bare [3938, 640]
    tensor) as float32 CPU. A `.safetensors` file with a single tensor is accepted too. `expected_shape` entries
    may be None (not checked); pass expected_shape=None to skip the check."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"category embedding file not found: {path}")
    obj = _read_file(path)
    if isinstance(obj, Mapping) and len(obj) == 1 and path.suffix == ".safetensors":
        obj = next(iter(obj.values()))
    if not isinstance(obj, torch.Tensor):
        raise TextEncoderLoadError(f"{path} holds a {type(obj).__name__}; expected a bare tensor [num_classes, dim]")
    if not obj.is_floating_point() or obj.dim() != 2:
        raise TextEncoderLoadError(f"{path}: expected a 2-D float tensor, got {tuple(obj.shape)} {obj.dtype}")
    if expected_shape is not None:
        for got, want, what in zip(obj.shape, expected_shape, ("rows", "columns")):
            if want is not None and got != want:
                raise TextEncoderLoadError(
                    f"{path}: category embeddings have shape {tuple(obj.shape)}, expected {tuple(expected_shape)} "
                    f"(wrong number of {what}; the official file is 3938 x 640 = combined_datasets.txt lines x RN50x4 "
                    "text width)"
                )
    return obj.detach().to("cpu", torch.float32).contiguous()
