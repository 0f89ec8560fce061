"""Cold-start evaluation in the recipe (issue 13, ``data.cold_items``): cold items are absent from
every training sequence, the quantizer's fit and SASRec's item table; they come back through the
add-items path (frozen quantizer + disambiguation + ``with_new_items``) exactly as
``Recommender.add_items`` brings them; test metrics are broken down by cold and in-set targets; the
option off changes no result and no stage hash; bad values are clear ``ConfigError``s."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

from genrec import cli
from genrec.artifacts import load_json
from genrec.cold_start import NATURAL, choose_cold_items, cold_start_split
from genrec.data import SequenceDataset, write_plain
from genrec.metrics import metrics_from_ranks, ranks_from_topk
from genrec.recipe import ConfigError, StageContext, config_from_dict, load_config, run_recipe, strip_timing
from genrec.recommender import Recommender
from genrec.recommender_files import item_record
from quantize import SemanticIdTable, encode_with_saved

from conftest import COLD, DEMO_YAML

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
SYNTH = "synthetic:num_users=150,num_brands=4,num_categories=4,num_attributes=4"


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
    # the warm view's sequences before the test item: each full sequence minus its test item, cold items out
    # ([:-1] of the warm sequence dropped the validation target of a user whose test target is cold)
    want = [s[:-1][s[:-1] < n_warm] for s in (cs.dataset.sequences[u] for u in cs.split.users)]
    got = cs.warm.train_with_valid()
    assert len(got) == len(want) and all(np.array_equal(a, b) for a, b in zip(got, want))
    assert any(t >= n_warm for t in cs.split.test.targets)  # the case that differed
    # the synthetic ground truth is renumbered with the items (the permuted dataset had none)
    from genrec.synthetic import synthetic_info

    old_info, new_info = synthetic_info(ds), synthetic_info(cs.dataset)
    new_of = {int(o): i for i, o in enumerate(cs.order)}
    for i, o in enumerate(cs.order):
        assert new_info.brand[i] == old_info.brand[o] and new_info.heldout[i] == old_info.heldout[o]
        nxt = old_info.compositional_next[o]
        assert new_info.compositional_next[i] == (new_of[int(nxt)] if nxt >= 0 else -1)
    assert [k.tolist() for k in new_info.kinds] == [k.tolist() for k in old_info.kinds]  # per user, unchanged


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
    with pytest.raises(ConfigError, match="'natural' cold-start split has 0 cold-target and"):
        cs.validation_sample(10, need_both=True)  # what the new-item benches need
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


def test_training_stages_never_see_the_cold_items(cold_run, cold_ctx):
    from genrec.generative import load_generative
    from genrec.sasrec import load_sasrec

    cold = cold_ctx.cold()
    n_warm, n = cold.num_warm, cold.num_items
    assert 0 < n_warm < n and n - n_warm == round(0.2 * n)
    data_summary = load_json(cold_run / "data" / "summary.json")
    summary = data_summary["cold_start"]
    assert summary["warm_items"] == n_warm and summary["cold_items"] == n - n_warm
    # the synthetic ground truth survives the renumbering (it was lost), and the summary says what was trained on
    assert "synthetic_kind_shares" in data_summary
    trained = data_summary["split"]["trained_on"]
    assert trained["items"] == n_warm and trained["train_interactions"] < data_summary["split"]["train_interactions"]
    # the quantizer was fitted on the warm items only: its table is the warm catalogue
    table = SemanticIdTable.load(cold_run / "quantize" / "semantic_ids.json")
    assert table.item_ids == cold.dataset.item_ids[:n_warm]
    assert load_json(cold_run / "quantize" / "diagnostics.json")["semantic_ids"]["num_items"] == n_warm
    # SASRec's item table and the generative model's catalogue are the warm items
    assert load_sasrec(cold_run / "sasrec" / "best.pt").num_items == n_warm
    assert load_generative(cold_run / "generative" / "best.pt").num_items == n_warm
    # what training stages read: no cold item in any training sequence or validation instance
    _, train = cold_ctx.training()
    assert train is cold.warm and train.num_items == n_warm
    assert all(len(s) == 0 or s.max() < n_warm for s in train.train)
    assert all(h.max() < n_warm for h in train.valid.histories) and train.valid.targets.max() < n_warm
    # the labels' validation shares describe those warm instances (they counted the full split's), test all users
    labels = load_json(cold_run / "labels" / "summary.json")
    assert labels["valid"]["count"] == len(train.valid.targets) < len(cold.split.valid.targets)
    assert labels["test"]["count"] == len(cold.split.test.targets)
    # at test SASRec scores the cold items through their nearest warm items (add_items' path): it proposes them
    with np.load(cold_run / "fusion" / "topk.npz") as z:
        assert z["sasrec"].max() >= n_warm


def test_cold_items_get_semantic_ids_from_the_frozen_quantizer(cold_run, cold_ctx):
    cold = cold_ctx.cold()
    n_warm = cold.num_warm
    warm = SemanticIdTable.load(cold_run / "quantize" / "semantic_ids.json")
    full = SemanticIdTable.load(cold_run / "fusion" / "semantic_ids.json")
    assert full.item_ids == cold.dataset.item_ids and np.array_equal(full.codes[:n_warm], warm.codes)
    x = np.load(cold_run / "embed" / "embeddings.npy")[n_warm:]
    assert np.array_equal(full.base_codes[n_warm:], encode_with_saved(cold_run / "quantize", x))
    assert len({tuple(r) for r in full.codes.tolist()}) == full.num_items  # still one ID per item


def test_cold_targets_are_recommended_and_metrics_split_by_target(cold_run, cold_ctx):
    res = json.loads((cold_run / "results.json").read_text())
    cs = res["cold_start"]
    cold = cold_ctx.cold()
    targets = cold.split.test.targets
    is_cold = cold.is_cold(targets)
    assert cs["test_cold_targets"] == int(is_cold.sum()) > 0
    assert set(cs["models"]) == set(res["models"]) == {"sasrec", "gr", "fixed", "adaptive", "learned_minmax"}
    # in-set users whose history holds a cold item: their lists read the added items too (a part of in_set)
    cold_history = np.array([cold.is_cold(h).any() for h in cold.split.test.histories]) & ~is_cold
    assert cold_history.any()
    with np.load(cold_run / "fusion" / "topk.npz") as z:
        for name, row in cs["models"].items():
            ranks = ranks_from_topk(z[name], targets)
            assert row["cold"]["count"] == is_cold.sum() and row["in_set"]["count"] == (~is_cold).sum()
            for side, mask in (("cold", is_cold), ("in_set", ~is_cold), ("in_set_cold_history", cold_history)):
                expected = metrics_from_ranks(ranks[mask], (5, 10))
                assert {k: row[side][k] for k in expected} == pytest.approx(expected)
    assert cs["models"]["gr"]["cold"]["recall@10"] > 0  # found through their semantic IDs
    assert max(cs["models"][m]["cold"]["recall@10"] for m in ("fixed", "adaptive", "learned_minmax")) > 0
    # the overall metrics stay those of every test user
    assert res["models"]["gr"]["test"]["all"]["count"] == len(targets)
    report = (cold_run / "report.md").read_text()
    assert "## Cold start" in report and "| learned_minmax |" in report.split("## Cold start")[1]
    assert f"{int(cold_history.sum())} of the in-set users have a cold item in their history" in report


def test_analyses_of_a_cold_start_run_use_the_codes_test_was_ranked_with(cold_run, cold_ctx):
    """Support coverage over the whole catalogue's IDs (the cold items added), labels from the warm
    training sequences; no codebook sweep, which would fit codes on the cold items."""
    from genrec.memorization import token_memorization
    from genrec.recipe import load_labels
    from genrec.semantic_id_analysis import support_coverage

    an = json.loads((cold_run / "results.json").read_text())["analysis"]
    assert an["summary"]["ran"] == ["support_coverage", "indicator_validation"]
    assert "cold-start run" in an["summary"]["skipped"]["codebook_sweep"]
    cold = cold_ctx.cold()
    full = SemanticIdTable.load(cold_run / "fusion" / "semantic_ids.json")
    token = token_memorization(cold_ctx.training()[1].train, cold.split.test, full.codes, 4)
    expected = support_coverage(token, load_labels(cold_run, "test"), k=10)
    assert [(r["category"], r["count"]) for r in an["support_coverage"]["rows"]] == \
        [(r["category"], r["count"]) for r in expected]
    assert "- codebook sweep: not run (a cold-start run" in (cold_run / "report.md").read_text()


def test_the_recipe_ranks_as_a_user_of_add_items_gets(cold_run, cold_ctx, tiny_emb_cache, monkeypatch, caplog):
    """``add_items`` with the cold items' records gives a warm recommender of a cold-start run the
    recipe's IDs and the fusion stage's exact test ranking; ``Recommender.from_run`` adds them back so
    by itself (it served the warm catalogue, every cold item an unknown id, and other lists than the
    run evaluated), for every method and single model; where no model could score them, it says so."""
    import logging

    from genrec import new_items

    cold = cold_ctx.cold()
    n_warm = cold.num_warm
    full = SemanticIdTable.load(cold_run / "fusion" / "semantic_ids.json")
    with np.load(cold_run / "fusion" / "topk.npz") as z:
        expected = {name: z[name] for name in z.files}
    monkeypatch.setattr(new_items, "can_extend", lambda rec: "no model could score them")
    with caplog.at_level(logging.INFO, logger="genrec.recommender"):
        rec = Recommender.from_run(cold_run)
    assert rec.num_items == n_warm and f"{cold.num_cold} cold item(s) of the run are not added" in caplog.text
    monkeypatch.undo()
    rec.add_items([item_record(cold.dataset.item_ids[i], cold.dataset.items[i]) for i in cold.cold_items],
                  cache_dir=tiny_emb_cache)
    assert rec.item_ids == full.item_ids and np.array_equal(rec.table.codes, full.codes)
    histories = [[rec.item_ids[i] for i in h] for h in cold.split.test.histories]
    for row, r in zip(expected[rec.method_name], rec.recommend_batch(histories, k=10)):
        assert r.items == [rec.item_ids[i] for i in row if i >= 0]
    loaded = Recommender.from_run(cold_run)
    assert loaded.item_ids == full.item_ids and np.array_equal(loaded.table.codes, full.codes)
    record = item_record(cold.dataset.item_ids[n_warm], cold.dataset.items[n_warm])
    shown = loaded.item(record["item_id"])
    assert loaded.trained_items == n_warm and {key: shown[key] for key in record} == record
    assert shown["semantic_id"] == full.codes[n_warm].tolist()
    for method in loaded.methods:
        got = loaded.with_method(method).recommend_batch(histories, k=10)
        assert not any(r.unknown_ids or r.fallback for r in got)
        for row, r in zip(expected["gr" if method == "generative" else method], got):
            assert r.items == [loaded.item_ids[i] for i in row if i >= 0], method


def test_natural_protocol_runs_through_the_recipe(tiny_cached, tmp_path):
    """``data.cold_items: natural`` on plain-format data where three items occur only as test targets:
    the training data is the ordinary run's, the cold items are exactly those three."""
    ds = _with_natural_cold(_synthetic(), np.array([3, 17, 40]))
    write_plain(ds, tmp_path / "data")
    config = load_config(DEMO_YAML, overrides=[*tiny_cached, f"data.dataset={tmp_path / 'data'}", "data.cold_items=natural",
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


def test_option_off_changes_no_result_and_no_stage_hash(tiny_run, tiny_cached, tmp_path):
    from genrec.recipe.stage_hash import section_for_hash

    out = tmp_path / "run"
    assert cli.main(["demo", "--out", str(out), "--set", *tiny_cached, "data.cold_items=0", "data.cold_seed=5"]) == 0
    for stage in ("data", "embed", "quantize", "sasrec", "generative", "labels", "fusion", "evaluate", "report"):
        assert (load_json(out / stage / "stage.done.json")["config_hash"]
                == load_json(tiny_run / stage / "stage.done.json")["config_hash"]), stage
    a, b = (strip_timing(json.loads((d / "results.json").read_text())) for d in (out, tiny_run))
    assert a == b and "cold_start" not in a
    # the hashed data section is exactly the one of runs made before the option existed
    config = load_config(DEMO_YAML, overrides=tiny_cached)
    hashed = section_for_hash(config, "data", {"files": []})
    before = {k: v for k, v in asdict(config.data).items()
              if k not in ("cold_items", "cold_seed", "cache_dir", "keep_items_without_interactions", "eval_users",
                           "eval_seed")}
    assert hashed == {**before, "fingerprint": {"files": []}}


def test_the_new_item_mixture_enters_the_fusion_hash_only_where_it_is_read(tiny_cached):
    """``fusion.new_item_mixture`` is read by cold-start runs only and off by default: elsewhere (and
    off) the fusion stage's hash is the one of runs made before the option; on, changing it reruns."""
    from genrec.recipe.runner import _stage
    from genrec.recipe.stage_hash import hash_inputs

    def hashed(*sets):
        config = load_config(DEMO_YAML, overrides=[*tiny_cached, *sets])
        return hash_inputs(_stage("fusion"), config, {}, {"files": []})["config"]

    before = hashed()
    assert "fusion.new_item_mixture" not in before and before == hashed("fusion.new_item_mixture=true")
    assert "fusion.new_item_mixture" not in hashed(*COLD)
    on = hashed(*COLD, "fusion.new_item_mixture=true")
    assert on["fusion.new_item_mixture"] == {"on": True, "users": 4000}
    assert hashed(*COLD, "fusion.new_item_mixture=true", "fusion.new_item_mixture_users=10")[
        "fusion.new_item_mixture"]["users"] == 10
    with pytest.raises(ConfigError, match="fusion.new_item_mixture_users"):
        load_config(DEMO_YAML, overrides=[*tiny_cached, "fusion.new_item_mixture_users=0"])
    # switching it on or off, or changing its users, reruns the fusion stage without --force
    from genrec.recipe.runner import _rerun_only

    inputs = lambda config_hashed: {"config": config_hashed, "upstream": {}, "version": 1}  # noqa: E731
    off = hashed(*COLD)
    users = hashed(*COLD, "fusion.new_item_mixture=true", "fusion.new_item_mixture_users=10")
    for a, b in ((off, on), (on, off), (on, users)):
        assert _rerun_only(_stage("fusion"), inputs(a), inputs(b))
    assert not _rerun_only(_stage("fusion"), inputs(off), inputs(hashed(*COLD, "fusion.k=12", "fusion.beam=12")))


def test_validation_sample_holds_every_cold_target_then_a_seeded_in_set_sample(cold_ctx):
    cold = cold_ctx.cold()
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


def test_a_content_aware_sasrec_in_the_recipe_scores_cold_items_by_their_own_text(tiny_cached, tiny_emb_cache, tmp_path):
    """``sasrec.text_dim: auto``: the sasrec stage reads the embed stage's warm rows (its hash follows
    them); the cold items come back with their own text in SASRec's item vectors, exactly as
    ``Recommender.add_items`` adds them, and a saved recommender gives the same lists."""
    from genrec.layers import unit_rows
    from genrec.sasrec import load_sasrec

    out = tmp_path / "run"
    overrides = [*tiny_cached, *COLD, "sasrec.text_dim=auto", "fusion.new_item_mixture=true"]
    assert cli.main(["demo", "--out", str(out), "--set", *overrides]) == 0
    assert load_json(out / "sasrec" / "stage.done.json")["hashed"]["upstream"].keys() == {"data", "embed"}
    cold = StageContext(out, load_config(DEMO_YAML, overrides=overrides)).cold()
    x = np.load(out / "embed" / "embeddings.npy")
    model = load_sasrec(out / "sasrec")
    assert model.num_items == cold.num_warm and model.config.text_dim == x.shape[1]
    torch.testing.assert_close(model.item_text[1:], unit_rows(torch.from_numpy(x[:cold.num_warm])))

    rec = Recommender.from_run(out)  # the cold items added back as add_items adds them
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
        if name in fitted:  # adopted only where it beats the plain list it replaces
            assert v["in_set"] >= IN_SET_BOUND * v["in_set_without_mixture"] - 1e-9
            assert v["new"] > v["new_without_mixture"]
        else:
            assert (v["new"], v["in_set"]) == (v["new_without_mixture"], v["in_set_without_mixture"])
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


def test_genrec_analyze_refuses_a_cold_start_runs_lists(cold_run, tiny_run, tmp_path, capsys):
    """Read against the dataset's numbering they gave other per-category figures than the run's report
    (its cold items come last, and its labels count the warm sequences)."""
    spec = load_json(cold_run / "config.json")["data"]["dataset"]
    code = cli.main(["analyze", spec, "--out", str(tmp_path / "an"), "--max-history", "10",
                     "--predictions", f"sasrec={cold_run / 'fusion' / 'topk.npz'}"])
    assert code == 2 and "is a cold-start run's (data.cold_items)" in capsys.readouterr().err
    assert cli.main(["analyze", spec, "--out", str(tmp_path / "ok"), "--max-history", "10",
                     "--predictions", f"sasrec={tiny_run / 'fusion' / 'topk.npz'}"]) == 0
