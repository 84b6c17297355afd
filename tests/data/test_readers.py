"""Every reader on small hand-written files, and every kind of bad input under both policies."""
from __future__ import annotations

import gzip
import json
import typing

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from raw_fixture_files import BAD_LINES, FIXTURES, GENRES, LCREC, write_dataset

from reaemb_ray.config import DataConfig
from reaemb_ray.data.raw import kcore
from reaemb_ray.data.readers import READERS, read_folder

ALL = sorted(FIXTURES)
LINE_READERS = sorted(BAD_LINES)  # readers whose files take appended bad lines


def test_registry_has_every_configured_reader():
    assert set(READERS) == set(typing.get_args(typing.get_type_hints(DataConfig)["reader"]))
    with pytest.raises(ValueError, match="known readers"):
        read_folder("nope", ".")


def test_p5_amazon_ids_and_no_brand_below_five_items(dataset):
    raw = read_folder("p5_amazon", dataset("p5_amazon"))
    assert raw.items == {  # BrandX and BrandY head one row each: the join lists brands of >= 5 items only
        "A1": [("title", "Nail red"), ("categories", "BrandX, Makeup, Nails")],
        "A2": [("title", "Face cream"), ("categories", "Makeup, Face")],
        "A3": [("title", "Lotion"), ("categories", "BrandY, Skin Care")],
        "A4": [("categories", "Makeup")],
    }
    assert raw.sequences == {"U1": ["A1", "A2", "A3"], "U2": ["A2", "A3", "A4", "A1"]}
    assert raw.timestamps == {}


def _joined(rows: list[str], header: str = "attributes_brand_then_categories") -> dict:
    ids = {str(i): f"A{i}" for i in range(1, len(rows) + 1)}
    return {"sequential_data.txt": "1 1 2 3\n",
            "datamaps.json": json.dumps({"id2item": ids}),
            "x_items_joined.tsv": f"p5_item_id\tasin\ttitle\t{header}\n"
                                  + "".join(f"{i}\tA{i}\tt{i}\t{r}\n" for i, r in enumerate(rows, 1))}


def test_p5_brand_guess(tmp_path):
    rows = ["Acme|Makeup|Nails"] * 5 + ["Makeup|Face", "Rare Category|Food"]
    raw = read_folder("p5", write_dataset(tmp_path / "b", _joined(rows)))
    assert raw.items["A1"] == [("title", "t1"), ("brand", "Acme"), ("categories", "Makeup, Nails")]
    assert raw.items["A6"] == [("title", "t6"), ("categories", "Makeup, Face")]  # appears later: a category
    assert raw.items["A7"] == [("title", "t7"), ("categories", "Rare Category, Food")]  # heads 1 row: not a brand
    # a column that does not say it starts with a brand (Yelp categories) never yields brands
    raw = read_folder("p5", write_dataset(tmp_path / "y", _joined(rows, "categories")))
    assert raw.items["A1"] == [("title", "t1"), ("categories", "Acme, Makeup, Nails")]


def test_p5_any_domain_with_item_metadata_json(dataset):
    raw = read_folder("p5", dataset("p5"))
    assert raw.sequences == {"alice": ["bizA", "bizB", "bizC"], "bob": ["bizC", "bizA", "bizB"]}
    assert raw.items == {
        "bizA": [("name", "Cafe"), ("categories", "Food, Coffee & Tea"), ("city", "Reno"), ("state", "NV")],
        "bizB": [("name", "Gym"), ("city", "Reno")], "bizC": [("name", "Bar"), ("categories", "Nightlife")]}
    assert [f.rsplit("/", 1)[1] for f in raw.files] == ["sequential_data.txt", "datamaps.json", "yelp_business.json"]


