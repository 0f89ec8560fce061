"""Cold-start evaluation in the recipe (issue 13, ``data.cold_items``): cold items are absent from
every training sequence, the quantizer's fit and SASRec's item table; they come back through the
add-items path (frozen quantizer + disambiguation + ``with_new_items``) exactly as
``Recommender.add_items`` brings them; test metrics are broken down by cold and in-set targets; the
option off changes no result and no stage hash; bad values are clear ``ConfigError``s."""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

from fusion.candidates import CandidateScores
from genrec import cli
from genrec.artifacts import load_json
from genrec.cold_start import NATURAL, choose_cold_items, cold_start_split
from genrec.data import SequenceDataset, write_plain
from genrec.metrics import metrics_from_ranks, ranks_from_topk
from genrec.recipe import ConfigError, StageContext, config_from_dict, load_config, run_recipe, strip_timing
from genrec.recommender import Recommender
from genrec.recommender_files import item_record
from quantize import SemanticIdTable, encode_with_saved

from conftest import TINY_DEMO

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
DEMO_YAML = ROOT / "recipes" / "configs" / "demo.yaml"
SYNTH = "synthetic:num_users=150,num_brands=4,num_categories=4,num_attributes=4"
COLD = ["data.cold_items=0.2", "data.cold_seed=0"]


@pytest.fixture(scope="module")
def emb_cache(tiny_run, tmp_path_factory):
    """A copy of the tiny run's embedding cache (same item texts: the encoder is not rerun)."""
    return shutil.copytree(tiny_run.parent / "emb_cache", tmp_path_factory.mktemp("cold") / "emb_cache")


@pytest.fixture(scope="module")
def tiny(emb_cache):
    return [*TINY_DEMO, f"text.cache_dir={emb_cache}"]


@pytest.fixture(scope="module")
def cold_run(tiny, tmp_path_factory):
    """The tiny demo with 20% of the items held out of training (TIGER's protocol)."""
    out = tmp_path_factory.mktemp("cold_run") / "run"
    assert cli.main(["demo", "--out", str(out), "--set", *tiny, *COLD]) == 0
    return out


@pytest.fixture(scope="module")
def ctx(cold_run, tiny):
    return StageContext(cold_run, load_config(DEMO_YAML, overrides=[*tiny, *COLD]))


def _synthetic():
    import genrec

    return genrec.load_dataset(SYNTH)


# -- the split itself ---------------------------------------------------------------------------


def test_share_is_seeded_and_cold_items_come_last_absent_from_training():
    ds = _synthetic()
    cold = choose_cold_items(ds, 0.2, seed=3)
    assert len(cold) == round(0.2 * ds.num_items) and np.array_equal(cold, choose_cold_items(ds, 0.2, seed=3))
    assert not np.array_equal(cold, choose_cold_items(ds, 0.2, seed=4))
    cs = cold_start_split(ds, cold, max_history=10)
    n_warm = ds.num_items - len(cold)
    assert cs.num_warm == n_warm and cs.warm.num_items == n_warm and cs.warm.dataset.num_items == n_warm
    # cold items are the last indices, the same items (by id) as chosen; warm ones keep their order
    assert cs.dataset.item_ids[n_warm:] == [ds.item_ids[i] for i in cold]
    assert cs.dataset.item_ids[:n_warm] == [i for j, i in enumerate(ds.item_ids) if j not in set(cold.tolist())]
    assert all(len(s) == 0 or s.max() < n_warm for s in cs.warm.train)
    assert all(len(s) == 0 or s.max() < n_warm for s in cs.warm.dataset.sequences)
    assert all(len(h) and h.max() < n_warm for h in cs.warm.valid.histories) and cs.warm.valid.targets.max() < n_warm
    # test is the whole data's: same users and targets (by id) as the ordinary split
    import genrec

    plain = genrec.leave_one_out(ds, max_history=10)
    assert np.array_equal(cs.split.test.users, plain.test.users)
    assert [cs.dataset.item_ids[t] for t in cs.split.test.targets] == [ds.item_ids[t] for t in plain.test.targets]
    assert cs.is_cold(cs.split.test.targets).sum() == np.isin(plain.test.targets, cold).sum() > 0
    # dropped validation instances: exactly those with a cold target or nothing warm left in the history
    prefixes = [cs.dataset.sequences[u][:-2] for u in cs.split.valid.users]
    bad = sum(1 for s, t in zip(prefixes, cs.split.valid.targets) if t >= n_warm or s.min() >= n_warm)
    assert cs.valid_dropped == bad and len(cs.warm.valid) == len(cs.split.valid) - bad
    # a warm history: the cold items removed from the whole prefix, then the window cut (cut first,
    # each cold item in the window cost a warm one)
    warm = {int(u): s[s < n_warm][-10:] for u, s in zip(cs.split.valid.users, prefixes)}
    assert all(np.array_equal(h, warm[int(u)]) for u, h in zip(cs.warm.valid.users, cs.warm.valid.histories))
    assert any(len(h) == 10 > len(o[o < n_warm]) for h, o in zip(warm.values(), cs.split.valid.histories))
    assert cs.summary()["cold_items"] == len(cold) and cs.summary()["protocol"] == "share"


