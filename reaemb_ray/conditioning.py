"""Conditioning of an item-embedding table before a recommender reads it, by name.

Mean-pooled LM embeddings are nearly parallel (on SmolLM2 with the chat template the mean pairwise cosine
is 0.987: half of every pooled vector is the shared template), so a dot product between two items mostly
measures their norms. Each step below maps X (n, d), one row per item, to a new table:

- `center`: X - mean(X). Removes the shared component; what centred cosine in CRRL's reward also does.
- `standardize`: (X - mean) / std per dimension (z-scores).
- `whiten`: PCA whitening, Z = (X - mean) V_k / (s_k / sqrt(n)) with X - mean = U S V^T: the top-k principal
  directions, each scaled to unit variance (WhitenRec; AlphaFuse standardises by the singular values the same
  way). Z^T Z / n = I. k = `dim` (0 keeps every direction with a non-negligible singular value).
- `pca`: the same projection without the scaling (variances kept): Z = (X - mean) V_k.
- `l2`: each row divided by its norm (rows of zeros stay zero).

`apply(table, steps, dim)` runs the steps in order (e.g. ["whiten", "l2"]) and returns the table and a
record of what was done, which travels with the table (export writes it into the Parquet metadata).
Signs of principal directions are fixed (largest |entry| positive) so the output is deterministic.
"""
from __future__ import annotations

import numpy as np

EPS = 1e-8


def _pca(x: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean (d,), directions V_k (d, k), singular values s_k (k,)) of the rows of x."""
    mean = x.mean(0)
    _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
    keep = s > s[0] * 1e-6 if len(s) else s.astype(bool)  # drop numerically empty directions
    k = int(keep.sum()) if dim == 0 else min(dim, int(keep.sum()))
    vt = vt[:k]
    vt = vt * np.sign(vt[np.arange(k), np.abs(vt).argmax(1)])[:, None]
    return mean, vt.T, s[:k]


def center(x: np.ndarray, dim: int = 0) -> np.ndarray:
    return x - x.mean(0)


def standardize(x: np.ndarray, dim: int = 0) -> np.ndarray:
    return (x - x.mean(0)) / (x.std(0) + EPS)


def whiten(x: np.ndarray, dim: int = 0) -> np.ndarray:
    mean, v, s = _pca(x, dim)
    return (x - mean) @ v / (s / np.sqrt(len(x)) + EPS)


def pca(x: np.ndarray, dim: int = 0) -> np.ndarray:
    mean, v, _ = _pca(x, dim)
    return (x - mean) @ v


def l2(x: np.ndarray, dim: int = 0) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


STEPS = {"center": center, "standardize": standardize, "whiten": whiten, "pca": pca, "l2": l2}
REDUCING = ("whiten", "pca")  # the steps that use `dim`


def validate(steps: list[str], dim: int = 0) -> None:
    unknown = [s for s in steps if s not in STEPS]
    if unknown:
        raise KeyError(f"unknown conditioning step {unknown[0]!r}; use any of {sorted(STEPS)} in order")
    if dim and not any(s in REDUCING for s in steps):
        raise ValueError(f"a dimension ({dim}) needs a reducing step ({', '.join(REDUCING)})")
    if sum(s in REDUCING for s in steps) > 1:
        raise ValueError("use at most one of whiten / pca")


def apply(table: np.ndarray, steps: list[str], dim: int = 0) -> tuple[np.ndarray, dict]:
    """Condition `table` (n, d) by `steps` in order; returns (float32 table, record of what was done)."""
    validate(steps, dim)
    x = np.asarray(table, dtype=np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"conditioning needs a table of at least 2 rows, got shape {x.shape}")
    for step in steps:
        x = STEPS[step](x, dim)
    return x.astype(np.float32), {"steps": list(steps), "dim": int(x.shape[1]), "input_dim": int(table.shape[1])}


def mean_pairwise_cosine(x: np.ndarray, sample: int = 2000, seed: int = 0) -> float:
    """Anisotropy: mean cosine over distinct pairs of (a sample of) the rows."""
    x = np.asarray(x, dtype=np.float64)
    if len(x) > sample:
        x = x[np.random.default_rng(seed).choice(len(x), sample, replace=False)]
    u = l2(x)
    c = u @ u.T
    n = len(u)
    return float((c.sum() - np.trace(c)) / (n * (n - 1)))
