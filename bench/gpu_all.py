"""Benchmark: every GPU figure of issue 16 in one short run on one CUDA GPU (at most ~9.5 minutes).

    python bench/gpu_all.py [--data ../shared/data/amazon2014/beauty] [--out runs/gpu_all]
                            [--json runs/gpu_all/gpu_all.json] [--precision fp32|bf16]
                            [--recipe-minutes 5] [--tiger-minutes 2] [--beam-seconds 15]
                            [--total-minutes 9.5] [--set section.key=value ...] [--only recipe,tiger,beam]

On the device machine (no package index, no ../shared, no bundled encoder): ``bench/gpu_prepare.sh``
prepares, here, the wheels, data and item vectors it needs and prints the one device command.

1. ``recipe``: the Beauty ``full`` recipe end to end on the GPU (``genrec run
   recipes/configs/amazon2014_beauty.yaml --preset full --set device=cuda``, a fresh run directory),
   in a child process stopped after ``--recipe-minutes``; its wall time (target <= 5 minutes) and
   test NDCG@10 against the quality bars: SASRec >= 0.0436, generative >= 0.0384, adaptive fusion
   >= 0.0476, best fusion >= 0.0500.
2. ``tiger``: the T5 TIGER preset (:class:`genrec.tiger.TigerConfig`) trained on the GPU for at most
   ``--tiger-minutes`` (early stopping on validation) on the recipe's semantic IDs; test NDCG@10
   (beam ``--tiger-beam``) against TIGER's published 0.0384, and what stopped it: its patience
   (converged), its ``max_epochs`` or its time budget.
3. ``beam``: constrained beam search (beam 20) users/s on the GPU, for the recipe's generative model
   and the T5 preset, each timed over as many test users as ``--beam-seconds`` allows (after a
   warm-up batch; CUDA is synchronised before each clock reading).

Prints the table and rewrites every figure to ``--json`` after each part, so a run stopped from
outside keeps what finished. Each part has its own time budget within ``--total-minutes`` (a part
that no longer fits is skipped and says so), so a part that overruns is reported (``timed out``,
with the recipe stages that finished) and the others still run. Without CUDA the script refuses
before doing anything. ``--set`` passes recipe overrides (e.g. ``text.embeddings=FILE.npy``).
``--precision bf16`` runs the recipe's trainers and the T5 preset with bfloat16 autocast (fp32
otherwise); the beam part decodes at the trained models' precision, so fp32 against bf16 decoding
takes two runs.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

STARTED = time.perf_counter()  # the budget counts from the process start (imports included)
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the repository's genrec, installed or not (the device machine: not)
BEAUTY_CONFIG = ROOT / "recipes" / "configs" / "amazon2014_beauty.yaml"
#: the Beauty ``full`` recipe's quality bars (BENCHMARKS.md): test NDCG@10 per model
RECIPE_BARS = {"sasrec": 0.0436, "gr": 0.0384, "adaptive": 0.0476, "best fusion": 0.0500}
TIGER_PUBLISHED_NDCG10 = 0.0384  # TIGER (Rajput et al., 2023), Beauty
PARTS = ("recipe", "tiger", "beam")

log = logging.getLogger("gpu_all")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line (see the module doc)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(BEAUTY_CONFIG), help="the Beauty recipe config")
    p.add_argument("--data", default=None, help="override data.dataset (default: the config's)")
    p.add_argument("--out", default=str(ROOT / "runs" / "gpu_all"), help="work directory (run directories inside)")
    p.add_argument("--json", default=None, help="where to write the figures (default: OUT/gpu_all.json)")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--recipe-minutes", type=float, default=5.0, help="the recipe child process is stopped after this")
    p.add_argument("--tiger-minutes", type=float, default=2.0, help="T5 preset training budget")
    p.add_argument("--tiger-beam", type=int, default=50, help="beam of the T5 preset's test evaluation (50: as every "
                   "CPU test figure in BENCHMARKS.md; a target outside the beam is a miss)")
    p.add_argument("--beam-seconds", type=float, default=15.0, help="decoding budget per model")
    p.add_argument("--total-minutes", type=float, default=9.5,
                   help="the whole run's budget: a part that no longer fits is skipped (the device allows 10)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="recipe config overrides for every part, e.g. text.embeddings=FILE.npy")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 4, help="CPU threads of the CPU-side work")
    p.add_argument("--beam-batch", type=int, default=512, help="users per beam-search batch")
    p.add_argument("--only", default=",".join(PARTS), help=f"comma-separated parts to run, of {','.join(PARTS)}")
    args = p.parse_args(argv)
    parts = [x.strip() for x in args.only.split(",") if x.strip()]
    bad = [x for x in parts if x not in PARTS]
    if bad or not parts:
        p.error(f"--only: unknown part(s) {bad or args.only!r}; choose from {','.join(PARTS)}")
    args.parts = parts
    for key in ("recipe_minutes", "tiger_minutes", "beam_seconds", "total_minutes"):
        if getattr(args, key) <= 0:
            p.error(f"--{key.replace('_', '-')} must be > 0")
    args.json = args.json or str(Path(args.out) / "gpu_all.json")
    return args


def require_cuda() -> None:
    """Exit with a clear message (status 2) unless a CUDA GPU is usable: every figure here is a GPU one."""
    import torch

    if not torch.cuda.is_available():
        sys.stderr.write("bench/gpu_all.py measures GPU figures and needs a CUDA GPU: torch.cuda.is_available() is "
                         "False on this machine (torch %s, CUDA build %s). Nothing was run.\n"
                         % (torch.__version__, torch.version.cuda))
        raise SystemExit(2)


def run_recipe_part(args: argparse.Namespace, run_dir: Path) -> dict[str, Any]:
    """The Beauty full recipe on the GPU in a child process (so its time budget can stop it)."""
    overrides = ["device=cuda", f"num_threads={args.threads}", *_overrides(args)]
    if args.precision == "bf16":
        overrides += ["sasrec.precision=bf16", "generative.precision=bf16"]
    cmd = [sys.executable, "-c", "import sys; from genrec.cli import main; sys.exit(main(sys.argv[1:]))",
           "run", args.config, "--preset", "full", "--out", str(run_dir), "--force",
           *[x for o in overrides for x in ("--set", o)]]
    if run_dir.exists():  # end to end means from nothing: an earlier run's stages would be skipped
        shutil.rmtree(run_dir)
    log.info("recipe: %s", " ".join(cmd[3:]))
    t0 = time.perf_counter()
    budget = min(args.recipe_minutes, args.left_minutes())
    log_path = Path(args.json).parent / "recipe.log"  # the child's output, beside the JSON: kept when stopped
    with open(log_path, "w") as child_log:
        try:
            proc = subprocess.run(cmd, cwd=ROOT, timeout=60 * budget, stdout=child_log, stderr=subprocess.STDOUT)
        except subprocess.TimeoutExpired:
            return {"status": "timed out", "wall_s": time.perf_counter() - t0, "budget_min": budget,
                    "stage_wall_s": _stage_walls(run_dir), "log_tail": _tail(log_path)}
    wall = time.perf_counter() - t0
    out: dict[str, Any] = {"status": "ok" if proc.returncode == 0 else f"failed (exit {proc.returncode})",
                           "wall_s": wall, "target_s": 300.0, "stage_wall_s": _stage_walls(run_dir),
                           "overrides": overrides,  # text.embeddings: vectors made beforehand, no encoder timed
                           "text_encoded_here": not any(o.startswith("text.embeddings=") for o in overrides)}
    if proc.returncode != 0:
        out["log_tail"] = _tail(log_path)
        return out
    results = json.loads((run_dir / "results.json").read_text())
    test = {name: m["test"]["all"]["ndcg@10"] for name, m in results["models"].items()}
    primary = results["fusion"]["primary"]  # chosen on validation: the "best fusion" bar reads it, not test's best
    figures = {"sasrec": test.get("sasrec"), "gr": test.get("gr", test.get("generative")),
               "adaptive": test.get("adaptive"), "best fusion": test.get(primary)}
    out["test_ndcg@10"], out["primary"] = test, primary
    out["bars"] = {k: {"value": figures[k], "bar": bar, "met": figures[k] is not None and figures[k] >= bar}
                   for k, bar in RECIPE_BARS.items()}
    return out


def _overrides(args: argparse.Namespace) -> list[str]:
    return ([f"data.dataset={args.data}"] if args.data else []) + list(args.set)


def _stage_walls(run_dir: Path) -> dict[str, float]:
    """Wall seconds of each stage of ``run_dir`` that finished."""
    walls = {}
    for marker in sorted(run_dir.glob("*/stage.done.json")):
        walls[marker.parent.name] = json.loads(marker.read_text())["timing"]["wall_s"]
    return walls


def _tail(path: Path, chars: int = 2000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.is_file() else ""


def _split_and_table(args: argparse.Namespace, run_dir: Path):
    import genrec
    from genrec.recipe import load_config
    from quantize import SemanticIdTable

    config = load_config(args.config, preset="full", overrides=_overrides(args))
    d = config.data
    dataset = genrec.load_dataset(d.dataset, cache_dir=d.cache_dir)
    split = genrec.leave_one_out(dataset, max_history=d.max_history, min_interactions=d.min_interactions)
    sid = run_dir / "quantize" / "semantic_ids.json"
    if not sid.is_file():
        raise FileNotFoundError(f"{sid}: the recipe's semantic IDs are missing (run the recipe part first)")
    return split, SemanticIdTable.load(sid)


def run_tiger_part(args: argparse.Namespace, run_dir: Path, out_dir: Path) -> dict[str, Any]:
    """The T5 preset trained on the GPU within its budget; its test NDCG@10 against TIGER's."""
    import torch

    from genrec.generative import evaluate
    from genrec.tiger import TigerConfig, train_tiger

    split, table = _split_and_table(args, run_dir)
    # the budget left, less ~1 min for the test decode after it
    minutes = min(args.tiger_minutes, args.left_minutes() - 1.0)
    if minutes <= 0:
        return {"status": "skipped: no time left in --total-minutes"}
    config = TigerConfig(device="cuda", precision=args.precision, max_minutes=minutes, eval_batch_size=256,
                         num_threads=args.threads)
    if out_dir.exists():  # trained here from nothing: an earlier run's checkpoints would be resumed
        shutil.rmtree(out_dir)
    t0 = time.perf_counter()
    result = train_tiger(split, table, config, out_dir=out_dir, progress=False)
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    test = evaluate(result.model, split.test, beam_size=args.tiger_beam, batch_size=256)
    torch.cuda.synchronize()
    last = result.history[-1]["epoch"] if result.history else 0
    stop = stopped_by(result.history, config.max_epochs, minutes)
    return {"status": "ok", "train_s": train_s, "test_eval_s": time.perf_counter() - t0, "epochs": last,
            "best_epoch": result.best_epoch, "stopped_by": stop, "converged": stop == "patience", "test": test,
            "test_ndcg@10": test["ndcg@10"], "published_ndcg@10": TIGER_PUBLISHED_NDCG10,
            "met": test["ndcg@10"] >= TIGER_PUBLISHED_NDCG10}


