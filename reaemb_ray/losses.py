"""Soft-target symmetric contrastive loss of LRCL (METHOD.md): no L2 normalisation, learnable tau."""
from __future__ import annotations

import torch


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
