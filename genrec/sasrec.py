"""SASRec: causal self-attention over item-ID embeddings, trained with cross-entropy over all items.

Kang & McAuley (2018), with the full-softmax loss that makes it a strong baseline (arXiv 2603.19809
reports NDCG@10 0.0436 on Beauty this way, against 0.0318 for the original BCE loss in TIGER's table).

Conventions (:mod:`genrec.batching`): dataset item indices are 0-based; inside the model index 0 is
padding, so item ``i`` is token ``i + 1``. Histories are right-aligned (most recent item last) and
left-padded. The transformer blocks and the attention mask live in :mod:`genrec.layers`.

Large catalogues: ``SASRecConfig.loss`` picks the full cross-entropy (default), the same loss
streamed over item chunks (``"chunked"``, exact) or a sampled softmax with log-Q correction
(``"sampled"``); inference and evaluation score a batch x catalogue logit matrix at once only while
it stays under :data:`LOGIT_BUDGET` entries, and in item chunks beyond (same ranks, same top-k).
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator, Literal

import numpy as np
import torch
import torch.nn as nn

from genrec import distributed
from genrec.artifacts import load_checkpoint, torch_save
from genrec.checkpoint_files import INCOMPATIBLE_CHECKPOINT, incompatible_checkpoint
from genrec.batching import check_histories, histories_to_tokens, seen_tokens, training_batches
from genrec.errors import CheckpointNotFoundError, ConfigError
from genrec.layers import Block, attention_mask, unit_rows
from genrec.sasrec_losses import LOSSES, NEGATIVES, NegativeSampler, sasrec_loss
from genrec.sasrec_text import check_resumed_text, resolve_text_dim
from genrec.metrics import DEFAULT_KS, merge_topk, metrics_from_ranks, ranks_from_score_chunks, stable_topk
from genrec.splits import Instances, LeaveOneOutSplit
from genrec.training import TrainResult, data_digest, fit, setup
from genrec.model_settings import (autocast, check_training_config, model_precision, saved_config,
                                   usable_device)

log = logging.getLogger(__name__)


@dataclass
class SASRecConfig:
    """Model and training hyper-parameters.

    Defaults: SASRec's Beauty architecture (2 blocks, d=64, dropout 0.5) with the CE loss, and a
    learning rate / patience chosen on Beauty validation so training converges in ~15-25 epochs.
    """

    max_len: int = 50  # history window fed to the model
    hidden: int = 64
    num_blocks: int = 2
    num_heads: int = 1
    dropout: float = 0.5
    lr: float = 2e-3
    weight_decay: float = 0.0
    batch_size: int = 128
    max_epochs: int = 200
    max_minutes: float | None = None  # stop training after this much wall time (None: no limit)
    patience: int = 2  # evaluations without validation NDCG@10 progress before stopping
    min_delta: float = 0.01  # relative NDCG@10 gain that counts as progress (1%)
    eval_every: int = 1  # epochs between validation runs
    eval_batch_size: int = 1024
    seed: int = 0
    num_threads: int | None = None  # torch intra-op threads; None leaves torch's default
    device: str = "cpu"  # "cpu", "cuda", "cuda:1", or "auto" (CUDA when available)
    nonfinite_loss: str = "error"  # a NaN/inf training loss: "error" stops, "skip" leaves the step out
    precision: str = "fp32"  # "bf16": bfloat16 autocast of training and evaluation (CUDA only)
    # A learned score offset for items already in the history. Dot-product scoring ranks history
    # items high (the history state is built from their embeddings); this lets the model learn from
    # the training data how often people re-consume (on Amazon 5-core: never) instead of relying on
    # evaluation-time masking, which the full-ranking protocol does not allow.
    repeat_bias: bool = True
    # Content-aware item vectors: > 0 adds to each item's ID embedding a learned projection of its
    # text embedding of this size (``SASRec(item_text=...)``), so items with few interactions borrow
    # from similar texts and a new item has a vector of its own; 0 (default): ID embeddings only;
    # "auto": the size of the text embeddings given to train_sasrec (the recipe's embed stage).
    text_dim: int | Literal["auto"] = 0
    # Item-ID dropout for new items (DropoutNet, Volkovs et al. 2017; needs text_dim): in each training
    # batch this share of the catalogue's items swap their ID embedding for one learned "unknown ID"
    # vector, in histories and as candidates alike, so the model learns to score an item from its text
    # alone, calibrated against the items it knows: how a new item added without retraining is scored.
    id_dropout: float = 0.0
    # The training loss (see :func:`genrec.sasrec_losses.sasrec_loss`). "full" builds a [positions, num_items] logit
    # matrix: fastest while that fits (every result so far uses it). "chunked" is the same
    # cross-entropy, exact, streamed over ``loss_chunk`` items at a time, so memory no longer grows
    # with positions x catalogue. "sampled" is a softmax over the target and ``num_negatives`` items
    # shared by the batch, drawn from ``negatives`` ("uniform", or "popularity": training frequency)
    # with log-Q correction: approximate, but its cost no longer grows with the catalogue.
    loss: str = "full"
    loss_chunk: int = 8192  # positions x loss_chunk floats at a time: ~200 MB for 6400 positions
    num_negatives: int = 1024
    negatives: str = "uniform"

    def __post_init__(self) -> None:
        check_training_config(self)
        if self.loss not in LOSSES:
            raise ConfigError(f"loss must be one of {list(LOSSES)}, got {self.loss!r}")
        if self.negatives not in NEGATIVES:
            raise ConfigError(f"negatives must be one of {list(NEGATIVES)}, got {self.negatives!r}")
        for key in ("loss_chunk", "num_negatives"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{key} must be a positive integer, got {value!r}")
        if self.text_dim != "auto" and (isinstance(self.text_dim, bool) or not isinstance(self.text_dim, int)
                                        or self.text_dim < 0):
            raise ConfigError(f"text_dim must be a non-negative integer or 'auto', got {self.text_dim!r}")
        if isinstance(self.id_dropout, bool) or not isinstance(self.id_dropout, (int, float)) \
                or not 0.0 <= self.id_dropout < 1.0:
            raise ConfigError(f"id_dropout must lie in [0, 1), got {self.id_dropout!r}")
        if self.id_dropout and not self.text_dim:
            raise ConfigError("id_dropout needs a content-aware SASRec (text_dim > 0 or 'auto'): without text an "
                              "item that lost its ID has nothing left to be scored by")


#: inference computes at most this many logits (rows x items, 128 MB of float32) at once; a larger
#: batch x catalogue is scored in item chunks. 1024-row batches stay one chunk up to 32k items (the
#: Amazon catalogues, 12k-18k items, keep their unchunked numbers); at 1M items, 32k-item chunks.
LOGIT_BUDGET = 2 ** 25


# ----------------------------------------------------------------------------------------------
# Model


class SASRec(nn.Module):
    """Item-ID sequential recommender (content-aware item vectors when ``config.text_dim`` > 0);
    ``forward`` gives per-position hidden states."""

    def __init__(self, num_items: int, config: SASRecConfig, item_text: np.ndarray | torch.Tensor | None = None):
        """``item_text`` ``[num_items, config.text_dim]``: the items' text embeddings, when
        ``config.text_dim`` > 0 (a model about to load a state dict may leave them out: zeros)."""
        super().__init__()
        if config.text_dim == "auto":
            raise ValueError("SASRec needs text_dim resolved to the text embeddings' size, not 'auto' "
                             "(train_sasrec resolves it from item_text)")
        self.num_items = num_items
        self.config = config
        h = config.hidden
        self.item_emb = nn.Embedding(num_items + 1, h, padding_idx=0)
        self.text_proj = nn.Linear(config.text_dim, h, bias=False) if config.text_dim else None
        if config.text_dim:  # row 0 (padding) stays zero; unit rows, as set_item_text writes them
            self.register_buffer("item_text", torch.zeros(num_items + 1, config.text_dim))
        self.pos_emb = nn.Embedding(config.max_len, h)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(h, config.num_heads, config.dropout) for _ in range(config.num_blocks))
        self.ln_out = nn.LayerNorm(h, eps=1e-8)
        self.repeat_bias = nn.Parameter(torch.zeros(())) if config.repeat_bias else None
        # [H]: the ID part of an item whose ID embedding is dropped (config.id_dropout) or unknown (a new item)
        self.unknown_id = nn.Parameter(torch.zeros(h)) if config.id_dropout else None
        self.apply(self._init)
        if item_text is not None:
            self.set_item_text(item_text)

    def set_item_text(self, item_text: np.ndarray | torch.Tensor) -> None:
        """Store the items' text embeddings ``[num_items, config.text_dim]`` (L2-normalised per row)."""
        if self.text_proj is None:
            raise ValueError("this SASRec has no content part (config.text_dim is 0)")
        shape = tuple(np.shape(item_text))
        if shape != (self.num_items, self.config.text_dim):
            raise ValueError(f"item_text must be [{self.num_items}, {self.config.text_dim}] (items x text_dim), "
                             f"got {list(shape)}")
        text = torch.as_tensor(item_text, dtype=torch.float32).detach()
        if not torch.isfinite(text).all():
            bad = int((~torch.isfinite(text)).any(1).nonzero()[0])
            raise ValueError(f"item_text row {bad} (item {bad}) is not finite")
        with torch.no_grad():
            self.item_text[1:] = unit_rows(text.to(self.item_text.device))

    def item_vectors(self, rows: torch.Tensor | slice | None = None) -> torch.Tensor:
        """Item vectors (the tied input and output embeddings) of token rows ``rows`` (token = item + 1;
        an index tensor or a slice; None: all, padding included): the ID embedding, plus the projected
        text embedding when ``config.text_dim`` > 0."""
        rows = slice(None) if rows is None else rows
        if self.text_proj is None:
            return self.item_emb.weight[rows]
        if not self.training and not torch.is_grad_enabled():  # inference: project the catalogue once
            return self._projected_table()[rows]
        ids = self.item_emb.weight[rows]
        dropped = self.__dict__.get("_dropped_ids") if self.training else None
        if dropped is not None:
            ids = torch.where(dropped[rows][..., None], self.unknown_id, ids)
        return ids + self.text_proj(self.item_text[rows])

    def _sample_dropped_ids(self, device: torch.device) -> None:
        """Draw this training batch's items without ID embedding (``config.id_dropout``), used by every
        :meth:`item_vectors` call until the next forward pass: inputs and candidates agree."""
        dropped = None
        if self.training and self.unknown_id is not None:
            dropped = torch.rand(self.num_items + 1, device=device) < self.config.id_dropout  # [num_items + 1]
            dropped[0] = False  # padding
        self.__dict__["_dropped_ids"] = dropped

    def _projected_table(self) -> torch.Tensor:
        """Every item vector ``[num_items + 1, hidden]``, kept while the weights, the text, their
        devices and the autocast state stay the same (projecting Beauty's 12k texts costs ~13 ms, more
        than the rest of a small request)."""
        tensors = (self.item_emb.weight, self.text_proj.weight, self.item_text)
        try:
            autocast_on = torch.is_autocast_enabled(self.item_text.device.type)
        except TypeError:  # torch < 2.4 takes no device type (and then means CUDA)
            autocast_on = torch.is_autocast_enabled()
        # in-place updates (optimiser steps, load_state_dict, set_item_text) bump a tensor's _version
        key = (tuple((t.data_ptr(), t._version, t.dtype) for t in tensors), autocast_on)
        cached = self.__dict__.get("_table_cache")
        if cached is None or cached[0] != key:
            cached = (key, self.item_emb.weight + self.text_proj(self.item_text))
            self.__dict__["_table_cache"] = cached
        return cached[1]

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.xavier_normal_(m.weight) if m.weight.ndim == 2 else None
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens ``[B, L]`` (0 = padding, item i = i+1) -> hidden states ``[B, L, H]``."""
        B, L = tokens.shape
        pad = tokens == 0
        self._sample_dropped_ids(tokens.device)
        x = self.item_emb(tokens) if self.text_proj is None else self.item_vectors(tokens)
        x = x * math.sqrt(self.config.hidden)
        x = x + self.pos_emb(torch.arange(self.config.max_len - L, self.config.max_len, device=tokens.device))
        x = self.drop(x).masked_fill(pad[..., None], 0.0)
        allowed = attention_mask(pad)  # [B, 1, L, L]: earlier real items and itself
        for block in self.blocks:
            x = block(x, allowed, pad)
        return self.ln_out(x)

    def item_logits(self, hidden: torch.Tensor, seen: torch.Tensor | None = None, start: int = 0,
                    stop: int | None = None) -> torch.Tensor:
        """hidden ``[P, H]`` -> logits of items ``start .. stop - 1`` ``[P, stop - start]`` (tied
        embeddings; default: the whole catalogue).

        ``seen`` ``[P, S]``: tokens already consumed before each row's prediction (0 = none); they
        get the learned repeat bias.
        """
        stop = self.num_items if stop is None else stop
        logits = hidden @ self.item_vectors(slice(1 + start, 1 + stop)).T
        if self.repeat_bias is not None and seen is not None:
            rows = torch.arange(len(seen), device=seen.device)[:, None].expand_as(seen)
            real = (seen > start) & (seen <= stop)  # token = item + 1: the items of this range
            # Each (row, item) pair gets the bias once, however often the item was seen.
            logits = _add_once(logits, rows[real], seen[real] - 1 - start, self.repeat_bias, inplace=True)
        return logits

    def last_hidden(self, tokens: torch.Tensor) -> torch.Tensor:
        """The state after the last position, ``[B, L]`` -> ``[B, H]``, whose item logits predict the next item."""
        return self.forward(tokens)[:, -1]

    def last_logits(self, tokens: torch.Tensor) -> torch.Tensor:
        """Next-item logits after the last position: ``[B, L]`` -> ``[B, num_items]``."""
        return self.item_logits(self.last_hidden(tokens), seen=tokens)

    def position_logits(self, tokens: torch.Tensor, hidden: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Logits at every ``valid`` position (``[B, L]`` bool) of a training batch -> ``[P, num_items]``;
        each position's seen items are the tokens up to and including it."""
        b, t = valid.nonzero(as_tuple=True)
        return self.item_logits(hidden[b, t], seen=seen_tokens(tokens, b, t))  # seen: [P, L]


