"""Tokenisation and the two-pass latent-thought forward, naive and with prefix reuse.

Layout: `[shared head | pad ... | rest of the prompt, <|Thought|>, EOS]`: the longest token prefix common to
every row of the batch (system prompt, user prefix, "The movie item has the following attributes: title is")
sits in the same columns [0, S) of every row, the rest is left padded, so `<|Thought|>` sits at t = L-2 and EOS
at L-1; positions are `(mask.cumsum(-1) - 1).clamp(min=0)` so padding does not shift them.

Why the shared head is computed once: in a causal LM the states of [0, S) depend only on those tokens, which
are the same in every row, so one batch-1 pass over them, its key/value cache expanded to the batch, gives
exactly what B separate passes give (with gradients: backward through the expansion sums them). With SmolLM2's
chat template the head is about 50 of ~85 (MovieLens) or ~100 (Beauty) tokens.

Pooling (`model.pooling`): the item embedding is a weighted sum of last-layer states with per-row weights that
`tokenize_prompts` lays out beside the tokens (`pool_weights`, each row sums to 1): `all` = the mean over every
token (published); `item` = the mean over the item's own attribute tokens plus `<|Thought|>` and EOS (the shared
template -- about half of every prompt -- left out); `item_thought` = the same tokens with fixed shares: half on
the attribute tokens' mean, a quarter each on `<|Thought|>` and EOS (under `item` those two are ~5% of a Beauty
embedding, so what CRRL trains -- the thought, which moves only those two states -- barely reaches the table);
`last` = the EOS state alone. Every path below pools the same way, so the exactness arguments hold for each
pooling.

Why prefix reuse is exact: in a causal LM the hidden states and keys/values of positions [0, t) depend only
on the tokens [0, t), which are the same in pass 1 and pass 2 (only position t changes). The attention
module reads exactly those positions (query t-1, keys [0, t)). So pass 2 = (prefix, computed once) + the
last two positions run on the prefix's key/value cache; the pooled mean combines both parts.
With LoRA training, that one prefix pass runs with gradients (it *is* pass 2's prefix); the attention
module sees its detached output, which equals pass 1's no-grad hidden states (same model, same tokens).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch

from reaemb_ray.model.backbone import THOUGHT_TOKEN

_SENTINEL = "@@ATTRIBUTES@@"


def decoder_of(lm):
    """The inner decoder (no LM head) of a causal LM, through a peft wrapper when present."""
    base = lm.get_base_model() if hasattr(lm, "get_base_model") else lm
    return base.get_decoder()


@lru_cache(maxsize=8)
def _template_lengths(tokenizer) -> tuple[int, int]:
    """(head, tail) token counts around the attribute text: system prompt + user prefix before it, template
    closing + `<|Thought|>` + EOS after it. Truncation only ever cuts between the two."""
    from reaemb_ray.data.prompts import SYSTEM_PROMPT, USER_PREFIX

    tail = THOUGHT_TOKEN + tokenizer.eos_token
    head = f"{SYSTEM_PROMPT}\n\n{USER_PREFIX}"  # as item_prompt writes it without a chat template
    if tokenizer.chat_template:
        chat = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": USER_PREFIX + _SENTINEL}]
        head, after = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True).split(_SENTINEL)
        tail = after + tail
    count = lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else 0
    return count(head), count(tail)


def _common_prefix(rows: list[list[int]]) -> int:
    """Length of the longest common prefix of all rows, leaving at least 3 tokens of each row after it."""
    limit = min(len(r) for r in rows) - 3
    n = 0
    while n < limit and all(r[n] == rows[0][n] for r in rows):
        n += 1
    return max(n, 0)


POOLINGS = ("all", "item", "item_thought", "last")
TEMPLATE_POOLINGS = ("item", "item_thought")  # the poolings that find the attribute tokens in the template


@lru_cache(maxsize=16)
def _template_ids(tokenizer, item_noun: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Token ids of the prompt around the attribute text (header included before, `<|Thought|>` EOS after)."""
    from reaemb_ray.data.prompts import item_prompt

    before, after = item_prompt(tokenizer, _SENTINEL, item_noun).split(_SENTINEL)
    encode = lambda text: tuple(tokenizer(text, add_special_tokens=False)["input_ids"])  # noqa: E731
    return encode(before), encode(after)


