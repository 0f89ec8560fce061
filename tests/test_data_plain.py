"""The plain directory loader, leave-one-out splits, metrics and the real Beauty data."""

from __future__ import annotations

import gzip
import json
import logging
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from genrec.data import DataFormatError, ItemText, SequenceDataset, load_plain, write_plain
from genrec.datasets import load_dataset
from genrec.errors import ConfigError
from genrec.metrics import MISS_RANK, metrics_from_ranks, ranks_from_scores, ranks_from_topk
from genrec.splits import leave_one_out
from genrec.synthetic import make_synthetic

torch.set_num_threads(1)

HEADER = "user_id\titem_id\ttimestamp"
ITEMS = [
    {"item_id": "a", "title": "Alpha", "brand": "B1", "categories": ["Beauty", "Nails"], "price": "$3.50"},
    {"item_id": "b", "title": "Beta", "categories": "Beauty|Hair"},
    {"item_id": "c", "title": "Gamma", "description": "third", "price": 7},
    {"item_id": "d", "title": "Delta"},
]


def write_text(path: Path, text: str) -> Path:
    if path.name.endswith(".gz"):
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def make_dir(root: Path, rows: list[str], items: list[dict] | None = None, gz: bool = False,
             header: str | None = HEADER, items_text: str | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    lines = ([header] if header is not None else []) + rows
    write_text(root / f"interactions.tsv{suffix}", "\n".join(lines) + ("\n" if lines else ""))
    if items_text is None:
        items_text = "\n".join(json.dumps(r) for r in (ITEMS if items is None else items)) + "\n"
    write_text(root / f"items.jsonl{suffix}", items_text)
    return root


ROWS = [
    "u1\ta\t10", "u1\tb\t10", "u1\tc\t5", "u1\td\t20",  # c is out of time order; a,b tie
    "u2\tb\t1", "u2\ta\t1", "u2\tc\t1",  # all tied
]


def item_seq(ds: SequenceDataset, u: int) -> list[str]:
    return [ds.item_ids[i] for i in ds.sequences[u]]


# ----------------------------------------------------------------------------------------------
# loading


@pytest.mark.parametrize("gz", [False, True])
def test_load_plain_keeps_file_order(tmp_path, gz):
    ds = load_plain(make_dir(tmp_path / "d", ROWS, gz=gz))
    assert ds.name == "d"
    assert ds.user_ids == ["u1", "u2"]
    assert item_seq(ds, 0) == ["a", "b", "c", "d"]
    assert item_seq(ds, 1) == ["b", "a", "c"]
    assert ds.timestamps[0].tolist() == [10, 10, 5, 20]
    assert ds.num_interactions == 7
    assert ds.item_ids == ["a", "b", "c", "d"]  # items.jsonl order
    a = ds.items[ds.item_index["a"]]
    assert a.title == "Alpha" and a.brand == "B1" and a.categories == ("Beauty", "Nails") and a.price == 3.5
    assert ds.items[ds.item_index["b"]].categories == ("Beauty", "Hair")
    assert ds.items[ds.item_index["c"]].price == 7.0 and ds.items[ds.item_index["c"]].description == "third"


def test_load_plain_timestamp_order_is_stable(tmp_path):
    ds = load_plain(make_dir(tmp_path / "d", ROWS), order="timestamp")
    assert item_seq(ds, 0) == ["c", "a", "b", "d"]  # a,b tie at 10: file order kept
    assert item_seq(ds, 1) == ["b", "a", "c"]  # all tied: file order kept
    assert ds.timestamps[0].tolist() == [5, 10, 10, 20]


def test_load_plain_out_of_order_warns(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="genrec.data"):
        load_plain(make_dir(tmp_path / "d", ROWS))
    assert "1 user(s) have rows out of timestamp order" in caplog.text


def test_items_without_interactions_left_out_with_log(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="genrec.data"):
        ds = load_plain(make_dir(tmp_path / "d", ["u1\ta\t1", "u1\tc\t2", "u1\ta\t3"]))
    assert ds.item_ids == ["a", "c"]
    assert "2 item(s) with metadata but no interaction" in caplog.text


def test_load_dataset_spec_resolves_directories(tmp_path):
    d = make_dir(tmp_path / "d", ROWS)
    assert load_dataset(str(d)).num_interactions == 7
    assert item_seq(load_dataset(f"plain:{d}", order="timestamp"), 0) == ["c", "a", "b", "d"]


# ----------------------------------------------------------------------------------------------
# bad input: every error names the file and the line or id


def test_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        load_plain(tmp_path / "nope")


def test_missing_interactions_file(tmp_path):
    d = make_dir(tmp_path / "d", ROWS)
    (d / "interactions.tsv").unlink()
    with pytest.raises(FileNotFoundError, match=r"interactions\.tsv or interactions\.tsv\.gz"):
        load_plain(d)


def test_missing_items_file(tmp_path):
    d = make_dir(tmp_path / "d", ROWS)
    (d / "items.jsonl").unlink()
    with pytest.raises(FileNotFoundError, match=r"items\.jsonl"):
        load_plain(d)


def test_missing_header(tmp_path):
    d = make_dir(tmp_path / "d", ROWS, header=None)
    with pytest.raises(DataFormatError, match=r"interactions\.tsv:1: header .* lacks column"):
        load_plain(d)


def test_missing_column(tmp_path):
    d = make_dir(tmp_path / "d", ["u1\ta", "u1\tb"], header="user_id\titem_id")
    with pytest.raises(DataFormatError, match=r"interactions\.tsv:1: .*\['timestamp'\]"):
        load_plain(d)


def test_wrong_field_count(tmp_path):
    d = make_dir(tmp_path / "d", ["u1\ta\t1", "u1\tb\t2\textra"])
    with pytest.raises(DataFormatError, match=r"interactions\.tsv:3: expected 3 tab-separated fields, got 4"):
        load_plain(d)


def test_non_numeric_timestamp(tmp_path):
    d = make_dir(tmp_path / "d", ["u1\ta\t1", "u1\tb\t2", "u1\tc\tyesterday"])
    with pytest.raises(DataFormatError, match=r"interactions\.tsv:4: timestamp 'yesterday' is not a number"):
        load_plain(d)
    d = make_dir(tmp_path / "e", ["u1\ta\t1", "u1\tb\t1_000", "u1\tc\t3"])  # int() would read 1000
    with pytest.raises(DataFormatError, match=r"interactions\.tsv:3: timestamp '1_000' is not a number"):
        load_plain(d)
    for ending in ("\n", "\r\n"):  # hexadecimal: Arrow's cast (the bulk reader) read 0x10 as 16; the row reader refuses
        d = make_dir(tmp_path / f"hex{len(ending)}", ["u1\ta\t0x10", "u1\tb\t0x11"])
        (d / "interactions.tsv").write_bytes((d / "interactions.tsv").read_text().replace("\n", ending).encode())
        with pytest.raises(DataFormatError, match=r"interactions\.tsv:2: timestamp '0x10' is not a number"):
            load_plain(d)
    for digits in ("\u0661\u0662", "\uff13"):  # Arabic-Indic 12, fullwidth 3: int() reads any script's digits
        d = make_dir(tmp_path / f"f{len(digits)}", ["u1\ta\t1", f"u1\tb\t{digits}"])
        with pytest.raises(DataFormatError, match=rf"interactions\.tsv:3: timestamp '{digits}' is not a number"):
            load_plain(d)


def test_interaction_with_unknown_item(tmp_path):
    d = make_dir(tmp_path / "d", ["u1\ta\t1", "u1\tzzz\t2"], gz=True)
    with pytest.raises(DataFormatError, match=r"interactions\.tsv\.gz:3: item 'zzz' has no entry"):
        load_plain(d)


def test_duplicate_item_id(tmp_path):
    d = make_dir(tmp_path / "d", ["u1\ta\t1"], items=ITEMS + [{"item_id": "b", "title": "again"}])
    with pytest.raises(DataFormatError, match=r"items\.jsonl:5: duplicate item_id 'b' \(first at line 2\)"):
        load_plain(d)


def test_malformed_json_line(tmp_path):
    text = json.dumps(ITEMS[0]) + "\n{'item_id': 'b'}\n"
    d = make_dir(tmp_path / "d", ["u1\ta\t1"], items_text=text)
    with pytest.raises(DataFormatError, match=r"items\.jsonl:2: malformed JSON"):
        load_plain(d)


def test_item_without_id(tmp_path):
    d = make_dir(tmp_path / "d", ["u1\ta\t1"], items=[ITEMS[0], {"title": "no id"}])
    with pytest.raises(DataFormatError, match=r"items\.jsonl:2: missing 'item_id'"):
        load_plain(d)


def test_empty_interactions_file(tmp_path):
    d = make_dir(tmp_path / "d", [], header=None)
    with pytest.raises(DataFormatError, match=r"interactions\.tsv: empty file"):
        load_plain(d)


def test_header_only_interactions_file(tmp_path):
    d = make_dir(tmp_path / "d", [])
    with pytest.raises(DataFormatError, match=r"interactions\.tsv: no interactions after the header"):
        load_plain(d)


def test_empty_items_file(tmp_path):
    d = make_dir(tmp_path / "d", ROWS, items_text="")
    with pytest.raises(DataFormatError, match=r"items\.jsonl: empty file"):
        load_plain(d)


def test_unknown_spec_lists_forms():
    with pytest.raises(ValueError, match=r"(?s)unknown dataset spec 'foo'.*synthetic:KEY=VALUE.*amazon2014:CATEGORY"):
        load_dataset("foo")
    with pytest.raises(FileNotFoundError, match="no/such/dir"):
        load_dataset("./no/such/dir")


def many_rows(n: int = 3000) -> list[str]:
    return [f"u{k % 40}\t{'abcd'[k % 4]}\t{k}" for k in range(n)]


@pytest.mark.parametrize("which", ["interactions.tsv.gz", "items.jsonl.gz"])
def test_truncated_gzip_names_file_and_line(tmp_path, which):
    items = [dict(ITEMS[k % 4], item_id=f"x{k}") for k in range(2000)] + ITEMS
    d = make_dir(tmp_path / "d", many_rows(), items=items, gz=True)
    blob = (d / which).read_bytes()
    (d / which).write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DataFormatError) as e:
        load_plain(d)
    msg = str(e.value)
    m = re.fullmatch(rf".*{re.escape(which)}:(\d+): truncated or corrupt gzip file \(the compressed data ends before "
                     r"its end-of-stream marker; (\d+) complete line\(s\) read\); re-download or re-create it", msg)
    assert m, msg
    line, complete = int(m.group(1)), int(m.group(2))
    assert line == complete + 1 and 100 < line < 3000  # the line reached, well inside the file


