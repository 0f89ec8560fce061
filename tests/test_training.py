import logging
import math
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from genrec.artifacts import load_checkpoint
from genrec.errors import CheckpointError, ConfigError, TrainingDivergedError
from genrec.training import fit


@dataclass
class Config:
    lr: float = 0.1
    weight_decay: float = 0.0
    max_epochs: int = 50
    patience: int = 2
    min_delta: float = 0.0
    eval_every: int = 1
    seed: int = 0


def run(curve, **config):
    """Train a one-parameter model against a scripted validation curve; return the result."""
    model = torch.nn.Linear(1, 1)
    scores = iter(curve)

    def loss_fn(m, batch):
        return (m(batch) ** 2).mean(), len(batch)

    def evaluate_fn(m):
        return {"ndcg@10": next(scores), "recall@10": 0.0}

    return fit(model, Config(**config), lambda rng: [torch.ones(4, 1)], 1, loss_fn, evaluate_fn, progress=False)


def test_patience_counts_evaluations_without_gain():
    result = run([0.1, 0.2, 0.3, 0.25, 0.29, 0.5, 0.6])
    assert len(result.history) == 5  # stopped after two evaluations below the best
    assert result.best_epoch == 3


def test_min_delta_ends_a_creeping_plateau_but_keeps_the_best_checkpoint():
    creeping = [0.050, 0.0600, 0.0601, 0.0602, 0.0603, 0.0604, 0.0605, 0.0606]
    plain = run(creeping + [0.0] * 5, min_delta=0.0)
    assert len(plain.history) == len(creeping) + 2  # every tiny gain resets the patience
    relative = run(creeping + [0.0] * 5, min_delta=0.01)
    assert len(relative.history) == 4  # 0.0601 and 0.0602 are < 1% above 0.0600: two strikes
    assert relative.best_epoch == 4  # ... but the checkpoint still follows the best score
    assert np.isclose(relative.best_valid["ndcg@10"], 0.0602)


def test_cosine_schedule_warms_up_then_decays_to_the_floor():
    from genrec.training import lr_schedule

    @dataclass
    class Sched(Config):
        lr_schedule: str = "cosine"
        warmup_epochs: float = 1.0
        schedule_epochs: int | None = 4
        final_lr_ratio: float = 0.1

    lr_at = lr_schedule(Sched(lr=1.0), steps_per_epoch=10)
    lrs = [lr_at(s) for s in range(60)]
    assert np.isclose(lrs[0], 0.1 * (0.1 + 0.9 * 0.5 * (1 + np.cos(0))))  # 1/10 of the way up
    assert max(lrs) <= 1.0 and np.argmax(lrs) == 9  # warm-up ends after one epoch
    assert all(a >= b for a, b in zip(lrs[9:40], lrs[10:41]))  # then decays monotonically ...
    assert np.isclose(lrs[40], 0.1) and np.isclose(lrs[59], 0.1)  # ... to the floor, and stays
    assert lr_schedule(Config(lr=0.5), 10)(123) == 0.5  # configs without the fields: constant
    try:
        lr_schedule(Sched(lr_schedule="linear"), 10)
    except ValueError as e:
        assert "lr_schedule" in str(e)
    else:
        raise AssertionError("unknown schedule accepted")