def test_p5_with_amazon_meta_json_gz_python_literals(tmp_path):
    meta = ("{'asin': 'B1', 'title': 'Red polish', 'brand': 'OPI', 'categories': [['Beauty', 'Nails']]}\n"
            "{'asin': 'B2', 'title': 'Cream', 'price': 4.0}\n{'asin': 'B9', 'title': 'not in this subset'}\n")
    folder = write_dataset(tmp_path / "p5b", {"sequential_data.txt": "1 1 2 1\n", "meta.json.gz": meta,
                                              "datamaps.json": json.dumps({"id2item": {"1": "B1", "2": "B2"}})})
    raw = read_folder("p5", folder)
    assert raw.sequences == {"1": ["B1", "B2", "B1"]}
    assert raw.items == {"B1": [("title", "Red polish"), ("brand", "OPI"), ("categories", "Beauty, Nails")],
                         "B2": [("title", "Cream"), ("price", "$4.00")]}


def test_p5_several_metadata_files_are_named(dataset):
    folder = dataset("p5")
    (folder / "other_business.json").write_text('{"business_id": "x", "name": "y"}\n')
    with pytest.raises(FileNotFoundError, match=r"other_business.json.*yelp_business.json.*data.item_file"):
        read_folder("p5", folder)
    assert read_folder("p5", folder, item_file="yelp_business.json").num_interactions == 6


def test_lcrec_inter_and_item_json(tmp_path):
    raw = read_folder("lcrec", write_dataset(tmp_path / "lc", LCREC), name="Instruments")
    assert raw.sequences == {"0": ["B001", "B002", "B003"], "1": ["B003", "B001", "B002", "B003"]}
    assert raw.items["B001"] == [("title", "Guitar strings"), ("brand", "Ernie"), ("categories",
                                 "Musical Instruments, Instrument Accessories, Guitar & Bass Accessories"),
                                ("description", "Bright tone.")]
    # "Clothing, Shoes & Jewelry" is one category: LC-Rec joins with "," and no space
    assert raw.items["B003"][2] == ("categories", "Clothing, Shoes & Jewelry, Tuners")
    without_map = {k: v for k, v in LCREC.items() if not k.endswith("item2id")}
    raw = read_folder("lcrec", write_dataset(tmp_path / "lc2", without_map), name="Instruments")
    assert raw.sequences["0"] == ["0", "1", "2"]


def test_movielens_sorts_by_time_stably_and_splits_title_year(dataset):
    raw = read_folder("movielens", dataset("movielens"))
    assert raw.sequences["7"] == ["2", "3", "1"] and raw.timestamps["7"] == [100, 100, 300]
    assert raw.sequences["8"] == ["3", "1", "2"]
    assert raw.ratings == {"7": [3.0, 5.0, 4.0], "8": [2.0, 1.0, 1.0]}  # follow the time order
    assert raw.items["1"] == [("title", "Toy Story"), ("year", "1995"), ("genres", "Animation, Comedy")]


def test_movielens_parquet_is_preferred_and_agrees(dataset, tmp_path):
    folder = dataset("movielens")
    rows = [{"movie_id": 1, "movie_title": "Toy Story (1995)", "release_date": "01-Jan-1995",
             **{g: int(g in ("Animation", "Comedy")) for g in GENRES}},
            {"movie_id": 2, "movie_title": "Héat (1995)", "release_date": "", **{g: int(g == "Action") for g in GENRES}},
            {"movie_id": 3, "movie_title": "Fargo (1996)", "release_date": "", **{g: int(g in ("Crime", "Drama")) for g in GENRES}}]
    pq.write_table(pa.Table.from_pylist(rows), folder / "MovieLens100k_items.parquet.brotli")
    data = [tuple(map(int, line.split("\t"))) for line in FIXTURES["movielens"]["u.data"].split("\n") if line]
    pq.write_table(pa.table({"user_id": [d[0] for d in data], "movie_id": [d[1] for d in data],
                             "rating": [d[2] for d in data], "timestamp": [d[3] for d in data]}),
                   folder / "MovieLens100k_data.parquet.brotli")
    from_parquet = read_folder("movielens", folder)
    assert from_parquet.items["2"][0] == ("title", "Héat")  # the parquet copy keeps non-ASCII titles
    assert from_parquet.sequences == read_folder("movielens", dataset("movielens")).sequences
    assert from_parquet.ratings == read_folder("movielens", dataset("movielens")).ratings


