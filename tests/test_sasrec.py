import re

import logging

import numpy as np
import pytest
import torch

from genrec.batching import histories_to_tokens
from genrec.sasrec import (SASRec, SASRecConfig, evaluate, load_sasrec, predict_proba, predict_topk, save_sasrec,
                           softmax_summary, train_sasrec)
from genrec.splits import leave_one_out
from genrec.synthetic import cyclic_dataset


SMALL = dict(hidden=32, num_blocks=1, num_heads=2, dropout=0.0, lr=5e-3, batch_size=32, max_len=10,
             eval_batch_size=64, num_threads=1)


@pytest.fixture(scope="module")
def trained():
    split = leave_one_out(cyclic_dataset(), max_history=10)
    result = train_sasrec(split, SASRecConfig(**SMALL, max_epochs=30, patience=5), progress=False)
    return split, result


def test_learns_deterministic_pattern(trained):
    split, result = trained
    test = evaluate(result.model, split.test)
    assert test["recall@5"] == 1.0
    assert test["ndcg@5"] > 0.9  # the next item is almost always ranked first
    assert result.best_valid["ndcg@10"] == max(r["ndcg@10"] for r in result.history)


def test_topk_and_softmax_agree(trained):
    split, result = trained
    items, logp = predict_topk(result.model, split.test, k=5)
    proba = predict_proba(result.model, split.test)
    summary = softmax_summary(result.model, split.test)
    np.testing.assert_array_equal(items[:, 0], proba.argmax(1))
    np.testing.assert_allclose(np.exp(logp[:, 0]), proba.max(1), rtol=1e-5)
    np.testing.assert_allclose(summary["max_prob"], proba.max(1), rtol=1e-5)
    np.testing.assert_allclose(proba.sum(1), 1.0, rtol=1e-4)
    assert (np.diff(logp, axis=1) <= 0).all()
    # the learned rule: next item is last + 1
    expected = (np.array([h[-1] for h in split.test.histories]) + 1) % split.num_items
    assert (items[:, 0] == expected).mean() > 0.95


def test_scores_do_not_depend_on_batch_padding():
    torch.manual_seed(0)
    model = SASRec(30, SASRecConfig(hidden=16, num_blocks=2, max_len=12, dropout=0.0)).eval()
    histories = [np.array([1, 2, 3]), np.arange(12), np.array([5])]
    with torch.no_grad():
        together = model.last_logits(histories_to_tokens(histories, 12))
        alone = torch.cat([model.last_logits(histories_to_tokens([h], 12)) for h in histories])
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-5)


def test_save_load_round_trip(trained, tmp_path):
    split, result = trained
    save_sasrec(result.model, tmp_path / "m.pt")
    loaded = load_sasrec(tmp_path / "m.pt")
    a, _ = predict_topk(result.model, split.test, k=10)
    b, _ = predict_topk(loaded, split.test, k=10)
    np.testing.assert_array_equal(a, b)
    with pytest.raises(FileNotFoundError, match="no SASRec checkpoint"):
        load_sasrec(tmp_path / "missing.pt")
    # a model saved with num_threads 0 (accepted and ignored then, refused by the config since) still loads
    ckpt = torch.load(tmp_path / "m.pt", weights_only=True)
    ckpt["config"]["num_threads"] = 0
    torch.save(ckpt, tmp_path / "zero.pt")
    assert load_sasrec(tmp_path / "zero.pt").config.num_threads is None


def test_resume_after_interruption_matches_uninterrupted_run(tmp_path, caplog):
    split = leave_one_out(cyclic_dataset(num_users=60), max_history=10)
    cfg = dict(SMALL, patience=100)
    straight = train_sasrec(split, SASRecConfig(**cfg, max_epochs=4), out_dir=tmp_path / "a", progress=False)
    train_sasrec(split, SASRecConfig(**cfg, max_epochs=2), out_dir=tmp_path / "b", progress=False)  # "killed"
    assert (tmp_path / "b" / "last.pt").exists() and (tmp_path / "b" / "best.pt").exists()
    with caplog.at_level(logging.INFO, logger="genrec.training"):
        resumed = train_sasrec(split, SASRecConfig(**cfg, max_epochs=4), out_dir=tmp_path / "b", progress=False)
    assert f"resumed sasrec from {tmp_path / 'b' / 'last.pt'} at epoch 2" in caplog.text  # not a restart
    assert [r["ndcg@10"] for r in resumed.history] == [r["ndcg@10"] for r in straight.history]
    for (k, v), (_, w) in zip(straight.model.state_dict().items(), resumed.model.state_dict().items()):
        torch.testing.assert_close(v, w, msg=k)
    reloaded = load_sasrec(tmp_path / "b")
    assert evaluate(reloaded, split.test) == evaluate(resumed.model, split.test)


