"""Item prompts and the attribute-dropout views of LRCL.

The attribute text is `key is value; key is value`; the prompt puts a header in front
(`The {noun} item has the following attributes: \\n`), wraps it in the backbone's chat template (plain text when
the tokenizer has none) and appends `<|Thought|>` and EOS, the two positions the latent thought works on.
"""
from __future__ import annotations

import random

import numpy as np

THOUGHT_TOKEN = "<|Thought|>"
SYSTEM_PROMPT = "You are a specialist who summarizes product texts into concise, high-quality item descriptions."
USER_PREFIX = "Please provide the item description. The item information is: \n"
HEADER = "The {noun} item has the following attributes: \n"


def _clean(value: str) -> str:
    # ';' separates attributes (the views split on it), so it may not appear inside a value
    return " ".join(str(value).replace(";", ",").split())


def render_attributes(pairs, max_value_chars: int = 100) -> str:
    """[(key, value), ...] -> `key is value; key is value`, each value cut to `max_value_chars`."""
    parts = []
    for key, value in pairs:
        v = _clean(value)[:max_value_chars].strip()
        if v:
            parts.append(f"{_clean(key)} is {v}")
    return "; ".join(parts)


def item_prompt(tokenizer, attribute_text: str, item_noun: str) -> str:
    """The full prompt string for one item (a view's attribute text works the same way)."""
    if not attribute_text or not attribute_text.strip():
        raise ValueError("item_prompt: empty attribute text; every item needs at least one attribute "
                         "(prepare drops or rejects items without text, see data.on_bad_row)")
    eos = getattr(tokenizer, "eos_token", None)
    if not eos:
        raise ValueError(f"item_prompt: tokenizer {type(tokenizer).__name__} has no eos_token; set one "
                         "(tokenizer.eos_token = ...) before building prompts")
    body = HEADER.format(noun=item_noun) + attribute_text
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": USER_PREFIX + body}]
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    else:
        text = f"{SYSTEM_PROMPT}\n\n{USER_PREFIX}{body}\n"
    return text + THOUGHT_TOKEN + eos


def attribute_views(text: str, drop_ratio: float, rng: np.random.Generator | random.Random) -> tuple[str, str]:
    """Two views: split on ';', then for each view independently shuffle and drop floor(n * drop_ratio)
    attributes, keeping at least one."""
    if not 0.0 <= drop_ratio < 1.0:
        raise ValueError(f"attribute_views: drop_ratio must be in [0, 1), got {drop_ratio}")
    attrs = [a.strip() for a in text.split(";") if a.strip()]
    if not attrs:
        raise ValueError("attribute_views: empty attribute text; every item needs at least one attribute")
    keep = max(1, len(attrs) - int(len(attrs) * drop_ratio))

    def view() -> str:
        order = list(attrs)
        rng.shuffle(order)
        return "; ".join(order[:keep])

    return view(), view()
