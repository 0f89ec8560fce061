"""Choosing the primary fusion method on validation only (fusion.selection, genrec.recipe.primary):
cross-fitting beats in-sample scores, folds are deterministic, test targets never matter,
``fusion.primary: auto`` end to end, explicit names still win, old run directories resume."""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from fusion import CandidateScores, FixedWeightFusion, GateReport, Indicators
from fusion.methods import params_equal
from fusion.selection import CrossFit, cross_fit, cross_fitted_choice, fold_assignment, metric_values, select_best
from genrec.artifacts import load_json, save_json
from genrec.errors import RunDirectoryError
from genrec.recipe import ConfigError, config_from_dict, run_recipe
from genrec.recipe.primary import SELECTION_FILE, choose_primary, load_cross_fit
from genrec.recipe.report import gate_distributions


class LookupFusion:
    """A method that memorizes its fitting rows: the target of a row it saw goes first, a row it did
    not see keeps the candidate order. Perfect in sample, useless out of sample."""

    name = "lookup"

    def fit(self, cands, targets, indicators=None):
        self.memory = {tuple(row): t for row, t in zip(cands.items.tolist(), np.asarray(targets).tolist())}
        return self

    def fuse(self, cands, indicators=None):
        t = np.array([self.memory.get(tuple(row), -2) for row in cands.items.tolist()])
        return (cands.items == t[:, None]).astype(np.float32)

    def gates(self, cands, indicators=None):
        return GateReport(np.full(len(cands), 0.5))

    def params(self):
        return {}


def _toy(n: int = 100, seed: int = 0) -> tuple[CandidateScores, np.ndarray, Indicators]:
    """Unique candidate rows of 6; the ID model prefers column 0, the generative model column 3,
    and the target is column 3 for 80% of the rows (so trusting the generative model generalizes)."""
    rng = np.random.default_rng(seed)
    items = np.arange(n * 6, dtype=np.int64).reshape(n, 6)
    id_scores = np.tile(-np.arange(6, dtype=np.float32), (n, 1))
    gr_scores = np.tile(np.array([-3, -4, -5, 0, -1, -2], np.float32), (n, 1))
    mask = np.ones((n, 6), bool)
    cands = CandidateScores(items, id_scores, gr_scores, mask, mask.copy())
    targets = np.where(rng.random(n) < 0.8, items[:, 3], items[:, 0])
    return cands, targets, Indicators(("x",), rng.normal(size=(n, 1)).astype(np.float32))


def _methods():
    return [FixedWeightFusion(), LookupFusion()]


def test_cross_fitting_picks_the_out_of_sample_winner_not_the_in_sample_one():
    cands, targets, ind = _toy()
    in_sample = {}
    for m in _methods():
        m.fit(cands, targets, ind)
        ranks = cands.topk(m.fuse(cands, ind), 6) == targets[:, None]
        in_sample[m.name] = float(metric_values(np.where(ranks.any(1), ranks.argmax(1), 6), "ndcg@3").mean())
    assert select_best(in_sample, ["fixed", "lookup"]) == "lookup" and in_sample["lookup"] == 1.0
    cf = cross_fit(_methods, cands, targets, ind, folds=5, seed=0, k=6)
    scores = cf.scores("ndcg@3")
    assert scores["fixed"] > scores["lookup"] + 0.2  # the lookup cannot rank rows it never saw
    assert select_best(scores, ["lookup", "fixed"]) == "fixed"
    # the score is the mean over folds of each fold's mean
    v = metric_values(cf.ranks["fixed"], "ndcg@3")
    assert scores["fixed"] == pytest.approx(np.mean([v[cf.folds == f].mean() for f in range(5)]))
    with pytest.raises(ConfigError, match=r"distinct method names, got \['fixed', 'fixed'\]"):
        cross_fit(lambda: [FixedWeightFusion(), FixedWeightFusion()], cands, targets, ind, folds=5, k=6)


