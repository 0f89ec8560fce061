"""Amazon Reviews loaders: the 2014 release (McAuley lab files) and the 2023 release (Hugging Face hub).

Both produce a :class:`~genrec.data.SequenceDataset` with the standard sequential-recommendation
preprocessing used by SASRec, S3-Rec, P5 and TIGER:

* **k-core filtering** (default k=5): users and items with fewer than k interactions are dropped,
  repeatedly, until every remaining user and item has at least k (:func:`k_core`). Counts are logged.
* **chronological order**: each user's reviews are sorted by time with a *stable* sort, so reviews
  with equal timestamps keep the order of the reviews file (this reproduces the P5/S3-Rec splits).
* user order = first appearance in the reviews; item order = first appearance when reading the
  users' sequences in that order (the P5 numbering).
* items without a metadata entry are kept with empty text and a logged count.
* prices follow :mod:`genrec.data`'s policy: one that is not a single finite non-negative number
  (NaN, a range such as ``"$5.99 - $12.99"``, text) becomes None, with one warning per loader.

Amazon 2014 (``reviews_<Category>_5.json.gz`` one JSON object per line; ``meta_<Category>.json.gz``
one *Python literal* dict per line, parsed with :func:`ast.literal_eval`, never ``eval``) is read
from a cache directory and downloaded there on first use (:func:`load_amazon2014`). The meta fields
``related`` (also-bought lists) and ``imUrl`` are not kept; the raw nested category paths are kept in
``ItemText.extra["category_paths"]``.

Amazon 2023 (``raw_review_<Category>`` / ``raw_meta_<Category>`` of
``McAuley-Lab/Amazon-Reviews-2023``) is keyed by ``parent_asin``; ``store`` becomes the brand and
``main_category`` is prepended to ``categories``; timestamps (milliseconds) are stored in seconds.
The parsing lives in :func:`amazon2023_from_records` / :func:`amazon2023_from_files` so local
JSONL copies (``<Category>.jsonl[.gz]`` and ``meta_<Category>.jsonl[.gz]``, the hub's raw files)
work without the hub.
"""

from __future__ import annotations

import ast
import contextlib
import http.client
import json
import logging
import math
import re
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
from tqdm.auto import tqdm

from genrec.artifacts import atomic_write
from genrec.errors import DataNotFoundError, DatasetUnavailableError
from genrec.paths import default_cache_dir
from genrec.data import DataFormatError, SequenceDataset, build_dataset, order_events
from genrec.item_fields import ItemText, item_text_from_record, parse_timestamp, warn_bad_prices
from genrec.text_files import find_optional_file, is_unicode, iter_jsonl, iter_lines

log = logging.getLogger(__name__)

AMAZON2014_BASE_URL = "https://snap.stanford.edu/data/amazon/productGraph/categoryFiles/"
AMAZON2023_REPO = "McAuley-Lab/Amazon-Reviews-2023"
AMAZON2023_RAW_URL = "https://datarepo.eng.ucsd.edu/mcauley_group/data/amazon_2023/raw/"

Events = dict[str, list[tuple[str, int | float]]]

_META_DROP_2014 = ("related", "imUrl")
_META_DROP_2023 = ("images", "videos", "bought_together")
# `'asin': 'X'` in a meta line, quotes paired: as the dict's first key (the real files' layout, which no
# title can fake; matched at once), else every match in the line is checked (a title may quote such text)
_ASIN_RE = re.compile(r"""(['"])asin\1\s*:\s*(['"])([^'"\\]+)\2""")
_ASIN_FIRST_RE = re.compile(r"""\s*\{\s*(['"])asin\1\s*:\s*(['"])([^'"\\]+)\2""")


# ----------------------------------------------------------------------------------------------
# Shared preprocessing


