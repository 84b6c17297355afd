"""Reasoning examples come from the training split only and respect the out-of-fold split (no Ray, no model)."""
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from reaemb_ray.reasoning.synthetic import write_rated_prepared
from reaemb_ray.reasoning.tasks import (class_prob, item_examples, item_folds, load_task_data, resolve_task,
                                        training_examples)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    return write_rated_prepared(tmp_path_factory.mktemp("rated"), clusters=4, per_cluster=4, users_per_cluster=3,
                                seq_len=8)


def test_examples_use_training_interactions_only(prepared):
    data = load_task_data(prepared, "rating")
    t = pq.read_table(prepared / "interactions.parquet").to_pydict()
    length = {u: t["user_id"].count(u) for u in set(t["user_id"])}
    by_user = {}  # the training split: positions < len - 2, in order
    for u, p, i, r in sorted(zip(t["user_id"], t["position"], t["item_id"], t["rating"])):
        if p < length[u] - 2:
            by_user.setdefault(u, []).append((i, r))
    ex = training_examples(data, np.zeros(data.num_items + 1, bool), history_items=3, no_history_share=0.0, seed=0)
    assert len(ex) == sum(map(len, by_user.values())) == 12 * 6  # every training interaction once
    for e in ex:
        seq = by_user[e.user_id]
        # the target and its (at most 3) predecessors are consecutive training interactions, ratings included
        assert any(seq[k] == (e.item_id, e.truth) and seq[max(0, k - 3):k] == e.history for k in range(len(seq)))
    assert data.scale == (1.0, 5.0) and set(data.classes) == {1.0, 2.0, 4.0, 5.0}


def test_out_of_fold_examples_never_touch_held_out_items(prepared):
    data = load_task_data(prepared, "rating")
    folds = item_folds(data.num_items, 2, seed=3)
    assert folds[0] == -1 and sorted(np.bincount(folds[1:])) == [8, 8]
    held = folds == 0
    ex = training_examples(data, held, history_items=3, no_history_share=0.5, seed=0)
    assert ex and all(not held[e.item_id] and not any(held[i] for i, _ in e.history) for e in ex)
    assert any(not e.history for e in ex) and any(e.history for e in ex)
    probs = class_prob(ex)
    assert sum(probs.values()) == pytest.approx(1.0) and set(probs) <= {1.0, 2.0, 4.0, 5.0}


def test_item_level_truth_is_the_rounded_mean_training_rating(prepared):
    data = load_task_data(prepared, "rating")
    flat_i, flat_r = np.concatenate(data.train_items), np.concatenate(data.train_ratings)
    for e in item_examples(data, [1, 5, 16]):
        mean = flat_r[flat_i == e.item_id].mean()
        assert e.history == [] and e.user_id == 0
        assert e.truth == data.classes[np.abs(data.classes - mean).argmin()]


def test_next_item_task_and_missing_ratings(tmp_path, prepared):
    data = load_task_data(prepared, "next_item")
    ex = training_examples(data, np.zeros(data.num_items + 1, bool), 2, 0.0, seed=1)
    assert {e.truth for e in ex} == {0.0, 1.0} and all(e.history for e in ex)
    for e in ex:
        if e.truth == 0.0:  # a negative is an item the user never chose in training
            assert e.item_id not in set(data.train_items[e.user_id - 1].tolist())
    assert [e.truth for e in item_examples(data, [1])] == [float(data.popularity[1] >= 20)]
    # ratings missing: `auto` falls back to next_item, `rating` names the fix
    import shutil
    bare = tmp_path / "bare"
    shutil.copytree(prepared, bare)
    t = pq.read_table(bare / "interactions.parquet")
    t = t.set_column(t.schema.get_field_index("rating"), "rating", pa.nulls(t.num_rows, pa.float32()))
    pq.write_table(t, bare / "interactions.parquet")
    assert resolve_task("auto", bare) == "next_item" and resolve_task("auto", prepared) == "rating"
    with pytest.raises(ValueError, match="reaemb prepare --fresh.*reason.task=next_item"):
        load_task_data(bare, "rating")
