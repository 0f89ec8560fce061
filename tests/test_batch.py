"""Batch inference: ``genrec recommend`` and ``genrec.batch`` read every input format, write JSONL and
Parquet with exactly ``Recommender.recommend_batch``'s results, and refuse bad input clearly."""

from __future__ import annotations

import gzip
import json

import pyarrow.parquet as pq
import pytest

from genrec import cli
from genrec.batch import read_histories, recommend_file, write_recommendations
from genrec.errors import DataFormatError
from genrec.recommender import Recommender


@pytest.fixture(scope="module")
def rec(tiny_saved):
    return Recommender.from_pretrained(tiny_saved)


@pytest.fixture(scope="module")
def histories(rec):
    return [[rec.item_ids[i] for i in s] for s in rec.train_sequences[:60]] + [["unknown-item"]]


def _jsonl(path, histories):
    path.write_text("".join(json.dumps({"user_id": f"u{n}", "history": h}) + "\n" for n, h in enumerate(histories)))
    return path


def test_every_input_format_reads_the_same_histories(tmp_path, histories, caplog):
    users = [f"u{n}" for n in range(len(histories))]
    assert read_histories(_jsonl(tmp_path / "h.jsonl", histories)) == (users, histories)
    tsv = "user_id\thistory\n" + "".join(f"{u}\t{' '.join(h)}\n" for u, h in zip(users, histories))
    (tmp_path / "h.tsv").write_text(tsv)
    assert read_histories(tmp_path / "h.tsv") == (users, histories)
    log = "user_id\titem_id\ttimestamp\n" + "".join(f"{u}\t{i}\t{t}\n" for u, h in zip(users, histories)
                                                   for t, i in enumerate(h))
    with gzip.open(tmp_path / "log.tsv.gz", "wt") as f:
        f.write(log)
    assert read_histories(tmp_path / "log.tsv.gz") == (users, histories)
    # a log whose times go back: file order, as a dataset's loader keeps it, and the same warning (it was silent)
    (tmp_path / "late.tsv").write_text("user_id\titem_id\ttimestamp\nu1\ta\t200\nu1\tb\t100\nu2\tc\t5\n")
    with caplog.at_level("WARNING", logger="genrec.data"):
        assert read_histories(tmp_path / "late.tsv") == (["u1", "u2"], [["a", "b"], ["c"]])
    assert "late.tsv: 1 user(s) have rows out of timestamp order; keeping file order" in caplog.text
    assert "sort each user's rows by timestamp" in caplog.text and "order='timestamp'" not in caplog.text
    (tmp_path / "nouser.jsonl").write_text('{"history": ["a"]}\n\n{"history": []}\n')
    assert read_histories(tmp_path / "nouser.jsonl") == (["line:1", "line:3"], [["a"], []])
    (tmp_path / "spaced.jsonl").write_text('{"user_id": " u9 ", "history": [" a", 7]}\n{"user_id": 3, "history": []}\n')
    assert read_histories(tmp_path / "spaced.jsonl") == (["u9", "3"], [["a", "7"], []])  # as the .tsv reader reads ids


