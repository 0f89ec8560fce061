"""Scale: the large synthetic generator, and inference / evaluation over item chunks giving the same
results as the unchunked computation (on small catalogues with tiny chunks)."""

import numpy as np
import pytest
import torch

from fusion.adapters import sasrec_outputs, sasrec_scorer
from genrec.data import load_plain
from genrec.item_embeddings import load_item_embeddings
from genrec.metrics import MISS_RANK, metrics_from_ranks, ranks_from_score_chunks, ranks_from_scores
from genrec.parquet_data import load_parquet
from genrec.sasrec import (SASRec, SASRecConfig, evaluate, item_chunk_size, iter_logits, log_probs_of, softmax_topk,
                           train_sasrec)
from genrec.splits import leave_one_out
from genrec.synthetic_scale import make_scale_dataset, scale_info, write_scale_dataset


# ----------------------------------------------------------------------------------------------
# The generator


def test_generator_is_seeded_and_sized_exactly():
    a = make_scale_dataset(500, 4_321, dim=8, seed=1)
    b = make_scale_dataset(500, 4_321, dim=8, seed=1)
    c = make_scale_dataset(500, 4_321, dim=8, seed=2)
    assert a.num_items == 500 and a.num_interactions == 4_321
    assert all(np.array_equal(x, y) for x, y in zip(a.sequences, b.sequences)) and a.num_users == b.num_users
    np.testing.assert_array_equal(scale_info(a).vectors, scale_info(b).vectors)
    assert not all(np.array_equal(x, y) for x, y in zip(a.sequences, c.sequences))
    lengths = np.array([len(s) for s in a.sequences])
    assert lengths.min() >= 5 and lengths.max() <= 21  # seq_len (5, 20); the remainder may add one
    flat = np.concatenate(a.sequences)
    assert flat.min() >= 0 and flat.max() < 500
    assert all((np.diff(t) > 0).all() for t in a.timestamps)
    assert [len(t) for t in a.timestamps] == list(lengths)


@pytest.mark.parametrize("total", [5, 7, 12, 26, 41, 1_003])
def test_generator_hits_small_totals_exactly(total):
    ds = make_scale_dataset(30, total, seq_len=(5, 6), dim=2, seed=total)
    assert ds.num_interactions == total and min(len(s) for s in ds.sequences) >= 5


def test_generator_has_the_announced_structure():
    ds = make_scale_dataset(2_000, 60_000, num_clusters=40, dim=16, item_share=0.3, cluster_share=0.5, seed=0)
    info = scale_info(ds)
    src = np.concatenate([s[:-1] for s in ds.sequences])
    dst = np.concatenate([s[1:] for s in ds.sequences])
    follows = (dst == info.next_item[src]).mean()
    in_next_cluster = (info.cluster[dst] == info.next_cluster[info.cluster[src]]).mean()
    assert 0.3 <= follows < 0.36  # item_share, plus the occasional draw that hits the successor anyway
    assert in_next_cluster == pytest.approx(0.3 + 0.5 + 0.2 / 40, abs=0.01)
    # the next items are drawn from the successor cluster
    assert (info.cluster[info.next_item] == info.next_cluster[info.cluster]).all()
    # popularity is skewed: the top 10% of items take well over 10% of the interactions
    counts = np.sort(np.bincount(np.concatenate(ds.sequences), minlength=2_000))[::-1]
    assert counts[:200].sum() / counts.sum() > 0.25


def test_clustered_vectors_follow_clusters_and_random_ones_do_not():
    ds = make_scale_dataset(600, 3_000, num_clusters=6, dim=32, noise=0.3, seed=0)
    info = scale_info(ds)
    v = info.vectors
    assert v.dtype == np.float32 and v.shape == (600, 32)
    centroids = np.stack([v[info.cluster == c].mean(0) for c in range(6)])
    nearest = ((v[:, None] - centroids[None]) ** 2).sum(-1).argmin(1)
    assert (nearest == info.cluster).mean() == 1.0
    rnd = scale_info(make_scale_dataset(600, 3_000, num_clusters=6, dim=32, vectors="random", seed=0)).vectors
    centroids = np.stack([rnd[info.cluster == c].mean(0) for c in range(6)])
    assert ((rnd[:, None] - centroids[None]) ** 2).sum(-1).argmin(1).tolist() != info.cluster.tolist()


