"""Generative retrieval over semantic IDs, built to train fast on a CPU: the default model.

A *hierarchical* decoder-only model. An item-level causal transformer reads the history with one
token per item (the item's input vector is the sum of learned per-level embeddings of its semantic
ID codes, plus a position embedding, plus by default an item-ID embedding that training drops for half
of the history items: the hybrid input; preset ``semantic`` reads the codes only), like
SASRec, and is trained at every item boundary of a whole training sequence at once. From the
hidden state ``h_t`` a small code head predicts the next item's codes level by level:
``p(c_l | h_t, c_<l)`` from ``h_t + level_l + sum_j<l prefix_emb(c_j)`` through a residual MLP and
a softmax over level ``l``'s codes only (tied to the input code embeddings; by default only over
the codes that extend the prefix to a valid ID, in training as in decoding). An item's
log-probability is the sum over its levels, so training costs a few 256-way softmaxes per
position instead of one over the catalogue, and decoding (:mod:`genrec.beam_search`) runs the
transformer once per user and only the head per beam and level.

Conventions (:mod:`genrec.batching`): item ``i`` is token ``i + 1``, 0 is padding, histories are
right-aligned and left-padded. The item-level transformer is SASRec's (:mod:`genrec.layers`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from genrec import distributed
from genrec.artifacts import load_checkpoint, torch_save
from genrec.checkpoint_files import INCOMPATIBLE_CHECKPOINT, incompatible_checkpoint
from genrec.batching import check_histories, histories_to_tokens, seen_tokens, training_batches
from genrec.errors import CheckpointNotFoundError, ConfigError, DataFormatError
from genrec.beam_search import (BeamResult, beam_from_context, check_same_codes, decoder_device, first_level,
                                length_batches, score_from_context, trie_on)
from genrec.layers import Block, encode_sequence, xavier_init
from genrec.metrics import metrics_from_ranks, ranks_from_topk
from genrec.trie import PrefixTrie, trie_of
from genrec.training import TrainResult, data_digest, fit, setup, trim_heap
from genrec.model_settings import (autocast, check_training_config, model_precision, saved_config,
                                   usable_device)
from genrec.splits import Instances, LeaveOneOutSplit

log = logging.getLogger(__name__)

EVAL_KS = (5, 10, 20)


@dataclass
class GenerativeConfig:
    """Model and training hyper-parameters of :class:`HierarchicalGenerative` (defaults: the
    measured CPU-efficient Beauty setting)."""

    max_len: int = 50  # history window (items)
    hidden: int = 128
    num_blocks: int = 2
    num_heads: int = 2
    dropout: float = 0.3  # item-level transformer
    head_layers: int = 2  # residual MLP blocks of the code head
    head_dropout: float = 0.1
    # Hybrid input: add a learned item-ID embedding to each history item's code embeddings. Measured
    # on Beauty (BENCHMARKS.md, issue 15): valid NDCG@10 0.0529 -> 0.0567 alone, 0.0641 with the dropout below.
    item_embedding: bool = True
    # Training only: each history item's ID embedding is dropped (zeroed) with this probability, so
    # the model keeps learning to read items by their codes (the ID table alone overfits), as it must
    # for a new item added without retraining, whose ID embedding is zero. Beauty validation NDCG@10:
    # 0.0567 at 0, 0.0629 at 0.25, 0.0641 at 0.5, 0.0608 at 0.75.
    item_embedding_dropout: float = 0.5
    tie_embeddings: bool = True  # code head output weights = input code embeddings
    constrained_softmax: bool = True  # each level's softmax only over the prefix's valid children
    # RepeatNet's explore/repeat mixture (Ren et al., 2019): a learned probability r(h) that the next
    # item is one already in the history. Items in the history get r * p(i) / p(H), others
    # (1 - r) * p(i) / (1 - p(H)): still a distribution over the catalogue (with constrained_softmax; an
    # unconstrained one leaves mass on invalid IDs, so the catalogue sums to less than 1), learned from
    # the training data instead of evaluation-time masking (on Amazon 5-core r ends near 0: nobody re-buys).
    repeat_gate: bool = True
    # Schedule: one linear warm-up epoch, then cosine decay to 0 over max_epochs. On Beauty this
    # reaches in 36 epochs (~30 min on 2 cores) what a constant lr 2e-3 had not reached in 45 min.
    lr: float = 3e-3
    lr_schedule: str = "cosine"  # or "constant" (genrec.training.fit), stepped per batch
    warmup_epochs: float = 1.0
    schedule_epochs: int | None = None  # cosine horizon (None: max_epochs)
    final_lr_ratio: float = 0.0  # cosine floor, as a share of lr
    weight_decay: float = 0.0
    batch_size: int = 256
    max_epochs: int = 36
    max_minutes: float | None = None  # stop training after this much wall time (None: no limit)
    patience: int = 5  # evaluations without validation NDCG@10 progress before stopping
    min_delta: float = 0.0  # relative NDCG@10 gain that counts as progress
    # a validation beam search costs about one training epoch on Beauty; with a decaying schedule
    # the best model is nearly always the last one, so every 3rd epoch (and the last) is enough
    eval_every: int = 3
    eval_beam: int = 20  # beam size of the validation runs
    eval_batch_size: int = 512
    seed: int = 0
    num_threads: int | None = None  # torch intra-op threads; None leaves torch's default
    nonfinite_loss: str = "error"  # a NaN/inf training loss: "error" stops, "skip" leaves the step out
    # "cpu", "cuda", "cuda:1", or "auto" (CUDA when available); under torchrun "cuda" is each rank's own GPU
    device: str = "cpu"
    precision: str = "fp32"  # "bf16": bfloat16 autocast of training, evaluation and decoding (CUDA only)

    def __post_init__(self) -> None:
        check_training_config(self)
        if not 0.0 <= self.item_embedding_dropout < 1.0:
            raise ConfigError(f"item_embedding_dropout must lie in [0, 1), got {self.item_embedding_dropout}")


#: Named settings of :class:`GenerativeConfig`: ``hierarchical`` is the defaults; ``semantic`` reads
#: the history through its items' semantic IDs only (no item-ID embedding), the default model until
#: session 7, kept for comparison and for catalogues that change faster than the model is retrained.
PRESETS: dict[str, dict[str, Any]] = {"hierarchical": {},
                                      "semantic": {"item_embedding": False, "item_embedding_dropout": 0.0}}


def preset_config(name: str, **overrides: Any) -> GenerativeConfig:
    """The :data:`PRESETS` entry ``name`` with ``overrides`` on top; an unknown name is a ConfigError."""
    if name not in PRESETS:
        raise ConfigError(f"unknown generative preset {name!r}; presets: {', '.join(PRESETS)}")
    return GenerativeConfig(**{**PRESETS[name], **overrides})


# ----------------------------------------------------------------------------------------------
# Model


class CodeHead(nn.Module):
    """``p(c_l | h, c_<l)`` for every level: input ``h + level_l + sum_j<l prefix_emb(c_j)``."""

    def __init__(self, hidden: int, vocab: int, num_levels: int, layers: int, dropout: float):
        super().__init__()
        self.prefix_emb = nn.Embedding(vocab + 1, hidden, padding_idx=0)  # code token t -> t (0: none)
        self.level_emb = nn.Embedding(num_levels, hidden)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, 4 * hidden), nn.GELU(), nn.Dropout(dropout),
                          nn.Linear(4 * hidden, hidden), nn.Dropout(dropout)) for _ in range(layers))
        self.ln = nn.LayerNorm(hidden)

    def forward(self, h: torch.Tensor, prefix: torch.Tensor, level: int | torch.Tensor) -> torch.Tensor:
        # h: [..., H]; prefix: [..., l] code tokens (offset + 1); level: int or [l'] levels -> [..., H]
        z = h + self.prefix_emb(prefix).sum(-2) + self.level_emb(torch.as_tensor(level, device=h.device))
        for block in self.blocks:
            z = z + block(z)
        return self.ln(z)


class HierarchicalGenerative(nn.Module):
    """Item-level causal transformer over semantic-ID item embeddings + autoregressive code head.

    Implements :class:`genrec.beam_search.CodeDecoder`. ``codes`` ``[n_items, num_levels]`` are
    the semantic IDs (kept in the state dict, so a saved model is self-contained).
    """

    # an empty history would leave nothing but padding for the transformer to read (the beam search
    # and scoring entry points refuse it, naming the history)
    min_history = 1

    def __init__(self, codes: np.ndarray, codebook_sizes: Sequence[int], config: GenerativeConfig):
        super().__init__()
        codes = np.asarray(codes, dtype=np.int64)
        self.config = config
        self.codebook_sizes = tuple(int(s) for s in codebook_sizes)
        self.num_items, self.num_levels = codes.shape
        offsets = np.r_[0, np.cumsum(self.codebook_sizes)[:-1]]
        self.vocab = int(sum(self.codebook_sizes))
        self.offsets = [int(o) for o in offsets]
        item_tokens = np.zeros((self.num_items + 1, self.num_levels), dtype=np.int64)
        item_tokens[1:] = codes + offsets[None] + 1  # flat code tokens, 0 = padding
        self.register_buffer("item_tokens", torch.from_numpy(item_tokens))  # [n_items + 1, L]
        h = config.hidden
        self.code_emb = nn.Embedding(self.vocab + 1, h, padding_idx=0)
        self.item_emb = nn.Embedding(self.num_items + 1, h, padding_idx=0) if config.item_embedding else None
        self.pos_emb = nn.Embedding(config.max_len, h)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(h, config.num_heads, config.dropout) for _ in range(config.num_blocks))
        self.ln_out = nn.LayerNorm(h, eps=1e-8)
        self.head = CodeHead(h, self.vocab, self.num_levels, config.head_layers, config.head_dropout)
        self.out_emb = None if config.tie_embeddings else nn.Embedding(self.vocab + 1, h)
        self.out_bias = nn.Parameter(torch.zeros(self.vocab + 1))
        self.repeat_head = nn.Linear(h, 1) if config.repeat_gate else None
        self.apply(xavier_init)
        self.trie = PrefixTrie(codes, self.codebook_sizes)  # valid children of every prefix (not a parameter)

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        """``nn.Module.load_state_dict``, refusing weights trained on other semantic IDs: the trie that
        constrains decoding is this model's, built from its codes (a
        :class:`~genrec.errors.CheckpointError`)."""
        check_same_codes(self, state_dict)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    @property
    def codes(self) -> np.ndarray:
        """Semantic IDs ``[n_items, num_levels]``."""
        return (self.item_tokens[1:].cpu() - 1 - torch.tensor(self.offsets)).numpy()

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Item tokens ``[B, T]`` (0 = padding, item i = i+1) -> hidden states ``[B, T, H]``."""
        B, T = tokens.shape
        pad = tokens == 0
        x = self.code_emb(self.item_tokens[tokens]).sum(2)  # [B, T, L, H] -> [B, T, H]
        if self.item_emb is not None:
            ids = self.item_emb(tokens)  # [B, T, H]
            p = self.config.item_embedding_dropout
            if self.training and p > 0:  # whole embeddings, not features: an item is either known or not
                ids = ids * (torch.rand(B, T, 1, device=tokens.device) >= p)
            x = x + ids
        return encode_sequence(x * math.sqrt(self.config.hidden), pad, self.pos_emb, self.drop, self.blocks, self.ln_out)

    def level_logits(self, z: torch.Tensor, level: int) -> torch.Tensor:
        """Head output ``[..., H]`` -> logits over level ``level``'s codes ``[..., codebook_sizes[level]]``."""
        lo = self.offsets[level] + 1
        hi = lo + self.codebook_sizes[level]
        weight = (self.code_emb if self.out_emb is None else self.out_emb).weight[lo:hi]
        return z @ weight.T + self.out_bias[lo:hi]

    def code_loss(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean negative code-level log-likelihood of target items ``[P]`` (item indices) given
        hidden states ``[P, H]`` (teacher forcing; the sum over levels of the cross-entropies)."""
        return -self.target_log_probs(hidden, targets).mean()

    def target_log_probs(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Code-level log-probability ``[P]`` of target items ``[P]`` given hidden states ``[P, H]``:
        the sum over levels of ``log p(c_l | h, c_<l)`` (differentiable; no repeat gate)."""
        tok = self.item_tokens[targets + 1]  # [P, L]
        P, L = tok.shape
        # prefix of level l = tokens of levels < l: [P, L, L] with the diagonal and above zeroed
        prefix = tok[:, None, :].expand(P, L, L).tril(-1)
        z = self.head(hidden[:, None, :], prefix, torch.arange(L, device=hidden.device))  # [P, L, H]
        total = hidden.new_zeros(P)
        trie = trie_on(self.trie, hidden.device)
        for lvl in range(L):
            logits = self.level_logits(z[:, lvl], lvl)
            if self.config.constrained_softmax:
                logits = logits.masked_fill(~trie.valid_mask(lvl, trie.item_nodes[lvl, targets]), -torch.inf)
            code = (tok[:, lvl] - 1 - self.offsets[lvl])[:, None]
            total = total + torch.log_softmax(logits, -1).gather(1, code)[:, 0]
        return total

    def repeat_loss(self, tokens: torch.Tensor, hidden: torch.Tensor, targets: torch.Tensor,
                    valid: torch.Tensor) -> torch.Tensor:
        """Binary cross-entropy of the repeat gate at every ``valid`` position ``[B, T]``: is the
        target token ``targets [B, T]`` among the input tokens ``[B, T]`` up to that position?"""
        return repeat_gate_loss(self.repeat_head, tokens, hidden, targets, valid)

    # -- CodeDecoder protocol ----------------------------------------------------------------------
    def start(self, histories: list[np.ndarray], users: np.ndarray | None = None) -> torch.Tensor:
        """Hidden state after each history ``[N, H]`` (users are not used)."""
        return self.forward(histories_to_tokens(histories, self.config.max_len).to(self.item_tokens.device))[:, -1]

    def step(self, context: torch.Tensor, codes: torch.Tensor, cache: Any) -> tuple[torch.Tensor, None]:
        """Log-probs of level ``l = codes.shape[2]`` ``[N, K, V_l]`` for prefixes ``codes [N, K, l]``."""
        lvl = codes.shape[2]
        device = codes.device
        prefix = codes + torch.tensor(self.offsets[:lvl], dtype=torch.long, device=device) + 1
        if not self.config.constrained_softmax:
            return torch.log_softmax(self.level_logits(self.head(context[:, None, :], prefix, lvl), lvl), -1), None
        trie = trie_on(self.trie, device)
        nodes = torch.zeros(codes.shape[:2], dtype=torch.long, device=device)
        for j in range(lvl):
            nodes = trie.child[j][nodes.clamp_min(0), codes[:, :, j]]
        valid = trie.valid_mask(lvl, nodes.clamp_min(0))  # [N, K, V]
        # A prefix with a single valid child gives it log-probability exactly 0 under the constrained
        # softmax, so the head runs only for prefixes with a choice: on Beauty 29% of the items' two-code
        # prefixes and 73% of their three-code ones have one child, a third of the decoding work.
        out = torch.zeros(valid.shape, device=device).masked_fill_(~valid, -torch.inf)
        choice = valid.sum(-1) > 1  # [N, K]
        if bool(choice.all()):
            logits = self.level_logits(self.head(context[:, None, :], prefix, lvl), lvl)
            return torch.log_softmax(logits.masked_fill(~valid, -torch.inf), -1), None
        if bool(choice.any()):
            n, k = choice.nonzero(as_tuple=True)
            z = self.head(context[n], prefix[n, k], lvl)  # [M, H]
            out[n, k] = torch.log_softmax(self.level_logits(z, lvl).masked_fill(~valid[n, k], -torch.inf), -1)
        return out, None

    def reorder(self, cache: Any, index: torch.Tensor) -> None:
        return None


def repeat_gate_loss(repeat_head: nn.Module, tokens: torch.Tensor, hidden: torch.Tensor, targets: torch.Tensor,
                     valid: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of a repeat gate (``repeat_head``: hidden ``[P, H]`` -> logit ``[P, 1]``) at
    every ``valid`` position ``[B, T]``: is the target token ``targets [B, T]`` among the input tokens
    ``[B, T]`` up to that position? Shared by the semantic-ID models."""
    b, t = valid.nonzero(as_tuple=True)
    repeated = (seen_tokens(tokens, b, t) == targets[b, t][:, None]).any(1).float()  # [P]
    return F.binary_cross_entropy_with_logits(repeat_head(hidden[b, t])[:, 0], repeated)


# ----------------------------------------------------------------------------------------------
# Inference


def repeat_mixture(log_p: torch.Tensor, in_history: torch.Tensor, repeat_logit: torch.Tensor,
                   log_p_history: torch.Tensor, history_is_catalogue: torch.Tensor | None = None) -> torch.Tensor:
    """Explore/repeat mixture of item log-probs ``log_p [n, C]`` (see ``GenerativeConfig.repeat_gate``):
    ``in_history [n, C]`` marks items in the history, ``repeat_logit [n]`` is the gate's logit of
    r, ``log_p_history [n]`` the code-level log-probability of the whole history set H.
    ``history_is_catalogue [n]``: whether H is the whole catalogue; None reads it from ``in_history``,
    right only when the ``C`` columns are the whole catalogue (a row of candidates that are all history
    items says nothing about the items outside the row)."""
    log_p_history = log_p_history.clamp_max(-1e-6)  # p(H) < 1: some unseen item has mass
    # a history holding every item leaves the explore share nowhere to go (the row summed to r): r = 1
    if history_is_catalogue is None:
        history_is_catalogue = in_history.all(-1)
    repeat_logit = torch.where(history_is_catalogue.to(repeat_logit.device),
                               torch.full_like(repeat_logit, torch.inf), repeat_logit)
    repeat = (F.logsigmoid(repeat_logit) - log_p_history)[:, None]  # log r - log p(H)
    explore = (F.logsigmoid(-repeat_logit) - torch.log1p(-log_p_history.exp()))[:, None]  # log(1-r) - log(1-p(H))
    return log_p + torch.where(in_history, repeat, explore)


@torch.no_grad()
def decode(model: nn.Module, instances: Instances | list[np.ndarray], beam_size: int | None = 20,
           top_k: int | None = None, candidates: np.ndarray | None = None, batch_size: int = 512
           ) -> tuple[BeamResult | None, np.ndarray | None]:
    """The beam's top items (``beam_size``; None: no beam) and the log-probabilities ``[n, C]`` of
    ``candidates`` ``int64 [n, C]`` (``-1``: padding, ``-inf``; None: none), in one pass: each batch
    of histories is encoded once and the repeat gate's statistics (the log-probability of the
    history's items, the gate's logit) are computed once for both. :func:`recommend` and
    :func:`score_items` are this function with one of the two parts; their numbers agree to float32
    rounding (~1e-6: the code head runs on as many rows as have a choice, and BLAS results depend on
    the row count), not to the bit.

    With a repeat gate (``GenerativeConfig.repeat_gate``) every score is the explore/repeat
    mixture's: the beam's items and the history's items (scored anyway; where the gate says
    "repeat" they belong on top even outside the code-level beam) are re-sorted by it, so the list
    is the mixture's exact top-k for the history's items and, for the others, down to
    ``beam_size`` minus the history items in the beam (the beam is searched on the code-level
    distribution). Works for any :class:`CodeDecoder` with
    ``codes``; an empty history (this module's model needs one item; TIGER reads it as a cold start)
    or one holding an item outside the catalogue is a ValueError naming the history. Runs on the
    model's device; the results are NumPy arrays."""
    histories = instances.histories if isinstance(instances, Instances) else instances
    users = instances.users if isinstance(instances, Instances) else None
    trie = trie_of(model)
    check_histories(histories, trie.num_items, getattr(model, "min_history", 0), type(model).__name__)
    n = len(histories)
    cand = None
    if candidates is not None:
        cand = np.asarray(candidates, dtype=np.int64)
        if cand.ndim != 2 or len(cand) != n:
            raise ValueError(f"candidates must be [n={n}, C], got {cand.shape}")
        if (cand >= trie.num_items).any():
            raise ValueError(f"candidate item index >= {trie.num_items}")
    top_k = beam_size if top_k is None else top_k
    if beam_size is not None and not 1 <= top_k <= beam_size:
        raise ValueError(f"need 1 <= top_k <= beam_size, got top_k={top_k}, beam_size={beam_size}")
    items = np.full((n, top_k or 0), -1, dtype=np.int64)
    logp = np.full((n, top_k or 0), -np.inf, dtype=np.float32)
    codes = np.full((n, top_k or 0, trie.num_levels), -1, dtype=np.int64)
    scores = None if cand is None else np.full(cand.shape, -np.inf, dtype=np.float32)
    repeat = getattr(model, "repeat_head", None) is not None
    was_training = model.training
    if was_training:  # eval() walks every module: skip it for the usual, already-evaluating model
        model.eval()
    since_trim = 0  # histories decoded since the heap was last given back (long passes only)
    try:
        with autocast(model_precision(model), decoder_device(model)):  # a bf16 model's forwards on CUDA
            for rows in length_batches(histories, batch_size):
                if since_trim >= TRIM_EVERY:
                    # a pass over many histories frees tensors of many shapes; glibc keeps the fragments, and
                    # after training in the same process one pass over Beauty's 22k users grew to 6 GiB
                    trim_heap()
                    since_trim = 0
                since_trim += len(rows)
                hist = [histories[r] for r in rows]
                context = model.start(hist, None if users is None else np.asarray(users)[rows])
                first = first_level(model, context, len(rows))  # level 0: shared by the beam and every candidate
                # one teacher-forced pass scores the history's items (the repeat gate's statistics) and the
                # candidates together
                seen = _seen_items(model, hist) if repeat else np.zeros((len(rows), 0), np.int64)
                scored = None
                if repeat or cand is not None:
                    scored = score_from_context(model, trie, context, seen if cand is None else
                                                np.concatenate([seen, cand[rows]], 1), first)
                offset = (_repeat_offsets(model, seen, scored[:, :seen.shape[1]], context, trie.num_items)
                          if repeat else None)
                if beam_size is not None:
                    it, sc, cd = (t.float().cpu().numpy() if t.is_floating_point() else t.cpu().numpy()
                                  for t in beam_from_context(model, trie, context, len(rows), beam_size, first))
                    if offset is not None:
                        # the history items compete too: where the gate says "repeat" they belong on top even
                        # when their code-level probabilities kept them out of the beam (scored above already)
                        fresh = (seen >= 0) & ~(seen[:, :, None] == it[:, None, :]).any(-1)  # [b, W]
                        it = np.concatenate([it, np.where(fresh, seen, -1)], 1)
                        sc = np.concatenate([sc, np.where(fresh, scored[:, :seen.shape[1]], -np.inf)], 1)
                        seen_codes = trie.codes[torch.from_numpy(np.maximum(seen, 0))].cpu().numpy()  # [b, W, L]
                        cd = np.concatenate([cd, np.where(fresh[:, :, None], seen_codes, -1)], 1)
                        sc = np.where(it >= 0, sc + offset(it), -np.inf).astype(np.float32)
                        order = np.argsort(-sc, axis=1, kind="stable")
                        it, sc = np.take_along_axis(it, order, 1), np.take_along_axis(sc, order, 1)
                        cd = np.take_along_axis(cd, order[:, :, None], 1)
                    k = min(top_k, it.shape[1])
                    items[rows, :k], logp[rows, :k], codes[rows, :k] = it[:, :k], sc[:, :k], cd[:, :k]
                if cand is not None:
                    s = scored[:, seen.shape[1]:]
                    scores[rows] = s if offset is None else (s + offset(cand[rows])).astype(np.float32)
    finally:
        if was_training:
            model.train()
    beam = None if beam_size is None else BeamResult(items=items, log_probs=logp, codes=codes)
    return beam, scores


#: histories decoded between two :func:`~genrec.training.trim_heap` calls in :func:`decode` (a service's
#: small batches never reach it; a long batch pass trims every few seconds, at a few ms each)
TRIM_EVERY = 4096


def _seen_items(model: nn.Module, histories: list[np.ndarray]) -> np.ndarray:
    """``int64 [N, W]``: the distinct items of each history the model reads (its last ``max_len``), -1 padded."""
    width = max(len(h[-model.config.max_len:]) for h in histories)
    seen = np.full((len(histories), width), -1, dtype=np.int64)
    for k, h in enumerate(histories):
        h = np.unique(h[-model.config.max_len:])
        seen[k, :len(h)] = h
    return seen


def _repeat_offsets(model: nn.Module, seen: np.ndarray, seen_scores: np.ndarray, context: torch.Tensor,
                    num_items: int) -> Callable[[np.ndarray], np.ndarray]:
    """For one encoded batch: a function ``items [N, C] -> log-prob offsets [N, C]`` that turns the
    code-level distribution into the explore/repeat mixture (see ``GenerativeConfig.repeat_gate``),
    given the history items ``seen [N, W]`` (:func:`_seen_items`) and their code-level log-probs."""
    scores = np.where(np.isnan(seen_scores), -np.inf, seen_scores)  # as the beam: a NaN item is no item (it
    log_p_seen = torch.logsumexp(torch.from_numpy(np.ascontiguousarray(scores)), 1)  # made the row all NaN) [N]
    logit = model.repeat_head(context)[:, 0].float().cpu()  # [N], on the host with the NumPy scores
    # from the history itself, not from the columns asked about: an item's score must not depend on the
    # other candidates of its row (seen's items are distinct and in the catalogue)
    whole = torch.from_numpy((seen >= 0).sum(1) == num_items)  # [N]

    def offsets(items: np.ndarray) -> np.ndarray:
        in_history = torch.from_numpy((items[:, :, None] == seen[:, None, :]).any(-1) & (items >= 0))  # [N, C]
        return repeat_mixture(torch.zeros(in_history.shape), in_history, logit, log_p_seen, whole).numpy()

    return offsets


def recommend(model: nn.Module, instances: Instances | list[np.ndarray], beam_size: int = 20,
              top_k: int | None = None, batch_size: int = 512) -> BeamResult:
    """Constrained beam search over the model's semantic IDs: top-``top_k`` items per instance
    with their log-probabilities (:func:`decode` without candidates)."""
    return decode(model, instances, beam_size, top_k, None, batch_size)[0]


def score_items(model: nn.Module, instances: Instances | list[np.ndarray], candidates: np.ndarray,
                batch_size: int = 512) -> np.ndarray:
    """Log-probability ``[n, C]`` of each candidate item ``[n, C]`` (``-1``: padding, ``-inf``);
    the numbers :func:`recommend` gives the items it returns, to float32 rounding (:func:`decode`
    without a beam)."""
    return decode(model, instances, None, None, candidates, batch_size)[1]


def evaluate(model: nn.Module, instances: Instances, beam_size: int = 20, ks: Sequence[int] = EVAL_KS,
             batch_size: int = 512) -> dict[str, float]:
    """Recall/NDCG@K over the full catalogue from a beam search of width ``beam_size`` (a target
    outside the beam is a miss, even for K > beam_size), plus ``invalid_rate``: the share of
    returned code tuples that are no item's semantic ID. Inside
    :func:`genrec.distributed.sharded_evaluation` each rank searches its share of the instances."""
    n = len(instances)
    instances = distributed.shard_instances(instances)  # all of them outside a sharded evaluation
    result = recommend(model, instances, beam_size, batch_size=batch_size)
    ranks = ranks_from_topk(result.items, instances.targets)  # outside the beam: a miss at every K
    metrics = metrics_from_ranks(distributed.gather_rows(ranks, n), ks)
    returned = np.isfinite(result.log_probs)  # [n, K]; beams beyond the number of valid items are padding
    codes = model.codes
    valid = (result.items >= 0) & (codes[result.items.clip(0)] == result.codes).all(-1)
    returned, valid = distributed.gather_rows(returned, n), distributed.gather_rows(valid, n)
    metrics["invalid_rate"] = float((~valid[returned]).mean())
    return metrics


# ----------------------------------------------------------------------------------------------
# Training (shared with genrec.tiger)


def train_generative(split: LeaveOneOutSplit, table: Any, config: GenerativeConfig | None = None,
                     out_dir: str | Path | None = None, progress: bool = True,
                     on_eval: Callable[[dict[str, float]], None] | None = None,
                     init: HierarchicalGenerative | None = None) -> TrainResult:
    """Train :class:`HierarchicalGenerative` on ``split.train`` with the semantic IDs of ``table``
    (a :class:`~quantize.semantic_ids.SemanticIdTable`, or anything with ``codes`` and
    ``codebook_sizes``), early-stopping on validation NDCG@10 of a constrained beam search.
    ``init``: start from a copy of these weights (same codes and architecture) instead of a fresh model.

    All positions of every training sequence are targets at once. With ``out_dir``, checkpoints
    are written after each evaluation and a rerun resumes from ``last.pt``.
    """
    config = config or GenerativeConfig()
    if len(table.codes) != split.num_items:
        raise DataFormatError(f"the semantic-ID table has {len(table.codes)} items but the dataset has "
                              f"{split.num_items}; was it built for another dataset?")
    setup(config)
    device = usable_device(config.device)  # after setup: under torchrun "cuda" is this rank's GPU
    model = HierarchicalGenerative(table.codes, table.codebook_sizes, config)
    if init is not None:
        model.load_state_dict(init.state_dict())
    model.to(device)

    def loss_fn(m: HierarchicalGenerative, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, int]:
        inputs, targets = (t.to(device) for t in batch)
        hidden = m(inputs)  # [B, T, H]
        valid = targets > 0
        loss = m.code_loss(hidden[valid], targets[valid] - 1)
        if m.repeat_head is not None:
            loss = loss + m.repeat_loss(inputs, hidden, targets, valid)
        return loss, int(valid.sum())

    n_train = sum(1 for s in split.train if len(s) >= 2)
    return fit(model, config, lambda rng: training_batches(split.train, config, rng),
               math.ceil(n_train / config.batch_size), loss_fn,
               lambda m: evaluate(m, split.valid, config.eval_beam, batch_size=config.eval_batch_size),
               out_dir, progress, on_eval,
               {"codes": torch.from_numpy(model.codes), "codebook_sizes": list(model.codebook_sizes)}, "generative",
               data_digest(split, model.codes, model.codebook_sizes))


def save_generative(model: HierarchicalGenerative, path: str | Path) -> None:
    """Save weights, config and semantic IDs atomically, loadable with :func:`load_generative`."""
    torch_save(path, {"model": model.state_dict(), "config": asdict(model.config),
                      "codes": torch.from_numpy(model.codes), "codebook_sizes": list(model.codebook_sizes)})


def load_generative(path: str | Path, device: str = "cpu") -> HierarchicalGenerative:
    """Load a model saved by :func:`train_generative` (``best.pt``, or its directory) or
    :func:`save_generative` onto ``device`` (wherever it was trained: the weights are read to the CPU first)."""
    path = Path(path)
    if path.is_dir():
        path = path / "best.pt"
    if not path.exists():
        raise CheckpointNotFoundError(f"{path}: no generative model checkpoint; train (or save) the model first")
    ckpt = load_checkpoint(path, kind="generative model checkpoint",
                           keys=("model", "config", "codes", "codebook_sizes"))
    try:
        model = HierarchicalGenerative(np.asarray(ckpt["codes"]), ckpt["codebook_sizes"],
                                       GenerativeConfig(**saved_config(ckpt["config"])))
        model.load_state_dict(ckpt["model"])
    except INCOMPATIBLE_CHECKPOINT as e:
        raise incompatible_checkpoint(path, "hierarchical generative model", ckpt, e) from e
    return model.to(usable_device(device)).eval()


def with_new_items(model: HierarchicalGenerative, codes: np.ndarray, codebook_sizes: Sequence[int]
                   ) -> HierarchicalGenerative:
    """A copy of ``model`` that also decodes the items appended at the end of ``codes``
    (``[n_items + m, num_levels]``, the first ``n_items`` rows the model's own semantic IDs), without
    training: new rows of ``item_tokens``, the trie rebuilt, zero item-ID embeddings (hybrid mode).

    Only the last (disambiguation) level may grow (``codebook_sizes[-1]``): its tokens are the last
    block of the flat vocabulary, so existing tokens keep their numbers and only rows are appended.
    A new disambiguation code is a counter inside a collision group with no meaning of its own, so
    its input/output embedding and output bias start at the mean of the trained last-level rows:
    in a history the new item reads as its base codes plus an average disambiguation code, and as
    a target it gets a typical share of its group's mass instead of an arbitrary one. Its prefix
    embedding stays zero: the last level is never part of a prefix, so that row is never read.
    Deterministic (the global random state is left untouched); other weights are copied unchanged.
    """
    codes = np.asarray(codes, dtype=np.int64)
    sizes = tuple(int(s) for s in codebook_sizes)
    n, old_sizes = model.num_items, model.codebook_sizes
    if codes.ndim != 2 or codes.shape[1] != model.num_levels or len(codes) < n:
        raise ValueError(f"codes must be [>= {n}, {model.num_levels}] (the model's items first), got {codes.shape}")
    if not np.array_equal(codes[:n], model.codes):
        raise ValueError("the first rows of codes must be the model's own semantic IDs, unchanged")
    if len(sizes) != model.num_levels or sizes[:-1] != old_sizes[:-1] or sizes[-1] < old_sizes[-1]:
        raise ValueError(f"codebook sizes {list(sizes)}: only the last level may grow from the model's "
                         f"{list(old_sizes)} (the quantizer's levels are frozen)")
    with torch.random.fork_rng(devices=[]):  # the fresh initialisation is overwritten below
        new = HierarchicalGenerative(codes, sizes, model.config)
    grow = sizes[-1] - old_sizes[-1]
    lo = model.offsets[-1] + 1  # token of the last level's code 0
    trained = slice(lo, lo + old_sizes[-1])
    state = {}
    for key, value in model.state_dict().items():
        if key == "item_tokens":
            value = new.item_tokens
        elif key in ("code_emb.weight", "out_emb.weight", "out_bias"):
            value = torch.cat([value, value[trained].mean(0, keepdim=True).expand(grow, *value.shape[1:])])
        elif key == "head.prefix_emb.weight":
            value = torch.cat([value, value.new_zeros(grow, value.shape[1])])
        elif key == "item_emb.weight":
            value = torch.cat([value, value.new_zeros(len(codes) - n, value.shape[1])])
        state[key] = value.clone()
    new.load_state_dict(state)  # strict: every other weight must keep its shape
    return new.to(decoder_device(model)).train(model.training)
