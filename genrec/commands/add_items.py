"""``genrec add-items PATH NEW_ITEMS.jsonl --out DIR [--method M]``: add new catalogue items to a trained
recommender without retraining (:func:`genrec.new_items.add_items`) and save the result."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

SHOWN = 10  # semantic IDs printed one per line


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", help="a finished recipe run directory or a saved recommender (save_pretrained)")
    p.add_argument("items", help="JSONL file, one object per line: 'item_id' plus text fields "
                                 "(title, brand, categories, description, price)")
    p.add_argument("--out", required=True, help="directory to save the extended recommender in (loadable with "
                                                "Recommender.from_pretrained)")
    p.add_argument("--method", default=None,
                   help="which of the run's models to load and extend (default: the saved one, or the run's "
                        "primary); the end-to-end joint model cannot take new items")
    p.add_argument("--cache-dir", default=None,
                   help="embedding cache (default $GENREC_CACHE/embeddings or ~/.cache/genrec/embeddings)")
    p.add_argument("--no-cache", action="store_true", help="neither read nor write the embedding cache")


def read_items(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """The objects of a JSONL file and where each came from (``path:line``); a malformed line or a
    file with no object is a :class:`~genrec.errors.DataFormatError` naming the file (and line)."""
    from genrec.text_files import iter_jsonl
    from genrec.errors import DataFormatError

    items, where = [], []
    for lineno, obj in iter_jsonl(path):
        items.append(obj)
        where.append(f"{path}:{lineno}")
    if not items:
        raise DataFormatError(f"{path}: no items (expected one JSON object per line)")
    return items, where


def run(args: argparse.Namespace) -> int:
    from genrec.errors import ConfigError
    from genrec.new_items import add_items
    from genrec.recommender import Recommender
    from genrec.recommender_files import MANIFEST

    out = Path(args.out)
    if (out / "config.json").is_file() and not (out / MANIFEST).is_file():
        raise ConfigError(f"--out {out}: a recipe run directory; save the extended recommender elsewhere")
    items, where = read_items(Path(args.items))
    rec = Recommender.from_pretrained(args.path, args.method)
    before = rec.table.codebook_sizes[-1]
    ids = add_items(rec, items, where=where, cache_dir=False if args.no_cache else args.cache_dir)
    rec.save_pretrained(out)
    codes = rec.table.codes[-len(ids):]
    colliding = int((codes[:, -1] > 0).sum())
    print(f"added {len(ids)} item(s): catalogue {rec.num_items - len(ids)} -> {rec.num_items} items; saved to {out}")
    print(f"semantic IDs: {len(ids) - colliding} with base codes of their own, {colliding} sharing base codes with "
          f"earlier items (disambiguation code > 0)"
          + (f"; disambiguation level grown from {before} to {rec.table.codebook_sizes[-1]} codes"
             if rec.table.codebook_sizes[-1] > before else ""))
    for iid, c in list(zip(ids, codes.tolist()))[:SHOWN]:
        print(f"  {iid}: {c}")
    if len(ids) > SHOWN:
        print(f"  ... and {len(ids) - SHOWN} more")
    # the end-to-end joint model scores the catalogue of its training; the held-out-gate one (a fusion
    # method over its towers) takes new items as every fusion method does
    blind = (({"joint"} if rec.joint is not None else set())
             | ({"sasrec"} if rec.sasrec is not None and rec.sasrec.num_items < rec.num_items else set()))
    can = [m for m in rec.methods if m not in blind]
    print(f"recommendable by: {', '.join(can)} (not by {', '.join(m for m in rec.methods if m not in can) or '-'}: "
          f"trained before these items existed)")
    return 0