@pytest.mark.parametrize("name, content, message", [
    ("bad.jsonl", '{"history": ["a"]}\n{"history": "a b"}\n', r"bad.jsonl:2: 'history' must be a list of item ids"),
    ("bad.jsonl", '{"history": ["a"]}\n{"histroy": ["a"]}\n', r"bad.jsonl:2: unknown key\(s\) \['histroy'\]"),
    ("bad.jsonl", '{"history": ["a"]\n', r"bad.jsonl:1: malformed JSON"),
    ("bad.jsonl", '{"user_id": [1], "history": []}\n', r"bad.jsonl:1: 'user_id' must be a string"),
    ("bad.tsv", "user_id\thistory\nu1\ta b\textra\n", r"bad.tsv:2: expected 2 tab-separated fields, got 3"),
    ("bad.tsv", "user\thistory\n", r"bad.tsv:1: header \['user', 'history'\] needs 'user_id' and 'history'"),
    ("bad.tsv", "user_id\titem\n", r"bad.tsv:1: header .* needs 'user_id' and 'history'"),
    ("bad.csv", "user_id,history\n", r"bad.csv: unknown input format '.csv'"),
    ("bad.jsonl", '{"user_id": "u1", "history": ["a"]}\n\n{"user_id": "u1", "history": ["b"]}\n',
     r"bad.jsonl:3: user_id 'u1' repeats line 1"),
    ("bad.tsv", "user_id\thistory\nu1\ta\nu1 \tb\n", r"bad.tsv:3: user_id 'u1' repeats line 2"),
    ("bad.jsonl", '{"user_id": "  ", "history": ["a"]}\n', r"bad.jsonl:1: empty user_id"),
    ("bad.jsonl", "\n\n", r"bad.jsonl: no histories"),
    ("bad.tsv", "user_id\thistory\n", r"bad.tsv: no histories"),
    # a lone surrogate (JSON's \ud800) could never be written out: refused while reading, not after the work
    ("bad.jsonl", '{"user_id": "u1", "history": ["\\ud800"]}\n', r"bad.jsonl:1: an id is not valid Unicode"),
    ("bad.jsonl", '{"user_id": "u\\udc80", "history": ["a"]}\n', r"bad.jsonl:1: an id is not valid Unicode"),
    ("bad.jsonl", '{"user_id": "u1", "history": ["a", " "]}\n', r"bad.jsonl:1: history item 1 is an empty id"),
    ("bad.tsv", "user_id\thistory\nu1\ta\n\t\n", r"bad.tsv:3: empty user_id"),  # was skipped silently
])
def test_bad_input_files_name_the_file_and_line(tmp_path, name, content, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(DataFormatError, match=message):
        read_histories(tmp_path / name)


def test_jsonl_and_parquet_outputs_hold_recommend_batch_results(rec, histories, tmp_path):
    expected = rec.recommend_batch(histories, k=5, exclude_seen=True)
    src = _jsonl(tmp_path / "h.jsonl", histories)
    s = recommend_file(rec, src, tmp_path / "out.jsonl", k=5, exclude_seen=True, chunk_size=7)
    assert (s.users, s.with_unknown_ids, s.fallbacks) == (len(histories), 1, 1) and s.users_per_second > 0
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["user_id"] for r in rows] == [f"u{n}" for n in range(len(histories))]
    # chunks of 7 pad histories differently from one batch of 61, so scores agree to float32 rounding
    assert [(r["items"], r["unknown_ids"], r["fallback"]) for r in rows] == [
        (e.items, e.unknown_ids, e.fallback) for e in expected]
    for r, e in zip(rows, expected):
        assert r["scores"] == pytest.approx(e.scores, rel=1e-5, abs=1e-5)
        assert r["gate"] == (None if e.gate is None else pytest.approx(e.gate, rel=1e-5, abs=1e-6))
    recommend_file(rec, src, tmp_path / "out.parquet", k=5, exclude_seen=True)
    table = pq.read_table(tmp_path / "out.parquet").to_pylist()
    assert [t["items"] for t in table] == [e.items for e in expected]
    assert [t["gate"] is None for t in table] == [e.gate is None for e in expected]
    assert table[-1]["fallback"] and table[-1]["unknown_ids"] == ["unknown-item"]
    with pytest.raises(DataFormatError, match=r"out.csv: unknown output format"):
        write_recommendations(tmp_path / "out.csv", ["u"], expected[:1])


def test_cli_recommend_end_to_end_and_its_errors(tiny_saved, rec, histories, tmp_path, capsys):
    src = _jsonl(tmp_path / "h.jsonl", histories)
    out = tmp_path / "recs.jsonl"
    assert cli.main(["recommend", str(tiny_saved), "--input", str(src), "--out", str(out), "--k", "3",
                     "--method", "sasrec"]) == 0
    printed = capsys.readouterr().out
    assert f"{len(histories)} users -> {out} (method sasrec, k=3)" in printed and "users/s, peak memory" in printed
    got = [json.loads(line)["items"] for line in out.read_text().splitlines()]
    assert got == [r.items for r in rec.with_method("sasrec").recommend_batch(histories, k=3)]
    for args, message in [
        (["--k", "11"], f"argument --k: 11 exceeds what method '{rec.method_name}' can rank (10, fusion.k)"),
        (["--k", "0"], "argument --k: must be >= 1, got 0"),
        (["--on-unknown", "error"], "user 'u60': unknown item id(s) ['unknown-item']"),
        (["--method", "joint"], "recommend: error: method 'joint' is not available here"),  # not the manifest's
    ]:
        assert cli.main(["recommend", str(tiny_saved), "--input", str(src), "--out", str(out), *args]) == 2
        assert message in capsys.readouterr().err
    assert cli.main(["recommend", str(tmp_path), "--input", str(src), "--out", str(out)]) == 2
    assert "neither a saved recommender" in capsys.readouterr().err
    # the output over the input or over a model file: both were written, exit 0
    before = src.read_bytes()
    assert cli.main(["recommend", str(tiny_saved), "--input", str(src), "--out", str(src)]) == 2
    assert "h.jsonl: is the input file; write the recommendations elsewhere" in capsys.readouterr().err
    assert src.read_bytes() == before
    items = (tiny_saved / "items.jsonl").read_bytes()
    assert cli.main(["recommend", str(tiny_saved), "--input", str(src), "--out", str(tiny_saved / "items.jsonl")]) == 2
    assert "would replace a file of the model directory" in capsys.readouterr().err
    assert (tiny_saved / "items.jsonl").read_bytes() == items


