"""Benchmark: wall time and peak memory of every pipeline stage as the catalogue and the interactions grow.

    python bench/scale.py --items 10000 --interactions 100000
    python bench/scale.py --items 10000 100000 1000000 --interactions 100000 1000000 10000000 \
        --plot bench/scale.png --json bench/scale.json

Issue 18's targets at 1M items / 10M interactions on 2 cores: loading <= 60 s, RQ-KMeans 3x256 on
1M x 384 <= 5 min, memorization labels <= 2 min, SASRec without a batch x catalogue logit tensor,
the whole pipeline <= 2 h and peak memory <= 16 GB.

Each (items, interactions) pair runs in its own process (so one size's memory high-water mark does
not hide the next one's) and goes through these stages on data from :mod:`genrec.synthetic_scale`
(clustered item vectors of ``--dim``, used as precomputed embeddings):

generate  the seeded synthetic dataset and its vectors
write     Parquet interactions / items, ``item_vectors.npy`` + id list (in ``--workdir``)
load      ``load_parquet`` + ``load_item_embeddings`` (what the recipe does with ``text.embeddings``)
split     leave-one-out
rq_kmeans RQ-KMeans 3 x 256 on the vectors (quantize package; ``GENREC_FAISS_THREADS`` threads)
labels    memorization labels of validation + test (``genrec.memorization.label_split``)
sasrec    one SASRec epoch with ``--loss`` (chunked or sampled), validation on ``--eval-users`` users
evaluate  full-ranking test evaluation of ``--eval-users`` users (item-chunked); ``full_s`` extrapolates
          it linearly to every test user. Full ranking scores users x items, so this stage grows
          quadratically when both grow: the one stage worse than linear by its definition
topk      SASRec's top-50, MSP and entropy (the fusion's inputs) of the same users

``--pipeline`` instead runs the whole recipe (``genrec run``: data, embed (the precomputed vectors),
quantize, sasrec, generative, labels, fusion, evaluate, analysis, report) on the written files, in a
child process, under the time budgets ``--sasrec-minutes`` / ``--generative-minutes`` and with
validation and test on ``--eval-users`` sampled users (``data.eval_users``; every model trains on every
user). It prints each stage's wall time and peak memory (the runner's ``stage.done.json``), the whole
run's wall time and peak resident memory, and the test metrics of every model.

``--from-json A.json B.json`` runs nothing: it prints the table (and ``--plot``) of earlier ``--json`` outputs.

Without ``--workdir`` the generated files (and ``--pipeline``'s run directory) go to a temporary
directory that is removed when its size is done, unless ``--keep-workdir`` (or ``genrec run`` failed:
its files are kept and named). ``--plot`` needs two sizes or more and is refused with ``--pipeline``.

Per stage it prints the wall time, the peak resident memory of the process during the stage (sampled
every 20 ms) and that peak minus the memory at the stage's start. ``--plot`` draws wall time against
interactions on log-log axes, one line per stage (with a linear-growth reference).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("generate", "write", "load", "split", "rq_kmeans", "labels", "sasrec", "evaluate", "topk")


def rss_bytes() -> int:
    """The process's resident memory now (Linux ``/proc``)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class Stage:
    """Context manager timing one stage and sampling its peak RSS from a background thread."""

    def __init__(self, name: str, rows: list[dict]):
        self.name, self.rows = name, rows

    def __enter__(self) -> "Stage":
        self.start_rss = self.peak = rss_bytes()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        self.t0 = time.perf_counter()
        self.extra: dict = {}
        return self

    def _sample(self) -> None:
        while not self.stop.wait(0.02):
            self.peak = max(self.peak, rss_bytes())

    def __exit__(self, *exc) -> None:
        seconds = time.perf_counter() - self.t0
        self.stop.set()
        self.thread.join()
        self.peak = max(self.peak, rss_bytes())
        self.rows.append({"stage": self.name, "seconds": seconds, "peak_gib": self.peak / 2**30,
                          "delta_gib": (self.peak - self.start_rss) / 2**30, **self.extra})
        print(f"  {self.name:<10} {seconds:9.2f} s  peak {self.peak / 2**30:6.2f} GiB", flush=True)


