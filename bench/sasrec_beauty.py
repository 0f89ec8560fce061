"""Benchmark: train SASRec (CE loss) on Amazon 2014 Beauty and report test metrics, wall time, peak memory.

    python bench/sasrec_beauty.py [--data ../shared/data/amazon2014/beauty] [--out runs/bench_sasrec]
                                  [--set key=value ...]

Target (issue 2): test NDCG@10 >= 0.0436, converged in <= 10 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import logging
import resource
import shutil
import sys
import time
from pathlib import Path

import genrec
from genrec.config import override_dataclass
from genrec.errors import GenrecError
from genrec.metrics import format_metrics
from genrec.sasrec import SASRecConfig, evaluate, train_sasrec

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(ROOT.parent / "shared/data/amazon2014/beauty"))
    p.add_argument("--out", default=str(ROOT / "runs/bench_sasrec"))
    p.add_argument("--fresh", action="store_true", help="delete --out first (otherwise a run resumes)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="SASRecConfig overrides")
    args = p.parse_args(argv)
    try:  # before --fresh deletes anything or the data is read: a bad override fails at once
        config = override_dataclass(SASRecConfig(), args.set, "SASRecConfig")
    except GenrecError as e:
        p.error(f"--set: {e}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if args.fresh:
        shutil.rmtree(args.out, ignore_errors=True)
    try:
        run(args, config)
    except GenrecError as e:  # bad data or settings found during the run: one line, as the genrec CLI
        print(f"{p.prog}: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def run(args: argparse.Namespace, config: SASRecConfig) -> None:
    t0 = time.perf_counter()
    split = genrec.leave_one_out(genrec.load_plain(args.data))
    t_data = time.perf_counter() - t0
    t1 = time.perf_counter()
    result = train_sasrec(split, config, out_dir=args.out)
    # the run's own clock (training + validation, summed over resumes): a resumed or finished run
    # directory took ~0 s in this process
    t_train = 60 * result.history[-1]["minutes"] if result.history else time.perf_counter() - t1
    test = evaluate(result.model, split.test)
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"config: {config}")
    print(f"data load+split: {t_data:.1f}s; training: {t_train / 60:.2f} min over {len(result.history)} evaluations, "
          f"best epoch {result.best_epoch}; peak RSS {peak_gib:.2f} GiB")
    print(f"valid (best): {format_metrics(result.best_valid)}")
    print(f"test:         {format_metrics(test)}  R@20={test['recall@20']:.4f} N@20={test['ndcg@20']:.4f}")
    print(f"bar: test NDCG@10 >= 0.0436 -> {'MET' if test['ndcg@10'] >= 0.0436 else 'MISSED'} ({test['ndcg@10']:.4f}); "
          f"time <= 10 min -> {'MET' if t_train <= 600 else 'MISSED'} ({t_train / 60:.2f} min)")


if __name__ == "__main__":
    main()
