"""Frozen-LM passes over packed tokens: the linear layers run on the real tokens only, attention per row.

The rollout engine's prefix pass (two_pass.prompt_states) runs a batch whose rows have different lengths. The
padded way runs every row to the batch's longest row; `grouped_prefix_pass` cuts the padding by running rows in
groups of similar length, but then the weights are read once per group and each matmul sees only a group's rows.
Here every decoder layer works on one (N, d) matrix of the batch's real tokens (N = their count, no padding), so
each weight is read once per pass and each matmul has all N rows; only attention goes through the padded batch
layout, where it needs rows and columns.

Why it is exact: in a decoder layer everything but attention (norms, q/k/v/o projections, rotary at the token's
own position id, the MLP, residuals) acts on each token by itself, so it is the same in any arrangement of the
tokens. Attention is run in the padded layout: each token's key and value are written at its (row, column), its
query at its column, and `scaled_dot_product_attention` sees the mask the padded pass would use (a token sees
the real tokens of its row up to its own column). So every real token gets what the padded pass gives it.
Columns that are padding are never run as tokens: their keys and values stay zero and masked, as padding;
their query slots attend to themselves only (no fully masked row, no NaN), and nothing reads them back.

`packable` says for which decoders this holds as written (Llama and Qwen2 layers: pre-norm, rotary, no
sliding window); any other decoder falls back to the HF forward in two_pass.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

PACKABLE_TYPES = ("llama", "qwen2")  # the layer arithmetic below is theirs (Gemma, Qwen3 ... differ: q/k norms,
# scaled embeddings, sandwich norms)


def packable(dec) -> bool:
    """Whether `dec` (an HF decoder without LM head) computes exactly what `layers_pass` computes."""
    cfg = dec.config
    if cfg.model_type not in PACKABLE_TYPES:
        return False
    if getattr(cfg, "sliding_window", None) is not None and getattr(cfg, "use_sliding_window", True):
        return False
    parts = ("embed_tokens", "rotary_emb", "norm", "layers")
    attn = ("q_proj", "k_proj", "v_proj", "o_proj", "head_dim", "scaling")
    return all(hasattr(dec, p) for p in parts) and all(
        all(hasattr(layer.self_attn, a) for a in attn) and not hasattr(layer.self_attn, "q_norm")
        for layer in dec.layers)


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half rotary embedding of x (N, heads, head_dim) with cos/sin (N, 1, head_dim)."""
    half = x.shape[-1] // 2
    return x * cos + torch.cat([-x[..., half:], x[..., :half]], dim=-1) * sin


def layers_pass(dec, x: torch.Tensor, positions: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor,
                kv: list[tuple[torch.Tensor, torch.Tensor]], queries: int, mask: torch.Tensor) -> torch.Tensor:
    """All decoder layers over packed tokens; returns their last-layer states (N, d), after the final norm.

    x (N, d): the tokens' input embeddings; positions (N,): their position ids; token n sits at (rows[n], cols[n])
    of the batch layout. kv: per layer (keys, values) (B, kv_heads, T, head_dim), holding what the tokens attend
    to before them; each layer writes its tokens' keys/values there. The tokens' columns lie in the last
    `queries` columns [T - queries, T); mask (B, 1, queries, T), True = may attend, for queries at those columns.
    """
    first = dec.layers[0].self_attn
    B, T = kv[0][0].shape[0], kv[0][0].shape[2]
    q_cols = cols - (T - queries)
    q_pad = x.new_zeros(B, dec.config.num_attention_heads, queries, first.head_dim)  # reused by every layer
    cos, sin = (c[0, :, None] for c in dec.rotary_emb(x, positions[None]))
    N = x.shape[0]
    for layer, (keys, values) in zip(dec.layers, kv):
        at = layer.self_attn
        h = layer.input_layernorm(x)
        keys[rows, :, cols] = _rope(at.k_proj(h).view(N, -1, at.head_dim), cos, sin)
        values[rows, :, cols] = at.v_proj(h).view(N, -1, at.head_dim)
        q_pad[rows, :, q_cols] = _rope(at.q_proj(h).view(N, -1, at.head_dim), cos, sin)
        o = F.scaled_dot_product_attention(q_pad, keys, values, attn_mask=mask, scale=at.scaling, enable_gqa=True)
        x = x + at.o_proj(o[rows, :, q_cols].reshape(N, -1))
        x = x + layer.mlp(layer.post_attention_layernorm(x))
    return dec.norm(x)


