"""bf16 autocast (``precision: bf16``, CUDA only; fp32 the default): config errors naming the key,
stage hashes and old checkpoints unchanged at the default, and the bf16 code paths (training,
validation, beam search, scoring) exercised with CPU autocast standing in for CUDA. The CUDA test
skips without a GPU."""

import dataclasses
import math

import numpy as np
import pytest
import torch

from genrec import model_settings, training
from genrec.errors import ConfigError
from genrec.generative import GenerativeConfig, recommend, score_items, train_generative
from genrec.recipe.config import config_from_dict
from genrec.sasrec import SASRecConfig, evaluate, train_sasrec
from genrec.splits import leave_one_out
from genrec.synthetic import cyclic_dataset
from genrec.tiger import TigerConfig, train_tiger
from quantize.semantic_ids import SemanticIdTable

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

SAS = dict(hidden=16, num_blocks=1, num_heads=1, dropout=0.0, batch_size=16, max_len=8, max_epochs=2, num_threads=1)
GEN = dict(hidden=16, num_blocks=1, num_heads=2, head_layers=1, dropout=0.0, head_dropout=0.0, lr=5e-3,
           batch_size=16, max_len=8, eval_beam=10, max_epochs=2, num_threads=1)
TIGER = dict(d_model=16, d_ff=32, num_heads=2, d_kv=8, num_encoder_layers=1, num_decoder_layers=1, dropout=0.0,
             user_buckets=4, batch_size=32, max_epochs=1, eval_beam=5, eval_users=20, num_threads=1)
CONFIGS = [SASRecConfig, GenerativeConfig, TigerConfig]


@pytest.fixture(scope="module")
def split():
    return leave_one_out(cyclic_dataset(num_items=20, num_users=40, length=6), max_history=8)