def item_token_span(row: list[int], before: tuple[int, ...], after: tuple[int, ...]) -> tuple[int, int]:
    """[start, end) of the attribute tokens in one prompt row: after the longest prefix it shares with the
    template's head and before the longest suffix it shares with the template's tail. A token that BPE merged
    across a boundary counts as an item token; the span is never empty."""
    start = 0
    while start < min(len(before), len(row) - 3) and row[start] == before[start]:
        start += 1
    end = len(row)
    while len(row) - end < len(after) and end > start + 1 and row[end - 1] == after[len(after) - (len(row) - end) - 1]:
        end -= 1
    return start, end


def row_pool_weights(row: list[int], pooling: str, template: tuple | None) -> list[float]:
    """Weights over one row's tokens (summing to 1) for `pooling`; `template` is `_template_ids(...)` for item."""
    n = len(row)
    if pooling == "all":
        return [1.0 / n] * n
    if pooling == "last":
        return [0.0] * (n - 1) + [1.0]
    if pooling not in TEMPLATE_POOLINGS:
        raise KeyError(f"unknown pooling {pooling!r}; use one of {', '.join(POOLINGS)}")
    start, end = item_token_span(row, *template)
    attributes = range(start, min(end, n - 2))
    if pooling == "item":
        keep = set(attributes) | {n - 2, n - 1}  # attributes, <|Thought|>, EOS
        return [1.0 / len(keep) if j in keep else 0.0 for j in range(n)]
    w = [0.0] * n
    for j in attributes:
        w[j] = 0.5 / len(attributes)
    w[n - 2] = w[n - 1] = 0.25 if attributes else 0.5  # truncated to nothing: thought and EOS share it all
    return w


def tokenize_prompts(tokenizer, prompts: list[str], max_length: int, pooling: str = "all",
                     item_noun: str = "item") -> dict[str, torch.Tensor]:
    """Batch in the module's layout (see the top): the rows' common prefix first, then left padding,
    `<|Thought|>` at L-2 and EOS at L-1; `pool_weights` (B, L) float32 for `pooling` (see the top; `item`
    needs the `item_noun` the prompts were built with).

    Over-long prompts lose the end of the attribute text: the head (system prompt, first attributes such as
    the title) and the tail (template closing, thought, EOS) are kept.
    """
    return batch_from_token_ids(tokenizer, prompt_token_ids(tokenizer, prompts), max_length, pooling, item_noun)


def prompt_token_ids(tokenizer, prompts: list[str]) -> list[list[int]]:
    """Each prompt's token ids (no special tokens added), checked to end with `<|Thought|>` and EOS. A caller
    that needs the lengths first (the export orders a batch by them) tokenizes once and builds batches with
    `batch_from_token_ids`."""
    if not prompts:
        raise ValueError("tokenize_prompts got an empty list of prompts")
    thought_id = tokenizer.convert_tokens_to_ids(THOUGHT_TOKEN)
    eos_id = tokenizer.eos_token_id
    if thought_id is None or thought_id == tokenizer.unk_token_id:
        raise ValueError(f"the tokenizer has no {THOUGHT_TOKEN} token; load it with reaemb_ray.model.backbone.load_backbone")
    rows = tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
    for i, ids in enumerate(rows):
        if len(ids) < 3 or ids[-2] != thought_id or ids[-1] != eos_id:
            raise ValueError(
                f"prompt {i} must end with {THOUGHT_TOKEN} followed by the EOS token {tokenizer.eos_token!r} "
                f"(got ...{prompts[i][-60:]!r}); build prompts with reaemb_ray.data.prompts.item_prompt")
    return rows


