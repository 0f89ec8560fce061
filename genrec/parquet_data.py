"""Parquet interactions and items (read with pyarrow) -> :class:`~genrec.data.SequenceDataset`.

Two files, the plain format's content in columns:

* interactions: a user column, an item column (strings or integers) and a time column (integers,
  floats or a Parquet timestamp, read as an integer in its own unit); other columns are ignored;
* items (optional): an item-id column plus any of the text columns ``title``, ``brand``,
  ``categories`` (a list of strings, or one string with ``|`` between categories), ``description``,
  ``price`` (a number or a string such as ``"$5.99"``; genrec's price policy otherwise). Other
  columns go to ``ItemText.extra`` (listed once in the log).

Every column name is configurable (``user=``, ``item=``, ``time=``, ``item_id=``, ``title=``, ...;
``title=null`` drops a text column). Each user's interactions are sorted stably by time
(``order="timestamp"``, ties keep row order) or kept in row order (``order="file"``). Errors are
:class:`DataFormatError` naming the file and the 1-based data row (``row 3``): a missing column, a
column of the wrong type, a null id or time, a non-finite time, a duplicate item id, an interacted
item without an item row (when an items file is given), an empty file. Without an items file every
item has empty text (logged; the recipe then needs ``text.fallback`` or ``text.embeddings``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

import numpy as np

from genrec.columns import InteractionColumns, factorize_ids
from genrec.data import SequenceDataset, build_dataset_columns
from genrec.item_fields import ItemText, item_text_from_record, parse_timestamp, warn_bad_prices
from genrec.errors import DataFormatError, DataNotFoundError

log = logging.getLogger(__name__)

__all__ = ["load_parquet", "read_parquet_table", "parquet_files"]

_TEXT = ("title", "brand", "categories", "description", "price")


def parquet_files(directory: str | Path) -> tuple[Path, Path | None]:
    """``(interactions.parquet, items.parquet or None)`` of a directory in the Parquet layout."""
    directory = Path(directory)
    inter, items = directory / "interactions.parquet", directory / "items.parquet"
    return inter, (items if items.exists() else None)  # a directory there is refused where it is read


def read_parquet_table(path: str | Path):
    """A ``pyarrow.Table`` of ``path``; a missing or unreadable file is a :class:`DataFormatError`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    if path.is_dir():  # a partitioned dataset (Spark's, Dask's layout): its text would be silently absent
        raise DataFormatError(f"{path}: is a directory, not a Parquet file; write the table as one file "
                              f"(e.g. pyarrow.parquet.write_table(pyarrow.parquet.read_table('{path}'), ...))")
    if not path.is_file():
        raise DataNotFoundError(f"{path}: Parquet file not found")
    try:
        return pq.read_table(path)
    except (pa.ArrowException, OSError) as e:
        raise DataFormatError(f"{path}: not a readable Parquet file ({e})") from None


def _column(table, path: Path, name: str, what: str):
    if name not in table.column_names:
        raise DataFormatError(f"{path}: no column {name!r} for the {what} (columns: {table.column_names}); "
                              f"name it with {what}=COLUMN")
    return table.column(name)


def _id_column(table, path: Path, name: str, what: str):
    """The column holding ids, checked to be of strings or integers."""
    import pyarrow.types as pt

    col = _column(table, path, name, what)
    t = col.type
    values = t.value_type if pt.is_dictionary(t) else t  # a dictionary-encoded column: its values' type
    if not (pt.is_string(values) or pt.is_large_string(values) or pt.is_integer(values)):
        raise DataFormatError(f"{path}: column {name!r} ({what}) must hold strings or integers, got {t}")
    return col


def _raise_empty_id(col, path: Path, name: str, what: str) -> None:
    """Raise the error for the first null or blank id (row by row: only run on a column that has one)."""
    for row, v in enumerate(col.to_pylist(), start=1):
        if v is None or (isinstance(v, str) and not v.strip()):
            raise DataFormatError(f"{path}: row {row}: empty {what} in column {name!r}")
    raise AssertionError(f"{path}: column {name!r} has no empty {what}")  # callers only come here with one


def _ids(table, path: Path, name: str, what: str) -> tuple[list[str], np.ndarray]:
    """A string or integer id column as distinct stripped ids (order of first appearance) and each
    row's index into them; nulls and empty ids are errors naming the first such row."""
    col = _id_column(table, path, name, what)
    ids, codes = factorize_ids(col)  # a null id is "" there
    if "" in ids:
        _raise_empty_id(col, path, name, what)
    return ids, codes


