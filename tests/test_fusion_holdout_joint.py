"""The held-out-gate joint schedule (fusion.holdout_joint) on the synthetic memorization /
generalization dataset: what the gate is fitted on, what it learns, resume, leakage."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import mannwhitneyu

import fusion.holdout_joint as hj
from fusion.holdout_joint import (HoldoutJointConfig, holdout_transitions, load_holdout_joint, save_holdout_joint,
                                  train_holdout_joint)
from fusion.methods import SCALES, LearnedGateFusion, params_equal
from fusion.report import single_model_topk
from genrec.artifacts import load_json
from genrec.errors import CheckpointError, ConfigError, DataFormatError
from genrec.generative import train_generative
from genrec.metrics import metrics_from_ranks, ranks_from_topk
from genrec.sasrec import load_sasrec, train_sasrec
from genrec.splits import Instances
from genrec.memorization import label_split
from tests.test_fusion_joint import SMALL_GR, SMALL_ID, synthetic_split

torch.set_num_threads(1)
EPOCHS = 8
# one validation, at the last epoch: the towers do not depend on which epoch validation prefers
TOWERS = dict(max_len=20, max_epochs=EPOCHS, lr=1e-2, patience=100, eval_every=EPOCHS, num_threads=1)
CONFIG = HoldoutJointConfig(sasrec=replace(SMALL_ID, **TOWERS), generative=replace(SMALL_GR, **TOWERS), k=20, beam=20,
                            towers="separate", holdout_share=1.0)
# the towers trained together with fusion.joint's mixture objective, same epochs
JOINT_TOWERS = replace(CONFIG, towers="joint", joint=dict(batch_size=128, lr=1e-2, max_epochs=EPOCHS, patience=100,
                                                          eval_every=EPOCHS, seed=0, num_threads=1, aux_weight=0.0,
                                                          lr_schedule="constant", warmup_epochs=0.0))


def auc(pos: np.ndarray, neg: np.ndarray) -> float:
    return mannwhitneyu(pos, neg).statistic / (len(pos) * len(neg))


def test_holdout_transitions_leave_out_each_last_training_item():
    ds, split, _ = synthetic_split(num_users=40)
    split = replace(split, train=[np.array([0, 1, 2, 3]), np.array([4, 5])] + split.train[2:],
                    max_history=2)
    short, held = holdout_transitions(split)
    np.testing.assert_array_equal(short[0], [0, 1, 2])
    np.testing.assert_array_equal(short[1], [4, 5])  # too short to give a transition: kept whole
    assert held.users[0] == split.users[0] and split.users[1] not in held.users[:1]
    np.testing.assert_array_equal(held.histories[0], [1, 2])  # the history window
    assert held.targets[0] == 3
    assert len(held) == sum(len(s) >= 3 for s in split.train)


@pytest.mark.parametrize("config", [CONFIG, JOINT_TOWERS], ids=["separate", "joint"])
def test_the_fused_model_beats_both_towers_and_its_gate_reads_memorization(config):
    """Seed 0 measured, test N@10: SASRec 0.53, generative 0.36 (each alone, trained on all the training
    data with the same settings); holdout joint 0.62 with separately trained towers, 0.72 with towers
    trained together. The gate's AUC, memorization vs generalization instances (genrec.memorization
    labels): 0.69 with separate towers (it trusts SASRec more where the transition was seen), 0.24 with
    jointly trained ones (their ID tower is no longer the memorizing one: see BENCHMARKS.md)."""
    ds, split, table = synthetic_split()
    result = train_holdout_joint(split, table, config)
    model = result.model
    joint = metrics_from_ranks(model.ranks(split.test), (10,))["ndcg@10"]
    sas = train_sasrec(split, CONFIG.sasrec, progress=False).model
    gen = train_generative(split, table, CONFIG.generative, progress=False).model
    # each tower alone: its own top-k list
    alone = hj.HoldoutJoint(sas, gen, model.gate, model.stats, CONFIG).inputs(split.test)
    single = {m: metrics_from_ranks(ranks_from_topk(single_model_topk(alone.cands, m, 20), split.test.targets),
                                    (10,))["ndcg@10"] for m in ("id", "gr")}
    assert joint > max(single.values()) + 0.05, (joint, single)
    assert result.holdout == sum(len(s) >= 3 for s in split.train)
    assert set(result.selection) == {f"{t}/{s}" for t in ("stage1", "refreshed") for s in SCALES}
    assert result.valid["ndcg@10"] == max(result.selection.values())
    if config.towers == "separate":
        _, gates = model.topk(split.test)
        groups = label_split(split)["test"].groups()
        assert auc(gates.gate[groups == "memorization"], gates.gate[groups == "generalization"]) >= 0.6


def test_where_unseen_pairs_also_end_training_sequences_the_gate_separates_the_kinds():
    """The default synthetic data puts never-seen rule pairs only at validation and test, so the held-out
    transitions the gate is fitted on hold none (the test above: AUC 0.69). With
    ``make_synthetic(train_unseen_share=1)`` some users' last training transitions are such pairs, as
    in real data: then the gate's AUC for memorization vs generalization test instances is 0.93 on
    seed 0 (0.91-0.93 over seeds 0-2 at memorization share 0.5, 0.89-0.91 at 0.8:
    ``bench/joint_synthetic.py --train-unseen-share 1``), and the fused model beats both towers."""
    ds, split, table = synthetic_split(train_unseen_share=1.0)
    result = train_holdout_joint(split, table, CONFIG)
    items, gates = result.model.topk(split.test)
    groups = label_split(split)["test"].groups()
    assert auc(gates.gate[groups == "memorization"], gates.gate[groups == "generalization"]) >= 0.9
    joint = metrics_from_ranks(ranks_from_topk(items, split.test.targets), (10,))["ndcg@10"]
    sas = train_sasrec(split, CONFIG.sasrec, progress=False).model
    gen = train_generative(split, table, CONFIG.generative, progress=False).model
    alone = hj.HoldoutJoint(sas, gen, result.model.gate, result.model.stats, CONFIG).inputs(split.test)
    single = {m: metrics_from_ranks(ranks_from_topk(single_model_topk(alone.cands, m, 20), split.test.targets),
                                    (10,))["ndcg@10"] for m in ("id", "gr")}
    assert joint > max(single.values()) + 0.05, (joint, single)


def test_the_gate_never_sees_a_validation_or_test_target(monkeypatch):
    ds, split, table = synthetic_split(num_users=200)
    seen = []
    fit = LearnedGateFusion.fit

    def spy(self, cands, targets, indicators=None):
        seen.append(np.array(targets))
        return fit(self, cands, targets, indicators)

    monkeypatch.setattr(LearnedGateFusion, "fit", spy)
    config = replace(CONFIG, refresh_epochs=0)
    first = train_holdout_joint(split, table, config)
    assert len(seen) == len(SCALES)  # one gate per scale, all on the held-out training transitions
    for targets in seen:
        np.testing.assert_array_equal(targets, [s[-1] for s in split.train if len(s) >= 3])
    # other validation and test targets: the same gates, to the last weight (validation may pick another
    # scale: choosing among them is what it is for)
    rng = np.random.default_rng(1)
    moved = replace(split, valid=replace(split.valid, targets=rng.permutation(split.valid.targets)),
                    test=replace(split.test, targets=rng.permutation(split.test.targets)))
    second = train_holdout_joint(moved, table, config)
    assert set(first.gates) == set(second.gates) == set(SCALES)
    for scale in SCALES:
        assert params_equal(first.gates[scale].params(), second.gates[scale].params())


def test_resume_after_a_kill_reproduces_the_uninterrupted_run(tmp_path, monkeypatch):
    ds, split, table = synthetic_split(num_users=200)
    full = train_holdout_joint(split, table, CONFIG, out_dir=tmp_path / "full")
    real_fit, real_refresh = LearnedGateFusion.fit, hj.train_generative

    def killed(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(LearnedGateFusion, "fit", killed)  # killed in the gate stage, after both towers
    with pytest.raises(KeyboardInterrupt):
        train_holdout_joint(split, table, CONFIG, out_dir=tmp_path / "killed")
    monkeypatch.setattr(LearnedGateFusion, "fit", real_fit)
    calls = []

    def refresh_killed(*a, **k):  # the second generative training is the refresh: killed there
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_refresh(*a, **k)

    monkeypatch.setattr(hj, "train_generative", refresh_killed)
    with pytest.raises(KeyboardInterrupt):
        train_holdout_joint(split, table, CONFIG, out_dir=tmp_path / "killed")  # towers loaded, gate fitted
    assert (tmp_path / "killed" / "gates.pt").is_file()
    monkeypatch.setattr(hj, "train_generative", real_refresh)
    monkeypatch.setattr(LearnedGateFusion, "fit", killed)  # the saved gates are reused, not refitted
    resumed = train_holdout_joint(split, table, CONFIG, out_dir=tmp_path / "killed")
    assert params_equal(full.model.gate.params(), resumed.model.gate.params())
    assert resumed.selection == full.selection and resumed.valid == full.valid
    np.testing.assert_array_equal(full.model.ranks(split.test), resumed.model.ranks(split.test))
    # and the saved model ranks the same
    loaded = load_holdout_joint(save_holdout_joint(resumed.model, tmp_path / "saved"), split.train)
    np.testing.assert_array_equal(loaded.ranks(split.test), resumed.model.ranks(split.test))


def test_a_rerun_with_other_gate_settings_refits_the_gates_and_other_held_out_transitions_are_refused(tmp_path):
    ds, split, table = synthetic_split(num_users=120)
    quick = replace(CONFIG, refresh_epochs=0, scale="minmax")
    first = train_holdout_joint(split, table, quick, out_dir=tmp_path / "run")
    assert set(first.selection) == {"stage1/minmax"}
    again = train_holdout_joint(split, table, replace(quick, scale="auto"), out_dir=tmp_path / "run")
    assert set(again.selection) == {f"stage1/{s}" for s in SCALES}  # refit for every scale, not the saved one
    assert again.selection["stage1/minmax"] == first.selection["stage1/minmax"]  # the same towers, resumed
    with pytest.raises(CheckpointError, match=r"held_out.json: this directory's towers held out other transitions"):
        train_holdout_joint(split, table, replace(quick, holdout_seed=1), out_dir=tmp_path / "run")



def test_a_rerun_whose_stage1_towers_train_on_refits_the_gates_and_restarts_the_refresh(tmp_path, monkeypatch):
    """max_epochs may grow on a rerun: the stage-1 towers resume and train on, and the gates fitted on the
    old towers' outputs were reused (their settings matched); the refresh resumed from the old towers."""
    ds, split, table = synthetic_split(num_users=120)
    epochs = lambda n: replace(CONFIG, scale="minmax", refresh_epochs=1,  # noqa: E731
                               sasrec=replace(CONFIG.sasrec, max_epochs=n), generative=replace(CONFIG.generative,
                                                                                               max_epochs=n))
    train_holdout_joint(split, table, epochs(1), out_dir=tmp_path / "run")
    fits, inits = [], []
    real_fit, real_sasrec = LearnedGateFusion.fit, hj.train_sasrec

    def counted(self, *a, **k):
        fits.append(1)
        return real_fit(self, *a, **k)

    def sasrec(split, config, out, progress, init=None, **kw):
        inits.append((Path(out).name, init is not None and (Path(out) / "last.pt").is_file()))
        return real_sasrec(split, config, out, progress, init=init, **kw)

    monkeypatch.setattr(LearnedGateFusion, "fit", counted)
    monkeypatch.setattr(hj, "train_sasrec", sasrec)
    train_holdout_joint(split, table, epochs(1), out_dir=tmp_path / "run")  # nothing changed: all reused
    assert fits == [] and inits == [("sasrec", False), ("sasrec_refresh", True)]
    fits.clear(), inits.clear()
    again = train_holdout_joint(split, table, epochs(2), out_dir=tmp_path / "run")
    assert fits == [1]  # refitted on the stage-1 towers as they are now
    assert inits == [("sasrec", False), ("sasrec_refresh", False)]  # the refresh started again from them
    stage1 = (load_sasrec(tmp_path / "run" / "sasrec" / "best.pt"),
              hj.load_generative(tmp_path / "run" / "generative" / "best.pt"))
    assert load_json(tmp_path / "run" / "gates.json")["stage1_towers"] == hj._towers_digest(*stage1)
    assert set(again.selection) == {f"{t}/minmax" for t in ("stage1", "refreshed")}


