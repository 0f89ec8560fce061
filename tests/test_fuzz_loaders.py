"""Property tests (hypothesis) of the file loaders: the plain format and the Amazon 2014 / 2023 local files.

Whatever the bytes, rows or encoding, a loader either returns a valid dataset or raises
:class:`DataFormatError` whose message names the file (and a line number inside the file where it
gives one); any other exception type is a bug.
"""

from __future__ import annotations

# Floats without subnormals: genrec.training.setup turns on flush-denormal for the process, after
# which hypothesis refuses to generate subnormal floats.
import gzip
import json
import math
import re
import tempfile
import zlib
from pathlib import Path
from typing import Callable

import numpy as np
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from genrec.amazon import amazon2014_from_files, amazon2023_from_files, amazon2023_from_records
from genrec.data import DataFormatError, SequenceDataset, load_plain, write_plain

FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ----------------------------------------------------------------------------------------------
# helpers


def check_dataset(ds: SequenceDataset) -> None:
    """The invariants every loaded dataset keeps."""
    assert ds.num_users == len(ds.sequences) == len(ds.timestamps) and ds.num_users > 0
    assert len(ds.items) == ds.num_items == len(set(ds.item_ids)) > 0
    used = set()
    for seq, ts in zip(ds.sequences, ds.timestamps):
        assert seq.dtype == np.int64 and len(seq) == len(ts) > 0
        assert ts.dtype in (np.int64, np.float64) and np.all(np.isfinite(ts))
        assert seq.min() >= 0 and seq.max() < ds.num_items
        used.update(seq.tolist())
    assert used == set(range(ds.num_items))  # every vocabulary item is interacted with
    for it in ds.items:
        assert it.price is None or (math.isfinite(it.price) and it.price >= 0)


def call_loader(load: Callable[[], SequenceDataset], files: dict[Path, bytes]) -> SequenceDataset | None:
    """Run ``load``; a :class:`DataFormatError` must name one of ``files`` and, if it gives a line
    number for that file, one that exists (the line reached may be one past the last)."""
    try:
        ds = load()
    except DataFormatError as e:
        msg = str(e)
        named = [p for p in files if str(p) in msg]
        assert named, f"error names none of the files: {msg}"
        for p in named:
            m = re.search(re.escape(str(p)) + r":(\d+):", msg)
            if m:
                n_lines = files[p].count(b"\n") + files[p].count(b"\r") + 1
                assert 1 <= int(m.group(1)) <= n_lines + 1, msg
        return None
    check_dataset(ds)
    return ds


def write(path: Path, data: bytes, gz: bool) -> bytes:
    """Write ``data`` (gzip-compressed if ``gz``) and return the uncompressed bytes."""
    path.write_bytes(gzip.compress(data, mtime=0) if gz else data)
    return data


# ----------------------------------------------------------------------------------------------
# strategies

ids = st.sampled_from(["a", "b", "c", "d", "u1", "u2", "B00X", "ünï", "x y"])
weird_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=8)
timestamps = st.one_of(
    st.integers(min_value=-(2 ** 63), max_value=2 ** 63 - 1).map(str),
    st.integers(min_value=2 ** 63, max_value=2 ** 70).map(str),
    st.floats(allow_nan=True, allow_infinity=True, allow_subnormal=False).map(repr),
    st.sampled_from(["", "nan", "inf", "1e3", "1_000", " 7 ", "yesterday", "0x10", "1700000000123456789"]),
)
field = st.one_of(ids, weird_text)
json_scalar = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_subnormal=False), st.text(max_size=10))
json_value = st.recursive(json_scalar, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c,
                                                                                             max_size=3),
                          max_leaves=6)
prices = st.one_of(st.none(), st.floats(allow_subnormal=False), st.integers(min_value=-10, max_value=10 ** 30),
                   st.sampled_from(["$5.99", "$5.99 - $12.99", "None", "", "free", "1,234.50", "NaN", "-3"]),
                   json_value)


