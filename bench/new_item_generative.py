"""Benchmark: how the generative tower (and so the fusion) should score items added after training (issue 13),
chosen on validation of a cold-start run.

    python bench/new_item_generative.py [--run runs/bench_cold_share5_s8] [--in-set-users 4000]
                                        [--weights 1 0.5 0.25 0.1] [--threads 2]
                                        [--content | --no-content] [--content-candidates 20] [--out FILE]
                                        [--content-grid default|wide] [--mixture | --no-mixture] [--test]

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
cold items most similar by text to the history's last item join the union (both towers score them;
the min-max methods give a candidate outside both top-k lists 0 whatever its scores, so for them only
the term orders these), and a cold candidate's fused score becomes
``fused + spread * (a + b * max(cos - tau, 0))`` (``cos``: its text cosine to the last item; ``spread``:
the standard deviation of the method's fused scores of warm candidates, as the methods' scales
differ). ``(a, b, tau)`` is chosen on a grid per fusion method, two-fold cross-fitted over the
validation users: on one fold the best new-target NDCG@10 whose in-set NDCG@10 stays within 2% of the
same users' with every cold candidate ranked last, scored on the other fold. (That reference keeps
the cold items' share of the towers' top-k lists and of the union's normalisers, which the models
without the cold items added would fill with warm items: the recipe's cold-start report compares
with those.)

Then (``--mixture``, on by default) the new-item mixture of :mod:`fusion.new_item_mixture`: a row's
warm candidates are scored ``log(1 - pi) + log softmax(fused / T_warm)`` and a cold item
``log pi + log softmax(z / T)`` over all cold items, where ``z`` is SASRec's logit of the cold item
(through its nearest warm item, plus its own text in a content-aware SASRec), and the
``--content-candidates`` cold items of highest ``z`` join the union. ``(pi, T, T_warm)`` is chosen on a grid, cross-fitted as the content term's.

Prints validation NDCG@10 / Recall@10 of the variants on the cold-target ("new") and in-set users,
then the content term's NDCG@10. Validation only:
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
from fusion.adapters import generative_scorer, id_tower_histories, model_inputs, sasrec_scorer  # noqa: E402
from fusion.candidates import CandidateScores, ranks_of, union_ranks  # noqa: E402
from fusion.new_item_mixture import (IN_SET_BOUND, fit_new_item_mixture, mixture_ranks,  # noqa: E402
                                     new_item_logits)
from fusion.report import single_model_topk  # noqa: E402
from genrec.artifacts import save_json  # noqa: E402
from genrec.errors import ConfigError  # noqa: E402
from genrec.generative import load_generative  # noqa: E402
from genrec.metrics import metrics_from_ranks, per_instance_ndcg, ranks_from_topk  # noqa: E402
from genrec.new_items import extend_catalogue, nearest_items  # noqa: E402
from genrec.recipe import StageContext  # noqa: E402
from genrec.recipe.run_files import run_config  # noqa: E402
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
    p.add_argument("--content-grid", choices=("default", "wide"), default="default",
                   help="the content term's (a, b, tau) grid: CONTENT_GRID or CONTENT_GRID_WIDE")
    p.add_argument("--mixture", action=argparse.BooleanOptionalAction, default=True,
                   help="also the new-item mixture (module doc)")
    p.add_argument("--test", action="store_true",
                   help="then apply each method's content term chosen on validation (in-sample best within the "
                        "bound, as a recipe would fit it) to every test user, once (needs --content)")
    p.add_argument("--out", help="also write the figures to this JSON file")
    args = p.parse_args(argv)
    if any(not w > 0 for w in args.weights):
        p.error(f"--weights must all be > 0 (their logs are added), got {args.weights}")
    if args.content_candidates < 1:
        p.error(f"--content-candidates must be >= 1, got {args.content_candidates}")
    if args.in_set_users < 1:
        p.error(f"--in-set-users must be >= 1 (the in-set bound is measured on them), got {args.in_set_users}")
    if args.test and not args.content:
        p.error("--test applies the content term chosen on validation to the test users: it needs --content")
    torch.set_num_threads(args.threads)
    run = Path(args.run)
    config = run_config(run)
    cold = StageContext(run, config).cold()
    if cold is None:
        raise SystemExit(f"{run}: not a cold-start run (data.cold_items is not set)")
    try:  # before the catalogue is extended: a split without both kinds of users is refused at once
        inst, side = cold.validation_sample(args.in_set_users, args.seed, need_both=True)
    except ConfigError as e:
        raise SystemExit(f"{run}: {e}") from None
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

    k, beam = config.fusion.k, config.fusion.beam
    print(f"{run}: {cold.num_items - cold.num_warm} cold items added; validation users: {int(side.sum())} with a "
          f"cold target, {int((~side).sum())} in-set (sampled); fusion k={k}, beam={beam}\n", flush=True)

    # as the run's fusion stage built its inputs (teacher forcing included), so the rankings are the run's
    inp = model_inputs(ext.sasrec, ext.generative, inst, ext.stats, k=k, beam=beam,
                       teacher_forcing=config.fusion.teacher_forcing, batch_size=config.generative.eval_batch_size)
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
            m = {part: side_metrics(r[mask]) for part, mask in (("new", side), ("in_set", ~side))}
            results[variant][name] = m
            print(f"| {variant} | {name} | {shown(m['new']['ndcg@10'])} | {shown(m['new']['recall@10'])} | "
                  f"{shown(m['in_set']['ndcg@10'])} | {shown(m['in_set']['recall@10'])} |", flush=True)
    content = {}
    if args.content:
        content = content_term(ext, inst, inp, methods, x, cold.num_warm, side, args.content_candidates,
                               config.generative.eval_batch_size, args.seed,
                               CONTENT_GRID_WIDE if args.content_grid == "wide" else CONTENT_GRID)
    test = {}
    if args.test:  # --content is required with it (checked above)
        test = content_term_test(ext, cold, content, x, args.content_candidates, config, methods)
    mixture = {}
    if args.mixture:
        mixture = mixture_term(ext, inst, inp, methods, cold.num_warm, side, args.content_candidates, args.seed)
    if args.out:
        save_json(args.out, {"args": vars(args), "new_users": int(side.sum()), "in_set_users": int((~side).sum()),
                             "results": results, "content": content, "mixture": mixture, "test": test})
    return {"variants": results, "content": content, "mixture": mixture, "test": test}


def side_metrics(ranks: np.ndarray, ks=(10,)) -> dict[str, float]:
    """``metrics_from_ranks`` of one side's ranks; NaN for each metric (shown as n/a) when the side has
    no user."""
    if len(ranks):
        return metrics_from_ranks(ranks, ks)
    return {f"{x}@{k}": math.nan for k in ks for x in ("recall", "ndcg")}


def mean(values: np.ndarray) -> float:
    """The mean of one side's per-user figures; NaN (shown as n/a) when the side has no user."""
    return float(values.mean()) if len(values) else math.nan