def k_core(user_events: Events, k: int = 5, name: str = "dataset", source: str = "") -> Events:
    """Drop users and items with fewer than ``k`` interactions, repeatedly, until stable.

    Orders (users, and events within a user) are kept. Logs how many users, items and interactions
    were removed; ``k <= 1`` returns the input unchanged. An empty result is a
    :class:`DataFormatError` naming ``source`` (the reviews file) or else ``name``.
    """
    if k <= 1:
        return user_events
    n_users0 = len(user_events)
    n_inter0 = sum(len(ev) for ev in user_events.values())
    n_items0 = len({i for ev in user_events.values() for i, _ in ev})
    events = user_events
    rounds = 0
    while True:
        rounds += 1
        item_counts = Counter(i for ev in events.values() for i, _ in ev)
        bad_items = {i for i, c in item_counts.items() if c < k}
        bad_users = [u for u, ev in events.items() if len(ev) < k]
        if not bad_items and not bad_users:
            break
        new: Events = {}
        for u, ev in events.items():
            if len(ev) < k:
                continue
            kept = [e for e in ev if e[0] not in bad_items] if bad_items else ev
            if kept:
                new[u] = kept
        events = new
    n_inter = sum(len(ev) for ev in events.values())
    n_items = len({i for ev in events.values() for i, _ in ev})
    log.info("%s: %d-core filtering (%d round(s)) kept %d/%d users, %d/%d items, %d/%d interactions",
             name, k, rounds, len(events), n_users0, n_items, n_items0, n_inter, n_inter0)
    if not events:
        raise DataFormatError(f"{source or name}: no interactions left after {k}-core filtering "
                              f"({n_users0} users, {n_inter0} interactions before)")
    return events


def _finish(name: str, events: Events, item_texts: dict[str, ItemText], source: str) -> SequenceDataset:
    """Dataset from sorted, k-cored events: P5 item order, empty text for items without metadata."""
    dup = sum(len(ev) - len({i for i, _ in ev}) for ev in events.values())
    if dup:
        log.info("%s: %d repeated (user, item) interaction(s) kept", name, dup)
    item_order: list[str] = []
    seen: set[str] = set()
    for ev in events.values():
        for i, _ in ev:
            if i not in seen:
                seen.add(i)
                item_order.append(i)
    missing = [i for i in item_order if i not in item_texts]
    if missing:
        log.warning("%s: %d of %d item(s) have no metadata entry; kept with empty text (e.g. %s)",
                    name, len(missing), len(item_order), missing[:3])
    texts = {i: item_texts.get(i, ItemText()) for i in item_order}
    ds = build_dataset(name, events, texts, item_order=item_order, source=source)
    log.info("loaded %r", ds)
    return ds


# ----------------------------------------------------------------------------------------------
# Downloads


def download(url: str, dest: str | Path, timeout: float = 60.0) -> Path:
    """Download ``url`` to ``dest`` with a progress bar, via a temporary file renamed atomically.

    Raises :class:`DatasetUnavailableError` naming the URL and ``dest`` when the download fails.
    """
    dest = Path(dest)

    def write(tmp: Path) -> None:
        with urllib.request.urlopen(url, timeout=timeout) as resp, open(tmp, "wb") as f:
            total = int(resp.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=dest.name,
                      disable=None) as bar:
                while chunk := resp.read(1 << 20):
                    f.write(chunk)
                    bar.update(len(chunk))

    log.info("downloading %s -> %s", url, dest)
    try:
        atomic_write(dest, write)
    except (OSError, http.client.HTTPException, ValueError) as e:  # URLError/HTTPError/timeouts are OSError
        raise DatasetUnavailableError(
            f"could not download {url} ({type(e).__name__}: {e}). If this machine is offline, download "
            f"the file elsewhere and put it at {dest.resolve()}") from e
    return dest


def _ensure_file(url: str, path: Path, download_ok: bool) -> Path:
    if path.is_file():
        return path
    if not download_ok:
        raise DatasetUnavailableError(f"{path.resolve()} not found (download=False): get {url} and put it "
                                      f"at {path.resolve()}")
    return download(url, path)


# ----------------------------------------------------------------------------------------------
# Amazon 2014


def amazon2014_urls(category: str) -> tuple[str, str]:
    """``(reviews_url, meta_url)`` of an Amazon 2014 category, e.g. ``"Beauty"``."""
    return (f"{AMAZON2014_BASE_URL}reviews_{category}_5.json.gz", f"{AMAZON2014_BASE_URL}meta_{category}.json.gz")


def read_amazon2014_reviews(path: str | Path) -> Events:
    """Read a 2014 reviews file into ``reviewerID -> [(asin, unixReviewTime), ...]`` in file order."""
    path = Path(path)
    users: Events = {}
    for lineno, obj in tqdm(iter_jsonl(path), desc=f"reading {path.name}", unit=" lines", disable=None):
        where = f"{path}:{lineno}"
        missing = [key for key in ("reviewerID", "asin", "unixReviewTime") if _absent(obj.get(key))]
        if missing:
            raise DataFormatError(f"{where}: review lacks field(s) {missing}")
        t = parse_timestamp(obj["unixReviewTime"], where, "unixReviewTime")  # int seconds stay exact
        users.setdefault(_id(obj["reviewerID"], "reviewerID", where), []).append((_id(obj["asin"], "asin", where), t))
    if not users:
        raise DataFormatError(f"{path}: empty file (no reviews)")
    return users


