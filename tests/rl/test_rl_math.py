"""Hand-computed cases for candidates, rewards, advantages and the two clipped objectives."""
import math

import numpy as np
import pytest
import torch

from reaemb_ray.rl import advantages, rewards
from reaemb_ray.rl.candidates import cooccurrence_candidates, srs_candidates
from reaemb_ray.rl.objectives import (clipped_terms, gaussian_kl, gaussian_logprob, gaussian_loss, paper_loss,
                                      thought_token_logprob)


def test_cooccurrence_candidates_positives_weights_negatives_and_skips():
    # 1-2 (5 times), 1-3 (3 times), 2-3 (1), item 4 co-occurs with nothing; 10 items in all
    pairs = [(1, 2, 5), (1, 3, 3), (2, 3, 1)]
    a = [p[0] for p in pairs] + [p[1] for p in pairs]
    b = [p[1] for p in pairs] + [p[0] for p in pairs]
    c = [p[2] for p in pairs] * 2
    cand = cooccurrence_candidates(a, b, c, num_items=10, num_positives=2, num_negatives=3, seed=0)
    assert cand.skipped == 7 and cand.item_ids.tolist() == [1, 2, 3]
    ids, w = cand.lookup([1])
    assert ids[0, :2].tolist() == [2, 3]
    np.testing.assert_allclose(w[0], [5 / 8, 3 / 8, 0, 0, 0])
    assert not set(ids[0, 2:]) & {1, 2, 3} and len(set(ids[0, 2:])) == 3
    again = cooccurrence_candidates(a, b, c, num_items=10, num_positives=2, num_negatives=3, seed=0)
    assert (again.cand_ids == cand.cand_ids).all()  # seeded
    with pytest.raises(KeyError, match="no reward candidates"):
        cand.lookup([4])


def test_srs_candidates_top_similar_and_far_negatives():
    table = np.array([[0, 0], [1, 0], [0.9, 0.1], [0.8, 0.2], [-1, 0], [-0.9, 0], [0, 1], [-1, -0.1]], np.float32)
    cand = srs_candidates(table, num_positives=1, num_negatives=2, seed=0)
    ids, w = cand.lookup([1])
    assert ids[0, 0] == 2 and w[0].tolist() == [1, 0, 0]
    assert set(ids[0, 1:]) <= {4, 5, 7}  # the least similar half of the other items


def _rank_reward_loop(e, cands, w):
    out = np.zeros((e.shape[0], e.shape[1]))
    for m in range(e.shape[0]):
        for g in range(e.shape[1]):
            s = cands[m] @ e[m, g]
            for j in range(len(s)):
                rank = sum(1 for k in range(len(s)) if s[k] > s[j] or (k != j and s[k] == s[j]))
                out[m, g] += w[m, j] / (1 + math.log2(rank + 2))
    return out


def test_rank_reward_hand_cases():
    rank = lambda e, c, w: rewards.score_and_reward(e, c, w, "rank", "dot")  # noqa: E731
    e = np.array([[[1.0, 0.0]]])
    c = np.array([[[0.5, 0], [1, 0], [0.2, 0]]])
    w = np.array([[1.0, 0, 0]])
    assert rank(e, c, w)[0, 0] == pytest.approx(1 / (1 + math.log2(3)))
    c_top = np.array([[[2.0, 0], [1, 0], [0.2, 0]]])
    assert rank(e, c_top, w)[0, 0] == pytest.approx(0.5)  # rank 0: 1/(1+log2 2)
    c_tie = np.array([[[1.0, 0], [1, 0], [0.2, 0]]])  # tie with a negative counts against the positive
    assert rank(e, c_tie, w)[0, 0] == pytest.approx(1 / (1 + math.log2(3)))
    rng = np.random.default_rng(0)
    e, c = rng.normal(size=(3, 4, 5)), rng.normal(size=(3, 6, 5))
    w = np.zeros((3, 6)); w[:, 0], w[:, 1] = 0.7, 0.3
    np.testing.assert_allclose(rank(e, c, w), _rank_reward_loop(e, c, w), rtol=1e-6)


def test_dot_scores_rank_candidate_norms_centred_cosine_ranks_by_the_query():
    """The published dot product on un-centred embeddings ranks the candidates the same way for every query
    item (by their norm along the shared offset); centred cosine gives each query its own ordering."""
    rng = np.random.default_rng(0)
    offset = np.full(8, 20.0)  # pooled LM embeddings: mean pairwise cosine ~0.99
    items = offset + rng.normal(size=(6, 8)) * np.linspace(0.5, 1.5, 6)[:, None]
    w = np.zeros((2, 6)); w[:, 0] = 1.0
    cands = np.stack([items, items])
    queries = items[[1, 4], None]  # two different query items
    order = lambda s: np.argsort(-s[:, 0], axis=1)  # noqa: E731
    spearman = lambda s: np.corrcoef(np.argsort(order(s), axis=1))[0, 1]  # noqa: E731  (between the 2 queries)
    dot = rewards.scores(queries, cands, "dot")
    cos = rewards.scores(queries, cands, "centered_cosine", center=items.mean(0))
    assert spearman(dot) > 0.9 and spearman(cos) < 0.5, (spearman(dot), spearman(cos))
    assert order(cos)[0][0] == 1 and order(cos)[1][0] == 4  # each query's nearest candidate is itself
    with pytest.raises(ValueError, match="center"):
        rewards.scores(queries, cands, "centered_cosine")