def _with_natural_cold(ds: SequenceDataset, items: np.ndarray, users: int = 30) -> SequenceDataset:
    """``ds`` with ``items`` removed everywhere, then appended as the last interaction of ``users``
    users: they occur only as test targets."""
    keep = ~np.isin(np.arange(ds.num_items), items)
    seqs, times = [], []
    for u, s in enumerate(ds.sequences):
        m = keep[s]
        seqs.append(s[m])
        times.append(ds.timestamps[u][m] if ds.timestamps is not None else np.arange(m.sum()))
    long = [u for u, s in enumerate(seqs) if len(s) >= 2][:users]
    for j, u in enumerate(long):
        seqs[u] = np.append(seqs[u], items[j % len(items)])
        times[u] = np.append(times[u], (times[u][-1] + 1) if len(times[u]) else 0)
    return SequenceDataset("natural", ds.item_ids, ds.user_ids, seqs, ds.items, times)


def test_natural_cold_items_are_those_in_no_training_sequence():
    ds = _synthetic()
    planted = np.array([3, 17, 40])
    nat = _with_natural_cold(ds, planted)
    cold = choose_cold_items(nat, NATURAL, max_history=10)
    assert set(planted.tolist()) <= set(cold.tolist())
    import genrec

    seen = np.concatenate(genrec.leave_one_out(nat, max_history=10).train_with_valid())
    assert not np.isin(cold, seen).any()
    cs = cold_start_split(nat, cold, protocol=NATURAL, max_history=10)
    assert cs.valid_dropped == 0  # nothing cold is ever a validation target or in a history
    assert cs.is_cold(cs.split.test.targets).sum() == 30
    with pytest.raises(ConfigError, match="no cold item under the 'natural' protocol"):
        cold_start_split(ds, choose_cold_items(ds, NATURAL, max_history=10), protocol=NATURAL)