@pytest.fixture(scope="module")
def table():
    i = np.arange(20)
    return SemanticIdTable.from_codes(np.stack([i // 5, i % 5], 1), [4, 5])


@pytest.mark.parametrize("cls", CONFIGS)
def test_fp32_is_the_default(cls):
    assert cls().precision == "fp32"


@pytest.mark.parametrize("cls", CONFIGS)
def test_an_unknown_precision_is_a_config_error_naming_the_key(cls):
    with pytest.raises(ConfigError, match=r"'precision' must be one of \['fp32', 'bf16'\], got 'fp16'"):
        cls(precision="fp16")


@pytest.mark.parametrize("cls", CONFIGS)
def test_bf16_on_the_cpu_is_a_config_error_naming_the_key(cls):
    with pytest.raises(ConfigError, match="'precision' is 'bf16'.*'cpu'.*CUDA only"):
        cls(precision="bf16", device="cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="'auto' is CUDA here")
def test_bf16_with_auto_and_no_gpu_says_so():
    with pytest.raises(ConfigError, match="no CUDA here"):
        SASRecConfig(precision="bf16", device="auto")


def test_bf16_on_a_cuda_device_name_is_accepted_without_a_gpu():
    # a config written on a GPU machine (or a checkpoint's) must still build where there is none:
    # loading such a model on the CPU evaluates it in fp32
    assert GenerativeConfig(precision="bf16", device="cuda:1").precision == "bf16"


@pytest.mark.skipif(torch.cuda.is_available(), reason="'auto' is CUDA here")
def test_a_bf16_model_trained_with_auto_loads_without_a_gpu(cpu_bf16, split, tmp_path):
    """``device: auto`` + bf16 trained on CUDA (bf16 runs nowhere else): its checkpoint, and a recipe
    config saying so, load on a machine without one (evaluated in fp32), as with ``device: cuda``."""
    from genrec.sasrec import load_sasrec

    trained = train_sasrec(split, _bf16(SASRecConfig(**SAS)), tmp_path, progress=False).model
    ckpt = torch.load(tmp_path / "best.pt", weights_only=True)
    ckpt["config"]["device"] = "auto"  # as a GPU run with device auto wrote it
    torch.save(ckpt, tmp_path / "best.pt")
    monkeypatch_off = pytest.MonkeyPatch()
    monkeypatch_off.setattr(model_settings, "AUTOCAST_DEVICES", ("cuda",))  # this machine: no bf16 anywhere
    try:
        model = load_sasrec(tmp_path / "best.pt")
        assert model.config.precision == "bf16" and model.config.device == "cuda"
        for a, b in zip(model.parameters(), trained.parameters()):
            assert torch.equal(a.cpu(), b.cpu())
        saved = {"data": {"dataset": "synthetic:tiny"}, "device": "auto",  # a run's config.json: sections in full
                 "sasrec": {"precision": "bf16", "device": "auto"}}
        with pytest.raises(ConfigError, match="no CUDA here"):  # a new run: refused, as before
            config_from_dict(saved)
        assert config_from_dict(model_settings.saved_config(saved)).sasrec.device == "cuda"  # a finished one
    finally:
        monkeypatch_off.undo()


def test_the_autocast_context_is_a_no_op_off_cuda():
    with model_settings.autocast("bf16", "cpu"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


def test_recipe_bf16_needs_the_recipe_device_too():
    with pytest.raises(ConfigError, match="'sasrec.precision' is 'bf16'"):
        config_from_dict({"data": {"dataset": "synthetic:tiny"}, "sasrec": {"precision": "bf16"}})
    # the top-level device reaches the section before it is checked
    config = config_from_dict({"data": {"dataset": "synthetic:tiny"}, "device": "cuda",
                               "generative": {"precision": "bf16"}})
    assert config.generative.precision == "bf16" and config.generative.device == "cuda"


def test_old_checkpoint_configs_resume_at_the_default():
    saved = dataclasses.asdict(SASRecConfig())
    del saved["precision"]  # a checkpoint written before the setting existed
    assert training._with_defaults(saved, SASRecConfig())["precision"] == "fp32"


@pytest.fixture
def cpu_bf16(monkeypatch):
    """bf16 autocast on the CPU, standing in for CUDA: the same dtype paths (bf16 activations
    reaching topk, NumPy conversions, fp32 accumulators) run without a GPU."""
    monkeypatch.setattr(model_settings, "AUTOCAST_DEVICES", ("cuda", "cpu"))


def test_an_fp32_run_resumes_in_bf16(cpu_bf16, tmp_path, split):
    # autocast keeps the weights fp32: a run may change precision on resume (e.g. moved to a GPU)
    first = train_sasrec(split, SASRecConfig(**{**SAS, "max_epochs": 1}), tmp_path, progress=False)
    resumed = train_sasrec(split, _bf16(SASRecConfig(**{**SAS, "max_epochs": 2})), tmp_path, progress=False)
    assert [r["epoch"] for r in resumed.history] == [1, 2] and resumed.history[0] == first.history[0]


def _bf16(config):
    return dataclasses.replace(config, precision="bf16")  # accepted on the CPU while cpu_bf16 is on


@pytest.mark.parametrize("loss", ["full", "chunked", "sampled"])
def test_sasrec_bf16_trains_with_every_loss(cpu_bf16, split, loss):
    """The chunked loss crashed on its first bf16 step (bf16 chunk logits, a float32 repeat bias)."""
    extra = {"loss_chunk": 7} if loss == "chunked" else {"num_negatives": 5} if loss == "sampled" else {}
    result = train_sasrec(split, _bf16(SASRecConfig(**{**SAS, "max_epochs": 1}, loss=loss, **extra)), progress=False)
    assert math.isfinite(result.history[-1]["train_loss"]) and result.history[-1]["train_loss"] > 0


def test_sasrec_bf16_paths(cpu_bf16, split):
    with model_settings.autocast("bf16", "cpu"):  # the stand-in is really on
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    result = train_sasrec(split, _bf16(SASRecConfig(**SAS)), progress=False)
    assert all(p.dtype == torch.float32 for p in result.model.parameters())  # weights stay fp32
    metrics = evaluate(result.model, split.test)
    assert 0.0 <= metrics["ndcg@10"] <= 1.0


def test_generative_bf16_paths(cpu_bf16, split, table):
    model = train_generative(split, table, _bf16(GenerativeConfig(**GEN)), progress=False).model
    beams = recommend(model, split.test, beam_size=5)
    assert beams.log_probs.dtype == np.float32 and np.isfinite(beams.log_probs[:, 0]).all()
    scores = score_items(model, split.test, beams.items)
    assert scores.dtype == np.float32 and np.isfinite(scores[:, 0]).all()


def test_tiger_bf16_paths(cpu_bf16, split, table):
    model = train_tiger(split, table, _bf16(TigerConfig(**TIGER)), progress=False).model
    assert np.isfinite(recommend(model, split.test, 5).log_probs[:, 0]).all()


@cuda
def test_bf16_on_cuda_trains_and_decodes(split, table):
    model = train_generative(split, table, GenerativeConfig(**GEN, device="cuda", precision="bf16"),
                             progress=False).model
    assert next(model.parameters()).dtype == torch.float32
    beams = recommend(model, split.test, beam_size=5)
    assert np.isfinite(beams.log_probs[:, 0]).all()
    sas = train_sasrec(split, SASRecConfig(**SAS, device="cuda", precision="bf16"), progress=False).model
    assert 0.0 <= evaluate(sas, split.test)["ndcg@10"] <= 1.0


def test_the_default_precision_leaves_the_stage_hashes_unchanged():
    from genrec.recipe import stage_hash

    config = config_from_dict({"data": {"dataset": "synthetic:tiny"}})
    for sec in ("sasrec", "generative"):
        hashed = stage_hash.section_for_hash(config, sec)
        assert "precision" not in hashed, sec  # the hashes of runs made before the setting
    bf16 = config_from_dict({"data": {"dataset": "synthetic:tiny"}, "device": "cuda",
                             "sasrec": {"precision": "bf16"}})
    assert stage_hash.section_for_hash(bf16, "sasrec")["precision"] == "bf16"  # a bf16 run is another run
    assert "precision" not in stage_hash.section_for_hash(bf16, "generative")
