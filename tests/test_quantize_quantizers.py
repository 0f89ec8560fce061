"""RQ-KMeans, RQ-VAE, PQ and OPQ on synthetic clustered vectors: one interface, same guarantees."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from genrec.errors import CheckpointError
from quantize import OPQ, PQ, RQVAE, Quantizer, RQKMeans, load_quantizer, make_quantizer, reconstruction_error

torch.set_num_threads(1)

N_CLUSTERS, DIM = 8, 32

# Small configurations so every fit takes well under a second on one core.
CONFIGS = {
    "rq_kmeans": dict(levels=3, codebook_size=N_CLUSTERS),
    "rq_vae": dict(levels=3, codebook_size=N_CLUSTERS, hidden_dims=(64,), latent_dim=8, epochs=25,
                   batch_size=128, lr=3e-3),
    "pq": dict(subspaces=4, codebook_size=N_CLUSTERS),
    "opq": dict(subspaces=4, codebook_size=N_CLUSTERS, opq_iters=5),
}
METHODS = list(CONFIGS)


def clustered(n: int, seed: int = 0, centers_seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` points around 8 well-separated centres in 32-d, and their cluster labels."""
    centers = np.random.default_rng(centers_seed).normal(size=(N_CLUSTERS, DIM)) * 20
    rng = np.random.default_rng(seed + 1)
    labels = np.arange(n) % N_CLUSTERS
    return (centers[labels] + rng.normal(size=(n, DIM))).astype(np.float32), labels


@pytest.fixture(scope="module")
def data():
    return clustered(400)


@pytest.fixture(scope="module")
def fitted(data):
    """Each method fitted once on the module's data: ``name -> (quantizer, codes)``."""
    out = {}
    for name in METHODS:
        q = make_quantizer(name, seed=0, **CONFIGS[name])
        out[name] = (q, q.fit(data[0]))
    return out


@pytest.mark.parametrize("name", METHODS)
def test_codes_shape_range_and_cluster_share_first_code(name, data, fitted):
    x, labels = data
    q, codes = fitted[name]
    assert isinstance(q, Quantizer) and q.name == name
    assert codes.dtype == np.int64 and codes.shape == (len(x), q.levels)
    assert ((codes >= 0) & (codes < np.array(q.codebook_sizes))).all()
    if name == "opq":
        # OPQ's rotation spreads the cluster structure over all sub-spaces, so one sub-space alone
        # need not separate the clusters; the whole code tuple must never mix two clusters.
        tuples = {}
        for row, c in zip(map(tuple, codes.tolist()), labels):
            assert tuples.setdefault(row, c) == c
    else:
        first = {c: set(codes[labels == c, 0]) for c in range(N_CLUSTERS)}
        assert all(len(s) == 1 for s in first.values()), first  # a cluster shares its first code ...
        assert len({s.pop() for s in first.values()}) == N_CLUSTERS  # ... and clusters differ
    rec = reconstruction_error(q, x, codes)
    assert rec["relative"] < 0.25


@pytest.mark.parametrize("name", ["rq_kmeans", "rq_vae"])
def test_reconstruction_improves_with_levels(name, data, fitted):
    x, _ = data
    q, codes = fitted[name]
    errs = [reconstruction_error(q, x, codes)["per_level"][k]["mse"] for k in range(q.levels)]
    assert errs[0] > errs[1] > errs[2]


def test_pq_has_no_prefix_reconstruction(fitted):
    q, codes = fitted["pq"]
    with pytest.raises(TypeError):
        q.decode_prefix(codes, 1)


@pytest.mark.parametrize("name", METHODS)
def test_deterministic_for_a_seed(name, data, fitted):
    q2 = make_quantizer(name, seed=0, **CONFIGS[name])
    np.testing.assert_array_equal(q2.fit(data[0]), fitted[name][1])
    np.testing.assert_array_equal(q2.decode(fitted[name][1]), fitted[name][0].decode(fitted[name][1]))


