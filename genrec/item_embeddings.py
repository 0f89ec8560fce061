"""Precomputed item embeddings (the recipe's ``text.embeddings: PATH``), in place of the text encoder.

Two layouts:

* ``PATH.npy``: a 2-d float array ``[n, dim]`` (``allow_pickle`` off) plus an id list, one item id a
  line (UTF-8, optionally gzipped), row k of the array being the k-th id. The id list is
  ``ids_path`` when given, else ``PATH`` with ``.npy`` replaced by ``.ids.txt``
  (``item_vectors.npy`` -> ``item_vectors.ids.txt``);
* ``PATH.parquet``: an id column (strings or integers, default ``item_id``) and a vector column (a list
  of floats per row, default ``embedding``).

:func:`load_item_embeddings` returns the vectors reordered to the dataset's item order. The file must
hold exactly the dataset's items: a missing id, an id the dataset does not have (filter the file to the
catalogue first), a repeated id, rows of unequal length, a dimension other than the expected one, or
a NaN / infinite value is a :class:`DataFormatError` naming the file and the first ids (or line / row).
"""

from __future__ import annotations

import contextlib
import logging
import zipfile
from pathlib import Path
from typing import Sequence

import numpy as np

from genrec.text_files import iter_lines
from genrec.errors import DataFormatError, DataNotFoundError

log = logging.getLogger(__name__)

__all__ = ["load_item_embeddings", "embedding_files", "default_ids_path"]


def default_ids_path(path: str | Path) -> Path:
    """The id list of a ``.npy`` file: ``X.npy`` -> ``X.ids.txt`` (next to it)."""
    path = Path(path)
    return path.with_name(path.name[:-len(".npy")] + ".ids.txt") if path.name.endswith(".npy") \
        else path.with_name(path.name + ".ids.txt")


def embedding_files(path: str | Path, ids_path: str | Path | None = None) -> list[Path]:
    """The files :func:`load_item_embeddings` reads (for fingerprints): the array and, for ``.npy``, its id list."""
    path = Path(path)
    if path.suffix == ".parquet":
        return [path]
    return [path, Path(ids_path) if ids_path is not None else default_ids_path(path)]


def _read_ids(path: Path) -> list[str]:
    if not path.is_file():
        raise DataNotFoundError(f"{path}: id list of the embeddings not found (one item id a line, row k of the "
                                f"array being the k-th id)")
    ids: list[str] = []
    first: dict[str, int] = {}
    with contextlib.closing(iter_lines(path)) as lines:
        for lineno, line in lines:
            iid = line.strip()
            if not iid:
                if line.strip("\r\n"):
                    raise DataFormatError(f"{path}:{lineno}: blank item id")
                continue
            if iid in first:
                raise DataFormatError(f"{path}:{lineno}: item id {iid!r} repeated (first at line {first[iid]})")
            first[iid] = lineno
            ids.append(iid)
    if not ids:
        raise DataFormatError(f"{path}: empty id list")
    return ids


def _read_npy(path: Path, ids_path: Path) -> tuple[list[str], np.ndarray]:
    try:
        x = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise DataFormatError(f"{path}: not a .npy array of item embeddings ({e})") from None
    if isinstance(x, np.lib.npyio.NpzFile):  # (it held the file open, and "shape None" named nothing)
        x.close()
        raise DataFormatError(f"{path}: a .npz archive, not a .npy array; save the array with numpy.save (its ids "
                              f"one per line in {ids_path.name}) or write a .parquet file")
    if not isinstance(x, np.ndarray) or x.ndim != 2 or 0 in x.shape:
        raise DataFormatError(f"{path}: item embeddings must be a non-empty 2-d array [items, dim], got shape "
                              f"{getattr(x, 'shape', None)}")
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise DataFormatError(f"{path}: item embeddings must be numbers, got dtype {x.dtype}")
    ids = _read_ids(ids_path)
    if len(ids) != len(x):
        raise DataFormatError(f"{path}: {len(x)} rows but {len(ids)} ids in {ids_path}; row k must be the k-th id")
    return ids, x


