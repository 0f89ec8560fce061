"""Resolve a dataset *spec* string to a :class:`~genrec.data.SequenceDataset`.

Accepted specs::

    DIR                                  an existing directory in the plain format (load_plain)
    plain:DIR                            the same, explicitly
    synthetic                            the synthetic demo dataset (make_synthetic, defaults)
    synthetic:num_users=500,seed=3       ... with keyword arguments (ints, floats, seq_len=5-15)
    amazon2014:Beauty                    Amazon 2014 5-core category (downloaded to the cache)
    amazon2023:All_Beauty                Amazon 2023 category (Hugging Face hub or local JSONL files)

The keyword forms win over a directory of the same name (use ``./synthetic`` or ``plain:synthetic``
for such a directory). The cache directory defaults to ``$GENREC_CACHE`` or ``~/.cache/genrec``;
Amazon files live in its ``amazon2014/`` and ``amazon2023/`` sub-directories.
"""

from __future__ import annotations

import inspect
import logging
import os
from pathlib import Path
from typing import Any

from genrec.data import SequenceDataset, load_plain

log = logging.getLogger(__name__)

SPEC_FORMS = (
    "DIR (a directory with interactions.tsv[.gz] and items.jsonl[.gz])",
    "plain:DIR",
    "synthetic",
    "synthetic:KEY=VALUE,... (e.g. synthetic:num_users=500,seed=3)",
    "amazon2014:CATEGORY (e.g. amazon2014:Beauty)",
    "amazon2023:CATEGORY (e.g. amazon2023:All_Beauty)",
)


def default_cache_dir() -> Path:
    """``$GENREC_CACHE`` if set, else ``~/.cache/genrec``."""
    env = os.environ.get("GENREC_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "genrec"


def _parse_value(text: str) -> Any:
    text = text.strip()
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    if "-" in text:  # ranges such as seq_len=5-15
        lo, _, hi = text.partition("-")
        try:
            return (int(lo), int(hi))
        except ValueError:
            pass
    return text


def parse_spec_kwargs(text: str, spec: str) -> dict[str, Any]:
    """Parse ``"key=value,key=value"`` (values: bool, int, float, ``a-b`` int range, else string)."""
    out: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, eq, value = part.partition("=")
        if not eq or not key.strip():
            raise ValueError(f"dataset spec {spec!r}: expected key=value, got {part!r}")
        out[key.strip()] = _parse_value(value)
    return out


def _unknown(spec: str) -> ValueError:
    forms = "\n  ".join(SPEC_FORMS)
    return ValueError(f"unknown dataset spec {spec!r}; accepted forms:\n  {forms}")


def load_dataset(spec: str, cache_dir: str | Path | None = None, **kwargs: Any) -> SequenceDataset:
    """Load the dataset named by ``spec`` (see module doc); ``kwargs`` go to the underlying loader.

    An unknown spec raises ``ValueError`` listing the accepted forms.
    """
    spec = str(spec).strip()
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    kind, sep, arg = spec.partition(":")
    if sep and kind == "plain":
        return load_plain(arg, **kwargs)
    if kind == "synthetic":
        from genrec.synthetic import make_synthetic

        params = parse_spec_kwargs(arg, spec) if sep else {}
        params.update(kwargs)
        accepted = set(inspect.signature(make_synthetic).parameters)
        bad = sorted(set(params) - accepted)
        if bad:
            raise ValueError(f"dataset spec {spec!r}: unknown synthetic parameter(s) {bad}; "
                             f"accepted: {sorted(accepted)}")
        return make_synthetic(**params)
    if kind in ("amazon2014", "amazon2023") and sep:
        if not arg.strip():
            raise ValueError(f"dataset spec {spec!r}: missing category (e.g. {kind}:Beauty)")
        from genrec import amazon

        if kind == "amazon2014":
            return amazon.load_amazon2014(arg.strip(), root / "amazon2014", **kwargs)
        return amazon.load_amazon2023(arg.strip(), root / "amazon2023", **kwargs)
    if Path(spec).is_dir():
        return load_plain(spec, **kwargs)
    if not sep and ("/" in spec or os.sep in spec or spec.startswith(".")):
        raise FileNotFoundError(f"{spec}: dataset directory not found (a path spec must be an existing "
                                f"directory in the plain format)")
    raise _unknown(spec)


__all__ = ["load_dataset", "default_cache_dir", "parse_spec_kwargs", "SPEC_FORMS"]
