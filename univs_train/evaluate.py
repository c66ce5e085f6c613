"""Quick held-out checks of a trained model on validation-split synthetic videos.

* VOS: every thing is prompted with its mask on its prompt frame (the synthetic `Prompt.frame`), the
  inference clip loop (`univs_engine.inference.vos.PromptedClipLoop`) tracks it; J = mean IoU over the
  frames after the prompt frame (empty prediction on an empty ground truth counts 1, as DAVIS), averaged
  over objects. Baseline: copying the prompt mask to every later frame.
* RefVOS: the same loop with the referring expressions as text prompts; J over all frames.
* Prompt frame: single-frame segmentation from a mask / box / point-disk / scribble prompt.
* Entities: learnable queries on single frames, Hungarian-matched to the things and stuff; mean IoU of the
  matched masks and accuracy of the matched queries' classes (cosine classifier on the class embeddings).

    python -m univs_train.evaluate univs_engine/weights/univs_small.safetensors --videos 16   (repository root)
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from univs_engine.inference.core import ClipGeometry
from univs_engine.inference.vos import PromptedClipLoop, TextTargets
from univs_engine.modeling.text_encoder import TextPromptEncoder
from univs_engine.presets import TaskSettings

from .losses import hungarian_match
from .synthetic import CLASSES, NUM_THING_CLASSES, generate_video, split_seeds


def _frames_fn(model, video):
    x = torch.from_numpy(video.frames).permute(0, 3, 1, 2).float()
    x = (x - model.pixel_mean.cpu()) / model.pixel_std.cpu()
    return lambda a, b: x[a:b]


def _iou(pred: np.ndarray, gt: np.ndarray) -> float:
    union = np.logical_or(pred, gt).sum()
    return 1.0 if union == 0 else float(np.logical_and(pred, gt).sum() / union)


def _videos(n: int, frames: int, size: int, split: str = "val"):
    return [generate_video(s, num_frames=frames, height=size, width=size) for s in split_seeds(split, n)]


@torch.no_grad()
def eval_vos(model, videos, settings: TaskSettings | None = None, seed: int = 0) -> dict:
    settings = settings or TaskSettings()
    js, base = [], []
    for v in videos:
        N, T, H, W = v.masks.shape
        ann: dict[int, tuple[list, list]] = {}
        for i, p in enumerate(v.prompts):
            ann.setdefault(p.frame, ([], []))
            ann[p.frame][0].append(i)
            ann[p.frame][1].append(torch.from_numpy(p.mask).float())
        annotations = {f: (torch.tensor(idx), torch.stack(ms)) for f, (idx, ms) in ann.items()}
        loop = PromptedClipLoop(model, settings, ClipGeometry(T, (H, W), (H, W), (H, W)), generator=torch.Generator().manual_seed(seed))
        pred = np.zeros((N, T, H, W), bool)
        for f, logits, _ in loop.run(_frames_fn(model, v), N, annotations):
            pred[:, f] = (logits[:, :H, :W] > 0).numpy()
        for i, p in enumerate(v.prompts):
            later = range(p.frame + 1, T)
            if not len(later):
                continue
            js.append(np.mean([_iou(pred[i, t], v.masks[i, t]) for t in later]))
            base.append(np.mean([_iou(p.mask, v.masks[i, t]) for t in later]))
    return {"vos_J": float(np.mean(js)), "vos_J_copy_first_mask": float(np.mean(base)), "vos_objects": len(js)}


@torch.no_grad()
def eval_refvos(model, text_encoder, videos, settings: TaskSettings | None = None) -> dict:
    settings = settings or TaskSettings()
    tpe = TextPromptEncoder(text_encoder)
    js = []
    for v in videos:
        N, T, H, W = v.masks.shape
        sentence, words = tpe.encode_expressions(v.expressions)
        loop = PromptedClipLoop(model, settings, ClipGeometry(T, (H, W), (H, W), (H, W)))
        pred = np.zeros((N, T, H, W), bool)
        for f, logits, _ in loop.run(_frames_fn(model, v), N, text=TextTargets(sentence.float(), words.float())):
            pred[:, f] = (logits[:, :H, :W] > 0).numpy()
        for i in range(N):
            js.append(np.mean([_iou(pred[i, t], v.masks[i, t]) for t in range(T)]))
    return {"refvos_J": float(np.mean(js)), "refvos_objects": len(js)}


@torch.no_grad()
def eval_entities(model, class_embeddings, videos, frames_per_video: int = 2) -> dict:
    dec = model.decoder
    ious_thing, ious_stuff = [], []
    correct, total = [0, 0], [0, 0]  # things, stuff
    for v in videos:
        fn = _frames_fn(model, v)
        for t in np.linspace(0, v.num_frames - 1, frames_per_video).round().astype(int):
            mf, multi = model.encode_frames(fn(t, t + 1))
            levels = dec.embed_levels(multi, torch.tensor([int(t)]))
            out = dec(levels, mf, None, class_embeddings)
            masks = F.interpolate(out.pred_masks, size=(v.height, v.width), mode="bilinear", align_corners=False)
            gts, labels = [], []
            for i in range(v.num_things):
                if v.masks[i, t].any():
                    gts.append(v.masks[i, t])
                    labels.append(v.things[i].category)
            for c in range(NUM_THING_CLASSES, len(CLASSES)):
                m = v.semantic[t] == c
                if m.any():
                    gts.append(m)
                    labels.append(c)
            if not gts:
                continue
            gt = torch.from_numpy(np.stack(gts))[:, None]
            lab = torch.tensor(labels)
            qi, ti = hungarian_match(out.pred_masks, out.pred_logits, gt, lab, generator=torch.Generator().manual_seed(0))
            for q, k in zip(qi.tolist(), ti.tolist()):
                iou = _iou((masks[q, 0] > 0).numpy(), gts[k])
                (ious_thing if labels[k] < NUM_THING_CLASSES else ious_stuff).append(iou)
                stuff = int(labels[k] >= NUM_THING_CLASSES)
                correct[stuff] += int(out.pred_logits[q].argmax()) == labels[k]
                total[stuff] += 1
    # things and stuff apart: stuff is easy, and a joint accuracy hid that things were at chance
    return {"entity_mIoU_things": float(np.mean(ious_thing)), "entity_mIoU_stuff": float(np.mean(ious_stuff)),
            "entity_class_acc": sum(correct) / max(sum(total), 1),
            "entity_class_acc_things": correct[0] / max(total[0], 1),
            "entity_class_acc_stuff": correct[1] / max(total[1], 1)}


@torch.no_grad()
def eval_prompt_frame(model, videos, prompt_tokens: int = 256) -> dict:
    """Single-frame interactive segmentation: each thing's prompt (as the mask, its box, 1-3 point disks
    or a scribble, built as in training) on its prompt frame -> IoU of the prompt query's mask."""
    from univs_engine.modeling.position_encoding import frame_phase
    from univs_engine.modeling.prompt_encoder import sample_mask_prompts

    from .clips import PROMPT_TYPES, prompt_mask

    dec = model.decoder
    ious: dict[str, list[float]] = {k: [] for k in PROMPT_TYPES}
    for v in videos:
        fn = _frames_fn(model, v)
        rng = np.random.default_rng(v.seed)
        for p in v.prompts:
            mf, multi = model.encode_frames(fn(p.frame, p.frame + 1))
            idx = torch.tensor([p.frame])
            levels = dec.embed_levels(multi, idx)
            feat, pos, _ = levels.prompt_level
            z = frame_phase(idx, 1, model.cfg.pe_variant, model.cfg.num_frames_pe)
            for kind in PROMPT_TYPES:
                region = torch.from_numpy(prompt_mask(p.mask, kind, rng)).float()
                enc = sample_mask_prompts(feat[0], pos[0], region[None], prompt_tokens, z[0],
                                          generator=torch.Generator().manual_seed(0))
                prompts = dec.visual_prompt_queries(enc.tokens[:, :, None], enc.pe[:, :, None], enc.tokens, enc.pe)
                out = dec(levels, mf, prompts)
                m = F.interpolate(out.pred_masks[-1:], size=p.mask.shape, mode="bilinear", align_corners=False)
                ious[kind].append(_iou((m[0, 0] > 0).numpy(), p.mask))
    return {f"prompt_frame_IoU_{k}": float(np.mean(v)) for k, v in ious.items()}


