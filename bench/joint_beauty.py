"""Benchmark: joint training of SASRec + the generative model + a gate on Amazon 2014 Beauty.

    python bench/joint_beauty.py [--minutes 40] [--threads 2] [--out runs/bench_joint]
                                 [--semantic-ids runs/beauty_semantic_ids] [--fusion-results runs/bench_fusion/results.json]
                                 [--set key=value ...] [--schedule holdout [--width half] [--depth half]]
                                 [--item-text runs/RUN/embed/embeddings.npy]

Trains :class:`fusion.joint.JointModel` (12,101 items: the target scope, see ``JointConfig.gr_scope``)
for ``--minutes`` of wall time (training + validation; the default is the compute the post-hoc
route spends: SASRec ~8.5 min + generative model ~30 min + fusion fitting), then prints test
Recall/NDCG@10 overall and per memorization label, and, given the post-hoc benchmark's
``results.json`` (``bench/fusion_beauty.py --out``), the joint row next to the post-hoc table.
A rerun with the same ``--out`` resumes. ``--item-text``: content-aware ID towers
(``SASRecConfig.text_dim``) reading these item text embeddings. ``--schedule holdout`` trains its
towers to their own budgets: ``--minutes`` and ``--fusion-results`` (end_to_end options) are refused
there, as ``--width`` and ``--depth`` (holdout options) are without it.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

import genrec
from fusion.joint import JointConfig, joint_gates, joint_ranks, train_joint
from fusion.report import results_markdown
from genrec.analysis import evaluate_by_category
from genrec.artifacts import save_json
from genrec.config import override_dataclass as apply_overrides
from genrec.errors import GenrecError
from genrec.memorization import label_split
from quantize.semantic_ids import SemanticIdTable

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MINUTES = 40.0  # end_to_end's budget: the compute the post-hoc route spends (module doc)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(ROOT.parent / "shared/data/amazon2014/beauty"))
    p.add_argument("--semantic-ids", default=str(ROOT / "runs/beauty_semantic_ids/semantic_ids.json"))
    p.add_argument("--minutes", type=float, default=None,
                   help=f"end_to_end only: training + validation wall-time budget (default {DEFAULT_MINUTES:g})")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(ROOT / "runs/bench_joint"))
    p.add_argument("--fusion-results", default=None,
                   help="end_to_end only: bench/fusion_beauty.py results.json to compare with")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="JointConfig (end_to_end) or HoldoutJointConfig (holdout) overrides")
    p.add_argument("--schedule", choices=("end_to_end", "holdout"), default="end_to_end",
                   help="end_to_end: fusion.joint.train_joint; holdout: fusion.holdout_joint (gate on held-out "
                        "training transitions)")
    p.add_argument("--width", choices=("full", "half"), default=None,
                   help="holdout only: the towers at the recipe's full-preset width (default), or half of it")
    p.add_argument("--depth", choices=("full", "half"), default=None,
                   help="holdout only: the towers at the recipe's full-preset depth (default), or half of it "
                        "(transformer blocks and the generative code head's layers, at least 1 each)")
    p.add_argument("--item-text", default=None, metavar="EMBEDDINGS_NPY",
                   help="content-aware ID towers (sasrec text_dim 'auto'): the items' text embeddings, one row per "
                        "dataset item in its order (a recipe run's embed/embeddings.npy)")
    p.add_argument("--table", nargs="*", metavar="NAME=RESULTS_JSON",
                   help="print the Wide & Deep table instead of training: the single models and the primary "
                        "post-hoc method of --run, then each joint benchmark's results.json (--out of a holdout run)")
    p.add_argument("--run", default=str(ROOT / "runs/beauty_full"), help="the full recipe run of --table")
    args = p.parse_args(argv)
    if args.table is not None:
        return wide_and_deep_table(Path(args.run), args.table)
    check_schedule_options(p, args)
    try:  # before any data is read: a bad --set fails at once
        config = holdout_config(args) if args.schedule == "holdout" else end_to_end_config(args)
    except GenrecError as e:
        p.error(f"--set: {e}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    torch.set_num_threads(args.threads)
    try:
        return run(args, config)
    except GenrecError as e:  # bad data or settings found during the run: one line, as the genrec CLI
        print(f"{p.prog}: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def check_schedule_options(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse an option the chosen ``--schedule`` would ignore, and a ``--fusion-results`` file that is
    not there, before any work; then fill in the defaults of the options given none."""
    if args.schedule == "holdout":
        given = [name for name, value in (("--minutes", args.minutes), ("--fusion-results", args.fusion_results))
                 if value is not None]
        if given:
            what = "an end_to_end option" if len(given) == 1 else "end_to_end options"
            p.error(f"{' and '.join(given)}: {what}, ignored by --schedule holdout (its towers train to their own "
                    f"budgets: set them with --set); leave {'it' if len(given) == 1 else 'them'} out")
        args.width, args.depth = args.width or "full", args.depth or "full"
        return
    given = [name for name, value in (("--width", args.width), ("--depth", args.depth)) if value is not None]
    if given:
        what = "a holdout option" if len(given) == 1 else "holdout options"
        p.error(f"{' and '.join(given)}: {what}, ignored by --schedule end_to_end; add --schedule holdout or leave "
                f"{'it' if len(given) == 1 else 'them'} out")
    if args.fusion_results is not None and not Path(args.fusion_results).is_file():
        p.error(f"--fusion-results {args.fusion_results}: no such file (bench/fusion_beauty.py --out DIR writes "
                f"DIR/results.json)")
    if args.minutes is not None and not args.minutes > 0:
        p.error(f"--minutes must be > 0, got {args.minutes}")
    args.minutes = DEFAULT_MINUTES if args.minutes is None else args.minutes