@pytest.mark.parametrize("name", METHODS)
def test_save_load_round_trip(name, data, fitted, tmp_path):
    q, codes = fitted[name]
    path = q.save(tmp_path / f"{name}.pt")
    for loaded in (load_quantizer(path), type(q).load(path)):
        assert type(loaded) is type(q) and loaded.config() == q.config()
        assert loaded.codebook_sizes == q.codebook_sizes
        np.testing.assert_array_equal(loaded.encode(data[0]), codes)
        np.testing.assert_allclose(loaded.decode(codes), q.decode(codes), rtol=1e-5, atol=1e-5)
    other = RQKMeans if name != "rq_kmeans" else PQ
    with pytest.raises(ValueError, match="holds"):
        other.load(path)
    blob = torch.load(path, weights_only=True)
    del blob["state"]  # the right format, the content of another version: an error naming the file
    torch.save(blob, tmp_path / "edited.pt")
    with pytest.raises(CheckpointError, match=r"edited.pt: a damaged or incompatible .* quantizer file \(KeyError"):
        load_quantizer(tmp_path / "edited.pt")
    if name != "rq_vae":  # centroids that do not fit the file's codebooks: encode returned garbage codes
        blob = torch.load(path, weights_only=True)
        blob["state"]["centroids"] = blob["state"]["centroids"][:-1]
        torch.save(blob, tmp_path / "short.pt")
        with pytest.raises(CheckpointError, match=r"short.pt: .*\(ValueError: \d centroid arrays for \d codebooks"):
            load_quantizer(tmp_path / "short.pt")
    if name == "opq":
        from genrec.artifacts import pack_arrays, unpack_arrays

        blob = unpack_arrays(torch.load(path, weights_only=True))
        blob["state"]["rotation"] = blob["state"]["rotation"][:-1]
        torch.save(pack_arrays(blob), tmp_path / "rot.pt")
        with pytest.raises(CheckpointError, match=r"rot.pt: .*the rotation is"):
            load_quantizer(tmp_path / "rot.pt")


@pytest.mark.parametrize("name", ["rq_kmeans", "pq", "opq"])
def test_a_refit_that_fails_leaves_the_quantizer_unfitted(name, data, fitted):
    """An interrupted or failed refit left the earlier fit's sizes (and dim) with part of the new
    state: encode returned codes outside the codebooks, or refused the data it had been fitted on."""
    import quantize.base

    q = type(fitted[name][0])(**fitted[name][0].config())
    q.fit(data[0])
    calls = []

    def interrupted(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    real = quantize.base.kmeans
    target = __import__(type(q).__module__, fromlist=["kmeans"])
    target.kmeans = interrupted
    try:
        with pytest.raises(KeyboardInterrupt):
            q.fit(data[0])
    finally:
        target.kmeans = real
    assert not q.fitted
    with pytest.raises(RuntimeError, match="not fitted"):
        q.encode(data[0])


@pytest.mark.parametrize("name", METHODS)
def test_cold_start_encode_of_unseen_vectors(name, data, fitted):
    x, labels = data
    q, codes = fitted[name]
    np.testing.assert_array_equal(q.encode(x), codes)  # training items keep their codes
    new, new_labels = clustered(40, seed=7)  # unseen points of the same clusters
    new_codes = q.encode(new)
    assert new_codes.shape == (40, q.levels)
    if name == "opq":  # see above: compare against the nearest training item's codes
        nearest = ((new[:, None] - x[None]) ** 2).sum(-1).argmin(1)
        assert (labels[nearest] == new_labels).all()
        assert (new_codes[:, 0] == codes[nearest, 0]).mean() > 0.8
    else:
        first_of_cluster = {int(labels[i]): int(codes[i, 0]) for i in range(len(x))}
        assert all(new_codes[i, 0] == first_of_cluster[int(new_labels[i])] for i in range(40))


@pytest.mark.parametrize("name", METHODS)
def test_more_codes_than_points_reduces_the_codebook(name, caplog):
    x, _ = clustered(40, seed=3)
    cfg = {**CONFIGS[name], "codebook_size": 256}
    q = make_quantizer(name, seed=0, **cfg)
    with caplog.at_level("WARNING"):
        codes = q.fit(x)
    assert set(q.codebook_sizes) == {40} and codes.max() < 40
    assert "40 training vectors for 256 codes" in caplog.text


def test_bad_inputs_are_clear_errors(fitted):
    x, _ = clustered(40)
    x[5, 3] = np.nan
    ids = [f"item{k}" for k in range(40)]
    with pytest.raises(ValueError, match="NaN.*'item5'"):
        RQKMeans(codebook_size=4).fit(x, ids)
    x[5, 3] = np.inf
    with pytest.raises(ValueError, match="#5"):
        PQ(codebook_size=4).fit(x)
    with pytest.raises(ValueError, match="2-d"):
        RQKMeans().fit(np.zeros(10, np.float32))
    with pytest.raises(ValueError, match="dimension 16"):
        fitted["rq_kmeans"][0].encode(np.zeros((3, 16), np.float32))
    with pytest.raises(RuntimeError, match="not fitted"):
        RQVAE().encode(np.zeros((3, DIM), np.float32))
    with pytest.raises(ValueError, match="at least 32 training vectors"):
        OPQ(subspaces=4, codebook_size=4).fit(clustered(20)[0])
    with pytest.raises(ValueError, match="not divisible"):
        OPQ(subspaces=5, codebook_size=4).fit(clustered(40)[0])
    with pytest.raises(ValueError, match="outside the codebook"):
        fitted["pq"][0].decode(np.full((1, 4), 99))
    with pytest.raises(ValueError, match="unknown quantizer 'kmeans'"):
        make_quantizer("kmeans")
    with pytest.raises(ValueError, match="bad option"):
        make_quantizer("rq-kmeans", subspaces=3)
    with pytest.raises(ValueError, match="codebook sizes"):
        RQKMeans(levels=2, codebook_size=[4, 4, 4])


def test_per_level_codebook_sizes_and_aliases(data):
    q = make_quantizer("rq-kmeans", levels=2, codebook_size=[8, 4])
    codes = q.fit(data[0])
    assert q.codebook_sizes == (8, 4) and codes[:, 1].max() < 4
    assert isinstance(make_quantizer("RQVAE"), RQVAE) and isinstance(make_quantizer("opq"), OPQ)


def test_rq_vae_leaves_global_rng_alone_and_records_history(data):
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    q = RQVAE(levels=2, codebook_size=16, hidden_dims=(32,), latent_dim=4, epochs=4, batch_size=100)
    q.fit(data[0])
    assert torch.rand(1) == before  # fit used its own RNG stream
    assert len(q.history) == 4 and {"loss", "recon", "dead_codes"} <= set(q.history[0])


def test_a_cpu_rq_vae_fit_leaves_the_gpus_random_state_alone(data, monkeypatch):
    """torch.manual_seed also reseeds every GPU, which fork_rng(devices=[]) does not restore."""
    reseeded = []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda seed: reseeded.append(seed))
    q = RQVAE(levels=2, codebook_size=16, hidden_dims=(32,), latent_dim=4, epochs=2, batch_size=100)
    codes = q.fit(data[0])
    assert reseeded == []
    monkeypatch.undo()
    again = RQVAE(levels=2, codebook_size=16, hidden_dims=(32,), latent_dim=4, epochs=2, batch_size=100)
    np.testing.assert_array_equal(again.fit(data[0]), codes)  # the seed alone decides


