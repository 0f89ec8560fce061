"""Sentence encoder (the real bundled MiniLM, offline) and its on-disk cache."""

from __future__ import annotations

import numpy as np
import pytest

from quantize.embed import EmbeddingCache, TextEncoder, default_cache_dir, text_keys

TEXTS = ["Title: OPI Nail Lacquer; Brand: OPI; Categories: Makeup, Nails, Nail Polish",
         "Title: Essie Nail Polish, Ballet Slippers; Brand: Essie; Categories: Makeup, Nails",
         "Title: Neutrogena Ultra Sheer Sunscreen SPF 45; Categories: Skin Care, Sunscreens",
         "Title: Argan Oil Shampoo for Dry Hair; Categories: Hair Care, Shampoos"]


@pytest.fixture(scope="module")
def minilm():
    """One loaded bundled model for the whole module (loading is the slow part)."""
    import torch

    torch.set_num_threads(1)
    enc = TextEncoder(cache_dir=False, show_progress=False)
    enc.model  # load
    return enc._model


def encoder(tmp_path, model, **kw) -> TextEncoder:
    enc = TextEncoder(cache_dir=tmp_path, show_progress=False, **kw)
    enc._model = model  # share the loaded model; the cache logic is what is under test
    return enc


def test_default_model_embeds_offline_and_means_something(tmp_path, minilm):
    enc = encoder(tmp_path, minilm)
    x = enc.encode(TEXTS)
    assert x.shape == (4, 384) and x.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
    sim = x @ x.T
    assert sim[0, 1] > sim[0, 2] and sim[0, 1] > sim[0, 3]  # the two nail polishes are closest


def test_second_run_reads_the_cache_without_the_model(tmp_path, minilm):
    first = encoder(tmp_path, minilm)
    x = first.encode(TEXTS)
    assert first.model_calls == 4
    again = TextEncoder(cache_dir=tmp_path, show_progress=False)  # fresh: no model loaded
    y = again.encode(TEXTS)
    assert again.model_calls == 0 and again._model is None
    np.testing.assert_array_equal(x, y)


def test_only_changed_texts_are_re_embedded(tmp_path, minilm):
    enc = encoder(tmp_path, minilm)
    x = enc.encode(TEXTS)
    changed = list(TEXTS)
    changed[2] = "Title: Neutrogena Sunscreen SPF 70; Categories: Skin Care"
    enc2 = encoder(tmp_path, minilm)
    y = enc2.encode(changed)
    assert enc2.model_calls == 1
    np.testing.assert_array_equal(x[[0, 1, 3]], y[[0, 1, 3]])
    assert not np.allclose(x[2], y[2])
    # duplicates are embedded once and come back in input order
    enc3 = encoder(tmp_path / "other", minilm)
    z = enc3.encode([TEXTS[0], TEXTS[1], TEXTS[0]])
    assert enc3.model_calls == 2
    np.testing.assert_array_equal(z[0], z[2])


def test_cache_key_depends_on_model_and_options(tmp_path):
    a = TextEncoder(cache_dir=tmp_path)
    assert a.cache_key == TextEncoder("sentence-transformers/all-MiniLM-L6-v2", cache_dir=tmp_path).cache_key
    assert a.cache_key != TextEncoder(cache_dir=tmp_path, normalize=False).cache_key
    assert a.cache_key != TextEncoder(cache_dir=tmp_path, max_seq_length=32).cache_key
    assert a.cache_key != TextEncoder("some-org/other-model", cache_dir=tmp_path).cache_key


def test_default_cache_dir_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("GENREC_CACHE", str(tmp_path))
    assert default_cache_dir() == tmp_path / "embeddings"
    monkeypatch.delenv("GENREC_CACHE")
    assert default_cache_dir().parts[-3:] == (".cache", "genrec", "embeddings")


class _NaNModel:
    def encode(self, texts, **kw):
        out = np.ones((len(texts), 3), dtype=np.float32)
        out[[i for i, t in enumerate(texts) if "bad" in t]] = np.nan
        return out


def test_nan_embeddings_are_an_error_naming_the_item(tmp_path):
    enc = TextEncoder(cache_dir=tmp_path, show_progress=False)
    enc._model = _NaNModel()
    with pytest.raises(ValueError, match="NaN.*'item-b'"):
        enc.encode(["good text", "bad text"], ids=["item-a", "item-b"])
    assert len(EmbeddingCache(tmp_path / enc.cache_key)) == 0  # nothing bad was cached


def test_a_non_finite_cached_vector_is_embedded_again_and_errors_name_the_input_row(tmp_path, caplog):
    """A tampered cache's NaN vector stopped every later run (rerunning never fixed it), and without ids
    the error named the row of the sorted unique texts, not the input's."""
    enc = TextEncoder(cache_dir=tmp_path, show_progress=False)
    enc._model = _NaNModel()
    EmbeddingCache(tmp_path / enc.cache_key).put(text_keys(["good b"]), np.full((1, 3), np.nan, np.float32))
    (damaged,) = (tmp_path / enc.cache_key).glob("shard-*.npz")
    damaged.rename(damaged.with_name("shard-~damaged.npz"))  # sorts after any re-embedded shard (random names)
    out = enc.encode(["good b", "good a"])
    assert np.isfinite(out).all() and "1 cached vector(s)" in caplog.text
    hit, cached = EmbeddingCache(tmp_path / enc.cache_key).get(text_keys(["good b"]))  # the finite copy is read
    assert hit.all() and np.isfinite(cached).all()  # back, whichever shard name sorts last
    with pytest.raises(ValueError, match=r"NaN.*text #0"):  # input row 0, which sorts second
        enc.encode(["bad z", "good a"])


