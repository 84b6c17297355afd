import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F

from reaemb_ray.config import SRSConfig
from reaemb_ray.losses import soft_contrastive_loss
from reaemb_ray.srs.encoders import (ExternalEncoder, FusionEncoder, IDEncoder, alignment_loss, build_encoder,
                                     condition_table, llm_init_rows, load_embedding_table, pca_fit_transform)
from reaemb_ray.srs.models import build_model


def write_table(path, ids, vecs):
    pq.write_table(pa.table({"item_id": pa.array(ids, pa.int64()),
                             "vector": pa.array([list(map(float, v)) for v in vecs], pa.list_(pa.float32()))}), path)
    return path


def test_load_table_orders_rows_by_id_and_pads_row_zero(tmp_path):
    vecs = np.arange(12, dtype=np.float32).reshape(4, 3)
    t = load_embedding_table(write_table(tmp_path / "e.parquet", [3, 1, 4, 2], vecs), num_items=4)
    assert t.shape == (5, 3) and (t[0] == 0).all()
    np.testing.assert_array_equal(t[3], vecs[0])
    np.testing.assert_array_equal(t[1], vecs[1])


def test_pca_matches_reference_and_is_applied_only_when_wider(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 10)).astype(np.float32) @ np.diag(np.linspace(3, 0.1, 10)).astype(np.float32)
    z = pca_fit_transform(x, 4)
    # reference: eigenvectors of the covariance; compare up to sign per component
    xc = x - x.mean(0)
    w, v = np.linalg.eigh(xc.T.astype(np.float64) @ xc)
    ref = xc @ v[:, ::-1][:, :4]
    np.testing.assert_allclose(np.abs(z), np.abs(ref), atol=1e-4)
    path = write_table(tmp_path / "e.parquet", np.arange(1, 41), x)
    assert load_embedding_table(path, 40, pca_dim=4).shape == (41, 4)
    assert load_embedding_table(path, 40, pca_dim=16).shape == (41, 10)


@pytest.mark.parametrize("case,match", [
    ("missing", "missing"), ("nan", "NaN"), ("dup", "duplicate"), ("ragged", "one length")])
def test_bad_tables_name_the_file(tmp_path, case, match):
    ids, vecs = list(range(1, 6)), [np.ones(3)] * 5
    if case == "missing":
        ids, vecs = ids[:4], vecs[:4]
    elif case == "nan":
        vecs = [np.ones(3)] * 4 + [np.array([1.0, np.nan, 0.0])]
    elif case == "dup":
        ids = [1, 2, 3, 4, 4]
    else:
        vecs = [np.ones(3)] * 4 + [np.ones(2)]
    path = write_table(tmp_path / "bad.parquet", ids, vecs)
    with pytest.raises(ValueError, match=match) as e:
        load_embedding_table(path, 5)
    assert "bad.parquet" in str(e.value)


def test_external_encoder_is_frozen_table_through_two_linear_layers():
    table = np.concatenate([np.zeros((1, 8)), np.random.default_rng(0).normal(size=(6, 8))]).astype(np.float32)
    torch.manual_seed(0)
    enc = build_encoder(6, 4, table, adapter_hidden=5)
    assert isinstance(enc, ExternalEncoder)
    l1, l2 = enc.adapter
    assert (l1.in_features, l1.out_features, l2.out_features) == (8, 5, 4)
    ids = torch.tensor([[2, 0]])
    ref = l2(l1(torch.from_numpy(table[2])))
    assert torch.allclose(enc(ids)[0, 0], ref, atol=1e-6) and (enc(ids)[0, 1] == 0).all()
    assert enc.table().shape == (7, 4)
    assert all(p is not enc.frozen for p in enc.parameters())  # the table itself never trains
    m = build_model("sasrec", enc, SRSConfig(hidden=4, heads=1, max_len=5))
    loss = m.training_loss(m.make_train_batch([np.array([1, 2, 3])], np.random.default_rng(0)))
    loss.backward()
    assert l1.weight.grad is not None and enc.frozen.grad is None


