"""Model FLOPs of the work a two-pass forward executes on real tokens: no credit for padding, nothing counted
twice that ran once.

Per token that attends to c real keys (itself included), one decoder layer costs
  2 * W                        its matmul weights W (q, k, v, o projections and the MLP)
  + 4 * H * c                  scores q.k and the weighted sum of values (H = heads x head size)
Embedding lookups, norms, activations and rotary are not matmuls and are not counted; the LM head never runs.

Which tokens run (the batch layout of model/two_pass.py: shared head in columns [0, S), then each row's rest):
  prefix   the shared head once per batch, then each row's own prefix tokens once      (pass 1 / the prefix)
  tail     the thought and EOS once per sample (per item for export)                   (pass 2 on the cache)
A row with n real tokens has its prefix at real positions 0..n-3 and its tail at n-2, n-1, so a token at real
position p attends to p + 1 keys.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class DecoderShape:
    layers: int
    matmul_weights: int  # per layer
    attn_width: int  # query heads x head size

    @property
    def per_token(self) -> int:
        return 2 * self.layers * self.matmul_weights

    def attention(self, keys: int) -> int:
        """FLOPs of the attention products of all layers for tokens attending to `keys` keys in total."""
        return 4 * self.layers * self.attn_width * keys


def decoder_shape(lm) -> DecoderShape:
    """Read from the modules themselves (any Llama/Qwen2-style decoder): every Linear inside the layers."""
    from reaemb_ray.model.two_pass import decoder_of

    layers = decoder_of(lm).layers
    weights = sum(m.weight.numel() for m in layers[0].modules() if isinstance(m, torch.nn.Linear))
    cfg = lm.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return DecoderShape(len(layers), int(weights), int(cfg.num_attention_heads * head_dim))


def _positions_sum(lo: int, hi: int) -> int:
    """sum of (p + 1) for real positions p in [lo, hi): the keys seen by those tokens."""
    return (hi * (hi + 1) - lo * (lo + 1)) // 2


def prefix_flops(shape: DecoderShape, real_lengths: list[int], shared_head: int) -> float:
    """Prefix [0, n - 2) of every row: the shared head once, each row's remaining prefix tokens once."""
    tokens = shared_head + sum(n - 2 - shared_head for n in real_lengths)
    keys = _positions_sum(0, shared_head) + sum(_positions_sum(shared_head, n - 2) for n in real_lengths)
    return float(shape.per_token * tokens + shape.attention(keys))


def tail_flops(shape: DecoderShape, real_lengths: list[int], samples_per_row: int) -> float:
    """The thought and EOS of every sample: 2 tokens attending to n - 1 and n keys."""
    keys = sum(_positions_sum(n - 2, n) for n in real_lengths)
    return float(samples_per_row * (shape.per_token * 2 * len(real_lengths) + shape.attention(keys)))


def batch_flops(shape: DecoderShape, batch: dict, samples_per_row: int = 1, share_head: bool = True) -> float:
    """Useful FLOPs of a prefix pass + `samples_per_row` tails over a tokenized batch (two_pass layout)."""
    from reaemb_ray.model.two_pass import shared_head_length

    mask = batch["attention_mask"]
    lengths = [int(n) for n in mask.sum(1)]
    S = shared_head_length(batch["input_ids"], mask, mask.shape[1] - 2) if share_head else 0
    return prefix_flops(shape, lengths, S) + tail_flops(shape, lengths, samples_per_row)
