"""genrec.Recommender: a finished recipe run asked by raw item ids gives exactly the fused ranking
the recipe's fusion stage produced; every method and single model survives save/load unchanged;
explain(), exclude_seen, unknown ids and the saved directory's format checks."""

from __future__ import annotations

import copy
import json
import shutil

import numpy as np
import pytest
import torch

from genrec.artifacts import load_json, save_json
from genrec.errors import CheckpointError, DataFormatError, UnknownItemError
from genrec.recipe import StageContext, config_from_dict
from genrec.recommender import Explanation, Recommender
from genrec.recommender_files import FORMAT_VERSION, MANIFEST


@pytest.fixture(scope="module")
def rec(tiny_run):
    return Recommender.from_pretrained(tiny_run)


@pytest.fixture(scope="module")
def test_histories(tiny_run, rec):
    _, split = StageContext(tiny_run, config_from_dict(load_json(tiny_run / "config.json"))).data()
    return [[rec.item_ids[i] for i in h] for h in split.test.histories]


def test_recommendations_equal_the_recipes_fused_test_ranking(rec, tiny_run, test_histories):
    out = rec.recommend_batch(test_histories, k=10)
    primary = load_json(tiny_run / "results.json")["fusion"]["primary"]  # fusion.primary: auto -> the chosen one
    with np.load(tiny_run / "fusion" / "topk.npz") as z:
        expected = {name: z[name] for name in (primary, "sasrec", "gr")}
    for row, got in zip(expected[primary], out):
        assert got.items == [rec.item_ids[i] for i in row if i >= 0]
        assert got.scores == sorted(got.scores, reverse=True) and not got.unknown_ids
        assert 0.0 <= got.gate <= 1.0 and not got.fallback
    assert rec.recommend(test_histories[0], k=3).items == out[0].items[:3]
    # one tower alone: SASRec's top-10 over the catalogue is the fusion stage's SASRec list
    sasrec = rec.with_method("sasrec").recommend_batch(test_histories, k=10)
    for row, got in zip(expected["sasrec"], sasrec):
        assert got.items == [rec.item_ids[i] for i in row if i >= 0] and got.gate is None


def test_every_method_and_single_model_round_trips_through_save_pretrained(rec, tiny_run, tmp_path, test_histories):
    saved = rec.save_pretrained(tmp_path / "model")
    manifest = load_json(saved / MANIFEST)
    # no new-item mixture: still version 1, which a genrec from before version 2 reads
    assert manifest["format_version"] == 1 and manifest["models"] == ["sasrec", "generative", "fusion"]
    loaded = Recommender.from_pretrained(saved)
    assert loaded.item_ids == rec.item_ids and loaded.methods == rec.methods
    assert loaded.item(rec.item_ids[3]) == rec.item(rec.item_ids[3])
    for method in rec.methods:
        a = rec.with_method(method).recommend_batch(test_histories[:40], k=5, exclude_seen=True)
        b = Recommender.from_pretrained(saved, method=method).recommend_batch(test_histories[:40], k=5,
                                                                              exclude_seen=True)
        assert [(r.items, r.scores, r.gate) for r in a] == [(r.items, r.scores, r.gate) for r in b], method
    # a single model saves alone and loads the same way, without the other tower's files
    only = Recommender(table=rec.table, train_sequences=rec.train_sequences, method="generative",
                       settings=rec.settings, generative=rec.generative, items=rec.items)
    d = only.save_pretrained(tmp_path / "generative_only")
    assert not (d / "sasrec.pt").exists() and load_json(d / MANIFEST)["models"] == ["generative"]
    again = Recommender.from_pretrained(d)
    assert again.methods == ["generative"]
    assert again.recommend(test_histories[0], k=5) == rec.with_method("generative").recommend(test_histories[0], k=5)
    with pytest.raises(CheckpointError, match=r"method 'sasrec' is not available here; this recommender holds "
                                              r"\['generative'\]"):
        Recommender.from_pretrained(d, method="sasrec")