@st.composite
def tsv_rows(draw: st.DrawFn) -> str:
    header = draw(st.sampled_from(["user_id\titem_id\ttimestamp", "item_id\ttimestamp\tuser_id\textra",
                                   "user_id\titem_id\ttimestamp\titem_id", "user_id\titem_id", "",
                                   "\ufeffuser_id\titem_id\ttimestamp"]))
    ncol = len(header.split("\t"))
    rows = []
    for _ in range(draw(st.integers(0, 12))):
        n = draw(st.sampled_from([ncol, ncol, ncol, ncol - 1, ncol + 1]))
        cols = [draw(ids) for _ in range(n)]
        pos = 2 if header.startswith("user_id") else 1  # the timestamp column
        if pos < n:
            cols[pos] = draw(timestamps)
        if draw(st.booleans()) and cols:
            cols[draw(st.integers(0, len(cols) - 1))] = draw(field)
        rows.append("\t".join(cols))
    sep = draw(st.sampled_from(["\n", "\r\n", "\r"]))
    return sep.join([header] + rows) + draw(st.sampled_from(["", sep]))


@st.composite
def item_lines(draw: st.DrawFn) -> str:
    lines = []
    for _ in range(draw(st.integers(0, 8))):
        kind = draw(st.integers(0, 9))
        if kind == 0:
            lines.append(draw(st.text(max_size=20)))  # not JSON at all
        elif kind == 1:
            lines.append(json.dumps(draw(json_value)))
        else:
            rec = {"item_id": draw(st.one_of(ids, ids, json_scalar))}
            for key in draw(st.sets(st.sampled_from(["title", "brand", "categories", "description", "price", "x"]))):
                rec[key] = draw(prices if key == "price" else st.one_of(field, json_value))
            lines.append(json.dumps(rec))
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------
# plain format


def load_plain_files(inter: bytes, items: bytes, gz_inter: bool, gz_items: bool) -> SequenceDataset | None:
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp) / "data"
        d.mkdir()
        p_inter = d / ("interactions.tsv.gz" if gz_inter else "interactions.tsv")
        p_items = d / ("items.jsonl.gz" if gz_items else "items.jsonl")
        files = {p_inter: write(p_inter, inter, gz_inter), p_items: write(p_items, items, gz_items)}
        return call_loader(lambda: load_plain(d), files)


@FUZZ
@given(rows=tsv_rows(), items=item_lines(), gz=st.tuples(st.booleans(), st.booleans()))
def test_fuzz_plain_generated_rows(rows, items, gz):
    load_plain_files(rows.encode("utf-8"), items.encode("utf-8"), *gz)


VALID_ITEMS = "\n".join(json.dumps({"item_id": i, "title": f"T {i}"}) for i in ["a", "b", "c", "d"]) + "\n"


@FUZZ
@given(prefix=st.sampled_from([b"", b"user_id\titem_id\ttimestamp\n", b"\xef\xbb\xbfuser_id\titem_id\ttimestamp\n"]),
       body=st.binary(max_size=200), gz=st.booleans())
def test_fuzz_plain_raw_bytes_interactions(prefix, body, gz):
    load_plain_files(prefix + body, VALID_ITEMS.encode(), gz, False)


@FUZZ
@given(body=st.binary(max_size=200), gz=st.booleans())
def test_fuzz_plain_raw_bytes_items(body, gz):
    load_plain_files(b"user_id\titem_id\ttimestamp\nu1\ta\t1\n", body, False, gz)


@FUZZ
@given(rows=tsv_rows(), items=item_lines(), cut=st.floats(0, 1, allow_subnormal=False), flip=st.integers(0, 10 ** 6),
       which=st.booleans())
@example(rows="user_id\titem_id\ttimestamp", cut=0.703125, flip=139, which=True,  # decompresses to 48 lines
         items='\n2r¯Ü\n{"item_id": -111071152, "x": "\\u00fcn\\u00ef", "title": "\\u008d\\ud9da\\udd10\\u00a2"}\n'
               '{"item_id": "a", "brand": "09\\u001f\\u001e\\u000b\\ud80c\\udf12", "categories": 1.5634435424857546e+44, '
               '"title": "a"}\n000\x80\U00010000\n')
def test_fuzz_plain_truncated_or_corrupt_gzip(rows, items, cut, flip, which):
    data = {False: rows.encode(), True: items.encode()}
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp) / "data"
        d.mkdir()
        p_inter, p_items = d / "interactions.tsv.gz", d / "items.jsonl.gz"
        blobs = {False: gzip.compress(data[False], mtime=0), True: gzip.compress(data[True], mtime=0)}
        blob = bytearray(blobs[which])
        blob = blob[: int(len(blob) * cut)]  # truncated ...
        if blob and flip % 2:  # ... and sometimes corrupt too
            blob[flip % len(blob)] ^= 1 + flip % 255
        blobs[which] = bytes(blob)
        p_inter.write_bytes(blobs[False])
        p_items.write_bytes(blobs[True])
        # a corrupt stream can decompress to more lines than the original held: bound by what it gives
        seen = dict(data)
        try:
            seen[which] = data[which] + zlib.decompressobj(31).decompress(blobs[which])
        except zlib.error:
            pass
        call_loader(lambda: load_plain(d), {p_inter: seen[False], p_items: seen[True]})