def test_corrupt_gzip_names_file_and_line(tmp_path):
    d = make_dir(tmp_path / "d", many_rows(), gz=True)
    blob = (d / "interactions.tsv.gz").read_bytes()
    (d / "interactions.tsv.gz").write_bytes(blob[:-8] + b"\0\0\0\0" + blob[-4:])  # wrong CRC in the trailer
    with pytest.raises(DataFormatError, match=r"interactions\.tsv\.gz:3002: corrupt gzip file \(CRC check failed "
                                              r"0x0 != 0x[0-9a-f]+; 3001 complete line\(s\) read\); re-download"):
        load_plain(d)
    (d / "interactions.tsv.gz").write_bytes(b"user_id\titem_id\ttimestamp\n")  # not compressed at all
    with pytest.raises(DataFormatError, match=r"interactions\.tsv\.gz:1: corrupt gzip file \(Not a gzipped file "
                                              r"\(b'us'\); 0 complete line\(s\) read\)"):
        load_plain(d)


@pytest.mark.parametrize("gz", [False, True])
def test_non_utf8_names_file_line_and_offset(tmp_path, gz):
    rows = many_rows(500)
    rows[300] = "u1\tcaf\xe9\t7"  # Latin-1 encoded below: byte 0xe9 is not UTF-8
    d = make_dir(tmp_path / "d", [], gz=gz)
    data = ("\n".join([HEADER] + rows) + "\n").encode("latin-1")
    (d / f"interactions.tsv{'.gz' if gz else ''}").write_bytes(gzip.compress(data) if gz else data)
    offset = data.index(b"\xe9")
    where = "decompressed byte offset" if gz else "byte offset"
    with pytest.raises(DataFormatError) as e:
        load_plain(d)
    assert str(e.value).endswith(f"interactions.tsv{'.gz' if gz else ''}:302: not valid UTF-8 (byte 0xe9 at {where} "
                                 f"{offset}; save the file as UTF-8)")


