"""New items without retraining (issue 13): ``Recommender.add_items`` / ``genrec add-items`` give new
items semantic IDs from the run's encoder and frozen quantizer, and the generative model, SASRec
(through the new item's nearest catalogue item by text) and every fusion method can recommend them at
once; without item embeddings SASRec cannot and never returns them; errors are clear; the result
saves and loads unchanged."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch

from genrec import cli
from genrec.errors import CheckpointError, DataFormatError
from genrec.generative import GenerativeConfig, HierarchicalGenerative, recommend, score_items, with_new_items
from genrec.new_items import nearest_items, sasrec_with_new_items
from genrec.recommender import Recommender
from genrec.sasrec import SASRec, SASRecConfig

TWIN = "NEW_TWIN"


@pytest.fixture(scope="module")
def emb_cache(tiny_run, tmp_path_factory):
    """A copy of the tiny run's embedding cache: new items that reuse existing texts are cache hits
    (the encoder loads only where a test embeds a text of its own)."""
    return shutil.copytree(tiny_run.parent / "emb_cache", tmp_path_factory.mktemp("new_items") / "emb_cache")


@pytest.fixture(scope="module")
def confident(tiny_saved):
    """A history (item ids) whose generative top-1 item (not in the history) leads the second by more
    than log 2, and that item's id: a new item with its text shares its base codes, so the two split
    the top item's probability and the new one still beats every other item."""
    rec = Recommender.from_pretrained(tiny_saved)
    cands = [np.array([i]) for i in range(rec.num_items)] + [s[-10:] for s in rec.train_sequences if len(s)]
    beam = recommend(rec.generative, cands, beam_size=10)
    margin = beam.log_probs[:, 0] - beam.log_probs[:, 1]
    margin[[beam.items[k, 0] in c for k, c in enumerate(cands)]] = -np.inf
    j = int(np.argmax(margin))
    assert margin[j] > math.log(2) + 0.05, "the tiny run has no confident enough history for this test"
    return [rec.item_ids[i] for i in cands[j]], rec.item_ids[beam.items[j, 0]]


def _add_twins(rec: Recommender, confident, emb_cache):
    _, top = confident
    other = rec.item_ids[0] if rec.item_ids[0] != top else rec.item_ids[1]
    items = [{**rec.items[rec.index[top]], "item_id": TWIN}, {**rec.items[rec.index[other]], "item_id": "NEW_OTHER"}]
    assert rec.add_items(items, cache_dir=emb_cache) == [TWIN, "NEW_OTHER"]
    return rec, top, other


@pytest.fixture(scope="module")
def added(tiny_saved, confident, emb_cache):
    """The tiny saved recommender with two items added: a twin of ``confident``'s top item (same
    text, new id) and a copy of another item's text."""
    rec = Recommender.from_pretrained(tiny_saved)
    return _add_twins(rec, confident, emb_cache)


def test_recommenders_keep_the_runs_item_embeddings(tiny_run, tiny_saved):
    run = np.load(tiny_run / "embed" / "embeddings.npy")
    for rec in (Recommender.from_pretrained(tiny_run), Recommender.from_pretrained(tiny_saved)):
        assert rec.item_embeddings.dtype == np.float32
        np.testing.assert_array_equal(rec.item_embeddings, run)


@pytest.fixture(scope="module")
def added_without_embeddings(tiny_saved, confident, emb_cache, tmp_path_factory):
    """The same two items added to a copy of the saved recommender without its item embeddings (as
    saved before they were kept): SASRec cannot score them."""
    copy = shutil.copytree(tiny_saved, tmp_path_factory.mktemp("no_embeddings") / "model")
    (copy / "item_embeddings.npy").unlink()
    rec = Recommender.from_pretrained(copy)
    assert rec.item_embeddings is None
    return _add_twins(rec, confident, emb_cache)


