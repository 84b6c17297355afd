"""Yelp Open Dataset reader: `yelp_academic_dataset_{review,business}.json` (or `review.json`/`business.json`),
JSON lines, optionally gzip-compressed. Items are businesses with attributes name, categories, city, state;
the review date orders users.
"""
from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

from tqdm import tqdm

from reaemb_ray.data.item_meta import yelp_attributes
from reaemb_ray.data.raw import (BadRows, ItemCatalogue, RawDataset, ReadOptions, SequenceBuilder, add_item,
                                 numbered_lines, register, require_file)


def _unix(date: str) -> int:
    return int(datetime.strptime(date, "%Y-%m-%d %H:%M:%S").replace(tzinfo=timezone.utc).timestamp())


def _names(kind: str) -> list[str]:
    base = [f"yelp_academic_dataset_{kind}.json", f"{kind}.json"]
    return base + [b + ".gz" for b in base]


@register("yelp", "yelp_academic_dataset_{business,review}.json (or business.json + review.json), optionally .gz")
def read_yelp(folder: Path, bad: BadRows, opts: ReadOptions) -> RawDataset:
    bpath = require_file(folder, *_names("business"), what="yelp businesses")
    rpath = require_file(folder, *_names("review"), what="yelp reviews")
    items = ItemCatalogue()
    for ln, line in tqdm(numbered_lines(bpath, bad), desc="yelp businesses", mininterval=2.0, leave=False):
        where = f"{bpath}:{ln}"
        try:
            b = json.loads(line)
            bid = b["business_id"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            bad("malformed_line", where, f"not a business JSON object with business_id ({e})", "repair the line")
            continue
        add_item(items, str(bid), yelp_attributes(b), bad, where)
    seqs = SequenceBuilder(items, bad, bpath.name)
    for ln, line in tqdm(numbered_lines(rpath, bad), desc="yelp reviews", mininterval=2.0, leave=False):
        where = f"{rpath}:{ln}"
        try:
            r = json.loads(line)
            user, item, ts = r["user_id"], r["business_id"], _unix(r["date"])
            rating = None if r.get("stars") is None else float(r["stars"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            bad("malformed_line", where, f"review needs user_id, business_id and date 'YYYY-MM-DD HH:MM:SS' ({e})",
                "repair the line")
            continue
        seqs.add(str(user), str(item), ts, where, rating=rating)
    return seqs.build(str(folder), [bpath, rpath])
