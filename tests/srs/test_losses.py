"""The next-item objectives (srs/losses.py) against their definitions, computed by hand."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from reaemb_ray.srs import losses
from reaemb_ray.srs.encoders import IDEncoder

N, D = 12, 5


@pytest.fixture
def setup():
    torch.manual_seed(0)
    enc = IDEncoder(N, D)
    with torch.no_grad():
        enc.emb.weight.normal_()
        enc.emb.weight[0].zero_()
    h = torch.randn(6, D)
    pos = torch.tensor([1, 4, 4, 7, 12, 3])
    return enc, h, pos


def test_ce_is_the_softmax_over_real_items_only(setup):
    enc, h, pos = setup
    scores = h @ enc.emb.weight[1:].T  # items 1..N, no padding column
    expected = (torch.logsumexp(scores, 1) - scores[torch.arange(6), pos - 1]).mean()
    assert losses.compute("ce", h, pos, enc).item() == pytest.approx(expected.item(), rel=1e-6)


def test_sampled_softmax_over_the_whole_catalogue_equals_ce(setup):
    enc, h, pos = setup
    every_item = torch.arange(1, N + 1)  # each row's own target is masked out of the shared negatives
    got = losses.compute("sampled_softmax", h, pos, enc, every_item)
    assert got.item() == pytest.approx(losses.compute("ce", h, pos, enc).item(), rel=1e-6)


def test_sampled_softmax_hand_computed_with_a_collision(setup):
    enc, h, pos = setup
    neg = torch.tensor([4, 9])  # item 4 is the target of rows 1 and 2: masked there
    e = enc.emb.weight
    total = 0.0
    for i in range(6):
        cands = [int(pos[i])] + [j for j in neg.tolist() if j != int(pos[i])]
        s = torch.stack([h[i] @ e[j] for j in cands])
        total += -(s[0] - torch.logsumexp(s, 0)).item()
    assert losses.compute("sampled_softmax", h, pos, enc, neg).item() == pytest.approx(total / 6, rel=1e-5)


def test_gbce_beta_matches_gsasrec():
    assert losses.beta_gbce(10, 101, 0.75) == pytest.approx(0.1 * (0.75 * (1 - 10) + 10))  # 0.325
    assert losses.beta_gbce(10, 101, 0.0) == pytest.approx(1.0)  # t = 0: plain BCE
    assert losses.beta_gbce(10, 101, 1.0) == pytest.approx(0.1)  # t = 1: beta = alpha
    assert losses.beta_gbce(500, 101, 0.75) == pytest.approx(1.0)  # every item a negative


def test_gbce_hand_computed(setup):
    enc, h, pos = setup
    neg = torch.tensor([2, 4, 9])
    e, beta = enc.emb.weight, losses.beta_gbce(3, N, 0.5)
    total = 0.0
    for i in range(6):
        sp = (h[i] @ e[pos[i]]).item()
        total += -beta * math.log(1 / (1 + math.exp(-sp)))
        for j in neg.tolist():
            if j != int(pos[i]):
                total += -math.log(1 - 1 / (1 + math.exp(-(h[i] @ e[j]).item())))
    got = losses.compute("gbce", h, pos, enc, neg, num_items=N, gbce_t=0.5)
    assert got.item() == pytest.approx(total / 6, rel=1e-5)


def test_bce_is_one_negative_per_position(setup):
    enc, h, pos = setup
    neg = torch.tensor([2, 2, 5, 1, 1, 8])
    e = enc.emb.weight
    sp, sn = (h * e[pos]).sum(-1), (h * e[neg]).sum(-1)
    expected = (F.binary_cross_entropy_with_logits(sp, torch.ones(6), reduction="none")
                + F.binary_cross_entropy_with_logits(sn, torch.zeros(6), reduction="none")).mean()
    assert losses.compute("bce", h, pos, enc, neg).item() == pytest.approx(expected.item(), rel=1e-6)


def test_auto_picks_full_softmax_for_catalogues_that_fit():
    assert losses.resolve("auto", 12_101) == "ce"
    assert losses.resolve("auto", 5_000_000) == "sampled_softmax"
    assert losses.resolve("gbce", 10) == "gbce"
    with pytest.raises(KeyError, match="srs.loss"):
        losses.resolve("softmax", 10)
    with pytest.raises(ValueError, match="needs negatives"):
        losses.compute("gbce", torch.zeros(2, D), torch.tensor([1, 2]), IDEncoder(N, D))


def test_shared_negatives_are_seeded_items():
    a = losses.shared_negatives(N, 50, np.random.default_rng(3))
    assert (a == losses.shared_negatives(N, 50, np.random.default_rng(3))).all()
    assert a.min() >= 1 and a.max() <= N
