"""Per-category metrics, JSONL export, tables, chart and the ``genrec analyze`` subcommand."""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
import pytest

from genrec.analysis import (category_masks, evaluate_by_category, evaluate_topk_by_category, export_labels_jsonl,
                             label_records, markdown_table, plot_categories, shares_markdown,
                             token_memorization_markdown, token_memorization_summary)
from genrec.data import ItemText, SequenceDataset, write_plain
from genrec.errors import ConfigError, DataFormatError
from genrec.memorization import InstanceLabels, Kind, TokenMemorization
from genrec.splits import Instances


def make_labels() -> InstanceLabels:
    """Four instances: memorization, symmetry@1, symmetry@1, uncategorized (multi-label on the first)."""
    kind = np.array([Kind.MEMORIZATION, Kind.SYMMETRY, Kind.SYMMETRY, Kind.UNCATEGORIZED], dtype=np.int8)
    hop = np.array([0, 1, 1, -1], dtype=np.int8)
    kind_hops = np.full((4, 5), -1, dtype=np.int8)
    kind_hops[0, [0, 1, 3]] = [0, 2, 1]
    kind_hops[1, 2] = 1
    kind_hops[2, [2, 4]] = [1, 3]
    return InstanceLabels(kind=kind, hop=hop, kind_hops=kind_hops)


RANKS = np.array([0, 1, 20, 3])


def test_category_masks():
    masks = category_masks(make_labels())
    assert list(masks)[:4] == ["all", "memorization", "generalization", "substitutability"]
    assert list(masks)[-1] == "uncategorized"
    assert masks["generalization"].tolist() == [False, True, True, False]
    assert masks["symmetry@1"].tolist() == [False, True, True, False]
    assert masks["symmetry@2"].sum() == 0
    assert "symmetry@1" not in category_masks(make_labels(), hops=False)


def test_per_category_metrics_hand_computed():
    res = evaluate_by_category(RANKS, make_labels(), ks=(5, 2))
    g = lambda r: 1 / math.log2(r + 2)  # noqa: E731
    assert res["all"]["count"] == 4
    assert res["all"]["recall@5"] == pytest.approx(3 / 4)
    assert res["all"]["ndcg@5"] == pytest.approx((g(0) + g(1) + g(3)) / 4)
    assert res["all"]["recall@2"] == pytest.approx(2 / 4)
    assert res["memorization"] == pytest.approx({"count": 1, "recall@5": 1.0, "ndcg@5": 1.0, "recall@2": 1.0,
                                                 "ndcg@2": 1.0})
    assert res["generalization"]["count"] == 2
    assert res["generalization"]["recall@5"] == pytest.approx(1 / 2)
    assert res["generalization"]["ndcg@5"] == pytest.approx(g(1) / 2)
    assert res["symmetry"] == res["symmetry@1"] == res["generalization"]
    assert res["uncategorized"]["ndcg@5"] == pytest.approx(g(3)) and res["uncategorized"]["recall@2"] == 0.0
    assert res["transitivity"]["count"] == 0 and math.isnan(res["transitivity"]["ndcg@5"])


def test_topk_metrics_match_ranks():
    targets = np.array([5, 6, 7, 8])
    topk = np.array([[5, 1, 2, 3, 4],
                     [1, 6, 2, 3, 4],
                     [1, 2, 3, 4, 9],   # miss
                     [1, 2, 3, 8, 4]])
    res = evaluate_topk_by_category(topk, targets, make_labels(), ks=(5, 2))
    assert res == evaluate_by_category(np.array([0, 1, 5, 3]), make_labels(), ks=(5, 2))
    assert res["all"]["recall@5"] == pytest.approx(3 / 4)
    with pytest.raises(ValueError):
        evaluate_topk_by_category(topk, targets, make_labels(), ks=(10,))
    with pytest.raises(ValueError):
        evaluate_by_category(RANKS[:3], make_labels())