def _read_parquet(path: Path, id_column: str, vector_column: str) -> tuple[list[str], np.ndarray]:
    import pyarrow.types as pt

    from genrec.parquet_data import read_parquet_table

    table = read_parquet_table(path)
    for col, what in ((id_column, "id"), (vector_column, "vector")):
        if col not in table.column_names:
            raise DataFormatError(f"{path}: no {what} column {col!r} (columns: {table.column_names})")
    t = table.column(id_column).type
    if not (pt.is_string(t) or pt.is_large_string(t) or pt.is_integer(t)):
        raise DataFormatError(f"{path}: id column {id_column!r} must hold strings or integers, got {t}")
    vt = table.column(vector_column).type
    if not (pt.is_list(vt) or pt.is_large_list(vt) or pt.is_fixed_size_list(vt)) or not (
            pt.is_floating(vt.value_type) or pt.is_integer(vt.value_type)):
        raise DataFormatError(f"{path}: vector column {vector_column!r} must hold lists of numbers, got {vt}")
    raw_ids = table.column(id_column).to_pylist()
    vectors = table.column(vector_column).to_pylist()
    if not raw_ids:
        raise DataFormatError(f"{path}: empty file (no item embeddings)")
    ids: list[str] = []
    first: dict[str, int] = {}
    dim = None
    for row, (iid, v) in enumerate(zip(raw_ids, vectors), start=1):
        if iid is None or not str(iid).strip():
            raise DataFormatError(f"{path}: row {row}: empty item id")
        iid = str(iid).strip()
        if iid in first:
            raise DataFormatError(f"{path}: row {row}: item id {iid!r} repeated (first at row {first[iid]})")
        first[iid] = row
        if v is None or any(e is None for e in v):
            raise DataFormatError(f"{path}: row {row}: item {iid!r} has no vector (or a null value in it)")
        if dim is None:
            dim = len(v)
        elif len(v) != dim:
            raise DataFormatError(f"{path}: row {row}: item {iid!r} has a vector of length {len(v)}, the first row "
                                  f"{dim}")
        ids.append(iid)
    if not dim:
        raise DataFormatError(f"{path}: the vectors are empty")
    return ids, np.asarray(vectors, dtype=np.float64)


def load_item_embeddings(path: str | Path, item_ids: Sequence[str], ids_path: str | Path | None = None,
                         id_column: str = "item_id", vector_column: str = "embedding",
                         dim: int | None = None) -> np.ndarray:
    """Float32 ``[len(item_ids), d]``: the vectors of ``path`` (see the module doc) in ``item_ids`` order.

    ``dim``: the dimension they must have (None: any). Every mismatch is a :class:`DataFormatError`
    naming the file and the first ids at fault.
    """
    path = Path(path)
    if not path.is_file():
        raise DataNotFoundError(f"{path}: precomputed item embeddings not found")
    if path.suffix == ".parquet":
        ids, x = _read_parquet(path, id_column, vector_column)
    elif path.suffix == ".npy":
        ids, x = _read_npy(path, Path(ids_path) if ids_path is not None else default_ids_path(path))
    else:
        raise DataFormatError(f"{path}: precomputed item embeddings must be a .npy file (with an id list) or a "
                              f".parquet file (id and vector columns)")
    if dim is not None and x.shape[1] != dim:
        raise DataFormatError(f"{path}: the embeddings have dimension {x.shape[1]}, expected {dim}")
    index = {iid: k for k, iid in enumerate(ids)}
    missing = [i for i in item_ids if i not in index]
    if missing:
        raise DataFormatError(f"{path}: {len(missing)} of the dataset's {len(item_ids)} items have no embedding, "
                              f"e.g. {missing[:5]}")
    wanted = set(item_ids)
    extra = [i for i in ids if i not in wanted]
    if extra:
        raise DataFormatError(f"{path}: {len(extra)} embedding(s) of items the dataset does not have, e.g. "
                              f"{extra[:5]}; keep exactly the dataset's items (after its filtering)")
    rows = np.fromiter((index[i] for i in item_ids), dtype=np.int64, count=len(item_ids))
    with np.errstate(over="ignore"):  # a value beyond float32 becomes inf and is reported below
        out = np.ascontiguousarray(x[rows], dtype=np.float32)
    bad = np.flatnonzero(~np.isfinite(out).all(axis=1))
    if len(bad):
        raise DataFormatError(f"{path}: {len(bad)} embedding(s) hold NaN or infinite values (or values beyond "
                              f"float32), e.g. items {[item_ids[k] for k in bad[:5]]}")
    return out
