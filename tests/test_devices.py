"""Device placement: the generative model, the T5 preset, the beam search and teacher-forced scoring
follow the model's parameters; saved models load onto any device. The CUDA tests skip without a GPU."""

import numpy as np
import pytest
import torch

from genrec.beam_search import decoder_device, trie_on
from genrec.errors import ConfigError
from genrec.generative import (GenerativeConfig, load_generative, recommend, save_generative, score_items,
                               train_generative)
from genrec.sasrec import SASRecConfig, load_sasrec, save_sasrec, train_sasrec
from genrec.splits import leave_one_out
from genrec.synthetic import cyclic_dataset
from genrec.tiger import TigerConfig, load_tiger, save_tiger, train_tiger
from genrec.trie import PrefixTrie
from quantize.semantic_ids import SemanticIdTable

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

GEN = dict(hidden=16, num_blocks=1, num_heads=2, head_layers=1, dropout=0.0, head_dropout=0.0, lr=5e-3,
           batch_size=16, max_len=8, eval_beam=10, max_epochs=2, num_threads=1)
TIGER = dict(d_model=16, d_ff=32, num_heads=2, d_kv=8, num_encoder_layers=1, num_decoder_layers=1, dropout=0.0,
             user_buckets=4, batch_size=32, max_epochs=1, eval_beam=5, eval_users=20, num_threads=1)


@pytest.fixture(scope="module")
def split():
    return leave_one_out(cyclic_dataset(num_items=20, num_users=40, length=6), max_history=8)