def test_a_cross_fitted_choice_among_candidates_is_scored_out_of_sample():
    """The best of several fixed candidates on all of validation is biased upwards by the choice; the
    cross-fitted choice picks on the other folds and scores the fold left out."""
    folds = np.repeat([0, 1], 4)
    # "lucky" wins fold 0 by far and loses fold 1; "steady" is good on both: in sample, lucky is best
    ranks = {"lucky": np.array([0, 0, 0, 0, 50, 50, 50, 50]), "steady": np.array([3, 3, 3, 3, 3, 3, 3, 3])}
    in_sample = {n: metric_values(r, "ndcg@10").mean() for n, r in ranks.items()}
    assert max(in_sample, key=in_sample.get) == "lucky"
    # fold 0 is scored with the choice made on fold 1 (steady) and vice versa (lucky, which misses there)
    expected = np.mean([metric_values(ranks["steady"][:4], "ndcg@10").mean(), 0.0])
    assert cross_fitted_choice(ranks, folds) == pytest.approx(expected)
    assert cross_fitted_choice(ranks, folds) < max(in_sample.values())
    assert cross_fitted_choice({"one": ranks["steady"]}, folds, metric="recall@3") == 0.0  # rank 3 misses @3
    assert cross_fitted_choice({"a": ranks["steady"], "b": ranks["steady"]}, folds) == in_sample["steady"]  # ties
    with pytest.raises(ValueError, match="ranks of the folds' shape"):
        cross_fitted_choice({"a": np.zeros(3)}, folds)


def test_folds_are_deterministic_balanced_and_seeded():
    a, b = fold_assignment(103, 5, seed=7), fold_assignment(103, 5, seed=7)
    assert np.array_equal(a, b) and not np.array_equal(a, fold_assignment(103, 5, seed=8))
    counts = np.bincount(a, minlength=5)
    assert counts.max() - counts.min() <= 1 and counts.sum() == 103
    cands, targets, ind = _toy()
    one, two = (cross_fit(_methods, cands, targets, ind, folds=4, seed=3, k=6) for _ in range(2))
    assert np.array_equal(one.folds, two.folds) and one.folds.max() == 3
    assert all(np.array_equal(one.ranks[m], two.ranks[m]) for m in one.ranks)
    back = CrossFit.from_arrays(one.arrays())
    assert back.scores("recall@2") == one.scores("recall@2")
    with pytest.raises(ValueError, match="at least 2 folds"):
        fold_assignment(10, 1)
    first = np.arange(3)
    small = cross_fit(_methods, cands.subset(first), targets[first], ind.subset(first), folds=5, k=6)
    assert sorted(small.folds.tolist()) == [0, 1, 2]  # fewer instances than folds: one fold each


def test_select_best_ties_go_to_the_given_order_and_nan_never_wins():
    assert select_best({"a": 0.3, "b": 0.3, "c": 0.1}, ["b", "a", "c"]) == "b"
    assert select_best({"a": float("nan"), "b": 0.0}, ["a", "b"]) == "b"
    with pytest.raises(ValueError, match=r"no method of \['a', 'z'\] has a score"):
        select_best({"a": float("nan")}, ["a", "z"])


