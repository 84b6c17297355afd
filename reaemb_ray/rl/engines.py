"""Rollout engines: pass 1 (prompt hidden states) and pass 2 (embeddings for G thoughts per prompt).

All engines expose `pass1(batch) -> Pass1` and `embed(p1, batch, thoughts (B, G, d)) -> (B, G, d)`:
- `torch`: prefix reuse -- the prefix's hidden states and key/value cache once, then each thought runs
  only the last two positions (thought, EOS) on the cached prefix.
- `naive`: the reference -- a full pass 1, then one full pass 2 per thought.
- `vllm`: one vLLM pooling engine (`token_embed`: per-token last-layer states) with prefix caching: pass 1 = the
  prefix's states; pass 2 = each sample's prompt with the thought in its input embeddings, reading the prefix
  from pass 1's cached KV blocks and pooled here with the batch's `pool_weights` (any `model.pooling`; see
  VllmEngine). r itself is computed in torch from the current weights.

Every engine runs on the device of the LM it is given (torch/naive) or on the GPU of its actor (vLLM) and returns
tensors on `engine.device`, the device of the rollout's attention module.
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
    """Prefix reuse on a frozen HF model: the prefix once, its rows' real tokens packed without padding
    (model/packed.py; for decoders it does not cover, rows in `length_groups` groups of similar length:
    two_pass.grouped_prefix_pass), then all B x G tails in one call on its keys/values
    (two_pass.embed_with_thoughts)."""

    name = "torch"

    def __init__(self, lm, length_groups: int = 4):
        self.lm, self.length_groups = lm, length_groups
        self.device = next(lm.parameters()).device

    @torch.no_grad()
    def pass1(self, batch) -> Pass1:
        s = two_pass.prompt_states(self.lm, batch, groups=self.length_groups, packed=True)
        return Pass1(s.hidden, s.attention_mask, s.position_ids, s)

    @torch.no_grad()
    def embed(self, p1: Pass1, batch, thoughts) -> torch.Tensor:
        return two_pass.embed_with_thoughts(self.lm, p1.states, thoughts, packed=True)


class NaiveEngine:
    name = "naive"

    def __init__(self, lm):
        self.lm = lm
        self.device = next(lm.parameters()).device

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


def vllm_memory_share(configured: float, gpu_fraction: float) -> float:
    """vLLM's `gpu_memory_utilization` (the share of the whole GPU it may fill with weights, activations and KV
    cache): `crrl.vllm_gpu_memory_utilization` when set, else 90% of the GPU fraction Ray gave the rollout actor,
    so that what Ray packs beside it on the same GPU (a learner at 0.5, another rollout worker) keeps its part.
    A CPU actor (fraction 0) gets vLLM's usual 0.9, which the CPU build ignores (it reads VLLM_CPU_KVCACHE_SPACE)."""
    if configured:
        return configured
    return round(0.9 * min(gpu_fraction, 1.0), 3) if gpu_fraction > 0 else 0.9


