"""``genrec quantize DATASET``: item texts -> embeddings -> semantic IDs; prints and saves diagnostics.

Writes ``semantic_ids.json`` (the table and its config), ``diagnostics.json``, ``quantizer.pt``
(and ``preprocess.pt`` with PCA) into ``--out``. ``--show DIR`` prints a saved run's diagnostics.
"""

from __future__ import annotations

import argparse
import functools
import inspect
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

_METHODS = ("rq_kmeans", "rq_vae", "pq", "opq")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Register the ``quantize`` subcommand's arguments."""
    p.add_argument("dataset", nargs="?", help="dataset: a plain-format directory, 'synthetic[:k=v,...]', "
                                              "'amazon2014:Beauty', ... (see 'genrec data')")
    p.add_argument("--method", default="rq_kmeans", choices=_METHODS, help="quantizer (default rq_kmeans)")
    p.add_argument("--out", default="runs/quantize", help="output directory (default runs/quantize)")
    p.add_argument("--levels", type=int, default=None, help="rq_kmeans/rq_vae levels (default 3)")
    p.add_argument("--subspaces", type=int, default=None, help="pq/opq sub-spaces (default 4)")
    p.add_argument("--codebook-size", type=int, default=None, help="codes per level (default 256)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="other quantizer options, values read as in a YAML file, e.g. --set epochs=100 lr=0.001")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pca-dim", type=int, default=None, help="PCA to this many dimensions first")
    p.add_argument("--whiten", action="store_true", help="whiten (unit variance per principal direction)")
    emb = p.add_argument_group("text and embeddings")
    emb.add_argument("--model", default=None, help="sentence-transformers / HF model name or local path "
                                                   "(default: bundled all-MiniLM-L6-v2, offline)")
    emb.add_argument("--embeddings", default=None, metavar="NPY",
                     help="use these precomputed embeddings [num_items, dim] (.npy) instead of a model")
    emb.add_argument("--cache-dir", default=None, help="embedding cache root (default $GENREC_CACHE/embeddings "
                                                       "or ~/.cache/genrec/embeddings)")
    emb.add_argument("--no-cache", action="store_true", help="do not read or write the embedding cache")
    emb.add_argument("--batch-size", type=int, default=64, help="encoder batch size (default 64)")
    emb.add_argument("--device", default="cpu", help="encoder (and rq_vae) device (default cpu)")
    emb.add_argument("--precision", default="fp32", choices=("fp32", "int8"),
                     help="encoder precision on CPU: int8 = dynamic quantization, ~1.27x faster on Beauty (default fp32)")
    emb.add_argument("--text-fields", default=None, metavar="F1,F2",
                     help="fields in the item text, in order (default title,brand,categories,description,price)")
    emb.add_argument("--text-segment", action="append", default=None, metavar="PATTERN",
                     help="custom template segment such as 'Made by {brand}' (repeatable; replaces --text-fields)")
    emb.add_argument("--skip-category", action="append", default=[], metavar="NAME",
                     help="category name to leave out of the text (repeatable), e.g. a root 'Beauty'")
    emb.add_argument("--fallback", default=None, metavar="PATTERN",
                     help="text for items without any, e.g. 'Item {item_id}' (default: such items are an error)")
    p.add_argument("--show", metavar="DIR", default=None, help="only print the diagnostics saved in DIR")


# build_semantic_ids arguments that have their own flag (passing them through --set as well would
# clash with the flag's value)
_OWN_FLAGS = {"seed": "--seed", "pca_dim": "--pca-dim", "whiten": "--whiten"}


def _parse_set(pairs: list[str], method: str) -> dict[str, Any]:
    """``key=value`` quantizer options (values as in YAML, type-checked); a key that the ``method``
    quantizer does not take is a :class:`ConfigError` listing the valid ones, raised before any
    (slow) embedding."""
    import typing

    from genrec.config import check_value, did_you_mean, parse_value
    from genrec.errors import ConfigError
    from quantize.pipeline import make_quantizer

    init = type(make_quantizer(method)).__init__
    valid = sorted(set(inspect.signature(init).parameters) - {"self"} - set(_OWN_FLAGS))
    try:
        hints = typing.get_type_hints(init)
    except Exception:  # noqa: BLE001 - annotations that do not resolve: values go unchecked
        hints = {}
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"bad option for quantizer {method!r}: {pair!r} is not of the form key=value")
        if key in _OWN_FLAGS:
            raise ConfigError(f"bad option for quantizer {method!r}: set {key} with {_OWN_FLAGS[key]}, not --set")
        if key not in valid:
            raise ConfigError(f"bad option for quantizer {method!r}: unknown setting {key!r}"
                              f"{did_you_mean(key, valid)}; valid: {', '.join(valid)}")
        value = parse_value(raw)
        out[key] = check_value(key, value, hints[key]) if key in hints else value
    return out


def _load_embeddings(path: str) -> np.ndarray:
    """A ``.npy`` array of item embeddings (never a pickle); a clear error naming the file otherwise."""
    from genrec.errors import DataFormatError

    try:
        x = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise DataFormatError(f"{path}: embeddings file not found") from None
    except (ValueError, OSError, EOFError, zipfile.BadZipFile):
        raise DataFormatError(f"{path}: not a .npy array of embeddings (save them with numpy.save)") from None
    if not isinstance(x, np.ndarray) or x.ndim != 2 or not np.issubdtype(x.dtype, np.number):
        raise DataFormatError(f"{path}: expected a numeric [num_items, dim] array, got "
                              f"{getattr(x, 'dtype', type(x).__name__)} {getattr(x, 'shape', '')}")
    return x


