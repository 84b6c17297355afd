"""The reader contract: every reader turns a raw dataset folder into one `RawDataset`.

Bad rows go through `BadRows`: under `data.on_bad_row=error` the first one raises a `ValueError` that names
the file, the line and the fix; under `skip` it is counted by reason (the counts land in summary.json) and the
first few are logged. Nothing is dropped silently.
"""
from __future__ import annotations

import gzip
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

log = logging.getLogger(__name__)

Attributes = list[tuple[str, str]]  # ordered (key, value) pairs, e.g. [("title", "..."), ("brand", "...")]


@dataclass
class RawDataset:
    items: dict[str, Attributes]  # raw item id -> attributes
    sequences: dict[str, list[str]]  # raw user id -> raw item ids, oldest first (insertion order = file order)
    timestamps: dict[str, list[int]] = field(default_factory=dict)  # parallel to sequences; absent = unknown
    skipped: Counter = field(default_factory=Counter)  # reason -> rows skipped
    source: str = ""

    @property
    def num_interactions(self) -> int:
        return sum(len(s) for s in self.sequences.values())


class BadRows:
    """Raise or count one bad row; `where` is `file:line`, `fix` tells the user what to do."""

    def __init__(self, policy: str, max_logged: int = 5):
        if policy not in ("error", "skip"):
            raise ValueError(f"data.on_bad_row must be 'error' or 'skip', got {policy!r}")
        self.policy = policy
        self.counts: Counter = Counter()
        self.max_logged = max_logged

    def __call__(self, reason: str, where: str, detail: str, fix: str) -> None:
        if self.policy == "error":
            raise ValueError(f"{where}: {detail} [{reason}]. Fix: {fix}, or set data.on_bad_row=skip to skip such rows")
        self.counts[reason] += 1
        if self.counts[reason] <= self.max_logged:
            log.warning("skipping %s: %s [%s]", where, detail, reason)
        elif self.counts[reason] == self.max_logged + 1:
            log.warning("more %s rows skipped; the total is in summary.json", reason)


def require_file(folder: Path, *names: str, what: str) -> Path:
    """The first of `names` that exists in `folder`, else a FileNotFoundError that lists what was expected."""
    for n in names:
        if (folder / n).is_file():
            return folder / n
    raise FileNotFoundError(
        f"{what}: none of {', '.join(names)} found in {folder}; point data.path at the folder that holds "
        f"the dataset files (see docs/DATA.md for each reader's expected files)"
    )


def open_text(path: Path, encoding: str = "utf-8"):
    """Open a text file, transparently gunzipping `.gz`."""
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding=encoding, errors="strict")
    return open(path, encoding=encoding, errors="strict", newline=None)


def numbered_lines(path: Path, encoding: str = "utf-8") -> Iterator[tuple[int, str]]:
    """(1-based line number, line without trailing newline/CR), skipping blank lines."""
    with open_text(path, encoding) as f:
        for i, line in enumerate(f, start=1):
            line = line.rstrip("\r\n")
            if line.strip():
                yield i, line


def clean_value(value: object) -> str:
    """One attribute value as a single-line string; lists are joined with ', '."""
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        parts = [clean_value(v) for v in value]
        return ", ".join(p for p in parts if p)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return " ".join(str(value).split())


def make_attributes(pairs: list[tuple[str, object]]) -> Attributes:
    """Clean the values and drop empty ones (an empty value says nothing about the item)."""
    out = []
    for k, v in pairs:
        v = clean_value(v)
        if v:
            out.append((k, v))
    return out


def add_item(items: dict[str, Attributes], raw_id: str, attrs: Attributes, bad: BadRows, where: str) -> None:
    """Register one item's metadata, routing duplicates and text-less items through `bad`."""
    if raw_id in items:
        bad("duplicate_item", where, f"item {raw_id!r} already has metadata", "remove the duplicate metadata row")
        return  # keep the first
    if not attrs:
        bad("item_without_text", where, f"item {raw_id!r} has no non-empty attribute",
            "give the item a title or another attribute, or remove it")
        return
    items[raw_id] = attrs


class SequenceBuilder:
    """Collects (user, item, timestamp) rows, checks items against the metadata, sorts users by time."""

    def __init__(self, items: dict[str, Attributes], bad: BadRows, meta_file: str):
        self.items, self.bad, self.meta_file = items, bad, meta_file
        self.rows: dict[str, list[tuple[int | None, str]]] = {}

    def add(self, user: str, item: str, timestamp: int | None, where: str) -> None:
        if item not in self.items:
            self.bad("item_without_metadata", where, f"item {item!r} of user {user!r} has no usable metadata in "
                     f"{self.meta_file}", f"add the item to {self.meta_file} or remove its interactions")
            return
        self.rows.setdefault(user, []).append((timestamp, item))

    def build(self, source: str) -> RawDataset:
        sequences, timestamps = {}, {}
        for user, rows in self.rows.items():
            known = all(t is not None for t, _ in rows)
            if known:
                rows = sorted(rows, key=lambda r: r[0])  # stable: ties keep file order
                timestamps[user] = [int(t) for t, _ in rows]
            sequences[user] = [i for _, i in rows]
        return RawDataset(items=self.items, sequences=sequences, timestamps=timestamps,
                          skipped=self.bad.counts, source=source)


READERS: dict[str, Callable[[Path, "BadRows", str], RawDataset]] = {}


def register(name: str):
    """Decorator: `@register("movielens") def read(folder, bad, name) -> RawDataset`."""

    def deco(fn):
        READERS[name] = fn
        return fn

    return deco


def kcore(raw: RawDataset, k: int) -> tuple[RawDataset, dict[str, int]]:
    """Repeatedly drop users and items with fewer than k interactions until none remain; return the counts."""
    if k <= 0:
        return raw, {}
    seqs = {u: list(s) for u, s in raw.sequences.items()}
    ts = {u: list(t) for u, t in raw.timestamps.items()}
    users0, inter0 = len(seqs), sum(map(len, seqs.values()))
    items0 = len({i for s in seqs.values() for i in s})
    while True:
        item_count = Counter(i for s in seqs.values() for i in s)
        weak_items = {i for i, c in item_count.items() if c < k}
        weak_users = {u for u, s in seqs.items() if len(s) < k}
        if not weak_items and not weak_users:
            break
        for u in list(seqs):
            if u in weak_users:
                del seqs[u]
                ts.pop(u, None)
                continue
            if weak_items:
                keep = [j for j, i in enumerate(seqs[u]) if i not in weak_items]
                seqs[u] = [seqs[u][j] for j in keep]
                if u in ts:
                    ts[u] = [ts[u][j] for j in keep]
    items1 = len({i for s in seqs.values() for i in s})
    stats = {"kcore_removed_users": users0 - len(seqs), "kcore_removed_items": items0 - items1,
             "kcore_removed_interactions": inter0 - sum(map(len, seqs.values()))}
    return RawDataset(items=raw.items, sequences=seqs, timestamps=ts, skipped=raw.skipped, source=raw.source), stats