def test_whitening_one_item_is_a_clear_error():
    from quantize.preprocess import Preprocessor

    with pytest.raises(ValueError, match="whitening needs at least 2 items"):  # it blamed the item's vector (NaN)
        Preprocessor(whiten=True).fit_transform(np.ones((1, 8), np.float32), ["only-item"])


def test_rq_vae_stops_on_a_diverged_loss(data):
    from genrec.errors import TrainingDivergedError

    q = make_quantizer("rq_vae", seed=0, **{**CONFIGS["rq_vae"], "lr": 1e30, "epochs": 3})
    with pytest.raises(TrainingDivergedError, match=r"rq_vae training diverged: the loss is (nan|inf) at epoch"):
        q.fit(data[0])
    assert not q.fitted  # a diverged fit is no quantizer to save or encode with
    with pytest.raises(RuntimeError, match="not fitted"):
        q.encode(data[0][:3])


def test_rq_vae_constant_dimension_does_not_blow_up_new_items(data):
    """A dimension constant in training keeps scale 1: a new item differing there by 0.01 stays an
    ordinary input (a 1e-6 scale made it ~1e4 and sent every new item to one code)."""
    x = data[0].copy()
    x[:, 0] = 0.5
    q = make_quantizer("rq_vae", seed=0, **CONFIGS["rq_vae"])
    q.fit(x)
    assert q.scale[0] == 1.0
    new = x[:8].copy()
    new[:, 0] = 0.51
    np.testing.assert_array_equal(q.encode(new), q.encode(x[:8]))


