"""Benchmark: batch inference of a trained recommender (``genrec recommend``'s path) on a history file.

    python bench/recommend_throughput.py runs/amazon2014_beauty-full \\
        --input ../shared/data/amazon2014/beauty/interactions.tsv.gz [--k 10] [--method NAME] [--threads 2]
        [--users N] [--chunk-size 2048] [--out /tmp/recs.parquet]

Loads the recommender (a recipe run directory or a saved one), reads every user's history from
``--input`` (any format ``genrec.batch.read_histories`` takes; a plain-format ``interactions.tsv.gz``
gives every user of the dataset, whole histories, the last ``max_history`` items read), recommends
``k`` items for each (``--users N``: the first N only) and writes them. Prints the load time, the
users per second of the model work (the fused model: SASRec top-K, generative beam ``fusion.beam``
with teacher-forced cross-scoring, indicators, gate) and the process's peak memory. Target for the
Beauty fused model on 2 cores: >= 200 users/s. Measure on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

from genrec.batch import read_histories, write_recommendations
from genrec.recommender import Recommender

TARGET_USERS_PER_SECOND = 200.0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("path", help="recipe run directory or saved recommender")
    p.add_argument("--input", required=True, help="histories (.jsonl / .tsv, .gz allowed)")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--method", default=None)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--users", type=int, default=None, help="only the first N users (default: all)")
    p.add_argument("--chunk-size", type=int, default=2048)
    p.add_argument("--out", default=None, help="output file (default: a temporary .parquet)")
    args = p.parse_args(argv)
    if args.users is not None and args.users < 1:  # 0 would have meant every user
        p.error(f"--users must be >= 1 (leave it out for every user), got {args.users}")
    if args.chunk_size < 1:
        p.error(f"--chunk-size must be >= 1, got {args.chunk_size}")
    torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    rec = Recommender.from_pretrained(args.path, method=args.method)
    load_s = time.perf_counter() - t0
    users, histories = read_histories(args.input)
    if args.users is not None:
        users, histories = users[:args.users], histories[:args.users]
    t0 = time.perf_counter()
    recs = []
    for s in range(0, len(histories), args.chunk_size):
        recs += rec.recommend_batch(histories[s:s + args.chunk_size], k=args.k)
    seconds = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        write_recommendations(args.out or Path(tmp) / "recs.parquet", users, recs)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rate = len(users) / seconds
    s = rec.settings
    print(f"recommender: {args.path} (method {rec.method_name}, {rec.num_items} items, k candidates {s.k}, "
          f"beam {s.beam}, teacher forcing {s.teacher_forcing}, max history {s.max_history}); load {load_s:.1f} s")
    print(f"{len(users)} users, k={args.k}, {args.threads} thread(s), chunks of {args.chunk_size}: {seconds:.1f} s, "
          f"{rate:.1f} users/s (target >= {TARGET_USERS_PER_SECOND:.0f}: "
          f"{'met' if rate >= TARGET_USERS_PER_SECOND else 'missed'}), peak memory {peak_mib:.0f} MiB; "
          f"{sum(1 for r in recs if r.unknown_ids)} histories with unknown ids, "
          f"{sum(1 for r in recs if r.fallback)} popularity fallbacks")
    return 0


if __name__ == "__main__":
    sys.exit(main())