def test_infonce_reward_hand_computed_and_continuous():
    s = np.array([[[2.0, 1.0, 0.0]]])
    w = np.array([[0.75, 0.25, 0.0]])
    logp = s[0, 0] / 0.5 - np.log(np.exp(s[0, 0] / 0.5).sum())
    assert rewards.infonce_reward(s, w, 0.5)[0, 0] == pytest.approx(0.75 * logp[0] + 0.25 * logp[1])
    e = np.array([[[1.0, 0.0], [1.0, 0.01]]])  # two samples a hair apart: same ranks, different InfoNCE
    c = np.array([[[1.0, 0.2], [0.9, -0.3], [0.1, 0.9]]])
    w1 = np.array([[1.0, 0, 0]])
    r_rank = rewards.score_and_reward(e, c, w1, "rank", "dot")
    r_nce = rewards.score_and_reward(e, c, w1, "infonce", "dot", tau=0.1)
    assert r_rank[0, 0] == r_rank[0, 1] and r_nce[0, 0] != r_nce[0, 1]
    assert rewards.group_spread_share(r_rank) == 0.0 and rewards.group_spread_share(r_nce) == 1.0
    with pytest.raises(KeyError, match="crrl.reward_form"):
        rewards.score_and_reward(e, c, w1, "ndcg")


def test_mix_reward_and_unknown_names():
    parts = {"cooccurrence": np.ones((2, 3), np.float32), "srs": np.zeros((2, 3), np.float32)}
    np.testing.assert_allclose(rewards.combine(parts, "mix", {"cooccurrence": 0.25, "srs": 0.75}), 0.25)
    assert rewards.sources_for("mix", {"cooccurrence": 0.5, "srs": 0.0}) == ["cooccurrence"]
    with pytest.raises(KeyError, match="unknown reward"):
        rewards.combine(parts, "bogus", {})


def test_advantages():
    r = np.array([[1.0, 2.0, 3.0], [5.0, 5.0, 5.0]])
    a = advantages.compute("grpo", r)
    np.testing.assert_allclose(a[0], [-1, 0, 1], atol=1e-5)  # std (ddof 1) of 1,2,3 is 1
    np.testing.assert_allclose(a[1], 0, atol=1e-6)  # equal rewards -> no signal, no NaN
    b = advantages.compute("anchor", r)
    diff = np.array([[0, 1, 2], [0, 0, 0.0]])
    np.testing.assert_allclose(b, diff / (diff.std() + 1e-6), rtol=1e-5)
    with pytest.raises(ValueError, match="group >= 2"):
        advantages.compute("grpo", np.ones((3, 1)))


def test_clipped_terms_asymmetric_clip():
    new = torch.log(torch.tensor([1.5, 1.5, 0.5, 0.5, 1.1]))
    old = torch.zeros(5)
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0, 1.0])
    per, clipped = clipped_terms(new, old, adv, clip_low=0.2, clip_high=0.28)
    # A>0, ratio 1.5 -> clipped at 1.28; A<0, ratio 1.5 -> unclipped 1.5; A>0 ratio .5 -> .5; A<0 ratio .5 -> .8
    np.testing.assert_allclose(per.numpy(), [-1.28, 1.5, -0.5, 0.8, -1.1], rtol=1e-6)
    assert clipped.tolist() == [True, False, False, True, False]


def test_gaussian_logprob_ratio_and_loss():
    mu = torch.tensor([[0.0, 0.0]])
    actions = torch.tensor([[[0.1, 0.0], [0.0, -0.2]]])
    lp = gaussian_logprob(actions, mu, sigma=0.1)
    np.testing.assert_allclose(lp.numpy(), [[-0.5, -2.0]], rtol=1e-6)
    mu_new = torch.tensor([[0.1, 0.0]], requires_grad=True)  # moves towards sample 0
    adv = torch.tensor([[1.0, -1.0]])
    loss, frac = gaussian_loss(actions, mu_new, lp, adv, 0.1, 0.2, 0.28)
    # new logps: sample0 0 -> ratio e^0.5 (clip 1.28), sample1 -(0.01+0.04)/0.02=-2.5 -> ratio e^-0.5 (A<0: .8)
    expected = (-1.28 + max(math.exp(-0.5), 0.8)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-5) and frac.item() == 1.0
    assert gaussian_kl(mu_new, mu, 0.1).item() == pytest.approx(0.5)


