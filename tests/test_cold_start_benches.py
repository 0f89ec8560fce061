"""The cold-start benchmarks (``bench/cold_start_beauty.py``, ``new_item_generative.py``,
``content_sasrec_cold.py``, ``new_item_prefix.py``) end to end on the tiny cold run (conftest's
``cold_run``: the tiny demo with 20% of its items held out of training)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fusion.candidates import CandidateScores
from genrec.artifacts import load_json
from tests.scripts import load_script

from conftest import DEMO_YAML

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
SYNTH = "synthetic:num_users=150,num_brands=4,num_categories=4,num_attributes=4"


def test_bench_runs_end_to_end_on_synthetic_data(cold_run, tiny_cached, tmp_path, capsys):
    """bench/cold_start_beauty.py on the tiny synthetic data: its cold run resumes the fixture's."""
    sys.path.insert(0, str(ROOT / "bench"))
    import cold_start_beauty

    out = tmp_path / "bench"
    shutil.copytree(cold_run, out)
    sets = [s for s in tiny_cached if not s.startswith("data.dataset")]
    summary = cold_start_beauty.main(["--config", str(DEMO_YAML), "--preset", "quick", "--dataset", SYNTH,
                                      "--cold", "0.2", "--seed", "0", "--out", str(out),
                                      *[a for s in sets for a in ("--set", s)]])
    text = capsys.readouterr().out
    assert "| learned_minmax |" in text and "anchor: LIGER" in text and "goal:" in text
    assert summary["cold_start"] == json.loads((cold_run / "results.json").read_text())["cold_start"]
    ref = summary["reference"]["learned_minmax"]
    assert ref["in_set"]["count"] == summary["cold_start"]["test_in_set_targets"] and 0 <= ref["in_set"]["ndcg@10"] <= 1
    assert ref["cold"]["count"] == summary["cold_start"]["test_cold_targets"]
    assert isinstance(summary["goal_met"], bool)
    # the same warm models without the cold items added: every model, on the in-set users
    plain = summary["in_set_without_added_items"]
    assert set(plain) == set(summary["cold_start"]["models"])
    assert all(r["count"] == summary["cold_start"]["test_in_set_targets"] and 0 <= r["ndcg@10"] <= 1
               for r in plain.values())
    assert "without the cold items added" in text
    assert (out / "bench_cold_start.md").read_text().startswith("demo")