def test_non_utf8_items_and_gzip_bytes_without_gz_name(tmp_path):
    d = make_dir(tmp_path / "d", ROWS, items_text=json.dumps(ITEMS[0]) + "\n" + '{"item_id": "b"}\n')
    (d / "items.jsonl").write_bytes((d / "items.jsonl").read_bytes() + b'{"item_id": "\xff"}\n')
    with pytest.raises(DataFormatError, match=r"items\.jsonl:3: not valid UTF-8 \(byte 0xff at byte offset \d+; "
                                              r"save the file as UTF-8\)"):
        load_plain(d)
    d = make_dir(tmp_path / "e", ROWS)
    (d / "interactions.tsv").write_bytes(gzip.compress((d / "interactions.tsv").read_bytes()))
    with pytest.raises(DataFormatError, match=r"interactions\.tsv:1: not valid UTF-8 \(byte 0x8b at byte offset 1; "
                                              r"it looks gzip-compressed: name it interactions\.tsv\.gz\)"):
        load_plain(d)


@pytest.mark.parametrize("gz", [False, True])
def test_utf8_bom_is_accepted(tmp_path, gz):
    d = make_dir(tmp_path / "d", ROWS, gz=gz, header="\ufeff" + HEADER,
                 items_text="\ufeff" + "\n".join(json.dumps(r) for r in ITEMS) + "\n")
    ds = load_plain(d)
    assert ds.num_interactions == 7 and ds.item_ids == ["a", "b", "c", "d"]
    assert item_seq(ds, 0) == ["a", "b", "c", "d"]