@pytest.mark.parametrize("make, message", [
    (lambda: RQKMeans(niter=-1), "niter must be an integer >= 1, got -1"),
    (lambda: RQKMeans(max_points_per_centroid=0), "max_points_per_centroid must be an integer >= 1, got 0"),
    (lambda: PQ(niter=0), "niter must be an integer >= 1"),
    (lambda: OPQ(opq_iters=0), "opq_iters must be an integer >= 1"),
    (lambda: OPQ(subspaces=1, codebook_size=2).fit(np.ones((1, 1), np.float32)), "at least 2 training vectors"),
])
def test_bad_quantizer_settings_are_clear_errors(make, message):
    with pytest.raises(ValueError, match=message):  # faiss aborted or raised a RuntimeError on these
        make()


def test_opq_codes_do_not_depend_on_the_faiss_thread_count(monkeypatch):
    """faiss_threads' promise (the same codes for any GENREC_FAISS_THREADS) did not hold for OPQ's rotation."""
    x = np.random.default_rng(0).normal(size=(2000, 16)).astype(np.float32)
    codes = []
    for threads in ("1", "2"):
        monkeypatch.setenv("GENREC_FAISS_THREADS", threads)
        codes.append(OPQ(subspaces=4, codebook_size=8, seed=0).fit(x))
    np.testing.assert_array_equal(codes[0], codes[1])


def test_quantizer_settings_that_failed_only_in_fit_are_refused_when_built():
    for bad, says in (({"dropout": 1.5}, "0 <= dropout < 1"), ({"dropout": -0.1}, "0 <= dropout < 1"),
                      ({"weight_decay": -1.0}, "weight_decay >= 0"), ({"lr": float("nan")}, "lr and beta must be finite"),
                      ({"hidden_dims": (0,)}, "hidden_dims must be integers >= 1"),
                      ({"seed": -1}, "seed must be an integer >= 0")):
        with pytest.raises(ValueError, match=says):
            make_quantizer("rq_vae", **bad)


def test_a_seed_near_the_c_int_limit_fits():
    """faiss takes seed + level as a C int: 2**31 - 1 overflowed at the second level."""
    x = np.random.default_rng(0).normal(size=(200, 8)).astype(np.float32)
    big = RQKMeans(levels=2, codebook_size=4, seed=2**31 - 1).fit(x)
    assert big.shape == (200, 2)
    np.testing.assert_array_equal(RQKMeans(levels=2, codebook_size=4, seed=5).fit(x),
                                  RQKMeans(levels=2, codebook_size=4, seed=5).fit(x))  # small seeds as before


@pytest.mark.parametrize("make, message", [
    (lambda: PQ(subspaces=2.9), "subspaces must be an integer >= 1, got 2.9"),
    (lambda: PQ(codebook_size=True), "codebook_size must be an integer >= 1, got True"),
    (lambda: OPQ(subspaces=4.0), "subspaces must be an integer >= 1, got 4.0"),
    (lambda: RQKMeans(levels=2.9), "levels must be an integer >= 1, got 2.9"),
    (lambda: RQKMeans(codebook_size=True), "codebook_size must be an integer >= 1, got True"),
    (lambda: RQKMeans(levels=2, codebook_size=[8, 4.5]), r"codebook_size\[1\] must be an integer >= 1, got 4.5"),
    (lambda: RQKMeans(levels=3, codebook_size="256"), "codebook_size must be an integer >= 1 or a list"),
    (lambda: RQVAE(latent_dim=4.7), "latent_dim must be an integer >= 1, got 4.7"),
    (lambda: RQVAE(epochs=1.9), "epochs must be an integer >= 0, got 1.9"),
    (lambda: RQVAE(epochs=-1), "epochs must be an integer >= 0, got -1"),
    (lambda: RQVAE(batch_size=True), "batch_size must be an integer >= 1, got True"),
    (lambda: RQVAE(lr=0), r"need lr > 0 and beta >= 0, got 0"),
])
def test_numeric_settings_must_be_integers_not_truncated_floats_or_bools(make, message):
    """2.9 sub-spaces / levels became 2, latent_dim 4.7 a 4-d latent, True a codebook of 1: silently."""
    with pytest.raises(ValueError, match=message):
        make()
    assert RQVAE(epochs=0, latent_dim=np.int64(4)).latent_dim == 4  # numpy integers and 0 epochs stay valid
    assert RQKMeans(levels=np.int64(2), codebook_size=[np.int64(4), 3]).requested_sizes == (4, 3)