def test_the_default_k_is_never_refused_where_the_method_ranks_fewer_than_ten(tiny_saved, histories, tmp_path,
                                                                             capsys):
    """A model saved with fusion.k 5: `genrec recommend` without --k used to stop with "argument --k: 10
    exceeds what method ... can rank (5, fusion.k)"; the default is now min(10, max_k), as the service's."""
    import shutil

    small = tmp_path / "model"
    shutil.copytree(tiny_saved, small)
    manifest = json.loads((small / "recommender.json").read_text())
    manifest["settings"]["k"] = 5
    (small / "recommender.json").write_text(json.dumps(manifest))
    src = _jsonl(tmp_path / "h.jsonl", histories[:4])
    out = tmp_path / "recs.jsonl"
    assert cli.main(["recommend", str(small), "--input", str(src), "--out", str(out)]) == 0, capsys.readouterr().err
    assert "k=5)" in capsys.readouterr().out
    assert [len(json.loads(line)["items"]) for line in out.read_text().splitlines()] == [5] * 4
    assert cli.main(["recommend", str(small), "--input", str(src), "--out", str(out), "--k", "6"]) == 2
    assert "argument --k: 6 exceeds what method" in capsys.readouterr().err


def test_an_unsupported_output_is_refused_before_any_model_work(rec, histories, tmp_path, monkeypatch):
    src = _jsonl(tmp_path / "h.jsonl", histories)
    with pytest.raises(DataFormatError, match="recs.jsonl.gz: unknown output format"):
        recommend_file(rec, src, tmp_path / "recs.jsonl.gz")
    assert not (tmp_path / "recs.jsonl.gz").exists()
    one = rec.with_method(rec.method_name)
    monkeypatch.setattr(one, "recommend_batch", lambda *a, **k: pytest.fail("model work before the output check"))
    (tmp_path / "taken.jsonl").mkdir()
    with pytest.raises(DataFormatError, match="taken.jsonl: is a directory"):
        recommend_file(one, src, tmp_path / "taken.jsonl")
    (tmp_path / "file").write_text("")
    with pytest.raises(DataFormatError, match=r"recs.jsonl: cannot write there"):
        recommend_file(one, src, tmp_path / "file" / "recs.jsonl")  # its folder is a file


def test_an_input_that_is_no_regular_file_is_named_as_such(tmp_path):
    """A pipe (``--input /dev/stdin``) or a directory was reported as missing."""
    import os

    with pytest.raises(DataFormatError, match=r"missing.jsonl: no such input file"):
        read_histories(tmp_path / "missing.jsonl")
    (tmp_path / "dir.jsonl").mkdir()
    os.mkfifo(tmp_path / "pipe.jsonl")
    for name in ("dir.jsonl", "pipe.jsonl"):
        with pytest.raises(DataFormatError, match=f"{name}: not a regular file; write the histories to a"):
            read_histories(tmp_path / name)


def test_the_output_may_not_replace_a_file_of_the_model_directory(tmp_path):
    """In a saved recommender every file is the model's; in a run directory its stages' files and the recipe's
    own are, while a new file at its top level is the user's."""
    from genrec.commands.recommend import _overwrites_model

    saved, run = tmp_path / "saved", tmp_path / "run"
    saved.mkdir()
    (saved / "recommender.json").write_text("{}")
    run.mkdir()
    assert _overwrites_model(saved / "recs.jsonl", saved) and _overwrites_model(saved / "items.jsonl", saved)
    assert _overwrites_model(run / "fusion" / "topk.jsonl", run) and _overwrites_model(run / "results.json", run)
    assert not _overwrites_model(run / "recs.jsonl", run) and not _overwrites_model(tmp_path / "recs.jsonl", run)
    assert not _overwrites_model(run / "exports" / "recs.jsonl", run)  # a folder the user made
    assert _overwrites_model(run / "plots" / "x.jsonl", run) and not _overwrites_model(saved, saved)
