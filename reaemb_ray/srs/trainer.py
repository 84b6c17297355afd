"""Train one recommender with early stopping on validation NDCG@10, then rank the test items.

Reproducible: the seed fixes torch (init, dropout) and a numpy generator (batch order, negatives). Batches
group users of similar length so a batch is only as wide as its longest row (Beauty's median sequence is
6 items, the longest 204), which is what makes full-data epochs take seconds on two CPU cores.
"""
from __future__ import annotations

import copy
import random
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from reaemb_ray.srs.data import SeqData, chunk_by_tokens, pad_right, random_batches
from reaemb_ray.srs.encoders import build_encoder
from reaemb_ray.srs.metrics import full_ranks, hit_ndcg, sample_negatives_per_user, sampled_ranks
from reaemb_ray.srs.models import SequentialRecommender, build_model


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class TrainResult:
    best_epoch: int
    best_val_ndcg10: float
    epochs_run: int
    train_seconds: float
    # per epoch: epoch, loss, val_ndcg10, seconds (wall), cpu_seconds (this process; robust to other load)
    curve: list[dict] = field(default_factory=list)


@torch.no_grad()
def rank_targets(model: SequentialRecommender, inputs: list[np.ndarray], targets: np.ndarray, batch_size: int,
                 exclude_history: bool, max_tokens: int, negatives: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Full-ranking ranks (and sampled ranks when `negatives` (U, n) is given) of `targets` per user."""
    model.eval()
    full = np.empty(len(inputs), np.int64)
    samp = np.empty(len(inputs), np.int64) if negatives is not None else None
    table = model.item_embeddings()
    lengths = np.minimum([len(s) for s in inputs], model.max_len)
    for idx in chunk_by_tokens(np.arange(len(inputs)), lengths, max_tokens, batch_size):
        seqs = [inputs[i] for i in idx]
        tgt = torch.from_numpy(targets[idx])
        scores = model(torch.from_numpy(pad_right(seqs, model.max_len))) @ table.T
        full[idx] = full_ranks(scores, tgt, seqs if exclude_history else None).numpy()
        if negatives is not None:
            samp[idx] = sampled_ranks(scores, tgt, torch.from_numpy(negatives[idx])).numpy()
    return full, samp


def train(model: SequentialRecommender, data: SeqData, srs, seed: int, exclude_history: bool = True,
          progress: bool = True, desc: str = "train") -> TrainResult:
    """Adam on the model's training loss; keeps the state with the best validation NDCG@10 (full ranking)."""
    if srs.num_threads > 0:
        torch.set_num_threads(srs.num_threads)
    rng = np.random.default_rng(seed)
    opt = torch.optim.Adam(model.parameters(), lr=srs.lr)
    train_rows = [i for i, t in enumerate(data.train) if len(t) >= 1]
    seqs = [data.train[i] for i in train_rows]
    lengths = np.minimum([len(s) for s in seqs], srs.max_len + 1)
    best, best_state, best_epoch, bad, curve = -1.0, None, 0, 0, []
    t0 = time.perf_counter()
    bar = tqdm(range(1, srs.epochs + 1), desc=desc, disable=not progress, unit="epoch")
    for epoch in bar:
        te, ce = time.perf_counter(), time.process_time()
        model.train()
        losses = []
        for idx in random_batches(len(seqs), srs.batch_size, rng):
            # one optimiser step per batch; its rows run in length-homogeneous chunks (gradient accumulation,
            # each chunk weighted by its share of the batch's targets) so short rows are not padded to 200
            chunks = [model.make_train_batch([seqs[i] for i in c], rng)
                      for c in chunk_by_tokens(idx, lengths, srs.chunk_tokens) if lengths[c].max() >= model.min_train_len]
            counts = [model.num_targets(c) for c in chunks]
            opt.zero_grad(set_to_none=True)
            total = 0.0
            for chunk, n in zip(chunks, counts):
                loss = model.training_loss(chunk) * (n / sum(counts))
                loss.backward()
                total += loss.item()
            opt.step()
            losses.append(total)
        val_ranks, _ = rank_targets(model, seqs, data.valid[train_rows], srs.batch_size, exclude_history,
                                    srs.chunk_tokens)
        val = float(hit_ndcg(val_ranks, 10)[1].mean())
        curve.append({"epoch": epoch, "loss": float(np.mean(losses)), "val_ndcg10": val,
                      "seconds": time.perf_counter() - te, "cpu_seconds": time.process_time() - ce})
        if val > best:
            best, best_epoch, bad = val, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            bad += 1
        bar.set_postfix(loss=f"{curve[-1]['loss']:.4f}", val_ndcg10=f"{val:.4f}", best=f"{best:.4f}@{best_epoch}")
        if bad >= srs.patience:
            break
        if srs.max_minutes and time.perf_counter() - t0 > 60 * srs.max_minutes:
            bar.write(f"{desc}: stopping at srs.max_minutes={srs.max_minutes} (epoch {epoch})")
            break
    model.load_state_dict(best_state)
    return TrainResult(best_epoch, best, len(curve), time.perf_counter() - t0, curve)


def test_inputs(data: SeqData) -> list[np.ndarray]:
    """The test-time input of each user: the training items then the validation item."""
    return [np.append(t, v) for t, v in zip(data.train, data.valid)]


def fit_and_test(data: SeqData, backbone: str, srs, seed: int, num_negatives: int = 100,
                 table: np.ndarray | None = None, align_table: np.ndarray | None = None,
                 exclude_history: bool = True, progress: bool = True, desc: str = "train"):
    """Seed, build `backbone` over ID or external item vectors, train, and rank every user's test item.

    Returns (model, TrainResult, full_ranks (U,), sampled_ranks (U,)).
    """
    seed_everything(seed)
    model = build_model(backbone, build_encoder(data.num_items, srs.hidden, table, srs.adapter_hidden), srs)
    if align_table is not None and srs.align_alpha > 0:
        if table is None:
            raise ValueError("srs.align_alpha > 0 needs an external embedding table; the 'id' method has none")
        model.set_alignment(align_table, srs.align_alpha, srs.align_tau)
    result = train(model, data, srs, seed, exclude_history, progress, desc)
    inputs = test_inputs(data)
    interacted = [np.append(s, t) for s, t in zip(inputs, data.test)]
    negatives = sample_negatives_per_user(interacted, data.num_items, num_negatives, seed)
    full, samp = rank_targets(model, inputs, data.test, srs.batch_size, exclude_history, srs.chunk_tokens, negatives)
    return model, result, full, samp
