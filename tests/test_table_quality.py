"""Table checks (reaemb_ray/table_quality.py) on tables whose answer is known."""
import numpy as np
import pytest

from reaemb_ray.table_quality import partner_ranks, table_quality, top_partners


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