def end_to_end_config(args: argparse.Namespace) -> JointConfig:
    """The end_to_end schedule's config: the towers' own measured settings where they agree (cosine
    decay with one warm-up epoch, validation every 3rd epoch on 5,000 sampled users: a full one costs
    ~2.5 min here), ``--minutes``, then ``--set``; content-aware ID towers with ``--item-text``."""
    config = apply_overrides(JointConfig(max_minutes=args.minutes, num_threads=args.threads, lr_schedule="cosine",
                                         warmup_epochs=1.0, max_epochs=24, eval_every=3, eval_users=5000,
                                         patience=3), args.set)
    if args.item_text is not None and not config.id_tower.text_dim:
        config = replace(config, id_tower=replace(config.id_tower, text_dim="auto"))
    return config


def run(args: argparse.Namespace, config) -> dict:
    """Load the data and train the schedule's model with ``config`` (already checked)."""
    dataset = genrec.load_dataset(args.data)
    split = genrec.leave_one_out(dataset)
    labels = label_split(split)
    table = SemanticIdTable.load(args.semantic_ids)
    item_text = None
    if args.item_text is not None:
        item_text = np.load(args.item_text)
        if item_text.ndim != 2 or len(item_text) != split.num_items:
            raise SystemExit(f"{args.item_text}: shape {list(item_text.shape)}, not one row per item "
                             f"({split.num_items} items)")
    if args.schedule == "holdout":
        return run_holdout(args, split, labels, table, item_text, config)
    t0 = time.perf_counter()
    result = train_joint(split, table, config, out_dir=args.out, progress=True, item_text=item_text)
    t_train = time.perf_counter() - t0
    t1 = time.perf_counter()
    ranks = joint_ranks(result.model, split.test, batch_size=config.eval_batch_size, ties="index")
    gates = joint_gates(result.model, split.test, batch_size=config.eval_batch_size)
    t_test = time.perf_counter() - t1
    res = evaluate_by_category(ranks, labels["test"], (10, 20), hops=False)
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    minutes = result.history[-1]["minutes"] if result.history else 0.0
    print(f"config: {config}")
    print(f"scope: {result.model.scope}; gate features: {result.model.feature_names}")
    for r in result.history:
        print(f"  epoch {r['epoch']:3d}  {r['minutes']:6.2f} min  loss {r['train_loss']:.4f}  "
              f"N@10 {r['ndcg@10']:.4f}  R@10 {r['recall@10']:.4f}")
    print(f"training {minutes:.2f} min ({t_train / 60:.2f} min this process), best epoch {result.best_epoch}; "
          f"test scoring {t_test:.0f}s; peak RSS {peak_gib:.2f} GiB")
    groups = labels["test"].groups()
    by_label = {g: float(gates.gate[groups == g].mean()) for g in ("memorization", "generalization", "uncategorized")
                if (groups == g).any()}
    print(f"mean gate (weight of the ID tower) by label: {by_label}")
    results = {"joint": res}
    if args.fusion_results:  # checked to exist before any work
        results = {**json.loads(Path(args.fusion_results).read_text())["results"], "joint": res}
    print(results_markdown(results))
    summary = {"results": {"joint": res}, "minutes": minutes, "best_epoch": result.best_epoch,
               "gate_by_label": by_label, "peak_rss_gib": peak_gib, "config": str(config)}
    save_json(Path(args.out) / "results.json", summary)
    return summary


