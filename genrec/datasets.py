"""Resolve a dataset *spec* string to a :class:`~genrec.data.SequenceDataset`.

Accepted specs::

    DIR                                  an existing directory in the plain format (load_plain)
    plain:DIR                            the same, explicitly
    synthetic                            the synthetic demo dataset (make_synthetic, defaults)
    synthetic:num_users=500,seed=3       ... with keyword arguments (ints, floats, seq_len=5-15), each
                                         checked against the type of make_synthetic's default
    amazon2014:Beauty                    Amazon 2014 5-core category (downloaded to the cache)
    amazon2023:All_Beauty                Amazon 2023 category (Hugging Face hub or local JSONL files)
    recbole:DIR                          RecBole atomic files DIR/NAME.inter (+ DIR/NAME.item), NAME the
                                         directory's name (genrec.recbole.load_recbole)
    recbole:DIR,sep=comma,order=file     ... with load_recbole keywords: sep (tab, comma; default
                                         detected), order, missing_items (error, empty), user_field,
                                         item_field, time_field
    parquet:DIR                          DIR/interactions.parquet (+ DIR/items.parquet), default columns
                                         (genrec.parquet_data.load_parquet)
    parquet:DIR,user=uid,time=ts         ... with load_parquet keywords: column names user, item, time
                                         (interactions), item_id, title, brand, categories, description,
                                         price (items; ``null`` skips one), order
    parquet:interactions=A.parquet,items=B.parquet,item=sku   the two files named, keywords as above

Keyword values are typed like ``synthetic:``'s (each checked against the loader's signature); a path in
a ``recbole:`` or ``parquet:`` spec cannot contain a comma.

The keyword forms win over a directory of the same name (use ``./synthetic`` or ``plain:synthetic``
for such a directory). The cache directory defaults to ``$GENREC_CACHE`` or ``~/.cache/genrec``;
Amazon files live in its ``amazon2014/`` and ``amazon2023/`` sub-directories.
"""

from __future__ import annotations

import inspect
import logging
import os
import re
import typing
from pathlib import Path
from typing import Any, Callable

from genrec.config import check_value, parse_value, type_name
from genrec.data import SequenceDataset, load_plain
from genrec.errors import ConfigError, DataNotFoundError
from genrec.paths import default_cache_dir  # re-exported: public as genrec.datasets.default_cache_dir

log = logging.getLogger(__name__)

SPEC_FORMS = (
    "DIR (a directory with interactions.tsv[.gz] and items.jsonl[.gz])",
    "plain:DIR",
    "synthetic",
    "synthetic:KEY=VALUE,... (e.g. synthetic:num_users=500,seed=3)",
    "amazon2014:CATEGORY (e.g. amazon2014:Beauty)",
    "amazon2023:CATEGORY (e.g. amazon2023:All_Beauty)",
    "recbole:DIR[,sep=comma,...] (RecBole atomic files DIR/NAME.inter, DIR/NAME.item)",
    "parquet:DIR[,user=COL,...] or parquet:interactions=PATH[,items=PATH,...] (Parquet files)",
)


