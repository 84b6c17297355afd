"""The embedding generator: LM (+ optional LoRA) + latent-thought attention + learnable temperature.

One folder format, written and read only here (HF/peft files, readable without this package's training code):
  reaemb_meta.json                                 kind, backbone (config name), hidden_size, use_thought, tau, ...
  thought_attention.safetensors                    LatentThoughtAttention state dict
  tokenizer files                                  with <|Thought|>
  adapter_config.json, adapter_model.safetensors   kind "lora": a peft LoRA adapter over the backbone
  model.safetensors, config.json                   kind "merged": the full LM (LoRA merged; vLLM opens it)
Kind "attention" holds neither: the LM is the frozen backbone. "lora" and "attention" folders name their
backbone by its config name and resolve it on the node that loads them, so a folder can be copied anywhere.
"""
from __future__ import annotations

import json
import logging
import math
import shutil
from pathlib import Path

import numpy as np
import torch
from torch import nn

from reaemb_ray.model.backbone import (backbone_hidden_size, load_backbone, load_tokenizer, resolve_backbone_name,
                                       to_dtype)
from reaemb_ray.model.thought_attention import LatentThoughtAttention
from reaemb_ray.model.two_pass import efficient_embed, naive_embed

log = logging.getLogger(__name__)

META_FILE = "reaemb_meta.json"
ATTN_FILE = "thought_attention.safetensors"
KINDS = ("lora", "merged", "attention")


class ThoughtEmbedder(nn.Module):
    """`embed(batch) -> (B, d)` item embeddings; trainable parts: LoRA (if any), attention, log tau."""

    def __init__(self, lm, hidden_size: int | None = None, use_thought: bool = True, rope_base: float = 1000.0,
                 tau_init: float = 1.0, lora=None, pooling: str = "all"):
        super().__init__()
        self.pooling = pooling  # which tokens' states make the embedding (two_pass.tokenize_prompts)
        hidden_size = hidden_size or lm.config.hidden_size
        if lora is not None:
            from peft import LoraConfig as PeftLoraConfig, get_peft_model

            lm = get_peft_model(lm, PeftLoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                                   target_modules=list(lora.target_modules), bias="none"))
        elif not hasattr(lm, "peft_config"):
            lm.requires_grad_(False)  # no LoRA: the LM is frozen, only attention + tau train
        self.lm = lm
        self.use_thought = use_thought
        self.attn = LatentThoughtAttention(hidden_size, rope_base).to(next(lm.parameters()).dtype)
        # shape (1,), not a scalar: DeepSpeed's parameter broadcast cannot handle 0-dim tensors
        self.log_tau = nn.Parameter(torch.full((1,), math.log(tau_init), dtype=torch.float32))

    @property
    def hidden_size(self) -> int:
        return self.attn.hidden_size

    @property
    def has_lora(self) -> bool:
        return hasattr(self.lm, "peft_config")

    def tau(self) -> torch.Tensor:
        return self.log_tau.float().exp().clamp(min=1e-3).squeeze(0)

    def embed(self, batch: dict, efficient: bool = True, share_head: bool = True) -> torch.Tensor:
        """efficient: prefix reuse (and the batch's shared head once, unless share_head=False); else the
        naive two full passes, the reference."""
        if not efficient:
            return naive_embed(self.lm, self.attn, batch, use_thought=self.use_thought)
        return efficient_embed(self.lm, self.attn, batch, use_thought=self.use_thought, share=share_head)

    def forward(self, batch: dict, efficient: bool = True) -> torch.Tensor:
        return self.embed(batch, efficient=efficient)


def build_embedder(model_cfg, cache_dir, tau_init: float = 1.0, with_lora: bool = True, dtype=None):
    """Fresh generator from the config: (ThoughtEmbedder, tokenizer, backbone_path)."""
    path = resolve_backbone_name(model_cfg.backbone, cache_dir)
    lm, tok = load_backbone(path, dtype or model_cfg.dtype)
    module = ThoughtEmbedder(lm, use_thought=model_cfg.use_thought, rope_base=model_cfg.rope_base,
                             tau_init=tau_init, lora=model_cfg.lora if with_lora else None, pooling=model_cfg.pooling)
    return module, tok, path


def _state_to_cpu(sd: dict) -> dict:
    return {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in sd.items()}


def save_generator(module: ThoughtEmbedder, tokenizer, out_dir, meta: dict, merged: bool = False) -> Path:
    """Write a generator folder; `meta` needs at least `backbone` (the config name). merged=True writes the
    full LM (the module must hold no LoRA: load it with merge_lora=True first)."""
    from safetensors.torch import save_file

    if "backbone" not in meta:
        raise ValueError("save_generator meta lacks 'backbone'")
    if merged and module.has_lora:
        raise ValueError("save_generator(merged=True) needs a module without LoRA; load it with merge_lora=True")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    kind = "merged" if merged else "lora" if module.has_lora else "attention"
    if kind == "merged":
        module.lm.save_pretrained(str(out))
    elif kind == "lora":
        # the grown embedding row is deterministic (see load_backbone): no need to store the whole table
        module.lm.save_pretrained(str(out), save_embedding_layers=False)
    save_file(_state_to_cpu(module.attn.state_dict()), str(out / ATTN_FILE))
    tokenizer.save_pretrained(str(out))
    full = dict(meta, kind=kind, hidden_size=module.hidden_size, use_thought=module.use_thought, pooling=module.pooling,
                rope_base=module.attn.rope_base, tau=float(module.tau().detach()),
                log_tau=float(module.log_tau.detach()), vocab_size=len(tokenizer))
    (out / META_FILE).write_text(json.dumps(full, indent=2, sort_keys=True))
    return out