def test_add_items_grows_the_table_the_generative_model_and_the_counts(tiny_saved, added):
    rec, top, other = added
    before = Recommender.from_pretrained(tiny_saved)
    n = before.num_items
    assert rec.num_items == n + 2 and rec.item_ids == before.item_ids + [TWIN, "NEW_OTHER"]
    assert rec.index[TWIN] == n and rec.item(TWIN)["title"] == rec.item(top)["title"]
    np.testing.assert_array_equal(rec.table.codes[:n], before.table.codes)  # existing IDs never change
    # same text -> same base codes, next free disambiguation code of the group
    assert rec.item(TWIN)["semantic_id"][:-1] == rec.item(top)["semantic_id"][:-1]
    assert rec.item(TWIN)["semantic_id"][-1] == rec.item(top)["semantic_id"][-1] + 1
    assert rec.item("NEW_OTHER")["semantic_id"][:-1] == rec.item(other)["semantic_id"][:-1]
    assert rec.table.codebook_sizes[:-1] == before.table.codebook_sizes[:-1]
    g = rec.generative
    assert g.num_items == n + 2 and g.codebook_sizes == rec.table.codebook_sizes
    np.testing.assert_array_equal(g.codes, rec.table.codes)
    # SASRec reads and scores each new item as its nearest catalogue item by text: the twin as its original
    assert rec.sasrec.num_items == n + 2
    emb = rec.sasrec.item_emb.weight
    assert torch.equal(emb[:n + 1], before.sasrec.item_emb.weight)  # trained rows unchanged
    assert torch.equal(emb[n + 1], emb[rec.index[top] + 1]) and torch.equal(emb[n + 2], emb[rec.index[other] + 1])
    assert rec.item_embeddings.shape == (n + 2, before.item_embeddings.shape[1])
    np.testing.assert_allclose(rec.item_embeddings[n], before.item_embeddings[rec.index[top]], atol=1e-5)
    assert rec.stats.num_items == n + 2 and rec.stats.popularity[n:].tolist() == [0, 0]
    assert len(rec.items) == n + 2 and rec.items[n]["item_id"] == TWIN


def test_with_new_items_appends_rows_and_keeps_every_trained_weight(tiny_saved):
    model = Recommender.from_pretrained(tiny_saved).generative
    n, sizes = model.num_items, model.codebook_sizes
    codes = model.codes
    grown = sizes[-1] + 1  # items 0 and 1's base codes with the next code beyond the trained ones
    extra = np.array([[*codes[0, :-1], sizes[-1]], [*codes[1, :-1], sizes[-1]]])
    rng = torch.get_rng_state()
    new = with_new_items(model, np.concatenate([codes, extra]), [*sizes[:-1], grown])
    assert torch.equal(torch.get_rng_state(), rng)  # deterministic: the global random state is untouched
    assert new.num_items == n + 2 and new.codebook_sizes == (*sizes[:-1], grown) and new.vocab == model.vocab + 1
    old, cur = model.state_dict(), new.state_dict()
    for key, value in old.items():
        assert torch.equal(cur[key][:len(value)], value), key  # trained rows unchanged, new ones appended
    lo = model.offsets[-1] + 1
    mean = old["code_emb.weight"][lo:lo + sizes[-1]].mean(0)
    torch.testing.assert_close(cur["code_emb.weight"][-1], mean)
    assert cur["head.prefix_emb.weight"][-1].abs().sum() == 0
    # an item whose group did not change keeps its exact log-probability (after a history of such
    # items too: the repeat gate's mixture reads the history items' probabilities)
    same = [i for i in range(n) if not (codes[i, :-1] == codes[:2, :-1]).all(1).any()]
    hist, keep = [np.array(same[:3])], same[3]
    np.testing.assert_allclose(score_items(new, hist, np.array([[keep]])), score_items(model, hist, np.array([[keep]])),
                               rtol=1e-6)
    assert np.isfinite(score_items(new, hist, np.array([[n, n + 1]]))).all()
    with pytest.raises(ValueError, match="model's own semantic IDs"):
        with_new_items(model, np.concatenate([codes[::-1], extra]), [*sizes[:-1], grown])
    with pytest.raises(ValueError, match="only the last level may grow"):
        with_new_items(model, codes, [sizes[0] + 1, *sizes[1:]])


def test_with_new_items_gives_new_items_zero_item_embeddings_in_hybrid_mode():
    codes = np.array([[0, 0, 0], [0, 1, 0], [1, 0, 0], [1, 0, 1]])
    torch.manual_seed(0)
    model = HierarchicalGenerative(codes, [2, 2, 2], GenerativeConfig(hidden=8, num_heads=2, num_blocks=1,
                                                                       item_embedding=True, max_len=5))
    new = with_new_items(model, np.concatenate([codes, [[1, 1, 0], [1, 0, 2]]]), [2, 2, 3])
    assert new.item_emb.weight.shape[0] == 7 and new.item_emb.weight[5:].abs().sum() == 0
    assert torch.equal(new.item_emb.weight[:5], model.item_emb.weight)
    assert new.trie.walk([1, 0, 2]) == 5 and new.trie.walk([1, 1, 0]) == 4


