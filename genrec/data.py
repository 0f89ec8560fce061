"""The in-memory sequential dataset and the plain directory format loader.

A :class:`SequenceDataset` holds the item vocabulary, each user's chronological item
sequence (item indices, file order kept for timestamp ties) and each item's text fields.
Every loader in genrec (plain format, Amazon 2014, Amazon 2023, synthetic) returns one.

Plain directory format (what users bring for their own data)::

    interactions.tsv[.gz]   header ``user_id<TAB>item_id<TAB>timestamp``; rows of one user are in
                            chronological order (ties keep file order)
    items.jsonl[.gz]        one JSON object per item: ``item_id`` plus any of ``title``, ``brand``,
                            ``categories`` (list or string), ``description``, ``price``
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from genrec.errors import DataFormatError

log = logging.getLogger(__name__)

TEXT_FIELDS = ("title", "brand", "categories", "description", "price")


@dataclass(frozen=True)
class ItemText:
    """Text fields of one item; any may be missing (None / empty)."""

    title: str | None = None
    brand: str | None = None
    categories: tuple[str, ...] = ()
    description: str | None = None
    price: float | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def is_empty(self) -> bool:
        return not (self.title or self.brand or self.categories or self.description or self.price is not None)


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
) -> SequenceDataset:
    """Make a dataset from per-user ``(item_id, timestamp)`` lists already in chronological order.

    Every interacted item must have a text entry (else :class:`DataFormatError` naming the id).
    Items with text but no interaction are left out of the vocabulary, with a logged count.
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
    if unused:
        log.info("%s: %d item(s) with metadata but no interaction left out of the vocabulary", name, unused)
    index = {iid: k for k, iid in enumerate(item_ids)}
    user_ids = list(user_events)
    sequences = [np.fromiter((index[i] for i, _ in user_events[u]), dtype=np.int64, count=len(user_events[u]))
                 for u in user_ids]
    timestamps = [np.fromiter((t for _, t in user_events[u]), dtype=np.float64, count=len(user_events[u]))
                  for u in user_ids]
    return SequenceDataset(name=name, item_ids=item_ids, user_ids=user_ids, sequences=sequences,
                           items=[item_texts[i] for i in item_ids], timestamps=timestamps)


def item_text_from_record(record: dict[str, Any], where: str) -> ItemText:
    """Parse text fields of one item record (from JSON); ``where`` names file and line for errors."""

    def text(key: str) -> str | None:
        v = record.get(key)
        if v is None:
            return None
        if isinstance(v, list):  # e.g. Amazon 2023 description is a list of paragraphs
            v = " ".join(str(x) for x in v if x is not None)
        if not isinstance(v, (str, int, float)):
            raise DataFormatError(f"{where}: field {key!r} must be text, got {type(v).__name__}")
        v = str(v).strip()
        return v or None

    cats = record.get("categories")
    if cats is None:
        categories: tuple[str, ...] = ()
    elif isinstance(cats, str):
        # a single string may hold several categories separated by "|"
        categories = tuple(c.strip() for c in cats.split("|") if c.strip())
    elif isinstance(cats, list):
        flat: list[str] = []
        for c in cats:  # accept nested category paths too
            for x in (c if isinstance(c, list) else [c]):
                x = str(x).strip()
                if x and x not in flat:
                    flat.append(x)
        categories = tuple(flat)
    else:
        raise DataFormatError(f"{where}: field 'categories' must be a list or string, got {type(cats).__name__}")

    price = parse_price(record.get("price"), where)
    extra = {k: v for k, v in record.items() if k not in TEXT_FIELDS and k != "item_id"}
    return ItemText(title=text("title"), brand=text("brand"), categories=categories,
                    description=text("description"), price=price, extra=extra)


def parse_price(value: Any, where: str) -> float | None:
    """Price as float; accepts numbers and strings like ``"$12.99"``; empty/None -> None."""
    if value is None or value == "" or value == "None":
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        p = float(value)
    elif isinstance(value, str):
        s = value.strip().replace("$", "").replace(",", "")
        try:
            p = float(s)
        except ValueError:
            # Amazon sometimes has ranges ("$5.99 - $12.99"); those are not a single price.
            log.debug("%s: unparseable price %r treated as missing", where, value)
            return None
    else:
        raise DataFormatError(f"{where}: field 'price' must be a number or string, got {type(value).__name__}")
    if not math.isfinite(p):
        raise DataFormatError(f"{where}: price {value!r} is not finite")
    return p


def open_text(path: Path) -> io.TextIOBase:
    """Open a text file, transparently gunzipping ``*.gz``."""
    if str(path).endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8")
    return open(path, encoding="utf-8")


def find_file(directory: Path, stem: str) -> Path:
    """``directory/stem`` or ``directory/stem.gz``; a clear error when neither exists."""
    for cand in (directory / stem, directory / f"{stem}.gz"):
        if cand.is_file():
            return cand
    raise FileNotFoundError(f"{directory}: expected {stem} or {stem}.gz, found neither")