def test_movielens_1m_dat(dataset):
    raw = read_folder("movielens_1m", dataset("movielens_1m"))
    assert raw.sequences == {"1": ["1", "2", "3"], "2": ["1", "2", "3"]}
    assert raw.ratings == {"1": [5.0, 5.0, 5.0], "2": [4.0, 4.0, 4.0]}
    assert raw.items["3"] == [("title", "Fargo"), ("year", "1996"), ("genres", "Crime, Drama")]


def test_amazon_json_2014_literals(dataset):
    raw = read_folder("amazon_json", dataset("amazon_json"))
    assert raw.sequences == {"U1": ["A1", "A2", "A3"]}
    assert raw.items["A1"] == [("title", "Red polish"), ("brand", "OPI"),
                               ("categories", "Beauty, Makeup, Nails, Gifts"), ("price", "$5.50")]
    assert raw.items["A3"] == [("title", "Brush"), ("description", "A soft; round brush")]


def test_amazon_json_2023_gz_parent_asin_and_ms(tmp_path):
    meta = "".join(json.dumps(m) + "\n" for m in [
        {"parent_asin": "P1", "title": "Serum", "store": "Acme", "categories": [], "price": None,
         "description": ["Light", "serum"]},
        {"parent_asin": "P2", "title": "Mask", "details": {"Brand": "Zed"}, "price": 9.0}])
    reviews = "".join(json.dumps(r) + "\n" for r in [
        {"user_id": "u", "asin": "x1", "parent_asin": "P2", "timestamp": 2000},
        {"user_id": "u", "asin": "x2", "parent_asin": "P1", "timestamp": 1000}])
    folder = write_dataset(tmp_path / "a23", {"meta_All_Beauty.jsonl.gz": meta, "All_Beauty.jsonl.gz": reviews})
    raw = read_folder("amazon_json", folder)
    assert raw.sequences == {"u": ["P1", "P2"]} and raw.timestamps == {"u": [1, 2]}
    assert raw.items["P1"] == [("title", "Serum"), ("brand", "Acme"), ("description", "Light, serum")]
    assert raw.items["P2"] == [("title", "Mask"), ("brand", "Zed"), ("price", "$9.00")]


def test_amazon_json_2018_category_and_price_text(tmp_path):
    meta = json.dumps({"asin": "B1", "title": "Gel", "brand": "Q", "category": ["Beauty", "Hair"], "price": "$3.99"})
    rev = "".join(json.dumps({"reviewerID": "r", "asin": "B1", "unixReviewTime": t}) + "\n" for t in (1, 2, 3))
    raw = read_folder("amazon_json", write_dataset(tmp_path / "a18", {"meta_Beauty.json": meta + "\n",
                                                                      "Beauty_5.json": rev}))
    assert raw.items["B1"] == [("title", "Gel"), ("brand", "Q"), ("categories", "Beauty, Hair"), ("price", "$3.99")]
    assert raw.sequences == {"r": ["B1", "B1", "B1"]}


def test_amazon_json_ambiguous_files_are_named(dataset):
    folder = dataset("amazon_json")
    (folder / "other_reviews.json").write_text("")
    with pytest.raises(FileNotFoundError, match="other_reviews.json"):
        read_folder("amazon_json", folder)


def test_yelp(dataset):
    raw = read_folder("yelp", dataset("yelp"))
    assert raw.sequences == {"u1": ["b1", "b2", "b3"]}
    assert raw.items["b1"] == [("name", "Cafe"), ("categories", "Food, Coffee"), ("city", "Reno"), ("state", "NV")]
    assert raw.timestamps["u1"][0] == 1556704800  # 2019-05-01 10:00:00 UTC


def test_recbole_atomic_generic_keys(dataset):
    raw = read_folder("recbole_atomic", dataset("recbole_atomic"), name="toy")
    assert raw.sequences == {"u1": ["i2", "i1", "i3"]} and raw.ratings == {"u1": [5.0, 5.0, 5.0]}
    assert raw.items["i1"] == [("movie title", "Toy Story"), ("release year", "1995"), ("class", "Animation, Comedy")]


