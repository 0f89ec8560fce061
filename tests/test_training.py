from dataclasses import dataclass

import numpy as np
import torch

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
    resumed = train(6, tmp_path / "b")  # ... and resumed: the schedule continues at step 9
    assert torch.equal(straight.weight, resumed.weight) and torch.equal(straight.bias, resumed.bias)
    state = torch.load(tmp_path / "b" / "last.pt", weights_only=False)["state"]
    assert state["step"] == 18
