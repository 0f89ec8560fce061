"""Safe checkpoint loading (genrec.artifacts.load_checkpoint): every checkpoint genrec writes loads
with ``weights_only=True``, and every damaged or unsafe file is a CheckpointError naming it."""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from genrec.artifacts import load_checkpoint, pack_arrays, torch_save, unpack_arrays
from genrec.errors import CheckpointError

torch.set_num_threads(1)


class Payload:
    """Unpickling this calls ``open(marker, "w")``: a harmless stand-in for ``os.system``."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def test_a_crafted_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "marker"
    torch.save({"model": {"w": torch.ones(2)}, "extra": Payload(marker)}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(tmp_path / "evil.pt")
    assert str(err.value).startswith(f"{tmp_path / 'evil.pt'} contains Python objects that genrec does not load "
                                     "(loading them could run code): io.open; ")
    assert not marker.exists()
    torch.load(tmp_path / "evil.pt", weights_only=False)  # the payload is real: an unsafe load runs it
    assert marker.exists()


def test_numpy_arrays_from_older_checkpoints_are_refused_with_the_remedy(tmp_path):
    torch.save({"codes": np.arange(4)}, tmp_path / "old.pt")
    with pytest.raises(CheckpointError, match=re.escape(
            f"{tmp_path / 'old.pt'} contains Python objects that genrec does not load (loading them could run "
            "code): numpy.") + r".*delete the file and rerun that stage to write it again$"):
        load_checkpoint(tmp_path / "old.pt")


@pytest.mark.parametrize("damage,reason", [
    (lambda data: data[: len(data) // 2], "incomplete zip archive"),
    (lambda data: b"", "empty file"),
    (lambda data: b"not a checkpoint at all\n", ""),
    (lambda data: pickle.dumps({"model": 1}, protocol=2)[:-4], ""),
])
def test_truncated_or_corrupt_files(tmp_path, damage, reason):
    path = tmp_path / "ckpt.pt"
    torch_save(path, {"model": {"w": torch.randn(50, 50)}})
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    msg = str(err.value)
    assert msg.startswith(f"{path} is truncated or corrupt ({reason}")
    assert msg.endswith("); restore it from a copy, or delete it to start again (in a recipe run directory, "
                        "delete the stage's whole directory, e.g. <run>/sasrec, and rerun)")
    assert err.value.reason.startswith("is truncated or corrupt (")


def test_missing_file_and_wrong_contents(tmp_path):
    with pytest.raises(CheckpointError, match=re.escape(f"checkpoint {tmp_path / 'nope.pt'} not found; check the "
                                                        "path, or train (or save) that model first")):
        load_checkpoint(tmp_path / "nope.pt")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match=r"list\.pt is not a genrec checkpoint \(it holds a list, not a dict\)"):
        load_checkpoint(tmp_path / "list.pt")
    torch.save({"model": {}}, tmp_path / "partial.pt")
    with pytest.raises(CheckpointError,
                       match=r"partial\.pt is not a genrec SASRec checkpoint \(no 'num_items' entry\)"):
        load_checkpoint(tmp_path / "partial.pt", kind="SASRec checkpoint", keys=("model", "num_items"))


def test_pack_arrays_round_trips_through_a_weights_only_load(tmp_path):
    obj = {"a": np.arange(6, dtype=np.int32).reshape(2, 3)[:, ::2], "b": [np.float32(1.5), (np.ones(2, bool), 3)],
           "c": torch.zeros(2), "d": "text", "e": None}
    torch_save(tmp_path / "x.pt", pack_arrays(obj))
    back = unpack_arrays(load_checkpoint(tmp_path / "x.pt"))
    np.testing.assert_array_equal(back["a"], obj["a"])
    assert back["a"].dtype == np.int32 and back["b"][0] == 1.5 and type(back["b"][0]) is float
    assert back["b"][1][0].dtype == bool and back["b"][1][1] == 3 and isinstance(back["b"][1], tuple)
    assert torch.equal(back["c"], obj["c"]) and back["d"] == "text" and back["e"] is None
    with pytest.raises(TypeError, match="dtype <U1"):
        pack_arrays({"s": np.array(["x"])})


# ----------------------------------------------------------------------------------------------
# Every checkpoint genrec writes loads with weights_only=True and round-trips


def _weights_only(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def split_and_table():
    from genrec.splits import leave_one_out
    from genrec.synthetic import cyclic_dataset
    from quantize.semantic_ids import SemanticIdTable

    split = leave_one_out(cyclic_dataset(num_items=24, num_users=60), max_history=10)
    i = np.arange(24)
    return split, SemanticIdTable.from_codes(np.stack([i // 6, i % 3], 1), [4, 3])


def test_training_checkpoints_of_every_trainer_load_safely(tmp_path, split_and_table):
    from fusion.joint import JointConfig, train_joint
    from genrec.generative import GenerativeConfig, load_generative, recommend, save_generative, train_generative
    from genrec.sasrec import SASRecConfig, load_sasrec, predict_topk, save_sasrec, train_sasrec
    from genrec.tiger import TigerConfig, load_tiger, save_tiger, train_tiger

    split, table = split_and_table
    small_gr = dict(hidden=16, num_blocks=1, num_heads=2, head_layers=1, max_len=10, eval_beam=5, num_threads=1)
    runs = {
        "sasrec": train_sasrec(split, SASRecConfig(hidden=16, num_blocks=1, max_len=10, max_epochs=2, num_threads=1),
                               tmp_path / "sasrec", progress=False),
        "generative": train_generative(split, table, GenerativeConfig(**small_gr, max_epochs=2, eval_every=1),
                                       tmp_path / "generative", progress=False),
        "tiger": train_tiger(split, table, TigerConfig(d_model=16, d_ff=32, num_heads=2, d_kv=8, num_encoder_layers=1,
                                                       num_decoder_layers=1, max_epochs=2, eval_users=20, eval_beam=5,
                                                       num_threads=1), tmp_path / "tiger", progress=False),
        "joint": train_joint(split, table, JointConfig(id_tower=SASRecConfig(hidden=16, num_blocks=1),
                                                       gr_tower=GenerativeConfig(**small_gr), max_len=10,
                                                       max_epochs=2, num_threads=1), tmp_path / "joint"),
    }
    for name in runs:
        files = {p.name for p in (tmp_path / name).glob("*.pt")}
        assert {"best.pt", "last.pt", "last.prev.pt"} <= files, name
        for f in files:
            _weights_only(tmp_path / name / f)
        last = load_checkpoint(tmp_path / name / "last.pt")
        assert last["state"]["epoch"] == 2 and isinstance(last["numpy_rng"]["state"]["state"], int)

    sasrec, generative, tiger = runs["sasrec"].model, runs["generative"].model, runs["tiger"].model
    save_sasrec(sasrec, tmp_path / "s.pt")
    save_generative(generative, tmp_path / "g.pt")
    save_tiger(tiger, tmp_path / "t.pt")
    for f in ("s.pt", "g.pt", "t.pt"):
        _weights_only(tmp_path / f)
    test = split.test
    def same_weights(a, b):  # every tensor, buffers included (a top-k can survive a lost parameter)
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k].cpu(), sb[k].cpu()) for k in sa)

    for loaded in (load_sasrec(tmp_path / "s.pt"), load_sasrec(tmp_path / "sasrec")):
        same_weights(loaded, sasrec)
        for got, want in zip(predict_topk(loaded, test, 5), predict_topk(sasrec, test, 5)):
            np.testing.assert_array_equal(got, want)  # items and scores
    for loaded, model in ((load_generative(tmp_path / "g.pt"), generative), (load_generative(tmp_path / "generative"),
                                                                             generative),
                          (load_tiger(tmp_path / "t.pt"), tiger), (load_tiger(tmp_path / "tiger"), tiger)):
        same_weights(loaded, model)
        np.testing.assert_array_equal(loaded.codes, model.codes)
        got, want = recommend(loaded, test, 5), recommend(model, test, 5)
        np.testing.assert_array_equal(got.items, want.items)
        np.testing.assert_array_equal(got.log_probs, want.log_probs)


@pytest.mark.parametrize("method,kw", [("rq_kmeans", dict(levels=2, codebook_size=4)),
                                       ("pq", dict(subspaces=2, codebook_size=4)),
                                       ("opq", dict(subspaces=2, codebook_size=4, opq_iters=2)),
                                       ("rq_vae", dict(levels=2, codebook_size=4, hidden_dims=(8,), latent_dim=4,
                                                       epochs=1))])
def test_quantizer_files_load_safely(tmp_path, method, kw):
    from quantize import load_quantizer, make_quantizer

    x = np.random.default_rng(0).normal(size=(80, 8)).astype(np.float32)
    q = make_quantizer(method, **kw)
    codes = q.fit(x)
    q.save(tmp_path / "q.pt")
    _weights_only(tmp_path / "q.pt")
    back = load_quantizer(tmp_path / "q.pt")
    np.testing.assert_array_equal(back.encode(x), codes)
    np.testing.assert_array_equal(back.decode(codes), q.decode(codes))
    torch.save({"format": "something else"}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="other.pt: not a genrec quantizer file"):
        load_quantizer(tmp_path / "other.pt")


def test_preprocessor_file_loads_safely(tmp_path):
    from quantize.preprocess import Preprocessor

    x = np.random.default_rng(0).normal(size=(50, 6)).astype(np.float32)
    pre = Preprocessor(pca_dim=3, whiten=True)
    z = pre.fit_transform(x)
    pre.save(tmp_path / "pre.pt")
    _weights_only(tmp_path / "pre.pt")
    back = Preprocessor.load(tmp_path / "pre.pt")
    assert back.mean.dtype == np.float32 and back.components.shape == (3, 6)
    np.testing.assert_array_equal(back.transform(x), z)
    assert back.explained_variance_ratio == pre.explained_variance_ratio
    (tmp_path / "pre.pt").write_bytes((tmp_path / "pre.pt").read_bytes()[:100])
    with pytest.raises(CheckpointError, match=re.escape(f"{tmp_path / 'pre.pt'} is truncated or corrupt")):
        Preprocessor.load(tmp_path / "pre.pt")


def test_json_artifacts_keep_non_finite_numbers_and_strict_ones_write_null(tmp_path):
    """State genrec reads back keeps NaN / -inf exactly; a file for people (``strict``) is JSON any reader
    accepts, non-finite numbers (NumPy's and those inside arrays included) written as null."""
    import json

    from genrec.artifacts import load_json, save_json

    obj = {"offset": float("-inf"), "auc": np.float32("nan"), "x": np.array([1.5, np.inf]), "n": np.int64(3),
           "rows": ({"ok": 0.25, "none": None},)}
    back = load_json(save_json(tmp_path / "state.json", obj))
    assert back["offset"] == float("-inf") and np.isnan(back["auc"]) and back["x"] == [1.5, float("inf")]
    strict = save_json(tmp_path / "people.json", obj, strict=True)

    def refuse(token):
        raise AssertionError(token)

    assert json.loads(strict.read_text(), parse_constant=refuse) == {
        "offset": None, "auc": None, "x": [1.5, None], "n": 3, "rows": [{"ok": 0.25, "none": None}]}
    assert obj["x"][1] == np.inf  # the caller's objects are not changed


def _small_models():
    """One untrained model of each kind with a loader, its save function and its loader."""
    from genrec.generative import GenerativeConfig, HierarchicalGenerative, load_generative, save_generative
    from genrec.parallel_generative import ParallelCodeModel, ParallelConfig, load_parallel, save_parallel
    from genrec.sasrec import SASRec, SASRecConfig, load_sasrec, save_sasrec
    from genrec.tiger import TigerConfig, TigerModel, load_tiger, save_tiger

    i = np.arange(12)
    codes, sizes = np.stack([i // 4, i % 4], 1), [3, 4]
    torch.manual_seed(0)
    return {
        "sasrec": (SASRec(12, SASRecConfig(hidden=8, num_blocks=1, num_heads=1)), save_sasrec, load_sasrec),
        "generative": (HierarchicalGenerative(codes, sizes, GenerativeConfig(hidden=8, num_blocks=1, num_heads=1,
                                                                             head_layers=1)),
                       save_generative, load_generative),
        "tiger": (TigerModel(codes, sizes, TigerConfig(d_model=8, d_ff=16, num_heads=1, d_kv=4, num_encoder_layers=1,
                                                       num_decoder_layers=1, user_buckets=2)), save_tiger, load_tiger),
        "parallel": (ParallelCodeModel(codes, sizes, ParallelConfig(hidden=8, num_heads=1)), save_parallel,
                     load_parallel),
    }


def _extra_key(ckpt):
    ckpt["config"]["from_a_newer_genrec"] = 1  # TypeError: an unexpected keyword argument


def _other_shape(ckpt):
    key = "d_model" if "d_model" in ckpt["config"] else "hidden"
    ckpt["config"][key] = 16  # the config no longer matches the weights: RuntimeError, size mismatch


def _lost_weight(ckpt):
    del ckpt["model"][sorted(k for k in ckpt["model"] if k.endswith("weight"))[0]]  # RuntimeError: missing key


def _bad_value(ckpt):
    ckpt["config"]["max_epochs"] = -1  # a value this genrec refuses: ConfigError


@pytest.mark.parametrize("damage", [_extra_key, _other_shape, _lost_weight, _bad_value])
@pytest.mark.parametrize("kind", ["sasrec", "generative", "tiger", "parallel"])
def test_a_checkpoint_that_does_not_rebuild_is_a_checkpoint_error_naming_it(tmp_path, kind, damage):
    """The loaders rebuilt the config and loaded the weights unguarded: an unknown config key, a config not
    matching the weights or a missing weight crashed with a traceback instead of naming the file."""
    model, save, load = _small_models()[kind]
    save(model, tmp_path / "ok.pt")
    load(tmp_path / "ok.pt")  # the undamaged file loads
    ckpt = torch.load(tmp_path / "ok.pt", weights_only=True)
    damage(ckpt)
    torch.save(ckpt, tmp_path / "bad.pt")
    name = {"sasrec": "SASRec", "generative": "hierarchical generative model", "tiger": "TIGER model",
            "parallel": "parallel-code model"}[kind]
    with pytest.raises(CheckpointError) as err:
        load(tmp_path / "bad.pt")
    assert str(err.value).startswith(f"{tmp_path / 'bad.pt'}: not a {name} checkpoint of this genrec (")
    assert "\n" not in str(err.value) and "was it written by another model or another genrec version?" in str(err.value)


@pytest.mark.parametrize("kind,loader,says", [
    ("tiger", "generative", "it looks like a TIGER model's, trained by genrec generative --model tiger, read by "
                            "genrec.tiger.load_tiger"),
    ("parallel", "generative", "it looks like a parallel-code model's, trained by genrec generative --model "
                               "parallel, read by genrec.parallel_generative.load_parallel"),
    ("generative", "tiger", "it looks like a hierarchical generative model's"),
    ("generative", "parallel", "it looks like a hierarchical generative model's"),
    ("parallel", "tiger", "it looks like a parallel-code model's"),
])
def test_another_semantic_id_models_checkpoint_is_named_as_such(tmp_path, kind, loader, says):
    """The semantic-ID models' checkpoints hold the same entries: a TIGER one given to ``genrec analyze
    --generative`` (load_generative) was TypeError: ... unexpected keyword argument 'max_items'."""
    models = _small_models()
    model, save, _ = models[kind]
    save(model, tmp_path / "best.pt")
    with pytest.raises(CheckpointError) as err:
        models[loader][2](tmp_path)  # a run directory: its best.pt
    assert str(err.value).startswith(f"{tmp_path / 'best.pt'}: not a ")
    assert says in str(err.value)