def test_new_item_bench_scores_variants_and_the_content_term_on_validation(cold_run, cold_ctx, tmp_path, capsys):
    """bench/new_item_generative.py on the tiny cold run: every variant and method; the content term's
    added candidates are cold items outside the history and the union, and its in-sample choice
    honours the in-set bound."""
    bench = load_script("bench/new_item_generative.py")
    out = tmp_path / "new_items.json"
    res = bench.main(["--run", str(cold_run), "--in-set-users", "40", "--threads", "1", "--weights", "1", "0.5",
                      "--content-candidates", "5", "--out", str(out)])
    text = capsys.readouterr().out
    assert load_json(out)["content"] == res["content"]
    assert set(res["variants"]) == {"own codes", "proxy x 1", "proxy x 0.5"}
    methods = set(res["variants"]["own codes"]) - {"sasrec", "generative"}
    assert methods and set(res["content"]) == methods
    for name, c in res["content"].items():
        best = c["in-sample best within the bound"]
        assert best["in_set"] >= bench.IN_SET_BOUND * c["in_set_cold_last"] - 1e-9
        plain = c["extended union, no content term"]
        if plain["in_set"] >= bench.IN_SET_BOUND * c["in_set_cold_last"]:  # feasible, so not better than best
            assert best["new"] >= plain["new"]
        assert f"| {name} | **cross-fitted** |" in text or f"| {name} | cross-fitted | n/a" in text
    # (on the tiny run the plain extended union breaks the in-set bound for every method, so the
    # comparison above may not run; the bound itself is checked for every method)
    with pytest.raises(SystemExit):
        bench.main(["--run", str(cold_run), "--content-candidates", "0"])
    # the wide grid holds the default one: its in-sample best within the bound is at least as good
    assert set(bench.CONTENT_GRID) <= set(bench.CONTENT_GRID_WIDE)
    wide = bench.main(["--run", str(cold_run), "--in-set-users", "40", "--threads", "1", "--weights", "1",
                       "--content-candidates", "5", "--content-grid", "wide", "--no-mixture"])
    for name, c in res["content"].items():
        key = "in-sample best within the bound"
        assert wide["content"][name][key]["new"] >= c[key]["new"] - 1e-12

    # the candidates the content term adds, on the cold run's validation instances
    cold = cold_ctx.cold()
    valid = cold.split.valid
    x = np.load(cold_run / "embed" / "embeddings.npy")
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    n, width = len(valid.targets), 3
    base = CandidateScores(np.tile(np.arange(width), (n, 1)), np.zeros((n, width), np.float32),
                                 np.zeros((n, width), np.float32), np.ones((n, width), bool), np.ones((n, width), bool))
    scorer = lambda c: np.where(c >= 0, 1.0, np.nan).astype(np.float32)  # noqa: E731
    last = unit[valid.last_items()]
    cx = bench.cold_candidates(base, valid, last @ unit[cold.num_warm:].T, cold.num_warm, 4, scorer, scorer)
    added = cx.items[:, width:]
    assert cx.width == width + 4 and (added >= 0).any()
    full_rows = 0
    for row, h in zip(added, valid.histories):
        row = row[row >= 0]
        assert (row >= cold.num_warm).all() and len(set(row)) == len(row)
        assert not set(row) & set(h) and not set(row) & set(range(width))
        sims = unit[row] @ unit[h[-1]]  # the most relevant (here: similar to the last item) first
        assert (np.diff(sims) <= 1e-6).all()
        others = np.setdiff1d(np.arange(cold.num_warm, cold.num_items), np.r_[row, h])
        if len(row) == 4 and len(others):  # and none left out is more relevant than the last one added
            assert (unit[others] @ unit[h[-1]]).max() <= sims[-1] + 1e-6
            full_rows += 1
    assert full_rows > 0  # the "none left out is more relevant" check ran
    assert (cx.id_scores[:, width:][added >= 0] == 1).all()  # the towers scored every addition


