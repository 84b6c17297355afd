import numpy as np
import pytest
import torch

from reaemb_ray.srs.metrics import (full_ranks, hit_ndcg, ndcg_by_popularity, pessimistic_rank, ranks_in_blocks,
                                    sample_negatives_per_user, sampled_ranks, summarize, take_rows, user_groups)


class GridRows:
    """A table served in row blocks of `grid` rows (as an encoder's lazy rows are), counting the blocks asked for."""

    def __init__(self, table: torch.Tensor, grid: int):
        self.table, self.num_rows, self.grid, self.asked = table, table.shape[0], grid, []

    def block(self, lo: int) -> torch.Tensor:
        self.asked.append(lo)
        return self.table[lo:lo + self.grid].clone()


def test_pessimistic_rank_counts_ties_against_the_target():
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.5, 0.2], [3.0, 1.0, 1.0, 1.0, 1.0]])
    # row 0: target col 2 (0.5): one higher (0.9) + one tie (col 3) -> rank 2; row 1: target col 1: 1 higher + 3 ties
    assert pessimistic_rank(scores, torch.tensor([2, 1])).tolist() == [2, 4]


def test_hit_ndcg_hand_computed():
    hit, ndcg = hit_ndcg(np.array([0, 1, 9, 10]), 10)
    assert hit.tolist() == [1, 1, 1, 0]
    np.testing.assert_allclose(ndcg, [1.0, 1 / np.log2(3), 1 / np.log2(11), 0.0])
    s = summarize(np.array([0, 3]), [1, 5])
    assert s["HR@1"] == 0.5 and s["HR@5"] == 1.0
    assert s["NDCG@5"] == pytest.approx((1 + 1 / np.log2(5)) / 2)


def test_full_ranks_exclude_padding_and_history_but_not_a_repeated_target():
    # items 1..5; column 0 (padding) has the highest score and must not count
    scores = torch.tensor([[9.0, 0.3, 0.8, 0.7, 0.6, 0.5]] * 2)
    t = torch.tensor([4, 2])
    assert full_ranks(scores, t).tolist() == [2, 0]  # row0: items 2,3 above 0.6
    hist = [np.array([2, 1]), np.array([2, 3])]  # row 1 repeats its target (2)
    assert full_ranks(scores, t, hist).tolist() == [1, 0]  # row0: item 2 removed -> only 3 above


def test_sampled_ranks_only_compare_candidates():
    scores = torch.tensor([[0.0, 0.5, 0.9, 0.1, 0.7, 0.5]])
    ranks = sampled_ranks(scores, torch.tensor([1]), torch.tensor([[3, 5]]))  # 0.5 vs {0.1, 0.5 tie}
    assert ranks.tolist() == [1]


def test_sampled_negatives_never_seen_distinct_and_seeded():
    interacted = [np.array([1, 2, 3]), np.arange(1, 15)]
    a = sample_negatives_per_user(interacted, 20, 6, seed=3)
    b = sample_negatives_per_user(interacted, 20, 6, seed=3)
    assert (a == b).all() and a.shape == (2, 6)
    for row, seen in zip(a, interacted):
        assert len(set(row)) == 6 and not set(row) & set(seen) and row.min() >= 1 and row.max() <= 20
    with pytest.raises(ValueError, match="num_sampled_negatives"):
        sample_negatives_per_user([np.arange(1, 18)], 20, 6, seed=0)


def test_groups_and_popularity_buckets():
    pop = np.array([0, 50, 3, 19, 20])
    g = user_groups(np.array([1, 2, 3, 4]), pop, np.array([5, 12, 9, 10]), tail_threshold=20, short_threshold=10)
    assert g["tail"].tolist() == [False, True, True, False]
    assert g["popular"].tolist() == [True, False, False, True]
    assert g["short"].tolist() == [True, False, True, False] and g["long"].tolist() == [False, True, False, True]
    b = ndcg_by_popularity(np.array([0, 20, 1, 0]), np.array([1, 2, 3, 4]), pop, 10)
    by = {x["bucket"]: x for x in b}
    assert by["0-4"]["n_users"] == 1 and by["0-4"]["value"] == 0.0  # item 2 (pop 3), rank 20
    assert by["20-49"]["value"] == 1.0 and by["50-99"]["value"] == 1.0
    assert by["10-19"]["value"] == pytest.approx(1 / np.log2(3))


def reference_full_ranks(scores, targets, history):
    """The plain definition: excluded columns set to -inf (the target restored), then count >= target."""
    s = scores.clone()
    t = s.gather(1, targets[:, None])
    s[:, 0] = float("-inf")
    for i, h in enumerate(history or []):
        s[i, torch.as_tensor(h, dtype=torch.long)] = float("-inf")
    s.scatter_(1, targets[:, None], t)
    return (s >= t).sum(1) - 1


def test_full_ranks_match_the_plain_definition_on_random_ties():
    rng = np.random.default_rng(0)
    for _ in range(100):
        b, n = int(rng.integers(1, 12)), int(rng.integers(2, 30))
        scores = torch.from_numpy(rng.integers(-3, 4, (b, n + 1)).astype(np.float32))  # many ties
        targets = torch.from_numpy(rng.integers(1, n + 1, b))
        hist = [np.append(rng.integers(1, n + 1, int(rng.integers(0, 6))), [targets[i].item()] * int(rng.integers(0, 2)))
                for i in range(b)]  # repeated items, sometimes the target itself
        assert torch.equal(full_ranks(scores, targets, hist), reference_full_ranks(scores, targets, hist))
        assert torch.equal(full_ranks(scores, targets), reference_full_ranks(scores, targets, None))


