"""Soft-target symmetric contrastive loss of LRCL (METHOD.md): no L2 normalisation, learnable tau."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_contrastive_loss(x: torch.Tensor, y: torch.Tensor, tau: torch.Tensor | float) -> torch.Tensor:
    """Views X, Y (B, d) of the same B items; row i of X and row i of Y are positives.

    logits = X Y^T / tau; T = softmax_row((X X^T + Y Y^T) / (2 tau));
    L = mean_i 1/2 [CE(T_i, softmax(logits)_i) + CE(T^T_i, softmax(logits^T)_i)], CE(p, q) = -sum_j p_j log q_j.
    The targets are soft: near-duplicate items in the batch are not pushed apart as hard negatives.
    """
    if x.shape != y.shape or x.dim() != 2:
        raise ValueError(f"soft_contrastive_loss needs two (B, d) views of equal shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    x, y = x.float(), y.float()
    logits = x @ y.T / tau
    targets = torch.softmax((x @ x.T + y @ y.T) / (2 * tau), dim=-1)
    loss_xy = -(targets * torch.log_softmax(logits, dim=-1)).sum(-1)
    loss_yx = -(targets.T * torch.log_softmax(logits.T, dim=-1)).sum(-1)
    return 0.5 * (loss_xy + loss_yx).mean()


SIMILARITIES = ("dot", "centered_cosine")


def center_and_normalize(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Subtract the mean of all 2B rows (an estimate of the catalogue mean: the shared template's component,
    which dominates raw LM embeddings) and L2-normalise each row."""
    mean = torch.cat([x, y]).float().mean(0, keepdim=True)
    return F.normalize(x.float() - mean, dim=-1), F.normalize(y.float() - mean, dim=-1)


def contrastive_loss(x: torch.Tensor, y: torch.Tensor, tau, similarity: str = "dot") -> torch.Tensor:
    """LRCL's loss on two views: `dot` is the published soft-target loss on raw dot products (logits ~1000 on
    SmolLM2 at tau 1: the softmax is saturated); `centered_cosine` runs the same loss on centred, normalised
    rows, so logits lie in [-1/tau, 1/tau] and a tau around 0.05 is the usual scale."""
    if similarity == "centered_cosine":
        x, y = center_and_normalize(x, y)
    elif similarity != "dot":
        raise KeyError(f"unknown lrcl.similarity {similarity!r}; use one of {', '.join(SIMILARITIES)}")
    return soft_contrastive_loss(x, y, tau)


@torch.no_grad()
def view_retrieval_top1(x: torch.Tensor, y: torch.Tensor) -> float:
    """Share of items whose first view retrieves its own second view as the nearest of all second views
    (centred cosine): how well embeddings tell items apart from a partial description."""
    xn, yn = center_and_normalize(x, y)
    return float(((xn @ yn.T).argmax(1) == torch.arange(len(x), device=x.device)).float().mean())
