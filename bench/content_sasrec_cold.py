"""Benchmark: a content-aware SASRec (``sasrec.text_dim``: ID embedding + projected text embedding) on
a cold-start run's validation users, against the run's own SASRec (issue 13's new items, issue 14's
towers).

    python bench/content_sasrec_cold.py [--run runs/bench_cold_share5_s8] [--in-set-users 4000]
                                        [--threads 2] [--out FILE] [--content-model CHECKPOINT]
                                        [--id-weights 0 0.5 ...] [--save-model FILE]

Trains the content-aware SASRec on the run's warm training data with the run's SASRec settings
(early stopping on the warm validation users, as the run's own SASRec did), then ranks the
validation users whose target is a cold item ("new": never used by any training or choice) and a
seeded sample of the in-set ones (in sample for both models: they early-stopped on them) over the
full catalogue, SASRec alone:

- ``warm catalogue``: the cold items left out (what the models were trained on);
- ``cold items added``: :func:`genrec.new_items.sasrec_with_new_items` with ``id_part="neighbour"``: a new
  item gets its text-nearest warm item's ID embedding (the plain model: its whole vector) and, in
  the content-aware model, the projection of its own text;
- ``unknown-ID vector`` (a content model trained with ``--set id_dropout=P``): the new items get the
  learned unknown-ID vector plus their own text, as the items dropped in training did;
- ``cold items added, ID part x w``: the content-aware model's new items with the neighbour's ID
  embedding scaled by each ``--id-weights`` ``w`` (0: text only).

``--content-model``: a content-aware SASRec already trained on the run's warm data (e.g. the
``sasrec/best.pt`` of the same cold-start recipe run with ``sasrec.text_dim: auto``) instead of
training one here.

Prints validation NDCG@10 / Recall@10 per group, and the new-target users' NDCG@10 with their targets
ranked among the new items alone (how well each model orders new items, apart from where it puts them). The test split is never read.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fusion.adapters import sasrec_outputs  # noqa: E402
from genrec.artifacts import save_json  # noqa: E402
from genrec.config import override_dataclass  # noqa: E402
from genrec.errors import ConfigError  # noqa: E402
from genrec.layers import unit_rows  # noqa: E402
from genrec.metrics import metrics_from_ranks, ranks_from_topk  # noqa: E402
from genrec.new_items import nearest_items, sasrec_with_new_items  # noqa: E402
from genrec.recipe import StageContext  # noqa: E402
from genrec.recipe.run_files import run_config  # noqa: E402
from genrec.sasrec import iter_logits, load_sasrec, save_sasrec, train_sasrec  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", default=str(ROOT / "runs" / "bench_cold_share5_s8"),
                   help="a finished cold-start recipe run (data.cold_items)")
    p.add_argument("--in-set-users", type=int, default=4000, help="validation users sampled among the in-set ones")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="SASRec settings of the content model")
    p.add_argument("--out", help="also write the figures to this JSON file")
    p.add_argument("--content-model", help="a content-aware SASRec checkpoint trained on the run's warm data")
    p.add_argument("--save-model", help="save the content-aware SASRec trained here to this file")
    p.add_argument("--id-weights", nargs="*", type=float, default=[0.0],
                   help="scales of the neighbour's ID embedding for new items of the content-aware model")
    args = p.parse_args(argv)
    if args.in_set_users < 1:
        p.error(f"--in-set-users must be >= 1 (the in-set users are half of the comparison), got {args.in_set_users}")
    torch.set_num_threads(args.threads)
    run = Path(args.run)
    config = run_config(run)
    cold = StageContext(run, config).cold()
    if cold is None:
        raise SystemExit(f"{run}: not a cold-start run (data.cold_items is not set)")
    try:  # before the content model trains: a split without both kinds of users is refused at once
        inst, side = cold.validation_sample(args.in_set_users, args.seed, need_both=True)
    except ConfigError as e:
        raise SystemExit(f"{run}: {e}") from None
    x = np.load(run / "embed" / "embeddings.npy").astype(np.float32)  # [num_items, d], cold items last
    nw = cold.num_warm
    try:
        sas_config = override_dataclass(replace(config.sasrec, num_threads=args.threads, text_dim=x.shape[1]),
                                        args.set, "sasrec")
    except ConfigError as e:
        p.error(str(e))
    t0 = time.perf_counter()
    if args.content_model:
        content = load_sasrec(args.content_model)
        if (not content.config.text_dim or content.num_items != nw
                or not torch.allclose(content.item_text[1:], unit_rows(torch.from_numpy(x[:nw])), atol=1e-6)):
            raise SystemExit(f"{args.content_model}: not a content-aware SASRec of the run's {nw} warm items and "
                             f"their text embeddings")
    else:
        content = train_sasrec(cold.warm, sas_config, progress=False, item_text=x[:nw]).model.eval()
        if args.save_model:
            save_sasrec(content, args.save_model)
    minutes = (time.perf_counter() - t0) / 60
    baseline = load_sasrec(run / "sasrec" / "best.pt")
    kind = "run's content-aware" if baseline.config.text_dim else "plain"  # the run's own SASRec

    counts = np.bincount(np.concatenate(cold.warm.train), minlength=nw)[:nw]
    proxy = nearest_items(x[:nw], x[nw:], allowed=counts > 0)
    text = x[nw:] if baseline.config.text_dim else None
    models = {f"{kind}, warm catalogue": baseline,
              f"{kind}, cold items added": sasrec_with_new_items(baseline, proxy, text, "neighbour").eval(),
              "content-aware, warm catalogue": content,
              "content-aware, cold items added": sasrec_with_new_items(content, proxy, x[nw:], "neighbour").eval()}
    if content.unknown_id is not None:  # trained with id_dropout: new items as ID-less items
        models["content-aware, cold items added, unknown-ID vector"] = sasrec_with_new_items(
            content, proxy, x[nw:], "unknown").eval()
    for w in args.id_weights:
        scaled = sasrec_with_new_items(content, proxy, x[nw:], "neighbour").eval()
        with torch.no_grad():
            scaled.item_emb.weight[nw + 1:] *= w
        models[f"content-aware, cold items added, ID part x {w:g}"] = scaled
    source = f"loaded from {args.content_model}" if args.content_model else f"trained in {minutes:.1f} min"
    print(f"{run}: content-aware SASRec {source} ({args.threads} threads); validation users: "
          f"{int(side.sum())} with a cold target, {int((~side).sum())} in-set (sampled)\n\n"
          "| SASRec | new N@10 | new R@10 | new N@10 among new items | in-set N@10 | in-set R@10 |\n"
          "|---|---:|---:|---:|---:|---:|")
    results = {}
    for name, model in models.items():
        r = ranks_from_topk(sasrec_outputs(model, inst, 50)["items"], inst.targets)
        m = {part: side_metrics(r[mask]) for part, mask in (("new", side), ("in_set", ~side))}
        if model.num_items > nw:  # the new-target users' targets ranked among the new items alone
            m["new_among_new"] = side_metrics(new_item_ranks(model, inst, side, nw))
        results[name] = m
        among = m["new_among_new"]["ndcg@10"] if "new_among_new" in m else math.nan
        print(f"| {name} | {shown(m['new']['ndcg@10'])} | {shown(m['new']['recall@10'])} | {shown(among)} | "
              f"{shown(m['in_set']['ndcg@10'])} | {shown(m['in_set']['recall@10'])} |", flush=True)
    summary = {"args": vars(args), "minutes": minutes, "new_users": int(side.sum()), "in_set_users": int((~side).sum()),
               "results": results}
    if args.out:
        save_json(args.out, summary)
    return summary


def side_metrics(ranks: np.ndarray, ks=(10,)) -> dict[str, float]:
    """``metrics_from_ranks`` of one side's ranks; NaN for each metric (shown as n/a) when the side has
    no user."""
    if len(ranks):
        return metrics_from_ranks(ranks, ks)
    return {f"{x}@{k}": math.nan for k in ks for x in ("recall", "ndcg")}


def shown(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.4f}"


def new_item_ranks(model, inst, side: np.ndarray, num_warm: int) -> np.ndarray:
    """0-based rank of each new-target user's target among the new items (``num_warm`` onwards) by the
    model's logits: how well it orders new items, whatever their place among the trained ones."""
    rows = np.flatnonzero(side)
    histories = [inst.histories[i] for i in rows]
    ranks = np.empty(len(rows), np.int64)
    with torch.no_grad():
        for batch, logits in iter_logits(model, histories):
            new = logits[:, num_warm:]  # [b, new items]
            target = torch.as_tensor(inst.targets[rows[batch]] - num_warm)
            own = new.gather(1, target[:, None])
            ranks[batch] = (new >= own).sum(1).numpy() - 1  # ties count against the target
    return ranks


if __name__ == "__main__":
    main()
