"""A tiny prepared dataset with obvious co-occurrence structure, and a compact tiny backbone, for CRRL tests.

`write_synthetic_prepared`: `clusters` groups of `per_cluster` items; every user's sequence stays inside one
group, so items co-occur only with their own group. Writes every contract file of docs/ARCHITECTURE.md
(items, interactions, splits, popularity, cooccurrence over the training split only, summary), so both the
co-occurrence reward and the pretrained ID-SASRec (the `srs` reward) can run on it.

`write_compact_tiny_backbone`: a seeded random Llama whose tokenizer merges whole phrases (no whitespace
split, only after ';' and newlines), so the item prompt is 8 tokens instead of ~80. The latent thought and EOS are then a third
of the mean-pooled tokens, and the Gaussian exploration on the thought actually changes candidate ranks --
with the ~80-token prompt of the `tiny` backbone it moves the embedding by ~2% and ranks almost never change.
The method itself (prompt wording, pooling, reward) is unchanged.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

BRANDS = ["Nivea", "Olay", "Dove", "Maybelline", "Neutrogena", "Revlon", "Acme", "Burt's Bees"]
KINDS = ["lotion", "shampoo", "lipstick", "mascara", "cleanser", "serum", "nail polish", "sunscreen"]
CATS = ["Skin Care", "Hair Care", "Makeup", "Face", "Body", "Eyes", "Lips", "Fragrance"]


def item_texts(clusters: int, per_cluster: int, short_text: bool = False) -> dict[int, str]:
    """item id -> attribute text; a group shares its brand (and category)."""
    out = {}
    for k in range(clusters):
        for j in range(per_cluster):
            v = k * per_cluster + j + 1
            brand, kind, cat = BRANDS[k % 8], KINDS[(k + j) % 8], CATS[k % 8]
            out[v] = (f"brand is {brand} {k // 8}; kind is {kind}" if short_text else
                      f"title is {brand} {kind} {j}; brand is {brand}; categories is Beauty, {cat}")
    return out


def _sequences(clusters: int, per_cluster: int, users_per_cluster: int, length: int, seed: int) -> list[list[int]]:
    """Each user draws `length` items (with repeats) from one group; seeded."""
    rng = np.random.default_rng(seed)
    seqs = []
    for k in range(clusters):
        members = np.arange(k * per_cluster + 1, (k + 1) * per_cluster + 1)
        for _ in range(users_per_cluster):
            seqs.append(rng.choice(members, size=length, replace=True).tolist())
    order = rng.permutation(len(seqs))
    return [seqs[i] for i in order]


def write_synthetic_prepared(out_dir, clusters: int = 8, per_cluster: int = 4, short_text: bool = False,
                             users_per_cluster: int = 6, seq_len: int = 8, seed: int = 0) -> Path:
    from reaemb_ray.data.prepare import cooccurrence

    if per_cluster < 2:
        raise ValueError("write_synthetic_prepared: per_cluster must be >= 2 so every item has a co-occurring item")
    if seq_len < 3 + per_cluster:  # the training split (all but the last two) must cover the group
        raise ValueError(f"write_synthetic_prepared: seq_len must be >= per_cluster + 3, got {seq_len}")
    p = Path(out_dir)
    p.mkdir(parents=True, exist_ok=True)
    texts = item_texts(clusters, per_cluster, short_text)
    ids = sorted(texts)
    n = len(ids)
    seqs = _sequences(clusters, per_cluster, users_per_cluster, seq_len, seed)
    # every item must appear in some training prefix: put each group's items first in its first user's sequence
    first = {}
    for s in seqs:
        k = (s[0] - 1) // per_cluster
        if k not in first:
            first[k] = s
            s[:per_cluster] = list(range(k * per_cluster + 1, (k + 1) * per_cluster + 1))
    users = np.arange(1, len(seqs) + 1)
    attrs = [t.split("; ") for t in (texts[v] for v in ids)]
    pq.write_table(pa.table({"item_id": pa.array(ids, pa.int64()), "raw_id": [f"i{v}" for v in ids],
                             "attr_keys": [[a.split(" is ")[0] for a in x] for x in attrs],
                             "attr_values": [[a.split(" is ", 1)[1] for a in x] for x in attrs],
                             "text": [texts[v] for v in ids]}), p / "items.parquet")
    pq.write_table(pa.table({"user_id": pa.array(np.repeat(users, seq_len), pa.int64()),
                             "item_id": pa.array(np.concatenate(seqs), pa.int64()),
                             "position": pa.array(np.tile(np.arange(seq_len), len(seqs)), pa.int64()),
                             "timestamp": pa.array([None] * (len(seqs) * seq_len), pa.int64())}),
                   p / "interactions.parquet")
    train = [s[:-2] for s in seqs]
    pq.write_table(pa.table({"user_id": pa.array(users, pa.int64()),
                             "train": pa.array(train, pa.list_(pa.int64())),
                             "valid": pa.array([s[-2] for s in seqs], pa.int64()),
                             "test": pa.array([s[-1] for s in seqs], pa.int64())}), p / "splits.parquet")
    flat = np.concatenate(train)
    counts = np.bincount(flat, minlength=n + 1)
    pq.write_table(pa.table({"item_id": pa.array(ids, pa.int64()), "count": pa.array(counts[1:], pa.int64())}),
                   p / "popularity.parquet")
    a, b, c = cooccurrence(flat, np.repeat(users, [len(t) for t in train]), n)  # training split only
    pq.write_table(pa.table({"item_a": pa.array(a, pa.int64()), "item_b": pa.array(b, pa.int64()),
                             "count": pa.array(c, pa.int64())}), p / "cooccurrence.parquet")
    (p / "summary.json").write_text(json.dumps({"users": len(seqs), "items": n, "interactions": len(seqs) * seq_len,
                                                "synthetic": True, "clusters": clusters}))
    return p


def write_compact_tiny_backbone(out_dir, texts: dict[int, str], hidden: int = 64, layers: int = 2, vocab_size: int = 2048,
                                seed: int = 1234) -> Path:
    """A random Llama + a phrase-merging BPE tokenizer (no chat template) over the prompts of `texts`.

    Pass the folder as `model.backbone`. Reused when it already exists.
    """
    out = Path(out_dir)
    if (out / "config.json").exists():
        return out
    import torch
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from reaemb_ray.data.prompts import HEADER, SYSTEM_PROMPT, USER_PREFIX

    # the plain (no chat template) prompt wording of reaemb_ray.data.prompts.item_prompt, for every item
    corpus = [f"{SYSTEM_PROMPT}\n\n{USER_PREFIX}{HEADER.format(noun=noun)}{t}\n"
              for t in texts.values() for noun in ("beauty", "movie", "item")] * 8
    bpe = Tokenizer(models.BPE())
    # split only after ';' and newlines, so BPE merges each sentence / attribute into one token
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"[;\n]"), behavior="merged_with_previous"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>", "<|im_end|>"],
                                  show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(corpus, trainer=trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                  bos_token=None, unk_token=None)
    cfg = LlamaConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=2,
                      intermediate_size=2 * hidden, vocab_size=len(tok), max_position_embeddings=512,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=None,
                      tie_word_embeddings=True, rope_theta=10000.0)
    gen = torch.Generator().manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():  # deterministic weights independent of the global RNG
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.05 if p.dim() > 1 else torch.ones_like(p))
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out
