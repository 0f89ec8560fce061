"""Recipes (genrec.recipe, genrec run / genrec demo): the demo end to end at a tiny size, resume at
every stage boundary and inside the training stages, clear errors for bad config values."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from genrec import cli
from genrec.commands import demo as demo_cmd
from genrec.errors import RunDirectoryError
from genrec.metrics import metrics_from_ranks
from genrec.recipe import (ConfigError, StageContext, StopAfterStage, config_from_dict, load_config, run_recipe,
                           stage_names, strip_timing)

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
DEMO_YAML = ROOT / "recipes" / "configs" / "demo.yaml"

# The demo at a tiny size: 64 items, 150 users, one-block models, two epochs.
TINY = ["num_threads=1", "data.dataset=synthetic:num_users=150,num_brands=4,num_categories=4,num_attributes=4",
        "data.max_history=10", "quantize.codebook_size=4",
        "sasrec.hidden=16", "sasrec.max_epochs=2", "sasrec.batch_size=64",
        "generative.hidden=16", "generative.max_epochs=2", "generative.max_minutes=null", "generative.eval_beam=5",
        "generative.batch_size=64", "fusion.k=10", "fusion.beam=10", "fusion.gate.max_epochs=5", "report.ks=[5,10]"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Overrides for the tiny demo, with an embedding cache of its own (the encoder runs once)."""
    cache = tmp_path_factory.mktemp("emb_cache")
    return TINY + [f"text.cache_dir={cache}"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny):
    """``genrec demo`` through the CLI at the tiny size, uninterrupted."""
    out = tmp_path_factory.mktemp("ref") / "run"
    code = cli.main(["demo", "--out", str(out), "--set", *tiny])
    assert code == 0
    return out


def _results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


def test_demo_end_to_end_tiny(reference, capsys):
    res = _results(reference)
    names = stage_names(load_config(DEMO_YAML))
    assert list(res["stages"]) == [n for n in names if n != "report"]
    for stage in names:
        assert (reference / stage / "stage.done.json").is_file()
    assert {"sasrec", "gr", "fixed", "adaptive", "learned_minmax"} <= set(res["models"])
    from genrec.recipe.run_files import run_config, test_ranks  # the reported metrics, recomputed from the lists
    targets = StageContext(reference, run_config(reference)).data()[1].test.targets
    for name, ranks in test_ranks(reference, targets, joint=False).items():
        assert metrics_from_ranks(ranks, (10,)) == pytest.approx(
            {k: v for k, v in res["models"][name]["test"]["all"].items() if k.endswith("@10")})
    assert res["quantization"]["semantic_ids"]["all_unique"] and [c["holds"] in (True, False)  # every side
                                                                   for c in res["comparisons"]] == [True] * 3
    # each verdict is the comparison of the two sides' reported test figures, the third against the best tower
    metric = res["metric"]
    test = {m: res["models"][m]["test"] for m in res["models"]}
    for c in res["comparisons"]:
        assert c["winner_value"] == test[c["winner"]][c["category"]][metric]
        assert c["loser_value"] == test[c["loser"]][c["category"]][metric]
        assert c["holds"] == (c["winner_value"] > c["loser_value"])
    assert [(c["winner"], c["category"]) for c in res["comparisons"]] == [
        ("gr", "generalization"), ("sasrec", "memorization"), (res["fusion"]["primary"], "all")]
    assert res["comparisons"][2]["loser"] == max(("sasrec", "gr"), key=lambda m: test[m]["all"][metric])
    for s in res["stages"].values():  # each stage timed, with its own peak memory (VmHWM, reset per stage)
        assert s["timing"]["wall_s"] > 0 and s["timing"]["peak_rss_mib"] > 10 and s["timing"]["peak_rss_scope"]
    report = (reference / "report.md").read_text()
    assert "Headline comparisons" in report and "| memorization |" in report
    assert res["fusion"]["fit_k"] == {m: 10 for m in res["fusion"]["params"]}
    assert re.search(r"- `fixed`: alpha=[\d.]+, valid_ndcg@10=0\.\d+", report)  # the cutoff it fitted
    assert "validation figures while training rank its top 5 beam items" in report  # the tiny eval_beam
    for png in ("per_category.png", "gates_by_label.png", "validation_curves.png"):
        assert (reference / "plots" / png).read_bytes()[:4] == b"\x89PNG"
    assert set(res["fusion"]["gate_by_label"]) == {"fixed", "adaptive", "learned_minmax"}
    assert res["training"]["sasrec"]["curve"] and res["training"]["gr"]["curve"]