def test_duplicate_header_column(tmp_path):
    d = make_dir(tmp_path / "d", ["u1\ta\t1\tb"], header="user_id\titem_id\ttimestamp\titem_id")
    with pytest.raises(DataFormatError, match=r"interactions\.tsv:1: header column 'item_id' appears more than once "
                                              r"\(header \['user_id', 'item_id', 'timestamp', 'item_id'\]\)"):
        load_plain(d)


def test_integer_timestamps_stay_exact_and_round_trip(tmp_path):
    rows = ["u1\ta\t1700000000123456790", "u1\tb\t1700000000123456789", "u1\tc\t1700000000123456791",
            "u2\tc\t-5", "u2\td\t9223372036854775807"]
    d = make_dir(tmp_path / "d", rows)
    ds = load_plain(d, order="timestamp")
    assert ds.timestamps[0].dtype == np.int64
    assert item_seq(ds, 0) == ["b", "a", "c"]  # 1 ns apart: float64 would tie them and keep file order
    assert ds.timestamps[0].tolist() == [1700000000123456789, 1700000000123456790, 1700000000123456791]
    write_plain(load_plain(d), tmp_path / "out")
    assert (tmp_path / "out" / "interactions.tsv").read_text().splitlines()[1:] == rows  # written back unchanged
    back = load_plain(tmp_path / "out")
    assert [t.tolist() for t in back.timestamps] == [t.tolist() for t in load_plain(d).timestamps]