def test_a_fold_whose_other_folds_list_no_target_scores_misses_instead_of_failing(caplog):
    """A learned gate fitted on folds where no target is among the candidates cannot fit: the held-out
    fold counts as misses for it (the full fit, which sees every instance, works)."""
    from fusion import LearnedGateFusion, build_candidates
    from genrec.errors import NothingToFitError
    from genrec.metrics import MISS_RANK

    rng = np.random.default_rng(0)
    n = 6
    cands = build_candidates(np.array([[0, 1, 2]] * n), -np.sort(-rng.random((n, 3)), 1).astype(np.float32),
                             np.array([[3, 4, 5]] * n), -np.sort(-rng.random((n, 3)), 1).astype(np.float32))
    targets = np.array([1, 9, 9, 9, 9, 9])  # only the first instance's target is a candidate
    ind = Indicators(("a",), rng.random((n, 1)))
    LearnedGateFusion(k=3, max_epochs=2).fit(cands, targets, ind)
    with pytest.raises(NothingToFitError, match="no instance to fit the gate on.*6 instances"):
        LearnedGateFusion(k=3, max_epochs=2).fit(cands, np.full(n, 9), ind)
    with caplog.at_level(logging.WARNING, logger="fusion.selection"):
        cf = cross_fit(lambda: [FixedWeightFusion(k=3), LearnedGateFusion(k=3, max_epochs=2)], cands, targets,
                       ind, folds=2, seed=0, k=3)
    first = fold_assignment(n, 2, 0)[0]  # the fold holding instance 0: the gate fitted on the other cannot fit
    assert (cf.ranks["learned_gate"][cf.folds == first] == MISS_RANK).all()  # as every other miss (was k)
    assert "count as misses for learned_gate" in caplog.text
    assert caplog.text.count("count as misses for learned_gate") == 1  # the other fold was fitted and ranked


@pytest.mark.parametrize("raw, key", [
    ({"fusion": {"primary": "best"}}, "fusion.primary"),
    ({"fusion": {"k": 5, "gate": {"k": 10}}, "report": {"ks": [5], "metric": "ndcg@5"}}, "fusion.gate.k"),
    ({"fusion": {"primary": "joint"}}, "fusion.primary"),  # joint competes only when it is trained
    ({"fusion": {"primary": "learned_logprob", "methods": ["fixed", "adaptive"]}}, "fusion.primary"),
    ({"fusion": {"selection_folds": 1}}, "fusion.selection_folds"),
])
def test_bad_primary_settings_are_config_errors_naming_the_key(raw, key):
    with pytest.raises(ConfigError, match=f"'{key}'"):
        config_from_dict(raw)


def test_primary_defaults_to_auto_and_accepts_names():
    assert config_from_dict({}).fusion.primary == "auto"
    assert config_from_dict({}, overrides=["fusion.primary=adaptive"]).fusion.primary == "adaptive"
    assert config_from_dict({}, overrides=["fusion.joint=true", "fusion.primary=joint"]).fusion.primary == "joint"


# ----------------------------------------------------------------------------------------------
# the tiny recipe


def _config(run_dir: Path, *overrides: str):
    return config_from_dict(load_json(run_dir / "config.json"), overrides=overrides)


def _copy(run: Path, dest: Path) -> Path:
    shutil.copytree(run, dest, ignore=shutil.ignore_patterns("run.lock"))
    return dest


def test_auto_primary_end_to_end(tiny_run):
    from genrec.recommender import Recommender

    config = _config(tiny_run)
    assert config.fusion.primary == "auto"
    res = load_json(tiny_run / "results.json")
    sel = res["fusion"]["selection"]
    methods = config.fusion.methods
    assert sel["requested"] == "auto" and sel["metric"] == "ndcg@10" and sel["folds"] == 5
    assert set(sel["scores"]) == set(methods) == set(sel["cross_fitted"])
    best = max(sel["scores"].values())
    assert res["fusion"]["primary"] == sel["method"] == next(m for m in methods if sel["scores"][m] == best)
    assert "best validation ndcg@10" in sel["reason"]
    # the fusion stage's summary holds the same cross-fitted scores (and the out-of-fold ranks)
    summary = load_json(tiny_run / "fusion" / "summary.json")["selection"]
    assert summary["folds"] == 5 and {m: s["ndcg@10"] for m, s in summary["scores"].items()} == sel["scores"]
    assert (tiny_run / SELECTION_FILE).is_file()
    # the report puts validation and test side by side, the chosen one marked
    report = (tiny_run / "report.md").read_text()
    section = report.split("## Primary fusion method")[1].split("\n## ")[0]
    assert f"| **{sel['method']}** | {sel['scores'][sel['method']]:.4f} | cross-fitted |" in section
    test_all = res["models"][sel["method"]]["test"]["all"]["ndcg@10"]
    assert f"{test_all:.4f}" in section and "| yes |" in section
    assert all(f"| {m} |" in section for m in methods if m != sel["method"])
    assert res["comparisons"][2]["winner"] == sel["method"]
    assert (tiny_run / "plots" / "gates_by_label.png").stat().st_size > 10_000
    # the recommender loads the chosen method by default
    assert Recommender.from_run(tiny_run).method_name == sel["method"]


