"""Where a recommender's item vectors come from: learned IDs, or a frozen external table through an adapter.

Every backbone asks its `ItemEncoder` for item vectors, so swapping ID embeddings for LLM embeddings
changes nothing else. The optional LLMEmb alignment loss pulls adapted LLM vectors towards a pretrained
ID-SASRec item table.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from torch import nn

from reaemb_ray.srs.metrics import TensorRows


def pca_fit_transform(x: np.ndarray, dim: int) -> np.ndarray:
    """Project the centred rows of `x` on their top-`dim` principal directions (SVD, deterministic signs)."""
    xc = x - x.mean(0, keepdims=True)
    _, _, vt = np.linalg.svd(xc.astype(np.float64), full_matrices=False)
    vt = vt[:dim]
    vt *= np.sign(vt[np.arange(len(vt)), np.abs(vt).argmax(1)])[:, None]  # sign convention: max |entry| > 0
    return (xc @ vt.T).astype(np.float32)


def load_embedding_table(path: str | Path, num_items: int, pca_dim: int = 0) -> np.ndarray:
    """Read `embeddings.parquet` (item_id, vector) -> (num_items + 1, d) float32, row = item id, row 0 zeros.

    The table must hold every item 1..num_items exactly once, all vectors the same length, all finite.
    Tables wider than `pca_dim` (> 0) are reduced by PCA fitted on the table itself.
    The file is read one row group at a time (`iter_batches` was measured to buffer most of the file), each
    vector column as one flat buffer (no per-row Python objects), straight into its rows of the result.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"embedding table {path} does not exist")
    file = pq.ParquetFile(path)
    names = file.schema_arrow.names
    if "item_id" not in names or "vector" not in names:
        raise ValueError(f"{path}: needs columns item_id and vector, found {names}")
    mat, seen, dims = None, np.zeros(num_items + 1, np.int64), set()
    extra: list[int] = []
    batches = (b for g in range(file.num_row_groups) for b in file.read_row_group(g, ["item_id", "vector"]).to_batches())
    for batch in batches:
        ids = batch.column(0).to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
        col = batch.column(1)
        dims |= set(pc.unique(pc.list_value_length(col)).drop_null().to_pylist())
        if col.null_count or len(dims) != 1:
            raise ValueError(f"{path}: every vector must be present and of one length, found lengths {sorted(dims)}")
        dim = next(iter(dims))
        vecs = np.asarray(col.flatten().to_numpy(zero_copy_only=False), np.float32).reshape(len(ids), dim)
        if not np.isfinite(vecs).all():
            bad = ids[~np.isfinite(vecs).all(1)][:5].tolist()
            raise ValueError(f"{path}: vectors contain NaN/inf (item ids {bad} ...); re-run the stage that wrote it")
        inside = (ids >= 1) & (ids <= num_items)
        extra += ids[~inside][:5].tolist()
        if mat is None:
            mat = np.zeros((num_items + 1, dim), np.float32)
        mat[ids[inside]] = vecs[inside]
        np.add.at(seen, ids[inside], 1)
    if (seen > 1).any() or len(extra) != len(set(extra)):
        raise ValueError(f"{path}: duplicate item ids; each item must appear exactly once")
    missing = np.flatnonzero(seen[1:] == 0) + 1
    if len(missing):
        raise ValueError(
            f"{path}: {len(missing)} item ids of 1..{num_items} are missing (e.g. {missing[:5].tolist()}); "
            "the table was exported for another prepared dataset -- re-run export"
        )
    if extra:
        raise ValueError(f"{path}: item ids outside 1..{num_items} (e.g. {extra[:5]})")
    if pca_dim and mat.shape[1] > pca_dim:
        rows = pca_fit_transform(mat[1:], pca_dim)
        mat = np.concatenate([np.zeros((1, rows.shape[1]), np.float32), rows])
    return mat


def condition_table(table: np.ndarray, steps: list[str], dim: int = 0) -> tuple[np.ndarray, dict]:
    """`srs.conditioning`: the item rows (1..N) of a loaded table conditioned by `steps` (conditioning.apply:
    statistics over the items only), row 0 (padding) kept zero. No steps: the table unchanged, an empty record."""
    if not steps:
        return table, {}
    from reaemb_ray import conditioning

    rows, record = conditioning.apply(table[1:], steps, dim)
    return np.concatenate([np.zeros((1, rows.shape[1]), np.float32), rows]), record


