import pytest
import torch

from reaemb_ray.model import (build_embedder, efficient_embed, embed_with_thoughts, naive_embed,
                              naive_embed_with_thoughts, prompt_states, tokenize_prompts)
from reaemb_ray.model.two_pass import _template_lengths, shared_head_length


def _batch(make_prompt, tok, attrs, max_length=128, pooling="all"):
    return tokenize_prompts(tok, [make_prompt(tok, a) for a in attrs], max_length, pooling, "item")


def test_pool_weights_select_all_tokens_the_item_tokens_or_eos(tiny_cfg, tiny_cache, prompts):
    from reaemb_ray.data.prompts import item_prompt

    _, tok, _ = build_embedder(tiny_cfg, tiny_cache, with_lora=False)
    texts = [item_prompt(tok, a, "item") for a in prompts]
    b = {p: tokenize_prompts(tok, texts, 128, p, "item") for p in ("all", "item", "item_thought", "last")}
    mask = b["all"]["attention_mask"].float()
    for p, batch in b.items():
        assert torch.equal(batch["input_ids"], b["all"]["input_ids"])  # pooling never changes the tokens
        torch.testing.assert_close(batch["pool_weights"].sum(1), torch.ones(len(texts)))
        assert (batch["pool_weights"][mask == 0] == 0).all()
    torch.testing.assert_close(b["all"]["pool_weights"], mask / mask.sum(1, keepdim=True))
    assert (b["last"]["pool_weights"][:, -1] == 1).all()
    w = b["item"]["pool_weights"]
    for i, attrs in enumerate(prompts):
        pooled = b["item"]["input_ids"][i, w[i] > 0].tolist()
        text = tok.decode(pooled[:-2])
        assert text.strip() == attrs.strip() or attrs.strip() in text and len(text) < len(attrs) + 8, text
        assert pooled[-2:] == [tok.convert_tokens_to_ids("<|Thought|>"), tok.eos_token_id]
        assert "specialist" not in text and "following attributes" not in text  # the template is left out
    # item_thought: the same tokens as item, attributes 1/2 in equal parts, <|Thought|> and EOS 1/4 each
    wt = b["item_thought"]["pool_weights"]
    assert torch.equal(wt > 0, w > 0)
    assert (wt[:, -2:] == 0.25).all()
    attributes = wt[:, :-2]
    torch.testing.assert_close(attributes.sum(1), torch.full((len(texts),), 0.5))
    for i in range(len(texts)):
        row = attributes[i][attributes[i] > 0]
        torch.testing.assert_close(row, torch.full_like(row, 0.5 / len(row)))


def test_tokenize_layout_padding_and_positions(tiny_cfg, tiny_cache, make_prompt, randomize_lora, prompts):
    module, tok, _ = build_embedder(tiny_cfg, tiny_cache, with_lora=False)
    texts = [make_prompt(tok, a) for a in prompts]
    b = tokenize_prompts(tok, texts, 128)
    ids, mask, pos = b["input_ids"], b["attention_mask"], b["position_ids"]
    thought = tok.convert_tokens_to_ids("<|Thought|>")
    assert (ids[:, -2] == thought).all() and (ids[:, -1] == tok.eos_token_id).all()
    assert mask.sum(1).min() < ids.shape[1]  # the batch really is padded
    for i, text in enumerate(texts):
        keep = mask[i].bool()
        assert ids[i, keep].tolist() == tok(text, add_special_tokens=False)["input_ids"]  # order kept, no loss
        assert pos[i, keep].tolist() == list(range(int(keep.sum())))
    head = _template_lengths(tok)[0]
    S = shared_head_length(ids, mask, ids.shape[1] - 2)
    if make_prompt.__name__ == "_make_prompt":  # the template head in the same columns of every row
        assert head > 8 and S >= head - 2 and mask[:, :S].all()
    else:  # plain left padding: the padding is all at the start of each row
        assert S == 0
        for i, n in enumerate(mask.sum(1).tolist()):
            assert mask[i, -n:].all() and not mask[i, :-n].any()