#: what :func:`stopped_by` returns, as the table words it
STOP_REASONS = {"patience": "converged (stopped by its patience)", "max_epochs": "stopped at its max_epochs",
                "time budget": "stopped by its time budget"}


def stopped_by(history: list[dict], max_epochs: int, budget_minutes: float) -> str:
    """Why training ended, from its ``history`` (one row per evaluation): ``"max_epochs"`` (the last
    epoch is the limit), ``"time budget"`` (its clock reached ``budget_minutes``, or no epoch was
    evaluated), else ``"patience"``: the loop's one other way out (``genrec.training.fit``), converged."""
    if not history:
        return "time budget"
    if history[-1]["epoch"] >= max_epochs:
        return "max_epochs"
    if history[-1]["minutes"] >= budget_minutes:
        return "time budget"
    return "patience"


def users_per_second(model: Any, split: Any, batch: int, seconds: float) -> dict[str, Any]:
    """Decoding (beam 20, ``genrec.generative.recommend``: the repeat gate's history scoring
    included, as in the published CPU figure) throughput of ``model`` on the GPU over as many test
    users as ``seconds`` allows, after one warm-up batch."""
    import numpy as np
    import torch

    from genrec.generative import recommend

    test = split.test
    order = np.random.default_rng(0).permutation(len(test))
    recommend(model, test.subset(order[:batch]), 20, batch_size=batch)
    torch.cuda.synchronize()
    done, t0 = 0, time.perf_counter()
    while done < len(order) and time.perf_counter() - t0 < seconds:
        rows = order[done:done + batch]
        recommend(model, test.subset(rows), 20, batch_size=batch)
        torch.cuda.synchronize()
        done += len(rows)
    wall = time.perf_counter() - t0
    return {"users": int(done), "seconds": wall, "users_per_s": done / wall if wall > 0 else None}