def test_recbole_token_is_one_value_token_seq_a_sequence(tmp_path):
    files = {"az.inter": "user_id:token\titem_id:token\ttimestamp:float\n" + "".join(
                 f"u\t{i}\t{t}\n" for t, i in enumerate(["a", "b", "a"])),
             "az.item": "item_id:token\ttitle:token_seq\tcategories:token\tgenre:token_seq\n"
                        "a\tMicro  Scope\tIndustrial & Scientific\tLab Tools\n"
                        "b\tGloves\tIndustrial & Scientific\tSafety\n"}
    raw = read_folder("recbole_atomic", write_dataset(tmp_path / "az", files), name="az")
    assert raw.items["a"] == [("title", "Micro Scope"), ("categories", "Industrial & Scientific"),
                              ("genre", "Lab, Tools")]


def test_movielens_reads_recbole_copy_with_movielens_keys(tmp_path):
    files = {k.replace("toy", "ml-100k"): v for k, v in FIXTURES["recbole_atomic"].items()}
    raw = read_folder("movielens", write_dataset(tmp_path / "rb", files), name="ml-100k")
    assert raw.items["i3"] == [("title", "Fargo"), ("year", "1996"), ("genres", "Crime, Drama")]


@pytest.mark.parametrize("reader", LINE_READERS)
def test_missing_file_names_the_file(reader, dataset):
    folder = dataset(reader)
    meta_file, inter_file, *_ = BAD_LINES[reader]
    for name in (meta_file, inter_file):
        (folder / name).rename(folder / (name + ".moved"))
        with pytest.raises(FileNotFoundError, match="data.path"):
            read_folder(reader, folder)
        (folder / (name + ".moved")).rename(folder / name)
    assert read_folder(reader, folder).num_interactions > 0


CASES = ["item_without_metadata", "duplicate_item", "item_without_text", "malformed_line"]


@pytest.mark.parametrize("reader", LINE_READERS)
@pytest.mark.parametrize("case", CASES)
def test_bad_rows_error_names_file_line_and_fix_or_are_counted(reader, case, dataset):
    meta_file, inter_file, unknown, dup, textless, malformed = BAD_LINES[reader]
    target, line = {"item_without_metadata": (inter_file, unknown), "duplicate_item": (meta_file, dup),
                    "item_without_text": (meta_file, textless), "malformed_line": (inter_file, malformed)}[case]
    lineno = FIXTURES[reader][target].count("\n") + 1
    folder = dataset(reader, {target: line})
    with pytest.raises(ValueError) as e:
        read_folder(reader, folder, "error", name="toy")
    msg = str(e.value)
    assert f"{target}:{lineno}" in msg and case in msg and "Fix:" in msg and "on_bad_row=skip" in msg

    clean = read_folder(reader, dataset(reader), "skip", name="toy")
    raw = read_folder(reader, folder, "skip", name="toy")
    assert raw.skipped == {case: 1}
    assert raw.items == clean.items  # the first copy wins for duplicates; bad items never enter
    # only p5's appended line brings a new user with one good item besides the unknown one
    extra = 1 if reader.startswith("p5") and case == "item_without_metadata" else 0
    assert raw.num_interactions == clean.num_interactions + extra


def test_p5_duplicate_user_line(dataset):
    folder = dataset("p5_amazon", {"sequential_data.txt": "1 4 4 4"})
    with pytest.raises(ValueError, match=r"sequential_data.txt:3.*duplicate_user"):
        read_folder("p5_amazon", folder)
    raw = read_folder("p5_amazon", folder, "skip")
    assert raw.skipped == {"duplicate_user": 1} and raw.sequences["U1"] == ["A1", "A2", "A3"]


def test_gzip_input(tmp_path):
    files = {k + ".gz": v for k, v in FIXTURES["amazon_json"].items()}
    raw = read_folder("amazon_json", write_dataset(tmp_path / "gz", files))
    assert raw.sequences == {"U1": ["A1", "A2", "A3"]}
    with gzip.open(tmp_path / "gz" / "meta_Beauty.json.gz", "rt") as f:
        assert f.readline().startswith("{'asin'")


