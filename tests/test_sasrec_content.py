"""Content-aware SASRec (``SASRecConfig.text_dim`` > 0): each item's vector is its ID embedding plus
a learned projection of its text embedding. Off by default (the model is then unchanged); every
training loss reaches the projection; save/load keeps the text; new items added without training
read their own text."""

import json
from dataclasses import replace
from pathlib import Path

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


def test_inference_projects_the_catalogue_once_and_follows_every_weight_change():
    model = _model(torch.float32).eval()
    fresh = lambda: (model.item_emb.weight + model.text_proj(model.item_text)).detach()  # noqa: E731
    with torch.no_grad():
        first = model.item_vectors()
        assert model.item_vectors().data_ptr() == first.data_ptr()  # cached, not recomputed
        torch.testing.assert_close(first, fresh())
        torch.testing.assert_close(model.item_vectors(torch.tensor([3, 5])), fresh()[[3, 5]])
    # a training step, a weight loaded, new text: the next inference call sees them
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    model.item_vectors(torch.tensor([1, 2])).sum().backward()  # training mode: not from the cache
    optimizer.step()
    model.eval()
    with torch.no_grad():
        assert not torch.allclose(model.item_vectors(), first)
        torch.testing.assert_close(model.item_vectors(), fresh())
        model.load_state_dict(_model(torch.float32).state_dict())
        torch.testing.assert_close(model.item_vectors(), fresh())
        model.set_item_text(_text(seed=4))
        torch.testing.assert_close(model.item_vectors(), fresh())
    # with gradients on, the vectors are built in the graph (never the cached, detached table)
    assert model.item_vectors().requires_grad


def test_auto_text_dim_takes_the_width_of_the_text_given():
    split = leave_one_out(cyclic_dataset(), max_history=9)
    config = SASRecConfig(**SMALL, lr=5e-3, batch_size=32, max_epochs=1, eval_batch_size=64, text_dim="auto")
    model = train_sasrec(split, config, progress=False, item_text=_text(split.num_items)).model
    assert model.config.text_dim == TEXT_DIM and model.text_proj.in_features == TEXT_DIM
    with pytest.raises(ConfigError, match="text_dim is auto"):
        train_sasrec(split, config, progress=False)
    with pytest.raises(ValueError, match="resolved"):
        SASRec(split.num_items, config)
    with pytest.raises(ConfigError, match=f"text_dim is 5 but the item text embeddings are {TEXT_DIM}-d"):
        train_sasrec(split, SASRecConfig(**SMALL, text_dim=5), progress=False, item_text=_text(split.num_items))


def test_recipe_hashes_follow_the_embed_stage_only_for_a_content_aware_sasrec():
    """A plain SASRec's stage hash is the one of runs made before the option (no text_dim key, no embed
    upstream), so changing the text encoder does not retrain it; a content-aware one reruns."""
    from genrec.recipe import config_from_dict
    from genrec.recipe.runner import _plan
    from genrec.recipe.stage_hash import section_for_hash

    def sasrec_hash(*overrides: str) -> str:
        plan, _, _ = _plan(config_from_dict({}, overrides=list(overrides)), Path("/nonexistent"), {"files": []})
        return plan["sasrec"]["hash"], plan["sasrec"]["src"]["upstream"]

    plain = config_from_dict({})
    assert "text_dim" not in section_for_hash(plain, "sasrec")
    h_plain, up_plain = sasrec_hash()
    assert up_plain.keys() == {"data"}
    assert sasrec_hash("text.max_description_chars=100")[0] == h_plain
    h_content, up_content = sasrec_hash("sasrec.text_dim=auto")
    assert up_content.keys() == {"data", "embed"} and h_content != h_plain
    assert sasrec_hash("sasrec.text_dim=auto", "text.max_description_chars=100")[0] != h_content
    # the joint stage reads the embed stage exactly when its ID towers are content-aware
    for overrides, reads in ((["fusion.joint=true"], False), (["fusion.joint=true", "sasrec.text_dim=auto"], True),
                             (["fusion.joint=true", "fusion.joint_config.sasrec.text_dim=auto"], True)):
        plan, _, _ = _plan(config_from_dict({}, overrides=overrides), Path("/nonexistent"), {"files": []})
        assert ("embed" in plan["joint"]["src"]["upstream"]) == reads, overrides
    with pytest.raises(ConfigError, match="sasrec.text_dim"):
        config_from_dict({}, overrides=["sasrec.text_dim=big"])


