"""The transformer building blocks shared by the item-level models (:mod:`genrec.sasrec`,
:mod:`genrec.generative`, and through them :mod:`fusion.joint`): SASRec-style self-attention, the
pre-LayerNorm block, and the causal + padding attention mask.

Inputs are item token tensors in the convention of :mod:`genrec.batching` (0 = padding, left-padded).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["SelfAttention", "Block", "attention_mask", "encode_sequence", "xavier_init", "unit_rows"]


def unit_rows(x: torch.Tensor) -> torch.Tensor:
    """``x`` ``[n, d]`` with every row scaled to unit L2 norm (an all-zero row stays zero)."""
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)


def attention_mask(pad: torch.Tensor) -> torch.Tensor:
    """Causal + padding mask ``[B, 1, L, L]`` (True: position i may attend to j) for ``pad [B, L]``
    (True = padding), broadcast over heads.

    Positions attend to earlier real items only, so a history's output never depends on how much
    padding its batch has; every position may see itself, so no attention row is empty.
    """
    L = pad.shape[1]
    causal = torch.ones(L, L, dtype=torch.bool, device=pad.device).tril()
    allowed = (causal & ~pad[:, None, :]) | torch.eye(L, dtype=torch.bool, device=pad.device)
    return allowed[:, None]  # [B, 1, L, L]


class SelfAttention(nn.Module):
    """Multi-head attention whose queries come from the normalised input and keys/values from the
    raw input, as in the SASRec reference code."""

    def __init__(self, hidden: int, heads: int, dropout: float):
        super().__init__()
        if hidden % heads:
            raise ValueError(f"hidden ({hidden}) must be divisible by num_heads ({heads})")
        self.heads, self.dropout = heads, dropout
        self.q = nn.Linear(hidden, hidden)
        self.kv = nn.Linear(hidden, 2 * hidden)
        self.proj = nn.Linear(hidden, hidden)

    def forward(self, query: torch.Tensor, keys: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        # query, keys: [B, L, H]; allowed: [B, 1, L, L] bool, True where position i may attend to j
        B, L, H = query.shape
        q = self.q(query).view(B, L, self.heads, H // self.heads).transpose(1, 2)  # [B, nh, L, hd]
        k, v = (t.view(B, L, self.heads, H // self.heads).transpose(1, 2) for t in self.kv(keys).split(H, -1))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(B, L, H))


class Block(nn.Module):
    """Pre-LayerNorm transformer block with causal attention: the attention residual as in the SASRec
    reference code (taken from the normalised query), the feed-forward one the usual pre-LN ``x + ffn(ln(x))``
    (the reference's adds ``ln(x)``)."""

    def __init__(self, hidden: int, heads: int, dropout: float):
        super().__init__()
        self.ln_attn = nn.LayerNorm(hidden, eps=1e-8)
        self.attn = SelfAttention(hidden, heads, dropout)
        self.ln_ffn = nn.LayerNorm(hidden, eps=1e-8)
        self.ffn = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, hidden), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor, allowed: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        # x: [B, L, H]; allowed: [B, 1, L, L] (attention_mask); pad: [B, L] bool (True = padding)
        q = self.ln_attn(x)
        x = q + self.attn(q, x, allowed)  # SASRec's residual is taken from the normalised query
        x = x + self.ffn(self.ln_ffn(x))
        return x.masked_fill(pad[..., None], 0.0)


def encode_sequence(x: torch.Tensor, pad: torch.Tensor, pos_emb: nn.Embedding, drop: nn.Module,
                    blocks: nn.ModuleList, ln_out: nn.LayerNorm) -> torch.Tensor:
    """The item-level causal transformer of the semantic-ID models: input item vectors ``x [B, T, H]``
    (already scaled), ``pad [B, T]`` (True = padding) -> hidden states ``[B, T, H]``. Positions are
    counted from the right (histories are left-padded), so the last item always has the last of
    ``pos_emb``'s ``max_len`` embeddings."""
    T, max_len = x.shape[1], pos_emb.num_embeddings
    x = x + pos_emb(torch.arange(max_len - T, max_len, device=x.device))
    x = drop(x).masked_fill(pad[..., None], 0.0)
    allowed = attention_mask(pad)  # [B, 1, T, T]: earlier real items and itself
    for block in blocks:
        x = block(x, allowed, pad)
    return ln_out(x)


def xavier_init(m: nn.Module) -> None:
    """Xavier-normal weights for linear and embedding layers (padding rows zero), zero biases: the
    initialisation of the semantic-ID models, applied with ``model.apply(xavier_init)``."""
    if isinstance(m, (nn.Linear, nn.Embedding)):
        nn.init.xavier_normal_(m.weight)
        if isinstance(m, nn.Embedding) and m.padding_idx is not None:
            with torch.no_grad():
                m.weight[m.padding_idx].zero_()
    if isinstance(m, nn.Linear) and m.bias is not None:
        nn.init.zeros_(m.bias)
