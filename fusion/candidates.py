"""Candidate sets of two recommenders and their scores, the common input of every fusion method.

For ``n`` instances, :class:`CandidateScores` holds the union of the ID model's (SASRec) and the
generative model's (GR) top-K lists as a padded ``int64 [n, C]`` array (ID-model candidates first in
their rank order, then the GR-only ones in theirs; ``-1`` pads), with each model's *raw* score of
every candidate ``float32 [n, C]`` (ID: log-softmax over the catalogue; GR: the sequence
log-probability of the item's semantic ID) and ``[n, C]`` masks saying which candidates are in each
model's own top-K.

A model's score of a candidate outside its own top-K is ``NaN`` (missing) unless a scoring callback
filled it in: :func:`build_candidates` takes ``id_scorer`` / ``gr_scorer``, functions
``candidates int64 [n, C] (-1 padding) -> scores float32 [n, C]``. For the ID model this is a gather
from its full softmax; for the learned gate, the generative model scores the SASRec-only candidates
by teacher forcing (``genrec.generative.score_items``), so both models have a score for every
candidate of the union. Fixed-weight and adaptive fusion use only the top-K scores (the paper's
protocol: min-max normalised over each model's own top-K, missing = 0), see :meth:`normalized`.

Nothing here holds targets: targets are passed separately, and only for the split a method is
fitted on (validation), never for the one it is applied to.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from genrec.metrics import MISS_RANK, metrics_from_ranks, per_instance_ndcg, ranks_from_topk

Scorer = Callable[[np.ndarray], np.ndarray]  # candidates [n, C] (-1 = padding) -> raw scores [n, C]
MODELS = ("id", "gr")


@dataclass
class CandidateScores:
    """Union of two models' top-K candidates with both models' raw scores (see module doc)."""

    items: np.ndarray  # [n, C] int64 item indices, -1 padding
    id_scores: np.ndarray  # [n, C] float32 raw ID-model scores (log-probs), NaN = missing
    gr_scores: np.ndarray  # [n, C] float32 raw GR scores (log-probs), NaN = missing
    id_in_topk: np.ndarray  # [n, C] bool: candidate is in the ID model's own top-K
    gr_in_topk: np.ndarray  # [n, C] bool: candidate is in the GR model's own top-K

    def __post_init__(self) -> None:
        shape = self.items.shape
        if self.items.ndim != 2 or any(a.shape != shape for a in (self.id_scores, self.gr_scores,
                                                                   self.id_in_topk, self.gr_in_topk)):
            raise ValueError("items, scores and masks must all be [n, C] arrays of one shape")

    def __len__(self) -> int:
        return self.items.shape[0]

    @property
    def width(self) -> int:
        """``C``: the padded union size."""
        return self.items.shape[1]

    @property
    def valid(self) -> np.ndarray:
        """``[n, C]`` bool: real candidates (not padding)."""
        return self.items >= 0

    def scores(self, model: str) -> np.ndarray:
        """Raw scores of ``"id"`` or ``"gr"``."""
        return {"id": self.id_scores, "gr": self.gr_scores}[model]

    def in_topk(self, model: str) -> np.ndarray:
        return {"id": self.id_in_topk, "gr": self.gr_in_topk}[model]

    def subset(self, index: np.ndarray) -> "CandidateScores":
        index = np.asarray(index)
        return CandidateScores(self.items[index], self.id_scores[index], self.gr_scores[index],
                               self.id_in_topk[index], self.gr_in_topk[index])

    def normalized(self, model: str) -> np.ndarray:
        """``[n, C]`` min-max normalised scores of ``model`` over its own top-K, per instance.

        Top-K candidates map to ``[0, 1]`` (best = 1); a single candidate or all-tied scores give
        1.0; candidates outside the model's top-K (missing, or scored by a callback) and padding 0.
        """
        return minmax_normalize(self.scores(model), self.in_topk(model))

    def filled(self, model: str) -> np.ndarray:
        """``[n, C]`` raw scores with missing entries replaced by the row's lowest top-K score of that
        model (an upper bound of any item outside the top-K); padding ``-inf``."""
        s = self.scores(model).astype(np.float32, copy=True)
        topk = self.in_topk(model)
        floor = np.where(topk, s, np.inf).min(1, keepdims=True)
        floor = np.where(np.isfinite(floor), floor, -1e4)
        s = np.where(np.isnan(s) | (~np.isfinite(s) & self.valid), floor, s)
        return np.where(self.valid, s, -np.inf).astype(np.float32)

    def target_index(self, targets: np.ndarray) -> np.ndarray:
        """``[n]`` column of each target in its row of ``items``, ``-1`` when not a candidate."""
        targets = np.asarray(targets)
        if targets.shape != (len(self),):
            raise ValueError(f"{targets.shape} targets for {len(self)} instances")
        hit = (self.items == targets[:, None]) & (self.items >= 0)  # a target of -1 is no padding column
        return np.where(hit.any(1), hit.argmax(1), -1).astype(np.int64)

    def topk(self, fused: np.ndarray, k: int = 50) -> np.ndarray:
        """``int64 [n, k]`` items ranked by ``fused`` scores ``[n, C]``, best first, ``-1`` padded.
        Ties keep candidate order (ID-model candidates first)."""
        return topk_items(self.items, fused, k)


def minmax_normalize(scores: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per row, ``(s - min) / (max - min)`` over the entries where ``mask`` is True; 1.0 where the row
    has a single masked entry or all masked entries tie; 0.0 outside ``mask`` (missing = 0)."""
    s = np.asarray(scores, dtype=np.float64)
    mask = np.asarray(mask, dtype=bool) & np.isfinite(s)
    lo = np.where(mask, s, np.inf).min(1, keepdims=True)
    hi = np.where(mask, s, -np.inf).max(1, keepdims=True)
    span = hi - lo
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(span > 0, (s - lo) / np.where(span > 0, span, 1.0), 1.0)
    return np.where(mask, out, 0.0).astype(np.float32)


