"""Side-by-side costs of the reasoning rollout, measured in one run (ratios; absolute times are machine-bound).

- weight sync into vLLM: a LoRA adapter (peft folder + a new LoRARequest, loaded at the next generate) vs merged
  weights (W + BA folded in, vLLM `reload_weights` in place). Each is timed as "install version v + generate one
  short reply" minus "generate the same reply with nothing new", so the adapter's lazy load is counted.
- generation throughput (reply tokens/s) of the same prompts: vLLM with LoRA enabled, vLLM merged (no LoRA
  kernels), and the torch engine (HF generate on the peft model).

    python -m reaemb_ray.reasoning.bench MODEL_DIR [--prompts 8] [--max-new-tokens 64] [--dtype bfloat16]
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np


def _prompts(tok, n: int) -> list[list[int]]:
    from reaemb_ray.reasoning.prompts import chat_prompt, user_message

    hist = [("title is Toy Story; year is 1995; genres is Animation, Children's, Comedy", 5.0),
            ("title is Heat; year is 1995; genres is Action, Crime, Thriller", 3.0)]
    texts = [f"title is Movie {i}; year is {1990 + i}; genres is Drama" for i in range(n)]
    return [tok(chat_prompt(tok, user_message("rating", t, hist, "movie")), add_special_tokens=False)["input_ids"]
            for t in texts]


def _moved_state(model_path: str, lora, version: int) -> dict:
    from reaemb_ray.reasoning.policy import build_policy, lora_state

    model, _ = build_policy(model_path, lora)
    rng = np.random.default_rng(version)
    return {k: v + (rng.normal(0, 0.01, v.shape).astype(np.float32) if "lora_B" in k else 0)
            for k, v in lora_state(model).items()}


def measure(model_path: str, prompts: int = 8, max_new_tokens: int = 64, dtype: str = "bfloat16",
            repeats: int = 5) -> dict:
    from reaemb_ray.config import load_config
    from reaemb_ray.reasoning.generation import Sampling, TorchGenerator, VllmGenerator
    from reaemb_ray.reasoning.policy import build_policy, load_tokenizer

    lora = load_config(None, []).reason.lora
    tok = load_tokenizer(model_path)
    ids = _prompts(tok, prompts)
    one = [ids[0]]
    tiny = Sampling(max_new_tokens=1)
    full = Sampling(max_new_tokens=max_new_tokens)
    states = [_moved_state(model_path, lora, v) for v in range(1, repeats + 1)]
    out: dict = {"model": model_path, "dtype": dtype, "prompts": prompts, "group": 4, "max_new_tokens": max_new_tokens}
    for fmt in ("lora", "merged"):
        gen = VllmGenerator(model_path, tok, lora, 1024, dtype, fmt)
        try:
            gen.generate(one, 1, tiny, 0)  # warm up
            sync, idle = [], []
            for v, state in enumerate(states, start=1):
                t0 = time.perf_counter()
                gen.generate(one, 1, tiny, 0)
                idle.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                gen.set_lora(state, v)
                gen.generate(one, 1, tiny, 0)
                sync.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            comps = gen.generate(ids, 4, full, 1)
            secs = time.perf_counter() - t0
            tokens = sum(len(c) for row in comps for c in row)
            out[f"vllm_{fmt}"] = {"sync_s": float(np.median(np.subtract(sync, idle))), "idle_1_token_s": float(
                np.median(idle)), "tokens": tokens, "generate_s": secs, "tokens_per_s": tokens / secs}
        finally:
            gen.close()
    model, _ = build_policy(model_path, lora, dtype)
    gen = TorchGenerator(model, tok)
    t0 = time.perf_counter()
    gen.set_lora(states[-1], 1)
    torch_sync = time.perf_counter() - t0
    t0 = time.perf_counter()
    comps = gen.generate(ids, 4, full, 1)
    secs = time.perf_counter() - t0
    tokens = sum(len(c) for row in comps for c in row)
    out["torch"] = {"sync_s": torch_sync, "tokens": tokens, "generate_s": secs, "tokens_per_s": tokens / secs}
    lo, me = out["vllm_lora"], out["vllm_merged"]
    # one rollout step = install the new version + generate the batch
    step = {k: max(out[k]["sync_s"], 0.0) + out[k]["generate_s"] for k in ("vllm_lora", "vllm_merged")}
    out["ratios"] = {"merged_minus_lora_sync_s": me["sync_s"] - lo["sync_s"],
                     "lora_over_merged_tokens_per_s": lo["tokens_per_s"] / me["tokens_per_s"],
                     "merged_over_lora_step_s": step["vllm_merged"] / step["vllm_lora"],
                     "vllm_merged_over_torch_tokens_per_s": me["tokens_per_s"] / out["torch"]["tokens_per_s"],
                     "vllm_lora_over_torch_tokens_per_s": lo["tokens_per_s"] / out["torch"]["tokens_per_s"]}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model")
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--out", default=None)
    a = p.parse_args()
    res = measure(a.model, a.prompts, a.max_new_tokens, a.dtype)
    text = json.dumps(res, indent=2)
    print(text)
    if a.out:
        with open(a.out, "w") as fh:
            fh.write(text + "\n")


if __name__ == "__main__":
    main()
