import numpy as np
import pytest
import torch

from reaemb_ray.config import SRSConfig
from reaemb_ray.srs.encoders import IDEncoder
from reaemb_ray.srs.models import Dropout, SASRec, build_model, keep_last, right_align
from reaemb_ray.srs.trainer import densify_grads, make_optimizer

N = 30
SRS = SRSConfig(hidden=16, layers=2, heads=2, dropout=0.1, max_len=12)


def model(name, **kw):
    torch.manual_seed(0)
    return build_model(name, IDEncoder(N, 16), SRS)


def test_right_align_and_keep_last():
    seq = torch.tensor([[0, 0, 3, 4], [5, 6, 7, 0]])
    assert right_align(seq).tolist() == [[3, 4, 0, 0], [5, 6, 7, 0]]
    assert keep_last(torch.tensor([[1, 2, 3, 4], [5, 6, 0, 0]]), 2).tolist() == [[3, 4], [5, 6]]


def test_sasrec_causal_mask_future_items_do_not_leak():
    m = model("sasrec").eval()
    a = torch.tensor([[3, 7, 9, 11, 2]])
    b = a.clone()
    b[0, 3:] = torch.tensor([25, 1])  # change the future
    oa, ob = m.sequence_output(a), m.sequence_output(b)
    assert torch.allclose(oa[0, :3], ob[0, :3], atol=1e-6)
    assert not torch.allclose(oa[0, 3:], ob[0, 3:])
    # without the mask (the published bug) earlier positions do see the future
    leaky = SASRec(IDEncoder(N, 16), hidden=16, layers=2, heads=2, dropout=0.1, max_len=12, causal=False).eval()
    assert not torch.allclose(leaky.sequence_output(a)[0, :3], leaky.sequence_output(b)[0, :3])


@pytest.mark.parametrize("name", ["sasrec", "gru4rec", "bert4rec"])
def test_forward_is_padding_invariant_and_shapes(name):
    m = model(name).eval()
    right = torch.tensor([[4, 5, 6, 0, 0], [7, 8, 9, 10, 11]])
    left = torch.tensor([[0, 0, 4, 5, 6], [7, 8, 9, 10, 11]])
    out = m(right)
    assert out.shape == (2, 16)
    assert torch.allclose(out, m(left), atol=1e-5)
    assert torch.allclose(out[:1], m(torch.tensor([[4, 5, 6]])), atol=1e-5)  # batch width does not matter
    assert m.item_embeddings().shape == (N + 1, 16)
    assert m.full_scores(right).shape == (2, N + 1)
    # sequences longer than max_len keep their last max_len items
    long = torch.arange(1, 21)[None]
    assert torch.allclose(m(long), m(long[:, -12:]), atol=1e-5)


@pytest.mark.parametrize("name", ["sasrec", "gru4rec", "bert4rec"])
def test_a_few_steps_reduce_the_loss(name):
    m = model(name)
    rng = np.random.default_rng(0)
    seqs = [np.array([(s + j) % N + 1 for j in range(8)]) for s in range(N)]  # i -> i+1 pattern
    opt = make_optimizer(m, 1e-2)
    torch.manual_seed(1)
    fixed = m.make_train_batch(seqs, np.random.default_rng(5))
    m.eval()
    with torch.no_grad():
        before = m.calculate_loss(fixed).item()
    m.train()
    for _ in range(80):
        loss = m.training_loss(m.make_train_batch(seqs, rng))
        assert loss.ndim == 0 and torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        densify_grads(m)  # ID embeddings have sparse gradients
        opt.step()
    m.eval()
    with torch.no_grad():
        after = m.calculate_loss(fixed).item()
    assert after < 0.85 * before, (before, after)


def test_next_item_batch_targets_shift_by_one_and_negatives_follow_the_loss():
    m = model("sasrec")
    seqs = [np.array([1, 2, 3, 4]), np.array([5, 6]), np.array([9])]
    m.configure_loss("bce")
    b = m.make_train_batch(seqs, np.random.default_rng(0))
    assert b["seq"].tolist() == [[1, 2, 3], [5, 0, 0]]  # the single-item user has no target and is dropped
    assert b["pos"].tolist() == [[2, 3, 4], [6, 0, 0]]
    assert ((b["neg"] != b["pos"]) | (b["pos"] == 0)).all() and (b["neg"][b["pos"] == 0] == 0).all()
    assert m.num_targets(b) == 4
    m.configure_loss("sampled_softmax", num_negatives=7)
    b = m.make_train_batch(seqs, np.random.default_rng(0))
    assert "neg" not in b and b["shared_neg"].shape == (7,) and b["shared_neg"].min() >= 1
    m.configure_loss("ce")
    assert set(m.make_train_batch(seqs, np.random.default_rng(0))) == {"seq", "pos"}


def test_bert4rec_masks_and_appends_mask_token():
    m = model("bert4rec")
    b = m.make_train_batch([np.array([1, 2, 3]), np.array([4])], np.random.default_rng(0))
    masked = b["seq"] == m.mask_id
    assert masked.any(1).all()  # every row predicts at least one item
    assert (b["labels"][masked] != 0).all() and (b["labels"][~masked] == 0).all()
    # at test time the user representation is the hidden state of an appended [MASK]
    m.eval()
    seq = torch.tensor([[1, 2, 3]])
    expected = m.sequence_output(torch.tensor([[1, 2, 3, m.mask_id]]))[:, 3]
    assert torch.allclose(m(seq), expected, atol=1e-6)


def test_dropout_keeps_1_minus_p_scales_and_is_identity_in_eval():
    torch.manual_seed(0)
    d = Dropout(0.3)
    x = torch.ones(200_000, requires_grad=True)
    y = d(x)
    kept = y != 0
    assert abs(kept.float().mean().item() - 0.7) < 0.005
    assert torch.allclose(y[kept], torch.full_like(y[kept], 1 / 0.7))  # inverted dropout, like nn.Dropout
    y.sum().backward()
    assert torch.equal(x.grad, y.detach())  # gradient flows through kept entries only, with the same scale
    assert d.eval()(x) is x and Dropout(0.0).train()(x) is x


def test_training_attention_path_matches_scaled_dot_product_attention():
    # all dropout off except a negligible attention dropout: the hand-written training path must equal the
    # scaled_dot_product_attention used at evaluation
    m = model("sasrec")
    seq = torch.tensor([[3, 7, 9, 11, 2], [4, 5, 0, 0, 0]])
    expected = m.eval().sequence_output(seq)
    m.train()
    for mod in m.modules():
        if isinstance(mod, Dropout):
            mod.p = 1e-12 if mod is m.blocks[0].attn_drop or mod is m.blocks[1].attn_drop else 0.0
    assert torch.allclose(m.sequence_output(seq), expected, atol=1e-5)


def test_sparse_id_gradients_give_the_same_adam_step_as_dense():
    sparse_m = model("sasrec").train()
    dense_m = model("sasrec").train()
    dense_m.encoder.emb.sparse = False
    batch = sparse_m.make_train_batch([np.array([1, 2, 3, 4]), np.array([5, 6, 7])], np.random.default_rng(0))
    for m in (sparse_m, dense_m):
        for mod in m.modules():
            if isinstance(mod, Dropout):
                mod.p = 0.0
        opt = torch.optim.Adam(m.parameters(), lr=1e-2)
        m.training_loss(batch).backward()
        densify_grads(m)
        opt.step()
    assert sparse_m.encoder.emb.weight.grad.layout == torch.strided
    for (name, a), b in zip(sparse_m.state_dict().items(), dense_m.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), name