def shown(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.4f}"


def content_term_test(ext, cold, content: dict, x: np.ndarray, per_row: int, config, methods: dict) -> dict:
    """Each method's content term, ``(a, b, tau)`` and ``spread`` as chosen on validation (in-sample best
    within the bound), applied to every test user: NDCG@10 of the cold-target and in-set test users with
    the term and with every cold candidate ranked last (the same models, cold items never recommended).
    Prints its table, returns its figures. The choice read validation only; test is read once, here."""
    inst = cold.split.test
    side = cold.is_cold(inst.targets)
    bs = config.generative.eval_batch_size
    inp = model_inputs(ext.sasrec, ext.generative, inst, ext.stats, k=config.fusion.k, beam=config.fusion.beam,
                       teacher_forcing=config.fusion.teacher_forcing, batch_size=bs)
    cx, cand_cos = text_candidates(ext, inst, inp, x, cold.num_warm, per_row, bs)
    new_cell, ti = cx.items >= cold.num_warm, cx.target_index(inst.targets)
    print(f"\ncontent term on test ({int(side.sum())} cold-target, {int((~side).sum())} in-set users), the rule "
          "chosen on validation\n\n| method | cold N@10 | in-set N@10 | in-set N@10, cold items last | a, b, tau |\n"
          "|---|---:|---:|---:|---|")
    out = {}
    for name, method in methods.items():
        a, b, tau = content[name]["in-sample best within the bound"]["a_b_tau"]
        fused = method.fuse(cx, inp.indicators)
        spread = content[name]["spread"]
        ruled = per_instance_ndcg(union_ranks(np.where(new_cell, fused + spread * (a + b * np.maximum(cand_cos - tau, 0)),
                                                       fused), ti, cx.valid), 10)
        last_ = per_instance_ndcg(union_ranks(np.where(new_cell, -np.inf, fused), ti, cx.valid), 10)
        out[name] = {"cold": mean(ruled[side]), "in_set": mean(ruled[~side]),
                     "in_set_cold_last": mean(last_[~side]), "a_b_tau": [a, b, tau]}
        print(f"| {name} | {shown(out[name]['cold'])} | {shown(out[name]['in_set'])} | "
              f"{shown(out[name]['in_set_cold_last'])} | {(a, b, tau)} |", flush=True)
    return out


