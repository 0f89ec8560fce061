"""Save fitted post-hoc fusion methods to one file and load them back, safely.

The file is a torch file (written atomically) holding only plain values, lists, dicts and tensors,
so it loads with ``torch.load(path, weights_only=True)``::

    {"format": "genrec-fusion-methods",
     "format_version": 1,
     "methods": {name: {"class": "LearnedGateFusion", "state": method.state()}, ...}}

Loading maps each class name through :data:`METHOD_CLASSES` (never an arbitrary class) and rebuilds
the method with its ``from_state``. A damaged or unsafe file, another format version, an unknown
class name or a malformed state is a :class:`~genrec.errors.CheckpointError` naming the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from fusion.methods import AdaptiveFusion, FixedWeightFusion, LearnedGateFusion
from genrec.artifacts import load_checkpoint, torch_save
from genrec.errors import CheckpointError

FORMAT = "genrec-fusion-methods"
#: bump when a method's state changes incompatibly; files of another version are refused
FORMAT_VERSION = 1
#: the classes a file may name: class name -> class (the only ones :func:`load_methods` builds)
METHOD_CLASSES: dict[str, type] = {cls.__name__: cls for cls in (FixedWeightFusion, AdaptiveFusion, LearnedGateFusion)}

_REMEDY = "refit the fusion methods and save them again with this genrec"


def methods_state(methods: Mapping[str, Any]) -> dict[str, Any]:
    """The file's content for ``{name: fitted method}`` (a ``ValueError`` for an unfitted one)."""
    out: dict[str, Any] = {}
    for name, method in methods.items():
        if not isinstance(name, str):
            raise TypeError(f"fusion method names must be strings, got {name!r}")
        cls_name = type(method).__name__
        if METHOD_CLASSES.get(cls_name) is not type(method):
            raise TypeError(f"cannot save fusion method {name!r}: {type(method).__module__}.{cls_name} is not one "
                            f"of {sorted(METHOD_CLASSES)}")
        try:
            out[name] = {"class": cls_name, "state": method.state()}
        except ValueError as e:
            raise ValueError(f"cannot save fusion method {name!r}: {e}") from e
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "methods": out}


def save_methods(path: str | Path, methods: Mapping[str, Any]) -> Path:
    """Write ``{name: fitted method}`` to ``path`` atomically (nothing is written if one is unfitted)."""
    return torch_save(path, methods_state(methods))


def _error(path: Path, what: str, remedy: str = _REMEDY) -> CheckpointError:
    err = CheckpointError(f"{path} {what}; {remedy}")
    err.reason = what
    return err


def load_methods(path: str | Path) -> dict[str, Any]:
    """The fitted methods saved by :func:`save_methods`, by name, in their saved order."""
    path = Path(path)
    obj = load_checkpoint(path, kind="fusion methods file", keys=("format", "format_version", "methods"))
    if obj["format"] != FORMAT:
        raise _error(path, f"is not a genrec fusion methods file (format {obj['format']!r}, expected {FORMAT!r})",
                     "check the path")
    version = obj["format_version"]
    if version != FORMAT_VERSION or isinstance(version, bool):
        raise _error(path, f"has fusion methods format version {version!r}, this genrec reads version "
                     f"{FORMAT_VERSION}")
    entries = obj["methods"]
    if not isinstance(entries, dict):
        raise _error(path, f"is damaged: 'methods' is a {type(entries).__name__}, not a dict")
    methods: dict[str, Any] = {}
    for name, entry in entries.items():
        if not isinstance(name, str) or not isinstance(entry, dict) or set(entry) != {"class", "state"}:
            raise _error(path, f"is damaged: method entry {name!r} is not a {{'class', 'state'}} dict")
        cls = METHOD_CLASSES.get(entry["class"]) if isinstance(entry["class"], str) else None
        if cls is None:
            raise _error(path, f"names an unknown fusion method class {entry['class']!r} for method {name!r} "
                         f"(known: {', '.join(sorted(METHOD_CLASSES))})",
                         "it was written by another genrec or edited: " + _REMEDY)
        try:
            methods[name] = cls.from_state(entry["state"])
        except (ValueError, TypeError, KeyError, RuntimeError) as e:
            raise _error(path, f"holds a malformed {entry['class']} state for method {name!r} ({e})") from e
    return methods


__all__ = ["FORMAT", "FORMAT_VERSION", "METHOD_CLASSES", "load_methods", "methods_state", "save_methods"]
