"""RecBole atomic files (``DIR/NAME.inter`` and ``DIR/NAME.item``) -> :class:`~genrec.data.SequenceDataset`.

RecBole's atomic files are delimited text with one header line whose fields are written
``name:type``, the type one of ``token``, ``token_seq``, ``float``, ``float_seq``. NAME is the
directory's name (``ml-1m/ml-1m.inter``); either file may be gzipped (``NAME.inter.gz``). The
separator is a tab (RecBole's default) or a comma; by default it is detected from each file's header
line (a tab if there is one, else a comma), or set with ``sep="tab"`` / ``sep="comma"``.
Fields are split on the separator only: no quoting, as in RecBole itself.

``.inter``: the user field (``user_id:token``), the item field (``item_id:token``) and, when present,
the time field (``timestamp:float``) are found by name (``user_field``, ``item_field``, ``time_field``)
and must have those types. Every row is one interaction: ratings (``rating:float``) and any other
fields are ignored, so explicit ratings count as implicit feedback, low ones included, the usual
practice of sequential recommendation (filter the file first to keep only some). Each user's rows are
sorted stably by timestamp (``order="timestamp"``, ties keep file order) or kept in file order
(``order="file"``); without a time field, file order is kept and the row number stands for the time
(logged), unless the time field was named or ``order="timestamp"`` asked for: then its absence is an
error.

``.item`` (optional): ``item_id:token`` plus text fields mapped to :class:`~genrec.data.ItemText` by
name: ``title`` (also ``name``, ``movie_title``), ``brand``, ``categories`` (also ``category``,
``genre``, ``genres``), ``description``, ``price`` (genrec's price policy: an unreadable price is
missing, with one warning). A ``token_seq`` value is text whose tokens are joined by spaces; for
categories, a value holding commas is split on them (``Drama, Romance``; quotes and brackets around a
part are stripped), else on spaces. Other fields go to ``ItemText.extra`` (listed once in the log)
and are not embedded.

Items of ``.inter`` without an ``.item`` entry: with no ``.item`` file at all every item has empty
text (logged; the recipe then needs ``text.fallback`` or ``text.embeddings``); with an ``.item``
file, ``missing_items="error"`` (default) raises :class:`DataFormatError` naming the count, the
first ids and the ``.inter`` line of the first, ``missing_items="empty"`` keeps them with empty text
and logs a warning. Every malformed input is a :class:`DataFormatError` naming the file and line.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from pathlib import Path
from typing import Any, Iterator, Literal

import numpy as np

from genrec.columns import (InteractionColumns, factorize_ids, parse_time_strings, read_delimited_columns,
                            simple_text_bytes, split_header)
from genrec.data import SequenceDataset, build_dataset, build_dataset_columns, order_events
from genrec.item_fields import ItemText, parse_price, parse_timestamp, price_is_absent, warn_bad_prices
from genrec.errors import DataFormatError, DataNotFoundError
from genrec.text_files import find_optional_file, iter_lines

log = logging.getLogger(__name__)

__all__ = ["load_recbole", "recbole_files", "FIELD_TYPES"]

FIELD_TYPES = ("token", "token_seq", "float", "float_seq")
SEPARATORS = {"tab": "\t", "comma": ",", "\t": "\t", ",": ","}

#: ``.item`` field names (before ``:type``) read as each ItemText field
_TEXT_ALIASES = {"title": ("title", "name", "movie_title"), "brand": ("brand",),
                 "categories": ("categories", "category", "genre", "genres"), "description": ("description",),
                 "price": ("price",)}


def recbole_files(directory: str | Path) -> tuple[Path | None, Path | None]:
    """``(NAME.inter, NAME.item)`` of a RecBole dataset directory (plain or ``.gz``; None when absent; both
    present is an error)."""
    directory = Path(directory)
    name = Path(os.path.abspath(directory)).name  # "." names no file: the directory's own (a link's own too)
    return find_optional_file(directory, f"{name}.inter"), find_optional_file(directory, f"{name}.item")


def _separator(sep: str | None, header: str) -> str:
    if sep is None:  # detect: a tab wins (RecBole's default), titles may hold commas but not tabs
        return "\t" if "\t" in header else ("," if "," in header else "\t")
    if sep not in SEPARATORS:
        raise DataFormatError(f"RecBole separator must be 'tab' or 'comma', got {sep!r}")
    return SEPARATORS[sep]


def _header(path: Path, header_line: str, sep: str | None) -> tuple[str, list[tuple[str, str]]]:
    """The separator and the ``[(name, type), ...]`` fields of a header line."""
    header_line = header_line.rstrip("\n\r")
    if not header_line.strip():
        raise DataFormatError(f"{path}: empty file (expected a header of name:type fields, e.g. "
                              f"'user_id:token\\titem_id:token\\ttimestamp:float')")
    s = _separator(sep, header_line)
    header: list[tuple[str, str]] = []
    other = "comma" if s == "\t" else "tab"
    for raw in header_line.split(s):
        if SEPARATORS[other] in raw:  # the separator was set (or guessed) wrong
            raise DataFormatError(f"{path}:1: header field {raw.strip()!r} holds a {other}: the file looks "
                                  f"{other}-separated (sep={other})")
        name, colon, ftype = raw.strip().rpartition(":")
        if not colon or not name:
            raise DataFormatError(f"{path}:1: header field {raw.strip()!r} is not written name:type "
                                  f"(types: {', '.join(FIELD_TYPES)})")
        if ftype not in FIELD_TYPES:
            raise DataFormatError(f"{path}:1: header field {raw.strip()!r} has unknown type {ftype!r} "
                                  f"(types: {', '.join(FIELD_TYPES)})")
        if any(name == h for h, _ in header):
            raise DataFormatError(f"{path}:1: header field {name!r} appears more than once")
        header.append((name, ftype))
    return s, header


def _rows(path: Path, sep: str | None) -> Iterator[tuple[int, list[tuple[str, str]] | list[str]]]:
    """First ``(1, [(name, type), ...])`` of the header, then ``(line, fields)`` of each non-blank row,
    every row checked to have as many fields as the header."""
    with contextlib.closing(iter_lines(path)) as lines:
        _, header_line = next(lines, (1, ""))
        s, header = _header(path, header_line, sep)
        yield 1, header
        sep_name = "tab" if s == "\t" else "comma"
        for lineno, line in lines:
            line = line.rstrip("\n\r")
            if not line.strip() and s not in line:  # a blank line; a row of empty fields is refused below
                continue
            parts = line.split(s)
            if len(parts) != len(header):
                raise DataFormatError(f"{path}:{lineno}: expected {len(header)} {sep_name}-separated fields "
                                      f"(as in the header), got {len(parts)}")
            yield lineno, parts


def _field(path: Path, header: list[tuple[str, str]], name: str, types: tuple[str, ...],
           required: bool = True) -> int | None:
    """Column of field ``name``, checked to have one of ``types``."""
    for k, (h, t) in enumerate(header):
        if h == name:
            if t not in types:
                raise DataFormatError(f"{path}:1: field {name!r} has type {t!r}, expected {' or '.join(types)}")
            return k
    if required:
        raise DataFormatError(f"{path}:1: header lacks the field {name!r} (fields: {[h for h, _ in header]})")
    return None


def _read_inter(path: Path, sep: str | None, user_field: str, item_field: str, time_field: str,
                time_required: bool = False) -> tuple[dict[str, list[tuple[str, int | float]]], dict[str, int], bool]:
    """``user -> [(item, time), ...]`` in file order, each item's first line, and whether times were read."""
    users: dict[str, list[tuple[str, int | float]]] = {}
    first_line: dict[str, int] = {}
    rows = _rows(path, sep)
    _, header = next(rows)
    cu = _field(path, header, user_field, ("token",))
    ci = _field(path, header, item_field, ("token",))
    ct = _field(path, header, time_field, ("float", "token"), required=time_required)
    if ct is None:
        log.info("%s: no %r field; each user's interactions keep file order", path, time_field)
    n = 0
    for lineno, parts in rows:
        user, item = parts[cu].strip(), parts[ci].strip()
        if not user or not item:
            raise DataFormatError(f"{path}:{lineno}: empty {user_field} or {item_field}")
        t = parse_timestamp(parts[ct], f"{path}:{lineno}", time_field) if ct is not None else n
        users.setdefault(user, []).append((item, t))
        first_line.setdefault(item, lineno)
        n += 1
    if n == 0:
        raise DataFormatError(f"{path}: no interactions after the header")
    return users, first_line, ct is not None