def test_decimal_timestamps_still_accepted_as_float(tmp_path):
    ds = load_plain(make_dir(tmp_path / "d", ["u1\ta\t1.5", "u1\tb\t2", "u1\tc\t1e3"]))
    assert ds.timestamps[0].dtype == np.float64 and ds.timestamps[0].tolist() == [1.5, 2.0, 1000.0]
    write_plain(ds, tmp_path / "out")
    assert (tmp_path / "out" / "interactions.tsv").read_text().splitlines()[1:] == ["u1\ta\t1.5", "u1\tb\t2",
                                                                                   "u1\tc\t1000"]


def test_float_timestamps_beyond_2_53_round_trip(tmp_path):
    """1e16 used to be written as 10000000000000000, an integer too large for a float beside 1.5: the
    exported directory could not be loaded back."""
    ds = load_plain(make_dir(tmp_path / "d", ["u1\ta\t1.5", "u1\tb\t1e16", "u1\tc\t2e16"]))
    write_plain(ds, tmp_path / "out")
    back = load_plain(tmp_path / "out")
    assert back.timestamps[0].tolist() == [1.5, 1e16, 2e16] and item_seq(back, 0) == ["a", "b", "c"]


def test_a_null_in_a_categories_list_is_no_category():
    from genrec.item_fields import item_text_from_record

    text = item_text_from_record({"categories": ["Beauty", None, ["Hair", None]]}, "items.jsonl:1")
    assert text.categories == ("Beauty", "Hair")  # was ("Beauty", "None", "Hair"): the word reached the embedding


def test_a_nan_text_field_is_absent_not_the_word_nan():
    """pandas writes a missing title as NaN; it became the title "nan" and reached the embedding."""
    from genrec.item_fields import item_text_from_record

    text = item_text_from_record({"title": float("nan"), "description": ["One.", float("nan"), "Two."],
                                  "categories": ["Beauty", float("nan")]}, "items.jsonl:1")
    assert text.title is None and text.description == "One. Two." and text.categories == ("Beauty",)


def test_a_row_of_empty_fields_is_refused_not_skipped(tmp_path):
    d = make_dir(tmp_path / "d", ["u1\ta\t1", "\t\t", "u1\tb\t2"])
    with pytest.raises(DataFormatError, match=r"interactions\.tsv:3: empty user_id or item_id"):
        load_plain(d)


def test_timestamp_outside_int64(tmp_path):
    d = make_dir(tmp_path / "d", ["u1\ta\t1", "u1\tb\t9223372036854775808"])
    with pytest.raises(DataFormatError, match=r"interactions\.tsv:3: timestamp '9223372036854775808' is outside the "
                                              r"64-bit integer range"):
        load_plain(d)
    d = make_dir(tmp_path / "e", ["u1\ta\tnan"])
    with pytest.raises(DataFormatError, match=r"interactions\.tsv:2: timestamp 'nan' is not finite"):
        load_plain(d)


def test_price_policy_unreadable_prices_become_none_with_one_warning(tmp_path, caplog):
    bad = {"p1": float("nan"), "p2": "$5.99 - $12.99", "p3": "call us", "p4": -2, "p5": float("inf"), "p6": [1],
           "p7": "12,50", "p8": "$1.234,56"}  # decimal commas: they read as 1250 and 1.23456
    good = {"q1": "$1,234.50", "q2": 0, "q3": None, "q4": "", "q5": "None", "q6": "$ 12.5", "q7": ".99"}
    items = [{"item_id": i, "title": i, "price": p} for i, p in {**bad, **good}.items()]
    text = "\n".join(json.dumps(r) for r in items) + "\n"  # json writes NaN / Infinity, which json reads back
    rows = [f"u1\t{r['item_id']}\t{k}" for k, r in enumerate(items)]
    with caplog.at_level(logging.WARNING, logger="genrec.item_fields"):
        ds = load_plain(make_dir(tmp_path / "d", rows, items_text=text))
    assert {i: ds.items[ds.item_index[i]].price for i in [*bad, *good]} == \
           {**{i: None for i in bad}, "q1": 1234.5, "q2": 0.0, "q3": None, "q4": None, "q5": None, "q6": 12.5,
            "q7": 0.99}
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert warnings[0].getMessage().endswith(
        "items.jsonl: 8 item(s) have a price that is not one finite non-negative number; price left missing "
        "(e.g. p1 (nan), p2 ('$5.99 - $12.99'), p3 ('call us'))")


