"""Small hand-written raw datasets, one per reader (imported by conftest and the reader tests)."""
from __future__ import annotations

import gzip
import json
from pathlib import Path


GENRES = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
          "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western"]


def uitem(i: int, title: str, genres: list[str]) -> str:
    flags = "|".join("1" if g in genres else "0" for g in GENRES)
    return f"{i}|{title}|01-Jan-1995||http://x|{flags}"


# reader -> {file name: text}; every dataset has users with >= 3 interactions
FIXTURES = {
    "p5_amazon": {
        "sequential_data.txt": "1 1 2 3\n2 2 3 4 1\n",
        "datamaps.json": json.dumps({"id2item": {"1": "A1", "2": "A2", "3": "A3", "4": "A4"},
                                     "id2user": {"1": "U1", "2": "U2"}}),
        "beauty_items_joined.tsv": "p5_item_id\tasin\ttitle\tattributes_brand_then_categories\n"
                                   "1\tA1\tNail red\tBrandX|Makeup|Nails\n2\tA2\tFace cream\tMakeup|Face\n"
                                   "3\tA3\tLotion\tBrandY|Skin Care\n4\tA4\t\tMakeup\n",
    },
    "movielens": {
        "u.item": "\n".join([uitem(1, "Toy Story (1995)", ["Animation", "Comedy"]), uitem(2, "Heat (1995)", ["Action"]),
                             uitem(3, "Fargo (1996)", ["Crime", "Drama"])]) + "\n",
        # user 7: times 300, 100, 100 -> order 2 (t=100, first in file), 3 (t=100), 1 (t=300)
        "u.data": "7\t1\t4\t300\n7\t2\t3\t100\n7\t3\t5\t100\n8\t3\t2\t50\n8\t1\t1\t60\n8\t2\t1\t70\n",
    },
    "movielens_1m": {
        "movies.dat": "1::Toy Story (1995)::Animation|Comedy\n2::Heat (1995)::Action\n3::Fargo (1996)::Crime|Drama\n",
        "ratings.dat": "1::3::5::30\n1::1::5::10\n1::2::5::20\n2::1::4::5\n2::2::4::6\n2::3::4::7\n",
    },
    "amazon_json": {  # 2014 style: metadata as python dict literals, reviews as JSON
        "meta_Beauty.json": "{'asin': 'A1', 'title': 'Red polish', 'brand': 'OPI', 'price': 5.5, "
                            "'categories': [['Beauty', 'Makeup', 'Nails'], ['Beauty', 'Gifts']]}\n"
                            "{'asin': 'A2', 'title': 'Cream', 'categories': [['Beauty', 'Skin Care']]}\n"
                            "{'asin': 'A3', 'title': 'Brush', 'description': 'A soft; round brush'}\n",
        "reviews_Beauty_5.json": '{"reviewerID": "U1", "asin": "A3", "unixReviewTime": 3}\n'
                                 '{"reviewerID": "U1", "asin": "A1", "unixReviewTime": 1}\n'
                                 '{"reviewerID": "U1", "asin": "A2", "unixReviewTime": 2}\n',
    },
    "yelp": {
        "business.json": '{"business_id": "b1", "name": "Cafe", "categories": "Food, Coffee", "city": "Reno", "state": "NV"}\n'
                         '{"business_id": "b2", "name": "Gym", "categories": null, "city": "Reno", "state": "NV"}\n'
                         '{"business_id": "b3", "name": "Bar", "categories": "Nightlife", "city": "Tempe", "state": "AZ"}\n',
        "review.json": '{"user_id": "u1", "business_id": "b2", "date": "2020-01-02 00:00:00"}\n'
                       '{"user_id": "u1", "business_id": "b1", "date": "2019-05-01 10:00:00"}\n'
                       '{"user_id": "u1", "business_id": "b3", "date": "2021-01-01 00:00:00"}\n',
    },
    "recbole_atomic": {
        "toy.inter": "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
                     "u1\ti1\t5\t10\nu1\ti2\t5\t5\nu1\ti3\t5\t20\n",
        "toy.item": "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
                    "i1\tToy Story\t1995\tAnimation Comedy\ni2\tHeat\t1995\tAction\ni3\tFargo\t1996\tCrime Drama\n",
    },
    # Yelp in P5 form: P5 ids -> business ids, item text from the Yelp business JSON
    "p5": {
        "sequential_data.txt": "1 1 2 3\n2 3 1 2\n",
        "datamaps.json": json.dumps({"id2item": {"1": "bizA", "2": "bizB", "3": "bizC", "4": "bizD"},
                                     "id2user": {"1": "alice", "2": "bob"}}),
        "yelp_business.json": '{"business_id": "bizA", "name": "Cafe", "categories": "Food, Coffee & Tea", '
                              '"city": "Reno", "state": "NV"}\n'
                              '{"business_id": "bizB", "name": "Gym", "categories": null, "city": "Reno"}\n'
                              '{"business_id": "bizC", "name": "Bar", "categories": "Nightlife"}\n'
                              '{"business_id": "bizZ", "name": "", "categories": null}\n',  # unused: ignored
    },
}

