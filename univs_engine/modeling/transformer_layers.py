"""Post-norm attention/FFN blocks of the mask decoder, batch-first, on scaled_dot_product_attention.

State-dict names follow nn.MultiheadAttention (`in_proj_weight`, `in_proj_bias`, `out_proj`) so the
official checkpoints load unchanged, but the math runs through F.scaled_dot_product_attention, which
picks fused kernels on GPU.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MultiheadAttention(nn.Module):
    """nn.MultiheadAttention's parameters and math; inputs [B, L, C]; mask True = blocked."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                blocked: torch.Tensor | None = None, need_weights: bool = False):
        """q [B, Lq, C], k/v [B, Lk, C], blocked broadcastable to [B, heads, Lq, Lk] (bool)."""
        w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        b_q, b_k, b_v = self.in_proj_bias.chunk(3)
        q, k, v = F.linear(q, w_q, b_q), F.linear(k, w_k, b_k), F.linear(v, w_v, b_v)
        B, Lq, C = q.shape
        h = self.heads
        q = q.view(B, Lq, h, C // h).transpose(1, 2)
        k = k.view(B, -1, h, C // h).transpose(1, 2)
        v = v.view(B, -1, h, C // h).transpose(1, 2)
        if need_weights:
            logits = (q @ k.transpose(-1, -2)) / (C // h) ** 0.5
            if blocked is not None:
                logits = logits.masked_fill(blocked, float("-inf"))
            weights = logits.softmax(-1)
            out = weights @ v
        else:
            allowed = None if blocked is None else ~blocked
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
            weights = None
        out = self.out_proj(out.transpose(1, 2).reshape(B, Lq, C))
        return (out, weights.mean(1)) if need_weights else out


class SelfAttentionLayer(nn.Module):
    """x = LN(x + MHA(x + pos, x + pos, x))."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.self_attn = MultiheadAttention(dim, heads)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x, pos=None, blocked=None):
        qk = x if pos is None else x + pos
        return self.norm(x + self.self_attn(qk, qk, x, blocked))


class CrossAttentionLayer(nn.Module):
    """x = LN(x + MHA(x + query_pos, memory + pos, memory)); also used for ProCA and language->vision."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.multihead_attn = MultiheadAttention(dim, heads)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x, memory, pos=None, query_pos=None, blocked=None):
        q = x if query_pos is None else x + query_pos
        k = memory if pos is None else memory + pos
        return self.norm(x + self.multihead_attn(q, k, memory, blocked))


class FFNLayer(nn.Module):
    """x = LN(x + W2 relu(W1 x))."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.linear1 = nn.Linear(dim, hidden)
        self.linear2 = nn.Linear(hidden, dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x):
        return self.norm(x + self.linear2(F.relu(self.linear1(x))))


class MLP(nn.Module):
    """Linear layers with ReLU between them (the mask-embedding head)."""

    def __init__(self, dim_in: int, dim_hidden: int, dim_out: int, num_layers: int):
        super().__init__()
        dims = [dim_in] + [dim_hidden] * (num_layers - 1) + [dim_out]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x
