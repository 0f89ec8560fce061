"""Codebook intervention (arXiv 2603.19809, section 4.3): sweep semantic-ID configurations and see
how much item-level generalization each one turns into token-level memorization.

For every configuration (codebook size x levels) :func:`codebook_sweep` quantizes the given item
embeddings (:func:`quantize.build_semantic_ids`) and reports

- collision statistics of the quantizer codes (items sharing a full code tuple, before the
  disambiguation level; :func:`quantize.collision_stats`) and codebook perplexities;
- *conversion rates*: for each item-level group (memorization / generalization / uncategorized), the
  share of its instances that are n-gram prefix memorized (:func:`genrec.memorization.token_memorization`,
  hop <= ``hop``) for each prefix length ``n`` of the quantizer codes. Memorization instances convert
  at every ``n`` by construction (an item transition is a prefix transition too), a sanity check;
  for generalization instances the rate measures how much a coarser code "explains" them;
- the support coverage of the generalization instances (:func:`genrec.semantic_id_analysis.support_levels`).

That quick mode trains nothing (seconds per configuration on Beauty). With ``train_config`` a
generative model is trained per configuration (:func:`genrec.generative.train_generative`, minutes
to hours: keep it for benchmarks) and its test NDCG@K on memorization / generalization instances
and its validation curve are added.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from tqdm.auto import tqdm

from genrec.analysis import evaluate_by_category, format_metric, is_missing, new_figure, save_png
from genrec.artifacts import load_json, save_json
from genrec.errors import GenrecError
from genrec.memorization import DEFAULT_MAX_HOP, GROUPS, InstanceLabels, token_memorization
from genrec.semantic_id_analysis import support_category, support_levels
from genrec.splits import LeaveOneOutSplit

log = logging.getLogger(__name__)

__all__ = ["CodebookConfig", "config_grid", "codebook_sweep", "sweep_markdown", "plot_sweep"]

#: quantizers whose "levels" are residual levels; PQ / OPQ call them subspaces
_LEVEL_OPTION = {"rq_kmeans": "levels", "rq_vae": "levels", "pq": "subspaces", "opq": "subspaces"}


@dataclass(frozen=True)
class CodebookConfig:
    """One semantic-ID configuration: ``levels`` codes of ``codebook_size`` values each (before
    the disambiguation level)."""

    codebook_size: int
    levels: int

    @property
    def name(self) -> str:
        """``"256x3"``."""
        return f"{self.codebook_size}x{self.levels}"


def config_grid(codebook_sizes: Iterable[int], levels: Iterable[int]) -> list[CodebookConfig]:
    """Every codebook size x level count, sizes outer (the order of the report)."""
    grid = [CodebookConfig(int(s), int(lv)) for s in codebook_sizes for lv in levels]
    bad = [c.name for c in grid if c.codebook_size < 2 or c.levels < 1]
    if bad:
        raise ValueError(f"codebook sizes must be >= 2 and levels >= 1, got {bad}")
    if not grid:
        raise ValueError("empty sweep: give at least one codebook size and one level count")
    return grid


def _conversion(memorized: list[np.ndarray], groups: np.ndarray) -> dict[str, list[float]]:
    """Per item-level group, the share of its instances memorized at each prefix length."""
    out = {}
    for g in GROUPS:
        mask = groups == g
        out[g] = [float(m[mask].mean()) if mask.any() else math.nan for m in memorized]
    return out


def codebook_sweep(split: LeaveOneOutSplit, embeddings: np.ndarray, configs: Sequence[CodebookConfig],
                   labels: InstanceLabels, *, method: str = "rq_kmeans", seed: int = 0,
                   max_hop: int = DEFAULT_MAX_HOP, hop: int = 1, quantizer_options: Mapping[str, Any] | None = None,
                   pca_dim: int | None = None, whiten: bool = False, train_config: Any | None = None, k: int = 10,
                   rows_dir: str | Path | None = None, skipped: list[tuple[str, str]] | None = None) -> list[dict]:
    """One JSON-able row per configuration (module doc) for the test instances of ``split``, whose
    item-level ``labels`` are given. ``embeddings``: ``[num_items, d]`` item vectors, row ``j`` = item
    ``j``. ``pca_dim`` / ``whiten``: the embeddings' preprocessing before the quantizer, as
    :func:`quantize.build_semantic_ids`'s. ``train_config``: a
    :class:`~genrec.generative.GenerativeConfig` to also train and evaluate a generative model per
    configuration (expensive); None is the quick mode. With
    ``rows_dir`` each finished row is written there (atomically) and a rerun with the same inputs and
    settings reuses it, so a killed sweep resumes at the configuration it was on. ``skipped``: a list that
    collects ``(configuration, reason)`` for each configuration the quantizer refuses (OPQ with a
    dimension its sub-spaces do not divide, say), which then has no row; None raises the refusal."""
    from quantize.pipeline import build_semantic_ids

    x = np.asarray(embeddings)
    if x.ndim != 2 or x.shape[0] != split.num_items:
        raise ValueError(f"embeddings must be [{split.num_items}, d] (one row per item), got {x.shape}")
    if not np.isfinite(x).all():  # bad data, not a configuration the quantizer refuses: never a skipped row
        raise ValueError(f"embeddings: row {int(np.flatnonzero(~np.isfinite(x).all(1))[0])} is NaN or infinite")
    if len(labels) != len(split.test):
        raise ValueError(f"{len(labels)} labels for {len(split.test)} test instances")
    key = method.lower().replace("-", "_")
    if key not in _LEVEL_OPTION:
        raise ValueError(f"unknown quantizer {method!r}; choose from {sorted(_LEVEL_OPTION)}")
    groups = labels.groups()
    gen = groups == "generalization"
    row_key = {"method": key, "seed": seed, "max_hop": max_hop, "hop": hop, "k": k,
               "quantizer_options": dict(quantizer_options or {}), "inputs": _inputs_digest(split, x, labels),
               "train_config": None if train_config is None else repr(train_config),
               # a beam widened to k (it was eval_beam): rows decoded with the shorter one are not these rows
               **({"test_beam": k} if train_config is not None and k > train_config.eval_beam else {})}
    if pca_dim is not None or whiten:  # only then: rows saved before these options existed stay valid
        row_key["preprocess"] = {"pca_dim": pca_dim, "whiten": bool(whiten)}
    rows = []
    for cfg in tqdm(list(configs), desc="codebook sweep", leave=False, disable=None):
        saved = _saved_row(rows_dir, cfg, row_key)
        if saved is not None:
            log.info("codebook %s: reusing %s", cfg.name, Path(rows_dir) / f"{cfg.name}.json")
            rows.append(saved)
            continue
        t0 = time.perf_counter()
        opts = {**(quantizer_options or {}), _LEVEL_OPTION[key]: cfg.levels, "codebook_size": cfg.codebook_size}
        try:
            result = build_semantic_ids(split.dataset, key, embeddings=x, pca_dim=pca_dim, whiten=whiten, seed=seed,
                                        **opts)
        except ValueError as e:  # a setting this quantizer cannot take for these vectors
            if skipped is None or isinstance(e, GenrecError):  # bad data or config: not this configuration's
                raise
            log.warning("codebook %s: skipped (%s)", cfg.name, e)
            skipped.append((cfg.name, str(e)))
            continue
        base = result.table.codes[:, :cfg.levels]  # quantizer codes, without the disambiguation level
        token = token_memorization(split.train, split.test, base, max_hop)
        memorized = [token.memorized(n, hop) for n in range(1, cfg.levels + 1)]
        level = support_levels(token, hop)
        row: dict[str, Any] = {
            "config": cfg.name, "method": key, "codebook_size": cfg.codebook_size, "levels": cfg.levels,
            "codebook_sizes": list(result.table.codebook_sizes),  # as fitted, plus the disambiguation level
            "collisions": result.diagnostics["collisions"],
            "perplexity": [cb["perplexity"] for cb in result.diagnostics["codebooks"]],
            "conversion": _conversion(memorized, groups),
            "generalization_support": {support_category(n): float((level[gen] == n).mean()) if gen.any()
                                       else math.nan for n in range(cfg.levels, -1, -1)},
        }
        if train_config is not None:
            row.update(_train_and_evaluate(split, result.table, train_config, labels, k))
        row["seconds"] = time.perf_counter() - t0
        log.info("codebook %s: %.2f%% colliding items, generalization -> 1-gram %.1f%%, -> %d-gram %.1f%% (%.1fs)",
                 cfg.name, 100 * row["collisions"]["colliding_share"], 100 * row["conversion"]["generalization"][0],
                 cfg.levels, 100 * row["conversion"]["generalization"][-1], row["seconds"])
        if rows_dir is not None:
            save_json(Path(rows_dir) / f"{cfg.name}.json", {"key": row_key, "row": row})
        rows.append(row)
    return rows


def _inputs_digest(split: LeaveOneOutSplit, embeddings: np.ndarray, labels: InstanceLabels) -> str:
    """SHA-256 of what a row is computed from: the embeddings, the training sequences, the validation
    and test instances (validation early-stops the training mode) and the labels (a saved row of
    other data is never reused). Each sequence is hashed after its length."""
    h = hashlib.sha256(np.ascontiguousarray(embeddings).tobytes())

    def add(seqs) -> None:
        h.update(np.int64(len(seqs)).tobytes())
        for seq in seqs:
            seq = np.asarray(seq, np.int64)
            h.update(np.int64(len(seq)).tobytes() + seq.tobytes())

    add(split.train)
    for inst in (split.valid, split.test):
        add(inst.histories)
        h.update(np.asarray(inst.targets, np.int64).tobytes())
    h.update("\n".join(map(str, labels.groups())).encode())
    return h.hexdigest()


def _saved_row(rows_dir: str | Path | None, cfg: CodebookConfig, key: dict) -> dict | None:
    """The row of ``cfg`` saved by an earlier run with the same ``key``, else None."""
    path = None if rows_dir is None else Path(rows_dir) / f"{cfg.name}.json"
    if path is None or not path.exists():
        return None
    try:
        saved = load_json(path)
    except ValueError as err:  # a damaged file (a sweep never leaves one: rows are written atomically)
        log.warning("%s: unreadable (%s); recomputing", path, err)
        return None
    if not isinstance(saved, dict) or saved.get("key") != key or not isinstance(saved.get("row"), dict):
        log.info("%s: saved for other inputs or settings; recomputing", path)
        return None
    return saved["row"]


def _train_and_evaluate(split: LeaveOneOutSplit, table: Any, config: Any, labels: InstanceLabels, k: int) -> dict:
    """Train a generative model on ``table`` and evaluate it on the test instances per group."""
    from genrec.generative import recommend, train_generative
    from genrec.metrics import ranks_from_topk

    result = train_generative(split, table, config, progress=False)
    # a beam of at least k: NDCG@k of a shorter list undercounts (a target past its end is a miss)
    beam = recommend(result.model, split.test, max(config.eval_beam, k), batch_size=config.eval_batch_size)
    ranks = ranks_from_topk(beam.items, split.test.targets)  # outside the beam: a miss at every K
    by_cat = evaluate_by_category(ranks, labels, ks=(k,), hops=False)
    metric = f"ndcg@{k}"
    return {"test": {g: by_cat[g][metric] for g in ("all", "memorization", "generalization", "uncategorized")},
            "metric": metric, "best_epoch": result.best_epoch,
            "validation_curve": [{"epoch": h.get("epoch"), "minutes": h.get("minutes"), "ndcg@10": h.get("ndcg@10")}
                                 for h in result.history]}


def _pct(x: float) -> str:
    return "-" if x is None or math.isnan(x) else f"{100 * x:.1f}%"


def sweep_markdown(rows: Sequence[Mapping]) -> str:
    """Markdown table of :func:`codebook_sweep` rows: collisions, conversion rates per prefix length
    and, when trained, the generative model's test NDCG per group."""
    if not rows:
        return ""
    max_levels = max(int(r["levels"]) for r in rows)
    trained = any("test" in r for r in rows)
    head = ["config", "unique tuples", "colliding items", "largest group", "memorization -> token"]
    head += [f"generalization -> {n}-gram" for n in range(1, max_levels + 1)]
    head += ["uncategorized -> 1-gram", "uncategorized -> full code"]
    if trained:
        metric = next(r["metric"] for r in rows if "test" in r)
        head += [f"{metric} {g}" for g in ("all", "memorization", "generalization")] + ["best epoch"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for r in rows:
        c, conv = r["collisions"], r["conversion"]
        gen = conv["generalization"] + [math.nan] * (max_levels - len(conv["generalization"]))
        unc_cells = [conv["uncategorized"][0], conv["uncategorized"][-1]]
        cells = [r["config"], str(c["unique_tuples"]), _pct(c["colliding_share"]), str(c["largest_group"]),
                 _pct(conv["memorization"][-1])] + [_pct(v) for v in gen] + [_pct(v) for v in unc_cells]
        if trained:
            t = r.get("test", {})
            cells += [format_metric(t.get(g)) for g in ("all", "memorization", "generalization")]
            cells.append(str(r.get("best_epoch", "-")))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_sweep(rows: Sequence[Mapping], path: str | Path, title: str | None = None) -> Path:
    """PNG (atomic): per configuration the colliding-item share and the generalization -> token
    conversion at 1-gram and at the full code; with trained rows a second panel of validation curves."""
    if not rows:
        raise ValueError("no sweep rows to plot")
    trained = [r for r in rows if r.get("validation_curve")]
    fig = new_figure((11.0 if trained else 7.0, 4.2))
    ax = fig.add_subplot(1, 2 if trained else 1, 1)
    x = np.arange(len(rows))
    series = [("colliding items", [r["collisions"]["colliding_share"] for r in rows]),
              ("generalization -> 1-gram", [r["conversion"]["generalization"][0] for r in rows]),
              ("generalization -> full code", [r["conversion"]["generalization"][-1] for r in rows])]
    w = 0.8 / len(series)
    for j, (label, vals) in enumerate(series):
        ax.bar(x - 0.4 + w * (j + 0.5), [math.nan if is_missing(v) else v for v in vals], w, label=label)  # no bar
    ax.set_xticks(x)
    ax.set_xticklabels([r["config"] for r in rows], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("share")
    ax.set_title(title or "codebook intervention")
    ax.legend(fontsize=8)
    if trained:
        ax2 = fig.add_subplot(1, 2, 2)
        for r in trained:
            curve = [p for p in r["validation_curve"] if p.get("ndcg@10") is not None]
            ax2.plot([p["minutes"] for p in curve], [p["ndcg@10"] for p in curve], marker="o", label=r["config"])
        ax2.set_xlabel("minutes")
        ax2.set_ylabel("validation ndcg@10")
        ax2.set_title("validation curves")
        ax2.legend(fontsize=7)
    return save_png(fig, path)
