"""The training model: UniVS + its small CLIP text tower, and the per-batch loss (paper, supp. B.1).

L = 5 (BCE + dice) + 3 focal classification + 0.5 ReID, applied to
* learnable queries, Hungarian-matched to every entity tube of the clip (things and stuff), with deep
  supervision on every decoder layer's prediction;
* prompt queries, one per prompted thing, supervised directly by the thing's tube: visual prompts
  (mask / box / point disks / scribble masks encoded by `sample_mask_prompts` into the prompt memory) or
  referring expressions (text tower -> `text_prompt_queries`), one kind per clip;
* the ReID contrastive loss over learnable and prompt query embeddings across frames.
Category embeddings are the text tower's mean EOT feature over (a random subset of) the 81 templates, so
the text tower is trained by the classification loss, and by the text prompts.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from univs_engine.config import UniVSConfig
from univs_engine.modeling.image_encoder import build_image_encoder
from univs_engine.modeling.mask_decoder import PromptQueries
from univs_engine.modeling.position_encoding import frame_phase
from univs_engine.modeling.prompt_encoder import sample_mask_prompts
from univs_engine.modeling.text_encoder import TextEncoder
from univs_engine.modeling.univs import UniVS, build_univs
from univs_engine.text import NUM_TEMPLATES, PROMPT_TEMPLATES, clean_strings, tokenize, tokenize_categories

from .clips import Clip
from .losses import hungarian_match, mask_losses, reid_loss, sigmoid_focal_loss
from .synthetic import CLASSES, COLOURS, MOTIONS, NUM_THING_CLASSES, SIZES, TEXTURES


@dataclass
class LossConfig:
    w_bce: float = 5.0
    w_dice: float = 5.0
    w_cls: float = 5.0
    w_reid: float = 0.5
    w_text_cls: float = 1.0      # expression <-> query matching logits of text prompts
    match_points: int = 512      # uniform points per frame for the matching cost
    loss_points: int = 1024      # importance-sampled points per frame for the mask loss
    prompt_tokens: int = 64      # R during training (inference default 256)
    text_prob: float = 0.35      # chance a clip uses referring-expression prompts instead of visual ones
    templates: int = 6           # templates averaged per step for category / sentence features (81 at export)
    deep_supervision: bool = True
    reid_temperature: float = 0.1
    w_class_sep: float = 2.0     # > 0: penalise category embeddings closer than `class_sep_margin` (cosine)
    class_sep_margin: float = 0.3
    w_crop: float = 1.0          # > 0 (with stage 0): keep its crop loss on in stages 1-2 (backbone trainable)


class TrainingModel(nn.Module):
    """`univs` (the UniVS network, trainable batch norm in the backbone) and `text` (the text tower)."""

    def __init__(self, cfg: UniVSConfig, norm: str = "BN", crop_head: bool = False):
        super().__init__()
        self.cfg = cfg
        self.univs: UniVS = build_univs(cfg)
        if norm != "FrozenBN":  # the small model is trained from scratch: trainable normalisation
            self.univs.backbone = build_image_encoder(cfg, norm=norm)
        # stage 0 (crop classification, see crop_loss): a linear head on the pooled last backbone map,
        # not exported
        self.crop_head = nn.Linear(self.univs.backbone.out_channels[-1], NUM_THING_CLASSES) if crop_head else None
        self.text = TextEncoder(cfg.text)
        # The 49408-row token table would dominate the step time (dense gradient + AdamW over 6.3M
        # values) while the synthetic vocabulary uses a few hundred rows: it stays at its random init,
        # the rest of the tower (positional embedding, transformer, ln_final, projection) is trained.
        self.text.token_embedding.weight.requires_grad_(False)
        dec = self.univs.decoder
        with torch.no_grad():
            dec.cls_temp.weight.fill_(math.log(1 / 0.07))
            dec.reid_temp.weight.fill_(math.log(1 / 0.07))
        self.encoder_frozen = False
        self.class_names = list(CLASSES)
        self.register_buffer("category_ids", tokenize_categories(self.class_names), persistent=False)
        self.token_delta = None  # see enable_token_delta
        self.train()

    # ------------------------------------------------------------------ token rows
    def vocabulary_token_ids(self) -> torch.Tensor:
        """Sorted ids of every token the synthetic world's text uses: the 81 templates around the class
        names, and the words of the referring expressions (CLIP's BPE splits words independently, so the
        word list covers every expression)."""
        words = ["the", "at", "on", "top", "bottom", "left", "right", *SIZES, *COLOURS, *TEXTURES, *MOTIONS,
                 *self.class_names]
        texts = [PROMPT_TEMPLATES[j].replace("{}", " ".join(words)) for j in range(NUM_TEMPLATES)]
        ids = torch.cat([self.category_ids.flatten(), tokenize(texts).flatten()]).unique()
        return ids[ids > 0]

    def enable_token_delta(self) -> None:
        """Make the token-table rows of `vocabulary_token_ids` trainable, as a learnable delta table
        [n, width] (zeros at start) added to those rows by a forward hook on the (still frozen) token table;
        export folds it back into the table (`folded_token_table`). Registers the parameter `token_delta`
        and the buffer `token_delta_ids` (both in the state dict)."""
        if self.token_delta is not None:
            return
        emb = self.text.token_embedding
        ids = self.vocabulary_token_ids().to(emb.weight.device)
        self.register_buffer("token_delta_ids", ids)
        self.token_delta = nn.Parameter(emb.weight.new_zeros(len(ids), emb.weight.shape[1]))
        remap = torch.full((emb.weight.shape[0],), len(ids), dtype=torch.long, device=emb.weight.device)
        remap[ids] = torch.arange(len(ids), device=ids.device)
        self.register_buffer("_token_remap", remap, persistent=False)

        def hook(module, inputs, output):
            table = F.pad(self.token_delta, (0, 0, 0, 1))  # the last row (tokens outside the set) stays zero
            return output + table[self._token_remap[inputs[0]]].to(output.dtype)

        emb.register_forward_hook(hook)

    def folded_token_table(self) -> torch.Tensor:
        """The token table with the learnable delta rows added (the table itself when there is none)."""
        w = self.text.token_embedding.weight.detach().clone()
        if self.token_delta is not None:
            w[self.token_delta_ids] += self.token_delta.detach().to(w.dtype)
        return w

    # ------------------------------------------------------------------ text
    def category_embeddings(self, templates: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """[K, D] mean EOT feature over `templates` random templates (all 81 when None)."""
        ids = self.category_ids
        K = ids.shape[0]
        if templates is None or templates >= NUM_TEMPLATES:
            sel = torch.arange(NUM_TEMPLATES)
        else:
            sel = torch.randperm(NUM_TEMPLATES, generator=generator)[:templates]
        sub = ids[:, sel].reshape(-1, ids.shape[-1])
        return self.text.encode_eot(sub).view(K, len(sel), -1).mean(1)

    def expression_features(self, expressions: list[str], templates: int | None = None,
                            generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(sentence [N, D], words [N, 77, D]) as `TextPromptEncoder.encode_expressions`, with gradients and
        the sentence averaged over template 0 plus `templates - 1` random others (all 81 when None)."""
        cleaned = clean_strings(list(expressions))
        if templates is None or templates >= NUM_TEMPLATES:
            sel = torch.arange(1, NUM_TEMPLATES)
        else:
            sel = 1 + torch.randperm(NUM_TEMPLATES - 1, generator=generator)[:max(templates - 1, 0)]
        # only the templates in use are tokenized (BPE of 81 strings per expression is slow)
        texts = [PROMPT_TEMPLATES[j].replace("{}", e) for e in cleaned for j in [0] + sel.tolist()]
        ids = tokenize(texts).view(len(cleaned), 1 + len(sel), -1).to(self.category_ids.device)
        n = ids.shape[0]
        words, eot0 = self.text.encode_text(ids[:, 0])
        if len(sel):
            rest = self.text.encode_eot(ids[:, 1:].reshape(-1, ids.shape[-1])).view(n, len(sel), -1)
            eot = torch.cat([eot0[:, None], rest], 1)
        else:
            eot = eot0[:, None]
        return eot.mean(1), words

    # ------------------------------------------------------------------ images
    def freeze_encoder(self, frozen: bool = True) -> None:
        """Paper stage 3: backbone (batch norm on running statistics) and pixel decoder frozen."""
        self.encoder_frozen = frozen
        for mod in (self.univs.backbone, self.univs.sem_seg_head.pixel_decoder):
            mod.requires_grad_(not frozen)
        self.train(self.training)

    def train(self, mode: bool = True):
        super().train(mode)
        if getattr(self, "encoder_frozen", False):
            self.univs.backbone.eval()
        return self

    def crop_loss(self, crops: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Stage 0: cross-entropy of the thing class of object crops [N, 3, h, w] (RGB 0..255) from the
        backbone's pooled last map. It stands in for the ImageNet pre-training of the official backbones:
        trained from scratch on the synthetic world, the masks alone never teach the backbone shapes."""
        m = self.univs
        last = m.backbone((crops - m.pixel_mean) / m.pixel_std)["res5"]
        return F.cross_entropy(self.crop_head(last.mean((2, 3))), labels)

    def encode(self, frames: torch.Tensor):
        """RGB 0..255 frames [B, 3, H, W] (H, W multiples of 32) -> encode_frames outputs."""
        m = self.univs
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.encoder_frozen):
            return m.encode_frames((frames - m.pixel_mean) / m.pixel_std)


@dataclass
class LossOutput:
    total: torch.Tensor
    parts: dict[str, float] = field(default_factory=dict)


def _visual_prompts(model: TrainingModel, clip: Clip, levels, R: int, rng: random.Random,
                    generator: torch.Generator | None) -> PromptQueries:
    """Prompt queries from the clip's visual prompts, laid out as the inference memory pool would be:
    slot 0 holds the prompt (frame 0); later slots either repeat it (first clip of a video) or hold
    re-encoded masks of the following frames (here the ground truth) with the newest slots blank."""
    dec = model.univs.decoder
    feat, pos, _ = levels.prompt_level
    T = feat.shape[0]
    dev = feat.device
    cfg = model.cfg
    z = frame_phase(levels.frame_indices, T, cfg.pe_variant, cfg.num_frames_pe).to(dev)
    first = sample_mask_prompts(feat[0], pos[0], clip.prompt_masks.to(dev), R, z[0], generator=generator)
    slots_t, slots_p = [first.tokens], [first.pe]
    if T > 1:
        if rng.random() < 0.4:
            slots_t += [first.tokens] * (T - 1)
            slots_p += [first.pe] * (T - 1)
        else:
            k = rng.randint(1, T - 1)  # slots [1, k) from masks, [k, T) blank
            gt = clip.masks[clip.prompt_targets].to(dev).float()  # [P, T, H, W]
            for t in range(1, T):
                if t < k:
                    enc = sample_mask_prompts(feat[t], pos[t], gt[:, t], R, z[t], generator=generator)
                    slots_t.append(enc.tokens)
                    slots_p.append(enc.pe)
                else:
                    slots_t.append(torch.zeros_like(first.tokens))
                    slots_p.append(torch.zeros_like(first.pe))
    clip_t = torch.stack(slots_t, 2)  # [P, R, T, C]
    clip_p = torch.stack(slots_p, 2)
    P, _, _, C = clip_t.shape
    flat = lambda x: x.transpose(1, 2).reshape(P, -1, C)  # noqa: E731  slot-major
    mem_t = torch.cat([first.tokens, flat(clip_t)], 1)
    mem_p = torch.cat([first.pe, flat(clip_p)], 1)
    return dec.visual_prompt_queries(clip_t, clip_p, mem_t, mem_p)


def _learnable_losses(masks, logits, clip: Clip, lc: LossConfig, gen) -> tuple[torch.Tensor, torch.Tensor,
                                                                               torch.Tensor, torch.Tensor, torch.Tensor]:
    """Matched mask (bce, dice sums) and focal classification sum of learnable queries; returns also
    the matching (query idx, target idx)."""
    gt = clip.masks.to(masks.device)
    labels = clip.labels.to(masks.device)
    qi, ti = hungarian_match(masks, logits, gt, labels, num_points=lc.match_points, generator=gen)
    bce, dice = mask_losses(masks[qi], gt[ti], lc.loss_points, generator=gen)
    target = torch.zeros_like(logits)
    if len(qi):
        target[qi, labels[ti]] = 1.0
    cls = sigmoid_focal_loss(logits, target).sum()
    return bce.sum(), dice.sum(), cls, qi, ti


def compute_losses(model: TrainingModel, clips: list[Clip], lc: LossConfig, rng: random.Random,
                   generator: torch.Generator | None = None) -> LossOutput:
    """Loss of a batch of clips (all clips of one batch have the same length T)."""
    univs, dec = model.univs, model.univs.decoder
    dev = univs.pixel_mean.device
    Ql = dec.num_queries
    T = clips[0].frames.shape[0]
    frames = torch.cat([c.frames for c in clips]).to(dev)
    mask_features, multi = model.encode(frames)
    class_emb = model.category_embeddings(lc.templates, generator)

    n_tubes = max(sum(len(c.labels) for c in clips), 1)
    n_prompts = max(sum(len(c.prompt_targets) for c in clips), 1)
    acc = {k: frames.new_zeros(()) for k in ("bce", "dice", "cls", "p_bce", "p_dice", "p_cls", "text_cls", "reid")}
    n_text = 0
    n_layers = 0
    for b, clip in enumerate(clips):
        sl = slice(b * T, (b + 1) * T)
        mf = mask_features[sl]
        levels = dec.embed_levels([m[sl] for m in multi], clip.frame_indices.to(dev))
        P = len(clip.prompt_targets)
        prompts = None
        text = False
        if P:
            if rng.random() < lc.text_prob:
                sentence, words = model.expression_features(clip.expressions, lc.templates, generator)
                prompts = dec.text_prompt_queries(sentence, words, levels)
                text = True
            else:
                prompts = _visual_prompts(model, clip, levels, lc.prompt_tokens, rng, generator)
        out = dec(levels, mf, prompts, class_emb, "sep", keep_layers=lc.deep_supervision)

        # learnable queries: every decoder prediction (deep supervision), matched independently
        preds = []
        if lc.deep_supervision:
            for e in out.embds_per_layer[:-1]:
                m = torch.einsum("qtc,tchw->qthw", dec.mask_embed(e[:Ql]), mf)
                preds.append((m, dec.classify(e[:Ql], class_emb)))
        final_logits = dec.classify(out.pred_embds, class_emb)  # [Q, K], learnable + prompt queries
        preds.append((out.pred_masks[:Ql], final_logits[:Ql]))
        for masks, logits in preds:
            bce, dice, cls, qi, ti = _learnable_losses(masks, logits, clip, lc, generator)
            acc["bce"] = acc["bce"] + bce
            acc["dice"] = acc["dice"] + dice
            acc["cls"] = acc["cls"] + cls
        n_layers = len(preds)

        ids = torch.full((Ql,), -1, dtype=torch.long, device=dev)
        ids[qi.to(dev)] = ti.to(dev)
        embds, groups = out.pred_embds[:Ql], torch.zeros(Ql, dtype=torch.long, device=dev)
        if P:
            tgt = clip.prompt_targets.to(dev)
            gt = clip.masks.to(dev)[tgt]
            bce, dice = mask_losses(out.pred_masks[Ql:], gt, lc.loss_points, generator=generator)
            acc["p_bce"] = acc["p_bce"] + bce.sum()
            acc["p_dice"] = acc["p_dice"] + dice.sum()
            ptarget = torch.zeros_like(final_logits[Ql:])
            ptarget[torch.arange(P, device=dev), clip.labels.to(dev)[tgt]] = 1.0
            acc["p_cls"] = acc["p_cls"] + sigmoid_focal_loss(final_logits[Ql:], ptarget).sum()
            if text:
                # expression i matches its own prompt query and the learnable query matched to its object
                tl = out.pred_logits  # [Q, P]
                ttarget = torch.zeros_like(tl)
                ttarget[Ql + torch.arange(P, device=dev), torch.arange(P, device=dev)] = 1.0
                for j, obj in enumerate(tgt.tolist()):
                    hit = (ids == obj).nonzero().flatten()
                    ttarget[hit, j] = 1.0
                acc["text_cls"] = acc["text_cls"] + sigmoid_focal_loss(tl, ttarget).sum() / P
                n_text += 1
            embds = torch.cat([embds, out.pred_embds[Ql:]])
            ids = torch.cat([ids, tgt])
            groups = torch.cat([groups, torch.ones(P, dtype=torch.long, device=dev)])
        acc["reid"] = acc["reid"] + reid_loss(embds, ids, groups, lc.reid_temperature)

    B = len(clips)
    L = n_layers
    parts = {
        "bce": acc["bce"] / (n_tubes * L), "dice": acc["dice"] / (n_tubes * L), "cls": acc["cls"] / (n_tubes * L),
        "p_bce": acc["p_bce"] / n_prompts, "p_dice": acc["p_dice"] / n_prompts, "p_cls": acc["p_cls"] / n_prompts,
        "text_cls": acc["text_cls"] / max(n_text, 1), "reid": acc["reid"] / B,
    }
    total = (lc.w_bce * (parts["bce"] + parts["p_bce"]) + lc.w_dice * (parts["dice"] + parts["p_dice"])
             + lc.w_cls * (parts["cls"] + parts["p_cls"]) + lc.w_text_cls * parts["text_cls"]
             + lc.w_reid * parts["reid"])
    if lc.w_class_sep > 0:
        e = F.normalize(class_emb, dim=-1)
        off = ~torch.eye(len(e), dtype=torch.bool, device=e.device)
        parts["class_sep"] = F.relu((e @ e.t())[off] - lc.class_sep_margin).pow(2).mean()
        total = total + lc.w_class_sep * parts["class_sep"]
    return LossOutput(total, {k: float(v.detach()) for k, v in parts.items()})