def test_alignment_loss_matches_reference_and_prefers_aligned_pairs():
    torch.manual_seed(0)
    a, p = torch.randn(5, 4), torch.randn(5, 4)
    tau = 2.0
    logits = np.array([[F.cosine_similarity(a[i], p[j], 0).item() / tau for j in range(5)] for i in range(5)])
    ls = lambda L: np.mean([np.log(np.exp(L[i]).sum()) - L[i, i] for i in range(5)])
    cosine = alignment_loss(a, p, tau, "cosine").item()
    assert cosine == pytest.approx(0.5 * (ls(logits) + ls(logits.T)), rel=1e-5)
    assert alignment_loss(p * 3, p, 0.1, "cosine") < alignment_loss(a, p, 0.1, "cosine")
    assert alignment_loss(a, p, tau).item() == pytest.approx(soft_contrastive_loss(a, p, tau).item())
    with pytest.raises(ValueError, match="srs.hidden"):
        alignment_loss(a, torch.randn(5, 3), tau)


def test_cosine_alignment_at_tau_2_is_nearly_flat_the_soft_form_is_not():
    """Why srs.align_form defaults to the published soft form: at LLMEmb's tau 2, cosine logits lie in
    [-0.5, 0.5], so the loss barely moves between random and perfectly aligned rows."""
    torch.manual_seed(0)
    pretrained = torch.randn(64, 16)
    rand, aligned = torch.randn(64, 16), pretrained.clone()
    flat = alignment_loss(rand, pretrained, 2.0, "cosine") - alignment_loss(aligned, pretrained, 2.0, "cosine")
    steep = alignment_loss(rand, pretrained, 2.0, "soft") - alignment_loss(aligned, pretrained, 2.0, "soft")
    assert flat < 0.6 and steep > 5 * flat  # measured: 0.50 vs 4.69 (log 64 = 4.16)


def test_alignment_term_is_added_to_the_training_loss():
    rng = np.random.default_rng(0)
    table = np.concatenate([np.zeros((1, 8)), rng.normal(size=(6, 8))]).astype(np.float32)
    pretrained = rng.normal(size=(7, 4)).astype(np.float32)
    srs = SRSConfig(hidden=4, heads=1, max_len=5, dropout=0.0, loss="bce")
    torch.manual_seed(0)
    m = build_model("gru4rec", build_encoder(6, 4, table, 5), srs)
    batch = m.make_train_batch([np.array([1, 2, 3])], np.random.default_rng(0))
    base = m.training_loss(batch).item()
    m.set_alignment(pretrained, alpha=0.5, tau=2.0)
    ids = torch.tensor([1, 2, 3] + sorted(set(batch["neg"].flatten().tolist()) - {0, 1, 2, 3}))
    ids = torch.unique(ids)
    extra = 0.5 * alignment_loss(m.encoder(ids), torch.from_numpy(pretrained)[ids], 2.0).item()
    assert m.training_loss(batch).item() == pytest.approx(base + extra, rel=1e-5)
    with pytest.raises(ValueError, match="pretrained ID-SASRec"):
        m.set_alignment(pretrained[:, :3], 0.5, 2.0)