def test_raw_id_mapping_both_ways(rec, tiny_run):
    dataset, _ = StageContext(tiny_run, config_from_dict(load_json(tiny_run / "config.json"))).data()
    for i in (0, 17, len(rec.item_ids) - 1):
        info = rec.item(dataset.item_ids[i])
        assert info["index"] == i and info["item_id"] == dataset.item_ids[i]
        assert info["title"] == dataset.items[i].title
        assert info["semantic_id"] == [int(c) for c in rec.table.codes[i]]
        assert rec.table.item_of(info["semantic_id"]) == i
    with pytest.raises(UnknownItemError, match="unknown item id 'nope'"):
        rec.item("nope")


def test_exclude_seen_removes_history_items_and_keeps_the_order_of_the_rest(rec, test_histories):
    for method in ("learned_minmax", "sasrec", "generative"):
        r = rec.with_method(method)
        for h in test_histories[:20]:
            full = r.recommend(h, k=10).items
            kept = r.recommend(h, k=5, exclude_seen=True)
            assert not set(kept.items) & set(h) and len(kept.items) == 5
            assert kept.scores == sorted(kept.scores, reverse=True)
            if method != "generative":  # exact scorers: the same ranking, history items left out
                assert kept.items == [i for i in full if i not in set(h)][:5]
            # (the generative model decodes with a beam widened by the history's length when excluding
            # it, and a beam search of another width may order its tail otherwise)


def test_explain_gives_the_gate_and_the_features_that_moved_it(rec, test_histories):
    gate = rec.with_method("learned_minmax")  # the learned gate (the primary is chosen on validation)
    e = gate.explain(test_histories[0], k=5)
    assert isinstance(e, Explanation) and e.method == "learned_minmax"
    assert e.recommendations.items == gate.recommend(test_histories[0], k=5).items
    assert e.gate == pytest.approx(e.recommendations.gate) and e.trusted == ("id" if e.gate > 0.5 else "gr")
    assert set(e.contributions) <= set(e.features) and len(e.contributions) == len(e.features) > 3
    mags = [abs(c) for c in e.contributions.values()]
    assert mags == sorted(mags, reverse=True)  # strongest first
    assert len(e.id_top) == 5 and len(e.gr_top) == 5 and "gate" in str(e)
    assert json.dumps(e.to_dict())  # serialisable as it is
    adaptive = rec.with_method("adaptive").explain(test_histories[0])
    assert list(adaptive.features) == [rec.fusion_methods["adaptive"].indicator]
    single = rec.with_method("sasrec").explain(test_histories[0])
    assert single.gate is None and single.features == {} and "no gate" in str(single)
    # a fusion method answering an empty history: the fallback, not "a single model"
    empty = gate.explain([])
    assert empty.gate is None and "the popularity fallback answered" in str(empty)
    # explain agrees with recommend under exclude_seen too
    assert gate.explain(test_histories[0], k=5, exclude_seen=True).recommendations.items == \
        gate.recommend(test_histories[0], k=5, exclude_seen=True).items


def test_unknown_ids_are_skipped_and_reported_or_refused(rec):
    known = rec.item_ids[:3]
    skipped = rec.recommend(["nope", *known, "nada", "nope"], k=5)  # each unknown id once, as the service's 422
    assert skipped.unknown_ids == ["nope", "nada"] and skipped.items == rec.recommend(known, k=5).items
    with pytest.raises(UnknownItemError, match=r"history 0: unknown item id\(s\) \['nope'\]") as info:
        rec.recommend(["nope", *known], on_unknown="error")
    assert info.value.item_ids == ["nope"]
    empty = rec.recommend([], k=4)  # nothing to condition on: the most popular training items
    counts = np.bincount(np.concatenate(rec.train_sequences), minlength=rec.num_items)
    popular = np.argsort(-counts, kind="stable")[:4]  # ties: the lower index first
    assert empty.items == [rec.item_ids[i] for i in popular] and empty.fallback
    assert empty.scores == [float(c) for c in counts[popular]]  # training interaction counts
    assert rec.recommend(["nope"], k=4).items == empty.items
    with pytest.raises(DataFormatError, match="a single string"):
        rec.recommend(known[0])
    with pytest.raises(ValueError, match=r"k must be an integer between 1 and 10 \(fusion.k\), got 11"):
        rec.recommend(known, k=11)
    assert rec.with_method("sasrec").max_k == rec.num_items
    with pytest.raises(ValueError, match="on_unknown must be one of"):
        rec.recommend(known, on_unknown="ignore")
    # the default k is min(10, max_k): never refused on a run whose fusion.k (or beam) is below 10
    from dataclasses import replace

    small = rec.with_method(rec.method_name)
    small.settings = replace(rec.settings, k=5)
    assert len(small.recommend(known).items) == 5 and len(small.recommend_batch([known])[0].items) == 5
    assert len(small.explain(known).recommendations.items) == 5


