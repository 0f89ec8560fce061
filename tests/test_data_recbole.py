"""RecBole atomic files (genrec.recbole): separators, typed headers, gzip, item-text mapping, the
round trip against the plain format, and every bad input with the file and line it names."""

from __future__ import annotations

import gzip
import logging
from pathlib import Path

import numpy as np
import pytest

import genrec
from genrec.data import ItemText, SequenceDataset
from genrec.item_fields import format_timestamp
from genrec.errors import ConfigError, DataFormatError, DataNotFoundError
from genrec.recbole import load_recbole

INTER = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
ITEM = "item_id:token\ttitle:token_seq\tbrand:token\tcategories:token_seq\tprice:float\tsales_type:token\n"


def _write(directory: Path, inter: str | None, item: str | None = None, gz: bool = False) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for suffix, text in ((".inter", inter), (".item", item)):
        if text is None:
            continue
        path = directory / f"{directory.name}{suffix}{'.gz' if gz else ''}"
        data = text.encode("utf-8")
        path.write_bytes(gzip.compress(data) if gz else data)
    return directory


def _toy(tmp_path: Path, name: str = "toy", **kw) -> Path:
    inter = INTER + "u1\ta\t5\t30\nu1\tb\t1\t10\nu2\tb\t3\t20\nu1\tc\t4\t10\n"
    item = (ITEM + "c\tGreen   cup\tAcme\tKitchen, Cups\t2.5\tx\n"
            "a\tRed shoe\t\tShoes\t$3\ty\nb\tBlue hat\tHatCo\t['Hats', 'Caps']\t\tz\n")
    return _write(tmp_path / name, inter, item, **kw)


def test_tab_typed_headers_and_timestamp_order(tmp_path):
    ds = load_recbole(_toy(tmp_path))
    assert ds.name == "toy"
    assert ds.item_ids == ["c", "a", "b"]  # .item file order
    assert ds.user_ids == ["u1", "u2"]
    # u1: b@10 and c@10 tie (file order kept: b first), then a@30; every rating kept
    assert [ds.item_ids[i] for i in ds.sequences[0]] == ["b", "c", "a"]
    assert ds.timestamps[0].tolist() == [10, 10, 30] and ds.timestamps[0].dtype == np.int64
    c, a, b = ds.items
    assert c == ItemText(title="Green cup", brand="Acme", categories=("Kitchen", "Cups"), price=2.5)
    assert c.extra == {"sales_type": "x"}
    assert a.brand is None and a.price == 3.0 and a.categories == ("Shoes",)
    assert b.categories == ("Hats", "Caps") and b.price is None


def test_order_file_keeps_rows(tmp_path):
    ds = load_recbole(_toy(tmp_path), order="file")
    assert [ds.item_ids[i] for i in ds.sequences[0]] == ["a", "b", "c"]


def test_the_current_directory_is_found_by_its_name(tmp_path, monkeypatch):
    """recbole:. looked for ".inter" (the name of Path("."), which is empty)."""
    d = _toy(tmp_path)
    monkeypatch.chdir(d)
    assert genrec.load_dataset("recbole:.").num_interactions == load_recbole(d).num_interactions
    monkeypatch.chdir(tmp_path)
    # through a link: the files are named after the link ("toy"), not after the directory it points to
    real = tmp_path / "store" / "real"
    real.parent.mkdir()
    d.rename(real)
    (tmp_path / "toy").symlink_to(real, target_is_directory=True)
    assert load_recbole(tmp_path / "toy").num_interactions == 4


@pytest.mark.parametrize("gz", [False, True])
def test_comma_separator_detected_and_set(tmp_path, gz):
    inter = "user_id:token,item_id:token,timestamp:float\nu1,a,1.5\nu1,b,2\nu2,a,3\n"
    item = "item_id:token,title:token_seq,genre:token_seq\na,Alpha one,Drama Comedy\nb,Beta,Horror\n"
    d = _write(tmp_path / "cm", inter, item, gz=gz)
    for ds in (load_recbole(d), genrec.load_dataset(f"recbole:{d},sep=comma")):
        assert ds.item_ids == ["a", "b"] and ds.num_interactions == 3
        assert ds.items[0].title == "Alpha one" and ds.items[0].categories == ("Drama", "Comedy")
        assert ds.timestamps[0].dtype == np.float64  # a decimal timestamp: every one a float
    with pytest.raises(DataFormatError, match=r"cm.inter(.gz)?:1: header field .* holds a comma: the file looks "
                                              r"comma-separated \(sep=comma\)"):
        load_recbole(d, sep="tab")  # the whole comma header read as one field