def test_new_item_bench_fits_the_mixture_for_a_content_aware_sasrec(cold_run, cold_ctx, tmp_path, capsys):
    """The bench's mixture on a copy of the tiny cold run whose SASRec is content-aware: the new items'
    logits are SASRec's; the in-sample choice honours the in-set bound and every cold candidate last
    is a grid point."""
    from dataclasses import replace as _replace

    from fusion.new_item_mixture import log_softmax_rows, new_item_logits
    from genrec.new_items import sasrec_with_new_items
    from genrec.sasrec import save_sasrec, train_sasrec
    bench = load_script("bench/new_item_generative.py")
    run = tmp_path / "run"
    shutil.copytree(cold_run, run)
    cold, x = cold_ctx.cold(), np.load(cold_run / "embed" / "embeddings.npy")
    model = train_sasrec(cold.warm, _replace(cold_ctx.config.sasrec, max_epochs=1, text_dim="auto"), progress=False,
                         item_text=x[:cold.num_warm]).model
    save_sasrec(model, run / "sasrec" / "best.pt")
    res = bench.main(["--run", str(run), "--in-set-users", "40", "--threads", "1", "--weights", "1", "--no-content",
                      "--content-candidates", "5"])
    text = capsys.readouterr().out
    assert res["content"] == {} and set(res["mixture"]) == set(res["variants"]["own codes"]) - {"sasrec", "generative"}
    for name, m in res["mixture"].items():
        best = m["in-sample best within the bound"]
        assert best["in_set"] >= bench.IN_SET_BOUND * m["in_set_cold_last"] - 1e-9
        last = m["curve"][0]
        assert last["log_pi_t_twarm"][0] is None and last["new"] == 0 and last["in_set"] == m["in_set_cold_last"]
        assert best["new"] == max(c["new"] for c in m["curve"]
                                  if c["in_set"] >= bench.IN_SET_BOUND * m["in_set_cold_last"] - 1e-12)
        assert f"| {name} | **cross-fitted** |" in text or f"| {name} | cross-fitted | n/a" in text
    # the new items' logits: SASRec's, repeat bias included (histories with cold items among them),
    # in batches smaller than the instances
    valid = cold.split.valid
    rows = [j for j, h in enumerate(valid.histories) if (h >= cold.num_warm).any()][:10]
    rows += [j for j, h in enumerate(valid.histories) if (h < cold.num_warm).all()][:20]
    inst = valid.subset(np.array(rows))
    ext = sasrec_with_new_items(model, np.arange(cold.num_cold, dtype=np.int64) % cold.num_warm, x[cold.num_warm:])
    z = new_item_logits(ext, inst.histories, cold.num_warm, batch_size=7)
    ext.eval()
    with torch.no_grad():
        from genrec.batching import histories_to_tokens

        want = torch.cat([ext.last_logits(histories_to_tokens([h], ext.config.max_len))
                          for h in inst.histories])[:, cold.num_warm:].numpy()
    assert z.shape == (len(rows), cold.num_cold) and np.allclose(z, want, atol=1e-4)
    m = np.array([[True, False, True], [False, False, False]])
    v = np.array([[1.0, 5.0, 2.0], [1.0, 2.0, 3.0]])
    out = log_softmax_rows(v, m)
    assert np.allclose(out[0, [0, 2]], torch.log_softmax(torch.tensor([1.0, 2.0]), 0).numpy())
    assert out[0, 1] == -np.inf and np.isneginf(out[1]).all()


def test_content_sasrec_bench_compares_both_models_on_the_cold_runs_validation(cold_run, cold_ctx, tmp_path, capsys):
    """bench/content_sasrec_cold.py on the tiny cold run: the content-aware SASRec trains on the warm
    data, and a model without the cold items never ranks a cold target."""
    bench = load_script("bench/content_sasrec_cold.py")
    out = tmp_path / "content.json"
    res = bench.main(["--run", str(cold_run), "--in-set-users", "40", "--threads", "1", "--set", "max_epochs=2",
                      "--out", str(out), "--id-weights", "0", "1"])
    assert load_json(out)["results"] == res["results"]
    text = capsys.readouterr().out
    scaled = "content-aware, cold items added, ID part x "
    assert set(res["results"]) == {"plain, warm catalogue", "plain, cold items added", "content-aware, warm catalogue",
                                   "content-aware, cold items added", scaled + "0", scaled + "1"}
    assert res["results"][scaled + "1"] == res["results"]["content-aware, cold items added"]
    assert res["new_users"] > 0 and res["in_set_users"] > 0
    for name, m in res["results"].items():
        assert 0 <= m["new"]["ndcg@10"] <= 1 and 0 < m["in_set"]["ndcg@10"] <= 1
        if "warm catalogue" in name:
            assert m["new"]["ndcg@10"] == 0
        assert f"| {name} |" in text
    with pytest.raises(SystemExit):
        bench.main(["--run", str(cold_run), "--set", "text_dim=-1"])
    with pytest.raises(SystemExit, match="not a content-aware SASRec"):  # the run's own SASRec is a plain one
        bench.main(["--run", str(cold_run), "--content-model", str(cold_run / "sasrec" / "best.pt")])
    # a content-aware model trained elsewhere on the warm data and its text: read, not trained again
    from dataclasses import replace as _replace

    from genrec.sasrec import save_sasrec, train_sasrec

    cold, x = cold_ctx.cold(), np.load(cold_run / "embed" / "embeddings.npy")
    model = train_sasrec(cold.warm, _replace(cold_ctx.config.sasrec, max_epochs=1, text_dim="auto"), progress=False,
                         item_text=x[:cold.num_warm]).model
    save_sasrec(model, tmp_path / "content.pt")
    loaded = bench.main(["--run", str(cold_run), "--in-set-users", "40", "--threads", "1",
                         "--content-model", str(tmp_path / "content.pt")])
    assert loaded["results"]["plain, cold items added"] == res["results"]["plain, cold items added"]
    assert "loaded from" in capsys.readouterr().out
    other = x.copy()
    other[0] += 1.0
    save_sasrec(train_sasrec(cold.warm, _replace(cold_ctx.config.sasrec, max_epochs=1, text_dim="auto"), progress=False,
                             item_text=other[:cold.num_warm]).model, tmp_path / "other.pt")
    with pytest.raises(SystemExit, match="their text embeddings"):
        bench.main(["--run", str(cold_run), "--content-model", str(tmp_path / "other.pt")])


