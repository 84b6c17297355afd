"""SASRec, GRU4Rec and Bert4Rec behind one RecBole-like interface.

Conventions: item ids 1..N, 0 is padding. `forward` accepts left- or right-padded (B, L) sequences and
right-aligns them internally (positions then count from the first item, so the batch width never changes a
row's result). All item vectors come from an `ItemEncoder`, so ID and LLM embeddings share everything else.
"""
from __future__ import annotations

import abc

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from reaemb_ray.srs import losses
from reaemb_ray.srs.encoders import ItemEncoder, alignment_loss


def right_align(seq: torch.Tensor) -> torch.Tensor:
    """Move each row's non-zero ids to the front, keeping their order (left padding -> right padding)."""
    order = torch.sort((seq == 0).to(torch.int8), dim=1, stable=True).indices
    return seq.gather(1, order)


def keep_last(seq: torch.Tensor, max_len: int) -> torch.Tensor:
    """Right-aligned (B, L) -> (B, <= max_len) keeping each row's last `max_len` items."""
    if seq.size(1) <= max_len:
        return seq
    lengths = (seq != 0).sum(1, keepdim=True)
    idx = (lengths - max_len).clamp(min=0) + torch.arange(max_len, device=seq.device)
    return seq.gather(1, idx.clamp(max=seq.size(1) - 1)) * (torch.arange(max_len, device=seq.device) < lengths)


def sample_negatives(pos: np.ndarray, num_items: int, rng: np.random.Generator) -> np.ndarray:
    """One uniform negative in 1..N per positive (0 where pos is padding), never equal to that positive."""
    neg = rng.integers(1, num_items + 1, size=pos.shape)
    clash = neg == pos
    while clash.any():  # a handful of redraws at most
        neg[clash] = rng.integers(1, num_items + 1, size=int(clash.sum()))
        clash = neg == pos
    return neg * (pos != 0)


class SequentialRecommender(nn.Module, abc.ABC):
    """Base class: user representation from a sequence, dot-product scores against the item table."""

    def __init__(self, encoder: ItemEncoder, hidden: int, max_len: int):
        super().__init__()
        self.encoder, self.hidden, self.max_len = encoder, hidden, max_len
        self.num_items = encoder.num_items
        self.align_alpha, self.align_tau, self.align_form = 0.0, 1.0, "soft"
        self.register_buffer("align_table", None, persistent=False)

    def set_alignment(self, table: np.ndarray, alpha: float, tau: float, form: str = "soft") -> None:
        """Add alpha * alignment_loss(adapted item vectors, pretrained ID-SASRec rows) to the training loss."""
        if table.shape != (self.num_items + 1, self.hidden):
            raise ValueError(
                f"pretrained ID-SASRec item table is {table.shape}, expected {(self.num_items + 1, self.hidden)}; "
                "re-run the pretrain step with the same data and srs.hidden"
            )
        self.align_table = torch.as_tensor(table, dtype=torch.float32)
        self.align_alpha, self.align_tau, self.align_form = alpha, tau, form

    def item_embeddings(self) -> torch.Tensor:
        return self.encoder.table()

    def item_rows(self):
        """The item table as row blocks for ranking (`srs.encoders.ItemEncoder.rows`)."""
        return self.encoder.rows()

    def full_scores(self, seq: torch.Tensor) -> torch.Tensor:
        """(B, N+1) scores of every item (column 0 is padding; the metrics exclude it)."""
        return self.forward(seq) @ self.item_embeddings().T

    @abc.abstractmethod
    def make_train_batch(self, seqs: list[np.ndarray], rng: np.random.Generator) -> dict[str, torch.Tensor]:
        """Training inputs/targets for a list of sequences."""

    @abc.abstractmethod
    def calculate_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean training loss over the batch's prediction targets."""

    @abc.abstractmethod
    def num_targets(self, batch: dict[str, torch.Tensor]) -> int:
        """How many predictions `calculate_loss` averages over (to weight chunks of one batch)."""

    def max_chunk_tokens(self, chunk_tokens: int) -> int:
        """Tokens per training chunk; a loss with a big score block per token may ask for fewer."""
        return chunk_tokens

    def training_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        loss = self.calculate_loss(batch)
        if self.align_alpha > 0:
            ids = torch.unique(torch.cat([v.flatten() for v in batch.values()]))
            ids = ids[(ids > 0) & (ids <= self.num_items)]
            loss = loss + self.align_alpha * alignment_loss(self.encoder(ids), self.align_table[ids], self.align_tau,
                                                            self.align_form)
        return loss


