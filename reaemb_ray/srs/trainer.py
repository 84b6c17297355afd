"""Train one recommender with early stopping on validation NDCG@10, then rank the test items.

Reproducible: the seed fixes torch (init, dropout) and a numpy generator (batch order, negatives, masks).
A batch of random users runs as chunks of users of similar length, each padded only to its own longest row
(Beauty's median training sequence is 4 items, the longest 202); with sparse embedding gradients, a fused
Adam and a cheaper dropout mask, that is what makes a full Beauty epoch take seconds on one CPU core.
"""
from __future__ import annotations

import copy
import random
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from reaemb_ray.device import to_device
from reaemb_ray.srs.data import SeqData, chunk_by_tokens, pad_right, random_batches
from reaemb_ray.srs.encoders import build_encoder
from reaemb_ray.srs.metrics import hit_ndcg, ranks_in_blocks, sample_negatives_per_user
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
    # per epoch: epoch, loss, seconds (wall), cpu_seconds (this process; robust to other load), and on
    # validated epochs (every srs.eval_every) val_ndcg10 and val_seconds
    curve: list[dict] = field(default_factory=list)


def make_optimizer(model: torch.nn.Module, lr: float) -> torch.optim.Adam:
    """Adam; the fused kernel (one pass over all parameters) where this torch build has it."""
    try:
        return torch.optim.Adam(model.parameters(), lr=lr, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.Adam(model.parameters(), lr=lr)


def densify_grads(model: torch.nn.Module) -> None:
    """Sparse embedding gradients -> dense, so Adam updates exactly as with a dense embedding (zero rows too)."""
    for p in model.parameters():
        if p.grad is not None and p.grad.is_sparse:
            p.grad = p.grad.to_dense()


def batch_chunks(batch: dict[str, torch.Tensor], max_tokens: int) -> list[dict[str, torch.Tensor]]:
    """Split a right-padded training batch into chunks of rows of similar length, each cut to its own width.
    Entries named `shared_*` (e.g. negatives shared by the whole batch) go to every chunk unchanged."""
    lengths = (batch["seq"] != 0).sum(1).numpy()
    chunks = []
    for rows in chunk_by_tokens(lengths, max_tokens):
        width, rows = max(1, int(lengths[rows].max())), torch.from_numpy(rows)
        chunks.append({k: v if k.startswith("shared_") else v[rows, :width] for k, v in batch.items()})
    return chunks


def train_step(model: SequentialRecommender, opt: torch.optim.Optimizer, batch: dict[str, torch.Tensor],
               max_tokens: int) -> float:
    """One optimiser step on the batch's mean loss; chunks accumulate gradients weighted by their targets."""
    device = next(model.parameters()).device
    chunks = batch_chunks(batch, model.max_chunk_tokens(max_tokens))
    counts = [model.num_targets(c) for c in chunks]
    opt.zero_grad(set_to_none=True)
    total = 0.0
    for chunk, n in zip(chunks, counts):
        loss = model.training_loss(to_device(chunk, device)) * (n / sum(counts))
        loss.backward()
        total += loss.item()
    densify_grads(model)
    opt.step()
    return total


USER_GROUP = 4096  # users ranked together: the item table's blocks are computed once per group


@torch.inference_mode()
def rank_targets(model: SequentialRecommender, inputs: list[np.ndarray], targets: np.ndarray, batch_size: int,
                 exclude_history: bool, max_tokens: int, negatives: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Full-ranking ranks (and sampled ranks when `negatives` (U, n) is given) of `targets` per user.

    Users go through the model in batches of at most 256 (measured ~2x faster on Beauty's 12k items than 1024
    rows); groups of USER_GROUP users are ranked against the item table's row blocks (`model.item_rows()`,
    `ranks_in_blocks`): memory stays flat however large the catalogue, and an encoder that computes its table
    from a frozen one never holds a second whole table."""
    model.eval()
    device = next(model.parameters()).device
    full = np.empty(len(inputs), np.int64)
    samp = np.empty(len(inputs), np.int64) if negatives is not None else None
    rows = model.item_rows()
    lengths = np.minimum([len(s) for s in inputs], model.max_len)
    for g in range(0, len(inputs), USER_GROUP):
        group = np.arange(g, min(g + USER_GROUP, len(inputs)))
        users = None  # (group, hidden), in the model's dtype and on its device
        for idx in chunk_by_tokens(lengths[group], max_tokens, min(batch_size, 256)):
            seqs = pad_right([inputs[i] for i in group[idx]], model.max_len)
            out = model(torch.from_numpy(seqs).to(device))
            users = out.new_empty(len(group), out.shape[1]) if users is None else users
            users[torch.from_numpy(idx).to(device)] = out
        f, s = ranks_in_blocks(users, rows, torch.from_numpy(targets[group]).to(device),
                               [inputs[i] for i in group] if exclude_history else None,
                               None if negatives is None else torch.from_numpy(negatives[group]).to(device))
        full[group] = f.cpu().numpy()
        if negatives is not None:
            samp[group] = s.cpu().numpy()
    return full, samp


def validation_users(rows: list[int], n: int, seed: int) -> list[int]:
    """The users early stopping looks at: all of `rows` (n = 0) or a fixed uniform subsample of n of them."""
    if n == 0 or n >= len(rows):
        return rows
    picked = np.random.default_rng([seed, 1]).choice(len(rows), n, replace=False)  # own stream: no shift of
    return [rows[i] for i in np.sort(picked)]                                        # the training randomness


def train(model: SequentialRecommender, data: SeqData, srs, seed: int, exclude_history: bool = True,
          progress: bool = True, desc: str = "train") -> TrainResult:
    """Adam on the model's training loss; keeps the state with the best validation NDCG@10 (full ranking).

    Validates every `srs.eval_every` epochs (and after the last one) on all users, or on a fixed sample of
    `srs.valid_users`; stops after `srs.patience` validations without improvement or after `srs.max_minutes`.
    """
    if srs.num_threads > 0:
        torch.set_num_threads(srs.num_threads)
    rng = np.random.default_rng(seed)
    opt = make_optimizer(model, srs.lr)
    seqs = [t for t in data.train if len(t) >= model.min_train_len]  # users with something to predict
    val_rows = validation_users([i for i, t in enumerate(data.train) if len(t) >= 1], srs.valid_users, seed)
    val_inputs, val_targets = [data.train[i] for i in val_rows], data.valid[val_rows]
    best, best_state, best_epoch, bad, curve = -1.0, None, 0, 0, []
    t0 = time.perf_counter()
    bar = tqdm(range(1, srs.epochs + 1), desc=desc, disable=not progress, unit="epoch")
    for epoch in bar:
        te, ce = time.perf_counter(), time.process_time()
        model.train()
        losses = [train_step(model, opt, model.make_train_batch([seqs[i] for i in idx], rng), srs.chunk_tokens)
                  for idx in random_batches(len(seqs), srs.batch_size, rng)]
        row = {"epoch": epoch, "loss": float(np.mean(losses))}
        out_of_time = bool(srs.max_minutes) and time.perf_counter() - t0 > 60 * srs.max_minutes
        if epoch % srs.eval_every == 0 or epoch == srs.epochs or out_of_time:
            tv = time.perf_counter()
            val_ranks, _ = rank_targets(model, val_inputs, val_targets, srs.batch_size, exclude_history,
                                        srs.chunk_tokens)
            row["val_ndcg10"] = float(hit_ndcg(val_ranks, 10)[1].mean())
            row["val_seconds"] = time.perf_counter() - tv
            if row["val_ndcg10"] > best:
                best, best_epoch, bad = row["val_ndcg10"], epoch, 0
                best_state = copy.deepcopy(model.state_dict())
            else:
                bad += 1
        row.update(seconds=time.perf_counter() - te, cpu_seconds=time.process_time() - ce)
        curve.append(row)
        shown = {"loss": f"{row['loss']:.4f}", "best": f"{best:.4f}@{best_epoch}" if best_epoch else "-"}
        if "val_ndcg10" in row:  # validated this epoch (every srs.eval_every)
            shown["val_ndcg10"] = f"{row['val_ndcg10']:.4f}"
        bar.set_postfix(shown)
        if bad >= srs.patience:
            break
        if out_of_time:
            bar.write(f"{desc}: stopping at srs.max_minutes={srs.max_minutes} (epoch {epoch})")
            break
    model.load_state_dict(best_state)
    return TrainResult(best_epoch, best, len(curve), time.perf_counter() - t0, curve)


def test_inputs(data: SeqData) -> list[np.ndarray]:
    """The test-time input of each user: the training items then the validation item."""
    return [np.append(t, v) for t, v in zip(data.train, data.valid)]


def fit_and_test(data: SeqData, backbone: str, srs, seed: int, num_negatives: int = 100,
                 table: np.ndarray | None = None, align_table: np.ndarray | None = None,
                 exclude_history: bool = True, progress: bool = True, desc: str = "train",
                 device: torch.device | str = "cpu"):
    """Seed, build `backbone` over ID or external item vectors, train on `device`, and rank every user's test
    item. Returns (model, TrainResult, full_ranks (U,), sampled_ranks (U,)); the test always ranks all users.
    """
    seed_everything(seed)
    encoder = build_encoder(data.num_items, srs.hidden, table, srs.adapter_hidden, srs.item_encoder, srs.llm_init_std)
    model = build_model(backbone, encoder, srs)
    if align_table is not None and srs.align_alpha > 0:
        if table is None:
            raise ValueError("srs.align_alpha > 0 needs an external embedding table; the 'id' method has none")
        model.set_alignment(align_table, srs.align_alpha, srs.align_tau, srs.align_form)
    model.to(device)  # after set_alignment: the alignment table is a buffer and moves along
    result = train(model, data, srs, seed, exclude_history, progress, desc)
    inputs = test_inputs(data)
    interacted = [np.append(s, t) for s, t in zip(inputs, data.test)]
    negatives = sample_negatives_per_user(interacted, data.num_items, num_negatives, seed)
    full, samp = rank_targets(model, inputs, data.test, srs.batch_size, exclude_history, srs.chunk_tokens, negatives)
    return model, result, full, samp
