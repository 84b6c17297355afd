import itertools

import numpy as np
import pytest
import torch

from reaemb_ray.config import ConfigError, SRSConfig, load_config
from reaemb_ray.srs.data import chunk_by_tokens, load_seq_data
from reaemb_ray.srs.encoders import IDEncoder
from reaemb_ray.srs.models import build_model
from reaemb_ray.srs.trainer import batch_chunks, densify_grads, fit_and_test, rank_targets, train, validation_users


def padded_cost(chunks, lengths, overhead):
    return sum(len(c) * max(1, lengths[c].max()) + overhead for c in chunks)


def test_chunks_cover_every_row_once_within_limits_and_cut_padding():
    lengths = np.random.default_rng(0).geometric(0.15, 300) + 1
    chunks = chunk_by_tokens(lengths, max_tokens=400, max_rows=64)
    assert sorted(np.concatenate(chunks).tolist()) == list(range(300))
    assert all(len(c) <= 64 and len(c) * lengths[c].max() <= 400 for c in chunks)
    assert padded_cost(chunks, lengths, 0) < 0.5 * len(lengths) * lengths.max()  # vs one padded batch


def test_chunk_split_is_optimal_against_brute_force():
    rng = np.random.default_rng(1)
    for _ in range(20):
        lengths = rng.integers(1, 30, int(rng.integers(1, 9)))
        order = np.argsort(lengths, kind="stable")
        n = len(lengths)
        # every way of cutting the length-sorted rows into contiguous chunks
        best = min(padded_cost(np.split(order, list(cuts)), lengths, 16)
                   for k in range(n) for cuts in itertools.combinations(range(1, n), k))
        got = chunk_by_tokens(lengths, max_tokens=10**9, overhead_tokens=16)
        assert padded_cost(got, lengths, 16) == best


@pytest.mark.parametrize("loss", ["ce", "sampled_softmax", "gbce", "bce"])
def test_batch_gradient_does_not_depend_on_chunking(loss):
    srs = SRSConfig(hidden=16, layers=2, heads=2, dropout=0.0, max_len=12, loss=loss, num_negatives=8)
    torch.manual_seed(0)
    m = build_model("sasrec", IDEncoder(30, 16), srs).train()
    rng = np.random.default_rng(0)
    batch = m.make_train_batch([rng.integers(1, 31, int(n)) for n in rng.integers(2, 14, 40)], rng)
    grads = []
    for max_tokens in (10**6, 24):  # one chunk vs many
        chunks = batch_chunks(batch, max_tokens)
        counts = [m.num_targets(c) for c in chunks]
        m.zero_grad()
        for c, n in zip(chunks, counts):
            (m.training_loss(c) * n / sum(counts)).backward()
        densify_grads(m)
        grads.append([p.grad.clone() for p in m.parameters() if p.grad is not None])
        assert len(chunks) >= (1 if max_tokens > 1000 else 4)
        assert all(((c["seq"] != 0).sum(1) > 0).all() and c["seq"].shape == c["pos"].shape for c in chunks)
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-6)


def test_validation_subsample_is_fixed_by_the_seed():
    rows = list(range(0, 1000, 3))
    a, b = validation_users(rows, 50, seed=7), validation_users(rows, 50, seed=7)
    assert a == b and len(set(a)) == 50 and set(a) <= set(rows) and a == sorted(a)
    assert validation_users(rows, 50, seed=8) != a
    assert validation_users(rows, 0, seed=7) == rows and validation_users(rows, 5000, seed=7) == rows


def tiny(prepared_dir, *extra):
    return load_config(None, [f"output_dir={prepared_dir.parent}", "srs.hidden=16", "srs.max_len=20",
                              "srs.batch_size=32", *extra]).srs