def _absent(value: Any) -> bool:
    return value is None or value == ""


def _id(value: Any, key: str, where: str) -> str:
    """A user or item id: a string or a finite number (not a bool, list or dict, whose text is no id),
    stripped and never empty, as the plain loader reads ids."""
    if isinstance(value, np.integer | np.floating):  # e.g. from a Hugging Face / pandas column
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise DataFormatError(f"{where}: {key!r} must be a string or number, got {type(value).__name__}")
    if isinstance(value, float) and not math.isfinite(value):  # a pandas NaN: no id (it became "nan")
        raise DataFormatError(f"{where}: {key!r} must be a string or finite number, got {value!r}")
    text = str(value).strip()
    if not text:
        raise DataFormatError(f"{where}: {key!r} is empty")
    if not is_unicode(text):
        raise DataFormatError(f"{where}: {key!r} is not valid Unicode (a lone surrogate such as \\ud800)")
    return text


def _parse_literal_line(line: str, where: str) -> dict[str, Any]:
    try:
        obj = ast.literal_eval(line)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):  # TypeError: {[1]: 2}
        try:
            obj = json.loads(line)
        except (ValueError, RecursionError):  # JSONDecodeError is a ValueError
            raise DataFormatError(f"{where}: not a Python-literal or JSON dict") from None
    if not isinstance(obj, dict):
        raise DataFormatError(f"{where}: expected a dict, got {type(obj).__name__}")
    return obj


def read_amazon2014_meta(path: str | Path, asins: set[str] | None = None) -> dict[str, ItemText]:
    """Read a 2014 meta file (Python-literal dicts) into ``asin -> ItemText``.

    With ``asins``, lines of other items are skipped without being parsed. Repeated asins keep the
    first entry (logged count).
    """
    path = Path(path)
    items: dict[str, ItemText] = {}
    bad_prices: list[tuple[str, Any]] = []
    dups = skipped = 0
    with contextlib.closing(iter_lines(path)) as lines:
        for lineno, line in tqdm(lines, desc=f"reading {path.name}", unit=" lines", disable=None):
            if not line.strip():
                continue
            if asins is not None:
                first = _ASIN_FIRST_RE.match(line)
                found = ([first.group(3).strip()] if first is not None
                         else [m.group(3).strip() for m in _ASIN_RE.finditer(line)])
                if found and not any(a in asins for a in found):  # none of them wanted: skip unparsed
                    skipped += 1
                    continue
            where = f"{path}:{lineno}"
            obj = _parse_literal_line(line, where)
            asin = obj.get("asin")
            if _absent(asin):
                raise DataFormatError(f"{where}: meta entry lacks 'asin'")
            asin = _id(asin, "asin", where)
            if asins is not None and asin not in asins:
                skipped += 1
                continue
            if asin in items:
                dups += 1
                continue
            rec = {k: v for k, v in obj.items() if k not in _META_DROP_2014 and k != "asin"}
            if isinstance(obj.get("categories"), list):
                rec["category_paths"] = obj["categories"]
            items[asin] = item_text_from_record(rec, where, bad_prices, asin)
    warn_bad_prices(str(path), bad_prices)
    if skipped:
        log.info("%s: %d meta entr(ies) for items without (k-core) interactions skipped", path, skipped)
    if dups:
        log.warning("%s: %d repeated asin(s) in meta; first entry kept", path, dups)
    return items


def amazon2014_from_files(reviews_path: str | Path, meta_path: str | Path, name: str = "amazon2014",
                          k: int = 5) -> SequenceDataset:
    """Build a dataset from local 2014 reviews and meta files (k-core, stable chronological order)."""
    reviews_path, meta_path = Path(reviews_path), Path(meta_path)
    for p in (reviews_path, meta_path):
        if not p.is_file():
            raise DataNotFoundError(f"{p}: file not found")
    events = read_amazon2014_reviews(reviews_path)
    order_events(events, "timestamp", str(reviews_path))
    events = k_core(events, k, name, str(reviews_path))
    needed = {i for ev in events.values() for i, _ in ev}
    items = read_amazon2014_meta(meta_path, needed)
    return _finish(name, events, items, str(reviews_path))


