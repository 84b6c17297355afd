"""The reasoning embedder: all-MiniLM-L6-v2 (from the installed package, offline) + LoRA aligned to an ID table."""
import numpy as np
import pytest
import torch

from reaemb_ray.config import load_config
from reaemb_ray.reasoning.embedder import alignment_loss, embed_input, embed_texts, resolve_encoder, \
    retrieval_top1, train_embedder
from reaemb_ray.rl.synthetic import item_texts


def test_alignment_losses_hand_computed():
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    t = torch.tensor([[2.0, 0.0], [1.0, 1.0]])  # cosines: [[1, .7071], [0, .7071]]
    c = 2 ** -0.5
    # triplet, margin 0.2: item 0: relu(.2 - 1 + .7071) = 0; item 1: relu(.2 - .7071 + 0) = 0
    assert float(alignment_loss(z, t, "triplet", margin=0.2)) == pytest.approx(0.0)
    # margin 1: (1 - 1 + c + 1 - c + 0) / 2 = 0.5
    assert float(alignment_loss(z, t, "triplet", margin=1.0)) == pytest.approx(0.5)
    # InfoNCE at tau 1: rows CE([1, c], 0), CE([0, c], 1); columns CE([1, 0], 0), CE([c, c], 1)
    lse = lambda *v: float(np.log(np.sum(np.exp(v))))  # noqa: E731
    want = 0.5 * ((lse(1, c) - 1 + lse(0, c) - c) / 2 + (lse(1, 0) - 1 + lse(c, c) - c) / 2)
    assert float(alignment_loss(z, t, "infonce", tau=1.0)) == pytest.approx(want, rel=1e-5)
    with pytest.raises(ValueError, match="reason.embedder.loss"):
        alignment_loss(z, t, "cosine")


def test_minilm_with_lora_learns_to_align_text_with_an_id_table():
    assert resolve_encoder("minilm").endswith("model")
    texts = [embed_input(t, f"Made by the same brand as its group {k}.") for k, t in item_texts(4, 4).items()]
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(4, 16))
    targets = np.stack([centers[i // 4] + 0.3 * rng.normal(size=16) for i in range(16)]).astype(np.float32)
    ecfg = load_config(None, ["reason.embedder.epochs=8", "reason.embedder.batch_size=8",
                              "reason.embedder.lr=0.003", "reason.embedder.max_length=48"]).reason.embedder
    model, tok, history = train_embedder(texts, targets, ecfg, seed=0, progress=False)
    assert history[-1]["loss"] < history[0]["loss"] - 0.2, history
    assert retrieval_top1(model, tok, texts, targets, ecfg) >= 0.25  # chance: 1/16
    vecs = embed_texts(model, tok, texts, ecfg.max_length)
    assert vecs.shape == (16, 384) and np.isfinite(vecs).all()
