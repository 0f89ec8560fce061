"""Per-instance indicator features that tell memorization from generalization cases.

Every feature is computed *without the target*: from the two models' outputs and from the training
sequences (``split.train``, the same edges the memorization labels use). Counts are ``log1p``-ed.

===========================  ===================================================================
feature                      meaning
===========================  ===================================================================
``id_msp``                   ID model's maximum softmax probability over all items (arXiv 2603.19809)
``id_entropy``               entropy of the ID model's softmax (nats)
``id_top1_edge``             training count of the transition last item -> ID model's top-1 item
``gr_top1_logp``             GR's best beam log-probability
``gr_margin``                GR's top-1 minus top-2 log-probability (capped at 20)
``gr_top1_edge``             training count of last item -> GR's top-1 item
``last_source_count``        how often the last history item is a transition source in training
``last_out_degree``          distinct successors of the last item in training
``last_popularity``          occurrences of the last item in training
``history_length``           number of history items
``prefix_source@n``          transitions out of items sharing the last item's length-n code prefix
``gr_top1_prefix_edge@n``    training transitions prefix_n(last) -> prefix_n(GR top-1) (token-level
                             prefix support of GR's answer, :func:`genrec.memorization.prefix_ids`)
===========================  ===================================================================

:class:`Standardizer` is fitted on validation indicators only and applied to test ones.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from genrec.memorization import prefix_ids
from genrec.splits import Instances

log = logging.getLogger(__name__)


@dataclass
class Indicators:
    """A named feature matrix: ``values[k, j]`` is feature ``names[j]`` of instance ``k``."""

    names: tuple[str, ...]
    values: np.ndarray  # [n, F] float32

    def __post_init__(self) -> None:
        self.names = tuple(self.names)
        values = np.asarray(self.values, dtype=np.float32)
        # [n, 0] (no feature selected) keeps its n rows, which reshape(-1, 0) cannot infer
        self.values = values.reshape(len(values) if values.ndim == 2 else -1, len(self.names))

    def __len__(self) -> int:
        return self.values.shape[0]

    def column(self, name: str) -> np.ndarray:
        if name not in self.names:
            raise KeyError(f"no indicator {name!r}; have {list(self.names)}")
        return self.values[:, self.names.index(name)]

    def select(self, names: Sequence[str]) -> "Indicators":
        return Indicators(tuple(names), np.stack([self.column(n) for n in names], 1) if names
                          else np.zeros((len(self), 0), np.float32))

    def subset(self, index: np.ndarray) -> "Indicators":
        return Indicators(self.names, self.values[np.asarray(index)])

    def row(self, k: int) -> dict[str, float]:
        return {n: float(v) for n, v in zip(self.names, self.values[k])}


@dataclass
class Standardizer:
    """Per-feature ``(x - mean) / std``; fit it on validation indicators only."""

    names: tuple[str, ...] = ()
    mean: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    std: np.ndarray = field(default_factory=lambda: np.ones(0, np.float32))

    @classmethod
    def fit(cls, ind: Indicators) -> "Standardizer":
        """Mean and std of each column over finite values, in float64: float32 sums give a constant column
        a std of ~1e-4, which then blew a later row's other value up ~1e4-fold (the gate saturated). A
        column constant here (or with no finite value) keeps std 1: it carries no information."""
        x = np.asarray(ind.values, np.float64)
        finite = np.isfinite(x)
        count = finite.sum(0)
        safe = np.where(finite, x, 0.0)
        mean = safe.sum(0) / np.maximum(count, 1)
        std = np.sqrt(np.where(finite, (safe - mean) ** 2, 0.0).sum(0) / np.maximum(count, 1))
        constant = (count == 0) | (std <= 1e-6 * np.abs(mean) + 1e-12)  # relative: a small-scale column keeps its std
        return cls(ind.names, mean.astype(np.float32), np.where(constant, 1.0, std).astype(np.float32))

    def transform(self, ind: Indicators) -> np.ndarray:
        """``[n, F]`` standardised values of ``ind`` (columns matched by name); a NaN or infinite value
        becomes 0, the fitted mean (a feature without a value moves no gate; it made every score NaN)."""
        z = (ind.select(self.names).values - self.mean) / self.std
        bad = ~np.isfinite(z)
        if bad.any():
            log.warning("%d non-finite indicator value(s) in %d row(s) (%s) read as the fitted mean", int(bad.sum()),
                        int(bad.any(1).sum()), ", ".join(n for n, b in zip(self.names, bad.any(0)) if b))
            z = np.where(bad, 0.0, z)
        return z.astype(np.float32)

    def state(self) -> dict[str, Any]:
        """Names (a list) and ``mean`` / ``std`` (float32 tensors): loadable with ``weights_only=True``."""
        import torch

        return {"names": list(self.names), "mean": torch.from_numpy(np.array(self.mean, np.float32)),
                "std": torch.from_numpy(np.array(self.std, np.float32))}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> "Standardizer":
        """The standardizer :meth:`state` describes; a malformed state is a ``ValueError``."""
        import torch

        if not isinstance(state, Mapping) or set(state) != {"names", "mean", "std"}:
            raise ValueError(f"standardizer state must have exactly the entries names, mean, std; got "
                             f"{sorted(map(str, state)) if isinstance(state, Mapping) else type(state).__name__}")
        names = state["names"]
        if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
            raise ValueError("standardizer names must be a list of strings")
        arrays = {}
        for key in ("mean", "std"):
            v = state[key]
            if not isinstance(v, torch.Tensor) or v.dtype != torch.float32 or v.shape != (len(names),):
                raise ValueError(f"standardizer {key} must be a float32 tensor of shape ({len(names)},), got "
                                 f"{tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__}"
                                 f"{' ' + str(v.dtype) if isinstance(v, torch.Tensor) else ''}")
            arrays[key] = v.detach().cpu().numpy().copy()
        return cls(tuple(names), arrays["mean"], arrays["std"])


class TrainStats:
    """Item and transition counts of the training sequences (``split.train``), and with ``codes``
    (``[n_items, levels]`` semantic IDs) the same at the level of code prefixes."""

    def __init__(self, train: Sequence[np.ndarray], num_items: int, codes: np.ndarray | None = None):
        self.num_items = int(num_items)
        seqs = [np.asarray(s, dtype=np.int64) for s in train]
        flat = np.concatenate(seqs) if seqs else np.zeros(0, np.int64)
        self.popularity = np.bincount(flat, minlength=self.num_items)
        src = np.concatenate([s[:-1] for s in seqs]) if seqs else np.zeros(0, np.int64)
        dst = np.concatenate([s[1:] for s in seqs]) if seqs else np.zeros(0, np.int64)
        self._src, self._dst = src, dst
        self.source_count = np.bincount(src, minlength=self.num_items)
        self.pair_keys, self.pair_counts = np.unique(src * self.num_items + dst, return_counts=True)
        self.out_degree = np.bincount(self.pair_keys // self.num_items, minlength=self.num_items)
        self.codes = None if codes is None else np.asarray(codes, dtype=np.int64)
        self._prefix: dict[int, tuple[np.ndarray, int, np.ndarray, np.ndarray, np.ndarray]] = {}
        if self.codes is not None and len(self.codes) != self.num_items:
            raise ValueError(f"codes has {len(self.codes)} rows for {self.num_items} items")

    @property
    def levels(self) -> int:
        return 0 if self.codes is None else self.codes.shape[1]

    @staticmethod
    def _count(keys: np.ndarray, counts: np.ndarray, q: np.ndarray) -> np.ndarray:
        if not len(keys):
            return np.zeros(q.shape, np.int64)
        pos = np.minimum(np.searchsorted(keys, q), len(keys) - 1)
        return np.where(keys[pos] == q, counts[pos], 0)

    def pair_count(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Training count of adjacent transitions ``u -> v`` (elementwise; ``v < 0`` gives 0)."""
        u, v = np.asarray(u, np.int64), np.asarray(v, np.int64)
        return np.where(v >= 0, self._count(self.pair_keys, self.pair_counts, u * self.num_items + np.maximum(v, 0)), 0)

    def _prefix_tables(self, n: int):
        if n not in self._prefix:
            pid = prefix_ids(self.codes, n)
            m = int(pid.max()) + 1
            keys, counts = np.unique(pid[self._src] * m + pid[self._dst], return_counts=True)
            self._prefix[n] = (pid, m, keys, counts, np.bincount(pid[self._src], minlength=m))
        return self._prefix[n]

    def prefix_pair_count(self, n: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Training transitions ``u' -> v'`` with ``prefix_n(u') = prefix_n(u)``, ``prefix_n(v') = prefix_n(v)``."""
        pid, m, keys, counts, _ = self._prefix_tables(n)
        u, v = np.asarray(u, np.int64), np.asarray(v, np.int64)
        return np.where(v >= 0, self._count(keys, counts, pid[u] * m + pid[np.maximum(v, 0)]), 0)

    def prefix_source_count(self, n: int, u: np.ndarray) -> np.ndarray:
        """Training transitions out of items sharing ``u``'s length-``n`` prefix."""
        pid, _, _, _, src = self._prefix_tables(n)
        return src[pid[np.asarray(u, np.int64)]]


def compute_indicators(histories: Instances | Sequence[np.ndarray], stats: TrainStats, *,
                       id_summary: Mapping[str, np.ndarray] | None = None, id_items: np.ndarray | None = None,
                       gr_items: np.ndarray | None = None, gr_log_probs: np.ndarray | None = None,
                       prefix_levels: Sequence[int] | None = None) -> Indicators:
    """Indicators of ``n`` instances from whatever model outputs are given (module doc's table).

    ``id_summary``: ``genrec.sasrec.softmax_summary`` output (``max_prob``, ``entropy``, each ``[n]``);
    ``id_items``: ID top-K ``[n, K]``; ``gr_items`` / ``gr_log_probs``: the beam's ``[n, K]`` items
    and log-probs, best first. ``prefix_levels`` (default: all but the last code level) picks the
    prefix lengths of the token-level features when ``stats`` has codes.
    """
    hist = histories.histories if isinstance(histories, Instances) else histories
    n = len(hist)
    last = np.array([h[-1] if len(h) else 0 for h in hist], dtype=np.int64)
    cols: dict[str, np.ndarray] = {}
    if id_summary is not None:
        cols["id_msp"] = np.asarray(id_summary["max_prob"], np.float64)
        cols["id_entropy"] = np.asarray(id_summary["entropy"], np.float64)
    if id_items is not None:
        cols["id_top1_edge"] = np.log1p(stats.pair_count(last, np.asarray(id_items)[:, 0]))
    if gr_log_probs is not None:
        lp = np.asarray(gr_log_probs, np.float64)
        top1 = np.where(np.isfinite(lp[:, 0]), lp[:, 0], -50.0)
        top2 = lp[:, 1] if lp.shape[1] > 1 else np.full(n, -np.inf)
        cols["gr_top1_logp"] = top1
        cols["gr_margin"] = np.minimum(np.where(np.isfinite(top2), top1 - top2, 20.0), 20.0)
    if gr_items is not None:
        cols["gr_top1_edge"] = np.log1p(stats.pair_count(last, np.asarray(gr_items)[:, 0]))
    cols["last_source_count"] = np.log1p(stats.source_count[last])
    cols["last_out_degree"] = np.log1p(stats.out_degree[last])
    cols["last_popularity"] = np.log1p(stats.popularity[last])
    cols["history_length"] = np.log1p(np.array([len(h) for h in hist], np.float64))
    if stats.codes is not None:
        levels = prefix_levels if prefix_levels is not None else range(1, max(stats.levels, 2))
        for lvl in levels:
            cols[f"prefix_source@{lvl}"] = np.log1p(stats.prefix_source_count(lvl, last))
            if gr_items is not None:
                cols[f"gr_top1_prefix_edge@{lvl}"] = np.log1p(
                    stats.prefix_pair_count(lvl, last, np.asarray(gr_items)[:, 0]))
    for name, v in cols.items():
        if v.shape != (n,):
            raise ValueError(f"indicator {name}: shape {v.shape}, expected ({n},)")
    names = tuple(cols)
    return Indicators(names, np.stack([cols[k] for k in names], 1) if names else np.zeros((n, 0)))


#: the indicator columns :func:`compute_indicators` can produce (``@L``: one per semantic-ID prefix level)
INDICATOR_NAMES = ("id_msp", "id_entropy", "id_top1_edge", "gr_top1_logp", "gr_margin", "gr_top1_edge",
                   "last_source_count", "last_out_degree", "last_popularity", "history_length",
                   "prefix_source@L", "gr_top1_prefix_edge@L")


def is_indicator_name(name: str) -> bool:
    """Whether ``name`` is a column :func:`compute_indicators` can produce (a level written as it names
    its columns: ``@1``, not ``@01``)."""
    base, at, level = str(name).partition("@")
    if not at:
        return name in INDICATOR_NAMES
    return f"{base}@L" in INDICATOR_NAMES and level.isdigit() and level == str(int(level))


__all__ = ["Indicators", "Standardizer", "TrainStats", "compute_indicators", "INDICATOR_NAMES", "is_indicator_name"]
