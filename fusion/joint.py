"""Joint training: an ID tower, a semantic-ID tower and a gate head trained with one objective.

The Wide & Deep lesson: training the parts together beats ensembling separately trained models,
because each part can specialise on what the other gets wrong. :class:`JointModel` holds

- an ID tower: :class:`genrec.sasrec.SASRec` (catalogue logits from item-ID embeddings);
- a generative tower: :class:`genrec.generative.HierarchicalGenerative`, whose log-probability of
  every catalogue item (sum over levels of the code log-probs, the same numbers as
  ``genrec.generative.score_items``) is computed differentiably by :func:`gr_catalogue_log_probs`:
  the code head runs once per *distinct* code prefix, not per item;
- a gate head (:class:`fusion.methods.GateHead` behind a batch norm) on features available at every
  training position, all detached: the ID tower's MSP and entropy, the generative tower's best
  item log-prob and entropy, the history length, the last item's training popularity and
  transition-source count.

Objective (``mixing``) on every next-item position of ``split.train``, over the full catalogue:

- ``"mixture"``: ``-log(g * p_id(t) + (1 - g) * p_gr(t))``, a mixture of the two distributions
  (each tower gets the gradient of its responsibility for the target: EM-like specialisation);
- ``"logit"``: cross-entropy of ``softmax(g * log p_id + (1 - g) * log p_gr)`` (log-linear pooling).

``aux_weight`` adds ``aux_weight * (CE_id + CE_gr)`` so neither tower starves when the gate
commits early. ``mode="id"`` / ``"gr"`` trains one tower alone with the same loop, data order and
epochs: the baselines at equal compute. Early stopping on validation NDCG@10 of the fused scores.
Item tokens and padding follow :mod:`genrec.batching` (item ``k`` is token ``k + 1``, 0 = padding).
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from fusion.methods import GateHead, GateReport
from fusion.indicators import Indicators
from genrec import distributed
from genrec.artifacts import load_checkpoint, torch_save
from genrec.beam_search import trie_on
from genrec.batching import check_histories, histories_to_tokens, seen_tokens, training_batches
from genrec.generative import GenerativeConfig, HierarchicalGenerative, repeat_mixture
from genrec.errors import CheckpointError
from genrec.training import TrainResult, data_digest, fit, setup
from genrec.model_settings import (autocast, check_training_config, model_precision, saved_config,
                                   usable_device)
from genrec.metrics import DEFAULT_KS, metrics_from_ranks, ranks_from_scores
from genrec.sasrec import SASRec, SASRecConfig
from genrec.sasrec_text import check_resumed_text, resolve_text_dim
from genrec.splits import Instances, LeaveOneOutSplit

log = logging.getLogger(__name__)

MODES = ("joint", "id", "gr")
MIXINGS = ("mixture", "logit")
GR_SCOPES = ("auto", "catalogue", "target")
GATE_FEATURES = ("id_msp", "id_entropy", "gr_max_logp", "gr_entropy", "history_length", "last_popularity",
                 "last_source_count")
# target scope: the generative tower's confidence from its first code level (no catalogue pass)
TARGET_SCOPE_FEATURES = ("id_msp", "id_entropy", "gr_code_max_logp", "gr_code_entropy", "history_length",
                         "last_popularity", "last_source_count")


@dataclass
class JointConfig:
    """Training settings of :func:`train_joint`; tower architectures in ``id_tower`` / ``gr_tower``
    (their own training fields, ``device`` and ``precision`` are ignored: one optimiser, one
    schedule, one device: the joint model's)."""

    mode: str = "joint"  # "joint", or "id" / "gr" for one tower alone
    mixing: str = "mixture"  # "mixture" or "logit" (module doc)
    aux_weight: float = 0.0
    gate_hidden: int = 16
    # How the generative tower enters the objective: "catalogue" (exact log-probs of every item, cost
    # ~ number of distinct code prefixes per position), "target" (the target's log-prob only: scales
    # to any catalogue; mixing "mixture" only; evaluation fuses on candidates, see JointModel.scores),
    # or "auto": catalogue up to catalogue_max_items items when a batch's activations fit in
    # CATALOGUE_SCOPE_BYTES (catalogue_scope_bytes: it grows with the distinct code prefixes), else target.
    gr_scope: str = "auto"
    catalogue_max_items: int = 4096
    candidates: int = 50  # target scope: top-K of each tower (GR beam width) fused at evaluation
    id_tower: SASRecConfig = field(default_factory=SASRecConfig)
    gr_tower: GenerativeConfig = field(default_factory=GenerativeConfig)
    max_len: int = 50  # history window of both towers
    lr: float = 2e-3
    lr_schedule: str = "constant"  # or "cosine" (genrec.training.fit)
    warmup_epochs: float = 0.0
    schedule_epochs: int | None = None
    final_lr_ratio: float = 0.0
    weight_decay: float = 0.0
    batch_size: int = 128
    max_epochs: int = 200
    max_minutes: float | None = None
    patience: int = 3
    eval_every: int = 1
    eval_users: int | None = None  # validate on this many sampled users (None: all)
    eval_batch_size: int = 512
    seed: int = 0
    num_threads: int | None = None
    nonfinite_loss: str = "error"  # a NaN/inf training loss: "error" stops, "skip" leaves the step out
    device: str = "cpu"  # "cpu", "cuda", "cuda:1", or "auto"; both towers and the gate run there
    precision: str = "fp32"  # "bf16": bfloat16 autocast of training and scoring (CUDA only)

    def __post_init__(self) -> None:
        check_training_config(self)
        if isinstance(self.id_tower, dict):
            self.id_tower = SASRecConfig(**self.id_tower)
        if isinstance(self.gr_tower, dict):
            self.gr_tower = GenerativeConfig(**self.gr_tower)
        if self.mode not in MODES or self.mixing not in MIXINGS:
            raise ValueError(f"mode must be in {MODES} and mixing in {MIXINGS}; got {self.mode!r}, {self.mixing!r}")
        if self.gr_scope not in GR_SCOPES:
            raise ValueError(f"gr_scope must be in {GR_SCOPES}, got {self.gr_scope!r}")
        if self.gr_scope == "target" and self.mixing != "mixture":
            raise ValueError("gr_scope 'target' needs mixing 'mixture' (log-linear pooling needs every item's log-prob)")
        if self.candidates < 1:
            raise ValueError(f"candidates must be >= 1, got {self.candidates}")
        if not 0 <= self.aux_weight < float("inf"):  # a negative weight makes the loss unbounded below
            raise ValueError(f"aux_weight must be a finite number >= 0, got {self.aux_weight}")


# ----------------------------------------------------------------------------------------------
# Generative tower: differentiable catalogue log-probs


#: the most activation memory ``gr_scope="auto"`` lets the catalogue scope keep for a batch's backward pass
CATALOGUE_SCOPE_BYTES = 2 * 2**30


def catalogue_scope_bytes(config: "JointConfig", gr: HierarchicalGenerative,
                          train: Sequence[np.ndarray] | None = None) -> int:
    """An estimate of the activations the catalogue scope keeps for one training batch's backward pass:
    the code head runs on every distinct code prefix at every next-item position, keeping ~22 x hidden
    float32 per (position, prefix) and head layer (its norm, 4H-wide hidden layer and output; measured:
    16 positions x 3,882 prefixes at width 128, 2 layers, added 1.35 GiB). It grows with the prefixes,
    not the items: 4,000 items with 3 x 256 codes need ~85 MiB a position, hundreds of GiB a batch.
    ``train``: the positions of an average batch (its sequences' mean length within ``max_len``),
    else every window full."""
    prefixes = sum(len(r) for r in _PrefixIndex(gr).rep)
    lengths = [min(len(s) - 1, config.max_len) for s in (train or []) if len(s) >= 2]
    positions = config.batch_size * (float(np.mean(lengths)) if lengths else config.max_len)
    return int(positions * prefixes * 22 * gr.config.hidden * max(1, gr.config.head_layers) * 4)


def resolve_gr_scope(config: "JointConfig", gr: HierarchicalGenerative, num_items: int,
                     train: Sequence[np.ndarray] | None = None) -> str:
    """``config.gr_scope``, ``"auto"`` resolved: the catalogue scope up to ``catalogue_max_items`` items
    when, given ``train``, a batch's activations fit in :data:`CATALOGUE_SCOPE_BYTES`; without ``train``
    (a checkpoint from before the resolved scope was saved) by the item count alone, as it was trained."""
    if config.gr_scope != "auto":
        return config.gr_scope
    if num_items > config.catalogue_max_items:
        return "target"
    return "catalogue" if train is None or catalogue_scope_bytes(config, gr, train) <= CATALOGUE_SCOPE_BYTES \
        else "target"


class _PrefixIndex:
    """For each level ``l``: one representative item per distinct length-``l`` code prefix (the trie's
    node order), and each item's node and code at that level; :meth:`on` gives its copy on a device."""

    def __init__(self, gr: HierarchicalGenerative):
        trie = gr.trie
        self.rep: list[torch.Tensor] = []
        for lvl in range(gr.num_levels):
            nodes = trie.item_nodes[lvl].numpy()
            rep = np.zeros(trie.num_nodes(lvl), dtype=np.int64)
            rep[nodes[::-1]] = np.arange(len(nodes))[::-1]  # first item of each node
            self.rep.append(torch.from_numpy(rep))
        self.item_nodes = trie.item_nodes  # [L, n_items]
        self.item_codes = trie.codes.T.contiguous()  # [L, n_items]
        self._copies: dict[torch.device, _PrefixIndex] = {}

    def on(self, device: torch.device) -> "_PrefixIndex":
        """This index with its tables on ``device`` (itself on the CPU; other devices' copies are
        made once: they are read at every training position)."""
        if self.item_nodes.device == device:
            return self
        if device not in self._copies:
            moved = copy.copy(self)
            moved.rep = [r.to(device) for r in self.rep]
            moved.item_nodes, moved.item_codes = self.item_nodes.to(device), self.item_codes.to(device)
            moved._copies = {}
            self._copies[device] = moved
        return self._copies[device]


def gr_catalogue_log_probs(gr: HierarchicalGenerative, hidden: torch.Tensor, index: _PrefixIndex | None = None,
                           seen: torch.Tensor | None = None) -> torch.Tensor:
    """Log-probability of every catalogue item, ``[P, n_items]``, from tower hidden states ``[P, H]``
    (differentiable; equal to ``genrec.generative.score_items`` of all items). ``seen [P, S]``: the
    item tokens each row has consumed (0 = padding), for a tower with a repeat gate."""
    device = hidden.device
    index = (index or _PrefixIndex(gr)).on(device)
    trie = trie_on(gr.trie, device)
    # float32 sums even under bf16 autocast: the catalogue log-probs are compared across items
    total = hidden.new_zeros(hidden.shape[0], gr.num_items, dtype=torch.float32)
    for lvl in range(gr.num_levels):
        prefix = gr.item_tokens[1:][index.rep[lvl], :lvl]  # [M, lvl] flat code tokens of each prefix
        z = gr.head(hidden[:, None, :], prefix[None], lvl)  # [P, M, H]
        logits = gr.level_logits(z, lvl)  # [P, M, V_l]
        if gr.config.constrained_softmax:
            allowed = trie.valid_mask(lvl, torch.arange(len(index.rep[lvl]), device=device))  # [M, V_l]
            logits = logits.masked_fill(~allowed, -torch.inf)
        lp = torch.log_softmax(logits, -1)
        total = total + lp[:, index.item_nodes[lvl], index.item_codes[lvl]]  # [P, n_items]
    if seen is not None and gr.repeat_head is not None:
        in_history = torch.zeros_like(total, dtype=torch.bool)
        rows = torch.arange(len(seen), device=seen.device)[:, None].expand_as(seen)
        in_history[rows[seen > 0], seen[seen > 0] - 1] = True
        log_p_history = torch.logsumexp(total.masked_fill(~in_history, -torch.inf), 1)
        total = repeat_mixture(total, in_history, gr.repeat_head(hidden)[:, 0], log_p_history)
    return total


def gr_target_log_probs(gr: HierarchicalGenerative, hidden: torch.Tensor, targets: torch.Tensor,
                        seen: torch.Tensor | None = None) -> torch.Tensor:
    """Log-probability ``[P]`` of each row's target item ``[P]`` from hidden states ``[P, H]``
    (differentiable). With a repeat gate and ``seen [P, S]`` (consumed item tokens): a lower bound
    of the explore/repeat mixture, ``log r + log p(t)`` for a target in the history and
    ``log(1 - r) + log p(t)`` otherwise; the exact mixture also divides by ``p(H)`` / ``1 - p(H)``,
    which needs every history item's code log-prob (see ``genrec.generative.repeat_mixture``)."""
    lp = gr.target_log_probs(hidden, targets)
    if seen is not None and gr.repeat_head is not None:
        r = gr.repeat_head(hidden)[:, 0]
        in_history = (seen == (targets + 1)[:, None]).any(1)
        lp = lp + torch.where(in_history, F.logsigmoid(r), F.logsigmoid(-r))
    return lp


def gr_first_code_stats(gr: HierarchicalGenerative, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Max log-prob and entropy ``[P]`` of the first code level's distribution: the generative
    tower's confidence at the cost of one head pass."""
    z = gr.head(hidden, torch.zeros(len(hidden), 0, dtype=torch.long, device=hidden.device), 0)
    lp = torch.log_softmax(gr.level_logits(z, 0), -1)
    return lp.max(-1).values, -(lp.exp() * lp).sum(-1)


# ----------------------------------------------------------------------------------------------
# Model


class JointModel(nn.Module):
    """SASRec tower + hierarchical semantic-ID tower + gate head (module doc)."""

    def __init__(self, num_items: int, codes: np.ndarray, codebook_sizes: Sequence[int], config: JointConfig,
                 train: Sequence[np.ndarray] | None = None, item_text: np.ndarray | None = None,
                 scope: str | None = None):
        """``item_text`` ``[num_items, id_tower.text_dim]``: the items' text embeddings of a
        content-aware ID tower (:class:`genrec.sasrec.SASRec`; a model about to load a state dict may
        leave them out)."""
        super().__init__()
        self.config = config
        self.num_items = num_items
        # the towers take the joint model's device and precision (their beam search and scoring read them)
        shared = {"max_len": config.max_len, "device": config.device, "precision": config.precision}
        id_cfg = SASRecConfig(**{**asdict(config.id_tower), **shared})
        gr_cfg = GenerativeConfig(**{**asdict(config.gr_tower), **shared})
        self.id_tower = SASRec(num_items, id_cfg, item_text)
        self.gr_tower = HierarchicalGenerative(codes, codebook_sizes, gr_cfg)
        if self.gr_tower.num_items != num_items:
            raise ValueError(f"codes have {self.gr_tower.num_items} items, the catalogue {num_items}")
        self.scope = scope or resolve_gr_scope(config, self.gr_tower, num_items, train)
        if self.scope == "target" and config.mixing != "mixture":
            gib = catalogue_scope_bytes(config, self.gr_tower, train) / 2**30
            why = (f"{num_items} items" if num_items > config.catalogue_max_items or config.gr_scope == "target" else
                   f"the catalogue scope's activations (~{gib:.1f} GiB a batch, over "
                   f"{CATALOGUE_SCOPE_BYTES / 2**30:.0f}: fewer code prefixes or a smaller batch)")
            raise ValueError(f"{why}: the target scope (gr_scope) needs mixing 'mixture'")
        self.feature_names = GATE_FEATURES if self.scope == "catalogue" else TARGET_SCOPE_FEATURES
        self.gate_norm = nn.BatchNorm1d(len(self.feature_names), affine=False)
        self.gate = GateHead(len(self.feature_names), config.gate_hidden)
        # training statistics of item tokens (0 = padding), kept in the state dict
        pop = np.zeros(num_items + 1, np.float32)
        src = np.zeros(num_items + 1, np.float32)
        for s in train or []:
            s = np.asarray(s, np.int64)
            np.add.at(pop, s + 1, 1.0)
            np.add.at(src, s[:-1] + 1, 1.0)
        self.register_buffer("token_popularity", torch.from_numpy(np.log1p(pop)))
        self.register_buffer("token_source_count", torch.from_numpy(np.log1p(src)))
        self._index = _PrefixIndex(self.gr_tower) if self.scope == "catalogue" else None

    def log_probs(self, tokens: torch.Tensor, valid: torch.Tensor | None = None, targets: torch.Tensor | None = None
                  ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor]:
        """Per position (``valid [B, L]``; default: the last one of each row): the ID tower's
        catalogue log-probs ``[P, n_items]``, the generative tower's (catalogue scope: ``[P, n_items]``;
        target scope: of ``targets [P]`` only, ``[P]``, or None without targets), ``None`` for a tower
        the mode does not use, and the gate features ``[P, F]`` (detached)."""
        B, L = tokens.shape
        device = tokens.device
        if valid is None:
            valid = torch.zeros(B, L, dtype=torch.bool, device=device)
            valid[:, -1] = True
        mode = self.config.mode
        b, t = valid.nonzero(as_tuple=True)
        lp_id = lp_gr = None
        zeros = torch.zeros(len(b), device=device)
        feats = [zeros, zeros, zeros, zeros]
        if mode in ("joint", "id"):
            hidden = self.id_tower(tokens)
            lp_id = torch.log_softmax(self.id_tower.position_logits(tokens, hidden, valid), -1)
            d = lp_id.detach()
            feats[:2] = [d.max(-1).values.exp(), -(d.exp() * d).sum(-1)]
        if mode in ("joint", "gr"):
            hidden = self.gr_tower(tokens)[valid]  # [P, H]
            seen = seen_tokens(tokens, b, t)  # [P, L] consumed so far
            if self.scope == "catalogue":
                lp_gr = gr_catalogue_log_probs(self.gr_tower, hidden, self._index, seen)
                d = lp_gr.detach()
                feats[2:] = [d.max(-1).values, -(d.exp() * d).sum(-1)]
            else:
                if targets is not None:
                    lp_gr = gr_target_log_probs(self.gr_tower, hidden, targets, seen)
                with torch.no_grad():
                    feats[2:] = list(gr_first_code_stats(self.gr_tower, hidden))
        last = tokens[b, t]
        length = (tokens > 0).cumsum(1)[b, t].float()
        feats += [torch.log1p(length), self.token_popularity[last], self.token_source_count[last]]
        return lp_id, lp_gr, torch.stack(feats, 1)

    @property
    def device(self) -> torch.device:
        """Where the model's parameters are (its scoring runs there)."""
        return self.token_popularity.device

    def gate_logit(self, feats: torch.Tensor) -> torch.Tensor:
        """The gate's logit ``[P]`` for features ``[P, F]``."""
        if self.training and feats.shape[0] < 2:  # batch statistics need two rows: the running ones serve
            norm = self.gate_norm
            return self.gate(F.batch_norm(feats, norm.running_mean, norm.running_var, training=False, eps=norm.eps))
        return self.gate(self.gate_norm(feats))

    def fused(self, lp_id: torch.Tensor | None, lp_gr: torch.Tensor | None, gate_logit: torch.Tensor | None
              ) -> torch.Tensor:
        """Fused catalogue log-scores ``[P, n_items]`` (a single tower's log-probs in one-tower modes)."""
        if lp_gr is None:
            return lp_id
        if lp_id is None:
            return lp_gr
        x = gate_logit[:, None]
        if self.config.mixing == "mixture":
            return torch.logaddexp(F.logsigmoid(x) + lp_id, F.logsigmoid(-x) + lp_gr)
        g = torch.sigmoid(x)
        return torch.log_softmax(g * lp_id + (1 - g) * lp_gr, -1)

    def loss(self, tokens: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Mean loss over the real next-item positions of a batch ``(inputs, targets)`` ``[B, L]``."""
        valid = targets > 0
        t = targets[valid] - 1
        if self.scope == "target":
            lp_id, lp_gr_t, feats = self.log_probs(tokens, valid, t)
            lp_id_t = None if lp_id is None else lp_id.gather(1, t[:, None])[:, 0]
            if lp_gr_t is None:
                nll = -lp_id_t
            elif lp_id_t is None:
                nll = -lp_gr_t
            else:
                x = self.gate_logit(feats)
                nll = -torch.logaddexp(F.logsigmoid(x) + lp_id_t, F.logsigmoid(-x) + lp_gr_t)
            loss = nll.mean()
            if self.config.aux_weight and lp_id_t is not None and lp_gr_t is not None:
                loss = loss - self.config.aux_weight * (lp_id_t.mean() + lp_gr_t.mean())
            return loss, int(valid.sum())
        lp_id, lp_gr, feats = self.log_probs(tokens, valid)
        both = lp_id is not None and lp_gr is not None  # one-tower modes have no gate to train
        fused = self.fused(lp_id, lp_gr, self.gate_logit(feats) if both else None)
        loss = F.nll_loss(fused, t)
        if self.config.aux_weight and lp_id is not None and lp_gr is not None:
            loss = loss + self.config.aux_weight * (F.nll_loss(lp_id, t) + F.nll_loss(lp_gr, t))
        return loss, int(valid.sum())

    @torch.no_grad()
    def gates(self, histories: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(gate [n], features [n, F])`` after each history, without scoring the catalogue (in
        the target scope :meth:`scores` also runs the generative beam, which the gate does not need)."""
        _, _, feats = self.log_probs(histories_to_tokens(histories, self.config.max_len).to(self.device))
        return torch.sigmoid(self.gate_logit(feats)), feats

    @torch.no_grad()
    def scores(self, histories: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(fused log-scores [n, n_items], gate [n], features [n, F])`` after each history (eval mode).

        Target scope: the generative tower's exact log-probs of its beam's top-``candidates`` (the
        beam's own scores) and of the ID tower's top-``candidates`` (``genrec.generative.score_items``);
        other items get no generative mass (with the mixture their fused score is ``log g + log p_id``)."""
        device = self.device
        tokens = histories_to_tokens(histories, self.config.max_len).to(device)
        lp_id, lp_gr, feats = self.log_probs(tokens)
        logit = self.gate_logit(feats)
        if self.scope == "target" and self.config.mode != "id":
            from genrec.generative import recommend, score_items

            k = min(self.config.candidates, self.num_items)
            beam = recommend(self.gr_tower, histories, beam_size=k, top_k=k)  # items [n, k], -1 = none
            cands, gr = beam.items, beam.log_probs
            if lp_id is not None:
                id_top = lp_id.topk(k, -1).indices.cpu().numpy()
                cands = np.concatenate([cands, id_top], 1)
                gr = np.concatenate([gr, score_items(self.gr_tower, histories, id_top)], 1)
            gr = torch.from_numpy(np.asarray(gr, np.float32)).to(device)
            lp_gr = torch.full((len(histories), self.num_items), -torch.inf, device=device)
            c = torch.from_numpy(cands).to(device)
            rows = torch.arange(len(histories), device=device)[:, None].expand_as(c)
            ok = c >= 0
            lp_gr[rows[ok], c[ok]] = gr[ok]
        return self.fused(lp_id, lp_gr, logit), torch.sigmoid(logit), feats


def _batches(histories: list[np.ndarray], size: int):
    order = np.argsort([len(h) for h in histories], kind="stable")
    for s in range(0, len(order), size):
        rows = order[s:s + size]
        yield rows, [histories[r] for r in rows]


def evaluate_joint(model: JointModel, instances: Instances, ks=DEFAULT_KS, batch_size: int = 512) -> dict[str, float]:
    """Full-ranking Recall/NDCG@K of the fused (or single-tower) scores; inside
    :func:`genrec.distributed.sharded_evaluation` each rank ranks its share of the instances."""
    n = len(instances)
    ranks = joint_ranks(model, distributed.shard_instances(instances), batch_size)
    return metrics_from_ranks(distributed.gather_rows(ranks, n), ks)


def joint_ranks(model: JointModel, instances: Instances, batch_size: int = 512, ties: str = "against") -> np.ndarray:
    """0-based full-catalogue rank of each target under the model's scores; ``ties`` as in
    :func:`genrec.metrics.ranks_from_scores` (``"index"``: the order of the lists the model serves, the
    rule of every test figure ranked from a list)."""
    check_histories(instances.histories, model.num_items)
    was = model.training
    model.eval()
    ranks = np.zeros(len(instances), np.int64)
    try:
        with autocast(model_precision(model), model.device):  # a bf16 model's forwards on CUDA
            for rows, hist in _batches(instances.histories, batch_size):
                fused, _, _ = model.scores(hist)
                ranks[rows] = ranks_from_scores(fused.float().cpu(), instances.targets[rows], ties=ties)
    finally:
        model.train(was)
    return ranks


def joint_gates(model: JointModel, instances: Instances, batch_size: int = 512) -> GateReport:
    """Per-instance gate (weight of the ID tower) with its features and input x gradient attributions."""
    check_histories(instances.histories, model.num_items)
    was = model.training
    model.eval()
    gate = np.zeros(len(instances), np.float32)
    feats = np.zeros((len(instances), len(model.feature_names)), np.float32)
    contrib = np.zeros_like(feats)
    try:
        for rows, hist in _batches(instances.histories, batch_size):
            with autocast(model_precision(model), model.device):  # as joint_ranks: the gates its lists had
                g, f = model.gates(hist)
            gate[rows], feats[rows] = g.float().cpu().numpy(), f.float().cpu().numpy()
            with torch.enable_grad():
                z = model.gate_norm(f).detach().requires_grad_(True)
                (grad,) = torch.autograd.grad(model.gate(z).sum(), z)
            contrib[rows] = (grad * z).detach().float().cpu().numpy()
    finally:
        model.train(was)  # as joint_ranks: a model in training keeps training
    return GateReport(gate, Indicators(model.feature_names, feats), contrib)


# ----------------------------------------------------------------------------------------------
# Training


def train_joint(split: LeaveOneOutSplit, table: Any, config: JointConfig | None = None,
                out_dir: str | Path | None = None, progress: bool = False,
                on_eval: Callable[[dict[str, float]], None] | None = None,
                init: JointModel | None = None, item_text: np.ndarray | None = None) -> TrainResult:
    """Train a :class:`JointModel` (or one tower, ``config.mode``) on ``split.train`` with the semantic
    IDs of ``table`` (``codes``, ``codebook_sizes``), early-stopping on validation NDCG@10; with
    ``out_dir`` checkpoints are written and a rerun resumes (``genrec.training.fit``). ``init``: start
    from a copy of these weights (same architecture) instead of a fresh model. ``item_text``
    ``[num_items, dim]``: the items' text embeddings, needed exactly when ``id_tower.text_dim`` is set
    (a content-aware ID tower, as :func:`genrec.sasrec.train_sasrec`)."""
    config = config or JointConfig()
    setup(config)
    device = usable_device(config.device)  # after setup: under torchrun "cuda" is this rank's GPU
    config = replace(config, id_tower=resolve_text_dim(config.id_tower, item_text))
    # a resume keeps its run's scope, a warm start init's (its gate and norms were fitted on that scope's
    # features: a refresh on longer sequences could otherwise resolve "auto" to the other scope)
    scope = _resumed_scope(out_dir, config, split.num_items) or (init.scope if init is not None else None)
    model = JointModel(split.num_items, table.codes, table.codebook_sizes, config, split.train, item_text,
                       scope=scope)
    if init is not None:
        # the training statistics are this split's (the gate features read them), the rest init's
        own = {k: v.clone() for k, v in model.state_dict().items()
               if k.startswith("token_") or k == "id_tower.item_text"}  # and the text given
        model.load_state_dict({**init.state_dict(), **own})
    if item_text is not None and out_dir is not None:
        check_resumed_text(Path(out_dir) / "last.pt", model.id_tower.item_text, key="id_tower.item_text")
    model.to(device)
    n_train = sum(1 for s in split.train if len(s) >= 2)

    def loss_fn(m: JointModel, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, int]:
        return m.loss(*(t.to(device) for t in batch))

    valid = split.valid.sample(config.eval_users, config.seed)
    return fit(model, config, lambda rng: training_batches(split.train, config, rng),
               math.ceil(n_train / config.batch_size), loss_fn,
               lambda m: evaluate_joint(m, valid, batch_size=config.eval_batch_size), out_dir, progress,
               on_eval, {"codes": torch.as_tensor(np.asarray(table.codes, dtype=np.int64)),
                         "codebook_sizes": [int(s) for s in table.codebook_sizes], "num_items": split.num_items,
                         "gr_scope": model.scope},  # as resolved: loading never re-derives it
               f"joint[{config.mode}]", data_digest(split, np.asarray(table.codes), table.codebook_sizes))


def _resumed_scope(out_dir: str | Path | None, config: JointConfig, num_items: int) -> str | None:
    """The scope of the run a resume continues (its ``last.pt``; one from before the scope was saved: the
    item-count rule it trained under), so that it never goes on under the other scope; None: a new run."""
    if out_dir is None:
        return None
    for name in ("last.pt", "last.prev.pt"):
        path = Path(out_dir) / name
        if path.is_file():
            try:
                ckpt = load_checkpoint(path, kind="joint training checkpoint", keys=("config",))
            except CheckpointError:
                continue  # fit says what is wrong with it
            if ckpt.get("gr_scope") is not None:
                return ckpt["gr_scope"]
            return config.gr_scope if config.gr_scope != "auto" else \
                ("catalogue" if num_items <= config.catalogue_max_items else "target")
    return None


def save_joint(model: JointModel, path: str | Path) -> Path:
    """Save a joint model (weights, config, semantic IDs) atomically, loadable with :func:`load_joint`."""
    return torch_save(path, {"model": model.state_dict(), "config": asdict(model.config),
                             "codes": torch.from_numpy(np.asarray(model.gr_tower.codes, np.int64)),
                             "codebook_sizes": list(model.gr_tower.codebook_sizes), "num_items": model.num_items,
                             "gr_scope": model.scope})


def load_joint(path: str | Path, device: str = "cpu") -> JointModel:
    """Load a model saved by :func:`train_joint` (``best.pt``, or its directory) or :func:`save_joint`
    onto ``device``, wherever it was trained (weights only; a file of another shape is a
    :class:`~genrec.errors.CheckpointError`)."""
    path = Path(path)
    if path.is_dir():
        path = path / "best.pt"
    ckpt = load_checkpoint(path, kind="joint model checkpoint",
                           keys=("model", "config", "codes", "codebook_sizes", "num_items"))
    try:
        model = JointModel(int(ckpt["num_items"]), np.asarray(ckpt["codes"]), ckpt["codebook_sizes"],
                           JointConfig(**saved_config(ckpt["config"])), scope=ckpt.get("gr_scope"))
        model.load_state_dict(ckpt["model"])
    except (TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path}: not a joint model this genrec can load ({e})") from e
    return model.to(usable_device(device)).eval()


__all__ = ["JointConfig", "JointModel", "GATE_FEATURES", "TARGET_SCOPE_FEATURES", "gr_catalogue_log_probs",
           "catalogue_scope_bytes", "resolve_gr_scope", "CATALOGUE_SCOPE_BYTES",
           "gr_target_log_probs", "gr_first_code_stats", "train_joint",
           "evaluate_joint", "joint_ranks", "joint_gates", "MODES", "MIXINGS", "save_joint", "load_joint"]