def _read_inter_columns(path: Path, sep: str | None, user_field: str, item_field: str, time_field: str,
                        time_required: bool = False) -> tuple[InteractionColumns, bool] | None:
    """:func:`_read_inter` in bulk (no Python work per row): the rows as columns and whether times were
    read, or None when the file needs the line reader (see :func:`genrec.data.read_interaction_columns`)."""
    data = simple_text_bytes(path)
    if data is None:
        return None
    header_line, rest = split_header(data)
    s, header = _header(path, header_line, sep)  # the same header errors as the line reader
    cu = _field(path, header, user_field, ("token",))
    ci = _field(path, header, item_field, ("token",))
    ct = _field(path, header, time_field, ("float", "token"), required=time_required)
    columns = read_delimited_columns(rest, s, len(header), (cu, ci) if ct is None else (cu, ci, ct))
    if columns is None or len(columns[0]) == 0:
        return None
    user_ids, users = factorize_ids(columns[0])
    item_ids, items = factorize_ids(columns[1])
    if "" in user_ids or "" in item_ids:
        return None
    if ct is None:
        log.info("%s: no %r field; each user's interactions keep file order", path, time_field)
        times = np.arange(len(users), dtype=np.int64)  # the row number stands for the time
    else:
        times = parse_time_strings(columns[2])
        if times is None:
            return None
    return InteractionColumns(user_ids=user_ids, users=users, item_ids=item_ids, items=items, times=times), \
        ct is not None


