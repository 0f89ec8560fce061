"""Batch inference over files: read many users' histories, recommend in chunks, write the results.

Input (:func:`read_histories`), by extension (``.gz`` allowed):

- ``.jsonl``: one object per line, ``{"user_id": "u1", "history": ["i3", "i9", ...]}`` (oldest first;
  ``user_id`` optional, default ``"line:N"``, N the line number);
- ``.tsv``: a header naming either ``user_id`` and ``history`` (item ids separated by spaces), or
  ``user_id``, ``item_id`` and ``timestamp`` (an interaction log such as a plain-format dataset's
  ``interactions.tsv``: each user's rows in file order form the history, with a warning where a
  user's timestamps go back, as a dataset's loader gives).

Each user once (a repeated ``user_id`` is an error naming both lines), ids stripped of surrounding
space and never empty; a file with no history is an error. The output path is checked writable
before any model work.

Output (:func:`write_recommendations`), by extension, written atomically: ``.jsonl`` (one object per
user: ``user_id``, ``items``, ``scores``, ``gate``, ``unknown_ids``, ``fallback``) or ``.parquet``
(the same columns, lists as list columns).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from genrec.artifacts import atomic_write, atomic_write_text
from genrec.data import order_events, read_interactions_tsv
from genrec.errors import DataFormatError
from genrec.text_files import is_unicode, iter_jsonl, iter_lines

log = logging.getLogger(__name__)

__all__ = ["read_histories", "write_recommendations", "recommend_file", "BatchSummary", "OUTPUT_FORMATS"]

OUTPUT_FORMATS = (".jsonl", ".parquet")


def _suffix(path: Path) -> str:
    name = path.name[:-3] if path.name.endswith(".gz") else path.name
    return Path(name).suffix.lower()


def read_histories(path: str | Path) -> tuple[list[str], list[list[str]]]:
    """``(user_ids, histories)`` from a ``.jsonl`` or ``.tsv`` file (module doc); a bad line is a
    :class:`~genrec.errors.DataFormatError` naming the file and line."""
    path = Path(path)
    if not path.is_file():
        if path.exists():  # a pipe, a device, a directory: the readers need a file they can read twice
            raise DataFormatError(f"{path}: not a regular file; write the histories to a .jsonl or .tsv file")
        raise DataFormatError(f"{path}: no such input file")
    kind = _suffix(path)
    if kind not in (".jsonl", ".tsv"):
        raise DataFormatError(f"{path}: unknown input format {kind or '(no extension)'!r}; use .jsonl or .tsv")
    users, histories, lines = _read_jsonl(path) if kind == ".jsonl" else _read_tsv(path)
    if not users:
        raise DataFormatError(f"{path}: no histories (expected one user per line)")
    first: dict[str, int] = {}
    for user, line in zip(users, lines):  # one output row per user: a repeated id would be ambiguous
        if user in first:
            raise DataFormatError(f"{path}:{line}: user_id {user!r} repeats line {first[user]}; give each user "
                                  "one line (or an interaction log with user_id, item_id, timestamp)")
        first[user] = line
    return users, histories


def _read_jsonl(path: Path) -> tuple[list[str], list[list[str]], list[int]]:
    users, histories, lines = [], [], []
    for lineno, obj in iter_jsonl(path):
        where = f"{path}:{lineno}"
        unknown = sorted(set(obj) - {"user_id", "history"})
        if unknown:
            raise DataFormatError(f"{where}: unknown key(s) {unknown}; expected 'user_id' and 'history'")
        history = obj.get("history")
        if not isinstance(history, list) or not all(isinstance(i, (str, int)) and not isinstance(i, bool)
                                                    for i in history):
            raise DataFormatError(f"{where}: 'history' must be a list of item ids (strings), got "
                                  f"{type(history).__name__ if not isinstance(history, list) else 'a list with other values'}")
        user = obj.get("user_id", f"line:{lineno}")  # no id given: named by its line, never like a real id
        if isinstance(user, bool) or not isinstance(user, (str, int)):
            raise DataFormatError(f"{where}: 'user_id' must be a string, got {type(user).__name__}")
        if not str(user).strip():
            raise DataFormatError(f"{where}: empty user_id")
        if not is_unicode(str(user)) or not all(is_unicode(str(i)) for i in history):
            raise DataFormatError(f"{where}: an id is not valid Unicode (a lone surrogate such as \\ud800)")
        items = [str(i).strip() for i in history]  # as the .tsv reader reads ids: stripped, never empty
        if "" in items:
            raise DataFormatError(f"{where}: history item {items.index('')} is an empty id")
        users.append(str(user).strip())
        histories.append(items)
        lines.append(lineno)
    return users, histories, lines


def _read_tsv(path: Path) -> tuple[list[str], list[list[str]], list[int]]:
    lines = iter_lines(path)
    _, header_line = next(lines, (1, ""))
    header = [h.strip() for h in header_line.rstrip("\r\n").split("\t")]
    lines.close()
    if "history" not in header:
        if "item_id" in header:  # an interaction log
            by_user = read_interactions_tsv(path)  # one history per user by construction
            # rows as given, as a dataset's: warns where time goes back
            order_events(by_user, "file", str(path), "sort each user's rows by timestamp to rank on time order")
            return list(by_user), [[item for item, _ in events] for events in by_user.values()], [0] * len(by_user)
        raise DataFormatError(f"{path}:1: header {header} needs 'user_id' and 'history' (space-separated item ids), "
                              f"or 'user_id', 'item_id' and 'timestamp' (an interaction log)")
    if "user_id" not in header or len(set(header)) != len(header):
        raise DataFormatError(f"{path}:1: header {header} needs 'user_id' and 'history', each once")
    cu, ch = header.index("user_id"), header.index("history")
    users, histories, lines = [], [], []
    for lineno, line in iter_lines(path):
        if lineno == 1 or not line.rstrip("\r\n"):  # a blank line; one of tabs or spaces is a row (refused)
            continue
        parts = line.rstrip("\r\n").split("\t")
        if len(parts) != len(header):
            raise DataFormatError(f"{path}:{lineno}: expected {len(header)} tab-separated fields, got {len(parts)}")
        if not parts[cu].strip():
            raise DataFormatError(f"{path}:{lineno}: empty user_id")
        users.append(parts[cu].strip())
        histories.append(parts[ch].split())
        lines.append(lineno)
    return users, histories, lines


def write_recommendations(path: str | Path, user_ids: Sequence[str], recs: Sequence[Any]) -> Path:
    """Write one row per user (``recs``: :class:`genrec.Recommendations`) to ``.jsonl`` or
    ``.parquet``, atomically."""
    path = Path(path)
    kind = path.suffix.lower()
    if kind == ".jsonl":
        text = "".join(json.dumps({"user_id": u, **r.to_dict()}, ensure_ascii=False) + "\n"
                       for u, r in zip(user_ids, recs))
        return atomic_write_text(path, text)
    if kind == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.table({
            "user_id": pa.array(list(user_ids), pa.string()),
            "items": pa.array([r.items for r in recs], pa.list_(pa.string())),
            # float64, as the JSONL output's numbers: both formats give the same values
            "scores": pa.array([r.scores for r in recs], pa.list_(pa.float64())),
            "gate": pa.array([r.gate for r in recs], pa.float64()),
            "unknown_ids": pa.array([r.unknown_ids for r in recs], pa.list_(pa.string())),
            "fallback": pa.array([r.fallback for r in recs], pa.bool_()),
        })
        return atomic_write(path, lambda p: pq.write_table(table, p))
    raise DataFormatError(f"{path}: unknown output format {kind or '(no extension)'!r}; use "
                          f"{' or '.join(OUTPUT_FORMATS)}")


def _check_writable(out: Path) -> None:
    """Refuse an output path that cannot be written (a directory, an unwritable folder) before any model
    work, naming it (:class:`~genrec.errors.DataFormatError`)."""
    import tempfile

    if out.is_dir():
        raise DataFormatError(f"{out}: is a directory; give a file path for the recommendations")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out.parent, prefix=f".{out.name}.", suffix=".check"):
            pass
    except OSError as e:
        raise DataFormatError(f"{out}: cannot write there ({e.strerror or e})") from None


@dataclass
class BatchSummary:
    """What :func:`recommend_file` did: users, seconds of model work, users per second, how many
    histories held unknown ids and how many got the popularity fallback."""

    users: int
    seconds: float
    users_per_second: float
    with_unknown_ids: int
    fallbacks: int


def recommend_file(recommender: Any, input_path: str | Path, output_path: str | Path, k: int | None = None,
                   exclude_seen: bool = False, on_unknown: str = "skip", chunk_size: int = 2048,
                   progress: bool | None = None) -> BatchSummary:
    """Recommend ``k`` items (default 10, or fewer where the method ranks fewer: ``max_k``) for every
    history of ``input_path`` and write them to ``output_path`` (formats: module doc), ``chunk_size``
    histories per model call, with a progress bar on a terminal."""
    from tqdm import tqdm

    if k is None:
        k = min(10, recommender.max_k)

    out = Path(output_path)
    if out.suffix.lower() not in OUTPUT_FORMATS:  # before any model work (no .gz output)
        raise DataFormatError(f"{output_path}: unknown output format; use {' or '.join(OUTPUT_FORMATS)}")
    if out.resolve() == Path(input_path).resolve():  # the histories would be replaced by their lists
        raise DataFormatError(f"{output_path}: is the input file; write the recommendations elsewhere")
    _check_writable(out)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    users, histories = read_histories(input_path)
    if on_unknown == "error":  # fail before hours of work, naming the user
        for u, h in zip(users, histories):
            missing = [i for i in h if i not in recommender.index]
            if missing:
                from genrec.errors import UnknownItemError

                raise UnknownItemError(f"{input_path}: user {u!r}: unknown item id(s) {missing[:5]}", missing)
    recs: list[Any] = []
    t0 = time.perf_counter()
    with tqdm(total=len(histories), unit=" users", desc="recommend", disable=None if progress is None else not progress) as bar:
        for s in range(0, len(histories), chunk_size):
            recs += recommender.recommend_batch(histories[s:s + chunk_size], k, exclude_seen, on_unknown)
            bar.update(min(chunk_size, len(histories) - s))
    seconds = time.perf_counter() - t0
    write_recommendations(output_path, users, recs)
    summary = BatchSummary(len(users), seconds, len(users) / seconds if seconds > 0 else float("inf"),
                           sum(1 for r in recs if r.unknown_ids), sum(1 for r in recs if r.fallback))
    log.info("recommended %d users in %.1f s (%.1f users/s)", summary.users, seconds, summary.users_per_second)
    return summary
