"""Amazon review dumps (`amazon_json`): one review file plus its `meta_*` metadata file, JSON lines.

Sources: McAuley et al. 2015 (2014 dumps, python-dict-literal metadata lines), Ni et al. 2019 (2018, JSON
lines), Hou et al. 2024 (2023, JSON lines keyed by parent_asin, timestamps in ms). See docs/DATA.md. The P5
sequential copies are read by reaemb_ray/data/p5.py.
"""
from __future__ import annotations

from pathlib import Path

from tqdm import tqdm

from reaemb_ray.data.item_meta import amazon_attributes, parse_line, records
from reaemb_ray.data.raw import (BadRows, ItemCatalogue, RawDataset, ReadOptions, SequenceBuilder, add_item,
                                 numbered_lines, register)

_JSON_SUFFIXES = (".json", ".json.gz", ".jsonl", ".jsonl.gz")


def _progress(it, desc: str):
    return tqdm(it, desc=desc, unit=" lines", mininterval=2.0, leave=False)


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


@register("amazon_json", "one review file and one meta_* file (.json/.jsonl, optionally gzip), 2014/2018/2023")
def read_amazon_json(folder: Path, bad: BadRows, opts: ReadOptions) -> RawDataset:
    files = sorted(f for f in folder.iterdir() if f.name.endswith(_JSON_SUFFIXES))
    meta_path = _pick([f for f in files if f.name.startswith("meta_")], opts.name, "metadata (meta_*)", folder)
    review_path = _pick([f for f in files if not f.name.startswith("meta_")], opts.name, "review", folder)

    items = ItemCatalogue()
    for where, item, rec in _progress(records(meta_path, bad), "amazon metadata"):
        if not item:
            bad("malformed_line", where, "metadata row has no 'asin'/'parent_asin'", "repair or delete the line")
            continue
        add_item(items, item, amazon_attributes(rec), bad, where)

    seqs = SequenceBuilder(items, bad, meta_path.name)
    for ln, line in _progress(numbered_lines(review_path, bad), "amazon reviews"):
        where = f"{review_path}:{ln}"
        try:
            r = parse_line(line)
            user = r.get("reviewerID") or r.get("user_id")
            item = r.get("parent_asin") or r.get("asin")
            if "unixReviewTime" in r:
                ts = int(r["unixReviewTime"])
            else:
                ts = int(r["timestamp"]) // 1000  # 2023 dumps: milliseconds
            if not user or not item:
                raise KeyError("reviewerID/user_id or asin")
            stars = r.get("overall", r.get("rating"))  # 2014/2018: overall, 2023: rating
            rating = None if stars is None else float(stars)
        except (ValueError, SyntaxError, KeyError, TypeError, AttributeError, OverflowError) as e:
            bad("malformed_line", where, f"review row unreadable or missing a field ({e})",
                "each review needs reviewerID/user_id, asin/parent_asin and unixReviewTime/timestamp")
            continue
        seqs.add(str(user), str(item), ts, where, rating=rating)
    return seqs.build(str(folder), [meta_path, review_path])
