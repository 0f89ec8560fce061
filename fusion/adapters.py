"""Model adapters: turn a trained SASRec and a generative model into fusion inputs.

The fusion methods only see arrays (:class:`~fusion.candidates.CandidateScores`,
:class:`~fusion.indicators.Indicators`); this module is the one place that calls the models:
SASRec's top-K, MSP and entropy in one pass over its logits, its log-probs of any candidates, and
the generative model's beam (``genrec.generative.recommend``) and teacher-forced candidate scores
(``genrec.generative.score_items``).

Items added after training (``genrec.new_items``): the generative model knows them through their
semantic IDs; SASRec knows them when it was extended with them (each new item gets its nearest
catalogue item's embedding, :func:`genrec.new_items.sasrec_with_new_items`), and otherwise has no embedding
for them (item index ``>= sasrec.num_items``). SASRec then reads
each history without them (:func:`id_tower_histories`), never proposes them, and its score of such
a candidate is NaN (missing), which every fusion method handles (``fusion.methods``, "Candidates the
ID model cannot score"). A history made only of such items leaves SASRec nothing to read: it then
proposes nothing, and its confidence indicators are those of the uniform distribution (MSP
``1 / num_items``, entropy ``log num_items``), so gates that read them lean on the generative model.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from fusion.candidates import CandidateScores, Scorer, build_candidates
from fusion.indicators import Indicators, TrainStats, compute_indicators
from genrec.splits import Instances


def id_tower_histories(histories: Instances | Sequence[np.ndarray], num_items: int) -> list[np.ndarray]:
    """Each history without the items an ID model trained on ``num_items`` items cannot read (item
    indices ``>= num_items``: added to the catalogue after training); may leave a history empty."""
    hist = histories.histories if isinstance(histories, Instances) else histories
    out = []
    for h in hist:
        h = np.asarray(h, np.int64)
        out.append(h[h < num_items] if len(h) and h.max() >= num_items else h)
    return out


def sasrec_outputs(model, instances: Instances | Sequence[np.ndarray], k: int = 50, batch_size: int = 1024,
                   item_chunk: int | None = None, states: bool = False) -> dict[str, np.ndarray]:
    """``items [n, k]``, ``log_probs [n, k]`` (best first), ``max_prob [n]`` and ``entropy [n]``; a
    history with no item SASRec knows gets no items (``-1``, ``-inf``) and the uniform MSP / entropy.
    A large catalogue is scored in item chunks (``genrec.sasrec.softmax_topk``), never users x catalogue.
    ``states``: also SASRec's states (``hidden``, ``lse``, NaN for such a history), which
    :func:`sasrec_state_scorer` scores candidates from."""
    from genrec.sasrec import softmax_topk

    hist = id_tower_histories(instances, model.num_items)
    n = len(hist)
    items, logp = np.full((n, k), -1, np.int64), np.full((n, k), -np.inf, np.float32)
    msp = np.full(n, 1.0 / model.num_items, np.float32)
    ent = np.full(n, np.log(model.num_items), np.float32)
    extra = {"hidden": np.full((n, model.config.hidden), np.nan, np.float32),
             "lse": np.full(n, np.nan, np.float32)} if states else {}
    live = np.flatnonzero([len(h) > 0 for h in hist])
    if len(live):
        out = softmax_topk(model, [hist[j] for j in live], k, batch_size, item_chunk, states=states)
        items[live], logp[live] = out["items"], out["log_probs"]
        msp[live], ent[live] = out["max_prob"], out["entropy"]
        for key in extra:
            extra[key][live] = out[key]
    return {"items": items, "log_probs": logp, "max_prob": msp, "entropy": ent, **extra}


def _readable_scorer(model, instances: Instances | Sequence[np.ndarray],
                     log_probs: Callable[[list[np.ndarray], np.ndarray, np.ndarray], np.ndarray]) -> Scorer:
    """The SASRec scorers' shared part: ``log_probs(histories, rows, items)`` scores in-catalogue items
    of the histories SASRec can read (``rows``: their indices); padding, items it cannot score and
    histories with no item it knows -> NaN."""
    hist = id_tower_histories(instances, model.num_items)
    live = np.flatnonzero([len(h) > 0 for h in hist])

    def score(cands: np.ndarray) -> np.ndarray:
        out = np.full(cands.shape, np.nan, np.float32)
        if not len(live):
            return out
        c = np.asarray(cands[live], np.int64)
        known = (c >= 0) & (c < model.num_items)
        lp = log_probs([hist[j] for j in live], live, c.clip(0, model.num_items - 1))
        out[live] = np.where(known, lp, np.nan)
        return out

    return score


def sasrec_state_scorer(model, instances: Instances | Sequence[np.ndarray], outputs: dict[str, np.ndarray]) -> Scorer:
    """:func:`sasrec_scorer` from the states :func:`sasrec_outputs` kept (``states=True``) for the same
    ``instances``: no second pass of the model (``genrec.sasrec.log_probs_from_states``; equal up to
    float rounding)."""
    from genrec.sasrec import log_probs_from_states

    return _readable_scorer(model, instances, lambda hist, rows, items: log_probs_from_states(
        model, hist, outputs["hidden"][rows], outputs["lse"][rows], items))


def sasrec_scorer(model, instances: Instances | Sequence[np.ndarray], batch_size: int = 1024,
                  item_chunk: int | None = None) -> Scorer:
    """Callback: SASRec log-probs of candidates ``[n, C]``; ``-1`` (padding) and items SASRec cannot
    score (index ``>= model.num_items``, or a history with no item it knows) -> NaN. A large catalogue
    is scored in item chunks (``genrec.sasrec.log_probs_of``)."""
    from genrec.sasrec import log_probs_of

    return _readable_scorer(model, instances,
                            lambda hist, rows, items: log_probs_of(model, hist, items, batch_size, item_chunk))


def generative_scorer(model, instances: Instances, batch_size: int = 512) -> Scorer:
    """Callback: the generative model's teacher-forced log-probs of candidates (``-1`` -> NaN)."""
    from genrec.generative import score_items

    def score(cands: np.ndarray) -> np.ndarray:
        s = np.asarray(score_items(model, instances, cands, batch_size=batch_size), np.float32)
        return np.where(cands >= 0, s, np.nan)

    return score


