"""The paper's semantic-ID analyses of a recipe run (arXiv 2603.19809, sections 4.2-4.4): the
``analysis`` stage computes them from what the earlier stages wrote, :func:`analyses_markdown`
renders the report's section.

- **Support coverage** (:func:`genrec.semantic_id_analysis.support_coverage`): the test
  generalization instances by the longest semantic-ID prefix transition seen in training, with every
  model's Recall / NDCG at the report's K on each.
- **Indicator validation** (:func:`genrec.semantic_id_analysis.indicator_validation`): the AUC of each
  of the fusion stage's test indicators for memorization vs generalization and for "SASRec beats the
  generative model".
- **Codebook intervention** (:func:`genrec.codebook_sweep.codebook_sweep`, quick mode): the recipe's
  quantizer refitted per ``analysis.codebook_sizes`` x ``analysis.codebook_levels``; collisions and how
  much of each label turns into token-level memorization. No model is trained (the training sweep is
  a benchmark: ``genrec analyze --sweep-train-epochs``).

All three read test labels and test outcomes: they describe the run and choose nothing.
Output: ``analysis/*.json`` (one per analysis that ran; ``analysis/summary.json`` lists them and why
any was skipped), PNG plots with ``report.plots``, and ``analysis/codebook_sweep_rows/`` (one file per
finished configuration, so a killed sweep resumes).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from genrec.artifacts import load_arrays, load_json, save_json
from genrec.errors import DataFormatError

if TYPE_CHECKING:
    from genrec.recipe.stages import StageContext

log = logging.getLogger(__name__)

__all__ = ["stage_analysis", "load_analyses", "analyses_markdown"]

#: the two models whose win the indicators are validated against (fusion/topk.npz names)
WIN_PAIR = ("sasrec", "gr")


def _read_indicators(path: Path, n: int) -> dict[str, np.ndarray] | None:
    """The fusion stage's test indicators, or None for a fusion stage from before they were saved."""
    if not path.exists():
        return None
    out = load_arrays(path)
    bad = [name for name, v in out.items() if v.shape != (n,)] if isinstance(out, dict) else ["(one unnamed array)"]
    if bad:
        raise DataFormatError(f"{path}: indicators {bad} do not have one value per test instance ({n})")
    return out


def stage_analysis(ctx: "StageContext") -> dict[str, Path]:
    """Run the analyses ``analysis.*`` asks for on the run's test instances (module doc)."""
    from genrec.codebook_sweep import codebook_sweep, config_grid, plot_sweep
    from genrec.memorization import token_memorization
    from genrec.recipe.run_files import load_labels, semantic_id_table, test_ranks
    from genrec.semantic_id_analysis import indicator_validation, plot_indicator_validation, support_coverage

    run_dir, config = ctx.run_dir, ctx.config
    a, plots = config.analysis, config.report.plots
    out = run_dir / "analysis"
    _, split = ctx.data()
    cold = ctx.cold() is not None
    if cold:  # memorized means seen in what the models trained on: the warm sequences (as the labels stage)
        split = replace(split, train=ctx.training()[1].train)
    labels = load_labels(run_dir, "test")
    targets = split.test.targets
    joint = "joint" in ctx.inputs and (run_dir / "joint" / "ranks.npz").exists()
    ranks = test_ranks(run_dir, targets, joint)
    k = int(config.report.metric.partition("@")[2])
    paths: dict[str, Path] = {}
    skipped: dict[str, str] = {}

    if a.support_coverage:
        codes = semantic_id_table(run_dir, with_cold_items=cold).codes  # disambiguation level last
        token = token_memorization(split.train, split.test, codes, config.labels.max_hop)
        rows = support_coverage(token, labels, ranks, k=k, hop=a.token_hop)
        paths["support_coverage"] = save_json(out / "support_coverage.json",
                                              {"hop": a.token_hop, "k": k, "levels": int(codes.shape[1]),
                                               "rows": rows}, strict=True)  # read by people: NaN as null
    else:
        skipped["support_coverage"] = "analysis.support_coverage is false"

    if a.indicator_validation:
        indicators = _read_indicators(run_dir / "fusion" / "indicators.npz", len(targets))
        if indicators is None:
            skipped["indicator_validation"] = ("fusion/indicators.npz is missing (a fusion stage from before the "
                                               "indicators were saved): delete the fusion directory to rerun it")
            log.warning("indicator validation skipped: %s", skipped["indicator_validation"])
        else:
            result = indicator_validation(indicators, labels, ranks, WIN_PAIR, k=k)
            paths["indicator_validation"] = save_json(out / "indicator_validation.json", result, strict=True)
            if plots and result["rows"]:
                paths["indicator_validation_plot"] = plot_indicator_validation(
                    result, out / "indicator_validation.png", title="test indicators")  # no run name: not hashed here
    else:
        skipped["indicator_validation"] = "analysis.indicator_validation is false"

    if not (a.codebook_sizes and a.codebook_levels):
        skipped["codebook_sweep"] = "analysis.codebook_sizes or analysis.codebook_levels is empty"
    elif cold:
        # the sweep refits the quantizer on every item's text: a cold-start run's models never saw the
        # cold items', and the analysis would describe codes no model of the run used
        skipped["codebook_sweep"] = "a cold-start run (data.cold_items): the sweep would fit codes on the cold items"
    else:
        q = config.quantize
        embeddings = np.load(run_dir / "embed" / "embeddings.npy", mmap_mode="r")
        refused: list[tuple[str, str]] = []  # a configuration the quantizer refuses costs its row, not the run
        rows = codebook_sweep(split, np.asarray(embeddings, dtype=np.float32),
                              config_grid(a.codebook_sizes, a.codebook_levels), labels, method=q.method,
                              seed=q.seed, max_hop=config.labels.max_hop, hop=a.token_hop,
                              quantizer_options=q.options, pca_dim=q.pca_dim, whiten=q.whiten, k=k,
                              rows_dir=out / "codebook_sweep_rows", skipped=refused)
        for name, reason in refused:
            skipped[f"codebook_sweep {name}"] = reason
        if rows:
            paths["codebook_sweep"] = save_json(out / "codebook_sweep.json", {"method": q.method, "seed": q.seed,
                                                                              "hop": a.token_hop, "rows": rows},
                                                strict=True)
        else:
            skipped["codebook_sweep"] = "the quantizer refused every configuration (above)"
        if plots and rows:
            paths["codebook_sweep_plot"] = plot_sweep(rows, out / "codebook_sweep.png",
                                                      title="codebook intervention")
    summary = {"ran": [name for name in ("support_coverage", "indicator_validation", "codebook_sweep")
                       if name in paths], "skipped": skipped}
    paths["summary"] = save_json(out / "summary.json", summary)
    return paths