def _sees(key_mask: torch.Tensor, first: int, T: int) -> torch.Tensor:
    """(B, 1, T - first, T) mask for queries at columns [first, T): the row's real keys at or before the query's
    column, and the query's own column (so that a padding query attends to something)."""
    q = torch.arange(first, T, device=key_mask.device)[:, None]
    k = torch.arange(T, device=key_mask.device)[None, :]
    return (key_mask.bool()[:, None, None, :] & (k <= q)) | (k == q)


@torch.no_grad()
def packed_prefix_pass(dec, ids: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor, t: int, shared: int):
    """`two_pass.prefix_pass` of a frozen decoder, packed: the shared head [0, shared) once at batch size 1, then
    every row's own real tokens of [shared, t) as one packed pass on the head's keys/values. Returns the
    last-layer states (B, t, d) and per layer (keys, values) (B, kv_heads, t, head_dim), zero at padding."""
    B, S = ids.shape[0], shared
    cfg, dtype = dec.config, dec.embed_tokens.weight.dtype
    head_dim = dec.layers[0].self_attn.head_dim
    kv = [tuple(torch.zeros(B, cfg.num_key_value_heads, t, head_dim, dtype=dtype, device=ids.device)
                for _ in range(2)) for _ in dec.layers]
    hidden = torch.zeros(B, t, cfg.hidden_size, dtype=dtype, device=ids.device)
    if S:
        head_kv = [tuple(k[:1, :, :S].clone() for k in layer) for layer in kv]
        cols = torch.arange(S, device=ids.device)
        h = layers_pass(dec, dec.embed_tokens(ids[0, :S]), pos[0, :S], torch.zeros_like(cols), cols, head_kv, S,
                        _sees(mask[:1, :S], 0, S))
        hidden[:, :S] = h
        for (k, v), (hk, hv) in zip(kv, head_kv):
            k[:, :, :S], v[:, :, :S] = hk, hv
    own = mask[:, S:t].bool()
    if not own.any():
        return hidden, kv
    rows, cols = own.nonzero(as_tuple=True)
    cols = cols + S
    first = int(cols.min())  # the leftmost column any row uses: queries in [first, t)
    h = layers_pass(dec, dec.embed_tokens(ids[rows, cols]), pos[rows, cols], rows, cols, kv, t - first,
                    _sees(mask[:, :t], first, t))
    hidden[rows, cols] = h
    return hidden, kv


@torch.no_grad()
def packed_tails_pass(dec, prefix_kv: list[tuple[torch.Tensor, torch.Tensor]], tail: torch.Tensor,
                      positions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Last-layer states (B, n, d) of n tail tokens per row (B, n, d input embeddings, position ids (B, n)) on a
    stored prefix cache (keys/values (B, kv_heads, t, head_dim) per layer, left untouched), each tail token
    attending as `mask` (B, 1, n, t + n) says: two_pass.embed_with_thoughts' folded tails as one packed pass."""
    B, n, d = tail.shape
    kv = [tuple(torch.cat([x, x.new_zeros(*x.shape[:2], n, x.shape[3])], dim=2) for x in layer) for layer in prefix_kv]
    T = kv[0][0].shape[2]
    rows = torch.arange(B, device=tail.device).repeat_interleave(n)
    cols = torch.arange(T - n, T, device=tail.device).repeat(B)
    return layers_pass(dec, tail.reshape(B * n, d), positions.reshape(-1), rows, cols, kv, n, mask).view(B, n, d)