def test_kcore_reference():
    from reaemb_ray.data.raw import ItemCatalogue, RawDataset

    seqs = {"u1": ["a", "b", "c"], "u2": ["a", "b"], "u3": ["a", "d"], "u4": ["c"]}
    items = ItemCatalogue((i, [("title", i)]) for i in "abcd")
    raw = RawDataset.from_sequences(items, seqs, timestamps={"u1": [1, 2, 3], "u2": [1, 2], "u3": [1, 2], "u4": [5]},
                                    ratings={"u1": [5, 4, 3], "u2": [2, 1], "u3": [1, 1], "u4": [5]})
    out, stats = kcore(raw, 2)
    # d (1 interaction) and u4 go; then c has 1 -> goes; u3 = [a] -> goes; a now 2, b 2; u1 [a, b], u2 [a, b]
    assert out.sequences == {"u1": ["a", "b"], "u2": ["a", "b"]}
    assert out.timestamps == {"u1": [1, 2], "u2": [1, 2]}
    assert out.ratings == {"u1": [5, 4], "u2": [2, 1]}
    assert stats == {"kcore_removed_users": 2, "kcore_removed_items": 2, "kcore_removed_interactions": 4}  # 8 -> 4
    assert kcore(raw, 0)[0] is raw


@pytest.mark.parametrize("compress", ["gzip", "bz2", "xz"])
def test_compression_is_recognised_by_content_not_name(dataset, compress):
    import bz2
    import lzma

    how = {"gzip": gzip.compress, "bz2": bz2.compress, "xz": lzma.compress}[compress]
    plain = read_folder("movielens", dataset("movielens"))
    folder = dataset("movielens")
    for name in ("u.data", "u.item"):  # compressed, still named u.data / u.item
        (folder / name).write_bytes(how((folder / name).read_bytes()))
    raw = read_folder("movielens", folder)
    assert raw.sequences == plain.sequences and raw.items == plain.items


def test_utf8_byte_order_mark_and_crlf_line_ends_are_read(dataset):
    plain = read_folder("yelp", dataset("yelp"))
    folder = dataset("yelp")
    for name in ("business.json", "review.json"):
        text = (folder / name).read_text()
        (folder / name).write_bytes(b"\xef\xbb\xbf" + text.replace("\n", "\r\n").encode())
    raw = read_folder("yelp", folder)
    assert raw.sequences == plain.sequences and raw.items == plain.items


def _reference_build(rows):
    """The builder as it was written with Python dicts: a set of seen (user, item, time), rows per user sorted
    by time (stable) when all of the user's times are known, times/ratings kept only when all are known."""
    seen, per_user, dups = set(), {}, []
    for ln, (u, i, t, r) in enumerate(rows, start=1):
        if t is not None:
            if (u, i, t) in seen:
                dups.append(ln)
                continue
            seen.add((u, i, t))
        per_user.setdefault(u, []).append((t, i, r))
    seqs, times, ratings = {}, {}, {}
    for u, rs in per_user.items():
        if all(t is not None for t, _, _ in rs):
            rs = sorted(rs, key=lambda x: x[0])
            times[u] = [t for t, _, _ in rs]
        seqs[u] = [i for _, i, _ in rs]
        if all(r is not None for _, _, r in rs):
            ratings[u] = [r for _, _, r in rs]
    return seqs, times, ratings, dups


@pytest.mark.parametrize("seed", range(6))
def test_sequence_builder_matches_the_dict_reference(seed):
    from reaemb_ray.data.raw import BadRows, ItemCatalogue, SequenceBuilder

    rng = np.random.default_rng(seed)
    items = ItemCatalogue((f"i{k}", [("title", f"t{k}")]) for k in range(8))
    rows = []
    for _ in range(300):  # few users, items and times: many repeats and ties; some users lack times or ratings
        u = f"u{rng.integers(12)}"
        t = None if u in ("u3", "u7") or (u == "u5" and rng.random() < 0.3) else int(rng.integers(5))
        r = None if u == "u4" or rng.random() < 0.05 else float(rng.integers(1, 6)) / 2
        rows.append((u, f"i{rng.integers(8)}", t, r))
    if seed % 2:  # an already sorted file takes the no-sort path
        rows.sort(key=lambda x: (x[0], -1 if x[2] is None else x[2]))
    bad = BadRows("skip", max_logged=0)
    b = SequenceBuilder(items, bad, "items.txt")
    for ln, (u, i, t, r) in enumerate(rows, start=1):
        b.add(u, i, t, f"inter.txt:{ln}", rating=r)
    raw = b.build("src", [])
    seqs, times, ratings, dups = _reference_build(rows)
    assert raw.sequences == seqs and list(raw.sequences) == list(seqs)  # users in file order
    assert raw.timestamps == times and raw.ratings == ratings
    assert raw.skipped == ({"duplicate_interaction": len(dups)} if dups else {})
    if dups:
        with pytest.raises(ValueError, match=rf"inter.txt:{dups[0]}: .*duplicate_interaction"):
            b2 = SequenceBuilder(items, BadRows("error"), "items.txt")
            for ln, (u, i, t, r) in enumerate(rows, start=1):
                b2.add(u, i, t, f"inter.txt:{ln}", rating=r)
            b2.build("src", [])