def test_llm_init_is_a_trainable_id_table_whose_rows_keep_the_semantic_neighbours():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 12)) * 3
    items = np.concatenate([c + 0.1 * rng.normal(size=(5, 12)) for c in centres]) + 50.0  # shared offset
    table = np.concatenate([np.zeros((1, 12)), items]).astype(np.float32)
    rows = llm_init_rows(table, 4, std=0.02)
    assert rows.shape == (16, 4) and (rows[0] == 0).all()
    assert rows[1:].std() == pytest.approx(0.02, rel=0.05) and abs(rows[1:].mean()) < 1e-3  # offset gone
    near = np.argsort(((rows[1:, None] - rows[None, 1:]) ** 2).sum(-1), 1)[:, 1]
    assert ((near // 5) == (np.arange(15) // 5)).all()  # nearest neighbour stays in its cluster
    enc = build_encoder(15, 4, table, kind="llm_init")
    assert isinstance(enc, IDEncoder) and enc.emb.weight.requires_grad
    assert torch.allclose(enc.table(), torch.from_numpy(rows))
    with pytest.raises(ValueError, match="srs.hidden"):
        llm_init_rows(table, 20)


def test_conditioning_uses_the_item_rows_only_and_keeps_padding_zero():
    rng = np.random.default_rng(0)
    items = rng.normal(size=(40, 6)) * [5, 3, 1, 1, 0.5, 0.1] + 100.0  # offset + anisotropy
    table = np.concatenate([np.zeros((1, 6)), items]).astype(np.float32)
    same, record = condition_table(table, [])
    assert same is table and record == {}
    z, record = condition_table(table, ["whiten"], 4)
    assert z.shape == (41, 4) and (z[0] == 0).all() and record == {"steps": ["whiten"], "dim": 4, "input_dim": 6}
    # statistics over the items alone: zero mean, identity covariance (padding row 0 would shift both)
    np.testing.assert_allclose(z[1:].mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(z[1:].T @ z[1:] / 40, np.eye(4), atol=1e-4)
    u, _ = condition_table(table, ["center", "l2"])
    np.testing.assert_allclose(np.linalg.norm(u[1:], axis=1), 1, rtol=1e-5)


def test_fusion_starts_as_the_adapter_and_trains_an_id_residual():
    table = np.concatenate([np.zeros((1, 8)), np.random.default_rng(0).normal(size=(6, 8))]).astype(np.float32)
    torch.manual_seed(0)
    enc = build_encoder(6, 4, table, adapter_hidden=5, kind="fusion")
    assert isinstance(enc, FusionEncoder)
    ids = torch.tensor([[1, 2, 0]])
    assert torch.allclose(enc(ids), enc.semantic(ids))  # residual starts at zero
    m = build_model("sasrec", enc, SRSConfig(hidden=4, heads=1, max_len=5))
    m.training_loss(m.make_train_batch([np.array([1, 2, 3])], np.random.default_rng(0))).backward()
    assert enc.residual.weight.grad is not None and enc.semantic.adapter[0].weight.grad is not None
    with pytest.raises(KeyError, match="srs.item_encoder"):
        build_encoder(6, 4, table, kind="concat")


def test_table_read_by_row_groups_puts_each_row_at_its_id_and_refuses_ids_outside(tmp_path):
    rng = np.random.default_rng(3)
    vecs, ids = rng.normal(size=(9, 4)).astype(np.float32), rng.permutation(9) + 1
    path = tmp_path / "e.parquet"
    pq.write_table(pa.table({"item_id": pa.array(ids, pa.int64()), "vector": pa.array(list(vecs), pa.list_(pa.float32()))}),
                   path, row_group_size=2)  # five row groups, rows scattered by id
    assert pq.ParquetFile(path).num_row_groups == 5
    t = load_embedding_table(path, 9)
    np.testing.assert_array_equal(t[ids], vecs)
    assert (t[0] == 0).all()
    with pytest.raises(ValueError, match="outside"):
        load_embedding_table(write_table(tmp_path / "x.parquet", [1, 2, 3, 9], vecs[:4]), 3)


@pytest.mark.parametrize("kind", ["frozen_adapter", "fusion"])
def test_table_in_row_blocks_without_grad_equals_every_id_through_forward(kind, monkeypatch):
    from reaemb_ray.srs import encoders

    table = np.concatenate([np.zeros((1, 8)), np.random.default_rng(1).normal(size=(10, 8))]).astype(np.float32)
    torch.manual_seed(0)
    enc = build_encoder(10, 4, table, adapter_hidden=6, kind=kind)
    if kind == "fusion":
        torch.nn.init.normal_(enc.residual.weight)
    monkeypatch.setattr(encoders, "TABLE_BLOCK_ROWS", 3)  # blocks that cut the table unevenly
    with torch.inference_mode():
        blocks, ref = enc.table(), enc(torch.arange(11))
    torch.testing.assert_close(blocks, ref, rtol=1e-6, atol=1e-6)  # BLAS may sum tiny blocks in another order
    assert enc.table().requires_grad  # with autograd: the whole graph, as training needs
    rows = enc.rows()  # ranking's view: the same blocks, each computed when asked
    assert (rows.num_rows, rows.grid) == (11, 3)
    with torch.inference_mode():
        assert torch.equal(torch.cat([rows.block(lo) for lo in range(0, 11, 3)]), blocks)