def test_a_new_item_whose_codes_are_most_likely_is_recommended(added, confident):
    rec, top, _ = added
    history, _ = confident
    gen = rec.with_method("generative").recommend(history, k=5)
    # the twin and its original split the top item's probability and stay ahead of every other item
    assert set(gen.items[:2]) == {TWIN, top}
    assert gen.scores[0] == pytest.approx(gen.scores[1], abs=1e-4)
    for method in rec.fusion_methods:  # every fusion method returns the twin, scored as its original
        out = rec.with_method(method).recommend(history, k=5)
        assert TWIN in out.items, (method, out.items)
        if top in out.items:
            assert out.scores[out.items.index(TWIN)] == pytest.approx(out.scores[out.items.index(top)], abs=1e-4)
    # SASRec scores the twin as its original: the two are next to each other with equal scores
    ranked = rec.with_method("sasrec").recommend(history, k=rec.num_items)
    assert len(ranked.items) == rec.num_items
    a, b = ranked.items.index(TWIN), ranked.items.index(top)
    assert abs(a - b) == 1 and ranked.scores[a] == pytest.approx(ranked.scores[b], abs=1e-5)


def test_sasrec_alone_takes_new_items_through_their_nearest_items(tiny_run, tiny_saved, confident, emb_cache,
                                                                   tmp_path):
    """The README's "SASRec too": a recommender of SASRec alone (a run loaded with ``method="sasrec"``,
    no generative model) was refused."""
    history, top = confident
    sas = Recommender.from_run(tiny_run, method="sasrec")
    assert sas.generative is None
    n = sas.num_items
    assert sas.add_items([{**sas.items[sas.index[top]], "item_id": TWIN}], cache_dir=emb_cache) == [TWIN]
    assert sas.num_items == sas.sasrec.num_items == n + 1 and sas.generative is None
    full = Recommender.from_pretrained(tiny_saved)
    full.add_items([{**full.items[full.index[top]], "item_id": TWIN}], cache_dir=emb_cache)
    assert sas.item(TWIN) == full.item(TWIN)  # the same semantic ID as beside the generative model
    ranked = sas.recommend(history, k=n + 1)  # the twin scores as the item whose ID embedding it took
    a, b = ranked.items.index(TWIN), ranked.items.index(top)
    assert abs(a - b) == 1 and ranked.scores[a] == pytest.approx(ranked.scores[b], abs=1e-5)
    loaded = Recommender.from_pretrained(sas.save_pretrained(tmp_path / "sasrec_plus"))
    assert loaded.item_ids == sas.item_ids and loaded.recommend(history, k=n + 1).pairs() == ranked.pairs()


def test_without_item_embeddings_sasrec_cannot_score_added_items(added_without_embeddings, confident):
    rec, _, _ = added_without_embeddings
    history, _ = confident
    assert rec.sasrec.num_items == rec.num_items - 2 and rec.item_embeddings is None
    # never returned, even when asked for its whole catalogue
    ranked = rec.with_method("sasrec").recommend(history, k=rec.num_items)
    assert len(ranked.items) == rec.sasrec.num_items and not {TWIN, "NEW_OTHER"} & set(ranked.items)
    for method in rec.fusion_methods:  # the fusion still recommends the twin, through the generative model
        assert TWIN in rec.with_method(method).recommend(history, k=5).items, method
    # a history of added items only: the popularity fallback, which leaves the new items out for SASRec and
    # the history's items out under exclude_seen (it returned both)
    sas = rec.with_method("sasrec")
    fallback = sas.recommend([TWIN], k=sas.max_k, exclude_seen=True)
    assert fallback.fallback and len(fallback.items) == rec.sasrec.num_items
    assert not {TWIN, "NEW_OTHER"} & set(fallback.items)
    top = rec.item_ids[int(np.argmax(rec.stats.popularity))]
    assert top in sas.recommend([TWIN], k=3).items
    assert top not in sas.recommend([TWIN, top], k=sas.max_k, exclude_seen=True).items


def test_nearest_items_is_the_brute_force_cosine_argmax_in_any_chunks():
    rng = np.random.default_rng(0)
    known, new = rng.normal(size=(50, 6)).astype(np.float32), rng.normal(size=(7, 6)).astype(np.float32)
    new[0] = 3.0 * known[17]  # cosine ignores the norm
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    brute = (unit(new) @ unit(known).T).argmax(1)
    for chunk in (1, 7, 50, 4096):
        np.testing.assert_array_equal(nearest_items(known, new, chunk=chunk), brute)
    assert nearest_items(known, new)[0] == 17
    twins = np.array([[1.0, 0.0], [0.0, 1.0], [2.0, 0.0]], np.float32)
    assert nearest_items(twins, np.array([[5.0, 0.0]]), chunk=2).tolist() == [0]  # a tie: the lowest index
    # only allowed rows are candidates (e.g. items with training interactions)
    allowed = np.ones(50, bool)
    allowed[[17, *brute]] = False
    masked = (unit(new) @ unit(known).T)
    masked[:, ~allowed] = -np.inf
    for chunk in (3, 4096):
        np.testing.assert_array_equal(nearest_items(known, new, allowed=allowed, chunk=chunk), masked.argmax(1))
    with pytest.raises(ValueError, match="embeddings"):
        nearest_items(known, new[:, :3])
    with pytest.raises(ValueError, match="at least one true"):
        nearest_items(known, new, allowed=np.zeros(50, bool))


