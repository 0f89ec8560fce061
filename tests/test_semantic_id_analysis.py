"""Support coverage, indicator validation and the codebook sweep (arXiv 2603.19809, sections 4.2-4.4)
on hand-built sequences with hand-computed shares and AUCs, and their ``genrec analyze`` outputs."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import pytest

from genrec.codebook_sweep import CodebookConfig, codebook_sweep, config_grid, plot_sweep, sweep_markdown
from genrec.data import ItemText, SequenceDataset, write_plain
from genrec.errors import ConfigError, DataFormatError
from genrec.memorization import InstanceLabels, Kind, label_split, token_memorization
from genrec.semantic_id_analysis import (indicator_validation, indicator_validation_markdown,
                                         plot_indicator_validation, roc_auc, support_coverage,
                                         support_coverage_markdown, support_levels, win_labels)
from genrec.splits import leave_one_out


def g(r: int) -> float:
    """NDCG contribution of a hit at 0-based rank ``r``."""
    return 1 / math.log2(r + 2)


def labels_of(groups: list[str]) -> InstanceLabels:
    """Hand-made labels: memorization / symmetry@1 (generalization) / uncategorized per instance."""
    kind = {"mem": Kind.MEMORIZATION, "gen": Kind.SYMMETRY, "unc": Kind.UNCATEGORIZED}
    hop = {"mem": 0, "gen": 1, "unc": -1}
    kh = np.full((len(groups), 5), -1, dtype=np.int8)
    for i, x in enumerate(groups):
        if x != "unc":
            kh[i, int(kind[x])] = hop[x]
    return InstanceLabels(kind=np.array([kind[x] for x in groups], np.int8),
                          hop=np.array([hop[x] for x in groups], np.int8), kind_hops=kh)


# ----------------------------------------------------------------------------------------------
# Support coverage

# items 0..6 with 2-level codes; item 6 collides with item 0 on the whole code (0, 0)
CODES = np.array([[0, 0], [0, 1], [1, 0], [1, 1], [2, 0], [2, 1], [0, 0]])
TRAIN = [np.array([0, 2]), np.array([4, 5])]  # prefix transitions: (0)->(1), (0,0)->(1,0), (2)->(2), (2,0)->(2,1)
# (history, target, item-level group, support level by hand)
CASES = [([1], 3, "gen", 1),  # (0)->(1) seen; (0,1)->(1,1) not
         ([5], 4, "gen", 1),  # (2)->(2) seen; (2,1)->(2,0) not
         ([3], 0, "gen", 0),  # (1)->(0) never
         ([0], 2, "mem", 2),  # the training transition itself
         ([1], 2, "gen", 1),  # (0)->(1) seen; (0,1)->(1,0) not
         ([6], 2, "gen", 2),  # item 6 -> 2 unseen, but its code (0,0)->(1,0) is 0 -> 2's
         ([5], 1, "unc", 0)]  # (2)->(0) never
RANKS = np.array([0, 1, 20, 0, 5, 0, 3])


def _token():
    hist = [np.array(h) for h, *_ in CASES]
    targets = np.array([t for _, t, *_ in CASES])
    return token_memorization(TRAIN, (hist, targets), CODES, max_hop=1), labels_of([c[2] for c in CASES])


def test_support_levels_hand_built():
    token, _ = _token()
    assert support_levels(token).tolist() == [c[3] for c in CASES]
    with pytest.raises(ValueError, match="hop must be >= 1"):
        support_levels(token, hop=0)


def test_support_coverage_shares_and_ndcg_hand_computed():
    token, labels = _token()
    rows = support_coverage(token, labels, {"M": RANKS}, k=10)
    by = {r["category"]: r for r in rows}
    assert [r["category"] for r in rows] == ["2-gram", "1-gram", "unseen", "all"]
    # 5 generalization instances: one 2-gram (item 6 -> 2), three 1-gram, one unseen
    assert [by[c]["count"] for c in ("2-gram", "1-gram", "unseen", "all")] == [1, 3, 1, 5]
    assert by["2-gram"]["share"] == pytest.approx(1 / 5)
    assert by["1-gram"]["share"] == pytest.approx(3 / 5)
    assert by["unseen"]["share"] == pytest.approx(1 / 5)
    assert by["1-gram"]["M ndcg@10"] == pytest.approx((g(0) + g(1) + g(5)) / 3)
    assert by["1-gram"]["M recall@10"] == pytest.approx(1.0)
    assert by["2-gram"]["M ndcg@10"] == pytest.approx(1.0)
    assert by["unseen"]["M ndcg@10"] == 0.0
    assert by["all"]["M ndcg@10"] == pytest.approx((g(0) + g(1) + g(5) + g(0)) / 5)
    # the memorization group: its one instance is a full-code (2-gram) transition
    mem = {r["category"]: r["count"] for r in support_coverage(token, labels, group="memorization")}
    assert mem == {"2-gram": 1, "1-gram": 0, "unseen": 0, "all": 1}
    md = support_coverage_markdown(rows)
    assert "| 1-gram | 3 | 60.00% |" in md
    with pytest.raises(ValueError, match="ranks of model 'M': shape \\(2,\\), expected \\(7,\\)"):
        support_coverage(token, labels, {"M": RANKS[:2]})
    with pytest.raises(ValueError, match="unknown group 'everything'"):
        support_coverage(token, labels, group="everything")


# ----------------------------------------------------------------------------------------------
# AUCs


def test_roc_auc_hand_computed():
    # positives {0.9, 0.3} vs negatives {0.8, 0.5}: 0.9 beats both, 0.3 neither -> 2/4
    assert roc_auc(np.array([0.9, 0.8, 0.3, 0.5]), np.array([True, False, True, False])) == pytest.approx(0.5)
    # a tie counts half: 1 vs {1, 0} -> (0.5 + 1) / 2
    assert roc_auc(np.array([1.0, 1.0, 0.0]), np.array([True, False, False])) == pytest.approx(0.75)
    assert roc_auc(np.array([3.0, 2.0, 1.0]), np.array([True, True, False])) == 1.0
    assert math.isnan(roc_auc(np.array([1.0, 2.0]), np.array([True, True])))
    with pytest.raises(ValueError, match="labels must be boolean"):
        roc_auc(np.array([1.0, 2.0]), np.array([1, 0]))
    with pytest.raises(ValueError, match="scores must be finite"):
        roc_auc(np.array([np.nan, 2.0]), np.array([True, False]))


def test_roc_auc_matches_sklearn():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    s = rng.integers(0, 5, 200).astype(float)  # many ties
    y = rng.random(200) < 0.3
    assert roc_auc(s, y) == pytest.approx(sklearn_metrics.roc_auc_score(y, s))


def test_win_labels():
    decided, first = win_labels(np.array([0, 5, 50, 0, 50]), np.array([3, 0, 50, 0, 1]), k=10)
    assert decided.tolist() == [True, True, False, False, True]
    assert first[decided].tolist() == [True, False, False]


def test_indicator_validation_hand_computed(tmp_path):
    labels = labels_of(["mem", "gen", "gen", "mem", "unc"])
    ranks = {"A": np.array([0, 5, 50, 0, 50]), "B": np.array([3, 0, 50, 0, 1])}
    x = np.array([5.0, 1.0, 3.0, 2.0, 100.0])
    ind = {"x": x, "neg_x": -x, "z": np.array([1.0, 0.0, 0.0, 1.0, 0.0])}
    res = indicator_validation(ind, labels, ranks, k=10)
    assert res["pair"] == ["A", "B"]
    assert res["counts"] == {"instances": 5, "memorization": 2, "generalization": 2, "decided": 3,
                             "A wins": 1, "B wins": 2}
    by = {r["indicator"]: r for r in res["rows"]}
    # memorization {5, 2} vs generalization {1, 3}: 3 of 4 pairs ordered (uncategorized left out)
    assert by["x"]["auc_memorization"] == pytest.approx(0.75)
    # decided: A wins instance 0 (x=5), B wins 1 (x=1) and 4 (x=100): 1 of 2 pairs
    assert by["x"]["auc_win"] == pytest.approx(0.5)
    assert by["neg_x"]["auc_memorization"] == pytest.approx(0.25)
    assert by["neg_x"]["separation_memorization"] == pytest.approx(0.75)
    assert by["z"]["auc_memorization"] == 1.0 and by["z"]["auc_win"] == 1.0
    md = indicator_validation_markdown(res)
    assert "| x | 0.750 | 0.500 |" in md and "A wins over B" in md
    assert plot_indicator_validation(res, tmp_path / "ind.png").stat().st_size > 0
    no_pair = indicator_validation(ind, labels)
    assert no_pair["pair"] is None and math.isnan(no_pair["rows"][0]["auc_win"])
    with pytest.raises(ValueError, match=r"no ranks for model\(s\) \['C'\]"):
        indicator_validation(ind, labels, ranks, pair=("A", "C"))
    with pytest.raises(ValueError, match="indicator 'bad': 1 non-finite values"):
        indicator_validation({"bad": np.array([1.0, np.inf, 0, 0, 0])}, labels)


# ----------------------------------------------------------------------------------------------
# Codebook sweep

# Items 0-2 lie near (0, 0), items 3-5 near (10, 10): one level of 2 codes puts them in clusters A, B.
EMB = np.array([[0.0, 0.0], [0.3, 0.1], [0.1, 0.4], [10.0, 10.0], [10.2, 9.9], [9.8, 10.3]], dtype=np.float32)
# leave-one-out: train = seq[:-2]; test = (seq[:-1], seq[-1])
SEQS = [[0, 3, 1, 4],  # train 0->3; test 1 -> 4: memorization (1 -> 4 is user 1's training edge)
        [1, 4, 2, 5],  # train 1->4; test 2 -> 5: item 5 never in training: uncategorized; A -> B seen
        [3, 0, 4, 1],  # train 3->0; test 4 -> 1: symmetry@1 (1 -> 4); B -> A seen
        [4, 2, 0, 2]]  # train 4->2; test 0 -> 2: substitutability@3 (4 -> 2); A -> A never seen


def _dataset() -> SequenceDataset:
    return SequenceDataset(name="sweep", item_ids=[f"i{j}" for j in range(6)], user_ids=[f"u{k}" for k in range(4)],
                           sequences=[np.array(s) for s in SEQS], items=[ItemText(title=f"t{j}") for j in range(6)])


def test_sweep_conversion_hand_computed(tmp_path):
    split = leave_one_out(_dataset(), max_history=50, min_interactions=3)
    labels = label_split(split)["test"]
    assert labels.groups().tolist() == ["memorization", "uncategorized", "generalization", "generalization"]
    rows = codebook_sweep(split, EMB, [CodebookConfig(2, 1)], labels)
    (row,) = rows
    assert row["config"] == "2x1"
    assert row["collisions"] == {"items": 6, "unique_tuples": 2, "colliding_items": 6, "colliding_share": 1.0,
                                 "collision_groups": 2, "largest_group": 3}
    assert row["conversion"] == {"memorization": [1.0], "generalization": [0.5], "uncategorized": [1.0]}
    assert row["generalization_support"] == {"1-gram": 0.5, "unseen": 0.5}
    assert "test" not in row  # quick mode: nothing trained
    md = sweep_markdown(rows)
    assert "| 2x1 | 2 | 100.0% | 3 | 100.0% | 50.0% | 100.0% | 100.0% |" in md
    assert plot_sweep(rows, tmp_path / "sweep.png").stat().st_size > 0


def test_sweep_is_deterministic_and_finer_codes_convert_less():
    split = leave_one_out(_dataset(), max_history=50, min_interactions=3)
    labels = label_split(split)["test"]
    grid = config_grid([2, 3], [1, 2])
    assert [c.name for c in grid] == ["2x1", "2x2", "3x1", "3x2"]
    a = codebook_sweep(split, EMB, grid, labels, seed=1)
    b = codebook_sweep(split, EMB, grid, labels, seed=1)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert strip(a) == strip(b)
    for r in a:
        gen = r["conversion"]["generalization"]
        assert all(x >= y for x, y in zip(gen, gen[1:]))  # a longer prefix is never memorized more often
        assert r["conversion"]["memorization"] == [1.0] * r["levels"]
    with pytest.raises(ValueError, match="empty sweep"):
        config_grid([], [1])
    with pytest.raises(ValueError, match=r"embeddings must be \[6, d\]"):
        codebook_sweep(split, EMB[:5], grid, labels)
    # a configuration the quantizer refuses (PQ over 2 dimensions cannot take 3 sub-spaces): with a
    # ``skipped`` list it costs its row (it failed the recipe's whole analysis stage), without, it raises
    refused: list = []
    rows = codebook_sweep(split, EMB, config_grid([2], [1, 3]), labels, method="pq", skipped=refused)
    assert [r["config"] for r in rows] == ["2x1"] and [name for name, _ in refused] == ["2x3"]
    with pytest.raises(ValueError):
        codebook_sweep(split, EMB, config_grid([2], [3]), labels, method="pq")


def test_sweep_resumes_from_saved_rows(tmp_path, monkeypatch):
    import quantize.pipeline

    split = leave_one_out(_dataset(), max_history=50, min_interactions=3)
    labels = label_split(split)["test"]
    grid = config_grid([2], [1, 2])
    first = codebook_sweep(split, EMB, grid, labels, seed=1, rows_dir=tmp_path / "rows")
    assert sorted(p.name for p in (tmp_path / "rows").iterdir()) == ["2x1.json", "2x2.json"]

    def refuse(*a, **kw):
        raise AssertionError("a saved configuration was recomputed")

    monkeypatch.setattr(quantize.pipeline, "build_semantic_ids", refuse)
    assert codebook_sweep(split, EMB, grid, labels, seed=1, rows_dir=tmp_path / "rows") == first
    # other settings or other data: the saved rows are not theirs
    with pytest.raises(AssertionError, match="recomputed"):
        codebook_sweep(split, EMB, grid, labels, seed=2, rows_dir=tmp_path / "rows")
    with pytest.raises(AssertionError, match="recomputed"):
        codebook_sweep(split, EMB + 1.0, grid, labels, seed=1, rows_dir=tmp_path / "rows")
    (tmp_path / "rows" / "2x1.json").write_text("{not json")  # a damaged row is recomputed, not trusted
    with pytest.raises(AssertionError, match="recomputed"):
        codebook_sweep(split, EMB, grid, labels, seed=1, rows_dir=tmp_path / "rows")


def test_sweep_training_mode_adds_test_metrics_and_curve(monkeypatch):
    import genrec.generative
    from genrec.generative import GenerativeConfig

    widths = []
    real = genrec.generative.recommend

    def recorded(model, inst, beam_size=20, *a, **kw):
        widths.append(beam_size)
        return real(model, inst, beam_size, *a, **kw)

    monkeypatch.setattr(genrec.generative, "recommend", recorded)

    split = leave_one_out(_dataset(), max_history=50, min_interactions=3)
    labels = label_split(split)["test"]
    cfg = GenerativeConfig(hidden=16, num_heads=1, num_blocks=1, max_epochs=1, eval_every=1, eval_beam=4,
                           batch_size=4, num_threads=1)
    (row,) = codebook_sweep(split, EMB, [CodebookConfig(2, 1)], labels, train_config=cfg)
    assert set(row["test"]) == {"all", "memorization", "generalization", "uncategorized"}
    # NDCG@10 from a list of at least 10 (eval_beam 4 scored places 5-10 as misses): every target of the
    # 6-item catalogue is listed, so each instance scores at least 1/log2(7)
    assert widths[-1] == 10 and 1 / np.log2(7) - 1e-9 <= row["test"]["all"] <= 1.0  # (the first: validation)
    assert len(row["validation_curve"]) == 1 and row["validation_curve"][0]["epoch"] == 1
    assert "ndcg@10 generalization" in sweep_markdown([row])


# ----------------------------------------------------------------------------------------------
# genrec analyze


def _run_analyze(argv):
    from genrec.commands import analyze

    p = argparse.ArgumentParser()
    analyze.add_arguments(p)
    return analyze.run(p.parse_args(argv))


def test_analyze_writes_the_three_analyses(tmp_path, capsys):
    ds = _dataset()
    write_plain(ds, tmp_path / "data")
    np.save(tmp_path / "codes.npy", np.array([[j // 3, j % 2] for j in range(6)]))
    np.save(tmp_path / "emb.npy", EMB)
    np.savez(tmp_path / "topk.npz", sasrec=np.tile(np.arange(5), (4, 1)), gr=np.tile(np.arange(5)[::-1], (4, 1)))
    np.savez(tmp_path / "extra.npz", ones=np.ones(4))
    out = tmp_path / "out"
    rc = _run_analyze([str(tmp_path / "data"), "--out", str(out), "--codes", str(tmp_path / "codes.npy"),
                       "--predictions", f"sasrec={tmp_path / 'topk.npz'}", f"gr={tmp_path / 'topk.npz'}",
                       "--indicator-validation", "--indicators", str(tmp_path / "extra.npz"),
                       "--sweep-embeddings", str(tmp_path / "emb.npy"), "--sweep-sizes", "2",
                       "--sweep-levels", "1", "2"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "token support" in printed and "AUC memorization vs generalization" in printed
    assert "generalization -> 1-gram" in printed
    for name in ("support_coverage.md", "support_coverage.json", "indicator_validation.md",
                 "indicator_validation.json", "indicator_validation.png", "codebook_sweep.md", "codebook_sweep.json",
                 "codebook_sweep.png"):
        assert (out / name).is_file(), name
    cov = json.loads((out / "support_coverage.json").read_text())
    assert cov["rows"][-1]["category"] == "all" and cov["rows"][-1]["count"] == 2
    ind = json.loads((out / "indicator_validation.json").read_text())
    assert ind["pair"] == ["sasrec", "gr"]
    names = [r["indicator"] for r in ind["rows"]]
    assert {"id_top1_edge", "gr_top1_edge", "last_out_degree", "prefix_source@1", "ones"} <= set(names)
    sweep = json.loads((out / "codebook_sweep.json").read_text())
    assert [r["config"] for r in sweep["rows"]] == ["2x1", "2x2"]

    def refuse(token):  # strict JSON, as results.json (NaN tokens before)
        raise ValueError(f"non-standard JSON token {token}")

    for name in ("support_coverage.json", "indicator_validation.json", "codebook_sweep.json"):
        json.loads((out / name).read_text(), parse_constant=refuse)


def test_analyze_model_confidence_indicators(tmp_path):
    """--sasrec adds MSP / entropy, --generative a beam search's confidence (untrained tiny models suffice)."""
    from genrec.generative import GenerativeConfig, HierarchicalGenerative, save_generative
    from genrec.sasrec import SASRec, SASRecConfig, save_sasrec
    from quantize.semantic_ids import SemanticIdTable

    write_plain(_dataset(), tmp_path / "data")
    save_sasrec(SASRec(6, SASRecConfig(hidden=8, num_blocks=1, num_heads=1, max_len=5)), tmp_path / "sasrec.pt")
    table = SemanticIdTable.from_codes(np.array([[j // 3] for j in range(6)]))
    save_generative(HierarchicalGenerative(table.codes, table.codebook_sizes,
                                           GenerativeConfig(hidden=8, num_blocks=1, num_heads=1, max_len=5)),
                    tmp_path / "gen.pt")
    out = tmp_path / "out"
    assert _run_analyze([str(tmp_path / "data"), "--out", str(out), "--indicator-validation",
                         "--sasrec", str(tmp_path / "sasrec.pt"), "--generative", str(tmp_path / "gen.pt"),
                         "--beam", "3"]) == 0
    names = [r["indicator"] for r in json.loads((out / "indicator_validation.json").read_text())["rows"]]
    assert {"id_msp", "id_entropy", "gr_top1_logp", "gr_margin", "gr_top1_edge"} <= set(names)
    save_sasrec(SASRec(7, SASRecConfig(hidden=8, num_blocks=1, num_heads=1, max_len=5)), tmp_path / "other.pt")
    with pytest.raises(DataFormatError, match="--sasrec .*other.pt: the model has 7 items but the dataset has 6"):
        _run_analyze([str(tmp_path / "data"), "--out", str(out), "--indicator-validation",
                      "--sasrec", str(tmp_path / "other.pt")])


def test_analyze_bad_semantic_id_analysis_inputs(tmp_path):
    write_plain(_dataset(), tmp_path / "data")
    data, out = str(tmp_path / "data"), str(tmp_path / "out")
    np.save(tmp_path / "emb.npy", EMB[:5])
    with pytest.raises(DataFormatError, match=r"emb.npy: expected finite float embeddings \[6, d\]"):
        _run_analyze([data, "--out", out, "--sweep-embeddings", str(tmp_path / "emb.npy")])
    np.save(tmp_path / "emb.npy", EMB)
    with pytest.raises(ConfigError, match="--sweep-method 'kmeans': choose from"):
        _run_analyze([data, "--out", out, "--sweep-embeddings", str(tmp_path / "emb.npy"), "--sweep-method", "kmeans"])
    np.savez(tmp_path / "topk.npz", sasrec=np.zeros((4, 5), dtype=np.int64))
    with pytest.raises(DataFormatError, match=r"topk.npz: no array named 'gr' \(has sasrec\)"):
        _run_analyze([data, "--out", out, "--predictions", f"gr={tmp_path / 'topk.npz'}"])
    topk = ["--predictions", f"sasrec={tmp_path / 'topk.npz'}"]
    with pytest.raises(ConfigError, match="--win-pair sasrec gr: both must be --predictions names"):
        _run_analyze([data, "--out", out, *topk, "--indicator-validation", "--win-pair", "sasrec", "gr"])
    # options that would be silently ignored, out of range or clashing: refused before any output
    for argv, message in [
            (["--win-pair", "sasrec", "gr"], "--win-pair acts only with --indicator-validation"),
            (["--indicator-validation", "--win-pair", "sasrec", "sasrec"], "--win-pair sasrec sasrec: two different"),
            (["--indicator-validation", "--gr-model", "tiger"], "--gr-model tiger: not a --predictions name"),
            (["--beam", "5"], "--beam acts only with --generative"),
            (["--metric", "bogus"], r"--metric 'bogus': the chart plots one of the table's metrics: recall@5, ndcg@5$"),
            (["--token-hop", "2"], "--token-hop acts only with --codes or --sweep-embeddings"),
            (["--token-hop", "5", "--codes", str(tmp_path / "emb.npy")], r"--token-hop must be in \[1, --max-hop 4\]"),
            (["--max-hop", "127"], r"--max-hop must be in \[1, 126\], got 127"),
            (["--sweep-levels", "2"], "--sweep-levels acts only with --sweep-embeddings"),
            ([f"sasrec={tmp_path / 'topk.npz'}"], "the name 'sasrec' is given twice")]:  # after topk's
        with pytest.raises(ConfigError, match=message):
            _run_analyze([data, "--out", out, *topk, *argv])
    with pytest.raises(ConfigError, match="--ks acts only with --predictions"):  # was silently ignored
        _run_analyze([data, "--out", out, "--ks", "100"])
    assert not Path(out).exists()
    assert _run_analyze([data, "--out", out, *topk, "--ks", "5", "5", "--metric", "recall@5"]) == 0
    assert json.loads((Path(out) / "per_category.json").read_text())["ks"] == [5]  # repeated cutoffs once
    assert _run_analyze([data, "--out", out]) == 0  # no predictions now: the earlier tables would mislead
    assert (Path(out) / "label_shares.md").is_file() and not list(Path(out).glob("per_category.*"))
    np.savez(tmp_path / "extra.npz", short=np.ones(3))
    with pytest.raises(DataFormatError, match=r"extra.npz: indicator 'short' must be \[4\] finite numbers"):
        _run_analyze([data, "--out", out, "--indicator-validation", "--indicators", str(tmp_path / "extra.npz")])
