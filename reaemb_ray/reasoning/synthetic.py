"""Test fixtures of the explicit-reasoning mode: rated synthetic data and a tiny LM trained to reply in JSON.

`write_rated_prepared`: the clustered synthetic dataset of `reaemb_ray.rl.synthetic` (users stay inside one
group of items) plus a `rating` column: a group's users rate its items high or low by the group's parity (even
groups 4-5, odd groups 1-2, seeded jitter), so the rating is predictable from the item's attributes.

`ensure_json_tiny`: a seeded random Llama (hidden 128, 2 heads of size 64 -- vLLM's CPU attention rejects 16)
with a byte-level BPE tokenizer and a ChatML template, fine-tuned briefly on the reasoning prompts of that data
with replies `{"think": "...", "answer": r}`, so a real generation engine produces parseable JSON from the start.
Built once into the shared cache (file lock, atomic rename), like the `tiny` backbone.
"""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

JSON_TINY_DIR = "tiny-json-llama-v1"


def write_rated_prepared(out_dir, clusters: int = 4, per_cluster: int = 4, users_per_cluster: int = 6,
                         seq_len: int = 10, seed: int = 0) -> Path:
    from reaemb_ray.rl.synthetic import write_synthetic_prepared

    p = write_synthetic_prepared(out_dir, clusters=clusters, per_cluster=per_cluster,
                                 users_per_cluster=users_per_cluster, seq_len=seq_len, seed=seed)
    t = pq.read_table(p / "interactions.parquet")
    group = (t.column("item_id").to_numpy() - 1) // per_cluster
    jitter = np.random.default_rng(seed).integers(0, 2, t.num_rows)
    rating = np.where(group % 2 == 0, 4 + jitter, 1 + jitter).astype(np.float32)
    pq.write_table(t.append_column("rating", pa.array(rating, pa.float32())), p / "interactions.parquet")
    return p


def _reply(rng: random.Random, text: str, rating: float, noun: str) -> str:
    import json

    brand = text.split("; ")[1].removeprefix("brand is ") if "; " in text else text[:20]
    opener = rng.choice(["The user", "This user", "Their history"])
    mood = "likes" if rating >= 3 else "dislikes"
    think = (f"{opener} {mood} {brand} items. This {noun} is from {brand}, "
             f"so the rating should be close to {rating:g}.")
    return json.dumps({"think": think, "answer": int(rating)})


def _sft_pairs(prepared: Path, render, noun: str, history_items: int, seed: int) -> list[tuple[str, str]]:
    """(prompt, reply) pairs; render(user message) -> the prompt string."""
    from reaemb_ray.reasoning.prompts import user_message
    from reaemb_ray.reasoning.tasks import load_task_data, training_examples

    data = load_task_data(prepared, "rating")
    held = np.zeros(data.num_items + 1, dtype=bool)
    rng = random.Random(seed)
    pairs = []
    for e in training_examples(data, held, history_items, 0.3, seed):
        hist = [(data.texts[i], r) for i, r in e.history]
        prompt = render(user_message("rating", data.texts[e.item_id], hist, noun, data.scale))
        pairs.append((prompt, _reply(rng, data.texts[e.item_id], e.truth, noun)))
    return pairs


def _build_json_tiny(prepared: Path, noun: str, steps: int, seed: int):
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from reaemb_ray.model.backbone import CHAT_TEMPLATE

    from reaemb_ray.reasoning.prompts import SYSTEM_PROMPT, chat_prompt

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    chatml = lambda m: (f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\n{m}<|im_end|>\n"  # noqa: E731
                        "<|im_start|>assistant\n")
    corpus = _sft_pairs(prepared, chatml, noun, 2, seed)
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1024, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator([p + r for p, r in corpus], trainer=trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                  bos_token=None, unk_token=None)
    tok.chat_template = CHAT_TEMPLATE
    pairs = _sft_pairs(prepared, lambda m: chat_prompt(tok, m), noun, 2, seed)
    if pairs[0][0] != corpus[0][0]:
        raise AssertionError("the tokenizer's chat template renders prompts unlike the corpus it was trained on")
    cfg = LlamaConfig(hidden_size=128, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                      intermediate_size=256, vocab_size=len(tok), max_position_embeddings=1024,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=None,
                      tie_word_embeddings=True, rope_theta=10000.0)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    rng = random.Random(seed)
    eos = tok.eos_token
    model.train()
    for _ in range(steps):  # teacher forcing on the reply tokens only
        batch = rng.sample(pairs, min(16, len(pairs)))
        prompt_ids = [tok(p, add_special_tokens=False)["input_ids"] for p, _ in batch]
        reply_ids = [tok(r + eos, add_special_tokens=False)["input_ids"] for _, r in batch]
        width = max(len(a) + len(b) for a, b in zip(prompt_ids, reply_ids))
        ids = torch.full((len(batch), width), tok.pad_token_id)
        labels = torch.full((len(batch), width), -100)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, (a, b) in enumerate(zip(prompt_ids, reply_ids)):
            ids[i, :len(a) + len(b)] = torch.tensor(a + b)
            labels[i, len(a):len(a) + len(b)] = torch.tensor(b)
            mask[i, :len(a) + len(b)] = 1
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return model, tok


def ensure_json_tiny(cache_dir, work_dir, noun: str = "movie", steps: int = 120, seed: int = 0) -> Path:
    """The JSON-trained tiny LM folder in the shared cache (built once, on `write_rated_prepared` data)."""
    import os

    from reaemb_ray.model.backbone import _build_once

    cache = Path(os.path.expanduser(str(cache_dir)))

    def build():
        prepared = write_rated_prepared(Path(work_dir) / "json-tiny-data")
        return _build_json_tiny(prepared, noun, steps, seed)

    return _build_once(cache, JSON_TINY_DIR, build)
