"""The cold-start parts of the recipe's fusion stage (``data.cold_items``, :mod:`genrec.cold_start`):
the cold items added to the warm models as ``Recommender.add_items`` adds new items, and the
optional new-item mixture (``fusion.new_item_mixture``, :mod:`fusion.new_item_mixture`) fitted on
validation. ``ctx`` is the stage's :class:`genrec.recipe.stages.StageContext`."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

__all__ = ["add_cold_items", "fit_new_item_mixtures"]


def fit_new_item_mixtures(ctx: Any, ext, methods: list, test_instances, test) -> tuple[dict, dict, dict]:
    """A cold-start run's new-item mixture (:mod:`fusion.new_item_mixture`) per method: fitted on the
    validation users whose target is cold (left out of every other choice) plus a seeded sample of
    in-set ones, ranked with the cold items added as on test; then each fitted method's test top-K
    under its mixture. Returns ``(mixtures, summary, test top-K lists)``: a mixture is adopted only where
    it beats the method's plain list (new items scored by both towers) on the new-target users and keeps
    the in-set users within the bound of it; a method none does keeps its plain list and gets none."""
    from fusion.adapters import id_tower_histories, model_inputs
    from fusion.candidates import ranks_of
    from fusion.new_item_mixture import (DEFAULT_CANDIDATES, IN_SET_BOUND, NewItemMixture, fit_new_item_mixture,
                                         mix_new_items, mixture_ranks, mixture_topk, new_item_logits)
    from genrec.metrics import per_instance_ndcg

    config, cold = ctx.config, ctx.cold()
    f = config.fusion
    inst, is_new = cold.validation_sample(f.new_item_mixture_users, f.selection_seed)
    if not is_new.any():  # e.g. data.cold_items: natural, whose cold items are no validation target
        log.warning("fusion.new_item_mixture: no validation instance has a cold target to fit it on; skipped")
        return {}, {"skipped": "no validation instance has a cold target"}, {}
    bs = config.generative.eval_batch_size
    valid = model_inputs(ext.sasrec, ext.generative, inst, ext.stats, k=f.k, beam=f.beam,
                         teacher_forcing=f.teacher_forcing, batch_size=bs)
    first_new, sas = cold.num_warm, ext.sasrec
    z_valid = new_item_logits(sas, id_tower_histories(inst, sas.num_items), first_new, bs)
    z_test = new_item_logits(sas, id_tower_histories(test_instances, sas.num_items), first_new, bs)
    mixtures, summary, mixed = {}, {"valid_new_users": int(is_new.sum()), "valid_in_set_users": int((~is_new).sum()),
                                    "bound": IN_SET_BOUND, "methods": {}}, {}
    candidates = DEFAULT_CANDIDATES
    for m in methods:
        fused = m.fuse(valid.cands, valid.indicators)
        points, ranks = mixture_ranks(valid.cands.items, fused, z_valid, first_new, inst.histories, inst.targets,
                                      candidates, length=f.k)  # scored as the plain list: its first fusion.k
        # the method's own ranking of the same users (new items scored by both towers): a mixture must
        # beat it on both sides, or the method keeps it
        plain_ranks = ranks_of(valid.cands, fused, inst.targets, f.k)
        best = fit_new_item_mixture(ranks, points, is_new, plain=plain_ranks)
        plain = per_instance_ndcg(plain_ranks, 10)
        used = plain if best is None else per_instance_ndcg(ranks[best], 10)  # the list test gets
        last = per_instance_ndcg(ranks[0], 10)
        summary["methods"][m.name] = {
            **{key: None if best is None else points[best][j]
               for j, key in enumerate(("log_prior", "temperature", "warm_temperature"))},
            "valid_ndcg@10": {"new": float(used[is_new].mean()), "in_set": float(used[~is_new].mean()),
                              "in_set_new_items_last": float(last[~is_new].mean()),
                              "new_without_mixture": float(plain[is_new].mean()),
                              "in_set_without_mixture": float(plain[~is_new].mean())}}
        if best is None:
            continue
        lp, t, tw = points[best]
        mixtures[m.name] = NewItemMixture(lp, t, candidates, tw)
        items, scores = mix_new_items(test.cands.items, m.fuse(test.cands, test.indicators), z_test, first_new,
                                      mixtures[m.name], test_instances.histories)
        mixed[m.name] = mixture_topk(items, scores, f.k)
    return mixtures, summary, mixed


def add_cold_items(ctx: Any, table, generative, sasrec):
    """The cold items added to the warm models exactly as :meth:`genrec.Recommender.add_items` adds
    new items (frozen quantizer, next free disambiguation codes, ``with_new_items``; SASRec through
    each cold item's nearest warm item), from the embeddings the embed stage already computed for
    them (the last rows)."""
    from genrec.new_items import extend_catalogue

    cold = ctx.cold()
    x = np.load(ctx.run_dir / "embed" / "embeddings.npy")
    ids = cold.dataset.item_ids[cold.num_warm:]
    return extend_catalogue(table, generative, cold.warm.train, ctx.run_dir / "quantize", x[cold.num_warm:], ids,
                            sasrec=sasrec, item_embeddings=x[:cold.num_warm])