def test_fit_applies_the_schedule_per_step_and_resumes_exactly(tmp_path):
    @dataclass
    class Sched(Config):
        lr_schedule: str = "cosine"
        schedule_epochs: int | None = 6
        patience: int = 100

    seen = []

    def train(max_epochs, out):
        model = torch.nn.Linear(1, 1)
        torch.manual_seed(0)
        model.reset_parameters()

        def loss_fn(m, batch):
            return (m(batch) ** 2).mean(), len(batch)

        fit(model, Sched(max_epochs=max_epochs), lambda rng: [torch.ones(4, 1)] * 3, 3, loss_fn,
                     lambda m: {"ndcg@10": float(-m.weight.item() ** 2), "recall@10": 0.0}, out, progress=False,
                     on_eval=lambda row: seen.append(row))
        return model

    straight = train(6, tmp_path / "a")
    train(3, tmp_path / "b")  # "killed" half way ...
    del seen[:]
    resumed = train(6, tmp_path / "b")  # ... and resumed: the schedule continues at step 9
    assert [row["epoch"] for row in seen] == [4, 5, 6]  # only the epochs left ran (a restart would rerun 1-6)
    assert torch.equal(straight.weight, resumed.weight) and torch.equal(straight.bias, resumed.bias)
    state = load_checkpoint(tmp_path / "b" / "last.pt")["state"]
    assert state["step"] == 18


def test_a_longer_max_epochs_on_resume_keeps_the_cosine_horizon(tmp_path, caplog):
    """Without schedule_epochs the cosine decay spans max_epochs. A finished 3-epoch run resumed with
    max_epochs=6 used to restart the decay half way (the lr jumping from 0.003 back to 0.05); it
    keeps its 3-epoch horizon (the last 3 epochs at the floor) and says so."""
    @dataclass
    class Sched(Config):
        lr_schedule: str = "cosine"
        final_lr_ratio: float = 0.1
        patience: int = 100
        schedule_epochs: int | None = None

    lrs = []

    def train(max_epochs):
        model = torch.nn.Linear(1, 1)
        opt_lr = {}

        def loss_fn(m, batch):
            lrs.append(opt_lr["opt"].param_groups[0]["lr"] if "opt" in opt_lr else None)
            return (m(batch) ** 2).mean(), len(batch)

        real_adam = torch.optim.Adam

        def adam(*a, **kw):
            opt_lr["opt"] = real_adam(*a, **kw)
            return opt_lr["opt"]

        torch.optim.Adam = adam
        try:
            fit(model, Sched(lr=0.05, max_epochs=max_epochs), lambda rng: [torch.ones(4, 1)] * 3, 3, loss_fn,
                lambda m: {"ndcg@10": 0.1, "recall@10": 0.0}, tmp_path, progress=False)
        finally:
            torch.optim.Adam = real_adam

    train(3)
    with caplog.at_level("WARNING", logger="genrec.training"):
        train(6)
    assert len(lrs) == 18
    assert all(a >= b - 1e-12 for a, b in zip(lrs, lrs[1:])), lrs  # never back up
    assert lrs[-1] == pytest.approx(0.005) and lrs[9] == pytest.approx(0.005)
    assert "keeps the horizon of 3 epochs" in caplog.text
    # the advice can be followed: schedule_epochs given on a resume sets the horizon from there on
    lrs.clear()
    fit(torch.nn.Linear(1, 1), Sched(lr=0.05, max_epochs=8, schedule_epochs=12), lambda rng: [torch.ones(4, 1)] * 3, 3,
        lambda m, b: (lrs.append(None) or (m(b) ** 2).mean(), len(b)), lambda m: {"ndcg@10": 0.1, "recall@10": 0.0},
        tmp_path, progress=False)
    state = load_checkpoint(tmp_path / "last.pt")["state"]
    assert state["schedule_epochs"] == 12 and state["epoch"] == 8


# ----------------------------------------------------------------------------------------------
# Divergence: non-finite training losses and validation metrics

@dataclass
class Guarded(Config):
    nonfinite_loss: str = "error"