# ------------------------------------------------------------------ recbole_atomic: column reader vs line reader


def _both_atomic_readers(folder, policy="error"):
    """(column reader's dataset or its NotClean, line reader's dataset, the two BadRows)."""
    from reaemb_ray.data.raw import BadRows
    from reaemb_ray.data.recbole import NotClean, read_atomic_columns, read_atomic_lines

    paths = (folder / "t.inter", folder / "t.item")
    bad_c, bad_l = BadRows(policy, max_logged=0), BadRows(policy, max_logged=0)
    try:
        cols = read_atomic_columns(folder, bad_c, *paths, {})
    except NotClean as e:
        cols = e
    return cols, read_atomic_lines(folder, bad_l, *paths, {}), bad_c, bad_l


def _same_dataset(a, b):
    assert list(a.users) == list(b.users) and list(a.items) == list(b.items)
    assert [a.items.attributes_at(c) for c in range(len(a.items))] == [b.items.attributes_at(c) for c in
                                                                      range(len(b.items))]
    for k in ("user_code", "item_code", "timestamp", "has_timestamp", "rating", "has_rating"):
        x, y = getattr(a, k), getattr(b, k)
        assert x.dtype == y.dtype and np.array_equal(x, y), k
    assert a.skipped == b.skipped and a.files == b.files


def test_python_whitespace_list_is_what_str_split_splits_on():
    from reaemb_ray.data.recbole import PY_WHITESPACE

    assert PY_WHITESPACE == "".join(c for c in map(chr, range(0x110000)) if c.isspace())


@pytest.mark.parametrize("seed", range(8))
def test_atomic_column_reader_matches_the_line_reader(seed, tmp_path):
    """Random clean files with odd whitespace (Unicode too), labels, floats, unsorted times, repeated rows:
    the column reader gives the line reader's dataset, reporting the same repeated rows."""
    rng = np.random.default_rng(seed)
    words = ["Red", "blue", "x", "Ünï", "a\u3000b", "c\xa0", "\x1cd", "  e  ", "", "7", "-3", "1.50", "2e3", "ab\x85"]

    def text(n):
        return " ".join(rng.choice(words, int(rng.integers(0, n))).tolist()) or "z"

    ids = [f"i{k}" for k in range(int(rng.integers(3, 40)))] + ["x y", "é"]
    item_lines = ["item_id:token\ttitle:token_seq\tgenre:token_seq\tbrand:token\tprice:float\tv:float_seq"]
    item_lines += [f"{i}\t{text(4)}\t{text(3)}\t{text(2)}\t{rng.choice(['3', '2.50', '1e2', 'n/a', '', '-0.0'])}"
                   f"\t{text(3)}" for i in ids]
    rated = seed % 2 == 0
    inter_lines = ["user_id:token\titem_id:token\ttimestamp:float" + ("\trating:float" if rated else "")]
    for _ in range(int(rng.integers(1, 300))):
        row = [f"u{rng.integers(20)}", str(rng.choice(ids)), str(rng.choice(["1", "2", "3.7", "-1.5", "10", "0"]))]
        inter_lines.append("\t".join(row + ([str(rng.choice(["5", "4.5", "0.1"]))] if rated else [])))
    inter_lines.append(inter_lines[1])  # at least one repeated row
    end = "\r\n" if seed % 4 == 1 else "\n"  # RecBole's own files end lines in CRLF
    folder = write_dataset(tmp_path / "t", {"t.item": end.join(item_lines) + end,
                                            "t.inter": end.join(inter_lines) + end})
    cols, lines, bad_c, bad_l = _both_atomic_readers(folder, "skip")
    assert not isinstance(cols, Exception), "a clean file must take the column reader"
    _same_dataset(cols, lines)
    assert bad_l.counts["duplicate_interaction"] >= 1
    from reaemb_ray.data.raw import BadRows
    from reaemb_ray.data.recbole import read_atomic, read_atomic_lines

    errors = []  # under `error` the first repeated row stops both readers with the same line
    for read in (lambda: read_atomic(folder, BadRows("error"), "t"),
                 lambda: read_atomic_lines(folder, BadRows("error"), folder / "t.inter", folder / "t.item", {})):
        with pytest.raises(ValueError) as e:
            read()
        errors.append(str(e.value))
    assert errors[0] == errors[1] and "duplicate_interaction" in errors[0]