def test_extend_catalogue_refuses_item_embeddings_of_another_shape(tiny_saved, emb_cache):
    from genrec.new_items import extend_catalogue

    rec = Recommender.from_pretrained(tiny_saved)
    x = np.asarray(rec.item_embeddings[:2]) + 0.01  # two "new" items near items 0 and 1
    for bad in (rec.item_embeddings[1:], np.asarray(rec.item_embeddings)[:, :-1]):
        with pytest.raises(CheckpointError, match="the item embeddings are"):
            extend_catalogue(rec.table, rec.generative, rec.train_sequences, rec.quantize_dir, x, ["a", "b"],
                             sasrec=rec.sasrec, item_embeddings=bad)
    ext = extend_catalogue(rec.table, rec.generative, rec.train_sequences, rec.quantize_dir, x, ["a", "b"],
                           sasrec=rec.sasrec, item_embeddings=rec.item_embeddings)
    assert ext.sasrec.num_items == rec.num_items + 2 and ext.item_embeddings.shape[0] == rec.num_items + 2
    assert rec.sasrec.num_items == rec.num_items  # nothing given is changed


def test_sasrec_with_new_items_copies_the_neighbours_rows():
    torch.manual_seed(0)
    model = SASRec(5, SASRecConfig(hidden=8, num_heads=2, num_blocks=1, max_len=4)).eval()
    rng = torch.get_rng_state()
    new = sasrec_with_new_items(model, np.array([3, 0]))
    assert torch.equal(torch.get_rng_state(), rng)  # deterministic: the global random state is untouched
    assert new.num_items == 7 and not new.training
    w, w0 = new.item_emb.weight, model.item_emb.weight
    assert torch.equal(w[:6], w0) and torch.equal(w[6], w0[4]) and torch.equal(w[7], w0[1])
    tokens = torch.tensor([[0, 2, 3, 5]])  # items 1, 2, 4: the sources 3 and 0 get no repeat bias
    with torch.no_grad():
        old_logits, new_logits = model.last_logits(tokens), new.last_logits(tokens)
    torch.testing.assert_close(new_logits[:, :5], old_logits)
    torch.testing.assert_close(new_logits[:, 5:], old_logits[:, [3, 0]])
    with pytest.raises(ValueError, match="below 5"):
        sasrec_with_new_items(model, np.array([5]))


def test_histories_holding_added_items_are_read_by_the_generative_model_and_fusion(added, confident):
    rec, _, _ = added
    history, _ = confident
    for method in ["generative", *rec.fusion_methods]:
        r = rec.with_method(method)
        mixed = r.recommend(history + [TWIN], k=5)
        only_new = r.recommend([TWIN, "NEW_OTHER"], k=5)
        for out in (mixed, only_new):
            assert len(out.items) == 5 and not out.fallback and not out.unknown_ids
            assert all(math.isfinite(s) for s in out.scores)
            assert out.gate is None if method == "generative" else 0.0 <= out.gate <= 1.0


def test_sasrec_alone_reads_the_items_it_knows_and_falls_back_on_only_added_ones(added_without_embeddings, confident):
    rec, _, _ = added_without_embeddings
    history, _ = confident
    sasrec = rec.with_method("sasrec")
    mixed = sasrec.recommend(history + [TWIN], k=5, exclude_seen=True)
    assert mixed == sasrec.recommend(history, k=5, exclude_seen=True) and not mixed.fallback
    only_new = sasrec.recommend([TWIN, "NEW_OTHER"], k=5)
    assert only_new.fallback and only_new.items == sasrec.recommend([], k=5).items
    e = sasrec.explain([TWIN])
    assert e.recommendations.fallback and e.gate is None


def test_sasrec_adapters_give_missing_scores_for_items_it_cannot_read(added_without_embeddings):
    from fusion.adapters import sasrec_outputs, sasrec_scorer

    rec, _, _ = added_without_embeddings
    n = rec.sasrec.num_items
    hist = [np.array([0, 1]), np.array([0, n]), np.array([n, n + 1])]  # known, mixed, only added items
    out = sasrec_outputs(rec.sasrec, hist, k=3)
    np.testing.assert_array_equal(out["items"][2], [-1, -1, -1])
    assert np.isneginf(out["log_probs"][2]).all() and out["max_prob"][2] == pytest.approx(1 / n)
    assert out["entropy"][2] == pytest.approx(math.log(n))
    ref = sasrec_outputs(rec.sasrec, [np.array([0])], k=3)  # the mixed history reads as its known part
    np.testing.assert_array_equal(out["items"][1], ref["items"][0])
    scores = sasrec_scorer(rec.sasrec, hist)(np.array([[2, n, -1]] * 3))
    assert np.isfinite(scores[:2, 0]).all() and np.isnan(scores[:, 1:]).all() and np.isnan(scores[2]).all()