def load_amazon2014(category: str, cache_dir: str | Path, download: bool = True, k: int = 5) -> SequenceDataset:
    """Load an Amazon 2014 category (e.g. ``"Beauty"``) from ``cache_dir``, downloading missing files.

    Offline or with ``download=False``, a missing file raises :class:`DatasetUnavailableError`
    naming its URL and the exact path to put it at.
    """
    reviews, meta = fetch_amazon2014(category, cache_dir, download)
    return amazon2014_from_files(reviews, meta, name=f"amazon2014-{category}", k=k)


def fetch_amazon2014(category: str, cache_dir: str | Path, download: bool = True) -> tuple[Path, Path]:
    """``(reviews, meta)`` paths of an Amazon 2014 category in ``cache_dir``, downloading missing files
    (:class:`DatasetUnavailableError` when that fails or ``download=False``)."""
    cache_dir = Path(cache_dir)
    reviews_url, meta_url = amazon2014_urls(category)
    return (_ensure_file(reviews_url, cache_dir / f"reviews_{category}_5.json.gz", download),
            _ensure_file(meta_url, cache_dir / f"meta_{category}.json.gz", download))


# ----------------------------------------------------------------------------------------------
# Amazon 2023


def _records(records: Iterable[dict[str, Any]], label: str) -> Iterator[tuple[str, dict[str, Any]]]:
    for n, rec in enumerate(records, start=1):
        yield f"{label} record {n}", rec


