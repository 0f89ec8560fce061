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

Then (``--content``, on by default) a content term for the fusion: each row's ``--content-candidates``
cold items most similar by text to the history's last item join the union (both towers score them),
and a cold candidate's fused score becomes ``fused + a + b * max(cos - tau, 0)`` (``cos``: its text
cosine to the last item). ``(a, b, tau)`` is chosen on a grid per fusion method, two-fold cross-fitted
over the validation users: on one fold the best new-target NDCG@10 whose in-set NDCG@10 stays within
2% of the same fold ranked without the cold items, scored on the other fold.

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
from fusion.adapters import generative_scorer, model_inputs, sasrec_scorer  # noqa: E402
from fusion.candidates import CandidateScores, ranks_of, union_ranks  # noqa: E402
from fusion.report import single_model_topk  # noqa: E402
from genrec.artifacts import load_json, save_json  # noqa: E402
from genrec.generative import load_generative  # noqa: E402
from genrec.metrics import metrics_from_ranks, per_instance_ndcg, ranks_from_topk  # noqa: E402
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
    p.add_argument("--content", action=argparse.BooleanOptionalAction, default=True,
                   help="also the content term (module doc)")
    p.add_argument("--content-candidates", type=int, default=20, help="cold items added to each row by text")
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
    content = {}
    if args.content:
        content = content_term(ext, inst, inp, methods, x, cold.num_warm, side, args.content_candidates,
                               config.generative.eval_batch_size, args.seed)
    if args.out:
        save_json(args.out, {"args": vars(args), "new_users": int(side.sum()), "in_set_users": int((~side).sum()),
                             "results": results, "content": content})
    return results


#: the content term's grid: offset a, weight b and floor tau of ``fused + a + b * max(cos - tau, 0)``
CONTENT_GRID = [(a, b, tau) for a in np.arange(-5.0, 1.01, 0.5) for b in (0.0, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0)
                for tau in (0.0, 0.5, 0.7)]


def content_term(ext, inst: Instances, inp, methods: dict, x: np.ndarray, num_warm: int, side: np.ndarray,
                 per_row: int, batch_size: int, seed: int) -> dict:
    """The content-term experiment of the module doc; prints its table, returns its figures."""
    unit = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    last = np.array([h[-1] for h in inst.histories])
    cos = unit[last] @ unit.T  # [n, N] text cosine of every item to each history's last item
    for j, h in enumerate(inst.histories):
        cos[j, h] = -np.inf  # history items are not the new item sought
    c = inp.cands
    extra = np.argsort(-cos[:, num_warm:], 1)[:, :per_row] + num_warm  # [n, m] most similar cold items
    extra = np.where((extra[:, :, None] == c.items[:, None, :]).any(2), -1, extra)
    ex_id = sasrec_scorer(ext.sasrec, inst)(extra)
    ex_gr = generative_scorer(ext.generative, inst, batch_size)(extra)
    no = np.zeros(extra.shape, bool)
    cx = CandidateScores(np.concatenate([c.items, extra], 1), np.concatenate([c.id_scores, ex_id], 1),
                         np.concatenate([c.gr_scores, ex_gr], 1), np.concatenate([c.id_in_topk, no], 1),
                         np.concatenate([c.gr_in_topk, no], 1))
    cand_cos = np.where(cx.valid, np.take_along_axis(cos, np.maximum(cx.items, 0), 1), -1.0)
    cand_cos = np.nan_to_num(cand_cos, neginf=-1.0)
    new_cell = cx.items >= num_warm
    ti = cx.target_index(inst.targets)
    rng = np.random.default_rng(seed)
    fold = np.zeros(len(side), np.int64)
    for part in (side, ~side):  # both folds get half of the new-target and of the in-set users
        idx = np.flatnonzero(part)
        fold[rng.permutation(idx)[: len(idx) // 2]] = 1
    print(f"\ncontent term: {per_row} cold items by text per row; (a, b, tau) chosen on one validation fold, "
          f"scored on the other (mean of both)\n\n| method | rule | new N@10 | in-set N@10 | "
          f"in-set without cold items | a, b, tau per fold |\n|---|---|---:|---:|---:|---|")
    out = {}
    for name, method in methods.items():
        fused = method.fuse(cx, inp.indicators)
        ndcg = lambda s: per_instance_ndcg(union_ranks(s, ti, cx.valid), 10)  # noqa: E731
        ref = ndcg(np.where(new_cell, -np.inf, fused))  # in-set figures without the cold items
        grid = np.stack([ndcg(np.where(new_cell, fused + a + b * np.maximum(cand_cos - tau, 0), fused))
                         for a, b, tau in CONTENT_GRID])  # [G, n]
        rows = {"own codes (a = b = 0)": CONTENT_GRID.index((0.0, 0.0, 0.0))}
        chosen, new_f, in_f = [], [], []
        for f in (0, 1):
            fit, held = fold != f, fold == f
            ok = grid[:, fit & ~side].mean(1) >= 0.98 * ref[fit & ~side].mean()
            g = int(np.argmax(np.where(ok, grid[:, fit & side].mean(1), -np.inf)))
            chosen.append(CONTENT_GRID[g])
            new_f.append(grid[g, held & side].mean())
            in_f.append(grid[g, held & ~side].mean())
        res = {"cross_fitted": {"new": float(np.mean(new_f)), "in_set": float(np.mean(in_f)),
                                "chosen": [list(map(float, t)) for t in chosen]},
               "in_set_without_cold": float(ref[~side].mean())}
        ok_all = grid[:, ~side].mean(1) >= 0.98 * ref[~side].mean()
        g_all = int(np.argmax(np.where(ok_all, grid[:, side].mean(1), -np.inf)))
        rows["in-sample best within 2%"] = g_all
        for label, g in rows.items():
            res[label] = {"new": float(grid[g, side].mean()), "in_set": float(grid[g, ~side].mean()),
                          "a_b_tau": list(map(float, CONTENT_GRID[g]))}
            print(f"| {name} | {label} | {grid[g, side].mean():.4f} | {grid[g, ~side].mean():.4f} | "
                  f"{ref[~side].mean():.4f} | {CONTENT_GRID[g]} |")
        print(f"| {name} | **cross-fitted** | {res['cross_fitted']['new']:.4f} | {res['cross_fitted']['in_set']:.4f} | "
              f"{ref[~side].mean():.4f} | {chosen} |", flush=True)
        out[name] = res
    return out


if __name__ == "__main__":
    main()