def _add_once(logits: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, bias: torch.Tensor,
              inplace: bool = False) -> torch.Tensor:
    """``logits`` with ``bias`` added at each distinct (row, col) pair (duplicates count once).

    Touches only those entries, not the whole ``[P, num_items]`` matrix; ``inplace`` writes them into
    ``logits`` itself (for a fresh matmul output, whose backward does not need it): a copy of the
    matrix per call cost more than the matmul at 1M items.
    """
    flat = torch.unique(rows * logits.shape[1] + cols)
    rows, cols = flat // logits.shape[1], flat % logits.shape[1]
    put = logits.index_put_ if inplace else logits.index_put
    return put((rows, cols), logits[rows, cols] + bias)


# ----------------------------------------------------------------------------------------------
# Losses that never hold a positions x catalogue logit matrix


def iter_logits(model: SASRec, instances: Instances | list[np.ndarray], batch_size: int = 1024
                ) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
    """Yield ``(rows, logits [len(rows), num_items])`` covering every instance once (eval mode).

    Rows come grouped by history length (less padding), so callers scatter results by ``rows``.
    A history item outside the catalogue (e.g. -1) is a ValueError naming the instance, raised here
    rather than at the first ``next``. Each batch holds batch x catalogue logits: for a large
    catalogue use the chunked functions below (:func:`softmax_topk`, :func:`log_probs_of`, :func:`evaluate`).
    """
    return _iter_logits(model, _checked(model, instances), batch_size)  # checked before the generator starts


