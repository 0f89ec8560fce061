"""Per-category evaluation of ranked lists against memorization / generalization labels.

Categories of an instance (see :mod:`genrec.memorization`): ``all``; the coarse groups
``memorization`` / ``generalization`` / ``uncategorized``; each generalization kind at any hop
(``symmetry``) and at each hop (``symmetry@1``). Categories partition by primary label, so an
instance counts in exactly one fine label. Metrics of an empty category are NaN (count 0).

Outputs: per-instance label records (JSONL, to join with one's own predictions), a Markdown table
and a grouped PNG bar chart (model x category), and the token-level memorization summary. Files are
written atomically; the chart uses matplotlib's Agg canvas directly so no global backend is touched.
"""

from __future__ import annotations

import io
import json
import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

import numpy as np

from genrec.artifacts import atomic_write, atomic_write_bytes
from genrec.data import SequenceDataset
from genrec.memorization import (GENERALIZATION_KINDS, GROUPS, KIND_NAMES, InstanceLabels, TokenMemorization,
                                 label_names)
from genrec.metrics import check_cutoffs, metrics_from_ranks, ranks_from_topk
from genrec.splits import Instances

if TYPE_CHECKING:
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)

DEFAULT_ANALYSIS_KS = (10, 20)
# categories shown in the bar chart by default (hops only in the table, to keep the chart readable)
CHART_CATEGORIES = ("all", "memorization", "generalization") + tuple(k.label for k in GENERALIZATION_KINDS) + (
    "uncategorized",)

Results = Mapping[str, Mapping[str, Mapping[str, float]]]  # model -> category -> metric -> value


def category_masks(labels: InstanceLabels, hops: bool = True) -> dict[str, np.ndarray]:
    """Boolean ``[n]`` mask of every category, in display order (``hops`` adds ``kind@h`` ones)."""
    names = labels.names()
    groups = labels.groups()
    masks: dict[str, np.ndarray] = {"all": np.ones(len(labels), dtype=bool)}
    for g in GROUPS[:2]:
        masks[g] = groups == g
    for k in GENERALIZATION_KINDS:
        masks[k.label] = labels.kind == k
        if hops:
            for name in label_names(labels.max_hop):
                if name.startswith(k.label + "@"):
                    masks[name] = names == name
    masks["uncategorized"] = groups == "uncategorized"
    return masks


def evaluate_by_category(ranks: np.ndarray, labels: InstanceLabels, ks: Iterable[int] = DEFAULT_ANALYSIS_KS,
                         hops: bool = True) -> dict[str, dict[str, float]]:
    """``category -> {"count", "recall@K", "ndcg@K", ...}`` from 0-based target ranks ``[n]``."""
    ranks = np.asarray(ranks)
    ks = tuple(ks)
    if ranks.shape != (len(labels),):
        raise ValueError(f"{ranks.shape[0] if ranks.ndim else 0} ranks for {len(labels)} labelled instances")
    out: dict[str, dict[str, float]] = {}
    for name, mask in category_masks(labels, hops=hops).items():
        count = int(mask.sum())
        row: dict[str, float] = {"count": count}
        if count:
            row.update(metrics_from_ranks(ranks[mask], ks))
        else:
            row.update({f"{m}@{k}": math.nan for k in ks for m in ("recall", "ndcg")})
        out[name] = row
    return out


def evaluate_topk_by_category(topk: np.ndarray, targets: np.ndarray, labels: InstanceLabels,
                              ks: Iterable[int] = DEFAULT_ANALYSIS_KS, hops: bool = True
                              ) -> dict[str, dict[str, float]]:
    """:func:`evaluate_by_category` from ranked lists ``topk[n, K]`` (item indices, best first).

    Every K in ``ks`` must be at most the list length (a longer cutoff would undercount hits).
    """
    topk = np.asarray(topk)
    ks = tuple(ks)
    check_cutoffs(ks, topk)
    return evaluate_by_category(ranks_from_topk(topk, targets), labels, ks, hops=hops)


# ----------------------------------------------------------------------------------------------
# Per-instance records


