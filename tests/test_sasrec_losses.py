"""SASRec's catalogue-size-independent losses: the chunked cross-entropy equals the full one (value and
gradients), the sampled softmax reduces to it when every item is drawn once, and learns a pattern."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from genrec.errors import ConfigError
from genrec.sasrec import SASRec, SASRecConfig, evaluate, train_sasrec
from genrec.sasrec_losses import NegativeSampler, chunked_cross_entropy, sampled_softmax_loss, sasrec_loss
from genrec.splits import leave_one_out
from genrec.synthetic import cyclic_dataset

NUM_ITEMS = 23


def _batch(seed: int = 0, batch: int = 6, length: int = 9):
    """Token matrices with padding, repeated items and targets already in the history."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(1, 6, (batch, length + 1), generator=g)  # few distinct items: many repeats
    tokens[:, 1::3] = torch.randint(1, NUM_ITEMS + 1, (batch, len(range(1, length + 1, 3))), generator=g)
    for b in range(batch):  # left padding of varying length
        tokens[b, :b] = 0
    return tokens[:, :-1].clone(), tokens[:, 1:].masked_fill(tokens[:, :-1] == 0, 0)


def _model(repeat_bias: bool = True, dtype=torch.float64) -> SASRec:
    torch.manual_seed(0)
    model = SASRec(NUM_ITEMS, SASRecConfig(hidden=16, num_blocks=1, max_len=9, dropout=0.0, repeat_bias=repeat_bias))
    if repeat_bias:
        with torch.no_grad():
            model.repeat_bias.fill_(0.7)  # non-zero, so a wrong bias placement changes the loss
    return model.to(dtype)


def _loss_and_grads(model: SASRec, loss: str, chunk: int = 5):
    inputs, targets = _batch()
    model.zero_grad()
    value, count = sasrec_loss(model, inputs, targets, SASRecConfig(loss=loss, loss_chunk=chunk))
    value.backward()
    return value.detach(), count, {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("repeat_bias", [True, False])
@pytest.mark.parametrize("chunk", [1, 5, NUM_ITEMS, 100])
def test_chunked_loss_equals_full_loss_and_gradients(repeat_bias, chunk):
    model = _model(repeat_bias)
    full, n_full, g_full = _loss_and_grads(model, "full")
    chunked, n_chunked, g_chunked = _loss_and_grads(model, "chunked", chunk)
    assert n_full == n_chunked > 0
    torch.testing.assert_close(chunked, full, rtol=1e-12, atol=1e-12)
    assert g_full.keys() == g_chunked.keys()
    if repeat_bias:
        assert "repeat_bias" in g_chunked and g_full["repeat_bias"].abs() > 0
    for name in g_full:
        torch.testing.assert_close(g_chunked[name], g_full[name], rtol=1e-10, atol=1e-12, msg=name)


def test_chunked_loss_in_float32_is_close_to_full():
    model = _model(dtype=torch.float32)
    full, _, g_full = _loss_and_grads(model, "full")
    chunked, _, g_chunked = _loss_and_grads(model, "chunked", 4)
    torch.testing.assert_close(chunked, full, rtol=1e-5, atol=1e-6)
    for name in g_full:
        torch.testing.assert_close(g_chunked[name], g_full[name], rtol=1e-4, atol=1e-6, msg=name)


def test_sampled_loss_with_every_item_drawn_once_is_the_full_loss():
    # with uniform q the log-Q terms cancel; the target drawn as its own negative is left out, so
    # the sampled softmax over all items is exactly the full one (repeat bias included)
    model = _model()
    inputs, targets = _batch(1)
    hidden = model(inputs)
    valid = targets > 0
    b, t = valid.nonzero(as_tuple=True)
    from genrec.batching import seen_tokens

    seen = seen_tokens(inputs, b, t)
    full = F.cross_entropy(model.position_logits(inputs, hidden, valid), targets[valid] - 1)
    sampler = NegativeSampler(NUM_ITEMS, NUM_ITEMS)
    sampled = sampled_softmax_loss(model, hidden[b, t], seen, targets[valid] - 1, torch.arange(NUM_ITEMS),
                                   sampler.log_q.double())
    torch.testing.assert_close(sampled, full, rtol=1e-12, atol=1e-12)
    chunked = chunked_cross_entropy(model, hidden[b, t], seen, targets[valid] - 1, 3)
    torch.testing.assert_close(chunked, full, rtol=1e-12, atol=1e-12)


def test_popularity_sampler_probabilities_and_determinism():
    seqs = [np.array([0, 0, 0, 1]), np.array([2, 0])]
    sampler = NegativeSampler(4, 2000, "popularity", seqs)
    q = np.exp(sampler.log_q.numpy())
    np.testing.assert_allclose(q, np.array([5, 2, 2, 1]) / 10, rtol=1e-6)  # counts + 1
    torch.manual_seed(3)
    a = sampler.draw()
    torch.manual_seed(3)
    assert torch.equal(a, sampler.draw())
    freq = np.bincount(a.numpy(), minlength=4) / len(a)
    np.testing.assert_allclose(freq, q, atol=0.04)
    assert len(NegativeSampler(4, 7).draw()) == 7


@pytest.mark.parametrize("negatives", ["uniform", "popularity"])
def test_sampled_softmax_learns_the_cyclic_pattern(negatives):
    split = leave_one_out(cyclic_dataset(num_items=60, num_users=240, length=8), max_history=10)
    config = SASRecConfig(hidden=32, num_blocks=1, num_heads=2, dropout=0.0, lr=1e-2, batch_size=32, max_len=10,
                          eval_batch_size=64, num_threads=1, max_epochs=15, patience=15, loss="sampled",
                          num_negatives=8, negatives=negatives)
    result = train_sasrec(split, config, progress=False)
    test = evaluate(result.model, split.test)
    assert test["recall@5"] > 0.9  # chance: 5 / 60


def test_chunked_training_matches_full_training():
    split = leave_one_out(cyclic_dataset(num_items=30, num_users=64, length=6), max_history=8)
    base = dict(hidden=16, num_blocks=1, dropout=0.0, lr=5e-3, batch_size=16, max_len=8, num_threads=1, max_epochs=2,
                patience=5)
    full = train_sasrec(split, SASRecConfig(**base), progress=False)
    chunked = train_sasrec(split, SASRecConfig(**base, loss="chunked", loss_chunk=7), progress=False)
    # (weights are not compared: Adam rescales the rounding noise of near-zero gradients, e.g. of the
    # attention key bias, to full-size steps; the losses along the way are what must agree)
    assert len(full.history) == len(chunked.history) == 2
    for row_f, row_c in zip(full.history, chunked.history):
        assert row_f["train_loss"] == pytest.approx(row_c["train_loss"], rel=1e-4)


@pytest.mark.parametrize("key,value", [("loss", "bce"), ("loss_chunk", 0), ("num_negatives", -1),
                                       ("negatives", "zipf"), ("loss_chunk", 2.5)])
def test_bad_loss_settings_name_the_key(key, value):
    with pytest.raises(ConfigError, match=key):
        SASRecConfig(**{key: value})


def test_sampled_loss_without_sampler_is_an_error():
    model = _model()
    inputs, targets = _batch()
    with pytest.raises(ValueError, match="NegativeSampler"):
        sasrec_loss(model, inputs, targets, SASRecConfig(loss="sampled"))
