"""Item-ID dropout (``SASRecConfig.id_dropout``): in training a share of the items swap their ID
embedding for a learned unknown-ID vector, inputs and candidates alike; inference reads every ID; a
new item added without retraining can take the unknown-ID vector and be scored by its text."""

import numpy as np
import pytest
import torch

from genrec.errors import ConfigError
from genrec.new_items import sasrec_with_new_items
from genrec.sasrec import SASRec, SASRecConfig, evaluate, load_sasrec, save_sasrec, train_sasrec
from genrec.sasrec_losses import sasrec_loss
from genrec.splits import leave_one_out
from genrec.synthetic import cyclic_dataset

NUM_ITEMS, TEXT_DIM = 23, 8
SMALL = dict(hidden=16, num_blocks=1, max_len=9, dropout=0.0, num_threads=1)


def _text(n: int = NUM_ITEMS, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, TEXT_DIM)).astype(np.float32)


def _model(p: float = 0.3) -> SASRec:
    torch.manual_seed(0)
    model = SASRec(NUM_ITEMS, SASRecConfig(**SMALL, text_dim=TEXT_DIM, id_dropout=p), _text())
    with torch.no_grad():
        model.unknown_id.normal_()  # a trained-looking vector, unlike any ID embedding
    return model


@pytest.mark.parametrize("bad", [-0.1, 1.0, True, "0.1"])
def test_a_bad_id_dropout_is_a_config_error(bad):
    with pytest.raises(ConfigError, match="id_dropout"):
        SASRecConfig(text_dim=TEXT_DIM, id_dropout=bad)


def test_id_dropout_needs_item_text():
    with pytest.raises(ConfigError, match="text_dim"):
        SASRecConfig(id_dropout=0.1)
    assert SASRecConfig(text_dim="auto", id_dropout=0.1).id_dropout == 0.1


def test_off_by_default_the_model_has_no_unknown_id_and_draws_nothing():
    model = SASRec(NUM_ITEMS, SASRecConfig(**SMALL, text_dim=TEXT_DIM), _text()).train()
    assert model.unknown_id is None and "unknown_id" not in model.state_dict()
    state = torch.get_rng_state()
    model(torch.tensor([[0, 3, 5]]))
    assert torch.equal(torch.get_rng_state(), state)  # runs made before the option draw the same numbers


def test_a_training_batch_drops_the_same_items_in_inputs_and_candidates():
    model = _model().train()
    tokens = torch.cat([torch.arange(1, NUM_ITEMS + 1), torch.zeros(4, dtype=torch.long)]).view(3, 9)  # every item once
    model(tokens)
    dropped = model.__dict__["_dropped_ids"]
    assert not dropped[0] and 0 < int(dropped.sum()) < NUM_ITEMS  # padding never; ~30% of 23 items
    vectors = model.item_vectors(slice(None))
    text = model.text_proj(model.item_text)
    torch.testing.assert_close(vectors[dropped], model.unknown_id + text[dropped])
    torch.testing.assert_close(vectors[~dropped], model.item_emb.weight[~dropped] + text[~dropped])
    # the input side of the same batch reads the same vectors
    torch.testing.assert_close(model.item_vectors(tokens), vectors[tokens])
    # each forward pass draws anew; inference drops nothing
    model(tokens)
    assert not torch.equal(model.__dict__["_dropped_ids"], dropped)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model.item_vectors(), model.item_emb.weight + text)


def test_the_loss_trains_the_unknown_id_vector():
    model = _model().train()
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(1, NUM_ITEMS + 1, (8, 10), generator=g)
    loss, _ = sasrec_loss(model, tokens[:, :-1], tokens[:, 1:], model.config, None)
    loss.backward()
    assert model.unknown_id.grad is not None and model.unknown_id.grad.abs().sum() > 0