def holdout_config(args: argparse.Namespace):
    """The held-out-gate schedule's config: the full recipe's tower settings (``--width half``: half
    the hidden width of each tower; ``--depth half``: half its blocks; ``--item-text``: content-aware
    ID towers), then ``--set``."""
    from fusion.holdout_joint import HoldoutJointConfig
    from genrec.recipe.config import load_config

    recipe = load_config(ROOT / "recipes/configs/amazon2014_beauty.yaml", preset="full",
                         overrides=[f"num_threads={args.threads}"])
    sas, gen = recipe.sasrec, recipe.generative
    if args.width == "half":
        sas = replace(sas, hidden=sas.hidden // 2)
        gen = replace(gen, hidden=gen.hidden // 2)
    if args.depth == "half":
        sas = replace(sas, num_blocks=max(1, sas.num_blocks // 2))
        gen = replace(gen, num_blocks=max(1, gen.num_blocks // 2), head_layers=max(1, gen.head_layers // 2))
    # the full preset's content-aware SASRec reads item text: with --item-text only (plain towers otherwise,
    # as every figure measured before the preset turned it on)
    sas = replace(sas, text_dim="auto" if args.item_text is not None else 0)
    return apply_overrides(HoldoutJointConfig(sasrec=sas, generative=gen, k=recipe.fusion.k, beam=recipe.fusion.beam,
                                              batch_size=gen.eval_batch_size), args.set)


def run_holdout(args: argparse.Namespace, split, labels, table, item_text: np.ndarray | None = None,
                config=None) -> dict:
    """The held-out-gate schedule with ``config`` (default: :func:`holdout_config` of ``args``); test
    scored once, after training."""
    from dataclasses import asdict

    from fusion.holdout_joint import train_holdout_joint

    config = holdout_config(args) if config is None else config
    t0 = time.perf_counter()
    result = train_holdout_joint(split, table, config, out_dir=args.out, progress=True, item_text=item_text)
    t_train = time.perf_counter() - t0
    t1 = time.perf_counter()
    items, gates = result.model.topk(split.test)
    t_test = time.perf_counter() - t1
    from genrec.metrics import ranks_from_topk

    res = evaluate_by_category(ranks_from_topk(items, split.test.targets), labels["test"], (10, 20), hops=False)
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    params = {"sasrec": sum(p.numel() for p in result.model.sasrec.parameters()),
              "generative": sum(p.numel() for p in result.model.generative.parameters()),
              "gate": sum(p.numel() for p in result.model.gate.model.parameters())}
    groups = labels["test"].groups()
    by_label = {g: float(gates.gate[groups == g].mean()) for g in ("memorization", "generalization", "uncategorized")
                if (groups == g).any()}
    print(f"config: {config}")
    print(f"held-out transitions: {result.holdout}; kept: {result.towers} towers, {result.scale} gate")
    print(f"fused validation N@10 of each choice: {result.selection}; kept: {result.valid}")
    print(f"stage seconds (this process): {result.seconds}; total {t_train / 60:.2f} min; test scoring {t_test:.0f}s; "
          f"peak RSS {peak_gib:.2f} GiB; parameters {params}")
    print(f"mean gate (weight of the ID tower) by label: {by_label}")
    size = args.width if args.depth == "full" else f"{args.width} width, half depth"
    print(results_markdown({f"joint ({size})": res}))
    summary = {"results": {f"joint_{args.width}" + ("_half_depth" if args.depth == "half" else ""): res}, "valid": result.valid, "selection": result.selection,
               "scale": result.scale, "refreshed": result.refreshed, "kept_towers": result.towers,
               "holdout_transitions": result.holdout,
               "seconds": result.seconds, "minutes_this_process": t_train / 60, "test_seconds": t_test,
               "peak_rss_gib": peak_gib, "params": params, "gate_by_label": by_label, "config": asdict(config)}
    save_json(Path(args.out) / "results.json", summary)
    return summary


def wide_and_deep_table(run: Path, joint_results: list[str]) -> dict:
    """The issue-14 table: parameters, training minutes, test NDCG@10 overall and per label, for the
    recipe run's SASRec, generative model and primary post-hoc method, and each joint run given."""
    from genrec.generative import load_generative
    from genrec.recipe.primary import choose_primary
    from genrec.recipe import config_from_dict
    from genrec.sasrec import load_sasrec

    res = json.loads((run / "results.json").read_text())
    config = config_from_dict(json.loads((run / "config.json").read_text()))
    choice = choose_primary(config, run)
    primary = choice.method
    if primary not in config.fusion.methods:  # the joint model won: this row is the best post-hoc method
        from fusion.selection import select_best

        scored = {m: choice.scores.get(m, float("nan")) for m in config.fusion.methods}
        if any(v == v for v in scored.values()):  # a run from before the post-hoc scores were saved: as it was
            primary = select_best(scored, config.fusion.methods)
    n_sas = sum(p.numel() for p in load_sasrec(run / "sasrec" / "best.pt").parameters())
    n_gen = sum(p.numel() for p in load_generative(run / "generative" / "best.pt").parameters())
    from fusion.persist import load_methods

    method = load_methods(run / "fusion" / "methods.pt").get(primary)  # its gate counts, as the joint rows' does
    n_gate = sum(p.numel() for p in method.model.parameters()) if getattr(method, "model", None) is not None else 0
    minutes = {k: res["training"][k]["curve"][-1]["minutes"] for k in ("sasrec", "gr")}
    # the minutes of the rows measure different spans (MINUTES_NOTES): each row says which
    rows = {"SASRec": (n_sas, minutes["sasrec"], res["models"]["sasrec"]["test"], "a"),
            "generative": (n_gen, minutes["gr"], res["models"]["gr"]["test"], "a"),
            f"post-hoc ({primary}, fitted on validation)": (n_sas + n_gen + n_gate,
                                                            minutes["sasrec"] + minutes["gr"],
                                                            res["models"][primary]["test"], "b")}
    for item in joint_results:
        name, _, path = item.partition("=")
        j = json.loads(Path(path).read_text())
        (per_label,) = j["results"].values()
        rows[name] = (sum(j["params"].values()), j["minutes_this_process"], per_label, "c")
    groups = ("all", "memorization", "generalization", "uncategorized")
    lines = ["| model | parameters | minutes (see note) | " + " | ".join(f"N@10 {g}" for g in groups) + " |",
             "|---|---:|---:|" + "---:|" * len(groups)]
    for name, (n, m, t, note) in rows.items():
        cells = (t.get(g, {}).get("ndcg@10") for g in groups)  # null in results.json: a category without instances
        lines.append(f"| {name} | {n:,} | {m:.1f} ({note}) | " + " | ".join("-" if v is None or v != v else f"{v:.4f}"
                                                                         for v in cells) + " |")
    used = sorted({note for *_, note in rows.values()})
    lines += ["", "minutes: " + "; ".join(f"({k}) {MINUTES_NOTES[k]}" for k in used)
              + ("; so the post-hoc and joint minutes are not the same measure" if {"b", "c"} <= set(used) else "")]
    print("\n".join(lines))
    return {"rows": {k: {"params": n, "minutes": m, "minutes_cover": MINUTES_NOTES[note], "test": t}
                     for k, (n, m, t, note) in rows.items()}}


#: what the minutes of each row of :func:`wide_and_deep_table` cover
MINUTES_NOTES = {
    "a": "that tower's own training clock in the recipe run (training + validation epochs, summed over resumes)",
    "b": "the two towers' training clocks added; the recipe's embedding, quantization and fusion stages "
         "(candidate inference, fitting the methods, choosing one) are not counted",
    "c": "the whole holdout-joint training as timed by its process (stage-1 towers, gate fitting, refresh and "
         "retraining, candidate inference and the final selection; stages resumed from an earlier process count "
         "only their loading), test scoring excluded",
}


if __name__ == "__main__":
    main()
