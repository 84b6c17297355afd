"""prepare(): ids, leave-one-out splits, popularity, training-only co-occurrence, load_prepared, the stage."""
from __future__ import annotations

import itertools
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from reaemb_ray.config import ConfigError, load_config
from reaemb_ray.data.prepare import cooccurrence, cooccurrence_blocks, load_prepared, prepare
from reaemb_ray.stages.base import cfg_with, check
from reaemb_ray.stages.run import catalogue, run_stage
from reaemb_ray.storage import store_for

BEAUTY = Path(__file__).resolve().parents[3] / "shared" / "data" / "amazon-beauty"


def ref_cooc(seqs: list[list[int]], window: int = 0) -> Counter:
    """Every pair of positions i < j (j - i <= window when window > 0) holding different items, both ways."""
    c = Counter()
    for s in seqs:
        for i, j in itertools.combinations(range(len(s)), 2):
            if s[i] != s[j] and (window == 0 or j - i <= window):
                c[s[i], s[j]] += 1
                c[s[j], s[i]] += 1
    return c


def as_counter(a, b, n) -> Counter:
    return Counter({(int(x), int(y)): int(k) for x, y, k in zip(a, b, n)})


def test_cooccurrence_hand_computed():
    a, b, n = cooccurrence(np.array([1, 2, 1, 3, 2]), np.array([1, 1, 1, 2, 2]), num_items=3)
    # user 1: [1, 2, 1] -> pairs (1,2) twice; user 2: [3, 2] -> (3,2) once
    assert as_counter(a, b, n) == {(1, 2): 2, (2, 1): 2, (2, 3): 1, (3, 2): 1}
    assert list(zip(a, b)) == sorted(zip(a, b))


@pytest.mark.parametrize("window", [0, 1, 3])
def test_cooccurrence_matches_reference_on_random_sequences(window):
    rng = np.random.default_rng(0)
    seqs = [list(rng.integers(1, 12, size=rng.integers(1, 15))) for _ in range(40)]
    users = np.repeat(np.arange(1, 41), [len(s) for s in seqs])
    got = as_counter(*cooccurrence(np.concatenate(seqs), users, 11, window))
    assert got == ref_cooc(seqs, window)


def test_cooccurrence_blocks_cover_disjoint_item_ranges_in_order():
    rng = np.random.default_rng(1)
    seqs = [list(rng.integers(1, 30, size=rng.integers(1, 12))) for _ in range(60)]
    users = np.repeat(np.arange(1, 61), [len(s) for s in seqs])
    blocks = list(cooccurrence_blocks(np.concatenate(seqs), users, 29, max_pairs=40))
    assert len(blocks) > 5  # the small budget really splits the work
    assert as_counter(*(np.concatenate(p) for p in zip(*blocks))) == ref_cooc(seqs)
    last = 0
    for a, b, n in blocks:
        assert a.min() > last and list(zip(a, b)) == sorted(zip(a, b))  # later blocks hold later items only
        last = a.max()


def _cfg(folder, out, reader="movielens", **extra):
    over = [f"data.reader={reader}", f"data.path={folder}", f"output_dir={out}", "data.name=toy", "data.item_noun=thing"]
    return load_config(None, over + [f"data.{k}={v}" for k, v in extra.items()])


def test_prepare_tables_on_fixture(dataset, tmp_path):
    cfg = _cfg(dataset("movielens"), tmp_path / "out")
    out = prepare(cfg)
    items = pq.read_table(out / "items.parquet").to_pylist()
    # user 7 (first in the file) is user 1; items by first appearance: 2, 3, 1 -> 1, 2, 3
    assert [r["raw_id"] for r in items] == ["2", "3", "1"] and [r["item_id"] for r in items] == [1, 2, 3]
    assert items[2]["text"] == "title is Toy Story; year is 1995; genres is Animation, Comedy"
    assert items[2]["attr_keys"] == ["title", "year", "genres"]
    inter = pq.read_table(out / "interactions.parquet").to_pydict()
    assert inter["user_id"] == [1, 1, 1, 2, 2, 2] and inter["item_id"] == [1, 2, 3, 2, 3, 1]
    assert inter["position"] == [0, 1, 2, 0, 1, 2] and inter["timestamp"] == [100, 100, 300, 50, 60, 70]
    assert inter["rating"] == [3.0, 5.0, 4.0, 2.0, 1.0, 1.0]  # u.data's ratings, in sequence order
    splits = pq.read_table(out / "splits.parquet").to_pydict()
    assert splits == {"user_id": [1, 2], "train": [[1], [2]], "valid": [2, 3], "test": [3, 1]}
    assert pq.read_table(out / "popularity.parquet").to_pydict() == {"item_id": [1, 2, 3], "count": [1, 1, 0]}
    # one training item per user: nothing co-occurs in training
    assert pq.read_table(out / "cooccurrence.parquet").num_rows == 0
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["users"], summary["items"], summary["interactions"]) == (2, 3, 6)


def test_short_users_and_unused_items_are_counted(dataset, tmp_path):
    # user 9 has 2 interactions (dropped); item 4 has metadata but no interactions once user 9 is gone
    from raw_fixture_files import uitem

    folder = dataset("movielens", {"u.item": uitem(4, "Solo (1999)", ["Drama"]), "u.data": "9\t4\t1\t1\n9\t1\t1\t2"})
    out = prepare(_cfg(folder, tmp_path / "o"))
    s = json.loads((out / "summary.json").read_text())
    assert s["dropped"]["users_with_fewer_than_3_interactions"] == 1
    assert s["dropped"]["items_without_interactions"] == 1 and s["items"] == 3