@pytest.mark.parametrize("kwargs,key", [
    (dict(seq_len=(2, 5)), "seq_len"), (dict(num_clusters=0), "num_clusters"), (dict(vectors="text"), "vectors"),
    (dict(item_share=0.7, cluster_share=0.5), "item_share"), (dict(num_interactions=3), "num_interactions"),
    (dict(popularity_skew=0.5), "popularity_skew"), (dict(dim=0), "dim"),
    (dict(popularity_skew=float("nan")), "popularity_skew must be a finite number >= 1"),
    (dict(noise=float("nan")), "noise must be a finite number >= 0")])
def test_generator_bad_arguments_name_the_argument(kwargs, key):
    args = dict(num_items=100, num_interactions=1_000) | kwargs
    with pytest.raises(ValueError, match=key):
        make_scale_dataset(**args)


@pytest.mark.parametrize("layout", ["parquet", "plain"])
def test_written_dataset_loads_back_with_its_vectors(tmp_path, layout):
    ds = make_scale_dataset(300, 2_000, dim=8, seed=3)
    paths = write_scale_dataset(ds, tmp_path, layout=layout)
    back = (load_parquet(paths["interactions"], paths["items"], keep_unused_items=True) if layout == "parquet"
            else load_plain(tmp_path, keep_unused_items=True))
    assert back.num_interactions == ds.num_interactions and sorted(back.item_ids) == sorted(ds.item_ids)
    pos = {u: k for k, u in enumerate(back.user_ids)}
    for u, uid in enumerate(ds.user_ids):
        got = [back.item_ids[i] for i in back.sequences[pos[uid]]]
        assert got == [ds.item_ids[i] for i in ds.sequences[u]]
        np.testing.assert_array_equal(back.timestamps[pos[uid]], ds.timestamps[u])
    vectors = load_item_embeddings(paths["vectors"], back.item_ids)
    np.testing.assert_array_equal(vectors, scale_info(ds).vectors[[ds.item_index[i] for i in back.item_ids]])


def test_sasrec_learns_the_generated_structure():
    ds = make_scale_dataset(200, 12_000, num_clusters=10, seq_len=(8, 12), dim=4, item_share=0.6,
                            cluster_share=0.4, seed=0)
    split = leave_one_out(ds, max_history=10)
    config = SASRecConfig(hidden=32, num_blocks=1, dropout=0.0, lr=1e-2, batch_size=64, max_len=10, num_threads=1,
                          max_epochs=4, patience=4, loss="sampled", num_negatives=32)
    result = train_sasrec(split, config, progress=False)
    assert evaluate(result.model, split.test)["recall@10"] > 0.4  # chance: 10 / 200


# ----------------------------------------------------------------------------------------------
# Chunked inference equals unchunked inference


@pytest.fixture(scope="module")
def model_and_split():
    ds = make_scale_dataset(57, 1_500, num_clusters=5, seq_len=(4, 14), dim=4, seed=0)
    split = leave_one_out(ds, max_history=12)
    torch.manual_seed(0)
    model = SASRec(57, SASRecConfig(hidden=16, num_blocks=1, max_len=12, dropout=0.0)).eval()
    with torch.no_grad():
        model.repeat_bias.fill_(0.5)
    return model, split


@pytest.mark.parametrize("mask_history", [False, True])
@pytest.mark.parametrize("chunk", [1, 4, 13, 56])
def test_chunked_evaluation_equals_unchunked(model_and_split, mask_history, chunk):
    model, split = model_and_split
    whole = evaluate(model, split.test, mask_history=mask_history, batch_size=40)
    assert evaluate(model, split.test, mask_history=mask_history, batch_size=40, item_chunk=chunk) == whole


