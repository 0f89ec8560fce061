"""How a :class:`~genrec.recommender.Recommender` ranks for a single model: the whole catalogue (SASRec,
the end-to-end joint model) or the generative model's beam, with the history's items left out on
request (``seen``). The fusion methods rank their candidate union in the recommender itself."""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import numpy as np


def rank_catalogue(batches: Iterable[tuple[Any, Any, Any]], n: int, num_items: int, k: int,
                   seen: Sequence[np.ndarray] | None) -> list[tuple[np.ndarray, np.ndarray, float | None]]:
    """Per row of ``n``: (item indices best first, scores, gate or None) from ``batches`` of ``(rows,
    scores [b, <= num_items], gates or None)``; items a model cannot score (added after its training)
    and excluded ``seen`` items are never listed, so a row may hold fewer than ``k``; ties by item index,
    so the first ``j`` items never depend on ``k``."""
    import torch

    from genrec.metrics import stable_topk

    out: list[Any] = [None] * n
    for idx, scores, gates in batches:
        scores = scores.clone()
        if scores.shape[1] < num_items:  # items added after training: this model cannot score them
            scores = torch.cat([scores, torch.full((len(idx), num_items - scores.shape[1]), -torch.inf)], 1)
        if seen is not None:
            for j, r in enumerate(idx):
                scores[j, torch.from_numpy(seen[r])] = -torch.inf
        v, i = stable_topk(scores, k)
        for j, r in enumerate(idx):
            ok = torch.isfinite(v[j])
            out[r] = (i[j][ok].numpy(), v[j][ok].numpy(), None if gates is None else float(gates[j]))
    return out


def rank_generative(generative: Any, rows: Sequence[np.ndarray], k: int, seen: Sequence[np.ndarray] | None,
                    settings: Any) -> list[tuple[np.ndarray, np.ndarray, None]]:
    """Per row: the generative model's beam (``settings.beam``, ``batch_size``, ``max_history``), best first,
    the ``seen`` items left out. The beam is fusion.beam, widened when seen items are excluded: by up to
    max_history of the row's distinct seen items (bounded); then, for a row still short of k, by all of
    them (any can be in the beam). So a row's first j items never depend on k (the recommender asks
    for k <= fusion.beam). Rows decode in groups of one
    width: a history's items never depend on the other histories of the batch (scores may, by ~1e-6:
    the batch pads them differently)."""
    from genrec.generative import recommend

    n_items = generative.num_items
    distinct = [len(np.unique(seen[j])) if seen is not None else 0 for j in range(len(rows))]
    out: list[Any] = [None] * len(rows)

    def decode(widths: np.ndarray, todo: np.ndarray) -> None:
        for width in np.unique(widths[todo]):
            group = todo[widths[todo] == width]
            beam = recommend(generative, [rows[j] for j in group], beam_size=int(width), top_k=None,
                             batch_size=settings.batch_size)
            for g, j in enumerate(group):
                ok = (beam.items[g] >= 0) & np.isfinite(beam.log_probs[g])
                if seen is not None:
                    ok &= ~np.isin(beam.items[g], seen[j])
                out[j] = (beam.items[g][ok][:k], beam.log_probs[g][ok][:k], None)

    # widths from the configured beam, not from k: a row's beam (so its first j items) is the same
    # whatever k a request asks (the service batches requests of mixed k); only a row still short of k
    # after the beam and its seen items is decoded wider
    steps = [[min(n_items, settings.beam + min(d, settings.max_history)) for d in distinct],
             [min(n_items, max(settings.beam, k) + d) for d in distinct]]
    widths = np.array(steps[0])
    decode(widths, np.arange(len(rows)))
    for step in steps[1:]:
        wider = np.array(step)
        short = np.array([j for j in range(len(rows)) if len(out[j][0]) < k and wider[j] > widths[j]], dtype=np.int64)
        if len(short):
            decode(wider, short)
        widths = np.maximum(widths, wider)
    return out


__all__ = ["rank_catalogue", "rank_generative"]