def test_retrained_towers_are_the_separately_trained_ones_under_the_held_out_gate(tmp_path):
    """``retrain``: towers trained from scratch on every training transition (the same weights as
    training them alone), fused by the gate fitted on the stage-1 towers' held-out transitions;
    validation chooses among the three tower sets."""
    from fusion.methods import params_equal as same

    ds, split, table = synthetic_split(num_users=200)
    config = replace(CONFIG, refresh_epochs=0, retrain=True)
    result = train_holdout_joint(split, table, config, out_dir=tmp_path / "run")
    assert set(result.selection) == {f"{t}/{s}" for t in ("stage1", "retrained") for s in SCALES}
    assert result.towers == max(result.selection, key=result.selection.get).split("/")[0]
    alone = train_sasrec(split, CONFIG.sasrec, progress=False).model
    retrained = load_sasrec(tmp_path / "run" / "sasrec_retrain").state_dict()
    for name, value in alone.state_dict().items():
        assert torch.equal(value, retrained[name]), name
    stage1 = load_sasrec(tmp_path / "run" / "sasrec").state_dict()
    assert not all(torch.equal(v, stage1[n]) for n, v in alone.state_dict().items())  # stage 1 lacked transitions
    assert same(result.gates[result.scale].params(), result.model.gate.params())