def test_eval_users_evaluates_a_seeded_sample_of_users(reference, tiny, tmp_path):
    """``data.eval_users``: validation and test hold the same seeded users, every stage works on them,
    training still sees every user, and the report says so."""
    from genrec.recipe.stages import StageContext

    n = 60
    config = load_config(DEMO_YAML, overrides=tiny + [f"data.eval_users={n}"])
    full = StageContext(reference, load_config(DEMO_YAML, overrides=tiny)).data()[1]
    split = StageContext(tmp_path, config).data()[1]
    assert len(split.valid) == len(split.test) == n < len(full.test)
    assert np.array_equal(split.valid.users, split.test.users) and np.isin(split.test.users, full.test.users).all()
    assert len(split.train) == len(full.train)  # every user still trains
    pos = np.searchsorted(full.test.users, split.test.users)
    assert np.array_equal(split.test.targets, full.test.targets[pos])
    assert np.array_equal(split.valid.targets, full.valid.targets[pos])
    again = StageContext(tmp_path, load_config(DEMO_YAML, overrides=tiny + [f"data.eval_users={n}"])).data()[1]
    assert np.array_equal(again.test.users, split.test.users)  # seeded
    other = StageContext(tmp_path, load_config(DEMO_YAML, overrides=tiny + [f"data.eval_users={n}",
                                                                             "data.eval_seed=1"])).data()[1]
    assert not np.array_equal(other.test.users, split.test.users)

    out = tmp_path / "run"
    run_recipe(config, out)
    res = _results(out)
    assert res["data"]["split"]["test"] == n and res["data"]["split"]["eval_users_sampled"]
    assert res["labels"]["test"]["count"] == n
    topk = np.load(out / "fusion" / "topk.npz")
    assert all(topk[name].shape[0] == n for name in topk.files)
    assert "seeded sample of 60 of the 150 users" in (out / "report.md").read_text()
    assert not _results(reference)["data"]["split"]["eval_users_sampled"]


def test_rerun_skips_every_stage(reference, tiny):
    before = (reference / "results.json").read_text()
    events = []
    run_recipe(load_config(DEMO_YAML, overrides=tiny), reference, on_stage=lambda n, e, i: events.append(e))
    assert set(events) == {"skip"}
    assert (reference / "results.json").read_text() == before


