"""The in-memory sequential dataset and the plain directory format loader.

A :class:`SequenceDataset` holds the item vocabulary, each user's chronological item
sequence (item indices, file order kept for timestamp ties) and each item's text fields.
Every loader in genrec (plain format, Amazon 2014, Amazon 2023, synthetic) returns one.

Plain directory format (what users bring for their own data)::

    interactions.tsv[.gz]   header ``user_id<TAB>item_id<TAB>timestamp``; rows of one user are in
                            chronological order (ties keep file order)
    items.jsonl[.gz]        one JSON object per item: ``item_id`` plus any of ``title``, ``brand``,
                            ``categories`` (list or string), ``description``, ``price``

Files are UTF-8 (a leading byte-order mark is skipped). Timestamps written as integers stay exact
(``int64``, e.g. epoch nanoseconds); if any is written as a decimal, all are ``float64``. Price
policy (every loader, :mod:`genrec.item_fields`): an absent price is None; a price that is not one
finite non-negative number (NaN, inf, a range such as ``"$5.99 - $12.99"``, text) is None too, and the
loader logs one warning with the count and the first item ids.

Loading is vectorised (:class:`InteractionColumns`, :func:`build_dataset_columns`): files are read in
bulk with pyarrow and grouped and sorted with numpy, so that millions of rows take seconds. The
line-by-line readers stay the reference: any file the bulk readers cannot prove they read the same
way (``\r`` line ends, blank lines of spaces, unusual numbers, any error) goes through them, so that
results are the same either way and errors name the line. Items without any text share one empty
:class:`ItemText`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from genrec.columns import (InteractionColumns, factorize_ids, parse_time_strings,
                            read_delimited_columns, simple_text_bytes, split_header)
from genrec.errors import DataFormatError, DataNotFoundError
from genrec.item_fields import (TEXT_FIELDS, ItemText, format_timestamp, item_text_from_record, parse_timestamp,
                                warn_bad_prices)
from genrec.text_files import find_file, is_unicode, iter_jsonl, iter_lines

log = logging.getLogger(__name__)

@dataclass
class SequenceDataset:
    """Items, users and chronological user sequences.

    Item and user *indices* are 0-based positions into ``item_ids`` / ``user_ids``; the raw ids
    are kept for export. ``sequences[u]`` is an int64 array of item indices, oldest first.
    """

    name: str
    item_ids: list[str]
    user_ids: list[str]
    sequences: list[np.ndarray]
    items: list[ItemText]
    timestamps: list[np.ndarray] | None = None

    def __post_init__(self) -> None:
        if len(self.items) != len(self.item_ids):
            raise ValueError(f"{self.name}: {len(self.items)} item texts for {len(self.item_ids)} items")
        if len(self.sequences) != len(self.user_ids):
            raise ValueError(f"{self.name}: {len(self.sequences)} sequences for {len(self.user_ids)} users")
        self.item_index = {iid: i for i, iid in enumerate(self.item_ids)}
        if len(self.item_index) != len(self.item_ids):
            raise ValueError(f"{self.name}: duplicate item ids")
        self.user_index = {uid: u for u, uid in enumerate(self.user_ids)}

    @property
    def num_items(self) -> int:
        return len(self.item_ids)

    @property
    def num_users(self) -> int:
        return len(self.user_ids)

    @property
    def num_interactions(self) -> int:
        return int(sum(len(s) for s in self.sequences))

    def stats(self) -> dict[str, float]:
        lengths = np.array([len(s) for s in self.sequences])
        return {
            "users": self.num_users,
            "items": self.num_items,
            "interactions": self.num_interactions,
            "mean_sequence_length": float(lengths.mean()) if len(lengths) else 0.0,
            "min_sequence_length": int(lengths.min()) if len(lengths) else 0,
            "max_sequence_length": int(lengths.max()) if len(lengths) else 0,
        }

    def __repr__(self) -> str:
        s = self.stats()
        return (f"SequenceDataset({self.name!r}, users={s['users']}, items={s['items']}, "
                f"interactions={s['interactions']})")


# ----------------------------------------------------------------------------------------------
# Construction helpers shared by all loaders


def build_dataset(
    name: str,
    user_events: dict[str, list[tuple[str, float]]],
    item_texts: dict[str, ItemText],
    item_order: Sequence[str] | None = None,
    source: str = "",
    keep_unused: bool = False,
) -> SequenceDataset:
    """Make a dataset from per-user ``(item_id, timestamp)`` lists already in chronological order.

    Every interacted item must have a text entry (else :class:`DataFormatError` naming the id).
    Items with text but no interaction are left out of the vocabulary, with a logged count, unless
    ``keep_unused``: then they stay in the catalogue after the interacted ones (in ``item_texts``
    order), so they get semantic IDs and the generative model can recommend them.
    ``item_order`` fixes item indices (default: order of ``item_texts``).
    """
    used: set[str] = set()
    for events in user_events.values():
        used.update(i for i, _ in events)
    unknown = sorted(used.difference(item_texts))
    if unknown:
        raise DataFormatError(f"{source or name}: {len(unknown)} interacted item(s) have no item entry, "
                              f"e.g. {unknown[:5]}")
    order = list(item_order) if item_order is not None else list(item_texts)
    item_ids = [i for i in order if i in used]
    if len(item_ids) != len(used):
        missing = sorted(used.difference(item_ids))[:5]
        raise DataFormatError(f"{source or name}: item_order misses interacted items, e.g. {missing}")
    unused = len(item_texts) - len(item_ids)
    if unused and keep_unused:
        listed = set(item_ids)
        item_ids += [i for i in item_texts if i not in listed]
        log.info("%s: %d item(s) with metadata but no interaction kept in the catalogue", name, unused)
    elif unused:
        log.info("%s: %d item(s) with metadata but no interaction left out of the vocabulary", name, unused)
    index = {iid: k for k, iid in enumerate(item_ids)}
    user_ids = list(user_events)
    sequences = [np.fromiter((index[i] for i, _ in user_events[u]), dtype=np.int64, count=len(user_events[u]))
                 for u in user_ids]
    # integer timestamps (epoch seconds, ms or ns) stay int64: float64 would merge ns-apart values
    all_int = all(isinstance(t, (int, np.integer)) and not isinstance(t, bool)
                  for ev in user_events.values() for _, t in ev)
    dtype = np.int64 if all_int else np.float64
    if not all_int:  # mixed: a float64 must still tell every integer apart, or the order would be lost
        big = next(((u, t) for u, ev in user_events.items() for _, t in ev
                    if isinstance(t, (int, np.integer)) and not isinstance(t, bool) and abs(int(t)) > 2 ** 53), None)
        if big is not None:
            raise DataFormatError(
                f"{source or name}: timestamps mix decimals with integers too large for a float (user {big[0]!r}: "
                f"{big[1]}); write every timestamp as an integer (e.g. epoch nanoseconds) or every one as a decimal")
    try:
        timestamps = [np.fromiter((t for _, t in user_events[u]), dtype=dtype, count=len(user_events[u]))
                      for u in user_ids]
    except OverflowError:
        raise DataFormatError(f"{source or name}: an integer timestamp is outside the 64-bit range") from None
    return SequenceDataset(name=name, item_ids=item_ids, user_ids=user_ids, sequences=sequences,
                           items=[item_texts[i] for i in item_ids], timestamps=timestamps)


def build_dataset_columns(name: str, interactions: InteractionColumns, item_texts: dict[str, ItemText],
                          order: str = "file", source: str = "", keep_unused: bool = False) -> SequenceDataset:
    """:func:`build_dataset` for interactions as arrays, with :func:`order_events`'s ``order`` applied.

    The same dataset as ``order_events`` then ``build_dataset`` on the same rows (users in order of
    first appearance, item indices in ``item_texts`` order, ``order="timestamp"`` a stable sort by
    time within each user, ``"file"`` the row order with the same warning), in a few vectorised
    passes instead of Python work per row. Each user's sequence and timestamps are views into two
    shared arrays.
    """
    if order not in ("file", "timestamp"):
        raise ValueError(f"order must be 'file' or 'timestamp', got {order!r}")
    inter = interactions
    used = set(inter.item_ids)
    unknown = sorted(used.difference(item_texts))
    if unknown:
        raise DataFormatError(f"{source or name}: {len(unknown)} interacted item(s) have no item entry, "
                              f"e.g. {unknown[:5]}")
    item_ids = [i for i in item_texts if i in used]
    unused = len(item_texts) - len(item_ids)
    if unused and keep_unused:
        item_ids += [i for i in item_texts if i not in used]
        log.info("%s: %d item(s) with metadata but no interaction kept in the catalogue", name, unused)
    elif unused:
        log.info("%s: %d item(s) with metadata but no interaction left out of the vocabulary", name, unused)
    index = {iid: k for k, iid in enumerate(item_ids)}
    to_index = np.fromiter(map(index.__getitem__, inter.item_ids), dtype=np.int64, count=len(inter.item_ids))
    # group rows by user, keeping row order (users are numbered in order of first appearance)
    users, times, items = inter.users, inter.times, inter.items
    if not (users[1:] >= users[:-1]).all():  # not already grouped
        perm = np.argsort(users, kind="stable")
        users, times, items = users[perm], times[perm], items[perm]
    descending = (users[1:] == users[:-1]) & (times[1:] < times[:-1])  # a user's next row is older
    if order == "timestamp" and descending.any():
        # stable within each user: ties keep row order, as order_events' sorted(); rows sorted by
        # time in the file (a common layout) are in order once grouped and skip this
        perm = np.lexsort((inter.times, inter.users))
        users, times, items = inter.users[perm], inter.times[perm], inter.items[perm]
    elif order == "file":
        bad = np.unique(users[1:][descending]).size
        if bad:
            log.warning("%s: %d user(s) have rows out of timestamp order; keeping file order "
                        "(pass order='timestamp' to sort)", source, bad)
    flat = to_index[items]
    ends = np.cumsum(np.bincount(users, minlength=len(inter.user_ids))).tolist()
    starts = [0] + ends[:-1]
    # slices rather than one array per user: np.split costs seconds per million users in overhead
    return SequenceDataset(name=name, item_ids=item_ids, user_ids=list(inter.user_ids),
                           sequences=[flat[a:b] for a, b in zip(starts, ends)],
                           items=[item_texts[i] for i in item_ids],
                           timestamps=[times[a:b] for a, b in zip(starts, ends)])


# ----------------------------------------------------------------------------------------------
# Bulk reading of delimited text: the line-by-line readers above are the reference and name the line
# of every error; the bulk path below gives the same result in Arrow and numpy, and declines (None) on
# anything it cannot prove it reads the same way, so that the line-by-line reader handles (and
# reports) it.


# ----------------------------------------------------------------------------------------------
# Plain directory format


_ITEM_KEYS = frozenset(TEXT_FIELDS) | {"item_id"}
_EMPTY_TEXT = ItemText()
_JSONL_BATCH = 65536  # lines parsed per batch in the bulk reader


def _item_id(obj: dict[str, Any], where: str) -> str:
    """The ``item_id`` of one ``items.jsonl`` object as a string; errors name ``where``."""
    raw_id = obj.get("item_id")
    if raw_id is None or (isinstance(raw_id, str) and not raw_id.strip()):
        raise DataFormatError(f"{where}: missing 'item_id'")
    if isinstance(raw_id, bool) or not isinstance(raw_id, (str, int, float)):
        raise DataFormatError(f"{where}: 'item_id' must be a string or number, got {type(raw_id).__name__}")
    if isinstance(raw_id, float) and not math.isfinite(raw_id):
        raise DataFormatError(f"{where}: 'item_id' must be a string or number, got {raw_id!r}")
    if not is_unicode(str(raw_id)):  # no file or response can hold it (JSON's "\ud800" escape)
        raise DataFormatError(f"{where}: 'item_id' is not valid Unicode (a lone surrogate such as \\ud800)")
    return str(raw_id).strip()  # as the interactions file's ids are read


def _item_text(obj: dict[str, Any], where: str, bad_prices: list[tuple[str, Any]], iid: str) -> ItemText:
    """:func:`item_text_from_record`, except that an item with no text at all (vectors stand in for
    text) gets one shared frozen empty ItemText (the same value) rather than an object per item."""
    if obj.keys() <= _ITEM_KEYS and all(v is None or v == "" or v == [] for k, v in obj.items() if k != "item_id"):
        return _EMPTY_TEXT
    return item_text_from_record(obj, where, bad_prices, iid)


def _read_items_bulk(path: Path) -> dict[str, ItemText] | None:
    """:func:`read_items_jsonl` from the whole file's bytes at once (no per-line decoding and line
    numbering), or None when anything is unusual (not simple text, malformed JSON, any error): then
    the line reader gives the same result or names the line."""
    data = simple_text_bytes(path)
    if data is None:
        return None
    lines = [line for line in data.split(b"\n") if line.strip()]
    del data
    items: dict[str, ItemText] = {}
    bad_prices: list[tuple[str, Any]] = []
    for start in range(0, len(lines), _JSONL_BATCH):
        batch = lines[start:start + _JSONL_BATCH]
        try:  # each line alone: a batch joined by commas let a line of two objects cancel one object split
            # over two lines (the count still matched)
            objs = [json.loads(line.decode("utf-8")) for line in batch]  # bytes: json guessed each line's
            # encoding (a BOM mid-file read as utf-8-sig), which the line reader refuses
        except (ValueError, RecursionError):
            return None
        for obj in objs:
            if not isinstance(obj, dict):
                return None
            try:
                iid = _item_id(obj, str(path))
                if iid in items:
                    return None
                items[iid] = _item_text(obj, str(path), bad_prices, iid)
            except DataFormatError:
                return None
    if not items:
        return None
    warn_bad_prices(str(path), bad_prices)
    return items


def read_items_jsonl(path: Path) -> dict[str, ItemText]:
    """Read ``items.jsonl[.gz]`` into ``item_id -> ItemText`` (file order kept).

    Items without any text share one empty :class:`ItemText`. Simple files are read in one piece;
    anything unusual goes line by line, so that errors name the line.
    """
    bulk = _read_items_bulk(path)
    if bulk is not None:
        return bulk
    items: dict[str, ItemText] = {}
    first_line: dict[str, int] = {}
    bad_prices: list[tuple[str, Any]] = []
    for lineno, obj in iter_jsonl(path):
        where = f"{path}:{lineno}"
        iid = _item_id(obj, where)
        if iid in items:
            raise DataFormatError(f"{where}: duplicate item_id {iid!r} (first at line {first_line[iid]})")
        items[iid] = _item_text(obj, where, bad_prices, iid)
        first_line[iid] = lineno
    if not items:
        raise DataFormatError(f"{path}: empty file (no items)")
    warn_bad_prices(str(path), bad_prices)
    return items


def _tsv_header(path: Path, header_line: str) -> tuple[int, int, int, int]:
    """Columns of user_id, item_id, timestamp and the column count, from the interactions header."""
    if not header_line.strip():
        raise DataFormatError(f"{path}: empty file (expected header 'user_id\\titem_id\\ttimestamp')")
    header = [h.strip() for h in header_line.rstrip("\n\r").split("\t")]
    missing = [c for c in ("user_id", "item_id", "timestamp") if c not in header]
    if missing:
        raise DataFormatError(f"{path}:1: header {header} lacks column(s) {missing} "
                              f"(expected 'user_id\\titem_id\\ttimestamp')")
    dup = next((h for k, h in enumerate(header) if h and h in header[:k]), None)
    if dup is not None:  # with two copies, which one holds the data would be a guess
        raise DataFormatError(f"{path}:1: header column {dup!r} appears more than once (header {header})")
    return header.index("user_id"), header.index("item_id"), header.index("timestamp"), len(header)


def read_interactions_tsv(path: Path, items: dict[str, ItemText] | None = None
                          ) -> dict[str, list[tuple[str, int | float]]]:
    """Read ``interactions.tsv[.gz]`` into ``user_id -> [(item_id, timestamp), ...]`` in file order.

    If ``items`` is given, an item missing from it is an error naming the line.
    """
    users: dict[str, list[tuple[str, int | float]]] = {}
    with contextlib.closing(iter_lines(path)) as lines:
        _, header_line = next(lines, (1, ""))
        cu, ci, ct, ncol = _tsv_header(path, header_line)
        n_rows = 0
        for lineno, line in lines:
            line = line.rstrip("\n\r")
            if not line.strip() and "\t" not in line:  # a blank line; "\t\t" is a row of empty fields (refused)
                continue
            parts = line.split("\t")
            if len(parts) != ncol:
                raise DataFormatError(f"{path}:{lineno}: expected {ncol} tab-separated fields, got {len(parts)}")
            user, item, ts = parts[cu].strip(), parts[ci].strip(), parts[ct].strip()
            if not user or not item:
                raise DataFormatError(f"{path}:{lineno}: empty user_id or item_id")
            t = parse_timestamp(ts, f"{path}:{lineno}")
            if items is not None and item not in items:
                raise DataFormatError(f"{path}:{lineno}: item {item!r} has no entry in items file")
            users.setdefault(user, []).append((item, t))
            n_rows += 1
    if n_rows == 0:
        raise DataFormatError(f"{path}: no interactions after the header")
    return users


def read_interaction_columns(path: Path, items: dict[str, ItemText] | None = None) -> InteractionColumns | None:
    """:func:`read_interactions_tsv` in bulk (Arrow's CSV reader, no Python work per row), as columns.

    None when the file needs the line-by-line reader: when it is not simple text (see
    :func:`simple_text_bytes`), a line is blank or has the wrong field count, an id is empty, a
    timestamp is not a plain number, an item lacks an entry in ``items``, or there are no rows. That
    reader then gives the same result or the error naming the line.
    """
    data = simple_text_bytes(path)
    if data is None:
        return None
    header_line, rows = split_header(data)
    cu, ci, ct, ncol = _tsv_header(path, header_line)  # the same header errors as the line reader
    columns = read_delimited_columns(rows, "\t", ncol, (cu, ci, ct))
    if columns is None or len(columns[0]) == 0:
        return None
    user_ids, users = factorize_ids(columns[0])
    item_ids, item_codes = factorize_ids(columns[1])
    if "" in user_ids or "" in item_ids:
        return None
    if items is not None and any(i not in items for i in item_ids):
        return None
    times = parse_time_strings(columns[2])
    if times is None:
        return None
    return InteractionColumns(user_ids=user_ids, users=users, item_ids=item_ids, items=item_codes, times=times)


def order_events(users: dict[str, list[tuple[str, float]]], order: str, source: str,
                 sort_hint: str = "pass order='timestamp' to sort") -> None:
    """Apply the ordering policy in place: ``"file"`` keeps rows as given, ``"timestamp"`` sorts
    each user stably by time (ties keep file order). ``sort_hint``: how the caller's user sorts the
    rows instead, named in the warning that ``"file"`` order goes back in time."""
    if order == "timestamp":
        for u, ev in users.items():
            users[u] = sorted(ev, key=lambda e: e[1])  # Python's sort is stable
    elif order == "file":
        bad = sum(1 for ev in users.values() if any(ev[k][1] > ev[k + 1][1] for k in range(len(ev) - 1)))
        if bad:
            log.warning("%s: %d user(s) have rows out of timestamp order; keeping file order (%s)",
                        source, bad, sort_hint)
    else:
        raise ValueError(f"order must be 'file' or 'timestamp', got {order!r}")


def load_plain(directory: str | Path, name: str | None = None, order: str = "file",
               keep_unused_items: bool = False) -> SequenceDataset:
    """Load a dataset in the plain directory format (see module doc).

    ``order="file"`` (default) keeps each user's row order, the chronological order of the
    standard splits; ``"timestamp"`` sorts stably by time. ``keep_unused_items``: items of
    ``items.jsonl`` that no interaction names stay in the catalogue, after the others
    (:func:`build_dataset`); by default they are left out.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise DataNotFoundError(f"{directory}: dataset directory not found")
    items_path = find_file(directory, "items.jsonl")
    inter_path = find_file(directory, "interactions.tsv")
    items = read_items_jsonl(items_path)
    columns = read_interaction_columns(inter_path, items)
    if columns is not None:
        ds = build_dataset_columns(name or directory.name, columns, items, order=order, source=str(inter_path),
                                   keep_unused=keep_unused_items)
    else:  # rows the bulk reader leaves to the line reader (blank lines, unusual numbers, errors)
        users = read_interactions_tsv(inter_path, items)
        order_events(users, order, str(inter_path))
        ds = build_dataset(name or directory.name, users, items, source=str(inter_path),
                           keep_unused=keep_unused_items)
    log.info("loaded %r", ds)
    return ds


def write_plain(dataset: SequenceDataset, directory: str | Path) -> None:
    """Write a dataset in the plain directory format (atomically, file by file); a directory holding a
    compressed plain dataset is refused (its ``.gz`` files would stand beside the new ones)."""
    from genrec.artifacts import atomic_write_text

    for kind, ids in (("user", dataset.user_ids), ("item", dataset.item_ids)):  # what the reader could not read back
        bad = next((i for i in ids if any(c in str(i) for c in "\t\n\r") or str(i) != str(i).strip()), None)
        if bad is not None:
            raise DataFormatError(f"{kind} id {str(bad)!r} holds a tab, a line break or surrounding space: the plain "
                                  "format (tab-separated) cannot hold it")
    directory = Path(directory)
    stale = [directory / n for n in ("interactions.tsv.gz", "items.jsonl.gz") if (directory / n).exists()]
    if stale:  # beside the written .tsv / .jsonl, every later load would refuse the directory
        raise DataFormatError(f"{directory}: holds {stale[0].name}; write the dataset to another directory")
    directory.mkdir(parents=True, exist_ok=True)
    rows = ["user_id\titem_id\ttimestamp"]
    for u, seq in enumerate(dataset.sequences):
        ts = dataset.timestamps[u] if dataset.timestamps is not None else np.arange(len(seq))
        uid = dataset.user_ids[u]
        rows.extend(f"{uid}\t{dataset.item_ids[i]}\t{format_timestamp(t)}" for i, t in zip(seq, ts))
    atomic_write_text(directory / "interactions.tsv", "\n".join(rows) + "\n")
    lines = []
    for iid, it in zip(dataset.item_ids, dataset.items):
        rec = {"item_id": iid, "title": it.title, "brand": it.brand, "categories": list(it.categories),
               "description": it.description, "price": it.price}
        lines.append(json.dumps(rec, ensure_ascii=False))
    atomic_write_text(directory / "items.jsonl", "\n".join(lines) + "\n")