#: options the text encoder reads: with --embeddings no text is embedded, so each would be ignored
_ENCODER_OPTIONS = ("model", "cache_dir", "no_cache", "batch_size", "precision", "text_fields", "text_segment",
                    "skip_category", "fallback")


@functools.lru_cache(maxsize=1)
def _defaults() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args([])


def _given(args: argparse.Namespace) -> list[str]:
    """The options that differ from their defaults (argparse keeps no record of what was typed)."""
    defaults = vars(_defaults())
    return [k for k, v in vars(args).items() if k in defaults and v != defaults[k]]


def _check_options(args: argparse.Namespace) -> None:
    """Refuse options the command would ignore (exit 2, naming them): every other one with ``--show``,
    the encoder's and text options with ``--embeddings``, and an ``--out`` that is a file (found only
    after the quantization before)."""
    from genrec.errors import ConfigError

    given = _given(args)
    flag = lambda k: "--" + k.replace("_", "-")  # noqa: E731
    if args.show:
        extra = [k for k in given if k != "show"]
        if extra:
            raise ConfigError(f"--show only prints a saved run's diagnostics; drop "
                              f"{', '.join('DATASET' if k == 'dataset' else flag(k) for k in extra)}")
        return
    if args.embeddings:
        ignored = [k for k in given if k in _ENCODER_OPTIONS]
        if ignored:
            raise ConfigError(f"{', '.join(flag(k) for k in ignored)}: act(s) on the text encoder and item text, which "
                              f"--embeddings replaces; drop them or the embeddings")
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise ConfigError(f"argument --out: {args.out} is a file; give a directory")


def run(args: argparse.Namespace) -> int:
    """Build (or with ``--show``, print) semantic IDs; returns 2 on bad input (message on stderr)."""
    from genrec.artifacts import load_json
    from genrec.commands.common import load_dataset_spec
    from genrec.errors import GenrecError
    from quantize.diagnostics import format_diagnostics

    _check_options(args)
    if args.show:
        path = Path(args.show) / "diagnostics.json"
        if not path.is_file():
            print(f"genrec quantize: error: {path} not found", file=sys.stderr)
            return 2
        try:
            text = format_diagnostics(load_json(path))
        except (KeyError, TypeError, AttributeError, ValueError) as e:  # readable JSON of another shape
            print(f"genrec quantize: error: {path}: not a diagnostics file of genrec quantize "
                  f"({type(e).__name__}: {e})", file=sys.stderr)
            return 2
        print(text)
        return 0
    if not args.dataset:
        print("genrec quantize: error: a dataset is required (or --show DIR)", file=sys.stderr)
        return 2

    from quantize import TextEncoder, TextTemplate, build_semantic_ids

    try:
        from genrec.errors import ConfigError
        from genrec.model_settings import usable_device

        try:  # before loading anything: "nonsense" or a GPU this machine lacks
            usable_device(args.device)
        except ConfigError as e:
            raise ConfigError(f"argument --device: {e}") from None
        cfg = _parse_set(args.set, args.method)
        for name, key in (("levels", "levels"), ("subspaces", "subspaces"), ("codebook_size", "codebook_size")):
            value = getattr(args, name)
            if value is not None:
                if key == "levels" and args.method in ("pq", "opq"):
                    raise ValueError("--levels is for rq_kmeans/rq_vae; pq/opq take --subspaces")
                if key == "subspaces" and args.method not in ("pq", "opq"):
                    raise ValueError("--subspaces is for pq/opq; rq_kmeans/rq_vae take --levels")
                cfg[key] = value
        if args.method == "rq_vae":
            cfg.setdefault("device", args.device)
        tpl_kw = {"skip_categories": tuple(args.skip_category)}
        if args.text_segment:
            template = TextTemplate(segments=tuple(args.text_segment), **tpl_kw)
        elif args.text_fields:
            template = TextTemplate.from_fields([f.strip() for f in args.text_fields.split(",") if f.strip()],
                                                **tpl_kw)
        else:
            template = TextTemplate(**tpl_kw)
        dataset = load_dataset_spec(args.dataset)
        embeddings = _load_embeddings(args.embeddings) if args.embeddings else None
        encoder = None
        if embeddings is None:
            encoder = TextEncoder(args.model, batch_size=args.batch_size, device=args.device,
                                  cache_dir=False if args.no_cache else args.cache_dir, precision=args.precision)
        result = build_semantic_ids(dataset, args.method, embeddings=embeddings, encoder=encoder,
                                    template=template, fallback=args.fallback, pca_dim=args.pca_dim,
                                    whiten=args.whiten, seed=args.seed, **cfg)
    except GenrecError:
        raise  # main() prints it as "genrec quantize: error: ..."
    except (FileNotFoundError, ValueError) as e:  # e.g. an --embeddings file, a bad option value
        print(f"genrec quantize: error: {e}", file=sys.stderr)
        return 2
    paths = result.save(args.out)
    print(f"{dataset!r}")
    print(format_diagnostics(result.diagnostics))
    print(f"wrote {', '.join(str(p) for p in paths.values())}")
    return 0