def test_a_stage_produced_again_reruns_what_read_it(reference, tiny, tmp_path, monkeypatch):
    """A stage directory deleted and rerun with the same settings: the stages that read it stay valid
    when it produced the same files (its run id is their digest), and run again (with a warning) when
    it produced others; an interrupted stage whose input was produced again starts over; markers from
    before run ids match anything."""
    import shutil

    from genrec.recipe import stages

    out = tmp_path / "run"
    shutil.copytree(reference, out)
    shutil.rmtree(out / "evaluate")
    events: dict[str, str] = {}
    config = load_config(DEMO_YAML, overrides=tiny)

    def run() -> None:
        events.clear()
        run_recipe(config, out, on_stage=lambda n, e, i: events.__setitem__(n, e) if e != "start" else None)

    run()  # evaluate is deterministic: the same files, the same id (the report, removed meanwhile, is redone)
    assert [n for n, e in events.items() if e == "done"] == ["evaluate", "report"] and _results(out)
    evaluate = next(s for s in stages.STAGES if s.name == "evaluate")
    original = evaluate.run

    def other_outputs(ctx):  # the same stage producing other files (e.g. other numerics)
        artifacts = original(ctx)
        with open(artifacts["metrics"], "a") as f:
            f.write(" ")
        return artifacts

    from dataclasses import replace

    from genrec.recipe import runner

    shutil.rmtree(out / "evaluate")
    patched = tuple(replace(s, run=other_outputs) if s is evaluate else s for s in stages.STAGES)
    monkeypatch.setattr(runner, "STAGES", patched)
    monkeypatch.setattr(stages, "STAGES", patched)
    run()
    assert [n for n, e in events.items() if e == "done"] == ["evaluate", "analysis", "report"]
    assert strip_timing(_results(out)) == strip_timing(_results(reference))
    markers = {n: json.loads((out / n / "stage.done.json").read_text()) for n in stage_names(config)}
    assert markers["analysis"]["upstream_runs"]["evaluate"] == markers["evaluate"]["run_id"]
    # interrupted after its input was produced again: started over, not resumed
    monkeypatch.undo()
    (out / "report" / "stage.done.json").unlink()
    (out / "report" / "leftover.txt").write_text("from the interrupted run")
    shutil.rmtree(out / "evaluate")
    run()
    assert events["report"] == "done" and not (out / "report" / "leftover.txt").exists()
    # markers written before run ids existed: nothing reruns
    for n, m in markers.items():
        m.pop("run_id"), m.pop("upstream_runs")
        (out / n / "stage.done.json").write_text(json.dumps(m))
    events.clear()
    run_recipe(config, out, on_stage=lambda n, e, i: events.__setitem__(n, e) if e != "start" else None)
    assert set(events.values()) == {"skip"}


def test_damaged_files_in_a_run_directory_are_named_not_tracebacks(reference, tiny, tmp_path):
    import shutil

    from genrec.artifacts import load_json
    from genrec.errors import CheckpointError, RunDirectoryError

    out = tmp_path / "run"
    shutil.copytree(reference, out)
    (out / "evaluate" / "stage.done.json").write_text("[]")  # valid JSON, not a marker: the stage reruns
    events: dict[str, str] = {}
    config = load_config(DEMO_YAML, overrides=tiny)
    run_recipe(config, out, on_stage=lambda n, e, i: events.__setitem__(n, e) if e != "start" else None)
    assert events["evaluate"] == "done"
    (out / "bad.json").write_bytes(b'{"a": \xff')
    with pytest.raises(CheckpointError, match=r"bad.json: damaged JSON file"):
        load_json(out / "bad.json")
    # a new run is never started inside a saved recommender or a model's training directory
    for taken in ("recommender.json", "best.pt"):
        other = tmp_path / f"other_{taken}"
        other.mkdir()
        (other / taken).write_text("{}")
        with pytest.raises(RunDirectoryError, match=f"holds {taken}, not a recipe run"):
            run_recipe(config, other)
        assert not (other / "config.json").exists()


def test_resume_at_every_stage_boundary(reference, tiny, tmp_path):
    config = load_config(DEMO_YAML, overrides=tiny)
    out = tmp_path / "run"
    names = stage_names(config)
    for k, name in enumerate(names[:-1]):  # as a new process would
        events: dict[str, str] = {}
        with pytest.raises(StopAfterStage):
            run_recipe(load_config(DEMO_YAML, overrides=tiny), out, stop_after=name,
                       on_stage=lambda n, e, i: events.__setitem__(n, e) if e != "start" else None)
        assert (out / name / "stage.done.json").is_file()
        assert not (out / "results.json").exists()
        assert events == {**{n: "skip" for n in names[:k]}, name: "done"}  # finished stages are not rerun
    run_recipe(config, out)
    assert strip_timing(_results(out)) == strip_timing(_results(reference))


