"""Unified video mask decoder: learnable queries + prompt queries, ProCA, masked cross-attention.

One clip of T frames per call (batch 1). Queries are kept as [Q, T, C]: every query has one token per
frame; cross-attention runs per frame, self-attention over all Q*T tokens (query-major order q*T + t).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..config import UniVSConfig
from .position_encoding import frame_phase, sine_position_3d
from .transformer_layers import MLP, CrossAttentionLayer, FFNLayer, SelfAttentionLayer

NUM_LEVELS = 3  # decoder reads the pixel decoder's 1/32, 1/16 and 1/8 maps, round robin


@dataclass
class Levels:
    """Decoder inputs of one clip: per level src [T, HW, C], pos [T, HW, C], size (h, w)."""

    src: list[torch.Tensor]
    pos: list[torch.Tensor]
    sizes: list[tuple[int, int]]
    frame_indices: torch.Tensor  # [T] absolute frame indices

    @property
    def prompt_level(self) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
        """The 1/8 level that visual prompts are sampled from: src, pos as [T, C, h, w]."""
        (h, w), src, pos = self.sizes[-1], self.src[-1], self.pos[-1]
        as_map = lambda x: x.transpose(1, 2).reshape(x.shape[0], -1, h, w)  # noqa: E731
        return as_map(src), as_map(pos), (h, w)


@dataclass
class PromptQueries:
    """Prompt queries appended after the learnable ones.

    content/pos [Qp, T, C]; dense/dense_pos [Qp, L, T, C] (ProCA keys and values; dense_pos None for
    text); kind is "visual", "text" (referring expressions) or "category".
    """

    content: torch.Tensor
    pos: torch.Tensor
    dense: torch.Tensor
    dense_pos: torch.Tensor | None
    kind: str = "visual"
    sentence: torch.Tensor | None = None  # [Qp, text_dim], text prompts: classifier targets
    valid: torch.Tensor | None = None  # [Qp] bool; False marks padding (univs_engine.compiled), seen by no query

    def __len__(self) -> int:
        return self.content.shape[0]


@dataclass
class DecoderOutput:
    """pred_masks [Q, T, H/4, W/4] logits; pred_embds [Q, T, C]; pred_logits [Q, K] or None;
    pred_reid [Q, Qp] (text prompts); embds_per_layer [L+1, Q, T, C] when requested."""

    pred_masks: torch.Tensor
    pred_embds: torch.Tensor
    pred_logits: torch.Tensor | None
    pred_reid: torch.Tensor | None = None
    embds_per_layer: torch.Tensor | None = None
    num_learnable: int = 0  # prompt queries start at this index


class VideoMaskDecoder(nn.Module):
    """The UniVS transformer decoder (official name: sem_seg_head.predictor)."""

    def __init__(self, cfg: UniVSConfig):
        super().__init__()
        C, heads, n = cfg.hidden_dim, cfg.nheads, cfg.dec_layers
        self.cfg = cfg
        self.num_queries = cfg.num_queries
        self.num_heads = heads
        self.transformer_self_attention_layers = nn.ModuleList(SelfAttentionLayer(C, heads) for _ in range(n))
        self.transformer_cross_attention_layers = nn.ModuleList(CrossAttentionLayer(C, heads) for _ in range(n))
        self.transformer_ffn_layers = nn.ModuleList(FFNLayer(C, cfg.dim_feedforward) for _ in range(n))
        self.transformer_prompt_self_attention_layers = nn.ModuleList(  # ProCA
            CrossAttentionLayer(C, heads) for _ in range(n))
        self.decoder_norm = nn.LayerNorm(C)
        self.query_feat = nn.Embedding(cfg.num_queries, C)
        self.query_embed = nn.Embedding(cfg.num_queries, C)
        self.level_embed = nn.Embedding(NUM_LEVELS, C)
        self.mask_embed = MLP(C, C, C, 3)
        self.vis2text_projection = nn.Linear(C, cfg.text_dim)
        self.text_norm = nn.LayerNorm(cfg.text_dim)
        self.text2vis_projection = nn.Linear(cfg.text_dim, C)
        self.cls_temp = nn.Embedding(1, 1)
        self.reid_temp = nn.Embedding(1, 1)  # training only; kept so checkpoints load strictly
        self.prompt_detection = nn.Embedding(1, C)
        self.prompt_sot = nn.Embedding(1, C)
        self.prompt_grounding = nn.Embedding(1, C)
        self.lang2vision_cross_attention_layer = CrossAttentionLayer(C, heads)

    # ------------------------------------------------------------------ inputs
    def embed_levels(self, multi_scale: list[torch.Tensor], frame_indices: torch.Tensor,
                     pe_variant: str | None = None) -> Levels:
        """multi_scale: 3 maps [T, C, h, w] (1/32, 1/16, 1/8) -> flattened src + level embed, 3D pos.
        pe_variant overrides the config's temporal encoding (the official Swin-L VIS runs use FixedT)."""
        src, pos, sizes = [], [], []
        T = multi_scale[0].shape[0]
        z = frame_phase(frame_indices, T, pe_variant or self.cfg.pe_variant, self.cfg.num_frames_pe)
        for i, x in enumerate(multi_scale):
            # src inherits x's stride order, and F.linear rounds a contiguous 3D input (bias fused into the
            # GEMM) differently from a strided one; the attention-mask threshold (sigmoid < 0.5) can turn
            # that ulp into a flipped mask entry. So one layout for all callers: contiguous maps, as stored in
            # the references and stacked by the clip loops (the pixel decoder returns strided views).
            x = x.contiguous()
            h, w = x.shape[-2:]
            sizes.append((h, w))
            pe = sine_position_3d(h, w, z.to(x.device), self.cfg.hidden_dim // 2).to(x.dtype)
            pos.append(pe.flatten(2).transpose(1, 2))
            src.append(x.flatten(2).transpose(1, 2) + self.level_embed.weight[i])
        return Levels(src, pos, sizes, frame_indices)

    def visual_prompt_queries(self, clip_tokens: torch.Tensor, clip_pe: torch.Tensor,
                              memory_tokens: torch.Tensor, memory_pe: torch.Tensor) -> PromptQueries:
        """Visual prompts from the memory pool.

        clip_tokens/clip_pe [Qp, R, T, C]: the pool's slots for this clip's frames; their mean over the
        non-blank tokens initialises each query. memory_tokens/memory_pe [Qp, L, C]: ProCA keys (first
        appearance + recent frames), shared by every frame of the clip.
        """
        def nonblank_mean(x):
            count = (x != 0).any(-1, keepdim=True).sum(1).clamp(min=1)
            return x.sum(1) / count

        feats, pe = nonblank_mean(clip_tokens), nonblank_mean(clip_pe)
        T = clip_tokens.shape[2]
        expand = lambda m: m[:, :, None].expand(-1, -1, T, -1)  # noqa: E731
        return PromptQueries(feats + self.prompt_sot.weight, pe, expand(memory_tokens), expand(memory_pe))

    def text_prompt_queries(self, sentence: torch.Tensor, words: torch.Tensor, levels: Levels) -> PromptQueries:
        """Referring expressions: sentence [N, D] and word features [N, 77, D] from the text encoder."""
        tokens = torch.cat([sentence[:, None], words], dim=1)  # [N, 78, D]
        dense = self._language_to_vision(self.text2vis_projection(self.text_norm(tokens)), levels)
        head = dense[:, 0]
        return PromptQueries(head + self.prompt_grounding.weight, head, dense, None, "text", sentence)

    def category_prompt_queries(self, class_embeddings: torch.Tensor, levels: Levels) -> PromptQueries:
        """One query per category ([K, D] text embeddings). Under the 'sep' self-attention mask they cannot
        change the learnable queries' outputs, so category-guided inference does not need them."""
        dense = self._language_to_vision(self.text2vis_projection(self.text_norm(class_embeddings))[:, None], levels)
        head = dense[:, 0]
        return PromptQueries(head + self.prompt_detection.weight, head, dense, None, "category")

    def _language_to_vision(self, tokens: torch.Tensor, levels: Levels) -> torch.Tensor:
        """tokens [N, L, C] attend to all three levels of each frame -> [N, L, T, C]."""
        N, L, C = tokens.shape
        memory = torch.cat(levels.src, dim=1)  # [T, sum HW, C]
        T = memory.shape[0]
        q = tokens.reshape(1, N * L, C).expand(T, -1, -1)
        out = self.lang2vision_cross_attention_layer(q, memory)  # [T, N*L, C]
        return out.reshape(T, N, L, C).permute(1, 2, 0, 3)

    # ------------------------------------------------------------------ forward
    def forward(self, levels: Levels, mask_features: torch.Tensor, prompts: PromptQueries | None = None,
                class_embeddings: torch.Tensor | None = None, self_attn_mask: str = "sep",
                keep_layers: bool = False, learnable: bool = True) -> DecoderOutput:
        """Decode one clip.

        mask_features [T, C, H/4, W/4]; class_embeddings [K, D] category text embeddings (L2-normalised
        here) or None to skip classification. self_attn_mask: "sep" (prompts see each other) or
        "sep-blocked" (each prompt sees only its own frames; always used for text prompts).
        learnable=False drops the learnable queries: under the separated self-attention masks the prompt
        queries never see them, so visual-prompt tracking gives the same prompt outputs without them.
        """
        text = prompts is not None and prompts.kind == "text"
        if not learnable and (prompts is None or text):
            raise ValueError("learnable=False needs visual prompts (text prompts borrow learnable masks)")
        Ql = self.num_queries if learnable else 0
        T = mask_features.shape[0]
        output = self.query_feat.weight[:Ql, None].expand(-1, T, -1)
        query_pos = self.query_embed.weight[:Ql, None].expand(-1, T, -1)
        if prompts is not None:
            output = torch.cat([output, prompts.content])
            query_pos = torch.cat([query_pos, prompts.pos])
            output = self._proca(0, output, query_pos, prompts, Ql)
            # after the first ProCA, a prompt query's content is its positional query too
            query_pos = torch.cat([query_pos[:Ql], output[Ql:]])
        if text:
            self_attn_mask = "sep-blocked"
        valid = None if prompts is None else prompts.valid
        self_blocked = self._self_attn_mask(output.shape[0], T, self_attn_mask, output.device, Ql, valid)

        embds = [output]
        masks, attn_blocked, reid = self._predict_masks(output, mask_features, levels.sizes[0], text, Ql)
        for i, (cross, self_attn, ffn) in enumerate(zip(self.transformer_cross_attention_layers,
                                                        self.transformer_self_attention_layers,
                                                        self.transformer_ffn_layers)):
            if prompts is not None and i > 0:
                output = self._proca(i, output, query_pos, prompts, Ql)
            lvl = i % NUM_LEVELS
            # per frame: batch = T, queries attend to their own frame's features
            out_t = cross(output.transpose(0, 1), levels.src[lvl], pos=levels.pos[lvl],
                          query_pos=query_pos.transpose(0, 1), blocked=attn_blocked[:, None])
            output = out_t.transpose(0, 1)
            Q = output.shape[0]
            output = self_attn(output.reshape(1, Q * T, -1), query_pos.reshape(1, Q * T, -1),
                               self_blocked).reshape(Q, T, -1)
            output = ffn(output)
            embds.append(output)
            target = levels.sizes[(i + 1) % NUM_LEVELS]
            masks, attn_blocked, reid = self._predict_masks(output, mask_features, target, text, Ql)

        decoded = self.decoder_norm(output)
        logits = None
        if text:
            logits = self.vis2text_projection(decoded).mean(1) @ prompts.sentence.t()
        elif class_embeddings is not None:
            logits = self.classify(decoded, class_embeddings)
        per_layer = torch.stack([self.decoder_norm(e) for e in embds]) if keep_layers else None
        return DecoderOutput(masks, decoded, logits, reid, per_layer, Ql)

    def classify(self, decoded: torch.Tensor, class_embeddings: torch.Tensor) -> torch.Tensor:
        """Cosine classifier: decoded [Q, T, C] x class_embeddings [K, D] -> logits [Q, K] (mean over T)."""
        p = F.normalize(self.vis2text_projection(decoded), dim=-1)
        e = F.normalize(class_embeddings.to(p), dim=-1)
        return (p @ e.t()).mean(1) * self.cls_temp.weight.exp().view(())

    # ------------------------------------------------------------------ pieces
    def _proca(self, i: int, output: torch.Tensor, query_pos: torch.Tensor, prompts: PromptQueries, Ql: int):
        """Prompt cross-attention: each prompt query [Qp, T] attends to [itself, its dense tokens]."""
        out_p, pos_p = output[Ql:], query_pos[Ql:]
        Qp, T, C = out_p.shape
        kv = torch.cat([out_p[:, None], prompts.dense], dim=1)  # [Qp, 1+L, T, C]
        kv = kv.permute(0, 2, 1, 3).reshape(Qp * T, -1, C)
        if prompts.dense_pos is not None:
            kpos = torch.cat([pos_p[:, None], prompts.dense_pos], dim=1).permute(0, 2, 1, 3).reshape(Qp * T, -1, C)
            qpos = pos_p.reshape(Qp * T, 1, C)
        else:
            kpos = qpos = None
        layer = self.transformer_prompt_self_attention_layers[i]
        out_p = layer(out_p.reshape(Qp * T, 1, C), kv, pos=kpos, query_pos=qpos).reshape(Qp, T, C)
        return torch.cat([output[:Ql], out_p])

    def _predict_masks(self, output: torch.Tensor, mask_features: torch.Tensor, target_size, text: bool, Ql: int):
        """Mask logits [Q, T, H, W] and the next cross-attention mask [T, Q, h*w] (True = blocked)."""
        decoded = self.decoder_norm(output)
        masks = torch.einsum("qtc,tchw->qthw", self.mask_embed(decoded), mask_features)
        reid = None
        if text:
            # "l4p": a text query borrows the mask of its most similar learnable query
            dn = F.normalize(decoded, dim=-1)
            reid = torch.einsum("qtc,ktc->qk", dn, dn[Ql:]) / dn.shape[1]
            best = reid[:Ql].argmax(0)
            masks = torch.cat([masks[:Ql], (masks[Ql:] + masks[best]) / 2])
        small = F.interpolate(masks, size=target_size, mode="bilinear", align_corners=False)
        blocked = small.sigmoid().flatten(2).transpose(0, 1) < 0.5
        # a query that would see nothing sees everything instead (the official rule)
        blocked = blocked & ~blocked.all(-1, keepdim=True)
        return masks, blocked, reid

    def _self_attn_mask(self, Q: int, T: int, kind: str, device, Ql: int,
                        valid: torch.Tensor | None = None) -> torch.Tensor | None:
        """[Q*T, Q*T] bool, True = blocked; learnable and prompt queries never see each other.
        valid [Q - Ql] bool: a False (padding) prompt gets a group of its own, so no other query sees it."""
        if Q == Ql or (kind in ("all", "none") and valid is None):
            return None
        group = torch.zeros(Q, dtype=torch.long, device=device)
        if kind == "sep":
            group[Ql:] = 1
        elif kind == "sep-blocked":
            group[Ql:] = torch.arange(1, Q - Ql + 1, device=device)
        elif kind not in ("all", "none"):
            raise ValueError(f"unknown self-attention mask {kind!r} (sep or sep-blocked)")
        if valid is not None:
            alone = -torch.arange(1, Q - Ql + 1, device=device)
            group[Ql:] = torch.where(valid.to(device), group[Ql:], alone)
        g = group.repeat_interleave(T)
        return g[:, None] != g[None, :]