def test_histories_of_any_iterable_and_numpy_rows_are_read_and_other_containers_named(rec):
    """pandas reads a Parquet list column as NumPy arrays (refused before); None or a number as the
    histories was a TypeError traceback."""
    known = rec.item_ids[:4]
    want = rec.recommend_batch([known, known[:2]], k=5)
    assert rec.recommend_batch(iter([np.array(known), np.array(known[:2])]), k=5) == want
    assert rec.recommend(np.array(known), k=5) == want[0]
    for bad, name in ((None, "NoneType"), (5, "int")):
        with pytest.raises(DataFormatError, match=rf"histories: expected a list of histories .*got {name}"):
            rec.recommend_batch(bad)


def test_bad_run_and_saved_directories_are_clear_errors(tiny_run, rec, tmp_path):
    assert Recommender.from_run(tiny_run, method="adaptive").method.name == "adaptive"
    with pytest.raises(CheckpointError, match=r"no fusion method 'magic'; it holds \['fixed', 'adaptive', "):
        Recommender.from_run(tiny_run, method="magic")
    with pytest.raises(CheckpointError, match=r"stage 'joint' has not finished there"):
        Recommender.from_run(tiny_run, method="joint")
    # data changed since the run trained: the training statistics would no longer be the models' (they were
    # rebuilt from the data as it is now, silently)
    moved = shutil.copytree(tiny_run, tmp_path / "changed")
    marker = load_json(moved / "data" / "stage.done.json")
    marker["hashed"]["config"]["data"]["fingerprint"]["spec"] += ",seed=9"
    save_json(moved / "data" / "stage.done.json", marker)
    with pytest.raises(CheckpointError, match=r"changed: its data \(.*\) changed since the run trained"):
        Recommender.from_run(moved)
    # data that is gone (moved, another cache) is named as missing, not as changed
    from genrec.errors import DataNotFoundError
    from genrec.recipe.run_files import check_data_unchanged, run_config

    marker["hashed"]["config"]["data"]["fingerprint"] = {"spec": str(tmp_path / "gone"), "files": [
        {"path": str(tmp_path / "gone" / "interactions.tsv"), "size": 10, "sha256": "0" * 64}]}
    save_json(moved / "data" / "stage.done.json", marker)
    config = run_config(moved)
    config.data.dataset = str(tmp_path / "gone")
    with pytest.raises(DataNotFoundError, match=r"its data files are not found \(interactions.tsv of "):
        check_data_unchanged(moved, config)
    with pytest.raises(CheckpointError, match="neither a saved recommender"):
        Recommender.from_pretrained(tmp_path)
    saved = rec.save_pretrained(tmp_path / "m")
    # without the file digests (as saved before them), so that each file's own check below is reached
    manifest = {**load_json(saved / MANIFEST), "file_digests": None}
    save_json(saved / MANIFEST, {**manifest, "format_version": FORMAT_VERSION + 1})
    with pytest.raises(CheckpointError, match=rf"recommender format version {FORMAT_VERSION + 1}; this genrec reads "
                                              rf"versions 1, {FORMAT_VERSION}"):
        Recommender.from_pretrained(saved)
    save_json(saved / MANIFEST, {**manifest, "format": "something-else"})
    with pytest.raises(CheckpointError, match="not a genrec recommender manifest"):
        Recommender.from_pretrained(saved)
    save_json(saved / MANIFEST, {**manifest, "models": [["sasrec"]]})  # a TypeError (unhashable list)
    with pytest.raises(CheckpointError, match=r"damaged: 'models' must list model names"):
        Recommender.from_pretrained(saved)
    save_json(saved / MANIFEST, {**manifest, "settings": {**manifest["settings"], "k": 0}})
    with pytest.raises(CheckpointError, match=r"setting 'k' must be an int >= 1, got 0"):
        Recommender.from_pretrained(saved)
    save_json(saved / MANIFEST, manifest)
    lines = (saved / "items.jsonl").read_text().splitlines()
    (saved / "items.jsonl").write_text("\n".join(lines[:5]) + "\n")
    with pytest.raises(CheckpointError, match=r"items.jsonl: 5 items, semantic_ids.json has 64"):
        Recommender.from_pretrained(saved)
    (saved / "items.jsonl").write_text("\n".join(lines) + "\n")
    emb = np.load(saved / "item_embeddings.npy")
    for bad, message in ((emb[:5], r"expected finite float32 \[64, d\] item embeddings, got float32 \[5, "),
                         (emb.astype(np.float64), "got float64"), (np.where(emb > 0, np.nan, emb), "expected finite")):
        np.save(saved / "item_embeddings.npy", bad)
        with pytest.raises(CheckpointError, match="item_embeddings.npy: damaged: .*" + message):
            Recommender.from_pretrained(saved)
    (saved / "item_embeddings.npy").write_bytes(b"")
    with pytest.raises(CheckpointError, match="item_embeddings.npy: cannot read the item embeddings"):
        Recommender.from_pretrained(saved)
    np.save(saved / "item_embeddings.npy", emb)
    # a model file holding a pickled object is refused, and its payload never runs
    torch.save({"model": object()}, saved / "sasrec.pt")
    with pytest.raises(CheckpointError, match="sasrec.pt"):
        Recommender.from_pretrained(saved)
    shutil.rmtree(saved)
    with pytest.raises(CheckpointError, match="neither a saved recommender"):
        Recommender.from_pretrained(saved)


