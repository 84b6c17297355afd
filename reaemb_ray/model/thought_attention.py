"""The latent-thought attention module: one head that reads the prompt and writes the thought vector r."""
from __future__ import annotations

import math

import torch
from torch import nn


def rope_cos_sin(positions: torch.Tensor, dim: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables (..., dim) for rotate-half RoPE at integer `positions` (...)."""
    inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, device=positions.device, dtype=torch.float32) / dim))
    angles = positions.float()[..., None] * inv_freq  # (..., dim/2)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return (x.float() * cos + rotated.float() * sin).to(x.dtype)


class LatentThoughtAttention(nn.Module):
    """Single-head attention with RoPE: query at t-1 (just before `<|Thought|>`), keys/values on [0, t).

    `forward(hidden (B, L, d), attention_mask (B, L), thought_index (B,) or int) -> r (B, d)`. Positions for
    RoPE come from the mask (left padding shifts nothing: only position differences enter q.k).
    """

    def __init__(self, hidden_size: int, rope_base: float = 1000.0):
        super().__init__()
        if hidden_size % 2:
            raise ValueError(f"LatentThoughtAttention needs an even hidden size for RoPE, got {hidden_size}")
        self.hidden_size = hidden_size
        self.rope_base = rope_base
        self.q_proj = nn.Linear(hidden_size, hidden_size, bias=True)
        self.k_proj = nn.Linear(hidden_size, hidden_size, bias=True)
        self.v_proj = nn.Linear(hidden_size, hidden_size, bias=True)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor,
                thought_index: torch.Tensor | int, position_ids: torch.Tensor | None = None) -> torch.Tensor:
        B, L, d = hidden.shape
        if d != self.hidden_size:
            raise ValueError(f"hidden states have size {d} but the thought attention was built for {self.hidden_size}")
        hidden = hidden.to(self.q_proj.weight.dtype)
        if isinstance(thought_index, int):
            thought_index = torch.full((B,), thought_index, dtype=torch.long, device=hidden.device)
        mask = attention_mask.bool()
        if position_ids is None:
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        rows = torch.arange(B, device=hidden.device)
        qi = thought_index - 1
        q = self.q_proj(hidden[rows, qi])  # (B, d)
        k = self.k_proj(hidden)  # (B, L, d)
        v = self.v_proj(hidden)
        cos, sin = rope_cos_sin(position_ids, d, self.rope_base)  # (B, L, d)
        q = apply_rope(q, cos[rows, qi], sin[rows, qi])
        k = apply_rope(k, cos, sin)
        scores = torch.einsum("bd,bld->bl", q.float(), k.float()) / math.sqrt(d)
        keep = mask & (torch.arange(L, device=hidden.device)[None, :] < thought_index[:, None])
        scores = scores.masked_fill(~keep, float("-inf"))
        weights = torch.softmax(scores, dim=-1)
        return torch.einsum("bl,bld->bd", weights, v.float()).to(hidden.dtype)