@pytest.mark.parametrize("value, message", [
    ("1.5", "config key 'data.cold_items' must be 0 \\(off\\), a share of the items in \\(0, 1\\) or 'natural'"),
    ("-0.1", "config key 'data.cold_items' must be 0"),
    ("warm", "config key 'data.cold_items' must be 0 .* or 'natural', got 'warm'"),
    ("true", "config key 'data.cold_items' expects float or str"),
])
def test_bad_cold_items_is_a_config_error_naming_the_key(value, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict({}, overrides=[f"data.cold_items={value}"])


def test_cold_items_with_joint_training_is_refused():
    with pytest.raises(ConfigError, match="config key 'fusion.joint' cannot be combined with data.cold_items"):
        config_from_dict({}, overrides=["data.cold_items=0.1", "fusion.joint=true"])


# -- the recipe run ------------------------------------------------------------------------------


def test_training_stages_never_see_the_cold_items(cold_run, ctx):
    from genrec.generative import load_generative
    from genrec.sasrec import load_sasrec

    cold = ctx.cold()
    n_warm, n = cold.num_warm, cold.num_items
    assert 0 < n_warm < n and n - n_warm == round(0.2 * n)
    summary = load_json(cold_run / "data" / "summary.json")["cold_start"]
    assert summary["warm_items"] == n_warm and summary["cold_items"] == n - n_warm
    # the quantizer was fitted on the warm items only: its table is the warm catalogue
    table = SemanticIdTable.load(cold_run / "quantize" / "semantic_ids.json")
    assert table.item_ids == cold.dataset.item_ids[:n_warm]
    assert load_json(cold_run / "quantize" / "diagnostics.json")["semantic_ids"]["num_items"] == n_warm
    # SASRec's item table and the generative model's catalogue are the warm items
    assert load_sasrec(cold_run / "sasrec" / "best.pt").num_items == n_warm
    assert load_generative(cold_run / "generative" / "best.pt").num_items == n_warm
    # what training stages read: no cold item in any training sequence or validation instance
    _, train = ctx.training()
    assert train is cold.warm and train.num_items == n_warm
    assert all(len(s) == 0 or s.max() < n_warm for s in train.train)
    assert all(h.max() < n_warm for h in train.valid.histories) and train.valid.targets.max() < n_warm
    # at test SASRec scores the cold items through their nearest warm items (add_items' path): it proposes them
    with np.load(cold_run / "fusion" / "topk.npz") as z:
        assert z["sasrec"].max() >= n_warm


def test_cold_items_get_semantic_ids_from_the_frozen_quantizer(cold_run, ctx):
    cold = ctx.cold()
    n_warm = cold.num_warm
    warm = SemanticIdTable.load(cold_run / "quantize" / "semantic_ids.json")
    full = SemanticIdTable.load(cold_run / "fusion" / "semantic_ids.json")
    assert full.item_ids == cold.dataset.item_ids and np.array_equal(full.codes[:n_warm], warm.codes)
    x = np.load(cold_run / "embed" / "embeddings.npy")[n_warm:]
    assert np.array_equal(full.base_codes[n_warm:], encode_with_saved(cold_run / "quantize", x))
    assert len({tuple(r) for r in full.codes.tolist()}) == full.num_items  # still one ID per item


def test_cold_targets_are_recommended_and_metrics_split_by_target(cold_run, ctx):
    res = json.loads((cold_run / "results.json").read_text())
    cs = res["cold_start"]
    cold = ctx.cold()
    targets = cold.split.test.targets
    is_cold = cold.is_cold(targets)
    assert cs["test_cold_targets"] == int(is_cold.sum()) > 0
    assert set(cs["models"]) == set(res["models"]) == {"sasrec", "gr", "fixed", "adaptive", "learned_minmax"}
    with np.load(cold_run / "fusion" / "topk.npz") as z:
        for name, row in cs["models"].items():
            ranks = ranks_from_topk(z[name], targets)
            assert row["cold"]["count"] == is_cold.sum() and row["in_set"]["count"] == (~is_cold).sum()
            for side, mask in (("cold", is_cold), ("in_set", ~is_cold)):
                expected = metrics_from_ranks(ranks[mask], (5, 10))
                assert {k: row[side][k] for k in expected} == pytest.approx(expected)
    assert cs["models"]["gr"]["cold"]["recall@10"] > 0  # found through their semantic IDs
    assert max(cs["models"][m]["cold"]["recall@10"] for m in ("fixed", "adaptive", "learned_minmax")) > 0
    # the overall metrics stay those of every test user
    assert res["models"]["gr"]["test"]["all"]["count"] == len(targets)
    report = (cold_run / "report.md").read_text()
    assert "## Cold start" in report and "| learned_minmax |" in report.split("## Cold start")[1]


def test_analyses_of_a_cold_start_run_use_the_codes_test_was_ranked_with(cold_run, ctx):
    """Support coverage over the whole catalogue's IDs (the cold items added), labels from the warm
    training sequences; no codebook sweep, which would fit codes on the cold items."""
    from genrec.memorization import token_memorization
    from genrec.recipe import load_labels
    from genrec.semantic_id_analysis import support_coverage

    an = json.loads((cold_run / "results.json").read_text())["analysis"]
    assert an["summary"]["ran"] == ["support_coverage", "indicator_validation"]
    assert "cold-start run" in an["summary"]["skipped"]["codebook_sweep"]
    cold = ctx.cold()
    full = SemanticIdTable.load(cold_run / "fusion" / "semantic_ids.json")
    token = token_memorization(ctx.training()[1].train, cold.split.test, full.codes, 4)
    expected = support_coverage(token, load_labels(cold_run, "test"), k=10)
    assert [(r["category"], r["count"]) for r in an["support_coverage"]["rows"]] == \
        [(r["category"], r["count"]) for r in expected]
    assert "- codebook sweep: not run (a cold-start run" in (cold_run / "report.md").read_text()


def test_the_recipe_ranks_as_a_user_of_add_items_gets(cold_run, ctx, emb_cache):
    """``Recommender.from_run`` of a cold-start run is its warm catalogue; ``add_items`` with the cold
    items' records gives the recipe's IDs and the fusion stage's exact test ranking."""
    cold = ctx.cold()
    n_warm = cold.num_warm
    rec = Recommender.from_run(cold_run)
    assert rec.num_items == n_warm
    rec.add_items([item_record(cold.dataset.item_ids[i], cold.dataset.items[i]) for i in cold.cold_items],
                  cache_dir=emb_cache)
    full = SemanticIdTable.load(cold_run / "fusion" / "semantic_ids.json")
    assert rec.item_ids == full.item_ids and np.array_equal(rec.table.codes, full.codes)
    histories = [[rec.item_ids[i] for i in h] for h in cold.split.test.histories]
    got = rec.recommend_batch(histories, k=10)
    with np.load(cold_run / "fusion" / "topk.npz") as z:
        expected = z[rec.method_name]
    for row, r in zip(expected, got):
        assert r.items == [rec.item_ids[i] for i in row if i >= 0]


def test_natural_protocol_runs_through_the_recipe(tiny, tmp_path):
    """``data.cold_items: natural`` on plain-format data where three items occur only as test targets:
    the training data is the ordinary run's, the cold items are exactly those three."""
    ds = _with_natural_cold(_synthetic(), np.array([3, 17, 40]))
    write_plain(ds, tmp_path / "data")
    config = load_config(DEMO_YAML, overrides=[*tiny, f"data.dataset={tmp_path / 'data'}", "data.cold_items=natural",
                                                "fusion.new_item_mixture=true"])
    res = run_recipe(config, tmp_path / "run", progress=False)
    # no validation target is a natural cold item: nothing to fit the new-item mixture on, said and skipped
    summary = load_json(tmp_path / "run" / "fusion" / "summary.json")
    assert summary["new_item_mixture"] == {"skipped": "no validation instance has a cold target"}
    assert not (tmp_path / "run" / "fusion" / "new_item_mixture.json").exists()
    cs = res["cold_start"]
    assert cs["protocol"] == NATURAL and cs["cold_items"] == 3 and cs["test_cold_targets"] == 30
    assert cs["valid_dropped"] == 0
    cold = StageContext(tmp_path / "run", config).cold()
    assert sorted(cold.dataset.item_ids[cold.num_warm:]) == sorted(ds.item_ids[i] for i in (3, 17, 40))
    assert all(0 <= row[side]["ndcg@10"] <= 1 for row in cs["models"].values() for side in ("cold", "in_set"))


def test_option_off_changes_no_result_and_no_stage_hash(tiny_run, tiny, tmp_path):
    from genrec.recipe.runner import _section_for_hash

    out = tmp_path / "run"
    assert cli.main(["demo", "--out", str(out), "--set", *tiny, "data.cold_items=0", "data.cold_seed=5"]) == 0
    for stage in ("data", "embed", "quantize", "sasrec", "generative", "labels", "fusion", "evaluate", "report"):
        assert (load_json(out / stage / "stage.done.json")["config_hash"]
                == load_json(tiny_run / stage / "stage.done.json")["config_hash"]), stage
    a, b = (strip_timing(json.loads((d / "results.json").read_text())) for d in (out, tiny_run))
    assert a == b and "cold_start" not in a
    # the hashed data section is exactly the one of runs made before the option existed
    config = load_config(DEMO_YAML, overrides=tiny)
    hashed = _section_for_hash(config, "data", {"files": []})
    before = {k: v for k, v in asdict(config.data).items()
              if k not in ("cold_items", "cold_seed", "cache_dir", "keep_items_without_interactions", "eval_users",
                           "eval_seed")}
    assert hashed == {**before, "fingerprint": {"files": []}}


def test_the_new_item_mixture_enters_the_fusion_hash_only_where_it_is_read(tiny):
    """``fusion.new_item_mixture`` is read by cold-start runs only and off by default: elsewhere (and
    off) the fusion stage's hash is the one of runs made before the option; on, changing it reruns."""
    from genrec.recipe.runner import _hash_inputs, _stage

    def hashed(*sets):
        config = load_config(DEMO_YAML, overrides=[*tiny, *sets])
        return _hash_inputs(_stage("fusion"), config, {}, {"files": []})["config"]

    before = hashed()
    assert "fusion.new_item_mixture" not in before and before == hashed("fusion.new_item_mixture=true")
    assert "fusion.new_item_mixture" not in hashed(*COLD)
    on = hashed(*COLD, "fusion.new_item_mixture=true")
    assert on["fusion.new_item_mixture"] == {"on": True, "users": 4000}
    assert hashed(*COLD, "fusion.new_item_mixture=true", "fusion.new_item_mixture_users=10")[
        "fusion.new_item_mixture"]["users"] == 10
    with pytest.raises(ConfigError, match="fusion.new_item_mixture_users"):
        load_config(DEMO_YAML, overrides=[*tiny, "fusion.new_item_mixture_users=0"])
    # switching it on or off, or changing its users, reruns the fusion stage without --force
    from genrec.recipe.runner import _rerun_only

    inputs = lambda config_hashed: {"config": config_hashed, "upstream": {}, "version": 1}  # noqa: E731
    off = hashed(*COLD)
    users = hashed(*COLD, "fusion.new_item_mixture=true", "fusion.new_item_mixture_users=10")
    for a, b in ((off, on), (on, off), (on, users)):
        assert _rerun_only(_stage("fusion"), inputs(a), inputs(b))
    assert not _rerun_only(_stage("fusion"), inputs(off), inputs(hashed(*COLD, "fusion.k=12", "fusion.beam=12")))


def test_bench_runs_end_to_end_on_synthetic_data(cold_run, tiny, tmp_path, capsys):
    """bench/cold_start_beauty.py on the tiny synthetic data: its cold run resumes the fixture's."""
    sys.path.insert(0, str(ROOT / "bench"))
    import cold_start_beauty

    out = tmp_path / "bench"
    shutil.copytree(cold_run, out)
    sets = [s for s in tiny if not s.startswith("data.dataset")]
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



def test_new_item_bench_scores_variants_and_the_content_term_on_validation(cold_run, ctx, tmp_path, capsys):
    """bench/new_item_generative.py on the tiny cold run: every variant and method; the content term's
    added candidates are cold items outside the history and the union, and its in-sample choice
    honours the in-set bound."""
    from tests.scripts import load_script

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
    cold = ctx.cold()
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
    for row, h in zip(added, valid.histories):
        row = row[row >= 0]
        assert (row >= cold.num_warm).all() and len(set(row)) == len(row)
        assert not set(row) & set(h) and not set(row) & set(range(width))
        sims = unit[row] @ unit[h[-1]]  # the most relevant (here: similar to the last item) first
        assert (np.diff(sims) <= 1e-6).all()
        others = np.setdiff1d(np.arange(cold.num_warm, cold.num_items), np.r_[row, h])
        if len(row) == 4 and len(others):  # and none left out is more relevant than the last one added
            assert (unit[others] @ unit[h[-1]]).max() <= sims[-1] + 1e-6
    assert (cx.id_scores[:, width:][added >= 0] == 1).all()  # the towers scored every addition


def test_new_item_bench_fits_the_mixture_for_a_content_aware_sasrec(cold_run, ctx, tmp_path, capsys):
    """The bench's mixture on a copy of the tiny cold run whose SASRec is content-aware: the new items'
    logits are SASRec's; the in-sample choice honours the in-set bound and every cold candidate last
    is a grid point."""
    from dataclasses import replace as _replace

    from fusion.new_item_mixture import log_softmax_rows, new_item_logits
    from genrec.new_items import sasrec_with_new_items
    from genrec.sasrec import save_sasrec, train_sasrec
    from tests.scripts import load_script

    bench = load_script("bench/new_item_generative.py")
    run = tmp_path / "run"
    shutil.copytree(cold_run, run)
    cold, x = ctx.cold(), np.load(cold_run / "embed" / "embeddings.npy")
    model = train_sasrec(cold.warm, _replace(ctx.config.sasrec, max_epochs=1, text_dim="auto"), progress=False,
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


def test_content_sasrec_bench_compares_both_models_on_the_cold_runs_validation(cold_run, ctx, tmp_path, capsys):
    """bench/content_sasrec_cold.py on the tiny cold run: the content-aware SASRec trains on the warm
    data, and a model without the cold items never ranks a cold target."""
    from tests.scripts import load_script

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

    cold, x = ctx.cold(), np.load(cold_run / "embed" / "embeddings.npy")
    model = train_sasrec(cold.warm, _replace(ctx.config.sasrec, max_epochs=1, text_dim="auto"), progress=False,
                         item_text=x[:cold.num_warm]).model
    save_sasrec(model, tmp_path / "content.pt")
    loaded = bench.main(["--run", str(cold_run), "--in-set-users", "40", "--threads", "1",
                         "--content-model", str(tmp_path / "content.pt")])
    assert loaded["results"]["plain, cold items added"] == res["results"]["plain, cold items added"]
    assert "loaded from" in capsys.readouterr().out
    other = x.copy()
    other[0] += 1.0
    save_sasrec(train_sasrec(cold.warm, _replace(ctx.config.sasrec, max_epochs=1, text_dim="auto"), progress=False,
                             item_text=other[:cold.num_warm]).model, tmp_path / "other.pt")
    with pytest.raises(SystemExit, match="their text embeddings"):
        bench.main(["--run", str(cold_run), "--content-model", str(tmp_path / "other.pt")])


def test_validation_sample_holds_every_cold_target_then_a_seeded_in_set_sample(ctx):
    cold = ctx.cold()
    valid = cold.split.valid
    inst, side = cold.validation_sample(5, seed=3)
    n_cold = int(cold.is_cold(valid.targets).sum())
    assert n_cold > 0 and side[:n_cold].all() and not side[n_cold:].any() and len(side) == n_cold + 5
    assert cold.is_cold(inst.targets).tolist() == side.tolist()
    again, _ = cold.validation_sample(5, seed=3)
    other, _ = cold.validation_sample(5, seed=4)
    assert again.users.tolist() == inst.users.tolist() and other.users.tolist() != inst.users.tolist()
    everyone, side_all = cold.validation_sample(10 ** 6)
    assert len(everyone.targets) == len(valid.targets) and side_all.sum() == n_cold


def test_a_content_aware_sasrec_in_the_recipe_scores_cold_items_by_their_own_text(tiny, emb_cache, tmp_path):
    """``sasrec.text_dim: auto``: the sasrec stage reads the embed stage's warm rows (its hash follows
    them); the cold items come back with their own text in SASRec's item vectors, exactly as
    ``Recommender.add_items`` adds them, and a saved recommender gives the same lists."""
    from genrec.layers import unit_rows
    from genrec.sasrec import load_sasrec

    out = tmp_path / "run"
    overrides = [*tiny, *COLD, "sasrec.text_dim=auto", "fusion.new_item_mixture=true"]
    assert cli.main(["demo", "--out", str(out), "--set", *overrides]) == 0
    assert load_json(out / "sasrec" / "stage.done.json")["hashed"]["upstream"].keys() == {"data", "embed"}
    cold = StageContext(out, load_config(DEMO_YAML, overrides=overrides)).cold()
    x = np.load(out / "embed" / "embeddings.npy")
    model = load_sasrec(out / "sasrec")
    assert model.num_items == cold.num_warm and model.config.text_dim == x.shape[1]
    torch.testing.assert_close(model.item_text[1:], unit_rows(torch.from_numpy(x[:cold.num_warm])))

    rec = Recommender.from_run(out)
    rec.add_items([item_record(cold.dataset.item_ids[i], cold.dataset.items[i]) for i in cold.cold_items],
                  cache_dir=emb_cache)
    assert rec.sasrec.num_items == rec.num_items == cold.dataset.num_items
    new_rows = torch.arange(cold.num_warm + 1, cold.dataset.num_items + 1)
    torch.testing.assert_close(rec.sasrec.item_text[new_rows], unit_rows(torch.from_numpy(x[cold.num_warm:])))
    histories = [[rec.item_ids[i] for i in h] for h in cold.split.test.histories]
    got = rec.recommend_batch(histories, k=10)
    with np.load(out / "fusion" / "topk.npz") as z:
        expected = z[rec.method_name]
    assert [r.items for r in got] == [[rec.item_ids[i] for i in row if i >= 0] for row in expected]
    # each cold item: its nearest warm item's ID embedding plus its own text, not a copy of that item
    with torch.no_grad():
        ids, vectors = rec.sasrec.item_emb.weight, rec.sasrec.item_vectors()
        for row in new_rows.tolist():
            source = int(torch.nonzero((ids[1:cold.num_warm + 1] == ids[row]).all(1))[0]) + 1
            assert not torch.allclose(vectors[row], vectors[source])
    again = Recommender.from_pretrained(rec.save_pretrained(tmp_path / "saved"))
    assert [r.pairs() for r in again.recommend_batch(histories, k=10)] == [r.pairs() for r in got]

    # the new-item mixture fitted per method on validation, used for test and by the recommender
    from fusion.new_item_mixture import IN_SET_BOUND, NewItemMixture

    summary = load_json(out / "fusion" / "summary.json")["new_item_mixture"]
    fitted = load_json(out / "fusion" / "new_item_mixture.json")
    assert summary["valid_new_users"] == int(cold.is_cold(cold.split.valid.targets).sum())
    assert set(summary["methods"]) == set(load_json(out / "fusion" / "summary.json")["methods"])
    assert fitted, "no method's mixture beat ranking the cold items last on the tiny run's validation"
    for name, m in summary["methods"].items():
        v = m["valid_ndcg@10"]
        assert (name in fitted) == (m["log_prior"] is not None)
        if name in fitted:
            assert v["in_set"] >= IN_SET_BOUND * v["in_set_new_items_last"] - 1e-9 and v["new"] > 0
    with np.load(out / "fusion" / "topk_without_mixture.npz") as z:
        assert set(z.files) == set(fitted)
        with np.load(out / "fusion" / "topk.npz") as mixed:
            for name in z.files:  # the mixture's test lists hold cold items the plain ones rank lower or not at all
                assert (mixed[name] >= cold.num_warm).sum() != (z[name] >= cold.num_warm).sum()
    from tests.scripts import load_script

    config = load_config(DEMO_YAML, overrides=overrides)
    plain_metrics = load_script("bench/cold_start_beauty.py").without_mixture(out, config)
    assert set(plain_metrics) == set(fitted)
    results = load_json(out / "results.json")["cold_start"]["models"]
    for name, m in plain_metrics.items():  # the run's own figures are the mixture's; these differ on the cold side
        assert m["cold"]["ndcg@10"] != results[name]["cold"]["ndcg@10"] or \
            m["in_set"]["ndcg@10"] != results[name]["in_set"]["ndcg@10"]
    mixtures = {n: NewItemMixture.from_dict(d) for n, d in fitted.items()}
    assert rec.new_item_mixtures == again.new_item_mixtures == mixtures
    assert rec.trained_items == again.trained_items == cold.num_warm
    with np.load(out / "fusion" / "topk.npz") as mixed, np.load(out / "fusion" / "topk_without_mixture.npz") as z:
        for name in fitted:  # each method ranks as its test lists with the mixture, and as the plain ones without
            other = again.with_method(name)
            assert [r.items for r in other.recommend_batch(histories, k=10)] == \
                [[rec.item_ids[i] for i in row if i >= 0] for row in mixed[name]]
            other.set_new_item_mixture(None)
            assert other.new_item_mixture is None and again.new_item_mixtures == mixtures
            assert [r.items for r in other.recommend_batch(histories, k=10)] == \
                [[rec.item_ids[i] for i in row if i >= 0] for row in z[name]]
