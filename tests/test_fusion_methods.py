"""Post-hoc fusion methods on synthetic model outputs where the right gate is known by construction."""

import numpy as np
import pytest
import torch

from fusion.candidates import evaluate_fused
from fusion.methods import SCALES, AdaptiveFusion, FixedWeightFusion, LearnedGateFusion, params_equal
from fusion.report import results_by_label, results_markdown, run_posthoc, single_model_topk
from fusion.simulate import simulate_outputs
from genrec.metrics import metrics_from_ranks, ranks_from_topk

torch.set_num_threads(1)


def ndcg(topk, targets):
    return metrics_from_ranks(ranks_from_topk(topk, targets), (10,))["ndcg@10"]


@pytest.fixture(scope="module")
def msp_case():
    """The ID model is right exactly when its MSP is high."""
    return simulate_outputs(n=1500, seed=1), simulate_outputs(n=1500, seed=2)


@pytest.fixture(scope="module")
def hidden_case():
    """MSP is uninformative (the ID model is as confident on a decoy); ``memo_signal`` is the key."""
    return (simulate_outputs(n=1500, seed=3, msp_informative=False),
            simulate_outputs(n=1500, seed=4, msp_informative=False))


def test_adaptive_and_learned_gate_discover_the_msp_gate(msp_case):
    valid, test = msp_case
    single = max(ndcg(test.id_topk, test.targets), ndcg(test.gr_topk, test.targets))
    fixed = FixedWeightFusion().fit(valid.cands, valid.targets)
    n_fixed = evaluate_fused(test.cands, fixed.fuse(test.cands), test.targets)["ndcg@10"]
    assert n_fixed > single  # even a fixed mix helps here
    for method in (AdaptiveFusion(), LearnedGateFusion(scale="minmax"), LearnedGateFusion(scale="logprob")):
        method.fit(valid.cands, valid.targets, valid.indicators)
        n = evaluate_fused(test.cands, method.fuse(test.cands, test.indicators), test.targets)["ndcg@10"]
        gates = method.gates(test.cands, test.indicators)
        assert n > single + 0.3 and n > n_fixed + 0.05, (method.name, n, single, n_fixed)
        assert ((gates.gate > 0.5) == test.memorization).mean() > 0.9  # trusts the right model
    adaptive = AdaptiveFusion().fit(valid.cands, valid.targets, valid.indicators)
    msp = valid.indicators.column("id_msp")
    # the threshold lies between the two cases' MSP ranges
    assert msp[~valid.memorization].mean() < adaptive.tau < msp[valid.memorization].mean()
    # a NaN indicator reads as the threshold (gate 0.5): it made the row's every score NaN, an empty list
    from fusion.indicators import Indicators

    broken = Indicators(test.indicators.names, test.indicators.values.copy())
    broken.values[0, list(broken.names).index("id_msp")] = np.nan
    assert adaptive.gates(test.cands, broken).gate[0] == 0.5
    assert np.isfinite(adaptive.fuse(test.cands, broken)[0][test.cands.valid[0]]).all()
    # and a NaN in the validation indicators does not poison the fit (tau was NaN: every gate NaN)
    bad_valid = Indicators(valid.indicators.names, valid.indicators.values.copy())
    bad_valid.values[0, list(bad_valid.names).index("id_msp")] = np.nan
    refit = AdaptiveFusion().fit(valid.cands, valid.targets, bad_valid)
    assert np.isfinite(refit.tau) and np.isfinite(refit.fuse(test.cands, test.indicators)[test.cands.valid]).all()


def test_learned_gate_finds_a_signal_msp_does_not_carry(hidden_case):
    valid, test = hidden_case
    adaptive = AdaptiveFusion().fit(valid.cands, valid.targets, valid.indicators)
    learned = LearnedGateFusion().fit(valid.cands, valid.targets, valid.indicators)
    n_ad = evaluate_fused(test.cands, adaptive.fuse(test.cands, test.indicators), test.targets)["ndcg@10"]
    n_lg = evaluate_fused(test.cands, learned.fuse(test.cands, test.indicators), test.targets)["ndcg@10"]
    single = max(ndcg(test.id_topk, test.targets), ndcg(test.gr_topk, test.targets))
    assert n_lg > n_ad + 0.05 and n_lg > single + 0.3
    g = learned.gates(test.cands, test.indicators)
    assert ((g.gate > 0.5) == test.memorization).mean() > 0.8
    # the per-instance explanation names the feature that drove the gate
    top = np.abs(g.contributions).argmax(1)
    assert np.mean(np.array(g.features.names)[top] == "memo_signal") > 0.5
    assert "memo_signal" in g.explain(0) and "trust" in g.explain(0)


def test_fixed_weight_picks_the_better_model():
    valid = simulate_outputs(n=600, seed=5, memorization_share=1.0)  # the ID model is always right
    fixed = FixedWeightFusion().fit(valid.cands, valid.targets)
    assert fixed.alpha >= 0.6
    assert fixed.params()["alpha"] == fixed.alpha and np.all(fixed.gates(valid.cands).gate == fixed.alpha)
    valid = simulate_outputs(n=600, seed=5, memorization_share=0.0)
    assert FixedWeightFusion().fit(valid.cands, valid.targets).alpha <= 0.4