#: the content term's grid, in units of each method's fused-score spread (the methods' scales differ):
#: offset a, weight b and floor tau of ``fused + spread * (a + b * max(cos - tau, 0))``; tau matters
#: only where b > 0. ``EXCLUDE`` (cold candidates dropped) is always feasible under the in-set bound.
EXCLUDE = (-math.inf, 0.0, 0.0)
CONTENT_GRID = [EXCLUDE] + [(-3.0 + 0.25 * i, b, tau) for i in range(15) for b in (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 5.0)
                            for tau in ((0.0,) if b == 0 else (0.0, 0.5, 0.7))]
#: ``--content-grid wide``: larger weights and floors too (session 14: the default grid's choice sat at its edge)
CONTENT_GRID_WIDE = [EXCLUDE] + [(-3.0 + 0.25 * i, b, tau) for i in range(15)
                                 for b in (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 7.5, 10.0, 15.0, 20.0)
                                 for tau in ((0.0,) if b == 0 else (0.0, 0.5, 0.7, 0.75, 0.8, 0.85, 0.9))]


def cold_candidates(cands: CandidateScores, inst: Instances, relevance: np.ndarray, num_warm: int, per_row: int,
                    id_scorer, gr_scorer) -> CandidateScores:
    """``cands`` plus, per row, the ``per_row`` cold items (index ``>= num_warm``) of highest
    ``relevance [n, cold items]`` (column j: item ``num_warm + j``), leaving out history items and
    those already candidates; both towers score the additions (``id_scorer``, ``gr_scorer``)."""
    rel = np.array(relevance, np.float64)
    for j, h in enumerate(inst.histories):
        h = np.asarray(h)
        rel[j, h[h >= num_warm] - num_warm] = -np.inf  # a history item is not the new item sought
    m = min(per_row, rel.shape[1])
    top = np.argpartition(-rel, m - 1, axis=1)[:, :m]
    top = np.take_along_axis(top, np.argsort(-np.take_along_axis(rel, top, 1), 1, kind="stable"), 1)
    ok = np.isfinite(np.take_along_axis(rel, top, 1))
    extra = np.where(ok, top + num_warm, -1)
    extra = np.where((extra[:, :, None] == cands.items[:, None, :]).any(2), -1, extra)  # [n, m]
    no = np.zeros(extra.shape, bool)
    return CandidateScores(np.concatenate([cands.items, extra], 1),
                           np.concatenate([cands.id_scores, id_scorer(extra)], 1).astype(np.float32),
                           np.concatenate([cands.gr_scores, gr_scorer(extra)], 1).astype(np.float32),
                           np.concatenate([cands.id_in_topk, no], 1), np.concatenate([cands.gr_in_topk, no], 1))