class VllmEngine:
    """One vLLM pooling engine (`token_embed`: per-token last-layer states) with prefix caching serves both
    passes over the merged model folder (vLLM 0.32's offline API serves only the task an `LLM` was built for, and
    a weighted sum of `token_embed` states is the pooled embedding: one copy of the weights and one KV cache).

    Pass 1 sends each prompt's prefix [0, t) and gets all its states back. Pass 2 sends each sample as the whole
    prompt with its thought written into the input embeddings, and reads the prefix from pass 1's cached KV
    blocks: vLLM recomputes only what lies past the last full cached block (under `block_size` prefix tokens)
    plus the thought and EOS, whose two states (the last two returned) complete the pooled embedding with the
    prefix part from pass 1.

    How the cache is made to match (vLLM 0.32): a block's hash covers its token ids and, for requests with
    `prompt_embeds`, the embedding rows of the block. Both passes therefore go in vLLM's mixed form (token ids,
    a per-position "is a token id" flag, and embedding rows): every position is a token id except the thought,
    and the rows at token-id positions are zeros, which vLLM ignores for the forward and hashes alike in both
    passes. Pass 1 keeps vLLM's default for `token_embed` (`skip_reading_prefix_cache`, so all its states
    come back); pass 2 reads the cache. Were a block evicted before pass 2 reads it, vLLM recomputes it and the
    result is the same: only the last two states are used.

    The zero rows travel with every request (a prompt's length x hidden size floats, in and out of vLLM's engine
    process); that is the price of the mixed form.
    """

    name = "vllm"

    def __init__(self, lm, model_dir: str, max_length: int, dtype: str = "float32", gpu_memory: float = 0.9,
                 device: torch.device = torch.device("cpu"), kv_cache_gb: int = 1, block_size: int = 32):
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(kv_cache_gb))
        os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
        from vllm import LLM, PoolingParams
        from vllm.config import PoolerConfig

        self.lm, self.device = lm, device  # only the LM's input embedding width is read (the thought's rows)
        self.llm = LLM(model=str(_lm_only_folder(model_dir)), runner="pooling", convert="embed", enforce_eager=True,
                       dtype=dtype, max_model_len=max_length, seed=0, gpu_memory_utilization=gpu_memory,
                       enable_prompt_embeds=True, enable_prefix_caching=True, block_size=block_size,
                       pooler_config=PoolerConfig(task="token_embed", use_activation=False))
        self.read_cache = PoolingParams(task="token_embed", skip_reading_prefix_cache=False)
        self.block_size = block_size  # 32: the smallest the CPU attention backend takes (GPU backends: 16)
        self.pass2_computed: list[int] = []  # tokens vLLM computed per sample in the last pass 2 (the rest was cached)

    def _request(self, row: list[int], thought: torch.Tensor | None = None) -> dict:
        rows = torch.zeros(len(row), self.lm.config.hidden_size)
        is_token = [True] * len(row)
        if thought is not None:
            rows[-2], is_token[-2] = thought, False  # <|Thought|> sits second to last
        return {"prompt_token_ids": row, "prompt_is_token_ids": is_token, "prompt_embeds": rows}

    def _states(self, requests, params=None) -> list[torch.Tensor]:
        outs = self.llm.encode(requests, pooling_params=params, pooling_task="token_embed", use_tqdm=False)
        return [torch.as_tensor(o.outputs.data).float() for o in outs]

    @torch.no_grad()
    def pass1(self, batch) -> Pass1:
        ids, mask, pos = (batch[k].cpu() for k in ("input_ids", "attention_mask", "position_ids"))
        B, L = ids.shape
        t = L - 2
        # the prefix alone: its states do not depend on the thought/EOS after it (causal LM)
        keep = mask[:, :t].bool()
        states = self._states([self._request(ids[i, :t][keep[i]].tolist()) for i in range(B)])
        h = torch.zeros(B, t, self.lm.config.hidden_size)
        for i, data in enumerate(states):
            h[i, keep[i]] = data  # back into the batch layout (shared head, then left padding)
        return Pass1(h.to(self.device), mask.to(self.device), pos.to(self.device))

    @torch.no_grad()
    def embed(self, p1: Pass1, batch, thoughts) -> torch.Tensor:
        ids, mask, w = batch["input_ids"].cpu(), batch["attention_mask"].cpu(), batch["pool_weights"].float().cpu()
        B, G, d = thoughts.shape
        t = ids.shape[1] - 2
        thoughts = thoughts.float().cpu()
        rows = [ids[i][mask[i].bool()].tolist() for i in range(B)]
        requests = [self._request(rows[i], thoughts[i, g]) for i in range(B) for g in range(G)]
        states = self._states(requests, self.read_cache)
        self.pass2_computed = [len(s) for s in states]
        # a request identical to an earlier one (the same thought again) can find even the thought's block cached
        # and bring back only EOS: run those once more without reading the cache
        again = [k for k, st in enumerate(states) if len(st) < 2]
        if again:
            for k, st in zip(again, self._states([requests[k] for k in again])):
                states[k] = st
        tails = torch.stack([st[-2:] for st in states]).view(B, G, 2, d)
        prefix = two_pass.pool(p1.hidden.cpu(), w[:, :t])  # the prefix's part of the pooled embedding, from pass 1
        out = prefix[:, None] + w[:, None, t, None] * tails[:, :, 0] + w[:, None, t + 1, None] * tails[:, :, 1]
        return out.to(self.device)

    def close(self):
        shutdown_vllm(self.llm)


def _vllm(lm, model_dir, max_length, dtype, gpu_memory, device) -> VllmEngine:
    if model_dir is None:
        raise ValueError("the vllm engine needs model_dir, the merged HF model folder (crrl/base)")
    return VllmEngine(lm, model_dir, max_length, dtype, gpu_memory, device or next(lm.parameters()).device)


# name -> (lm, model_dir, max_length, dtype, gpu_memory, device) -> engine
ENGINES = {
    "torch": lambda lm, *_: TorchEngine(lm),
    "naive": lambda lm, *_: NaiveEngine(lm),
    "vllm": _vllm,
}


def make_engine(name: str, lm, model_dir: str | None = None, max_length: int = 1024, dtype: str = "float32",
                gpu_memory: float = 0.9, device: torch.device | None = None):
    """The rollout engine `name` over the frozen `lm` (vllm also needs the merged model folder). torch/naive run
    where `lm` is; vllm runs on its actor's GPU (or the CPU build) and hands results to `device`."""
    if name not in ENGINES:
        raise ValueError(f"unknown rollout engine {name!r}; use one of {sorted(ENGINES)} (crrl.engine)")
    return ENGINES[name](lm, model_dir, max_length, dtype, gpu_memory, device)


def shutdown_vllm(llm) -> None:
    """Stop a vLLM `LLM`'s engine core (its worker process), best effort: the process exits anyway."""
    engine = getattr(llm, "llm_engine", None)
    if engine is not None and hasattr(engine, "engine_core"):
        try:
            engine.engine_core.shutdown()
        except Exception:
            pass
