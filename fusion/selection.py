"""Honest choice of a primary fusion method: K-fold cross-fitting on the validation split.

Every post-hoc method is fitted on the whole validation split, so its in-sample validation score
favours the more flexible methods (a learned gate can fit validation noise that a one-parameter
grid search cannot). :func:`cross_fit` scores each method out of sample instead: the validation
instances are split into ``folds`` seeded folds (:func:`fold_assignment`); for each fold a fresh
copy of every method is fitted on the other folds and ranks the held-out one. A method's score is
its metric (e.g. ``ndcg@10``) averaged over the folds (:meth:`CrossFit.scores`), and
:func:`select_best` picks the highest (ties: the first in the given order).

Only validation candidates, indicators and targets are inputs here: nothing of the test split
(its targets above all) can influence the choice.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np

from fusion.candidates import CandidateScores, ranks_of
from fusion.indicators import Indicators
from fusion.methods import FusionMethod
from genrec.errors import ConfigError, NothingToFitError
from genrec.metrics import MISS_RANK, per_instance_ndcg

log = logging.getLogger(__name__)

__all__ = ["CrossFit", "fold_assignment", "cross_fit", "cross_fitted_choice", "metric_values", "select_best"]


def fold_assignment(n: int, folds: int, seed: int = 0) -> np.ndarray:
    """``int64 [n]`` fold of each instance: a seeded permutation dealt round-robin, so folds differ
    in size by at most one and the same ``(n, folds, seed)`` always gives the same folds."""
    if folds < 2:
        raise ValueError(f"cross-fitting needs at least 2 folds, got {folds}")
    if n < folds:
        raise ValueError(f"{n} validation instances cannot fill {folds} folds")
    out = np.empty(n, np.int64)
    out[np.random.default_rng(seed).permutation(n)] = np.arange(n) % folds
    return out


def metric_values(ranks: np.ndarray, metric: str) -> np.ndarray:
    """``float64 [n]`` per-instance value of ``metric`` (``ndcg@K`` or ``recall@K``) from 0-based ranks."""
    name, _, k = metric.partition("@")
    if name not in ("ndcg", "recall") or not k.isdigit():
        raise ValueError(f"metric must be ndcg@K or recall@K, got {metric!r}")
    ranks = np.asarray(ranks)
    if name == "ndcg":
        return per_instance_ndcg(ranks, int(k))
    return (ranks < int(k)).astype(np.float64)


@dataclass
class CrossFit:
    """Out-of-fold results on the validation split: ``folds [n]`` (fold of each instance) and, per
    method, ``ranks [n]``: the 0-based rank of each instance's target in the top-``k`` list of the
    copy fitted without that instance's fold (:data:`~genrec.metrics.MISS_RANK` = a miss); ``seconds``: fit
    + rank time."""

    folds: np.ndarray
    ranks: dict[str, np.ndarray]
    k: int
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def num_folds(self) -> int:
        return int(self.folds.max()) + 1 if len(self.folds) else 0

    def scores(self, metric: str) -> dict[str, float]:
        """Per method, ``metric`` averaged over the held-out folds (the mean of the fold means)."""
        name, _, kk = metric.partition("@")
        if kk.isdigit() and int(kk) > self.k:
            raise ValueError(f"{metric} needs lists of length >= {kk}; the cross-fit ranked {self.k}")
        out = {}
        for method, r in self.ranks.items():
            v = metric_values(r, metric)
            out[method] = float(np.mean([v[self.folds == f].mean() for f in range(self.num_folds)]))
        return out

    def arrays(self) -> dict[str, np.ndarray]:
        """Plain arrays to save (``folds`` and ``ranks/<method>``); :meth:`from_arrays` reads them back."""
        return {"folds": self.folds, "k": np.asarray(self.k), **{f"ranks/{m}": r for m, r in self.ranks.items()}}

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> "CrossFit":
        ranks = {key.split("/", 1)[1]: np.asarray(v) for key, v in arrays.items() if key.startswith("ranks/")}
        return cls(np.asarray(arrays["folds"]), ranks, int(arrays["k"]))


def cross_fit(make_methods: Callable[[], Sequence[FusionMethod]], cands: CandidateScores, targets: np.ndarray,
              indicators: Indicators, folds: int = 5, seed: int = 0, k: int = 50) -> CrossFit:
    """Fit fresh methods (``make_methods()``, called once per fold) on all folds but one of the
    validation split and rank the held-out fold with them; see the module doc. ``targets``: the
    validation targets (the only targets this sees). Fewer instances than ``folds``: one fold per
    instance (at least 2 are needed)."""
    targets = np.asarray(targets)
    if len(cands) < 2:
        raise ConfigError(f"fusion.selection_folds: cross-fitting needs at least 2 validation instances, the "
                          f"validation split has {len(cands)}; use a dataset with more users")
    if len(cands) < folds:  # a toy validation split: one instance per fold at most
        log.info("cross-fitting %d validation instances in %d folds instead of %d", len(cands), len(cands), folds)
        folds = len(cands)
    fold = fold_assignment(len(cands), folds, seed)
    ranks: dict[str, np.ndarray] = {}
    seconds: dict[str, float] = {}
    for f in range(folds):
        fit_rows, held = np.flatnonzero(fold != f), np.flatnonzero(fold == f)
        fit_c, fit_i, held_c, held_i = (cands.subset(fit_rows), indicators.subset(fit_rows), cands.subset(held),
                                        indicators.subset(held))
        methods = list(make_methods())
        names = [m.name for m in methods]
        if len(set(names)) < len(names):  # one name's ranks would overwrite the other's
            raise ConfigError(f"cross-fitting needs distinct method names, got {names}")
        for m in methods:
            t0 = time.perf_counter()
            r = ranks.setdefault(m.name, np.full(len(cands), MISS_RANK, np.int64))  # a miss, as ranks_of's
            try:
                m.fit(fit_c, targets[fit_rows], fit_i)
            except NothingToFitError as e:  # a small split whose other folds list no target: no hit to earn
                log.warning("cross-fitting fold %d of %d: %s; its %d instances count as misses for %s",
                            f + 1, folds, e, len(held), m.name)
                seconds[m.name] = seconds.get(m.name, 0.0) + time.perf_counter() - t0
                continue
            r[held] = ranks_of(held_c, m.fuse(held_c, held_i), targets[held], k)
            seconds[m.name] = seconds.get(m.name, 0.0) + time.perf_counter() - t0
    return CrossFit(fold, ranks, k, seconds)


def select_best(scores: Mapping[str, float], order: Sequence[str]) -> str:
    """The name in ``order`` with the highest score (NaN or missing never wins; ties: the earliest
    in ``order``); ``ValueError`` when none has a score."""
    best, best_v = None, -math.inf
    for name in order:
        v = scores.get(name)
        if v is None or math.isnan(v):
            continue
        if v > best_v:
            best, best_v = name, v
    if best is None:
        raise ValueError(f"no method of {list(order)} has a score")
    return best


def cross_fitted_choice(ranks: Mapping[str, np.ndarray], folds: np.ndarray, choose_by: str = "ndcg@10",
                        metric: str = "ndcg@10") -> float:
    """Out-of-sample value of picking the best of fixed candidates on validation: for each fold, the
    candidate with the best mean ``choose_by`` on the other folds (ties: the earliest in ``ranks``)
    is scored by ``metric`` on that fold; the mean of the fold means. ``ranks``: each candidate's
    0-based validation ranks ``[n]``; ``folds``: ``int [n]`` fold of each instance (e.g.
    :attr:`CrossFit.folds`). The best candidate's own in-sample score is biased upwards by the
    choice itself, the more so the more candidates there are; this is not."""
    folds = np.asarray(folds)
    names = list(ranks)
    if not names or any(np.shape(ranks[n]) != folds.shape for n in names):
        raise ValueError(f"need at least one candidate and ranks of the folds' shape {folds.shape}")
    chosen_by = {n: metric_values(ranks[n], choose_by) for n in names}
    scored = {n: metric_values(ranks[n], metric) for n in names}
    out = []
    for f in np.unique(folds):
        fit = folds != f
        best = max(names, key=lambda n: (chosen_by[n][fit].mean() if fit.any() else 0.0, -names.index(n)))
        out.append(scored[best][~fit].mean())
    return float(np.mean(out))
