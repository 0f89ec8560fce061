"""Full-ranking Recall@K / NDCG@K with one target per instance.

Protocol (TIGER, arXiv 2603.19809): every catalogue item is a candidate, history items are *not*
masked unless asked. With a single relevant item, Recall@K is the hit rate and
NDCG@K = 1 / log2(rank + 2) for a 0-based rank < K.

Ties: ranks taken from scores (:func:`ranks_from_scores`, the models' validation during training)
break them against the target by default: an item scoring exactly the same as the target counts as
ranked ahead of it, so constant or degenerate scores never look good. Ranks taken from a ranked list
(:func:`ranks_from_topk`, every test figure of the recipe: the lists a user is served) inherit the
list's order, where :func:`stable_topk` puts tied items in index order; ``ties="index"`` ranks scores
the same way, so that a model ranked from its scores is compared on the lists' terms. With float32
scores of trained models exact ties are rare (bf16 scores tie often). A target whose score is NaN or
infinite (a diverged model) is always a miss, and every metric is checked to lie in [0, 1].
"""

from __future__ import annotations

from typing import Callable, Iterable, Sequence

import numpy as np
import torch

DEFAULT_KS = (5, 10, 20, 50)
#: how :func:`ranks_from_scores` ranks an item scoring the same as the target (see the module doc)
TIE_RULES = ("against", "index")
#: the rank of a target that cannot be ranked (masked, or scored NaN / inf): beyond every K, so a
#: miss even when K exceeds a tiny catalogue
MISS_RANK = 2**31 - 1


def ranks_from_scores(
    scores: torch.Tensor | np.ndarray,
    targets: torch.Tensor | np.ndarray,
    exclude: Sequence[np.ndarray] | None = None,
    ties: str = "against",
) -> np.ndarray:
    """0-based rank of each target in its row of ``scores`` ``[n, num_items]``.

    ``exclude[k]``: items to remove from row k before ranking (history masking); the target itself
    is never removed by it (if it is in ``exclude[k]``, the instance gets :data:`MISS_RANK`, a miss).
    A target scored NaN or +-inf also gets :data:`MISS_RANK`. ``ties="against"`` (default): items
    scoring the same as the target, or NaN, count as ranked ahead of it (a diverged model never
    scores a hit); ``ties="index"``: the order :func:`stable_topk` serves, tied items in index order
    and NaN last.
    """
    if ties not in TIE_RULES:
        raise ValueError(f"ties must be one of {TIE_RULES}, got {ties!r}")
    s = _exact(torch.as_tensor(scores))  # float64 compared as given: float32 would tie near-equal scores
    t = torch.as_tensor(np.asarray(targets), dtype=torch.long)
    if s.ndim != 2 or t.shape != (s.shape[0],):
        raise ValueError(f"scores must be [n, items] and targets [n]; got {tuple(s.shape)} and {tuple(t.shape)}")
    _check_targets(t.numpy(), s.shape[1])
    if exclude is not None:
        s = s.clone()
        rows, cols = _exclusions(exclude, s.shape[0], s.shape[1])
        s[torch.as_tensor(rows, dtype=torch.long), torch.as_tensor(cols, dtype=torch.long)] = -torch.inf
    target_scores = s.gather(1, t[:, None])  # [n, 1]
    if exclude is not None:
        masked = torch.isneginf(target_scores[:, 0])
    if ties == "index":
        before = torch.arange(s.shape[1])[None, :] < t[:, None]  # [n, items]: lower index than the target
        ahead = ((s > target_scores) | ((s == target_scores) & before)).sum(1)
    else:
        # minus the target itself; an item scored NaN counts as ahead (a partly diverged model never
        # gains a hit from the NaN scores of the other items)
        ahead = ((s >= target_scores) | torch.isnan(s)).sum(1) - 1
    ranks = ahead.numpy().astype(np.int64)
    if exclude is not None:
        ranks[masked.numpy()] = MISS_RANK
    ranks[~torch.isfinite(target_scores[:, 0]).numpy()] = MISS_RANK
    return ranks


