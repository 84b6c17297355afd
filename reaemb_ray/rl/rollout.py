"""Rollout computation (no Ray): for a batch of items, G noisy latent thoughts and their embeddings, plus the
noise-free embeddings of the reward candidates under the same weights."""
from __future__ import annotations

import time

import numpy as np
import torch

from reaemb_ray.data.prompts import item_prompt
from reaemb_ray.device import Placement, placement, to_device
from reaemb_ray.model.two_pass import tokenize_prompts
from reaemb_ray.rl.engines import make_engine
from reaemb_ray.rl.objectives import exploration_sigma
from reaemb_ray.rl.policy import load_base


class Rollout:
    def __init__(self, base_dir: str, texts: dict[int, str], engine: str, group_size: int, sigma: float,
                 anchor: bool, item_noun: str, max_length: int, dtype: str = "float32", chunk: int = 16,
                 sigma_relative: bool = False, vllm_gpu_memory: float = 0.9, where: Placement | None = None):
        from reaemb_ray.model.generator import read_meta

        self.device = (where or placement(dtype)).device  # the GPU Ray gave this actor, if any
        self.lm, self.attn, self.tok = load_base(base_dir, dtype)
        self.pooling = read_meta(base_dir).get("pooling", "all")  # as the generator was trained
        self.attn.eval().to(self.device)
        if engine != "vllm":  # vLLM holds its own copy; this LM only lends it the input embedding table
            self.lm.to(self.device)
        self.engine = make_engine(engine, self.lm, base_dir, max_length, dtype, vllm_gpu_memory, self.device)
        self.texts, self.noun, self.max_length = texts, item_noun, max_length
        self.group_size, self.sigma, self.anchor, self.chunk = group_size, sigma, anchor, chunk
        self.sigma_relative = sigma_relative
        self.version = 0
        self._cache: dict[int, np.ndarray] = {}  # item -> noise-free embedding at self.version

    def set_weights(self, state: dict, version: int) -> None:
        """Load attention weights of a newer version (older or equal versions are ignored)."""
        if version <= self.version:
            return
        self.attn.load_state_dict({k: torch.tensor(np.array(v)) for k, v in state.items()})
        self.version = version
        self._cache.clear()  # candidate embeddings belong to one weight version

    def tokenize(self, item_ids) -> dict:
        try:
            prompts = [item_prompt(self.tok, self.texts[int(v)], self.noun) for v in item_ids]
        except KeyError as e:
            raise KeyError(f"item {e.args[0]} is not in prepared/items.parquet") from None
        return to_device(tokenize_prompts(self.tok, prompts, self.max_length, self.pooling, self.noun), self.device)

    @torch.no_grad()
    def noise_free(self, item_ids) -> np.ndarray:
        """Noise-free embeddings (n, d) under the current weights, cached per weight version."""
        todo = [int(v) for v in dict.fromkeys(int(x) for x in item_ids) if int(v) not in self._cache]
        for i in range(0, len(todo), self.chunk):
            ids = todo[i:i + self.chunk]
            batch = self.tokenize(ids)
            p1 = self.engine.pass1(batch)
            mu = p1.latent_thought(self.attn).float()
            emb = self.engine.embed(p1, batch, mu[:, None]).float().cpu().numpy()[:, 0]
            self._cache.update(zip(ids, emb))
        return np.stack([self._cache[int(v)] for v in item_ids])

    @torch.no_grad()
    def rollout(self, item_ids, cand_ids: dict[str, np.ndarray], seed: int) -> dict:
        """Noisy samples for `item_ids` (M,), and candidate embeddings per reward source (M, C, d)."""
        t0 = time.perf_counter()
        batch = self.tokenize(item_ids)
        p1 = self.engine.pass1(batch)
        mu = p1.latent_thought(self.attn).float()  # behaviour policy mean (M, d)
        # same batch -> same noise, also when re-issued, and on any device (drawn on the CPU)
        gen = torch.Generator().manual_seed(int(seed))
        sigma = exploration_sigma(mu, self.sigma, self.sigma_relative)  # (M,)
        eps = torch.randn(mu.shape[0], self.group_size, mu.shape[1], generator=gen).to(self.device) * sigma[:, None, None]
        if self.anchor:
            eps[:, 0] = 0.0
        actions = mu[:, None] + eps
        emb = self.engine.embed(p1, batch, actions)
        t_items = time.perf_counter() - t0
        cand = {s: self.noise_free(c.reshape(-1)).reshape(*c.shape, -1) for s, c in cand_ids.items()}
        host = lambda x: x.cpu().numpy()  # noqa: E731
        return {
            "item_ids": np.asarray(item_ids, dtype=np.int64), "version": self.version,
            "actions": host(actions), "mu": host(mu), "sigma": host(sigma), "emb": host(emb.float()),
            "cand_emb": cand,
            # what the learner needs to recompute mu_theta (and the paper objective's LM log-probs)
            "hidden": host(p1.hidden.float()), "attention_mask": host(batch["attention_mask"]),
            "position_ids": host(batch["position_ids"]), "input_ids": host(batch["input_ids"]),
            "seconds": time.perf_counter() - t0, "item_seconds": t_items,
        }
