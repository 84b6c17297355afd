"""P5 sequential data for any domain (`p5`; `p5_amazon` is the same reader under the name older configs use).

Geng et al. 2022 (P5, RecSys). A P5 folder has `sequential_data.txt` (`user item1 item2 ...`, integer ids,
oldest first) and `datamaps.json` (`id2item`: P5 item id -> the dataset's own id, e.g. an ASIN or a Yelp
business_id; optional `id2user`). Item text comes from one metadata file in the folder (`data.item_file`, or
the only candidate there):

- an item metadata JSON keyed by the dataset's own ids: Amazon `meta*.json(.gz)` (P5 ships `meta.json.gz`,
  python dict lines), the Yelp business JSON, an LC-Rec-style `*.item.json` mapping, ... (see item_meta.py);
- or the Amazon join `*_items_joined.tsv` (p5_item_id, asin, title, `|`-joined brand-then-categories).
"""
from __future__ import annotations

import logging
import re
from collections import Counter
from pathlib import Path

from tqdm import tqdm

from reaemb_ray.data.item_meta import attributes, records
from reaemb_ray.data.raw import (BadRows, ItemCatalogue, RawDataset, ReadOptions, SequenceBuilder, add_item, load_json,
                                 make_attributes, numbered_lines, register, require_file)
from reaemb_ray.errors import DataError

log = logging.getLogger(__name__)
META_PATTERNS = ("*_items_joined.tsv", "meta*.json*", "*business*.json*", "*item*.json*")
META_SUFFIXES = (".tsv", ".json", ".json.gz", ".jsonl", ".jsonl.gz")
NOT_META = ("datamaps.json", "sequential_data.txt")
BRAND_MIN_ITEMS = 5  # the joined file lists a brand only when it covers at least this many items
_INT = re.compile(r"-?\d+")


def _meta_file(folder: Path, opts: ReadOptions) -> Path:
    """data.item_file, else the first pattern of META_PATTERNS (in that order) that one file matches (data.name
    picks among several)."""
    if opts.item_file:
        return folder / opts.item_file
    seen: list[Path] = []
    for pat in META_PATTERNS:
        found = sorted(p for p in folder.glob(pat) if p.is_file() and p.name not in NOT_META
                       and p.name.endswith(META_SUFFIXES) and "review" not in p.name.lower())
        named = [p for p in found if opts.name and opts.name.lower() in p.name.lower()]
        pick = found if len(found) == 1 else named if len(named) == 1 else []
        if pick:
            log.info("p5: item metadata from %s", pick[0])
            return pick[0]
        seen += found
    raise FileNotFoundError(
        f"p5: need one item metadata file in {folder} (a *_items_joined.tsv, meta*.json(.gz), *business*.json or "
        f"*item*.json), found {[p.name for p in seen] or 'none'}; "
        + ("set data.item_file to the one to read" if seen else
           "point data.path at the folder that has the item metadata too, or put it there"))


def _joined_items(tsv_path: Path, id2item: dict, maps_name: str, bad: BadRows) -> ItemCatalogue:
    """Items keyed by P5 id from the Amazon join; the first `|` entry is a brand only when the header says the
    column starts with one, the entry heads at least BRAND_MIN_ITEMS rows, and never appears at a later
    position (category names do: below a brand or a parent category)."""
    rows, brand_first = [], True
    for ln, line in numbered_lines(tsv_path, bad):
        if ln == 1 and line.startswith("p5_item_id"):
            brand_first = "brand" in line.split("\t")[-1].lower()
            continue
        f = line.split("\t")
        if len(f) != 4 or not f[0].isdigit():
            bad("malformed_line", f"{tsv_path}:{ln}", f"expected 4 tab-separated fields p5_item_id, asin, title, "
                f"attributes, got {len(f)}", "repair the line")
            continue
        rows.append((ln, f[0], f[1], f[2], [a for a in f[3].split("|") if a.strip()]))
    later = {a for *_, attrs in rows for a in attrs[1:]}
    heads = Counter(attrs[0] for *_, attrs in rows if attrs)
    items = ItemCatalogue()
    for ln, pid, asin, title, attrs in rows:
        where = f"{tsv_path}:{ln}"
        if id2item.get(pid, asin) != asin:
            bad("inconsistent_item", where, f"item {pid} is {asin!r} here but {id2item[pid]!r} in {maps_name}",
                "regenerate the joined file from the same datamaps.json")
            continue
        is_brand = brand_first and bool(attrs) and attrs[0] not in later and heads[attrs[0]] >= BRAND_MIN_ITEMS
        brand, cats = (attrs[0], attrs[1:]) if is_brand else ("", attrs)
        add_item(items, pid, make_attributes([("title", title), ("brand", brand), ("categories", cats)]), bad, where)
    return items


def _json_items(meta_path: Path, id2item: dict, bad: BadRows) -> ItemCatalogue:
    """Items keyed by P5 id from a metadata JSON keyed by the dataset's own ids (other items are ignored)."""
    wanted = {str(raw): pid for pid, raw in id2item.items()}
    items = ItemCatalogue()
    for where, raw_id, rec in tqdm(records(meta_path, bad), desc="p5 item metadata", mininterval=2.0, leave=False):
        if raw_id is None:
            bad("malformed_line", where, "metadata record without an id (asin, parent_asin, business_id, item_id or "
                "id)", "give every record its item id")
            continue
        if raw_id in wanted:
            add_item(items, wanted[raw_id], attributes(rec), bad, where)
    return items


@register("p5", "sequential_data.txt + datamaps.json + one item metadata file (JSON keyed by the dataset's ids, "
                "or *_items_joined.tsv)")
def read_p5(folder: Path, bad: BadRows, opts: ReadOptions) -> RawDataset:
    seq_path = require_file(folder, "sequential_data.txt", what="p5 sequences")
    maps_path = require_file(folder, "datamaps.json", what="p5 id maps")
    meta_path = _meta_file(folder, opts)
    maps = load_json(maps_path)
    if not isinstance(maps, dict) or not isinstance(maps.get("id2item"), dict):
        raise DataError(f"{maps_path}: not a P5 datamaps file; it must be a JSON object with an 'id2item' map "
                        "(P5 item id -> the dataset's item id)")
    id2item, id2user = {str(k): str(v) for k, v in maps["id2item"].items()}, maps.get("id2user") or {}
    if meta_path.name.endswith(".tsv"):
        items = _joined_items(meta_path, id2item, maps_path.name, bad)
    else:
        items = _json_items(meta_path, id2item, bad)

    seqs = SequenceBuilder(items, bad, meta_path.name)
    seen_users = set()
    for ln, line in tqdm(numbered_lines(seq_path, bad), desc="p5 sequences", mininterval=2.0, leave=False):
        where = f"{seq_path}:{ln}"
        toks = line.split()
        if len(toks) < 2 or not all(_INT.fullmatch(t) for t in toks):
            bad("malformed_line", where, "expected 'user item1 item2 ...' with integer ids", "repair the line")
            continue
        user = toks[0]
        if user in seen_users:
            bad("duplicate_user", where, f"user {user} has a second sequence line", "merge the user's lines")
            continue
        seen_users.add(user)
        for pid in toks[1:]:
            seqs.add(str(id2user.get(user, user)), pid, None, where)
    raw = seqs.build(str(folder), [seq_path, maps_path, meta_path])
    # Report items by the dataset's own id (the ASIN for Amazon); P5 ids are the order of first appearance anyway.
    raw.rename_items(id2item)
    return raw


register("p5_amazon", "the p5 reader under its older name")(read_p5)
