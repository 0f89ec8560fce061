"""Benchmark: how the generative tower (and so the fusion) should score items added after training (issue 13),
chosen on validation of a cold-start run.

    python bench/new_item_generative.py [--run runs/bench_cold_share5_s8] [--in-set-users 4000]
                                        [--weights 1 0.5 0.25 0.1] [--threads 2]

``--run`` is a finished recipe run with ``data.cold_items`` (``bench/cold_start_beauty.py`` makes
one): its models trained on the warm catalogue only, and the cold items come back exactly as
``Recommender.add_items`` adds new items (:func:`genrec.new_items.extend_catalogue`). Its validation
instances whose target is a cold item were left out of training, early stopping and fusion fitting
(:mod:`genrec.cold_start`), so they are real new-item cases that no choice has read yet; this bench
ranks them (and a seeded sample of the in-set validation users) as the fusion does, within the union
of both towers' top-k candidates, with every fusion method of the run, for each way of giving a new
item its generative score:

- ``own codes``: the log-prob of its own semantic ID (codes no training target ever had), what
  ``add_items`` gives it;
- ``proxy x w``: the log-prob of its proxy, its nearest warm item by text (the item SASRec reads it
  as, :func:`genrec.new_items.nearest_items`), plus ``log w``, wherever it is a candidate (the
  candidates and the fusion's indicators stay those of the own-codes pass).

Prints validation NDCG@10 / Recall@10 on the cold-target ("new") and in-set users. Validation only:
the test split is never read. The in-set users are validation instances the towers early-stopped on
and the fusion methods were fitted on, so their figures are in-sample (alike for every variant). The
"generative" rows rank the generative model's own beam by the variant's scores: a proxy re-scores
the cold items the beam found, it does not bring in others.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fusion import load_methods  # noqa: E402
from fusion.adapters import generative_scorer, model_inputs  # noqa: E402
from fusion.candidates import CandidateScores, ranks_of  # noqa: E402
from fusion.report import single_model_topk  # noqa: E402
from genrec.artifacts import load_json, save_json  # noqa: E402
from genrec.generative import load_generative  # noqa: E402
from genrec.metrics import metrics_from_ranks, ranks_from_topk  # noqa: E402
from genrec.new_items import extend_catalogue, nearest_items  # noqa: E402
from genrec.recipe import StageContext, config_from_dict  # noqa: E402
from genrec.sasrec import load_sasrec  # noqa: E402
from genrec.splits import Instances  # noqa: E402
from quantize import SemanticIdTable  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", default=str(ROOT / "runs" / "bench_cold_share5_s8"),
                   help="a finished cold-start recipe run (data.cold_items)")
    p.add_argument("--in-set-users", type=int, default=4000, help="validation users sampled among the in-set ones")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--weights", type=float, nargs="+", default=[1.0, 0.5, 0.25, 0.1])
    p.add_argument("--out", help="also write the figures to this JSON file")
    args = p.parse_args(argv)
    if any(not w > 0 for w in args.weights):
        p.error(f"--weights must all be > 0 (their logs are added), got {args.weights}")
    torch.set_num_threads(args.threads)
    run = Path(args.run)
    config = config_from_dict(load_json(run / "config.json"))
    cold = StageContext(run, config).cold()
    if cold is None:
        raise SystemExit(f"{run}: not a cold-start run (data.cold_items is not set)")
    table = SemanticIdTable.load(run / "quantize" / "semantic_ids.json")
    x = np.load(run / "embed" / "embeddings.npy")
    ext = extend_catalogue(table, load_generative(run / "generative" / "best.pt"), cold.warm.train, run / "quantize",
                           x[cold.num_warm:], cold.dataset.item_ids[cold.num_warm:],
                           sasrec=load_sasrec(run / "sasrec" / "best.pt"), item_embeddings=x[:cold.num_warm])
    methods = load_methods(run / "fusion" / "methods.pt")
    # each cold item's proxy: its nearest warm item with training interactions, as SASRec's rule picks it
    counts = np.bincount(np.concatenate(cold.warm.train), minlength=cold.num_warm)[:cold.num_warm]
    proxy = np.arange(cold.num_items)
    proxy[cold.num_warm:] = nearest_items(x[:cold.num_warm], x[cold.num_warm:], allowed=counts > 0)

    valid = cold.split.valid
    is_new = valid.targets >= cold.num_warm
    rng = np.random.default_rng(args.seed)
    in_set = np.flatnonzero(~is_new)
    rows = np.r_[np.flatnonzero(is_new), np.sort(rng.choice(in_set, min(args.in_set_users, len(in_set)), replace=False))]
    inst = Instances(users=valid.users[rows], histories=[valid.histories[j] for j in rows], targets=valid.targets[rows])
    side = is_new[rows]
    k, beam = config.fusion.k, config.fusion.beam
    print(f"{run}: {cold.num_items - cold.num_warm} cold items added; validation users: {int(side.sum())} with a "
          f"cold target, {int((~side).sum())} in-set (sampled); fusion k={k}, beam={beam}\n", flush=True)

    inp = model_inputs(ext.sasrec, ext.generative, inst, ext.stats, k=k, beam=beam,
                       batch_size=config.generative.eval_batch_size)
    c = inp.cands
    new_cell = c.items >= cold.num_warm  # [n, C] candidates that are cold items
    proxied = generative_scorer(ext.generative, inst, config.generative.eval_batch_size)(
        np.where(new_cell, proxy[np.maximum(c.items, 0)], -1))
    variants = {"own codes": c.gr_scores, **{f"proxy x {w:g}": np.where(new_cell, proxied + math.log(w), c.gr_scores)
                                              for w in args.weights}}
    results: dict[str, dict] = {}
    print("| new item's generative score | method | new N@10 | new R@10 | in-set N@10 | in-set R@10 |\n"
          "|---|---|---:|---:|---:|---:|")
    for variant, gr in variants.items():
        cands = CandidateScores(c.items, c.id_scores, gr.astype(np.float32), c.id_in_topk, c.gr_in_topk)
        results[variant] = {}
        for name, method in {"sasrec": None, "generative": None, **methods}.items():
            if method is None:  # each tower alone: its own top-k within the union
                r = ranks_from_topk(single_model_topk(cands, "id" if name == "sasrec" else "gr", k), inst.targets)
            else:
                r = ranks_of(cands, method.fuse(cands, inp.indicators), inst.targets, k)
            m = {part: metrics_from_ranks(r[mask], (10,)) for part, mask in (("new", side), ("in_set", ~side))}
            results[variant][name] = m
            print(f"| {variant} | {name} | {m['new']['ndcg@10']:.4f} | {m['new']['recall@10']:.4f} | "
                  f"{m['in_set']['ndcg@10']:.4f} | {m['in_set']['recall@10']:.4f} |", flush=True)
    if args.out:
        save_json(args.out, {"args": vars(args), "new_users": int(side.sum()), "in_set_users": int((~side).sum()),
                             "results": results})
    return results


if __name__ == "__main__":
    main()