def test_a_run_resumed_from_last_prev_needs_the_same_text_too(tmp_path):
    """last.pt damaged: fit resumes from last.prev.pt, whose text was not checked (the other text was
    silently replaced by the checkpoint's)."""
    from genrec.errors import CheckpointError

    split = leave_one_out(cyclic_dataset(), max_history=9)
    config = SASRecConfig(**SMALL, lr=5e-3, batch_size=32, max_epochs=2, eval_batch_size=64, text_dim=TEXT_DIM)
    train_sasrec(split, config, tmp_path, progress=False, item_text=_text(split.num_items))
    (tmp_path / "last.pt").write_bytes((tmp_path / "last.pt").read_bytes()[:100])
    with pytest.raises(CheckpointError, match=r"last\.prev\.pt: trained on other item text"):
        train_sasrec(split, replace(config, max_epochs=3), tmp_path, progress=False,
                     item_text=_text(split.num_items, seed=5))


def test_a_resumed_run_needs_the_same_text_and_a_warm_start_uses_the_text_given(tmp_path):
    from genrec.errors import CheckpointError

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


def _joint_setup():
    from types import SimpleNamespace

    from genrec import make_synthetic
    from genrec.synthetic import synthetic_info

    ds = make_synthetic(num_users=60, seed=0, num_brands=4, num_categories=4, num_attributes=3)
    info = synthetic_info(ds)
    codes = np.stack([info.category, info.brand, info.attribute], 1)
    table = SimpleNamespace(codes=codes, codebook_sizes=[int(codes[:, j].max()) + 1 for j in range(3)])
    split = leave_one_out(ds, max_history=10)
    return split, table, _text(split.num_items)


def test_the_end_to_end_joint_model_trains_a_content_aware_id_tower(tmp_path):
    """``id_tower.text_dim``: the joint objective reaches the text projection; the text is kept in the
    checkpoint (load gives the same scores); a resumed run needs the same text."""
    from fusion.joint import JointConfig, JointModel, evaluate_joint, load_joint, train_joint
    from genrec.errors import CheckpointError
    from genrec.generative import GenerativeConfig

    split, table, text = _joint_setup()
    config = JointConfig(id_tower=SASRecConfig(**SMALL, text_dim="auto"),
                         gr_tower=GenerativeConfig(hidden=16, num_blocks=1, num_heads=2, head_layers=1),
                         max_len=9, batch_size=64, max_epochs=1, num_threads=1)
    model = JointModel(split.num_items, table.codes, table.codebook_sizes,
                       JointConfig(**{**config.__dict__, "id_tower": SASRecConfig(**SMALL, text_dim=TEXT_DIM)}),
                       split.train, text)
    inputs, targets = next(iter(_joint_batches(split)))
    model.loss(inputs, targets)[0].backward()
    assert model.id_tower.text_proj.weight.grad.abs().sum() > 0
    with pytest.raises(ConfigError, match="text_dim is auto"):
        train_joint(split, table, config)
    result = train_joint(split, table, config, out_dir=tmp_path, item_text=text)
    assert result.model.config.id_tower.text_dim == TEXT_DIM
    loaded = load_joint(tmp_path)
    torch.testing.assert_close(loaded.id_tower.item_text, result.model.id_tower.item_text)
    assert evaluate_joint(loaded, split.valid) == evaluate_joint(result.model.eval(), split.valid)
    with pytest.raises(CheckpointError, match="other item text"):
        train_joint(split, table, config, out_dir=tmp_path, item_text=_text(split.num_items, seed=3))


