"""``genrec data SPEC``: load a dataset, print its statistics and leave-one-out split sizes."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from genrec.datasets import SPEC_FORMS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the ``data`` subcommand's arguments."""
    parser.add_argument("spec", help="dataset spec, one of: " + "; ".join(SPEC_FORMS))
    parser.add_argument("--cache-dir", default=None, help="download/cache directory (default $GENREC_CACHE "
                                                          "or ~/.cache/genrec)")
    parser.add_argument("--max-history", type=int, default=50, help="history truncation of the split (default 50)")
    parser.add_argument("--export", metavar="DIR", default=None,
                        help="also write the dataset to DIR in the plain format")


def run(args: argparse.Namespace) -> int:
    """Load ``args.spec`` and print statistics; returns 2 on a data error (message on stderr)."""
    from genrec.amazon import DatasetUnavailableError
    from genrec.data import DataFormatError, write_plain
    from genrec.datasets import load_dataset
    from genrec.splits import leave_one_out

    try:
        if args.export:  # over the files it reads (a changed copy of the data, or a .gz beside its own .tsv), or
            # beside them (a RecBole or Parquet folder then holds a plain copy that a directory spec reads instead)
            from genrec.rundir import data_files

            export = Path(args.export).resolve()
            if any(export in (f.resolve().parent, f.parent.resolve())
                   for f in data_files(args.spec, args.cache_dir)):  # (a link's own folder and its target's)
                raise ValueError(f"argument --export: {args.export} holds the dataset's own files; export elsewhere")
        ds = load_dataset(args.spec, cache_dir=args.cache_dir)
        split = leave_one_out(ds, max_history=args.max_history)
    except (DataFormatError, DatasetUnavailableError, FileNotFoundError, ValueError) as e:
        print(f"genrec data: error: {e}", file=sys.stderr)
        return 2

    stats = ds.stats()
    print(f"dataset {ds.name}")
    for key, value in stats.items():
        print(f"  {key:22s} {value:,.4f}" if isinstance(value, float) else f"  {key:22s} {value:,}")
    with_text = sum(1 for it in ds.items if not it.is_empty())
    print(f"  {'items_with_text':22s} {with_text:,} ({with_text / max(ds.num_items, 1):.1%})")
    n_train = int(sum(len(s) for s in split.train))
    print(f"split leave-one-out (max_history={split.max_history})")
    print(f"  {'users_kept':22s} {len(split.users):,} (dropped {ds.num_users - len(split.users):,})")
    print(f"  {'train_sequences':22s} {len(split.train):,}")
    print(f"  {'train_interactions':22s} {n_train:,}")
    print(f"  {'valid_instances':22s} {len(split.valid):,}")
    print(f"  {'test_instances':22s} {len(split.test):,}")
    mean_hist = float(np.mean([len(h) for h in split.test.histories]))
    print(f"  {'mean_test_history':22s} {mean_hist:.2f}")

    info = getattr(ds, "synthetic", None)
    if info is not None:
        from genrec.synthetic import KIND_NAMES

        shares = info.kind_shares()
        print("synthetic transition kinds (all transitions): "
              + ", ".join(f"{k} {v:.1%}" for k, v in shares.items()))
        last = info.last_kinds()[np.isin(np.arange(ds.num_users), split.users)]
        print("synthetic test transition kinds: "
              + ", ".join(f"{name} {int((last == k).sum()):,}" for k, name in enumerate(KIND_NAMES)))

    if args.export:
        write_plain(ds, args.export)
        print(f"wrote {args.export}")
    return 0