def test_preprocessor_settings_and_unfitted_use_are_clear_errors(tmp_path):
    from quantize.preprocess import Preprocessor

    for bad in ("8", True, 2.5, 0):
        with pytest.raises(ValueError, match=f"pca_dim must be an integer >= 1, got {bad!r}"):
            Preprocessor(pca_dim=bad)
    with pytest.raises(RuntimeError, match="Preprocessor is not fitted; nothing to save"):
        Preprocessor(pca_dim=4).save(tmp_path / "pre.pt")  # it wrote a file that did not load
    assert not (tmp_path / "pre.pt").exists()
    with pytest.raises(RuntimeError, match="Preprocessor is not fitted"):  # a bare AssertionError
        Preprocessor().inverse_transform(np.zeros((1, 4), np.float32))
    with pytest.raises(RuntimeError, match="RQVAE is not fitted"):  # an AttributeError on None
        RQVAE().latent(np.zeros((1, 4), np.float32))
    pre = Preprocessor(pca_dim=np.int64(4))
    pre.fit_transform(clustered(40)[0])
    assert pre.config()["pca_dim"] == 4 and type(pre.config()["pca_dim"]) is int
    with pytest.raises(ValueError, match="dimension 16, the preprocessor was fitted on 32"):  # "the quantizer"
        pre.transform(np.zeros((2, 16), np.float32))


def test_embeddings_of_other_dtypes_are_converted_or_refused_by_name():
    from quantize.base import as_embeddings

    x = torch.randn(6, 4)
    np.testing.assert_array_equal(as_embeddings(x.to(torch.bfloat16)), x.to(torch.bfloat16).float().numpy())
    np.testing.assert_array_equal(as_embeddings(x.half()), x.half().float().numpy())
    with pytest.raises(ValueError, match=r"integer or real floating-point\), got dtype complex"):
        as_embeddings(np.ones((2, 3), np.complex64) * 1j)  # the imaginary part was dropped silently
    with pytest.raises(ValueError, match=r"integer or real floating-point\), got dtype complex"):
        as_embeddings(torch.ones(2, 3, dtype=torch.complex64))
    big = np.ones((3, 2))
    big[1, 0] = 1e300  # finite, but not as float32: reported as "NaN or infinite"
    with pytest.raises(ValueError, match=r"1 embedding\(s\) hold values beyond the float32 range .*'b'"):
        as_embeddings(big, ["a", "b", "c"])
    big[2, 1] = np.nan
    with pytest.raises(ValueError, match=r"1 embedding\(s\) contain NaN or infinite values: items 'c'"):
        as_embeddings(big, ["a", "b", "c"])
    assert as_embeddings(np.arange(6).reshape(2, 3)).dtype == np.float32


@pytest.mark.parametrize("name, edit, says", [
    ("rq_vae", lambda b: b.update(name=["rq_vae"]), "the quantizer name must be a string, got list"),
    ("rq_kmeans", lambda b: b.update(dim=32.0), r"\(ValueError: dim must be an integer >= 1, got 32.0"),
    ("pq", lambda b: b.update(codebook_sizes=[8, 8.5, 8, 8]), r"codebook_sizes\[1\] must be an integer >= 1, got 8.5"),
    ("rq_vae", lambda b: b["state"].update(mean=np.zeros(5, np.float32)), r"the input mean is \[5\], expected \[32\]"),
    ("rq_vae", lambda b: b["state"].update(scale=np.ones((1, 32), np.float32)),
     r"the input scale is \[1, 32\], expected \[32\]"),
    ("rq_vae", lambda b: b["state"].update(mean=np.full(32, np.nan, np.float32)),
     r"the input mean is \[32\], expected \[32\] finite"),
    ("rq_vae", lambda b: b["state"].update(scale=np.zeros(32, np.float32)), "the input scale must be positive"),
])
def test_a_damaged_quantizer_file_names_the_file(name, edit, says, fitted, tmp_path):
    """A list as the name was a bare TypeError; a float dim (32.0 passed the centroid shape check), and
    RQ-VAE input statistics of the wrong shape or NaN, loaded silently (broadcast or failed at encode)."""
    from genrec.artifacts import pack_arrays, unpack_arrays

    path = fitted[name][0].save(tmp_path / "q.pt")
    blob = unpack_arrays(torch.load(path, weights_only=True))
    edit(blob)
    torch.save(pack_arrays(blob), tmp_path / "edited.pt")
    with pytest.raises(CheckpointError, match=f"edited.pt: .*{says}"):
        load_quantizer(tmp_path / "edited.pt")
