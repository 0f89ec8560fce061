"""Recipe results: ``results.json`` (every stage's outputs gathered), the three headline
comparisons, the one-screen summary the CLI prints, and ``report.md`` with its PNG plots.

Timing values live under keys listed in :data:`TIMING_KEYS`; :func:`strip_timing` removes them (what
must be identical between a resumed and an uninterrupted run is the rest).
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from genrec.artifacts import atomic_write_bytes, atomic_write_text, load_json
from genrec.recipe.analyses import analyses_markdown, load_analyses
from genrec.recipe.config import RecipeConfig
from genrec.recipe.primary import choose_primary
from genrec.recipe.run_files import load_labels

__all__ = ["TIMING_KEYS", "strip_timing", "collect_results", "headline_comparisons", "format_summary",
           "cold_start_table", "selection_table", "write_report"]

#: keys whose values are wall-clock or memory measurements (they differ between runs)
TIMING_KEYS = frozenset({"wall_s", "peak_rss_mib", "minutes", "seconds", "timings_s", "timing", "total_wall_s"})


def strip_timing(obj: Any) -> Any:
    """A copy of ``obj`` (nested dicts / lists) without the keys in :data:`TIMING_KEYS`."""
    if isinstance(obj, Mapping):
        return {k: strip_timing(v) for k, v in obj.items() if k not in TIMING_KEYS}
    if isinstance(obj, list):
        return [strip_timing(v) for v in obj]
    return obj


def _history(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    keep = ("epoch", "train_loss", "recall@10", "ndcg@10", "minutes")
    return [{k: row[k] for k in keep if k in row} for row in load_json(path)]


def collect_results(run_dir: str | Path, config: RecipeConfig, names: Sequence[str]) -> dict[str, Any]:
    """Aggregate the outputs of the stages ``names`` (those the config ran) into the ``results.json`` dict."""
    run_dir = Path(run_dir)
    ev = load_json(run_dir / "evaluate" / "metrics.json")
    quant = load_json(run_dir / "quantize" / "diagnostics.json")
    fusion = load_json(run_dir / "fusion" / "summary.json")
    choice = choose_primary(config, run_dir)
    models: dict[str, Any] = {}
    for name, per_label in ev["test"].items():
        models[name] = {"kind": ("single" if name in ("sasrec", "gr") else "joint" if name == "joint" else "fusion"),
                        "test": per_label}
    training = {}
    for stage, key in (("sasrec", "sasrec"), ("generative", "gr"), ("joint", "joint")):
        if stage in names:
            s = load_json(run_dir / stage / "summary.json")
            training[key] = {**s, "curve": _history(run_dir / stage / "history.json")}
    stages = {}
    total = 0.0
    for name in names:
        marker = run_dir / name / "stage.done.json"
        if name == "report" or not marker.exists():
            continue
        t = load_json(marker)["timing"]
        stages[name] = {"timing": t}
        total += t["wall_s"]
    results = {
        "name": config.name, "preset": config.preset, "dataset": config.data.dataset,
        "data": load_json(run_dir / "data" / "summary.json"),
        "labels": load_json(run_dir / "labels" / "summary.json"),
        "quantization": quant,
        "models": models,
        "training": training,
        "fusion": {"primary": choice.method, "selection": choice.to_dict(),
                   "params": fusion["params"], "fit_k": fusion.get("fit_k", {}),  # absent: runs before it
                   "union_width": fusion["union_width"],
                   "indicators": fusion["indicators"], "gate_by_label": ev["gate_by_label"],
                   "timing": fusion.get("timing", {})},
        "metric": config.report.metric,
        "comparisons": None,
        "stages": stages,
        "timing": {"total_wall_s": total},
    }
    analyses = load_analyses(run_dir) if "analysis" in names else None
    if analyses is not None:  # runs whose config has the stage: the others' results stay as they were
        results["analysis"] = analyses
    if "cold_start" in ev:  # only cold-start runs (data.cold_items): other runs' results stay as they were
        results["cold_start"] = ev["cold_start"]
    results["comparisons"] = headline_comparisons(results)
    return results


def headline_comparisons(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The three claims of the product, measured on test: GR ahead on generalization instances,
    SASRec ahead on memorization ones, fusion (``fusion.primary``) ahead of both overall.
    Each entry: ``claim``, the two sides' values, ``holds`` (None when a side is missing)."""
    metric = results["metric"]
    models = results["models"]
    primary = results["fusion"]["primary"]

    def val(model: str, cat: str) -> float:
        v = models.get(model, {}).get("test", {}).get(cat, {}).get(metric, math.nan)
        return float(v) if v is not None else math.nan

    def cmp(claim: str, a: str, b: str, cat: str, a_val: float, b_val: float, b_name: str | None = None) -> dict:
        # None: a side has no value (e.g. no instance of the category): the claim cannot be judged
        holds = None if math.isnan(a_val) or math.isnan(b_val) else bool(a_val > b_val)
        return {"claim": claim, "category": cat, "metric": metric, "winner": a, "winner_value": a_val,
                "loser": b_name or b, "loser_value": b_val, "holds": holds}

    out = [cmp("generative model ahead on generalization instances", "gr", "sasrec", "generalization",
               val("gr", "generalization"), val("sasrec", "generalization")),
           cmp("SASRec ahead on memorization instances", "sasrec", "gr", "memorization",
               val("sasrec", "memorization"), val("gr", "memorization"))]
    best_single = max(("sasrec", "gr"), key=lambda m: (val(m, "all") if not math.isnan(val(m, "all")) else -1))
    out.append(cmp(f"fusion ({primary}) ahead overall", primary, best_single, "all", val(primary, "all"),
                   val(best_single, "all")))
    return out


