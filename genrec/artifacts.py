"""Atomic artifact writing: a killed run never leaves a half-written file behind; and safe
checkpoint loading: :func:`load_checkpoint` reads torch files with ``weights_only=True`` (tensors,
numbers, strings, lists, dicts: nothing that runs code) and turns every failure into a
:class:`~genrec.errors.CheckpointError` naming the file and the remedy."""

from __future__ import annotations

import json
import os
import re
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterable

from genrec.errors import CheckpointError, CheckpointNotFoundError, DataFormatError


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` then rename ``tmp_path`` onto ``path`` (same directory, so atomic)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600 files; give artifacts normal permissions
    try:
        write(tmp_path)
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    return atomic_write(path, lambda p: p.write_bytes(data))


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


def save_json(path: str | Path, obj: Any, *, strict: bool = False) -> Path:
    """Write JSON atomically (indented, keys kept in insertion order). NaN (a metric of an empty
    group) is written as Python's ``NaN`` token, which :func:`load_json` reads back as NaN. With
    ``strict``, every non-finite number is written as ``null`` instead, so that any JSON reader
    (``jq``, JavaScript) accepts the file: for files people read (a run's ``results.json``), not for
    state genrec reads back (a fitted offset of -inf must stay -inf)."""
    if strict:
        obj = finite_or_none(obj)
    text = json.dumps(obj, indent=2, ensure_ascii=False, default=_json_default, allow_nan=not strict)
    return atomic_write_text(path, text + "\n")


def finite_or_none(obj: Any) -> Any:
    """``obj`` with every NaN or infinite number (NumPy's included) replaced by None; containers copied."""
    import math

    import numpy as np

    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_none(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return finite_or_none(obj.tolist())
    return obj


def load_json(path: str | Path) -> Any:
    """A JSON file's content; a damaged one (malformed, not UTF-8) is a :class:`CheckpointError`
    naming it (a ``ValueError``, as ``json`` raises)."""
    with open(path, encoding="utf-8") as f:
        try:
            return json.load(f)
        except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
            raise CheckpointError(f"{path}: damaged JSON file ({e})") from None


def load_arrays(path: str | Path) -> Any:
    """A ``.npy`` file's ndarray, or a ``.npz`` archive's arrays as a dict by name (whatever the file's suffix
    says), read without pickles; a file NumPy cannot read (truncated, pickled, a damaged archive, not
    NumPy at all) is a :class:`~genrec.errors.DataFormatError` naming it."""
    import numpy as np

    try:
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.lib.npyio.NpzFile):
            with loaded:
                return {name: loaded[name] for name in loaded.files}
        return loaded
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise DataFormatError(f"{path}: not a readable NumPy .npy / .npz file ({e})") from None


def torch_save(path: str | Path, obj: Any) -> Path:
    """``torch.save`` atomically."""
    import torch

    def write(p: Path) -> None:
        # through a Python file object: a full disk is then an OSError (ENOSPC), not torch's
        # "[enforce fail at inline_container.cc] unexpected pos" RuntimeError
        with open(p, "wb") as f:
            torch.save(obj, f)

    return atomic_write(path, write)


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


# ----------------------------------------------------------------------------------------------
# Safe checkpoint loading

_NDARRAY = "__ndarray__"  # tag of a numpy array stored as a tensor (see pack_arrays)


def load_checkpoint(path: str | Path, map_location: Any = "cpu", *, kind: str = "checkpoint",
                    keys: Iterable[str] = ()) -> dict:
    """A torch checkpoint (a dict) loaded with ``weights_only=True``, so a crafted file cannot run
    code; ``keys`` must be present. Every failure is a :class:`CheckpointError` naming ``path``: the
    file is missing, truncated or corrupt, holds Python objects outside torch's allow-list, or is
    not a ``kind`` (no dict, or ``keys`` missing). The error's ``reason`` attribute is the message
    without the path and the remedy (for callers that combine several files into one message)."""
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise _error(path, "not found", "check the path, or train (or save) that model first")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except MemoryError:
        raise
    except PermissionError as e:
        raise _error(path, f"cannot be read ({e.strerror})", "check its permissions") from e
    except pickle.UnpicklingError as e:
        names = _unsafe_globals(path, e)
        if names:
            raise _error(path, "contains Python objects that genrec does not load (loading them could run code): "
                         + ", ".join(names),
                         "genrec checkpoints hold only tensors, numbers, strings, lists and dicts (an older "
                         "genrec stored numpy arrays this way): delete the file and rerun that stage to write "
                         "it again") from e
        raise _error(path, f"is truncated or corrupt ({_reason(path, e)})", _CORRUPT_REMEDY) from e
    except Exception as e:  # EOFError, OSError, RuntimeError (PytorchStreamReader), zip and pickle errors, ...
        raise _error(path, f"is truncated or corrupt ({_reason(path, e)})", _CORRUPT_REMEDY) from e
    if not isinstance(obj, dict):
        raise _error(path, f"is not a genrec {kind} (it holds a {type(obj).__name__}, not a dict)", "")
    missing = [k for k in keys if k not in obj]
    if missing:
        raise _error(path, f"is not a genrec {kind} (no {', '.join(map(repr, missing))} entry)", "")
    return obj


_CORRUPT_REMEDY = ("restore it from a copy, or delete it to start again (in a recipe run directory, delete the "
                   "stage's whole directory, e.g. <run>/sasrec, and rerun)")


def _error(path: Path, reason: str, remedy: str) -> CheckpointError:
    """``"<path> <reason>; <remedy>"`` (``"checkpoint <path> not found; ..."`` for a missing file)."""
    text = f"checkpoint {path} not found" if reason == "not found" else f"{path} {reason}"
    cls = CheckpointNotFoundError if reason == "not found" else CheckpointError
    err = cls(f"{text}; {remedy}" if remedy else text)
    err.reason = reason
    return err


def _reason(path: Path, e: BaseException) -> str:
    """A one-line cause: torch's weights-only errors are paragraphs, the useful part is one line."""
    try:
        if path.stat().st_size == 0:
            return "empty file"
        with open(path, "rb") as f:
            zipped = f.read(4) == b"PK\x03\x04"
        if zipped and not zipfile.is_zipfile(path):  # torch's own error is a bare OSError/RuntimeError
            return f"incomplete zip archive, {_first_sentence(e)}"
    except OSError:
        pass
    if isinstance(e, EOFError) and not str(e).strip():
        return "EOFError: Ran out of input"
    return _first_sentence(e)


def _first_sentence(e: BaseException) -> str:
    text = str(e)
    m = re.search(r"WeightsUnpickler error:\s*(.+)", text)
    if m:
        text = m.group(1)
    text = text.strip().splitlines()[0].strip() if text.strip() else ""
    text = text.split(". ")[0].rstrip(".")[:160]
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _unsafe_globals(path: Path, e: BaseException) -> list[str]:
    """The non-allow-listed globals that made a weights-only load fail; [] for other unpickling errors."""
    names = re.findall(r"Unsupported (?:global|class)[:\s]+(?:GLOBAL\s+)?([\w.]+)", str(e))
    if names:
        return sorted(set(names))
    if "Unsupported global" in str(e) or "Unsupported class" in str(e):
        try:
            import torch

            return sorted(set(torch.serialization.get_unsafe_globals_in_checkpoint(path))) or ["unknown"]
        except Exception:
            return ["unknown"]
    return []


def pack_arrays(obj: Any) -> Any:
    """``obj`` storable for :func:`load_checkpoint`: numpy arrays become tagged tensors (dtype kept),
    numpy scalars Python numbers, tuples stay tuples; :func:`unpack_arrays` reverses it."""
    import numpy as np
    import torch

    if isinstance(obj, np.ndarray):
        if obj.dtype.kind not in "biuf":
            raise TypeError(f"cannot store a numpy array of dtype {obj.dtype} in a checkpoint")
        return {_NDARRAY: torch.from_numpy(np.ascontiguousarray(obj))}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return {k: pack_arrays(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(pack_arrays(v) for v in obj)
    return obj


def unpack_arrays(obj: Any) -> Any:
    """Inverse of :func:`pack_arrays`: tagged tensors back to numpy arrays, everything else as is."""
    if isinstance(obj, dict):
        if len(obj) == 1 and _NDARRAY in obj:
            return obj[_NDARRAY].numpy()
        return {k: unpack_arrays(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(unpack_arrays(v) for v in obj)
    return obj