def test_synthetic_spec_values_of_the_wrong_type(caplog):
    with pytest.raises(ConfigError, match=r"^dataset spec 'synthetic:num_users=abc': synthetic parameter num_users "
                                          r"expects int, got 'abc'$"):
        load_dataset("synthetic:num_users=abc")
    with pytest.raises(ConfigError, match=r"synthetic parameter memorization_share expects float, got 'x'"):
        load_dataset("synthetic:memorization_share=x")
    with pytest.raises(ConfigError, match=r"synthetic parameter seq_len expects an integer range such as 5-15, "
                                          r"got '7'"):
        load_dataset("synthetic:seq_len=7")
    with pytest.raises(ConfigError, match=r"synthetic parameter num_users expects int, got '2.5'"):
        load_dataset("synthetic:num_users=2.5")
    with pytest.raises(ConfigError, match=r"^dataset spec 'synthetic:num_user=5,seed=1': unknown synthetic "
                                          r"parameter\(s\) \['num_user'\]; valid: \['heldout_share', .*'num_users', "
                                          r".*'seq_len'"):
        load_dataset("synthetic:num_user=5,seed=1")
    with pytest.raises(ConfigError, match=r"dataset spec 'synthetic:num_users=0': num_users, .* must be >= 1"):
        load_dataset("synthetic:num_users=0")
    with pytest.raises(ConfigError, match=r"expected key=value, got 'seed'"):
        load_dataset("synthetic:seed")
    ds = load_dataset("synthetic:num_users=50,memorization_share=1,seq_len=4-6,seed=2,name=s1")
    ref = make_synthetic(num_users=50, memorization_share=1, seq_len=(4, 6), seed=2, name="s1")
    assert ds.name == "s1" and all(np.array_equal(a, b) for a, b in zip(ds.sequences, ref.sequences))


# ----------------------------------------------------------------------------------------------
# write_plain round trip


def test_write_plain_round_trip(tmp_path):
    ds = load_plain(make_dir(tmp_path / "d", ROWS, gz=True))
    write_plain(ds, tmp_path / "out")
    back = load_plain(tmp_path / "out", name="d")
    assert back.user_ids == ds.user_ids and back.item_ids == ds.item_ids
    for s1, s2, t1, t2 in zip(ds.sequences, back.sequences, ds.timestamps, back.timestamps):
        assert s1.tolist() == s2.tolist() and t1.tolist() == t2.tolist()
    assert [(i.title, i.brand, i.categories, i.description, i.price) for i in back.items] == \
           [(i.title, i.brand, i.categories, i.description, i.price) for i in ds.items]
    assert not list((tmp_path / "out").glob("*.tmp"))


def test_write_plain_refuses_ids_the_format_cannot_hold(tmp_path):
    from dataclasses import replace

    ds = load_plain(make_dir(tmp_path / "d", ROWS, gz=True))
    for bad in ("u\t1", "u\n1", " u1"):
        with pytest.raises(DataFormatError, match="user id .* tab, a line break or surrounding space"):
            write_plain(replace(ds, user_ids=[bad, *ds.user_ids[1:]]), tmp_path / "out")
    assert not (tmp_path / "out" / "interactions.tsv").exists()