def lookup_scorer(items: np.ndarray, scores: np.ndarray, fallback: Scorer | None = None,
                  chunk: int = 2048) -> Scorer:
    """Callback: scores of candidates ``[n, C]`` looked up in precomputed ``items`` / ``scores``
    ``[n, K]`` (``-1`` -> NaN); a candidate not among a row's ``items`` is scored by ``fallback``
    (NaN without one)."""
    items, scores = np.asarray(items, np.int64), np.asarray(scores, np.float32)

    def score(cands: np.ndarray) -> np.ndarray:
        cands = np.asarray(cands, np.int64)
        out = np.full(cands.shape, np.nan, np.float32)
        found = np.zeros(cands.shape, bool)
        for s in range(0, len(cands), chunk):  # [chunk, C, K] comparisons at a time
            c, it = cands[s:s + chunk], items[s:s + chunk]
            match = (c[:, :, None] == it[:, None, :]) & (c[:, :, None] >= 0)
            found[s:s + chunk] = match.any(2)
            out[s:s + chunk] = np.where(found[s:s + chunk],
                                        np.take_along_axis(scores[s:s + chunk], match.argmax(2), 1), np.nan)
        missing = (cands >= 0) & ~found
        if fallback is not None and missing.any():
            out[missing] = np.asarray(fallback(np.where(missing, cands, -1)), np.float32)[missing]
        return out

    return score


@dataclass
class FusionInputs:
    """What fusion methods need for one split (no targets), plus the model-inference times."""

    cands: CandidateScores
    indicators: Indicators
    seconds: dict[str, float] = field(default_factory=dict)


def model_inputs(sasrec, generative, instances: Instances, stats: TrainStats, k: int = 50, beam: int = 50,
                 teacher_forcing: bool = True, batch_size: int = 512) -> FusionInputs:
    """Candidates (union of both top-``k`` lists, each model scoring the other's candidates when
    ``teacher_forcing``) and indicators of ``instances``. Targets are never read. ``k`` may not
    exceed the catalogue (``ValueError``); the generative beam is ``max(beam, k)``."""
    from genrec.generative import decode

    if not 1 <= k <= sasrec.num_items:
        raise ValueError(f"k={k} must be between 1 and the catalogue size ({sasrec.num_items} items)")

    sec: dict[str, float] = {}
    t0 = time.perf_counter()
    ids = sasrec_outputs(sasrec, instances, k, states=teacher_forcing)
    sec["sasrec_topk"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    # One generative pass gives the beam and, with teacher forcing, the scores of SASRec's top-k:
    # every candidate the generative model is missing from the union is one of those.
    beam_result, gr_of_id_items = decode(generative, instances, beam_size=max(beam, k), top_k=k,
                                         candidates=ids["items"] if teacher_forcing else None,
                                         batch_size=batch_size)
    sec["generative_beam"] = time.perf_counter() - t0  # with the cross-scoring of SASRec's candidates
    sec["cross_scoring"] = 0.0

    def timed(scorer: Scorer) -> Scorer:
        def run(c: np.ndarray) -> np.ndarray:
            t = time.perf_counter()
            out = scorer(c)
            sec["cross_scoring"] += time.perf_counter() - t
            return out
        return run

    gr_scorer = None
    if teacher_forcing:
        gr_scorer = lookup_scorer(ids["items"], gr_of_id_items, generative_scorer(generative, instances, batch_size))
    t0 = time.perf_counter()
    cands = build_candidates(ids["items"], ids["log_probs"], beam_result.items, beam_result.log_probs,
                             timed(sasrec_state_scorer(sasrec, instances, ids)) if teacher_forcing else None,
                             timed(gr_scorer) if teacher_forcing else None)
    sec["union"] = time.perf_counter() - t0 - sec["cross_scoring"]  # fusion-side work, not inference
    t0 = time.perf_counter()
    ind = compute_indicators(instances, stats, id_summary=ids, id_items=ids["items"], gr_items=beam_result.items,
                             gr_log_probs=beam_result.log_probs)
    sec["indicators"] = time.perf_counter() - t0
    return FusionInputs(cands, ind, sec)


__all__ = ["id_tower_histories", "sasrec_outputs", "sasrec_scorer", "sasrec_state_scorer", "generative_scorer",
           "lookup_scorer", "FusionInputs",
           "model_inputs"]
