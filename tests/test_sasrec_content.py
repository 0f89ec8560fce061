"""Content-aware SASRec (``SASRecConfig.text_dim`` > 0): each item's vector is its ID embedding plus
a learned projection of its text embedding. Off by default (the model is then unchanged); every
training loss reaches the projection; save/load keeps the text; new items added without training
read their own text."""

import numpy as np
import pytest
import torch

from genrec.errors import ConfigError
from genrec.new_items import sasrec_with_new_items
from genrec.sasrec import SASRec, SASRecConfig, evaluate, load_sasrec, save_sasrec, train_sasrec
from genrec.sasrec_losses import NegativeSampler, sasrec_loss
from genrec.splits import leave_one_out
from genrec.synthetic import cyclic_dataset

NUM_ITEMS, TEXT_DIM = 23, 8
SMALL = dict(hidden=16, num_blocks=1, max_len=9, dropout=0.0, num_threads=1)


def _text(n: int = NUM_ITEMS, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, TEXT_DIM)).astype(np.float32)


def _model(dtype=torch.float64) -> SASRec:
    torch.manual_seed(0)
    return SASRec(NUM_ITEMS, SASRecConfig(**SMALL, text_dim=TEXT_DIM), _text()).to(dtype)


def _batch(seed: int = 0, batch: int = 6, length: int = 9):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(1, NUM_ITEMS + 1, (batch, length + 1), generator=g)
    for b in range(batch):
        tokens[b, :b] = 0
    return tokens[:, :-1].clone(), tokens[:, 1:].masked_fill(tokens[:, :-1] == 0, 0)


def test_off_by_default_the_model_has_no_content_part():
    model = SASRec(NUM_ITEMS, SASRecConfig(**SMALL))
    assert model.text_proj is None and not any("text" in k for k in model.state_dict())
    torch.testing.assert_close(model.item_vectors(), model.item_emb.weight)
    with pytest.raises(ValueError, match="no content part"):
        model.set_item_text(_text())


@pytest.mark.parametrize("bad", [-1, True, 2.5])
def test_bad_text_dim_is_a_config_error(bad):
    with pytest.raises(ConfigError, match="text_dim"):
        SASRecConfig(text_dim=bad)


def test_item_vectors_add_the_projected_unit_text_to_the_id_embedding():
    model = _model()
    text = torch.as_tensor(_text(), dtype=torch.float64)
    unit = text / text.norm(dim=1, keepdim=True)
    torch.testing.assert_close(model.item_text[1:], unit)
    assert (model.item_text[0] == 0).all()  # padding
    expected = model.item_emb.weight[1:] + unit @ model.text_proj.weight.T
    torch.testing.assert_close(model.item_vectors(slice(1, None)), expected)
    # the input side reads the same vectors as the output side
    tokens = torch.tensor([[0, 3, 5]])
    hidden_a = model(tokens)
    with torch.no_grad():
        model.text_proj.weight.mul_(2.0)
    assert not torch.allclose(model(tokens), hidden_a)
    with pytest.raises(ValueError, match=r"\[23, 8\]"):
        model.set_item_text(_text(NUM_ITEMS - 1))


@pytest.mark.parametrize("loss", ["full", "chunked", "sampled"])
def test_every_training_loss_reaches_the_text_projection(loss):
    model = _model()
    inputs, targets = _batch()
    torch.manual_seed(1)
    sampler = NegativeSampler(NUM_ITEMS, 7) if loss == "sampled" else None
    value, count = sasrec_loss(model, inputs, targets, SASRecConfig(loss=loss, loss_chunk=5), sampler)
    value.backward()
    assert count > 0 and model.text_proj.weight.grad.abs().sum() > 0
    assert model.item_emb.weight.grad.abs().sum() > 0


