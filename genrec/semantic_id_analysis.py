"""The paper's semantic-ID analyses of evaluation instances (arXiv 2603.19809, sections 4.2 and 4.4).

**Support coverage** (from item generalization to token memorization, section 4.2): an item-level
*generalization* instance (its exact transition ``last item -> target`` never occurs in training) may
still be a memorized transition at the level of semantic-ID *prefixes*: some training transition
``u' -> v'`` has ``prefix_n(u') = prefix_n(last)`` and ``prefix_n(v') = prefix_n(target)`` (n-gram
prefix memorization, :func:`genrec.memorization.token_memorization`). :func:`support_levels` gives
each instance the *largest* such ``n`` (0: "unseen", no prefix transition at all); the prefix
relation is nested (equal n-prefixes have equal (n-1)-prefixes), so this largest ``n`` says
everything. :func:`support_coverage` tabulates the share of each support level among the
generalization instances and each model's Recall/NDCG@K on it. With a disambiguated table (whose
last level makes every ID unique) the full length is the item itself, so at hop 1 a generalization
instance never reaches it: that row is 0 by definition.

**Indicator validation** (section 4.4): how well a per-instance indicator (SASRec's maximum softmax
probability and entropy, transition counts, token-level support of the generative model's answer, ...)
separates memorization from generalization instances, and predicts which of two models wins an
instance, each as a ROC AUC (:func:`roc_auc`, :func:`indicator_validation`). An AUC below 0.5 means
*low* values point to the positive class (memorization / the first model winning).

Everything here is target-aware *analysis*, not a feature for a model: support levels look at the
target. Indicators handed to :func:`indicator_validation` should be target-free (as
:mod:`fusion.indicators`' are) for the win AUC to mean anything.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from scipy.stats import rankdata

from genrec.analysis import format_metric, is_missing, new_figure, save_png
from genrec.memorization import GROUPS, InstanceLabels, TokenMemorization
from genrec.metrics import metrics_from_ranks, per_instance_ndcg

log = logging.getLogger(__name__)

UNSEEN = "unseen"

__all__ = ["UNSEEN", "support_category", "support_levels", "support_coverage", "support_coverage_markdown",
           "roc_auc", "win_labels", "indicator_validation", "indicator_validation_markdown",
           "plot_indicator_validation"]


# ----------------------------------------------------------------------------------------------
# Support coverage


def support_category(n: int) -> str:
    """Display name of support level ``n``: ``"3-gram"`` for a memorized 3-code prefix, ``"unseen"`` for 0."""
    return UNSEEN if n == 0 else f"{n}-gram"


def support_levels(token: TokenMemorization, hop: int = 1) -> np.ndarray:
    """``[n]`` int: the largest prefix length whose prefix transition is memorized at hop <= ``hop``
    (1: the last history item's prefix directly before the target's, the strict analogue of
    memorization), 0 where no prefix length is."""
    if hop < 1:
        raise ValueError(f"hop must be >= 1, got {hop}")
    level = np.zeros(len(token.hops), dtype=np.int64)
    for n in range(1, token.levels + 1):
        level[token.memorized(n, hop)] = n  # increasing n: the last assignment is the largest
    return level


def _check_ranks(ranks: Mapping[str, np.ndarray] | None, n: int) -> dict[str, np.ndarray]:
    out = {}
    for name, r in (ranks or {}).items():
        r = np.asarray(r)
        if r.shape != (n,):
            raise ValueError(f"ranks of model {name!r}: shape {r.shape}, expected ({n},)")
        out[name] = r
    return out


def support_coverage(token: TokenMemorization, labels: InstanceLabels,
                     ranks: Mapping[str, np.ndarray] | None = None, k: int = 10, hop: int = 1,
                     group: str = "generalization") -> list[dict]:
    """One row per support level (longest prefix first, then ``unseen``, then ``all``) of the
    instances of item-level ``group``: count, share of the group and, for each model in ``ranks``
    (name -> 0-based ranks ``[n]``), ``"<model> recall@k"`` / ``"<model> ndcg@k"`` (NaN when empty)."""
    if len(token.hops) != len(labels):
        raise ValueError(f"{len(token.hops)} token rows for {len(labels)} labels")
    if group not in GROUPS:
        raise ValueError(f"unknown group {group!r}; choose from {list(GROUPS)}")
    ranks = _check_ranks(ranks, len(labels))
    in_group = labels.groups() == group
    level = support_levels(token, hop)
    total = int(in_group.sum())
    rows = []
    for n in list(range(token.levels, -1, -1)) + [-1]:  # -1: the whole group
        mask = in_group if n < 0 else in_group & (level == n)
        count = int(mask.sum())
        row: dict = {"category": "all" if n < 0 else support_category(n), "n": n, "count": count,
                     "share": count / total if total else math.nan}
        for name, r in ranks.items():
            m = metrics_from_ranks(r[mask], (k,)) if count else {f"recall@{k}": math.nan, f"ndcg@{k}": math.nan}
            row[f"{name} recall@{k}"] = m[f"recall@{k}"]
            row[f"{name} ndcg@{k}"] = m[f"ndcg@{k}"]
        rows.append(row)
    return rows


def support_coverage_markdown(rows: Sequence[Mapping]) -> str:
    """Markdown rendering of :func:`support_coverage` rows."""
    if not rows:
        return ""
    extra = [c for c in rows[0] if c not in ("category", "n", "count", "share")]
    head = ["token support", "n", "share"] + extra
    lines = ["| " + " | ".join(head) + " |", "|---|---:|---:|" + "---:|" * len(extra)]
    for r in rows:
        share = "-" if is_missing(r["share"]) else f"{100 * r['share']:.2f}%"
        cells = [str(r["category"]), str(r["count"]), share] + [format_metric(r[c]) for c in extra]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------
# Indicator validation


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """ROC AUC of ``scores`` for the boolean ``positive`` labels: the probability that a random
    positive scores above a random negative, ties counting half (the Mann-Whitney statistic, equal to
    ``sklearn.metrics.roc_auc_score``); NaN when one class is empty."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(positive)
    if s.ndim != 1 or y.shape != s.shape:
        raise ValueError(f"scores and labels must be [n] arrays of one length, got {s.shape} and {y.shape}")
    if y.dtype != bool:
        raise ValueError(f"labels must be boolean, got {y.dtype}")
    if not np.isfinite(s).all():
        raise ValueError(f"scores must be finite; {int((~np.isfinite(s)).sum())} are not")
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    r = rankdata(s)  # 1-based, ties get their average rank (= counting half)
    return float((r[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def win_labels(first: np.ndarray, second: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """From two models' 0-based ranks ``[n]``: ``decided`` (their NDCG@k differ, so one model wins)
    and ``first_wins`` (the first one's is higher); both ``[n]`` bool. Instances both miss, or
    both rank alike, are undecided and left out of a win AUC."""
    a, b = per_instance_ndcg(first, k), per_instance_ndcg(second, k)
    if a.shape != b.shape:
        raise ValueError(f"rank arrays of different lengths: {a.shape} and {b.shape}")
    return a != b, a > b


def indicator_validation(indicators: Mapping[str, np.ndarray], labels: InstanceLabels,
                         ranks: Mapping[str, np.ndarray] | None = None, pair: Sequence[str] | None = None,
                         k: int = 10) -> dict:
    """AUC of every indicator (name -> ``[n]`` values) for memorization (positive) vs generalization
    instances and, with ``ranks`` of the two models named in ``pair`` (default: the first two of
    ``ranks``), for "the first model wins" among decided instances (:func:`win_labels`).

    Returns ``{"k", "pair", "counts", "rows"}``; each row has ``indicator``, ``auc_memorization``,
    ``auc_win`` (NaN without a pair) and ``separation`` = ``max(AUC, 1 - AUC)`` of each.
    """
    n = len(labels)
    ranks = _check_ranks(ranks, n)
    if pair is None and len(ranks) >= 2:
        pair = list(ranks)[:2]
    if pair is not None:
        pair = [str(p) for p in pair]
        if len(pair) != 2 or pair[0] == pair[1]:
            raise ValueError(f"pair must name two different models, got {pair}")
        missing = [p for p in pair if p not in ranks]
        if missing:
            raise ValueError(f"no ranks for model(s) {missing}; have {list(ranks)}")
    groups = labels.groups()
    mem_gen = (groups == "memorization") | (groups == "generalization")
    is_mem = groups[mem_gen] == "memorization"
    counts: dict[str, int] = {"instances": n, "memorization": int(is_mem.sum()),
                              "generalization": int((~is_mem).sum())}
    decided = first_wins = None
    if pair is not None:
        decided, first_wins = win_labels(ranks[pair[0]], ranks[pair[1]], k)
        counts.update({"decided": int(decided.sum()), f"{pair[0]} wins": int((decided & first_wins).sum()),
                       f"{pair[1]} wins": int((decided & ~first_wins).sum())})
    rows = []
    for name, values in indicators.items():
        v = np.asarray(values, dtype=np.float64)
        if v.shape != (n,):
            raise ValueError(f"indicator {name!r}: shape {v.shape}, expected ({n},)")
        if not np.isfinite(v).all():
            raise ValueError(f"indicator {name!r}: {int((~np.isfinite(v)).sum())} non-finite values")
        auc_mem = roc_auc(v[mem_gen], is_mem)
        auc_win = roc_auc(v[decided], first_wins[decided]) if decided is not None else math.nan
        rows.append({"indicator": str(name), "auc_memorization": auc_mem, "auc_win": auc_win,
                     "separation_memorization": max(auc_mem, 1 - auc_mem) if not math.isnan(auc_mem) else math.nan,
                     "separation_win": max(auc_win, 1 - auc_win) if not math.isnan(auc_win) else math.nan})
    return {"k": k, "pair": pair, "counts": counts, "rows": rows}


def indicator_validation_markdown(result: Mapping) -> str:
    """Markdown table of :func:`indicator_validation` output (with its instance counts above it)."""
    pair = result.get("pair")
    win = f"AUC {pair[0]} wins over {pair[1]} (NDCG@{result['k']})" if pair else "AUC win"
    counts = ", ".join(f"{key} {v}" for key, v in result["counts"].items())
    lines = [f"instances: {counts}", "",
             f"| indicator | AUC memorization vs generalization | {win} |", "|---|---:|---:|"]
    for r in result["rows"]:
        auc_mem, auc_win = format_metric(r["auc_memorization"], 3), format_metric(r["auc_win"], 3)
        lines.append(f"| {r['indicator']} | {auc_mem} | {auc_win} |")
    return "\n".join(lines) + "\n"


def plot_indicator_validation(result: Mapping, path: str | Path, title: str | None = None) -> Path:
    """Horizontal bar chart of both AUCs per indicator, with the 0.5 (no information) line; PNG, atomic."""
    rows = list(result["rows"])
    if not rows:
        raise ValueError("no indicators to plot")
    fig = new_figure((7.0, 1.2 + 0.45 * len(rows)))
    ax = fig.add_subplot(1, 1, 1)
    y = np.arange(len(rows))
    pair = result.get("pair")
    series = [("auc_memorization", "memorization vs generalization")]
    if pair:
        series.append(("auc_win", f"{pair[0]} wins over {pair[1]}"))
    h = 0.8 / len(series)
    for j, (key, label) in enumerate(series):
        vals = [math.nan if is_missing(r[key]) else r[key] for r in rows]  # no bar (0.5 read as "no information")
        ax.barh(y - 0.4 + h * (j + 0.5), vals, h, label=label)
    ax.axvline(0.5, color="black", linewidth=0.8, linestyle="--")
    ax.set_yticks(y)
    ax.set_yticklabels([r["indicator"] for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0.0, 1.0)
    ax.set_xlabel("ROC AUC")
    ax.set_title(title or "indicator validation")
    ax.legend(fontsize=8, loc="lower right")
    return save_png(fig, path)