def scripted_fit(losses_at, curve=None, out=None, steps_per_epoch=3, **config):
    """``fit`` on a one-parameter model whose loss is replaced by ``losses_at[global step]`` (a
    NaN/inf there) and whose validation score follows ``curve`` (default: constant 0.1)."""
    torch.manual_seed(0)
    model = torch.nn.Linear(1, 1)
    calls = {"step": 0}
    weights = []

    def loss_fn(m, batch):
        calls["step"] += 1
        weights.append(m.weight.item())
        loss = (m(batch) ** 2).mean()
        bad = losses_at.get(calls["step"])
        return (loss * bad if bad is not None else loss), len(batch)

    scores = iter(curve) if curve is not None else None

    def evaluate_fn(m):
        return {"ndcg@10": next(scores) if scores else 0.1, "recall@10": 0.0}

    result = fit(model, Guarded(**{"patience": 100, **config}), lambda rng: [torch.ones(4, 1)] * steps_per_epoch,
                 steps_per_epoch, loss_fn, evaluate_fn, out, progress=False, name="toy")
    return result, weights


def test_an_epoch_out_of_time_between_evaluations_counts_its_time_once(monkeypatch):
    """eval_every 2, out of time in epoch 1: its 40 s (a fake clock: each step 20 s; the limit of 30 s
    cuts the epoch after 2 of 3 steps) were added before the evaluation and again after it."""
    import genrec.training as training

    clock = {"now": 0.0}
    monkeypatch.setattr(training.time, "perf_counter", lambda: clock["now"])
    model = torch.nn.Linear(1, 1)

    def loss_fn(m, batch):
        clock["now"] += 20.0
        return (m(batch) ** 2).mean(), len(batch)

    config = Guarded(eval_every=2)
    config.max_minutes = 0.5
    result = fit(model, config, lambda rng: [torch.ones(4, 1)] * 3, 3, loss_fn,
                 lambda m: {"ndcg@10": 0.1, "recall@10": 0.0}, progress=False, name="toy")
    assert [(r["epoch"], r["minutes"] * 60) for r in result.history] == [(1, 40.0)]


def test_an_epoch_out_of_time_before_its_first_step_has_no_training_loss(monkeypatch):
    """Drawing the epoch's batches takes 100 s of a 30 s budget, so epoch 1 ends before its first
    step: it is evaluated as usual, but its train_loss is NaN (no loss), not 0.0 (a perfect one)."""
    import genrec.training as training

    clock = {"now": 0.0}
    monkeypatch.setattr(training.time, "perf_counter", lambda: clock["now"])

    def batches(rng):
        clock["now"] += 100.0
        return [torch.ones(4, 1)] * 3

    config = Guarded()
    config.max_minutes = 0.5
    result = fit(torch.nn.Linear(1, 1), config, batches, 3, lambda m, b: ((m(b) ** 2).mean(), len(b)),
                 lambda m: {"ndcg@10": 0.1, "recall@10": 0.0}, progress=False, name="toy")
    assert [r["epoch"] for r in result.history] == [1] and math.isnan(result.history[0]["train_loss"])


def test_nan_loss_stops_training_naming_model_epoch_step_and_last_finite_loss():
    with pytest.raises(TrainingDivergedError) as err:
        scripted_fit({5: math.nan}, max_epochs=4)  # global step 5 = epoch 2, step 2 of 3
    msg = str(err.value)
    assert msg.startswith("toy training diverged: the loss is nan at epoch 2, step 2 of 3 (optimiser step 5)")
    assert "the last finite loss was" in msg and "lower learning rate (lr is 0.1" in msg
    assert "nonfinite_loss='skip'" in msg
    with pytest.raises(TrainingDivergedError, match=r"loss is inf at epoch 1, step 1 of 3 .*no finite loss yet"):
        scripted_fit({1: math.inf}, max_epochs=2)


def test_skip_leaves_nonfinite_steps_out_and_reports_them(caplog):
    plain, w_plain = scripted_fit({}, max_epochs=2)
    with caplog.at_level(logging.WARNING, logger="genrec.training"):
        skipped, w_skip = scripted_fit({2: math.nan, 5: -math.inf}, max_epochs=2, nonfinite_loss="skip")
    # no update from the skipped steps: the weight after step 2 is the one step 2 started from
    assert w_skip[2] == w_skip[1] and w_plain[2] != w_plain[1]
    assert all(math.isfinite(w) for w in w_skip)
    assert skipped.skipped_steps == 2
    assert [r["skipped_steps"] for r in skipped.history] == [1, 2]  # running total per evaluation row
    assert "skipped_steps" not in plain.history[0]  # the default mode's history is unchanged
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "toy epoch 1: skipped 1 of 3 steps with a non-finite loss (nonfinite_loss='skip'; 1 in all)" in warnings
    assert "toy epoch 2: skipped 1 of 3 steps with a non-finite loss (nonfinite_loss='skip'; 2 in all)" in warnings