def _categories(value: str) -> tuple[str, ...]:
    parts = value.split(",") if "," in value else value.split()
    out: list[str] = []
    for p in parts:
        p = p.strip().strip("[]").strip().strip("'\"").strip()
        if p and p not in out:
            out.append(p)
    return tuple(out)


def _read_item(path: Path, sep: str | None, item_field: str) -> dict[str, ItemText]:
    """``item -> ItemText`` of an ``.item`` file, in file order."""
    items: dict[str, ItemText] = {}
    first_line: dict[str, int] = {}
    bad_prices: list[tuple[str, Any]] = []
    rows = _rows(path, sep)
    _, header = next(rows)
    ci = _field(path, header, item_field, ("token",))
    names = [h for h, _ in header]
    mapped: dict[str, int] = {}
    for target, aliases in _TEXT_ALIASES.items():
        k = next((names.index(a) for a in aliases if a in names), None)
        if k is not None:
            mapped[target] = k
    if "price" in mapped and header[mapped["price"]][1] != "float":
        raise DataFormatError(f"{path}:1: field 'price' has type {header[mapped['price']][1]!r}, expected 'float'")
    extra_cols = [k for k in range(len(header)) if k != ci and k not in mapped.values()]
    if extra_cols:
        log.info("%s: field(s) %s are not item text; kept in ItemText.extra, not embedded", path,
                 [names[k] for k in extra_cols])
    for lineno, parts in rows:
        iid = parts[ci].strip()
        if not iid:
            raise DataFormatError(f"{path}:{lineno}: empty {item_field}")
        if iid in items:
            raise DataFormatError(f"{path}:{lineno}: duplicate {item_field} {iid!r} (first at line {first_line[iid]})")

        def text(target: str) -> str | None:
            k = mapped.get(target)
            v = " ".join(parts[k].split()) if k is not None else ""
            return v or None

        raw_price = parts[mapped["price"]] if "price" in mapped else None
        price = parse_price(raw_price)
        if price is None and not price_is_absent(raw_price):
            bad_prices.append((iid, raw_price))
        cats = _categories(parts[mapped["categories"]]) if "categories" in mapped else ()
        extra = {names[k]: _extra_value(parts[k], header[k][1]) for k in extra_cols}
        items[iid] = ItemText(title=text("title"), brand=text("brand"), categories=cats,
                              description=text("description"), price=price, extra=extra)
        first_line[iid] = lineno
    if not items:
        raise DataFormatError(f"{path}: no items after the header")
    warn_bad_prices(str(path), bad_prices)
    return items


def _extra_value(raw: str, ftype: str) -> Any:
    """An extra field's value by its declared type (unreadable numbers stay text: extras are not embedded)."""
    raw = raw.strip()
    try:
        if ftype == "float":
            v = float(raw)
            return v if math.isfinite(v) else raw
        if ftype == "float_seq":
            return [float(x) for x in raw.split()]
    except ValueError:
        return raw
    return raw.split() if ftype == "token_seq" else raw