def test_test_targets_never_influence_the_choice(tiny_run, tmp_path):
    """The fusion stage rerun with the test targets permuted gives identical cross-fitted ranks and
    choice; permuting the validation targets (what the choice is made on) does change them."""
    from genrec.recipe.stages import StageContext, stage_fusion

    def rerun(tag: str, permute: str) -> tuple[dict, str]:
        run = _copy(tiny_run, tmp_path / tag)
        ctx = StageContext(run, _config(run))
        dataset, split = ctx.data()
        part = getattr(split, permute)
        perm = np.random.default_rng(1).permutation(len(part.targets))
        ctx._data = (dataset, replace(split, **{permute: replace(part, targets=part.targets[perm])}))
        stage_fusion(ctx)
        cf = load_cross_fit(run)
        return cf.arrays(), choose_primary(ctx.config, run).method

    original = {**load_cross_fit(tiny_run).arrays()}
    chosen = load_json(tiny_run / "results.json")["fusion"]["primary"]
    arrays, method = rerun("test_permuted", "test")
    assert method == chosen and arrays.keys() == original.keys()
    assert all(np.array_equal(arrays[k], original[k]) for k in original)
    # and nothing of what the stage built for test (lists, gates, indicators) nor any fitted method moved:
    # a test target among test's candidates or in the statistics would change them
    from genrec.artifacts import load_arrays

    for name in ("topk.npz", "gates.npz", "indicators.npz"):
        a, b = load_arrays(tiny_run / "fusion" / name), load_arrays(tmp_path / "test_permuted" / "fusion" / name)
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a), name
    from fusion.persist import load_methods

    fitted, refitted = load_methods(tiny_run / "fusion" / "methods.pt"), \
        load_methods(tmp_path / "test_permuted" / "fusion" / "methods.pt")
    assert fitted.keys() == refitted.keys() and all(params_equal(fitted[m].params(), refitted[m].params())
                                                    for m in fitted)
    arrays, _ = rerun("valid_permuted", "valid")
    assert any(not np.array_equal(arrays[k], original[k]) for k in original if k.startswith("ranks/"))


def test_an_explicit_primary_still_wins(tiny_run, tmp_path):
    from genrec.recommender import Recommender

    chosen = load_json(tiny_run / "results.json")["fusion"]["primary"]
    other = next(m for m in _config(tiny_run).fusion.methods if m != chosen)
    run = _copy(tiny_run, tmp_path / "run")
    events: dict[str, str] = {}
    res = run_recipe(_config(run, f"fusion.primary={other}"), run,
                     on_stage=lambda n, e, i: events.__setitem__(n, e) if e != "start" else None)
    assert events["fusion"] == "skip" and events["report"] == "done"  # only the report depends on it
    sel = res["fusion"]["selection"]
    assert res["fusion"]["primary"] == sel["method"] == other and sel["requested"] == other
    assert "set in the config" in sel["reason"] and set(sel["scores"]) == set(_config(run).fusion.methods)
    assert f"fusion ({other}) ahead overall" == res["comparisons"][2]["claim"]
    assert Recommender.from_run(run).method_name == other