def test_tokenize_truncates_attribute_text_but_keeps_thought_and_eos(tiny_cfg, tiny_cache):
    from reaemb_ray.data.prompts import item_prompt

    _, tok, _ = build_embedder(tiny_cfg, tiny_cache, with_lora=False)
    long = "; ".join(f"feature{i} is value {i}" for i in range(200))
    b = tokenize_prompts(tok, [item_prompt(tok, long, "item")], 120)
    ids = b["input_ids"][0].tolist()
    assert len(ids) == 120
    assert "feature0 is value 0" in tok.decode(ids)  # the start of the attribute text survives
    assert ids[-2] == tok.convert_tokens_to_ids("<|Thought|>") and ids[-1] == tok.eos_token_id
    assert tok.decode(ids).startswith("<|im_start|>system")  # the head of the prompt survives
    assert tok.decode(ids).endswith("<|im_end|>\n<|im_start|>assistant\n<|Thought|><|im_end|>")  # and the closing


def test_tokenize_rejects_prompt_without_thought_or_too_short_max_length(tiny_cfg, tiny_cache, make_prompt):
    _, tok, _ = build_embedder(tiny_cfg, tiny_cache, with_lora=False)
    with pytest.raises(ValueError, match="model.max_length=32 leaves no room"):
        tokenize_prompts(tok, [make_prompt(tok, "title is x")], 32)
    with pytest.raises(ValueError, match="must end with <\\|Thought\\|>"):
        tokenize_prompts(tok, ["title is x"], 128)