def test_resume_refuses_a_different_model_config(tmp_path):
    split = leave_one_out(cyclic_dataset(num_users=30), max_history=10)
    train_sasrec(split, SASRecConfig(**SMALL, max_epochs=1), out_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="config differs"):
        train_sasrec(split, SASRecConfig(**{**SMALL, "hidden": 16}, max_epochs=2), out_dir=tmp_path, progress=False)


def test_seeded_training_is_deterministic():
    split = leave_one_out(cyclic_dataset(num_users=40), max_history=10)
    a = train_sasrec(split, SASRecConfig(**SMALL, max_epochs=2), progress=False)
    b = train_sasrec(split, SASRecConfig(**SMALL, max_epochs=2), progress=False)
    assert a.history[-1]["train_loss"] == b.history[-1]["train_loss"]


def test_repeat_bias_is_added_once_per_seen_item():
    from genrec.sasrec import _add_once

    logits = torch.randn(4, 10, requires_grad=True)
    bias = torch.tensor(-2.0, requires_grad=True)
    out = _add_once(logits, torch.tensor([0, 0, 0, 3]), torch.tensor([1, 1, 5, 9]), bias)
    expected = logits.detach().clone()
    expected[0, 1] -= 2
    expected[0, 5] -= 2
    expected[3, 9] -= 2
    torch.testing.assert_close(out, expected)
    out.sum().backward()
    assert bias.grad.item() == 3.0  # three distinct (row, item) pairs, the duplicate counted once


def test_repeat_bias_learns_that_items_never_repeat(trained):
    split, result = trained
    assert result.model.repeat_bias is not None
    assert result.model.repeat_bias.item() < 0  # cyclic walks of length 8 over 20 items never repeat
    plain = SASRec(split.num_items, SASRecConfig(**{**SMALL, "repeat_bias": False}))
    assert plain.repeat_bias is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_trains_resumes_and_predicts_on_cuda(tmp_path):
    split = leave_one_out(cyclic_dataset(), max_history=10)
    cfg = dict(SMALL, device="cuda", patience=100)
    result = train_sasrec(split, SASRecConfig(**cfg, max_epochs=30), out_dir=tmp_path / "a", progress=False)
    assert next(result.model.parameters()).is_cuda
    assert evaluate(result.model, split.test)["recall@5"] == 1.0
    # checkpoints load on either device and give the same ranking
    on_cpu, on_gpu = load_sasrec(tmp_path / "a", device="cpu"), load_sasrec(tmp_path / "a", device="cuda")
    (a, la), (b, lb) = predict_topk(on_cpu, split.test, k=5), predict_topk(on_gpu, split.test, k=5)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(la, lb, atol=1e-4)
    # resume on the GPU (CUDA RNG state restored): same history as an uninterrupted run
    straight = train_sasrec(split, SASRecConfig(**cfg, max_epochs=4), out_dir=tmp_path / "b", progress=False)
    train_sasrec(split, SASRecConfig(**cfg, max_epochs=2), out_dir=tmp_path / "c", progress=False)
    resumed = train_sasrec(split, SASRecConfig(**cfg, max_epochs=4), out_dir=tmp_path / "c", progress=False)
    np.testing.assert_allclose([r["train_loss"] for r in resumed.history],
                               [r["train_loss"] for r in straight.history], rtol=1e-4)


# ----------------------------------------------------------------------------------------------
# Divergence, damaged checkpoints and bad histories


def test_huge_learning_rate_stops_with_a_divergence_error(tmp_path):
    from genrec.errors import TrainingDivergedError

    split = leave_one_out(cyclic_dataset(num_users=60), max_history=10)
    with pytest.raises(TrainingDivergedError) as err:
        train_sasrec(split, SASRecConfig(**{**SMALL, "lr": 1e6}, max_epochs=3), out_dir=tmp_path, progress=False)
    msg = str(err.value)
    assert re.match(r"sasrec training diverged: the loss is (nan|inf) at epoch 1, step \d+ of 2 "
                    r"\(optimiser step \d+\); the last finite loss was [0-9.]+\. Try a lower learning rate "
                    r"\(lr is 1e\+06, in a new out_dir\), or nonfinite_loss='skip' to leave such steps out\.", msg), msg
    assert not (tmp_path / "best.pt").exists()  # nothing diverged was saved as the best model
    # skipping cannot rescue weights that are already ruined: every step of the next epoch is skipped
    with pytest.raises(TrainingDivergedError, match=r"every one of the 2 steps of epoch 2 \(all skipped"):
        train_sasrec(split, SASRecConfig(**{**SMALL, "lr": 1e6}, max_epochs=3, nonfinite_loss="skip"),
                     progress=False)


