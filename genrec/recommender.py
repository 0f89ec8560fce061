"""A trained recommender asked by raw item ids: the fused model of a recipe run, or one of its parts.

    rec = Recommender.from_pretrained("runs/amazon2014_beauty-full")   # a run directory, or a saved one
    rec.recommend(["B0009RF9DW", "B000ASDGK8"], k=10).pairs()     # [(item_id, score), ...] best first
    rec.recommend_batch([[...], [...]], k=10, exclude_seen=True)
    rec.explain(["B0009RF9DW"])                                    # gate value and the features that moved it
    rec.save_pretrained("models/beauty")                           # self-contained: no dataset needed to load

**Methods.** ``method`` picks what ranks the items: a fitted post-hoc fusion method of the run
(``fixed``, ``adaptive``, ``learned_minmax``, ...; default the run's primary method, the config's
``fusion.primary`` or, when that is ``auto``, the one chosen on validation), the
jointly trained model (``joint``), or one tower alone (``sasrec``, ``generative``). A fusion method
scores a history exactly as the recipe's fusion stage scored the test users: both towers' top-K
(``fusion.k``; generative beam ``fusion.beam``), each tower scoring the other's candidates, fused
per instance by the method's gate; so ``k`` can be at most ``fusion.k`` (for the held-out-gate joint
model, its own ``fusion.joint_config`` k and beam, both towers always scoring each other's
candidates, as its stage fitted and evaluated it). SASRec and the end-to-end joint model rank the
whole catalogue, tied scores by the lower catalogue index, so the first ``j`` items never depend on
the ``k`` asked for; the generative model returns its beam's best (``k`` is at most ``fusion.beam``;
with ``exclude_seen`` the beam widens by the history's distinct items, so that ``k`` remain).

**Histories** are raw item ids, oldest first; only the last ``max_history`` (the recipe's
``data.max_history``) are read. Unknown ids: with ``on_unknown="skip"`` (the default) they are left
out and reported in ``Recommendations.unknown_ids``; with ``on_unknown="error"`` they raise
:class:`~genrec.errors.UnknownItemError`. A history with no known item gets the most popular
training items (``fallback=True``; score: their training count), since no model can condition on
nothing; the same holds for a model that cannot read the items added after its training
(:meth:`Recommender.add_items`: the end-to-end joint model, and SASRec in a recommender saved without
item embeddings) when the history holds only such items: it reads the items it knows and never
recommends the new ones. ``exclude_seen=True`` leaves every
known item of the history out of the ranking (not only the last ``max_history`` the models read); a
fusion method ranks its fixed candidate union, so it can then return fewer than ``k`` items.

**Saved directories** (:mod:`genrec.recommender_files`) carry a format version and everything needed
to recommend: models, semantic IDs with raw item ids, item texts, the training sequences the fusion
indicators are computed from. Every file is loaded with ``torch.load(weights_only=True)`` or as
plain JSON / ``.npz`` without pickle, so loading never runs code from the files.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from genrec import recommender_files as files
from genrec.artifacts import load_json
from genrec.errors import CheckpointError, ConfigError, DataFormatError, UnknownItemError
from genrec.recommend_rank import rank_catalogue, rank_generative
from genrec.recommendations import Explanation, Recommendations

log = logging.getLogger(__name__)

__all__ = ["Recommender", "Recommendations", "Explanation", "SINGLE_MODELS"]

#: methods that are one trained model rather than a post-hoc fusion of two
SINGLE_MODELS = ("sasrec", "generative", "joint")
ON_UNKNOWN = ("skip", "error")


class Recommender:
    """A trained recommender over raw item ids (see the module doc). Build it with
    :meth:`from_pretrained` (a run directory or a saved one); :meth:`save_pretrained` writes a
    self-contained copy."""

    def __init__(self, *, table: Any, train_sequences: Sequence[np.ndarray], method: str,
                 settings: files.InferenceSettings, sasrec: Any = None, generative: Any = None,
                 joint: Any = None, fusion_methods: dict[str, Any] | None = None,
                 items: Sequence[dict[str, Any]] | None = None, text: dict[str, Any] | None = None,
                 quantize_dir: Path | None = None, item_embeddings: np.ndarray | None = None,
                 trained_items: int | None = None, new_item_mixtures: dict[str, Any] | None = None) -> None:
        from fusion import TrainStats

        if table.item_ids is None:
            raise CheckpointError("the semantic-ID table has no item ids; it cannot map recommendations to items")
        self.table, self.settings = table, settings
        self.sasrec, self.generative, self.joint = sasrec, generative, joint
        self.fusion_methods = dict(fusion_methods or {})
        self.item_ids: list[str] = list(table.item_ids)
        self.index = {iid: i for i, iid in enumerate(self.item_ids)}
        self.items = list(items) if items is not None else [{"item_id": i} for i in self.item_ids]
        self.text = text  # the run's encoder and template (add_items embeds new items the same way)
        self.quantize_dir = quantize_dir
        # raw text embeddings [num_items, d] (None: not kept): add_items gives SASRec new items through them
        self.item_embeddings = item_embeddings
        self.train_sequences = [np.asarray(s, np.int64) for s in train_sequences]
        self.stats = TrainStats(self.train_sequences, len(self.item_ids), table.codes)
        self.method_name = method
        self._check_method(method)
        # items 0 .. trained_items - 1 are the catalogue the models trained with; later ones came
        # through add_items (the new-item mixture ranks them apart)
        self.trained_items = len(self.item_ids) if trained_items is None else int(trained_items)
        if not 0 < self.trained_items <= len(self.item_ids):
            raise CheckpointError(f"trained_items={trained_items} must be between 1 and the catalogue's "
                                  f"{len(self.item_ids)} items")
        self.new_item_mixtures: dict[str, Any] = dict(new_item_mixtures or {})  # method -> NewItemMixture

    # -- loading and saving ------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | Path, method: str | None = None) -> "Recommender":
        """Load a saved recommender directory (:meth:`save_pretrained`) or a finished recipe run
        directory; ``method`` as in the module doc (default: the saved one / ``fusion.primary``)."""
        path = Path(path)
        if (path / files.MANIFEST).is_file():
            return cls._from_saved(path, method)
        if (path / "config.json").is_file():
            return cls.from_run(path, method)
        raise CheckpointError(f"{path}: neither a saved recommender ({files.MANIFEST}) nor a recipe run directory "
                              f"(config.json)")

    @classmethod
    def from_run(cls, run_dir: str | Path, method: str | None = None) -> "Recommender":
        """Load ``method`` from the finished recipe run in ``run_dir`` (its dataset must be readable;
        :meth:`save_pretrained` makes a copy that needs none). A cold-start run (``data.cold_items``)
        trained on its warm catalogue; its cold items are added back as :meth:`add_items` adds new items
        (from the embed stage's vectors), so it recommends what its fusion stage evaluated, unless no
        model of ``method`` can score them (the end-to-end joint model): then the warm catalogue."""
        from fusion import load_methods
        from genrec.generative import load_generative
        from genrec.recipe import StageContext
        from genrec.recipe.run_files import check_data_unchanged, run_config
        from genrec.sasrec import load_sasrec
        from quantize import SemanticIdTable

        run_dir = Path(run_dir)
        config = run_config(run_dir)
        if method is None:  # the run's primary: chosen on validation when fusion.primary is auto
            from genrec.recipe.primary import choose_primary

            if not (run_dir / "fusion" / "stage.done.json").is_file():  # the choice reads the fusion stage's files
                raise CheckpointError(f"{run_dir}: stage 'fusion' has not finished there; run the recipe first")

            method = choose_primary(config, run_dir).method
        name = method
        needs = {"sasrec": ("sasrec",), "generative": ("generative",), "joint": ("joint",)}.get(
            name, ("sasrec", "generative", "fusion"))
        holdout_joint = run_dir / "joint" / "model"
        holdout = name == "joint" and holdout_joint.is_dir()  # fusion.joint_schedule holdout: its towers + gate
        if holdout:
            needs = ("joint",)
        for stage in ("data", "quantize", *needs):
            if not (run_dir / stage / "stage.done.json").is_file():
                raise CheckpointError(f"{run_dir}: stage {stage!r} has not finished there; run the recipe first"
                                      + (" (with fusion.joint: true)" if stage == "joint" else ""))
        check_data_unchanged(run_dir, config)
        kw: dict[str, Any] = {}
        if "sasrec" in needs:
            kw["sasrec"] = load_sasrec(run_dir / "sasrec" / "best.pt")
        if "generative" in needs:
            kw["generative"] = load_generative(run_dir / "generative" / "best.pt")
        if "fusion" in needs:
            kw["fusion_methods"] = load_methods(run_dir / "fusion" / "methods.pt")
            if name not in kw["fusion_methods"]:
                raise CheckpointError(f"{run_dir / 'fusion' / 'methods.pt'}: no fusion method {name!r}; it holds "
                                      f"{list(kw['fusion_methods'])} (or use one of {list(SINGLE_MODELS)})")
        table = SemanticIdTable.load(run_dir / "quantize" / "semantic_ids.json")
        # a cold-start run (data.cold_items) trained on its warm catalogue: that is what it recommends from,
        # and add_items brings the cold items back
        ctx = StageContext(run_dir, config)
        dataset, split = ctx.training()
        if holdout:
            from fusion.holdout_joint import GATE_NAME, load_holdout_joint

            # a candidate-fusion model: its own towers (trained for it) under the name "joint"
            hj = load_holdout_joint(holdout_joint, split.train)
            kw.update(sasrec=hj.sasrec, generative=hj.generative, fusion_methods={GATE_NAME: hj.gate})
        elif "joint" in needs:
            from fusion.joint import load_joint

            kw["joint"] = load_joint(run_dir / "joint" / "best.pt")
        if list(dataset.item_ids) != list(table.item_ids or []):
            raise CheckpointError(f"{run_dir}: the dataset's items no longer match quantize/semantic_ids.json; "
                                  f"rerun the recipe (its data changed)")
        summary = run_dir / "embed" / "summary.json"
        text = None
        embeddings = files.load_embeddings(run_dir / "embed" / "embeddings.npy", table.num_items, at_least=True)
        if summary.is_file():
            s = load_json(summary)
            text = {"encoder": s.get("encoder"), "template": s.get("template"), "fallback": config.text.fallback}
            if s.get("precomputed"):  # text.embeddings: no encoder, add_items refuses and says why
                text["precomputed"] = s["precomputed"].get("path")
        # the held-out-gate joint model ranks as it was fitted and evaluated: its own k and beam, both
        # towers scoring each other's candidates (fusion.joint_config may set other values than fusion's)
        k, beam, forcing = ((hj.config.k, hj.config.beam, True) if holdout
                            else (config.fusion.k, config.fusion.beam, bool(config.fusion.teacher_forcing)))
        settings = files.InferenceSettings(k=k, beam=beam, teacher_forcing=forcing, max_history=config.data.max_history,
                                           batch_size=config.generative.eval_batch_size)
        mixtures = files.load_new_item_mixtures(run_dir / "fusion" / files.MIXTURES)
        rec = cls(table=table, train_sequences=split.train, method=name, settings=settings,
                  items=[files.item_record(i, t) for i, t in zip(dataset.item_ids, dataset.items)],
                  text=text, quantize_dir=run_dir / "quantize", item_embeddings=embeddings,
                  new_item_mixtures=mixtures, **kw)
        cold = ctx.cold()
        if cold is not None and cold.num_cold:
            _add_cold_items(rec, cold, run_dir / "embed" / "embeddings.npy")
        return rec

    @classmethod
    def _from_saved(cls, directory: Path, method: str | None) -> "Recommender":
        from fusion import load_methods
        from genrec.generative import load_generative
        from genrec.sasrec import load_sasrec
        from quantize import SemanticIdTable

        m = files.read_manifest(directory)
        files.check_file_digests(directory, m["file_digests"])
        try:
            table = SemanticIdTable.load(directory / files.TABLE)
        except (OSError, ValueError, KeyError, TypeError) as e:  # missing, unreadable or damaged
            raise CheckpointError(f"{directory / files.TABLE}: damaged ({e})") from None
        if table.item_ids is None:
            raise CheckpointError(f"{directory / files.TABLE}: no item ids")
        n = len(table.item_ids)
        kw: dict[str, Any] = {}
        models = m["models"]
        if "sasrec" in models:
            kw["sasrec"] = load_sasrec(directory / files.MODEL_FILES["sasrec"])
        if "generative" in models:
            kw["generative"] = load_generative(directory / files.MODEL_FILES["generative"])
        if "joint" in models:
            from fusion.joint import load_joint

            kw["joint"] = load_joint(directory / files.MODEL_FILES["joint"])
        if "fusion" in models:
            kw["fusion_methods"] = load_methods(directory / files.MODEL_FILES["fusion"])
        for name in ("sasrec", "generative", "joint"):
            model = kw.get(name)
            if model is not None and model.num_items > n:
                raise CheckpointError(f"{directory / files.MODEL_FILES[name]}: {model.num_items} items, more than "
                                      f"the {n} of {files.TABLE}")
        # the generative towers decode semantic IDs: theirs must be the table's (for the joint model's,
        # its trained items), or decoded items would map to the wrong ids
        for name, tower in (("generative", kw.get("generative")), ("joint", getattr(kw.get("joint"), "gr_tower", None))):
            if tower is not None and not np.array_equal(tower.codes, table.codes[:tower.num_items]) or (
                    name == "generative" and tower is not None and tower.num_items != n):
                raise CheckpointError(f"{directory / files.MODEL_FILES[name]}: its semantic IDs differ from those of "
                                      f"{files.TABLE}; the directory mixes files of different recommenders")
        qdir = directory / files.QUANTIZE_DIR
        sequences = files.load_sequences(directory / files.SEQUENCES, n)
        items = files.load_items(directory / files.ITEMS, table.item_ids)
        embeddings = files.load_embeddings(directory / files.EMBEDDINGS, n)
        try:  # the manifest's method and trained_items are checked here: name the manifest
            return cls(table=table, train_sequences=sequences, method=method or m["method"], settings=m["settings"],
                       items=items, text=m.get("text"), quantize_dir=qdir if (qdir / "quantizer.pt").is_file() else None,
                       item_embeddings=embeddings, trained_items=m["trained_items"] if m["trained_items"] is not None
                       else n, new_item_mixtures=m["new_item_mixtures"], **kw)
        except CheckpointError as e:  # the caller's method= is not the manifest's fault
            raise CheckpointError(str(e) if method is not None and "is not available here" in str(e)
                                  else f"{directory / files.MANIFEST}: {e}") from None

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write a self-contained copy (every model and fusion method it holds) into ``directory``, a new
        or empty directory or a saved recommender (replaced, e.g. after :meth:`add_items`); load it with
        :meth:`from_pretrained`. The copy is written beside it first and renamed into place, so a save
        that fails (a full disk, a kill) leaves the directory as it was."""
        d = Path(directory)
        if d.exists() and not d.is_dir():
            raise FileExistsError(f"{d} exists and is not a directory")
        if d.is_dir() and not (d / files.MANIFEST).is_file() and any(d.iterdir()):
            # a run directory or the user's files: the swap below would remove them
            raise FileExistsError(f"{d} is neither empty nor a saved recommender ({files.MANIFEST}); save into a new "
                                  "or empty directory")
        d.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{d.name}.saving-", dir=d.parent))
        try:
            self._write_files(staging)
            if d.exists():  # the old copy stays whole until the new one is complete
                old = Path(tempfile.mkdtemp(prefix=f".{d.name}.old-", dir=d.parent))
                os.replace(d, old / d.name)
                os.replace(staging, d)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(staging, d)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return d

    def _write_files(self, d: Path) -> None:
        """Every file of :meth:`save_pretrained` into the empty directory ``d``, the manifest last."""
        from fusion import save_methods
        from fusion.joint import save_joint
        from genrec.generative import save_generative
        from genrec.sasrec import save_sasrec

        models = []
        if self.sasrec is not None:
            save_sasrec(self.sasrec, d / files.MODEL_FILES["sasrec"])
            models.append("sasrec")
        if self.generative is not None:
            save_generative(self.generative, d / files.MODEL_FILES["generative"])
            models.append("generative")
        if self.joint is not None:
            save_joint(self.joint, d / files.MODEL_FILES["joint"])
            models.append("joint")
        if self.fusion_methods:
            save_methods(d / files.MODEL_FILES["fusion"], self.fusion_methods)
            models.append("fusion")
        self.table.save(d / files.TABLE)
        files.save_items(d / files.ITEMS, self.items)
        files.save_sequences(d / files.SEQUENCES, self.train_sequences)
        if self.item_embeddings is not None:
            files.save_embeddings(d / files.EMBEDDINGS, self.item_embeddings)
        files.copy_quantizer(self.quantize_dir, d)
        from genrec import __version__

        files.write_manifest(d, {"genrec_version": __version__, "method": self.method_name, "models": models,
                                 "fusion_methods": list(self.fusion_methods), "num_items": len(self.item_ids),
                                 "settings": asdict(self.settings), "text": self.text,
                                 "trained_items": self.trained_items,
                                 "new_item_mixtures": {n: mix.to_dict() for n, mix in self.new_item_mixtures.items()},
                                 "file_digests": files.file_digests(d)})

    # -- what it holds -----------------------------------------------------------------------------
    @property
    def methods(self) -> list[str]:
        """The methods this recommender can use (:meth:`with_method`). A recommender of a run's held-out
        joint model (``method="joint"``, ``fusion.joint_schedule: holdout``) holds that model's own towers:
        its ``"sasrec"`` and ``"generative"`` are those towers (the run's own where validation kept them,
        else the stage-1 towers trained on shortened sequences), not necessarily the run's sasrec and
        generative stages; load the run with ``method="sasrec"`` for those."""
        out = [n for n in SINGLE_MODELS if getattr(self, n) is not None]
        if self.sasrec is not None and self.generative is not None:
            out += list(self.fusion_methods)
        return out

    def _check_method(self, name: str) -> None:
        if name not in self.methods:
            raise CheckpointError(f"method {name!r} is not available here; this recommender holds {self.methods}")

    def with_method(self, method: str) -> "Recommender":
        """The same models, ranking with another ``method`` (shares the models; no copy)."""
        other = object.__new__(Recommender)
        other.__dict__.update(self.__dict__)
        other.method_name = method
        other._check_method(method)
        return other

    @property
    def method(self) -> Any:
        """The fitted fusion method in use, or the method's name for a single model."""
        return self.fusion_methods.get(self.method_name, self.method_name)

    @property
    def num_items(self) -> int:
        return len(self.item_ids)

    @property
    def new_item_mixture(self) -> Any:
        """The :class:`fusion.new_item_mixture.NewItemMixture` that ranks the items added after training
        against the trained ones for the method in use (None, the default: the method's own scores rank
        both; see :meth:`add_items`). A cold-start run with ``fusion.new_item_mixture`` fits one per
        fusion method on its validation users; set one with :meth:`set_new_item_mixture`."""
        return self.new_item_mixtures.get(self.method_name)

    def set_new_item_mixture(self, mixture: Any, method: str | None = None) -> None:
        """Use ``mixture`` (a :class:`~fusion.new_item_mixture.NewItemMixture`, or None for none) for
        ``method`` (default: the one in use), a fusion method: items added with :meth:`add_items` are
        then ranked against the trained ones by the mixture (``mixture.log_prior`` sets how much of
        the probability they get), scored by SASRec (which reads them through their nearest trained
        item; a recommender without item embeddings cannot, and ranks as without the mixture)."""
        from fusion.new_item_mixture import NewItemMixture

        method = self.method_name if method is None else method
        if method not in self.fusion_methods:
            raise ConfigError(f"the new-item mixture ranks a fusion method's candidates; {method!r} is not one of "
                              f"{list(self.fusion_methods)}")
        if mixture is None:  # a new dict: a recommender made by with_method shares this one's
            self.new_item_mixtures = {n: m for n, m in self.new_item_mixtures.items() if n != method}
            return
        if not isinstance(mixture, NewItemMixture):
            raise ConfigError(f"mixture must be a NewItemMixture or None, got {type(mixture).__name__}")
        if self.num_items == self.trained_items:
            log.warning("new-item mixture set, but no item was added after training: it changes nothing until "
                        "add_items adds some")
        elif self.sasrec.num_items < self.num_items:
            log.warning("new-item mixture set, but SASRec cannot score the items added after training (a "
                        "recommender without item embeddings): it changes nothing")
        self.new_item_mixtures = {**self.new_item_mixtures, method: mixture}

    @property
    def max_k(self) -> int:
        """The largest ``k`` a recommendation can ask for: ``fusion.k`` for a fusion method (it ranks
        both towers' top ``fusion.k``), the beam (``fusion.beam``) for the generative model (a wider
        beam costs memory and time in proportion), the catalogue for SASRec and the joint model."""
        if self.method_name in self.fusion_methods:
            return self.settings.k
        if self.method_name == "generative":
            return min(self.settings.beam, self.num_items)
        return self.num_items

    @property
    def max_k_source(self) -> str:
        """What sets :attr:`max_k`, for messages: ``"fusion.k"``, ``"fusion.beam"`` or ``"the catalogue"``
        (the held-out-gate joint model's own ``fusion.joint_config.k``)."""
        if self.method_name == "joint" and "joint" in self.fusion_methods:
            return "fusion.joint_config.k"
        return {"generative": "fusion.beam"}.get(self.method_name, "fusion.k" if self.method_name in
                                                  self.fusion_methods else "the catalogue")

    @property
    def max_history(self) -> int:
        return self.settings.max_history

    def item(self, item_id: str) -> dict[str, Any]:
        """An item's text fields and semantic ID (:class:`~genrec.errors.UnknownItemError` if unknown)."""
        i = self.index.get(str(item_id))
        if i is None:
            raise UnknownItemError(f"unknown item id {str(item_id)!r}", [str(item_id)])
        return {**self.items[i], "index": i, "semantic_id": [int(c) for c in self.table.codes[i]]}

    def add_items(self, items: Sequence[dict[str, Any]], *, cache_dir: Any = None) -> list[str]:
        """Add new catalogue items (dicts: ``item_id`` plus text fields) without retraining, in place;
        returns their ids. The generative model, SASRec (through each new item's nearest trained item
        by text, or its unknown-ID vector after ``id_dropout``, plus its own text in a content-aware
        model, when the recommender keeps item embeddings) and the fusion methods can
        recommend them at once; the end-to-end joint model cannot (:func:`genrec.new_items.add_items`)."""
        from genrec.new_items import add_items

        return add_items(self, items, cache_dir=cache_dir)

    # -- recommending ------------------------------------------------------------------------------
    def recommend(self, history: Sequence[str], k: int | None = None, exclude_seen: bool = False,
                  on_unknown: str = "skip") -> Recommendations:
        """The top ``k`` items (default ``min(10, max_k)``) for one history of raw item ids (module doc)."""
        return self.recommend_batch([history], k, exclude_seen, on_unknown)[0]

    def recommend_batch(self, histories: Sequence[Sequence[str]], k: int | None = None, exclude_seen: bool = False,
                        on_unknown: str = "skip") -> list[Recommendations]:
        """:meth:`recommend` for many histories (any iterable of id lists; 1-D NumPy arrays too, as pandas
        reads a Parquet list column), in batched model calls."""
        k = min(10, self.max_k) if k is None else k  # the default is never refused (fusion.k or beam below 10)
        known, unknown = self._encode(histories, k, on_unknown)
        rows = self._readable(known)
        out: list[Recommendations | None] = [None] * len(rows)
        live = [n for n, r in enumerate(rows) if len(r)]
        if live:
            ranked = self._rank([rows[n] for n in live], k, [known[n] for n in live] if exclude_seen else None)
            for n, (idx, scores, gate) in zip(live, ranked):
                out[n] = Recommendations([self.item_ids[i] for i in idx], [float(s) for s in scores], unknown[n],
                                         None if gate is None else float(gate))
        if len(live) < len(rows):
            popular = np.argsort(-self.stats.popularity, kind="stable")
            model = {"sasrec": self.sasrec, "joint": self.joint}.get(self.method_name)
            if model is not None:  # a model that cannot score added items never recommends them
                popular = popular[popular < model.num_items]
            for n in range(len(rows)):
                if out[n] is None:  # no known item (that the model reads): the most popular training items
                    top = popular[~np.isin(popular, known[n])] if exclude_seen else popular
                    top = top[:k]
                    out[n] = Recommendations([self.item_ids[i] for i in top],
                                             [float(self.stats.popularity[i]) for i in top], unknown[n],
                                             fallback=True)
        return out  # type: ignore[return-value]

    def explain(self, history: Sequence[str], k: int | None = None, exclude_seen: bool = False,
                on_unknown: str = "skip") -> Explanation:
        """The recommendations of one history with the gate that fused them and the features that
        moved it (see :class:`Explanation`); a single model has no gate."""
        k = min(10, self.max_k) if k is None else k
        (known,), (unknown,) = self._encode([history], k, on_unknown)
        (row,) = self._readable([known])
        seen = [known] if exclude_seen else None
        name = self.method_name
        if not len(row):
            return Explanation(name, self.recommend_batch([history], k, exclude_seen, on_unknown)[0])
        if name in self.fusion_methods:
            from fusion.report import single_model_topk

            inputs = self._fusion_inputs([row])
            report = self.method.gates(inputs.cands, inputs.indicators)
            (idx, scores, gate), = self._fusion_rank([row], inputs, seen, k, report)
            shown = set(known.tolist()) if exclude_seen else set()
            tops = tuple([self.item_ids[i] for i in single_model_topk(inputs.cands, tower, inputs.cands.width)[0]
                          if i >= 0 and i not in shown][:k] for tower in ("id", "gr"))
        elif name == "joint":
            from fusion.joint import joint_gates
            from genrec.splits import Instances

            report = joint_gates(self.joint, Instances(np.zeros(1, np.int64), [row], np.zeros(1, np.int64)))
            (idx, scores, gate), = self._rank([row], k, seen)
            tops = ([], [])
        else:
            (idx, scores, _), = self._rank([row], k, seen)
            return Explanation(name, Recommendations([self.item_ids[i] for i in idx], [float(s) for s in scores],
                                                     unknown))
        recs = Recommendations([self.item_ids[i] for i in idx], [float(s) for s in scores], unknown, float(gate))
        features, contributions = {}, {}
        if report.features is not None:
            features = {n: float(v) for n, v in zip(report.features.names, report.features.values[0])}
            if report.contributions is not None and report.contributions.shape[1]:
                c = report.contributions[0]
                contributions = {report.features.names[j]: float(c[j]) for j in np.argsort(-np.abs(c), kind="stable")}
        return Explanation(name, recs, float(report.gate[0]), str(report.trusted()[0]), features, contributions,
                           *tops)

    # -- internals ---------------------------------------------------------------------------------
    def _encode(self, histories: Sequence[Sequence[str]], k: int, on_unknown: str
                ) -> tuple[list[np.ndarray], list[list[str]]]:
        """Item-index rows (every known item) and the unknown ids of each history."""
        if on_unknown not in ON_UNKNOWN:
            raise ConfigError(f"on_unknown must be one of {ON_UNKNOWN}, got {on_unknown!r}")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= self.max_k:
            raise ConfigError(f"k must be an integer between 1 and {self.max_k} ({self.max_k_source}), got {k!r}")
        if isinstance(histories, (str, bytes)) or not isinstance(histories, Iterable):
            raise DataFormatError("histories: expected a list of histories (lists of item ids), got "
                                  + ("a string" if isinstance(histories, (str, bytes)) else type(histories).__name__))
        rows, unknown = [], []
        for n, history in enumerate(histories):
            if isinstance(history, np.ndarray) and history.ndim == 1:  # a Parquet list column read by pandas
                history = history.tolist()
            if isinstance(history, (str, bytes)) or not isinstance(history, Sequence):
                raise DataFormatError(f"history {n}: expected a list of item ids, got "
                                      f"{'a single string' if isinstance(history, (str, bytes)) else type(history).__name__}")
            ids = [str(i) for i in history]
            missing = list(dict.fromkeys(i for i in ids if i not in self.index))  # each once, first seen first
            if missing and on_unknown == "error":
                raise UnknownItemError(f"history {n}: unknown item id(s) {missing[:5]}"
                                       + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""), missing)
            known = [self.index[i] for i in ids if i in self.index]
            rows.append(np.asarray(known, dtype=np.int64))
            unknown.append(missing)
        return rows, unknown

    def _readable(self, rows: list[np.ndarray]) -> list[np.ndarray]:
        """The last ``max_history`` items of each row that the method's model can read: a model that was
        not extended with the items added after its training (``add_items``: the end-to-end joint
        model; SASRec without item embeddings) skips them; a row left empty gets the popularity fallback."""
        model = {"sasrec": self.sasrec, "joint": self.joint}.get(self.method_name)
        if model is not None:
            from fusion.adapters import id_tower_histories

            rows = id_tower_histories(rows, model.num_items)
        return [r[-self.settings.max_history:] for r in rows]

    def _rank(self, rows: list[np.ndarray], k: int, seen: list[np.ndarray] | None
              ) -> list[tuple[np.ndarray, np.ndarray, float | None]]:
        """Per non-empty history row (what the model reads): (item indices best first, scores, gate or
        None), leaving out the items of ``seen`` (each history's every known item; None: exclude none)."""
        name = self.method_name
        if name in self.fusion_methods:
            inputs = self._fusion_inputs(rows)
            return self._fusion_rank(rows, inputs, seen, k, self.method.gates(inputs.cands, inputs.indicators))
        if name == "sasrec":
            return rank_catalogue(self._sasrec_log_probs(rows), len(rows), self.num_items, k, seen)
        if name == "joint":
            return rank_catalogue(self._joint_scores(rows), len(rows), self.num_items, k, seen)
        return rank_generative(self.generative, rows, k, seen, self.settings)

    def _fusion_inputs(self, rows: list[np.ndarray]):
        from fusion.adapters import model_inputs
        from genrec.splits import Instances

        s = self.settings
        inst = Instances(users=np.arange(len(rows)), histories=rows, targets=np.zeros(len(rows), np.int64))
        return model_inputs(self.sasrec, self.generative, inst, self.stats, k=s.k, beam=s.beam,
                            teacher_forcing=s.teacher_forcing, batch_size=s.batch_size)

    def _fusion_rank(self, rows, inputs, seen, k, report):
        from fusion.candidates import topk_items

        cands = inputs.cands
        items = cands.items
        fused = np.asarray(self.method.fuse(cands, inputs.indicators), np.float64)  # [n, C]
        mixture = self.new_item_mixture
        if mixture is not None and self.num_items > self.trained_items and self.sasrec.num_items == self.num_items:
            from fusion.new_item_mixture import mix_new_items, new_item_logits

            # new items ranked apart: the candidates plus each row's best new items by SASRec
            z = new_item_logits(self.sasrec, rows, self.trained_items, self.settings.batch_size)
            # new items already read (all the known history when excluded, else what the models read) are not added
            items, fused = mix_new_items(items, fused, z, self.trained_items, mixture, rows if seen is None else seen)
        if seen is not None:
            mask = np.zeros(items.shape, bool)
            for j, r in enumerate(seen):
                mask[j] = np.isin(items[j], r)
            fused = np.where(mask, -np.inf, fused)
        order = topk_items(items, fused, items.shape[1])  # [n, C]: the fusion stage's order, -1 padded
        out = []
        for j in range(len(cands)):
            pos = {int(item): c for c, item in enumerate(items[j]) if item >= 0}
            keep = [int(i) for i in order[j] if i >= 0 and np.isfinite(fused[j, pos[int(i)]])][:k]
            out.append((np.asarray(keep, np.int64), fused[j, [pos[i] for i in keep]], float(report.gate[j])))
        return out

    def _sasrec_log_probs(self, rows: list[np.ndarray]):
        import torch

        from genrec.sasrec import iter_logits

        for idx, logits in iter_logits(self.sasrec, rows, self.settings.batch_size):
            yield idx, torch.log_softmax(logits, -1), None

    def _joint_scores(self, rows: list[np.ndarray]):
        bs = self.settings.batch_size
        self.joint.eval()
        for s in range(0, len(rows), bs):
            fused, gate, _ = self.joint.scores(rows[s:s + bs])
            yield np.arange(s, min(s + bs, len(rows))), fused, gate.numpy()


def _add_cold_items(rec: Recommender, cold: Any, embeddings_path: Path) -> None:
    """A cold-start run's cold items added to ``rec`` as its fusion stage added them (frozen quantizer,
    next free disambiguation codes, SASRec through nearest warm items; the embed stage's vectors, warm
    items first), unless no model of ``rec`` can score them."""
    from genrec.new_items import add_embedded_items, can_extend

    why = can_extend(rec)
    if why is not None:
        log.info("%d cold item(s) of the run are not added: %s", cold.num_cold, why)
        return
    vectors = files.load_embeddings(embeddings_path, cold.num_items)
    if vectors is None:
        raise CheckpointError(f"{embeddings_path}: missing: the run's cold items cannot be added without the "
                              f"embed stage's vectors; rerun the recipe")
    ids = cold.dataset.item_ids[cold.num_warm:]
    add_embedded_items(rec, ids, cold.dataset.items[cold.num_warm:], np.array(vectors[cold.num_warm:], np.float32))