class ItemEncoder(nn.Module):
    """Maps item ids (any shape, 0 = padding) to vectors (..., hidden); padding maps to zeros."""

    num_items: int
    hidden: int

    def table(self) -> torch.Tensor:
        """(num_items + 1, hidden): every item's vector, row = id."""
        return self(torch.arange(self.num_items + 1, device=self.device))

    def rows(self):
        """The table as row blocks for ranking (`srs.metrics.ranks_in_blocks`), without autograd. Default: the
        whole table; encoders that compute their table from a frozen one give it a block at a time."""
        with torch.no_grad():
            return TensorRows(self.table())

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device


class IDEncoder(ItemEncoder):
    """A trainable table, N(0, 0.02) like RecBole's SASRec, or the rows of `init` (llm_init)."""

    def __init__(self, num_items: int, hidden: int, init: np.ndarray | None = None):
        super().__init__()
        self.num_items, self.hidden = num_items, hidden
        # sparse gradients: a batch touches a few hundred of N rows, and a dense (N+1, h) gradient per lookup
        # (3 lookups per chunk) cost more than the model itself; the trainer densifies once before Adam
        self.emb = nn.Embedding(num_items + 1, hidden, padding_idx=0, sparse=True)
        nn.init.normal_(self.emb.weight, std=ID_INIT_STD)
        with torch.no_grad():
            if init is not None:
                self.emb.weight.copy_(torch.as_tensor(init, dtype=torch.float32))
            self.emb.weight[0].zero_()

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.emb(ids)

    def table(self) -> torch.Tensor:
        return self.emb.weight


TABLE_BLOCK_ROWS = 1 << 15  # items run through the adapter at once when no gradient is needed


class BlockRows:
    """An encoder's table as row blocks of TABLE_BLOCK_ROWS, each computed (`encoder.table_block`) when asked:
    ranking a 1M-item catalogue holds one block of the adapted table, not all of it beside the frozen one."""

    def __init__(self, encoder: "ItemEncoder"):
        self.encoder, self.num_rows, self.grid = encoder, encoder.num_items + 1, TABLE_BLOCK_ROWS

    def block(self, lo: int) -> torch.Tensor:
        with torch.no_grad():
            return self.encoder.table_block(lo, min(lo + self.grid, self.num_rows))


class ExternalEncoder(ItemEncoder):
    """`frozen_adapter` (ReaEmb, LLMEmb): frozen table (N+1, d) -> Linear(d, adapter_hidden) -> Linear(.., hidden)."""

    def __init__(self, table: np.ndarray, hidden: int, adapter_hidden: int = 256):
        super().__init__()
        self.num_items, self.hidden = table.shape[0] - 1, hidden
        self.register_buffer("frozen", torch.as_tensor(table, dtype=torch.float32))
        self.adapter = nn.Sequential(nn.Linear(table.shape[1], adapter_hidden), nn.Linear(adapter_hidden, hidden))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out = self.adapter(self.frozen[ids])
        return out * (ids != 0).unsqueeze(-1).to(out.dtype)

    def table_block(self, lo: int, hi: int) -> torch.Tensor:
        """Rows lo..hi-1 of the table, the adapter over that slice of the frozen table (no gathered copy)."""
        out = self.adapter(self.frozen[lo:hi])
        if lo == 0:
            out[0] = 0  # padding, as forward's mask makes it
        return out

    def table(self) -> torch.Tensor:
        """Every item's vector; without autograd, blocks of rows go through the adapter into one result, so
        neither a gathered copy of the frozen table nor the (N+1, adapter_hidden) activation is ever whole."""
        if torch.is_grad_enabled():  # training: the loss backpropagates through every row
            return super().table()
        out = torch.empty(self.num_items + 1, self.hidden, device=self.frozen.device)
        for lo in range(0, len(out), TABLE_BLOCK_ROWS):
            out[lo:lo + TABLE_BLOCK_ROWS] = self.table_block(lo, min(lo + TABLE_BLOCK_ROWS, len(out)))
        return out

    def rows(self) -> BlockRows:
        return BlockRows(self)


