"""Ranking items added after training (``add_items``) against the trained catalogue: a two-part mixture.

No tower learnt anything about a new item's interactions, so the fusion's scores of new items are
not comparable with those of trained ones: ranking them together either buries new items or lets
them crowd out trained ones (BENCHMARKS.md, issue 13's cold start). The mixture ranks each history's
candidates by

    log(1 - pi) + log softmax(fused / T_warm)[i]   a trained item i among the fusion's candidates
    log pi      + log softmax(z / T)[j]            a new item j, the softmax over every new item

where ``fused`` is the fusion method's score and ``z`` SASRec's logit of each new item
(:func:`new_item_logits`: through its nearest trained item's ID embedding (the learned unknown-ID
vector after ``id_dropout``), plus its own text in a content-aware SASRec; measured on Beauty's validation, these rank the new items better than the
text part alone, BENCHMARKS.md). ``pi`` plays the prior share of new-item targets and ``T`` /
``T_warm`` are temperatures (a log-prob fusion's scores are log-probabilities already, a min-max
fusion's lie in [0, 1] and need a small ``T_warm`` to spread); :func:`fit_new_item_mixture`
chooses them on validation instances whose targets are
new items (a cold-start run's, :mod:`genrec.cold_start`), under a bound on what the trained items'
ranking may lose. Each history's ``candidates`` new items of highest ``z`` join its candidates (not
items of the history itself: the new item sought is not one already read).

Opt-in (``fusion.new_item_mixture``, :meth:`genrec.Recommender.set_new_item_mixture`): on Beauty's
TIGER-protocol validation it places new items worse than the fusion's own scores do at the same
in-set cost (BENCHMARKS.md), so it is a control for new items' exposure (``pi``), not the default.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np

__all__ = ["NewItemMixture", "new_item_logits", "log_softmax_rows", "mix_new_items", "mixture_topk", "mixture_ranks",
           "fit_new_item_mixture", "new_item_candidates", "MIXTURE_LOG_PRIORS", "MIXTURE_TEMPERATURES",
           "MIXTURE_WARM_TEMPERATURES",
           "IN_SET_BOUND", "DEFAULT_CANDIDATES"]

#: the grid :func:`fit_new_item_mixture` searches: log pi from -8 to -0.25, and the temperatures
MIXTURE_LOG_PRIORS = tuple(-8.0 + 0.25 * i for i in range(32))
MIXTURE_TEMPERATURES = (0.5, 0.75, 1.0, 1.5, 2.0, 3.0)
MIXTURE_WARM_TEMPERATURES = (0.05, 0.1, 0.25, 0.5, 1.0)
#: new items added to each history's candidates by default
DEFAULT_CANDIDATES = 20
#: the fit's default bound: the trained-item (in-set) users' NDCG@10 keeps at least this share of
#: what it is with every new item ranked last
IN_SET_BOUND = 0.98


@dataclass(frozen=True)
class NewItemMixture:
    """The mixture's settings (module doc): ``log_prior`` = log pi (< 0), ``temperature`` T (> 0) of
    the new items' text logits, ``warm_temperature`` T_warm (> 0) of the fusion's scores and the new
    items added to each history's candidates (``candidates`` >= 1)."""

    log_prior: float
    temperature: float = 1.0
    candidates: int = DEFAULT_CANDIDATES
    warm_temperature: float = 1.0

    def __post_init__(self) -> None:
        def real(v: Any) -> bool:
            return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)

        if not (real(self.log_prior) and self.log_prior < 0):
            raise ValueError(f"log_prior must be a finite number below 0 (log of a share), got {self.log_prior!r}")
        for name in ("temperature", "warm_temperature"):
            if not (real(getattr(self, name)) and getattr(self, name) > 0):
                raise ValueError(f"{name} must be a finite number above 0, got {getattr(self, name)!r}")
        if not isinstance(self.candidates, numbers.Integral) or isinstance(self.candidates, bool) or self.candidates < 1:
            raise ValueError(f"candidates must be an integer >= 1, got {self.candidates!r}")
        for name, kind in (("log_prior", float), ("temperature", float), ("warm_temperature", float),
                           ("candidates", int)):  # plain Python numbers (NumPy ones are accepted)
            object.__setattr__(self, name, kind(getattr(self, name)))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "new-item mixture") -> "NewItemMixture":
        """From :meth:`to_dict`'s mapping; a missing, unknown or bad key is a ``ValueError`` naming ``where``."""
        if not isinstance(d, dict) or "log_prior" not in d:
            raise ValueError(f"{where}: expected a mapping with 'log_prior' (and 'temperature', 'candidates', "
                             f"'warm_temperature')")
        extra = set(d) - {"log_prior", "temperature", "candidates", "warm_temperature"}
        if extra:
            raise ValueError(f"{where}: unknown key(s) {sorted(extra)}")
        try:
            return cls(**d)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{where}: {e}") from None


