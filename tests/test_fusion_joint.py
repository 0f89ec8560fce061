"""Joint training on the synthetic memorization / generalization dataset, and the Beauty benchmark's
pieces on synthetic data with tiny models."""

import dataclasses
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from fusion.joint import (TARGET_SCOPE_FEATURES, JointConfig, JointModel, evaluate_joint, gr_catalogue_log_probs,
                          gr_target_log_probs, joint_gates, train_joint)
from genrec import leave_one_out, make_synthetic
from genrec.generative import GenerativeConfig, HierarchicalGenerative, recommend, save_generative, score_items
from genrec.batching import histories_to_tokens
from genrec.sasrec import SASRec, SASRecConfig, save_sasrec
from genrec.synthetic import synthetic_info

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
SMALL_ID = SASRecConfig(hidden=32, num_blocks=1, dropout=0.2)
SMALL_GR = GenerativeConfig(hidden=32, num_blocks=1, num_heads=2, head_layers=1, dropout=0.1, head_dropout=0.0)
SYN = dict(num_brands=8, num_categories=6, num_attributes=4)


def synthetic_split(num_users=600, seed=0, **kw):
    ds = make_synthetic(num_users=num_users, seed=seed, **{**SYN, **kw})
    info = synthetic_info(ds)
    codes = np.stack([info.category, info.brand, info.attribute], 1)  # ground-truth semantic IDs
    sizes = [int(codes[:, j].max()) + 1 for j in range(3)]
    return ds, leave_one_out(ds, max_history=20), SimpleNamespace(codes=codes, codebook_sizes=sizes)


def test_catalogue_log_probs_match_teacher_forced_scores():
    ds, split, table = synthetic_split(num_users=60)
    torch.manual_seed(0)
    gr = HierarchicalGenerative(table.codes, table.codebook_sizes, SMALL_GR).eval()
    hist = split.test.histories[:4]
    tokens = histories_to_tokens(hist, SMALL_GR.max_len)
    with torch.no_grad():
        lp = gr_catalogue_log_probs(gr, gr(tokens)[:, -1], seen=tokens).numpy()
    ref = score_items(gr, hist, np.tile(np.arange(ds.num_items), (4, 1)))
    np.testing.assert_allclose(lp, ref, atol=1e-4)
    np.testing.assert_allclose(np.exp(lp).sum(1), 1.0, atol=1e-4)


def test_joint_training_beats_both_towers_alone():
    """Same data order, same 8 epochs: measured test N@10 (seeds 0/1/2) id 0.54/0.55/0.55,
    gr 0.39/0.47/0.48, joint (mixture) 0.72/0.75/0.72."""
    _, split, table = synthetic_split()
    test = {}
    for mode in ("id", "gr", "joint"):
        cfg = JointConfig(mode=mode, id_tower=SMALL_ID, gr_tower=SMALL_GR, max_len=20, batch_size=128, lr=1e-2,
                          max_epochs=8, patience=100, seed=0)
        result = train_joint(split, table, cfg)
        test[mode] = evaluate_joint(result.model, split.test)["ndcg@10"]
        if mode == "joint":
            gates = joint_gates(result.model, split.test.subset(np.arange(50)))
            assert gates.gate.shape == (50,) and ((gates.gate >= 0) & (gates.gate <= 1)).all()
            assert "trust" in gates.explain(0)
    assert test["joint"] > max(test["id"], test["gr"]) + 0.05, test


