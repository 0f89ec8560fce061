"""Parquet interactions and items (genrec.parquet_data): default and custom column names, column
types, the round trip against the plain format, and every bad input with the file and row it names."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import genrec
from genrec.data import ItemText
from genrec.errors import ConfigError, DataFormatError, DataNotFoundError
from genrec.parquet_data import load_parquet


def _write(path: Path, columns: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path)
    return path


def _toy(directory: Path, **renames: str) -> Path:
    """interactions.parquet and items.parquet with the default column names (or ``renames``)."""
    col = lambda name: renames.get(name, name)  # noqa: E731
    _write(directory / "interactions.parquet", {col("user_id"): ["u1", "u1", "u2", "u1"],
                                                col("item_id"): ["a", "b", "b", "c"],
                                                col("timestamp"): [30, 10, 20, 10],
                                                "rating": [5.0, 1.0, 3.0, 4.0]})
    _write(directory / "items.parquet", {"item_id": ["c", "a", "b"], "title": ["Green cup", "Red shoe", None],
                                         "categories": [["Kitchen", "Cups"], [], None],
                                         "price": [2.5, float("nan"), None], "color": ["g", "r", "b"]})
    return directory


def test_directory_layout_default_columns(tmp_path, caplog):
    d = _toy(tmp_path / "shop")
    with caplog.at_level(logging.INFO):
        ds = genrec.load_dataset(f"parquet:{d}")
    assert ds.name == "shop" and ds.item_ids == ["c", "a", "b"] and ds.user_ids == ["u1", "u2"]
    assert [ds.item_ids[i] for i in ds.sequences[0]] == ["b", "c", "a"]  # stable sort by time
    assert ds.timestamps[0].tolist() == [10, 10, 30] and ds.timestamps[0].dtype == np.int64
    c, a, b = ds.items
    assert c == ItemText(title="Green cup", categories=("Kitchen", "Cups"), price=2.5) and c.extra == {"color": "g"}
    assert a.price is None and b.is_empty()
    assert "price that is not one finite non-negative number" in caplog.text  # the NaN price
    assert "['color'] are not item text" in caplog.text


def test_custom_column_names_and_files(tmp_path):
    d = _toy(tmp_path / "x", user_id="uid", item_id="sku", timestamp="ts")
    items = _write(tmp_path / "meta.parquet", {"id": [1, 2], "name": ["One", "Two"], "cats": ["A|B", "C"]})
    _write(d / "interactions.parquet", {"uid": [7, 7, 8], "sku": [2, 1, 2], "ts": [1.5, 0.5, 2.0]})
    ds = genrec.load_dataset(f"parquet:interactions={d / 'interactions.parquet'},items={items},user=uid,item=sku,"
                             f"time=ts,item_id=id,title=name,categories=cats,order=file")
    assert ds.user_ids == ["7", "8"] and ds.item_ids == ["1", "2"]
    assert [ds.item_ids[i] for i in ds.sequences[0]] == ["2", "1"]  # order=file
    assert ds.items[0] == ItemText(title="One", categories=("A", "B")) and ds.timestamps[0].dtype == np.float64
    # the directory form with renamed interaction columns
    _write(d / "items.parquet", {"item_id": ["1", "2"], "title": ["One", "Two"]})
    ds2 = genrec.load_dataset(f"parquet:{d},user=uid,item=sku,time=ts,title=null")
    assert ds2.num_interactions == 3 and all(it.title is None for it in ds2.items)
    # column names that read as numbers (pandas' defaults 0, 1, 2): taken as the names (were refused as not str)
    _write(d / "interactions.parquet", {"0": [7, 7, 8], "1": [2, 1, 2], "2": [1.5, 0.5, 2.0]})
    assert genrec.load_dataset(f"parquet:{d},user=0,item=1,time=2").num_interactions == 3


def test_decimal_prices_and_dictionary_encoded_ids(tmp_path):
    """A decimal price column (how Spark / SQL export money) was thrown away with a warning; a dictionary
    column of bytes passed the id check and its ids became "b'u1'"."""
    from decimal import Decimal

    d = tmp_path / "shop"
    _write(d / "interactions.parquet", {"user_id": ["u1", "u1"], "item_id": ["a", "b"], "timestamp": [1, 2]})
    _write(d / "items.parquet", {"item_id": ["a", "b"],
                                 "price": pa.array([Decimal("12.50"), Decimal("3.99")], pa.decimal128(10, 2))})
    assert [it.price for it in genrec.load_dataset(f"parquet:{d}").items] == [12.5, 3.99]
    _write(d / "interactions.parquet", {"user_id": pa.array([b"u1", b"u1"]).dictionary_encode(),
                                        "item_id": ["a", "b"], "timestamp": [1, 2]})
    with pytest.raises(DataFormatError, match=r"column 'user_id' \(user\) must hold strings or integers"):
        genrec.load_dataset(f"parquet:{d}")


def test_timestamp_column_and_no_items_file(tmp_path, caplog):
    t = pa.array(np.array([3, 1, 2], dtype="datetime64[ms]"))
    path = _write(tmp_path / "solo" / "interactions.parquet", {"user_id": ["u", "u", "v"], "item_id": ["x", "y", "x"],
                                                               "timestamp": t})
    with caplog.at_level(logging.INFO):
        ds = load_parquet(path)
    assert ds.item_ids == ["x", "y"]  # first appearance in the rows (y's interaction is earlier in time)
    assert ds.timestamps[0].tolist() == [1, 3] and all(it.is_empty() for it in ds.items)
    assert "no items file" in caplog.text


def test_keep_unused_items(tmp_path):
    d = _toy(tmp_path / "k")
    _write(d / "items.parquet", {"item_id": ["a", "b", "c", "zz"], "title": ["A", "B", "C", "Z"]})
    assert "zz" not in load_parquet(d / "interactions.parquet", d / "items.parquet").item_ids
    assert load_parquet(d / "interactions.parquet", d / "items.parquet", keep_unused_items=True).item_ids[-1] == "zz"


def test_round_trip_against_plain(tmp_path):
    src = genrec.load_dataset("synthetic:num_users=40,seed=2")
    genrec.write_plain(src, tmp_path / "plain")
    plain = genrec.load_plain(tmp_path / "plain")
    rows = [(src.user_ids[u], src.item_ids[i], int(t)) for u, seq in enumerate(src.sequences)
            for i, t in zip(seq, src.timestamps[u])]
    _write(tmp_path / "pq" / "interactions.parquet", {"user": [r[0] for r in rows], "item": [r[1] for r in rows],
                                                      "time": [r[2] for r in rows]})
    _write(tmp_path / "pq" / "items.parquet", {
        "item_id": src.item_ids, "title": [it.title for it in src.items], "brand": [it.brand for it in src.items],
        "categories": [list(it.categories) for it in src.items], "description": [it.description for it in src.items],
        "price": [it.price for it in src.items]})
    ds = genrec.load_dataset(f"parquet:{tmp_path / 'pq'},user=user,item=item,time=time,order=file")
    assert ds.item_ids == plain.item_ids and ds.user_ids == plain.user_ids
    assert all(np.array_equal(a, b) for a, b in zip(ds.sequences, plain.sequences))
    assert all(np.array_equal(a, b) for a, b in zip(ds.timestamps, plain.timestamps))
    assert ds.items == plain.items


def _inter(**over):
    cols = {"user_id": ["u1", "u1", "u2"], "item_id": ["a", "b", "a"], "timestamp": [1, 2, 3]}
    cols.update(over)
    return {k: v for k, v in cols.items() if v is not None}


ITEMS = {"item_id": ["a", "b"], "title": ["A", "B"]}
BAD = [
    ("missing-column", _inter(timestamp=None), ITEMS, {}, DataFormatError,
     r"interactions.parquet: no column 'timestamp' for the time .*name it with time=COLUMN"),
    ("float-ids", _inter(item_id=[1.0, 2.0, 1.0]), ITEMS, {}, DataFormatError,
     r"interactions.parquet: column 'item_id' \(item\) must hold strings or integers, got double"),
    ("string-times", _inter(timestamp=["1", "2", "x"]), ITEMS, {}, DataFormatError,
     r"interactions.parquet: column 'timestamp' \(time\) must hold numbers or timestamps, got string"),
    ("null-time", _inter(timestamp=[1, None, 3]), ITEMS, {}, DataFormatError,
     r"interactions.parquet: row 2: empty time in column 'timestamp'"),
    ("nan-time", _inter(timestamp=[1.0, 2.0, float("nan")]), ITEMS, {}, DataFormatError,
     r"interactions.parquet: row 3: timestamp nan is not finite"),
    ("null-user", _inter(user_id=["u1", None, "u2"]), ITEMS, {}, DataFormatError,
     r"interactions.parquet: row 2: empty user in column 'user_id'"),
    ("unknown-item", _inter(item_id=["a", "b", "zz"]), ITEMS, {}, DataFormatError,
     r"interactions.parquet: row 3: item 'zz' has no row in .*items.parquet \(1 such item"),
    ("duplicate-item", _inter(), {"item_id": ["a", "b", "a"], "title": ["A", "B", "C"]}, {}, DataFormatError,
     r"items.parquet: row 3: duplicate item_id 'a' \(first at row 1\)"),
    ("bad-title-type", _inter(), {"item_id": ["a", "b"], "title": [{"x": 1}, {"x": 2}]}, {}, DataFormatError,
     r"items.parquet: row 1: field 'title' must be text, got dict"),
    ("renamed-column-absent", _inter(), ITEMS, {"title": "name"}, DataFormatError,
     r"items.parquet: no column\(s\) \['title=name'\]"),
    ("empty-interactions", {"user_id": pa.array([], pa.string()), "item_id": pa.array([], pa.string()),
                            "timestamp": pa.array([], pa.int64())}, ITEMS, {}, DataFormatError,
     r"interactions.parquet: empty file \(no interactions\)"),
    ("empty-items", _inter(), {"item_id": pa.array([], pa.string())}, {}, DataFormatError,
     r"items.parquet: empty file \(no items\)"),
]


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_bad_inputs(tmp_path, case):
    _, inter, items, kw, error, match = case
    ip = _write(tmp_path / "interactions.parquet", inter)
    it = _write(tmp_path / "items.parquet", items)
    with pytest.raises(error, match=match):
        load_parquet(ip, it, **kw)


def test_not_parquet_and_missing_files(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "interactions.parquet").write_text("user_id,item_id\n")
    with pytest.raises(DataFormatError, match=r"interactions.parquet: not a readable Parquet file"):
        genrec.load_dataset(f"parquet:{tmp_path / 'd'}")
    with pytest.raises(DataNotFoundError, match=r"nowhere: dataset directory not found"):
        genrec.load_dataset(f"parquet:{tmp_path / 'nowhere'}")
    with pytest.raises(DataNotFoundError, match=r"none.parquet: Parquet file not found"):
        load_parquet(tmp_path / "none.parquet")
    with pytest.raises(ConfigError, match=r"expected parquet:DIR or parquet:interactions=PATH"):
        genrec.load_dataset("parquet:items=x.parquet")
    with pytest.raises(ConfigError, match=r"parquet parameter order expects one of 'timestamp', 'file'"):
        genrec.load_dataset(f"parquet:{tmp_path / 'd'},order=random")


def test_fingerprint_covers_parquet_files(tmp_path):
    from genrec.rundir import data_files

    d = _toy(tmp_path / "fp")
    assert [p.name for p in data_files(f"parquet:{d}")] == ["interactions.parquet", "items.parquet"]
    spec = f"parquet:interactions={d / 'interactions.parquet'},user=user_id"
    assert [p.name for p in data_files(spec)] == ["interactions.parquet"]
