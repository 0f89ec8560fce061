"""The recipe on data too small to fill every label category: the report is still written."""

import json
from pathlib import Path


from genrec.artifacts import load_json
from genrec.recipe import format_summary, load_config, run_recipe

DEMO_YAML = Path(__file__).resolve().parents[1] / "recipes" / "configs" / "demo.yaml"


def _refuse(token: str) -> None:
    raise AssertionError(f"{token} is not JSON: jq and JavaScript refuse the file")


def test_a_run_whose_test_split_lacks_a_category_still_reports(tmp_path):
    """Small data can leave a label category (here: generalization) without a test instance: its
    metrics are NaN inside the run and null in ``results.json`` (strict JSON, which jq and JavaScript
    read), and the analysis and report stages and the summary still write their tables."""
    config = load_config(DEMO_YAML, overrides=["data.dataset=synthetic:num_users=150,seed=0", "sasrec.max_epochs=1",
                                               "generative.max_epochs=1"])
    returned = run_recipe(config, tmp_path / "run")
    res = load_json(tmp_path / "run" / "results.json")
    assert res["labels"]["test"]["shares"]["generalization"] == 0.0  # the case this test is about
    assert res["models"]["sasrec"]["test"]["generalization"]["ndcg@10"] is None  # strict JSON: null, not NaN
    json.loads((tmp_path / "run" / "results.json").read_text(), parse_constant=_refuse)
    assert returned == res
    assert "n/a" in format_summary(res)
    # readers of results.json take its nulls (they crashed on None where NaN had been)
    from genrec.recipe.analyses import analyses_markdown
    from genrec.semantic_id_analysis import plot_indicator_validation

    assert res["analysis"]["support_coverage"]["rows"][0]["share"] is None  # no generalization instance
    text = "\n".join(analyses_markdown(res["analysis"], res["fusion"]["primary"], plots=False))
    assert "### Support coverage" in text
    plot_indicator_validation(res["analysis"]["indicator_validation"], tmp_path / "ind.png")
    report = (tmp_path / "run" / "report.md").read_text()
    # a claim about a category without instances is not judged (it read "DOES NOT HOLD")
    (claim,) = [c for c in res["comparisons"] if c["category"] == "generalization"]
    assert claim["holds"] is None and "n/a (a side has no value)" in report
    # epochs run: the last validated epoch (the curve has a row per validation, not per epoch)
    gr = res["training"]["gr"]
    assert f"| gr | {gr['best_epoch']} | {gr['valid']['ndcg@10']:.4f} | {gr['curve'][-1]['epoch']} |" in report


def test_compare_results_tells_booleans_from_numbers_and_ignores_whole_keys(tmp_path, capsys):
    """bench/compare_results.py, the check behind "same results" claims: True and 1 differ; an
    --ignore prefix covers a key and what is under it, not a longer key that starts the same."""
    import json

    from tests.scripts import load_script

    compare = load_script("bench/compare_results.py")
    a = {"flag": True, "n": 1, "labels": {"valid": [1, 2], "valid2": 3}, "x": float("nan")}
    b = {"flag": 1, "n": 1.0, "labels": {"valid": [1, 5], "valid2": 4}, "x": float("nan")}
    (tmp_path / "a.json").write_text(json.dumps(a))
    (tmp_path / "b.json").write_text(json.dumps(b))
    assert compare.main([str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--ignore", "labels.valid"]) == 1
    out = capsys.readouterr().out
    assert "flag: True vs 1" in out and "labels.valid2: 3 vs 4" in out and "labels.valid[1]" not in out
    assert "n:" not in out and "x:" not in out and "2 difference(s)" in out
    import pytest  # a run without results.json (killed): exit 2 with the path, not a traceback

    with pytest.raises(SystemExit) as stop:
        compare.main([str(tmp_path / "a.json"), str(tmp_path)])
    assert stop.value.code == 2 and f"cannot read {tmp_path / 'results.json'}" in capsys.readouterr().err


def test_a_forced_run_stopped_before_its_changed_stage_leaves_no_stale_stage_passing_for_done(tiny_run, tiny_cached,
                                                                                             tmp_path):
    """config.json takes the new settings at once; the fusion stage fitted under the old fusion.k kept its
    done marker until it ran again, so a run stopped before it served the old fusion with the new k."""
    import shutil

    import pytest

    from genrec.errors import CheckpointError
    from genrec.recipe import StopAfterStage
    from genrec.recommender import Recommender

    run = shutil.copytree(tiny_run, tmp_path / "run")
    changed = load_config(DEMO_YAML, overrides=[*tiny_cached, "fusion.k=5", "fusion.beam=5", "report.ks=[5]",
                                                        "report.metric=ndcg@5"])
    with pytest.raises(StopAfterStage):
        run_recipe(changed, run, force=True, stop_after="labels")
    assert load_json(run / "config.json")["fusion"]["k"] == 5
    assert not (run / "fusion" / "stage.done.json").exists() and (run / "labels" / "stage.done.json").exists()
    with pytest.raises(CheckpointError, match="stage 'fusion' has not finished there"):
        Recommender.from_run(run)
    # finished: every method fitted NDCG@5, the length of the lists it serves, not NDCG@10
    from fusion import load_methods

    run_recipe(changed, run, force=True)
    fitted = load_methods(run / "fusion" / "methods.pt")
    assert fitted and {name: m.k for name, m in fitted.items()} == {name: 5 for name in fitted}
    assert load_json(run / "fusion" / "summary.json")["fit_k"] == {name: 5 for name in fitted}
    assert {m.k for m in load_methods(tiny_run / "fusion" / "methods.pt").values()} == {10}
    # a fusion stage made before the cutoff followed fusion.k (its marker hashes no fusion.fit_k) reruns by
    # itself, without --force, since no training is lost; a run at fusion.k >= 10 keeps its hash
    from genrec.recipe.stage_hash import stage_hash

    marker_path = run / "fusion" / "stage.done.json"
    marker = load_json(marker_path)
    assert marker["hashed"]["config"]["fusion.fit_k"] == 5
    assert "fusion.fit_k" not in load_json(tiny_run / "fusion" / "stage.done.json")["hashed"]["config"]
    del marker["hashed"]["config"]["fusion.fit_k"]
    marker["config_hash"] = stage_hash(marker["hashed"])
    marker_path.write_text(json.dumps(marker))
    run_recipe(changed, run)
    assert load_json(marker_path)["hashed"]["config"]["fusion.fit_k"] == 5


def test_a_report_without_plots_leaves_no_earlier_plots_behind(tiny_run, tiny_cached, tmp_path):
    import shutil

    run = shutil.copytree(tiny_run, tmp_path / "run")
    assert (run / "plots" / "per_category.png").is_file()
    run_recipe(load_config(DEMO_YAML, overrides=[*tiny_cached, "report.plots=false"]), run)
    assert not (run / "plots").exists() and "![" not in (run / "report.md").read_text().split("## Semantic-ID")[0]