def load_recbole(directory: str | Path, name: str | None = None, sep: Literal["tab", "comma"] | None = None,
                 order: Literal["timestamp", "file"] | None = None,
                 missing_items: Literal["error", "empty"] = "error", user_field: str = "user_id",
                 item_field: str = "item_id", time_field: str | None = None,
                 keep_unused_items: bool = False) -> SequenceDataset:
    """Load a RecBole atomic-file dataset directory (see the module doc for every rule).

    ``sep``: ``"tab"``, ``"comma"`` or None (detected per file). ``order``: ``"timestamp"`` (stable
    sort) or ``"file"``; None: by timestamp where the file has a time field, else file order.
    ``time_field``: None reads ``timestamp`` when present; a named field, or ``order="timestamp"``,
    must be in the header (a ``DataFormatError``, not a silent file order). ``missing_items``:
    ``"error"`` or ``"empty"``, for interacted items that the
    ``.item`` file lacks. ``keep_unused_items``: ``.item`` entries without interactions stay in the
    catalogue (:func:`genrec.data.build_dataset`). Item order: first appearance in the ``.item`` file,
    then items that only ``.inter`` names, in order of first interaction.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise DataNotFoundError(f"{directory}: dataset directory not found")
    if sep is not None and sep not in SEPARATORS:
        raise DataFormatError(f"{directory}: RecBole separator must be 'tab' or 'comma', got {sep!r}")
    if missing_items not in ("error", "empty"):
        raise ValueError(f"missing_items must be 'error' or 'empty', got {missing_items!r}")
    # a time field the caller named, or a timestamp order asked for, must be there: without one the
    # interactions kept file order with only an INFO line
    time_required = time_field is not None or order == "timestamp"
    time_field = time_field or "timestamp"
    order = order or "timestamp"
    inter_path, item_path = recbole_files(directory)
    if inter_path is None:
        name = Path(os.path.abspath(directory)).name
        raise DataNotFoundError(f"{directory}: expected {name}.inter or {name}.inter.gz "
                                f"(RecBole atomic files are named after their directory), found neither")
    bulk = _read_inter_columns(inter_path, sep, user_field, item_field, time_field, time_required)
    if bulk is not None:
        rows, timed = bulk
        inter_items = rows.item_ids  # in order of first appearance, as first_line's keys
    else:  # rows the bulk reader leaves to the line reader (blank lines, unusual numbers, errors)
        users, first_line, timed = _read_inter(inter_path, sep, user_field, item_field, time_field, time_required)
        inter_items = list(first_line)
    if item_path is None:
        log.info("%s: no %s.item file; every item has empty text (set text.fallback or text.embeddings in a "
                 "recipe)", directory, directory.name)
        items: dict[str, ItemText] = {}
    else:
        items = _read_item(item_path, sep, item_field)
    missing = [i for i in inter_items if i not in items]
    if missing and item_path is not None and missing_items == "error" and bulk is not None:
        # the error names the .inter line of the first missing item: the line reader knows it
        _, first_line, _ = _read_inter(inter_path, sep, user_field, item_field, time_field, time_required)
    if missing and item_path is not None:
        if missing_items == "error":
            raise DataFormatError(f"{inter_path}:{first_line[missing[0]]}: {len(missing)} interacted item(s) have "
                                  f"no entry in {item_path.name}, e.g. {missing[:5]} (missing_items='empty' keeps "
                                  f"them with empty text)")
        log.warning("%s: %d interacted item(s) have no entry in %s; kept with empty text (e.g. %s)",
                    directory, len(missing), item_path.name, missing[:3])
    # one shared (frozen) empty text for the items without an entry, not one object each
    texts = {**items, **dict.fromkeys(missing, ItemText())}
    if bulk is not None:
        ds = build_dataset_columns(name or directory.name, rows, texts, order=order if timed else "file",
                                   source=str(inter_path), keep_unused=keep_unused_items)
    else:
        order_events(users, order if timed else "file", str(inter_path))
        ds = build_dataset(name or directory.name, users, texts, source=str(inter_path),
                           keep_unused=keep_unused_items)
    log.info("loaded %r", ds)
    return ds