@pytest.mark.parametrize("lines, error", [
    (['{"item_id": " a ", "title": "A"}', '{"item_id": "b"}'], None),  # ids stripped, as the interactions' are
    (['{"item_id": "a"}', '{"item_id": "   "}'], r"items.jsonl:2: missing 'item_id'"),
    (['{"item_id": "a"}', '{"item_id": NaN}'], r"items.jsonl:2: 'item_id' must be a string or number, got nan"),
    # one line with two objects and one object over two lines: the same count of values as lines
    (['{"item_id": "a"}, {"item_id": "b", "title": ["x"', '"y"]}'], r"items.jsonl:1: malformed JSON"),
    # the same with every line between braces (the bulk reader's batch parse took it as items a, b, c)
    (['{"item_id":"a"},{"item_id":"b"}', '{"item_id":"c","t":[{}', '{}]}'], r"items.jsonl:1: malformed JSON"),
    # a byte-order mark mid-file (two files concatenated): json read bytes as utf-8-sig in the bulk reader
    (['{"item_id": "a"}', '\ufeff{"item_id": "b"}'], r"items.jsonl:2: malformed JSON"),
])
def test_items_file_ids_and_line_structure(tmp_path, lines, error):
    from genrec.data import read_items_jsonl

    for ending in ("\n", "\r\n"):  # the bulk reader and the line reader agree
        path = tmp_path / "items.jsonl"
        path.write_bytes(ending.join(lines).encode() + ending.encode())
        if error is None:
            assert list(read_items_jsonl(path)) == ["a", "b"]
        else:
            with pytest.raises(DataFormatError, match=error):
                read_items_jsonl(path)


# ----------------------------------------------------------------------------------------------
# leave-one-out


def hand_dataset(seqs: list[list[int]], n_items: int = 10, ts: list[list[float]] | None = None) -> SequenceDataset:
    return SequenceDataset(
        name="hand", item_ids=[f"i{k}" for k in range(n_items)], user_ids=[f"u{k}" for k in range(len(seqs))],
        sequences=[np.array(s, dtype=np.int64) for s in seqs], items=[ItemText(title=f"t{k}") for k in range(n_items)],
        timestamps=[np.array(t, dtype=np.float64) for t in ts] if ts else None)


def test_leave_one_out_hand_built():
    ds = hand_dataset([[1, 2, 3, 4, 5], [6, 7, 8]])
    sp = leave_one_out(ds)
    assert sp.users.tolist() == [0, 1]
    assert [t.tolist() for t in sp.train] == [[1, 2, 3], [6]]
    assert sp.valid.targets.tolist() == [4, 7]
    assert [h.tolist() for h in sp.valid.histories] == [[1, 2, 3], [6]]
    assert sp.test.targets.tolist() == [5, 8]
    assert [h.tolist() for h in sp.test.histories] == [[1, 2, 3, 4], [6, 7]]
    assert [s.tolist() for s in sp.train_with_valid()] == [[1, 2, 3, 4], [6, 7]]
    assert sp.test.last_items().tolist() == [4, 7]
    assert sp.test.padded_histories(3).tolist() == [[2, 3, 4], [-1, 6, 7]]


def test_instances_sample_is_seeded_ordered_and_a_no_op_when_too_big():
    sp = leave_one_out(hand_dataset([[k, k + 1, k + 2] for k in range(7)]))
    a, b = sp.test.sample(4, seed=3), sp.test.sample(4, seed=3)
    assert len(a) == 4 and a.users.tolist() == b.users.tolist() == sorted(a.users.tolist())
    assert all(a.targets[i] == sp.test.targets[u] for i, u in enumerate(a.users))
    assert sp.test.sample(None) is sp.test and sp.test.sample(7) is sp.test


def test_leave_one_out_ties_keep_order(tmp_path):
    # the last two interactions tie in time: the file order decides which is test
    ds = load_plain(make_dir(tmp_path / "d", ["u1\ta\t1", "u1\tc\t2", "u1\td\t3", "u1\tb\t3"]), order="timestamp")
    sp = leave_one_out(ds)
    assert ds.item_ids[sp.test.targets[0]] == "b"
    assert ds.item_ids[sp.valid.targets[0]] == "d"


