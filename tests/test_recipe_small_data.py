"""The recipe on data too small to fill every label category: the report is still written."""

import math
from pathlib import Path

from genrec.artifacts import load_json
from genrec.recipe import load_config, run_recipe

DEMO_YAML = Path(__file__).resolve().parents[1] / "recipes" / "configs" / "demo.yaml"


def test_a_run_whose_test_split_lacks_a_category_still_reports(tmp_path):
    """Small data can leave a label category (here: generalization) without a test instance: its
    metrics are NaN in the JSON files, and the analysis and report stages still write their tables."""
    config = load_config(DEMO_YAML, overrides=["data.dataset=synthetic:num_users=150,seed=0", "sasrec.max_epochs=1",
                                               "generative.max_epochs=1"])
    run_recipe(config, tmp_path / "run")
    res = load_json(tmp_path / "run" / "results.json")
    assert res["labels"]["test"]["shares"]["generalization"] == 0.0  # the case this test is about
    assert math.isnan(res["models"]["sasrec"]["test"]["generalization"]["ndcg@10"])
    assert "## " in (tmp_path / "run" / "report.md").read_text()