def _joint_batches(split):
    from genrec.batching import training_batches

    return training_batches(split.train, SASRecConfig(**SMALL, batch_size=16), np.random.default_rng(0))


def test_the_holdout_joint_schedule_trains_content_aware_towers():
    from fusion.holdout_joint import HoldoutJointConfig, train_holdout_joint
    from genrec.generative import GenerativeConfig

    split, table, text = _joint_setup()
    towers = dict(max_len=9, max_epochs=1, num_threads=1)
    config = HoldoutJointConfig(sasrec=SASRecConfig(**{**SMALL, **towers}, text_dim="auto"),
                                generative=GenerativeConfig(hidden=16, num_blocks=1, num_heads=2, head_layers=1,
                                                            **towers),
                                k=10, beam=10, towers="separate", refresh_epochs=0)
    with pytest.raises(ConfigError, match="text_dim is auto"):
        train_holdout_joint(split, table, config)
    result = train_holdout_joint(split, table, config, item_text=text)
    torch.testing.assert_close(result.model.sasrec.item_text[1:], torch.from_numpy(text) /
                               torch.from_numpy(text).norm(dim=1, keepdim=True))


def test_a_text_dim_that_is_not_the_embeddings_width_is_a_config_error_naming_both(tiny_run, tmp_path):
    import shutil

    from conftest import TINY_DEMO
    from genrec.recipe import load_config, run_recipe

    run = shutil.copytree(tiny_run, tmp_path / "run")
    width = np.load(run / "embed" / "embeddings.npy").shape[1]
    config = load_config(Path(__file__).resolve().parents[1] / "recipes" / "configs" / "demo.yaml",
                         overrides=[*TINY_DEMO, f"text.cache_dir={tiny_run.parent / 'emb_cache'}", "sasrec.text_dim=5"])
    with pytest.raises(ConfigError, match=f"'sasrec.text_dim' is 5 but the embed stage's vectors are {width}-d"):
        run_recipe(config, run, progress=False, force=True)
    assert (run / "embed" / "stage.done.json").is_file()  # the stages before it are kept


def test_the_sasrec_command_trains_on_item_text_given_by_id(tmp_path, capsys):
    """``genrec sasrec --item-text``: the vectors are matched to the dataset's items by id (a .npy file
    and its id list, here in reverse order); an item without a vector is a clear error naming the file."""
    import genrec
    from genrec import cli

    spec = "synthetic:num_users=60,num_brands=4,num_categories=4,num_attributes=3"
    ids = genrec.load_dataset(spec).item_ids
    text = _text(len(ids))
    np.save(tmp_path / "text.npy", text[::-1].copy())
    (tmp_path / "text.ids.txt").write_text("\n".join(ids[::-1]) + "\n")
    args = ["sasrec", spec, "--max-history", "9", "--set", "hidden=16", "num_blocks=1", "max_epochs=1",
            "num_threads=1"]
    assert cli.main([*args, "--out", str(tmp_path / "run"), "--item-text", str(tmp_path / "text.npy")]) == 0
    model = load_sasrec(tmp_path / "run")
    assert model.config.text_dim == TEXT_DIM
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["config"]["text_dim"] == TEXT_DIM
    torch.testing.assert_close(model.item_text[1:], torch.from_numpy(text / np.linalg.norm(text, axis=1, keepdims=True)))
    (tmp_path / "text.ids.txt").write_text("\n".join(["other"] + list(ids[::-1])[1:]) + "\n")
    assert cli.main([*args, "--out", str(tmp_path / "bad"), "--item-text", str(tmp_path / "text.npy")]) != 0
    assert f"{tmp_path / 'text.npy'}: 1 of the dataset's {len(ids)} items have no embedding" in capsys.readouterr().err
    assert cli.main([*args, "text_dim=0", "--out", str(tmp_path / "off"), "--item-text", str(tmp_path / "text.npy")]) != 0
    assert "--item-text needs a content-aware SASRec" in capsys.readouterr().err