def batch_from_token_ids(tokenizer, rows: list[list[int]], max_length: int, pooling: str = "all",
                         item_noun: str = "item") -> dict[str, torch.Tensor]:
    """`tokenize_prompts` from rows of `prompt_token_ids`."""
    head, tail = _template_lengths(tokenizer)
    if max_length < head + tail + 8:
        raise ValueError(f"model.max_length={max_length} leaves no room for the item text: the prompt template alone "
                         f"takes {head + tail} tokens with this tokenizer; set model.max_length >= {head + tail + 32}")
    rows = [ids[: max_length - tail] + ids[-tail:] if len(ids) > max_length else ids for ids in rows]
    S = _common_prefix(rows) if len(rows) > 1 else 0  # the shared head in columns [0, S), the rest left padded
    L = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), L), tokenizer.pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), L), dtype=torch.long)
    pool_weights = torch.zeros((len(rows), L), dtype=torch.float32)
    input_ids[:, :S] = torch.tensor(rows[0][:S], dtype=torch.long)
    attention_mask[:, :S] = 1
    template = _template_ids(tokenizer, item_noun) if pooling in TEMPLATE_POOLINGS else None
    for i, ids in enumerate(rows):
        rest = ids[S:]
        input_ids[i, L - len(rest):] = torch.tensor(rest)
        attention_mask[i, L - len(rest):] = 1
        w = torch.tensor(row_pool_weights(ids, pooling, template))
        pool_weights[i, :S], pool_weights[i, L - len(rest):] = w[:S], w[S:]
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids,
            "pool_weights": pool_weights}