def test_a_joint_model_recommends_explains_and_round_trips(rec, test_histories, tmp_path):
    from fusion.joint import JointConfig, JointModel
    from genrec.generative import GenerativeConfig
    from genrec.sasrec import SASRecConfig

    torch.manual_seed(0)
    config = JointConfig(id_tower=SASRecConfig(hidden=16, num_blocks=1), max_len=10,
                         gr_tower=GenerativeConfig(hidden=16, num_blocks=1, head_layers=1))
    joint = JointModel(rec.num_items, rec.table.codes, rec.table.codebook_sizes, config, rec.train_sequences).eval()
    only = Recommender(table=rec.table, train_sequences=rec.train_sequences, method="joint", settings=rec.settings,
                       joint=joint, items=rec.items)
    got = only.recommend_batch(test_histories[:30], k=7, exclude_seen=True)
    fused, gate, _ = joint.scores([np.asarray([rec.index[i] for i in h]) for h in test_histories[:30]])
    for j, (r, h) in enumerate(zip(got, test_histories)):
        scores = fused[j].clone()
        scores[[rec.index[i] for i in h]] = -torch.inf
        assert r.items == [rec.item_ids[i] for i in scores.topk(7).indices.tolist()]
        assert r.gate == pytest.approx(float(gate[j]))
    e = only.explain(test_histories[0], k=7)
    assert e.gate == pytest.approx(got[0].gate) and set(e.features) == set(joint.feature_names)
    loaded = Recommender.from_pretrained(only.save_pretrained(tmp_path / "joint"))
    assert loaded.methods == ["joint"]
    assert [r.items for r in loaded.recommend_batch(test_histories[:30], k=7, exclude_seen=True)] == \
        [r.items for r in got]
    # it cannot take new items, and says what can
    from genrec.new_items import add_items

    with pytest.raises(CheckpointError, match="end-to-end joint model scores only the catalogue it trained on"):
        add_items(loaded, [{"item_id": "NEW", "title": "New"}])