def run_beam_part(args: argparse.Namespace, run_dir: Path, tiger_dir: Path) -> dict[str, Any]:
    """Beam-search users/s on the GPU for the recipe's generative model and the T5 preset."""
    from genrec.generative import load_generative
    from genrec.tiger import load_tiger

    split, _ = _split_and_table(args, run_dir)
    seconds = min(args.beam_seconds, max(0.0, 60 * args.left_minutes() - 60) / 2)  # loads and warm-ups: ~1 min
    if seconds <= 0:
        return {"status": "skipped: no time left in --total-minutes"}
    out: dict[str, Any] = {}
    gen = run_dir / "generative" / "best.pt"
    if gen.is_file():
        out["generative"] = users_per_second(load_generative(gen, device="cuda"), split, args.beam_batch, seconds)
    else:
        out["generative"] = {"status": f"skipped: {gen} is missing"}
    t5 = tiger_dir / "best.pt"
    if t5.is_file():
        out["tiger"] = users_per_second(load_tiger(t5, device="cuda"), split, min(args.beam_batch, 256), seconds)
    else:
        out["tiger"] = {"status": f"skipped: {t5} is missing"}
    return out


def _timed(name: str, fn: Any) -> dict[str, Any]:
    """``fn()``'s figures, or what went wrong: one failing part never loses the others' figures."""
    t0 = time.perf_counter()
    try:
        return fn()
    except Exception as e:  # reported in the table and the JSON
        log.exception("%s failed", name)
        return {"status": f"failed: {type(e).__name__}: {e}", "wall_s": time.perf_counter() - t0}


