"""Benchmark: how SASRec should score items added after its training (issue 13), chosen on validation.

    python bench/new_item_sasrec.py [--run runs/beauty_s7] [--share 0.05] [--seed 123] [--in-set-users 4000]

Simulated new items: a seeded share of a finished recipe run's catalogue has its trained SASRec
embeddings thrown away and rebuilt from the other items, as ``Recommender.add_items`` would for a
new item, by each rule:

- ``unscorable``: the item cannot be scored and is left out of histories (SASRec before this rule
  existed: a new item never ranks);
- ``nearest``: the embedding of its nearest other item by text cosine (:func:`genrec.new_items.nearest_items`,
  what :func:`genrec.new_items.sasrec_with_new_items` does);
- ``blend k``: the softmax(cosine / 0.05)-weighted mean of its ``k`` nearest items' embeddings;
- ``trained``: its own trained embedding (the upper bound no new item can have).

Prints validation NDCG@10 / Recall@10 over the whole catalogue on the validation users whose target
is a simulated new item ("new") and on a seeded sample of the others ("in-set"). Validation only:
the test split is never read. The simulation flatters every rule a little (the rest of the model
saw these items in training), equally for each.
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

from genrec.metrics import metrics_from_ranks  # noqa: E402
from genrec.new_items import nearest_items  # noqa: E402
from genrec.recipe import StageContext  # noqa: E402
from genrec.recipe.run_files import run_config  # noqa: E402
from genrec.sasrec import SASRec, iter_logits, load_sasrec  # noqa: E402
from genrec.splits import Instances  # noqa: E402


def rebuilt(model, rows: np.ndarray, embedding: torch.Tensor):
    """A copy of ``model`` whose items ``rows`` have the given ``[len(rows), H]`` embeddings."""
    other = SASRec(model.num_items, model.config)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["item_emb.weight"][torch.from_numpy(rows) + 1] = embedding
    other.load_state_dict(state)
    return other.eval()


def ranks_of(model, inst: Instances, unscorable: np.ndarray | None = None) -> np.ndarray:
    """0-based full-catalogue rank of each instance's target (items of ``unscorable`` never rank); an
    item scored exactly as the target ranks ahead of it (the ``nearest`` rule copies a neighbour's
    vector, so new item and neighbour tie: the target must not win every such tie)."""
    out = np.zeros(len(inst), np.int64)
    cols = None if unscorable is None else torch.from_numpy(unscorable)
    for idx, logits in iter_logits(model, inst, 1024):
        if cols is not None:
            logits = logits.index_fill(1, cols, -torch.inf)
        t = torch.from_numpy(inst.targets[idx])
        target = logits.gather(1, t[:, None])
        out[idx] = np.where(torch.isfinite(target[:, 0]).numpy(), (logits >= target).sum(1).numpy() - 1, 10 ** 9)
    return out


def side_metrics(ranks: np.ndarray, ks=(10,)) -> dict[str, float]:
    """``metrics_from_ranks`` of one side's ranks; NaN for each metric (shown as n/a) when the side has
    no user, e.g. no validation target among the simulated new items."""
    if len(ranks):
        return metrics_from_ranks(ranks, ks)
    return {f"{x}@{k}": math.nan for k in ks for x in ("recall", "ndcg")}


def shown(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.4f}"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", default=str(ROOT / "runs" / "beauty_s7"), help="a finished recipe run directory")
    p.add_argument("--share", type=float, default=0.05, help="share of the items simulated as new")
    p.add_argument("--seed", type=int, default=123)
    p.add_argument("--in-set-users", type=int, default=4000, help="validation users sampled among the others")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--scales", type=float, nargs="*", default=[0.9, 0.8],
                   help="also the nearest item's embedding times each of these")
    args = p.parse_args(argv)
    if args.in_set_users < 1:
        p.error(f"--in-set-users must be >= 1 (the in-set side is every rule's reference), got {args.in_set_users}")
    if not 0 < args.share < 1:
        p.error(f"--share must be in (0, 1), got {args.share}")
    torch.set_num_threads(args.threads)
    run = Path(args.run)
    _, split = StageContext(run, run_config(run)).training()
    n = split.num_items
    rng = np.random.default_rng(args.seed)
    new = np.sort(rng.choice(n, int(round(args.share * n)), replace=False))
    if not len(new):
        raise SystemExit(f"--share {args.share}: none of the run's {n} items is simulated as new; give a larger share")
    is_new = np.zeros(n, bool)
    is_new[new] = True
    old = np.flatnonzero(~is_new)
    valid = split.valid
    hit_new = is_new[valid.targets]
    rows = np.r_[np.flatnonzero(hit_new),
                 np.sort(rng.choice(np.flatnonzero(~hit_new), min(args.in_set_users, int((~hit_new).sum())),
                                    replace=False))]
    inst = Instances(users=valid.users[rows], histories=[valid.histories[j] for j in rows], targets=valid.targets[rows])
    side = hit_new[rows]
    x = np.load(run / "embed" / "embeddings.npy")[:n].astype(np.float32)
    model = load_sasrec(run / "sasrec" / "best.pt")
    emb = model.item_emb.weight.detach()[1:]  # [n, H]
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    sims = torch.from_numpy(unit[new] @ unit[old].T)  # [new, old]

    variants = {"trained": (model, None), "unscorable": (model, new)}  # the new items also left out of histories
    nearest = emb[old[nearest_items(x[old], x[new])]]
    variants["nearest"] = (rebuilt(model, new, nearest), None)
    for scale in args.scales:
        variants[f"nearest x{scale:g}"] = (rebuilt(model, new, scale * nearest), None)
    for k in (3, 10):
        v, i = sims.topk(k, dim=1)
        w = torch.softmax(v / 0.05, 1)
        variants[f"blend {k}"] = (rebuilt(model, new, (w[:, :, None] * emb[torch.from_numpy(old)[i]]).sum(1)), None)
    print(f"{run}: {len(new)} of {n} items simulated as new (seed {args.seed}); validation users: "
          f"{int(side.sum())} with a new target, {int((~side).sum())} others\n")
    print("| rule | new N@10 | new R@10 | in-set N@10 | in-set R@10 |\n|---|---:|---:|---:|---:|")
    out = {}
    # as SASRec reads a history holding items it cannot score (fusion.adapters.id_tower_histories): without them
    kept = [h[~is_new[h]] for h in inst.histories]
    empty = np.array([len(h) == 0 for h in kept])  # read their last item instead; the rank is set to a miss below
    known = Instances(users=inst.users, histories=[h if len(h) else inst.histories[j][-1:] for j, h in enumerate(kept)],
                      targets=inst.targets)
    for name, (m, unscorable) in variants.items():
        r = ranks_of(m, known if unscorable is not None else inst, unscorable)
        if unscorable is not None:
            r[empty] = 10 ** 9  # nothing left to read: no ranking (the recommender's popularity fallback aside)
        out[name] = {s: side_metrics(r[mask]) for s, mask in (("new", side), ("in_set", ~side))}
        print(f"| {name} | {shown(out[name]['new']['ndcg@10'])} | {shown(out[name]['new']['recall@10'])} | "
              f"{shown(out[name]['in_set']['ndcg@10'])} | {shown(out[name]['in_set']['recall@10'])} |", flush=True)
    return out


if __name__ == "__main__":
    main()
