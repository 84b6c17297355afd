"""The reasoning policy: a causal LM with a peft LoRA adapter, and the two forms its weights travel in.

- LoRA: `lora_state` (the adapter's tensors, peft names without the adapter name) and `write_adapter`, the peft
  folder (adapter_config.json + adapter_model.safetensors) that vLLM's `LoRARequest` and peft both open.
- merged: `merged_weights` = every base weight with W + (alpha / r) * B @ A folded into the LoRA targets, in
  the checkpoint's own names (what vLLM's in-place `reload_weights` takes).

LoRA's B starts at zero, so a fresh adapter is exactly the base model (every fold starts from the same policy).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from reaemb_ray.model.backbone import to_dtype


def peft_lora_config(lora):
    from peft import LoraConfig as PeftLoraConfig

    return PeftLoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                          target_modules=list(lora.target_modules), bias="none", task_type="CAUSAL_LM")


def load_tokenizer(path: str):
    """The generator's tokenizer: left padding (prompts end at one column), pad = EOS when it has none."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    if tok.eos_token is None:
        raise ValueError(f"the tokenizer at {path} has no EOS token; generation needs one to stop")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok


def build_policy(path: str, lora, dtype: str = "float32", seed: int = 0):
    """(peft model with a fresh LoRA adapter, tokenizer). Only the adapter's parameters require grad."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    tok = load_tokenizer(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=to_dtype(dtype))
    model.config.pad_token_id = tok.pad_token_id
    torch.manual_seed(seed)  # LoRA's A init; B is zero, so the function is the base model's anyway
    return get_peft_model(model, peft_lora_config(lora)).eval(), tok


def lora_state(model) -> dict[str, np.ndarray]:
    from peft import get_peft_model_state_dict

    return {k: v.detach().float().cpu().numpy().copy() for k, v in get_peft_model_state_dict(model).items()}


def load_lora_state(model, state: dict) -> None:
    from peft import set_peft_model_state_dict

    dtype = next(model.parameters()).dtype
    res = set_peft_model_state_dict(model, {k: torch.as_tensor(np.asarray(v)).to(dtype) for k, v in state.items()})
    unexpected = getattr(res, "unexpected_keys", [])
    if unexpected:
        raise ValueError(f"LoRA state has keys this model lacks (e.g. {unexpected[:2]}); learner and rollout "
                         "workers load different models or LoRA settings")


def write_adapter(folder, lora, base_path: str, state: dict) -> Path:
    """A peft adapter folder for `state` (what vLLM's LoRARequest loads)."""
    from safetensors.numpy import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = peft_lora_config(lora)
    cfg.base_model_name_or_path = base_path
    cfg.save_pretrained(str(folder))
    save_file({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in state.items()},
              str(folder / "adapter_model.safetensors"))
    return folder


def base_weights(path: str) -> dict[str, torch.Tensor]:
    """Every tensor of the checkpoint folder (its *.safetensors files), in checkpoint names."""
    from safetensors.torch import load_file

    out: dict[str, torch.Tensor] = {}
    for f in sorted(Path(path).glob("*.safetensors")):
        out.update(load_file(str(f)))
    if not out:
        raise FileNotFoundError(f"{path} holds no *.safetensors weights to merge LoRA into")
    return out


def merged_weights(base: dict[str, torch.Tensor], state: dict, lora) -> dict[str, torch.Tensor]:
    """Base weights with W + (alpha / r) B A for every LoRA target (`...q_proj.lora_A.weight` -> `...q_proj.weight`)."""
    scale = lora.alpha / lora.r
    out = dict(base)
    for key, a in state.items():
        if ".lora_A." not in key:
            continue
        target = key.replace("base_model.model.", "", 1).replace(".lora_A.weight", ".weight")
        if target not in base:
            raise KeyError(f"LoRA target {target} is not a weight of the base checkpoint")
        b = state[key.replace(".lora_A.", ".lora_B.")]
        w = base[target]
        delta = torch.as_tensor(np.asarray(b), dtype=torch.float32) @ torch.as_tensor(np.asarray(a), dtype=torch.float32)
        out[target] = (w.float() + scale * delta).to(w.dtype)
    return out