def cross_fitted_rule(new_ndcg: np.ndarray, in_ndcg: np.ndarray, ref_in: np.ndarray, fold_new: np.ndarray,
                      fold_in: np.ndarray) -> dict | None:
    """Two-fold cross-fitting of the content term: per fold ``f``, the grid point with the best mean
    new-target NDCG@10 on the other fold among those whose in-set NDCG@10 there is at least
    ``IN_SET_BOUND`` of ``ref_in``'s, scored on fold ``f``. ``new_ndcg [G, n_new]`` / ``in_ndcg
    [G, n_in]``: per grid point and user; ``ref_in [n_in]``: the in-set users' reference figures;
    ``fold_*``: each user's fold (0 or 1). None when a fold lacks new-target or in-set users."""
    if any(not np.any(f == v) for f in (fold_new, fold_in) for v in (0, 1)):
        return None
    chosen, new_f, in_f = [], [], []
    for f in (0, 1):
        fit_new, fit_in = fold_new != f, fold_in != f
        ok = in_ndcg[:, fit_in].mean(1) >= IN_SET_BOUND * ref_in[fit_in].mean() - 1e-12
        g = int(np.argmax(np.where(ok, new_ndcg[:, fit_new].mean(1), -np.inf)))
        chosen.append(g)
        new_f.append(float(new_ndcg[g, fold_new == f].mean()))
        in_f.append(float(in_ndcg[g, fold_in == f].mean()))
    return {"chosen": chosen, "new": float(np.mean(new_f)), "in_set": float(np.mean(in_f))}


def text_candidates(ext, inst: Instances, inp, x: np.ndarray, num_warm: int, per_row: int, batch_size: int):
    """The content term's candidates: ``inp``'s plus each row's ``per_row`` cold items most similar by text
    to the last history item (both towers score them), and every candidate's text cosine to that item
    ``[n, C]`` (-1 for padding)."""
    unit = (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32)
    last = unit[inst.last_items()]  # [n, d]
    cx = cold_candidates(inp.cands, inst, last @ unit[num_warm:].T, num_warm, per_row,
                         sasrec_scorer(ext.sasrec, inst), generative_scorer(ext.generative, inst, batch_size))
    return cx, np.where(cx.valid, np.einsum("nd,ncd->nc", last, unit[np.maximum(cx.items, 0)]), -1.0)


def content_term(ext, inst: Instances, inp, methods: dict, x: np.ndarray, num_warm: int, side: np.ndarray,
                 per_row: int, batch_size: int, seed: int, content_grid: list | None = None) -> dict:
    """The content-term experiment of the module doc over ``content_grid`` (default :data:`CONTENT_GRID`);
    prints its table, returns its figures."""
    grid_points = CONTENT_GRID if content_grid is None else content_grid
    cx, cand_cos = text_candidates(ext, inst, inp, x, num_warm, per_row, batch_size)
    new_cell = cx.items >= num_warm
    ti = cx.target_index(inst.targets)
    rng = np.random.default_rng([seed, 1])
    fold_new, fold_in = (rng.permutation(np.arange(int(n)) % 2) for n in (side.sum(), (~side).sum()))
    print(f"\ncontent term: up to {per_row} cold items by text per row; a, b in units of each method's fused-score "
          f"spread; (a, b, tau) chosen on one validation fold under the {IN_SET_BOUND:.0%} in-set bound, scored on "
          f"the other (mean of both)\n\n| method | rule | new N@10 | in-set N@10 | in-set, cold items last "
          f"| a, b, tau |\n|---|---|---:|---:|---:|---|")
    out = {}
    for name, method in methods.items():
        fused = method.fuse(cx, inp.indicators)
        finite = np.isfinite(fused) & cx.valid & ~new_cell
        spread = float(np.std(fused[finite])) or 1.0
        grid = np.stack([per_instance_ndcg(union_ranks(
            np.where(new_cell, fused + spread * (a + b * np.maximum(cand_cos - tau, 0)), fused), ti, cx.valid), 10)
            for a, b, tau in grid_points])  # [G, n]
        ref = grid[grid_points.index(EXCLUDE)]  # every cold candidate ranked last
        cf = cross_fitted_rule(grid[:, side], grid[:, ~side], ref[~side], fold_new, fold_in)
        ok = grid[:, ~side].mean(1) >= IN_SET_BOUND * ref[~side].mean() - 1e-12
        rows = {"extended union, no content term": grid_points.index((0.0, 0.0, 0.0)),
                "in-sample best within the bound": int(np.argmax(np.where(ok, grid[:, side].mean(1), -np.inf)))}
        res = {"spread": spread, "in_set_cold_last": float(ref[~side].mean())}
        for label, g in rows.items():
            res[label] = {"new": float(grid[g, side].mean()), "in_set": float(grid[g, ~side].mean()),
                          "a_b_tau": list(grid_points[g])}
            print(f"| {name} | {label} | {grid[g, side].mean():.4f} | {grid[g, ~side].mean():.4f} | "
                  f"{ref[~side].mean():.4f} | {grid_points[g]} |")
        cross_fitted_row(name, cf, grid_points, float(ref[~side].mean()), res)
        out[name] = res
    return out


