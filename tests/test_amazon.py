"""Amazon 2014 / 2023 loaders on tiny local files of the real schema (no network)."""

from __future__ import annotations

import gzip
import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest

from genrec import amazon
from genrec.amazon import (
    DatasetUnavailableError,
    amazon2014_from_files,
    amazon2023_from_files,
    amazon2023_from_records,
    k_core,
    load_amazon2014,
    load_amazon2023,
)
from genrec.data import DataFormatError
from genrec.datasets import default_cache_dir, load_dataset


def write_gz(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return path


def review14(user: str, asin: str, t: int) -> str:
    return json.dumps({"reviewerID": user, "asin": asin, "reviewerName": "J. Doe", "helpful": [0, 0],
                       "reviewText": "fine", "overall": 5.0, "summary": "ok", "unixReviewTime": t,
                       "reviewTime": "01 01, 2014"})


# file order; k=2 keeps U1..U3 and items A, B, C (D and U4/E fall out)
REVIEWS14 = [
    review14("U1", "B", 200), review14("U2", "A", 50), review14("U1", "A", 100), review14("U1", "C", 200),
    review14("U2", "C", 60), review14("U3", "B", 10), review14("U3", "A", 20), review14("U3", "D", 30),
    review14("U4", "E", 5), review14("U2", "B", 70),
]
META14 = [
    # the real meta files are Python literals: single quotes, nested category paths
    """{'asin': 'A', 'title': "L'Oreal Paris Colour Riche Lipstick", 'price': 12.5, 'imUrl': 'http://x/a.jpg', """
    """'related': {'also_bought': ['B', 'X'], 'bought_together': ['C']}, 'salesRank': {'Beauty': 1234}, """
    """'brand': "L'Oreal Paris", 'categories': [['Beauty', 'Makeup', 'Lips'], ['Beauty', 'Skin Care']], """
    """'description': 'A lipstick.'}""",
    "{'asin': 'X', 'title': 'Unrelated item', 'categories': [['Beauty']]}",
    # a JSON-style line (true/null are not Python literals): parsed by the json fallback
    '{"asin": "B", "title": "Shampoo", "price": null, "categories": [["Beauty", "Hair Care"]], "flag": true}',
    "{'asin': 'D', 'title': 'Filtered out'}",
]


@pytest.fixture
def files14(tmp_path):
    return (write_gz(tmp_path / "reviews_Beauty_5.json.gz", REVIEWS14),
            write_gz(tmp_path / "meta_Beauty.json.gz", META14))


def seqs(ds):
    return {ds.user_ids[u]: [ds.item_ids[i] for i in s] for u, s in enumerate(ds.sequences)}


# ----------------------------------------------------------------------------------------------
# k-core


def test_k_core_is_iterative_and_keeps_order(caplog):
    events = {
        "u1": [("A", 1), ("B", 2), ("C", 3)],
        "u2": [("A", 1), ("B", 2)],
        "u3": [("A", 1), ("D", 2)],  # D is rare -> u3 falls below k
        "u4": [("C", 1), ("E", 2)],  # E is rare -> u4 falls below k -> C becomes rare -> u1 loses C
    }
    with caplog.at_level(logging.INFO, logger="genrec.amazon"):
        out = k_core(events, 2, "toy")
    assert out == {"u1": [("A", 1), ("B", 2)], "u2": [("A", 1), ("B", 2)]}
    assert "kept 2/4 users, 2/5 items, 4/9 interactions" in caplog.text
    assert k_core(events, 1) is events
    with pytest.raises(DataFormatError, match="no interactions left after 5-core"):
        k_core(events, 5, "toy")


# ----------------------------------------------------------------------------------------------
# Amazon 2014


def test_amazon2014_parsing_order_and_meta(files14, caplog):
    with caplog.at_level(logging.INFO, logger="genrec.amazon"):
        ds = amazon2014_from_files(*files14, name="toy", k=2)
    # users in first-appearance order; per user stable time sort (B and C tie at 200: file order)
    assert seqs(ds) == {"U1": ["A", "B", "C"], "U2": ["A", "C", "B"], "U3": ["B", "A"]}
    assert ds.user_ids == ["U1", "U2", "U3"]
    assert ds.item_ids == ["A", "B", "C"]  # first appearance in the sequences (P5 numbering)
    assert ds.timestamps[0].tolist() == [100, 200, 200]
    a = ds.items[ds.item_index["A"]]
    assert a.title == "L'Oreal Paris Colour Riche Lipstick" and a.brand == "L'Oreal Paris"
    assert a.categories == ("Beauty", "Makeup", "Lips", "Skin Care")
    assert a.extra["category_paths"] == [["Beauty", "Makeup", "Lips"], ["Beauty", "Skin Care"]]
    assert a.price == 12.5 and a.description == "A lipstick." and a.extra["salesRank"] == {"Beauty": 1234}
    assert "related" not in a.extra and "asin" not in a.extra
    b = ds.items[ds.item_index["B"]]
    assert b.title == "Shampoo" and b.price is None and b.categories == ("Beauty", "Hair Care")
    assert ds.items[ds.item_index["C"]].is_empty()  # no meta entry: kept with empty text
    assert "1 of 3 item(s) have no metadata entry" in caplog.text
    assert "2-core filtering" in caplog.text
    assert "2 meta entr(ies) for items without (k-core) interactions skipped" in caplog.text


def test_load_amazon2014_from_cache_without_network(files14, tmp_path, monkeypatch):
    def no_network(*a, **k):
        raise AssertionError("must not download when the files are cached")

    monkeypatch.setattr(amazon, "download", no_network)
    ds = load_amazon2014("Beauty", tmp_path, k=2)
    assert ds.name == "amazon2014-Beauty" and ds.num_interactions == 8
    # the spec resolver looks in <cache>/amazon2014
    cache = tmp_path / "cache"
    (cache / "amazon2014").mkdir(parents=True)
    for f in files14:
        f.rename(cache / "amazon2014" / f.name)
    assert load_dataset("amazon2014:Beauty", cache_dir=cache, k=2).num_interactions == 8


def test_amazon2014_default_k_is_5(files14):
    with pytest.raises(DataFormatError, match="no interactions left after 5-core"):
        amazon2014_from_files(*files14)


def test_amazon2014_missing_file_without_download(tmp_path):
    with pytest.raises(DatasetUnavailableError) as e:
        load_amazon2014("Beauty", tmp_path / "c", download=False)
    msg = str(e.value)
    assert "https://snap.stanford.edu/data/amazon/productGraph/categoryFiles/reviews_Beauty_5.json.gz" in msg
    assert str((tmp_path / "c" / "reviews_Beauty_5.json.gz").resolve()) in msg


def test_amazon2014_download_failure_names_url_and_path(tmp_path, monkeypatch):
    # an unreachable local address: the download fails at once, no outside network is used
    monkeypatch.setattr(amazon, "AMAZON2014_BASE_URL", "http://127.0.0.1:9/files/")
    with pytest.raises(DatasetUnavailableError) as e:
        load_amazon2014("Beauty", tmp_path / "c")
    msg = str(e.value)
    assert "http://127.0.0.1:9/files/reviews_Beauty_5.json.gz" in msg
    assert str((tmp_path / "c" / "reviews_Beauty_5.json.gz").resolve()) in msg
    assert "offline" in msg
    assert not list((tmp_path / "c").glob("*"))  # no partial file left behind


def test_download_is_atomic_and_complete(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"x" * 300_000)
    dest = amazon.download(src.as_uri(), tmp_path / "out" / "copy.bin")
    assert dest.read_bytes() == src.read_bytes()
    assert [p.name for p in dest.parent.iterdir()] == ["copy.bin"]


def test_amazon2014_bad_review_line_names_line(tmp_path, files14):
    bad = write_gz(tmp_path / "bad.json.gz", REVIEWS14[:2] + ['{"reviewerID": "U9", "asin": "A"}'])
    with pytest.raises(DataFormatError, match=r"bad\.json\.gz:3: review lacks field\(s\) \['unixReviewTime'\]"):
        amazon2014_from_files(bad, files14[1], k=1)
    bad = write_gz(tmp_path / "bad2.json.gz", REVIEWS14[:1] + ["{not json"])
    with pytest.raises(DataFormatError, match=r"bad2\.json\.gz:2: malformed JSON"):
        amazon2014_from_files(bad, files14[1], k=1)
    bad = write_gz(tmp_path / "bad3.json.gz", [json.dumps({"reviewerID": "U1", "asin": "A", "unixReviewTime": "soon"})])
    with pytest.raises(DataFormatError, match=r"bad3\.json\.gz:1: unixReviewTime 'soon' is not a number"):
        amazon2014_from_files(bad, files14[1], k=1)


def test_amazon2014_bad_meta_line_names_line(tmp_path, files14):
    meta = write_gz(tmp_path / "meta_bad.json.gz", META14[:1] + ["{'asin': 'B', 'title': oops}"])
    with pytest.raises(DataFormatError, match=r"meta_bad\.json\.gz:2: not a Python-literal or JSON dict"):
        amazon2014_from_files(files14[0], meta, k=2)
    meta = write_gz(tmp_path / "meta_noasin.json.gz", ["{'title': 'no asin'}"])
    with pytest.raises(DataFormatError, match=r"meta_noasin\.json\.gz:1: meta entry lacks 'asin'"):
        amazon2014_from_files(files14[0], meta, k=2)


def test_amazon2014_missing_local_file(tmp_path, files14):
    with pytest.raises(FileNotFoundError, match="nothere"):
        amazon2014_from_files(tmp_path / "nothere.json.gz", files14[1])


# ----------------------------------------------------------------------------------------------
# Amazon 2023


def review23(user: str, parent: str, t_ms: int, asin: str | None = None) -> dict:
    return {"rating": 4.0, "title": "t", "text": "x", "images": [], "asin": asin or parent, "parent_asin": parent,
            "user_id": user, "timestamp": t_ms, "helpful_vote": 0, "verified_purchase": True}


REVIEWS23 = [
    review23("u1", "P2", 2000, asin="P2-red"), review23("u1", "P1", 1000), review23("u2", "P1", 5000),
    review23("u1", "P3", 2000), review23("u2", "P2", 4000, asin="P2-blue"), review23("u2", "P3", 6000),
    review23("u3", "P9", 1),  # u3 and P9 fall out of the 2-core
]
META23 = [
    {"main_category": "All Beauty", "title": "Rose Serum", "average_rating": 4.5, "rating_number": 10,
     "features": ["light"], "description": ["Line one.", "Line two."], "price": 12.99, "images": [{"large": "u"}],
     "videos": [], "store": "Acme", "categories": ["Skin Care", "Serums"], "details": {"Size": "30ml"},
     "parent_asin": "P1", "bought_together": None},
    {"main_category": "All Beauty", "title": "Mint Shampoo", "description": [], "price": "None", "store": None,
     "categories": [], "details": "{}", "parent_asin": "P2"},
    {"main_category": None, "title": "Never reviewed", "parent_asin": "P7", "price": None},
]


def test_amazon2023_from_records():
    ds = amazon2023_from_records(REVIEWS23, META23, name="toy", k_core=2)
    assert ds.user_ids == ["u1", "u2"]
    assert seqs(ds) == {"u1": ["P1", "P2", "P3"], "u2": ["P2", "P1", "P3"]}  # P2/P3 tie at 2s: record order
    assert ds.timestamps[0].tolist() == [1.0, 2.0, 2.0]  # milliseconds -> seconds
    p1 = ds.items[ds.item_index["P1"]]
    assert p1.title == "Rose Serum" and p1.brand == "Acme" and p1.price == 12.99
    assert p1.categories == ("All Beauty", "Skin Care", "Serums")
    assert p1.description == "Line one. Line two."
    assert p1.extra["details"] == {"Size": "30ml"} and p1.extra["features"] == ["light"]
    assert "images" not in p1.extra and "parent_asin" not in p1.extra
    p2 = ds.items[ds.item_index["P2"]]
    assert p2.brand is None and p2.price is None and p2.categories == ("All Beauty",) and p2.description is None
    assert ds.items[ds.item_index["P3"]].is_empty()  # no meta entry


def test_amazon2023_bad_records_name_the_record():
    bad = REVIEWS23[:2] + [{"user_id": "u9", "timestamp": 5}]
    with pytest.raises(DataFormatError, match=r"toy reviews record 3: review lacks field\(s\) \['parent_asin'\]"):
        amazon2023_from_records(bad, META23, name="toy", k_core=1)
    with pytest.raises(DataFormatError, match=r"toy meta record 2: meta entry lacks 'parent_asin'"):
        amazon2023_from_records(REVIEWS23, [META23[0], {"title": "x"}], name="toy", k_core=2)
    bad_ts = REVIEWS23[:1] + [dict(REVIEWS23[1], timestamp="later")]
    with pytest.raises(DataFormatError, match=r"record 2: timestamp 'later' is not a number"):
        amazon2023_from_records(bad_ts, META23, name="toy", k_core=1)


def test_amazon_ids_are_read_as_the_plain_loader_reads_them():
    """Stripped ids (" u1" and "u1" were two users); a blank, NaN or lone-surrogate id is refused (NaN
    became the user "nan")."""
    padded = [dict(r, user_id=f" {r['user_id']} ", parent_asin=f"{r['parent_asin']} ") for r in REVIEWS23]
    ds = amazon2023_from_records(padded, META23, name="toy", k_core=2)
    assert ds.user_ids == ["u1", "u2"] and ds.items[ds.item_index["P1"]].title == "Rose Serum"
    for bad, says in ((" ", "'user_id' is empty"), (float("nan"), "'user_id' must be a string or finite number"),
                      ("u\ud800", "'user_id' is not valid Unicode")):
        with pytest.raises(DataFormatError, match=rf"toy reviews record 1: {says}"):
            amazon2023_from_records([dict(REVIEWS23[0], user_id=bad)] + REVIEWS23[1:], META23, name="toy", k_core=1)


def test_amazon2014_meta_line_quoting_an_asin_in_its_title_is_still_read(tmp_path, files14):
    """The pre-filter that skips unwanted meta lines unparsed read the first `'asin': '...'` in the line,
    which a title can quote: the item lost its text silently."""
    meta = write_gz(tmp_path / "meta_quoted.json.gz", [
        """{'title': "asin': 'X", 'asin': 'A', 'brand': 'Acme'}""", *META14[1:]])
    ds = amazon2014_from_files(files14[0], meta, name="toy", k=2)
    assert ds.items[ds.item_index["A"]].brand == "Acme"


def write_jsonl_gz(path: Path, records: list[dict]) -> Path:
    return write_gz(path, [json.dumps(r) for r in records])


def test_amazon2023_from_files_and_local_cache(tmp_path, monkeypatch):
    r = write_jsonl_gz(tmp_path / "All_Beauty.jsonl.gz", REVIEWS23)
    m = write_jsonl_gz(tmp_path / "meta_All_Beauty.jsonl.gz", META23)
    ds = amazon2023_from_files(r, m, k_core=2)
    assert ds.name == "amazon2023-All_Beauty"
    assert seqs(ds) == {"u1": ["P1", "P2", "P3"], "u2": ["P2", "P1", "P3"]}

    import datasets

    def no_hub(*a, **k):
        raise AssertionError("local files must be used before the hub")

    monkeypatch.setattr(datasets, "load_dataset", no_hub)
    assert seqs(load_amazon2023("All_Beauty", tmp_path, k_core=2)) == seqs(ds)
    cache = tmp_path / "cache" / "amazon2023"
    cache.mkdir(parents=True)
    r.rename(cache / r.name)
    m.rename(cache / m.name)
    assert load_dataset("amazon2023:All_Beauty", cache_dir=tmp_path / "cache", k_core=2).num_interactions == 6
    bad = write_gz(tmp_path / "bad.jsonl.gz", [json.dumps(REVIEWS23[0]), "[1, 2]"])
    with pytest.raises(DataFormatError, match=r"bad\.jsonl\.gz:2: expected a JSON object"):
        amazon2023_from_files(bad, cache / m.name)


def test_amazon2023_hub_failure_says_how_to_supply_files(tmp_path, monkeypatch):
    import datasets

    calls = []

    def offline(*a, **k):
        calls.append(a)
        raise ConnectionError("Couldn't reach 'McAuley-Lab/Amazon-Reviews-2023' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DatasetUnavailableError) as e:
        load_amazon2023("All_Beauty", tmp_path / "c")
    msg = str(e.value)
    assert "Hugging Face hub" in msg and "raw_review_All_Beauty" in msg and "Couldn't reach" in msg
    assert "review_categories/All_Beauty.jsonl.gz" in msg and "meta_categories/meta_All_Beauty.jsonl.gz" in msg
    assert str((tmp_path / "c" / "All_Beauty.jsonl.gz").resolve()) in msg
    assert calls and calls[0][0] == "McAuley-Lab/Amazon-Reviews-2023"


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("GENREC_CACHE", str(tmp_path / "gc"))
    assert default_cache_dir() == tmp_path / "gc"
    monkeypatch.delenv("GENREC_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "genrec"


def test_amazon_spec_needs_category():
    with pytest.raises(ValueError, match="missing category"):
        load_dataset("amazon2014:")


# ----------------------------------------------------------------------------------------------
# bad files and the price policy


def test_amazon2014_truncated_or_non_utf8_files_name_file_and_line(tmp_path, files14):
    reviews = [review14(f"U{k % 50}", f"A{k % 7}", 1_400_000_000 + k) for k in range(3000)]
    full = write_gz(tmp_path / "reviews_big.json.gz", reviews).read_bytes()
    cut = tmp_path / "reviews_cut.json.gz"
    cut.write_bytes(full[: len(full) // 2])
    with pytest.raises(DataFormatError) as e:
        amazon2014_from_files(cut, files14[1], k=1)
    m = re.fullmatch(r".*reviews_cut\.json\.gz:(\d+): truncated or corrupt gzip file \(the compressed data ends "
                     r"before its end-of-stream marker; (\d+) complete line\(s\) read\); re-download or re-create it",
                     str(e.value))
    assert m and int(m.group(1)) == int(m.group(2)) + 1 and 10 < int(m.group(1)) < 3000, str(e.value)
    meta = tmp_path / "meta_latin1.json.gz"
    text = "\n".join(META14[:2]) + "\n{'asin': 'B', 'title': 'Cr\xe8me'}\n"
    meta.write_bytes(gzip.compress(text.encode("latin-1")))
    with pytest.raises(DataFormatError, match=r"meta_latin1\.json\.gz:3: not valid UTF-8 \(byte 0xe8 at decompressed "
                                              r"byte offset \d+; save the file as UTF-8\)"):
        amazon2014_from_files(files14[0], meta, k=2)


def test_amazon2014_integer_times_exact_and_k_core_error_names_file(tmp_path, files14):
    rev = write_gz(tmp_path / "reviews_ns.json.gz", [
        json.dumps({"reviewerID": "U", "asin": "A", "unixReviewTime": 1700000000123456790}),
        json.dumps({"reviewerID": "U", "asin": "B", "unixReviewTime": "1700000000123456789"})])
    ds = amazon2014_from_files(rev, files14[1], k=1)
    assert ds.timestamps[0].dtype == np.int64 and seqs(ds) == {"U": ["B", "A"]}
    assert ds.timestamps[0].tolist() == [1700000000123456789, 1700000000123456790]
    with pytest.raises(DataFormatError, match=r"reviews_ns\.json\.gz: no interactions left after 5-core filtering"):
        amazon2014_from_files(rev, files14[1])


def test_amazon_bad_ids_name_the_line(tmp_path, files14):
    rev = write_gz(tmp_path / "reviews_id.json.gz", [json.dumps({"reviewerID": ["U"], "asin": "A",
                                                                  "unixReviewTime": 1})])
    with pytest.raises(DataFormatError, match=r"reviews_id\.json\.gz:1: 'reviewerID' must be a string or number, "
                                              r"got list"):
        amazon2014_from_files(rev, files14[1], k=1)
    meta = write_gz(tmp_path / "meta_key.json.gz", ["{[1]: 2}"])  # an unhashable key: TypeError in literal_eval
    with pytest.raises(DataFormatError, match=r"meta_key\.json\.gz:1: not a Python-literal or JSON dict"):
        amazon2014_from_files(files14[0], meta, k=2)


def test_amazon2014_price_policy(tmp_path, files14, caplog):
    meta = write_gz(tmp_path / "meta_prices.json.gz", [
        "{'asin': 'A', 'title': 'a', 'price': 'nan'}",
        "{'asin': 'B', 'title': 'b', 'price': '$5.99 - $12.99'}",
        "{'asin': 'C', 'title': 'c', 'price': 4.25}"])
    with caplog.at_level(logging.WARNING, logger="genrec"):
        ds = amazon2014_from_files(files14[0], meta, k=2)
    assert [ds.items[ds.item_index[i]].price for i in "ABC"] == [None, None, 4.25]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [f"{meta}: 2 item(s) have a price that is not one finite non-negative number; price left "
                        "missing (e.g. A ('nan'), B ('$5.99 - $12.99'))"]


def test_amazon2023_price_policy(caplog):
    meta = [dict(META23[0], price=float("nan")), dict(META23[1], price="$5.99 - $12.99"),
            {"parent_asin": "P3", "price": "None"}]
    with caplog.at_level(logging.WARNING, logger="genrec"):
        ds = amazon2023_from_records(REVIEWS23, meta, name="toy", k_core=2)
    assert [ds.items[ds.item_index[i]].price for i in ("P1", "P2", "P3")] == [None, None, None]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ["toy: 2 item(s) have a price that is not one finite non-negative number; price left missing "
                        "(e.g. P1 (nan), P2 ('$5.99 - $12.99'))"]


def test_a_recipe_fetches_a_downloaded_dataset_before_fingerprinting_it(tmp_path, monkeypatch):
    """A first run on an Amazon 2014 category downloads it before any stage records the data's
    fingerprint, so running again (a resume) finds the data unchanged and skips the finished stages."""
    from genrec.recipe import StopAfterStage, config_from_dict, run_recipe
    from genrec.rundir import data_fingerprint

    users, items = [f"U{u}" for u in range(6)], [f"I{i}" for i in range(6)]  # everyone bought everything: 5-core
    served = []

    def fake_download(url: str, dest, timeout: float = 60.0):
        served.append(url)
        lines = ([review14(u, i, 100 * n + m) for n, u in enumerate(users) for m, i in enumerate(items)]
                 if "reviews_" in url else [f"{{'asin': '{i}', 'title': 'Item {i}'}}" for i in items])
        return write_gz(Path(dest), lines)

    monkeypatch.setattr(amazon, "download", fake_download)
    cache = tmp_path / "cache"
    config = config_from_dict({"data": {"dataset": "amazon2014:Toys", "cache_dir": str(cache)},
                               "fusion": {"k": 5, "beam": 5}, "report": {"ks": [5], "metric": "ndcg@5"}})
    events: dict[str, str] = {}
    with pytest.raises(StopAfterStage):
        run_recipe(config, tmp_path / "run", stop_after="data", on_stage=lambda n, e, i: events.__setitem__(n, e))
    assert len(served) == 2 and events["data"] == "done"
    marker = json.loads((tmp_path / "run" / "data" / "stage.done.json").read_text())
    fingerprint = data_fingerprint("amazon2014:Toys", cache)
    assert len(fingerprint["files"]) == 2 and marker["hashed"]["config"]["data"]["fingerprint"] == fingerprint
    with pytest.raises(StopAfterStage):
        run_recipe(config, tmp_path / "run", stop_after="data", on_stage=lambda n, e, i: events.__setitem__(n, e))
    assert events["data"] == "skip" and len(served) == 2
