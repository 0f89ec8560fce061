"""Fit post-hoc fusion methods on validation, apply them to test, tabulate per memorization label."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from fusion.candidates import CandidateScores
from fusion.indicators import Indicators
from fusion.methods import FusionMethod, GateReport
from genrec.analysis import evaluate_by_category, markdown_table
from genrec.memorization import InstanceLabels
from genrec.metrics import check_cutoffs, metrics_from_ranks, ranks_from_topk

TABLE_CATEGORIES = ("all", "memorization", "generalization", "uncategorized")


@dataclass
class FusionOutput:
    """One method applied to one split: ranked lists, gates, fitted parameters and timings."""

    topk: np.ndarray  # [n, k] items, best first
    gates: GateReport
    params: dict[str, Any]
    seconds: dict[str, float] = field(default_factory=dict)  # "fit", "fuse"


def single_model_topk(cands: CandidateScores, model: str, k: int = 50) -> np.ndarray:
    """A model's own ranking (its top-K candidates by raw score), ``[n, k]``."""
    s = np.where(cands.in_topk(model), cands.scores(model), -np.inf)
    return cands.topk(s, k)


def run_posthoc(methods: Sequence[FusionMethod], valid_cands: CandidateScores, valid_targets: np.ndarray,
                valid_indicators: Indicators, test_cands: CandidateScores, test_indicators: Indicators,
                k: int = 50) -> dict[str, FusionOutput]:
    """Fit every method on validation, then fuse the test candidates. Test targets are not an input."""
    out: dict[str, FusionOutput] = {}
    for m in methods:
        t0 = time.perf_counter()
        m.fit(valid_cands, valid_targets, valid_indicators)
        t1 = time.perf_counter()
        topk = test_cands.topk(m.fuse(test_cands, test_indicators), k)
        gates = m.gates(test_cands, test_indicators)
        t2 = time.perf_counter()
        out[m.name] = FusionOutput(topk, gates, m.params(), {"fit": t1 - t0, "fuse": t2 - t1})
    return out


def results_by_label(topk: Mapping[str, np.ndarray], targets: np.ndarray, labels: InstanceLabels | None = None,
                     ks: Iterable[int] = (10, 20)) -> dict[str, dict[str, dict[str, float]]]:
    """``model -> category -> metrics``; without labels only ``all``. Every K in ``ks`` must be at most
    the lists' length."""
    ks = tuple(ks)
    res = {}
    for name, items in topk.items():
        check_cutoffs(ks, items)
        ranks = ranks_from_topk(items, targets)
        if labels is None:
            res[name] = {"all": {"count": len(ranks), **metrics_from_ranks(ranks, ks)}}
        else:
            res[name] = evaluate_by_category(ranks, labels, ks, hops=False)
    return res


def results_markdown(results: Mapping[str, Mapping[str, Mapping[str, float]]],
                     metrics: Sequence[str] = ("recall@10", "ndcg@10"),
                     categories: Sequence[str] = TABLE_CATEGORIES) -> str:
    """Markdown table: rows = categories (overall and per label), columns = model x metric."""
    first = next(iter(results.values()))
    return markdown_table(results, metrics, [c for c in categories if c in first])


__all__ = ["FusionOutput", "single_model_topk", "run_posthoc", "results_by_label", "results_markdown",
           "TABLE_CATEGORIES"]