def cross_fitted_row(name: str, cf: dict | None, points: list, ref_in: float, res: dict) -> None:
    """Print a method's cross-fitted row (:func:`cross_fitted_rule`'s result over grid ``points``; None:
    not available) and record it in ``res``."""
    if cf is None:
        print(f"| {name} | cross-fitted | n/a (a fold without new-target or in-set users) | | | |")
        return
    res["cross_fitted"] = {**cf, "chosen": [list(points[g]) for g in cf["chosen"]]}
    print(f"| {name} | **cross-fitted** | {cf['new']:.4f} | {cf['in_set']:.4f} | {ref_in:.4f} | "
          f"{' / '.join(str(points[g]) for g in cf['chosen'])} |", flush=True)


def mixture_term(ext, inst: Instances, inp, methods: dict, num_warm: int, side: np.ndarray, per_row: int,
                 seed: int) -> dict:
    """The mixture experiment of the module doc (:mod:`fusion.new_item_mixture`); prints its table,
    returns its figures."""
    z = new_item_logits(ext.sasrec, id_tower_histories(inst, ext.sasrec.num_items), num_warm)
    rng = np.random.default_rng([seed, 1])
    fold_new, fold_in = (rng.permutation(np.arange(int(n)) % 2) for n in (side.sum(), (~side).sum()))
    print(f"\nmixture: up to {per_row} cold items by SASRec's logit per row; (log pi, T, T_warm) chosen on one "
          f"validation fold under the {IN_SET_BOUND:.0%} in-set bound, scored on the other (mean of both)\n\n"
          "| method | rule | new N@10 | in-set N@10 | in-set, cold items last | log pi, T, T_warm |\n|---|---|---:|---:|---:|---|")
    out = {}
    for name, method in methods.items():
        points, ranks = mixture_ranks(inp.cands.items, method.fuse(inp.cands, inp.indicators), z, num_warm,
                                      inst.histories, inst.targets, per_row)
        grid = np.stack([per_instance_ndcg(r, 10) for r in ranks])  # [G, n]
        ref = grid[0]  # every cold item last
        cf = cross_fitted_rule(grid[:, side], grid[:, ~side], ref[~side], fold_new, fold_in)
        best = fit_new_item_mixture(ranks, points, side, IN_SET_BOUND)
        best = 0 if best is None else best
        res = {"in_set_cold_last": float(ref[~side].mean()),
               "in-sample best within the bound": {"new": float(grid[best, side].mean()),
                                                   "in_set": float(grid[best, ~side].mean()),
                                                   "log_pi_t_twarm": list(points[best])}}
        print(f"| {name} | in-sample best within the bound | {grid[best, side].mean():.4f} | "
              f"{grid[best, ~side].mean():.4f} | {ref[~side].mean():.4f} | {points[best]} |")
        cross_fitted_row(name, cf, points, float(ref[~side].mean()), res)
        # point 0 (every cold item last) has log pi = -inf: None in the JSON output
        res["curve"] = [{"log_pi_t_twarm": [None if not math.isfinite(v) else v for v in points[g]],
                         "new": float(grid[g, side].mean()), "in_set": float(grid[g, ~side].mean())}
                        for g in range(len(points))]
        out[name] = res
    return out


if __name__ == "__main__":
    main()