def test_trains_resumes_saves_and_loads(tmp_path, caplog):
    split = leave_one_out(cyclic_dataset(), max_history=9)
    config = SASRecConfig(**SMALL, lr=5e-3, batch_size=32, max_epochs=3, eval_batch_size=64, text_dim=TEXT_DIM,
                          id_dropout=0.2)
    text = _text(split.num_items)
    a = train_sasrec(split, config, tmp_path / "a", progress=False, item_text=text).model
    assert a.unknown_id.abs().sum() > 0  # learnt from zero
    b = train_sasrec(split, config, tmp_path / "b", progress=False, item_text=text).model
    torch.testing.assert_close(a.state_dict(), b.state_dict())  # deterministic given the seed
    # a run killed after two epochs and resumed ends where the uninterrupted one did
    from dataclasses import replace
    train_sasrec(split, replace(config, max_epochs=2), tmp_path / "c", progress=False, item_text=text)
    with caplog.at_level("INFO", logger="genrec.training"):
        c = train_sasrec(split, config, tmp_path / "c", progress=False, item_text=text).model
    assert "resumed sasrec from" in caplog.text and "at epoch 2" in caplog.text  # not a silent restart
    torch.testing.assert_close(c.state_dict(), a.state_dict())
    save_sasrec(a, tmp_path / "m.pt")
    loaded = load_sasrec(tmp_path / "m.pt")
    torch.testing.assert_close(loaded.unknown_id, a.unknown_id)
    assert evaluate(loaded, split.test) == evaluate(a, split.test)


def test_a_new_item_takes_the_unknown_id_vector_when_the_model_learnt_one():
    model = _model().eval()
    new_text = _text(2, seed=9)
    auto = sasrec_with_new_items(model, np.array([4, 4]), new_text)
    grown = auto.item_vectors(slice(1, None)).detach()
    projected = model.text_proj(torch.as_tensor(new_text / np.linalg.norm(new_text, axis=1, keepdims=True))).detach()
    torch.testing.assert_close(grown[NUM_ITEMS:], model.unknown_id.detach() + projected)
    torch.testing.assert_close(grown[:NUM_ITEMS], model.item_vectors(slice(1, None)).detach())
    neighbour = sasrec_with_new_items(model, np.array([4, 4]), new_text, "neighbour")
    torch.testing.assert_close(neighbour.item_emb.weight[NUM_ITEMS + 1:].detach(),
                               model.item_emb.weight[[5, 5]].detach())
    plain = SASRec(NUM_ITEMS, SASRecConfig(**SMALL, text_dim=TEXT_DIM), _text())
    with pytest.raises(ValueError, match="id_dropout"):
        sasrec_with_new_items(plain, np.array([4]), new_text[:1], "unknown")
    with pytest.raises(ValueError, match="id_part"):
        sasrec_with_new_items(model, np.array([4]), new_text[:1], "nearest")


def test_recipe_hashes_leave_the_option_out_when_it_is_off():
    """Runs made before the option keep their SASRec stage hash; turning it on reruns the stage."""
    from pathlib import Path

    from genrec.recipe import config_from_dict
    from genrec.recipe.runner import _plan
    from genrec.recipe.stage_hash import section_for_hash

    def sasrec_hash(*overrides: str) -> str:
        plan, _, _ = _plan(config_from_dict({}, overrides=list(overrides)), Path("/nonexistent"), {"files": []})
        return plan["sasrec"]["hash"]

    content = config_from_dict({}, overrides=["sasrec.text_dim=auto"])
    assert "id_dropout" not in section_for_hash(content, "sasrec")
    assert sasrec_hash("sasrec.text_dim=auto", "sasrec.id_dropout=0.0") == sasrec_hash("sasrec.text_dim=auto")
    assert sasrec_hash("sasrec.text_dim=auto", "sasrec.id_dropout=0.05") != sasrec_hash("sasrec.text_dim=auto")
    with pytest.raises(ConfigError, match="id_dropout"):
        config_from_dict({}, overrides=["sasrec.id_dropout=0.1"])  # a plain SASRec