def test_spec_keywords_are_typed(tmp_path):
    d = _toy(tmp_path)
    ds = genrec.load_dataset(f"recbole:{d},order=file,name=mine")
    assert ds.name == "mine"
    with pytest.raises(ConfigError, match=r"recbole parameter sep expects one of 'tab', 'comma' or null, got 'semi'"):
        genrec.load_dataset(f"recbole:{d},sep=semi")
    with pytest.raises(ConfigError, match=r"unknown recbole parameter\(s\) \['separator'\]"):
        genrec.load_dataset(f"recbole:{d},separator=tab")
    with pytest.raises(ConfigError, match=r"missing the directory"):
        genrec.load_dataset("recbole:,sep=tab")


def test_without_item_file_items_have_empty_text(tmp_path, caplog):
    d = _write(tmp_path / "bare", "user_id:token\titem_id:token\nu1\tx\nu1\ty\nu2\tx\n")
    with caplog.at_level(logging.INFO, logger="genrec.recbole"):
        ds = load_recbole(d)
    assert ds.item_ids == ["x", "y"] and all(it.is_empty() for it in ds.items)
    assert "no bare.item file" in caplog.text and "no 'timestamp' field" in caplog.text
    assert ds.timestamps[0].tolist() == [0, 1]  # the row number stands for the time
    # a time field named, or a timestamp order asked for, that the file lacks: an error, not file order
    for spec, field in ((f"recbole:{d},time_field=tss", "tss"), (f"recbole:{d},order=timestamp", "timestamp"),
                        (f"recbole:{d},time_field=tss,order=file", "tss")):
        with pytest.raises(DataFormatError, match=rf"bare.inter:1: header lacks the field '{field}'"):
            genrec.load_dataset(spec)
    assert genrec.load_dataset(f"recbole:{d},order=file").timestamps[0].tolist() == [0, 1]


def test_missing_item_entries_error_or_empty(tmp_path, caplog):
    inter = INTER + "u1\ta\t5\t1\nu1\tz\t5\t2\nu1\tq\t5\t3\n"
    d = _write(tmp_path / "miss", inter, ITEM + "a\tA\t\t\t\t\n")
    with pytest.raises(DataFormatError, match=r"miss.inter:3: 2 interacted item\(s\) have no entry in miss.item, "
                                              r"e.g. \['z', 'q'\]"):
        load_recbole(d)
    with caplog.at_level(logging.WARNING):
        ds = load_recbole(d, missing_items="empty")
    assert ds.item_ids == ["a", "z", "q"] and ds.items[1].is_empty()
    assert "2 interacted item(s) have no entry" in caplog.text


def test_keep_unused_items(tmp_path):
    d = _write(tmp_path / "unused", INTER + "u1\ta\t5\t1\n", ITEM + "a\tA\t\t\t\t\nb\tB\t\t\t\t\n")
    assert load_recbole(d).item_ids == ["a"]
    assert load_recbole(d, keep_unused_items=True).item_ids == ["a", "b"]


def _write_recbole_of(ds: SequenceDataset, directory: Path) -> Path:
    """The dataset as RecBole atomic files (tab-separated), what a RecBole user would bring."""
    rows = [INTER.rstrip("\n")]
    for u, seq in enumerate(ds.sequences):
        rows += [f"{ds.user_ids[u]}\t{ds.item_ids[i]}\t1\t{format_timestamp(t)}"
                 for i, t in zip(seq, ds.timestamps[u])]
    items = [ITEM.rstrip("\n") + "\tdescription:token_seq"]
    for iid, it in zip(ds.item_ids, ds.items):
        price = "" if it.price is None else repr(it.price)
        items.append("\t".join([iid, it.title or "", it.brand or "", ", ".join(it.categories), price, "n",
                                it.description or ""]))
    return _write(directory, "\n".join(rows) + "\n", "\n".join(items) + "\n")


def test_round_trip_against_plain(tmp_path):
    src = genrec.load_dataset("synthetic:num_users=40,seed=1")
    genrec.write_plain(src, tmp_path / "plain")
    plain = genrec.load_plain(tmp_path / "plain")
    rb = load_recbole(_write_recbole_of(src, tmp_path / "rb"), order="file")
    assert rb.item_ids == plain.item_ids and rb.user_ids == plain.user_ids
    assert all(np.array_equal(a, b) for a, b in zip(rb.sequences, plain.sequences))
    assert all(np.array_equal(a, b) for a, b in zip(rb.timestamps, plain.timestamps))
    assert rb.items == plain.items