def _split_spec_kwargs(text: str, spec: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, eq, value = part.partition("=")
        if not eq or not key.strip():
            raise ConfigError(f"dataset spec {spec!r}: expected key=value, got {part!r}")
        if key.strip() in out:  # the last one won silently
            raise ConfigError(f"dataset spec {spec!r}: {key.strip()!r} given more than once")
        out[key.strip()] = value.strip()
    return out


_RANGE = re.compile(r"^\s*(-?\d+)\s*-\s*(-?\d+)\s*$")


def typed_spec_kwargs(text: str, spec: str, func: Callable[..., Any], what: str) -> dict[str, Any]:
    """Parse ``"key=value,..."`` for ``func``: values read as in a YAML file or ``--set``
    (:func:`genrec.config.parse_value`; an ``a-b`` integer range for a tuple parameter) and checked
    against the parameter's type hint (:func:`genrec.config.check_value`).

    An unknown key raises :class:`ConfigError` listing the valid ones; a value of the wrong type
    raises :class:`ConfigError` naming the key, the value and the expected type.
    """
    params = inspect.signature(func).parameters
    hints = typing.get_type_hints(func)
    raw = _split_spec_kwargs(text, spec)
    unknown = [key for key in raw if key not in params]
    if unknown:
        raise ConfigError(f"dataset spec {spec!r}: unknown {what} parameter(s) {unknown}; valid: {sorted(params)}")
    out: dict[str, Any] = {}
    for key, text_value in raw.items():
        hint = hints.get(key, Any)
        is_range = typing.get_origin(hint) is tuple
        m = _RANGE.match(text_value) if is_range else None
        value = [int(m.group(1)), int(m.group(2))] if m else parse_value(text_value)
        try:
            out[key] = check_value(key, value, hint)
        except ConfigError:
            try:  # a text setting whose value reads as a number or a boolean (user=0: pandas' column names)
                out[key] = check_value(key, text_value, hint)
                continue
            except ConfigError:
                pass
            expected = "an integer range such as 5-15" if is_range else type_name(hint)
            raise ConfigError(f"dataset spec {spec!r}: {what} parameter {key} expects {expected}, "
                              f"got {text_value!r}") from None
    return out


def _unknown(spec: str) -> ConfigError:
    forms = "\n  ".join(SPEC_FORMS)
    return ConfigError(f"unknown dataset spec {spec!r}; accepted forms:\n  {forms}")


_CATEGORY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


def amazon_category(arg: str, spec: str) -> str:
    """The category of an ``amazon2014:`` / ``amazon2023:`` spec (letters, digits, ``_`` and ``-``, as
    Amazon names them: it becomes a file name in the cache, so ``../x`` or ``a/b`` is refused)."""
    category = arg.strip()
    kind = str(spec).strip().partition(":")[0]
    if not category:
        raise ConfigError(f"dataset spec {spec!r}: missing category (e.g. {kind}:Beauty)")
    if not _CATEGORY.fullmatch(category):
        raise ConfigError(f"dataset spec {spec!r}: category {category!r} must be letters, digits, '_' or '-' "
                          f"(e.g. {kind}:Beauty)")
    return category


def fetch_dataset_files(spec: str, cache_dir: str | Path | None = None) -> None:
    """Download the files :func:`load_dataset` would download for ``spec`` and does not find in the
    cache (Amazon 2014 categories; nothing for other specs), without reading them: a run fingerprints
    its data files before its first stage, so they must exist by then."""
    kind, sep, arg = str(spec).strip().partition(":")
    if kind == "amazon2014" and sep and arg.strip():
        from genrec import amazon

        root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        amazon.fetch_amazon2014(amazon_category(arg, spec), root / "amazon2014")


def load_dataset(spec: str, cache_dir: str | Path | None = None, **kwargs: Any) -> SequenceDataset:
    """Load the dataset named by ``spec`` (see module doc); ``kwargs`` go to the underlying loader.

    An unknown or malformed spec raises :class:`~genrec.errors.ConfigError` (a ``ValueError``): an
    unknown spec lists the accepted forms, a bad ``synthetic:`` keyword names the key, the value
    and the expected type.
    """
    spec = str(spec).strip()
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    kind, sep, arg = spec.partition(":")
    if not spec or (sep and kind == "plain" and not arg.strip()):  # Path("") is the working directory
        raise ConfigError(f"dataset spec {spec!r} names no dataset; accepted forms:\n  " + "\n  ".join(SPEC_FORMS))
    if sep and kind == "plain":
        return load_plain(arg, **kwargs)
    if kind == "synthetic":
        from genrec.synthetic import make_synthetic

        params = typed_spec_kwargs(arg, spec, make_synthetic, "synthetic") if sep else {}
        params.update(kwargs)
        accepted = set(inspect.signature(make_synthetic).parameters)
        bad = sorted(set(params) - accepted)
        if bad:
            raise ConfigError(f"dataset spec {spec!r}: unknown synthetic parameter(s) {bad}; "
                              f"valid: {sorted(accepted)}")
        try:
            return make_synthetic(**params)
        except ValueError as e:  # make_synthetic's range checks, e.g. num_users=0
            raise ConfigError(f"dataset spec {spec!r}: {e}") from e
    if kind in ("amazon2014", "amazon2023") and sep:
        category = amazon_category(arg, spec)
        from genrec import amazon

        if kind == "amazon2014":
            return amazon.load_amazon2014(category, root / "amazon2014", **kwargs)
        return amazon.load_amazon2023(category, root / "amazon2023", **kwargs)
    if kind in ("recbole", "parquet") and sep:
        return _load_file_format(kind, arg, spec, kwargs)
    if Path(spec).is_dir():
        return load_plain(spec, **kwargs)
    if not sep and ("/" in spec or os.sep in spec or spec.startswith(".")):
        raise DataNotFoundError(f"{spec}: dataset directory not found (a path spec must be an existing "
                                f"directory in the plain format)")
    raise _unknown(spec)


def split_path_spec(arg: str, spec: str) -> tuple[str | None, str]:
    """``"DIR,k=v,..."`` -> ``("DIR", "k=v,...")``; ``"k=v,..."`` -> ``(None, "k=v,...")``."""
    head, _, rest = arg.partition(",")
    if "=" in head:
        return None, arg
    if not head.strip():
        raise ConfigError(f"dataset spec {spec!r}: missing the directory (e.g. {spec.partition(':')[0]}:data/mine)")
    return head.strip(), rest


def _load_file_format(kind: str, arg: str, spec: str, kwargs: dict[str, Any]) -> SequenceDataset:
    """``recbole:`` and ``parquet:`` specs: a path, then loader keywords typed by its signature."""
    path, rest = split_path_spec(arg, spec)
    if kind == "recbole":
        from genrec.recbole import load_recbole as loader
    else:
        from genrec.parquet_data import load_parquet as loader
    params = typed_spec_kwargs(rest, spec, loader, kind)
    for key in ("directory", "interactions", "items") if path is not None or kind == "recbole" else ():
        if key in params:
            raise ConfigError(f"dataset spec {spec!r}: {key} is given by the path; write {kind}:PATH,... or "
                              f"{kind}:interactions=...,items=...")
    if kind == "recbole":
        if path is None:
            raise ConfigError(f"dataset spec {spec!r}: expected recbole:DIR[,key=value,...]")
        return loader(path, **{**params, **kwargs})
    if path is not None:
        from genrec.parquet_data import parquet_files

        inter, items = parquet_files(path)
        if not Path(path).is_dir():
            raise DataNotFoundError(f"{path}: dataset directory not found")
        if not inter.is_file():
            raise DataNotFoundError(f"{path}: expected interactions.parquet, not found")
        params.update(interactions=inter, items=items, name=params.get("name") or Path(path).name)
    elif "interactions" not in params:
        raise ConfigError(f"dataset spec {spec!r}: expected parquet:DIR or parquet:interactions=PATH[,items=PATH]")
    return loader(**{**params, **kwargs})


__all__ = ["load_dataset", "fetch_dataset_files", "default_cache_dir", "typed_spec_kwargs", "amazon_category",
           "SPEC_FORMS"]