@pytest.fixture(scope="module")
def table():
    i = np.arange(20)
    return SemanticIdTable.from_codes(np.stack([i // 5, i % 5], 1), [4, 5])


def on(model: torch.nn.Module) -> set[str]:
    return {str(t.device) for t in [*model.parameters(), *model.buffers()]}


@pytest.mark.parametrize("make", [lambda: GenerativeConfig(device="gpu"), lambda: TigerConfig(device="gpu")])
def test_a_bad_device_is_a_config_error_naming_it(make):
    with pytest.raises(ConfigError, match="device 'gpu'"):
        make()


def test_generative_saved_then_loaded_on_the_cpu(tmp_path, split, table):
    model = train_generative(split, table, GenerativeConfig(**GEN, device="cpu"), progress=False).model
    save_generative(model, tmp_path / "m.pt")
    loaded = load_generative(tmp_path / "m.pt", device="cpu")
    assert on(loaded) == {"cpu"} and decoder_device(loaded) == torch.device("cpu")
    a, b = recommend(model, split.test, beam_size=5), recommend(loaded, split.test, beam_size=5)
    assert isinstance(b.items, np.ndarray) and np.array_equal(a.items, b.items)
    np.testing.assert_array_equal(score_items(loaded, split.test, b.items), b.log_probs)


def test_tiger_saved_then_loaded_on_the_cpu(tmp_path, split, table):
    model = train_tiger(split, table, TigerConfig(**TIGER, device="cpu"), progress=False).model
    save_tiger(model, tmp_path / "t.pt")
    loaded = load_tiger(tmp_path / "t.pt", device="cpu")
    assert on(loaded) == {"cpu"}
    ids, mask = loaded.encoder_inputs(split.test.histories[:3], split.test.users[:3])
    assert ids.device.type == "cpu" and mask.shape == ids.shape
    np.testing.assert_array_equal(recommend(model, split.test, 5).items, recommend(loaded, split.test, 5).items)


def test_trie_copies_are_made_once_per_device():
    trie = PrefixTrie(np.array([[0, 0], [0, 1], [1, 0]]), [2, 2])
    assert trie_on(trie, "cpu") is trie  # the CPU trie itself, no copy
    meta = trie_on(trie, "meta")  # a device with no data: shows where the tables went without a GPU
    assert meta is trie_on(trie, torch.device("meta"))
    assert {t.device.type for t in [meta.codes, meta.item_nodes, *meta.child]} == {"meta"}
    assert trie.codes.device.type == "cpu"  # the original is unchanged


def test_decoder_device_of_a_model_without_parameters():
    assert decoder_device(object()) == torch.device("cpu")
    assert decoder_device(torch.nn.Identity()) == torch.device("cpu")


# ----------------------------------------------------------------------------------------------
# CUDA: a model trained on the GPU decodes there, agrees with its CPU copy, and loads either way


@cuda
def test_generative_on_cuda_matches_its_cpu_copy(tmp_path, split, table):
    model = train_generative(split, table, GenerativeConfig(**GEN, device="cuda"), progress=False).model
    assert on(model) == {"cuda:0"}
    save_generative(model, tmp_path / "g.pt")
    cpu = load_generative(tmp_path / "g.pt", device="cpu")
    assert on(cpu) == {"cpu"}
    a, b = recommend(model, split.test, beam_size=5), recommend(cpu, split.test, beam_size=5)
    assert (a.items[:, 0] == b.items[:, 0]).mean() > 0.95  # GPU vs CPU float rounding may swap near-ties
    np.testing.assert_allclose(a.log_probs, b.log_probs, atol=1e-4)
    np.testing.assert_allclose(score_items(model, split.test, b.items), b.log_probs, atol=1e-4)
    back = load_generative(tmp_path / "g.pt", device="cuda")  # and the CPU file onto the GPU
    assert on(back) == {"cuda:0"}


@cuda
def test_tiger_on_cuda_matches_its_cpu_copy(tmp_path, split, table):
    model = train_tiger(split, table, TigerConfig(**TIGER, device="cuda"), progress=False).model
    assert on(model) == {"cuda:0"}
    save_tiger(model, tmp_path / "t.pt")
    cpu = load_tiger(tmp_path / "t.pt", device="cpu")
    a, b = recommend(model, split.test, beam_size=5), recommend(cpu, split.test, beam_size=5)
    np.testing.assert_allclose(a.log_probs, b.log_probs, atol=1e-4)


@cuda
def test_sasrec_saved_on_cuda_loads_on_the_cpu(tmp_path, split):
    model = train_sasrec(split, SASRecConfig(hidden=16, num_blocks=1, max_len=8, max_epochs=1, device="cuda"),
                         progress=False).model
    save_sasrec(model, tmp_path / "s.pt")
    assert on(load_sasrec(tmp_path / "s.pt", device="cpu")) == {"cpu"}


# ----------------------------------------------------------------------------------------------
# The recipe's top-level device


def test_recipe_device_fills_every_unset_stage_device():
    from genrec.recipe import config_from_dict, config_to_dict

    config = config_from_dict({}, overrides=["device=cuda", "sasrec.device=cpu"])
    assert config.device == "cuda"
    assert (config.text.device, config.sasrec.device, config.generative.device) == ("cuda", "cpu", "cuda")
    assert config_from_dict(config_to_dict(config)) == config  # round trip
    plain = config_from_dict({})
    assert plain.device is None and plain.generative.device == "cpu" and plain.text.device == "cpu"
    assert "device" not in config_to_dict(plain)  # configs written before the key are unchanged
    with pytest.raises(ConfigError, match="config key 'device'.*'gpu'"):
        config_from_dict({}, overrides=["device=gpu"])


def test_recipe_device_leaves_the_stage_hashes_unchanged():
    from genrec.recipe import config_from_dict
    from genrec.recipe.stage_hash import section_for_hash
    from genrec.recipe.stages import STAGES

    plain, on_gpu = config_from_dict({}), config_from_dict({}, overrides=["device=cuda"])
    for stage in STAGES:
        for sec in stage.sections:
            assert section_for_hash(plain, sec) == section_for_hash(on_gpu, sec), (stage.name, sec)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without a CUDA GPU")
def test_a_gpu_this_machine_lacks_is_a_config_error_naming_it(tmp_path, split, capsys):
    """torch raised "AssertionError: Torch not compiled with CUDA enabled" (a traceback in the CLI) from the
    first model move, after the data had loaded."""
    from genrec import cli

    config = SASRecConfig(hidden=16, num_blocks=1, max_len=8, max_epochs=1)
    with pytest.raises(ConfigError, match=r"device 'cuda': torch sees no CUDA GPU here"):
        train_sasrec(split, SASRecConfig(**{**config.__dict__, "device": "cuda"}), progress=False)
    save_sasrec(train_sasrec(split, config, progress=False).model, tmp_path / "s.pt")
    with pytest.raises(ConfigError, match=r"device 'cuda:1': torch sees no CUDA GPU here"):
        load_sasrec(tmp_path / "s.pt", device="cuda:1")
    assert cli.main(["sasrec", "synthetic:num_users=30", "--set", "device=cuda", "max_epochs=1"]) == 2
    assert "device 'cuda': torch sees no CUDA GPU here" in capsys.readouterr().err
