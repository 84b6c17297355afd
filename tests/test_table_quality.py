"""Table checks (reaemb_ray/table_quality.py) on tables whose answer is known."""
import numpy as np
import pytest

from reaemb_ray.table_quality import partner_ranks, table_quality, table_shift, top_partners


def test_top_partner_is_the_most_frequent_with_ties_to_the_smaller_id():
    a, b, c = [1, 1, 1, 2, 3, 3], [2, 3, 4, 1, 1, 4], [5, 7, 7, 5, 7, 1]
    assert top_partners(a, b, c) == {1: 3, 2: 1, 3: 1}


def test_partner_ranks_and_quality_on_a_clustered_table():
    rng = np.random.default_rng(0)
    # 40 items in pairs (1,2), (3,4), ...: each pair shares a direction; a big shared offset on top
    dirs = rng.normal(size=(20, 16))
    items = np.repeat(dirs, 2, axis=0) + 0.05 * rng.normal(size=(40, 16)) + 30.0
    table = np.concatenate([np.zeros((1, 16)), items])
    a = list(range(1, 41))
    b = [v + 1 if v % 2 else v - 1 for v in a]
    ranks = partner_ranks(table, top_partners(a, b, [1] * 40))
    assert (ranks == 0).all()  # every item's partner is its nearest neighbour
    q = table_quality(table, a, b, [1] * 40)
    assert q["cooccurrence_hit@10"] == 1.0 and q["mean_pairwise_cosine"] > 0.9 and q["items_checked"] == 40
    shuffled = np.concatenate([np.zeros((1, 16)), items[rng.permutation(40)]])
    assert table_quality(shuffled, a, b, [1] * 40)["cooccurrence_hit@10"] < 0.5
    assert q["chance_hit@10"] == pytest.approx(10 / 39, abs=1e-4)


def test_table_shift_is_relative_to_the_reference_and_blind_to_a_common_offset():
    rng = np.random.default_rng(2)
    ref = np.concatenate([np.zeros((1, 8)), rng.normal(size=(30, 8))])
    assert table_shift(ref, ref) == {"moved": 0.0, "centred_cosine": 1.0}
    noise = np.concatenate([np.zeros((1, 8)), rng.normal(size=(30, 8))])
    noise *= 0.1 * np.linalg.norm(ref) / np.linalg.norm(noise)
    shifted = table_shift(ref + noise, ref)
    assert shifted["moved"] == pytest.approx(0.1, abs=1e-6) and shifted["centred_cosine"] < 1.0
    offset = ref + np.r_[np.zeros((1, 8)), np.full((30, 8), 5.0)]  # every item moved the same way
    assert table_shift(offset, ref)["centred_cosine"] == pytest.approx(1.0) and table_shift(offset, ref)["moved"] > 1
    with pytest.raises(ValueError, match="not the same items"):
        table_shift(ref[:-1], ref)


def _write_run(tmp_path, table, a, b, method="good"):
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "prepared").mkdir(exist_ok=True)
    (tmp_path / "prepared" / "summary.json").write_text(json.dumps({"items": len(table) - 1}))
    pairs = pa.table({"item_a": a, "item_b": b, "count": [1] * len(a)})
    pq.write_table(pairs, tmp_path / "prepared" / "cooccurrence.parquet")
    (tmp_path / "embeddings" / method).mkdir(parents=True)
    rows = [list(map(float, v)) for v in table[1:]]
    pq.write_table(pa.table({"item_id": list(range(1, len(table))), "vector": rows}),
                   tmp_path / "embeddings" / method / "embeddings.parquet")


def test_command_prints_each_tables_quality_and_names_a_missing_table(tmp_path, capsys):
    import json

    from reaemb_ray.table_quality import main

    rng = np.random.default_rng(1)
    items = np.repeat(rng.normal(size=(10, 8)), 2, axis=0) + 0.01 * rng.normal(size=(20, 8))
    table = np.concatenate([np.zeros((1, 8)), items])
    a = list(range(1, 21))
    b = [v + 1 if v % 2 else v - 1 for v in a]
    _write_run(tmp_path, table, a, b)
    main([str(tmp_path), "good"])
    line = json.loads(capsys.readouterr().out)
    assert line["method"] == "good" and line["cooccurrence_hit@10"] == 1.0 and line["items_checked"] == 20
    with pytest.raises(SystemExit, match="embeddings/missing/embeddings.parquet not found"):
        main([str(tmp_path), "good", "missing"])
    moved = table.copy()
    moved[1:] += 0.5 * rng.normal(size=moved[1:].shape)
    _write_run(tmp_path, moved, a, b, method="moved")
    main([str(tmp_path), "moved", "--against", "good"])
    line = json.loads(capsys.readouterr().out)
    expected = table_shift(moved, table)
    assert line["vs_good"]["moved"] == pytest.approx(expected["moved"], rel=1e-4) and expected["moved"] > 0.01
    assert line["vs_good"]["centred_cosine"] == pytest.approx(expected["centred_cosine"], abs=1e-5)
    with pytest.raises(SystemExit, match="embeddings/missing/embeddings.parquet not found"):
        main([str(tmp_path), "good", "--against", "missing"])
