"""Attribute rendering, item prompts with a real (locally trained) chat tokenizer, attribute-dropout views."""
from __future__ import annotations

import random

import numpy as np
import pytest

from reaemb_ray.data.prompts import (SYSTEM_PROMPT, THOUGHT_TOKEN, USER_PREFIX, attribute_views, item_prompt,
                                     render_attributes)

CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@pytest.fixture(scope="module")
def tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    special = ["<unk>", "<|im_start|>", "<|im_end|>", "<|endoftext|>"]
    tok.train_from_iterator(["title is Red polish; brand is OPI", "The beauty item has the following attributes",
                             SYSTEM_PROMPT, USER_PREFIX], trainers.BpeTrainer(vocab_size=300, special_tokens=special))
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", unk_token="<unk>")
    hf.add_special_tokens({"additional_special_tokens": [THOUGHT_TOKEN]})
    hf.chat_template = CHAT_TEMPLATE
    return hf


def test_render_attributes_cuts_and_escapes_separator():
    pairs = [("title", "A very long title"), ("brand", "X;Y"), ("empty", "  "), ("note", "a\nb")]
    assert render_attributes(pairs, max_value_chars=6) == "title is A very; brand is X,Y; note is a b"


def test_item_prompt_with_chat_template(tokenizer):
    text = item_prompt(tokenizer, "title is Red polish; brand is OPI", "beauty")
    expected = (f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\n{USER_PREFIX}"
                "The beauty item has the following attributes: \ntitle is Red polish; brand is OPI<|im_end|>\n"
                "<|im_start|>assistant\n<|Thought|><|endoftext|>")
    assert text == expected
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    # <|Thought|> is one token, second last, followed by EOS: the positions the latent thought works on
    assert ids[-2] == tokenizer.convert_tokens_to_ids(THOUGHT_TOKEN) and ids[-1] == tokenizer.eos_token_id


def test_item_prompt_plain_and_errors(tokenizer):
    import copy

    plain = copy.deepcopy(tokenizer)
    plain.chat_template = None
    text = item_prompt(plain, "title is X", "movie")
    assert text.startswith(SYSTEM_PROMPT) and "The movie item has the following attributes: \ntitle is X" in text
    assert text.endswith(THOUGHT_TOKEN + "<|endoftext|>")
    with pytest.raises(ValueError, match="empty attribute text"):
        item_prompt(tokenizer, "  ", "movie")


def test_views_drop_shuffle_and_keep_one():
    text = "a is 1; b is 2; c is 3; d is 4; e is 5"
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(50):
        v1, v2 = attribute_views(text, 0.4, rng)
        for v in (v1, v2):
            parts = v.split("; ")
            assert len(parts) == 3 and len(set(parts)) == 3  # floor(5 * 0.4) = 2 dropped
            assert set(parts) <= {"a is 1", "b is 2", "c is 3", "d is 4", "e is 5"}
            seen.add(v)
    assert len(seen) > 10  # views differ: shuffled and dropped independently
    assert attribute_views("only is one", 0.9, random.Random(1)) == ("only is one", "only is one")
    assert attribute_views(text, 0.0, random.Random(1))[0].count(";") == 4
    with pytest.raises(ValueError, match="empty attribute text"):
        attribute_views(" ; ", 0.4, rng)
    with pytest.raises(ValueError, match="drop_ratio"):
        attribute_views(text, 1.0, rng)