class WorkDir:
    """Where one size's files go (``with WorkDir(args) as work: ... work.path``): ``--workdir``, kept;
    else a new temporary directory, removed when the block ends (several GB at 1M items) unless
    ``--keep-workdir`` or the block set ``work.keep`` (a failed run's files, named in its message)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.given = bool(args.workdir)
        self.keep = self.given or bool(getattr(args, "keep_workdir", False))
        self.path = Path(args.workdir) if self.given else None

    def __enter__(self) -> "WorkDir":
        if self.path is None:
            self.path = Path(tempfile.mkdtemp(prefix="genrec-scale-"))
        return self

    def __exit__(self, *exc) -> None:
        if not self.keep:
            shutil.rmtree(self.path, ignore_errors=True)
        elif not self.given:
            print(f"  work directory kept: {self.path}", flush=True)


def run_one(args: argparse.Namespace, items: int, interactions: int) -> dict:
    """Every stage at one size; returns ``{"items", "interactions", "stages": [...]}``."""
    with WorkDir(args) as work:
        return _run_one(args, items, interactions, work.path)


def _run_one(args: argparse.Namespace, items: int, interactions: int, workdir: Path) -> dict:
    import torch

    from genrec.item_embeddings import load_item_embeddings
    from genrec.memorization import label_split
    from genrec.parquet_data import load_parquet
    from genrec.sasrec import SASRecConfig, evaluate, softmax_topk, train_sasrec
    from genrec.splits import leave_one_out
    from genrec.synthetic_scale import make_scale_dataset, write_scale_dataset
    from quantize.pipeline import make_quantizer

    torch.set_num_threads(args.threads)
    rows: list[dict] = []
    print(f"{items} items, {interactions} interactions", flush=True)
    with Stage("generate", rows):
        ds = make_scale_dataset(items, interactions, dim=args.dim, seed=args.seed)
    with Stage("write", rows):
        paths = write_scale_dataset(ds, workdir / f"{items}x{interactions}")
    del ds
    with Stage("load", rows):
        ds = load_parquet(paths["interactions"], paths["items"], keep_unused_items=True)
        vectors = load_item_embeddings(paths["vectors"], ds.item_ids)
    with Stage("split", rows):
        split = leave_one_out(ds, max_history=50)
    with Stage("rq_kmeans", rows):
        codes = make_quantizer("rq_kmeans", levels=3, codebook_size=256, seed=args.seed).fit(vectors)
    del vectors
    with Stage("labels", rows) as st:
        labels = label_split(split)
        st.extra["memorization_share"] = float((labels["test"].kind == 0).mean())
    n_eval = min(args.eval_users, len(split.test))
    with Stage("sasrec", rows):
        small_valid = dataclasses.replace(split, valid=split.valid.sample(n_eval, seed=args.seed))
        config = SASRecConfig(max_epochs=1, loss=args.loss, loss_chunk=args.loss_chunk, batch_size=args.batch_size,
                              num_negatives=args.num_negatives, num_threads=args.threads, seed=args.seed)
        model = train_sasrec(small_valid, config, progress=False).model
    test = split.test.sample(n_eval, seed=args.seed)
    with Stage("evaluate", rows) as st:
        metrics = evaluate(model, test)
        st.extra["ndcg@10"] = metrics["ndcg@10"]
    rows[-1]["full_s"] = rows[-1]["seconds"] * len(split.test) / max(1, n_eval)
    with Stage("topk", rows):
        softmax_topk(model, test, k=50)
    print(f"  codes {codes.shape}, test users {len(split.test)} (evaluated {n_eval}), "
          f"test NDCG@10 {metrics['ndcg@10']:.4f}", flush=True)
    return {"items": items, "interactions": interactions, "users": len(split.test), "eval_users": n_eval,
            "stages": rows}


PIPELINE_CONFIG = """\
# written by bench/scale.py --pipeline: the whole recipe on a generated {items:,}-item dataset
name: scale_{items}
num_threads: {threads}
data:
  dataset: parquet:{data_dir}
  keep_items_without_interactions: true  # every item has a vector; a few no user reached
  eval_users: {eval_users}
text:
  embeddings: {data_dir}/item_vectors.npy
quantize:
  method: rq_kmeans
  levels: 3
  codebook_size: 256
sasrec:
  loss: {loss}
  num_negatives: {num_negatives}
  batch_size: {batch_size}
  loss_chunk: {loss_chunk}
  max_minutes: {sasrec_minutes}
  patience: 2
generative:
  item_embedding: {generative_item_embedding}
  batch_size: {generative_batch_size}
  max_minutes: {generative_minutes}
  eval_every: 1
  eval_beam: 20
fusion:
  k: {k}
  beam: {k}
analysis:
  codebook_sizes: []  # the sweep refits the quantizer per configuration: minutes each at this size
