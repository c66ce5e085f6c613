"""Export a trained model to the shipped single-file layout (`univs_engine/weights/univs_small.safetensors`).

Layout (see univs_engine/weights/MODEL_CARD.md):
* `backbone.*`, `sem_seg_head.*`: the UniVS network in the official key layout, fp32. The training-time
  BatchNorm layers are exported as FrozenBN (weight, bias, running_mean, running_var), and `reid_temp` is
  set to `cls_temp` (the loaders read the logit scale from `reid_temp`, as the official checkpoints share it).
* `text_encoder.*`: the CLIP text tower (`TextEncoder(cfg.text)` keys), fp16 (its 49408-row token table
  dominates the file).
* `class_embeddings`: [13, 128] fp32, category embeddings of `univs_train.synthetic.CLASSES` (the
  synthetic vocabulary: 8 things then 5 stuff), the mean EOT feature over the 81 templates.
* metadata: univs_config="small", class_names (JSON list), vocabulary ("|"-joined names, read by
  `univs_engine.api`), vocabulary_isthing ("1"/"0" per class), text_encoder_dtype, plus training info.
"""
from __future__ import annotations

import copy
import json
import os
from dataclasses import asdict
from pathlib import Path

import torch

from univs_engine.checkpoint import atomic_save_safetensors
from univs_engine.modeling.image_encoder import freeze_batch_norm

from .criterion import TrainingModel
from .state import load_training_model
from .synthetic import NUM_THING_CLASSES

TEXT_PREFIX = "text_encoder."
CLASS_EMBEDDINGS_KEY = "class_embeddings"


@torch.no_grad()
def export_tensors(model: TrainingModel, text_dtype: torch.dtype = torch.float16) -> dict[str, torch.Tensor]:
    """The shipped tensors of a training model (does not modify it)."""
    was_training = model.training
    model.eval()
    try:
        univs = copy.deepcopy(model.univs).cpu().float()
        univs.backbone = freeze_batch_norm(univs.backbone)
        sd = {k: v.detach().clone() for k, v in univs.state_dict().items() if not k.endswith("num_batches_tracked")}
        key = "sem_seg_head.predictor."
        sd[key + "reid_temp.weight"] = sd[key + "cls_temp.weight"].clone()
        for k, v in model.text.state_dict().items():
            if k == "token_embedding.weight":  # learnable delta rows (if any) folded back into the table
                v = model.folded_token_table()
            sd[TEXT_PREFIX + k] = v.detach().to("cpu", text_dtype).clone()
        sd[CLASS_EMBEDDINGS_KEY] = model.category_embeddings(None).detach().float().cpu()
    finally:
        model.train(was_training)
    return sd


def export_model(model: TrainingModel, dst: str | os.PathLike, extra_metadata: dict[str, str] | None = None,
                 text_dtype: torch.dtype = torch.float16) -> Path:
    dst = Path(dst)
    tensors = export_tensors(model, text_dtype)
    meta = {
        "univs_config": model.cfg.name,
        "class_names": json.dumps(model.class_names),
        "vocabulary": "|".join(model.class_names),  # what univs_engine.api reads for the built-in vocabulary
        "vocabulary_isthing": "|".join("1" if i < NUM_THING_CLASSES else "0" for i in range(len(model.class_names))),
        "text_encoder_prefix": TEXT_PREFIX,
        "text_encoder_dtype": str(text_dtype).replace("torch.", ""),
        "format": "univs-small-v1",
    }
    meta.update({k: str(v) for k, v in (extra_metadata or {}).items()})
    atomic_save_safetensors(tensors, dst, meta)
    return dst


def run_metadata(tc, iteration: int, wall_time_s: float) -> dict[str, str]:
    """What an exported file records of the run that made it (`tc`: its TrainConfig)."""
    return {"iterations": str(iteration), "train_wall_time_s": f"{wall_time_s:.0f}",
            "train_config": json.dumps(asdict(tc))}


def export_checkpoint(ckpt: str | os.PathLike, dst: str | os.PathLike, extra_metadata: dict[str, str] | None = None) -> Path:
    """Export from a training checkpoint (`last.pt`)."""
    model, state, tc = load_training_model(ckpt)
    meta = run_metadata(tc, int(state["iteration"]), float(state.get("wall_time", 0)))
    meta.update(extra_metadata or {})
    return export_model(model, dst, meta)


def load_shipped(path: str | os.PathLike):
    """(UniVS model in eval mode, TextEncoder in eval mode, class_embeddings [K, D], class names) from an
    exported file."""
    from safetensors import safe_open

    from univs_engine.checkpoint import CheckpointError, check_finite, load_checkpoint, load_weights
    from univs_engine.config import get_config
    from univs_engine.modeling.text_encoder import TextEncoder

    path = Path(path)
    model = load_checkpoint(path)
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
        keys = list(f.keys())
        text_sd = {k[len(TEXT_PREFIX):]: f.get_tensor(k) for k in keys if k.startswith(TEXT_PREFIX)}
        if CLASS_EMBEDDINGS_KEY not in keys:
            raise CheckpointError(f"checkpoint {path} has no {CLASS_EMBEDDINGS_KEY} tensor (not an exported small model)")
        emb = f.get_tensor(CLASS_EMBEDDINGS_KEY)
    if not emb.is_floating_point() or emb.dim() != 2:
        raise CheckpointError(f"checkpoint {path}: tensor {CLASS_EMBEDDINGS_KEY} must be a 2-D floating point tensor")
    check_finite({CLASS_EMBEDDINGS_KEY: emb}, path)
    emb = emb.float()
    text = TextEncoder(get_config(meta.get("univs_config", "small")).text)
    load_weights(text, text_sd, path, "the text encoder", key_prefix=TEXT_PREFIX)
    text.eval().requires_grad_(False)
    return model, text, emb, json.loads(meta.get("class_names", "[]"))