def test_evaluation_of_a_small_catalogue_is_the_unchunked_computation(model_and_split):
    model, split = model_and_split
    assert item_chunk_size(1024, 18_357) == 18_357  # Amazon evaluation batches stay one chunk
    assert item_chunk_size(1024, 1_000_000) == 32_768
    assert item_chunk_size(1024, 1_000_000, item_chunk=10) == 10
    ranks = np.zeros(len(split.test), np.int64)
    masked = np.zeros(len(split.test), np.int64)
    for rows, logits in iter_logits(model, split.test, 40):
        ranks[rows] = ranks_from_scores(logits, split.test.targets[rows])
        masked[rows] = ranks_from_scores(logits, split.test.targets[rows],
                                         exclude=[split.test.histories[r] for r in rows])
    assert evaluate(model, split.test, batch_size=40) == metrics_from_ranks(ranks)
    # mask_history ranks with the histories excluded (a flag evaluate ignored would pass the chunk test)
    assert evaluate(model, split.test, mask_history=True, batch_size=40) == metrics_from_ranks(masked)
    assert metrics_from_ranks(masked) != metrics_from_ranks(ranks)


@pytest.mark.parametrize("chunk", [1, 5, 30])
def test_chunked_topk_and_log_probs_equal_unchunked(model_and_split, chunk):
    model, split = model_and_split
    whole = softmax_topk(model, split.test, k=10, batch_size=32)
    part = softmax_topk(model, split.test, k=10, batch_size=32, item_chunk=chunk)
    np.testing.assert_array_equal(part["items"], whole["items"])
    for key in ("log_probs", "max_prob", "entropy"):
        np.testing.assert_allclose(part[key], whole[key], rtol=1e-5, atol=1e-6, err_msg=key)
    cands = np.random.default_rng(0).integers(0, 57, size=(len(split.test), 7))
    np.testing.assert_allclose(log_probs_of(model, split.test, cands, 32, item_chunk=chunk),
                               log_probs_of(model, split.test, cands, 32), rtol=1e-5, atol=1e-6)


def test_fusion_adapters_chunked_equal_unchunked(model_and_split):
    model, split = model_and_split
    # items >= 57 were added after training: SASRec reads histories without them; one history has none
    histories = [np.array([3, 60, 4]), np.array([58]), np.array([1, 2, 59])] + list(split.test.histories[:20])
    whole, part = sasrec_outputs(model, histories, k=6), sasrec_outputs(model, histories, k=6, item_chunk=4)
    np.testing.assert_array_equal(part["items"], whole["items"])
    assert (whole["items"][1] == -1).all()
    for key in ("log_probs", "max_prob", "entropy"):
        np.testing.assert_allclose(part[key], whole[key], rtol=1e-5, atol=1e-6, err_msg=key)
    cands = np.random.default_rng(1).integers(-1, 62, size=(len(histories), 9))
    a, b = sasrec_scorer(model, histories)(cands), sasrec_scorer(model, histories, item_chunk=3)(cands)
    np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
    assert np.isnan(a[cands >= 57]).all() and np.isnan(a[1]).all()
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("chunk", [None, 5])
def test_the_fusions_id_scorer_reuses_sasrecs_states(model_and_split, chunk):
    """model_inputs scores the generative tower's candidates with SASRec from the states its top-k pass
    kept: the same log-probs as a second pass (repeat bias on history items included), NaN where
    SASRec cannot score."""
    from fusion.adapters import sasrec_state_scorer
    from genrec.sasrec import log_probs_from_states

    model, split = model_and_split
    histories = [np.array([3, 60, 4]), np.array([58]), np.array([1, 2, 59])] + list(split.test.histories[:30])
    out = sasrec_outputs(model, histories, k=6, item_chunk=chunk, states=True)
    np.testing.assert_array_equal(out["items"], sasrec_outputs(model, histories, k=6, item_chunk=chunk)["items"])
    assert np.isnan(out["hidden"][1]).all() and np.isnan(out["lse"][1])  # no item SASRec knows
    rng = np.random.default_rng(2)
    cands = rng.integers(-1, 62, size=(len(histories), 9))
    cands[5:, 0] = [h[-1] for h in histories[5:]]  # items of the history: the repeat bias applies
    a, b = sasrec_state_scorer(model, histories, out)(cands), sasrec_scorer(model, histories, item_chunk=chunk)(cands)
    np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="items must lie in"):
        log_probs_from_states(model, histories[3:5], out["hidden"][3:5], out["lse"][3:5], np.array([[0], [57]]))
    live = np.arange(len(histories)) != 1
    live_hist = [h for h, ok in zip(histories, live) if ok]
    c = np.clip(cands[live], 0, 56)
    batched = log_probs_from_states(model, live_hist, out["hidden"][live], out["lse"][live], c, batch_size=4)
    np.testing.assert_array_equal(batched, log_probs_from_states(model, live_hist, out["hidden"][live],
                                                                 out["lse"][live], c))
    for hidden, lse in ((out["hidden"][3:4], out["lse"][3:5]), (out["hidden"][3:5], out["lse"][3:4])):
        with pytest.raises(ValueError, match="need items"):
            log_probs_from_states(model, histories[3:5], hidden, lse, np.array([[0], [1]]))


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 11])
def test_chunked_ranks_equal_ranks_from_scores_with_ties_nan_and_masks(chunk):
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 4, size=(30, 11)).astype(np.float32)  # many ties
    scores[rng.random(scores.shape) < 0.05] = np.nan
    scores[rng.random(scores.shape) < 0.05] = np.inf
    scores[rng.random(scores.shape) < 0.05] = -np.inf
    targets = rng.integers(0, 11, size=30)
    exclude = [rng.choice(11, size=rng.integers(0, 4), replace=False) for _ in range(30)]
    exclude[0] = np.array([targets[0], (targets[0] + 1) % 11])  # the target masked: a miss
    calls = []

    def score(rows, start, stop):
        calls.append(stop - start)
        block = torch.from_numpy(scores[:, start:stop])
        return block if rows is None else block[torch.as_tensor(rows)]

    for ex in (None, exclude):
        expected = ranks_from_scores(scores, targets, exclude=ex)
        got = ranks_from_score_chunks(score, 11, targets, chunk, exclude=ex)
        np.testing.assert_array_equal(got, expected)
    assert expected[0] == MISS_RANK
    assert max(calls) <= chunk
    # float64 scores 2e-7 apart are not tied (float32 made them equal: the target lost a place)
    close = np.tile(np.array([-12.0000003, -12.0000001, -15.0]), (2, 1))
    assert ranks_from_scores(close, np.array([1, 0])).tolist() == [0, 1]
    got = ranks_from_score_chunks(lambda rows, a, b: torch.from_numpy(close[:, a:b] if rows is None else close[rows, a:b]),
                                  3, np.array([1, 0]), chunk)
    assert got.tolist() == [0, 1]