def test_skip_mode_completes_and_reports_skipped_steps(monkeypatch, caplog):
    import genrec.sasrec_losses as losses

    split = leave_one_out(cyclic_dataset(num_users=60), max_history=10)
    real = losses.F.cross_entropy
    calls = {"n": 0}

    def flaky(*args, **kw):  # every 3rd training step has a NaN loss
        calls["n"] += 1
        loss = real(*args, **kw)
        return loss * float("nan") if calls["n"] % 3 == 0 else loss

    monkeypatch.setattr(losses.F, "cross_entropy", flaky)
    with caplog.at_level("WARNING", logger="genrec.training"):
        result = train_sasrec(split, SASRecConfig(**SMALL, max_epochs=6, patience=100, nonfinite_loss="skip"),
                              progress=False)
    assert len(result.history) == 6 and result.skipped_steps == 4  # 12 steps, every 3rd skipped
    assert [r["skipped_steps"] for r in result.history] == [0, 1, 2, 2, 3, 4]
    assert all(np.isfinite(r["train_loss"]) for r in result.history)
    assert all(p.isfinite().all() for p in result.model.parameters())
    assert "sasrec epoch 2: skipped 1 of 2 steps with a non-finite loss" in caplog.text


def test_nonfinite_validation_never_becomes_best_pt(tmp_path, monkeypatch):
    import genrec.sasrec as sasrec

    split = leave_one_out(cyclic_dataset(num_users=60), max_history=10)
    real, calls = sasrec.evaluate, {"n": 0}

    def patched(*args, **kw):  # epoch 2: NaN, epoch 3: inf (an inf once beat every real score)
        calls["n"] += 1
        metrics = real(*args, **kw)
        return {**metrics, "ndcg@10": {2: float("nan"), 3: float("inf")}.get(calls["n"], metrics["ndcg@10"])}

    monkeypatch.setattr(sasrec, "evaluate", patched)
    result = train_sasrec(split, SASRecConfig(**SMALL, max_epochs=3, patience=100), out_dir=tmp_path,
                          progress=False)
    assert result.best_epoch == 1
    assert torch.load(tmp_path / "best.pt", weights_only=True)["epoch"] == 1
    best = load_sasrec(tmp_path)
    for (k, v), (_, w) in zip(best.state_dict().items(), result.model.state_dict().items()):
        torch.testing.assert_close(v, w, msg=k)


