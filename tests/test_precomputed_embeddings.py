"""Precomputed item embeddings (genrec.item_embeddings, the recipe's ``text.embeddings``): both file
layouts, every mismatch as a clear error, and the tiny demo recipe run end to end on them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import genrec
from genrec.errors import CheckpointError, ConfigError, DataFormatError, DataNotFoundError, RunDirectoryError
from genrec.item_embeddings import default_ids_path, embedding_files, load_item_embeddings

from conftest import TINY_DEMO

ROOT = Path(__file__).resolve().parents[1]
DEMO_YAML = ROOT / "recipes" / "configs" / "demo.yaml"
IDS = ["a", "b", "c"]


def _npy(tmp_path: Path, ids: list[str], x: np.ndarray, name: str = "vec") -> Path:
    path = tmp_path / f"{name}.npy"
    np.save(path, x)
    default_ids_path(path).write_text("".join(f"{i}\n" for i in ids), encoding="utf-8")
    return path


def _parquet(tmp_path: Path, ids, vectors, id_col="item_id", vec_col="embedding", name="vec") -> Path:
    path = tmp_path / f"{name}.parquet"
    pq.write_table(pa.table({id_col: ids, vec_col: vectors}), path)
    return path


def test_npy_with_id_list_is_reordered(tmp_path):
    x = np.arange(9, dtype=np.float64).reshape(3, 3)
    path = _npy(tmp_path, ["c", "a", "b"], x)
    assert default_ids_path(path).name == "vec.ids.txt"
    out = load_item_embeddings(path, IDS)
    assert out.dtype == np.float32 and out.flags.c_contiguous
    np.testing.assert_array_equal(out, x[[1, 2, 0]])
    other = tmp_path / "order.txt"
    other.write_text("a\nb\nc\n")
    np.testing.assert_array_equal(load_item_embeddings(path, IDS, ids_path=other), x)
    assert embedding_files(path, other) == [path, other]


def test_parquet_custom_columns_list_and_fixed_size(tmp_path):
    vecs = [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]
    path = _parquet(tmp_path, ["b", "c", "a"], vecs, id_col="sku", vec_col="v")
    np.testing.assert_array_equal(load_item_embeddings(path, IDS, id_column="sku", vector_column="v"),
                                  np.array([vecs[2], vecs[0], vecs[1]], np.float32))
    fixed = pa.FixedSizeListArray.from_arrays(pa.array(np.arange(6, dtype=np.float32)), 2)
    pq.write_table(pa.table({"item_id": [1, 2, 3], "embedding": fixed}), tmp_path / "f.parquet")
    assert load_item_embeddings(tmp_path / "f.parquet", ["3", "1", "2"]).tolist() == [[4, 5], [0, 1], [2, 3]]
    assert embedding_files(path) == [path]


def _bad_npy(tmp_path, ids=("a", "b", "c"), x=None, **kw):
    return load_item_embeddings(_npy(tmp_path, list(ids), np.ones((len(ids), 2)) if x is None else x), IDS, **kw)


BAD = [
    ("missing-id", lambda p: _bad_npy(p, ids=("a", "b")), DataFormatError,
     r"vec.npy: 1 of the dataset's 3 items have no embedding, e.g. \['c'\]"),
    ("extra-id", lambda p: _bad_npy(p, ids=("a", "b", "c", "zz")), DataFormatError,
     r"vec.npy: 1 embedding\(s\) of items the dataset does not have, e.g. \['zz'\]"),
    ("count-mismatch", lambda p: _bad_npy(p, x=np.ones((2, 2))), DataFormatError,
     r"vec.npy: 2 rows but 3 ids in .*vec.ids.txt"),
    ("repeated-id", lambda p: _bad_npy(p, ids=("a", "b", "a")), DataFormatError,
     r"vec.ids.txt:3: item id 'a' repeated \(first at line 1\)"),
    ("nan", lambda p: _bad_npy(p, x=np.array([[1.0, 2.0], [np.nan, 0.0], [1.0, np.inf]])), DataFormatError,
     r"vec.npy: 2 embedding\(s\) hold NaN or infinite values .*e.g. items \['b', 'c'\]"),
    ("wrong-dim", lambda p: _bad_npy(p, dim=4), DataFormatError,
     r"vec.npy: the embeddings have dimension 2, expected 4"),
    ("one-d", lambda p: _bad_npy(p, x=np.ones(3)), DataFormatError,
     r"vec.npy: item embeddings must be a non-empty 2-d array \[items, dim\], got shape \(3,\)"),
    ("strings", lambda p: _bad_npy(p, x=np.array([["x", "y"]] * 3)), DataFormatError,
     r"vec.npy: item embeddings must be numbers, got dtype <U1"),
    ("pickled", lambda p: _bad_npy(p, x=np.array([{"a": 1}] * 3, dtype=object)), DataFormatError,
     r"vec.npy: not a .npy array of item embeddings"),
    # a .npz archive named .npy: named as such (it read "shape None" and left the file open)
    ("npz-named-npy", lambda p: (np.savez(p / "arch.npz", x=np.ones((3, 2))),
                                 (p / "arch.npz").rename(p / "arch.npy"), (p / "arch.ids.txt").write_text("a\nb\nc\n"),
                                 load_item_embeddings(p / "arch.npy", IDS)),
     DataFormatError, r"arch.npy: a .npz archive, not a .npy array"),
    ("no-id-list", lambda p: (np.save(p / "lone.npy", np.ones((3, 2))), load_item_embeddings(p / "lone.npy", IDS)),
     DataNotFoundError, r"lone.ids.txt: id list of the embeddings not found"),
    ("no-file", lambda p: load_item_embeddings(p / "none.npy", IDS), DataNotFoundError,
     r"none.npy: precomputed item embeddings not found"),
    ("suffix", lambda p: (p.joinpath("v.csv").write_text("a,1\n"), load_item_embeddings(p / "v.csv", IDS)),
     DataFormatError, r"v.csv: precomputed item embeddings must be a .npy file .* or a .parquet file"),
    ("pq-ragged", lambda p: load_item_embeddings(_parquet(p, IDS, [[1.0, 2.0], [1.0], [1.0, 2.0]]), IDS),
     DataFormatError, r"vec.parquet: row 2: item 'b' has a vector of length 1, the first row 2"),
    ("pq-null-vector", lambda p: load_item_embeddings(_parquet(p, IDS, [[1.0], None, [2.0]]), IDS),
     DataFormatError, r"vec.parquet: row 2: item 'b' has no vector"),
    ("pq-repeated-id", lambda p: load_item_embeddings(_parquet(p, ["a", "b", "a"], [[1.0]] * 3), IDS),
     DataFormatError, r"vec.parquet: row 3: item id 'a' repeated \(first at row 1\)"),
    ("pq-no-column", lambda p: load_item_embeddings(_parquet(p, IDS, [[1.0]] * 3, vec_col="vector"), IDS),
     DataFormatError, r"vec.parquet: no vector column 'embedding' \(columns: \['item_id', 'vector'\]\)"),
    ("pq-vector-type", lambda p: load_item_embeddings(_parquet(p, IDS, ["x", "y", "z"]), IDS),
     DataFormatError, r"vec.parquet: vector column 'embedding' must hold lists of numbers, got string"),
    ("pq-missing-id", lambda p: load_item_embeddings(_parquet(p, ["a", "c"], [[1.0]] * 2), IDS),
     DataFormatError, r"vec.parquet: 1 of the dataset's 3 items have no embedding, e.g. \['b'\]"),
]


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_bad_embedding_files(tmp_path, case):
    _, trigger, error, match = case
    with pytest.raises(error, match=match):
        trigger(tmp_path)


def test_config_checks_the_suffix_and_keeps_old_hashes():
    from genrec.recipe import config_from_dict
    from genrec.recipe.stage_hash import section_for_hash

    with pytest.raises(ConfigError, match=r"'text.embeddings' must name a .npy file .* got 'vectors.csv'"):
        config_from_dict({}, overrides=["text.embeddings=vectors.csv"])
    # without text.embeddings the hashed text section is what it was before the option existed
    hashed = section_for_hash(config_from_dict({}), "text")
    assert not any(k.startswith("embeddings") for k in hashed) and "model" in hashed


# -- the recipe --------------------------------------------------------------------------------------


def _demo_items() -> list[str]:
    spec = next(o for o in TINY_DEMO if o.startswith("data.dataset=")).partition("=")[2]
    return genrec.load_dataset(spec).item_ids


@pytest.fixture(scope="module")
def vectors(tmp_path_factory):
    """The tiny demo's items with seeded 16-d vectors, written shuffled as .npy + id list."""
    ids = _demo_items()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(len(ids), 16)).astype(np.float32)
    perm = rng.permutation(len(ids))
    d = tmp_path_factory.mktemp("vectors")
    path = _npy(d, [ids[k] for k in perm], x[perm], name="items")
    return path, ids, x