# LC-Rec/LETTER: user index -> item indices (oldest first), item index -> record; original ids in .item2id
LCREC = {
    "Instruments.inter.json": json.dumps({"0": [0, 1, 2], "1": [2, 0, 1, 2]}),
    "Instruments.item.json": json.dumps({
        "0": {"title": "Guitar strings", "description": "Bright tone.", "brand": "Ernie",
              "categories": "Musical Instruments,Instrument Accessories,Guitar & Bass Accessories"},
        "1": {"title": "Capo", "description": "", "brand": "Kyser", "categories": "Musical Instruments"},
        "2": {"title": "Tuner", "brand": "Snark", "categories": "Clothing, Shoes & Jewelry,Tuners"}}),
    "Instruments.item2id": "B001\t0\nB002\t1\nB003\t2\n",
}

# reader -> (metadata file, interactions file, a valid interaction line with an unknown item,
#            a metadata line repeating an existing id, a metadata line whose item has no text, a malformed line)
BAD_LINES = {
    "p5_amazon": ("beauty_items_joined.tsv", "sequential_data.txt", "3 1 9", "2\tA2\tAgain\tMakeup", "5\tA5\t\t",
                  "4 x y"),
    "movielens": ("u.item", "u.data", "7\t99\t3\t400", uitem(2, "Heat again (1995)", []),
                  "4|||||" + "|".join(["0"] * 19), "7\t1\tnot-a-time"),
    "movielens_1m": ("movies.dat", "ratings.dat", "1::99::5::40", "2::Heat again::Action", "4::::", "1::2"),
    "amazon_json": ("meta_Beauty.json", "reviews_Beauty_5.json",
                    '{"reviewerID": "U1", "asin": "ZZ", "unixReviewTime": 9}', "{'asin': 'A2', 'title': 'Dup'}",
                    "{'asin': 'A9', 'title': '', 'categories': []}", '{"reviewerID": "U1", "asin"'),
    "yelp": ("business.json", "review.json", '{"user_id": "u1", "business_id": "zz", "date": "2022-01-01 00:00:00"}',
             '{"business_id": "b1", "name": "Dup"}', '{"business_id": "b9", "name": "", "categories": null}',
             '{"user_id": "u1", "business_id": "b1", "date": "yesterday"}'),
    "recbole_atomic": ("toy.item", "toy.inter", "u1\tzz\t5\t30", "i1\tDup\t1990\tDrama", "i9\t\t\t",
                       "u1\ti1\t5"),
    "p5": ("yelp_business.json", "sequential_data.txt", "3 1 9", '{"business_id": "bizA", "name": "Dup"}',
           '{"business_id": "bizD", "name": ""}', "4 x y"),
}


def write_dataset(folder: Path, files: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        if name.endswith(".gz"):
            with gzip.open(folder / name, "wt", encoding="utf-8") as f:
                f.write(text)
        else:
            (folder / name).write_text(text, encoding="utf-8")
    return folder
