import itertools

import logging

import numpy as np
import pytest
import torch

from genrec.errors import CheckpointError, CheckpointNotFoundError, DataFormatError
from genrec.parallel_generative import (ParallelCodeModel, ParallelConfig, catalogue_log_probs, evaluate,
                                        load_parallel, recommend, save_parallel, score_items, train_parallel)
from genrec.splits import leave_one_out
from genrec.synthetic import cyclic_dataset
from quantize.semantic_ids import SemanticIdTable

torch.set_num_threads(1)

SMALL = dict(hidden=32, num_blocks=1, num_heads=2, dropout=0.0, lr=5e-3, batch_size=32, max_len=10,
             num_threads=1, warmup_epochs=0.0)


def pq_table(num_items=24) -> SemanticIdTable:
    """Two parallel codes (i % 4, i // 4 % 3) plus the disambiguation level (items i and i + 12 collide)."""
    i = np.arange(num_items)
    return SemanticIdTable.from_codes(np.stack([i % 4, i // 4 % 3], 1), [4, 3])


@pytest.fixture(scope="module")
def split():
    return leave_one_out(cyclic_dataset(num_items=24, num_users=150), max_history=10)


@pytest.fixture(scope="module")
def trained(split):
    return train_parallel(split, pq_table(), ParallelConfig(**SMALL, max_epochs=30, patience=30), progress=False)


def test_parallel_scores_equal_brute_force_on_a_tiny_catalogue():
    # every item's score is the sum over levels of its code's log-probability, levels of unequal size
    rng = np.random.default_rng(0)
    sizes = [5, 3, 4]
    codes = np.array(list(itertools.product(range(5), range(3), range(4))))[rng.permutation(60)[:40]]
    model = ParallelCodeModel(codes, sizes, ParallelConfig(hidden=8, num_heads=1))
    hidden = torch.randn(6, 8)
    with torch.no_grad():
        level = model.level_log_probs(hidden)  # [6, 3, 5]
        np.testing.assert_allclose(level.exp().sum(-1).numpy(), 1.0, rtol=1e-5)  # a softmax per level
        assert torch.isneginf(level[:, 1, 3:]).all() and torch.isneginf(level[:, 2, 4:]).all()  # padding
        brute = np.array([[sum(float(level[p, m, codes[i, m]]) for m in range(3)) for i in range(40)]
                          for p in range(6)])
        np.testing.assert_allclose(model.item_scores(level).numpy(), brute, rtol=1e-5, atol=1e-5)
        items = torch.from_numpy(rng.integers(0, 40, (6, 9)))
        np.testing.assert_allclose(model.item_scores(level, items).numpy(), np.take_along_axis(brute, items.numpy(), 1),
                                   rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(model.target_log_probs(hidden, items[:, 0]).numpy(), brute[np.arange(6), items[:, 0]],
                                   rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(model.codes, codes)


def test_cosine_logits_with_a_temperature_are_bounded_and_checked():
    from genrec.errors import ConfigError

    codes = np.array([[0, 1], [1, 0], [2, 2]])
    model = ParallelCodeModel(codes, [3, 3], ParallelConfig(hidden=8, num_heads=1, temperature=0.5))
    with torch.no_grad():
        level = model.level_log_probs(100 * torch.randn(5, 8))  # cosine logits in [-2, 2] whatever the scale
    assert (level.max(-1).values - level.min(-1).values).max() <= 4 + 1e-5
    with pytest.raises(ConfigError, match="temperature must be > 0"):
        ParallelConfig(temperature=0.0)


def test_learns_deterministic_pattern(split, trained):
    test = evaluate(trained.model, split.test)
    assert test["recall@5"] == 1.0
    assert test["ndcg@10"] > 0.9
    items, log_probs = recommend(trained.model, split.test, k=5)
    expected = (split.test.last_items() + 1) % split.num_items
    assert (items[:, 0] == expected).mean() > 0.95
    np.testing.assert_allclose(score_items(trained.model, split.test, items), log_probs, atol=1e-5)
    assert trained.best_valid["ndcg@10"] == max(r["ndcg@10"] for r in trained.history)


def test_catalogue_distribution_with_the_repeat_gate(split, trained):
    model = trained.model
    with torch.no_grad():
        log_p = catalogue_log_probs(model, split.test.histories).double()
    np.testing.assert_allclose(log_p.exp().sum(1).numpy(), 1.0, atol=1e-4)
    # cyclic walks never revisit an item: the gate learns r ~ 0, so history items get almost no mass
    seen = np.array([np.isin(np.arange(split.num_items), h[-10:]) for h in split.test.histories])
    assert (log_p.exp().numpy() * seen).sum(1).max() < 0.05


def test_save_load_round_trip(tmp_path, split, trained):
    save_parallel(trained.model, tmp_path / "m.pt")
    loaded = load_parallel(tmp_path / "m.pt")
    a, b = recommend(trained.model, split.test, k=8), recommend(loaded, split.test, k=8)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_allclose(a[1], b[1])
    np.testing.assert_array_equal(loaded.codes, pq_table().codes)
    with pytest.raises(CheckpointNotFoundError, match="no parallel-code model"):
        load_parallel(tmp_path / "missing.pt")


def test_resume_after_kill_is_exact(tmp_path, split, caplog):
    # the cosine horizon is pinned (schedule_epochs), so stopping at max_epochs=2 stands in for a kill
    kw = {**SMALL, "dropout": 0.2, "schedule_epochs": 4, "patience": 10}
    config = ParallelConfig(**kw, max_epochs=4)
    straight = train_parallel(split, pq_table(), config, out_dir=tmp_path / "a", progress=False)
    train_parallel(split, pq_table(), ParallelConfig(**kw, max_epochs=2), out_dir=tmp_path / "b", progress=False)
    with caplog.at_level(logging.INFO, logger="genrec.training"):
        resumed = train_parallel(split, pq_table(), config, out_dir=tmp_path / "b", progress=False)
    assert f"resumed parallel from {tmp_path / 'b' / 'last.pt'} at epoch 2" in caplog.text  # not a restart
    assert [r["train_loss"] for r in straight.history] == [r["train_loss"] for r in resumed.history]
    for (k, v), (_, w) in zip(straight.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(v, w), k
    loaded = load_parallel(tmp_path / "b")
    np.testing.assert_array_equal(recommend(loaded, split.test, k=5)[0], recommend(resumed.model, split.test, k=5)[0])


def test_bad_inputs_are_clear_errors(split, trained):
    with pytest.raises(DataFormatError, match="semantic-ID table has 10 items but the dataset has 24"):
        train_parallel(split, SemanticIdTable.from_codes(np.arange(10)[:, None] % 3, [3]), ParallelConfig(**SMALL))
    with pytest.raises(ValueError, match="history"):
        recommend(trained.model, [np.array([1, 2]), np.array([], dtype=np.int64)])
    with pytest.raises(ValueError, match="candidates must be"):
        score_items(trained.model, [np.array([1, 2])], np.array([1, 2]))
    with pytest.raises(ValueError, match="k must be an integer >= 1, got -1"):  # "negative dimensions" before
        recommend(trained.model, [np.array([1, 2])], k=-1)
    assert recommend(trained.model, [[1, 2]], k=2)[0].shape == (1, 2)  # a list history too
    with pytest.raises(ValueError, match="outside its level's codebook"):
        ParallelCodeModel(np.array([[0, 3]]), [2, 3], ParallelConfig(hidden=8, num_heads=1))
    # weights of other semantic IDs of the same shape (a resume over another table): refused
    other = pq_table()
    other.codes[[0, 1]] = other.codes[[1, 0]]
    with pytest.raises(CheckpointError, match="trained on other semantic IDs"):
        ParallelCodeModel(other.codes, other.codebook_sizes, trained.model.config).load_state_dict(
            trained.model.state_dict())


@pytest.mark.parametrize("model", ["parallel", "semantic"])
def test_cli_trains_the_parallel_and_the_semantic_model(tmp_path, model):
    import json

    from genrec.cli import main
    from genrec.data import write_plain

    write_plain(cyclic_dataset(num_items=24, num_users=60), tmp_path / "data")
    pq_table().save(tmp_path / "sid" / "semantic_ids.json")
    out = tmp_path / "run"
    extra = ["eval_beam=5"] if model == "semantic" else []
    rc = main(["generative", str(tmp_path / "data"), "--semantic-ids", str(tmp_path / "sid"), "--model", model,
               "--out", str(out), "--set", "hidden=16", "num_heads=1", "max_epochs=2", *extra, "--test-beam", "5"])
    assert rc == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["model"] == model and "ndcg@5" in metrics["test"]
    assert metrics["config"]["item_embedding"] is False
    loaded = load_parallel(out) if model == "parallel" else None
    assert loaded is None or loaded.num_levels == 3


def test_tied_items_are_returned_in_index_order_whatever_k():
    """Items with the same codes score the same; Tensor.topk broke their ties arbitrarily, so asked for 3 or
    for 50 a user could get different tied items first. Every served list breaks ties by item index."""
    n = 200
    codes = np.stack([np.arange(n) % 2, np.arange(n) % 3], 1)  # 6 code tuples: 6 groups of tied items
    torch.manual_seed(0)
    model = ParallelCodeModel(codes, [2, 3], ParallelConfig(hidden=8, num_heads=1, max_len=10)).eval()
    histories = [np.array([0, 1, 2]), np.array([5]), np.array([7, 100])]
    full, full_lp = recommend(model, histories, k=n)
    for k in (1, 3, 10, 50, 137):
        items, lp = recommend(model, histories, k=k)
        np.testing.assert_array_equal(items, full[:, :k])
        np.testing.assert_array_equal(lp, full_lp[:, :k])
    # best first, and equal scores in index order
    assert (np.diff(full_lp, axis=1) <= 0).all()
    tied = np.diff(full_lp, axis=1) == 0
    assert tied.any() and (np.diff(full, axis=1)[tied] > 0).all()