class Dropout(nn.Module):
    """Inverted dropout like `nn.Dropout`, with the mask drawn by `torch.rand` (uniform float < p drops).

    Same distribution and scaling as `nn.Dropout`; on CPU `bernoulli_` (what `nn.Dropout` and the attention
    dropout of `scaled_dot_product_attention` use) costs about 4x more per element, which made random-number
    generation a third of SASRec's training time.
    """

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = (torch.rand_like(x) >= self.p).to(x.dtype) * (1.0 / (1.0 - self.p))
        return x * keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


# ------------------------------------------------------------------------------------------ next-item models


class NextItemModel(SequentialRecommender):
    """SASRec/GRU4Rec: per-position hidden states trained to score the next item (`srs.loss`, srs/losses.py)."""

    min_train_len = 2  # a training sequence needs an input item and a next item
    loss_name, num_negatives, gbce_t = "bce", 1, 0.75  # set by `build_model` from the config

    def configure_loss(self, name: str, num_negatives: int = 256, gbce_t: float = 0.75) -> None:
        self.loss_name = losses.resolve(name, self.num_items)
        self.num_negatives, self.gbce_t = num_negatives, gbce_t

    @abc.abstractmethod
    def sequence_output(self, seq: torch.Tensor) -> torch.Tensor:
        """Per-position hidden states (B, L, h) of a right-aligned sequence."""

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        seq = keep_last(right_align(seq), self.max_len)
        out = self.sequence_output(seq)
        last = ((seq != 0).sum(1) - 1).clamp(min=0)
        return out[torch.arange(len(seq), device=seq.device), last]

    def make_train_batch(self, seqs, rng):
        # input = train[:-1], target = train[1:]; users with a single training item have no target
        seqs = [s[-(self.max_len + 1):] for s in seqs if len(s) >= 2]
        width = max(len(s) for s in seqs) - 1
        inp = np.zeros((len(seqs), width), np.int64)
        pos = np.zeros_like(inp)
        for i, s in enumerate(seqs):
            inp[i, : len(s) - 1], pos[i, : len(s) - 1] = s[:-1], s[1:]
        batch = {"seq": torch.from_numpy(inp), "pos": torch.from_numpy(pos)}
        kind = losses.NEGATIVES[self.loss_name]
        if kind == "per_position":
            batch["neg"] = torch.from_numpy(sample_negatives(pos, self.num_items, rng))
        elif kind == "shared":  # one set for every chunk of the batch (batch_chunks passes shared_* through)
            batch["shared_neg"] = torch.from_numpy(losses.shared_negatives(self.num_items, self.num_negatives, rng))
        return batch

    def num_targets(self, batch):
        return int((batch["pos"] != 0).sum())

    def max_chunk_tokens(self, chunk_tokens: int) -> int:
        """Full softmax scores (positions x items) per chunk stay within `losses.SCORE_BUDGET` elements."""
        if self.loss_name != "ce":
            return chunk_tokens
        return max(64, min(chunk_tokens, losses.SCORE_BUDGET // (self.num_items + 1)))

    def calculate_loss(self, batch):
        out = self.sequence_output(batch["seq"])
        where = batch["pos"] != 0
        neg = batch["shared_neg"] if "shared_neg" in batch else batch["neg"][where] if "neg" in batch else None
        return losses.compute(self.loss_name, out[where], batch["pos"][where], self.encoder, neg,
                              num_items=self.num_items, gbce_t=self.gbce_t)


class SelfAttentionBlock(nn.Module):
    """SASRec block (pre-LN on the query as in the reference SASRec): attention + point-wise FFN."""

    def __init__(self, hidden: int, heads: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.ln_attn, self.ln_ffn = nn.LayerNorm(hidden, eps=1e-8), nn.LayerNorm(hidden, eps=1e-8)
        self.q, self.kv = nn.Linear(hidden, hidden), nn.Linear(hidden, 2 * hidden)
        self.proj = nn.Linear(hidden, hidden)
        self.ffn = nn.Sequential(nn.Linear(hidden, hidden), Dropout(dropout), nn.ReLU(),
                                 nn.Linear(hidden, hidden), Dropout(dropout))
        self.attn_drop, self.drop = Dropout(dropout), Dropout(dropout)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        """allowed: (B, 1, L, L) bool, True where query i may attend to key j."""
        b, l, h = x.shape
        q_in = self.ln_attn(x)
        q, (k, v) = self.q(q_in), self.kv(x).split(h, -1)
        q, k, v = (t.view(b, l, self.heads, h // self.heads).transpose(1, 2) for t in (q, k, v))
        if self.training and self.attn_drop.p > 0:
            # what scaled_dot_product_attention's math path computes, with the cheaper dropout mask
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.size(-1)))
            a = self.attn_drop(att.masked_fill(~allowed, float("-inf")).softmax(-1)) @ v
        else:
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        x = q_in + self.drop(self.proj(a.transpose(1, 2).reshape(b, l, h)))
        x = self.ln_ffn(x)
        return x + self.ffn(x)


class SASRec(NextItemModel):
    def __init__(self, encoder: ItemEncoder, hidden: int = 128, layers: int = 2, heads: int = 1,
                 dropout: float = 0.5, max_len: int = 200, causal: bool = True):
        super().__init__(encoder, hidden, max_len)
        self.causal = causal  # False only to demonstrate the published bug in tests
        self.pos_emb = nn.Embedding(max_len, hidden)
        nn.init.normal_(self.pos_emb.weight, std=0.02)  # same scale as the item vectors, not N(0, 1)
        self.emb_drop = Dropout(dropout)
        self.blocks = nn.ModuleList(SelfAttentionBlock(hidden, heads, dropout) for _ in range(layers))
        self.ln_out = nn.LayerNorm(hidden, eps=1e-8)

    def sequence_output(self, seq):
        b, l = seq.shape
        keep = seq != 0
        x = self.encoder(seq) * math.sqrt(self.hidden) + self.pos_emb.weight[:l]
        x = self.emb_drop(x) * keep.unsqueeze(-1)
        # causal: position i sees keys j <= i; key padding: never attend to padding. With right padding a real
        # query always has key 0 allowed; padded queries see their real prefix, so no row is fully masked.
        allowed = keep[:, None, None, :]
        if self.causal:
            allowed = allowed & torch.ones(l, l, dtype=torch.bool, device=seq.device).tril()
        for block in self.blocks:
            x = block(x, allowed) * keep.unsqueeze(-1)
        return self.ln_out(x)


class GRU4Rec(NextItemModel):
    def __init__(self, encoder: ItemEncoder, hidden: int = 128, layers: int = 1, dropout: float = 0.5,
                 max_len: int = 200, **_):
        super().__init__(encoder, hidden, max_len)
        self.emb_drop = Dropout(dropout)
        self.gru = nn.GRU(hidden, hidden, num_layers=layers, batch_first=True, bias=False)
        self.dense = nn.Linear(hidden, hidden)

    def sequence_output(self, seq):
        # right padding: a unidirectional GRU's outputs at real positions never see the padding after them
        out, _ = self.gru(self.emb_drop(self.encoder(seq)))
        return self.dense(out)


# ------------------------------------------------------------------------------------------------ Bert4Rec


class Bert4Rec(SequentialRecommender):
    """Bidirectional encoder, cloze objective (softmax over all items at masked positions)."""

    min_train_len = 1

    def __init__(self, encoder: ItemEncoder, hidden: int = 128, layers: int = 2, heads: int = 1,
                 dropout: float = 0.5, max_len: int = 200, mask_prob: float = 0.2):
        super().__init__(encoder, hidden, max_len)
        self.mask_id, self.mask_prob = encoder.num_items + 1, mask_prob
        self.mask_emb = nn.Parameter(torch.randn(hidden) * 0.02)
        self.pos_emb = nn.Embedding(max_len, hidden)
        nn.init.normal_(self.pos_emb.weight, std=0.02)  # same scale as the item vectors, not N(0, 1)
        self.ln_in = nn.LayerNorm(hidden, eps=1e-8)
        self.emb_drop = Dropout(dropout)
        self.blocks = nn.ModuleList(SelfAttentionBlock(hidden, heads, dropout) for _ in range(layers))
        self.head = nn.Sequential(nn.Linear(hidden, hidden), nn.GELU(), nn.LayerNorm(hidden, eps=1e-8))

    def sequence_output(self, seq: torch.Tensor) -> torch.Tensor:
        b, l = seq.shape
        keep = seq != 0
        is_mask = (seq == self.mask_id).unsqueeze(-1)
        x = torch.where(is_mask, self.mask_emb, self.encoder(seq.masked_fill(is_mask.squeeze(-1), 0)))
        x = self.emb_drop(self.ln_in(x + self.pos_emb.weight[:l])) * keep.unsqueeze(-1)
        allowed = keep[:, None, None, :]  # bidirectional, padding keys hidden
        for block in self.blocks:
            x = block(x, allowed) * keep.unsqueeze(-1)
        return self.head(x)

    def forward(self, seq):
        """Append [MASK] after each row's last item and return the hidden state there."""
        seq = keep_last(right_align(seq), self.max_len - 1)
        lengths = (seq != 0).sum(1)
        seq = F.pad(seq, (0, 1))
        rows = torch.arange(len(seq), device=seq.device)
        seq[rows, lengths] = self.mask_id
        return self.sequence_output(seq)[rows, lengths]

    def make_train_batch(self, seqs, rng):
        seqs = [s[-self.max_len:] for s in seqs]
        width = max(len(s) for s in seqs)
        inp = np.zeros((len(seqs), width), np.int64)
        for i, s in enumerate(seqs):
            inp[i, : len(s)] = s
        real = inp != 0
        masked = real & (rng.random(inp.shape) < self.mask_prob)
        # every row predicts something: rows with no draw mask their last item (the test-time position)
        none = ~masked.any(1)
        masked[none, real[none].sum(1) - 1] = True
        labels = np.where(masked, inp, 0)
        inp = np.where(masked, self.mask_id, inp)
        return {"seq": torch.from_numpy(inp), "labels": torch.from_numpy(labels)}

    def num_targets(self, batch):
        return int((batch["labels"] != 0).sum())

    def calculate_loss(self, batch):
        out = self.sequence_output(batch["seq"])
        where = batch["labels"] != 0
        logits = out[where] @ self.item_embeddings().T  # (M, N+1)
        logits[:, 0] = float("-inf")
        return F.cross_entropy(logits, batch["labels"][where])


MODELS = {"sasrec": SASRec, "gru4rec": GRU4Rec, "bert4rec": Bert4Rec}


def build_model(name: str, encoder: ItemEncoder, srs) -> SequentialRecommender:
    """Build a backbone by registry name from an `SRSConfig`."""
    if name not in MODELS:
        raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(MODELS)}")
    kw = dict(hidden=srs.hidden, layers=srs.layers, dropout=srs.dropout, max_len=srs.max_len)
    if name == "bert4rec":  # the cloze objective is a full softmax already
        return Bert4Rec(encoder, heads=srs.heads, mask_prob=srs.bert_mask_prob, **kw)
    model = GRU4Rec(encoder, **kw) if name == "gru4rec" else SASRec(encoder, heads=srs.heads, **kw)
    model.configure_loss(srs.loss, srs.num_negatives, srs.gbce_t)
    return model
