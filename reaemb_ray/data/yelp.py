"""Yelp Open Dataset reader: `yelp_academic_dataset_{review,business}.json` (or `review.json`/`business.json`),
JSON lines. Items are businesses with attributes name, categories, city, state; the review date orders users.
"""
from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

from tqdm import tqdm

from reaemb_ray.data.raw import (BadRows, RawDataset, SequenceBuilder, add_item, make_attributes, numbered_lines,
                                 register, require_file)


def _unix(date: str) -> int:
    return int(datetime.strptime(date, "%Y-%m-%d %H:%M:%S").replace(tzinfo=timezone.utc).timestamp())


@register("yelp")
def read_yelp(folder: Path, bad: BadRows, name: str) -> RawDataset:
    bpath = require_file(folder, "yelp_academic_dataset_business.json", "business.json", what="yelp businesses")
    rpath = require_file(folder, "yelp_academic_dataset_review.json", "review.json", what="yelp reviews")
    items: dict = {}
    for ln, line in tqdm(numbered_lines(bpath), desc="yelp businesses", mininterval=2.0, leave=False):
        where = f"{bpath}:{ln}"
        try:
            b = json.loads(line)
            bid = b["business_id"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            bad("malformed_line", where, f"not a business JSON object with business_id ({e})", "repair the line")
            continue
        cats = [c.strip() for c in (b.get("categories") or "").split(",") if c.strip()]
        attrs = make_attributes([("name", b.get("name")), ("categories", cats), ("city", b.get("city")),
                                 ("state", b.get("state"))])
        add_item(items, bid, attrs, bad, where)
    seqs = SequenceBuilder(items, bad, bpath.name)
    for ln, line in tqdm(numbered_lines(rpath), desc="yelp reviews", mininterval=2.0, leave=False):
        where = f"{rpath}:{ln}"
        try:
            r = json.loads(line)
            user, item, ts = r["user_id"], r["business_id"], _unix(r["date"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            bad("malformed_line", where, f"review needs user_id, business_id and date 'YYYY-MM-DD HH:MM:SS' ({e})",
                "repair the line")
            continue
        seqs.add(user, item, ts, where)
    return seqs.build(str(folder))
