"""Helpers shared by the subcommands: loading datasets and semantic-ID tables, every failure a
:class:`~genrec.errors.GenrecError`.

The library raises ``FileNotFoundError`` for a missing dataset directory or file (as Python code
expects); on the command line that is a user error, so it becomes a one-line
:class:`~genrec.errors.DataFormatError` naming the path instead of a traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from genrec.data import SequenceDataset
from genrec.errors import CheckpointError, ConfigError, DataFormatError, GenrecError
from genrec.splits import LeaveOneOutSplit, leave_one_out

if TYPE_CHECKING:
    from quantize.semantic_ids import SemanticIdTable

#: the semantic-ID table file in a ``genrec quantize`` output directory
TABLE_FILE = "semantic_ids.json"

_MISSING = (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)


def _path_message(e: OSError) -> str:
    # "[Errno 2] No such file or directory: 'x'" -> "x: No such file or directory"
    return f"{e.filename}: {e.strerror}" if e.filename and e.strerror else str(e)


def load_dataset_spec(spec: str, order: str = "file") -> SequenceDataset:
    """:func:`genrec.datasets.load_dataset` for a command: a missing or unreadable path raises
    :class:`DataFormatError` naming it. ``order="timestamp"`` (re-sort each user's rows by time)
    applies to plain-format directories only."""
    from genrec.datasets import load_dataset

    kwargs = {}
    if order != "file":
        if not (spec.startswith("plain:") or Path(spec).is_dir()):
            raise ConfigError(f"--order {order} applies to plain-format directories only, not {spec!r}")
        kwargs["order"] = order
    try:
        return load_dataset(spec, **kwargs)
    except _MISSING as e:
        raise DataFormatError(_path_message(e)) from None


def load_split(spec: str, max_history: int, order: str = "file") -> tuple[SequenceDataset, LeaveOneOutSplit]:
    """The dataset named by ``spec`` and its leave-one-out split (errors as :func:`load_dataset_spec`
    and :func:`~genrec.splits.leave_one_out`: all :class:`GenrecError` exceptions)."""
    dataset = load_dataset_spec(spec, order=order)
    return dataset, leave_one_out(dataset, max_history=max_history)


def semantic_id_table_path(path: str | Path) -> Path:
    """``path`` itself, or ``path/semantic_ids.json`` for a directory (``genrec quantize``'s output);
    :class:`CheckpointError` naming the path when there is no such file."""
    path = Path(path)
    if path.is_dir():
        if not (path / TABLE_FILE).is_file():
            raise CheckpointError(f"{path}: no {TABLE_FILE} in this directory (expected the output directory "
                                  f"of 'genrec quantize' or its {TABLE_FILE})")
        return path / TABLE_FILE
    if not path.is_file():
        raise CheckpointError(f"{path}: semantic-ID table not found (expected the output directory of "
                              f"'genrec quantize' or its {TABLE_FILE})")
    return path


def load_semantic_id_table(path: str | Path) -> "SemanticIdTable":
    """A :class:`~quantize.semantic_ids.SemanticIdTable` from its JSON file or a directory holding
    ``semantic_ids.json``; a missing, malformed or foreign file raises :class:`CheckpointError`."""
    from quantize.semantic_ids import SemanticIdTable

    file = semantic_id_table_path(path)
    try:
        return SemanticIdTable.load(file)
    except GenrecError:
        raise
    except (ValueError, KeyError, TypeError) as e:  # bad JSON, not a table, or a table with bad fields
        detail = str(e) if isinstance(e, ValueError) else f"bad or missing field {e}"
        if not detail.startswith(str(file)):
            detail = f"{file}: {detail}"
        raise CheckpointError(f"{detail} (not a readable genrec semantic-ID table)") from None


__all__ = ["TABLE_FILE", "load_dataset_spec", "load_semantic_id_table", "load_split", "semantic_id_table_path"]