def _fmt(x: Any, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def _comparison_lines(results: Mapping[str, Any]) -> list[str]:
    lines = []
    for c in results["comparisons"]:
        verdict = "n/a (a side has no value)" if c["holds"] is None else "holds" if c["holds"] else "DOES NOT HOLD"
        lines.append(f"- {c['claim']}: {c['winner']} {_fmt(c['winner_value'])} vs {c['loser']} "
                     f"{_fmt(c['loser_value'])} ({c['metric']}, {c['category']}) -> {verdict}")
    return lines


def format_summary(results: Mapping[str, Any], run_dir: str | Path | None = None) -> str:
    """One screen of text: per-model metric overall / memorization / generalization, the three
    comparisons, time per stage. (The CLI prints it; the library does not.)"""
    metric = results["metric"]
    cats = ("all", "memorization", "generalization", "uncategorized")
    first = next(iter(results["models"].values()))["test"]
    counts = {c: int(first.get(c, {}).get("count", 0)) for c in cats}
    lines = [f"{results['name']} ({results['dataset']}, preset {results['preset'] or 'none'}): test {metric}", ""]
    head = f"{'model':18s}" + "".join(f"{c[:14]:>16s}" for c in cats)
    lines += [head, f"{'(instances)':18s}" + "".join(f"{counts[c]:>16d}" for c in cats)]
    for name, m in results["models"].items():
        mark = " *" if name == results["fusion"]["primary"] else ""
        lines.append(f"{(name + mark):18s}" + "".join(f"{_fmt(m['test'].get(c, {}).get(metric)):>16s}" for c in cats))
    lines += ["", "comparisons:"] + _comparison_lines(results)
    cold = results.get("cold_start")
    if cold:
        lines += ["", f"cold start ({cold['protocol']}, {cold['cold_items']} cold items): test {metric}, "
                      f"cold / in-set targets ({cold['test_cold_targets']} / {cold['test_in_set_targets']} users)"]
        lines += [f"{name:18s}{_fmt(row['cold'].get(metric)):>16s}{_fmt(row['in_set'].get(metric)):>16s}"
                  for name, row in cold["models"].items()]
    stages = results.get("stages", {})
    if stages:
        lines += ["", "time per stage: " + ", ".join(f"{n} {s['timing']['wall_s']:.0f}s" for n, s in stages.items())
                  + f"; total {results['timing']['total_wall_s'] / 60:.1f} min"]
    if run_dir is not None:
        lines.append(f"results: {Path(run_dir) / 'results.json'}, report: {Path(run_dir) / 'report.md'}")
    return "\n".join(lines)


def cold_start_table(cold: Mapping[str, Any], k: int = 10) -> str:
    """Markdown table of a cold-start run's ``results["cold_start"]``: Recall@k / NDCG@k of every
    model on cold-target and in-set test users, with the counts in a line above it."""
    models = cold["models"]
    first = next(iter(models.values()))
    n_cold, n_in = first["cold"]["count"], first["in_set"]["count"]
    total = cold["cold_items"] + cold["warm_items"]
    lines = [f"Protocol `{cold['protocol']}`: {cold['cold_items']} cold items of {total} "
             f"(left out of the quantizer's fit, SASRec and the generative model; added back through the "
             f"add-items path); {n_cold} test users with a cold target, {n_in} with an in-set target; "
             f"{cold['valid_dropped']} validation instances dropped (cold target or empty history)."
             + (f" {first['in_set_cold_history']['count']} of the in-set users have a cold item in their history "
                f"(read through the add-items path too; `in_set_cold_history` in results.json)."
                if "in_set_cold_history" in first else ""), "",
             f"| model | cold R@{k} | cold N@{k} | in-set R@{k} | in-set N@{k} |", "|---|---:|---:|---:|---:|"]
    for name, row in models.items():
        lines.append(f"| {name} | {_fmt(row['cold'].get(f'recall@{k}'))} | {_fmt(row['cold'].get(f'ndcg@{k}'))} | "
                     f"{_fmt(row['in_set'].get(f'recall@{k}'))} | {_fmt(row['in_set'].get(f'ndcg@{k}'))} |")
    return "\n".join(lines)


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()


def gate_distributions(run_dir: str | Path, methods: Sequence[str]) -> dict[str, dict[str, np.ndarray]]:
    """Per method (of ``methods`` with saved test gates: the post-hoc ones and ``joint``), per label
    (the coarse groups, then each generalization kind), the test instances' gate values."""
    run_dir = Path(run_dir)
    gates: dict[str, np.ndarray] = {}
    for path in (run_dir / "fusion" / "gates.npz", run_dir / "joint" / "gates.npz"):
        if path.exists():
            with np.load(path) as z:
                gates.update({n: z[n] for n in z.files if n in methods})
    labels = load_labels(run_dir, "test")
    groups, kinds = labels.groups(), labels.kind_names()
    masks = {cat: groups == cat for cat in ("memorization", "generalization", "uncategorized")}
    masks.update({str(kind): kinds == kind for kind in sorted(set(kinds[groups == "generalization"]))})
    masks = {cat: m for cat, m in masks.items() if m.any()}
    return {name: {cat: g[m] for cat, m in masks.items()} for name, g in gates.items()}


def _plot_gates(dists: Mapping[str, Mapping[str, np.ndarray]], primary: str, path: Path) -> Path:
    """One panel per method: box plot (quartiles, 5-95% whiskers, mean as a triangle) of the test
    gate per label (instances in brackets); the primary method's panel says so."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    methods = list(dists)
    cats = list(next(iter(dists.values())))
    ncols = min(3, len(methods))
    nrows = math.ceil(len(methods) / ncols)
    fig = Figure(figsize=(max(4.0, 0.7 * len(cats) + 1.5) * ncols, 3.4 * nrows))
    FigureCanvasAgg(fig)
    for j, m in enumerate(methods):
        ax = fig.add_subplot(nrows, ncols, j + 1)
        ax.boxplot([dists[m][c] for c in cats], whis=(5, 95), showmeans=True, showfliers=False)
        ax.axhline(0.5, color="grey", lw=0.8, ls="--")
        ax.set_xticks(np.arange(1, len(cats) + 1))
        ax.set_xticklabels([f"{c} ({len(dists[m][c])})" for c in cats], rotation=30, ha="right", fontsize=8)
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(m + (" (primary)" if m == primary else ""), fontsize=9)
        if j % ncols == 0:
            ax.set_ylabel("gate (weight of SASRec)")
    fig.suptitle("fusion gate per memorization label (test)", fontsize=10)
    fig.tight_layout()
    return atomic_write_bytes(path, _png(fig))


def _cross_fitted(sel: Mapping[str, Any], name: str) -> bool:
    """Whether ``name``'s validation score in a primary selection (``PrimaryChoice.to_dict``) is
    cross-fitted; a selection saved before ``cross_fitted`` was recorded says it in ``sources``' words."""
    if "cross_fitted" in sel:
        return name in sel["cross_fitted"]
    return name != "joint" or "cross-fitted" in sel.get("sources", {}).get(name, "")


def selection_table(results: Mapping[str, Any]) -> str:
    """Markdown table of the primary's selection: every candidate's validation score (cross-fitted
    for post-hoc methods) beside its test score overall / memorization / generalization, the chosen
    one in bold with a check mark."""
    sel = results["fusion"]["selection"]
    metric, chosen = sel["metric"], sel["method"]
    names = [n for n in results["models"] if results["models"][n]["kind"] != "single"]
    names += [n for n in sel["scores"] if n not in names]
    lines = [f"| method | validation {metric} | how | test all | test memorization | test generalization | primary |",
             "|---|---:|---|---:|---:|---:|:---:|"]
    for n in names:
        test = results["models"].get(n, {}).get("test", {})
        v = sel["scores"].get(n)
        how = "-" if v is None else "cross-fitted" if _cross_fitted(sel, n) else "own training"
        row = [f"**{n}**" if n == chosen else n, _fmt(v), how] + [_fmt(test.get(c, {}).get(metric))
                                                                 for c in ("all", "memorization", "generalization")]
        lines.append("| " + " | ".join(row + ["yes" if n == chosen else ""]) + " |")
    return "\n".join(lines)


def _plot_curves(training: Mapping[str, Any], path: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9.0, 3.6))
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for name, t in training.items():
        curve = t.get("curve", [])
        if not curve:
            continue
        ep = [r["epoch"] for r in curve]
        ax1.plot(ep, [r.get("ndcg@10", math.nan) for r in curve], marker="o", ms=3, label=name)
        ax2.plot(ep, [r.get("train_loss", math.nan) for r in curve], marker="o", ms=3, label=name)
    ax1.set_title("validation NDCG@10")
    ax2.set_title("training loss")
    for ax in (ax1, ax2):
        ax.set_xlabel("epoch")
        ax.legend(fontsize=8)
    fig.tight_layout()
    return atomic_write_bytes(path, _png(fig))


