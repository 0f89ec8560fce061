"""build_semantic_ids end to end, its saved artifacts, cold start, and the ``genrec quantize`` CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from genrec.cli import main
from genrec.data import DataFormatError, ItemText, SequenceDataset, write_plain
from quantize import SemanticIdResult, build_semantic_ids

torch.set_num_threads(1)


def toy_dataset(n: int = 120) -> SequenceDataset:
    items = [ItemText(title=f"Product {k}", brand=f"Brand {k % 5}", categories=("Beauty", f"Cat {k % 3}"))
             for k in range(n)]
    ids = [f"P{k:04d}" for k in range(n)]
    seqs = [np.arange(u, n, 10, dtype=np.int64) for u in range(10)]  # every item is interacted with
    return SequenceDataset(name="toy", item_ids=ids, user_ids=[f"u{u}" for u in range(10)], sequences=seqs,
                           items=items, timestamps=[np.arange(len(q), dtype=np.float64) for q in seqs])


def clustered_embeddings(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(6, 24)) * 10
    return (centers[np.arange(n) % 6] + rng.normal(size=(n, 24))).astype(np.float32)


def test_build_with_given_embeddings_save_load_and_cold_start(tmp_path):
    ds = toy_dataset()
    x = clustered_embeddings(ds.num_items)
    res = build_semantic_ids(ds, "rq_kmeans", embeddings=x, levels=2, codebook_size=8, seed=1)
    t = res.table
    assert t.num_items == ds.num_items and t.num_levels == 3 and t.item_ids == ds.item_ids
    assert len({tuple(r) for r in t.codes.tolist()}) == ds.num_items
    d = res.diagnostics
    assert d["semantic_ids"]["all_unique"] and d["collisions"]["largest_group"] == t.codebook_sizes[-1]
    assert [c["used"] for c in d["codebooks"]] and "mse" in d["reconstruction"]
    assert t.config["method"] == "rq_kmeans" and t.config["quantizer"]["seed"] == 1

    res.save(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} >= {"semantic_ids.json", "diagnostics.json", "quantizer.pt"}
    back = SemanticIdResult.load(tmp_path)
    assert back.table == t and back.diagnostics["collisions"] == d["collisions"]
    new = clustered_embeddings(ds.num_items + 4)[-4:]  # 4 unseen items
    codes = back.encode_new(new)
    np.testing.assert_array_equal(codes, res.encode_new(new))
    t2 = back.table.extend(codes, item_ids=["N1", "N2", "N3", "N4"])
    assert t2.num_items == ds.num_items + 4 and len({tuple(r) for r in t2.codes.tolist()}) == t2.num_items


@pytest.mark.parametrize("method,cfg", [("pq", dict(subspaces=4, codebook_size=8)),
                                        ("opq", dict(subspaces=2, codebook_size=8, opq_iters=3)),
                                        ("rq_vae", dict(levels=2, codebook_size=8, hidden_dims=(32,),
                                                        latent_dim=4, epochs=3))])
def test_build_every_method_with_pca(method, cfg, tmp_path):
    ds = toy_dataset()
    res = build_semantic_ids(ds, method, embeddings=clustered_embeddings(ds.num_items), pca_dim=8, whiten=True,
                             **cfg)
    assert res.preprocessor is not None and res.diagnostics["embedding"]["quantized_dim"] == 8
    assert res.diagnostics["semantic_ids"]["all_unique"]
    res.save(tmp_path)
    back = SemanticIdResult.load(tmp_path)
    np.testing.assert_array_equal(back.encode_new(res.embeddings), res.table.base_codes)


def test_save_over_an_earlier_result_never_pairs_old_and_new_files(tmp_path, monkeypatch):
    """Saving without PCA over a save with PCA, killed before the table is written: the directory
    holds no table (it does not load) rather than this quantizer beside the earlier PCA."""
    ds = toy_dataset()
    x = clustered_embeddings(ds.num_items)
    build_semantic_ids(ds, "rq_kmeans", embeddings=x, pca_dim=8, levels=2, codebook_size=8).save(tmp_path)
    res = build_semantic_ids(ds, "rq_kmeans", embeddings=x, levels=2, codebook_size=4)
    monkeypatch.setattr(type(res.table), "save", lambda self, path: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        res.save(tmp_path)
    assert not (tmp_path / "semantic_ids.json").exists() and not (tmp_path / "preprocess.pt").exists()
    monkeypatch.undo()
    res.save(tmp_path)
    assert SemanticIdResult.load(tmp_path).table == res.table


def test_a_quantizer_refuses_a_preprocessor_it_was_not_fitted_after(tmp_path):
    """With preprocess.pt missing (or an earlier fit's of the same width) encode_with_saved returned other
    codes silently: the quantizer records the preprocessing it was fitted after."""
    import shutil

    from genrec.errors import CheckpointError
    from quantize import encode_with_saved

    ds = toy_dataset()
    x = clustered_embeddings(ds.num_items)
    res = build_semantic_ids(ds, "rq_kmeans", embeddings=x, whiten=True, levels=2, codebook_size=4)
    res.save(tmp_path / "a")
    np.testing.assert_array_equal(encode_with_saved(tmp_path / "a", x), res.table.base_codes)
    other = build_semantic_ids(ds, "rq_kmeans", embeddings=x[::-1].copy(), whiten=True, levels=2, codebook_size=4)
    other.save(tmp_path / "b")
    shutil.copyfile(tmp_path / "b" / "preprocess.pt", tmp_path / "a" / "preprocess.pt")  # same width, other fit
    with pytest.raises(CheckpointError, match="preprocess.pt is missing or belongs to another fit"):
        encode_with_saved(tmp_path / "a", x)
    (tmp_path / "a" / "preprocess.pt").unlink()
    with pytest.raises(CheckpointError, match="given none"):
        encode_with_saved(tmp_path / "a", x)
    res.quantizer.fit(x)  # refitted by hand on other (no) preprocessing: the old record must not pass for it
    assert res.quantizer.fitted_after is None
    plain = build_semantic_ids(ds, "rq_kmeans", embeddings=x, levels=2, codebook_size=4)
    plain.save(tmp_path / "c")
    shutil.copyfile(tmp_path / "b" / "preprocess.pt", tmp_path / "c" / "preprocess.pt")  # fitted after none
    with pytest.raises(CheckpointError, match=r"fitted after preprocessing \(none\)"):
        encode_with_saved(tmp_path / "c", x)


def test_a_damaged_preprocessor_file_is_named():
    import tempfile
    from pathlib import Path

    from genrec.artifacts import pack_arrays, torch_save
    from genrec.errors import CheckpointError
    from quantize.preprocess import Preprocessor

    with tempfile.TemporaryDirectory() as d:
        p = Preprocessor(whiten=True)
        p.fit_transform(clustered_embeddings(40))
        good = {"format": "genrec.preprocess/1", "config": p.config(), "mean": p.mean, "components": p.components,
                "scale": p.scale, "explained_variance_ratio": 1.0}
        for bad, says in (({k: v for k, v in good.items() if k != "config"}, "KeyError"),
                          ({**good, "mean": np.zeros(4, np.float32)}, r"mean \[4\], components \[24, 24\]")):
            torch_save(Path(d) / "pre.pt", pack_arrays(bad))
            with pytest.raises(CheckpointError, match=f"pre.pt: a damaged preprocessor file .*{says}"):
                Preprocessor.load(Path(d) / "pre.pt")


def test_pca_of_data_without_variance_reports_a_number():
    from quantize.preprocess import Preprocessor

    pre = Preprocessor(pca_dim=1)
    with np.errstate(all="raise"):
        pre.fit_transform(np.ones((3, 4), np.float32))
    assert pre.explained_variance_ratio == 1.0  # was NaN, written into diagnostics.json


def test_build_rejects_bad_embeddings_naming_the_item():
    ds = toy_dataset(20)
    x = clustered_embeddings(20)
    x[7, 0] = np.nan
    with pytest.raises(ValueError, match="'P0007'"):
        build_semantic_ids(ds, embeddings=x, codebook_size=4)
    with pytest.raises(ValueError, match="ids for 19"):
        build_semantic_ids(ds, embeddings=x[:19], codebook_size=4)


def test_build_reports_items_without_text(tmp_path):
    ds = toy_dataset(10)
    ds.items[3] = ItemText()
    with pytest.raises(DataFormatError, match="'P0003'"):
        build_semantic_ids(ds, encoder=None, codebook_size=4)


def test_cli_quantize_with_real_encoder_then_show(tmp_path, capsys):
    ds = toy_dataset(40)
    write_plain(ds, tmp_path / "data")
    out = tmp_path / "out"
    argv = ["quantize", str(tmp_path / "data"), "--method", "rq_kmeans", "--levels", "2", "--codebook-size", "4",
            "--cache-dir", str(tmp_path / "cache"), "--skip-category", "Beauty", "--out", str(out)]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "level 0: used" in text and "collisions:" in text and "reconstruction:" in text
    diag = json.loads((out / "diagnostics.json").read_text())
    assert diag["embedding"]["dim"] == 384 and diag["semantic_ids"]["num_items"] == 40
    table = json.loads((out / "semantic_ids.json").read_text())
    assert table["config"]["template"]["skip_categories"] == ["Beauty"] and len(table["codes"]) == 40
    assert main(["quantize", "--show", str(out)]) == 0
    assert "collisions:" in capsys.readouterr().out


def test_cli_precomputed_embeddings_and_errors(tmp_path, capsys):
    ds = toy_dataset(30)
    write_plain(ds, tmp_path / "data")
    np.save(tmp_path / "x.npy", clustered_embeddings(30))
    out = tmp_path / "out"
    assert main(["quantize", str(tmp_path / "data"), "--embeddings", str(tmp_path / "x.npy"), "--method", "pq",
                 "--subspaces", "2", "--codebook-size", "4", "--set", "niter=5", "--out", str(out)]) == 0
    assert json.loads((out / "semantic_ids.json").read_text())["codebook_sizes"][:2] == [4, 4]
    capsys.readouterr()
    assert main(["quantize", str(tmp_path / "data"), "--embeddings", str(tmp_path / "x.npy"),
                 "--set", "colour=3", "--out", str(out)]) == 2
    assert "bad option" in capsys.readouterr().err
    assert main(["quantize", str(tmp_path / "data"), "--method", "pq", "--levels", "2", "--out", str(out)]) == 2
    assert "--subspaces" in capsys.readouterr().err


@pytest.mark.parametrize("options, message", [
    ({"nitre": 5}, r"config key 'quantize.options': bad option for quantizer 'rq_kmeans'.*'nitre'"),
    ({"niter": 0}, r"config key 'quantize.options': niter must be an integer >= 1, got 0"),
    ({"seed": 3}, r"config key 'quantize.options.seed' is a setting of its own: set quantize.seed"),
    ({"codebook_size": [512, 256, 256]}, r"'quantize.options.codebook_size' is a setting of its own"),
])
def test_recipe_quantizer_options_are_checked_with_the_config(options, message):
    """They used to fail after the data and embed stages (seed: a TypeError traceback), or be
    overwritten silently (codebook_size, levels)."""
    from genrec.recipe import ConfigError, config_from_dict

    with pytest.raises(ConfigError, match=message):
        config_from_dict({"quantize": {"options": options}})
    config = config_from_dict({"quantize": {"method": "rq_vae", "levels": 2, "options": {"epochs": 3}}})
    assert config.quantize.quantizer_options() == {"epochs": 3, "codebook_size": 256, "levels": 2}