def test_bad_new_items_and_recommenders_that_cannot_add_are_clear_errors(tiny_saved, tmp_path, caplog):
    rec = Recommender.from_pretrained(tiny_saved)
    before = (list(rec.item_ids), rec.table.codes.copy(), rec.generative.num_items, rec.sasrec.num_items)
    known = rec.item_ids[3]
    bad = [([{"item_id": "A", "title": "x"}, {"item_id": "A", "title": "y"}], "'A' appears twice"),
           ([{"item_id": known, "title": "x"}], f"{known!r} is already in the catalogue"),
           ([{"title": "no id"}], "new item 1: 'item_id' must be"),
           ([{"item_id": "B", "description": "only a description"}], "new item 1: item 'B' has no text"),
           (["B"], "new item 1: expected an object"),
           ([], "empty"),
           # no history read from a file could name these (one shadowed an existing item: "i00003 ")
           ([{"item_id": f"{known} ", "title": "x"}], "has white space, a control character"),
           ([{"item_id": "a\tb", "title": "x"}], "has white space, a control character"),
           ([{"item_id": "new item", "title": "x"}], r"has white space.*a \.tsv history splits ids on white space"),
           ([{"item_id": "\ud800", "title": "x"}], "or a lone surrogate")]
    for items, message in bad:
        with pytest.raises(DataFormatError, match=message):
            rec.add_items(items)
    priced = Recommender.from_pretrained(tiny_saved)
    with caplog.at_level("WARNING", logger="genrec.item_fields"):  # an unreadable price: left missing, with a warning
        priced.add_items([{"item_id": "P", "title": "x", "price": "abc"}])
    assert priced.item("P").get("price") is None and "new items: 1 item(s) have a price" in caplog.text
    with pytest.raises(DataFormatError, match="new.jsonl:7"):
        from genrec.new_items import add_items

        add_items(rec, [{"item_id": "C", "categories": 5}], where=["new.jsonl:7"])
    ok = [{"item_id": "D", "title": "Fine"}]
    no_model = "could not be recommended by any of its models"
    for attrs, message in (({"quantize_dir": tmp_path}, "quantizer.pt is missing"),
                           ({"quantize_dir": None}, "no quantize directory"),
                           ({"text": None}, "no record of the text encoder"),
                           ({"generative": None, "item_embeddings": None}, f"{no_model}.*SASRec has no item embeddings"),
                           ({"generative": None, "sasrec": None}, f"{no_model}.*neither a generative model nor SASRec")):
        broken = Recommender.from_pretrained(tiny_saved)
        for attr, value in attrs.items():
            setattr(broken, attr, value)
        with pytest.raises(CheckpointError, match=message):
            broken.add_items(ok)
        assert broken.num_items == rec.num_items  # nothing changed
    # a damaged template record (a TypeError traceback) and a bad cache_dir argument (blamed on the model)
    damaged = Recommender.from_pretrained(tiny_saved)
    damaged.text = {**damaged.text, "template": {"segments": 5}}
    with pytest.raises(CheckpointError, match=r"text template record \{'segments': 5\} cannot be used"):
        damaged.add_items(ok)
    from genrec.errors import ConfigError

    with pytest.raises(ConfigError, match="cache_dir must be a path, None or False, got 123"):
        Recommender.from_pretrained(tiny_saved).add_items(ok, cache_dir=123)
    ids, codes, n_gen, n_sas = before  # failures left it exactly as it was
    assert rec.item_ids == ids and np.array_equal(rec.table.codes, codes)
    assert (rec.generative.num_items, rec.sasrec.num_items) == (n_gen, n_sas) == (len(ids), len(ids))


def test_save_and_load_after_add_items_recommends_the_same(added, confident, tmp_path):
    rec, _, _ = added
    history, _ = confident
    loaded = Recommender.from_pretrained(rec.save_pretrained(tmp_path / "model"))
    assert loaded.item_ids == rec.item_ids and loaded.table == rec.table and loaded.items == rec.items
    assert loaded.generative.codebook_sizes == rec.generative.codebook_sizes
    np.testing.assert_array_equal(loaded.item_embeddings, rec.item_embeddings)
    histories = [history, history + [TWIN], [TWIN], rec.item_ids[:4]]
    for method in rec.methods:
        hs = histories
        a = rec.with_method(method).recommend_batch(hs, k=5)
        b = loaded.with_method(method).recommend_batch(hs, k=5)
        assert [(r.items, r.scores, r.gate) for r in a] == [(r.items, r.scores, r.gate) for r in b], method
    assert (loaded.quantize_dir / "quantizer.pt").is_file()  # so it can add more items later


