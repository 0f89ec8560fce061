"""Recipes: the whole pipeline as resumable stages, configured by one YAML file.

    data -> item text -> embeddings -> semantic IDs -> SASRec -> generative model
         -> memorization labels -> post-hoc fusion (-> joint training) -> evaluation
         -> semantic-ID analyses -> report

Typical use::

    from genrec.recipe import load_config, run_recipe
    config = load_config("recipes/configs/demo.yaml", preset="quick", overrides=["sasrec.max_epochs=5"])
    results = run_recipe(config, "runs/demo")      # dict, also written to runs/demo/results.json

Six modules, one job each: :mod:`~genrec.recipe.config` (the YAML schema, presets, overrides and
validation), :mod:`~genrec.recipe.stages` (what each stage does), :mod:`~genrec.recipe.runner`
(which stages run: hashes, resume, refusal to discard work, the run lock),
:mod:`~genrec.recipe.primary` (which fusion method is the run's primary, chosen on validation),
:mod:`~genrec.recipe.analyses` (the paper's semantic-ID analyses of the run) and :mod:`~genrec.recipe.report` (``results.json``, the summary, ``report.md`` and plots).
"""

from genrec.recipe.config import (FUSION_METHODS, PRESETS, SECTIONS, TOP_LEVEL, AnalysisSection, ConfigError,
                                  DataSection, FusionSection, LabelsSection, QuantizeSection, RecipeConfig,
                                  ReportSection, TextSection, apply_overrides, config_from_dict, config_to_dict,
                                  load_config, resolve_dataset_spec, validate_config)
from genrec.recipe.primary import PrimaryChoice, choose_primary
from genrec.recipe.report import TIMING_KEYS, collect_results, format_summary, headline_comparisons, strip_timing
from genrec.recipe.runner import Recipe, StopAfterStage, run_recipe
from genrec.recipe.stages import STAGES, Stage, StageContext, check_catalogue, load_labels, stage_names

__all__ = [
    "ConfigError", "RecipeConfig", "DataSection", "TextSection", "QuantizeSection", "LabelsSection",
    "FusionSection", "AnalysisSection", "ReportSection", "SECTIONS", "TOP_LEVEL", "PRESETS", "FUSION_METHODS", "load_config",
    "config_from_dict", "config_to_dict", "apply_overrides", "validate_config", "resolve_dataset_spec",
    "Stage", "StageContext", "STAGES", "stage_names", "check_catalogue", "load_labels",
    "Recipe", "run_recipe", "StopAfterStage", "PrimaryChoice", "choose_primary",
    "TIMING_KEYS", "strip_timing", "collect_results", "headline_comparisons", "format_summary",
]
