"""Model adapters: turn a trained SASRec and a generative model into fusion inputs.

The fusion methods only see arrays (:class:`~fusion.candidates.CandidateScores`,
:class:`~fusion.indicators.Indicators`); this module is the one place that calls the models:
SASRec's top-K, MSP and entropy in one pass over its logits, its log-probs of any candidates, and
the generative model's beam (``genrec.generative.recommend``) and teacher-forced candidate scores
(``genrec.generative.score_items``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from fusion.candidates import CandidateScores, Scorer, build_candidates
from fusion.indicators import Indicators, TrainStats, compute_indicators
from genrec.splits import Instances


def sasrec_outputs(model, instances: Instances, k: int = 50, batch_size: int = 1024) -> dict[str, np.ndarray]:
    """``items [n, k]``, ``log_probs [n, k]`` (best first), ``max_prob [n]`` and ``entropy [n]``."""
    from genrec.sasrec import iter_logits

    n = len(instances)
    items, logp = np.zeros((n, k), np.int64), np.zeros((n, k), np.float32)
    msp, ent = np.zeros(n, np.float32), np.zeros(n, np.float32)
    for rows, logits in iter_logits(model, instances, batch_size):
        lp = torch.log_softmax(logits, -1)
        v, i = lp.topk(k, dim=-1)
        items[rows], logp[rows] = i.numpy(), v.numpy()
        msp[rows] = v[:, 0].exp().numpy()
        ent[rows] = (-(lp.exp() * lp).sum(-1)).numpy()
    return {"items": items, "log_probs": logp, "max_prob": msp, "entropy": ent}


def sasrec_scorer(model, instances: Instances, batch_size: int = 1024) -> Scorer:
    """Callback: SASRec log-probs of candidates ``[n, C]`` (``-1`` -> NaN)."""
    from genrec.sasrec import iter_logits

    def score(cands: np.ndarray) -> np.ndarray:
        out = np.full(cands.shape, np.nan, np.float32)
        for rows, logits in iter_logits(model, instances, batch_size):
            c = torch.from_numpy(cands[rows])
            lp = torch.log_softmax(logits, -1).gather(1, c.clamp_min(0))
            out[rows] = torch.where(c >= 0, lp, torch.nan).numpy()
        return out

    return score


def generative_scorer(model, instances: Instances, batch_size: int = 512) -> Scorer:
    """Callback: the generative model's teacher-forced log-probs of candidates (``-1`` -> NaN)."""
    from genrec.generative import score_items

    def score(cands: np.ndarray) -> np.ndarray:
        s = np.asarray(score_items(model, instances, cands, batch_size=batch_size), np.float32)
        return np.where(cands >= 0, s, np.nan)

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
    exceed the catalogue (``ValueError``)."""
    from genrec.generative import recommend

    if not 1 <= k <= sasrec.num_items:
        raise ValueError(f"k={k} must be between 1 and the catalogue size ({sasrec.num_items} items)")

    sec: dict[str, float] = {}
    t0 = time.perf_counter()
    ids = sasrec_outputs(sasrec, instances, k)
    sec["sasrec_topk"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    beam_result = recommend(generative, instances, beam_size=max(beam, k), top_k=k, batch_size=batch_size)
    sec["generative_beam"] = time.perf_counter() - t0
    sec["cross_scoring"] = 0.0

    def timed(scorer: Scorer) -> Scorer:
        def run(c: np.ndarray) -> np.ndarray:
            t = time.perf_counter()
            out = scorer(c)
            sec["cross_scoring"] += time.perf_counter() - t
            return out
        return run

    t0 = time.perf_counter()
    cands = build_candidates(ids["items"], ids["log_probs"], beam_result.items, beam_result.log_probs,
                             timed(sasrec_scorer(sasrec, instances)) if teacher_forcing else None,
                             timed(generative_scorer(generative, instances, batch_size)) if teacher_forcing else None)
    sec["union"] = time.perf_counter() - t0 - sec["cross_scoring"]  # fusion-side work, not inference
    t0 = time.perf_counter()
    ind = compute_indicators(instances, stats, id_summary=ids, id_items=ids["items"], gr_items=beam_result.items,
                             gr_log_probs=beam_result.log_probs)
    sec["indicators"] = time.perf_counter() - t0
    return FusionInputs(cands, ind, sec)


__all__ = ["sasrec_outputs", "sasrec_scorer", "generative_scorer", "FusionInputs", "model_inputs"]