@torch.no_grad()
def _iter_logits(model: SASRec, histories: list[np.ndarray], batch_size: int
                 ) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
    for rows, hidden, tokens in _iter_states(model, histories, batch_size):
        with _precision(model):
            logits = model.item_logits(hidden, seen=tokens).float().cpu()
        yield rows, logits


def _precision(model: SASRec) -> contextlib.AbstractContextManager:
    """The model's autocast context (bf16 on CUDA for a bf16 model), the one :func:`evaluate` and training's
    validation run under, so every inference path serves the numbers the model was validated with. Entered
    per batch by the generators: held across a ``yield`` it would leak into the caller's code."""
    return autocast(model_precision(model), model.item_emb.weight.device)


def _checked(model: SASRec, instances: Instances | list[np.ndarray]) -> list[np.ndarray]:
    histories = instances.histories if isinstance(instances, Instances) else instances
    check_histories(histories, model.num_items)
    return histories


@torch.no_grad()
def _iter_states(model: SASRec, histories: list[np.ndarray], batch_size: int
                 ) -> Iterator[tuple[np.ndarray, torch.Tensor, torch.Tensor]]:
    """``(rows, last hidden states [b, H], tokens [b, L])`` per batch, on the model's device (eval mode)."""
    order = np.argsort([min(len(h), model.config.max_len) for h in histories], kind="stable")
    was_training = model.training
    if was_training:  # eval() walks every module: skip it for the usual, already-evaluating model
        model.eval()
    try:
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            tokens = histories_to_tokens([histories[r] for r in rows], model.config.max_len)
            tokens = tokens.to(model.item_emb.weight.device)
            with _precision(model):
                hidden = model.last_hidden(tokens)
            yield rows, hidden, tokens
    finally:
        if was_training:
            model.train()