def new_item_logits(sasrec: Any, histories: Sequence[np.ndarray], first_new: int, batch_size: int = 1024
                    ) -> np.ndarray:
    """``float32 [n, num_items - first_new]``: SASRec's logits of the items ``first_new ..`` (added
    after training: :func:`genrec.new_items.sasrec_with_new_items` gave them their nearest trained
    item's ID embedding or the unknown-ID vector, plus their own text in a content-aware model) for ``histories`` of item
    indices the model reads (non-empty), the learned repeat bias included."""
    import torch

    from genrec.batching import histories_to_tokens

    if not 0 <= first_new <= sasrec.num_items:
        raise ValueError(f"first_new={first_new} must be within the model's catalogue of {sasrec.num_items} items")
    out = np.empty((len(histories), sasrec.num_items - first_new), np.float32)
    was_training = sasrec.training
    sasrec.eval()
    try:
        with torch.no_grad():
            for s in range(0, len(histories), batch_size):
                tokens = histories_to_tokens(list(histories[s:s + batch_size]), sasrec.config.max_len)
                tokens = tokens.to(sasrec.item_emb.weight.device)
                logits = sasrec.item_logits(sasrec.last_hidden(tokens), tokens, first_new, sasrec.num_items)
                out[s:s + batch_size] = logits.float().cpu().numpy()
    finally:
        sasrec.train(was_training)
    return out