def test_a_fusion_stage_from_before_cross_fitting_reruns_without_force(tiny_run, tmp_path):
    """An old run directory (its fusion marker hashed no selection settings) resumes: the training
    stages are skipped, the fusion stage reruns without --force; any other change is still refused."""
    from genrec.recipe.stage_hash import stage_hash

    run = _copy(tiny_run, tmp_path / "run")
    marker_path = run / "fusion" / "stage.done.json"
    marker = load_json(marker_path)
    for key in ("fusion.selection_folds", "fusion.selection_seed"):
        del marker["hashed"]["config"][key]
    old = {"fusion": stage_hash(marker["hashed"])}
    marker["config_hash"] = old["fusion"]
    save_json(marker_path, marker)
    for stage in ("evaluate", "report"):  # downstream markers hashed the old fusion stage (and evaluate)
        m = load_json(run / stage / "stage.done.json")
        m["hashed"]["upstream"].update({k: v for k, v in old.items() if k in m["hashed"]["upstream"]})
        old[stage] = m["config_hash"] = stage_hash(m["hashed"])
        save_json(run / stage / "stage.done.json", m)
    marker = load_json(marker_path)
    (run / SELECTION_FILE).unlink()
    summary = load_json(run / "fusion" / "summary.json")
    del summary["selection"]
    save_json(run / "fusion" / "summary.json", summary)
    config = _config(run)

    refused = _copy(run, tmp_path / "refused")
    marker["hashed"]["config"]["fusion.k"] = 20  # an old fusion stage that also differs in a real setting
    marker["config_hash"] = stage_hash(marker["hashed"])
    save_json(refused / "fusion" / "stage.done.json", marker)
    with pytest.raises(RunDirectoryError, match=r"changed: fusion.k, fusion.selection_folds"):
        run_recipe(config, refused)

    events: dict[str, str] = {}
    res = run_recipe(config, run, on_stage=lambda n, e, i: events.__setitem__(n, e) if e != "start" else None)
    assert all(events[s] == "skip" for s in ("embed", "quantize", "sasrec", "generative"))
    assert events["fusion"] == "done" and events["report"] == "done"
    assert (run / SELECTION_FILE).is_file()
    assert res["fusion"]["selection"] == load_json(tiny_run / "results.json")["fusion"]["selection"]