def ranks_from_score_chunks(
    score: Callable[[np.ndarray | None, int, int], torch.Tensor],
    num_items: int,
    targets: torch.Tensor | np.ndarray,
    chunk: int,
    exclude: Sequence[np.ndarray] | None = None,
) -> np.ndarray:
    """The ranks of :func:`ranks_from_scores` without ever holding ``[n, num_items]`` scores.

    ``score(rows, start, stop)`` gives the scores ``[len(rows), stop - start]`` of items ``start ..
    stop - 1`` for those rows (``rows`` None: all ``n``), identical however it is asked. The target
    scores come first, each row from the chunk holding its target; then every chunk counts the items
    ahead of them. With ``chunk >= num_items`` this is :func:`ranks_from_scores` on one call.
    """
    t = np.asarray(targets, dtype=np.int64)
    if t.ndim != 1:
        raise ValueError(f"targets must be [n], got shape {t.shape}")
    _check_targets(t, num_items)
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    if chunk >= num_items:
        return ranks_from_scores(score(None, 0, num_items), t, exclude=exclude)
    n = len(t)
    if exclude is not None:
        ex_rows, ex_cols = _exclusions(exclude, n, num_items)
        masked = np.zeros(n, dtype=bool)
        masked[ex_rows[ex_cols == t[ex_rows]]] = True
    target_scores = None  # [n], in the scores' own precision (float64 kept: float32 would tie near-equal ones)
    for c in np.unique(t // chunk):  # pass 1: [rows, chunk] scores per chunk that holds a target
        rows = np.flatnonzero(t // chunk == c)
        s = _exact(score(rows, int(c) * chunk, min(int(c + 1) * chunk, num_items)))
        if target_scores is None:
            target_scores = torch.empty(n, dtype=s.dtype)
        target_scores[torch.as_tensor(rows)] = s[torch.arange(len(rows)), torch.as_tensor(t[rows] - c * chunk)]
    if target_scores is None:  # no instance
        target_scores = torch.empty(0)
    ahead = torch.zeros(n, dtype=torch.long)
    for start in range(0, num_items, chunk):  # pass 2: count, chunk by chunk
        stop = min(start + chunk, num_items)
        s = _exact(score(None, start, stop)).to(target_scores.dtype)  # [n, stop - start]
        if exclude is not None:
            s = s.clone()  # the masking below must not write into the caller's scores
            sel = (ex_cols >= start) & (ex_cols < stop)
            s[torch.as_tensor(ex_rows[sel]), torch.as_tensor(ex_cols[sel] - start)] = -torch.inf
        # "not below the target" is ">= or NaN" in one comparison (NaN compares False): one pass
        # over the chunk instead of three, which is most of the cost at 1M items
        behind = s < target_scores[:, None]
        ahead += (stop - start) - _count_true(behind)
        # the target is not ahead of itself (counted out by position, not by its recomputed score)
        own = torch.as_tensor(np.flatnonzero((t >= start) & (t < stop)))
        ahead[own] -= (~behind[own, torch.as_tensor(t[own.numpy()] - start)]).long()
    ranks = ahead.numpy().astype(np.int64)
    if exclude is not None:
        ranks[masked] = MISS_RANK
    ranks[~torch.isfinite(target_scores).numpy()] = MISS_RANK
    return ranks


def _check_targets(t: np.ndarray, num_items: int) -> None:
    if t.size and (t.min() < 0 or t.max() >= num_items):
        raise ValueError(f"targets must lie in 0..{num_items - 1}, got {int(t.min())}..{int(t.max())}")


def _exclusions(exclude: Sequence[np.ndarray], n: int, num_items: int) -> tuple[np.ndarray, np.ndarray]:
    """``exclude`` (one array of item indices per row) as flat ``(rows, cols)`` int64 arrays; an index
    outside the catalogue is an error (a -1 of a padded history would mask the last item)."""
    if len(exclude) != n:  # a shorter list left the other rows unmasked
        raise ValueError(f"exclude must hold one array per row: {len(exclude)} for {n} rows")
    cols = [np.asarray(e, dtype=np.int64).reshape(-1) for e in exclude]
    for k, c in enumerate(cols):
        if c.size and (c.min() < 0 or c.max() >= num_items):
            bad = int(c[(c < 0) | (c >= num_items)][0])
            raise ValueError(f"exclude[{k}] holds item {bad}, outside the catalogue 0..{num_items - 1}")
    rows = np.concatenate([np.full(len(c), k, np.int64) for k, c in enumerate(cols)]) if n else np.zeros(0, np.int64)
    return rows, (np.concatenate(cols) if n else np.zeros(0, np.int64))


def _exact(scores: torch.Tensor) -> torch.Tensor:
    """Scores to rank by: float64 as given, anything else (bf16, half) as float32."""
    return scores if scores.dtype == torch.float64 else scores.float()


def _count_true(mask: torch.Tensor) -> torch.Tensor:
    """``[n]`` int64 count of True per row of ``mask [n, w]``. Summing a bool matrix converts it to
    int64 first (8 bytes an entry, most of the evaluation time at 1M items); byte sums over groups of
    255 columns cannot overflow and touch 1 byte an entry."""
    n, w = mask.shape
    if n == 0:  # reshape(0, -1, 255) below is ambiguous
        return torch.zeros(0, dtype=torch.int64)
    u = mask.view(torch.uint8)
    whole = w // 255 * 255
    counts = u[:, whole:].sum(1, dtype=torch.int64)
    if whole:
        counts += u[:, :whole].reshape(n, -1, 255).sum(2, dtype=torch.uint8).sum(1, dtype=torch.int64)
    return counts


def merge_topk(values: torch.Tensor | None, items: torch.Tensor | None, new_values: torch.Tensor,
               new_items: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The best ``k`` of two ranked lists per row (``values`` / ``items`` ``[n, <= k]``, None for none yet,
    and the new ``[n, m]``): the running top-k of scores streamed over item chunks. Ties go to the earlier
    entry (:func:`stable_topk`): streamed in item order, the lower item index, as a whole-catalogue
    ranking gives (``Tensor.topk`` broke them arbitrarily: a new item copying its neighbour's vector
    came first about half the time)."""
    if values is None:
        v, order = stable_topk(new_values, k)
        return v, new_items.gather(1, order)
    v, order = stable_topk(torch.cat([values, new_values], 1), k)
    return v, torch.cat([items, new_items], 1).gather(1, order)


def stable_topk(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(values, indices)`` ``[n, k]`` of the ``k`` highest ``scores`` ``[n, m]`` per row, ties broken
    by the lower index, so a row's first ``j`` items are the same for every ``k >= j`` (``Tensor.topk``
    breaks ties arbitrarily: asked for 10 or for 50 it may keep different tied items). NaN ranks as -inf.

    One ``topk`` of ``k + 1`` and a reorder of the ``k`` kept items; only a row with a tie across the
    ``k``-th place (or a NaN) takes the exact pass over its whole row."""
    n, m = scores.shape
    k = min(k, m)
    v, i = scores.topk(min(k + 1, m), dim=-1)  # [n, k(+1)], NaN first
    slow = torch.isnan(v).any(1)
    if v.shape[1] > k:  # the (k+1)-th equal to the k-th: which tied items make the list is open
        slow |= v[:, k] == v[:, k - 1]
    v, i = v[:, :k], i[:, :k]
    by_index = i.argsort(dim=1)  # within the list, equal values in index order
    v, i = v.gather(1, by_index), i.gather(1, by_index)
    order = v.argsort(dim=1, descending=True, stable=True)
    v, i = v.gather(1, order), i.gather(1, order)
    if slow.any():
        rows = slow.nonzero()[:, 0]
        v[rows], i[rows] = _exact_stable_topk(scores[rows], k)
    return v, i


def _exact_stable_topk(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`stable_topk` by a pass over every score: the ``k``-th value's ties kept lowest index first."""
    scores = torch.nan_to_num(scores, nan=-torch.inf, posinf=torch.inf, neginf=-torch.inf)  # infinities kept
    kth = scores.topk(k, dim=-1).values[:, -1:]  # [n, 1]: the k-th best value
    above = scores > kth
    tied = scores == kth
    need = k - above.sum(1, keepdim=True)  # [n, 1] tied items to keep: the lowest indices
    keep = above | (tied & (tied.cumsum(1) <= need))  # exactly k per row
    index = keep.nonzero()[:, 1].view(len(scores), k)  # ascending index per row
    values = scores.gather(1, index)
    order = values.argsort(dim=1, descending=True, stable=True)  # equal values keep index order
    return values.gather(1, order), index.gather(1, order)


def ranks_from_topk(topk: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """0-based rank of each target in its ranked list ``topk[n, K]``; :data:`MISS_RANK` if absent, a
    miss at every cutoff (were it ``K``, a cutoff beyond the list would count every miss as a hit).

    Entries < 0 are padding (a list shorter than K).
    """
    topk = np.asarray(topk)
    targets = np.asarray(targets)
    if topk.ndim != 2 or targets.shape != (topk.shape[0],):
        raise ValueError(f"topk must be [n, K] and targets [n]; got {topk.shape} and {targets.shape}")
    hit = (topk == targets[:, None]) & (topk >= 0)
    ranks = np.where(hit.any(1), hit.argmax(1), MISS_RANK)
    return ranks.astype(np.int64)


def check_cutoffs(ks: Iterable[int], topk: np.ndarray) -> None:
    """Refuse a cutoff longer than the ranked lists ``topk[n, K]``: its recall would silently equal
    the recall at ``K`` (the hits beyond the list are unknown, not misses)."""
    topk = np.asarray(topk)
    if topk.ndim != 2:
        raise ValueError(f"topk must be [n, K], got shape {topk.shape}")
    too_long = [k for k in ks if k > topk.shape[1]]
    if too_long:
        raise ValueError(f"cutoffs {too_long} exceed the ranked-list length {topk.shape[1]}")


def metrics_from_ranks(ranks: np.ndarray, ks: Iterable[int] = DEFAULT_KS) -> dict[str, float]:
    """``{"recall@K": ..., "ndcg@K": ...}`` averaged over instances, for each K."""
    ranks = _checked_ranks(ranks)
    if ranks.size == 0:
        raise ValueError("no instances to evaluate")
    out: dict[str, float] = {}
    for k in ks:
        out[f"recall@{k}"] = float((ranks < k).mean())
        out[f"ndcg@{k}"] = float(per_instance_ndcg(ranks, k).mean())
    bad = {name: v for name, v in out.items() if not 0.0 <= v <= 1.0}
    if bad:  # cannot happen for valid ranks; a guard so that a wrong number is never reported
        raise AssertionError(f"metrics outside [0, 1]: {bad}")
    return out


def _checked_ranks(ranks: np.ndarray) -> np.ndarray:
    """``ranks`` as an integer array; negative or non-integer ranks are a bug upstream, never a hit."""
    ranks = np.asarray(ranks)
    if ranks.size and not np.issubdtype(ranks.dtype, np.integer):
        if not np.all(np.isfinite(ranks)) or np.any(ranks != np.round(ranks)):
            raise ValueError("ranks must be whole numbers; got non-integer or non-finite values")
        ranks = ranks.astype(np.int64)
    if ranks.size and ranks.min() < 0:
        raise ValueError(f"ranks must be >= 0 (0 = first); got {int(ranks.min())} for instance "
                         f"{int(np.argmin(ranks))}")
    return ranks


def per_instance_ndcg(ranks: np.ndarray, k: int) -> np.ndarray:
    """``[n]`` NDCG@k contribution of each instance (for per-category breakdowns)."""
    ranks = _checked_ranks(ranks).astype(np.float64)
    return np.where(ranks < k, 1.0 / np.log2(ranks + 2.0), 0.0)


def format_metrics(m: dict[str, float], keys: Sequence[str] = ("recall@5", "recall@10", "ndcg@5", "ndcg@10")) -> str:
    return "  ".join(f"{k.replace('recall', 'R').replace('ndcg', 'N')}={m[k]:.4f}" for k in keys if k in m)