def _config(path: Path, *extra: str):
    from genrec.recipe import load_config

    return load_config(DEMO_YAML, overrides=[*TINY_DEMO, f"text.embeddings={path}", *extra])


@pytest.fixture(scope="module")
def precomputed_run(vectors, tmp_path_factory):
    from genrec.recipe import run_recipe

    out = tmp_path_factory.mktemp("precomputed") / "run"
    results = run_recipe(_config(vectors[0]), out, progress=False)
    assert results is not None
    return out


def test_recipe_runs_on_precomputed_embeddings(precomputed_run, vectors):
    from genrec.artifacts import load_json

    _, ids, x = vectors
    np.testing.assert_array_equal(np.load(precomputed_run / "embed" / "embeddings.npy"), x)
    summary = load_json(precomputed_run / "embed" / "summary.json")
    assert summary["encoder"] is None and summary["dim"] == 16 and summary["items"] == len(ids)
    assert summary["precomputed"]["path"].endswith("items.npy")
    assert [Path(f["path"]).name for f in summary["precomputed"]["files"]] == ["items.npy", "items.ids.txt"]
    for stage in ("quantize", "sasrec", "generative", "fusion", "evaluate", "report"):
        assert (precomputed_run / stage / "stage.done.json").is_file(), stage
    assert (precomputed_run / "results.json").is_file()