def test_sasrec_answers_keep_tied_items_in_index_order_whatever_k(rec, test_histories):
    """Tied scores (a new item copies its neighbour's SASRec vector) rank the lower index first, so
    the first j items never depend on the k asked for (the service batches requests of mixed k)."""
    one = rec.with_method("sasrec")
    one.sasrec = copy.deepcopy(rec.sasrec)
    with torch.no_grad():  # items 3 and 8 get item 5's vector: three-way ties in every row
        one.sasrec.item_emb.weight[[4, 9]] = one.sasrec.item_emb.weight[6].clone()
        if one.sasrec.text_proj is not None:
            one.sasrec.item_text[[4, 9]] = one.sasrec.item_text[6].clone()
    hs = test_histories[:20]
    full = one.recommend_batch(hs, k=one.num_items)
    checked = 0
    for j, (r, h) in enumerate(zip(full, hs)):
        at = [r.items.index(rec.item_ids[i]) for i in (3, 5, 8) if rec.item_ids[i] not in h]  # no repeat bias
        if len(at) > 1 and len({r.scores[p] for p in at}) == 1:  # tied to the bit
            assert at == sorted(at), j  # the lower index first
            checked += 1
    assert checked >= 10
    for k in (1, 4, 5, 6, 9, 12):
        assert [r.items for r in one.recommend_batch(hs, k=k)] == [r.items[:k] for r in full], k


def test_exclude_seen_covers_the_whole_history_and_answers_do_not_depend_on_the_batch(rec):
    # a history longer than max_history (10 here): its older items are excluded too
    long_history = rec.item_ids[:rec.max_history + 30]
    for method in ("sasrec", "generative", rec.method_name):
        r = rec.with_method(method)
        got = r.recommend(long_history, k=min(r.max_k, 10), exclude_seen=True)
        assert not set(got.items) & set(long_history), method
        if method in ("sasrec", "generative"):  # the generative beam widens by every seen item (was: 6 of 10)
            assert len(got.items) == min(r.max_k, 10), method
    gen = rec.with_method("generative")
    # histories of one beam width share a decoding batch: the same items as alone, scores to float rounding
    short, same_width, wider = rec.item_ids[40:42], rec.item_ids[50:52], rec.item_ids[:rec.max_history]
    alone = gen.recommend(short, k=5, exclude_seen=True)
    for batch in ([short, same_width], [short, wider], [same_width, short, wider]):
        together = gen.recommend_batch(batch, k=5, exclude_seen=True)[batch.index(short)]
        assert together.items == alone.items and together.scores == pytest.approx(alone.scores, abs=1e-5)
    assert gen.max_k == rec.settings.beam and "fusion.beam" in gen.max_k_source


def test_saved_directories_that_mix_recommenders_or_keep_stale_files_are_caught(rec, tmp_path):
    from genrec.generative import save_generative, with_new_items

    d = rec.save_pretrained(tmp_path / "m")
    assert (d / "quantize" / "quantizer.pt").is_file()
    codes = rec.table.codes.copy()
    codes[[0, 1]] = codes[[1, 0]]  # the same IDs, given to other items
    other = with_new_items(rec.generative, rec.generative.codes, rec.generative.codebook_sizes)
    other.item_tokens[1:3] = other.item_tokens[[2, 1]]
    shutil.copy(d / "generative.pt", tmp_path / "generative.pt")
    save_generative(other, d / "generative.pt")
    # the manifest's digests catch any file copied in from another recommender (a SASRec of another run
    # of the same catalogue size loaded and ranked silently)
    with pytest.raises(CheckpointError, match=r"generative.pt: not the file this recommender was saved with .*"
                                              r"mixes files of different recommenders"):
        Recommender.from_pretrained(d)
    from genrec.sasrec import save_sasrec

    manifest = load_json(d / MANIFEST)
    other_sasrec = copy.deepcopy(rec.sasrec)
    with torch.no_grad():
        other_sasrec.item_emb.weight.mul_(-1)
    shutil.copy(d / "generative.pt", tmp_path / "other_generative.pt")
    shutil.copy(tmp_path / "generative.pt", d / "generative.pt")
    shutil.copy(d / "sasrec.pt", tmp_path / "sasrec.pt")
    save_sasrec(other_sasrec, d / "sasrec.pt")
    with pytest.raises(CheckpointError, match=r"sasrec.pt: not the file this recommender was saved with"):
        Recommender.from_pretrained(d)
    shutil.copy(tmp_path / "sasrec.pt", d / "sasrec.pt")
    Recommender.from_pretrained(d)  # its own files again
    shutil.copy(tmp_path / "other_generative.pt", d / "generative.pt")
    # a directory saved before the digests: the semantic IDs are still checked against the table
    save_json(d / MANIFEST, {**manifest, "file_digests": None})
    with pytest.raises(CheckpointError, match="semantic IDs differ from those of semantic_ids.json"):
        Recommender.from_pretrained(d)
    # saving a recommender without a quantizer over a directory that had one removes the stale copy
    bare = Recommender(table=rec.table, train_sequences=rec.train_sequences, method="sasrec", settings=rec.settings,
                       sasrec=rec.sasrec, items=rec.items)
    bare.save_pretrained(d)
    assert not (d / "quantize" / "quantizer.pt").exists() and Recommender.from_pretrained(d).quantize_dir is None
    assert not (d / "item_embeddings.npy").exists() and Recommender.from_pretrained(d).item_embeddings is None