@pytest.mark.parametrize("scale", SCALES)
def test_learned_gate_scales_are_seeded_and_deterministic(msp_case, scale):
    valid, test = msp_case
    a = LearnedGateFusion(scale=scale, max_epochs=5).fit(valid.cands, valid.targets, valid.indicators)
    b = LearnedGateFusion(scale=scale, max_epochs=5).fit(valid.cands, valid.targets, valid.indicators)
    assert params_equal(a.params(), b.params())
    fused = a.fuse(test.cands, test.indicators)
    assert fused.shape == test.cands.items.shape and np.isfinite(fused[test.cands.valid]).all()


def test_no_test_targets_in_fitting(msp_case):
    """Fitting with the test targets shuffled leaves every fitted parameter (and gate) unchanged: the API
    never passes test targets to fitting, and the inputs built for test carry none."""
    valid, test = msp_case

    def pipeline(test_targets):
        methods = [FixedWeightFusion(), AdaptiveFusion(), LearnedGateFusion(max_epochs=10)]
        out = run_posthoc(methods, valid.cands, valid.targets, valid.indicators, test.cands, test.indicators)
        return out, results_by_label({n: o.topk for n, o in out.items()}, test_targets)

    shuffled = np.random.default_rng(0).permutation(test.targets)
    a, res_a = pipeline(test.targets)
    b, res_b = pipeline(shuffled)
    for name in a:
        assert params_equal(a[name].params, b[name].params), name
        np.testing.assert_array_equal(a[name].gates.gate, b[name].gates.gate)
        np.testing.assert_array_equal(a[name].topk, b[name].topk)
    assert res_a["adaptive"]["all"]["ndcg@10"] > res_b["adaptive"]["all"]["ndcg@10"]  # only evaluation differs
    # and the fit does use validation targets: shuffling those changes the result
    moved = LearnedGateFusion(max_epochs=10).fit(valid.cands, np.random.default_rng(1).permutation(valid.targets),
                                                 valid.indicators)
    assert not params_equal(moved.params(), a["learned_gate"].params)


def test_the_inputs_built_for_test_never_read_its_targets():
    """model_inputs (candidates, both towers' scores, indicators) on real towers: the same with the test
    targets shuffled; a target slipped among the candidates or into the statistics would show."""
    from dataclasses import replace as dc_replace

    from fusion.adapters import model_inputs
    from fusion.indicators import TrainStats
    from genrec.generative import train_generative
    from genrec.sasrec import train_sasrec
    from tests.test_fusion_joint import SMALL_GR, SMALL_ID, synthetic_split

    _, split, table = synthetic_split(num_users=80)
    sas = train_sasrec(split, dc_replace(SMALL_ID, max_epochs=1, max_len=20, num_threads=1), progress=False).model
    gen = train_generative(split, table, dc_replace(SMALL_GR, max_epochs=1, max_len=20, num_threads=1,
                                                    eval_beam=10), progress=False).model
    stats = TrainStats(split.train, split.num_items, table.codes)
    test = split.test
    shuffled = dc_replace(test, targets=np.random.default_rng(0).permutation(test.targets))
    a, b = (model_inputs(sas, gen, inst, stats, k=10, beam=10) for inst in (test, shuffled))
    for field in ("items", "id_scores", "gr_scores", "id_in_topk", "gr_in_topk"):
        np.testing.assert_array_equal(getattr(a.cands, field), getattr(b.cands, field))
    np.testing.assert_array_equal(a.indicators.values, b.indicators.values)


def test_report_table(msp_case):
    valid, test = msp_case
    topk = {"sasrec": single_model_topk(test.cands, "id"), "gr": single_model_topk(test.cands, "gr")}
    np.testing.assert_array_equal(topk["sasrec"], test.id_topk)
    res = results_by_label(topk, test.targets)
    assert abs(res["gr"]["all"]["ndcg@10"] - ndcg(test.gr_topk, test.targets)) < 1e-12
    md = results_markdown(res)
    assert md.startswith("| category") and "sasrec N@10" in md


def test_learned_gate_stops_on_a_diverged_loss(msp_case):
    from genrec.errors import TrainingDivergedError

    valid, _ = msp_case
    gate = LearnedGateFusion(lr=1e30, max_epochs=3)
    with pytest.raises(TrainingDivergedError, match=r"learned_gate gate training diverged: the loss is nan at epoch"):
        gate.fit(valid.cands, valid.targets, valid.indicators)


@pytest.mark.parametrize("option", ["max_epochs", "patience", "hidden", "batch_size", "k"])
def test_a_gate_that_could_not_train_is_refused_when_built(option):
    """max_epochs=0 returned the random initial head as if it were fitted."""
    with pytest.raises(ValueError, match=rf"{option} must be >= 1, got 0"):
        LearnedGateFusion(**{option: 0})
    with pytest.raises(ValueError, match="lr must be > 0, got 0"):
        LearnedGateFusion(lr=0)
