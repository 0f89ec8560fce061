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
