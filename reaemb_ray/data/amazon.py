"""Amazon readers: the P5 sequential copy (`p5_amazon`) and the raw review/metadata dumps (`amazon_json`).

Sources: McAuley et al. 2015 (2014 dumps, python-dict-literal lines), Ni et al. 2019 (2018, JSON lines),
Hou et al. 2024 (2023, JSON lines keyed by parent_asin). See docs/DATA.md.
"""
from __future__ import annotations

import ast
import json
from pathlib import Path

from tqdm import tqdm

from reaemb_ray.data.raw import (BadRows, RawDataset, SequenceBuilder, add_item, make_attributes, numbered_lines,
                                 register, require_file)


def _progress(it, desc: str):
    return tqdm(it, desc=desc, unit=" lines", mininterval=2.0, leave=False)


# ------------------------------------------------------------------------------------------------ p5_amazon


def _joined_tsv(folder: Path, name: str) -> Path:
    preferred = [f"{name.lower()}_items_joined.tsv", f"{name}_items_joined.tsv"]
    for p in preferred:
        if (folder / p).is_file():
            return folder / p
    found = sorted(folder.glob("*_items_joined.tsv"))
    if len(found) == 1:
        return found[0]
    raise FileNotFoundError(
        f"p5_amazon: expected one *_items_joined.tsv (columns p5_item_id, asin, title, brand-then-categories) in "
        f"{folder}, found {[f.name for f in found] or 'none'}; point data.path at the P5 folder that has it, and if several are "
        "there set data.name to pick one"
    )


@register("p5_amazon")
def read_p5_amazon(folder: Path, bad: BadRows, name: str) -> RawDataset:
    seq_path = require_file(folder, "sequential_data.txt", what="p5_amazon sequences")
    maps_path = require_file(folder, "datamaps.json", what="p5_amazon id maps")
    tsv_path = _joined_tsv(folder, name)
    try:
        maps = json.loads(maps_path.read_text())
        id2item, id2user = maps["id2item"], maps.get("id2user", {})
    except (json.JSONDecodeError, KeyError) as e:
        raise ValueError(f"{maps_path}: not a P5 datamaps file ({e}); it must be JSON with an 'id2item' map") from None

    rows = []
    for ln, line in numbered_lines(tsv_path):
        if ln == 1 and line.startswith("p5_item_id"):
            continue  # header
        f = line.split("\t")
        if len(f) != 4 or not f[0].isdigit():
            bad("malformed_line", f"{tsv_path}:{ln}", f"expected 4 tab-separated fields p5_item_id, asin, title, "
                f"attributes, got {len(f)}", "repair the line")
            continue
        rows.append((ln, f[0], f[1], f[2], [a for a in f[3].split("|") if a.strip()]))

    # The 4th column is brand (when it covers >= 5 items) then categories, with no marker for the brand. A category
    # name also shows up after the first position in some other row (below a brand or a parent category), a brand
    # never does; so the first entry is a brand exactly when it never appears at a later position.
    later = {a for *_, attrs in rows for a in attrs[1:]}
    items: dict = {}
    for ln, pid, asin, title, attrs in rows:
        where = f"{tsv_path}:{ln}"
        if id2item.get(pid, asin) != asin:
            bad("inconsistent_item", where, f"item {pid} is {asin!r} here but {id2item[pid]!r} in {maps_path.name}",
                "regenerate the joined file from the same datamaps.json")
            continue
        brand = attrs[0] if attrs and attrs[0] not in later else ""
        cats = attrs[1:] if brand else attrs
        add_item(items, pid, make_attributes([("title", title), ("brand", brand), ("categories", cats)]), bad, where)

    seqs = SequenceBuilder(items, bad, tsv_path.name)
    seen_users = set()
    for ln, line in _progress(numbered_lines(seq_path), "p5 sequences"):
        where = f"{seq_path}:{ln}"
        toks = line.split()
        if len(toks) < 2 or not all(t.isdigit() for t in toks):
            bad("malformed_line", where, "expected 'user item1 item2 ...' with integer ids", "repair the line")
            continue
        user = toks[0]
        if user in seen_users:
            bad("duplicate_user", where, f"user {user} has a second sequence line", "merge the user's lines")
            continue
        seen_users.add(user)
        for pid in toks[1:]:
            seqs.add(id2user.get(user, user), pid, None, where)
    raw = seqs.build(str(folder))
    # Report items by ASIN, the id the outside world uses; P5 ids are the order of first appearance anyway.
    raw.items = {id2item.get(pid, pid): a for pid, a in raw.items.items()}
    raw.sequences = {u: [id2item.get(p, p) for p in s] for u, s in raw.sequences.items()}
    return raw


