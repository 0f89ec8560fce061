"""Benchmark: semantic IDs for Amazon 2014 Beauty (12,101 items) on CPU.

Times the default encoder cold (fresh cache, model load included) and cached, then RQ-KMeans 3x256,
PQ and OPQ 4x256 and RQ-VAE 3x256 on those embeddings, and prints each one's diagnostics next to
the targets (embed <= 90 s cold / <= 2 s cached, RQ-KMeans <= 30 s, OPQ <= 60 s, RQ-VAE <= 10 min).

    python bench/quantize_beauty.py [--out runs/bench_quantize] [--methods rq_kmeans,opq,rq_vae]
                                    [--precision int8] [--skip-categories Beauty] [--omp-passive]

``--precision int8`` times the int8 (dynamically quantized) encoder instead and prints its
agreement with fp32 vectors (taken from the default embedding cache, embedded there if missing):
cosine similarity per item and the overlap of every item's 10 nearest neighbours.
``--skip-categories Beauty`` embeds the texts the Beauty recipe embeds (its root category, which
every item has, left out). Time it on idle cores; on shared ones ``--omp-passive`` avoids OpenMP
spin-wait slow-downs.

Results (timings, diagnostics, each method's table) go to ``--out``. The data directory defaults
to ``<repo>/../shared/data/amazon2014/beauty``.
"""

from __future__ import annotations

import os
import sys

# On shared (contended) cores OpenMP's default spin-waiting makes multi-threaded torch/faiss several
# times slower (measured 5 RQ-VAE epochs: 55 s with 2 spinning threads, 5 s passive), so
# --omp-passive asks for passive waiting; on idle cores spinning is faster (cold embedding 93.6 s
# against 130.1 s passive). It must be set before torch or faiss is imported; the environment wins.
if "--omp-passive" in sys.argv:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import logging  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import replace  # noqa: E402
from pathlib import Path  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from genrec.artifacts import save_json  # noqa: E402
from genrec.data import load_plain  # noqa: E402
from quantize import TextEncoder, build_semantic_ids, format_diagnostics, item_texts  # noqa: E402
from quantize.text import DEFAULT_TEMPLATE  # noqa: E402

TARGETS_S = {"embed_cold": 90, "embed_cached": 2, "rq_kmeans": 30, "pq": 60, "opq": 60, "rq_vae": 600}
CONFIGS = {"rq_kmeans": dict(levels=3, codebook_size=256), "pq": dict(subspaces=4, codebook_size=256),
           "opq": dict(subspaces=4, codebook_size=256), "rq_vae": dict(levels=3, codebook_size=256)}


def agreement(x, ref, k: int = 10) -> dict:
    """Cosine similarity of matching rows of ``x`` and ``ref`` (both L2-normalised) and the mean
    overlap of each item's ``k`` nearest neighbours (inner product) under the two."""
    import faiss
    import numpy as np

    cos = (x * ref).sum(1)

    def neighbours(v):
        index = faiss.IndexFlatIP(v.shape[1])
        index.add(np.ascontiguousarray(v, dtype=np.float32))
        return index.search(np.ascontiguousarray(v, dtype=np.float32), k + 1)[1][:, 1:]

    a, b = neighbours(x), neighbours(ref)
    overlap = np.mean([len(set(r) & set(s)) / k for r, s in zip(a, b)])
    return {"cosine_mean": float(cos.mean()), "cosine_min": float(cos.min()),
            f"neighbour_overlap@{k}": float(overlap)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "amazon2014" / "beauty"))
    ap.add_argument("--out", default=str(REPO / "runs" / "bench_quantize"))
    ap.add_argument("--methods", default="rq_kmeans,pq,opq,rq_vae",
                    help=f"comma-separated quantizers to fit, of {','.join(CONFIGS)}")
    ap.add_argument("--cache-dir", default=None,
                    help="embedding cache to use; default: a fresh temporary one, so the first pass is cold")
    ap.add_argument("--rq-vae-epochs", type=int, default=None, help="override RQ-VAE epochs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--precision", default="fp32", choices=("fp32", "int8"), help="encoder precision to time")
    ap.add_argument("--skip-categories", nargs="*", default=[], metavar="CATEGORY",
                    help="categories left out of the item text, e.g. Beauty (every item's, as the Beauty recipe does)")
    ap.add_argument("--omp-passive", action="store_true", help="OMP_WAIT_POLICY=PASSIVE (for contended cores)")
    args = ap.parse_args(argv)
    # checked before the minutes of embedding, not when the first unknown name is reached
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in CONFIGS]
    if unknown or not methods:
        what = f"unknown method(s) {', '.join(map(repr, unknown))}" if unknown else "no method given"
        ap.error(f"--methods: {what}; choose from {','.join(CONFIGS)}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    import torch

    out = Path(args.out)
    results: dict = {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                     "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
                     "load_average_start": os.getloadavg(), "timings_s": {}, "targets_s": TARGETS_S, "methods": {}}
    ds = load_plain(args.data)
    texts = item_texts(ds, replace(DEFAULT_TEMPLATE, skip_categories=tuple(args.skip_categories)))
    print(f"{ds!r}; {len(texts)} item texts, e.g. {texts[0]!r}")

    tmp = None
    cache_dir = args.cache_dir
    if cache_dir is None:
        tmp = tempfile.mkdtemp(prefix="genrec-bench-cache-")
        cache_dir = tmp
    try:
        t = time.perf_counter()
        enc = TextEncoder(cache_dir=cache_dir, precision=args.precision)
        x = enc.encode(texts, ids=ds.item_ids)
        results["timings_s"]["embed_cold"] = time.perf_counter() - t
        results["embedded_texts_cold"] = enc.model_calls
        t = time.perf_counter()
        enc2 = TextEncoder(cache_dir=cache_dir, precision=args.precision)  # a new encoder: what a second run does
        x2 = enc2.encode(texts, ids=ds.item_ids)
        results["timings_s"]["embed_cached"] = time.perf_counter() - t
        assert enc2.model_calls == 0 and (x2 == x).all()
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"embedding {x.shape}: cold {results['timings_s']['embed_cold']:.1f}s "
          f"({results['embedded_texts_cold']} texts embedded), cached {results['timings_s']['embed_cached']:.2f}s")

    results["precision"] = args.precision
    if args.precision != "fp32":
        results["agreement_with_fp32"] = agreement(x, TextEncoder().encode(texts, ids=ds.item_ids))
        print(f"{args.precision} vs fp32: {results['agreement_with_fp32']}")

    for method in methods:
        cfg = dict(CONFIGS[method])
        if method == "rq_vae" and args.rq_vae_epochs is not None:
            cfg["epochs"] = args.rq_vae_epochs
        res = build_semantic_ids(ds, method, embeddings=x, seed=args.seed, **cfg)
        fit_s = res.diagnostics["timings_s"]["quantize"]
        results["timings_s"][method] = fit_s
        results["methods"][method] = res.diagnostics
        res.save(out / method)
        print(f"\n== {method}: fit {fit_s:.1f}s (target <= {TARGETS_S[method]}s)")
        print(format_diagnostics(res.diagnostics))

    results["load_average_end"] = os.getloadavg()
    save_json(out / "results.json", results)
    print("\n== wall time vs target (s)")
    for key, value in results["timings_s"].items():
        ok = "ok" if value <= TARGETS_S[key] else "OVER"
        print(f"  {key:14s} {value:8.1f}  (target {TARGETS_S[key]}) {ok}")
    print(f"load average start {results['load_average_start']}, end {results['load_average_end']} "
          f"on {os.cpu_count()} CPUs; results in {out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