def test_a_nan_weight_after_an_epochs_last_update_is_a_divergence_not_a_result(tmp_path):
    """The last step's loss is finite (0) but its gradient is NaN (sqrt at 0), so Adam's update makes
    the weight NaN. No later step's loss could notice; the ruined model was validated, saved as
    best.pt and returned as trained. The epoch's end now checks the weights."""
    model = torch.nn.Linear(1, 1)
    calls = {"step": 0}

    def loss_fn(m, batch):
        calls["step"] += 1
        if calls["step"] == 3:
            return torch.sqrt((m.weight - m.weight.detach()) ** 2).sum(), len(batch)
        return (m(batch) ** 2).mean(), len(batch)

    with pytest.raises(TrainingDivergedError, match=r"^toy training diverged: a weight is NaN or infinite after the "
                                                    r"last update of epoch 1 \(optimiser step 3\); the last finite "
                                                    r"loss was 0\. Try a lower learning rate \(lr is 0\.1, in a new "
                                                    r"out_dir\)\.$"):
        fit(model, Guarded(patience=100), lambda rng: [torch.ones(4, 1)] * 3, 3, loss_fn,
            lambda m: {"ndcg@10": 0.1, "recall@10": 0.0}, tmp_path, progress=False, name="toy")
    assert not (tmp_path / "best.pt").exists() and not (tmp_path / "last.pt").exists()


def test_skip_still_stops_when_every_step_of_an_epoch_is_nonfinite():
    with pytest.raises(TrainingDivergedError, match=r"every one of the 3 steps of epoch 2 \(all skipped"):
        scripted_fit({4: math.nan, 5: math.nan, 6: math.nan}, max_epochs=3, nonfinite_loss="skip")


def test_unknown_nonfinite_loss_mode_is_a_config_error():
    with pytest.raises(ConfigError, match=r"nonfinite_loss must be one of \['error', 'skip'\], got 'ignore'"):
        scripted_fit({}, max_epochs=1, nonfinite_loss="ignore")
    from fusion.joint import JointConfig
    from genrec.generative import GenerativeConfig
    from genrec.sasrec import SASRecConfig
    from genrec.tiger import TigerConfig

    for config in (SASRecConfig, GenerativeConfig, TigerConfig, JointConfig):  # checked when the config is built
        assert config().nonfinite_loss == "error" and config(nonfinite_loss="skip").nonfinite_loss == "skip"
        with pytest.raises(ConfigError, match=r"nonfinite_loss must be one of \['error', 'skip'\], got 'NaN'"):
            config(nonfinite_loss="NaN")


def test_nonfinite_validation_scores_are_never_the_best_model(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="genrec.training"):
        result, _ = scripted_fit({}, curve=[0.1, math.nan, math.inf, 0.05], out=tmp_path, max_epochs=4)
    assert result.best_epoch == 1 and result.best_valid["ndcg@10"] == 0.1
    assert load_checkpoint(tmp_path / "best.pt")["epoch"] == 1  # never written from epochs 2 or 3
    assert any("toy epoch 3: validation ndcg@10 is inf; not an improvement" in r.getMessage() for r in caplog.records)
    # and they count against the patience
    short, _ = scripted_fit({}, curve=[0.1, math.nan, math.inf, 0.5], max_epochs=4, patience=2)
    assert len(short.history) == 3 and short.best_epoch == 1


# ----------------------------------------------------------------------------------------------
# Resume from damaged checkpoints