def label_records(labels: InstanceLabels, instances: Instances, split: str = "test",
                  dataset: SequenceDataset | None = None, token: TokenMemorization | None = None
                  ) -> list[dict]:
    """One JSON-able dict per instance: ids, primary label and the multi-label view.

    ``holds[kind]`` says whether each kind holds at some hop and ``hops[kind]`` its smallest hop
    (null if not); with ``dataset`` raw user / item ids are added; with ``token`` the smallest hop of
    n-gram prefix memorization for each ``n`` (``prefix_hops``, null if none).
    """
    if len(labels) != len(instances):
        raise ValueError(f"{len(labels)} labels for {len(instances)} instances")
    names, groups = labels.names(), labels.groups()
    kinds = KIND_NAMES[:5]
    records = []
    for k in range(len(labels)):
        user, target = int(instances.users[k]), int(instances.targets[k])
        rec: dict = {"split": split, "instance": k, "user_index": user, "target_index": target}
        if dataset is not None:
            rec["user"] = dataset.user_ids[user]
            rec["target"] = dataset.item_ids[target]
        kh = labels.kind_hops[k]
        rec.update({
            "label": str(names[k]), "group": str(groups[k]), "kind": KIND_NAMES[int(labels.kind[k])],
            "hop": int(labels.hop[k]),
            "holds": {name: bool(kh[j] >= 0) for j, name in enumerate(kinds)},
            "hops": {name: (int(kh[j]) if kh[j] >= 0 else None) for j, name in enumerate(kinds)},
        })
        if token is not None:
            rec["prefix_hops"] = [int(h) if h >= 0 else None for h in token.hops[k]]
        records.append(rec)
    return records


def export_labels_jsonl(path: str | Path, labels: InstanceLabels, instances: Instances, split: str = "test",
                        dataset: SequenceDataset | None = None, token: TokenMemorization | None = None) -> Path:
    """Write :func:`label_records` as JSON lines (atomically), in instance order."""
    records = label_records(labels, instances, split=split, dataset=dataset, token=token)

    def write(p: Path) -> None:
        with open(p, "w", encoding="utf-8") as f:
            for rec in records:
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")

    return atomic_write(path, write)


# ----------------------------------------------------------------------------------------------
# Tables and chart


def is_missing(x: Any) -> bool:
    """A value with no figure: None (strict JSON's null, as ``results.json`` writes it) or NaN."""
    return x is None or (isinstance(x, float) and math.isnan(x))


def format_metric(x: float | None, digits: int = 4) -> str:
    """A table cell: ``x`` with ``digits`` decimals, ``-`` for a missing (None / NaN) value."""
    return "-" if is_missing(x) else f"{x:.{digits}f}"


_fmt = format_metric  # the short name this module's tables use


def new_figure(figsize: tuple[float, float]) -> "Figure":
    """A matplotlib figure on its own Agg canvas, so no global backend is touched (for :func:`save_png`)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig


def save_png(fig: "Figure", path: str | Path, dpi: int = 120) -> Path:
    """Lay out ``fig`` and write it as a PNG atomically; returns the path."""
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return atomic_write_bytes(path, buf.getvalue())


def shares_markdown(labels_by_split: Mapping[str, InstanceLabels]) -> str:
    """Markdown table of label counts and shares (coarse groups, kinds, fine labels) per split."""
    splits = list(labels_by_split)
    counts = {s: _share_counts(l) for s, l in labels_by_split.items()}
    rows = list(next(iter(counts.values())))
    head = "| label | " + " | ".join(f"{s} n | {s} share" for s in splits) + " |"
    sep = "|---|" + "---:|---:|" * len(splits)
    lines = [head, sep]
    for r in rows:
        cells = []
        for s in splits:
            n = len(labels_by_split[s])
            c = counts[s][r]
            cells.append(f"{c} | {100.0 * c / n:.2f}%" if n else "0 | -")
        lines.append(f"| {r} | " + " | ".join(cells) + " |")
    lines.append("| total | " + " | ".join(f"{len(labels_by_split[s])} | 100.00%" for s in splits) + " |")
    return "\n".join(lines) + "\n"


def _share_counts(labels: InstanceLabels) -> dict[str, int]:
    masks = category_masks(labels)
    return {name: int(m.sum()) for name, m in masks.items() if name != "all"}


def markdown_table(results: Results, metrics: Sequence[str] = ("recall@10", "ndcg@10"),
                   categories: Sequence[str] | None = None) -> str:
    """Markdown table: one row per category (with its instance count), ``model metric`` columns.

    ``categories`` defaults to every category of the first model with at least one instance.
    """
    models = list(results)
    if not models:
        raise ValueError("no results to tabulate")
    first = results[models[0]]
    cats = list(categories) if categories is not None else [c for c, r in first.items() if r.get("count", 0) > 0]
    short = {"recall": "R", "ndcg": "N"}
    head = ["category", "n"] + [f"{m} {short.get(x.split('@')[0], x.split('@')[0])}@{x.split('@')[1]}"
                                 if "@" in x else f"{m} {x}" for m in models for x in metrics]
    lines = ["| " + " | ".join(head) + " |", "|---|---:|" + "---:|" * (len(models) * len(metrics))]
    for c in cats:
        count = int(first.get(c, {}).get("count", 0))
        cells = [c, str(count)] + [_fmt(results[m].get(c, {}).get(x, math.nan)) for m in models for x in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_categories(results: Results, path: str | Path, metric: str = "ndcg@10",
                    categories: Sequence[str] = CHART_CATEGORIES, title: str | None = None) -> Path:
    """Grouped bar chart of ``metric`` per category (x) and model (bars), written as PNG atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    models = list(results)
    if not models:
        raise ValueError("no results to plot")
    first = results[models[0]]
    if not any(metric in row for res in results.values() for row in res.values()):
        raise ValueError(f"no result holds the metric {metric!r}")
    # an empty category is left out: a bar of 0 would read as a model that scored 0 there
    cats = [c for c in categories if c in first and first[c].get("count", 0) > 0]
    fig = Figure(figsize=(max(6.0, 1.1 * len(cats) + 2), 4.2))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / len(models)
    x = np.arange(len(cats))
    for j, m in enumerate(models):
        vals = [results[m].get(c, {}).get(metric, math.nan) for c in cats]
        vals = [math.nan if v is None else v for v in vals]  # NaN: no bar
        ax.bar(x - 0.4 + width * (j + 0.5), vals, width, label=m)
    labels = [f"{c}\n(n={int(first[c].get('count', 0))})" for c in cats]
    ax.set_xticks(x)
    ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(metric)
    ax.set_title(title or f"{metric} by memorization category")
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    return atomic_write_bytes(path, buf.getvalue())


