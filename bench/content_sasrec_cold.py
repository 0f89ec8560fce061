"""Benchmark: a content-aware SASRec (``sasrec.text_dim``: ID embedding + projected text embedding) on
a cold-start run's validation users, against the run's plain SASRec (issue 13's new items, issue 14's
towers).

    python bench/content_sasrec_cold.py [--run runs/bench_cold_share5_s8] [--in-set-users 4000]
                                        [--threads 2] [--out FILE] [--content-model CHECKPOINT]
                                        [--id-weights 0 0.5 ...]

Trains the content-aware SASRec on the run's warm training data with the run's SASRec settings
(early stopping on the warm validation users, as the run's own SASRec did), then ranks the
validation users whose target is a cold item ("new": never used by any training or choice) and a
seeded sample of the in-set ones (in sample for both models: they early-stopped on them) over the
full catalogue, SASRec alone:

- ``warm catalogue``: the cold items left out (what the models were trained on);
- ``cold items added``: :func:`genrec.new_items.sasrec_with_new_items`, what ``add_items`` does: a new
  item gets its text-nearest warm item's ID embedding (the plain model: its whole vector) and, in
  the content-aware model, the projection of its own text;
- ``cold items added, ID part x w``: the content-aware model's new items with the neighbour's ID
  embedding scaled by each ``--id-weights`` ``w`` (0: text only).

``--content-model``: a content-aware SASRec already trained on the run's warm data (e.g. the
``sasrec/best.pt`` of the same cold-start recipe run with ``sasrec.text_dim: auto``) instead of
training one here.

Prints validation NDCG@10 / Recall@10 per group. The test split is never read.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fusion.adapters import sasrec_outputs  # noqa: E402
from genrec.artifacts import load_json, save_json  # noqa: E402
from genrec.config import override_dataclass  # noqa: E402
from genrec.errors import ConfigError  # noqa: E402
from genrec.layers import unit_rows  # noqa: E402
from genrec.metrics import metrics_from_ranks, ranks_from_topk  # noqa: E402
from genrec.new_items import nearest_items, sasrec_with_new_items  # noqa: E402
from genrec.recipe import StageContext, config_from_dict  # noqa: E402
from genrec.sasrec import load_sasrec, train_sasrec  # noqa: E402


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
    p.add_argument("--id-weights", nargs="*", type=float, default=[0.0],
                   help="scales of the neighbour's ID embedding for new items of the content-aware model")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    run = Path(args.run)
    config = config_from_dict(load_json(run / "config.json"))
    cold = StageContext(run, config).cold()
    if cold is None:
        raise SystemExit(f"{run}: not a cold-start run (data.cold_items is not set)")
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
    minutes = (time.perf_counter() - t0) / 60
    plain = load_sasrec(run / "sasrec" / "best.pt")
    if plain.config.text_dim:
        raise SystemExit(f"{run}: its SASRec is content-aware (sasrec.text_dim); the baseline needs a run with a "
                         "plain one (sasrec.text_dim=0)")

    inst, side = cold.validation_sample(args.in_set_users, args.seed)
    counts = np.bincount(np.concatenate(cold.warm.train), minlength=nw)[:nw]
    proxy = nearest_items(x[:nw], x[nw:], allowed=counts > 0)
    content_added = sasrec_with_new_items(content, proxy, x[nw:]).eval()
    models = {"plain, warm catalogue": plain, "plain, cold items added": sasrec_with_new_items(plain, proxy).eval(),
              "content-aware, warm catalogue": content, "content-aware, cold items added": content_added}
    for w in args.id_weights:
        scaled = sasrec_with_new_items(content, proxy, x[nw:]).eval()
        with torch.no_grad():
            scaled.item_emb.weight[nw + 1:] *= w
        models[f"content-aware, cold items added, ID part x {w:g}"] = scaled
    source = f"loaded from {args.content_model}" if args.content_model else f"trained in {minutes:.1f} min"
    print(f"{run}: content-aware SASRec {source} ({args.threads} threads); validation users: "
          f"{int(side.sum())} with a cold target, {int((~side).sum())} in-set (sampled)\n\n"
          "| SASRec | new N@10 | new R@10 | in-set N@10 | in-set R@10 |\n|---|---:|---:|---:|---:|")
    results = {}
    for name, model in models.items():
        r = ranks_from_topk(sasrec_outputs(model, inst, 50)["items"], inst.targets)
        m = {part: metrics_from_ranks(r[mask], (10,)) for part, mask in (("new", side), ("in_set", ~side))}
        results[name] = m
        print(f"| {name} | {m['new']['ndcg@10']:.4f} | {m['new']['recall@10']:.4f} | {m['in_set']['ndcg@10']:.4f} | "
              f"{m['in_set']['recall@10']:.4f} |", flush=True)
    summary = {"args": vars(args), "minutes": minutes, "new_users": int(side.sum()), "in_set_users": int((~side).sum()),
               "results": results}
    if args.out:
        save_json(args.out, summary)
    return summary


if __name__ == "__main__":
    main()
