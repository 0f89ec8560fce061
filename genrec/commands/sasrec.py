"""``genrec sasrec``: train SASRec on a dataset, report validation/test metrics, save the model."""

from __future__ import annotations

import argparse
import resource
import time
from dataclasses import asdict, replace
from pathlib import Path

from genrec.artifacts import save_json
from genrec.config import override_dataclass as apply_overrides
from genrec.errors import ConfigError
from genrec.metrics import format_metrics


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dataset", nargs="?", default="synthetic",
                   help="dataset: a plain-format directory, 'synthetic[:k=v,...]', 'amazon2014:Beauty', "
                        "'amazon2023:All_Beauty' (default: synthetic)")
    p.add_argument("--out", default="runs/sasrec", help="output directory (a rerun resumes from it)")
    p.add_argument("--max-history", type=int, default=50)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="SASRecConfig overrides, e.g. --set hidden=64 max_epochs=20")
    p.add_argument("--item-text", metavar="EMBEDDINGS", default=None,
                   help="a content-aware SASRec (text_dim 'auto' unless set) reading these item text embeddings: "
                        "a .npy file with its id list (FILE.ids.txt) or a .parquet file with item_id and "
                        "embedding columns, as the recipe's text.embeddings")


def run(args: argparse.Namespace) -> int:
    from genrec.commands.common import load_split
    from genrec.sasrec import SASRecConfig, evaluate, train_sasrec

    if args.max_history < 1:  # before SASRecConfig names it max_len, which the user never typed
        raise ConfigError(f"argument --max-history: must be >= 1, got {args.max_history}")
    config = apply_overrides(SASRecConfig(max_len=args.max_history), args.set)
    if args.item_text is not None and not config.text_dim:
        if any(pair.partition("=")[0].strip() == "text_dim" for pair in args.set):
            raise ConfigError("--item-text needs a content-aware SASRec: text_dim 'auto' or the vectors' width, "
                              "not the 0 given with --set")
        config = replace(config, text_dim="auto")
    t0 = time.perf_counter()
    dataset, split = load_split(args.dataset, args.max_history)
    item_text = None
    if args.item_text is not None:
        from genrec.item_embeddings import load_item_embeddings

        item_text = load_item_embeddings(args.item_text, dataset.item_ids)
    print(f"{dataset!r}: {len(split.test)} test users")
    result = train_sasrec(split, config, out_dir=args.out, item_text=item_text)
    test = evaluate(result.model, split.test)
    wall = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    save_json(Path(args.out) / "metrics.json", {"dataset": args.dataset, "config": asdict(result.model.config),
                                                "best_epoch": result.best_epoch, "valid": result.best_valid,
                                                "test": test, "wall_seconds": wall, "peak_rss_gib": peak})
    print(f"best epoch {result.best_epoch}; valid {format_metrics(result.best_valid)}")
    print(f"test  {format_metrics(test)}")
    print(f"wall {wall / 60:.1f} min, peak memory {peak:.2f} GiB; model and metrics in {args.out}/")
    return 0