def test_leave_one_out_truncates_history():
    sp = leave_one_out(hand_dataset([list(range(10))]), max_history=3)
    assert sp.test.histories[0].tolist() == [6, 7, 8]
    assert sp.valid.histories[0].tolist() == [5, 6, 7]
    assert sp.train[0].tolist() == list(range(8))  # training sequences are not truncated


def test_leave_one_out_drops_short_users(caplog):
    ds = hand_dataset([[1, 2], [1, 2, 3], [4]])
    with caplog.at_level(logging.WARNING, logger="genrec.splits"):
        sp = leave_one_out(ds)
    assert sp.users.tolist() == [1]
    assert "dropped 2 user(s) with fewer than 3 interactions" in caplog.text
    with pytest.raises(ValueError, match="no user"):
        leave_one_out(hand_dataset([[1, 2]]))
    with pytest.raises(ValueError):
        leave_one_out(ds, min_interactions=2)


# ----------------------------------------------------------------------------------------------
# metrics


def test_ranks_from_scores_ties_count_against_target():
    scores = np.array([[0.1, 0.9, 0.5, 0.5],
                       [1.0, 1.0, 1.0, 1.0],
                       [0.3, 0.2, 0.1, 0.0]])
    ranks = ranks_from_scores(scores, np.array([2, 0, 0]))
    assert ranks.tolist() == [2, 3, 0]  # row 0: item 1 and the tied item 3 rank ahead


def test_ranks_from_scores_exclude():
    scores = np.array([[0.1, 0.9, 0.5, 0.8], [0.1, 0.9, 0.5, 0.8]])
    ranks = ranks_from_scores(scores, np.array([2, 2]), exclude=[np.array([1, 3]), np.array([2, 1])])
    assert ranks.tolist() == [0, MISS_RANK]  # row 1: the target is excluded -> a miss
    assert ranks_from_scores(torch.tensor(scores), torch.tensor([2, 2])).tolist() == [2, 2]


def test_ranks_from_topk():
    topk = np.array([[5, 3, 1], [2, -1, -1], [7, 8, 9]])
    assert ranks_from_topk(topk, np.array([1, 2, 4])).tolist() == [2, 0, MISS_RANK]
    # a target absent from a 3-item list is a miss at every cutoff, those beyond the list included
    m = metrics_from_ranks(ranks_from_topk(topk, np.array([1, 2, 4])), (2, 3, 10))
    assert m["recall@2"] == pytest.approx(1 / 3) and m["recall@3"] == m["recall@10"] == pytest.approx(2 / 3)


def test_metrics_from_ranks_hand_computed():
    m = metrics_from_ranks(np.array([0, 1, 4, 10]), ks=(1, 5))
    assert m["recall@1"] == pytest.approx(0.25)
    assert m["recall@5"] == pytest.approx(0.75)
    assert m["ndcg@1"] == pytest.approx(0.25)
    assert m["ndcg@5"] == pytest.approx((1 + 1 / math.log2(3) + 1 / math.log2(6)) / 4)
    with pytest.raises(ValueError):
        metrics_from_ranks(np.array([]))


# ----------------------------------------------------------------------------------------------
# the real data


def test_real_beauty(beauty_dir):
    ds = load_plain(beauty_dir)
    assert (ds.num_users, ds.num_items, ds.num_interactions) == (22_363, 12_101, 198_502)
    inter = next(p for p in (beauty_dir / "interactions.tsv.gz", beauty_dir / "interactions.tsv") if p.is_file())
    first_user, rows = None, []
    with (gzip.open(inter, "rt", encoding="utf-8") if inter.suffix == ".gz" else open(inter, encoding="utf-8")) as f:
        next(f)
        for line in f:
            u, i, _ = line.rstrip("\n").split("\t")
            if first_user is None:
                first_user = u
            if u != first_user:
                break
            rows.append(i)
    assert ds.user_ids[0] == first_user
    assert item_seq(ds, 0) == rows
    assert len(rows) >= 5