def test_target_log_probs_are_the_catalogue_ones_or_a_lower_bound():
    ds, split, table = synthetic_split(num_users=60)
    torch.manual_seed(0)
    gr = HierarchicalGenerative(table.codes, table.codebook_sizes, SMALL_GR).eval()
    tokens = histories_to_tokens(split.test.histories[:6], SMALL_GR.max_len)
    targets = torch.from_numpy(np.r_[split.test.targets[:5], tokens[5, -1].item() - 1])  # the last: a repeat
    with torch.no_grad():
        hidden = gr(tokens)[:, -1]
        full = gr_catalogue_log_probs(gr, hidden)  # code-level, no repeat gate
        exact = gr_catalogue_log_probs(gr, hidden, seen=tokens)  # with the explore/repeat mixture
        plain = gr_target_log_probs(gr, hidden, targets)
        bound = gr_target_log_probs(gr, hidden, targets, seen=tokens)
    rows = torch.arange(6)
    np.testing.assert_allclose(plain, full[rows, targets], atol=1e-5)
    assert (bound <= exact[rows, targets] + 1e-5).all()
    assert (bound < plain).all()  # times r or 1 - r


def test_target_scope_trains_scales_and_fuses_on_candidates():
    """The target scope (what a large catalogue gets) on the synthetic data: trains, beats both
    towers, and its evaluation scores are the mixture on the union of both towers' candidates."""
    _, split, table = synthetic_split()
    test = {}
    for mode in ("id", "gr", "joint"):
        cfg = JointConfig(mode=mode, gr_scope="target", candidates=20, id_tower=SMALL_ID, gr_tower=SMALL_GR,
                          max_len=20, batch_size=128, lr=1e-2, max_epochs=8, patience=100, seed=0)
        result = train_joint(split, table, cfg)
        test[mode] = evaluate_joint(result.model, split.test)["ndcg@10"]
    model = result.model
    assert model.scope == "target" and model.feature_names == TARGET_SCOPE_FEATURES
    hist = split.test.histories[:8]
    fused, gate, _ = model.scores(hist)
    with torch.no_grad():
        lp_id, _, feats = model.log_probs(histories_to_tokens(hist, 20))
        log_g = torch.nn.functional.logsigmoid(model.gate_logit(feats))[:, None]
    beam = recommend(model.gr_tower, hist, beam_size=20, top_k=20).items
    union = np.concatenate([beam, lp_id.topk(20, -1).indices.numpy()], 1)
    gr = torch.from_numpy(score_items(model.gr_tower, hist, union))
    expect = torch.logaddexp(log_g + lp_id.gather(1, torch.from_numpy(union)), torch.log1p(-log_g.exp()) + gr)
    np.testing.assert_allclose(fused.gather(1, torch.from_numpy(union)), expect, atol=1e-4)
    outside = np.ones(fused.shape, bool)
    np.put_along_axis(outside, union, False, 1)
    np.testing.assert_allclose(fused[outside], (log_g + lp_id)[outside], atol=1e-5)  # no generative mass
    assert ((gate >= 0) & (gate <= 1)).all() and (fused.exp().sum(1) <= 1 + 1e-4).all()
    model.train()
    report = joint_gates(model, split.test.subset(np.arange(8)))  # the gate without the beam: same values
    np.testing.assert_allclose(report.gate, gate.numpy(), atol=1e-6)
    assert model.training  # left in training mode as it came (it was left in eval mode)
    model.eval()
    assert test["joint"] > max(test["id"], test["gr"]), test
    with pytest.raises(ValueError, match="mixture"):
        JointConfig(gr_scope="target", mixing="logit")
    assert JointModel(split.num_items, table.codes, table.codebook_sizes,
                      JointConfig(id_tower=SMALL_ID, gr_tower=SMALL_GR, catalogue_max_items=10)).scope == "target"


def test_joint_config_checks():
    with pytest.raises(ValueError):
        JointConfig(mode="both")
    with pytest.raises(ValueError, match="aux_weight must be a finite number >= 0, got -0.5"):
        JointConfig(aux_weight=-0.5)
    with pytest.raises(ValueError, match="config key 'batch_size' must be an integer >= 1, got 0"):
        JointConfig(batch_size=0)  # was a ZeroDivisionError in training
    cfg = JointConfig(id_tower={"hidden": 16}, gr_tower={"hidden": 16})
    assert cfg.id_tower.hidden == 16 and cfg.gr_tower.hidden == 16
    assert cfg.nonfinite_loss == "error"