def with_attention(src_dir, state: dict, out_dir, **meta) -> Path:
    """A copy of the generator folder `src_dir` with other attention weights (e.g. the ones CRRL trained)."""
    from safetensors.numpy import save_file

    src, out = Path(src_dir), Path(out_dir)
    old = read_meta(src)
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(src, out, ignore=shutil.ignore_patterns(ATTN_FILE, META_FILE))
    save_file({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in state.items()}, str(out / ATTN_FILE))
    (out / META_FILE).write_text(json.dumps(dict(old, **meta), indent=2, sort_keys=True))
    return out


def read_meta(ckpt_dir) -> dict:
    d = Path(ckpt_dir)
    if not (d / META_FILE).exists():
        raise FileNotFoundError(f"{d} is not a generator checkpoint ({META_FILE} missing); point at a folder "
                                "written by `reaemb lrcl` (e.g. {output_dir}/lrcl/final)")
    return json.loads((d / META_FILE).read_text())


def _attn_hidden_size(path: Path) -> int:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return int(f.get_slice("q_proj.weight").get_shape()[0])


def load_generator(ckpt_dir, merge_lora: bool = False, dtype="float32", expect_backbone: str | None = None,
                   expect_hidden_size: int | None = None, cache_dir: str = "~/.cache/reaemb_ray",
                   trainable: bool = False):
    """(ThoughtEmbedder, tokenizer) from a checkpoint folder. Every consistency check runs before weights load.

    expect_backbone: the config's `model.backbone`; a checkpoint trained on another backbone is refused.
    """
    d = Path(ckpt_dir)
    meta = read_meta(d)
    if not (d / "tokenizer_config.json").exists():
        raise FileNotFoundError(f"{d} has no tokenizer (tokenizer_config.json missing); the checkpoint is "
                                "incomplete -- re-save it with save_generator or re-run the stage")
    if not (d / ATTN_FILE).exists():
        raise FileNotFoundError(f"{d} has no {ATTN_FILE}; the checkpoint is incomplete")
    if expect_backbone is not None and expect_backbone != meta["backbone"]:
        raise ValueError(f"checkpoint {d} was trained on backbone {meta['backbone']!r} but model.backbone is "
                         f"{expect_backbone!r}; set model.backbone={meta['backbone']} or use a matching checkpoint")
    if meta.get("kind") not in KINDS:
        raise ValueError(f"{d}/{META_FILE} has kind {meta.get('kind')!r}, not one of {KINDS}; the folder was written "
                         "by another version of reaemb -- re-run the stage that wrote it")
    path = str(d) if meta["kind"] == "merged" else resolve_backbone_name(meta["backbone"], cache_dir)
    hidden = backbone_hidden_size(path)
    attn_hidden = _attn_hidden_size(d / ATTN_FILE)
    for what, value in (("reaemb_meta.json hidden_size", meta["hidden_size"]), ("the attention weights", attn_hidden),
                        ("the config/expected hidden size", expect_hidden_size)):
        if value is not None and int(value) != hidden:
            raise ValueError(f"hidden size mismatch: backbone {path} has {hidden}, {what} says {value}; the "
                             f"checkpoint {d} does not belong to this backbone")
    tok = load_tokenizer(str(d))
    lm, _ = load_backbone(path, dtype)
    if lm.get_input_embeddings().weight.shape[0] != len(tok):
        raise ValueError(f"tokenizer in {d} has {len(tok)} tokens but the backbone has "
                         f"{lm.get_input_embeddings().weight.shape[0]} embeddings; mismatched checkpoint")
    if meta["kind"] == "lora":
        from peft import PeftModel

        lm = PeftModel.from_pretrained(lm, str(d), is_trainable=trainable and not merge_lora)
        if merge_lora:
            lm = lm.merge_and_unload()
    module = ThoughtEmbedder(lm, hidden_size=hidden, use_thought=meta["use_thought"], rope_base=meta["rope_base"],
                             pooling=meta.get("pooling", "all"))
    from safetensors.torch import load_file

    module.attn.load_state_dict({k: v.to(to_dtype(dtype)) for k, v in load_file(str(d / ATTN_FILE)).items()})
    with torch.no_grad():
        module.log_tau.fill_(meta.get("log_tau", math.log(meta.get("tau", 1.0))))
    module.eval()
    return module, tok


def export_merged(ckpt_dir, out_dir, dtype="float32", cache_dir: str = "~/.cache/reaemb_ray") -> Path:
    """A "merged" generator folder (LoRA merged; a plain HF folder that vLLM or `AutoModel` opens directly)."""
    module, tok = load_generator(ckpt_dir, merge_lora=True, dtype=dtype, cache_dir=cache_dir)
    meta = read_meta(ckpt_dir)
    for k in ("kind", "hidden_size", "use_thought", "rope_base", "tau", "log_tau", "vocab_size"):
        meta.pop(k, None)
    return save_generator(module, tok, out_dir, dict(meta, merged_from=meta.get("stage", str(ckpt_dir))), merged=True)