def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_resume_falls_back_to_the_previous_last_checkpoint(tmp_path, caplog):
    curve = [0.3, 0.1, 0.5, 0.2, 0.6]
    straight, _ = scripted_fit({}, curve=curve, out=tmp_path / "a", max_epochs=5)
    scripted_fit({}, curve=curve, out=tmp_path / "b", max_epochs=3)  # "killed" after epoch 3
    b = tmp_path / "b"
    assert {p.name for p in b.glob("*.pt")} == {"last.pt", "last.prev.pt", "best.pt", "best.prev.pt"}
    assert load_checkpoint(b / "last.prev.pt")["state"]["epoch"] == 2
    assert [load_checkpoint(b / f)["epoch"] for f in ("best.pt", "best.prev.pt")] == [3, 1]
    truncate(b / "last.pt")
    with caplog.at_level(logging.WARNING, logger="genrec.training"):
        # resumes after epoch 2 (best epoch 1: its weights are in best.prev.pt, best.pt holds the lost epoch 3)
        resumed, _ = scripted_fit({}, curve=curve[2:], out=b, max_epochs=5)
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert f"{b / 'last.pt'} is truncated or corrupt" in text
    assert f"resuming toy from {b / 'last.prev.pt'}" in text
    assert [r["ndcg@10"] for r in resumed.history] == [r["ndcg@10"] for r in straight.history]
    assert resumed.best_epoch == straight.best_epoch == 5
    assert torch.equal(resumed.model.weight, straight.model.weight)
    assert load_checkpoint(b / "last.pt")["state"]["epoch"] == 5  # the damaged file was replaced


def test_two_kills_between_writing_best_and_last_still_resume(tmp_path, monkeypatch):
    """Killed after best.pt (epoch 3) but before last.pt, twice: the first resume restores epoch 1's
    weights from best.prev.pt; its replayed epoch 3 used to rotate the unconfirmed best.pt over
    best.prev.pt, so the second resume had no epoch-1 weights left."""
    import genrec.checkpoint_files as checkpoint_files

    curve = [0.3, 0.1, 0.5, 0.2]
    straight, _ = scripted_fit({}, curve=curve, out=tmp_path / "a", max_epochs=4)
    b = tmp_path / "b"
    scripted_fit({}, curve=curve, out=b, max_epochs=2)
    real = checkpoint_files.save_keeping_previous

    def killed_at_epoch_3(path, obj, unreadable):
        if path.name == "last.pt" and obj["state"]["epoch"] == 3:
            raise KeyboardInterrupt
        real(path, obj, unreadable)

    monkeypatch.setattr(checkpoint_files, "save_keeping_previous", killed_at_epoch_3)
    for _ in range(2):
        with pytest.raises(KeyboardInterrupt):
            scripted_fit({}, curve=curve[2:], out=b, max_epochs=4)
    monkeypatch.undo()
    # a rerun that ends before replaying epoch 3 leaves best.pt with the run's own best (epoch 1)
    assert load_checkpoint(b / "best.pt")["epoch"] == 3
    assert scripted_fit({}, curve=[], out=b, max_epochs=2)[0].best_epoch == 1
    assert load_checkpoint(b / "best.pt")["epoch"] == 1
    resumed, _ = scripted_fit({}, curve=curve[2:], out=b, max_epochs=4)
    assert [r["ndcg@10"] for r in resumed.history] == curve and resumed.best_epoch == straight.best_epoch == 3
    assert torch.equal(resumed.model.weight, straight.model.weight)
    # the same when the last confirmed epoch was itself the best (its weights come from last.pt)
    c = tmp_path / "c"
    scripted_fit({}, curve=[0.1, 0.3], out=c, max_epochs=2)
    monkeypatch.setattr(checkpoint_files, "save_keeping_previous", killed_at_epoch_3)
    with pytest.raises(KeyboardInterrupt):
        scripted_fit({}, curve=[0.5], out=c, max_epochs=3)  # epoch 3's best.pt written, its last.pt not
    monkeypatch.undo()
    assert scripted_fit({}, curve=[], out=c, max_epochs=2)[0].best_epoch == 2
    assert load_checkpoint(c / "best.pt")["epoch"] == 2  # not the unconfirmed epoch 3


