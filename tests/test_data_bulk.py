"""The vectorised loading path (genrec.data.build_dataset_columns and the bulk readers of the plain,
RecBole and Parquet formats) against a straightforward reference: per-user lists in a dict, sorted with
Python's stable sort (genrec.data.order_events) and built item by item (genrec.data.build_dataset), on
random rows with interleaved users, tied timestamps, duplicate rows and whitespace around ids."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from genrec.columns import InteractionColumns, factorize_ids, parse_time_strings
from genrec.data import (ItemText, SequenceDataset, build_dataset, build_dataset_columns, load_plain, order_events,
                         read_interaction_columns)
from genrec.errors import DataFormatError
from genrec.parquet_data import load_parquet
from genrec.recbole import load_recbole


def _rows(seed: int, n: int = 400, float_times: bool = False) -> list[tuple[str, str, int | float]]:
    """Random rows: users interleaved, few distinct timestamps (many ties), some rows repeated."""
    rng = np.random.default_rng(seed)
    users = [f"u{k}" for k in rng.integers(0, 30, size=n)]
    items = [f"i{k}" for k in rng.integers(0, 50, size=n)]
    times: list[int | float] = [int(t) for t in rng.integers(0, 8, size=n)]
    if float_times:
        times = [t + 0.5 if k % 3 == 0 else t for k, t in enumerate(times)]  # decimals mixed with integers
    rows = list(zip(users, items, times))
    for k in rng.integers(0, n, size=n // 10):  # exact duplicate rows: both kept, as every loader does
        rows.insert(int(rng.integers(0, len(rows))), rows[int(k)])
    return rows


def _reference(rows, item_ids: list[str], order: str, keep_unused: bool = False) -> SequenceDataset:
    events: dict[str, list[tuple[str, int | float]]] = {}
    for u, i, t in rows:
        events.setdefault(u.strip(), []).append((i.strip(), t))
    order_events(events, order, "reference")
    return build_dataset("ref", events, {i: ItemText(title=i) for i in item_ids}, keep_unused=keep_unused)


def _same(ds: SequenceDataset, ref: SequenceDataset) -> None:
    assert ds.user_ids == ref.user_ids and ds.item_ids == ref.item_ids
    assert [it.title for it in ds.items] == [it.title for it in ref.items]
    assert len(ds.sequences) == len(ref.sequences)
    for a, b, ta, tb in zip(ds.sequences, ref.sequences, ds.timestamps, ref.timestamps):
        assert a.dtype == b.dtype == np.int64 and np.array_equal(a, b)
        assert ta.dtype == tb.dtype and np.array_equal(ta, tb)


def _catalogue(rows, extra: int = 5) -> list[str]:
    """Every interacted item plus a few without interactions, in a shuffled order."""
    ids = sorted({i.strip() for _, i, _ in rows}) + [f"x{k}" for k in range(extra)]
    return [ids[k] for k in np.random.default_rng(7).permutation(len(ids))]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("order", ["timestamp", "file"])
@pytest.mark.parametrize("keep_unused", [False, True])
@pytest.mark.parametrize("layout", ["random", "by-time", "by-user"])
def test_columns_equal_reference(seed, order, keep_unused, layout):
    rows = _rows(seed, float_times=seed == 2)
    if layout != "random":  # rows sorted (stably) by time, users interleaved; or grouped by user
        rows = sorted(rows, key=lambda r: r[2] if layout == "by-time" else int(r[0][1:]))
    catalogue = _catalogue(rows)
    user_ids, users = factorize_ids(pa.array([u for u, _, _ in rows]))
    item_ids, items = factorize_ids(pa.array([i for _, i, _ in rows]))
    times = np.array([t for _, _, t in rows], dtype=np.float64 if seed == 2 else np.int64)
    columns = InteractionColumns(user_ids=user_ids, users=users, item_ids=item_ids, items=items, times=times)
    ds = build_dataset_columns("cols", columns, {i: ItemText(title=i) for i in catalogue}, order=order,
                               keep_unused=keep_unused)
    _same(ds, _reference(rows, catalogue, order, keep_unused))


def test_factorize_ids_strips_and_merges_in_first_appearance_order():
    ids, codes = factorize_ids(pa.chunked_array([["b", " a", "b "], ["a", "c"]]))
    assert ids == ["b", "a", "c"] and codes.tolist() == [0, 1, 0, 1, 2]
    ids, codes = factorize_ids(pa.array([30, 4, 30]))
    assert ids == ["30", "4"] and codes.tolist() == [0, 1, 0]
    ids, codes = factorize_ids(pa.array(["x", "y", "x"]).dictionary_encode())
    assert ids == ["x", "y"] and codes.tolist() == [0, 1, 0]
    ids, codes = factorize_ids(pa.array(["x", None, " ", "x"]))  # null and blank: "" for the caller
    assert ids == ["x", ""] and codes.tolist() == [0, 1, 1, 0]
    ids, codes = factorize_ids(pa.array([5, None]))
    assert ids == ["5", ""] and codes.tolist() == [0, 1]


def test_parse_time_strings_declines_what_it_cannot_read_exactly():
    assert parse_time_strings(pa.array([" 5", "-3 ", "1700000000000000000"])).tolist() == [5, -3, 1700000000000000000]
    t = parse_time_strings(pa.array(["1.5", "2", "1e3"]))
    assert t.dtype == np.float64 and t.tolist() == [1.5, 2.0, 1000.0]
    assert parse_time_strings(pa.array(["+3", "1.5"])).tolist() == [3.0, 1.5]
    for bad in (["1", "x"], ["1", "nan"], ["1.5", "99999999999999999"], ["1", "1_000"], ["1", ""], ["1", "+3"],
                ["1", "9223372036854775808"]):
        assert parse_time_strings(pa.array(bad)) is None, bad


def _write_plain(directory: Path, rows, catalogue, newline: str = "\n", blank_lines: bool = False) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    lines = ["user_id\titem_id\ttimestamp"]
    for k, (u, i, t) in enumerate(rows):
        lines.append(f"{u}\t{i}\t{t}")
        if blank_lines and k % 50 == 0:
            lines.append("   ")
    (directory / "interactions.tsv").write_bytes((newline.join(lines) + newline).encode())
    (directory / "items.jsonl").write_text("".join(f'{{"item_id": "{i}", "title": "{i}"}}\n' for i in catalogue))
    return directory


def _padded(rows):
    """Some ids with spaces around them (the loaders strip them)."""
    return [(f" {u}" if k % 7 == 0 else u, f"{i} " if k % 5 == 0 else i, t) for k, (u, i, t) in enumerate(rows)]


@pytest.mark.parametrize("seed", [0, 2])
@pytest.mark.parametrize("order", ["timestamp", "file"])
def test_plain_bulk_and_line_readers_equal_reference(tmp_path, seed, order):
    rows = _padded(_rows(seed, float_times=seed == 2))
    catalogue = _catalogue(rows)
    ref = _reference(rows, catalogue, order)
    # "\n": the bulk reader; "\r\n" and blank lines of spaces: the line reader
    for kind, newline, blank in (("bulk", "\n", False), ("crlf", "\r\n", False), ("blank", "\n", True)):
        d = _write_plain(tmp_path / f"{kind}-{order}", rows, catalogue, newline, blank)
        assert (read_interaction_columns(d / "interactions.tsv") is None) == (kind != "bulk")
        _same(load_plain(d, order=order), ref)


def test_plain_out_of_order_warning_counts_users(tmp_path, caplog):
    rows = _rows(3)
    catalogue = _catalogue(rows)
    events: dict[str, list] = {}
    for u, i, t in rows:
        events.setdefault(u, []).append(t)
    expected = sum(any(a > b for a, b in zip(ts, ts[1:])) for ts in events.values())
    with caplog.at_level(logging.WARNING, logger="genrec.data"):
        load_plain(_write_plain(tmp_path / "d", rows, catalogue))
    assert f"{expected} user(s) have rows out of timestamp order" in caplog.text


@pytest.mark.parametrize("order", ["timestamp", "file"])
@pytest.mark.parametrize("timed", [True, False])
def test_recbole_bulk_equals_reference(tmp_path, order, timed):
    rows = _padded(_rows(4))
    catalogue = _catalogue(rows)
    d = tmp_path / "rb"
    d.mkdir()
    head = "user_id:token\titem_id:token\trating:float" + ("\ttimestamp:float" if timed else "")
    body = "".join(f"{u}\t{i}\t3.0" + (f"\t{t}" if timed else "") + "\n" for u, i, t in rows)
    (d / "rb.inter").write_text(head + "\n" + body)
    (d / "rb.item").write_text("item_id:token\ttitle:token_seq\n" + "".join(f"{i}\t{i}\n" for i in catalogue))
    ds = load_recbole(d, order=order if timed or order == "file" else None)  # asked for, a time field must be there
    ref_rows = rows if timed else [(u, i, k) for k, (u, i, _) in enumerate(rows)]
    _same(ds, _reference(ref_rows, catalogue, order if timed else "file"))


def test_recbole_missing_items_error_names_first_line(tmp_path):
    d = tmp_path / "rb"
    d.mkdir()
    (d / "rb.inter").write_text("user_id:token\titem_id:token\ttimestamp:float\nu1\ta\t1\nu1\tzz\t2\nu2\tyy\t3\n")
    (d / "rb.item").write_text("item_id:token\ttitle:token_seq\na\tA\n")
    with pytest.raises(DataFormatError, match=r"rb.inter:3: 2 interacted item\(s\) have no entry in rb.item, "
                                              r"e.g. \['zz', 'yy'\]"):
        load_recbole(d)
    ds = load_recbole(d, missing_items="empty")
    assert ds.item_ids == ["a", "zz", "yy"] and ds.items[1] == ItemText()


@pytest.mark.parametrize("order", ["timestamp", "file"])
@pytest.mark.parametrize("integer_ids", [False, True])
def test_parquet_bulk_equals_reference(tmp_path, order, integer_ids):
    rows = _rows(5, float_times=order == "file")
    if integer_ids:
        rows = [(u[1:], i[1:], t) for u, i, t in rows]
    else:
        rows = _padded(rows)
    catalogue = _catalogue(rows, extra=0 if integer_ids else 5)
    inter = {"user_id": [int(u) if integer_ids else u for u, _, _ in rows],
             "item_id": [int(i) if integer_ids else i for _, i, _ in rows], "timestamp": [t for _, _, t in rows]}
    table = pa.table(inter)
    pq.write_table(table, tmp_path / "interactions.parquet", row_group_size=97)  # several chunks
    pq.write_table(pa.table({"item_id": catalogue, "title": catalogue}), tmp_path / "items.parquet")
    ds = load_parquet(tmp_path / "interactions.parquet", tmp_path / "items.parquet", order=order,
                      keep_unused_items=True)
    _same(ds, _reference(rows, catalogue, order, keep_unused=True))


def test_parquet_items_without_text_share_one_empty_text(tmp_path):
    pq.write_table(pa.table({"user_id": ["u1", "u1", "u2"], "item_id": ["a", "b", "a"], "timestamp": [1, 2, 3]}),
                   tmp_path / "interactions.parquet")
    pq.write_table(pa.table({"item_id": ["a", "b", "c"], "title": [None, "B", None]}), tmp_path / "items.parquet")
    ds = load_parquet(tmp_path / "interactions.parquet", tmp_path / "items.parquet", keep_unused_items=True)
    assert ds.items == [ItemText(), ItemText(title="B"), ItemText()] and ds.items[0] is ds.items[2]
    bare = load_parquet(tmp_path / "interactions.parquet")
    assert bare.item_ids == ["a", "b"] and bare.items[0] is bare.items[1] and bare.items[0] == ItemText()


ITEM_LINES = [
    '{"item_id": "a", "title": " Red shoe ", "categories": [["Shoes", "Red"], "Shoes"], "price": "$5.99"}',
    '{"item_id": 7, "title": null, "brand": "", "categories": [], "description": null, "price": null}',
    '{"item_id": "b", "price": "$5 - $6", "color": "blue"}',
    '   ',
    '{"item_id": "c", "description": ["one", "two"], "price": 3}',
    '{"item_id": "d"}',
]


def test_items_jsonl_bulk_equals_line_reader(tmp_path, caplog):
    from genrec.data import read_items_jsonl

    bulk_path, line_path = tmp_path / "bulk.jsonl", tmp_path / "line.jsonl"
    bulk_path.write_text("\n".join(ITEM_LINES) + "\n")
    line_path.write_bytes(("\r\n".join(ITEM_LINES) + "\r\n").encode())  # "\r": the line reader
    with caplog.at_level(logging.WARNING, logger="genrec.data"):
        bulk = read_items_jsonl(bulk_path)
        line = read_items_jsonl(line_path)
    assert list(bulk) == list(line) == ["a", "7", "b", "c", "d"]
    assert list(bulk.values()) == list(line.values())
    assert [t.extra for t in bulk.values()] == [t.extra for t in line.values()] == [{}, {}, {"color": "blue"}, {}, {}]
    assert bulk["7"] is bulk["d"] and bulk["7"] == ItemText()  # text-less items share one empty text
    assert caplog.text.count("1 item(s) have a price that is not one finite non-negative number") == 2


@pytest.mark.parametrize("line, match", [
    ('{"item_id": "x"}, {"item_id": "y"}', r"x.jsonl:2: malformed JSON"),
    ('{"item_id": "a", "title": {"t": 1}}', r"x.jsonl:2: duplicate item_id 'a' \(first at line 1\)"),
    ('{"item_id": "z", "title": {"t": 1}}', r"x.jsonl:2: field 'title' must be text, got dict"),
    ('[1]', r"x.jsonl:2: expected a JSON object, got list"),
])
def test_items_jsonl_errors_name_the_line(tmp_path, line, match):
    from genrec.data import read_items_jsonl

    path = tmp_path / "x.jsonl"
    path.write_text('{"item_id": "a"}\n' + line + "\n")
    with pytest.raises(DataFormatError, match=match):
        read_items_jsonl(path)


@pytest.mark.parametrize("inter, items, match", [
    ({"user_id": ["u1", "  ", "u2"]}, None, r"interactions.parquet: row 2: empty user in column 'user_id'"),
    ({"item_id": pa.array(["a", None, "b"]).dictionary_encode()}, None,
     r"interactions.parquet: row 2: empty item in column 'item_id'"),
    ({"timestamp": pa.array([1, 2 ** 63, 3], pa.uint64())}, None,
     r"interactions.parquet: row 2: timestamp 9223372036854775808 is outside the 64-bit integer range"),
    ({"timestamp": pa.array([1.0, float("inf"), None])}, None, r"interactions.parquet: row 2: timestamp inf is not finite"),
    ({"timestamp": pa.array([1.0, None, float("inf")])}, None, r"interactions.parquet: row 2: empty time"),
    ({}, {"item_id": ["a", "b", " a"], "title": [None, None, {"x": 1}]},
     r"items.parquet: row 3: duplicate item_id 'a' \(first at row 1\)"),
    ({}, {"item_id": ["a", "b", "c", "a"], "title": [None, None, {"x": 1}, None]},
     r"items.parquet: row 3: field 'title' must be text, got dict"),
])
def test_parquet_bad_rows_are_named(tmp_path, inter, items, match):
    cols = {"user_id": ["u1", "u1", "u2"], "item_id": ["a", "b", "a"], "timestamp": [1, 2, 3], **inter}
    pq.write_table(pa.table(cols), tmp_path / "interactions.parquet")
    pq.write_table(pa.table(items or {"item_id": ["a", "b"]}), tmp_path / "items.parquet")
    with pytest.raises(DataFormatError, match=match):
        load_parquet(tmp_path / "interactions.parquet", tmp_path / "items.parquet")