def item_chunk_size(rows: int, num_items: int, item_chunk: int | None = None) -> int:
    """Items scored at once for a batch of ``rows``: ``item_chunk`` when given, else as many as
    :data:`LOGIT_BUDGET` allows (the whole catalogue when it fits, which keeps the unchunked results)."""
    if item_chunk is not None:
        if item_chunk < 1:
            raise ValueError(f"item_chunk must be >= 1, got {item_chunk}")
        return min(int(item_chunk), num_items)
    return max(1, min(num_items, LOGIT_BUDGET // max(1, rows)))


def _chunk_scorer(model: SASRec, hidden: torch.Tensor, tokens: torch.Tensor
                  ) -> Callable[[np.ndarray | None, int, int], torch.Tensor]:
    """``score(rows, start, stop)``: CPU float32 logits ``[len(rows), stop - start]`` of items
    ``start .. stop - 1`` for those rows of the batch (None: every row, the batch's tensors as they are)."""
    def score(rows: np.ndarray | None, start: int, stop: int) -> torch.Tensor:
        with torch.no_grad(), _precision(model):
            if rows is None:
                return model.item_logits(hidden, tokens, start, stop).float().cpu()
            idx = torch.as_tensor(rows, dtype=torch.long, device=hidden.device)
            return model.item_logits(hidden[idx], tokens[idx], start, stop).float().cpu()
    return score


def _batch_softmax_topk(score: Callable[[np.ndarray | None, int, int], torch.Tensor], num_items: int, k: int,
                        chunk: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(items [b, k], log-probs [b, k], max prob [b], entropy [b], logsumexp of the logits [b])`` of one
    batch's softmax; over item chunks (a streamed logsumexp and a running top-k) when ``chunk`` is
    smaller than the catalogue."""
    if chunk >= num_items:  # the unchunked computation, exactly as before chunking existed
        z = score(None, 0, num_items)
        lp = torch.log_softmax(z, -1)
        v, i = stable_topk(lp, k)  # ties to the lower index, as a full ranking (topk broke them arbitrarily)
        return i, v, v[:, 0].exp(), -(lp.exp() * lp).sum(-1), z.logsumexp(-1)
    best_v = best_i = None
    m = s = t = None  # running max, sum of exp(z - m), sum of exp(z - m) * z: each [b]
    for start in range(0, num_items, chunk):
        z = score(None, start, min(start + chunk, num_items))  # [b, w]
        m_new = z.max(-1).values if m is None else torch.maximum(m, z.max(-1).values)
        e = z.sub(m_new[:, None]).exp_()  # [b, w], one temporary
        e_sum, ez_sum = e.sum(-1), torch.bmm(e[:, None, :], z[:, :, None])[:, 0, 0]  # sum e, sum e * z: [b]
        if m is None:
            s, t = e_sum, ez_sum
        else:
            scale = (m - m_new).exp()  # re-base the sums kept so far on the new maximum
            s, t = s * scale + e_sum, t * scale + ez_sum
        m = m_new
        v, i = stable_topk(z, k)  # this chunk's best (ties to the lower index), then merged: [b, <= k]
        best_v, best_i = merge_topk(best_v, best_i, v, i + start, k)
    lse = m + s.log()
    # H = -sum p log p = lse - sum p z, and sum p z = t / s
    return best_i, best_v - lse[:, None], (best_v[:, 0] - lse).exp(), lse - t / s, lse


def softmax_topk(model: SASRec, instances: Instances | list[np.ndarray], k: int = 50, batch_size: int = 1024,
                 item_chunk: int | None = None, states: bool = False) -> dict[str, np.ndarray]:
    """``items [n, k]``, ``log_probs [n, k]`` (best first; ``k`` capped at the catalogue's size, ``k`` < 1 a
    ValueError), ``max_prob [n]`` (MSP) and ``entropy [n]`` (nats) of each instance's softmax, never holding
    more than a batch x ``item_chunk`` logits (:func:`item_chunk_size`); the chunked values equal the
    unchunked ones up to float rounding.
    ``states``: also ``hidden [n, H]`` (float32, the state whose logits these are) and ``lse [n]``
    (the logsumexp of its logits), from which :func:`log_probs_from_states` scores other items
    without running the model again."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    histories = _checked(model, instances)
    n = len(histories)
    k = min(int(k), model.num_items)  # a catalogue smaller than k: every item, ranked (as parallel_generative)
    out = {"items": np.zeros((n, k), np.int64), "log_probs": np.zeros((n, k), np.float32),
           "max_prob": np.zeros(n, np.float32), "entropy": np.zeros(n, np.float32)}
    if states:
        out["hidden"] = np.zeros((n, model.config.hidden), np.float32)
        out["lse"] = np.zeros(n, np.float32)
    for rows, hidden, tokens in _iter_states(model, histories, batch_size):
        chunk = item_chunk_size(len(rows), model.num_items, item_chunk)
        i, v, msp, ent, lse = _batch_softmax_topk(_chunk_scorer(model, hidden, tokens), model.num_items, k, chunk)
        out["items"][rows], out["log_probs"][rows] = i.numpy(), v.numpy()
        out["max_prob"][rows], out["entropy"][rows] = msp.numpy(), ent.numpy()
        if states:
            out["hidden"][rows], out["lse"][rows] = hidden.float().cpu().numpy(), lse.numpy()
    return out


@torch.no_grad()
def log_probs_from_states(model: SASRec, histories: list[np.ndarray], hidden: np.ndarray, lse: np.ndarray,
                          items: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """Log-probabilities ``float32 [n, C]`` of ``items [n, C]`` (catalogue indices) from the states
    :func:`softmax_topk` kept (``states=True``) for the same ``histories``: each item's logit (the
    repeat bias included for an item among the last ``max_len`` of its history) minus ``lse``, in
    batches of ``batch_size`` rows. Equal to :func:`log_probs_of` up to float rounding, without
    running the transformer or the catalogue again."""
    items = np.asarray(items, np.int64)
    n = len(histories)
    if items.ndim != 2 or len(items) != n or np.shape(hidden)[:1] != (n,) or np.shape(lse) != (n,):
        raise ValueError(f"need items [n, C], hidden [n, H] and lse [n] of n={n} histories, got "
                         f"{list(items.shape)}, {list(np.shape(hidden))} and {list(np.shape(lse))}")
    if items.size and (items.min() < 0 or items.max() >= model.num_items):
        raise ValueError(f"items must lie in 0..{model.num_items - 1}")
    out = np.zeros(items.shape, np.float32)
    was_training = model.training
    model.eval()
    try:
        device = model.item_emb.weight.device
        for s in range(0, n, batch_size):
            c = torch.from_numpy(items[s:s + batch_size]).to(device)
            h = torch.as_tensor(np.asarray(hidden[s:s + batch_size], np.float32), device=device)
            with _precision(model):  # the item vectors and the logits as log_probs_of computes them
                vectors = model.item_vectors(c + 1)  # [b, C, H]
                logits = torch.einsum("bch,bh->bc", vectors, h).float()
            if model.repeat_bias is not None:
                part = [np.asarray(x, np.int64)[-model.config.max_len:] for x in histories[s:s + batch_size]]
                seen = np.full((len(part), max(1, max(len(x) for x in part))), -1, np.int64)
                for j, x in enumerate(part):
                    seen[j, :len(x)] = x
                in_history = (items[s:s + batch_size, :, None] == seen[:, None, :]).any(-1)  # [b, C]
                logits = logits + model.repeat_bias.float() * torch.from_numpy(in_history).to(device)
            lse_b = torch.as_tensor(np.asarray(lse[s:s + batch_size], np.float32), device=device)
            out[s:s + batch_size] = (logits - lse_b[:, None]).cpu().numpy()
    finally:
        model.train(was_training)
    return out


def log_probs_of(model: SASRec, instances: Instances | list[np.ndarray], items: np.ndarray, batch_size: int = 1024,
                 item_chunk: int | None = None) -> np.ndarray:
    """Log-probabilities ``[n, C]`` (float32) of the items ``items [n, C]`` (indices in the catalogue) under
    each instance's softmax, computed over item chunks for a large catalogue (see :func:`softmax_topk`)."""
    histories = _checked(model, instances)
    items = np.asarray(items, np.int64)
    if items.shape[:1] != (len(histories),) or items.ndim != 2:
        raise ValueError(f"items must be [{len(histories)}, C], got {items.shape}")
    if items.size and (items.min() < 0 or items.max() >= model.num_items):
        raise ValueError(f"items must lie in 0..{model.num_items - 1}")
    out = np.zeros(items.shape, np.float32)
    for rows, hidden, tokens in _iter_states(model, histories, batch_size):
        score = _chunk_scorer(model, hidden, tokens)
        c = torch.from_numpy(items[rows])  # [b, C]
        chunk = item_chunk_size(len(rows), model.num_items, item_chunk)
        if chunk >= model.num_items:  # unchunked, exactly as before chunking existed
            out[rows] = torch.log_softmax(score(None, 0, model.num_items), -1).gather(1, c).numpy()
            continue
        lse = torch.full((len(rows),), -torch.inf)
        picked = torch.zeros(c.shape)
        for start in range(0, model.num_items, chunk):
            stop = min(start + chunk, model.num_items)
            z = score(None, start, stop)  # [b, w]
            lse = torch.logaddexp(lse, z.logsumexp(-1))
            here = (c >= start) & (c < stop)
            picked = torch.where(here, z.gather(1, (c - start).clamp(0, stop - start - 1)), picked)
        out[rows] = (picked - lse[:, None]).numpy()
    return out


def predict_topk(model: SASRec, instances: Instances | list[np.ndarray], k: int = 50,
                 batch_size: int = 1024, item_chunk: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` items per instance: ``(items [n, k] int64, log-probs [n, k] float32)``, best first (``k``
    capped at the catalogue's size; ``k`` < 1 is a ValueError)."""
    out = softmax_topk(model, instances, k, batch_size, item_chunk)
    return out["items"], out["log_probs"]


def predict_proba(model: SASRec, instances: Instances | list[np.ndarray], batch_size: int = 1024) -> np.ndarray:
    """Full softmax distribution over the catalogue ``[n, num_items]`` (float32; mind memory)."""
    out = np.zeros((len(instances), model.num_items), dtype=np.float32)
    for rows, logits in iter_logits(model, instances, batch_size):
        out[rows] = torch.softmax(logits, -1).numpy()
    return out


def softmax_summary(model: SASRec, instances: Instances | list[np.ndarray], batch_size: int = 1024,
                    item_chunk: int | None = None) -> dict[str, np.ndarray]:
    """Per-instance statistics of the softmax without materialising it: ``max_prob`` (MSP, the
    fusion's memorization indicator), ``entropy`` (nats), each ``[n]``."""
    out = softmax_topk(model, instances, 1, batch_size, item_chunk)
    return {"max_prob": out["max_prob"], "entropy": out["entropy"]}


def evaluate(model: SASRec, instances: Instances, ks=DEFAULT_KS, mask_history: bool = False,
             batch_size: int = 1024, item_chunk: int | None = None) -> dict[str, float]:
    """Full-ranking Recall/NDCG@K of the model on ``instances``; exact, with the catalogue scored in
    item chunks when a batch x catalogue would pass :data:`LOGIT_BUDGET` (or ``item_chunk`` is given).
    Inside :func:`genrec.distributed.sharded_evaluation` each rank ranks its share of the instances."""
    n = len(instances)
    instances = distributed.shard_instances(instances)  # all of them outside a sharded evaluation
    ranks = np.zeros(len(instances), dtype=np.int64)
    # the model's precision (bf16 on CUDA) is entered by _iter_states and the chunk scorer, as for serving
    for rows, hidden, tokens in _iter_states(model, _checked(model, instances), batch_size):
        exclude = [instances.histories[r] for r in rows] if mask_history else None
        chunk = item_chunk_size(len(rows), model.num_items, item_chunk)
        ranks[rows] = ranks_from_score_chunks(_chunk_scorer(model, hidden, tokens), model.num_items,
                                              instances.targets[rows], chunk, exclude=exclude)
    return metrics_from_ranks(distributed.gather_rows(ranks, n), ks)


# ----------------------------------------------------------------------------------------------
# Training


def train_sasrec(split: LeaveOneOutSplit, config: SASRecConfig | None = None, out_dir: str | Path | None = None,
                 progress: bool = True, on_eval: Callable[[dict[str, float]], None] | None = None,
                 init: SASRec | None = None, item_text: np.ndarray | None = None) -> TrainResult:
    """Train on ``split.train``, early-stop on validation NDCG@10, return the best model; ``init``: start
    from a copy of these weights (same catalogue and architecture) instead of a fresh model;
    ``item_text`` ``[num_items, config.text_dim]``: the items' text embeddings, needed exactly when
    ``config.text_dim`` > 0 or ``"auto"`` (then their width; a :class:`~genrec.errors.ConfigError` otherwise).

    With ``out_dir``: ``best.pt`` (best weights + config) and ``last.pt`` (full training state) are
    written atomically after each evaluation, and a rerun resumes from ``last.pt``.
    """
    config = config or SASRecConfig()
    setup(config)
    device = usable_device(config.device)
    config = resolve_text_dim(config, item_text)
    model = SASRec(split.num_items, config, item_text).to(device)
    if init is not None:
        model.load_state_dict(init.state_dict())
        if item_text is not None:  # the text given, not the one init was trained with
            model.set_item_text(item_text)
    if item_text is not None and out_dir is not None:
        check_resumed_text(Path(out_dir) / "last.pt", model.item_text)

    sampler = (NegativeSampler(split.num_items, config.num_negatives, config.negatives, split.train, device)
               if config.loss == "sampled" else None)

    def loss_fn(m: SASRec, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, int]:
        inputs, targets = (t.to(device) for t in batch)
        return sasrec_loss(m, inputs, targets, config, sampler)

    n_train = sum(1 for s in split.train if len(s) >= 2)
    return fit(model, config, lambda rng: training_batches(split.train, config, rng),
               math.ceil(n_train / config.batch_size), loss_fn,
               lambda m: evaluate(m, split.valid, batch_size=config.eval_batch_size),
               out_dir, progress, on_eval, {"num_items": split.num_items}, "sasrec", data_digest(split))


def load_sasrec(path: str | Path, device: str = "cpu") -> SASRec:
    """Load a model saved by :func:`train_sasrec` (``best.pt``) or :func:`save_sasrec` onto ``device``."""
    path = Path(path)
    if path.is_dir():
        path = path / "best.pt"
    if not path.exists():
        raise CheckpointNotFoundError(f"{path}: no SASRec checkpoint; train (or save) the model first")
    ckpt = load_checkpoint(path, kind="SASRec checkpoint", keys=("model", "config", "num_items"))
    try:
        model = SASRec(ckpt["num_items"], SASRecConfig(**saved_config(ckpt["config"])))
        model.load_state_dict(ckpt["model"])
    except INCOMPATIBLE_CHECKPOINT as e:

        raise incompatible_checkpoint(path, "SASRec", ckpt, e) from e
    return model.to(usable_device(device)).eval()


def save_sasrec(model: SASRec, path: str | Path) -> None:
    """Save weights and config atomically, loadable with :func:`load_sasrec`."""
    torch_save(path, {"model": model.state_dict(), "config": asdict(model.config), "num_items": model.num_items})

