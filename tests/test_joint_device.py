"""The joint model on a device (``JointConfig.device`` / ``precision``): config errors, the towers
follow the joint settings, save / load across devices, bf16 scoring paths (CPU autocast standing
in for CUDA) and a CUDA run that skips without a GPU."""

import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from fusion.joint import JointConfig, evaluate_joint, joint_gates, load_joint, save_joint, train_joint
from genrec import leave_one_out, make_synthetic, model_settings
from genrec.errors import ConfigError
from genrec.generative import GenerativeConfig
from genrec.recipe.config import config_from_dict, joint_config
from genrec.sasrec import SASRecConfig
from genrec.synthetic import synthetic_info

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
ID = SASRecConfig(hidden=16, num_blocks=1, dropout=0.0, num_threads=1)
GR = GenerativeConfig(hidden=16, num_blocks=1, num_heads=2, head_layers=1, dropout=0.0, head_dropout=0.0)


@pytest.fixture(scope="module")
def data():
    ds = make_synthetic(num_users=80, seed=0, num_brands=4, num_categories=3, num_attributes=2)
    info = synthetic_info(ds)
    codes = np.stack([info.category, info.brand, info.attribute], 1)
    table = SimpleNamespace(codes=codes, codebook_sizes=[int(codes[:, j].max()) + 1 for j in range(3)])
    return leave_one_out(ds, max_history=10), table


def cfg(**kw):
    return JointConfig(**{**dict(id_tower=ID, gr_tower=GR, max_len=10, batch_size=64, lr=1e-2, max_epochs=1,
                                 num_threads=1), **kw})


def test_joint_config_defaults_and_errors():
    assert (JointConfig().device, JointConfig().precision) == ("cpu", "fp32")
    with pytest.raises(ConfigError, match="device 'gpu'"):
        JointConfig(device="gpu")
    with pytest.raises(ConfigError, match="'precision' is 'bf16'"):
        JointConfig(precision="bf16")  # on the CPU
    with pytest.raises(ConfigError, match="'precision' must be one of"):
        JointConfig(precision="half")


def test_old_joint_checkpoint_configs_load_at_the_default(tmp_path, data):
    split, table = data
    model = train_joint(split, table, cfg()).model
    save_joint(model, tmp_path / "j.pt")
    ckpt = torch.load(tmp_path / "j.pt", weights_only=False)
    for key in ("device", "precision"):  # a file written before the settings existed
        del ckpt["config"][key]
    torch.save(ckpt, tmp_path / "old.pt")
    old = load_joint(tmp_path / "old.pt")
    assert (old.config.device, old.config.precision) == ("cpu", "fp32")
    assert evaluate_joint(old, split.test) == evaluate_joint(model, split.test)


def test_the_recipe_device_reaches_the_joint_model():
    config = config_from_dict({"data": {"dataset": "synthetic:tiny"}, "device": "cuda",
                               "fusion": {"joint": True, "joint_schedule": "end_to_end"}})
    assert joint_config(config).device == "cuda"
    plain = config_from_dict({"data": {"dataset": "synthetic:tiny"},
                              "fusion": {"joint": True, "joint_schedule": "end_to_end"}})
    assert joint_config(plain).device == "cpu"


@pytest.mark.parametrize("scope", ["catalogue", "target"])
def test_joint_bf16_paths(monkeypatch, data, scope):
    """bf16 autocast on the CPU standing in for CUDA: training, the fused scores (catalogue and
    candidate scopes) and the gate report run with bf16 activations."""
    monkeypatch.setattr(model_settings, "AUTOCAST_DEVICES", ("cuda", "cpu"))
    split, table = data
    config = cfg(gr_scope=scope, candidates=5, precision="bf16")  # accepted on the CPU here
    model = train_joint(split, table, config).model
    assert all(p.dtype == torch.float32 for p in model.parameters())
    metrics = evaluate_joint(model, split.test)
    assert 0.0 <= metrics["ndcg@10"] <= 1.0
    gates = joint_gates(model, split.test.subset(np.arange(10)))
    assert gates.gate.dtype == np.float32 and np.isfinite(gates.gate).all()


@cuda
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_joint_on_cuda_matches_the_cpu_and_loads_anywhere(tmp_path, data, precision):
    split, table = data
    on_gpu = train_joint(split, table, cfg(device="cuda", precision=precision)).model
    assert {p.device.type for p in on_gpu.parameters()} == {"cuda"}
    gpu = evaluate_joint(on_gpu, split.test)
    save_joint(on_gpu, tmp_path / "j.pt")
    on_cpu = load_joint(tmp_path / "j.pt", device="cpu")
    assert {p.device.type for p in on_cpu.parameters()} == {"cpu"}
    cpu = evaluate_joint(on_cpu, split.test)  # a bf16 model evaluates in fp32 on the CPU
    tol = 0.02 if precision == "fp32" else 0.1
    assert abs(gpu["ndcg@10"] - cpu["ndcg@10"]) <= tol
    assert dataclasses.asdict(on_cpu.config)["device"] == "cuda"  # the config says where it trained