def table(figures: dict[str, Any]) -> str:
    """The printed summary of ``figures``."""
    lines = [f"{'figure':44s} {'value':>12s}  note", "-" * 80]

    def row(name: str, value: Any, note: str = "") -> None:
        text = f"{value:.4f}" if isinstance(value, float) else str(value)
        lines.append(f"{name:44s} {text:>12s}  {note}")

    r = figures.get("recipe")
    if r is not None:
        start = "" if r.get("text_encoded_here", True) else " from item vectors made beforehand"
        row(f"Beauty full recipe{start}, wall (s)", round(r.get("wall_s", 0.0), 1), f"{r['status']}; target <= 300 s")
        for k, b in r.get("bars", {}).items():
            row(f"  {k} test N@10", b["value"], f"bar {b['bar']}: {'met' if b['met'] else 'missed'}")
    t = figures.get("tiger")
    if t is not None:
        if "test_ndcg@10" in t:
            row("T5 TIGER preset test N@10", t["test_ndcg@10"],
                f"TIGER {TIGER_PUBLISHED_NDCG10}: {'met' if t['met'] else 'missed'}; {t['epochs']} epochs in "
                f"{t['train_s']:.0f} s, {_stop_text(t)}")
        else:
            row("T5 TIGER preset test N@10", "-", t.get("status", ""))
    b = figures.get("beam")
    if b is not None:
        for k in ("generative", "tiger"):
            v = b.get(k, {})
            if "users_per_s" in v:
                row(f"beam search users/s ({k}, beam 20)", round(v["users_per_s"], 1),
                    f"{v['users']} users in {v['seconds']:.1f} s")
            else:
                row(f"beam search users/s ({k}, beam 20)", "-", v.get("status", ""))
        if "status" in b and not any(k in b for k in ("generative", "tiger")):
            row("beam search", "-", b["status"])
    return "\n".join(lines)


def _stop_text(t: dict[str, Any]) -> str:
    """How the T5 preset's training ended (a JSON from before ``stopped_by`` has ``converged`` only)."""
    if "stopped_by" in t:
        return STOP_REASONS.get(t["stopped_by"], str(t["stopped_by"]))
    return "converged" if t.get("converged") else "not converged (max_epochs or its time budget)"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the parts asked for, print the table, write the JSON; 2 without CUDA."""
    args = parse_args(argv)
    require_cuda()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    import torch

    work = Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    run_dir, tiger_dir = work / "beauty_full", work / "tiger"
    figures: dict[str, Any] = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__,
                               "precision": args.precision, "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    from genrec.artifacts import atomic_write_text

    t0 = STARTED
    args.left_minutes = lambda: args.total_minutes - (time.perf_counter() - t0) / 60
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.json, json.dumps(figures, indent=2, default=str) + "\n")  # the machine, at once
    parts = {"recipe": lambda: run_recipe_part(args, run_dir),
             "tiger": lambda: run_tiger_part(args, run_dir, tiger_dir),
             "beam": lambda: run_beam_part(args, run_dir, tiger_dir)}
    for name in PARTS:
        if name not in args.parts:
            continue
        figures[name] = (_timed(name, parts[name]) if args.left_minutes() > 0.5
                         else {"status": "skipped: no time left in --total-minutes"})
        figures["total_s"] = time.perf_counter() - t0
        # after every part: a run stopped from outside keeps the parts that finished
        atomic_write_text(args.json, json.dumps(figures, indent=2, default=str) + "\n")
        print(table(figures), flush=True)
    print(f"total {figures['total_s']:.0f} s; figures in {args.json}")
    return 0


if __name__ == "__main__":
    sys.stdout.reconfigure(line_buffering=True)  # each line as it comes, also into a pipe
    raise SystemExit(main())