def test_empty_texts_are_rejected(tmp_path):
    enc = TextEncoder(cache_dir=False)
    with pytest.raises(ValueError, match="'x2'"):
        enc.encode(["fine", "  "], ids=["x1", "x2"])


def test_cache_shards_compact_and_survive_reload(tmp_path):
    cache = EmbeddingCache(tmp_path, max_shards=2)
    rng = np.random.default_rng(0)
    texts = [f"text {i}" for i in range(9)]
    keys, vecs = text_keys(texts), rng.normal(size=(9, 5)).astype(np.float32)
    for s in range(0, 9, 3):
        cache.put(keys[s:s + 3], vecs[s:s + 3])
    assert len(list(tmp_path.glob("shard-*.npz"))) <= 2
    hit, got = EmbeddingCache(tmp_path).get(keys[::-1])
    assert hit.all()
    np.testing.assert_array_equal(got, vecs[::-1])
    hit, _ = cache.get(text_keys(["unknown"]))
    assert not hit.any()


def test_damaged_cache_shard_is_skipped_not_fatal(tmp_path, caplog):
    """A truncated shard (a killed copy, a full disk) costs its vectors, recomputed, not the run."""
    cache = EmbeddingCache(tmp_path)
    keys = text_keys(["a", "b", "c", "d"])
    vecs = np.arange(20, dtype=np.float32).reshape(4, 5)
    cache.put(keys[:2], vecs[:2])
    (first,) = tmp_path.glob("shard-*.npz")
    cache.put(keys[2:], vecs[2:])
    first.write_bytes(first.read_bytes()[:40])  # numpy reads it as a damaged zip archive
    hit, got = EmbeddingCache(tmp_path).get(keys)
    assert hit.tolist() == [False, False, True, True]
    np.testing.assert_array_equal(got, vecs[2:])  # the hits' vectors
    assert "skipping unreadable shard" in caplog.text and first.name in caplog.text


@pytest.mark.parametrize("bad_keys, bad_vectors", [
    (3, np.zeros((2, 5), np.float32)),  # more keys than vectors: an IndexError in get
    (2, np.zeros(5, np.float32)),  # 1-d vectors: an AxisError while loading
    (2, np.zeros((2, 7), np.float32)),  # another width than the other shard's: a failed stack in get
])
def test_a_shard_of_the_wrong_shape_is_skipped(tmp_path, caplog, bad_keys, bad_vectors):
    cache = EmbeddingCache(tmp_path)
    keys = text_keys(["a", "b", "x", "y", "z"])
    vecs = np.arange(10, dtype=np.float32).reshape(2, 5)
    cache.put(keys[:2], vecs)
    with open(tmp_path / "shard-zzzz.npz", "wb") as f:  # sorts after the good one
        np.savez(f, keys=keys[2:2 + bad_keys], vectors=bad_vectors)
    hit, got = EmbeddingCache(tmp_path).get(keys)
    assert hit.tolist() == [True, True, False, False, False]
    np.testing.assert_array_equal(got, vecs)
    assert "skipping damaged shard" in caplog.text


def test_int8_precision_agrees_with_fp32_and_has_its_own_cache(tmp_path, minilm):
    texts = ["Lavender shampoo for dry hair", "Matte red lipstick", "Stainless steel nail clippers",
             "Hydrating face cream with SPF 30", "Volumising mascara, black"]
    ref = minilm.encode(texts, normalize_embeddings=True)
    int8 = TextEncoder(cache_dir=tmp_path, show_progress=False, precision="int8")
    assert int8.cache_key != TextEncoder(cache_dir=tmp_path).cache_key
    assert int8.config()["precision"] == "int8"
    x = int8.encode(texts)
    assert x.shape == ref.shape and not np.array_equal(x, ref)  # really the quantized model
    cos = (x * ref).sum(1)
    assert cos.min() > 0.97 and cos.mean() > 0.98, cos  # and close to fp32
    assert ((x @ x.T).argsort(1)[:, -2] == (ref @ ref.T).argsort(1)[:, -2]).mean() >= 0.8  # nearest neighbours kept
    with pytest.raises(ValueError, match="precision"):
        TextEncoder(cache_dir=False, precision="fp8")
    with pytest.raises(ValueError, match="CPU only"):
        TextEncoder(cache_dir=False, precision="int8", device="cuda")