def test_skipped_rows_reach_the_summary(dataset, tmp_path):
    folder = dataset("movielens", {"u.data": "7\t99\t3\t400"})
    with pytest.raises(ValueError, match="u.data:7"):
        prepare(_cfg(folder, tmp_path / "e"))
    out = prepare(_cfg(folder, tmp_path / "s", on_bad_row="skip"))
    assert json.loads((out / "summary.json").read_text())["skipped_rows"] == {"item_without_metadata": 1}


def test_cooc_window_validated():
    with pytest.raises(ConfigError, match="cooc_window"):
        load_config(None, ["data.cooc_window=-1"])


@pytest.fixture(scope="module")
def beauty(tmp_path_factory):
    if not BEAUTY.is_dir():
        pytest.skip(f"real data not at {BEAUTY}")
    out = tmp_path_factory.mktemp("beauty")
    cfg = load_config(None, ["data.reader=p5_amazon", f"data.path={BEAUTY}", "data.name=beauty",
                             "data.item_noun=beauty", f"output_dir={out}"])
    run_stage(cfg, "prepare")
    return cfg, load_prepared(out)


def test_beauty_counts_and_p5_ids(beauty):
    cfg, p = beauty
    assert (p.num_users, p.num_items, p.interactions.num_rows) == (22363, 12101, 198502)
    # ids by first appearance reproduce the P5 numbering: compare with sequential_data.txt directly
    first = [list(map(int, line.split()[1:])) for line in (BEAUTY / "sequential_data.txt").read_text().splitlines()[:50]]
    for u, seq in enumerate(first):
        assert list(p.train_sequences[u]) + [p.valid[u], p.test[u]] == seq
    assert p.texts[1].startswith("title is OPI Nail Lacquer") and "brand is OPI" in p.texts[1]


def test_beauty_cooccurrence_equals_training_only_reference(beauty):
    cfg, p = beauty
    train = [s.tolist() for s in p.train_sequences]
    # the reference enumerates position pairs; restricted to rows a <= 400 to keep the test fast
    rows = set(range(1, 401))
    ref = Counter({k: v for k, v in ref_cooc([s for s in train if rows & set(s)]).items() if k[0] in rows})
    m = p.cooc_matrix()[:401].tocoo()
    assert as_counter(m.row, m.col, m.data) == ref and len(ref) > 10000
    assert p.cooc_matrix().nnz == p.summary["cooccurrence"]["pairs"] and (p.cooc_matrix() != p.cooc_matrix().T).nnz == 0
    # the same reference over whole sequences differs, so the equality above does exclude valid/test items
    whole = [t + [int(v), int(te)] for t, v, te in zip(train, p.valid, p.test)]
    assert ref_cooc(whole[:200]) != ref_cooc(train[:200])
    assert p.popularity.sum() == sum(len(s) for s in train) == 198502 - 2 * 22363
    ids, counts = p.cooc_counts(1)
    assert (np.diff(counts) <= 0).all() and 1 not in ids.tolist() and len(ids) > 0


def test_held_out_items_never_enter_cooccurrence(tmp_path):
    from raw_fixture_files import write_dataset

    inter = "user_id:token\titem_id:token\ttimestamp:float\n" + "".join(
        f"{u}\t{i}\t{t}\n" for u, seq in (("a", "pqrs"), ("b", "pqxy")) for t, i in enumerate(seq))
    item = "item_id:token\tname:token\n" + "".join(f"{i}\t{i}-name\n" for i in "pqrsxy")
    folder = write_dataset(tmp_path / "toy", {"toy.inter": inter, "toy.item": item})
    p = load_prepared(prepare(_cfg(folder, tmp_path / "out", reader="recbole_atomic")))
    # ids: p q r s x y -> 1..6; train = [p, q] for both users; r s x y are valid/test only
    assert as_counter(p.cooc_indices, np.repeat(np.arange(7), np.diff(p.cooc_indptr)), p.cooc_data) == {
        (2, 1): 2, (1, 2): 2}
    for held in (3, 4, 5, 6):
        assert len(p.cooc_counts(held)[0]) == 0 and p.popularity[held] == 0


def test_stage_skips_when_up_to_date_and_rebuilds_on_change(beauty, capsys):
    cfg, p = beauty
    record = p.path / "_record.json"
    before = record.stat().st_mtime_ns
    assert run_stage(cfg, "prepare") == "skipped"
    assert "up to date" in capsys.readouterr().out and record.stat().st_mtime_ns == before
    assert json.loads(record.read_text())["inputs"]["data"]  # the raw files' sizes and times are recorded
    changed = cfg_with(cfg, **{"data.max_value_chars": 20})  # a data change invalidates
    status = check(catalogue(changed)["prepare"], store_for(changed))
    assert status.state == "stale" and status.reasons == ["data.max_value_chars: (default) -> 20"]


@pytest.mark.parametrize("seed", range(4))
def test_id_scans_in_blocks_match_whole_array_references(seed, monkeypatch):
    from reaemb_ray.data import prepare as prep

    monkeypatch.setattr(prep, "SCAN_ROWS", 7)  # many blocks, groups longer than a block
    rng = np.random.default_rng(seed)
    for _ in range(50):
        codes = rng.integers(0, 15, int(rng.integers(0, 60)))
        assert np.array_equal(prep.first_appearances(codes, 15),
                              codes[np.sort(np.unique(codes, return_index=True)[1])])
        offsets = np.concatenate([[0], np.cumsum(rng.integers(1, 12, int(rng.integers(1, 10))))])
        values = rng.integers(1, 9, offsets[-1])
        assert prep.max_distinct_per_group(values, offsets) == max(
            len(set(values[a:b].tolist())) for a, b in zip(offsets[:-1], offsets[1:]))