def log_softmax_rows(x: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Row-wise log-softmax of ``x [n, C]`` over the entries where ``mask`` (None: all); the others,
    and rows with nothing to normalise over, get -inf."""
    x = np.asarray(x, np.float64)
    if mask is not None:
        x = np.where(mask, x, -np.inf)
    top = np.max(x, axis=1, keepdims=True)
    live = np.isfinite(top)
    top = np.where(live, top, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = x - top - np.log(np.maximum(np.exp(x - top).sum(1, keepdims=True), 1e-300))
    return np.where(live & np.isfinite(x), out, -np.inf)


def new_item_candidates(items: np.ndarray, new_logits: np.ndarray, first_new: int, per_row: int,
                        histories: Sequence[np.ndarray]) -> np.ndarray:
    """``int64 [n, per_row]``: each row's new items (``first_new + column``) of highest
    ``new_logits``, best first, leaving out the row's history items and its ``items [n, C]``
    (-1 where fewer remain)."""
    rel = np.array(new_logits, np.float64)
    for j, h in enumerate(histories):
        h = np.asarray(h, np.int64)
        rel[j, h[h >= first_new] - first_new] = -np.inf
        c = np.asarray(items[j], np.int64)
        rel[j, c[c >= first_new] - first_new] = -np.inf
    m = min(per_row, rel.shape[1])
    if m == 0:
        return np.full((len(rel), per_row), -1, np.int64)
    top = np.argpartition(-rel, m - 1, axis=1)[:, :m]
    top = np.take_along_axis(top, np.argsort(-np.take_along_axis(rel, top, 1), 1, kind="stable"), 1)
    out = np.where(np.isfinite(np.take_along_axis(rel, top, 1)), top + first_new, -1)
    return np.pad(out, ((0, 0), (0, per_row - m)), constant_values=-1).astype(np.int64)


def _mixed_scores(items: np.ndarray, warm_logp: np.ndarray, new_logp_all: np.ndarray, first_new: int,
                  log_prior: float) -> np.ndarray:
    """The module doc's scores of ``items [n, C']`` given the trained candidates' log-softmax
    ``warm_logp [n, C']`` (-inf elsewhere) and every new item's ``new_logp_all [n, new items]``."""
    is_new = items >= first_new
    new_logp = np.take_along_axis(new_logp_all, np.where(is_new, items - first_new, 0), 1)
    return np.where(items < 0, -np.inf,
                    np.where(is_new, log_prior + new_logp, math.log1p(-math.exp(log_prior)) + warm_logp))


def _with_new_candidates(items: np.ndarray, fused: np.ndarray, new_logits: np.ndarray, first_new: int,
                         candidates: int, histories: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The candidates ``items [n, C]`` plus each row's new ones (:func:`new_item_candidates`), their
    fused scores (-inf for the additions) and the mask of trained candidates with a finite score."""
    items = np.asarray(items, np.int64)
    extra = new_item_candidates(items, new_logits, first_new, candidates, histories)
    all_items = np.concatenate([items, extra], 1)
    fused = np.concatenate([np.asarray(fused, np.float64), np.full(extra.shape, -np.inf)], 1)
    return all_items, fused, (all_items >= 0) & (all_items < first_new) & np.isfinite(fused)


def mix_new_items(items: np.ndarray, fused: np.ndarray, new_logits: np.ndarray, first_new: int,
                  mixture: NewItemMixture, histories: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """``(items [n, C + candidates], scores)``: the fusion's candidates ``items [n, C]`` (-1 padded)
    with their scores ``fused [n, C]`` turned into the mixture's (module doc), plus each row's
    ``mixture.candidates`` new items of highest ``new_logits [n, new items]`` (item
    ``first_new + column``; :func:`new_item_logits`). Rank by the scores, higher first; -inf: not
    recommendable."""
    all_items, fused, warm = _with_new_candidates(items, fused, new_logits, first_new, mixture.candidates, histories)
    new_logp = log_softmax_rows(np.asarray(new_logits, np.float64) / mixture.temperature)
    warm_logp = log_softmax_rows(fused / mixture.warm_temperature, warm)
    return all_items, _mixed_scores(all_items, warm_logp, new_logp, first_new, mixture.log_prior)


def mixture_topk(items: np.ndarray, scores: np.ndarray, k: int) -> np.ndarray:
    """``int64 [n, k]``: each row's ``items`` by :func:`mix_new_items`' ``scores``, best first, without
    the candidates scored -inf or NaN (-1 there, as for padding): what ``Recommender.recommend`` returns."""
    scores = np.where(np.isfinite(scores) & (items >= 0), scores, -np.inf)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    out = np.where(np.isfinite(np.take_along_axis(scores, order, 1)), np.take_along_axis(items, order, 1), -1)
    if out.shape[1] < k:
        out = np.pad(out, ((0, 0), (0, k - out.shape[1])), constant_values=-1)
    return out.astype(np.int64)


def mixture_ranks(items: np.ndarray, fused: np.ndarray, new_logits: np.ndarray, first_new: int,
                  histories: Sequence[np.ndarray], targets: np.ndarray, candidates: int = DEFAULT_CANDIDATES,
                  log_priors: Sequence[float] = MIXTURE_LOG_PRIORS,
                  temperatures: Sequence[float] = MIXTURE_TEMPERATURES,
                  warm_temperatures: Sequence[float] = MIXTURE_WARM_TEMPERATURES, length: int | None = None
                  ) -> tuple[list[tuple[float, float, float]], np.ndarray]:
    """Every grid point's ranks of ``targets``: ``(points, ranks [G, n])``, point 0 = every new item last
    (``(-inf, 1.0, 1.0)``), then each ``(log pi, T, T_warm)``; ranks 0-based,
    :data:`genrec.metrics.MISS_RANK` for a target outside the candidates or, with ``length``, outside the
    first ``length`` (the list served: ``fusion.k``; a rank beyond it is no hit of that list)."""
    from fusion.candidates import union_ranks
    from genrec.metrics import MISS_RANK

    all_items, fused, warm = _with_new_candidates(items, fused, new_logits, first_new, candidates, histories)
    valid = all_items >= 0
    hit = (all_items == np.asarray(targets, np.int64)[:, None]) & valid
    target_index = np.where(hit.any(1), hit.argmax(1), -1)
    points = [(-math.inf, 1.0, 1.0)]
    ranks = [union_ranks(np.where(warm, fused, -np.inf), target_index, valid)]
    z = np.asarray(new_logits, np.float64)
    new_logps = {t: log_softmax_rows(z / t) for t in temperatures}
    for tw in warm_temperatures:
        warm_logp = log_softmax_rows(fused / tw, warm)
        for t in temperatures:
            for lp in log_priors:
                points.append((float(lp), float(t), float(tw)))
                ranks.append(union_ranks(_mixed_scores(all_items, warm_logp, new_logps[t], first_new, lp),
                                         target_index, valid))
    out = np.stack(ranks)
    return points, out if length is None else np.where(out < length, out, MISS_RANK)


def fit_new_item_mixture(ranks: np.ndarray, points: Sequence[tuple[float, float, float]], is_new: np.ndarray,
                         bound: float = IN_SET_BOUND, k: int = 10, plain: np.ndarray | None = None) -> int | None:
    """Index of the grid point (:func:`mixture_ranks`) with the best NDCG@``k`` on the instances whose
    target is new (``is_new [n]``) among those keeping the others' NDCG@``k`` at least ``bound`` of
    point 0's (every new item last); None when no new-target instance beats point 0. ``plain [n]``:
    the 0-based ranks of the list a mixture would replace; then a point must also beat it on the
    new targets and keep the others within ``bound`` of it."""
    from genrec.metrics import per_instance_ndcg

    ndcg = np.stack([per_instance_ndcg(r, k) for r in ranks])  # [G, n]
    is_new = np.asarray(is_new, bool)
    if not is_new.any():
        return None
    in_set = ndcg[:, ~is_new].mean(1) if (~is_new).any() else np.zeros(len(ndcg))
    ok = in_set >= bound * in_set[0] - 1e-12
    floor = ndcg[0, is_new].mean()
    if plain is not None:
        base = per_instance_ndcg(np.asarray(plain), k)
        ok &= in_set >= bound * (base[~is_new].mean() if (~is_new).any() else 0.0) - 1e-12
        floor = max(floor, base[is_new].mean())
    new = np.where(ok, ndcg[:, is_new].mean(1), -np.inf)
    best = int(np.argmax(new))
    return best if best > 0 and new[best] > floor else None
