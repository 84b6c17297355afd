"""Reasoning prompts and the parser of the JSON answers they ask for.

Two tasks, both with a truth from the training split only (docs/RECCOT.md):
- `rating`: the user's recent history (items with their ratings) and one more item; answer = the user's rating.
  Without a history (the item-level prompt used for the final reasoning) the question is the rating a typical
  user gives the item.
- `next_item` (data without ratings): the history and a candidate; answer = yes when the candidate is the item
  the user chose next, no for a sampled item the user never chose. Without a history: is the item popular.

The model must reply with one JSON object `{"think": ..., "answer": ...}`. `parse_response` accepts exactly that,
optionally wrapped in a Markdown code fence (a habit of chat models); anything else is invalid.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass

SYSTEM_PROMPT = ("You are a recommendation analyst. You reason about a user's taste and an item's attributes, then "
                 "reply with one JSON object and nothing else.")
TASKS = ("rating", "next_item")
_FENCE = re.compile(r"^```(?:json)?\s*|\s*```$")


def _history_lines(history: list[tuple[str, float | None]]) -> str:
    return "\n".join(f"- {text}" + ("" if r is None else f" -> rated {r:g}") for text, r in history)


def user_message(task: str, item_text: str, history: list[tuple[str, float | None]], noun: str,
                 scale: tuple[float, float] = (1.0, 5.0)) -> str:
    """The user turn: history (attribute text, rating or None), oldest first, then the item and the question."""
    lo, hi = scale
    parts = []
    if history:
        parts.append(f"A user's recent {noun}s, oldest first:\n{_history_lines(history)}")
    if task == "rating":
        who = "this user gives" if history else "a typical user gives"
        parts.append(f"The {noun}: {item_text}")
        parts.append(f"Predict the rating {who} this {noun} on a {lo:g}-{hi:g} scale. Reply with JSON only: "
                     f'{{"think": "<your analysis of the taste and the {noun}>", "answer": <rating {lo:g}-{hi:g}>}}')
    elif task == "next_item":
        parts.append(f"The candidate {noun}: {item_text}")
        question = (f"Is this the {noun} the user chose next?" if history
                    else f"Is this {noun} one that many users choose?")
        parts.append(f'{question} Reply with JSON only: {{"think": "<your analysis>", "answer": "yes" or "no"}}')
    else:
        raise ValueError(f"unknown reasoning task {task!r}; use one of {TASKS} (reason.task)")
    return "\n\n".join(parts)


def chat_prompt(tokenizer, message: str) -> str:
    """System + user turn in the tokenizer's chat template (plain text when it has none), ready to generate."""
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": message}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return f"{SYSTEM_PROMPT}\n\n{message}\n\n"


@dataclass(frozen=True)
class Parsed:
    valid: bool  # one JSON object with both keys "think" and "answer"
    think: str = ""  # the analysis as text (a non-string value is JSON-encoded)
    answer: object = None


def parse_response(text: str) -> Parsed:
    body = _FENCE.sub("", text.strip()).strip()
    try:
        obj = json.loads(body)
    except (json.JSONDecodeError, RecursionError):
        return Parsed(False)
    if not isinstance(obj, dict) or "think" not in obj or "answer" not in obj:
        return Parsed(False)
    think = obj["think"] if isinstance(obj["think"], str) else json.dumps(obj["think"])
    return Parsed(True, think, obj["answer"])


_YES, _NO = {"yes", "true", "1", "y"}, {"no", "false", "0", "n"}


def answer_value(task: str, answer: object) -> float | None:
    """The answer as a number (rating, or 1/0 for yes/no), None when it is not one."""
    if isinstance(answer, bool):
        return float(answer) if task == "next_item" else None
    if task == "rating":
        if isinstance(answer, (int, float)):
            value = float(answer)
        elif isinstance(answer, str):
            try:
                value = float(answer.strip())
            except ValueError:
                return None
        else:
            return None
        return value if math.isfinite(value) else None
    word = str(answer).strip().lower() if isinstance(answer, (str, int, float)) else ""
    return 1.0 if word in _YES else 0.0 if word in _NO else None
