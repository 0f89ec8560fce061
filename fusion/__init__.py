"""Memorization-aware fusion of an item-ID recommender and a generative semantic-ID recommender.

- :mod:`fusion.candidates`: the candidate union with both models' scores, min-max normalisation,
  ranking.
- :mod:`fusion.indicators`: per-instance features telling memorization from generalization cases.
- :mod:`fusion.methods`: fixed-weight, adaptive (MSP-gated) and learned-gate post-hoc fusion.
- :mod:`fusion.persist`: save fitted post-hoc methods to one safe file and load them back.
- :mod:`fusion.selection`: cross-fitted validation scores of the methods, to choose one honestly.
- :mod:`fusion.joint`: both towers and a gate trained together with one objective.
- :mod:`fusion.holdout_joint`: both towers and a gate in one run, the gate fitted on held-out
  training transitions (never on validation or test targets).
- :mod:`fusion.new_item_mixture`: rank items added after training apart from the trained ones (opt-in).
- :mod:`fusion.adapters`: turn trained models into fusion inputs; :mod:`fusion.report`: tables.
"""

from fusion.candidates import (CandidateScores, build_candidates, evaluate_fused, minmax_normalize, ndcg_at,
                               ranks_of, topk_items, union_ranks)
from fusion.indicators import Indicators, Standardizer, TrainStats, compute_indicators
from fusion.new_item_mixture import NewItemMixture
from fusion.methods import (SCALES, AdaptiveFusion, FixedWeightFusion, FusionMethod, GateHead, GateReport,
                            LearnedGateFusion, convex, params_equal)
from fusion.persist import load_methods, save_methods
from fusion.report import FusionOutput, results_by_label, results_markdown, run_posthoc, single_model_topk
from fusion.selection import CrossFit, cross_fit, cross_fitted_choice, fold_assignment, select_best

__all__ = [
    "CandidateScores", "build_candidates", "evaluate_fused", "minmax_normalize", "ndcg_at", "ranks_of",
    "topk_items", "union_ranks",
    "Indicators", "Standardizer", "TrainStats", "compute_indicators",
    "SCALES", "AdaptiveFusion", "FixedWeightFusion", "FusionMethod", "GateHead", "GateReport",
    "LearnedGateFusion", "convex", "params_equal",
    "load_methods", "save_methods", "NewItemMixture",
    "FusionOutput", "results_by_label", "results_markdown", "run_posthoc", "single_model_topk",
    "CrossFit", "cross_fit", "cross_fitted_choice", "fold_assignment", "select_best",
]