def load_analyses(run_dir: str | Path) -> dict[str, Any] | None:
    """What the analysis stage wrote, as one dict (``summary`` plus one key per analysis that ran),
    or None for a run without the stage."""
    out = Path(run_dir) / "analysis"
    if not (out / "summary.json").exists():
        return None
    result: dict[str, Any] = {"summary": load_json(out / "summary.json")}
    for name in result["summary"]["ran"]:
        if not (out / f"{name}.json").is_file():
            raise DataFormatError(f"{out / 'summary.json'}: lists the analysis {name!r} but {out / (name + '.json')} "
                                  f"is missing; delete {out} and run the recipe again to redo the analysis stage")
        result[name] = load_json(out / f"{name}.json")
    return result


def _support_rows(cov: Mapping[str, Any], models: list[str]) -> list[dict]:
    """Support-coverage rows with only the columns of ``models``."""
    keep = {f"{m} {metric}@{cov['k']}" for m in models for metric in ("recall", "ndcg")}
    return [{key: v for key, v in row.items() if key in ("category", "n", "count", "share") or key in keep}
            for row in cov["rows"]]


def analyses_markdown(analyses: Mapping[str, Any], primary: str, plots: bool) -> list[str]:
    """The report's "Semantic-ID analyses" section (markdown lines) from :func:`load_analyses`: support
    coverage for SASRec, the generative model and the ``primary`` method; indicator validation; the
    codebook sweep; a line for each analysis skipped and why. ``plots``: link the PNGs."""
    from genrec.codebook_sweep import sweep_markdown
    from genrec.semantic_id_analysis import indicator_validation_markdown, support_coverage_markdown

    md = ["", "## Semantic-ID analyses (arXiv 2603.19809, sections 4.2-4.4)", "",
          "Descriptions of this run on test, after the fact: nothing here chooses anything."]
    cov = analyses.get("support_coverage")
    if cov:
        models = [m for m in dict.fromkeys(("sasrec", "gr", primary))
                  if any(key.startswith(f"{m} ") for key in cov["rows"][0])]
        md += ["", "### Support coverage", "",
               f"The test generalization instances (no item-level transition from the last history item to "
               f"the target in training: memorization is hop 1) by the longest semantic-ID prefix transition "
               f"that training has within {'one hop' if cov['hop'] == 1 else str(cov['hop']) + ' hops'}, and "
               f"each model's metrics on them. The IDs have {cov['levels']} levels, the last the disambiguation "
               f"code, so the {cov['levels']}-gram row is the item itself"
               + (", empty by definition at hop 1." if cov["hop"] == 1 else
                  f": at hop {cov['hop']} it holds the instances whose target follows a history item within "
                  f"{cov['hop']} positions (any distance and gap up to {cov['hop']}) though not right after the "
                  f"last one."), "",
               support_coverage_markdown(_support_rows(cov, models)).rstrip("\n")]
    ind = analyses.get("indicator_validation")
    if ind:
        md += ["", "### Indicator validation", "",
               "ROC AUC of each fusion indicator for memorization vs generalization instances, and for "
               f"\"{ind['pair'][0]} wins\" among the instances where the two models' NDCG@{ind['k']} differ; "
               "below 0.5, low values point to memorization / a win.", "",
               indicator_validation_markdown(ind).rstrip("\n")]
        if plots and ind["rows"]:
            md += ["", "![indicator validation](analysis/indicator_validation.png)"]
    sweep = analyses.get("codebook_sweep")
    if sweep:
        md += ["", "### Codebook intervention", "",
               f"The run's quantizer (`{sweep['method']}`, seed {sweep['seed']}) refitted on the same embeddings "
               f"for each codebook size x levels (no model trained): items sharing a code tuple before "
               f"disambiguation, and the share of each label's test instances whose code-prefix transition is "
               f"memorized at each prefix length (hop <= {sweep['hop']}).", "",
               sweep_markdown(sweep["rows"]).rstrip("\n")]
        if plots:
            md += ["", "![codebook intervention](analysis/codebook_sweep.png)"]
    skipped = analyses["summary"]["skipped"]
    if skipped:
        md += [""] + [f"- {name.replace('_', ' ')}: not run ({why})." for name, why in skipped.items()]
    return md