def test_resume_inside_training_stages(reference, tiny, tmp_path, caplog):
    """A run killed in the middle of training (checkpoints, no done marker) ends with the same results."""
    from genrec.generative import train_generative
    from genrec.recipe import StageContext
    from genrec.sasrec import train_sasrec
    from quantize import SemanticIdTable

    config = load_config(DEMO_YAML, overrides=tiny)
    out = tmp_path / "run"
    with pytest.raises(StopAfterStage):
        run_recipe(config, out, stop_after="quantize")
    _, split = StageContext(out, config).data()
    train_sasrec(split, config.sasrec.__class__(**{**config.sasrec.__dict__, "max_epochs": 1}), out / "sasrec",
                 progress=False)
    table = SemanticIdTable.load(out / "quantize" / "semantic_ids.json")
    train_generative(split, table, config.generative.__class__(**{**config.generative.__dict__, "max_epochs": 1}),
                     out / "generative", progress=False)
    assert not (out / "sasrec" / "stage.done.json").exists()
    with caplog.at_level("INFO", logger="genrec.training"):
        run_recipe(config, out)
    for name in ("sasrec", "generative"):  # resumed, not restarted (a seeded restart ends the same)
        assert f"resumed {name} from {out / name / 'last.pt'} at epoch 1" in caplog.text
    assert len(json.loads((out / "sasrec" / "history.json").read_text())) == config.sasrec.max_epochs
    assert strip_timing(_results(out)) == strip_timing(_results(reference))


def test_changed_config_reruns_that_stage_and_downstream(reference, tiny, tmp_path):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(reference, out)
    events: dict[str, str] = {}
    changed = load_config(DEMO_YAML, overrides=tiny + ["fusion.methods=[fixed, adaptive]", "fusion.primary=adaptive"])
    before = _results(out)
    # without force: refused, naming the changed keys and the stages it would discard; nothing touched
    with pytest.raises(RunDirectoryError, match=r"changed: fusion.methods\); running would discard the stages "
                                                r"fusion \(and rerun evaluate, analysis, report\)\. Rerun with --force"):
        run_recipe(changed, out)
    assert _results(out) == before and (out / "fusion" / "stage.done.json").is_file()
    run_recipe(changed, out, force=True,
               on_stage=lambda n, e, i: events.__setitem__(n, e) if e != "start" else None)
    assert [n for n, e in events.items() if e == "skip"] == ["data", "embed", "quantize", "sasrec", "generative",
                                                             "labels"]
    assert set(_results(out)["models"]) == {"sasrec", "gr", "fixed", "adaptive"}


def test_demo_command_matches_yaml():
    assert yaml.safe_load(DEMO_YAML.read_text()) == demo_cmd.DEMO
    assert load_config(DEMO_YAML) == config_from_dict(demo_cmd.DEMO)


def test_all_recipe_configs_load():
    for path in sorted((ROOT / "recipes" / "configs").glob("*.yaml")):
        for preset in ("quick", "full"):
            config = load_config(path, preset=preset)
            assert config.preset == preset and stage_names(config)[0] == "data"


def test_preset_is_merged_under_explicit_values():
    c = config_from_dict({"preset": "quick", "sasrec": {"max_epochs": 7}})
    assert c.sasrec.max_epochs == 7 and c.sasrec.patience == 2  # explicit value wins, preset fills the rest
    assert c.sasrec.max_len == c.data.max_history
    c = config_from_dict({"preset": "quick"}, preset="full")
    assert c.preset == "full" and not c.fusion.joint and c.fusion.k == 50 and c.generative.max_minutes == 40
    c = config_from_dict({}, overrides=["fusion.gate.hidden=8", "data.max_history=20", "name=x"])
    assert c.fusion.gate == {"hidden": 8} and c.generative.max_len == 20 and c.name == "x"