def test_paper_loss_equals_full_token_mean_with_shifted_logits():
    """The efficient paper surrogate against a full forward scoring every shifted prompt token."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    lm = LlamaForCausalLM(LlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=1,
                                      num_key_value_heads=1, intermediate_size=64, vocab_size=50)).eval()
    ids = torch.randint(1, 50, (2, 7))
    mask = torch.ones_like(ids); mask[0, :3] = 0  # left padding
    m, g = 2, 3
    mu_old = torch.randn(m, 64)
    eps = 0.1 * torch.randn(m, g, 64)
    mu_new = (mu_old + 0.05 * torch.randn(m, 64)).requires_grad_()
    adv = torch.randn(m, g)
    with torch.no_grad():
        old = thought_token_logprob(lm, ids, mask, mu_old[:, None] + eps)
    new = thought_token_logprob(lm, ids, mask, mu_new[:, None] + eps)
    n_targets = mask[:, 1:].sum(1)
    loss, _ = paper_loss(new, old, adv, n_targets, 0.2, 0.28)

    def full_token_logps(mu):  # reference: every shifted token of every sample
        out = []
        for i in range(m):
            for k in range(g):
                emb = lm.get_input_embeddings()(ids[i:i + 1]).clone()
                emb[0, -2] = mu[i] + eps[i, k]
                pos = (mask[i:i + 1].cumsum(-1) - 1).clamp(min=0)
                logits = lm(inputs_embeds=emb, attention_mask=mask[i:i + 1], position_ids=pos).logits[0, :-1]
                out.append(torch.log_softmax(logits, -1).gather(1, ids[i, 1:, None])[:, 0])
        return torch.stack(out).view(m, g, -1)

    with torch.no_grad():
        ref_old = full_token_logps(mu_old)
    ref_new = full_token_logps(mu_new)
    per, _ = clipped_terms(ref_new, ref_old, adv[..., None], 0.2, 0.28)
    tmask = mask[:, None, 1:].expand_as(per).float()
    ref_loss = (per * tmask).sum() / tmask.sum()
    assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-4, abs=1e-6)
    gl, = torch.autograd.grad(loss, mu_new)
    gr, = torch.autograd.grad(ref_loss, mu_new)
    torch.testing.assert_close(gl, gr, rtol=1e-3, atol=1e-6)


def test_nearest_neighbours_by_centred_cosine_in_blocks():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 6)) * 3
    items = np.concatenate([c + 0.1 * rng.normal(size=(5, 6)) for c in centres]) + 30.0
    table = np.concatenate([np.zeros((1, 6)), items])
    from reaemb_ray.rl.candidates import nearest_neighbours

    nn = nearest_neighbours(table, 4, block=3)
    assert nn.shape == (21, 4) and (nn[0] == 0).all()
    for v in range(1, 21):
        assert v not in nn[v] and set(((nn[v] - 1) // 5).tolist()) == {(v - 1) // 5}  # the own cluster


def test_hard_negatives_come_from_unrelated_neighbours():
    from reaemb_ray.rl.candidates import nearest_neighbours

    # items 1-10; 1 co-occurs with 2; its nearest neighbours in the table are 2, 3, 4 (then the rest)
    table = np.zeros((11, 3))
    table[1:] = [[1, 0, 0], [.99, .1, 0], [.98, .15, 0], [.97, .2, 0], [0, 1, 0], [0, .9, .1],
                 [0, 0, 1], [0, .1, .9], [-1, 0, 0], [-.9, 0, -.1]]
    nn = nearest_neighbours(table, 3)
    assert nn[1].tolist() == [2, 3, 4]
    cand = cooccurrence_candidates([1, 2], [2, 1], [4, 4], num_items=10, num_positives=1, num_negatives=4,
                                   seed=0, neighbours=nn, hard_negatives=2)
    ids, _ = cand.lookup([1])
    assert ids[0, 0] == 2 and set(ids[0, 1:3]) == {3, 4}  # the two unrelated neighbours, not the partner
    assert len(set(ids[0])) == 5 and not set(ids[0, 1:]) & {1, 2}
    with pytest.raises(ValueError, match="hard"):
        cooccurrence_candidates([1, 2], [2, 1], [4, 4], 10, 1, 4, hard_negatives=2)


def test_batch_center_is_the_mean_candidate_over_every_source():
    rng = np.random.default_rng(0)
    co, srs = rng.normal(size=(3, 4, 5)), rng.normal(size=(3, 2, 5))
    center = rewards.batch_center({"cooccurrence": co, "srs": srs})
    np.testing.assert_allclose(center, np.concatenate([co.reshape(-1, 5), srs.reshape(-1, 5)]).mean(0))
    # shifting every embedding by a common offset leaves centred-cosine rewards unchanged; dot rewards change
    emb, w = rng.normal(size=(3, 2, 5)), np.eye(4)[[0, 1, 2]]
    shift = 10 * rng.normal(size=5)
    r = lambda e, c, s: rewards.score_and_reward(e, c, w, "infonce", s, rewards.batch_center({"co": c}))
    np.testing.assert_allclose(r(emb, co, "centered_cosine"), r(emb + shift, co + shift, "centered_cosine"), atol=1e-5)
    assert not np.allclose(r(emb, co, "dot"), r(emb + shift, co + shift, "dot"), atol=1e-3)
