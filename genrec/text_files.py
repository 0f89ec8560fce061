"""Reading UTF-8 text files line by line, gunzipping ``*.gz``, with errors that name the file and
line: a truncated or corrupt gzip stream, invalid UTF-8 (with the byte offset of the first bad byte),
malformed JSON lines. Every line-oriented loader reads through these."""

from __future__ import annotations

import gzip
import io
import json
import zlib
from pathlib import Path
from typing import Any, Iterator

from genrec.columns import open_binary
from genrec.errors import DataFormatError, DataNotFoundError

__all__ = ["open_text", "iter_lines", "find_file", "find_optional_file", "iter_jsonl", "is_unicode"]


def open_text(path: Path) -> io.TextIOBase:
    """Open a UTF-8 text file, transparently gunzipping ``*.gz``; a leading byte-order mark is skipped.

    Prefer :func:`iter_lines`, which turns decoding and gzip failures into :class:`DataFormatError`.
    """
    return io.TextIOWrapper(open_binary(path), encoding="utf-8-sig")


def _locate_bad_utf8(path: Path) -> tuple[int, int, bytes] | None:
    """``(line, byte offset, bad bytes)`` of the first invalid UTF-8 in ``path`` (None if not found).

    Only run after a decoding error: the text reader decodes whole chunks, so its error says neither
    the line nor the file offset. Latin-1 maps bytes 1:1 to characters, so with ``newline=""`` the
    lines split exactly as in the text reader and their lengths are byte counts.
    """
    offset = 0
    try:
        with io.TextIOWrapper(open_binary(path), encoding="latin-1", newline="") as f:
            for lineno, line in enumerate(f, start=1):
                raw = line.encode("latin-1")
                try:
                    raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    return lineno, offset + e.start, raw[e.start:e.end]
                offset += len(raw)
    except (EOFError, zlib.error, gzip.BadGzipFile):
        pass
    return None


def iter_lines(path: Path) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, line)`` (1-based, newline kept) of a UTF-8 text file, gunzipping ``*.gz``.

    A truncated or corrupt gzip file or invalid UTF-8 raises :class:`DataFormatError` naming the
    file and the line reached (for UTF-8, the line and byte offset of the first bad byte).
    """
    lineno = 0
    gz = str(path).endswith(".gz")
    try:
        with open_text(path) as f:
            for lineno, line in enumerate(f, start=1):
                yield lineno, line
    except UnicodeDecodeError:
        hint = "save the file as UTF-8"
        if not gz:
            with open(path, "rb") as f:
                if f.read(2) == b"\x1f\x8b":
                    hint = f"it looks gzip-compressed: name it {path.name}.gz"
        found = _locate_bad_utf8(path)
        if found is None:
            raise DataFormatError(f"{path}:{lineno + 1}: not valid UTF-8 ({hint})") from None
        line_no, offset, bad = found
        what = " ".join(f"0x{b:02x}" for b in bad)
        where = "decompressed byte offset" if gz else "byte offset"
        raise DataFormatError(f"{path}:{line_no}: not valid UTF-8 (byte {what} at {where} {offset}; {hint})") from None
    except EOFError:
        raise DataFormatError(f"{path}:{lineno + 1}: truncated or corrupt gzip file (the compressed data ends "
                              f"before its end-of-stream marker; {lineno} complete line(s) read); re-download "
                              f"or re-create it") from None
    except (zlib.error, gzip.BadGzipFile) as e:
        raise DataFormatError(f"{path}:{lineno + 1}: corrupt gzip file ({e}; {lineno} complete line(s) read); "
                              f"re-download or re-create it") from None


def find_optional_file(directory: Path, stem: str) -> Path | None:
    """``directory/stem`` or ``directory/stem.gz``, None when neither exists; a clear error when both do
    (which one a run read would otherwise be a silent choice)."""
    for c in (directory / stem, directory / f"{stem}.gz"):
        if c.exists() and not c.is_file():  # a directory, say: skipped, the data's text was silently absent
            raise DataFormatError(f"{c}: is not a file")
    found = [c for c in (directory / stem, directory / f"{stem}.gz") if c.is_file()]
    if len(found) == 2:
        raise DataFormatError(f"{directory}: both {stem} and {stem}.gz exist; keep the one to read")
    return found[0] if found else None


def find_file(directory: Path, stem: str) -> Path:
    """:func:`find_optional_file` that must find one: a clear error when neither exists."""
    found = find_optional_file(directory, stem)
    if found is None:
        raise DataNotFoundError(f"{directory}: expected {stem} or {stem}.gz, found neither")
    return found


def is_unicode(text: str) -> bool:
    """Whether ``text`` can be written as UTF-8: JSON's ``"\\ud800"`` escape reads as a lone surrogate,
    which no file, response or Parquet column can hold (ids with one are refused where they are read)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def iter_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, object)`` for each non-blank line; malformed JSON names the line."""
    for lineno, line in iter_lines(path):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataFormatError(f"{path}:{lineno}: malformed JSON ({e.msg})") from None
        except ValueError as e:  # e.g. an integer literal longer than Python's digit limit
            raise DataFormatError(f"{path}:{lineno}: malformed JSON ({e})") from None
        except RecursionError:
            raise DataFormatError(f"{path}:{lineno}: malformed JSON (nested too deeply)") from None
        if not isinstance(obj, dict):
            raise DataFormatError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
        yield lineno, obj