@pytest.mark.parametrize("flat", [1, 2], ids=["next-epoch", "after-two-flat-epochs"])
def test_a_kill_after_resuming_at_the_best_epoch_still_resumes(tmp_path, monkeypatch, flat):
    """Resumed at its best epoch (2), the run improves again later and is killed between that epoch's
    best.pt and last.pt: best.pt used to be written over without keeping epoch 2 anywhere best.pt /
    best.prev.pt are read from ("best.pt holds epoch 4; best.prev.pt holds epoch 1"). Now epoch 2's
    weights are written to best.pt at the resume, so the improvement rotates them to best.prev.pt."""
    import genrec.checkpoint_files as checkpoint_files

    curve = [0.1, 0.3] + [0.2] * flat + [0.5]
    last = len(curve)
    straight, _ = scripted_fit({}, curve=curve, out=tmp_path / "a", max_epochs=last)
    b = tmp_path / "b"
    scripted_fit({}, curve=curve[:2], out=b, max_epochs=2)
    real = checkpoint_files.save_keeping_previous

    def killed_at_the_last_epoch(path, obj, unreadable):
        if path.name == "last.pt" and obj["state"]["epoch"] == last:
            raise KeyboardInterrupt
        real(path, obj, unreadable)

    monkeypatch.setattr(checkpoint_files, "save_keeping_previous", killed_at_the_last_epoch)
    with pytest.raises(KeyboardInterrupt):
        scripted_fit({}, curve=curve[2:], out=b, max_epochs=last)
    monkeypatch.undo()
    assert load_checkpoint(b / "best.pt")["epoch"] == last and load_checkpoint(b / "best.prev.pt")["epoch"] == 2
    resumed, _ = scripted_fit({}, curve=curve[-1:], out=b, max_epochs=last)
    assert [r["ndcg@10"] for r in resumed.history] == curve and resumed.best_epoch == straight.best_epoch == last
    assert torch.equal(resumed.model.weight, straight.model.weight)


def test_resume_after_a_kill_between_renaming_and_writing_last(tmp_path):
    curve = [0.1, 0.2, 0.3]
    straight, _ = scripted_fit({}, curve=curve, out=tmp_path / "a", max_epochs=3)
    scripted_fit({}, curve=curve, out=tmp_path / "b", max_epochs=2)
    # killed while saving epoch 2: last.pt (epoch 1) renamed to last.prev.pt, the new one never written
    (tmp_path / "b" / "last.pt").unlink()
    assert load_checkpoint(tmp_path / "b" / "last.prev.pt")["state"]["epoch"] == 1
    resumed, _ = scripted_fit({}, curve=curve[1:], out=tmp_path / "b", max_epochs=3)
    assert [r["ndcg@10"] for r in resumed.history] == curve
    assert torch.equal(resumed.model.weight, straight.model.weight)


def test_resume_refuses_when_no_last_checkpoint_loads(tmp_path):
    scripted_fit({}, out=tmp_path, max_epochs=2)
    truncate(tmp_path / "last.pt")
    truncate(tmp_path / "last.prev.pt")
    with pytest.raises(CheckpointError) as err:
        scripted_fit({}, out=tmp_path, max_epochs=3)
    msg = str(err.value)
    assert msg.startswith(f"cannot resume toy: {tmp_path / 'last.pt'} is truncated or corrupt (")
    assert f"and {tmp_path / 'last.prev.pt'} is truncated or corrupt" in msg
    assert msg.endswith(f"delete {tmp_path / 'last.pt'} and {tmp_path / 'last.prev.pt'} (or the directory "
                        f"{tmp_path}) to train toy from scratch")