# ---------------------------------------------------------------------------------------------- amazon_json

_JSON_SUFFIXES = (".json", ".json.gz", ".jsonl", ".jsonl.gz")


def _pick(files: list[Path], name: str, what: str, folder: Path) -> Path:
    if len(files) == 1:
        return files[0]
    named = [f for f in files if name.lower() in f.name.lower()]
    if len(named) == 1:
        return named[0]
    raise FileNotFoundError(
        f"amazon_json: need exactly one {what} file (*.json, *.json.gz, *.jsonl, *.jsonl.gz) in {folder}, found "
        f"{[f.name for f in files] or 'none'}; point data.path at the folder with the review file and its meta_* file, "
        "and if several are there set data.name to a string only the right one contains"
    )


def _parse_line(line: str):
    """2018/2023 dumps are JSON lines; the 2014 dumps are python dict literals (single quotes)."""
    try:
        return json.loads(line)
    except json.JSONDecodeError:
        return ast.literal_eval(line)


def _categories(meta: dict) -> list[str]:
    raw = meta.get("categories", meta.get("category", []))
    flat: list[str] = []
    for c in raw or []:
        for x in (c if isinstance(c, (list, tuple)) else [c]):  # 2014: list of category paths
            if isinstance(x, str) and x.strip() and x not in flat:
                flat.append(x)
    return flat


def _price(meta: dict) -> str:
    p = meta.get("price")
    if p is None or p == "":
        return ""
    if isinstance(p, (int, float)):
        return f"${p:.2f}"
    return str(p) if str(p).startswith("$") else ""  # 2018 sometimes holds HTML or text in this field


def _brand(meta: dict) -> str:
    b = meta.get("brand") or meta.get("store") or ""
    if not b and isinstance(meta.get("details"), dict):
        b = meta["details"].get("Brand", "")
    return b


@register("amazon_json")
def read_amazon_json(folder: Path, bad: BadRows, name: str) -> RawDataset:
    if not folder.is_dir():
        raise FileNotFoundError(f"amazon_json: {folder} is not a folder; point data.path at the folder with the "
                                "review file and the meta_*.json(.gz) metadata file")
    files = sorted(f for f in folder.iterdir() if f.name.endswith(_JSON_SUFFIXES))
    meta_path = _pick([f for f in files if f.name.startswith("meta_")], name, "metadata (meta_*)", folder)
    review_path = _pick([f for f in files if not f.name.startswith("meta_")], name, "review", folder)

    items: dict = {}
    for ln, line in _progress(numbered_lines(meta_path), "amazon metadata"):
        where = f"{meta_path}:{ln}"
        try:
            m = _parse_line(line)
        except (ValueError, SyntaxError):
            bad("malformed_line", where, "not a JSON object or python dict literal", "repair or delete the line")
            continue
        item = m.get("parent_asin") or m.get("asin") if isinstance(m, dict) else None
        if not item:
            bad("malformed_line", where, "metadata row has no 'asin'/'parent_asin'", "repair or delete the line")
            continue
        desc = m.get("description")
        attrs = make_attributes([("title", m.get("title")), ("brand", _brand(m)), ("categories", _categories(m)),
                                 ("price", _price(m)), ("description", desc)])
        add_item(items, item, attrs, bad, where)

    seqs = SequenceBuilder(items, bad, meta_path.name)
    for ln, line in _progress(numbered_lines(review_path), "amazon reviews"):
        where = f"{review_path}:{ln}"
        try:
            r = _parse_line(line)
            user = r.get("reviewerID") or r.get("user_id")
            item = r.get("parent_asin") or r.get("asin")
            if "unixReviewTime" in r:
                ts = int(r["unixReviewTime"])
            else:
                ts = int(r["timestamp"]) // 1000  # 2023 dumps: milliseconds
            if not user or not item:
                raise KeyError("reviewerID/user_id or asin")
        except (ValueError, SyntaxError, KeyError, TypeError, AttributeError) as e:
            bad("malformed_line", where, f"review row unreadable or missing a field ({e})",
                "each review needs reviewerID/user_id, asin/parent_asin and unixReviewTime/timestamp")
            continue
        seqs.add(user, item, ts, where)
    return seqs.build(str(folder))
