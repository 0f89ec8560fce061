"""Synthetic model outputs where the right gate is known by construction (for tests and demos).

Each instance is either a *memorization* case, where the ID model is confident and right (its
target logit is boosted by ``boost``) while the generative model is confidently wrong (a decoy
boosted instead, the target only slightly), or a *generalization* case, the mirror image. Both
models score a small catalogue with full softmaxes, so their top-K lists, log-probs and scoring
callbacks (teacher forcing) are exact. With ``msp_informative`` the ID model is unsure on
generalization cases, so its maximum softmax probability reveals the case; without it the ID model
is as confident on a decoy there, and only the ``memo_signal`` indicator (the case plus noise)
tells the cases apart. A ``noise`` indicator carries nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fusion.candidates import CandidateScores, build_candidates
from fusion.indicators import Indicators


@dataclass
class SimulatedSplit:
    cands: CandidateScores
    indicators: Indicators
    targets: np.ndarray  # [n]
    memorization: np.ndarray  # [n] bool: the ID model is the right one
    id_topk: np.ndarray  # [n, K] single-model rankings, for baselines
    gr_topk: np.ndarray


def simulate_outputs(n: int = 2000, num_items: int = 300, k: int = 50, memorization_share: float = 0.5,
                     boost: float = 6.0, weak_boost: float = 1.0, msp_informative: bool = True,
                     signal_noise: float = 0.5, seed: int = 0) -> SimulatedSplit:
    rng = np.random.default_rng(seed)
    mem = rng.random(n) < memorization_share
    targets = rng.integers(num_items, size=n)
    decoy = (targets + 1 + rng.integers(num_items - 1, size=n)) % num_items
    rows = np.arange(n)
    id_logits = rng.normal(size=(n, num_items))
    gr_logits = rng.normal(size=(n, num_items))
    id_logits[rows, targets] += np.where(mem, boost, weak_boost)
    gr_logits[rows, targets] += np.where(mem, weak_boost, boost)
    gr_logits[rows[mem], decoy[mem]] += boost
    if not msp_informative:
        id_logits[rows[~mem], decoy[~mem]] += boost
    id_lp = torch.log_softmax(torch.from_numpy(id_logits), -1).numpy().astype(np.float32)
    gr_lp = torch.log_softmax(torch.from_numpy(gr_logits), -1).numpy().astype(np.float32)

    def topk(lp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        idx = np.argsort(-lp, axis=1, kind="stable")[:, :k]
        return idx, np.take_along_axis(lp, idx, 1)

    def scorer(lp: np.ndarray):
        return lambda c: np.where(c >= 0, np.take_along_axis(lp, np.maximum(c, 0), 1), np.nan)

    id_items, id_scores = topk(id_lp)
    gr_items, gr_scores = topk(gr_lp)
    cands = build_candidates(id_items, id_scores, gr_items, gr_scores, scorer(id_lp), scorer(gr_lp))
    p = np.exp(id_lp)
    feats = {
        "id_msp": p.max(1),
        "id_entropy": -(p * id_lp).sum(1),
        "gr_top1_logp": gr_scores[:, 0],
        "memo_signal": mem.astype(np.float64) + signal_noise * rng.normal(size=n),
        "noise": rng.normal(size=n),
    }
    ind = Indicators(tuple(feats), np.stack(list(feats.values()), 1))
    return SimulatedSplit(cands, ind, targets, mem, id_items, gr_items)


__all__ = ["SimulatedSplit", "simulate_outputs"]