def test_truncated_best_checkpoint_at_resume(tmp_path):
    # best epoch 1 < last epoch 3: the best weights must come from best.pt
    scripted_fit({}, curve=[0.5, 0.1, 0.2], out=tmp_path / "a", max_epochs=3)
    truncate(tmp_path / "a" / "best.pt")
    with pytest.raises(CheckpointError) as err:
        scripted_fit({}, curve=[0.3], out=tmp_path / "a", max_epochs=4)
    msg = str(err.value)
    assert msg.startswith(f"{tmp_path / 'a' / 'best.pt'}: cannot restore the best toy weights (epoch 1) needed "
                          f"to resume: {tmp_path / 'a' / 'best.pt'} is truncated or corrupt (")
    assert msg.endswith(f"restore best.pt from a copy, or delete the directory {tmp_path / 'a'} to train toy "
                        "from scratch")
    # best epoch = last epoch: last.pt's own weights are the best ones, best.pt is not needed
    straight, _ = scripted_fit({}, curve=[0.1, 0.2, 0.3, 0.05], out=tmp_path / "c", max_epochs=4)
    scripted_fit({}, curve=[0.1, 0.2, 0.3], out=tmp_path / "b", max_epochs=3)
    truncate(tmp_path / "b" / "best.pt")
    resumed, _ = scripted_fit({}, curve=[0.05], out=tmp_path / "b", max_epochs=4)
    assert resumed.best_epoch == 3 and torch.equal(resumed.model.weight, straight.model.weight)


def test_old_checkpoint_configs_resume_without_the_nonfinite_loss_field():
    from genrec.training import _model_fields

    old = {"lr": 0.1, "id_tower": {"hidden": 32, "max_epochs": 5}}
    new = {"lr": 0.1, "nonfinite_loss": "skip", "id_tower": {"hidden": 32, "max_epochs": 9, "nonfinite_loss": "error"}}
    assert _model_fields(old) == _model_fields(new)
    assert _model_fields(old) != _model_fields({**new, "lr": 0.2})


def test_resume_with_another_model_config_names_the_changed_keys(tmp_path):
    scripted_fit({}, out=tmp_path, max_epochs=1)
    with pytest.raises(CheckpointError, match=re.escape(
            f"{tmp_path / 'last.pt'}: checkpoint config differs from the requested config (lr: 0.1 -> 0.2, "
            "seed: 0 -> 1); use another out_dir or delete it")):
        scripted_fit({}, out=tmp_path, max_epochs=2, lr=0.2, seed=1)
    scripted_fit({}, out=tmp_path, max_epochs=2, nonfinite_loss="skip")  # a resumable setting may change


def test_history_file_is_complete_after_a_kill_before_it_was_written(tmp_path):
    """Killed after the final epoch's last.pt but before history.json: the resumed run has no epoch
    left to train and must still leave the whole history (found by bench/fault_injection.py)."""
    import json

    curve = [0.1, 0.2, 0.3]
    scripted_fit({}, curve=curve, out=tmp_path, max_epochs=3)
    history = json.loads((tmp_path / "history.json").read_text())
    (tmp_path / "history.json").write_text(json.dumps(history[:2]))  # as the killed run left it
    resumed, _ = scripted_fit({}, curve=[], out=tmp_path, max_epochs=3)
    assert len(resumed.history) == 3
    assert json.loads((tmp_path / "history.json").read_text()) == resumed.history


