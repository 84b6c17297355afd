"""Rollout engines: pass 1 (prompt hidden states) and pass 2 (embeddings for G thoughts per prompt).

All engines expose `pass1(batch) -> Pass1` and `embed(p1, batch, thoughts (B, G, d)) -> (B, G, d)`:
- `torch`: prefix reuse -- the prefix's hidden states and key/value cache once, then each thought runs
  only the last two positions (thought, EOS) on the cached prefix.
- `naive`: the reference -- a full pass 1, then one full pass 2 per thought.
- `vllm`: pass 1 = vLLM pooling runner `token_embed` (per-token last-layer states of the prefix); pass 2 =
  vLLM `embed` with `prompt_embeds` and MEAN pooling. r itself is computed in torch from the current weights.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from reaemb_ray.model import two_pass


@dataclass
class Pass1:
    """What the attention module reads: prefix hidden states (B, t, d), the full mask/positions (B, L)."""

    hidden: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    states: object = None  # engine-private (the torch engine's PromptStates)

    @property
    def thought_index(self) -> int:
        return self.attention_mask.shape[1] - 2

    def latent_thought(self, attn) -> torch.Tensor:
        t = self.thought_index
        return attn(self.hidden, self.attention_mask[:, :t], t, self.position_ids[:, :t])


class TorchEngine:
    name = "torch"

    def __init__(self, lm):
        self.lm = lm

    @torch.no_grad()
    def pass1(self, batch) -> Pass1:
        s = two_pass.prompt_states(self.lm, batch)
        return Pass1(s.hidden, s.attention_mask, s.position_ids, s)

    @torch.no_grad()
    def embed(self, p1: Pass1, batch, thoughts) -> torch.Tensor:
        return two_pass.embed_with_thoughts(self.lm, p1.states, thoughts)


class NaiveEngine:
    name = "naive"

    def __init__(self, lm):
        self.lm = lm

    @torch.no_grad()
    def pass1(self, batch) -> Pass1:
        ids, mask, pos = batch["input_ids"], batch["attention_mask"], batch["position_ids"]
        h = two_pass.decoder_of(self.lm)(input_ids=ids, attention_mask=mask, position_ids=pos,
                                         use_cache=False).last_hidden_state
        return Pass1(h[:, : ids.shape[1] - 2], mask, pos)

    @torch.no_grad()
    def embed(self, p1: Pass1, batch, thoughts) -> torch.Tensor:
        return two_pass.naive_embed_with_thoughts(self.lm, batch, thoughts)


def _lm_only_folder(model_dir) -> str:
    """vLLM loads every *.safetensors in a folder: hide the attention weights behind a folder of symlinks."""
    from pathlib import Path

    from reaemb_ray.model.generator import ATTN_FILE

    src = Path(model_dir).resolve()
    out = src.parent / (src.name + "_lm_only")
    out.mkdir(exist_ok=True)
    for f in src.iterdir():
        link = out / f.name
        if f.name != ATTN_FILE and not link.exists():
            try:
                link.symlink_to(f)
            except FileExistsError:  # another worker made it first
                pass
    return str(out)


class VllmEngine:
    """Two vLLM pooling engines (one LLM serves one pooling task) over the merged model folder."""

    name = "vllm"

    def __init__(self, lm, model_dir: str, max_length: int, kv_cache_gb: int = 1):
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(kv_cache_gb))
        os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
        from vllm import LLM
        from vllm.config import PoolerConfig

        common = dict(model=str(_lm_only_folder(model_dir)), runner="pooling", convert="embed", enforce_eager=True,
                      dtype="float32", max_model_len=max_length, seed=0)
        self.lm = lm  # only its input embedding table is used (to build prompt_embeds)
        self.tokens = LLM(**common, pooler_config=PoolerConfig(task="token_embed", use_activation=False))
        self.pooled = LLM(**common, enable_prompt_embeds=True,
                          pooler_config=PoolerConfig(task="embed", pooling_type="MEAN", use_activation=False))

    @torch.no_grad()
    def pass1(self, batch) -> Pass1:
        ids, mask, pos = batch["input_ids"], batch["attention_mask"], batch["position_ids"]
        B, L = ids.shape
        t = L - 2
        # the prefix alone: its states do not depend on the thought/EOS after it (causal LM)
        prompts = [{"prompt_token_ids": ids[i, :t][mask[i, :t].bool()].tolist()} for i in range(B)]
        outs = self.tokens.encode(prompts, pooling_task="token_embed", use_tqdm=False)
        d = self.lm.config.hidden_size
        h = torch.zeros(B, t, d)
        for i, o in enumerate(outs):
            data = torch.as_tensor(o.outputs.data, dtype=torch.float32)
            h[i, mask[i, :t].bool()] = data  # back into the batch layout (shared head, then left padding)
        return Pass1(h, mask, pos)

    @torch.no_grad()
    def embed(self, p1: Pass1, batch, thoughts) -> torch.Tensor:
        ids, mask = batch["input_ids"], batch["attention_mask"]
        B, G, d = thoughts.shape
        t = ids.shape[1] - 2
        emb = self.lm.get_input_embeddings()(ids).float()
        reqs = []
        for i in range(B):
            keep = mask[i].bool()
            for g in range(G):
                e = emb[i].clone()
                e[t] = thoughts[i, g]
                reqs.append({"prompt_embeds": e[keep]})
        outs = self.pooled.embed(reqs, use_tqdm=False)
        return torch.stack([torch.as_tensor(o.outputs.embedding, dtype=torch.float32) for o in outs]).view(B, G, d)

    def close(self):
        for llm in (self.tokens, self.pooled):
            engine = getattr(llm, "llm_engine", None)
            if engine is not None and hasattr(engine, "engine_core"):
                try:
                    engine.engine_core.shutdown()
                except Exception:  # best effort: the process exits anyway
                    pass


def _vllm(lm, model_dir: str | None, max_length: int) -> VllmEngine:
    if model_dir is None:
        raise ValueError("the vllm engine needs model_dir, the merged HF model folder (crrl/base)")
    return VllmEngine(lm, model_dir, max_length)


ENGINES = {
    "torch": lambda lm, model_dir, max_length: TorchEngine(lm),
    "naive": lambda lm, model_dir, max_length: NaiveEngine(lm),
    "vllm": _vllm,
}


def make_engine(name: str, lm, model_dir: str | None = None, max_length: int = 1024):
    """The rollout engine `name` over the frozen `lm` (vllm also needs the merged model folder)."""
    if name not in ENGINES:
        raise ValueError(f"unknown rollout engine {name!r}; use one of {sorted(ENGINES)} (crrl.engine)")
    return ENGINES[name](lm, model_dir, max_length)