def _jsonl_records(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    for lineno, obj in iter_jsonl(path):
        yield f"{path}:{lineno}", obj


def _meta2023_text(rec: dict[str, Any], where: str, bad_prices: list[tuple[str, Any]], pid: str) -> ItemText:
    cats = rec.get("categories") or []
    if isinstance(cats, str):
        cats = [cats]
    if not isinstance(cats, list):
        raise DataFormatError(f"{where}: field 'categories' must be a list, got {type(cats).__name__}")
    main = rec.get("main_category")
    r = {k: v for k, v in rec.items() if k not in _META_DROP_2023 and k not in ("parent_asin", "store")}
    r["brand"] = rec.get("store")
    r["categories"] = ([main] if isinstance(main, str) and main.strip() else []) + list(cats)
    return item_text_from_record(r, where, bad_prices, pid)


def _amazon2023(reviews: Iterable[tuple[str, dict[str, Any]]], meta: Iterable[tuple[str, dict[str, Any]]],
                name: str, k_core_: int, source: str) -> SequenceDataset:
    events: Events = {}
    for where, rec in tqdm(reviews, desc=f"{name} reviews", unit=" reviews", disable=None):
        if not isinstance(rec, dict):
            raise DataFormatError(f"{where}: expected a dict, got {type(rec).__name__}")
        missing = [key for key in ("user_id", "parent_asin", "timestamp") if _absent(rec.get(key))]
        if missing:
            raise DataFormatError(f"{where}: review lacks field(s) {missing}")
        t = parse_timestamp(rec["timestamp"], where) / 1000.0  # milliseconds -> seconds
        events.setdefault(_id(rec["user_id"], "user_id", where), []).append(
            (_id(rec["parent_asin"], "parent_asin", where), t))
    if not events:
        raise DataFormatError(f"{source}: no reviews")
    order_events(events, "timestamp", source)
    events = k_core(events, k_core_, name, source)
    needed = {i for ev in events.values() for i, _ in ev}
    items: dict[str, ItemText] = {}
    bad_prices: list[tuple[str, Any]] = []
    dups = skipped = 0
    for where, rec in tqdm(meta, desc=f"{name} meta", unit=" items", disable=None):
        if not isinstance(rec, dict):
            raise DataFormatError(f"{where}: expected a dict, got {type(rec).__name__}")
        pid = rec.get("parent_asin")
        if _absent(pid):
            raise DataFormatError(f"{where}: meta entry lacks 'parent_asin'")
        pid = _id(pid, "parent_asin", where)
        if pid not in needed:
            skipped += 1
            continue
        if pid in items:
            dups += 1
            continue
        items[pid] = _meta2023_text(rec, where, bad_prices, pid)
    warn_bad_prices(name, bad_prices)
    if skipped:
        log.info("%s: %d meta entr(ies) for items without (k-core) interactions skipped", name, skipped)
    if dups:
        log.warning("%s: %d repeated parent_asin(s) in meta; first entry kept", name, dups)
    return _finish(name, events, items, source)


def amazon2023_from_records(reviews: Iterable[dict[str, Any]], meta: Iterable[dict[str, Any]],
                            name: str = "amazon2023", k_core: int = 5) -> SequenceDataset:
    """Build a dataset from Amazon 2023 review and meta records (dicts of the hub schema).

    Items are keyed by ``parent_asin``; errors name the record number (1-based) in its stream.
    """
    return _amazon2023(_records(reviews, f"{name} reviews"), _records(meta, f"{name} meta"), name, k_core,
                       f"{name} reviews")


def amazon2023_from_files(reviews_path: str | Path, meta_path: str | Path, name: str | None = None,
                          k_core: int = 5) -> SequenceDataset:
    """Build a dataset from local Amazon 2023 JSONL files (the hub's raw ``.jsonl[.gz]`` files)."""
    reviews_path, meta_path = Path(reviews_path), Path(meta_path)
    for p in (reviews_path, meta_path):
        if not p.is_file():
            raise DataNotFoundError(f"{p}: file not found")
    name = name or f"amazon2023-{reviews_path.name.split('.')[0]}"
    return _amazon2023(_jsonl_records(reviews_path), _jsonl_records(meta_path), name, k_core, str(reviews_path))


def _local_2023(cache_dir: Path, category: str) -> tuple[Path, Path] | None:
    reviews = find_optional_file(cache_dir, f"{category}.jsonl")
    meta = find_optional_file(cache_dir, f"meta_{category}.jsonl")
    return (reviews, meta) if reviews and meta else None


def _hub_2023(kind: str, category: str, cache_dir: Path, columns: list[str] | None) -> Any:
    """Load ``raw_<kind>_<category>`` from the hub; tries the named config, then its parquet files."""
    import datasets  # the Hugging Face library (not genrec.datasets)

    config = f"raw_{kind}_{category}"
    errors = []
    attempts = [
        lambda: datasets.load_dataset(AMAZON2023_REPO, config, split="full", cache_dir=str(cache_dir)),
        lambda: datasets.load_dataset("parquet",
                                      data_files={"full": f"hf://datasets/{AMAZON2023_REPO}/{config}/*.parquet"},
                                      split="full", cache_dir=str(cache_dir)),
    ]
    for attempt in attempts:
        try:
            ds = attempt()
            break
        except Exception as e:  # noqa: BLE001 - any hub failure is reported below with both causes
            errors.append(f"{type(e).__name__}: {e}")
    else:
        raise DatasetUnavailableError("; ".join(errors))
    if columns:
        ds = ds.select_columns([c for c in columns if c in ds.column_names])
    return ds


def load_amazon2023(category: str, cache_dir: str | Path | None = None, k_core: int = 5) -> SequenceDataset:
    """Load an Amazon 2023 category (e.g. ``"All_Beauty"``): local JSONL files in ``cache_dir`` if
    present, else the Hugging Face hub (``McAuley-Lab/Amazon-Reviews-2023``).

    A failed hub load raises :class:`DatasetUnavailableError` saying how to supply local files.
    """
    if cache_dir is None:
        cache_dir = default_cache_dir() / "amazon2023"
    cache_dir = Path(cache_dir)
    name = f"amazon2023-{category}"
    local = _local_2023(cache_dir, category)
    if local is not None:
        log.info("%s: using local files %s and %s", name, *local)
        return amazon2023_from_files(local[0], local[1], name=name, k_core=k_core)
    try:
        reviews = _hub_2023("review", category, cache_dir, ["user_id", "parent_asin", "timestamp"])
        meta = _hub_2023("meta", category, cache_dir, None)
    except DatasetUnavailableError as e:
        raise DatasetUnavailableError(
            f"could not load {name} from the Hugging Face hub ({AMAZON2023_REPO}, configs raw_review_{category} "
            f"and raw_meta_{category}): {e}. Without hub access, download "
            f"{AMAZON2023_RAW_URL}review_categories/{category}.jsonl.gz and "
            f"{AMAZON2023_RAW_URL}meta_categories/meta_{category}.jsonl.gz and put them at "
            f"{(cache_dir / f'{category}.jsonl.gz').resolve()} and "
            f"{(cache_dir / f'meta_{category}.jsonl.gz').resolve()} "
            f"(or call genrec.amazon.amazon2023_from_files)") from e
    return _amazon2023(_records(reviews, f"{name} reviews"), _records(meta, f"{name} meta"), name, k_core,
                       f"{AMAZON2023_REPO}/raw_review_{category}")


__all__ = [
    "DatasetUnavailableError", "k_core", "download",
    "amazon2014_urls", "read_amazon2014_reviews", "read_amazon2014_meta", "amazon2014_from_files",
    "load_amazon2014",
    "amazon2023_from_records", "amazon2023_from_files", "load_amazon2023",
]