def _sample_note(results: Mapping[str, Any]) -> str:
    """A sentence for runs evaluated on a sample of users (``data.eval_users``), else ''."""
    split = results["data"].get("split", {})
    if not split.get("eval_users_sampled"):
        return ""
    return (f" Validation and test use a seeded sample of {split['test']:,} of the {split['users_kept']:,} users "
            f"(`data.eval_users`), each still ranked against the whole catalogue.")


def write_report(run_dir: str | Path, config: RecipeConfig, results: Mapping[str, Any]) -> dict[str, Path]:
    """``report.md`` with tables (overall + per label, quantization, fusion, stages) and PNG plots."""
    import shutil

    from genrec.analysis import markdown_table, plot_categories

    run_dir = Path(run_dir)
    # an earlier report's plots go: with plots off, or a plot this run has no data for, they would stay
    # beside the new report (a chart of methods the run no longer has)
    shutil.rmtree(run_dir / "plots", ignore_errors=True)
    metric = results["metric"]
    k_main = metric.partition("@")[2]
    table_metrics = [f"recall@{k_main}", f"ndcg@{k_main}"]  # every K is in results.json
    per_model = {name: m["test"] for name, m in results["models"].items()}
    paths: dict[str, Path] = {}
    md = [f"# {results['name']}: {results['dataset']}", "",
          f"Preset `{results['preset'] or 'none'}`. Leave-one-out, full catalogue, test split; ranked lists of "
          f"length {config.fusion.k}. `*` in the summary marks the primary fusion method "
          f"(`{results['fusion']['primary']}`).{_sample_note(results)}", "", "## Headline comparisons", ""]
    md += _comparison_lines(results)
    sel = results["fusion"]["selection"]
    how = (f"chosen on validation only (`fusion.primary: auto`): {sel['reason']}" if sel["requested"] == "auto"
           else f"set in the config (`fusion.primary: {sel['requested']}`); validation scores for reference")
    scored = ("Post-hoc methods are scored out of sample: fitted on "
              f"{sel['folds'] - 1} of {sel['folds']} folds of the validation users, scored on the fold left out "
              "(mean over folds)" if sel.get("folds") else
              "This run's fusion stage saved no cross-fitted scores (it predates them)")
    if "joint" in sel["scores"]:
        scored += ("; the joint model " + ("by its choice among its candidates, cross-fitted on the same folds"
                                           if _cross_fitted(sel, "joint") else "by its own validation score")
                   + " (it trains on the training sequences only)")
    md += ["", "## Primary fusion method", "",
           f"`{sel['method']}`, {how}. {scored}. No test data takes part in the choice; test columns "
           "are for reading only.", "",
           selection_table(results)]
    md += ["", "## Test metrics by memorization label", "",
           markdown_table(per_model, table_metrics, ["all", "memorization", "generalization", "uncategorized"]),
           "", "### Every label", "", markdown_table(per_model, [metric])]
    if config.report.plots:
        plots = run_dir / "plots"
        paths["plot_categories"] = plot_categories(per_model, plots / "per_category.png", metric=metric,
                                                   title=f"{results['name']} test: {metric}")
        md += ["", f"![{metric} per category](plots/per_category.png)"]
        if any(t.get("curve") for t in results["training"].values()):
            paths["plot_curves"] = _plot_curves(results["training"], plots / "validation_curves.png")
    gl = results["fusion"]["gate_by_label"]
    if gl:  # the heading whether or not there is a plot: the table is gate values, not metrics
        md += ["", "## Fusion gate by label", "",
               "The mean weight of SASRec per label on test (1 = SASRec only, 0 = generative model only)."]
        dists = gate_distributions(run_dir, list(gl)) if config.report.plots else None
        if dists:
            paths["plot_gates"] = _plot_gates(dists, results["fusion"]["primary"],
                                              run_dir / "plots" / "gates_by_label.png")
            md += ["", "Distributions: boxes are quartiles, whiskers 5-95%, triangles means, instances in brackets; "
                   "one panel per method, the primary one marked.", "", "![gate by label](plots/gates_by_label.png)"]
        cats = list(next(iter(gl.values())))
        md += ["", "| method | " + " | ".join(cats) + " |", "|---|" + "---:|" * len(cats)]
        md += [f"| {m} | " + " | ".join(_fmt(row.get(c), 3) for c in cats) + " |" for m, row in gl.items()]
    if results.get("cold_start"):
        md += ["", "## Cold start", "", cold_start_table(results["cold_start"], int(k_main))]
    md += ["", "## Fitted fusion parameters", ""]
    fit_k = results["fusion"].get("fit_k") or {}  # the validation NDCG cutoff each method fitted

    def param_name(method: str, key: str) -> str:
        return f"{key}@{fit_k[method]}" if key == "valid_ndcg" and method in fit_k else key

    md += [f"- `{m}`: " + ", ".join(f"{param_name(m, k)}={_fmt(v) if isinstance(v, float) else v}"
                                     for k, v in p.items())
           for m, p in results["fusion"]["params"].items()]
    md += ["", "## Training", "", "| model | best epoch | valid N@10 | epochs run |", "|---|---:|---:|---:|"]
    for name, t in results["training"].items():
        curve = t.get("curve") or []  # one row per validation: every eval_every-th epoch and the last
        md.append(f"| {name} | {_fmt(t.get('best_epoch'))} | {_fmt(t.get('valid', {}).get('ndcg@10'))} | "
                  f"{curve[-1].get('epoch', len(curve)) if curve else '-'} |")
    beam = results["training"].get("gr", {}).get("valid_beam")
    if beam is not None:  # a run's summary records the beam its validation used
        md += ["", f"The generative model's validation figures while training rank its top {beam} beam items "
               "(`generative.eval_beam`; a target outside the beam is a miss)."]
    if config.report.plots and "plot_curves" in paths:
        md += ["", "![validation curves](plots/validation_curves.png)"]
    q = results["quantization"]
    c = q.get("collisions", {})
    md += ["", "## Semantic IDs", "",
           f"{q.get('quantizer')} with codebooks {q.get('codebook_sizes')}; "
           f"{c.get('colliding_share', 0):.2%} of items in colliding tuples before disambiguation "
           f"(largest group {c.get('largest_group')}); relative reconstruction error "
           f"{_fmt(q.get('reconstruction', {}).get('relative'), 3)}; codebook utilisation "
           + ", ".join(f"{cb['utilisation']:.0%}" for cb in q.get("codebooks", [])) + "."]
    if results.get("analysis"):
        md += analyses_markdown(results["analysis"], results["fusion"]["primary"], config.report.plots)
    md += ["", "## Stages", "", "Each stage's last run (a stage resumed after an interruption counts the run that "
           "finished it; the training curves' minutes add up every run).", "",
           "| stage | wall time (s) | peak memory (MiB) |", "|---|---:|---:|"]
    for name, s in results["stages"].items():
        md.append(f"| {name} | {s['timing']['wall_s']:.1f} | {s['timing']['peak_rss_mib']:.0f} |")
    paths["report"] = atomic_write_text(run_dir / "report.md", "\n".join(md) + "\n")
    return paths