@FUZZ
@given(rows=tsv_rows(), encoding=st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "utf-16-le", "latin-1", "cp1252",
                                                  "utf-32"]))
def test_fuzz_plain_encodings(rows, encoding):
    try:
        data = rows.encode(encoding)
    except UnicodeEncodeError:
        data = rows.encode(encoding, errors="replace")
    ds = load_plain_files(data, (VALID_ITEMS + json.dumps({"item_id": "ünï"}) + "\n").encode(encoding)
                          if encoding in ("utf-8", "utf-8-sig", "latin-1", "cp1252") else VALID_ITEMS.encode(),
                          False, False)
    if encoding in ("utf-16", "utf-16-le", "utf-32") and rows:
        assert ds is None  # never silently read as something else


@FUZZ
@given(rows=tsv_rows(), items=item_lines())
def test_fuzz_plain_round_trip(rows, items):
    """Whatever loads, ``write_plain`` writes back exactly (ids, order, timestamps, text)."""
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp) / "data"
        d.mkdir()
        (d / "interactions.tsv").write_bytes(rows.encode())
        (d / "items.jsonl").write_bytes(items.encode())
        files = {d / "interactions.tsv": rows.encode(), d / "items.jsonl": items.encode()}
        ds = call_loader(lambda: load_plain(d), files)
        if ds is None:
            return
        write_plain(ds, Path(tmp) / "out")
        back = load_plain(Path(tmp) / "out", name=ds.name)
        assert back.user_ids == ds.user_ids and back.item_ids == ds.item_ids
        for s1, s2, t1, t2 in zip(ds.sequences, back.sequences, ds.timestamps, back.timestamps):
            assert s1.tolist() == s2.tolist() and t1.tolist() == t2.tolist()
        assert [(i.title, i.brand, i.categories, i.description, i.price) for i in back.items] == \
               [(i.title, i.brand, i.categories, i.description, i.price) for i in ds.items]


# ----------------------------------------------------------------------------------------------
# Amazon 2014 / 2023 local files


@st.composite
def review14_lines(draw: st.DrawFn) -> str:
    lines = []
    for _ in range(draw(st.integers(0, 10))):
        kind = draw(st.integers(0, 7))
        if kind == 0:
            lines.append(draw(st.text(max_size=20)))
        elif kind == 1:
            lines.append(json.dumps(draw(json_value)))
        else:
            rec = {"reviewerID": draw(st.one_of(ids, json_scalar)), "asin": draw(st.one_of(ids, json_value)),
                   "unixReviewTime": draw(st.one_of(st.integers(-10, 2 ** 65), timestamps, json_scalar))}
            for key in draw(st.sets(st.sampled_from(list(rec)))):
                del rec[key]
            lines.append(json.dumps(rec))
    return "\n".join(lines) + "\n"


@st.composite
def meta14_lines(draw: st.DrawFn) -> str:
    lines = []
    for _ in range(draw(st.integers(0, 8))):
        kind = draw(st.integers(0, 7))
        if kind == 0:
            lines.append(draw(st.text(max_size=20)))
        elif kind == 1:
            lines.append(draw(st.sampled_from(["{[1]: 2}", "{'asin': 'a', 'price': 1j}", "{1: 2}", "[" * 200,
                                               "{'asin': " + "9" * 5000 + "}", "set()", "{'asin': b'a'}"])))
        else:
            rec = {"asin": draw(st.one_of(ids, json_scalar))}
            for key in draw(st.sets(st.sampled_from(["title", "brand", "categories", "description", "price",
                                                     "related", "salesRank"]))):
                rec[key] = draw(prices if key == "price" else st.one_of(field, json_value))
            lines.append(repr(rec) if draw(st.booleans()) else json.dumps(rec))  # Python literal or JSON
    return "\n".join(lines) + "\n"