def test_eval_every_validates_every_k_epochs_and_the_last(prepared_dir):
    data = load_seq_data(prepared_dir)
    srs = tiny(prepared_dir, "srs.epochs=7", "srs.eval_every=3", "srs.patience=50")
    torch.manual_seed(0)
    r = train(build_model("sasrec", IDEncoder(data.num_items, 16), srs), data, srs, 0, progress=False)
    assert [c["epoch"] for c in r.curve if "val_ndcg10" in c] == [3, 6, 7]
    assert r.epochs_run == 7 and r.best_epoch in (3, 6, 7)
    assert r.best_val_ndcg10 == max(c["val_ndcg10"] for c in r.curve if "val_ndcg10" in c)


def test_patience_counts_validations_not_epochs(prepared_dir):
    data = load_seq_data(prepared_dir)
    # lr 0 never improves after the first validation: stops after 1 + patience validations
    srs = tiny(prepared_dir, "srs.epochs=50", "srs.eval_every=2", "srs.patience=2")
    srs.lr = 0.0  # a test device, set past validation (a user's srs.lr=0 is refused at load)
    torch.manual_seed(0)
    r = train(build_model("sasrec", IDEncoder(data.num_items, 16), srs), data, srs, 0, progress=False)
    assert r.epochs_run == 6 and r.best_epoch == 2


def test_validation_subsample_changes_validation_only(prepared_dir):
    data = load_seq_data(prepared_dir)
    full_srs = tiny(prepared_dir, "srs.epochs=2")
    sub_srs = tiny(prepared_dir, "srs.epochs=2", "srs.valid_users=20")
    _, r_full, ranks_full, _ = fit_and_test(data, "sasrec", full_srs, 0, 10, progress=False)
    _, r_sub, ranks_sub, _ = fit_and_test(data, "sasrec", sub_srs, 0, 10, progress=False)
    assert len(ranks_sub) == data.num_users  # the test still ranks every user
    assert [c["loss"] for c in r_full.curve] == [c["loss"] for c in r_sub.curve]  # same training
    assert r_full.curve[-1]["val_ndcg10"] != r_sub.curve[-1]["val_ndcg10"]


@pytest.mark.parametrize("override", ["srs.eval_every=0", "srs.valid_users=-1"])
def test_bad_validation_settings_are_rejected(override):
    with pytest.raises(ConfigError, match=override.split("=")[0]):
        load_config(None, [override])


@pytest.mark.parametrize("kind", ["id", "frozen_adapter", "fusion"])
def test_rank_targets_in_user_groups_and_row_blocks_equals_ranking_the_whole_score_matrix(kind, monkeypatch):
    from reaemb_ray.srs import encoders, trainer
    from reaemb_ray.srs.data import pad_right
    from reaemb_ray.srs.encoders import build_encoder
    from reaemb_ray.srs.metrics import full_ranks, sampled_ranks

    monkeypatch.setattr(encoders, "TABLE_BLOCK_ROWS", 7)  # the adapted table in several blocks
    monkeypatch.setattr(trainer, "USER_GROUP", 8)  # users in several groups
    rng = np.random.default_rng(0)
    n, users = 40, 21
    table = np.concatenate([np.zeros((1, 12)), rng.normal(size=(n, 12))]).astype(np.float32)
    torch.manual_seed(0)
    model = build_model("sasrec", build_encoder(n, 16, None if kind == "id" else table, 8, kind="frozen_adapter"
                                                if kind == "id" else kind), SRSConfig(hidden=16, max_len=10))
    if kind == "fusion":
        torch.nn.init.normal_(model.encoder.residual.weight)
    inputs = [rng.integers(1, n + 1, int(rng.integers(1, 9))) for _ in range(users)]
    targets = rng.integers(1, n + 1, users)
    negatives = np.stack([rng.choice(np.setdiff1d(np.arange(1, n + 1), [t]), 6, replace=False) for t in targets])
    full, sampled = rank_targets(model, inputs, targets, 4, True, 10_000, negatives)
    with torch.inference_mode():
        scores = model.full_scores(torch.from_numpy(pad_right(inputs, 10)))
    t = torch.from_numpy(targets)
    np.testing.assert_array_equal(full, full_ranks(scores, t, inputs).numpy())
    np.testing.assert_array_equal(sampled, sampled_ranks(scores, t, torch.from_numpy(negatives)).numpy())