def test_full_towers_stand_for_the_retrained_ones(tmp_path):
    ds, split, table = synthetic_split(num_users=200)
    config = replace(CONFIG, refresh_epochs=0, retrain=True)
    sas = train_sasrec(split, CONFIG.sasrec, progress=False).model
    gen = train_generative(split, table, CONFIG.generative, progress=False).model
    given = train_holdout_joint(split, table, config, out_dir=tmp_path / "given", full_towers=(sas, gen))
    trained = train_holdout_joint(split, table, config, out_dir=tmp_path / "trained")
    assert not (tmp_path / "given" / "sasrec_retrain").exists() and (tmp_path / "trained" / "sasrec_retrain").exists()
    assert given.selection == trained.selection  # the same towers either way: same seed, same data
    with pytest.raises(ValueError, match="retrain=True and towers='separate'"):
        train_holdout_joint(split, table, replace(config, retrain=False), full_towers=(sas, gen))


def test_both_tower_trainings_and_validation_chooses(tmp_path):
    """``towers="both"``: each pair trained exactly as alone (the same validation scores as the
    single-training runs, candidate by candidate), each with its own gate; the kept one is the best
    on validation, and it saves and loads as a model of its own kind."""
    ds, split, table = synthetic_split(num_users=200)
    config = replace(JOINT_TOWERS, refresh_epochs=0, retrain=True)
    both = train_holdout_joint(split, table, replace(config, towers="both"), out_dir=tmp_path / "both")
    alone = {kind: train_holdout_joint(split, table, replace(config, towers=kind)) for kind in ("separate", "joint")}
    expected = {f"separate:{t}/{s}": alone["separate"].selection[f"{t}/{s}"] for t in ("stage1", "retrained")
                for s in SCALES}
    expected.update({f"joint:stage1/{s}": alone["joint"].selection[f"stage1/{s}"] for s in SCALES})
    assert both.selection == pytest.approx(expected, abs=1e-12)  # no retrained joint pair: retrain is the separate one's
    assert list(both.selection) == list(expected)  # listed separate pair first (ties go to it), whatever trained first
    best = max(both.selection, key=both.selection.get)
    assert best == f"{both.tower_training}:{both.towers}/{both.scale}"
    assert both.model.config.towers == both.tower_training
    assert params_equal(both.model.gate.params(), alone[both.tower_training].gates[both.scale].params())
    for kind in ("separate", "joint"):
        assert (tmp_path / "both" / f"gates_{kind}.pt").is_file()
    loaded = load_holdout_joint(save_holdout_joint(both.model, tmp_path / "saved"), split.train)
    np.testing.assert_array_equal(loaded.ranks(split.test), both.model.ranks(split.test))
    resumed = train_holdout_joint(split, table, replace(config, towers="both"), out_dir=tmp_path / "both")
    assert resumed.selection == both.selection