def test_cli_reports_config_errors(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nsasrec:\n  max_epochs: many\n")
    assert cli.main(["run", str(bad)]) == 2
    assert "'sasrec.max_epochs' expects int, got 'many'" in capsys.readouterr().err
    bad.write_text("- a\n- b\n")
    assert cli.main(["run", str(bad)]) == 2
    assert "must be a YAML mapping" in capsys.readouterr().err
    assert cli.main(["run", str(tmp_path / "missing.yaml")]) == 2
    assert cli.main(["run", str(DEMO_YAML), "--until", "nowhere"]) == 2
    assert "not a stage" in capsys.readouterr().err
    assert cli.main(["run", str(DEMO_YAML), "--show", "--set", "fusion.joint=true"]) == 0
    assert "joint -> evaluate" in capsys.readouterr().out


def test_missing_dataset_is_a_clear_error(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("name: nodata\ndata:\n  dataset: ./no/such/dir\n")
    assert cli.main(["run", str(cfg), "--out", str(tmp_path / "run")]) == 2
    assert "dataset directory not found" in capsys.readouterr().err


def test_optional_joint_stage(reference, tiny, tmp_path):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(reference, out)
    events: dict[str, str] = {}
    config = load_config(DEMO_YAML, overrides=tiny + ["fusion.joint=true", "fusion.joint_schedule=end_to_end",
                                                      "fusion.joint_config.max_epochs=1"])
    assert "joint" in stage_names(config)
    run_recipe(config, out, on_stage=lambda n, e, i: events.__setitem__(n, e) if e != "start" else None)
    assert events["fusion"] == "skip" and events["joint"] == "done"
    res = _results(out)
    assert res["models"]["joint"]["kind"] == "joint" and "joint" in res["fusion"]["gate_by_label"]
    assert res["training"]["joint"]["curve"]


def test_holdout_joint_stage_reuses_the_recipes_towers_as_its_retrained_ones(reference, tiny, tmp_path):
    """``retrain`` with separate towers of the recipe's settings: the joint model's retrained towers
    are the recipe's SASRec and generative stages' models (nothing trained twice)."""
    import shutil

    from fusion.holdout_joint import load_holdout_joint
    from genrec.recipe import StageContext
    from genrec.sasrec import load_sasrec

    out = tmp_path / "run"
    shutil.copytree(reference, out)
    config = load_config(DEMO_YAML, overrides=tiny + ["fusion.joint=true", "fusion.joint_config.towers=separate",
                                                      "fusion.joint_config.retrain=true",
                                                      "fusion.joint_config.refresh_epochs=0"])
    run_recipe(config, out)
    summary = json.loads((out / "joint" / "summary.json").read_text())
    assert set(summary["selection"]) == {f"{t}/{s}" for t in ("stage1", "retrained")
                                         for s in ("minmax", "logprob", "mixture")}
    assert not (out / "joint" / "training" / "sasrec_retrain").exists()  # not trained again
    # the saved model holds the kept towers: the recipe's own when validation kept the retrained ones
    split = StageContext(out, config).data()[1]
    model = load_holdout_joint(out / "joint" / "model", split.train)
    recipe = load_sasrec(out / "sasrec" / "best.pt").state_dict()
    same = all(torch.equal(v, recipe[n]) for n, v in model.sasrec.state_dict().items())
    assert same == (summary["kept_towers"] == "retrained")
    # the default tower training is "both" now: a joint stage made with "separate" is not reused silently
    default = load_config(DEMO_YAML, overrides=tiny + ["fusion.joint=true", "fusion.joint_config.retrain=true",
                                                       "fusion.joint_config.refresh_epochs=0"])
    with pytest.raises(RunDirectoryError, match=r"changed: fusion\.joint_config\.towers.*discard the stages joint"):
        run_recipe(default, out)


def test_a_content_aware_recipe_sasrec_reaches_the_holdout_joint_towers(reference, tiny, tmp_path):
    """``sasrec.text_dim: auto`` with the joint stage: its stage-1 SASRec reads the embed stage's vectors
    as the recipe's does, and the recipe's content-aware towers are reused as its retrained ones."""
    import shutil

    from fusion.holdout_joint import load_holdout_joint
    from genrec.layers import unit_rows
    from genrec.recipe import StageContext

    out = tmp_path / "run"
    shutil.copytree(reference, out)
    config = load_config(DEMO_YAML, overrides=tiny + ["sasrec.text_dim=auto", "fusion.joint=true",
                                                      "fusion.joint_config.towers=separate",
                                                      "fusion.joint_config.retrain=true",
                                                      "fusion.joint_config.refresh_epochs=0"])
    run_recipe(config, out, force=True)
    text = unit_rows(torch.from_numpy(np.load(out / "embed" / "embeddings.npy")))
    stage1 = torch.load(out / "joint" / "training" / "sasrec" / "best.pt", weights_only=True)
    torch.testing.assert_close(stage1["model"]["item_text"][1:], text)
    assert stage1["config"]["text_dim"] == text.shape[1]
    assert not (out / "joint" / "training" / "sasrec_retrain").exists()  # the recipe's towers, reused
    model = load_holdout_joint(out / "joint" / "model", StageContext(out, config).data()[1].train)
    torch.testing.assert_close(model.sasrec.item_text[1:], text)
    assert "joint" in _results(out)["models"]


@pytest.mark.parametrize("content", [False, True], ids=["plain", "content-aware"])
def test_an_embed_stage_produced_again_retrains_only_a_content_aware_sasrec(reference, tiny, tmp_path, content,
                                                                           monkeypatch):
    """The embed stage rerun with the same settings (its directory deleted): the same vectors keep
    every SASRec; other vectors (other numerics, say) clear and retrain a content-aware SASRec, which
    read the old ones, while a plain one never read them and is kept."""
    import shutil
    from dataclasses import replace

    from genrec.recipe import runner, stages

    out = tmp_path / "run"
    shutil.copytree(reference, out)
    config = load_config(DEMO_YAML, overrides=tiny + [f"sasrec.text_dim={'auto' if content else 0}"])
    if content:
        run_recipe(config, out, force=True)
    events: dict[str, str] = {}

    def rerun_embed() -> None:
        shutil.rmtree(out / "embed")
        events.clear()
        run_recipe(config, out, on_stage=lambda n, e, i: events.__setitem__(n, e) if e != "start" else None)
        assert events["embed"] == "done"

    rerun_embed()
    assert events["sasrec"] == "skip"
    embed = next(s for s in stages.STAGES if s.name == "embed")

    def other_vectors(ctx):
        artifacts = embed.run(ctx)
        np.save(artifacts["embeddings"], np.load(artifacts["embeddings"]) * 1.001)
        return artifacts

    patched = tuple(replace(s, run=other_vectors) if s is embed else s for s in stages.STAGES)
    monkeypatch.setattr(runner, "STAGES", patched)
    monkeypatch.setattr(stages, "STAGES", patched)
    rerun_embed()
    assert events["sasrec"] == ("done" if content else "skip")


def test_a_joint_towers_settings_go_over_the_recipes_own():
    from genrec.recipe.config import joint_config

    base = ["fusion.joint=true", "sasrec.hidden=48", "generative.hidden=96"]
    holdout = joint_config(config_from_dict({}, overrides=[*base, "fusion.joint_config.sasrec.num_blocks=1",
                                                           "fusion.joint_config.sasrec.text_dim=auto"]))
    assert (holdout.sasrec.hidden, holdout.sasrec.num_blocks, holdout.sasrec.text_dim) == (48, 1, "auto")
    assert holdout.generative.hidden == 96
    end_to_end = joint_config(config_from_dict({}, overrides=[*base, "fusion.joint_schedule=end_to_end",
                                                              "fusion.joint_config.gr_tower.num_blocks=1"]))
    assert (end_to_end.gr_tower.hidden, end_to_end.gr_tower.num_blocks) == (96, 1)
    assert end_to_end.id_tower.hidden == 48


def test_the_recipes_joint_towers_default_to_both_unless_the_history_windows_differ():
    from genrec.recipe.config import joint_config

    assert joint_config(config_from_dict({}, overrides=["fusion.joint=true"])).towers == "both"
    differ = config_from_dict({}, overrides=["fusion.joint=true", "sasrec.max_len=20", "generative.max_len=30"])
    assert joint_config(differ).towers == "separate"  # a jointly trained pair needs one window
    with pytest.raises(ConfigError, match="one history window"):
        config_from_dict({}, overrides=["fusion.joint=true", "sasrec.max_len=20", "generative.max_len=30",
                                        "fusion.joint_config.towers=both"])


def test_interrupted_stage_with_other_settings_is_cleared(reference, tiny, tmp_path):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(reference, out)
    (out / "sasrec" / "stage.done.json").unlink()
    (out / "sasrec" / "stage.started.json").write_text('{"stage": "sasrec", "config_hash": "other"}')
    (out / "sasrec" / "last.pt").write_bytes(b"a checkpoint of other settings")
    # partial training of other settings is work too: discarded only when asked
    with pytest.raises(RunDirectoryError, match=r"discard the stages sasrec, trained models included \(sasrec/best.pt, "
                                                r"sasrec/last.pt\)"):
        run_recipe(load_config(DEMO_YAML, overrides=tiny), out)
    assert (out / "sasrec" / "last.pt").read_bytes() == b"a checkpoint of other settings"
    run_recipe(load_config(DEMO_YAML, overrides=tiny), out, force=True)
    assert strip_timing(_results(out)) == strip_timing(_results(reference))


def test_recipe_script_is_the_same_as_genrec_run(reference, tiny, tmp_path, capsys):
    """recipes/amazon.py calls the stages one by one; it ends with genrec run's results."""
    from tests.scripts import load_script

    script = load_script("recipes/amazon.py", "amazon_recipe")
    out = tmp_path / "run"
    assert script.main([str(DEMO_YAML), "--out", str(out), "--set", *tiny]) == 0
    assert strip_timing(_results(out)) == strip_timing(_results(reference))
    assert "comparisons:" in capsys.readouterr().out
    assert script.main([str(DEMO_YAML), "--out", str(out), "--set", *tiny, "sasrec.hidden=8"]) == 2  # refused
    assert "Rerun with --force" in capsys.readouterr().err


def test_fusion_stage_saves_every_fitted_method(reference):
    """fusion/methods.pt reloads into methods whose parameters are the ones results.json reports."""
    from fusion import load_methods

    methods = load_methods(reference / "fusion" / "methods.pt")
    res = _results(reference)
    assert list(methods) == json.loads((reference / "fusion" / "summary.json").read_text())["methods"]
    for name, method in methods.items():
        for key, value in res["fusion"]["params"][name].items():
            if key != "features":
                assert method.params()[key] == pytest.approx(value), (name, key)


def test_analysis_stage_gives_the_papers_three_analyses(reference, tiny):
    """Support coverage, indicator validation and the codebook sweep of the run, each consistent with
    what the other stages wrote, and a report section for each."""
    import numpy as np

    from genrec.metrics import per_instance_ndcg, ranks_from_topk
    from genrec.recipe import StageContext, load_labels

    res = _results(reference)
    an = res["analysis"]
    assert an["summary"] == {"ran": ["support_coverage", "indicator_validation", "codebook_sweep"], "skipped": {}}
    labels = load_labels(reference, "test")
    gen = labels.groups() == "generalization"
    # support coverage: the levels partition the generalization instances; its "all" row is the
    # evaluate stage's generalization metric of every model
    cov = an["support_coverage"]
    levels = [r for r in cov["rows"] if r["category"] != "all"]
    assert [r["n"] for r in levels] == list(range(cov["levels"], -1, -1))
    assert sum(r["count"] for r in levels) == gen.sum() and sum(r["share"] for r in levels) == pytest.approx(1)
    assert levels[0]["count"] == 0  # the full ID (disambiguation level last) is the item: never at hop 1
    whole = cov["rows"][-1]
    for model in ("sasrec", "gr", res["fusion"]["primary"]):
        assert whole[f"{model} ndcg@10"] == pytest.approx(res["models"][model]["test"]["generalization"]["ndcg@10"])
    # indicator validation: one row per saved test indicator; the win counts are the instances
    # where the two models' NDCG@10 differ
    ind = an["indicator_validation"]
    with np.load(reference / "fusion" / "indicators.npz") as z:
        assert [r["indicator"] for r in ind["rows"]] == list(z.files) == res["fusion"]["indicators"]
    targets = StageContext(reference, load_config(DEMO_YAML, overrides=tiny)).data()[1].test.targets
    with np.load(reference / "fusion" / "topk.npz") as z:
        ndcg = {m: per_instance_ndcg(ranks_from_topk(z[m], targets), 10) for m in ("sasrec", "gr")}
    assert ind["counts"]["decided"] == (ndcg["sasrec"] != ndcg["gr"]).sum() > 0
    assert ind["counts"]["sasrec wins"] == (ndcg["sasrec"] > ndcg["gr"]).sum()
    assert ind["pair"] == ["sasrec", "gr"]
    assert ind["counts"]["memorization"] == (labels.groups() == "memorization").sum()
    assert all(0 <= r["auc_memorization"] <= 1 for r in ind["rows"])
    # the codebook sweep: every configuration of the demo config's analysis section, in order
    sweep = an["codebook_sweep"]
    assert [r["config"] for r in sweep["rows"]] == ["8x2", "8x3", "16x2", "16x3", "32x2", "32x3"]
    for r in sweep["rows"]:
        assert r["conversion"]["memorization"] == pytest.approx([1.0] * r["levels"])  # a memorized item's prefixes
        assert r["collisions"]["colliding_share"] >= 0
    report = (reference / "report.md").read_text()
    for heading in ("### Support coverage", "### Indicator validation", "### Codebook intervention"):
        assert heading in report
    for png in ("indicator_validation.png", "codebook_sweep.png"):
        assert (reference / "analysis" / png).read_bytes()[:4] == b"\x89PNG"


def test_analysis_says_what_it_skipped_and_why(reference, tiny, tmp_path):
    """Analyses switched off, and indicator validation over a fusion stage from before the indicators
    were saved: each one named in results.json and the report with its reason, nothing else rerun."""
    import shutil

    out = tmp_path / "run"
    shutil.copytree(reference, out)
    (out / "fusion" / "indicators.npz").unlink()  # and from its marker: a stage that never wrote the file
    marker = json.loads((out / "fusion" / "stage.done.json").read_text())
    del marker["artifacts"]["indicators"]
    (out / "fusion" / "stage.done.json").write_text(json.dumps(marker))
    config = load_config(DEMO_YAML, overrides=tiny + ["analysis.codebook_sizes=[]", "analysis.support_coverage=false"])
    events: dict[str, str] = {}
    run_recipe(config, out, on_stage=lambda n, e, i: events.__setitem__(n, e) if e != "start" else None)
    assert [n for n, e in events.items() if e == "done"] == ["analysis", "report"]
    an = _results(out)["analysis"]
    assert an["summary"]["ran"] == [] and set(an["summary"]["skipped"]) == {"support_coverage", "indicator_validation",
                                                                              "codebook_sweep"}
    assert "delete the fusion directory to rerun it" in an["summary"]["skipped"]["indicator_validation"]
    report = (out / "report.md").read_text()
    assert "- indicator validation: not run (fusion/indicators.npz is missing" in report
    assert "- codebook sweep: not run (analysis.codebook_sizes or analysis.codebook_levels is empty)" in report
    assert "### Support coverage" not in report


@pytest.mark.parametrize("rank", ["0", "1"])
def test_under_torchrun_only_rank_0_talks(tiny, tmp_path, monkeypatch, capsys, rank):
    """Every torchrun rank runs ``genrec run``: rank 0 alone prints and writes run.log."""
    from genrec.commands.run import execute

    monkeypatch.setenv("RANK", rank)
    config = load_config(DEMO_YAML, overrides=tiny)
    assert execute(config, tmp_path / "run", until="data") == 0
    out = capsys.readouterr()
    assert (rank == "0") == ("stopped after stage data" in out.err)
    assert (rank == "0") == (tmp_path / "run" / "run.log").is_file()
    if rank == "1":
        assert out.out == out.err == ""
        # but its own error is on its stderr (it printed nothing: torchrun showed a bare exit code)
        bad = load_config(DEMO_YAML, overrides=[*tiny, f"data.dataset={tmp_path / 'nowhere'}"])
        assert execute(bad, tmp_path / "bad", until="data") == 2
        assert capsys.readouterr().err.startswith("genrec run: rank 1: error: ")