# ----------------------------------------------------------------------------------------------
# Token-level summary


def token_memorization_summary(token: TokenMemorization, labels: InstanceLabels,
                               ranks: Mapping[str, np.ndarray] | None = None, k: int = 10, hop: int = 1
                               ) -> list[dict[str, float]]:
    """Per prefix length ``n``: how many item-level *generalization* instances are n-gram prefix
    memorized (at hop <= ``hop``; 1 is the strict analogue of memorization) and, for each model in
    ``ranks`` (name -> 0-based ranks ``[n]``), Recall/NDCG@k on the memorized and the other ones."""
    if len(token.hops) != len(labels):
        raise ValueError(f"{len(token.hops)} token rows for {len(labels)} labels")
    gen = labels.groups() == "generalization"
    rows = []
    for n in range(1, token.levels + 1):
        pm = token.memorized(n, hop) & gen
        other = gen & ~pm
        row: dict[str, float] = {"n": n, "generalization": int(gen.sum()), "prefix_memorized": int(pm.sum()),
                                 "share": float(pm.sum() / gen.sum()) if gen.any() else math.nan}
        for name, r in (ranks or {}).items():
            r = np.asarray(r)
            for part, mask in (("memorized", pm), ("other", other)):
                m = metrics_from_ranks(r[mask], (k,)) if mask.any() else {f"recall@{k}": math.nan,
                                                                          f"ndcg@{k}": math.nan}
                row[f"{name} recall@{k} {part}"] = m[f"recall@{k}"]
                row[f"{name} ndcg@{k} {part}"] = m[f"ndcg@{k}"]
        rows.append(row)
    return rows


def token_memorization_markdown(rows: Sequence[Mapping[str, float]]) -> str:
    """Markdown rendering of :func:`token_memorization_summary` rows."""
    if not rows:
        return ""
    extra = [c for c in rows[0] if c not in ("n", "generalization", "prefix_memorized", "share")]
    head = ["n-gram prefix", "generalization n", "prefix-memorized n", "share"] + extra
    lines = ["| " + " | ".join(head) + " |", "|---:|---:|---:|---:|" + "---:|" * len(extra)]
    for r in rows:
        cells = [str(int(r["n"])), str(int(r["generalization"])), str(int(r["prefix_memorized"])),
                 "-" if is_missing(r["share"]) else f"{100 * r['share']:.2f}%"] + [_fmt(r[c]) for c in extra]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


__all__ = [
    "CHART_CATEGORIES", "DEFAULT_ANALYSIS_KS", "category_masks", "evaluate_by_category",
    "evaluate_topk_by_category", "export_labels_jsonl", "format_metric", "label_records", "markdown_table",
    "new_figure", "plot_categories", "save_png",
    "shares_markdown", "token_memorization_markdown", "token_memorization_summary",
]