def test_config_checks():
    with pytest.raises(ValueError, match="scale"):
        HoldoutJointConfig(scale="product")
    with pytest.raises(TypeError):
        HoldoutJointConfig(gate={"no_such_field": 1})
    with pytest.raises(ValueError, match="refresh"):
        HoldoutJointConfig(refresh_epochs=-1)
    with pytest.raises(ValueError, match="towers must be one of .*'both'"):
        HoldoutJointConfig(towers="shared")
    with pytest.raises(ValueError, match="k must be >= 10.*ndcg@10; got 5"):
        HoldoutJointConfig(k=5, beam=5)
    assert HoldoutJointConfig(sasrec={"hidden": 16}).sasrec.hidden == 16
    from genrec.recipe import config_from_dict  # the joint model's list must reach every reported cut-off
    with pytest.raises(ConfigError, match=r"'fusion.joint_config.k' must be at least max\(report.ks\) \(50\)"):
        config_from_dict({"fusion": {"k": 50, "joint": True, "joint_config": {"k": 20}}, "report": {"ks": [10, 50]}})
    ds, split, table = synthetic_split(num_users=40)
    tiny = replace(split, train=[s[:2] for s in split.train])
    with pytest.raises(DataFormatError, match="3 or more items"):
        train_holdout_joint(tiny, table, CONFIG)
    with pytest.raises(ConfigError, match=r"holdout_share 1e-09 with holdout_seed 0 drew none of the \d+ training "):
        train_holdout_joint(split, table, replace(CONFIG, holdout_share=1e-9))
    assert isinstance(holdout_transitions(tiny)[1], Instances)