def pool(hidden: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted sum of `hidden` (B, L, d) with `pool_weights` (B, L), in float32."""
    return (hidden.float() * weights.to(torch.float32)[..., None]).sum(1)


def _last_hidden(dec, **kw) -> torch.Tensor:
    return dec(**kw).last_hidden_state


MIN_SHARED = 8  # a shared head shorter than this is not worth a separate pass


def shared_head_length(ids: torch.Tensor, mask: torch.Tensor, t: int) -> int:
    """Number of leading columns (< t) that hold the same unpadded token in every row; 0 for one row."""
    if ids.shape[0] < 2 or t < 2:
        return 0
    same = ((ids == ids[:1]).all(0) & (mask == 1).all(0))[: t - 1]
    n = int(same.to(torch.long).cumprod(0).sum())
    return n if n >= MIN_SHARED else 0


def prefix_pass(dec, ids: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor, t: int, share: bool = True):
    """Last-layer states (B, t, d) and key/value cache of the prefix [0, t): the columns shared by every row
    once at batch size 1 (cache expanded to B), then the rest of each row on that cache."""
    S = shared_head_length(ids, mask, t) if share else 0
    if S == 0:
        out = dec(input_ids=ids[:, :t], attention_mask=mask[:, :t], position_ids=pos[:, :t], use_cache=True)
        return out.last_hidden_state, out.past_key_values
    B = ids.shape[0]
    head = dec(input_ids=ids[:1, :S], attention_mask=mask[:1, :S], position_ids=pos[:1, :S], use_cache=True)
    cache = head.past_key_values
    cache.batch_repeat_interleave(B)
    rest = dec(input_ids=ids[:, S:t], attention_mask=mask[:, :t], position_ids=pos[:, S:t], past_key_values=cache,
               use_cache=True)
    h = torch.cat([head.last_hidden_state.expand(B, -1, -1), rest.last_hidden_state], dim=1)
    return h, rest.past_key_values


def naive_embed(lm, attn, batch: dict, use_thought: bool = True) -> torch.Tensor:
    """Reference two-pass embedding (B, d): pass 1 without grad -> r -> full pass 2 with r at `<|Thought|>`."""
    dec = decoder_of(lm)
    ids, mask, pos, w = batch["input_ids"], batch["attention_mask"], batch["position_ids"], batch["pool_weights"]
    if not use_thought:
        return pool(_last_hidden(dec, input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False), w)
    t = ids.shape[1] - 2
    with torch.no_grad():
        h1 = _last_hidden(dec, input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False)
    r = attn(h1, mask, t, pos)
    emb = lm.get_input_embeddings()(ids)
    emb = torch.cat([emb[:, :t], r[:, None].to(emb.dtype), emb[:, t + 1:]], dim=1)
    h2 = _last_hidden(dec, inputs_embeds=emb, attention_mask=mask, position_ids=pos, use_cache=False)
    return pool(h2, w)


def efficient_embed(lm, attn, batch: dict, use_thought: bool = True, share: bool = True) -> torch.Tensor:
    """Same function as `naive_embed` (values and gradients) with one prefix pass (its shared head once per
    batch unless share=False) + a two-position step."""
    dec = decoder_of(lm)
    ids, mask, pos, w = batch["input_ids"], batch["attention_mask"], batch["position_ids"], batch["pool_weights"]
    if not use_thought:  # one pass; only the shared head is saved
        return pool(prefix_pass(dec, ids, mask, pos, ids.shape[1], share)[0], w)
    t = ids.shape[1] - 2
    h_prefix, cache = prefix_pass(dec, ids, mask, pos, t, share)  # carries LoRA gradients: pass 2's prefix
    r = attn(h_prefix.detach(), mask[:, :t], t, pos[:, :t])  # pass 1's H: same values, no gradient
    tail = torch.cat([r[:, None].to(h_prefix.dtype), lm.get_input_embeddings()(ids[:, t + 1:])], dim=1)
    h_tail = dec(inputs_embeds=tail, attention_mask=mask, position_ids=pos[:, t:],
                 past_key_values=cache, use_cache=True).last_hidden_state
    return pool(h_prefix, w[:, :t]) + pool(h_tail, w[:, t:])


@dataclass
class PromptStates:
    """Everything a frozen LM computes once per prompt, so many thoughts can be tried cheaply.

    hidden: pass-1 last-layer states of the prefix [0, t) (B, t, d) -- the attention module's input.
    prefix_kv: per layer (keys, values) of the prefix, for `embed_with_thoughts`.
    prefix_pooled: the prefix's part of the pooled embedding, sum_j w_j h_j over [0, t) (B, d, float32);
    tail_weights: the pooling weights of the thought and EOS (B, 2); eos_embeds: EOS input embedding (B, 1, d).
    """

    hidden: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    prefix_kv: list[tuple[torch.Tensor, torch.Tensor]]
    prefix_pooled: torch.Tensor
    tail_weights: torch.Tensor
    eos_embeds: torch.Tensor

    @property
    def thought_index(self) -> int:
        return self.attention_mask.shape[1] - 2

    @property
    def prefix_mask(self) -> torch.Tensor:
        return self.attention_mask[:, : self.thought_index]

    @property
    def prefix_positions(self) -> torch.Tensor:
        return self.position_ids[:, : self.thought_index]

    def latent_thought(self, attn) -> torch.Tensor:
        """r = attn(H) (B, d); differentiable in the attention module's weights."""
        return attn(self.hidden, self.prefix_mask, self.thought_index, self.prefix_positions)


def length_groups(rest: torch.Tensor, groups: int) -> list[torch.Tensor]:
    """Row indices in `groups` runs of about equal size, in order of `rest` (each row's unpadded length)."""
    order = torch.argsort(rest, stable=True)
    return [g for g in torch.tensor_split(order, min(groups, len(order))) if len(g)]


@torch.no_grad()
def grouped_prefix_pass(dec, ids: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor, t: int, groups: int):
    """`prefix_pass` (no gradients) with the rows run in `groups` groups of similar length, so that little of the
    work is padding, and put back into the batch layout: states (B, t, d) and per layer (keys, values).

    Why it is the same: a row's states and keys/values depend only on its own real tokens and positions (padding
    is masked out and positions come from the mask), so which other rows share its pass and how much padding
    they add change nothing. The shared head still runs once for the whole batch: each group continues from its
    keys/values. Columns that are padding in every row of a group are simply not run; in the batch layout they
    stay zero and masked, as padding.
    """
    from transformers import DynamicCache

    B = ids.shape[0]
    S = shared_head_length(ids, mask, t)
    head = dec(input_ids=ids[:1, :S], attention_mask=mask[:1, :S], position_ids=pos[:1, :S], use_cache=True) if S else None
    own = mask[:, S:t].bool()
    rest = torch.where(own.any(1), (t - S) - own.to(torch.long).argmax(1), 0)  # from a row's first own token to t
    hidden, kv = None, None
    for idx in length_groups(rest, groups):
        lo = t - int(rest[idx].max())  # the group's columns: [lo, t) after the head
        cache = None if head is None else DynamicCache(ddp_cache_data=[
            (la.keys.expand(len(idx), -1, -1, -1), la.values.expand(len(idx), -1, -1, -1))
            for la in head.past_key_values.layers])
        out = dec(input_ids=ids[idx, lo:t], attention_mask=torch.cat([mask[idx, :S], mask[idx, lo:t]], dim=1),
                  position_ids=pos[idx, lo:t], past_key_values=cache, use_cache=True)
        if hidden is None:
            hidden = out.last_hidden_state.new_zeros(B, t, out.last_hidden_state.shape[-1])
            kv = [tuple(x.new_zeros(B, x.shape[1], t, x.shape[3]) for x in (la.keys, la.values))
                  for la in out.past_key_values.layers]
        hidden[idx, lo:t] = out.last_hidden_state
        for (k, v), la in zip(kv, out.past_key_values.layers):
            k[idx, :, lo:t], v[idx, :, lo:t] = la.keys[:, :, S:], la.values[:, :, S:]
    if head is not None:
        hidden[:, :S] = head.last_hidden_state
        for (k, v), la in zip(kv, head.past_key_values.layers):
            k[:, :, :S], v[:, :, :S] = la.keys, la.values
    return hidden, kv


@torch.no_grad()
def prompt_states(lm, batch: dict, share: bool = True, groups: int = 1, packed: bool = False) -> PromptStates:
    """Pass 1 over the prefix of a frozen LM (no gradients). `packed` runs the rows' real tokens without padding
    (model/packed.py) where the decoder allows it, else `groups` > 1 runs the rows in that many groups of similar
    length (grouped_prefix_pass); both pay when a batch's prompt lengths vary."""
    from reaemb_ray.model import packed as packing

    dec = decoder_of(lm)
    ids, mask, pos = batch["input_ids"], batch["attention_mask"], batch["position_ids"]
    t = ids.shape[1] - 2
    if packed and share and packing.packable(dec):
        h, kv = packing.packed_prefix_pass(dec, ids, mask, pos, t, shared_head_length(ids, mask, t))
    elif groups > 1 and share:
        h, kv = grouped_prefix_pass(dec, ids, mask, pos, t, groups)
    else:
        h, cache = prefix_pass(dec, ids, mask, pos, t, share)
        kv = [(layer.keys, layer.values) for layer in cache.layers]
    w = batch["pool_weights"]
    return PromptStates(hidden=h, attention_mask=mask, position_ids=pos, prefix_kv=kv,
                        prefix_pooled=pool(h, w[:, :t]), tail_weights=w[:, t:].to(torch.float32),
                        eos_embeds=lm.get_input_embeddings()(ids[:, t + 1:]))


def tail_attention_mask(prefix_mask: torch.Tensor, group: int) -> torch.Tensor:
    """Boolean (B, 1, 2G, t + 2G) mask (True = may attend) for G (thought, EOS) pairs folded into one sequence:
    every tail token sees the prefix's real tokens; thought g sees itself, EOS g sees thought g and itself;
    no token sees another sample's pair."""
    B, t = prefix_mask.shape
    n = 2 * group
    pair = torch.arange(n) // 2
    own = (pair[:, None] == pair[None, :]) & (torch.arange(n)[None, :] <= torch.arange(n)[:, None])
    prefix = prefix_mask.bool()[:, None, None, :].expand(B, 1, n, t)
    return torch.cat([prefix, own.to(prefix_mask.device).expand(B, 1, n, n)], dim=-1)


def embed_with_thoughts(lm, states: PromptStates, thoughts: torch.Tensor, packed: bool = False) -> torch.Tensor:
    """Embeddings (B, G, d) for G thoughts per prompt on the stored prefix cache, all B x G tails in one call.

    Why this equals G separate two-position passes: the G (thought, EOS) pairs of a prompt are laid out as one
    sequence of 2G tokens after the prefix, each pair at the positions (t, t + 1) it would have alone, under
    `tail_attention_mask`: a pair's tokens see the prefix and their own earlier tokens and nothing of the other
    pairs. Linear layers, norms and the MLP act on each token by itself and rotary embeddings depend only on
    the position ids, so each pair's states are those of its own pass. The prefix's keys/values are read once
    per prompt instead of being copied G times, and the linear layers run on B x 2G rows at once. `packed` runs
    that call as model/packed.py's `packed_tails_pass` where the decoder allows it (same values, no HF cache).
    """
    from transformers import DynamicCache

    from reaemb_ray.model import packed as packing

    B, G, d = thoughts.shape
    if B != states.hidden.shape[0]:
        raise ValueError(f"thoughts have batch size {B} but the prompt states have {states.hidden.shape[0]}")
    t = states.thought_index
    eos = states.eos_embeds.to(thoughts.device)
    tail = torch.stack([thoughts.to(eos.dtype), eos.expand(B, G, d)], dim=2).reshape(B, 2 * G, d)
    pos = states.position_ids[:, t:].repeat(1, G)  # (t, t+1) for every pair
    dec, mask = decoder_of(lm), tail_attention_mask(states.prefix_mask, G)
    if packed and packing.packable(dec):
        h = packing.packed_tails_pass(dec, states.prefix_kv, tail, pos, mask)
    else:
        cache = DynamicCache(ddp_cache_data=list(states.prefix_kv))  # its updates make new tensors: reusable
        h = dec(inputs_embeds=tail, attention_mask=mask, position_ids=pos, past_key_values=cache,
                use_cache=True).last_hidden_state
    h = h.view(B, G, 2, d).float()
    w = states.tail_weights  # (B, 2): the pooling weights of the thought and EOS
    return states.prefix_pooled[:, None] + w[:, None, 0, None] * h[:, :, 0] + w[:, None, 1, None] * h[:, :, 1]


def naive_embed_with_thoughts(lm, batch: dict, thoughts: torch.Tensor) -> torch.Tensor:
    """Reference for `embed_with_thoughts`: one full forward per thought."""
    dec = decoder_of(lm)
    ids, mask, pos, w = batch["input_ids"], batch["attention_mask"], batch["position_ids"], batch["pool_weights"]
    t = ids.shape[1] - 2
    emb = lm.get_input_embeddings()(ids)
    outs = []
    for g in range(thoughts.shape[1]):
        e = torch.cat([emb[:, :t], thoughts[:, g, None].to(emb.dtype), emb[:, t + 1:]], dim=1)
        h = _last_hidden(dec, inputs_embeds=e, attention_mask=mask, position_ids=pos, use_cache=False)
        outs.append(pool(h, w))
    return torch.stack(outs, dim=1)