def tiny_local_model(path) -> str:
    """A 1-layer BERT with a word-level vocabulary, saved as a plain HF model directory."""
    from transformers import BertConfig, BertModel, BertTokenizerFast
    import torch

    path.mkdir(parents=True, exist_ok=True)
    words = sorted({w.strip(",;:.").lower() for t in TEXTS for w in t.split()})
    (path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words) + "\n")
    BertTokenizerFast(vocab_file=str(path / "vocab.txt")).save_pretrained(path)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=5 + len(words), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64)).save_pretrained(path)
    return str(path)


def test_local_model_path_batches_by_token_count(tmp_path):
    """Any local HF directory works; texts go to the model longest-first by token count, in
    batches of ``batch_size``, and the vectors do not depend on the batching."""
    model_dir = tiny_local_model(tmp_path / "tiny")
    one_by_one = TextEncoder(model_dir, cache_dir=False, show_progress=False, batch_size=1)
    batched = TextEncoder(model_dir, cache_dir=False, show_progress=False, batch_size=3)
    sizes = []
    real_encode = batched.model.encode
    batched.model.encode = lambda texts, **kw: sizes.append(batched._lengths(list(texts)).tolist()) or \
        real_encode(texts, **kw)  # records each call's token lengths
    x, y = one_by_one.encode(TEXTS), batched.encode(TEXTS)
    np.testing.assert_allclose(x, y, atol=1e-5)
    assert [len(s) for s in sizes] == [3, 1]
    flat = [n for s in sizes for n in s]
    assert flat == sorted(flat, reverse=True)  # longest first, by tokens


def test_encoder_runs_on_cuda(tmp_path):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    model_dir = tiny_local_model(tmp_path / "tiny")
    cpu = TextEncoder(model_dir, cache_dir=False, show_progress=False).encode(TEXTS)
    gpu_enc = TextEncoder(model_dir, cache_dir=False, show_progress=False, device="cuda")
    gpu = gpu_enc.encode(TEXTS)
    assert next(gpu_enc.model.parameters()).is_cuda
    np.testing.assert_allclose(gpu, cpu, atol=1e-4)


def test_a_stray_shard_sorting_first_does_not_make_the_good_ones_damaged(tmp_path, caplog):
    """The first shard's width decided which shards were "damaged": a stray one sorting first (random
    names) discarded every good shard, and every shard written after."""
    cache = EmbeddingCache(tmp_path)
    keys = text_keys(["a", "b", "c", "d", "z"])
    vecs = np.arange(20, dtype=np.float32).reshape(4, 5)
    cache.put(keys[:2], vecs[:2])
    cache.put(keys[2:4], vecs[2:4])
    with open(tmp_path / "shard-0000.npz", "wb") as f:  # sorts before the uuid-named ones
        np.savez(f, keys=keys[4:], vectors=np.zeros((1, 7), np.float32))
    hit, got = EmbeddingCache(tmp_path).get(keys)
    assert hit.tolist() == [True, True, True, True, False]
    np.testing.assert_array_equal(got, vecs)
    assert "shard-0000.npz (vectors of width 7, the cache's 5)" in caplog.text


@pytest.mark.parametrize("blank", ["", "   "])
def test_a_blank_model_name_is_refused(blank, tmp_path):
    """Path("") is the current directory: it was loaded as the model while config() said all-MiniLM-L6-v2."""
    from quantize.embed import resolve_model

    with pytest.raises(ValueError, match=f"non-empty model name or directory .*got {blank!r}"):
        resolve_model(blank)
    with pytest.raises(ValueError, match="non-empty model name"):
        TextEncoder(blank, cache_dir=tmp_path)


def test_the_config_records_what_is_loaded_and_the_cache_key_is_unchanged(tmp_path):
    import hashlib
    import json

    from quantize.embed import resolve_model

    enc = TextEncoder(cache_dir=tmp_path)
    path, identity = resolve_model(None)
    assert enc.config()["model"] == "all-MiniLM-L6-v2" and enc.config()["model_path"] == path
    key = json.dumps({"model": identity, "normalize": True, "max_seq_length": None})  # as before the record
    assert enc.cache_key == f"all-MiniLM-L6-v2-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
    assert TextEncoder("some-org/other-model", cache_dir=False).config()["model_path"] == "some-org/other-model"
    local = TextEncoder(tmp_path, cache_dir=False).config()  # a Path: recorded as a string (JSON)
    assert local["model"] == str(tmp_path) and local["model_path"] == str(tmp_path.resolve())


def test_a_lone_surrogate_text_is_refused_naming_the_item(tmp_path):
    enc = TextEncoder(cache_dir=tmp_path, show_progress=False)
    enc._model = _NaNModel()
    with pytest.raises(ValueError, match=r"1 empty, non-string or invalid \(lone surrogate\) text\(s\): items 'x2'"):
        enc.encode(["fine", "bad \ud800 half"], ids=["x1", "x2"])  # a bare UnicodeEncodeError from the hashing


@pytest.mark.parametrize("option", ["batch_size", "chunk_size"])
def test_encoder_sizes_must_be_positive_integers(option):
    with pytest.raises(ValueError, match=f"{option} must be an integer >= 1, got 2.5"):
        TextEncoder(cache_dir=False, **{option: 2.5})
