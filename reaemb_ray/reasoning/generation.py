"""Generation engines of the rollout workers: G sampled replies per prompt, as completion token ids.

Both engines expose `generate(prompt_ids, n, sampling, seed) -> [[completion ids] * n] * len(prompt_ids)` and
`set_lora(state, version)`. A completion keeps its EOS token when it stopped on one (the learner scores it:
stopping is an action) and has none when it hit `max_new_tokens`.
- `torch`: HF `generate` on the peft model (the reference; machines without vLLM).
- `vllm`: `LLM.generate` with one seed per prompt (a re-issued batch samples the same replies). New weights
  arrive as a LoRA adapter (`weight_format=lora`: a peft folder per version, a new `LoRARequest`) or as merged
  weights (`merged`: W + BA folded in the worker, loaded in place by vLLM's `reload_weights`). The engine runs
  in-process (VLLM_ENABLE_V1_MULTIPROCESSING=0): merged weights are handed over without serialisation, and a
  Ray actor holds one process instead of two. Chunked prefill is off: on CPU a prompt split across steps breaks
  per-request seeds in vLLM 0.32 ("CPU Generator does not use offset").
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from reaemb_ray.reasoning import policy


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.7
    top_p: float = 0.9
    repetition_penalty: float = 1.1
    max_new_tokens: int = 256


def _strip(ids: list[int], eos_ids: set[int], pad_id: int) -> list[int]:
    """Completion ids up to and including the first EOS (pads after it dropped)."""
    out = []
    for t in ids:
        out.append(t)
        if t in eos_ids:
            return out
    while out and out[-1] == pad_id and pad_id not in eos_ids:
        out.pop()
    return out


def eos_ids(tok, model_config=None) -> set[int]:
    ids = {tok.eos_token_id}
    gen_eos = getattr(getattr(model_config, "generation_config", None), "eos_token_id", None) if model_config else None
    if isinstance(gen_eos, int):
        ids.add(gen_eos)
    elif gen_eos:
        ids.update(gen_eos)
    return ids


class TorchGenerator:
    name = "torch"

    def __init__(self, model, tok, device: torch.device | None = None):
        self.model, self.tok = model.to(device or torch.device("cpu")), tok
        self.eos = eos_ids(tok, model)
        self.version = 0

    def set_lora(self, state: dict, version: int) -> float:
        t0 = time.perf_counter()
        policy.load_lora_state(self.model, state)
        self.version = version
        return time.perf_counter() - t0

    @torch.no_grad()
    def generate(self, prompt_ids: list[list[int]], n: int, sampling: Sampling, seed: int) -> list[list[list[int]]]:
        pad = self.tok.pad_token_id
        width = max(len(p) for p in prompt_ids)
        dev = next(self.model.parameters()).device
        ids = torch.tensor([[pad] * (width - len(p)) + list(p) for p in prompt_ids], device=dev)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompt_ids], device=dev)
        torch.manual_seed(int(seed))
        out = self.model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=sampling.temperature,
                                  top_p=sampling.top_p, repetition_penalty=sampling.repetition_penalty,
                                  max_new_tokens=sampling.max_new_tokens, num_return_sequences=n, pad_token_id=pad,
                                  eos_token_id=sorted(self.eos))
        comp = out[:, width:].tolist()
        return [[_strip(comp[i * n + j], self.eos, pad) for j in range(n)] for i in range(len(prompt_ids))]

    def close(self) -> None:
        pass


class VllmGenerator:
    name = "vllm"

    def __init__(self, model_path: str, tok, lora, max_model_len: int, dtype: str = "float32",
                 weight_format: str = "lora", kv_cache_gb: int = 1, workdir: str | None = None):
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(kv_cache_gb))
        os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        from vllm import LLM

        from reaemb_ray.model.backbone import to_dtype

        self.tok, self.lora, self.path, self.weight_format = tok, lora, model_path, weight_format
        self.dtype = to_dtype(dtype)
        self.eos = eos_ids(tok)
        self.llm = LLM(model=model_path, enforce_eager=True, dtype=dtype, max_model_len=max_model_len, seed=0,
                       enable_lora=weight_format == "lora", max_lora_rank=max(8, lora.r), max_loras=1,
                       enable_chunked_prefill=False, max_num_batched_tokens=max(max_model_len, 8192))
        self.version = 0
        self.lora_request = None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="reason-lora-"))
        self._base = policy.base_weights(model_path) if weight_format == "merged" else None

    def set_lora(self, state: dict, version: int) -> float:
        """Install the adapter of `version`; returns the seconds it took (the weight-sync cost on this side)."""
        t0 = time.perf_counter()
        if self.weight_format == "lora":
            from vllm.lora.request import LoRARequest

            folder = policy.write_adapter(self.workdir / f"v{version}", self.lora, self.path, state)
            old = self.lora_request
            self.lora_request = LoRARequest(f"v{version}", version + 1, str(folder))
            if old is not None:
                self.llm.llm_engine.remove_lora(old.lora_int_id)
                shutil.rmtree(old.lora_path, ignore_errors=True)
        else:
            weights = {k: v.to(self.dtype) for k, v in policy.merged_weights(self._base, state, self.lora).items()}
            self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": iter(weights.items()),
                                                              "is_checkpoint_format": True})
            self.llm.reset_prefix_cache()
        self.version = version
        return time.perf_counter() - t0

    def generate(self, prompt_ids: list[list[int]], n: int, sampling: Sampling, seed: int) -> list[list[list[int]]]:
        from vllm import SamplingParams

        params = [SamplingParams(n=n, temperature=sampling.temperature, top_p=sampling.top_p,
                                 repetition_penalty=sampling.repetition_penalty, max_tokens=sampling.max_new_tokens,
                                 seed=int(seed) * 1009 + i) for i in range(len(prompt_ids))]
        outs = self.llm.generate([{"prompt_token_ids": list(p)} for p in prompt_ids], params, use_tqdm=False,
                                 lora_request=self.lora_request)
        return [[_strip(list(c.token_ids), self.eos, self.tok.pad_token_id) for c in sorted(o.outputs, key=lambda c: c.index)]
                for o in outs]

    def close(self) -> None:
        from reaemb_ray.rl.engines import shutdown_vllm

        shutdown_vllm(self.llm)
        shutil.rmtree(self.workdir, ignore_errors=True)


ENGINES = ("torch", "vllm")


def make_generator(name: str, model_path: str, lora, max_model_len: int, dtype: str = "float32",
                   weight_format: str = "lora", seed: int = 0):
    """(engine, tokenizer). The torch engine holds a peft model; vLLM its own copy of the base weights."""
    if name == "torch":
        from reaemb_ray.device import placement

        model, tok = policy.build_policy(model_path, lora, dtype, seed)
        return TorchGenerator(model, tok, placement(dtype).device), tok  # the GPU Ray gave the actor, if any
    if name == "vllm":
        tok = policy.load_tokenizer(model_path)
        return VllmGenerator(model_path, tok, lora, max_model_len, dtype, weight_format), tok
    raise ValueError(f"unknown generation engine {name!r}; use one of {ENGINES} (reason.engine)")
