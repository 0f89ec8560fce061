"""Bulk (columnar) reading of interaction files: ids numbered in order of first appearance,
timestamps parsed column-wise, delimited text split by pyarrow. Each reader returns None when it
cannot prove it reads a file exactly as the row-by-row readers of :mod:`genrec.data` do; those then
read it (and name the file and line of any error)."""

from __future__ import annotations

import gzip
import io
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np


def open_binary(path: Path) -> io.BufferedIOBase:
    """The file's bytes, gunzipped when its name ends in ``.gz``."""
    return gzip.open(path, "rb") if str(path).endswith(".gz") else open(path, "rb")


@dataclass
class InteractionColumns:
    """Interactions as parallel arrays, in file order (what the bulk readers produce).

    ``user_ids`` / ``item_ids``: the distinct ids in order of first appearance, each one appearing in
    at least one row; ``users`` / ``items``: each row's index into them (int64); ``times``: each
    row's timestamp, int64 when every one is an integer, else float64.
    """

    user_ids: list[str]
    users: np.ndarray
    item_ids: list[str]
    items: np.ndarray
    times: np.ndarray

    def __len__(self) -> int:
        return len(self.users)


def factorize_ids(column: Any) -> tuple[list[str], np.ndarray]:
    """Distinct ids of a pyarrow string, integer or dictionary column and each row's index into them.

    Ids are ``str(value).strip()``, exactly as the row-by-row loaders write them, in order of first
    appearance; values that only differ in surrounding whitespace become one id. A null or blank
    value gives the id ``""``, for the caller to reject.
    """
    import pyarrow as pa

    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    if pa.types.is_dictionary(column.type):
        column = column.dictionary_decode()
    nulls = column.null_count > 0
    # hashing, distinct values in order of first appearance (a null is one more value)
    encoded = column.dictionary_encode(null_encoding="encode" if nulls else "mask")
    codes = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
    # strip the distinct values only, in Python, so that whitespace means what str.strip() means
    values = encoded.dictionary.to_pylist()
    if nulls:
        stripped = ["" if v is None else str(v).strip() for v in values]
    elif pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        stripped = [v.strip() for v in values]
    elif pa.types.is_integer(column.type):
        stripped = list(map(str, values))  # no whitespace to strip
    else:  # e.g. a dictionary of other values: as the row-by-row loaders write them
        stripped = [str(v).strip() for v in values]
    if len(set(stripped)) == len(stripped):
        return stripped, codes
    first: dict[str, int] = {}  # " a" and "a" are one id, as in the row-by-row loaders
    remap = np.fromiter((first.setdefault(s, len(first)) for s in stripped), dtype=np.int64, count=len(stripped))
    return list(first), remap[codes]


def parse_time_strings(column: Any) -> np.ndarray | None:
    """Timestamps of a pyarrow string column with :func:`parse_timestamp`'s result, or None when a
    value needs it row by row (to get its exact value or its error).

    All integers (spaces around allowed) give int64; otherwise plain decimals and integers give
    float64, unless a value is not finite or beyond 2**53 in magnitude (where a float could no longer
    tell integers apart: :func:`build_dataset` rejects that mix, naming the user).
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    trimmed = pc.utf8_trim(column, characters=" \t")
    # Arrow's int cast also reads "0x10" (16), which the row reader refuses: decimal digits only
    if pc.all(pc.match_substring_regex(trimmed, r"^[+-]?[0-9]+$")).as_py():
        try:
            return pc.cast(trimmed, pa.int64()).to_numpy(zero_copy_only=False)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass  # beyond int64: the row reader names it
    # every value an integer to int() ("+3", or beyond int64): int64 or an error, row by row
    if pc.all(pc.match_substring_regex(trimmed, r"^[+-]?[0-9]+$")).as_py():
        return None
    # restrict the float parser to forms whose value float() gives too (correctly rounded both ways)
    if not pc.all(pc.match_substring_regex(trimmed, r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$")).as_py():
        return None
    try:
        times = pc.cast(trimmed, pa.float64()).to_numpy(zero_copy_only=False)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None
    if not np.isfinite(times).all() or (np.abs(times) > 2.0 ** 53).any():
        return None
    return times


def simple_text_bytes(path: Path) -> bytes | None:
    """The bytes of a text file (gunzipped, byte-order mark dropped) when the bulk reader can take
    it: valid UTF-8 with ``\\n`` line ends only. None otherwise (corrupt gzip, bad UTF-8, ``\\r``)."""
    try:
        with open_binary(path) as f:
            data = f.read()
    except (OSError, EOFError, zlib.error):  # gzip.BadGzipFile is an OSError
        return None
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    if b"\r" in data:  # universal newlines also end lines at "\r": leave those files to the line reader
        return None
    if not data.isascii():
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            return None
    return data


def split_header(data: bytes) -> tuple[str, bytes]:
    """``(first line without its line end, the rest)`` of :func:`simple_text_bytes`'s result."""
    end = data.find(b"\n")
    if end < 0:
        return data.decode("utf-8"), b""
    return data[:end].decode("utf-8"), data[end + 1:]


def read_delimited_columns(rows: bytes, sep: str, ncol: int, wanted: Sequence[int]) -> list[Any] | None:
    """Columns ``wanted`` (pyarrow string arrays) of ``rows``, lines of ``ncol`` fields split on ``sep``
    (no quoting), or None when a line is not exactly that (blank lines of spaces, a wrong field
    count), leaving it to the line reader to skip or report. Empty lines are skipped, as there."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    names = [f"f{k}" for k in range(ncol)]
    try:
        table = pacsv.read_csv(
            pa.BufferReader(rows),
            read_options=pacsv.ReadOptions(column_names=names),
            parse_options=pacsv.ParseOptions(delimiter=sep, quote_char=False, double_quote=False,
                                             escape_char=False, newlines_in_values=False, ignore_empty_lines=True),
            convert_options=pacsv.ConvertOptions(column_types={n: pa.string() for n in names},
                                                 include_columns=[names[k] for k in wanted],
                                                 strings_can_be_null=False, quoted_strings_can_be_null=False))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None
    return [table.column(names[k]) for k in wanted]


__all__ = ["InteractionColumns", "factorize_ids", "open_binary", "parse_time_strings", "read_delimited_columns",
           "simple_text_bytes", "split_header"]