def test_chunked_ranks_reject_targets_outside_the_catalogue():
    with pytest.raises(ValueError, match="targets must lie in 0..9"):
        ranks_from_score_chunks(lambda rows, a, b: torch.zeros(1, b - a), 10, np.array([10]), 3)


# ----------------------------------------------------------------------------------------------
# The whole-pipeline benchmark (bench/scale.py --pipeline) at a tiny size


def test_pipeline_bench_runs_the_whole_recipe_on_generated_data(tmp_path, monkeypatch):
    """``bench/scale.py --pipeline``: generated Parquet + vectors, ``genrec run`` in a child process
    with sampled evaluation users and time budgets; every stage's timing and every model's metrics
    come back, and the run evaluated exactly the sampled users."""
    import json

    from tests.scripts import load_script

    bench = load_script("bench/scale.py", "scale_bench")
    out = tmp_path / "scale.json"
    monkeypatch.setattr("sys.argv", [
        "scale.py", "--pipeline", "--items", "2000", "--interactions", "16000", "--dim", "16", "--eval-users", "300",
        "--sasrec-minutes", "0.05", "--generative-minutes", "0.1", "--threads", "1", "--batch-size", "256",
        "--num-negatives", "64", "--k", "20", "--workdir", str(tmp_path), "--json", str(out)])
    bench.main()
    (result,) = json.loads(out.read_text())
    assert [s["stage"] for s in result["stages"]] == ["data", "embed", "quantize", "sasrec", "generative", "labels",
                                                      "fusion", "evaluate", "analysis", "report"]
    assert all(s["seconds"] >= 0 and s["peak_gib"] > 0 for s in result["stages"])
    assert result["wall_s"] >= sum(s["seconds"] for s in result["stages"])
    assert result["data"]["split"]["test"] == 300 and result["data"]["split"]["eval_users_sampled"]
    assert {"sasrec", "gr", "learned_logprob"} <= set(result["test"])
    assert all(0 <= m["ndcg@10"] <= 1 for m in result["test"].values())