def _times(table, path: Path, name: str) -> np.ndarray:
    """The time column as int64 (integers, timestamps) or float64; a null, a non-finite number or an
    integer beyond int64 is an error naming the first such row."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.types as pt

    col = _column(table, path, name, "time")
    t = col.type
    if pt.is_timestamp(t):  # integer count of the column's unit (s, ms, us or ns): exact
        col = col.cast(pa.int64())
    elif not (pt.is_integer(t) or pt.is_floating(t)):
        raise DataFormatError(f"{path}: column {name!r} (time) must hold numbers or timestamps, got {t}")
    values = None
    if col.null_count == 0:
        if pt.is_floating(col.type):
            values = col.cast(pa.float64()).to_numpy()
            if not np.isfinite(values).all():
                values = None
        elif not (pt.is_unsigned_integer(col.type) and pc.max(col).as_py() >= 2 ** 63):
            values = col.cast(pa.int64()).to_numpy()
    if values is None:  # report the first bad row as parse_timestamp words it
        for row, v in enumerate(col.to_pylist(), start=1):
            if v is None:
                raise DataFormatError(f"{path}: row {row}: empty time in column {name!r}")
            parse_timestamp(v, f"{path}: row {row}", name)
        raise AssertionError(f"{path}: column {name!r} has no bad time")  # only reached with one
    return values


def _read_items(path: Path, item_id: str, columns: dict[str, str | None]) -> dict[str, ItemText]:
    table = read_parquet_table(path)
    if table.num_rows == 0:
        raise DataFormatError(f"{path}: empty file (no items)")
    ids, codes = _ids(table, path, item_id, "item_id")
    used = {field: col for field, col in columns.items() if col is not None and col in table.column_names}
    absent = [f"{f}={c}" for f, c in columns.items() if c is not None and c not in table.column_names
              and c != f]  # a renamed column that is not there is a mistake; a default one may be absent
    if absent:
        raise DataFormatError(f"{path}: no column(s) {absent} (columns: {table.column_names})")
    others = [c for c in table.column_names if c != item_id and c not in used.values()]
    if others:
        log.info("%s: column(s) %s are not item text; kept in ItemText.extra, not embedded", path, others)
    n = table.num_rows
    rows = np.arange(n)
    first_row = np.full(len(ids), n, dtype=np.int64)
    np.minimum.at(first_row, codes, rows)
    repeated = np.flatnonzero(first_row[codes] != rows)
    stop = int(repeated[0]) if len(repeated) else n  # row `stop` repeats an id: rows after it are not read
    # Rows with no text and no extra column all get one shared empty ItemText (it is frozen), not an
    # object each: catalogues of vectors without text have millions of them.
    empty = ItemText()
    texts = [empty] * stop
    bad_prices: list[tuple[str, Any]] = []
    if used or others:
        import pyarrow.compute as pc

        if others:
            needed = np.arange(stop)
        else:
            present = np.zeros(n, dtype=bool)
            for col in used.values():
                present |= pc.is_valid(table.column(col)).to_numpy(zero_copy_only=False)
            needed = np.flatnonzero(present[:stop])
        data = {field: table.column(col).to_pylist() for field, col in used.items()}
        extra = {c: table.column(c).to_pylist() for c in others}
        for k in needed.tolist():
            iid = ids[codes[k]]
            record = {field: values[k] for field, values in data.items()}
            text = item_text_from_record(record, f"{path}: row {k + 1}", bad_prices, iid)
            texts[k] = ItemText(title=text.title, brand=text.brand, categories=text.categories,
                                description=text.description, price=text.price,
                                extra={c: v[k] for c, v in extra.items()})
    if stop < n:
        iid = ids[codes[stop]]
        raise DataFormatError(f"{path}: row {stop + 1}: duplicate item_id {iid!r} "
                              f"(first at row {first_row[codes[stop]] + 1})")
    if used or others:
        warn_bad_prices(str(path), bad_prices)
    return dict(zip(ids, texts))  # no duplicate: row k holds ids[k]


def load_parquet(interactions: str | Path, items: str | Path | None = None, name: str | None = None,
                 user: str = "user_id", item: str = "item_id", time: str = "timestamp", item_id: str = "item_id",
                 title: str | None = "title", brand: str | None = "brand", categories: str | None = "categories",
                 description: str | None = "description", price: str | None = "price",
                 order: Literal["timestamp", "file"] = "timestamp", keep_unused_items: bool = False) -> SequenceDataset:
    """Load Parquet interactions (and items) with the given column names (see the module doc).

    ``items``: the items file (None: every item with empty text); ``item_id``: its id column;
    ``title`` ... ``price``: its text columns (None: not read). ``order``: ``"timestamp"`` (stable
    sort) or ``"file"``. ``keep_unused_items``: items without interactions stay in the catalogue.
    Item order is that of the items file (else of first appearance in the interaction rows); ``name`` defaults to the
    interactions file's directory name.
    """
    inter_path = Path(interactions)
    table = read_parquet_table(inter_path)
    if table.num_rows == 0:
        raise DataFormatError(f"{inter_path}: empty file (no interactions)")
    user_ids, users = _ids(table, inter_path, user, "user")
    item_ids, item_codes = _ids(table, inter_path, item, "item")
    times = _times(table, inter_path, time)
    if items is not None:
        columns = {"title": title, "brand": brand, "categories": categories, "description": description,
                   "price": price}
        texts = _read_items(Path(items), item_id, columns)
        unknown = ~np.fromiter(map(texts.__contains__, item_ids), dtype=bool, count=len(item_ids))
        if unknown.any():
            row = int(np.argmax(unknown[item_codes]))
            raise DataFormatError(f"{inter_path}: row {row + 1}: item {item_ids[item_codes[row]]!r} has no row in "
                                  f"{items} ({int(unknown.sum())} such item(s))")
    else:
        log.info("%s: no items file; every item has empty text (set text.fallback or text.embeddings in a recipe)",
                 inter_path)
        texts = dict.fromkeys(item_ids, ItemText())  # one shared (frozen) empty text, not one per item
    rows = InteractionColumns(user_ids=user_ids, users=users, item_ids=item_ids, items=item_codes, times=times)
    ds = build_dataset_columns(name or inter_path.parent.name, rows, texts, order=order,
                               source=str(inter_path), keep_unused=keep_unused_items)
    log.info("loaded %r", ds)
    return ds