class FusionEncoder(ItemEncoder):
    """`fusion`: the frozen table through the adapter plus a trainable ID residual, e_i = A(x_i) + u_i.

    The residual starts at zero, so training starts from the semantic view (every item, tail items included,
    has a meaningful vector) and popular items, whose rows get many gradient steps, move away from it where
    the interactions say so: the dual-view idea of LLM-ESR in its simplest additive form.
    """

    def __init__(self, table: np.ndarray, hidden: int, adapter_hidden: int = 256):
        super().__init__()
        self.semantic = ExternalEncoder(table, hidden, adapter_hidden)
        self.num_items, self.hidden = self.semantic.num_items, hidden
        self.residual = nn.Embedding(self.num_items + 1, hidden, padding_idx=0, sparse=True)
        nn.init.zeros_(self.residual.weight)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.semantic(ids) + self.residual(ids)

    def table(self) -> torch.Tensor:
        if torch.is_grad_enabled():
            return super().table()
        return self.semantic.table().add_(self.residual.weight)  # forward's sum, every row at once

    def table_block(self, lo: int, hi: int) -> torch.Tensor:
        return self.semantic.table_block(lo, hi).add_(self.residual.weight[lo:hi])

    def rows(self) -> BlockRows:
        return BlockRows(self)


ID_INIT_STD = 0.02


def llm_init_rows(table: np.ndarray, hidden: int, std: float = ID_INIT_STD) -> np.ndarray:
    """`llm_init`: the item rows (1..N) PCA-whitened to `hidden` dimensions, scaled to std `std` per entry
    (the ID initialisation's scale, so the optimiser sees the usual magnitudes); row 0 stays zero.

    Whitening keeps the semantic geometry (who is near whom) while giving each of the `hidden` directions the
    same variance; a raw projection would hand most of the variance to the shared-template direction.
    """
    from reaemb_ray import conditioning

    items = np.asarray(table[1:], dtype=np.float64)
    if hidden > min(items.shape):
        raise ValueError(f"llm_init needs srs.hidden ({hidden}) <= min(items, table width) = {min(items.shape)}")
    z, _ = conditioning.apply(items, ["whiten"], hidden)
    if z.shape[1] < hidden:
        raise ValueError(f"the embedding table has only {z.shape[1]} non-degenerate directions; lower srs.hidden")
    return np.concatenate([np.zeros((1, hidden), np.float32), (z * std).astype(np.float32)])


ITEM_ENCODERS = ("frozen_adapter", "llm_init", "fusion")


def build_encoder(num_items: int, hidden: int, table: np.ndarray | None, adapter_hidden: int = 256,
                  kind: str = "frozen_adapter", init_std: float = ID_INIT_STD) -> ItemEncoder:
    """Learned IDs when `table` is None (the `id` method), else the table fed in by `kind` (srs.item_encoder)."""
    if table is None:
        return IDEncoder(num_items, hidden)
    if table.shape[0] != num_items + 1:
        raise ValueError(f"embedding table has {table.shape[0] - 1} items, the data has {num_items}")
    if kind == "frozen_adapter":
        return ExternalEncoder(table, hidden, adapter_hidden)
    if kind == "llm_init":
        return IDEncoder(num_items, hidden, init=llm_init_rows(table, hidden, init_std))
    if kind == "fusion":
        return FusionEncoder(table, hidden, adapter_hidden)
    raise KeyError(f"unknown srs.item_encoder {kind!r}; use one of {', '.join(ITEM_ENCODERS)}")


def alignment_loss(adapted: torch.Tensor, pretrained: torch.Tensor, tau: float, form: str = "soft") -> torch.Tensor:
    """LLMEmb-style alignment of the recommender's item vectors to a pretrained ID-SASRec's rows.

    adapted, pretrained: (M, h) rows for the same M distinct items; row i of each is the positive pair, the
    other items of the batch are negatives.
    - `soft` (LLMEmb's published form): the unnormalised soft-target symmetric contrastive loss of LRCL
      (reaemb_ray.losses.soft_contrastive_loss) on raw dot products at temperature tau.
    - `cosine`: symmetric InfoNCE on cosine similarities / tau. At tau 2 the logits lie in [-0.5, 0.5] and
      the loss is almost constant (log M): it only trains at small tau (e.g. 0.1).
    """
    from reaemb_ray.losses import soft_contrastive_loss

    if adapted.shape != pretrained.shape:
        raise ValueError(
            f"alignment needs equal shapes, got adapted {tuple(adapted.shape)} vs pretrained {tuple(pretrained.shape)}; "
            "the pretrained ID-SASRec must use the same srs.hidden"
        )
    if form == "soft":
        return soft_contrastive_loss(adapted, pretrained, tau)
    if form != "cosine":
        raise KeyError(f"unknown alignment form {form!r}; use soft or cosine")
    logits = F.normalize(adapted, dim=-1) @ F.normalize(pretrained, dim=-1).T / tau
    target = torch.arange(len(logits), device=logits.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