def test_prefix_bench_ranks_new_items_by_their_code_prefix(cold_run, capsys):
    """bench/new_item_prefix.py: a prefix's log-prob is the log of its items' summed probability; the
    chosen lifts honour the in-set bound; ties count against the target."""
    bench = load_script("bench/new_item_prefix.py")
    full = np.log(np.array([[0.5, 0.2, 0.2, 0.1]], np.float32))
    codes = np.array([[0, 0], [0, 1], [1, 0], [1, 1]])
    np.testing.assert_allclose(np.exp(bench.prefix_log_probs(full, codes, 1)), [[0.7, 0.7, 0.3, 0.3]], rtol=1e-6)
    assert bench.ndcg10(np.array([[1.0, 1.0, 0.0]]), np.array([1])).tolist() == [1 / np.log2(3)]
    res = bench.main(["--run", str(cold_run), "--in-set-users", "30", "--threads", "1", "--batch-size", "16"])
    text = capsys.readouterr().out
    assert "| own codes + log w |" in text and "| prefix of 1 codes + log w |" in text
    levels = len(load_json(cold_run / "quantize" / "semantic_ids.json")["codebook_sizes"])
    assert len(res) == 1 + levels  # the reference, own codes, and prefixes of 1 .. levels-1 codes
    for name, best in ((k, v) for k, v in res.items() if k != "in_set_new_last"):
        log_w, new, in_set = best  # the grid reaches log w = -8: new items below nearly everything
        assert in_set >= bench.IN_SET_BOUND * res["in_set_new_last"] - 1e-9 and 0 <= new <= 1, name


def test_the_cold_start_bench_reports_nan_for_a_side_without_users(cold_run, monkeypatch):
    """With no in-set test user (every target cold, possible on small data) the bench crashed (a KeyError
    on the reference's empty side, "no instances to evaluate" without it); the recipe reports NaN there."""
    import math

    sys.path.insert(0, str(ROOT / "bench"))
    import cold_start_beauty
    from genrec.cold_start import ColdStartSplit
    from genrec.recipe.run_files import run_config

    monkeypatch.setattr(ColdStartSplit, "is_cold", lambda self, items: np.ones(len(items), bool))
    config = run_config(cold_run)
    ref = cold_start_beauty.reference_by_target(cold_run, cold_run, config)
    assert ref and all(r["in_set"]["count"] == 0 and math.isnan(r["in_set"]["ndcg@10"]) for r in ref.values())
    plain = cold_start_beauty.without_added_items(cold_run, config)
    assert plain and all(r["count"] == 0 and math.isnan(r["ndcg@10"]) for r in plain.values())