BAD = [
    ("no-types", "user_id\titem_id\ttimestamp\nu1\ta\t1\n", None, DataFormatError,
     r"bad.inter:1: header field 'user_id' is not written name:type"),
    ("unknown-type", "user_id:str\titem_id:token\nu1\ta\n", None, DataFormatError,
     r"bad.inter:1: header field 'user_id:str' has unknown type 'str'"),
    ("no-item-field", "user_id:token\ttimestamp:float\nu1\t1\n", None, DataFormatError,
     r"bad.inter:1: header lacks the field 'item_id'"),
    ("wrong-field-type", "user_id:token\titem_id:float\nu1\t1\n", None, DataFormatError,
     r"bad.inter:1: field 'item_id' has type 'float', expected token"),
    ("duplicate-field", "user_id:token\titem_id:token\titem_id:token\nu1\ta\ta\n", None, DataFormatError,
     r"bad.inter:1: header field 'item_id' appears more than once"),
    ("short-row", INTER + "u1\ta\t5\t1\nu1\tb\t5\n", None, DataFormatError,
     r"bad.inter:3: expected 4 tab-separated fields \(as in the header\), got 3"),
    ("bad-timestamp", INTER + "u1\ta\t5\tsoon\n", None, DataFormatError,
     r"bad.inter:2: timestamp 'soon' is not a number"),
    ("nan-timestamp", INTER + "u1\ta\t5\tnan\n", None, DataFormatError, r"bad.inter:2: timestamp 'nan' is not finite"),
    ("empty-user", INTER + "\ta\t5\t1\n", None, DataFormatError, r"bad.inter:2: empty user_id or item_id"),
    # a row of tabs: refused as a row of commas is (it was skipped as a blank line)
    ("empty-row", INTER + "u1\ta\t5\t1\n\t\t\t\n", None, DataFormatError, r"bad.inter:3: empty user_id or item_id"),
    ("empty-file", "", None, DataFormatError, r"bad.inter: empty file"),
    ("header-only", INTER, None, DataFormatError, r"bad.inter: no interactions after the header"),
    ("duplicate-item", INTER + "u1\ta\t5\t1\n", ITEM + "a\tA\t\t\t\t\nb\tB\t\t\t\t\na\tA2\t\t\t\t\n",
     DataFormatError, r"bad.item:4: duplicate item_id 'a' \(first at line 2\)"),
    ("item-price-type", INTER + "u1\ta\t5\t1\n", "item_id:token\tprice:token\na\t3\n", DataFormatError,
     r"bad.item:1: field 'price' has type 'token', expected 'float'"),
    ("item-empty", INTER + "u1\ta\t5\t1\n", ITEM, DataFormatError, r"bad.item: no items after the header"),
    ("non-utf8", (INTER + "u\xe9\ta\t5\t1\n"), None, DataFormatError, r"bad.inter:2: not valid UTF-8 \(byte 0xe9"),
]


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_bad_inputs(tmp_path, case):
    _, inter, item, error, match = case
    d = tmp_path / "bad"
    d.mkdir()
    (d / "bad.inter").write_bytes(inter.encode("latin-1") if case[0] == "non-utf8" else inter.encode())
    if item is not None:
        (d / "bad.item").write_text(item, encoding="utf-8")
    with pytest.raises(error, match=match):
        load_recbole(d)


def test_missing_directory_and_inter_file(tmp_path):
    with pytest.raises(DataNotFoundError, match=r"nowhere: dataset directory not found"):
        genrec.load_dataset(f"recbole:{tmp_path / 'nowhere'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataNotFoundError, match=r"expected empty.inter or empty.inter.gz"):
        load_recbole(tmp_path / "empty")


def test_truncated_gzip_names_file(tmp_path):
    d = tmp_path / "tr"
    d.mkdir()
    data = gzip.compress((INTER + "".join(f"u{k}\ti{k % 7}\t1\t{k}\n" for k in range(4000))).encode())
    (d / "tr.inter.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataFormatError, match=r"tr.inter.gz:\d+: truncated or corrupt gzip file"):
        load_recbole(d)


def test_fingerprint_covers_recbole_files(tmp_path):
    from genrec.rundir import data_files

    d = _toy(tmp_path, gz=True)
    assert [p.name for p in data_files(f"recbole:{d},sep=tab")] == ["toy.inter.gz", "toy.item.gz"]


def test_data_export_refuses_the_folder_of_any_dataset_file(tmp_path, capsys):
    """--export into a RecBole folder wrote a plain copy beside bare.inter (only files named
    interactions*/items* were guarded), which a directory spec of that folder then read instead."""
    from genrec import cli

    d = _write(tmp_path / "bare", "user_id:token\titem_id:token\nu1\tx\nu1\ty\nu1\tz\nu2\tx\nu2\ty\nu2\tz\n")
    assert cli.main(["data", f"recbole:{d}", "--export", str(d)]) == 2
    assert "holds the dataset's own files; export elsewhere" in capsys.readouterr().err
    assert sorted(p.name for p in d.iterdir()) == ["bare.inter"]
    assert cli.main(["data", f"recbole:{d}", "--export", str(tmp_path / "plain")]) == 0
    assert (tmp_path / "plain" / "interactions.tsv").is_file()
