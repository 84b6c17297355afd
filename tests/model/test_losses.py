import math

import pytest
import torch

from reaemb_ray.losses import soft_contrastive_loss


def reference(x, y, tau):
    B = x.shape[0]
    x, y = x.double().tolist(), y.double().tolist()
    dot = lambda a, b: sum(p * q for p, q in zip(a, b))
    logits = [[dot(x[i], y[j]) / tau for j in range(B)] for i in range(B)]
    sim = [[(dot(x[i], x[j]) + dot(y[i], y[j])) / (2 * tau) for j in range(B)] for i in range(B)]

    def softmax(row):
        m = max(row)
        e = [math.exp(v - m) for v in row]
        return [v / sum(e) for v in e]

    T = [softmax(r) for r in sim]
    total = 0.0
    for i in range(B):
        p_row = softmax(logits[i])
        p_col = softmax([logits[j][i] for j in range(B)])  # row i of logits^T
        ce1 = -sum(T[i][j] * math.log(p_row[j]) for j in range(B))
        ce2 = -sum(T[j][i] * math.log(p_col[j]) for j in range(B))  # row i of T^T
        total += 0.5 * (ce1 + ce2)
    return total / B


@pytest.mark.parametrize("tau", [1.0, 0.3])
def test_loss_matches_loop_reference(tau):
    torch.manual_seed(0)
    x, y = torch.randn(5, 7), torch.randn(5, 7)
    assert soft_contrastive_loss(x, y, tau).item() == pytest.approx(reference(x, y, tau), rel=1e-5)


def test_loss_prefers_aligned_views_and_has_tau_gradient():
    torch.manual_seed(1)
    x = torch.randn(6, 4)
    tau = torch.tensor(0.5, requires_grad=True)
    aligned = soft_contrastive_loss(x, x + 0.01 * torch.randn_like(x), tau)
    shuffled = soft_contrastive_loss(x, x[torch.randperm(6)], tau)
    assert aligned < shuffled
    aligned.backward()
    assert tau.grad is not None and torch.isfinite(tau.grad)


def test_loss_rejects_mismatched_views():
    with pytest.raises(ValueError, match="two \\(B, d\\) views"):
        soft_contrastive_loss(torch.randn(3, 4), torch.randn(2, 4), 1.0)


def test_centered_cosine_is_the_soft_loss_on_centred_unit_rows():
    from reaemb_ray.losses import contrastive_loss

    torch.manual_seed(0)
    x, y = torch.randn(5, 4) + 10, torch.randn(5, 4) + 10
    mean = torch.cat([x, y]).mean(0)
    xn = (x - mean) / (x - mean).norm(dim=1, keepdim=True)
    yn = (y - mean) / (y - mean).norm(dim=1, keepdim=True)
    assert contrastive_loss(x, y, 0.1, "centered_cosine").item() == pytest.approx(reference(xn, yn, 0.1), rel=1e-5)
    assert contrastive_loss(x, y, 50.0, "dot").item() == pytest.approx(reference(x, y, 50.0), rel=1e-4)
    with pytest.raises(KeyError, match="lrcl.similarity"):
        contrastive_loss(x, y, 0.1, "cos")


def test_view_retrieval_counts_items_that_find_their_own_second_view():
    from reaemb_ray.losses import view_retrieval_top1

    torch.manual_seed(0)
    base = torch.randn(8, 16) + 5.0  # a shared offset, as pooled LM embeddings have
    assert view_retrieval_top1(base + 0.01 * torch.randn(8, 16), base) == 1.0
    swapped = base.clone()
    swapped[[0, 1]] = swapped[[1, 0]]
    assert view_retrieval_top1(base, swapped) == pytest.approx(6 / 8)