def iter_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, object)`` for each non-blank line; malformed JSON names the line."""
    with open_text(path) as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataFormatError(f"{path}:{lineno}: malformed JSON ({e.msg})") from None
            if not isinstance(obj, dict):
                raise DataFormatError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            yield lineno, obj


# ----------------------------------------------------------------------------------------------
# Plain directory format


def read_items_jsonl(path: Path) -> dict[str, ItemText]:
    """Read ``items.jsonl[.gz]`` into ``item_id -> ItemText`` (file order kept)."""
    items: dict[str, ItemText] = {}
    first_line: dict[str, int] = {}
    for lineno, obj in iter_jsonl(path):
        where = f"{path}:{lineno}"
        if "item_id" not in obj or obj["item_id"] in (None, ""):
            raise DataFormatError(f"{where}: missing 'item_id'")
        iid = str(obj["item_id"])
        if iid in items:
            raise DataFormatError(f"{where}: duplicate item_id {iid!r} (first at line {first_line[iid]})")
        items[iid] = item_text_from_record(obj, where)
        first_line[iid] = lineno
    if not items:
        raise DataFormatError(f"{path}: empty file (no items)")
    return items


def read_interactions_tsv(path: Path, items: dict[str, ItemText] | None = None) -> dict[str, list[tuple[str, float]]]:
    """Read ``interactions.tsv[.gz]`` into ``user_id -> [(item_id, timestamp), ...]`` in file order.

    If ``items`` is given, an item missing from it is an error naming the line.
    """
    users: dict[str, list[tuple[str, float]]] = {}
    with open_text(path) as f:
        header_line = f.readline()
        if not header_line.strip():
            raise DataFormatError(f"{path}: empty file (expected header 'user_id\\titem_id\\ttimestamp')")
        header = [h.strip() for h in header_line.rstrip("\n\r").split("\t")]
        missing = [c for c in ("user_id", "item_id", "timestamp") if c not in header]
        if missing:
            raise DataFormatError(f"{path}:1: header {header} lacks column(s) {missing} "
                                  f"(expected 'user_id\\titem_id\\ttimestamp')")
        cu, ci, ct = header.index("user_id"), header.index("item_id"), header.index("timestamp")
        ncol = len(header)
        n_rows = 0
        for lineno, line in enumerate(f, start=2):
            line = line.rstrip("\n\r")
            if not line.strip():
                continue
            parts = line.split("\t")
            if len(parts) != ncol:
                raise DataFormatError(f"{path}:{lineno}: expected {ncol} tab-separated fields, got {len(parts)}")
            user, item, ts = parts[cu].strip(), parts[ci].strip(), parts[ct].strip()
            if not user or not item:
                raise DataFormatError(f"{path}:{lineno}: empty user_id or item_id")
            try:
                t = float(ts)
            except ValueError:
                raise DataFormatError(f"{path}:{lineno}: timestamp {ts!r} is not a number") from None
            if not math.isfinite(t):
                raise DataFormatError(f"{path}:{lineno}: timestamp {ts!r} is not finite")
            if items is not None and item not in items:
                raise DataFormatError(f"{path}:{lineno}: item {item!r} has no entry in items file")
            users.setdefault(user, []).append((item, t))
            n_rows += 1
    if n_rows == 0:
        raise DataFormatError(f"{path}: no interactions after the header")
    return users


def order_events(users: dict[str, list[tuple[str, float]]], order: str, source: str) -> None:
    """Apply the ordering policy in place: ``"file"`` keeps rows as given, ``"timestamp"`` sorts
    each user stably by time (ties keep file order)."""
    if order == "timestamp":
        for u, ev in users.items():
            users[u] = sorted(ev, key=lambda e: e[1])  # Python's sort is stable
    elif order == "file":
        bad = sum(1 for ev in users.values() if any(ev[k][1] > ev[k + 1][1] for k in range(len(ev) - 1)))
        if bad:
            log.warning("%s: %d user(s) have rows out of timestamp order; keeping file order "
                        "(pass order='timestamp' to sort)", source, bad)
    else:
        raise ValueError(f"order must be 'file' or 'timestamp', got {order!r}")


def load_plain(directory: str | Path, name: str | None = None, order: str = "file") -> SequenceDataset:
    """Load a dataset in the plain directory format (see module doc).

    ``order="file"`` (default) keeps each user's row order, the chronological order of the
    standard splits; ``"timestamp"`` sorts stably by time.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: dataset directory not found")
    items_path = find_file(directory, "items.jsonl")
    inter_path = find_file(directory, "interactions.tsv")
    items = read_items_jsonl(items_path)
    users = read_interactions_tsv(inter_path, items)
    order_events(users, order, str(inter_path))
    ds = build_dataset(name or directory.name, users, items, source=str(inter_path))
    log.info("loaded %r", ds)
    return ds


def write_plain(dataset: SequenceDataset, directory: str | Path) -> None:
    """Write a dataset in the plain directory format (atomically, file by file)."""
    from genrec.artifacts import atomic_write_text

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rows = ["user_id\titem_id\ttimestamp"]
    for u, seq in enumerate(dataset.sequences):
        ts = dataset.timestamps[u] if dataset.timestamps is not None else np.arange(len(seq))
        uid = dataset.user_ids[u]
        rows.extend(f"{uid}\t{dataset.item_ids[i]}\t{int(t) if float(t).is_integer() else t}" for i, t in zip(seq, ts))
    atomic_write_text(directory / "interactions.tsv", "\n".join(rows) + "\n")
    lines = []
    for iid, it in zip(dataset.item_ids, dataset.items):
        rec = {"item_id": iid, "title": it.title, "brand": it.brand, "categories": list(it.categories),
               "description": it.description, "price": it.price}
        lines.append(json.dumps(rec, ensure_ascii=False))
    atomic_write_text(directory / "items.jsonl", "\n".join(lines) + "\n")