@pytest.mark.parametrize("integer_valued", [True, False])
def test_ranks_in_blocks_match_the_whole_score_matrix(integer_valued):
    """Blocked scoring gives the reference ranks exactly: with many exact ties (integer vectors) and on random
    floats, whatever the block size."""
    rng = np.random.default_rng(1)
    for trial in range(40):
        b, n, d = int(rng.integers(1, 20)), int(rng.integers(2, 300)), int(rng.integers(1, 24))
        make = (lambda *s: rng.integers(-2, 3, s)) if integer_valued else (lambda *s: rng.standard_normal(s))
        users = torch.from_numpy(make(b, d).astype(np.float32))
        table = torch.from_numpy(make(n + 1, d).astype(np.float32))
        targets = torch.from_numpy(rng.integers(1, n + 1, b))
        hist = [np.append(rng.integers(1, n + 1, int(rng.integers(0, 8))), [targets[i].item()] * int(rng.integers(0, 2)))
                for i in range(b)]
        negatives = torch.from_numpy(np.stack([rng.choice(np.setdiff1d(np.arange(1, n + 1), [targets[i].item()]),
                                                          min(5, n - 1), replace=False) for i in range(b)]))
        scores = users @ table.T
        for block in (1, 7 * b, (n + 1) * b):
            full, sampled = ranks_in_blocks(users, table, targets, hist, negatives, block_scores=block)
            assert torch.equal(full, full_ranks(scores, targets, hist)), (trial, block)
            assert torch.equal(sampled, sampled_ranks(scores, targets, negatives)), (trial, block)
            assert torch.equal(ranks_in_blocks(users, table, targets, block_scores=block)[0], full_ranks(scores, targets))
            for grid in (1, 5, n + 1):  # row blocks, cut anywhere against the score blocks
                rows = GridRows(table, grid)
                f, smp = ranks_in_blocks(users, rows, targets, hist, negatives, block_scores=block)
                assert torch.equal(f, full_ranks(scores, targets, hist)) and torch.equal(smp, sampled_ranks(
                    scores, targets, negatives)), (trial, block, grid)


def test_take_rows_cuts_each_row_out_of_its_block_and_computes_only_those_blocks():
    table = torch.arange(40, dtype=torch.float32).reshape(20, 2)
    rows = GridRows(table, 6)
    ids = torch.tensor([[3, 19], [3, 7]])
    assert torch.equal(take_rows(rows, ids), table[ids])
    assert sorted(rows.asked) == [0, 6, 18]  # block 12-17 holds no id


def test_ranking_many_users_stays_exact_beyond_one_target_chunk(monkeypatch):
    from reaemb_ray.srs import metrics

    monkeypatch.setattr(metrics, "TARGET_CHUNK", 4)  # target scores and sampled ranks in several user chunks
    rng = np.random.default_rng(3)
    users, table = (torch.from_numpy(rng.standard_normal(s).astype(np.float32)) for s in ((11, 6), (30, 6)))
    targets = torch.from_numpy(rng.integers(1, 30, 11))
    negatives = torch.from_numpy(np.stack([rng.choice(np.setdiff1d(np.arange(1, 30), [t]), 5, replace=False)
                                           for t in targets.tolist()]))
    scores = users @ table.T
    full, sampled = ranks_in_blocks(users, GridRows(table, 7), targets, None, negatives, block_scores=33)
    assert torch.equal(full, full_ranks(scores, targets)) and torch.equal(sampled, sampled_ranks(scores, targets, negatives))


def test_versus_id_marks_gains_beyond_both_standard_deviations():
    from reaemb_ray.srs.report import versus_id

    def rec(method, seed, group, value):
        return {"method": method, "backbone": "sasrec", "seed": seed, "protocol": "full", "group": group,
                "metric": "NDCG", "k": 10, "value": value, "n_users": 10}

    records = [rec("id", s, "overall", v) for s, v in enumerate([0.050, 0.052])] + \
              [rec("id", s, "tail", v) for s, v in enumerate([0.030, 0.031])] + \
              [rec("lrcl", s, "overall", v) for s, v in enumerate([0.056, 0.057])] + \
              [rec("lrcl", s, "tail", v) for s, v in enumerate([0.020, 0.045])] + \
              [rec("raw_llm", 0, "overall", 0.06)]
    rows = {(r["method"], r["group"]): r for r in versus_id(records)}
    assert rows[("lrcl", "overall")]["beyond_spread"] and rows[("lrcl", "overall")]["relative"] == pytest.approx(0.5650 / 0.51 - 1, rel=1e-3)
    assert not rows[("lrcl", "tail")]["beyond_spread"]  # std 0.0125 swallows the gap
    assert not rows[("raw_llm", "overall")]["beyond_spread"]  # one seed: no claim
    assert ("id", "overall") not in rows


def test_verdict_says_n_a_when_the_id_model_scores_zero(tmp_path):
    from reaemb_ray.srs.report import write_markdown

    records = [{"method": m, "backbone": "sasrec", "seed": 0, "protocol": "full", "group": g, "metric": "NDCG",
                "k": 10, "value": v, "n_users": 5} for m, g, v in
               [("id", "overall", 0.02), ("id", "tail", 0.0), ("lrcl", "overall", 0.03), ("lrcl", "tail", 0.01)]]
    write_markdown(records, tmp_path / "r.md")
    line = next(x for x in (tmp_path / "r.md").read_text().splitlines() if x.startswith("| sasrec | lrcl |"))
    assert "+50.0%" in line and "n/a (ID scores 0)" in line and "nan" not in line