def evaluate(model, text_encoder, class_embeddings, n_videos: int = 16, frames: int = 12, size: int = 128,
             settings: TaskSettings | None = None, refvos: bool = True, split: str = "val") -> dict:
    model.eval()
    videos = _videos(n_videos, frames, size, split)
    t0 = time.time()
    res = {"split": split, "videos": n_videos, "frames": frames, "size": size}
    res.update(eval_vos(model, videos, settings))
    if refvos and text_encoder is not None:
        res.update(eval_refvos(model, text_encoder, videos, settings))
    res.update(eval_prompt_frame(model, videos))
    if class_embeddings is not None:
        res.update(eval_entities(model, class_embeddings, videos))
    res["eval_seconds"] = round(time.time() - t0, 1)
    return res


def _load_for_eval(weights: str):
    """(UniVS model, text encoder, class embeddings) of an exported file, a training checkpoint or 'random';
    every file is read without running code (CheckpointError when refused)."""
    if weights == "random" or weights.endswith(".pt"):
        from univs_engine.modeling.univs import build_univs

        from .export import export_tensors
        from .state import TrainConfig, build_training_model, load_training_model

        tm = build_training_model(TrainConfig()) if weights == "random" else load_training_model(weights)[0]
        sd = export_tensors(tm, torch.float32)
        model = build_univs(tm.cfg)
        model.load_state_dict({k: v for k, v in sd.items() if k.startswith(("backbone.", "sem_seg_head."))})
        text, emb = tm.text.eval(), sd["class_embeddings"]
    else:
        from .export import load_shipped

        model, text, emb, _ = load_shipped(weights)
    return model, text, emb


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Held-out checks of a UniVS small model on synthetic val videos.")
    ap.add_argument("weights", help="exported .safetensors, a training last.pt, or 'random' (untrained model)")
    ap.add_argument("--videos", type=int, default=16)
    ap.add_argument("--frames", type=int, default=12)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--clip-len", type=int, default=TaskSettings.clip_len)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-refvos", action="store_true")
    ap.add_argument("--split", default="val", choices=("val", "test"))
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    from univs_engine.checkpoint import CheckpointError

    try:
        model, text, emb = _load_for_eval(a.weights)
    except CheckpointError as e:  # a refused checkpoint: one line, no traceback
        print(f"evaluate: error: {e}", file=sys.stderr)
        return 2
    settings = TaskSettings(clip_len=a.clip_len)
    res = evaluate(model, text, emb, a.videos, a.frames, a.size, settings, refvos=not a.no_refvos, split=a.split)
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