def test_jsonl_export_roundtrip(tmp_path):
    labels = make_labels()
    inst = Instances(users=np.array([0, 1, 2, 3]), histories=[np.array([1])] * 4, targets=np.array([5, 6, 7, 8]))
    ds = SequenceDataset(name="d", item_ids=[f"it{j}" for j in range(10)], user_ids=[f"us{k}" for k in range(4)],
                         sequences=[np.array([0, 1, 2])] * 4, items=[ItemText()] * 10)
    token = TokenMemorization(hops=np.array([[1, 1], [1, -1], [-1, -1], [2, -1]], dtype=np.int8))
    path = export_labels_jsonl(tmp_path / "labels.jsonl", labels, inst, split="test", dataset=ds, token=token)
    recs = [json.loads(line) for line in path.read_text().splitlines()]
    assert recs == label_records(labels, inst, split="test", dataset=ds, token=token)
    assert len(recs) == 4
    r0 = recs[0]
    assert (r0["label"], r0["group"], r0["kind"], r0["hop"]) == ("memorization", "memorization", "memorization", 0)
    assert r0["user"] == "us0" and r0["target"] == "it5" and r0["target_index"] == 5
    assert r0["holds"] == {"memorization": True, "substitutability": True, "symmetry": False, "transitivity": True,
                           "second_order_symmetry": False}
    assert r0["hops"] == {"memorization": 0, "substitutability": 2, "symmetry": None, "transitivity": 1,
                          "second_order_symmetry": None}
    assert r0["prefix_hops"] == [1, 1] and recs[2]["prefix_hops"] == [None, None]
    assert recs[2]["label"] == "symmetry@1" and recs[2]["hops"]["second_order_symmetry"] == 3
    assert recs[3]["label"] == "uncategorized" and recs[3]["hop"] == -1 and recs[3]["group"] == "uncategorized"
    assert not list(tmp_path.glob(".*.tmp"))  # atomic write left no temp file


def test_markdown_table_and_chart(tmp_path):
    labels = make_labels()
    results = {"A": evaluate_by_category(RANKS, labels, ks=(5,)),
               "B": evaluate_by_category(np.array([9, 0, 0, 9]), labels, ks=(5,))}
    md = markdown_table(results, metrics=("recall@5", "ndcg@5"))
    lines = md.strip().splitlines()
    assert lines[0] == "| category | n | A R@5 | A N@5 | B R@5 | B N@5 |"
    assert "| memorization | 1 | 1.0000 | 1.0000 | 0.0000 | 0.0000 |" in lines
    assert "| generalization | 2 | 0.5000 | 0.3155 | 1.0000 | 1.0000 |" in lines
    assert not any(line.startswith("| transitivity ") for line in lines)  # empty categories left out
    md2 = markdown_table(results, metrics=("ndcg@5",), categories=["all", "transitivity"])
    assert "| transitivity | 0 | - | - |" in md2
    png = plot_categories(results, tmp_path / "chart.png", metric="ndcg@5")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_chart_leaves_out_empty_categories_and_refuses_unknown_metrics(tmp_path, monkeypatch):
    """A bar of 0 for a category with no instance would read as a model scoring 0 there."""
    from matplotlib.axes import Axes

    drawn = []
    monkeypatch.setattr(Axes, "set_xticklabels", lambda self, labels, **kw: drawn.extend(labels))
    results = {"A": evaluate_by_category(RANKS, make_labels(), ks=(5,))}
    plot_categories(results, tmp_path / "chart.png", metric="ndcg@5",
                    categories=["memorization", "transitivity", "generalization"])
    assert [label.split("\n")[0] for label in drawn] == ["memorization", "generalization"]
    with pytest.raises(ValueError, match="no result holds the metric 'NDCG@5'"):
        plot_categories(results, tmp_path / "chart.png", metric="NDCG@5")


def test_shares_markdown():
    md = shares_markdown({"valid": make_labels(), "test": make_labels()})
    assert "| label | valid n | valid share | test n | test share |" in md
    assert "| memorization | 1 | 25.00% | 1 | 25.00% |" in md
    assert "| symmetry@1 | 2 | 50.00% | 2 | 50.00% |" in md
    assert "| total | 4 | 100.00% | 4 | 100.00% |" in md


def test_token_summary_hand_computed():
    labels = make_labels()  # generalization instances: 1 and 2
    token = TokenMemorization(hops=np.array([[1, 1], [1, -1], [-1, -1], [1, 1]], dtype=np.int8))
    rows = token_memorization_summary(token, labels, {"M": RANKS}, k=5)
    assert rows[0]["n"] == 1 and rows[0]["generalization"] == 2 and rows[0]["prefix_memorized"] == 1
    assert rows[0]["share"] == pytest.approx(0.5)
    assert rows[0]["M recall@5 memorized"] == 1.0 and rows[0]["M recall@5 other"] == 0.0
    assert rows[0]["M ndcg@5 memorized"] == pytest.approx(1 / math.log2(3))
    assert rows[1]["prefix_memorized"] == 0 and math.isnan(rows[1]["M recall@5 memorized"])
    md = token_memorization_markdown(rows)
    assert "| 1 | 2 | 1 | 50.00% |" in md


# ----------------------------------------------------------------------------------------------
# CLI


def test_analyze_registered():
    from genrec.cli import SUBCOMMANDS

    assert SUBCOMMANDS["analyze"][0] == "genrec.commands.analyze"


def _tiny_plain(tmp_path):
    seqs = [[1, 2, 3, 4], [2, 3, 5, 6], [1, 5, 3, 2], [4, 0, 1, 2, 6], [3, 2, 1, 0]]
    ds = SequenceDataset(name="tiny", item_ids=[f"item{j}" for j in range(7)],
                         user_ids=[f"user{k}" for k in range(len(seqs))],
                         sequences=[np.array(s) for s in seqs], items=[ItemText(title=f"t{j}") for j in range(7)])
    write_plain(ds, tmp_path / "data")
    return ds