def test_add_items_refuses_without_an_encoder(precomputed_run):
    from genrec.recommender import Recommender

    rec = Recommender.from_run(precomputed_run)
    with pytest.raises(CheckpointError, match=r"item embeddings were precomputed \(text.embeddings: .*items.npy\), "
                                              r"not made by a text encoder"):
        rec.add_items([{"item_id": "new1", "title": "A new item"}])


def test_changed_file_reruns_the_embed_stage(precomputed_run, vectors, tmp_path):
    import shutil

    from genrec.recipe import Recipe

    path, ids, x = vectors
    copy = shutil.copytree(precomputed_run, tmp_path / "run")
    events: dict[str, str] = {}
    with Recipe(_config(path), copy, progress=False,  # unchanged: every stage is done
                on_stage=lambda n, e, i: events.__setitem__(n, e) if e != "start" else None) as recipe:
        assert recipe.run_stage("data") and recipe.run_stage("embed")["config_hash"]
    assert events == {"data": "skip", "embed": "skip"}  # not embedded again
    original = path.read_bytes()
    try:  # the same file with other vectors: only its fingerprint changed
        np.save(path, np.load(path) + 1.0)
        with pytest.raises(RunDirectoryError, match=r"\(changed: text.embeddings files\); running would discard the "
                                                    r"stages embed, quantize"):
            Recipe(_config(path), copy, progress=False).__enter__()
    finally:
        path.write_bytes(original)


def test_recipe_mismatch_is_a_clear_error(vectors, tmp_path):
    from genrec.recipe import StopAfterStage, run_recipe

    _, ids, x = vectors
    short = _npy(tmp_path, ids[1:], x[1:], name="short")
    with pytest.raises(DataFormatError, match=rf"short.npy: 1 of the dataset's {len(ids)} items have no embedding, "
                                              rf"e.g. \['{ids[0]}'\]"):
        try:
            run_recipe(_config(short), tmp_path / "run", progress=False, stop_after="embed")
        except StopAfterStage:
            pass
