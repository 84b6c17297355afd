"""Rollout computation of the reasoning policy (no Ray): G replies per prompt from the current weights.

Weights are identified by (fold, version): every fold trains a fresh adapter from version 0, and folds run in
order, so a worker loads a state only when its key is newer than the one it holds.
"""
from __future__ import annotations

import time

from reaemb_ray.reasoning.generation import Sampling, make_generator


class ReasonRollout:
    def __init__(self, model_path: str, engine: str, lora, sampling: Sampling, max_model_len: int,
                 dtype: str = "float32", weight_format: str = "lora", seed: int = 0, reply_prefix: str = ""):
        self.engine, self.tok = make_generator(engine, model_path, lora, max_model_len, dtype, weight_format, seed)
        self.sampling, self.reply_prefix = sampling, reply_prefix
        self.key = (0, 0)  # (fold, version) of the weights held; a fresh adapter is the base model

    def set_weights(self, state: dict, fold: int, version: int) -> float:
        """Load the adapter of (fold, version) if newer than the one held; returns the seconds spent."""
        if (fold, version) <= self.key:
            return 0.0
        seconds = self.engine.set_lora(state, version)
        self.key = (fold, version)
        return seconds

    def tokenize(self, prompts: list[str]) -> list[list[int]]:
        return [self.tok(p, add_special_tokens=False)["input_ids"] for p in prompts]

    def generate(self, prompts: list[str], n: int, seed: int, max_new_tokens: int | None = None) -> dict:
        """n replies per prompt: prompt ids, completion ids (M x n), texts (M x n), tokens, seconds.

        Each prompt ends with the reply prefix (prefilled assistant text); a text is prefix + decoded completion."""
        t0 = time.perf_counter()
        sampling = self.sampling
        if max_new_tokens is not None:
            sampling = Sampling(sampling.temperature, sampling.top_p, sampling.repetition_penalty, max_new_tokens)
        prompt_ids = self.tokenize(prompts)
        comps = self.engine.generate(prompt_ids, n, sampling, seed)
        texts = [[self.reply_prefix + self.tok.decode(c, skip_special_tokens=True) for c in row] for row in comps]
        return {"prompt_ids": prompt_ids, "completions": comps, "texts": texts, "fold": self.key[0],
                "version": self.key[1], "tokens": sum(len(c) for row in comps for c in row),
                "seconds": time.perf_counter() - t0}

    def close(self) -> None:
        self.engine.close()