def test_settings_the_model_sets_itself_are_refused_not_overwritten():
    """joint.max_len / mode / towers and gate.scale / name were overwritten without a word (a recipe's
    fusion.joint_config.joint.max_len passed validation and was ignored); a beam below k was widened."""
    for bad, name in (({"joint": {"max_len": 7}}, "joint.max_len"), ({"joint": {"mode": "id"}}, "joint.mode"),
                      ({"gate": {"scale": "logprob"}}, "gate.scale"), ({"gate": {"name": "g"}}, "gate.name")):
        with pytest.raises(ValueError, match=rf"{name} cannot be set: the held-out joint model sets them"):
            HoldoutJointConfig(**bad)
    with pytest.raises(ValueError, match=r"beam must be >= k \(20\), the length of the candidate lists; got 10"):
        HoldoutJointConfig(k=20, beam=10)
    assert HoldoutJointConfig(joint={"lr": 1e-3}).joint_config().lr == 1e-3
    from genrec.recipe import config_from_dict
    from genrec.recipe.config import joint_config

    with pytest.raises(ConfigError, match=r"'fusion.joint_config'.*joint.max_len cannot be set"):
        config_from_dict({"fusion": {"joint": True, "joint_config": {"joint": {"max_len": 7}}}})
    # a longer joint list than fusion.k decodes that wide a beam (the beam was widened to it anyway)
    config = config_from_dict({}, overrides=["fusion.joint=true", "fusion.k=20", "fusion.beam=20",
                                             "fusion.joint_config.k=30"])
    assert (joint_config(config).k, joint_config(config).beam) == (30, 30)
