"""Benchmark: items added without retraining (issue 13), and how fusion ranks what SASRec cannot score.

    python bench/new_items_fusion.py [--out runs/bench_new_items] [--users 2000] [--share 0.1] [--seed 0]

A true cold start on the demo's synthetic data: a random ``--share`` of the items is removed from
every interaction, the demo recipe is trained on what is left ("cold") and on everything ("warm",
the retrained reference), then the removed items are added to the cold recommender with
``add_items`` (their text embedded by the run's encoder, semantic IDs from its frozen quantizer)
and every method ranks the full data's test users, whose histories and targets may hold new items.
Reported per method and per policy for the candidates SASRec cannot score: NDCG@10 over all test
users, over those whose target is a new item, and the share of new items in the top-10 lists
(exposure). Policies: ``default`` (what ``fusion.methods`` does: min-max scale 0, i.e. the gate's
generative share; log-prob scales the row's lowest top-K ID log-prob), ``gr_only`` (min-max: the
generative score alone, as if the gate were 0 for them), ``union_min`` (log-prob scales: the lowest
ID log-prob of any candidate of the row) and ``zero_mass`` (log-prob scales: no ID probability).
Both recipes resume, so a rerun only re-evaluates. SASRec is kept blind to the new items
(``--sasrec-new-items none``, the default here) since the policies are this benchmark's subject;
``add_items`` itself gives SASRec each new item through its nearest item by text.
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from pathlib import Path

import numpy as np

import genrec
from fusion.adapters import model_inputs
from fusion.candidates import CandidateScores, topk_items
from fusion.methods import convex
from genrec import cli
from genrec.artifacts import atomic_write_text, save_json
from genrec.data import SequenceDataset, write_plain
from genrec.metrics import metrics_from_ranks, ranks_from_topk
from genrec.recommender import Recommender
from genrec.recommender_files import item_record

ROOT = Path(__file__).resolve().parents[1]
METHODS = ["fixed", "adaptive", "learned_minmax", "learned_logprob", "learned_mixture"]
POLICIES = ("default", "gr_only", "union_min", "zero_mass")


def cold_policies(sasrec_new_items: str) -> tuple[str, ...]:
    """The policies the cold recommender is ranked under: every policy when SASRec cannot score the
    new items (``none``); ``default`` alone with ``nearest``, where SASRec scores every new item
    through its nearest item, so no policy for unscorable candidates applies (the others would
    overwrite those scores)."""
    return POLICIES if sasrec_new_items == "none" else ("default",)


def without_items(dataset: SequenceDataset, drop: np.ndarray) -> SequenceDataset:
    """``dataset`` with the items ``drop`` (indices) removed from the catalogue and every sequence;
    users left with no interaction are dropped."""
    keep_item = np.ones(dataset.num_items, bool)
    keep_item[drop] = False
    new_index = np.cumsum(keep_item) - 1
    users, seqs, times = [], [], []
    for u, s in enumerate(dataset.sequences):
        m = keep_item[s]
        if m.any():
            users.append(dataset.user_ids[u])
            seqs.append(new_index[s[m]])
            times.append(dataset.timestamps[u][m] if dataset.timestamps is not None else np.arange(m.sum()))
    kept = np.flatnonzero(keep_item)
    return SequenceDataset(f"{dataset.name}-cold", [dataset.item_ids[i] for i in kept], users, seqs,
                           [dataset.items[i] for i in kept], times)


def run_recipe(out: Path, dataset: str, threads: int) -> None:
    code = cli.main(["demo", "--out", str(out), "--set", f"data.dataset={dataset}", f"num_threads={threads}",
                     f"fusion.methods=[{','.join(METHODS)}]"])
    if code != 0:
        raise SystemExit(f"recipe in {out} failed ({code})")


def fused(method, cands: CandidateScores, ind, new: np.ndarray, policy: str) -> np.ndarray | None:
    """Fused scores ``[n, C]`` of ``method`` with the ID score of new-item candidates (``new [n, C]``,
    all NaN: SASRec cannot score them) treated by ``policy``; None where the policy does not apply."""
    scale = getattr(method, "scale", "minmax")
    if policy == "default":
        return method.fuse(cands, ind)
    if scale == "minmax":
        if policy != "gr_only":
            return None
        gr = cands.normalized("gr")
        return convex(method.gates(cands, ind).gate, np.where(new, gr, cands.normalized("id")), gr)
    if policy not in ("union_min", "zero_mass"):
        return None
    s = cands.id_scores.copy()
    row_min = np.nanmin(np.where(cands.valid & np.isfinite(s), s, np.nan), axis=1, keepdims=True)
    s[new] = np.broadcast_to(row_min if policy == "union_min" else row_min - 1e4, s.shape)[new]
    return method.fuse(CandidateScores(cands.items, s, cands.gr_scores, cands.id_in_topk, cands.gr_in_topk), ind)


def ndcg10(ranks: np.ndarray) -> float:
    """NDCG@10 of ``ranks``; NaN (reported as n/a) when there is none, e.g. no test target is new."""
    return metrics_from_ranks(ranks, [10])["ndcg@10"] if len(ranks) else math.nan


def row_metrics(top: np.ndarray, targets: np.ndarray, is_new: np.ndarray) -> dict[str, float]:
    ranks = ranks_from_topk(top, targets)
    target_new = is_new[targets]
    return {"ndcg@10": ndcg10(ranks),
            "ndcg@10 new targets": ndcg10(ranks[target_new]),
            "exposure@10": float(is_new[np.maximum(top[:, :10], 0)][top[:, :10] >= 0].mean())}


def evaluate(rec: Recommender, histories: list[np.ndarray], targets: np.ndarray, is_new: np.ndarray,
             policies: tuple[str, ...]) -> dict[str, dict[str, float]]:
    from genrec.splits import Instances

    s = rec.settings
    inst = Instances(np.arange(len(histories)), histories, targets)
    inp = model_inputs(rec.sasrec, rec.generative, inst, rec.stats, k=s.k, beam=s.beam,
                       teacher_forcing=s.teacher_forcing, batch_size=s.batch_size)
    cands = inp.cands
    new = is_new[np.maximum(cands.items, 0)] & cands.valid
    out = {"sasrec": row_metrics(topk_items(cands.items, np.where(cands.id_in_topk, cands.id_scores, -np.inf), 10),
                                 targets, is_new),
           "generative": row_metrics(topk_items(cands.items, np.where(cands.gr_in_topk, cands.gr_scores, -np.inf), 10),
                                     targets, is_new)}
    for name in METHODS:
        for policy in policies:
            f = fused(rec.fusion_methods[name], cands, inp.indicators, new, policy)
            if f is not None:
                out[f"{name} [{policy}]"] = row_metrics(topk_items(cands.items, f, 10), targets, is_new)
    return out


def table(results: dict[str, dict[str, dict[str, float]]]) -> str:
    lines = ["| method [policy] | N@10 warm | N@10 cold+added | N@10 new targets warm | N@10 new targets cold+added "
             "| exposure warm | exposure cold+added |", "|---|---|---|---|---|---|---|"]
    for name, cold in results["cold"].items():
        warm = results["warm"].get(name if "[" not in name else name.split(" [")[0] + " [default]", {})
        cell = lambda d, k: ("n/a" if math.isnan(d[k]) else f"{d[k]:.4f}") if k in d else "-"  # noqa: E731
        lines.append(f"| {name} | {cell(warm, 'ndcg@10')} | {cell(cold, 'ndcg@10')} | "
                     f"{cell(warm, 'ndcg@10 new targets')} | {cell(cold, 'ndcg@10 new targets')} | "
                     f"{cell(warm, 'exposure@10')} | {cell(cold, 'exposure@10')} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(ROOT / "runs" / "bench_new_items"))
    p.add_argument("--users", type=int, default=2000, help="synthetic users (the demo's 2000)")
    p.add_argument("--share", type=float, default=0.1, help="share of the items that arrive after training")
    p.add_argument("--seed", type=int, default=0, help="which items arrive late")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--sasrec-new-items", choices=("nearest", "none"), default="none",
                   help="none (this benchmark's subject): SASRec cannot score the new items and the policies "
                        "below rank them; nearest: SASRec scores each as its nearest item by text (add_items' "
                        "default since session 8), so the policies never apply")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    out = Path(args.out)
    spec = f"synthetic:num_users={args.users},seed=0"
    full = genrec.load_dataset(spec)
    late = np.sort(np.random.default_rng(args.seed).choice(full.num_items, round(args.share * full.num_items),
                                                           replace=False))
    write_plain(without_items(full, late), out / "cold_data")
    t0 = time.perf_counter()
    run_recipe(out / "warm", spec, args.threads)
    run_recipe(out / "cold", str(out / "cold_data"), args.threads)
    train_s = time.perf_counter() - t0

    cold = Recommender.from_pretrained(out / "cold")
    if args.sasrec_new_items == "none":
        cold.item_embeddings = None  # add_items then leaves SASRec as it was trained
    t0 = time.perf_counter()
    cold.add_items([item_record(full.item_ids[i], full.items[i]) for i in late])
    add_s = time.perf_counter() - t0
    warm = Recommender.from_pretrained(out / "warm")
    split = genrec.leave_one_out(full, max_history=warm.settings.max_history)
    results = {}
    for name, rec in (("warm", warm), ("cold", cold)):
        to_rec = np.array([rec.index[i] for i in full.item_ids])  # full-data index -> this recommender's
        is_new = np.zeros(rec.num_items, bool)
        is_new[to_rec[late]] = True
        # the warm models know every item: only the cold recommender can have candidates SASRec cannot
        # score, and only when SASRec is kept blind to the new items
        policies = ("default",) if name == "warm" else cold_policies(args.sasrec_new_items)
        results[name] = evaluate(rec, [to_rec[h] for h in split.test.histories], to_rec[split.test.targets], is_new,
                                 policies)
    late_targets = int(np.isin(split.test.targets, late).sum())
    codes = cold.table.codes[-len(late):]
    summary = {"late_items": len(late), "catalogue": full.num_items, "test_users": len(split.test),
               "test_users_with_new_target": late_targets, "add_items_seconds": add_s, "train_seconds": train_s,
               "late_items_colliding": int((codes[:, -1] > 0).sum()), "results": results}
    save_json(out / "results.json", summary)
    md = (f"{len(late)} of {full.num_items} items added after training ({late_targets} of {len(split.test)} test "
          f"targets); add_items {add_s:.1f}s\n\n" + table(results) + "\n")
    atomic_write_text(out / "table.md", md)
    print(md)
    return summary


if __name__ == "__main__":
    main()