def test_the_cold_start_bench_without_the_mixture_reports_nan_for_a_side_without_users(cold_run, tmp_path, monkeypatch):
    """``without_mixture`` had no guard for an empty side (``reference_by_target`` had): with no in-set
    test user it raised "no instances to evaluate"; now that side is NaN, as the reference's."""
    import math

    sys.path.insert(0, str(ROOT / "bench"))
    import cold_start_beauty
    from genrec.cold_start import ColdStartSplit
    from genrec.recipe.run_files import run_config

    run = tmp_path / "run"
    shutil.copytree(cold_run, run)
    with np.load(run / "fusion" / "topk.npz") as z:  # stands in for a run that fitted the mixture
        np.savez(run / "fusion" / "topk_without_mixture.npz", **{name: z[name] for name in z.files})
    monkeypatch.setattr(ColdStartSplit, "is_cold", lambda self, items: np.ones(len(items), bool))
    mixed = cold_start_beauty.without_mixture(run, run_config(run))
    assert mixed and all(math.isnan(m["in_set"]["ndcg@10"]) and 0 <= m["cold"]["ndcg@10"] <= 1
                         for m in mixed.values())


def test_the_cold_start_bench_writes_null_for_a_goal_part_it_did_not_measure(cold_run, tiny_cached, tmp_path, capsys,
                                                                              monkeypatch):
    """--no-reference: the printout says "cold part MET, in-set part not measured", and the JSON said
    goal_met false; now null, with each part as the printout has it."""
    sys.path.insert(0, str(ROOT / "bench"))
    import cold_start_beauty

    monkeypatch.setattr(cold_start_beauty, "GOAL_COLD_NDCG", 0.0)  # the tiny run's cold part is then met
    out = tmp_path / "bench"
    shutil.copytree(cold_run, out)
    sets = [s for s in tiny_cached if not s.startswith("data.dataset")]
    summary = cold_start_beauty.main(["--config", str(DEMO_YAML), "--preset", "quick", "--dataset", SYNTH,
                                      "--cold", "0.2", "--seed", "0", "--out", str(out), "--no-reference",
                                      *[a for s in sets for a in ("--set", s)]])
    assert "-> cold part MET, in-set part not measured" in capsys.readouterr().out
    assert summary["goal_met"] is None and summary["goal_parts"] == {"cold": True, "in_set": None}
    assert json.loads((out / "bench_cold_start.json").read_text())["goal_met"] is None


def test_the_cold_start_benches_refuse_a_split_without_both_sides_before_any_work(cold_run, monkeypatch, capsys):
    """A cold-start split with no in-set validation user: the benches said so (a ConfigError traceback)
    only after extending the catalogue or training the content model; now a message, before."""
    from genrec.cold_start import ColdStartSplit

    monkeypatch.setattr(ColdStartSplit, "is_cold", lambda self, items: np.ones(len(items), bool))

    def no_work(*a, **k):
        pytest.fail("work started before the split was checked")

    for script, slow in (("bench/new_item_generative.py", "extend_catalogue"),
                         ("bench/new_item_prefix.py", "extend_catalogue"),
                         ("bench/content_sasrec_cold.py", "train_sasrec")):
        bench = load_script(script)
        monkeypatch.setattr(bench, slow, no_work)
        with pytest.raises(SystemExit, match="needs both"):
            bench.main(["--run", str(cold_run), "--in-set-users", "40", "--threads", "1"])


def test_new_item_bench_builds_its_candidates_as_the_run_did(cold_run, monkeypatch, capsys):
    """model_inputs was called without the run's fusion.teacher_forcing (so a run with it off was ranked
    with it on): both calls, validation and --test, now pass the run's."""
    from dataclasses import replace as _replace

    from genrec.recipe.run_files import run_config

    bench = load_script("bench/new_item_generative.py")
    config = run_config(cold_run)
    off = _replace(config, fusion=_replace(config.fusion, teacher_forcing=False))
    monkeypatch.setattr(bench, "run_config", lambda run: off)
    seen = []
    real = bench.model_inputs

    def spy(*a, **k):
        seen.append(k.get("teacher_forcing", "not given"))
        return real(*a, **k)

    monkeypatch.setattr(bench, "model_inputs", spy)
    res = bench.main(["--run", str(cold_run), "--in-set-users", "40", "--threads", "1", "--weights", "1",
                      "--content-candidates", "5", "--no-mixture", "--test"])
    assert seen == [False, False] and res["test"]
