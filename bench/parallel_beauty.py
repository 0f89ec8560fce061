"""Benchmark: the parallel-code (RPG-style) generative model on Amazon 2014 Beauty.

    python bench/parallel_beauty.py [--data ../shared/data/amazon2014/beauty]
        [--embeddings runs/beauty_full/embed/embeddings.npy] [--method opq] [--subspaces 32]
        [--codebook-size 256] [--out runs/bench_parallel] [--fresh] [--threads 2] [--set key=value ...]

Quantizes the item embeddings (the recipe's MiniLM vectors; encoded here when ``--embeddings`` is
absent) with PQ / OPQ into ``--subspaces`` parallel codes, trains :mod:`genrec.parallel_generative`
with early stopping on validation, and prints the validation NDCG@10 curve against minutes, test
R@5 / R@10 / N@5 / N@10 / R@20 / N@20 (exact full-catalogue ranking), training minutes and peak
memory; ``--out``/results.json keeps them. Goal (issue 15): test NDCG@10 >= 0.0470 in <= 45 min.
"""

from __future__ import annotations

import argparse
import logging
import resource
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

import genrec
from genrec.artifacts import save_json
from genrec.config import override_dataclass
from genrec.errors import GenrecError
from genrec.metrics import format_metrics
from genrec.parallel_generative import ParallelConfig, evaluate, train_parallel

ROOT = Path(__file__).resolve().parents[1]
GOAL = 0.0470


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(ROOT.parent / "shared/data/amazon2014/beauty"))
    p.add_argument("--embeddings", default=str(ROOT / "runs/beauty_full/embed/embeddings.npy"))
    p.add_argument("--method", default="opq", choices=("opq", "pq"))
    p.add_argument("--subspaces", type=int, default=32)
    p.add_argument("--codebook-size", type=int, default=256)
    p.add_argument("--whiten", action="store_true", help="whitened PCA (all dimensions) before quantizing, as RPG")
    p.add_argument("--out", default=str(ROOT / "runs/bench_parallel"))
    p.add_argument("--fresh", action="store_true", help="delete --out first (otherwise a run resumes)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="ParallelConfig overrides")
    args = p.parse_args(argv)
    try:  # before --fresh deletes anything or the data is read: a bad override fails at once
        config = override_dataclass(ParallelConfig(num_threads=args.threads), args.set)
    except GenrecError as e:
        p.error(f"--set: {e}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    if args.fresh:
        shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    try:
        run(args, config, out)
    except GenrecError as e:  # bad data or settings found during the run: one line, as the genrec CLI
        print(f"{p.prog}: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def run(args: argparse.Namespace, config: ParallelConfig, out: Path) -> None:
    from quantize.pipeline import build_semantic_ids

    dataset = genrec.load_plain(args.data)
    split = genrec.leave_one_out(dataset)
    emb = np.load(args.embeddings) if Path(args.embeddings).exists() else None
    t0 = time.perf_counter()
    sid = build_semantic_ids(dataset, method=args.method, embeddings=emb, subspaces=args.subspaces,
                             codebook_size=args.codebook_size, whiten=args.whiten)
    t_quantize = time.perf_counter() - t0
    table = sid.table
    t0 = time.perf_counter()
    result = train_parallel(split, table, config, out_dir=out / "model")
    t_train = time.perf_counter() - t0
    t0 = time.perf_counter()
    test = evaluate(result.model, split.test)
    t_test = time.perf_counter() - t0
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    minutes = result.history[-1]["minutes"] if result.history else 0.0
    print(f"config: {config}")
    print(f"semantic IDs: {args.method} {args.subspaces}x{args.codebook_size} in {t_quantize:.1f}s, "
          f"{table.num_items} items, levels {table.num_levels}")
    print("validation NDCG@10 vs training minutes (incl. validation):")
    for r in result.history:
        print(f"  epoch {r['epoch']:3d}  {r['minutes']:6.2f} min  loss {r['train_loss']:.4f}  "
              f"N@10 {r['ndcg@10']:.4f}  R@10 {r['recall@10']:.4f}")
    print(f"training: {minutes:.2f} min ({t_train / 60:.2f} min this process), best epoch {result.best_epoch}; "
          f"peak RSS {peak_gib:.2f} GiB")
    print(f"valid (best): {format_metrics(result.best_valid)}")
    print(f"test ({t_test:.0f}s): {format_metrics(test)}  R@20={test['recall@20']:.4f} N@20={test['ndcg@20']:.4f}")
    print(f"goal: test NDCG@10 >= {GOAL} -> {'MET' if test['ndcg@10'] >= GOAL else 'MISSED'} "
          f"({test['ndcg@10']:.4f}); time <= 45 min -> {'MET' if minutes <= 45 else 'MISSED'} ({minutes:.2f} min)")
    save_json(out / "results.json", {
        "config": asdict(config), "quantizer": {"method": args.method, "subspaces": args.subspaces,
                                                 "codebook_size": args.codebook_size, "whiten": args.whiten},
        "history": result.history, "best_epoch": result.best_epoch, "valid": result.best_valid, "test": test,
        "train_minutes": minutes, "peak_rss_gib": peak_gib})


if __name__ == "__main__":
    main()
