"""Item attributes from the metadata records of public datasets (Amazon, Yelp, LC-Rec/LETTER, anything else).

`attributes(record)` picks the schema from the record's keys: a Yelp business (business_id: name,
categories, city, state), an Amazon product (asin/parent_asin or title: title, brand, categories, price,
description), otherwise every scalar or list field in file order with `_` read as a space.
`records(path, bad)` reads a metadata file in any of the shapes they ship in: JSON lines (2014 Amazon lines
are python dict literals), one JSON object mapping item id -> record (LC-Rec `.item.json`), or a JSON list.
"""
from __future__ import annotations

import ast
import json
import re
from pathlib import Path
from typing import Iterator

from reaemb_ray.data.raw import Attributes, BadRows, load_json, make_attributes, numbered_lines, open_bytes
from reaemb_ray.errors import DataError

ID_KEYS = ("parent_asin", "asin", "business_id", "item_id", "id")


def parse_line(line: str):
    """2018/2023 Amazon dumps are JSON lines; the 2014 dumps are python dict literals (single quotes)."""
    try:
        return json.loads(line)
    except json.JSONDecodeError:
        return ast.literal_eval(line)  # literals only: never runs code


def record_id(record: dict) -> str | None:
    for k in ID_KEYS:
        if record.get(k) not in (None, ""):
            return str(record[k])
    return None


def amazon_categories(record: dict) -> list[str]:
    """Flattened, de-duplicated categories: 2014 lists of category paths, 2018/2023 lists, or LC-Rec's
    comma-joined string (split only at commas without a following space, which names like
    "Clothing, Shoes & Jewelry" keep)."""
    raw = record.get("categories", record.get("category", []))
    if isinstance(raw, str):
        raw = re.split(r",(?! )", raw)
    flat: list[str] = []
    for c in raw or []:
        for x in (c if isinstance(c, (list, tuple)) else [c]):  # 2014: list of category paths
            if isinstance(x, str) and x.strip() and x.strip() not in flat:
                flat.append(x.strip())
    return flat


def amazon_price(record: dict) -> str:
    p = record.get("price")
    if p is None or p == "":
        return ""
    if isinstance(p, (int, float)):
        return f"${p:.2f}"
    return str(p) if str(p).startswith("$") else ""  # 2018 sometimes holds HTML or text in this field


def amazon_brand(record: dict) -> str:
    b = record.get("brand") or record.get("store") or ""
    if not b and isinstance(record.get("details"), dict):
        b = record["details"].get("Brand", "")
    return b


def amazon_attributes(record: dict) -> Attributes:
    return make_attributes([("title", record.get("title")), ("brand", amazon_brand(record)),
                            ("categories", amazon_categories(record)), ("price", amazon_price(record)),
                            ("description", record.get("description"))])


def yelp_attributes(record: dict) -> Attributes:
    raw = record.get("categories") or ""
    cats = [str(c).strip() for c in (raw.split(",") if isinstance(raw, str) else raw) if str(c).strip()]
    return make_attributes([("name", record.get("name")), ("categories", cats), ("city", record.get("city")),
                            ("state", record.get("state"))])


def generic_attributes(record: dict) -> Attributes:
    pairs = [(k.replace("_", " "), v) for k, v in record.items()
             if k not in ID_KEYS and (isinstance(v, (str, int, float)) and not isinstance(v, bool)
                                      or isinstance(v, list) and all(isinstance(x, (str, int, float)) for x in v))]
    return make_attributes(pairs)


def attributes(record: dict) -> Attributes:
    if "business_id" in record:
        return yelp_attributes(record)
    if any(k in record for k in ("asin", "parent_asin", "title")):
        return amazon_attributes(record)
    return generic_attributes(record)


def records(path: Path, bad: BadRows) -> Iterator[tuple[str, str | None, dict]]:
    """(where, item id or None, record) for every item record in a metadata file of any shipped shape."""
    if not _is_document(path):
        for ln, line in numbered_lines(path, bad):
            where = f"{path}:{ln}"
            try:
                rec = parse_line(line)
            except (ValueError, SyntaxError, MemoryError, RecursionError):
                bad("malformed_line", where, "not a JSON object or python dict literal", "repair or delete the line")
                continue
            if not isinstance(rec, dict):
                bad("malformed_line", where, "not a JSON object", "repair or delete the line")
                continue
            yield where, record_id(rec), rec
        return
    doc = load_json(path)
    if isinstance(doc, dict):
        for key, rec in doc.items():
            where = f"{path} (item {key!r})"
            if not isinstance(rec, dict):
                bad("malformed_line", where, "the item's value is not an object of attributes", "repair the entry")
                continue
            yield where, str(key), rec
    elif isinstance(doc, list):
        for i, rec in enumerate(doc):
            where = f"{path} (record {i})"
            if not isinstance(rec, dict):
                bad("malformed_line", where, "not a JSON object", "repair the entry")
                continue
            yield where, record_id(rec), rec
    else:
        raise DataError(f"{path} holds a JSON {type(doc).__name__}; item metadata must be JSON lines, an object "
                        "mapping item id -> attributes, or a list of objects")


def _is_document(path: Path) -> bool:
    """Whether `path` is one JSON document (a mapping or a list) rather than one record per line."""
    try:
        with open_bytes(path) as f:
            first = f.readline().decode("utf-8", errors="replace").strip()
    except (EOFError, OSError):
        return False  # a broken stream: read line by line, where it is reported with its line
    if first.startswith("[") or first == "{":
        return True
    try:
        doc = parse_line(first)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return False  # a broken first line: read line by line, where it is reported with its number
    return isinstance(doc, dict) and record_id(doc) is None and bool(doc) and all(
        isinstance(v, dict) for v in doc.values())