def test_resume_survives_a_truncated_last_checkpoint(tmp_path, caplog):
    from genrec.errors import CheckpointError

    split = leave_one_out(cyclic_dataset(num_users=60), max_history=10)
    cfg = dict(SMALL, patience=100)
    straight = train_sasrec(split, SASRecConfig(**cfg, max_epochs=4), out_dir=tmp_path / "a", progress=False)
    b = tmp_path / "b"
    train_sasrec(split, SASRecConfig(**cfg, max_epochs=3), out_dir=b, progress=False)  # "killed"
    data = (b / "last.pt").read_bytes()
    (b / "last.pt").write_bytes(data[: len(data) // 2])
    with caplog.at_level("WARNING", logger="genrec.training"):
        resumed = train_sasrec(split, SASRecConfig(**cfg, max_epochs=4), out_dir=b, progress=False)
    assert f"{b / 'last.pt'} is truncated or corrupt (incomplete zip archive" in caplog.text
    assert f"resuming sasrec from {b / 'last.prev.pt'}" in caplog.text
    assert [r["ndcg@10"] for r in resumed.history] == [r["ndcg@10"] for r in straight.history]
    assert evaluate(resumed.model, split.test) == evaluate(straight.model, split.test)
    assert evaluate(load_sasrec(b), split.test) == evaluate(straight.model, split.test)

    for name in ("last.pt", "last.prev.pt"):
        data = (b / name).read_bytes()
        (b / name).write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=re.escape(f"cannot resume sasrec: {b / 'last.pt'} is truncated")):
        train_sasrec(split, SASRecConfig(**cfg, max_epochs=5), out_dir=b, progress=False)
    with pytest.raises(CheckpointError, match=re.escape(f"{b / 'last.pt'} is truncated or corrupt")):
        load_sasrec(b / "last.pt")


@pytest.mark.parametrize("bad", [-1, 20, 1000])
def test_out_of_catalogue_history_items_are_rejected(trained, bad):
    from genrec.splits import Instances

    split, result = trained
    model = result.model
    histories = [np.array([1, 2, 3]), np.array([4, bad, 5])]
    expected = re.escape(f"history 1 holds item index {bad}, outside the catalogue's 0..19; histories hold real "
                         "item indices only (the model adds its own padding)")
    with pytest.raises(ValueError, match=expected):
        predict_topk(model, histories, k=5)
    with pytest.raises(ValueError, match=expected):
        predict_proba(model, histories)
    with pytest.raises(ValueError, match=expected):
        softmax_summary(model, histories)
    instances = Instances(users=np.arange(2), histories=histories, targets=np.array([4, 6]))
    with pytest.raises(ValueError, match=expected):
        evaluate(model, instances)
    # valid histories still work
    predict_topk(model, histories[:1], k=5)


def test_numpy_settings_train_into_a_loadable_checkpoint(tmp_path):
    """NumPy numbers in a config (a sweep over np.arange, say) are stored as plain ones: the
    checkpoint's config must load with weights_only (NumPy scalars would be refused there)."""
    split = leave_one_out(cyclic_dataset(num_users=30), max_history=10)
    config = SASRecConfig(**{**SMALL, "max_epochs": np.int64(1), "lr": np.float32(1e-2), "repeat_bias": np.bool_(True)})
    assert type(config.max_epochs) is int and type(config.lr) is float and type(config.repeat_bias) is bool
    train_sasrec(split, config, out_dir=tmp_path, progress=False)
    assert load_sasrec(tmp_path).config.max_epochs == 1


@pytest.mark.parametrize("item_chunk", [None, 3])
def test_k_beyond_the_catalogue_ranks_every_item_and_k_below_one_is_refused(item_chunk):
    """The default k=50 on a 7-item catalogue crashed (a shape mismatch deep in NumPy)."""
    torch.manual_seed(0)
    model = SASRec(7, SASRecConfig(hidden=16, num_blocks=1, max_len=5, dropout=0.0)).eval()
    histories = [np.array([1, 2]), np.array([6])]
    items, logp = predict_topk(model, histories, item_chunk=item_chunk)  # k=50
    assert items.shape == logp.shape == (2, 7)
    assert (np.sort(items, 1) == np.arange(7)).all() and (np.diff(logp, axis=1) <= 0).all()
    np.testing.assert_allclose(np.exp(logp.astype(np.float64)).sum(1), 1.0, rtol=1e-5)
    small, _ = predict_topk(model, histories, k=3, item_chunk=item_chunk)
    np.testing.assert_array_equal(small, items[:, :3])
    for bad in (0, -1, True, 2.5):
        with pytest.raises(ValueError, match=re.escape(f"k must be an integer >= 1, got {bad!r}")):
            predict_topk(model, histories, k=bad)


def test_inference_runs_under_the_models_precision_as_evaluate_does(monkeypatch):
    """A bf16 model was validated (evaluate) under bf16 autocast but served in fp32. CPU autocast stands in
    for CUDA: every inference path must now give the bf16 numbers, not the fp32 ones, and agree."""
    from genrec import model_settings
    from genrec.sasrec import iter_logits, log_probs_from_states, log_probs_of, softmax_topk

    monkeypatch.setattr(model_settings, "AUTOCAST_DEVICES", ("cuda", "cpu"))
    torch.manual_seed(0)
    fp32 = SASRec(30, SASRecConfig(hidden=16, num_blocks=1, max_len=8, dropout=0.0)).eval()
    bf16 = SASRec(30, SASRecConfig(hidden=16, num_blocks=1, max_len=8, dropout=0.0, precision="bf16")).eval()
    bf16.load_state_dict(fp32.state_dict())
    histories = [np.array([1, 2, 3]), np.arange(8), np.array([5, 5])]
    cands = np.array([[0, 4, 29], [8, 1, 3], [5, 6, 7]])

    def served(model):
        top = softmax_topk(model, histories, k=30, states=True)
        by_item = np.take_along_axis(top["log_probs"], np.argsort(top["items"], 1), 1)  # [n, 30] in item order
        logits = np.zeros((3, 30), np.float32)
        for rows, z in iter_logits(model, histories):
            logits[rows] = z.numpy()
        return (by_item, predict_proba(model, histories), log_probs_of(model, histories, cands),
                log_probs_from_states(model, histories, top["hidden"], top["lse"], cands), logits)

    full, proba, of, from_states, logits = served(bf16)
    for a, b in zip(served(bf16), served(fp32)):
        assert np.abs(a - b).max() > 1e-4  # bf16 rounding: autocast was on
    # the paths agree with one another (as in fp32) ...
    np.testing.assert_allclose(np.exp(full), proba, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(of, np.take_along_axis(full, cands, 1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(from_states, of, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(torch.log_softmax(torch.from_numpy(logits), -1).numpy(), full, rtol=1e-5, atol=1e-6)
    # ... and with evaluate's ranking of the targets under the same precision
    from genrec.splits import Instances

    targets = np.argmax(full, 1)
    inst = Instances(users=np.arange(3), histories=histories, targets=targets)
    assert evaluate(bf16, inst, ks=(1,))["recall@1"] == 1.0