def test_a_setting_added_after_the_checkpoint_resumes_at_its_default(tmp_path):
    """A last.pt written before SASRec had ``loss`` (and its companions) resumes under a config that
    leaves them at their defaults, and is refused when the run changes one of them."""
    from genrec.artifacts import torch_save
    from genrec.synthetic import cyclic_dataset
    from genrec.sasrec import SASRecConfig, train_sasrec
    from genrec.splits import leave_one_out

    split = leave_one_out(cyclic_dataset(num_items=12, num_users=30), max_history=8)
    config = SASRecConfig(hidden=8, num_blocks=1, max_len=8, max_epochs=1, num_threads=1)
    train_sasrec(split, config, tmp_path, progress=False)
    ckpt = load_checkpoint(tmp_path / "last.pt")
    for key in ("loss", "loss_chunk", "num_negatives", "negatives"):
        del ckpt["config"][key]  # as written by genrec before these settings
    torch_save(tmp_path / "last.pt", ckpt)
    from dataclasses import replace

    assert train_sasrec(split, replace(config, max_epochs=2), tmp_path, progress=False).history[-1]["epoch"] == 2
    with pytest.raises(CheckpointError, match="loss: 'full' -> 'sampled'"):
        train_sasrec(split, replace(config, max_epochs=3, loss="sampled"), tmp_path, progress=False)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim; a no-op elsewhere")
def test_trim_heap_gives_freed_tensor_memory_back_to_the_os():
    # 64 KB tensors live on the C heap; with the last one kept, the freed ones below it stay resident
    # (glibc trims only the top of the heap by itself): the fragmentation that grew training's memory
    from genrec.training import trim_heap

    def resident_mib() -> float:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    blocks = [torch.ones(16_000) for _ in range(4000)]  # 256 MB, touched
    keep = blocks[-1]
    del blocks
    before = resident_mib()
    trim_heap()
    assert before - resident_mib() > 100
    assert keep.sum() == 16_000


def test_a_checkpoint_of_other_data_is_never_resumed(tmp_path):
    """``genrec sasrec B`` into the directory ``genrec sasrec A`` left (the default --out) resumed A's model
    on B silently when the catalogues had the same size; so did a generative model on other semantic IDs."""
    from genrec.generative import GenerativeConfig, train_generative
    from genrec.sasrec import SASRecConfig, train_sasrec
    from genrec.splits import leave_one_out
    from genrec.synthetic import cyclic_dataset
    from genrec.training import data_digest
    from quantize.semantic_ids import SemanticIdTable

    a = leave_one_out(cyclic_dataset(num_items=20, num_users=40, seed=0), max_history=8)
    b = leave_one_out(cyclic_dataset(num_items=20, num_users=40, seed=1), max_history=8)
    assert data_digest(a) == data_digest(leave_one_out(cyclic_dataset(num_items=20, num_users=40, seed=0), 8))
    assert data_digest(a) != data_digest(b) and data_digest(a, [1, 2]) != data_digest(a, [2, 1])
    sas = dict(hidden=8, num_blocks=1, num_heads=1, max_len=8, batch_size=16, patience=100, num_threads=1)
    train_sasrec(a, SASRecConfig(max_epochs=1, **sas), tmp_path / "sasrec", progress=False)
    with pytest.raises(CheckpointError, match=r"last.pt: checkpoint of a run on other data .*use another out_dir"):
        train_sasrec(b, SASRecConfig(max_epochs=2, **sas), tmp_path / "sasrec", progress=False)
    assert len(train_sasrec(a, SASRecConfig(max_epochs=2, **sas), tmp_path / "sasrec", progress=False).history) == 2
    # (a generative model on other semantic IDs: tests/test_generative.py); on other sequences, same codes:
    i = np.arange(20)
    table = SemanticIdTable.from_codes(np.stack([i // 5, i % 5], 1), [4, 5])
    gen = dict(hidden=8, num_blocks=1, num_heads=2, head_layers=1, batch_size=16, max_len=8, eval_beam=5,
               patience=100, num_threads=1)
    train_generative(a, table, GenerativeConfig(max_epochs=1, **gen), tmp_path / "gen", progress=False)
    with pytest.raises(CheckpointError, match="checkpoint of a run on other data"):
        train_generative(b, table, GenerativeConfig(max_epochs=2, **gen), tmp_path / "gen", progress=False)