def _run_analyze(argv):
    from genrec.commands import analyze

    p = argparse.ArgumentParser()
    analyze.add_arguments(p)
    return analyze.run(p.parse_args(argv))


def test_analyze_command(tmp_path, capsys):
    ds = _tiny_plain(tmp_path)
    codes = np.array([[j % 2, j % 3] for j in range(7)])
    np.save(tmp_path / "codes.npy", codes)
    rng = np.random.default_rng(0)
    np.save(tmp_path / "a.npy", np.stack([rng.permutation(7)[:5] for _ in range(5)]))
    np.save(tmp_path / "b.npy", np.tile(np.arange(5), (5, 1)))
    out = tmp_path / "out"
    rc = _run_analyze([str(tmp_path / "data"), "--out", str(out), "--codes", str(tmp_path / "codes.npy"),
                       "--predictions", f"A={tmp_path / 'a.npy'}", f"B={tmp_path / 'b.npy'}"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "| label | valid n | valid share | test n | test share |" in printed
    assert "n-gram prefix" in printed and "A R@5" in printed
    for name in ("label_shares.md", "label_shares.json", "labels_valid.jsonl", "labels_test.jsonl",
                 "token_memorization.md", "token_memorization.json", "per_category.md", "per_category.json",
                 "per_category.png"):
        assert (out / name).is_file(), name
    recs = [json.loads(x) for x in (out / "labels_test.jsonl").read_text().splitlines()]
    assert len(recs) == ds.num_users and len(recs[0]["prefix_hops"]) == 2
    assert recs[0]["user"] == "user0" and recs[0]["target"] == "item4"
    per_cat = json.loads((out / "per_category.json").read_text())
    assert per_cat["ks"] == [5] and per_cat["results"]["A"]["all"]["count"] == 5
    # strict JSON, as results.json: an empty category's metrics are null (they were the NaN token)
    def refuse(token):
        raise ValueError(f"non-standard JSON token {token}")

    for name in ("per_category.json", "token_memorization.json"):
        json.loads((out / name).read_text(), parse_constant=refuse)
    empty = [c for c, row in per_cat["results"]["A"].items() if row["count"] == 0]
    assert empty and all(per_cat["results"]["A"][c]["recall@5"] is None for c in empty)


def test_analyze_labels_only_and_bad_predictions(tmp_path, capsys):
    _tiny_plain(tmp_path)
    out = tmp_path / "out"
    assert _run_analyze([str(tmp_path / "data"), "--out", str(out)]) == 0
    assert (out / "labels_valid.jsonl").is_file() and not (out / "per_category.md").exists()
    np.save(tmp_path / "bad.npy", np.zeros((3, 5), dtype=np.int64))  # wrong number of rows
    with pytest.raises(DataFormatError, match=r"bad.npy: expected integer top-K item indices \[5, K\], "
                                              r"got int64 \(3, 5\)"):
        _run_analyze([str(tmp_path / "data"), "--out", str(out), "--predictions", f"X={tmp_path / 'bad.npy'}"])
    with pytest.raises(ConfigError, match="--predictions expects NAME=FILE, got 'nameless.npy'"):
        _run_analyze([str(tmp_path / "data"), "--out", str(out), "--predictions", "nameless.npy"])
    np.save(tmp_path / "ok.npy", np.zeros((5, 5), dtype=np.int64))
    with pytest.raises(ConfigError, match="--ks 10: cutoffs must be >= 1 and at most the ranked-list length 5"):
        _run_analyze([str(tmp_path / "data"), "--out", str(out), "--predictions", f"X={tmp_path / 'ok.npy'}",
                      "--ks", "5", "10"])


def test_load_codes_formats(tmp_path):
    from genrec.commands.analyze import load_codes

    ds = _tiny_plain(tmp_path)
    codes = np.array([[j, j % 2] for j in range(7)])
    np.savez(tmp_path / "c.npz", codes=codes)
    assert (load_codes(tmp_path / "c.npz", ds) == codes).all()
    (tmp_path / "plain.tsv").write_text("\n".join(f"{a}\t{b}" for a, b in codes) + "\n")
    assert (load_codes(tmp_path / "plain.tsv", ds) == codes).all()
    keyed = ["item_id\tc0\tc1"] + [f"item{j}\t{a}\t{b}" for j, (a, b) in reversed(list(enumerate(codes)))]
    (tmp_path / "keyed.tsv").write_text("\n".join(keyed) + "\n")
    assert (load_codes(tmp_path / "keyed.tsv", ds) == codes).all()
    (tmp_path / "twice.tsv").write_text("\n".join(keyed + ["item0\t9\t9"]) + "\n")  # the later row silently won
    with pytest.raises(DataFormatError, match=rf"twice.tsv:{len(keyed) + 1}: item_id 'item0' repeated \(first at line "
                                              rf"{len(keyed)}\)"):
        load_codes(tmp_path / "twice.tsv", ds)
    (tmp_path / "sid").mkdir()
    np.save(tmp_path / "sid" / "codes.npy", codes)
    assert (load_codes(tmp_path / "sid", ds) == codes).all()
    np.save(tmp_path / "short.npy", codes[:3])
    with pytest.raises(ValueError, match="3 code rows for 7 items"):
        load_codes(tmp_path / "short.npy", ds)
    with pytest.raises(DataFormatError, match="short.npy: 3 code rows for 7 items"):
        load_codes(tmp_path / "short.npy", ds)
    (tmp_path / "letters.tsv").write_text("1\t2\n3\tx\n")
    with pytest.raises(DataFormatError, match=r"letters.tsv:2: code 'x' is not an integer"):
        load_codes(tmp_path / "letters.tsv", ds)
    with pytest.raises(DataFormatError, match="nowhere.npy: semantic-ID table not found"):
        load_codes(tmp_path / "nowhere.npy", ds)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataFormatError, match="empty: no semantic-ID table found"):
        load_codes(tmp_path / "empty", ds)


def test_load_codes_reads_semantic_id_tables(tmp_path):
    """``genrec quantize``'s output (a SemanticIdTable directory or its semantic_ids.json), rows
    matched to the dataset by item id, disambiguation level kept."""
    from genrec.commands.analyze import load_codes
    from quantize.semantic_ids import SemanticIdTable

    ds = _tiny_plain(tmp_path)
    codes = np.array([[j % 2, j % 3, j // 6] for j in range(7)])  # items 0 and 6 collide but for the last level
    order = np.array([3, 0, 6, 1, 5, 2, 4])  # the table lists the items in another order
    table = SemanticIdTable(codes[order], [2, 3, 2], item_ids=[ds.item_ids[j] for j in order])
    table.save(tmp_path / "quantize" / "semantic_ids.json")
    assert (load_codes(tmp_path / "quantize", ds) == codes).all()
    assert (load_codes(tmp_path / "quantize" / "semantic_ids.json", ds) == codes).all()
    SemanticIdTable(codes, [2, 3, 2]).save(tmp_path / "no_ids.json")  # no ids: rows in item order
    assert (load_codes(tmp_path / "no_ids.json", ds) == codes).all()
    other = SemanticIdTable(codes[:6], [2, 3, 2], item_ids=[f"other{j}" for j in range(6)])
    other.save(tmp_path / "other.json")
    with pytest.raises(DataFormatError, match="other.json: 7 of the dataset's 7 items have no semantic ID in this "
                                              "table, e.g. 'item0'"):
        load_codes(tmp_path / "other.json", ds)
    (tmp_path / "broken.json").write_text('{"format": "something else"}')
    with pytest.raises(DataFormatError, match="broken.json: not a genrec semantic-ID table"):
        load_codes(tmp_path / "broken.json", ds)


def test_analyze_accepts_quantize_output_and_dataset_specs(tmp_path, capsys):
    """``genrec analyze SPEC --codes QUANTIZE_DIR`` through the CLI: a synthetic spec with keyword
    arguments, and the semantic-ID directory written by SemanticIdTable.save."""
    from genrec.cli import main
    from genrec.datasets import load_dataset
    from quantize.semantic_ids import SemanticIdTable

    spec = "synthetic:num_users=60,seed=1"
    ds = load_dataset(spec)
    j = np.arange(ds.num_items)
    codes = np.stack([j % 4, j % 5, j // 20], 1)
    SemanticIdTable(codes, [4, 5, int(codes[:, 2].max()) + 1], item_ids=ds.item_ids).save(
        tmp_path / "sid" / "semantic_ids.json")
    out = tmp_path / "out"
    assert main(["analyze", spec, "--out", str(out), "--codes", str(tmp_path / "sid")]) == 0
    printed = capsys.readouterr().out
    assert "n-gram prefix" in printed
    recs = [json.loads(x) for x in (out / "labels_test.jsonl").read_text().splitlines()]
    assert len(recs) == ds.num_users and len(recs[0]["prefix_hops"]) == 3
    assert main(["analyze", "synthetic:num_users=50", "--out", str(tmp_path / "out2"), "--max-hop", "2"]) == 0
    assert "label shares" in capsys.readouterr().out
    # --order re-sorts plain directories only
    assert main(["analyze", spec, "--out", str(out), "--order", "timestamp"]) == 2
    assert ("genrec analyze: error: --order timestamp applies to plain-format directories only, "
            f"not '{spec}'") in capsys.readouterr().err