"""


def run_pipeline(args: argparse.Namespace, items: int, interactions: int) -> dict:
    """Generate and write one size, then time ``genrec run`` on it in a child process (a temporary
    work directory is removed afterwards, unless ``--keep-workdir`` or the run failed)."""
    with WorkDir(args) as work:
        return _run_pipeline(args, items, interactions, work)


def _run_pipeline(args: argparse.Namespace, items: int, interactions: int, work: WorkDir) -> dict:
    from genrec.synthetic_scale import make_scale_dataset, write_scale_dataset

    workdir = work.path
    data_dir = workdir / f"{items}x{interactions}"
    t0 = time.perf_counter()
    ds = make_scale_dataset(items, interactions, dim=args.dim, seed=args.seed)
    write_scale_dataset(ds, data_dir)
    del ds
    print(f"{items:,} items, {interactions:,} interactions: generated and written in "
          f"{time.perf_counter() - t0:.1f} s ({data_dir})", flush=True)
    config = workdir / f"scale_{items}.yaml"
    config.write_text(PIPELINE_CONFIG.format(
        items=items, threads=args.threads, data_dir=data_dir, eval_users=args.eval_users, loss=args.loss,
        num_negatives=args.num_negatives, batch_size=args.batch_size, sasrec_minutes=args.sasrec_minutes,
        loss_chunk=args.loss_chunk,
        generative_item_embedding=str(args.generative_item_embedding).lower(),
        generative_batch_size=args.generative_batch_size, generative_minutes=args.generative_minutes, k=args.k))
    run_dir = workdir / f"run_{items}x{interactions}"
    cmd = [sys.executable, "-m", "genrec.cli", "run", str(config), "--out", str(run_dir)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT)
    wall = time.perf_counter() - t0
    if proc.returncode:
        work.keep = True  # the files the message names stay for inspection
        raise SystemExit(f"genrec run failed (exit {proc.returncode}); config {config}, run {run_dir} (kept)")
    stages = []
    for marker in sorted(run_dir.glob("*/stage.done.json"), key=lambda p: p.stat().st_mtime):
        timing = json.loads(marker.read_text()).get("timing", {})
        stages.append({"stage": marker.parent.name, "seconds": timing.get("wall_s", float("nan")),
                       "peak_gib": timing.get("peak_rss_mib", float("nan")) / 1024})
    # the runner resets the kernel's peak-RSS counter at each stage, so the run's peak is the stages' maximum
    peak_gib = max(s["peak_gib"] for s in stages)
    results = json.loads((run_dir / "results.json").read_text())
    test = {name: m["test"]["all"] for name, m in results["models"].items()}
    return {"items": items, "interactions": interactions, "run_dir": str(run_dir), "wall_s": wall,
            "peak_gib": peak_gib, "stages": stages, "test": test, "data": results["data"]}


def pipeline_table(r: dict) -> str:
    """Markdown: each stage's seconds and peak GiB, the whole run, then each model's test metrics."""
    lines = ["| stage | seconds | peak GiB |", "|---|---:|---:|"]
    lines += [f"| {s['stage']} | {s['seconds']:.1f} | {s['peak_gib']:.2f} |" for s in r["stages"]]
    lines.append(f"| **whole run** (`genrec run`) | **{r['wall_s']:.1f}** | **{r['peak_gib']:.2f}** |")
    lines += ["", "| model | recall@10 | ndcg@10 |", "|---|---:|---:|"]
    lines += [f"| {name} | {m.get('recall@10', float('nan')):.4f} | {m.get('ndcg@10', float('nan')):.4f} |"
              for name, m in r["test"].items()]
    return "\n".join(lines)


def table(results: list[dict]) -> str:
    """A markdown table: one row per stage, two columns (seconds, peak GiB) per size."""
    head = "| stage | " + " | ".join(f"{r['items']:,} items / {r['interactions']:,} inter. (s, peak GiB)"
                                     for r in results) + " |"
    lines = [head, "|---|" + "---|" * len(results)]
    for stage in STAGES:
        cells = []
        for r in results:
            row = next((s for s in r["stages"] if s["stage"] == stage), None)
            if row is None:
                cells.append("-")
                continue
            full = f" (all users ~{row['full_s']:.0f} s)" if "full_s" in row else ""
            cells.append(f"{row['seconds']:.2f}{full}, {row['peak_gib']:.2f}")
        lines.append(f"| {stage} | " + " | ".join(cells) + " |")
    total = [sum(s.get("full_s", s["seconds"]) for s in r["stages"]) for r in results]
    peak = [max(s["peak_gib"] for s in r["stages"]) for r in results]
    lines.append("| **total** (generating and writing the data included) | "
                 + " | ".join(f"{t:.1f}, {p:.2f}" for t, p in zip(total, peak)) + " |")
    return "\n".join(lines)


def plot(results: list[dict], path: str) -> None:
    """Log-log wall time against interactions, one line per stage, and a slope-1 reference."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    x = [r["interactions"] for r in results]
    totals = [sum(s.get("full_s", s["seconds"]) for s in r["stages"]) for r in results]
    for stage in STAGES:
        y = [next(s.get("full_s", s["seconds"]) for s in r["stages"] if s["stage"] == stage) for r in results]
        ax.plot(x, y, marker="o", label=stage)
    ax.plot(x, totals, marker="s", color="black", label="total")
    ax.plot(x, [totals[0] * xi / x[0] for xi in x], "k:", label="linear growth")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("interactions (" + ", ".join(f"{r['items']:,} items" for r in results) + ")")
    ax.set_ylabel("wall time (s)")
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--items", type=int, nargs="+", default=[10_000])
    p.add_argument("--interactions", type=int, nargs="+", default=[100_000])
    p.add_argument("--dim", type=int, default=384, help="item vector dimension")
    p.add_argument("--loss", choices=("chunked", "sampled"), default="sampled")
    p.add_argument("--loss-chunk", type=int, default=8192)
    p.add_argument("--num-negatives", type=int, default=1024)
    # 1024 rather than SASRec's 128: with a dense [num_items, H] gradient, Adam's per-step update of
    # the whole item table dominates small batches at 1M items (~0.5 s a step on one core)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--eval-users", type=int, default=10_000, help="users evaluated (and validated on)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", help="where the generated files go (default: a new temporary directory, removed "
                                     "when each size is done)")
    p.add_argument("--keep-workdir", action="store_true",
                   help="keep the temporary work directory (several GB at 1M items) instead of removing it")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--plot", help="write a log-log plot of wall time against size here (PNG)")
    p.add_argument("--pipeline", action="store_true", help="run the whole recipe (genrec run) at each size")
    p.add_argument("--sasrec-minutes", type=float, default=20.0, help="--pipeline: SASRec's training budget")
    p.add_argument("--generative-minutes", type=float, default=30.0,
                   help="--pipeline: the generative model's training budget")
    p.add_argument("--generative-batch-size", type=int, default=1024)
    p.add_argument("--generative-item-embedding", action="store_true",
                   help="--pipeline: the hybrid item-ID input (a [num_items, hidden] table: slow Adam steps at 1M)")
    p.add_argument("--k", type=int, default=20, help="--pipeline: fusion.k and fusion.beam")
    p.add_argument("--from-json", nargs="+", metavar="JSON",
                   help="no run: the table (and --plot) of earlier stage-by-stage --json outputs (not --pipeline's), "
                        "sizes in the given order")
    p.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # a child process: one size, JSON out
    args = p.parse_args(argv)
    if len(args.items) != len(args.interactions):
        p.error("--items and --interactions need the same number of values (paired sizes)")
    if args.plot and args.pipeline:
        p.error("--plot draws the stage-by-stage runs' times; --pipeline has no plot (leave --plot out)")
    if args.plot and not args.from_json and len(args.items) < 2:
        p.error("--plot needs at least two sizes (--items A B ... --interactions A B ...): one size is a single point")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    if args.from_json:
        results = [r for path in args.from_json for r in json.loads(Path(path).read_text())]
        for r in results:
            missing = [s for s in STAGES if s not in {row["stage"] for row in r["stages"]}]
            if missing:
                p.error(f"--from-json: the {r['items']:,}-item result has no stage {missing[0]!r}; "
                        f"these files come from stage-by-stage runs (--json without --pipeline)")
        if args.plot and len(results) < 2:
            p.error(f"--plot needs at least two sizes; the --from-json files hold {len(results)}")
        print(table(results))
        if args.plot:
            plot(results, args.plot)
            print(f"plot: {args.plot}")
        return
    if args.pipeline:
        out = []
        for items, inter in zip(args.items, args.interactions):
            r = run_pipeline(args, items, inter)
            print()
            print(pipeline_table(r), flush=True)
            out.append(r)
        if args.json:
            Path(args.json).write_text(json.dumps(out, indent=1))
        return
    if args.one:
        print("RESULT " + json.dumps(run_one(args, args.items[0], args.interactions[0])), flush=True)
        return
    results = []
    for items, inter in zip(args.items, args.interactions):
        cmd = [sys.executable, __file__, "--one", "--items", str(items), "--interactions", str(inter)]
        for flag in ("dim", "loss", "loss_chunk", "num_negatives", "batch_size", "eval_users", "threads", "seed",
                     "workdir"):
            value = getattr(args, flag)
            if value is not None:
                cmd += [f"--{flag.replace('_', '-')}", str(value)]
        if args.keep_workdir:
            cmd.append("--keep-workdir")
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT)
        for line in proc.stdout.splitlines():
            if line.startswith("RESULT "):
                results.append(json.loads(line[len("RESULT "):]))
            else:
                print(line)
        if proc.returncode:
            print(f"size {items} x {inter} failed (exit {proc.returncode}); stopping")
            break
    if not results:
        sys.exit(1)
    print()
    print(table(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    if args.plot and len(results) > 1:
        plot(results, args.plot)
        print(f"plot: {args.plot}")
    elif args.plot:  # sizes failed: what is left is one point
        print(f"no plot: only {len(results)} size finished")


if __name__ == "__main__":
    main()
