"""Prompts with checkable truths, from the training split only.

A user's interactions at positions < len - 2 are the training split (the last two are validation and test and
never appear here, neither as a target nor in a history). Items are split into `folds` seeded folds; the model
of fold k trains on examples whose target AND history avoid fold k's items, and writes the final reasoning of
fold k's items (out-of-fold: the model that reasons about an item never saw that item's ratings).

- `rating`: each training interaction (u, i, r) is an example; history = u's previous training interactions
  (at most `history_items`, newest kept) with their ratings; truth = r. A share `no_history_share` of the
  examples drops the history, so the item-level question of the final reasoning is trained too.
- `next_item` (no ratings): each training position t >= 1 gives one example; the candidate is the true item
  (truth 1) or, with probability 1/2, a uniformly drawn item the user never interacted with in training
  (truth 0). Without a history the truth is whether the candidate is popular (>= data.tail_threshold).
Item-level truths (shown beside the final reasoning): the item's mean training rating rounded to the nearest
rating class; for next_item whether the item is popular.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq


@dataclass
class Example:
    user_id: int  # 0 for an item-level prompt
    item_id: int
    history: list[tuple[int, float | None]]  # (item id, rating or None), oldest first
    truth: float | None  # None: the item has no training rating (item-level prompts only)


@dataclass
class TaskData:
    task: str
    texts: list[str]  # index = item id, [0] = ""
    train_items: list[np.ndarray]  # per user (index u - 1), training split, oldest first
    train_ratings: list[np.ndarray] | None  # parallel to train_items (rating task only)
    popularity: np.ndarray  # (N + 1,) training interactions per item
    classes: np.ndarray  # sorted truth classes of the training targets
    tail_threshold: int = 20

    @property
    def num_items(self) -> int:
        return len(self.texts) - 1

    @property
    def scale(self) -> tuple[float, float]:
        return float(self.classes[0]), float(self.classes[-1])


def resolve_task(task: str, prepared_dir) -> str:
    """`auto` -> rating when prepared/interactions.parquet holds ratings, else next_item."""
    if task != "auto":
        return task
    return "rating" if _has_ratings(Path(prepared_dir) / "interactions.parquet") else "next_item"


def _has_ratings(path: Path) -> bool:
    schema = pq.read_schema(path)
    if "rating" not in schema.names:
        return False
    return pq.read_table(path, columns=["rating"]).column("rating").null_count == 0


def load_task_data(prepared_dir, task: str, tail_threshold: int = 20) -> TaskData:
    p = Path(prepared_dir)
    inter_path = p / "interactions.parquet"
    if not inter_path.exists():
        raise FileNotFoundError(f"{inter_path} not found; run `reaemb prepare` first")
    if task == "rating" and not _has_ratings(inter_path):
        raise ValueError(f"{inter_path} has no complete rating column (prepared before ratings were kept, or the "
                         "dataset has none); re-run `reaemb prepare --fresh`, or set reason.task=next_item")
    items = pq.read_table(p / "items.parquet", columns=["item_id", "text"])
    texts = [""] * (items.num_rows + 1)
    for i, t in zip(items.column("item_id").to_pylist(), items.column("text").to_pylist()):
        texts[i] = t
    cols = ["user_id", "item_id", "position"] + (["rating"] if task == "rating" else [])
    t = pq.read_table(inter_path, columns=cols).sort_by([("user_id", "ascending"), ("position", "ascending")])
    users, item_ids = t.column("user_id").to_numpy(), t.column("item_id").to_numpy()
    ratings = t.column("rating").to_numpy().astype(np.float64) if task == "rating" else None
    bounds = np.flatnonzero(np.diff(users)) + 1
    starts, ends = np.concatenate([[0], bounds]), np.concatenate([bounds, [len(users)]])
    train_items, train_ratings = [], [] if ratings is not None else None
    for s, e in zip(starts, ends):
        n_train = max(0, e - s - 2)  # the last two are validation and test
        train_items.append(item_ids[s:s + n_train])
        if ratings is not None:
            train_ratings.append(ratings[s:s + n_train])
    flat = np.concatenate(train_items) if train_items else np.zeros(0, np.int64)
    popularity = np.bincount(flat, minlength=len(texts))
    classes = np.unique(np.concatenate(train_ratings)) if ratings is not None else np.array([0.0, 1.0])
    return TaskData(task, texts, train_items, train_ratings, popularity, classes, tail_threshold)


def item_folds(num_items: int, folds: int, seed: int) -> np.ndarray:
    """(N + 1,) fold of each item (0..folds-1, balanced, seeded); index 0 (padding) is -1."""
    order = np.random.default_rng(seed).permutation(num_items) + 1
    out = np.full(num_items + 1, -1, dtype=np.int64)
    out[order] = np.arange(num_items) % folds
    return out


def training_examples(data: TaskData, held_out: np.ndarray, history_items: int, no_history_share: float,
                      seed: int) -> list[Example]:
    """Every training-split example whose target and history avoid the `held_out` items ((N + 1,) bool), shuffled."""
    rng = random.Random(seed)
    out: list[Example] = []
    for u, items in enumerate(data.train_items, start=1):
        keep = ~held_out[items]
        items_u = items[keep]
        ratings_u = data.train_ratings[u - 1][keep] if data.train_ratings is not None else None
        seen = set(items.tolist())
        for t in range(len(items_u)):
            lo = max(0, t - history_items)
            history = [(int(items_u[j]), None if ratings_u is None else float(ratings_u[j])) for j in range(lo, t)]
            if rng.random() < no_history_share:
                history = []
            if data.task == "rating":
                out.append(Example(u, int(items_u[t]), history, float(ratings_u[t])))
                continue
            if not history:
                continue  # next_item: the user-level question needs a history
            item, truth = int(items_u[t]), 1.0
            if rng.random() < 0.5:
                item, truth = _negative(rng, data.num_items, seen, held_out), 0.0
            out.append(Example(u, item, history, truth))
    rng.shuffle(out)
    return out


def _negative(rng: random.Random, num_items: int, seen: set, held_out: np.ndarray) -> int:
    for _ in range(1000):
        i = rng.randint(1, num_items)
        if i not in seen and not held_out[i]:
            return i
    raise ValueError("next_item: could not draw an item the user never chose; the catalogue is too small")


def item_examples(data: TaskData, item_ids) -> list[Example]:
    """Item-level prompts (no history) with the item's truth for display (None without training ratings)."""
    if data.task == "rating":
        flat_items, flat_ratings = np.concatenate(data.train_items), np.concatenate(data.train_ratings)
        sums = np.bincount(flat_items, weights=flat_ratings, minlength=data.num_items + 1)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = sums / data.popularity
    out = []
    for i in (int(x) for x in item_ids):
        if data.task == "rating":
            truth = None if data.popularity[i] == 0 else float(data.classes[np.abs(data.classes - mean[i]).argmin()])
        else:
            truth = float(data.popularity[i] >= data.tail_threshold)
        out.append(Example(0, i, [], truth))
    return out


def class_prob(examples: list[Example]) -> dict[float, float]:
    """Share of each truth class among the examples (the frequency the accuracy reward divides by)."""
    truths = np.array([e.truth for e in examples if e.truth is not None], dtype=np.float64)
    if not len(truths):
        raise ValueError("no training example with a truth: the fold has no usable training interactions")
    values, counts = np.unique(truths, return_counts=True)
    return {float(v): float(c) / len(truths) for v, c in zip(values, counts)}
