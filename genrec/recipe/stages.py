"""The recipe's stages, in order: each a plain function ``stage_x(ctx) -> {artifact: path}`` that
writes its artifacts atomically into ``ctx.run_dir/<stage>/``, and :data:`STAGES`, the table that
says what each one's hash covers and which stages it reads from.

    data -> embed (item text -> sentence embeddings) -> quantize (semantic IDs) -> sasrec
         -> generative -> labels -> fusion (post-hoc, fitted on validation) [-> joint] -> evaluate -> report

:mod:`genrec.recipe.runner` decides which stages to run (hashes, resume, lock); the stages do the work
through the library (``genrec``, ``quantize``, ``fusion``) and nothing else. Under cold-start
evaluation (``data.cold_items``, :mod:`genrec.cold_start`) the training stages (quantize, sasrec,
generative) read :meth:`StageContext.training`, the warm catalogue, and the fusion stage adds the
cold items back before ranking test.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from genrec.artifacts import atomic_write, load_arrays, save_json
from genrec.errors import ConfigError, GenrecError
from genrec.recipe.analyses import stage_analysis
from genrec.recipe.config import RecipeConfig, cold_enabled, joint_config
from genrec.recipe.report import collect_results, strip_timing, write_report
from genrec.recipe.run_files import load_labels, semantic_id_table, test_ranks
from genrec.recipe.checks import check_catalogue, check_gate_features, fusion_fit_k
from genrec.recipe.cold_fusion import add_cold_items, fit_new_item_mixtures
from genrec.recommender_files import MIXTURES

__all__ = ["Stage", "StageContext", "STAGES", "stage_names", "check_catalogue", "check_gate_features", "fusion_fit_k", "load_labels", "cold_start_metrics"]


@dataclass(frozen=True)
class Stage:
    """One step of the recipe: ``run(ctx) -> {artifact name: path}`` writes into
    ``ctx.run_dir/<name>/``; ``sections`` are the config sections its hash covers, ``after`` the stages
    whose artifacts it reads, ``enabled`` whether the config asks for it."""

    name: str
    run: Callable[["StageContext"], dict[str, Path]]
    sections: tuple[str, ...]
    after: tuple[str, ...] = ()
    enabled: Callable[[RecipeConfig], bool] = lambda config: True
    description: str = ""
    #: whether redoing it costs real work (trained models, embeddings, fitted fusion); such a stage is
    #: only discarded with ``force``, the others (recomputed in seconds) are simply rerun
    keeps_work: bool = True
    #: hashed settings whose change (or absence from an older marker: a stage run before the setting
    #: existed) reruns a ``keeps_work`` stage without ``force``: redoing it costs no training
    rerun_keys: tuple[str, ...] = ()
    #: under torchrun (several ranks): whether every rank runs it (the trainers, which shard their
    #: batches with DDP); the other stages run on rank 0 alone while the rest wait (genrec.recipe.runner)
    every_rank: bool = False
    #: stages it reads only under some configs, as (stage, condition) pairs: upstream exactly then, so
    #: its hash follows them only then (a plain SASRec does not rerun when the text encoder changes)
    after_when: tuple[tuple[str, Callable[[RecipeConfig], bool]], ...] = ()

    def upstream(self, config: RecipeConfig) -> tuple[str, ...]:
        """The stages whose artifacts it reads under ``config``: ``after`` and the ``after_when`` that hold."""
        return self.after + tuple(name for name, holds in self.after_when if holds(config))


@dataclass
class StageContext:
    """What a stage works with: the run directory, the config, the directories of the stages it reads
    (``inputs``), whether to show progress bars, and the dataset and split, loaded once per run.

    With ``data.cold_items`` (:mod:`genrec.cold_start`) the items are renumbered, cold ones last:
    :meth:`data` is the whole catalogue (test is evaluated there), :meth:`training` the warm view
    that the quantizer, SASRec and the generative model are fitted on, :meth:`cold` the split itself."""

    run_dir: Path
    config: RecipeConfig
    inputs: dict[str, Path] = field(default_factory=dict)
    progress: bool = False
    _data: Any = field(default=None, repr=False)
    _cold: Any = field(default=None, repr=False)

    def data(self):
        """``(dataset, split)`` of ``config.data``, loaded on first use (the whole catalogue)."""
        if self._data is None:
            import genrec

            d = self.config.data
            extra = {"keep_unused_items": True} if d.keep_items_without_interactions else {}
            dataset = genrec.load_dataset(d.dataset, cache_dir=d.cache_dir, **extra)
            if cold_enabled(self.config):
                from genrec.cold_start import NATURAL, choose_cold_items, cold_start_split

                cold = choose_cold_items(dataset, d.cold_items, d.cold_seed, max_history=d.max_history,
                                         min_interactions=d.min_interactions)
                self._cold = cold_start_split(dataset, cold, protocol=NATURAL if d.cold_items == NATURAL else "share",
                                              max_history=d.max_history, min_interactions=d.min_interactions)
                self._data = (self._cold.dataset, self._cold.split)
            else:
                split = genrec.leave_one_out(dataset, max_history=d.max_history,
                                             min_interactions=d.min_interactions)
                if d.eval_users is not None:  # the same seeded users in both splits (rows align by user)
                    split = replace(split, valid=split.valid.sample(d.eval_users, d.eval_seed),
                                    test=split.test.sample(d.eval_users, d.eval_seed))
                self._data = (dataset, split)
        return self._data

    def cold(self):
        """The :class:`genrec.cold_start.ColdStartSplit` of a cold-start run, else None."""
        self.data()
        return self._cold

    def training(self):
        """``(dataset, split)`` that training sees: the warm catalogue under cold-start evaluation,
        else :meth:`data`."""
        cold = self.cold()
        return (cold.warm.dataset, cold.warm) if cold is not None else self.data()


def stage_data(ctx: StageContext) -> dict[str, Path]:
    """Load the dataset and split it; ``data/summary.json``: statistics and split sizes."""
    run_dir, config = ctx.run_dir, ctx.config
    dataset, split = ctx.data()
    check_catalogue(config, ctx.training()[1].num_items)  # early, before any model is trained
    summary: dict[str, Any] = {"dataset": config.data.dataset, "name": dataset.name, "stats": dataset.stats(),
                               "split": {"users_kept": int(len(split.users)), "train_sequences": len(split.train),
                                         "train_interactions": int(sum(len(s) for s in split.train)),
                                         "valid": len(split.valid), "test": len(split.test),
                                         "max_history": split.max_history,
                                         "eval_users_sampled": len(split.test) < len(split.users)}}
    info = getattr(dataset, "synthetic", None)
    if info is not None:
        summary["synthetic_kind_shares"] = info.kind_shares()
    if config.data.keep_items_without_interactions:
        counts = np.bincount(np.concatenate(dataset.sequences), minlength=dataset.num_items)
        summary["items_without_interactions"] = int((counts == 0).sum())
    if ctx.cold() is not None:  # "split" is the whole data's (test's); the models train on the warm view
        summary["cold_start"] = ctx.cold().summary()
        warm = ctx.training()[1]
        summary["split"]["trained_on"] = {"items": warm.num_items, "valid": len(warm.valid),
                                          "train_interactions": int(sum(len(s) for s in warm.train))}
    return {"summary": save_json(run_dir / "data" / "summary.json", summary)}


def _template(config: RecipeConfig):
    from quantize import TextTemplate

    t = config.text
    return TextTemplate.from_fields(t.fields, skip_categories=tuple(t.skip_categories),
                                    max_description_chars=t.max_description_chars)


def stage_embed(ctx: StageContext) -> dict[str, Path]:
    """Item texts -> sentence embeddings: ``embed/embeddings.npy`` ``[n_items, dim]``, ``embed/summary.json``
    (with ``text.embeddings``, the precomputed vectors instead: :func:`_precomputed_embeddings`)."""
    from quantize import TextEncoder, embed_items, item_texts

    run_dir, config = ctx.run_dir, ctx.config
    dataset, _ = ctx.data()
    t = config.text
    if t.embeddings:
        return _precomputed_embeddings(ctx, dataset)
    encoder = TextEncoder(t.model, batch_size=t.batch_size, max_seq_length=t.max_seq_length,
                          cache_dir=(t.cache_dir if t.cache else False), show_progress=ctx.progress,
                          num_threads=config.num_threads, precision=t.precision, device=t.device)
    template = _template(config)
    x = embed_items(dataset, encoder, template, t.fallback)
    out = run_dir / "embed"
    path = atomic_write(out / "embeddings.npy", lambda p: _np_save(p, x.astype(np.float32)))
    texts = item_texts(dataset, template, t.fallback)
    summary = {"items": int(len(x)), "dim": int(x.shape[1]), "encoder": encoder.config(),
               "template": template.to_dict(), "examples": texts[:3]}
    return {"embeddings": path, "summary": save_json(out / "summary.json", summary)}


def _precomputed_embeddings(ctx: StageContext, dataset) -> dict[str, Path]:
    """The embed stage with ``text.embeddings``: the file's vectors in the dataset's item order; the
    summary records ``precomputed`` (the files' fingerprints) and no encoder, so that
    ``Recommender.add_items`` knows it has no encoder to embed new items with."""
    from genrec.item_embeddings import embedding_files, load_item_embeddings
    from genrec.rundir import file_fingerprint

    t = ctx.config.text
    x = load_item_embeddings(t.embeddings, dataset.item_ids, ids_path=t.embeddings_ids,
                             id_column=t.embeddings_id_column, vector_column=t.embeddings_vector_column)
    out = ctx.run_dir / "embed"
    path = atomic_write(out / "embeddings.npy", lambda p: _np_save(p, x))
    files = [file_fingerprint(p) for p in embedding_files(t.embeddings, t.embeddings_ids)]
    summary = {"items": int(len(x)), "dim": int(x.shape[1]), "encoder": None, "template": None,
               "precomputed": {"path": str(t.embeddings), "files": files}}
    return {"embeddings": path, "summary": save_json(out / "summary.json", summary)}


def _np_save(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, array, allow_pickle=False)


def _np_savez(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    with open(path, "wb") as f:
        np.savez_compressed(f, **arrays)


def stage_quantize(ctx: StageContext) -> dict[str, Path]:
    """Embeddings -> semantic IDs: ``quantize/semantic_ids.json``, ``diagnostics.json``, ``quantizer.pt``."""
    from quantize import build_semantic_ids

    run_dir, config, inputs = ctx.run_dir, ctx.config, ctx.inputs
    dataset, _ = ctx.training()
    q = config.quantize
    # under cold-start evaluation the cold items are the last rows: the quantizer is fitted without them
    x = load_arrays(inputs["embed"] / "embeddings.npy")[:dataset.num_items]
    try:
        result = build_semantic_ids(dataset, q.method, embeddings=x, pca_dim=q.pca_dim, whiten=q.whiten,
                                    seed=q.seed, **q.quantizer_options())
    except GenrecError:
        raise
    except ValueError as e:  # the settings meet the data (e.g. more sub-spaces than dimensions)
        raise ConfigError(f"config section 'quantize': {e}") from None
    paths = result.save(run_dir / "quantize")
    return {k: Path(v) for k, v in paths.items()}


def stage_sasrec(ctx: StageContext) -> dict[str, Path]:
    """Train SASRec (resumable): ``sasrec/best.pt``, ``last.pt``, ``history.json``, ``summary.json``
    (best epoch, validation metrics; test metrics are computed in the evaluate stage). With
    ``sasrec.text_dim`` set, a content-aware SASRec that reads the embed stage's item vectors."""
    from genrec.sasrec import train_sasrec

    run_dir, config = ctx.run_dir, ctx.config
    _, split = ctx.training()
    out = run_dir / "sasrec"
    result = train_sasrec(split, config.sasrec, out_dir=out, progress=ctx.progress,
                          item_text=_sasrec_item_text(ctx, split.num_items, config.sasrec.text_dim))
    summary = {"best_epoch": result.best_epoch, "valid": strip_timing(result.best_valid)}
    return {"model": out / "best.pt", "history": out / "history.json",
            "summary": save_json(out / "summary.json", summary)}


def _sasrec_item_text(ctx: StageContext, num_items: int, text_dim: int | str,
                      key: str = "sasrec.text_dim") -> np.ndarray | None:
    """The embed stage's vectors of the first ``num_items`` items (under cold-start evaluation the cold
    items, the last rows, are left out) for a content-aware SASRec (``text_dim``, config key ``key``,
    set), else None."""
    if not text_dim:
        return None
    item_text = np.load(ctx.inputs["embed"] / "embeddings.npy")[:num_items]
    if text_dim != "auto" and item_text.shape[1] != text_dim:
        raise ConfigError(f"config key '{key}' is {text_dim} but the embed stage's vectors are "
                          f"{item_text.shape[1]}-d; set it to {item_text.shape[1]} or 'auto'")
    return item_text


def _joint_text_dim(config: RecipeConfig) -> int | str:
    """``text_dim`` of the joint model's ID tower(s) (``fusion.joint_config``, the recipe's ``sasrec`` by default)."""
    jc = joint_config(config)
    return (jc.sasrec if config.fusion.joint_schedule == "holdout" else jc.id_tower).text_dim


def stage_generative(ctx: StageContext) -> dict[str, Path]:
    """Train the semantic-ID generative model (resumable): ``generative/best.pt``, ``last.pt``,
    ``history.json``, ``summary.json`` (best epoch, validation beam-search metrics; test metrics come
    from the fusion stage's beam, in the evaluate stage)."""
    from genrec.generative import train_generative

    run_dir, config = ctx.run_dir, ctx.config
    _, split = ctx.training()
    out = run_dir / "generative"
    table = semantic_id_table(run_dir)
    check_gate_features(config, table.codes.shape[1])  # before the longest training, not after it
    result = train_generative(split, table, config.generative, out_dir=out, progress=ctx.progress)
    summary = {"best_epoch": result.best_epoch, "valid": strip_timing(result.best_valid),
               "valid_beam": config.generative.eval_beam}
    return {"model": out / "best.pt", "history": out / "history.json",
            "summary": save_json(out / "summary.json", summary)}


def stage_labels(ctx: StageContext) -> dict[str, Path]:
    """Memorization / generalization labels of validation and test instances: ``labels/labels.npz``
    (``{split}_kind``, ``{split}_hop``, ``{split}_kind_hops``) and ``labels/summary.json`` (shares)."""
    from genrec.memorization import label_split

    run_dir, config = ctx.run_dir, ctx.config
    _, split = ctx.data()
    if ctx.cold() is not None:  # memorized means seen in what the models trained on: the warm sequences;
        warm = ctx.training()[1]  # validation: the warm instances the run fits and chooses on; test: all
        split = replace(split, train=warm.train, valid=warm.valid)
    labels = label_split(split, max_hop=config.labels.max_hop)
    arrays = {}
    for name, lab in labels.items():
        arrays.update({f"{name}_kind": lab.kind, f"{name}_hop": lab.hop, f"{name}_kind_hops": lab.kind_hops})
    out = run_dir / "labels"
    path = atomic_write(out / "labels.npz", lambda p: _np_savez(p, arrays))
    summary = {name: {"count": len(lab), "shares": lab.shares()} for name, lab in labels.items()}
    summary["max_hop"] = config.labels.max_hop
    return {"labels": path, "summary": save_json(out / "summary.json", summary)}


def _fusion_methods(config: RecipeConfig) -> list:
    from fusion import AdaptiveFusion, FixedWeightFusion, LearnedGateFusion

    fit_k = fusion_fit_k(config)
    out = []
    for m in config.fusion.methods:
        if m == "fixed":
            out.append(FixedWeightFusion(k=fit_k))
        elif m == "adaptive":
            out.append(AdaptiveFusion(k=fit_k))
        else:
            out.append(LearnedGateFusion(scale=m.split("_", 1)[1], name=m, **{"k": fit_k, **config.fusion.gate}))
    return out


def stage_fusion(ctx: StageContext) -> dict[str, Path]:
    """Post-hoc fusion: both models' top-K candidates and indicators on validation and test, every
    method fitted on validation only and applied to test. ``fusion/selection.npz``: every method's
    out-of-fold validation ranks from ``fusion.selection_folds``-fold cross-fitting
    (:func:`fusion.selection.cross_fit`; :func:`genrec.recipe.primary.choose_primary` picks the primary
    from them), ``fusion/topk.npz`` (test top-K lists of
    ``sasrec``, ``gr`` and each method), ``fusion/gates.npz`` (test gate = weight of SASRec, per
    method), ``fusion/indicators.npz`` (the test instances' indicator columns, by name),
    ``fusion/methods.pt`` (every fitted method, :func:`fusion.load_methods`),
    ``fusion/summary.json`` (fitted parameters, union width, timings). A cold-start run
    (``data.cold_items``) fits on the warm validation instances with the warm models, then adds the
    cold items the way ``Recommender.add_items`` does and ranks test over the whole catalogue;
    ``fusion/semantic_ids.json`` is then the table with the cold items added."""
    try:
        from fusion import TrainStats, run_posthoc, save_methods, single_model_topk
        from fusion.adapters import model_inputs
        from fusion.selection import cross_fit
    except ImportError as e:  # pragma: no cover - the fusion package is part of the project
        raise RuntimeError(f"fusion stage: the fusion package's API is missing ({e})") from None
    from genrec.generative import load_generative
    from genrec.sasrec import load_sasrec

    run_dir, config = ctx.run_dir, ctx.config
    _, split = ctx.data()
    _, train = ctx.training()  # split itself unless cold-start evaluation holds items back
    check_catalogue(config, train.num_items)
    f = config.fusion
    out = run_dir / "fusion"
    sasrec = load_sasrec(run_dir / "sasrec" / "best.pt", device=config.sasrec.device)
    generative = load_generative(run_dir / "generative" / "best.pt", device=config.generative.device)
    table = semantic_id_table(run_dir)
    check_gate_features(config, table.codes.shape[1])  # a resumed run's edited features
    stats = TrainStats(train.train, train.num_items, table.codes)
    test_sasrec, test_generative, test_stats, extra = sasrec, generative, stats, {}
    if ctx.cold() is not None:
        ext = add_cold_items(ctx, table, generative, sasrec)
        test_sasrec, test_generative, test_stats = ext.sasrec, ext.generative, ext.stats
        extra["semantic_ids"] = ext.table.save(out / "semantic_ids.json")
    else:
        ext = None
    fin = {"valid": (sasrec, generative, train.valid, stats), "test": (test_sasrec, test_generative, split.test, test_stats)}
    fin = {name: model_inputs(sas, gen, inst, st, k=f.k, beam=f.beam, teacher_forcing=f.teacher_forcing,
                              batch_size=config.generative.eval_batch_size)
           for name, (sas, gen, inst, st) in fin.items()}
    valid, test = fin["valid"], fin["test"]
    # the honest scores for choosing a primary: each method refitted without the fold it ranks
    cf = cross_fit(lambda: _fusion_methods(config), valid.cands, train.valid.targets, valid.indicators,
                   folds=f.selection_folds, seed=f.selection_seed, k=f.k)
    p_selection = atomic_write(out / "selection.npz", lambda p: _np_savez(p, cf.arrays()))
    methods = _fusion_methods(config)
    outputs = run_posthoc(methods, valid.cands, train.valid.targets, valid.indicators, test.cands,
                          test.indicators, k=f.k)
    topk = {"sasrec": single_model_topk(test.cands, "id", f.k), "gr": single_model_topk(test.cands, "gr", f.k)}
    topk.update({name: o.topk for name, o in outputs.items()})
    mixture_summary, mixtures, mixed = None, {}, {}
    if ctx.cold() is not None and f.new_item_mixture:
        mixtures, mixture_summary, mixed = fit_new_item_mixtures(ctx, ext, methods, split.test, test)
    if mixtures:
        # the plain lists stay for comparison; the mixture's are the test lists of the run
        extra["topk_without_mixture"] = atomic_write(out / "topk_without_mixture.npz",
                                                     lambda p: _np_savez(p, {n: topk[n] for n in mixed}))
        topk.update(mixed)
        extra["new_item_mixture"] = save_json(out / MIXTURES, {n: m.to_dict() for n, m in mixtures.items()})
    else:  # files of an earlier run of the stage are not this one's
        (out / MIXTURES).unlink(missing_ok=True)
        (out / "topk_without_mixture.npz").unlink(missing_ok=True)
    gates = {name: o.gates.gate.astype(np.float32) for name, o in outputs.items()}
    p_topk = atomic_write(out / "topk.npz", lambda p: _np_savez(p, topk))
    p_gates = atomic_write(out / "gates.npz", lambda p: _np_savez(p, gates))
    test_indicators = {name: test.indicators.column(name) for name in test.indicators.names}
    p_indicators = atomic_write(out / "indicators.npz", lambda p: _np_savez(p, test_indicators))
    summary = {
        "methods": list(outputs),
        "params": {n: _small_params(o.params) for n, o in outputs.items()},
        "fit_k": {m.name: int(m.k) for m in methods},  # the validation NDCG@k each method fitted
        "union_width": {"valid": valid.cands.width, "test": test.cands.width},
        "indicators": list(test.indicators.names),
        "selection": {"folds": cf.num_folds, "seed": f.selection_seed,  # fewer than set on a small split
                      "scores": _cross_fit_metrics(cf)},
        **({"new_item_mixture": mixture_summary} if mixture_summary is not None else {}),
        "timing": {"inputs": {n: inp.seconds for n, inp in fin.items()},
                   "methods": {n: o.seconds for n, o in outputs.items()},
                   "selection": cf.seconds},
    }
    # every fitted method, gate weights included, loadable with fusion.load_methods (weights_only)
    p_methods = save_methods(out / "methods.pt", {m.name: m for m in methods})
    return {"topk": p_topk, "gates": p_gates, "methods": p_methods, "selection": p_selection,
            "indicators": p_indicators, "summary": save_json(out / "summary.json", summary), **extra}


def _cross_fit_metrics(cf) -> dict[str, dict[str, float]]:
    """Per method, cross-fitted validation Recall / NDCG at the usual cut-offs up to the list length."""
    metrics = [f"{m}@{k}" for k in (5, 10, 20, 50) if k <= cf.k for m in ("recall", "ndcg")]
    per_metric = {metric: cf.scores(metric) for metric in metrics}
    return {name: {metric: per_metric[metric][name] for metric in metrics} for name in cf.ranks}


def _small_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """Scalars and short lists of a method's ``params()`` (no weight tensors)."""
    out = {}
    for k, v in params.items():
        if np.ndim(v) == 0:
            out[k] = v.item() if isinstance(v, np.generic) else v
        elif k == "features":
            out[k] = list(v)
    return out


def stage_joint(ctx: StageContext) -> dict[str, Path]:
    """Joint training of both towers and a gate in one run (resumable): ``fusion.joint_schedule``
    ``holdout`` (:func:`fusion.holdout_joint.train_holdout_joint`: ``joint/model/`` holds the model,
    :func:`fusion.holdout_joint.load_holdout_joint`) or ``end_to_end`` (:func:`fusion.joint.train_joint`:
    ``joint/best.pt``, ``history.json``); both write ``ranks.npz`` (test ranks), ``gates.npz`` (test
    gate = weight of the ID tower) and ``summary.json`` (``valid``: the kept model's validation
    metrics); ``holdout`` also ``candidates.npz``, every candidate's validation ranks, from which the
    primary choice cross-fits the joint model's own choice (:mod:`genrec.recipe.primary`)."""
    run_dir, config = ctx.run_dir, ctx.config
    _, split = ctx.data()
    check_catalogue(config, split.num_items)  # a resumed run's edited settings, before joint training
    check_gate_features(config, semantic_id_table(run_dir).codes.shape[1])
    out = run_dir / "joint"
    jc = joint_config(config)
    if config.fusion.joint_schedule == "holdout":
        from fusion.holdout_joint import save_holdout_joint, train_holdout_joint
        from genrec.metrics import ranks_from_topk

        result = train_holdout_joint(split, semantic_id_table(run_dir), jc, out_dir=out / "training",
                                     progress=ctx.progress, full_towers=_recipe_towers(ctx, jc),
                                     item_text=_sasrec_item_text(ctx, split.num_items, jc.sasrec.text_dim,
                                                                 "fusion.joint_config.sasrec.text_dim"))
        items, report = result.model.topk(split.test)
        ranks, gate = ranks_from_topk(items, split.test.targets), report.gate
        p_model = save_holdout_joint(result.model, out / "model")
        # every candidate's validation ranks: the primary choice cross-fits the joint model's own choice
        # among them on the fusion stage's folds (genrec.recipe.primary)
        p_cands = atomic_write(out / "candidates.npz", lambda p: _np_savez(p, result.candidate_ranks))
        summary = {"schedule": "holdout", "valid": strip_timing(result.valid), "selection": result.selection,
                   "refreshed": result.refreshed, "kept_towers": result.towers, "scale": result.scale,
                   "towers": jc.towers, "kept_tower_training": result.tower_training,
                   "holdout_transitions": result.holdout, "seconds": result.seconds}
        extra = {"model": p_model, "candidates": p_cands}
    else:
        from fusion.joint import joint_gates, joint_ranks, train_joint

        result = train_joint(split, semantic_id_table(run_dir), jc, out_dir=out, progress=ctx.progress,
                             item_text=_sasrec_item_text(ctx, split.num_items, jc.id_tower.text_dim,
                                                         "fusion.joint_config.id_tower.text_dim"))
        # ties in the served lists' order, as every other model's test ranks (they come from its lists)
        ranks = joint_ranks(result.model, split.test, batch_size=jc.eval_batch_size, ties="index")
        gate = joint_gates(result.model, split.test, batch_size=jc.eval_batch_size).gate
        summary = {"schedule": "end_to_end", "best_epoch": result.best_epoch, "valid": strip_timing(result.best_valid),
                   "mode": jc.mode, "mixing": jc.mixing}
        extra = {"history": out / "history.json"}
    p_ranks = atomic_write(out / "ranks.npz", lambda p: _np_savez(p, {"joint": ranks}))
    p_gates = atomic_write(out / "gates.npz", lambda p: _np_savez(p, {"joint": gate.astype(np.float32)}))
    return {"ranks": p_ranks, "gates": p_gates, "summary": save_json(out / "summary.json", summary), **extra}


def _recipe_towers(ctx: StageContext, jc) -> tuple | None:
    """The recipe's own SASRec and generative model when the holdout joint schedule would retrain
    exactly them (``retrain`` with separate towers, or both kinds, of the recipe's settings), else None. Both stages
    are upstream of this one, so a rerun of either reruns it (:mod:`genrec.recipe.runner`)."""
    from genrec.generative import load_generative
    from genrec.sasrec import load_sasrec

    config = ctx.config
    if not (jc.retrain and jc.towers in ("separate", "both") and jc.sasrec == config.sasrec
            and jc.generative == config.generative):
        return None
    return (load_sasrec(ctx.inputs["sasrec"] / "best.pt", device=config.sasrec.device),
            load_generative(ctx.inputs["generative"] / "best.pt", device=config.generative.device))


def stage_evaluate(ctx: StageContext) -> dict[str, Path]:
    """Test metrics of every model overall and per memorization label, and mean gate values by label:
    ``evaluate/metrics.json``; a cold-start run adds ``cold_start``: every model on the cold-target
    and the in-set test users (:func:`cold_start_metrics`)."""
    from genrec.analysis import evaluate_by_category

    run_dir, config, inputs = ctx.run_dir, ctx.config, ctx.inputs
    _, split = ctx.data()
    labels = load_labels(run_dir, "test")
    targets = split.test.targets
    joint = "joint" in inputs and (run_dir / "joint" / "ranks.npz").exists()
    ranks = test_ranks(run_dir, targets, joint)
    gates: dict[str, np.ndarray] = {}
    with np.load(run_dir / "fusion" / "gates.npz") as z:
        gates.update({n: z[n] for n in z.files})
    if joint:
        with np.load(run_dir / "joint" / "gates.npz") as z:
            gates["joint"] = z["joint"]
    ks = tuple(config.report.ks)
    metrics = {name: evaluate_by_category(r, labels, ks) for name, r in ranks.items()}
    groups = labels.groups()
    kinds = labels.kind_names()
    gate_by_label = {}
    for name, g in gates.items():
        row = {"all": float(g.mean())}
        for cat in ("memorization", "generalization", "uncategorized"):
            m = groups == cat
            row[cat] = float(g[m].mean()) if m.any() else math.nan
        for kind in sorted(set(kinds[groups == "generalization"])):
            m = kinds == kind
            row[str(kind)] = float(g[m].mean())
        gate_by_label[name] = row
    out = run_dir / "evaluate"
    content = {"ks": list(ks), "test": metrics, "gate_by_label": gate_by_label}
    if ctx.cold() is not None:
        content["cold_start"] = cold_start_metrics(ctx.cold(), ranks, targets, ks)
    return {"metrics": save_json(out / "metrics.json", content)}


def cold_start_metrics(cold, ranks: Mapping[str, np.ndarray], targets: np.ndarray, ks: tuple[int, ...]
                       ) -> dict[str, Any]:
    """Test metrics of every model on the users whose target is a cold item and on those whose
    target is in the training catalogue (``in_set``), and on the in-set users whose history holds a
    cold item (``in_set_cold_history``, a part of ``in_set``: their lists read the added items too),
    with the split's counts; an empty side has count 0 and NaN metrics."""
    from genrec.metrics import metrics_from_ranks

    is_cold = cold.is_cold(targets)
    if len(cold.split.test.histories) != len(targets):  # fromiter below would cut silently
        raise ValueError(f"{len(targets)} test targets for {len(cold.split.test.histories)} test histories")
    cold_history = np.fromiter((bool(cold.is_cold(np.asarray(h, np.int64)).any()) for h in cold.split.test.histories),
                               bool, len(targets))
    models = {}
    for name, r in ranks.items():
        row = {}
        for side, mask in (("cold", is_cold), ("in_set", ~is_cold), ("in_set_cold_history", ~is_cold & cold_history)):
            n = int(mask.sum())
            row[side] = {"count": n, **(metrics_from_ranks(r[mask], ks) if n else
                                        {f"{m}@{k}": math.nan for k in ks for m in ("recall", "ndcg")})}
        models[name] = row
    return {**cold.summary(), "models": models}


def stage_report(ctx: StageContext) -> dict[str, Path]:
    """``results.json`` and ``report.md`` (+ ``plots/*.png``) in the run directory."""
    run_dir, config = ctx.run_dir, ctx.config
    results = collect_results(run_dir, config, stage_names(config))
    paths = {"results": save_json(run_dir / "results.json", results, strict=True)}  # jq- and JS-readable
    paths.update(write_report(run_dir, config, results))
    return paths


_SELECTION_KEYS = ("fusion.selection_folds", "fusion.selection_seed")
_FUSION_KEYS = ("data", "fusion.k", "fusion.beam", "fusion.teacher_forcing", "fusion.methods", "fusion.gate",
                "fusion.new_item_mixture", *_SELECTION_KEYS, "fusion.fit_k")
STAGES: tuple[Stage, ...] = (
    Stage("data", stage_data, ("data",), (), description="load and split the dataset", keeps_work=False),
    Stage("embed", stage_embed, ("data", "text"), ("data",), description="item text -> sentence embeddings"),
    Stage("quantize", stage_quantize, ("quantize",), ("embed",), description="embeddings -> semantic IDs"),
    Stage("sasrec", stage_sasrec, ("data", "sasrec"), ("data",), description="train the SASRec item-ID model",
          every_rank=True, after_when=(("embed", lambda c: bool(c.sasrec.text_dim)),)),
    Stage("generative", stage_generative, ("data", "generative"), ("quantize",),
          description="train the semantic-ID generative model", every_rank=True),
    Stage("labels", stage_labels, ("data", "labels"), ("data",), description="memorization / generalization labels",
          keeps_work=False),
    Stage("fusion", stage_fusion, _FUSION_KEYS, ("sasrec", "generative", "quantize"),
          description="post-hoc fusion fitted on validation, applied to test",
          # a fusion stage from before cross-fitting, or with the new-item mixture switched, reruns (no training lost)
          # (fusion.fit_k: a run with fusion.k < 10 whose methods fitted NDCG@10, before fusion_fit_k)
          rerun_keys=(*_SELECTION_KEYS, "fusion.new_item_mixture", "fusion.fit_k")),
    Stage("joint", stage_joint, ("data", "sasrec", "generative", "fusion.joint_schedule", "fusion.joint_config",
                                 "fusion.k", "fusion.beam", "fusion.gate"), ("sasrec", "generative", "quantize"),
          enabled=lambda c: c.fusion.joint, description="joint training of both towers and a gate", every_rank=True,
          after_when=(("embed", lambda c: bool(_joint_text_dim(c))),)),
    Stage("evaluate", stage_evaluate, ("report.ks",), ("labels", "fusion", "joint"),
          description="metrics overall and per label", keeps_work=False),
    Stage("analysis", stage_analysis, ("analysis", "report.metric", "report.plots"),
          ("data", "embed", "quantize", "labels", "fusion", "joint", "evaluate"),
          description="the paper's semantic-ID analyses", keeps_work=False),
    Stage("report", stage_report, ("name", "preset", "report", "fusion.primary"),
          ("data", "embed", "quantize", "sasrec", "generative", "labels", "fusion", "joint", "evaluate",
           "analysis"),
          description="results.json, report.md and plots", keeps_work=False),
)


def stage_names(config: RecipeConfig | None = None) -> list[str]:
    """Names of the stages a config runs, in order (all stages without a config)."""
    return [s.name for s in STAGES if config is None or s.enabled(config)]
