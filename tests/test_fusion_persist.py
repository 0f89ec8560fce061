"""Saving and loading fitted post-hoc fusion methods (fusion.persist): exact round trips, a file
that plain ``torch.load(weights_only=True)`` reads, and every bad file a CheckpointError naming it."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from fusion.methods import SCALES, AdaptiveFusion, FixedWeightFusion, LearnedGateFusion, params_equal
from fusion.persist import FORMAT_VERSION, METHOD_CLASSES, load_methods, methods_state, save_methods
from fusion.simulate import simulate_outputs
from genrec.artifacts import torch_save
from genrec.errors import CheckpointError

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def case():
    """A validation and a test split of synthetic outputs (small: fitting is not what is tested)."""
    return simulate_outputs(n=400, seed=11), simulate_outputs(n=300, seed=12)


@pytest.fixture(scope="module")
def fitted(case):
    """One fitted method of every kind: fixed, adaptive and the learned gate on each scale."""
    valid, _ = case
    methods = {"fixed": FixedWeightFusion(), "adaptive": AdaptiveFusion(taus=(0.2, 0.5, 0.8))}
    for scale in SCALES:
        methods[f"gate_{scale}"] = LearnedGateFusion(scale=scale, max_epochs=3, patience=2, name=f"gate_{scale}")
    for m in methods.values():
        m.fit(valid.cands, valid.targets, valid.indicators)
    return methods


def _same(a, b) -> bool:
    """Deep exact equality of two states (tensors: same dtype, shape and values)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype
                and torch.equal(a, b))
    if isinstance(a, dict):
        return isinstance(b, dict) and list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def _plain_only(obj, where="file") -> None:
    """Everything in ``obj`` is a plain value, list, dict or tensor."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            assert isinstance(k, str), (where, k)
            _plain_only(v, f"{where}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            _plain_only(v, f"{where}[{i}]")
    else:
        assert obj is None or type(obj) in (str, int, float, bool, torch.Tensor), (where, type(obj))


def test_round_trip_is_exact(tmp_path, case, fitted):
    _, test = case
    path = save_methods(tmp_path / "fusion.pt", fitted)
    rng = torch.get_rng_state()
    loaded = load_methods(path)
    assert torch.equal(torch.get_rng_state(), rng)  # rebuilding the gate networks draws no random numbers
    assert list(loaded) == list(fitted)
    for name, orig in fitted.items():
        new = loaded[name]
        assert type(new) is type(orig) and new is not orig, name
        np.testing.assert_array_equal(new.fuse(test.cands, test.indicators), orig.fuse(test.cands, test.indicators))
        g_new, g_orig = new.gates(test.cands, test.indicators), orig.gates(test.cands, test.indicators)
        assert g_new.gate.dtype == g_orig.gate.dtype
        np.testing.assert_array_equal(g_new.gate, g_orig.gate)
        if g_orig.contributions is not None:
            np.testing.assert_array_equal(g_new.contributions, g_orig.contributions)
            assert g_new.features.names == g_orig.features.names
        assert params_equal(new.params(), orig.params()), name
        assert _same(new.state(), orig.state()), name
    gate = loaded["gate_logprob"]
    orig = fitted["gate_logprob"]
    assert not gate.model.training
    assert gate.features == orig.features and gate.history == orig.history and gate.best_epoch == orig.best_epoch
    assert gate.standardizer.names == orig.standardizer.names
    assert torch.equal(gate.model.log_temp, orig.model.log_temp)  # learned temperatures
    assert loaded["fixed"].grid == fitted["fixed"].grid and loaded["adaptive"].taus == (0.2, 0.5, 0.8)


def test_from_state_directly(fitted):
    for orig in fitted.values():
        copy = type(orig).from_state(orig.state())
        assert _same(copy.state(), orig.state())
    gate = fitted["gate_minmax"]
    state = gate.state()
    state["model"]["log_temp"].fill_(0.0)  # the state holds copies, not the live weights
    assert not torch.equal(gate.model.log_temp, state["model"]["log_temp"])


def test_the_file_loads_with_plain_weights_only_torch_load(tmp_path, fitted):
    path = save_methods(tmp_path / "fusion.pt", fitted)
    obj = torch.load(path, weights_only=True)
    _plain_only(obj)
    assert obj["format_version"] == FORMAT_VERSION
    assert {n: e["class"] for n, e in obj["methods"].items()} == {
        "fixed": "FixedWeightFusion", "adaptive": "AdaptiveFusion", "gate_minmax": "LearnedGateFusion",
        "gate_logprob": "LearnedGateFusion", "gate_mixture": "LearnedGateFusion"}
    assert isinstance(obj["methods"]["gate_minmax"]["state"]["standardizer"]["mean"], torch.Tensor)


def test_another_format_version_is_refused(tmp_path, fitted):
    obj = methods_state({"fixed": fitted["fixed"]})
    obj["format_version"] = FORMAT_VERSION + 1
    path = torch_save(tmp_path / "newer.pt", obj)
    with pytest.raises(CheckpointError, match=re.escape(
            f"{path} has fusion methods format version {FORMAT_VERSION + 1}, this genrec reads version "
            f"{FORMAT_VERSION}; refit")):
        load_methods(path)


def test_an_unknown_class_name_is_refused(tmp_path, fitted):
    obj = methods_state({"fixed": fitted["fixed"]})
    obj["methods"]["fixed"]["class"] = "os.system"
    path = torch_save(tmp_path / "unknown.pt", obj)
    with pytest.raises(CheckpointError, match=re.escape(
            f"{path} names an unknown fusion method class 'os.system' for method 'fixed' (known: "
            f"{', '.join(sorted(METHOD_CLASSES))})")):
        load_methods(path)


def test_a_malformed_state_is_refused(tmp_path, fitted):
    obj = methods_state({"gate": fitted["gate_minmax"]})
    w = obj["methods"]["gate"]["state"]["model"]
    w["head.net.0.weight"] = w["head.net.0.weight"][:, :2]
    path = torch_save(tmp_path / "bad_shape.pt", obj)
    with pytest.raises(CheckpointError, match=re.escape(
            f"{path} holds a malformed LearnedGateFusion state for method 'gate' (LearnedGateFusion model weight "
            "head.net.0.weight must be a (16, 5) torch.float32 tensor, got (16, 2) torch.float32)")):
        load_methods(path)
    obj = methods_state({"gate": fitted["gate_mixture"]})
    obj["methods"]["gate"]["state"]["hidden"] = 10 ** 12  # checked against the weights, never allocated
    path = torch_save(tmp_path / "huge.pt", obj)
    with pytest.raises(CheckpointError, match=r"head\.net\.0\.weight must be a \(1000000000000, 5\)"):
        load_methods(path)
    obj = methods_state({"adaptive": fitted["adaptive"]})
    del obj["methods"]["adaptive"]["state"]["tau"]
    path = torch_save(tmp_path / "missing.pt", obj)
    with pytest.raises(CheckpointError, match=re.escape(f"{path} holds a malformed AdaptiveFusion state for method "
                                                        "'adaptive' (AdaptiveFusion state lacks tau)")):
        load_methods(path)


def test_other_files_are_checkpoint_errors(tmp_path):
    path = torch_save(tmp_path / "model.pt", {"model": {"w": torch.ones(2)}})
    with pytest.raises(CheckpointError, match=re.escape(f"{path} is not a genrec fusion methods file (no 'format'")):
        load_methods(path)
    with pytest.raises(CheckpointError, match="not found"):
        load_methods(tmp_path / "absent.pt")


def test_an_unfitted_method_cannot_be_saved(tmp_path, fitted):
    for method in (FixedWeightFusion(), AdaptiveFusion(), LearnedGateFusion(scale="mixture")):
        with pytest.raises(ValueError, match=re.escape(
                f"cannot save fusion method 'm': {type(method).__name__} {method.name!r} is not fitted: "
                "call fit() before saving it")):
            save_methods(tmp_path / "fusion.pt", {"fixed": fitted["fixed"], "m": method})
    assert not (tmp_path / "fusion.pt").exists()  # nothing written, not even the fitted ones


def test_only_registered_classes_are_saved(tmp_path, fitted):
    class MyFixed(FixedWeightFusion):
        pass

    with pytest.raises(TypeError, match="is not one of"):
        save_methods(tmp_path / "fusion.pt", {"mine": MyFixed(alpha=0.5)})