def _dedupe_first(items: np.ndarray) -> np.ndarray:
    """``[n, K]`` bool: entry is a real item not seen earlier in its row."""
    eq = items[:, :, None] == items[:, None, :]  # [n, K, K]
    earlier = np.tril(np.ones((items.shape[1], items.shape[1]), bool), -1)  # [K, K]: column before row
    return (items >= 0) & ~(eq & earlier[None]).any(2)


def build_candidates(id_items: np.ndarray, id_scores: np.ndarray, gr_items: np.ndarray, gr_scores: np.ndarray,
                     id_scorer: Scorer | None = None, gr_scorer: Scorer | None = None) -> CandidateScores:
    """Union of two ranked top-K lists ``[n, K_id]`` / ``[n, K_gr]`` (``-1`` or ``-inf`` entries are
    padding) with their scores; optional callbacks score each model's missing candidates (see the
    module doc: for the learned gate, ``gr_scorer`` is the generative model's teacher forcing)."""
    id_items, gr_items = np.asarray(id_items, np.int64), np.asarray(gr_items, np.int64)
    id_scores, gr_scores = np.asarray(id_scores, np.float32), np.asarray(gr_scores, np.float32)
    n = len(id_items)
    if id_items.shape != id_scores.shape or gr_items.shape != gr_scores.shape or len(gr_items) != n:
        raise ValueError(f"inconsistent shapes: id {id_items.shape}/{id_scores.shape}, "
                         f"gr {gr_items.shape}/{gr_scores.shape}")
    id_items = np.where(np.isfinite(id_scores), id_items, -1)
    gr_items = np.where(np.isfinite(gr_scores), gr_items, -1)
    id_keep = _dedupe_first(id_items)
    gr_keep = _dedupe_first(gr_items) & ~(gr_items[:, :, None] == np.where(id_keep, id_items, -2)[:, None, :]).any(2)
    cat_items = np.concatenate([np.where(id_keep, id_items, -1), np.where(gr_keep, gr_items, -1)], 1)
    keep = cat_items >= 0
    order = np.argsort(~keep, axis=1, kind="stable")  # kept entries first, original order
    width = max(int(keep.sum(1).max()) if n else 0, 1)
    order = order[:, :width]
    items = np.take_along_axis(cat_items, order, 1)
    items = np.where(np.take_along_axis(keep, order, 1), items, -1)

    def place(src_items: np.ndarray, src_scores: np.ndarray, keep_src: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # scores of items[n, C] from a list (src_items, src_scores): [n, C, K] match
        match = (items[:, :, None] == np.where(keep_src, src_items, -2)[:, None, :]) & (items[:, :, None] >= 0)
        found = match.any(2)
        pos = match.argmax(2)
        sc = np.where(found, np.take_along_axis(src_scores, pos, 1), np.nan).astype(np.float32)
        return sc, found

    id_sc, id_in = place(id_items, id_scores, id_keep)
    gr_sc, gr_in = place(gr_items, gr_scores, _dedupe_first(gr_items))
    for scorer, sc, inn in ((id_scorer, id_sc, id_in), (gr_scorer, gr_sc, gr_in)):
        if scorer is None:
            continue
        need = (items >= 0) & ~inn
        if need.any():
            ask = np.where(need, items, -1)
            got = np.asarray(scorer(ask), dtype=np.float32)
            if got.shape != items.shape:
                raise ValueError(f"scorer returned {got.shape}, expected {items.shape}")
            sc[need] = got[need]
    return CandidateScores(items=items, id_scores=id_sc, gr_scores=gr_sc, id_in_topk=id_in, gr_in_topk=gr_in)


def topk_items(items: np.ndarray, fused: np.ndarray, k: int = 50) -> np.ndarray:
    """``int64 [n, k]`` of ``items [n, C]`` ordered by ``fused [n, C]`` descending (stable; padding and
    candidates scored NaN or +-inf dropped as ``-1``, as :func:`union_ranks` counts such a target a miss)."""
    fused = np.asarray(fused, np.float64)
    fused = np.where((items >= 0) & np.isfinite(fused), fused, -np.inf)
    order = np.argsort(-fused, axis=1, kind="stable")[:, :k]
    out = np.where(np.isfinite(np.take_along_axis(fused, order, 1)), np.take_along_axis(items, order, 1), -1)
    if out.shape[1] < k:
        out = np.concatenate([out, np.full((len(out), k - out.shape[1]), -1, np.int64)], 1)
    return out.astype(np.int64)


def union_ranks(fused: np.ndarray, target_index: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """0-based rank of each target among its row's candidates by ``fused [n, C]`` (the order of
    :func:`topk_items` among finite scores: higher first, ties in candidate order);
    :data:`~genrec.metrics.MISS_RANK` when not a candidate.

    An O(n * C) comparison instead of a sort, for grid searches and early stopping. A target scored
    NaN or +-inf is a miss too. Without ``valid``, other candidates scored NaN count as ahead of it, as
    in :func:`genrec.metrics.ranks_from_scores`; with it, candidates scored NaN or +-inf count as
    padding (behind it), as :func:`topk_items` leaves them out of the served list.
    """
    fused = np.asarray(fused, np.float64)
    if valid is not None:
        # NaN and +inf as topk_items drops them (nan_to_num would make -inf finite)
        fused = np.where(valid & np.isfinite(fused), fused, -np.inf)
    n, C = fused.shape
    ti = np.asarray(target_index)
    ok = ti >= 0
    t_score = fused[np.arange(n), np.maximum(ti, 0)][:, None]
    ahead = (fused > t_score).sum(1) + ((fused == t_score) & (np.arange(C)[None] < ti[:, None])).sum(1)
    ahead += np.isnan(fused).sum(1)  # NaN-scored candidates count as ahead, as in genrec.metrics
    ok &= np.isfinite(t_score[:, 0])
    return np.where(ok, ahead, MISS_RANK).astype(np.int64)


def ndcg_at(ranks: np.ndarray, k: int = 10) -> float:
    """Mean NDCG@k from 0-based ranks."""
    return float(per_instance_ndcg(ranks, k).mean()) if len(ranks) else 0.0


def ranks_of(cands: CandidateScores, fused: np.ndarray, targets: np.ndarray, k: int = 50) -> np.ndarray:
    """Ranks of ``targets`` in the fused top-``k`` lists (absent: ``genrec.metrics.MISS_RANK``)."""
    return ranks_from_topk(cands.topk(fused, k), targets)


def evaluate_fused(cands: CandidateScores, fused: np.ndarray, targets: np.ndarray, k: int = 50,
                   ks=(5, 10, 20, 50)) -> dict[str, float]:
    """Recall/NDCG@K of the fused ranking (full catalogue: a target outside the union is a miss)."""
    return metrics_from_ranks(ranks_of(cands, fused, targets, k), [x for x in ks if x <= k])


__all__ = ["CandidateScores", "Scorer", "build_candidates", "minmax_normalize", "topk_items", "union_ranks",
           "ndcg_at", "ranks_of", "evaluate_fused"]