@FUZZ
@given(reviews=review14_lines(), meta=meta14_lines(), k=st.integers(1, 2), gz=st.booleans())
def test_fuzz_amazon2014_generated(reviews, meta, k, gz):
    with tempfile.TemporaryDirectory() as tmp:
        sfx = ".gz" if gz else ""
        r, m = Path(tmp) / f"reviews_X_5.json{sfx}", Path(tmp) / f"meta_X.json{sfx}"
        files = {r: write(r, reviews.encode(), gz), m: write(m, meta.encode(), gz)}
        call_loader(lambda: amazon2014_from_files(r, m, k=k), files)


@FUZZ
@given(reviews=st.binary(max_size=150), meta=st.binary(max_size=150), gz=st.booleans(), which=st.booleans())
def test_fuzz_amazon2014_raw_bytes(reviews, meta, gz, which):
    good_r = "\n".join(json.dumps({"reviewerID": "U", "asin": "A", "unixReviewTime": t}) for t in (1, 2)).encode()
    good_m = b"{'asin': 'A', 'title': 'T'}\n"
    with tempfile.TemporaryDirectory() as tmp:
        r, m = Path(tmp) / "reviews.json.gz", Path(tmp) / "meta.json.gz"
        data_r, data_m = (reviews, good_m + meta) if which else (good_r + b"\n" + reviews, good_m)
        r.write_bytes(reviews if gz and which else gzip.compress(data_r, mtime=0))
        m.write_bytes(meta if gz and not which else gzip.compress(data_m, mtime=0))
        call_loader(lambda: amazon2014_from_files(r, m, k=1), {r: data_r, m: data_m})


@st.composite
def records23(draw: st.DrawFn) -> tuple[list, list]:
    reviews = []
    for _ in range(draw(st.integers(0, 8))):
        rec = {"user_id": draw(st.one_of(ids, json_scalar)), "parent_asin": draw(st.one_of(ids, json_value)),
               "timestamp": draw(st.one_of(st.integers(-10, 2 ** 65), timestamps, json_scalar))}
        for key in draw(st.sets(st.sampled_from(list(rec)))):
            del rec[key]
        reviews.append(rec)
    meta = []
    for _ in range(draw(st.integers(0, 6))):
        rec = {"parent_asin": draw(st.one_of(ids, json_scalar))}
        for key in draw(st.sets(st.sampled_from(["title", "store", "main_category", "categories", "description",
                                                 "price", "details"]))):
            rec[key] = draw(prices if key == "price" else st.one_of(field, json_value))
        meta.append(rec)
    return reviews, meta


@FUZZ
@given(recs=records23(), k=st.integers(1, 2), gz=st.booleans())
def test_fuzz_amazon2023_files(recs, k, gz):
    reviews, meta = recs
    with tempfile.TemporaryDirectory() as tmp:
        sfx = ".gz" if gz else ""
        r, m = Path(tmp) / f"All_Beauty.jsonl{sfx}", Path(tmp) / f"meta_All_Beauty.jsonl{sfx}"
        files = {r: write(r, "".join(json.dumps(x) + "\n" for x in reviews).encode(), gz),
                 m: write(m, "".join(json.dumps(x) + "\n" for x in meta).encode(), gz)}
        call_loader(lambda: amazon2023_from_files(r, m, k_core=k), files)


@FUZZ
@given(recs=records23(), k=st.integers(1, 2))
def test_fuzz_amazon2023_records(recs, k):
    try:
        ds = amazon2023_from_records(*recs, name="fz", k_core=k)
    except DataFormatError as e:
        assert str(e).startswith("fz "), str(e)  # names the stream and the record number
        return
    check_dataset(ds)


@FUZZ
@given(reviews=st.binary(max_size=150), meta=st.binary(max_size=150), gz=st.booleans())
def test_fuzz_amazon2023_raw_bytes(reviews, meta, gz):
    good = json.dumps({"user_id": "u", "parent_asin": "P", "timestamp": 1000}).encode() + b"\n"
    with tempfile.TemporaryDirectory() as tmp:
        r, m = Path(tmp) / "X.jsonl.gz", Path(tmp) / "meta_X.jsonl.gz"
        r.write_bytes(reviews if gz else gzip.compress(good + reviews, mtime=0))
        m.write_bytes(gzip.compress(meta, mtime=0))
        call_loader(lambda: amazon2023_from_files(r, m, k_core=1), {r: good + reviews, m: meta})
