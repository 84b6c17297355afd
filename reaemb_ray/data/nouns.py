"""The item noun of a dataset ("The {noun} item has the following attributes"), from its reader or its name.

Used only when `data.item_noun` is empty; a dataset whose name says nothing about its items gets no noun (the
config then asks for one) rather than a silent default.
"""
from __future__ import annotations

import re

READER_NOUNS = {"movielens": "movie", "movielens_1m": "movie", "yelp": "business"}

# Amazon review categories (2014, 2018 and 2023 dumps) and the short names LC-Rec/LETTER give some of them
AMAZON_CATEGORIES = {
    "all beauty", "amazon fashion", "amazon instant video", "appliances", "apps for android",
    "arts crafts and sewing", "automotive", "baby", "baby products", "beauty", "beauty and personal care",
    "books", "cds and vinyl", "cell phones and accessories", "clothing shoes and jewelry", "digital music",
    "electronics", "gift cards", "grocery and gourmet food", "handmade products", "health and household",
    "health and personal care", "home and kitchen", "industrial and scientific", "kindle store",
    "luxury beauty", "magazine subscriptions", "movies and tv", "musical instruments", "office products",
    "patio lawn and garden", "pet supplies", "prime pantry", "software", "sports and outdoors",
    "subscription boxes", "tools and home improvement", "toys and games", "video games",
    "instruments", "arts", "games", "scientific", "office", "toys", "sports", "clothing", "home",
}


def item_noun(reader: str, name: str) -> str | None:
    """`movielens` -> movie, `yelp` -> business, data.name `Beauty` / `Sports_and_Outdoors_5` -> beauty /
    sports and outdoors; None when neither the reader nor the name tells."""
    if reader in READER_NOUNS:
        return READER_NOUNS[reader]
    words = " ".join(re.sub(r"[_\-\s]+", " ", name.lower()).split())
    words = re.sub(r"^(reviews |meta )", "", words)
    words = re.sub(r" (5|5 core|5core)$", "", words)
    if re.fullmatch(r"ml \d+[km]|movielens.*", words):
        return "movie"
    if words.startswith("yelp"):
        return "business"
    if words in AMAZON_CATEGORIES:
        return words
    return None