def test_the_generative_models_first_items_do_not_depend_on_k_with_seen_items_excluded(rec, test_histories,
                                                                                       monkeypatch):
    """The beam was widened from k (k + the history's items), so a k=10 answer's first five could differ
    from a k=5 answer (9 of 150 histories on a cold-start run): the service batches requests of mixed k.
    Widths now start from fusion.beam; k only widens a row still short of it."""
    gen = rec.with_method("generative")
    for exclude in (True, False):
        for small, big in ((3, 10), (5, rec.settings.beam)):
            a = gen.recommend_batch(test_histories[:60], k=small, exclude_seen=exclude)
            b = gen.recommend_batch(test_histories[:60], k=big, exclude_seen=exclude)
            assert [r.items for r in a] == [r.items[:small] for r in b]
    import genrec.generative as generative_module

    real, widths = generative_module.recommend, {}

    def spy(model, histories, beam_size, **kw):  # the beam each history is decoded with, per k asked
        for h in histories:
            widths.setdefault(asked, {}).setdefault(tuple(h), []).append(beam_size)
        return real(model, histories, beam_size=beam_size, **kw)

    monkeypatch.setattr(generative_module, "recommend", spy)
    for asked in (3, 10):
        gen.recommend_batch(test_histories[:60], k=asked, exclude_seen=True)
    first = {k: {h: w[0] for h, w in rows.items()} for k, rows in widths.items()}
    assert first[3] == first[10] and len(first[3]) > 1
    monkeypatch.undo()
    full = gen.recommend_batch(test_histories[:60], k=rec.settings.beam, exclude_seen=True)
    assert all(len(r.items) == rec.settings.beam for r in full)  # a row short of k is still decoded wider


def test_a_save_over_a_saved_recommender_that_fails_leaves_it_loadable(rec, tmp_path, monkeypatch, test_histories):
    """save_pretrained deleted the manifest and replaced files one by one: a save that failed part-way
    (a full disk) left a directory neither version could load. It now writes beside it and renames."""
    import errno

    from genrec import recommender_files

    d = rec.save_pretrained(tmp_path / "m")
    expected = Recommender.from_pretrained(d).recommend(test_histories[0], k=5)

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(recommender_files, "save_sequences", full_disk)
    bare = Recommender(table=rec.table, train_sequences=rec.train_sequences, method="sasrec", settings=rec.settings,
                       sasrec=rec.sasrec, items=rec.items)
    with pytest.raises(OSError, match="No space left"):
        bare.save_pretrained(d)
    monkeypatch.undo()
    assert Recommender.from_pretrained(d).recommend(test_histories[0], k=5) == expected
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no staging copy left behind
    # saving in place over the directory it was loaded from (add-items --out PATH PATH)
    loaded = Recommender.from_pretrained(d)
    loaded.save_pretrained(d)
    assert Recommender.from_pretrained(d).recommend(test_histories[0], k=5) == expected
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="is neither empty nor a saved recommender"):
        rec.save_pretrained(tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