@pytest.mark.parametrize("schedule", ["holdout", "end_to_end"])
def test_the_joint_model_competes_with_its_validation_score(tiny_run, tmp_path, schedule, caplog):
    run = _copy(tiny_run, tmp_path / "run")
    # the holdout model's own candidate lists (k=12, beam=14) differ from the post-hoc methods' (10, 10)
    epochs = (["fusion.joint_config.joint.max_epochs=2", "fusion.joint_config.joint.eval_every=2",
               "fusion.joint_config.k=12", "fusion.joint_config.beam=14"]
              if schedule == "holdout" else ["fusion.joint_config.max_epochs=1"])
    config = _config(run, "fusion.joint=true", f"fusion.joint_schedule={schedule}", *epochs)
    res = run_recipe(config, run)
    sel = res["fusion"]["selection"]
    summary = load_json(run / "joint" / "summary.json")
    assert summary["schedule"] == schedule
    assert "no validation target trains it" in sel["sources"]["joint"]
    if schedule == "holdout":  # its choice among candidates, cross-fitted on the post-hoc methods' folds
        with np.load(run / "joint" / "candidates.npz") as z:
            cands = {n: z[n] for n in z.files}
        assert set(cands) == set(summary["selection"])
        assert sel["scores"]["joint"] == pytest.approx(cross_fitted_choice(cands, load_cross_fit(run).folds))
        assert "cross-fitted" in sel["sources"]["joint"]
        assert set(sel["cross_fitted"]) == {*config.fusion.methods, "joint"}
        # candidate lists of other rows than the folds (a stale file): said, and its in-sample score used
        np.savez(run / "joint" / "candidates.npz", **{n: r[:-1] for n, r in cands.items()})
        with caplog.at_level(logging.WARNING, logger="genrec.recipe.primary"):
            again = choose_primary(config, run)
        assert "does not match the validation folds" in caplog.text
        assert again.scores["joint"] == summary["valid"]["ndcg@10"] and "joint" not in again.cross_fitted
    else:
        assert sel["scores"]["joint"] == summary["valid"]["ndcg@10"]
        assert set(sel["cross_fitted"]) == set(config.fusion.methods)
    order = [*config.fusion.methods, "joint"]
    assert sel["method"] == select_best(sel["scores"], order) == res["fusion"]["primary"]
    section = (run / "report.md").read_text().split("## Primary fusion method")[1].split("\n## ")[0]
    row = next(line for line in section.splitlines() if line.startswith(("| joint |", "| **joint** |")))
    assert ("| cross-fitted |" if schedule == "holdout" else "| own training |") in row
    # the gate plot shows every method's distribution per label, the joint model's too
    dists = gate_distributions(run, list(res["fusion"]["gate_by_label"]))
    assert set(dists) == {*config.fusion.methods, "joint"}
    n_test = res["models"]["joint"]["test"]["all"]["count"]
    groups = ("memorization", "generalization", "uncategorized")
    assert all(sum(len(d[c]) for c in groups if c in d) == n_test for d in dists.values())
    assert (run / "plots" / "gates_by_label.png").is_file()
    assert json.loads((run / "fusion" / "summary.json").read_text())["selection"]["folds"] == 5
    if schedule == "holdout":  # the recommender ranks as the stage did
        from genrec import Recommender
        from genrec.recipe import StageContext
        from genrec.metrics import ranks_from_topk

        rec = Recommender.from_run(run, method="joint")
        assert rec.methods == ["sasrec", "generative", "joint"]
        assert (rec.settings.k, rec.settings.beam, rec.max_k) == (12, 14, 12)
        assert rec.max_k_source == "fusion.joint_config.k"  # what limits k here (messages named fusion.k)
        _, split = StageContext(run, config).data()
        got = rec.recommend_batch([[rec.item_ids[i] for i in h] for h in split.test.histories], k=12,
                                  exclude_seen=False)
        top = np.array([[rec.index[i] for i in r.items] + [-1] * (12 - len(r.items)) for r in got])
        with np.load(run / "joint" / "ranks.npz") as z:
            ranks = z["joint"]
        np.testing.assert_array_equal(np.minimum(ranks_from_topk(top, split.test.targets), 12), np.minimum(ranks, 12))


def test_the_selection_table_reads_which_scores_are_cross_fitted():
    from genrec.recipe.report import selection_table

    models = {n: {"kind": "fusion", "test": {"all": {"ndcg@10": 0.05}}} for n in ("fixed", "joint")}
    sel = {"metric": "ndcg@10", "method": "joint", "scores": {"fixed": 0.06, "joint": 0.07},
           "sources": {"fixed": "cross-fitted on validation (5 folds)", "joint": "cross-fitted wording"}}

    def how(selection):
        table = selection_table({"models": models, "fusion": {"selection": selection}})
        return {line.split("|")[1].strip(" *"): line.split("|")[3].strip() for line in table.splitlines()[2:]}

    # the structured field decides, whatever the words say
    assert how({**sel, "cross_fitted": ["fixed"]}) == {"fixed": "cross-fitted", "joint": "own training"}
    assert how({**sel, "cross_fitted": ["fixed", "joint"]}) == {"fixed": "cross-fitted", "joint": "cross-fitted"}
    # a selection saved before the field existed: post-hoc methods were always cross-fitted, the joint
    # model when its sources said so
    assert how(sel) == {"fixed": "cross-fitted", "joint": "cross-fitted"}
    assert how({**sel, "sources": {"joint": "its own validation"}}) == {"fixed": "cross-fitted",
                                                                         "joint": "own training"}
