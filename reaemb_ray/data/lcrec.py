"""LC-Rec / LETTER data (`lcrec`): `<name>.inter.json` + `<name>.item.json`.

Zheng et al. 2024 (LC-Rec, ICDE) and Wang et al. 2024 (LETTER, CIKM) ship Amazon categories in this form:
`<name>.inter.json` maps a user index to the user's item indices, oldest first (no timestamps);
`<name>.item.json` maps an item index (a string key) to its record (title, description, brand, categories as a
comma-joined string). Optional `<name>.item2id` / `<name>.user2id` (`raw id<TAB>index` lines) give the
original ids (e.g. ASINs), which then name the items and users.
"""
from __future__ import annotations

import re
from pathlib import Path

from reaemb_ray.data.item_meta import attributes
from reaemb_ray.data.raw import (BadRows, ItemCatalogue, RawDataset, ReadOptions, SequenceBuilder, add_item, load_json,
                                 numbered_lines, register)
from reaemb_ray.errors import DataError

_INDEX = re.compile(r"-?\d+")


def _file(folder: Path, name: str, suffix: str) -> Path:
    if (folder / f"{name}{suffix}").is_file():
        return folder / f"{name}{suffix}"
    found = sorted(folder.glob(f"*{suffix}"))
    if len(found) == 1:
        return found[0]
    raise FileNotFoundError(f"lcrec: expected {name}{suffix} in {folder} (found {[f.name for f in found] or 'no'} "
                            f"*{suffix} files); set data.name to the files' stem (e.g. Instruments) or point "
                            "data.path at the right folder")


def _remap(path: Path, bad: BadRows) -> dict[str, str]:
    """index -> original id from an optional `raw<TAB>index` file."""
    if not path.is_file():
        return {}
    out: dict[str, str] = {}
    for ln, line in numbered_lines(path, bad):
        f = line.split("\t")
        if len(f) != 2 or not _INDEX.fullmatch(f[1].strip()):
            bad("malformed_line", f"{path}:{ln}", "expected 'original id<TAB>index'", "repair the line")
            continue
        out[f[1].strip()] = f[0].strip()
    return out


@register("lcrec", "<name>.inter.json (user -> item indices) + <name>.item.json (index -> record), LC-Rec/LETTER")
def read_lcrec(folder: Path, bad: BadRows, opts: ReadOptions) -> RawDataset:
    inter_path = _file(folder, opts.name, ".inter.json")
    item_path = _file(folder, opts.name, ".item.json")
    stem = inter_path.name.removesuffix(".inter.json")
    item_ids = _remap(folder / f"{stem}.item2id", bad)
    user_ids = _remap(folder / f"{stem}.user2id", bad)

    item_doc, inter_doc = load_json(item_path), load_json(inter_path)
    for path, doc in ((item_path, item_doc), (inter_path, inter_doc)):
        if not isinstance(doc, dict):
            raise DataError(f"{path} holds a JSON {type(doc).__name__}, not an object keyed by index; point data.path "
                            "at LC-Rec files, which map a user (or item) index to its items (or record)")
    items = ItemCatalogue()
    for key, rec in item_doc.items():
        where = f"{item_path} (item {key!r})"
        if not isinstance(rec, dict):
            bad("malformed_line", where, "the item's value is not an object of attributes", "repair the entry")
            continue
        add_item(items, str(key), attributes(rec), bad, where)

    seqs = SequenceBuilder(items, bad, item_path.name)
    for user, seq in inter_doc.items():
        where = f"{inter_path} (user {user!r})"
        if not isinstance(seq, list) or not all(isinstance(i, int) and not isinstance(i, bool) or
                                                isinstance(i, str) and _INDEX.fullmatch(i) for i in seq):
            bad("malformed_line", where, "the user's value is not a list of integer item indices", "repair the entry")
            continue
        for i in seq:
            seqs.add(user_ids.get(str(user), str(user)), str(i), None, where)
    files = [inter_path, item_path] + [p for p in (folder / f"{stem}.item2id", folder / f"{stem}.user2id")
                                       if p.is_file()]
    raw = seqs.build(str(folder), files)
    if item_ids:
        raw.rename_items(item_ids)
    return raw