def _embed_and_grads(module, batch, efficient):
    module.zero_grad()
    e = module.embed(batch, efficient=efficient)
    weights = torch.linspace(-1.0, 1.0, e.shape[1])
    (e * weights).sum().backward()  # an arbitrary scalar that touches every coordinate
    grads = {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
    return e.detach(), grads


@pytest.mark.parametrize("with_lora,pooling", [(True, "all"), (False, "all"), (True, "item"), (True, "item_thought"),
                                               (True, "last")])
def test_efficient_matches_naive_values_and_gradients(tiny_cfg, tiny_cache, make_prompt, randomize_lora, prompts,
                                                      with_lora, pooling):
    torch.manual_seed(0)
    module, tok, _ = build_embedder(tiny_cfg, tiny_cache, with_lora=with_lora)
    if with_lora:
        randomize_lora(module)
    module.eval()
    b = _batch(make_prompt, tok, prompts, pooling=pooling)
    shared = shared_head_length(b["input_ids"], b["attention_mask"], b["input_ids"].shape[1] - 2)
    assert (shared > 0) == (make_prompt.__name__ == "_make_prompt")  # both prefix paths are exercised
    e_naive, g_naive = _embed_and_grads(module, b, efficient=False)
    e_eff, g_eff = _embed_and_grads(module, b, efficient=True)
    torch.testing.assert_close(e_eff, e_naive, atol=1e-5, rtol=1e-5)
    assert set(g_eff) == set(g_naive)
    assert any("attn" in n for n in g_eff)
    assert any("lora" in n for n in g_eff) == with_lora
    for n in g_naive:
        scale = g_naive[n].abs().max().clamp(min=1e-6)
        assert (g_eff[n] - g_naive[n]).abs().max() / scale < 1e-4, n


def test_thought_changes_the_embedding(tiny_cfg, tiny_cache, make_prompt, randomize_lora, prompts):
    module, tok, _ = build_embedder(tiny_cfg, tiny_cache, with_lora=False)
    b = _batch(make_prompt, tok, prompts)
    with torch.no_grad():
        base = efficient_embed(module.lm, module.attn, b)
        module.attn.v_proj.bias.add_(1.0)
        moved = efficient_embed(module.lm, module.attn, b)
        no_thought = naive_embed(module.lm, module.attn, b, use_thought=False)
    assert (moved - base).abs().max() > 1e-3
    assert (no_thought - base).abs().max() > 1e-3


def test_item_thought_pooling_gives_what_the_thought_moves_a_fixed_share(tiny_cfg, tiny_cache, make_prompt, prompts):
    """Only the thought's and EOS's states depend on the thought (causal LM, they are last), so a change of the
    thought moves the pooled vector by (their pooling weight) x (their states' change): 1/4 under item_thought,
    1/(attribute tokens + 2) under item, row by row."""
    module, tok, _ = build_embedder(tiny_cfg, tiny_cache, with_lora=False)
    moves, weights = {}, {}
    for pooling in ("item", "item_thought"):
        b = _batch(make_prompt, tok, prompts, pooling=pooling)
        with torch.no_grad():
            base = efficient_embed(module.lm, module.attn, b)
            module.attn.v_proj.bias.add_(1.0)
            moves[pooling] = (efficient_embed(module.lm, module.attn, b) - base).norm(dim=1)
            module.attn.v_proj.bias.sub_(1.0)
        weights[pooling] = b["pool_weights"][:, -1]
    assert (weights["item_thought"] == 0.25).all() and (weights["item"] < 0.25).all()
    torch.testing.assert_close(moves["item_thought"] / moves["item"], weights["item_thought"] / weights["item"],
                               rtol=1e-3, atol=0)


@pytest.mark.parametrize("pooling", ["all", "item", "item_thought", "last"])
def test_embed_with_thoughts_matches_full_passes(tiny_cfg, tiny_cache, make_prompt, randomize_lora, prompts, pooling):
    torch.manual_seed(0)
    module, tok, _ = build_embedder(tiny_cfg, tiny_cache, with_lora=False)
    b = _batch(make_prompt, tok, prompts, pooling=pooling)
    with torch.no_grad():
        states = prompt_states(module.lm, b)
        r = states.latent_thought(module.attn)
        thoughts = r[:, None] + 0.3 * torch.randn(3, 4, r.shape[1])
        fast = embed_with_thoughts(module.lm, states, thoughts)
        slow = naive_embed_with_thoughts(module.lm, b, thoughts)
        again = embed_with_thoughts(module.lm, states, thoughts)  # the stored cache is not consumed
        plain = naive_embed(module.lm, module.attn, b)
    assert fast.shape == (3, 4, tiny_cfg_hidden(module))
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(again, fast)
    assert (fast[:, 0] - fast[:, 1]).abs().max() > 1e-4  # different thoughts, different embeddings
    # the noise-free thought through the cache equals the two-pass embedding
    torch.testing.assert_close(embed_with_thoughts(module.lm, states, r[:, None]).squeeze(1), plain,
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("groups", [2, 3])
def test_prompt_states_in_length_groups_match_one_padded_pass(tiny_cfg, tiny_cache, make_prompt, prompts, groups):
    torch.manual_seed(0)
    module, tok, _ = build_embedder(tiny_cfg, tiny_cache, with_lora=False)
    b = _batch(make_prompt, tok, prompts + [p + "; color is red" for p in prompts])  # 6 rows, 3+ lengths
    with torch.no_grad():
        one = prompt_states(module.lm, b)
        grouped = prompt_states(module.lm, b, groups=groups)
        thoughts = one.latent_thought(module.attn)[:, None] + 0.3 * torch.randn(6, 2, module.hidden_size)
        fast = embed_with_thoughts(module.lm, grouped, thoughts)
        slow = naive_embed_with_thoughts(module.lm, b, thoughts)
    m = one.prefix_mask.bool()
    torch.testing.assert_close(grouped.hidden[m], one.hidden[m], atol=1e-5, rtol=1e-5)
    for (k1, v1), (k2, v2) in zip(one.prefix_kv, grouped.prefix_kv):
        torch.testing.assert_close(k2.transpose(1, 2)[m], k1.transpose(1, 2)[m], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(v2.transpose(1, 2)[m], v1.transpose(1, 2)[m], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grouped.latent_thought(module.attn), one.latent_thought(module.attn), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-5)


def tiny_cfg_hidden(module):
    return module.hidden_size


def test_no_thought_pass_with_shared_head_matches_naive(tiny_cfg, tiny_cache, make_prompt, randomize_lora, prompts):
    torch.manual_seed(0)
    module, tok, _ = build_embedder(tiny_cfg, tiny_cache, with_lora=True)
    randomize_lora(module)
    module.eval()
    b = _batch(make_prompt, tok, prompts)
    grads = []
    for fn in (naive_embed, efficient_embed):
        module.zero_grad()
        e = fn(module.lm, module.attn, b, use_thought=False)
        e.sum().backward()
        grads.append((e.detach(), {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}))
    (e_naive, g_naive), (e_eff, g_eff) = grads
    torch.testing.assert_close(e_eff, e_naive, atol=1e-5, rtol=1e-5)
    assert set(g_eff) == set(g_naive) and any("lora" in n for n in g_eff)
    for n in g_naive:
        torch.testing.assert_close(g_eff[n], g_naive[n], atol=1e-5, rtol=1e-4)
