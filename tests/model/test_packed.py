"""The packed frozen-LM passes (model/packed.py) against the padded HF passes they replace."""
import pytest
import torch

from reaemb_ray.model import packed
from reaemb_ray.model.two_pass import (decoder_of, embed_with_thoughts, naive_embed_with_thoughts, prompt_states,
                                       shared_head_length)

SHAPES = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, vocab_size=50, max_position_embeddings=256)


def _lm(kind: str):
    """A random decoder of each family: Llama with grouped-query attention, Qwen2 (biased q/k/v), Qwen3 (q/k norms,
    not packable)."""
    from transformers import (LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM, Qwen3Config,
                              Qwen3ForCausalLM)

    torch.manual_seed(0)
    make = {"llama": (LlamaConfig, LlamaForCausalLM), "qwen2": (Qwen2Config, Qwen2ForCausalLM),
            "qwen3": (Qwen3Config, Qwen3ForCausalLM)}[kind]
    cfg = make[0](**SHAPES, **({"head_dim": 16} if kind == "qwen3" else {}))
    cfg._attn_implementation = "sdpa"
    return make[1](cfg).eval()


def _batch(lengths: list[int], head: int, seed: int = 0) -> dict:
    """Rows in the two-pass layout: `head` shared tokens, left padding, each row's own tokens (last two: the
    thought slot and EOS); pooling over every real token."""
    gen = torch.Generator().manual_seed(seed)
    B, L = len(lengths), max(lengths)
    ids = torch.zeros(B, L, dtype=torch.long)
    mask = torch.zeros(B, L, dtype=torch.long)
    shared = torch.randint(3, 50, (head,), generator=gen)
    for i, n in enumerate(lengths):
        rest = torch.randint(3, 50, (n - head,), generator=gen)
        rest[-2:] = torch.tensor([1, 2])  # thought slot, EOS
        ids[i, :head], ids[i, L - len(rest):] = shared, rest
        mask[i, :head], mask[i, L - len(rest):] = 1, 1
    w = mask.float() / mask.sum(1, keepdim=True)
    return {"input_ids": ids, "attention_mask": mask, "position_ids": (mask.cumsum(-1) - 1).clamp(min=0),
            "pool_weights": w}


def test_packable_covers_llama_and_qwen2_only():
    assert packed.packable(decoder_of(_lm("llama")))
    assert packed.packable(decoder_of(_lm("qwen2")))
    assert not packed.packable(decoder_of(_lm("qwen3")))  # q/k norms: the HF forward runs instead


@pytest.mark.parametrize("kind", ["llama", "qwen2", "qwen3"])
@pytest.mark.parametrize("lengths,head", [([20, 13, 27, 11], 8), ([9, 16, 12], 0), ([14], 0)])
def test_packed_passes_equal_the_padded_passes(kind, lengths, head):
    lm = _lm(kind)
    b = _batch(lengths, head)
    t = b["input_ids"].shape[1] - 2
    assert shared_head_length(b["input_ids"], b["attention_mask"], t) == (head if len(lengths) > 1 else 0)
    with torch.no_grad():
        padded = prompt_states(lm, b)
        fast = prompt_states(lm, b, packed=True)
        thoughts = torch.randn(len(lengths), 3, SHAPES["hidden_size"], generator=torch.Generator().manual_seed(1))
        emb = embed_with_thoughts(lm, fast, thoughts, packed=True)
        reference = naive_embed_with_thoughts(lm, b, thoughts)
    real = padded.prefix_mask.bool()
    torch.testing.assert_close(fast.hidden[real], padded.hidden[real], atol=1e-5, rtol=1e-5)
    if kind != "qwen3":
        assert (fast.hidden[~real] == 0).all()  # packed: padding is never run (qwen3 falls back to the padded pass)
    for (k1, v1), (k2, v2) in zip(padded.prefix_kv, fast.prefix_kv):
        torch.testing.assert_close(k2.transpose(1, 2)[real], k1.transpose(1, 2)[real], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(v2.transpose(1, 2)[real], v1.transpose(1, 2)[real], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fast.prefix_pooled, padded.prefix_pooled, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(emb, reference, atol=1e-5, rtol=1e-5)
    assert (emb[:, 0] - emb[:, 1]).abs().max() > 1e-3  # different thoughts, different embeddings


def test_packed_tails_leave_the_prefix_cache_untouched():
    lm = _lm("llama")
    b = _batch([15, 12], 8)
    with torch.no_grad():
        states = prompt_states(lm, b, packed=True)
        before = [(k.clone(), v.clone()) for k, v in states.prefix_kv]
        thoughts = torch.randn(2, 4, SHAPES["hidden_size"])
        once = embed_with_thoughts(lm, states, thoughts, packed=True)
        again = embed_with_thoughts(lm, states, thoughts, packed=True)
    torch.testing.assert_close(again, once)
    for (k, v), (k0, v0) in zip(states.prefix_kv, before):
        assert torch.equal(k, k0) and torch.equal(v, v0)