def test_cli_add_items_end_to_end(tiny_run, emb_cache, tmp_path, capsys):
    rec = Recommender.from_pretrained(tiny_run)
    new = tmp_path / "new.jsonl"
    twin = {**rec.items[5], "item_id": "CLI_TWIN"}
    fresh = {"item_id": "CLI_FRESH", "title": "Moonlit Cedar Beard Oil", "categories": ["Men", "Beard Care"]}
    new.write_text(json.dumps(twin) + "\n\n" + json.dumps(fresh) + "\n")
    out = tmp_path / "model"
    code = cli.main(["add-items", str(tiny_run), str(new), "--out", str(out), "--cache-dir", str(emb_cache)])
    printed = capsys.readouterr().out
    assert code == 0 and "added 2 item(s)" in printed and "CLI_TWIN: [" in printed and "CLI_FRESH: [" in printed
    assert "recommendable by: sasrec, generative" in printed
    saved = Recommender.from_pretrained(out)
    assert saved.sasrec.num_items == saved.num_items
    assert saved.item_ids[-2:] == ["CLI_TWIN", "CLI_FRESH"] and saved.num_items == rec.num_items + 2
    assert saved.item("CLI_TWIN")["semantic_id"][:-1] == rec.item(rec.item_ids[5])["semantic_id"][:-1]
    assert saved.item("CLI_FRESH")["title"] == "Moonlit Cedar Beard Oil"
    # a beam as wide as the catalogue returns every item the generative model can decode: the new ones too
    from genrec.generative import recommend

    beam = recommend(saved.generative, [np.array([0, 1, 2])], beam_size=saved.num_items)
    assert sorted(saved.item_ids[i] for i in beam.items[0] if i >= 0) == sorted(saved.item_ids)
    # --method picks the run's model to extend
    assert cli.main(["add-items", str(tiny_run), str(new), "--out", str(tmp_path / "gen"), "--cache-dir",
                     str(emb_cache), "--method", "generative"]) == 0
    assert "recommendable by: generative (not by -" in capsys.readouterr().out
    gen = Recommender.from_pretrained(tmp_path / "gen")
    assert gen.method_name == "generative" and gen.item_ids[-2:] == ["CLI_TWIN", "CLI_FRESH"]
    # bad input: the file and line are named, exit code 2, nothing saved
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(fresh) + "\n{not json\n")
    assert cli.main(["add-items", str(tiny_run), str(bad), "--out", str(tmp_path / "x")]) == 2
    assert f"{bad}:2: malformed JSON" in capsys.readouterr().err and not (tmp_path / "x").exists()
    assert cli.main(["add-items", str(out), str(new), "--out", str(tmp_path / "y")]) == 2
    assert "'CLI_TWIN' is already in the catalogue" in capsys.readouterr().err
    assert cli.main(["add-items", str(out), str(new), "--out", str(tiny_run)]) == 2
    assert "a recipe run directory" in capsys.readouterr().err
    # a stage's folder inside a run was overwritten (its semantic_ids.json replaced: the run no longer loaded)
    copy = tmp_path / "run_copy"
    shutil.copytree(tiny_run, copy)
    before = (copy / "quantize" / "semantic_ids.json").read_bytes()
    assert cli.main(["add-items", str(copy), str(new), "--out", str(copy / "quantize"), "--cache-dir",
                     str(emb_cache)]) == 2
    assert "is neither empty nor a saved recommender" in capsys.readouterr().err
    assert (copy / "quantize" / "semantic_ids.json").read_bytes() == before and Recommender.from_run(copy)