def test_sasrec_max_minutes_cuts_training_short():
    """``SASRecConfig.max_minutes``: past the budget the epoch in progress ends, is evaluated and kept."""
    ds = make_scale_dataset(500, 6000, dim=8, seed=0)
    split = leave_one_out(ds)
    config = SASRecConfig(hidden=16, num_blocks=1, max_epochs=50, patience=100, batch_size=32, num_threads=1,
                          max_minutes=1e-4)
    result = train_sasrec(split, config, progress=False)
    assert [row["epoch"] for row in result.history] == [1] and result.best_epoch == 1
    unlimited = train_sasrec(split, SASRecConfig(**{**config.__dict__, "max_minutes": None, "max_epochs": 2}),
                             progress=False)
    assert len(unlimited.history) == 2


def test_tied_items_are_listed_lower_index_first(model_and_split):
    """An item whose vector copies another's (a new item given its neighbour's ID embedding) ties with it:
    Tensor.topk listed either first (about half the time the later one, so list metrics counted such
    ties for or against a target by chance); now the lower index, as a full ranking and the recommender."""
    import copy

    from genrec.sasrec import softmax_topk

    model, split = model_and_split
    twin = copy.deepcopy(model)
    with torch.no_grad():
        for a, b in ((3, 50), (10, 20), (0, 56)):
            twin.item_emb.weight[b + 1] = twin.item_emb.weight[a + 1]  # row 0 is padding
    out = softmax_topk(twin, split.test, 57, 40)
    items, lp = out["items"], out["log_probs"]
    ties = 0
    for a, b in ((3, 50), (10, 20), (0, 56)):
        pos_a, pos_b = np.argmax(items == a, 1), np.argmax(items == b, 1)
        r = np.arange(len(items))
        tied = lp[r, pos_a] == lp[r, pos_b]  # (a row whose history holds one of them: the repeat bias decides)
        assert (pos_a[tied] < pos_b[tied]).all(), (a, b)
        ties += int(tied.sum())
    assert ties > 100


def test_streamed_top_k_keeps_ties_in_item_order_across_chunks():
    """The running top-k over item chunks: an exact tie between a kept item and a later chunk's keeps the
    kept (lower) one first, and the new chunk's own ties by index."""
    from genrec.metrics import merge_topk

    v, i = merge_topk(None, None, torch.tensor([[1.0, 2.0, 2.0, 0.5]]), torch.tensor([[0, 1, 2, 3]]), 3)
    assert i.tolist() == [[1, 2, 0]]
    v, i = merge_topk(v, i, torch.tensor([[2.0, 1.0, 3.0]]), torch.tensor([[4, 5, 6]]), 5)
    assert i.tolist() == [[6, 1, 2, 4, 0]] and v.tolist() == [[3.0, 2.0, 2.0, 2.0, 1.0]]


def test_stable_topk_equals_sorting_by_value_then_index():
    """The fast path (one topk of k + 1, the kept items reordered) and the exact pass for rows with a tie
    across the k-th place or a NaN give what a full sort by (value desc, index asc) gives, NaN last."""
    from genrec.metrics import stable_topk

    rng = np.random.default_rng(0)
    for _ in range(300):
        n, m = int(rng.integers(1, 6)), int(rng.integers(1, 30))
        s = rng.integers(0, 4, size=(n, m)).astype(np.float32)  # many ties
        s[rng.random((n, m)) < 0.1] = np.nan
        s[rng.random((n, m)) < 0.05] = np.inf
        k = int(rng.integers(1, m + 1))
        v, i = stable_topk(torch.from_numpy(s), k)
        key = np.where(np.isnan(s), -np.inf, s)
        want = np.stack([np.lexsort((np.arange(m), -key[r]))[:k] for r in range(n)])
        np.testing.assert_array_equal(i.numpy(), want)
        np.testing.assert_array_equal(v.numpy(), np.take_along_axis(key, want, 1))
