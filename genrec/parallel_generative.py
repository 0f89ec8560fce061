"""Parallel semantic-ID decoding (RPG-style, arXiv 2506.05781): all codes of the next item at once.

With product-quantised semantic IDs (PQ / OPQ, :mod:`quantize.pq`) an item's ``M`` codes are
independent coordinates, not a coarse-to-fine path, so the model predicts every level from the same
hidden state in one step: ``log p(c_m | h)`` for ``m = 1..M``, each a softmax over that level's
codebook. An item's score is the sum of its codes' log-probabilities, so exact full-catalogue
ranking is a gather-and-sum over a ``[M, K]`` table per user (no beam search, no invalid IDs), and
the catalogue-normalised distribution ``p(i) = exp(s_i) / sum_j exp(s_j)`` is exact too.

The history is read by SASRec's item-level causal transformer (:mod:`genrec.layers`), each item's
input vector the mean of its code embeddings (plus an item-ID embedding in hybrid mode). Training
is RPG's multi-token objective: the sum over levels of each level's cross-entropy, at every
position of every training sequence. A RepeatNet explore/repeat gate (as in
:class:`genrec.generative.HierarchicalGenerative`) learns how often the next item is one already
in the history.

Conventions (:mod:`genrec.batching`): item ``i`` is token ``i + 1``, 0 is padding, histories are
right-aligned and left-padded.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from genrec import distributed
from genrec.artifacts import load_checkpoint, torch_save
from genrec.batching import check_histories, histories_to_tokens, training_batches
from genrec.beam_search import check_same_codes, eval_mode
from genrec.errors import CheckpointNotFoundError, ConfigError, DataFormatError
from genrec.checkpoint_files import INCOMPATIBLE_CHECKPOINT, incompatible_checkpoint
from genrec.generative import repeat_gate_loss, repeat_mixture
from genrec.layers import Block, encode_sequence, xavier_init
from genrec.metrics import metrics_from_ranks, ranks_from_scores, stable_topk
from genrec.splits import Instances, LeaveOneOutSplit
from genrec.training import TrainResult, data_digest, fit, setup
from genrec.model_settings import autocast, check_training_config, model_precision, saved_config, usable_device

log = logging.getLogger(__name__)

EVAL_KS = (5, 10, 20)


@dataclass
class ParallelConfig:
    """Model and training hyper-parameters of :class:`ParallelCodeModel`."""

    max_len: int = 50  # history window (items)
    hidden: int = 128
    num_blocks: int = 2
    num_heads: int = 2
    dropout: float = 0.5  # item-level transformer
    item_embedding: bool = False  # hybrid mode: add a learned item-ID embedding to the input
    tie_embeddings: bool = True  # level m's output weights = its input code embeddings
    # None: dot-product logits; a float: RPG's cosine similarity between the level's query and each
    # code embedding divided by this temperature (RPG uses 0.07), which bounds every logit
    temperature: float | None = None
    repeat_gate: bool = True  # RepeatNet's explore/repeat mixture (see GenerativeConfig.repeat_gate)
    lr: float = 2e-3
    lr_schedule: str = "cosine"  # or "constant" (genrec.training.fit), stepped per batch
    warmup_epochs: float = 1.0
    schedule_epochs: int | None = None  # cosine horizon (None: max_epochs)
    final_lr_ratio: float = 0.0
    weight_decay: float = 0.0
    batch_size: int = 128
    max_epochs: int = 30
    max_minutes: float | None = None
    patience: int = 3  # evaluations without validation NDCG@10 progress before stopping
    min_delta: float = 0.0
    eval_every: int = 1
    eval_batch_size: int = 512
    seed: int = 0
    num_threads: int | None = None
    nonfinite_loss: str = "error"
    device: str = "cpu"
    precision: str = "fp32"

    def __post_init__(self) -> None:
        check_training_config(self)
        if self.temperature is not None and not self.temperature > 0:
            raise ConfigError(f"temperature must be > 0 (or None for dot-product logits), got {self.temperature}")


class ParallelCodeModel(nn.Module):
    """Item-level causal transformer + one softmax per semantic-ID level, all levels in parallel.

    ``codes`` ``[n_items, M]`` (kept in the state dict: a saved model is self-contained);
    ``codebook_sizes`` ``[M]`` (levels may differ; the per-level tables are padded to the largest).
    """

    min_history = 1  # an empty history leaves the transformer nothing to read

    def __init__(self, codes: np.ndarray, codebook_sizes: Sequence[int], config: ParallelConfig):
        super().__init__()
        codes = np.asarray(codes, dtype=np.int64)
        self.config = config
        self.codebook_sizes = tuple(int(s) for s in codebook_sizes)
        self.num_items, self.num_levels = codes.shape
        if len(self.codebook_sizes) != self.num_levels:
            raise ValueError(f"{len(self.codebook_sizes)} codebook sizes for {self.num_levels} code levels")
        if self.num_items and ((codes < 0).any() or (codes >= np.array(self.codebook_sizes)[None]).any()):
            raise ValueError("a code lies outside its level's codebook")
        self.width = max(self.codebook_sizes)  # K: every level's table is padded to this many codes
        # code m of level l is flat token l * K + m + 1 (0: padding item)
        item_tokens = np.zeros((self.num_items + 1, self.num_levels), dtype=np.int64)
        item_tokens[1:] = codes + self.width * np.arange(self.num_levels)[None] + 1
        self.register_buffer("item_tokens", torch.from_numpy(item_tokens))  # [n_items + 1, M]
        pad = np.ones((self.num_levels, self.width), dtype=bool)
        for lvl, size in enumerate(self.codebook_sizes):
            pad[lvl, :size] = False
        self.register_buffer("code_pad", torch.from_numpy(pad))  # [M, K]: True past a level's codebook
        h = config.hidden
        self.code_emb = nn.Embedding(self.num_levels * self.width + 1, h, padding_idx=0)
        self.item_emb = nn.Embedding(self.num_items + 1, h, padding_idx=0) if config.item_embedding else None
        self.pos_emb = nn.Embedding(config.max_len, h)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(h, config.num_heads, config.dropout) for _ in range(config.num_blocks))
        self.ln_out = nn.LayerNorm(h, eps=1e-8)
        self.level_proj = nn.Linear(h, self.num_levels * h)  # h -> one query per level
        self.out_emb = None if config.tie_embeddings else nn.Embedding(self.num_levels * self.width + 1, h)
        self.out_bias = nn.Parameter(torch.zeros(self.num_levels, self.width))
        self.repeat_head = nn.Linear(h, 1) if config.repeat_gate else None
        self.apply(xavier_init)

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        """``nn.Module.load_state_dict``, refusing weights trained on other semantic IDs
        (:func:`~genrec.beam_search.check_same_codes`): a resumed run names its checkpoint."""
        check_same_codes(self, state_dict)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    @property
    def codes(self) -> np.ndarray:
        """Semantic IDs ``[n_items, M]``."""
        offsets = self.width * torch.arange(self.num_levels, device=self.item_tokens.device)
        return (self.item_tokens[1:] - 1 - offsets).cpu().numpy()

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Item tokens ``[B, T]`` (0 = padding, item i = i+1) -> hidden states ``[B, T, H]``."""
        B, T = tokens.shape
        pad = tokens == 0
        x = self.code_emb(self.item_tokens[tokens]).mean(2)  # [B, T, M, H] -> [B, T, H]
        if self.item_emb is not None:
            x = x + self.item_emb(tokens)
        return encode_sequence(x * math.sqrt(self.config.hidden), pad, self.pos_emb, self.drop, self.blocks, self.ln_out)

    def level_log_probs(self, hidden: torch.Tensor) -> torch.Tensor:
        """Hidden states ``[P, H]`` -> per-level code log-probabilities ``[P, M, K]`` (``-inf`` past
        a level's codebook)."""
        P, H = hidden.shape
        query = self.level_proj(hidden).view(P, self.num_levels, H)  # [P, M, H]
        table = (self.code_emb if self.out_emb is None else self.out_emb).weight[1:]
        table = table.view(self.num_levels, self.width, H)
        if self.config.temperature is not None:
            query, table = F.normalize(query, dim=-1), F.normalize(table, dim=-1)
        logits = torch.einsum("pmh,mkh->pmk", query, table)  # [P, M, K]
        logits = logits / self.config.temperature if self.config.temperature is not None else logits + self.out_bias
        return torch.log_softmax(logits.masked_fill(self.code_pad, -torch.inf), -1)

    def target_log_probs(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Code-level log-probability ``[P]`` of target items ``[P]`` (item indices) given ``[P, H]``:
        the sum over levels of ``log p(c_m | h)`` (differentiable; no repeat gate)."""
        codes = self.item_tokens[targets + 1] - 1 - self.width * torch.arange(self.num_levels, device=hidden.device)
        return self.level_log_probs(hidden).gather(2, codes[:, :, None])[:, :, 0].sum(1)

    def item_scores(self, level_log_probs: torch.Tensor, items: torch.Tensor | None = None) -> torch.Tensor:
        """Sum of each item's code log-probabilities: ``[P, M, K]`` -> ``[P, n_items]`` (the whole
        catalogue) or, with ``items [P, C]`` (item indices), ``[P, C]``. Level by level, so no
        ``[P, n_items, M]`` temporary is ever built."""
        codes = self.item_tokens[1:] - 1 - self.width * torch.arange(self.num_levels, device=level_log_probs.device)
        if items is None:
            out = level_log_probs[:, 0].index_select(1, codes[:, 0])
            for lvl in range(1, self.num_levels):
                out += level_log_probs[:, lvl].index_select(1, codes[:, lvl])
            return out
        picked = codes[items]  # [P, C, M]
        return level_log_probs.gather(2, picked.permute(0, 2, 1)).sum(1)

    def repeat_loss(self, tokens: torch.Tensor, hidden: torch.Tensor, targets: torch.Tensor,
                    valid: torch.Tensor) -> torch.Tensor:
        """Binary cross-entropy of the repeat gate at every ``valid`` position ``[B, T]``."""
        return repeat_gate_loss(self.repeat_head, tokens, hidden, targets, valid)


# ----------------------------------------------------------------------------------------------
# Inference: exact catalogue log-probabilities, top-k, candidate scores, evaluation


def _device(model: ParallelCodeModel) -> torch.device:
    return model.item_tokens.device


def catalogue_log_probs(model: ParallelCodeModel, histories: list[np.ndarray]) -> torch.Tensor:
    """The model's next-item distribution over the whole catalogue ``[n, n_items]`` (CPU float32) for
    one batch of histories: code scores normalised over the items, then (with a repeat gate) the
    explore/repeat mixture."""
    tokens = histories_to_tokens(histories, model.config.max_len).to(_device(model))
    hidden = model(tokens)[:, -1]  # [n, H]
    log_p = torch.log_softmax(model.item_scores(model.level_log_probs(hidden)), -1)  # [n, n_items]
    if model.repeat_head is not None:
        in_history = torch.zeros_like(log_p, dtype=torch.bool)
        rows, pos = tokens.nonzero(as_tuple=True)
        in_history[rows, tokens[rows, pos] - 1] = True
        log_p_history = torch.logsumexp(log_p.masked_fill(~in_history, -torch.inf), -1)
        log_p = repeat_mixture(log_p, in_history, model.repeat_head(hidden)[:, 0], log_p_history)
    return log_p.float().cpu()


def _batches(model: ParallelCodeModel, histories: list[np.ndarray], batch_size: int
             ) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
    check_histories(histories, model.num_items, model.min_history, type(model).__name__)
    device = next(model.parameters()).device
    for start in range(0, len(histories), batch_size):
        rows = np.arange(start, min(start + batch_size, len(histories)))
        # eval mode, no graph and the model's precision (bf16 as in fit's validation) for this batch only:
        # held across the yield, they would leak into the caller's code between batches
        with eval_mode(model), torch.no_grad(), autocast(model_precision(model), device):
            log_probs = catalogue_log_probs(model, [histories[r] for r in rows])
        yield rows, log_probs


def _histories(instances: Instances | list[np.ndarray]) -> list[np.ndarray]:
    return instances.histories if isinstance(instances, Instances) else list(instances)


def recommend(model: ParallelCodeModel, instances: Instances | list[np.ndarray], k: int = 50,
              batch_size: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` items ``[n, k]`` of each history and their log-probabilities ``[n, k]`` (``k``
    capped at the catalogue's size; tied items in index order, so the first ``j`` do not depend on ``k``)."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:  # -1 failed deep in NumPy
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    histories = _histories(instances)
    k = min(k, model.num_items)
    items = np.zeros((len(histories), k), np.int64)
    log_probs = np.zeros((len(histories), k), np.float32)
    for rows, lp in _batches(model, histories, batch_size):
        v, i = stable_topk(lp, k)  # ties in item-index order, as every served list (topk broke them arbitrarily)
        items[rows], log_probs[rows] = i.numpy(), v.numpy()
    return items, log_probs


def score_items(model: ParallelCodeModel, instances: Instances | list[np.ndarray], candidates: np.ndarray,
                batch_size: int = 512) -> np.ndarray:
    """Log-probability ``[n, C]`` of each candidate item ``[n, C]`` (``-1``: padding, ``-inf``)."""
    histories = _histories(instances)
    cand = np.asarray(candidates, dtype=np.int64)
    if cand.ndim != 2 or len(cand) != len(histories):
        raise ValueError(f"candidates must be [n={len(histories)}, C], got {cand.shape}")
    if (cand >= model.num_items).any():
        raise ValueError(f"candidate item index >= {model.num_items}")
    out = np.full(cand.shape, -np.inf, dtype=np.float32)
    for rows, lp in _batches(model, histories, batch_size):
        c = torch.from_numpy(cand[rows])
        s = lp.gather(1, c.clamp_min(0)).masked_fill(c < 0, -torch.inf)
        out[rows] = s.numpy()
    return out


def evaluate(model: ParallelCodeModel, instances: Instances, ks: Sequence[int] = EVAL_KS,
             batch_size: int = 512) -> dict[str, float]:
    """Exact full-ranking Recall/NDCG@K (every item scored; no beam, so no invalid IDs). Inside
    :func:`genrec.distributed.sharded_evaluation` each rank ranks its share of the instances."""
    n = len(instances)
    instances = distributed.shard_instances(instances)
    ranks = np.zeros(len(instances), dtype=np.int64)
    for rows, lp in _batches(model, instances.histories, batch_size):
        ranks[rows] = ranks_from_scores(lp, instances.targets[rows])
    return metrics_from_ranks(distributed.gather_rows(ranks, n), ks)


# ----------------------------------------------------------------------------------------------
# Training, saving, loading


def train_parallel(split: LeaveOneOutSplit, table: Any, config: ParallelConfig | None = None,
                   out_dir: str | Path | None = None, progress: bool = True,
                   on_eval: Callable[[dict[str, float]], None] | None = None) -> TrainResult:
    """Train :class:`ParallelCodeModel` on ``split.train`` with the semantic IDs of ``table``
    (anything with ``codes`` and ``codebook_sizes``; PQ / OPQ codes are what it is built for),
    early-stopping on exact validation NDCG@10. With ``out_dir``: ``best.pt`` / ``last.pt`` written
    atomically after each evaluation, and a rerun resumes from ``last.pt``."""
    config = config or ParallelConfig()
    if len(table.codes) != split.num_items:
        raise DataFormatError(f"the semantic-ID table has {len(table.codes)} items but the dataset has "
                              f"{split.num_items}; was it built for another dataset?")
    setup(config)
    device = usable_device(config.device)
    model = ParallelCodeModel(table.codes, table.codebook_sizes, config).to(device)

    def loss_fn(m: ParallelCodeModel, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, int]:
        inputs, targets = (t.to(device) for t in batch)
        hidden = m(inputs)  # [B, T, H]
        valid = targets > 0
        loss = -m.target_log_probs(hidden[valid], targets[valid] - 1).mean()
        if m.repeat_head is not None:
            loss = loss + m.repeat_loss(inputs, hidden, targets, valid)
        return loss, int(valid.sum())

    n_train = sum(1 for s in split.train if len(s) >= 2)
    return fit(model, config, lambda rng: training_batches(split.train, config, rng),
               math.ceil(n_train / config.batch_size), loss_fn,
               lambda m: evaluate(m, split.valid, batch_size=config.eval_batch_size),
               out_dir, progress, on_eval,
               {"codes": torch.from_numpy(model.codes), "codebook_sizes": list(model.codebook_sizes)}, "parallel",
               data_digest(split, model.codes, model.codebook_sizes))


def save_parallel(model: ParallelCodeModel, path: str | Path) -> None:
    """Save weights, config and semantic IDs atomically, loadable with :func:`load_parallel`."""
    torch_save(path, {"model": model.state_dict(), "config": asdict(model.config),
                      "codes": torch.from_numpy(model.codes), "codebook_sizes": list(model.codebook_sizes)})


def load_parallel(path: str | Path, device: str = "cpu") -> ParallelCodeModel:
    """Load a model saved by :func:`train_parallel` (``best.pt``, or its directory) or :func:`save_parallel`."""
    path = Path(path)
    if path.is_dir():
        path = path / "best.pt"
    if not path.exists():
        raise CheckpointNotFoundError(f"{path}: no parallel-code model checkpoint; train (or save) the model first")
    ckpt = load_checkpoint(path, kind="parallel-code model checkpoint", keys=("model", "config", "codes", "codebook_sizes"))
    try:
        model = ParallelCodeModel(np.asarray(ckpt["codes"]), ckpt["codebook_sizes"],
                                  ParallelConfig(**saved_config(ckpt["config"])))
        model.load_state_dict(ckpt["model"])
    except INCOMPATIBLE_CHECKPOINT as e:
        raise incompatible_checkpoint(path, "parallel-code model", ckpt, e) from e
    return model.to(usable_device(device)).eval()