def test_every_fusion_method_ranks_a_candidate_only_the_generative_model_can_score():
    """Simulated outputs where the generative model is right on 'generalization' instances: there the
    target becomes a new item (SASRec cannot score it: NaN, not in its top-K). Every method keeps it in
    the top 10 (min-max scale: its fused score is the gate's generative share), and the methods whose
    gate leans on the generative model there put it first."""
    from fusion.candidates import CandidateScores
    from fusion.methods import AdaptiveFusion, FixedWeightFusion, LearnedGateFusion
    from fusion.simulate import simulate_outputs

    valid, test = simulate_outputs(n=400, seed=11), simulate_outputs(n=400, seed=12)
    feats = ["id_msp", "id_entropy", "gr_top1_logp"]
    methods = [FixedWeightFusion(), AdaptiveFusion(),
               *(LearnedGateFusion(scale=s, features=feats, max_epochs=10) for s in ("minmax", "logprob", "mixture"))]
    c = test.cands
    col = c.target_index(test.targets)
    rows = np.flatnonzero(~test.memorization & (col >= 0))
    id_scores, id_topk = c.id_scores.copy(), c.id_in_topk.copy()
    id_scores[rows, col[rows]], id_topk[rows, col[rows]] = np.nan, False
    new = CandidateScores(c.items, id_scores, c.gr_scores, id_topk, c.gr_in_topk)
    for m in methods:
        m.fit(valid.cands, valid.targets, valid.indicators)
        fused = m.fuse(new, test.indicators)
        assert np.isfinite(fused[rows, col[rows]]).all(), m
        top = new.topk(fused, 10)[rows]
        hit = top == test.targets[rows, None]
        assert hit.any(1).mean() >= 0.95, (m.name, getattr(m, "scale", None))
        if not isinstance(m, FixedWeightFusion):  # a per-instance gate trusts the generative model here
            assert hit[:, 0].mean() >= 0.9, (m.name, getattr(m, "scale", None))
        if getattr(m, "scale", "minmax") == "minmax" and not isinstance(m, LearnedGateFusion):
            g = m.gates(new, test.indicators).gate[rows]
            np.testing.assert_allclose(fused[rows, col[rows]], (1 - g) * new.normalized("gr")[rows, col[rows]],
                                       rtol=1e-5)


def test_catalogue_items_without_interactions_keep_their_semantic_ids(tiny_run, emb_cache, tmp_path):
    """``data.keep_items_without_interactions`` (plain-format data): an item of items.jsonl that no
    interaction names stays in the catalogue (after the others, whose indices do not move) and gets a
    semantic ID; off (the default) it is left out and the stage hashes are those of older runs."""
    import genrec
    from genrec.artifacts import load_json
    from genrec.data import load_plain, write_plain
    from genrec.errors import ConfigError
    from genrec.recipe import config_from_dict
    from genrec.recipe.runner import StopAfterStage, run_recipe
    from genrec.recipe.stage_hash import section_for_hash
    from quantize import SemanticIdTable

    raw = load_json(tiny_run / "config.json")
    full = genrec.load_dataset(raw["data"]["dataset"])
    data = tmp_path / "data"
    write_plain(full, data)
    unsold = {"item_id": "UNSOLD", "title": full.items[0].title, "categories": list(full.items[0].categories)}
    with open(data / "items.jsonl", "a", encoding="utf-8") as f:  # same text as item 0: a cached embedding
        f.write(json.dumps(unsold) + "\n")
    assert load_plain(data).item_ids == full.item_ids
    kept = load_plain(data, keep_unused_items=True)
    assert kept.item_ids == full.item_ids + ["UNSOLD"] and kept.items[-1].title == full.items[0].title

    on = config_from_dict(raw, overrides=[f"data.dataset={data}", "data.keep_items_without_interactions=true",
                                          f"text.cache_dir={emb_cache}"])
    with pytest.raises(StopAfterStage):
        run_recipe(on, tmp_path / "run", stop_after="quantize")
    table = SemanticIdTable.load(tmp_path / "run" / "quantize" / "semantic_ids.json")
    assert table.item_ids[-1] == "UNSOLD" and table.num_items == full.num_items + 1
    np.testing.assert_array_equal(table.codes[-1, :-1], table.codes[0, :-1])  # its text's base codes
    assert load_json(tmp_path / "run" / "data" / "summary.json")["items_without_interactions"] == 1

    off = config_from_dict(raw)
    assert "keep_items_without_interactions" not in section_for_hash(off, "data")
    assert section_for_hash(on, "data")["keep_items_without_interactions"] is True
    with pytest.raises(ConfigError, match="applies to plain-format directories, recbole: and parquet: specs only"):
        config_from_dict(raw, overrides=["data.keep_items_without_interactions=true"])