@pytest.mark.parametrize("change", ["blank line", "lone cr", "cr cr lf", "bom", "short row", "number with _", "nan time",
                                    "unknown item", "empty user", "negative user", "bad utf-8", "no last newline",
                                    "repeated item", "text-less item", "blank header line"])
def test_atomic_column_reader_gives_up_on_files_that_are_not_clean(change, tmp_path):
    item = "item_id:token\ttitle:token_seq\ni1\tA\ni2\tB\n"
    inter = "user_id:token\titem_id:token\ttimestamp:float\nu1\ti1\t1\nu1\ti2\t2\nu2\ti1\t3\n"
    edits = {"blank line": ("inter", inter.replace("u2", "\nu2")), "lone cr": ("inter", inter.replace("u2", "\ru2")),
             "cr cr lf": ("inter", inter.replace("\n", "\r\r\n")),
             "bom": ("item", "\ufeff" + item), "short row": ("inter", inter + "u3\ti1\n"),
             "number with _": ("inter", inter + "u3\ti1\t1_0\n"), "nan time": ("inter", inter + "u3\ti1\tnan\n"),
             "unknown item": ("inter", inter + "u3\ti9\t1\n"), "empty user": ("inter", inter + " \ti1\t1\n"),
             "negative user": ("inter", inter + "-4\ti1\t1\n"), "bad utf-8": ("inter", inter + "u\xff\ti1\t1\n"),
             "no last newline": ("inter", inter + "u3\ti1\t1"), "repeated item": ("item", item + "i1\tC\n"),
             "text-less item": ("item", item + "i3\t \n"), "blank header line": ("item", "\n" + item)}
    which, new = edits[change]
    files = {"t.item": new if which == "item" else item, "t.inter": new if which == "inter" else inter}
    folder = tmp_path / "t"
    folder.mkdir()
    for name, body in files.items():
        (folder / name).write_bytes(body.encode().replace("\xff".encode(), b"\xff"))  # a byte that is not UTF-8
    cols, lines, bad_c, bad_l = _both_atomic_readers(folder, "skip")
    assert isinstance(cols, Exception), f"{change}: the column reader must leave the file to the line reader"


def test_frozen_item_catalogue_reads_and_grows_like_the_built_one():
    from reaemb_ray.data.raw import ItemCatalogue

    built = ItemCatalogue([("a", [("title", "A")]), ("b", [("title", "B"), ("brand", "X")]), ("c", [])])
    frozen = ItemCatalogue(built.items()).freeze()
    assert frozen.frozen and dict(frozen) == dict(built) and len(frozen) == 3
    assert frozen.codes_of(pa.array(["c", "zz", "a"])).tolist() == [2, -1, 0]
    assert frozen.block(np.array([1, 0])) == (["b", "a"], [[("title", "B"), ("brand", "X")], [("title", "A")]])
    frozen.add("a", [("title", "A2")])  # thaws: codes stay
    assert not frozen.frozen and frozen.code("a") == 0 and frozen["a"] == [("title", "A2")]