def test_chunked_loss_equals_full_loss_with_content():
    grads = {}
    for loss in ("full", "chunked"):
        model = _model()
        inputs, targets = _batch()
        value, _ = sasrec_loss(model, inputs, targets, SASRecConfig(loss=loss, loss_chunk=5))
        value.backward()
        grads[loss] = (value.detach(), model.text_proj.weight.grad.clone(), model.item_emb.weight.grad.clone())
    for a, b in zip(grads["full"], grads["chunked"]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_trains_saves_and_loads_with_its_text(tmp_path):
    split = leave_one_out(cyclic_dataset(), max_history=9)
    config = SASRecConfig(**SMALL, lr=5e-3, batch_size=32, max_epochs=4, eval_batch_size=64, text_dim=TEXT_DIM)
    text = _text(split.num_items)
    with pytest.raises(ConfigError, match="text_dim"):
        train_sasrec(split, config, progress=False)  # text embeddings missing
    with pytest.raises(ConfigError, match="text_dim"):
        train_sasrec(split, SASRecConfig(**SMALL, max_epochs=1), progress=False, item_text=text)  # not used
    result = train_sasrec(split, config, progress=False, item_text=text)
    model = result.model
    assert result.best_valid["ndcg@10"] > 0
    save_sasrec(model, tmp_path / "m.pt")
    loaded = load_sasrec(tmp_path / "m.pt")
    torch.testing.assert_close(loaded.item_text, model.item_text.cpu())
    assert evaluate(loaded, split.test) == evaluate(model, split.test)


def test_a_new_item_reads_its_own_text_beside_its_neighbours_id_embedding():
    model = _model(torch.float32).eval()
    text = _text()
    # new item 0 copies item 4's text and ID embedding: the same vector; new item 1 another text
    new_text = np.stack([text[4], _text(1, seed=9)[0]])
    grown = sasrec_with_new_items(model, np.array([4, 4]), new_text)
    vectors = grown.item_vectors(slice(1, None)).detach()
    torch.testing.assert_close(vectors[:NUM_ITEMS], model.item_vectors(slice(1, None)).detach())
    torch.testing.assert_close(vectors[NUM_ITEMS], vectors[4])
    assert not torch.allclose(vectors[NUM_ITEMS + 1], vectors[4])
    tokens = torch.tensor([[0, 2, 7, 11]])
    logits = grown.last_logits(tokens).detach()
    torch.testing.assert_close(logits[0, NUM_ITEMS], logits[0, 4])
    with pytest.raises(ValueError, match="new_item_text"):
        sasrec_with_new_items(model, np.array([4]))


def test_the_recipe_refuses_it_with_a_clear_error_until_its_stage_reads_the_embeddings():
    from genrec.recipe import config_from_dict

    with pytest.raises(ConfigError, match="config key 'sasrec.text_dim' must be 0 in a recipe"):
        config_from_dict({}, overrides=["sasrec.text_dim=384"])
    assert config_from_dict({}).sasrec.text_dim == 0


def test_joint_configs_refuse_it_and_a_resumed_run_needs_the_same_text(tmp_path):
    from fusion.holdout_joint import HoldoutJointConfig
    from fusion.joint import JointConfig
    from genrec.errors import CheckpointError
    from genrec.recipe import config_from_dict

    with pytest.raises(ValueError, match="text_dim must be 0"):
        JointConfig(id_tower={"text_dim": 8})
    with pytest.raises(ValueError, match="text_dim must be 0"):
        HoldoutJointConfig(sasrec={"text_dim": 8})
    with pytest.raises(ConfigError, match="text_dim"):
        config_from_dict({}, overrides=["fusion.joint=true", "fusion.joint_config.sasrec.text_dim=8"])

    split = leave_one_out(cyclic_dataset(), max_history=9)
    config = SASRecConfig(**SMALL, lr=5e-3, batch_size=32, max_epochs=1, eval_batch_size=64, text_dim=TEXT_DIM)
    text = _text(split.num_items)
    first = train_sasrec(split, config, tmp_path, progress=False, item_text=text).model
    with pytest.raises(CheckpointError, match="other item text"):
        train_sasrec(split, config, tmp_path, progress=False, item_text=_text(split.num_items, seed=5))
    # warm start from a model trained on other text: the text given is the one used
    other = train_sasrec(split, config, progress=False, init=first, item_text=_text(split.num_items, seed=5)).model
    assert not torch.allclose(other.item_text, first.item_text)
    bad = text.copy()
    bad[3, 0] = np.nan
    with pytest.raises(ValueError, match="row 3"):
        SASRec(split.num_items, config, bad)