def test_the_new_item_mixture_ranks_added_items_apart_and_round_trips(added, added_without_embeddings, tmp_path,
                                                                      caplog, monkeypatch):
    """``set_new_item_mixture``: the prior decides how much of the ranking the added items get (almost
    all of it: they lead; almost none: they leave the top 10); the setting and the trained catalogue
    survive save/load; without SASRec scores for the new items the mixture changes nothing."""
    from fusion.new_item_mixture import NewItemMixture
    from genrec.artifacts import load_json, save_json
    from genrec.errors import ConfigError
    from genrec.recommender_files import MANIFEST

    base, _, _ = added
    assert base.trained_items == base.num_items - 2 and base.new_item_mixture is None
    new_ids = set(base.item_ids[base.trained_items:])
    history = [base.item_ids[3], base.item_ids[7]]
    plain = base.recommend(history, k=10)
    rec = base.with_method(base.method_name)
    rec.set_new_item_mixture(NewItemMixture(log_prior=-1e-3))
    assert base.new_item_mixture is None  # the copy's setting only
    top = rec.recommend(history, k=10)
    assert set(top.items[:2]) == new_ids and top.items[2:] == [i for i in plain.items if i not in new_ids][:8]
    rec.set_new_item_mixture(NewItemMixture(log_prior=-40.0))
    assert not new_ids & set(rec.recommend(history, k=10).items)
    rec.set_new_item_mixture(NewItemMixture(log_prior=-1e-3, temperature=2.0, warm_temperature=0.5))
    again = Recommender.from_pretrained(rec.save_pretrained(tmp_path / "saved"))
    assert again.trained_items == rec.trained_items and again.new_item_mixtures == rec.new_item_mixtures
    from genrec.recommender_files import FORMAT_VERSION

    assert load_json(tmp_path / "saved" / MANIFEST)["format_version"] == FORMAT_VERSION == 2  # unreadable before
    assert again.recommend(history, k=10).pairs() == rec.recommend(history, k=10).pairs()
    # the recommender whose SASRec cannot score the new items ranks as it does without the mixture
    blind, _, _ = added_without_embeddings
    other = blind.with_method(blind.method_name)
    with caplog.at_level("WARNING", logger="genrec.recommender"):
        other.set_new_item_mixture(NewItemMixture(log_prior=-1e-3))
    assert "SASRec cannot score the items added" in caplog.text
    assert other.recommend(history, k=10).pairs() == blind.recommend(history, k=10).pairs()
    # with the history excluded, a new item read before the last max_history items (which the models
    # read) is not among the new items added as candidates (it would take a slot and then be masked)
    import fusion.new_item_mixture as mixture_module

    passed = []
    real = mixture_module.mix_new_items
    monkeypatch.setattr(mixture_module, "mix_new_items", lambda *a: passed.append(a[-1]) or real(*a))
    read = sorted(new_ids)[0]
    filler = [rec.item_ids[i % rec.trained_items] for i in range(rec.max_history)]
    for exclude in (True, False):
        shown = rec.recommend([read] + filler, k=10, exclude_seen=exclude).items
        assert (rec.index[read] in passed[-1][0]) == exclude and (read not in shown or not exclude)
    # bad settings and damaged files
    with pytest.raises(ConfigError, match="'sasrec' is not one of"):
        rec.set_new_item_mixture(NewItemMixture(-1.0), method="sasrec")
    with pytest.raises(ConfigError, match="NewItemMixture or None"):
        rec.set_new_item_mixture({"log_prior": -1.0})
    saved = tmp_path / "saved"
    manifest = load_json(saved / MANIFEST)
    for key, value, message in (("trained_items", 0, "'trained_items' must be an integer >= 1"),
                                ("trained_items", rec.num_items + 1, "trained_items=.* must be between 1 and"),
                                ("new_item_mixtures", {rec.method_name: {"log_prior": 1.0}},
                                 rf"new_item_mixtures: {rec.method_name}: log_prior must be"),
                                ("new_item_mixtures", [], "expected an object")):
        save_json(saved / MANIFEST, {**manifest, key: value})
        with pytest.raises(CheckpointError, match=message):
            Recommender.from_pretrained(saved)
    (saved / MANIFEST).write_text("{not json")
    with pytest.raises(CheckpointError, match=r"recommender.json: damaged JSON file \(.*\); save the recommender again") as e:
        Recommender.from_pretrained(saved)
    assert str(e.value).count(str(saved / MANIFEST)) == 1
    legacy = {k: v for k, v in manifest.items() if k not in ("trained_items", "new_item_mixtures")}
    save_json(saved / MANIFEST, legacy)  # saved before the mixture: every item counts as trained
    old = Recommender.from_pretrained(saved)
    assert old.trained_items == old.num_items and old.new_item_mixtures == {}


def test_permute_items_renumbers_sequences_consistently():
    import genrec
    from genrec.cold_start import permute_items

    ds = genrec.load_dataset("synthetic:num_users=150,num_brands=4,num_categories=4,num_attributes=4")
    order = np.random.default_rng(0).permutation(ds.num_items)
    p = permute_items(ds, order)
    for s, t in zip(ds.sequences[:20], p.sequences[:20]):
        assert [ds.item_ids[i] for i in s] == [p.item_ids[i] for i in t]
    with pytest.raises(ValueError, match="permutation"):
        permute_items(ds, order[:-1])