def test_the_end_to_end_joint_model_never_trains_on_a_validation_target_and_resumes_exactly(tmp_path, caplog):
    """Validation only chooses the epoch: with one validation at the end, shuffled validation targets
    give the same weights. A run killed after epoch 1 (its last.pt) and resumed ends as the straight
    two-epoch run, gate batch-norm statistics and RNG streams included."""
    from dataclasses import replace as dc_replace

    from genrec.splits import Instances

    ds, split, table = synthetic_split(num_users=80)
    cfg = JointConfig(id_tower=SMALL_ID, gr_tower=SMALL_GR, max_len=20, batch_size=64, num_threads=1, lr=1e-2,
                      max_epochs=2, eval_every=2, patience=100, seed=0)
    straight = train_joint(split, table, cfg).model
    v = split.valid
    shuffled = dc_replace(split, valid=Instances(users=v.users, histories=v.histories,
                                                 targets=np.random.default_rng(0).permutation(v.targets)))
    for a, b in zip(straight.state_dict().values(), train_joint(shuffled, table, cfg).model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    first = train_joint(split, table, dc_replace(cfg, max_epochs=1), out_dir=tmp_path).model
    assert torch.load(tmp_path / "last.pt", weights_only=True)["gr_scope"] == first.scope == "catalogue"
    with caplog.at_level("INFO", logger="genrec.training"):
        resumed = train_joint(split, table, cfg, out_dir=tmp_path).model
    assert "resumed joint[joint] from" in caplog.text and "at epoch 1" in caplog.text
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # a resume continues under the scope the run trained with, whatever the rule would pick now
    ckpt = torch.load(tmp_path / "last.pt", weights_only=True)
    ckpt["gr_scope"] = "target"
    torch.save(ckpt, tmp_path / "last.pt")
    assert train_joint(split, table, dc_replace(cfg, max_epochs=3), out_dir=tmp_path).model.scope == "target"


def test_joint_divergence_resume_and_bad_histories(tmp_path):
    from genrec.artifacts import load_checkpoint
    from genrec.errors import TrainingDivergedError
    from genrec.splits import Instances

    ds, split, table = synthetic_split(num_users=60)
    cfg = dict(id_tower=SMALL_ID, gr_tower=SMALL_GR, max_len=20, batch_size=64, num_threads=1)
    with pytest.raises(TrainingDivergedError, match=r"^joint\[joint\] training diverged: the loss is (nan|inf) at "
                                                    r"epoch \d+, step \d+ of \d+"):
        train_joint(split, table, JointConfig(**cfg, lr=1e6, max_epochs=3))
    result = train_joint(split, table, JointConfig(**cfg, max_epochs=2), out_dir=tmp_path)
    last = load_checkpoint(tmp_path / "last.pt")  # weights_only: codes stored as a tensor
    np.testing.assert_array_equal(last["codes"].numpy(), table.codes)
    assert last["config"]["nonfinite_loss"] == "error"
    bad = Instances(users=np.arange(2), histories=[np.array([1, 2]), np.array([-1, 3])], targets=np.array([3, 4]))
    with pytest.raises(ValueError, match="history 1 holds item index -1, outside the catalogue's"):
        evaluate_joint(result.model, bad)
    with pytest.raises(ValueError, match="history 1 holds item index -1"):
        joint_gates(result.model, bad)


def test_fusion_benchmark_runs_on_synthetic(tmp_path, monkeypatch):
    spec = "synthetic:num_users=150,num_brands=4,num_categories=4,num_attributes=4,seed=0"
    ds, split, table = synthetic_split(num_users=150, num_brands=4, num_categories=4, num_attributes=4)
    torch.manual_seed(0)
    save_sasrec(SASRec(ds.num_items, SASRecConfig(hidden=16, num_blocks=1)), tmp_path / "sasrec.pt")
    save_generative(HierarchicalGenerative(table.codes, table.codebook_sizes,
                                           GenerativeConfig(hidden=16, num_blocks=1, num_heads=1, head_layers=1)),
                    tmp_path / "gr.pt")
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    import fusion_beauty

    summary = fusion_beauty.main(["--data", spec, "--sasrec", str(tmp_path / "sasrec.pt"), "--generative",
                                  str(tmp_path / "gr.pt"), "--k", "10", "--beam", "10", "--threads", "1",
                                  "--scales", "minmax", "--out", str(tmp_path / "out")])
    res = summary["results"]
    assert set(res) == {"sasrec", "gr", "fixed", "adaptive", "learned_minmax"}
    assert {"all", "memorization", "generalization", "uncategorized"} <= set(res["fixed"])
    assert (tmp_path / "out" / "table.md").exists() and summary["seconds"]["fusion"] < 60
    cv = summary["cross_fitted_valid_ndcg@10"]  # the bar's "best fusion" is validation's, not test's
    assert set(cv) == {"fixed", "adaptive", "learned_minmax"} and summary["chosen_on_validation"] == max(cv, key=cv.get)
    sys.modules.pop("fusion_beauty", None)


def test_joint_benchmark_runs_on_synthetic(tmp_path, monkeypatch):
    spec = "synthetic:num_users=150,num_brands=4,num_categories=4,num_attributes=4,seed=0"
    _, _, table = synthetic_split(num_users=150, num_brands=4, num_categories=4, num_attributes=4)
    from quantize.semantic_ids import SemanticIdTable

    SemanticIdTable.from_codes(table.codes, table.codebook_sizes).save(tmp_path / "sid.json")
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    import joint_beauty

    summary = joint_beauty.main(["--data", spec, "--semantic-ids", str(tmp_path / "sid.json"), "--minutes", "1",
                                 "--threads", "1", "--out", str(tmp_path / "joint"), "--set", "max_epochs=2",
                                 "gr_scope=target", "candidates=10", "id_tower={\"hidden\": 16, \"num_blocks\": 1}",
                                 "gr_tower={\"hidden\": 16, \"num_blocks\": 1, \"num_heads\": 1, \"head_layers\": 1}"])
    res = summary["results"]["joint"]
    assert {"all", "memorization", "generalization", "uncategorized"} <= set(res)
    assert 0 <= res["all"]["ndcg@10"] <= 1 and (tmp_path / "joint" / "results.json").exists()
    assert set(summary["gate_by_label"]) <= {"memorization", "generalization", "uncategorized"}
    sys.modules.pop("joint_beauty", None)


def test_joint_benchmark_holdout_schedule_with_content_aware_towers(tmp_path, monkeypatch):
    """``--schedule holdout --depth half --item-text``: half-depth towers, the ID towers reading the text given."""
    spec = "synthetic:num_users=150,num_brands=4,num_categories=4,num_attributes=4,seed=0"
    _, split, table = synthetic_split(num_users=150, num_brands=4, num_categories=4, num_attributes=4)
    from quantize.semantic_ids import SemanticIdTable

    SemanticIdTable.from_codes(table.codes, table.codebook_sizes).save(tmp_path / "sid.json")
    text = np.random.default_rng(0).normal(size=(split.num_items, 6)).astype(np.float32)
    np.save(tmp_path / "text.npy", text)
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    import joint_beauty

    args = ["--data", spec, "--semantic-ids", str(tmp_path / "sid.json"), "--threads", "1", "--schedule", "holdout",
            "--depth", "half", "--out", str(tmp_path / "joint"),
            "--set", "sasrec.max_epochs=1", "generative.max_epochs=1", "generative.max_minutes=null", "towers=separate",
            "refresh_epochs=0", "k=10", "beam=10"]
    summary = joint_beauty.main([*args, "--item-text", str(tmp_path / "text.npy")])
    assert summary["config"]["sasrec"]["text_dim"] == "auto" and summary["config"]["sasrec"]["num_blocks"] == 1
    stage1 = torch.load(tmp_path / "joint" / "sasrec" / "best.pt", weights_only=True)
    assert stage1["config"]["text_dim"] == 6
    np.testing.assert_allclose(stage1["model"]["item_text"][1:].numpy(),
                               text / np.linalg.norm(text, axis=1, keepdims=True), rtol=1e-5)
    np.save(tmp_path / "short.npy", text[:-1])
    with pytest.raises(SystemExit, match="not one row per item"):
        joint_beauty.main([*args, "--item-text", str(tmp_path / "short.npy")])
    sys.modules.pop("joint_beauty", None)


def test_the_wide_and_deep_table_counts_the_post_hoc_gate(tiny_run, monkeypatch):
    """``--table``: the post-hoc row's parameters are both towers and the chosen method's gate, as the joint
    rows' (it left the gate out)."""
    from fusion.persist import load_methods
    from genrec.artifacts import load_json

    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    import joint_beauty

    rows = joint_beauty.main(["--table", "--run", str(tiny_run)])["rows"]
    (name,) = [n for n in rows if n.startswith("post-hoc")]
    primary = load_json(tiny_run / "results.json")["fusion"]["primary"]
    method = load_methods(tiny_run / "fusion" / "methods.pt")[primary]
    gate = sum(p.numel() for p in method.model.parameters()) if getattr(method, "model", None) is not None else 0
    assert rows[name]["params"] == rows["SASRec"]["params"] + rows["generative"]["params"] + gate
    sys.modules.pop("joint_beauty", None)


def test_one_position_batches_train_in_every_mode():
    """The gate's batch norm needs two rows for batch statistics: a batch with a single next-item
    position (the short last batch of length-sorted sequences) used to crash training."""
    ds, split, table = synthetic_split(num_users=60)
    one = dataclasses.replace(split, train=[s[:2] for s in split.train if len(s) >= 2])  # one position each
    for mode in ("joint", "id"):
        cfg = JointConfig(mode=mode, id_tower=SMALL_ID, gr_tower=SMALL_GR, max_len=20, batch_size=len(one.train) - 1,
                          max_epochs=1, seed=0)
        assert train_joint(one, table, cfg).best_epoch == 1


def test_a_skipped_step_leaves_the_gate_statistics_alone(monkeypatch):
    """nonfinite_loss='skip': the skipped step's forward ran in training mode over NaN features; its
    batch-norm update used to leave the running statistics NaN, so every later gate was NaN."""
    _, split, table = synthetic_split(num_users=60)
    calls = {"n": 0}
    real = JointModel.log_probs

    def poisoned(self, *args, **kwargs):
        lp_id, lp_gr, feats = real(self, *args, **kwargs)
        calls["n"] += 1
        return lp_id, lp_gr, (feats * float("nan") if calls["n"] == 2 else feats)

    monkeypatch.setattr(JointModel, "log_probs", poisoned)
    cfg = JointConfig(id_tower=SMALL_ID, gr_tower=SMALL_GR, max_len=20, batch_size=16, max_epochs=1, seed=0,
                      nonfinite_loss="skip")
    result = train_joint(split, table, cfg)
    assert result.skipped_steps == 1
    assert torch.isfinite(result.model.gate_norm.running_mean).all()
    assert torch.isfinite(result.model.gate_norm.running_var).all()
    assert np.isfinite(joint_gates(result.model, split.test.subset(np.arange(10))).gate).all()


def test_no_training_transition_is_an_error_not_an_untrained_model():
    from genrec.errors import DataFormatError

    _, split, table = synthetic_split(num_users=60)
    empty = dataclasses.replace(split, train=[s[:1] for s in split.train])
    cfg = JointConfig(id_tower=SMALL_ID, gr_tower=SMALL_GR, max_len=20, max_epochs=1)
    with pytest.raises(DataFormatError, match=r"joint\[joint\]: no training batch"):
        train_joint(empty, table, cfg)


def test_auto_scope_weighs_the_catalogue_scopes_memory_and_a_saved_model_keeps_its_scope(tmp_path):
    """4,000 items (under catalogue_max_items) with 3 x 256 codes: ~3,900 code prefixes, whose catalogue
    scope keeps hundreds of GiB of activations for one batch; auto took it (only the item count was read).
    The synthetic tables keep the catalogue scope. The scope is saved as resolved: a model saved without
    it (before) loads by the item-count rule it was trained under, never re-derived another way."""
    from fusion.joint import CATALOGUE_SCOPE_BYTES, catalogue_scope_bytes, load_joint, save_joint
    from genrec.generative import HierarchicalGenerative

    rng = np.random.default_rng(0)
    codes = np.unique(rng.integers(0, 256, size=(4000, 3)), axis=0)
    codes = np.concatenate([codes, np.zeros((len(codes), 1), np.int64)], 1)
    train = [rng.integers(0, len(codes), size=rng.integers(5, 40)) for _ in range(200)]
    config = JointConfig()
    gr = HierarchicalGenerative(codes, [256, 256, 256, 1], config.gr_tower)
    assert catalogue_scope_bytes(config, gr, train) > 50 * CATALOGUE_SCOPE_BYTES
    assert JointModel(len(codes), codes, [256, 256, 256, 1], config, train).scope == "target"
    _, split, table = synthetic_split(num_users=60)
    small = JointModel(split.num_items, table.codes, table.codebook_sizes, JointConfig(id_tower=SMALL_ID,
                                                                                          gr_tower=SMALL_GR),
                       split.train)
    assert small.scope == "catalogue"
    forced = JointModel(split.num_items, table.codes, table.codebook_sizes, JointConfig(id_tower=SMALL_ID,
                                                                                           gr_tower=SMALL_GR),
                        split.train, scope="target")
    assert load_joint(save_joint(forced, tmp_path / "j.pt")).scope == "target"  # as saved, not re-derived
    ckpt = torch.load(tmp_path / "j.pt", weights_only=True)
    del ckpt["gr_scope"]  # a file from before the scope was saved: the item-count rule
    torch.save(ckpt, tmp_path / "old.pt")
    assert load_joint(tmp_path / "old.pt").scope == "catalogue"


def test_a_warm_start_keeps_the_scope_its_init_model_trained_under(monkeypatch):
    """The held-out refresh warm-starts stage-1 towers (shortened sequences) on the full ones: "auto"
    re-resolved on the longer sequences flipped to the target scope near the memory threshold, and the
    stage-1 gate and norms, fitted on the catalogue scope's features, were loaded for the other ones."""
    import fusion.joint as joint_module
    from fusion.holdout_joint import holdout_transitions

    torch.set_num_threads(1)
    _, split, table = synthetic_split(num_users=120)
    short, _ = holdout_transitions(split, 1.0, 0)
    config = JointConfig(id_tower=SMALL_ID, gr_tower=SMALL_GR, max_len=20, batch_size=128, max_epochs=1,
                         eval_every=1, patience=5, num_threads=1)
    gr = HierarchicalGenerative(table.codes, table.codebook_sizes, config.gr_tower)
    small, full = (joint_module.catalogue_scope_bytes(config, gr, t) for t in (short, split.train))
    assert small < full
    monkeypatch.setattr(joint_module, "CATALOGUE_SCOPE_BYTES", (small + full) // 2)  # a catalogue near the line
    stage1 = train_joint(dataclasses.replace(split, train=short), table, config).model
    assert stage1.scope == "catalogue"
    assert JointModel(split.num_items, table.codes, table.codebook_sizes, config, split.train).scope == "target"
    refreshed = train_joint(split, table, config, init=stage1).model
    assert refreshed.scope == "catalogue" and refreshed.feature_names == stage1.feature_names
