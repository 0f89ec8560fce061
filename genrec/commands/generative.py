"""``genrec generative``: train the semantic-ID generative model, report validation/test metrics, save it."""

from __future__ import annotations

import argparse
import resource
import time
from dataclasses import asdict
from pathlib import Path

from genrec.artifacts import save_json
from genrec.commands.common import load_semantic_id_table
from genrec.config import override_dataclass as apply_overrides
from genrec.errors import ConfigError, DataFormatError
from genrec.metrics import format_metrics


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dataset", help="dataset: a plain-format directory, 'synthetic[:k=v,...]', 'amazon2014:Beauty', ...")
    p.add_argument("--semantic-ids", required=True, metavar="DIR",
                   help="directory with semantic_ids.json (quantize's build_semantic_ids output) or the JSON file")
    p.add_argument("--out", default="runs/generative", help="output directory (a rerun resumes from it)")
    p.add_argument("--model", choices=("hierarchical", "semantic", "tiger", "parallel"), default="hierarchical",
                   help="hierarchical decoder-only model (default; hybrid item-ID + semantic-ID input), 'semantic' "
                        "(the same model reading semantic IDs only), the T5 TIGER preset, or 'parallel' (all codes "
                        "of PQ/OPQ semantic IDs predicted at once, exact full-catalogue ranking)")
    p.add_argument("--max-history", type=int, default=None,
                   help="history items the split keeps and the model reads (default 50; TIGER's encoder reads its "
                        "own 20 unless this is given)")
    p.add_argument("--test-beam", type=int, default=50, help="beam width of the test evaluation (metrics at K up "
                   "to it; 'parallel' ranks the whole catalogue and takes none)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="GenerativeConfig (TigerConfig, ParallelConfig) overrides, e.g. --set hidden=64 max_epochs=20")


def run(args: argparse.Namespace) -> int:
    from genrec.commands.common import load_split
    from genrec import parallel_generative
    from genrec.generative import EVAL_KS, evaluate as evaluate_beam, preset_config, train_generative
    from genrec.tiger import TigerConfig, train_tiger

    tiger_items = {} if args.max_history is None else {"max_items": args.max_history}
    args.max_history = 50 if args.max_history is None else args.max_history
    if args.test_beam < 1 or args.max_history < 1:
        raise ConfigError(f"--test-beam and --max-history must be >= 1, got {args.test_beam} and {args.max_history}")

    table = load_semantic_id_table(args.semantic_ids)
    # K up to the beam only: recall@20 of a 5-item beam would be recall@5 under another name
    ks = tuple(k for k in EVAL_KS if k <= args.test_beam) or (args.test_beam,)
    evaluate, test_kw = evaluate_beam, {"beam_size": args.test_beam, "ks": ks}
    if args.model == "tiger":
        config = apply_overrides(TigerConfig(**tiger_items), args.set)  # --max-history was ignored: 20 always
        train = train_tiger
    elif args.model == "parallel":
        config = apply_overrides(parallel_generative.ParallelConfig(max_len=args.max_history), args.set)
        train, evaluate, test_kw = parallel_generative.train_parallel, parallel_generative.evaluate, {}
    else:
        config = apply_overrides(preset_config(args.model, max_len=args.max_history), args.set)
        train = train_generative
    t0 = time.perf_counter()
    dataset, split = load_split(args.dataset, args.max_history)
    if table.item_ids is not None and table.num_items == dataset.num_items and \
            list(table.item_ids) != list(dataset.item_ids):  # (another count: the trainer names it)
        # same count, other items or order: every item would silently train on another item's codes
        r = next(r for r, (a, b) in enumerate(zip(table.item_ids, dataset.item_ids)) if a != b)
        raise DataFormatError(f"{args.semantic_ids}: its items are not the dataset's, in the dataset's order (row {r}: "
                              f"{table.item_ids[r]!r} where the dataset has {dataset.item_ids[r]!r}); build the "
                              f"table from this dataset (genrec quantize)")
    print(f"{dataset!r}: {len(split.test)} test users; {table!r}")
    result = train(split, table, config, out_dir=args.out)
    test = evaluate(result.model, split.test, **test_kw)
    wall = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    save_json(Path(args.out) / "metrics.json", {"dataset": args.dataset, "model": args.model, "config": asdict(config),
                                                "best_epoch": result.best_epoch, "valid": result.best_valid,
                                                "test": test, "test_beam": args.test_beam if test_kw else None,
                                                "wall_seconds": wall,
                                                "peak_rss_gib": peak})
    print(f"best epoch {result.best_epoch}; valid {format_metrics(result.best_valid)}")
    ranking = f"beam {args.test_beam}" if test_kw else "exact full ranking"
    print(f"test  {format_metrics(test)}  invalid-ID rate {test.get('invalid_rate', 0.0):.4f} ({ranking})")
    print(f"wall {wall / 60:.1f} min, peak memory {peak:.2f} GiB; model and metrics in {args.out}/")
    return 0
