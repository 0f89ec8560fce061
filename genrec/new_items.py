"""New catalogue items for a trained recommender, without retraining (``Recommender.add_items``).

    rec = Recommender.from_pretrained("models/beauty")
    rec.add_items([{"item_id": "B0NEW1", "title": "Rose Lip Balm", "brand": "Belix",
                    "categories": ["Makeup", "Lips"], "price": 7.5}])
    rec.recommend(history, k=10)          # the new item can be recommended at once
    rec.save_pretrained("models/beauty-plus")

Each new item's text is rendered with the run's template (or its fallback), embedded with the run's
encoder and given base codes by the run's frozen quantizer (and PCA, if any); the semantic-ID table
then appends it with the next free disambiguation code of its base-code group
(:meth:`quantize.SemanticIdTable.extend`), so no existing ID changes. What can recommend it:

- the generative model, at once: a copy of it decodes the new IDs
  (:func:`genrec.generative.with_new_items`; a disambiguation code beyond the trained ones gets the
  mean of the trained ones' embeddings);
- SASRec, given the item embeddings of the catalogue (the recommender keeps the run's text
  embeddings): a copy of it gives each new item the ID embedding of its nearest catalogue item by
  text cosine among those with training interactions (:func:`nearest_items`,
  :func:`sasrec_with_new_items`), so it reads and scores the new item as it would that
  neighbour; a content-aware SASRec adds the projection of the new item's own text, and one trained
  with ``id_dropout`` gives it its learned unknown-ID vector instead of the neighbour's. Without item embeddings (a recommender saved before they
  were kept) SASRec is left as it is and cannot score the new items;
- every post-hoc fusion method, through both towers (or through the generative model alone when
  SASRec cannot score the item: :mod:`fusion.methods`, "Candidates the ID model cannot score");
- not the end-to-end joint model (``method="joint"`` of ``fusion.joint_schedule: end_to_end``),
  whose two towers score the catalogue of its training together; it is not changed.

Training counts (the popularity fallback, the fusion indicators) are recomputed: new items have none.
:func:`extend_catalogue` is the same step on embeddings computed already (the recipe's cold-start
evaluation, ``data.cold_items``, adds its held-out items through it).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from genrec import recommender_files as files
from genrec.item_fields import item_text_from_record, warn_bad_prices
from genrec.errors import CheckpointError, ConfigError, DataFormatError
from genrec.text_files import is_unicode

log = logging.getLogger(__name__)

__all__ = ["add_items", "add_embedded_items", "can_extend", "ExtendedCatalogue", "extend_catalogue", "nearest_items", "sasrec_with_new_items"]


def add_items(recommender: Any, items: Sequence[dict[str, Any]], *, where: Sequence[str] | None = None,
              cache_dir: Any = None) -> list[str]:
    """Add ``items`` (dicts: ``item_id`` plus text fields ``title``, ``brand``, ``categories``,
    ``description``, ``price``) to ``recommender`` in place (see the module doc); returns their ids.

    ``where`` names each item in error messages (e.g. ``"new.jsonl:3"``; default ``"new item N"``);
    ``cache_dir`` is the embedding cache (:class:`quantize.TextEncoder`: None the default one,
    False none). Bad items are a :class:`~genrec.errors.DataFormatError` naming the item; a
    recommender without a generative model, quantizer or encoder record a
    :class:`~genrec.errors.CheckpointError`. Everything is computed before the recommender changes,
    so a failure leaves it as it was.
    """
    ids, texts = _item_records(recommender, items, where)
    _check_can_extend(recommender)
    _check_encoder(recommender)
    rendered = _render(recommender.text, ids, texts, where)
    x = _embed(recommender, rendered, ids, cache_dir)
    return add_embedded_items(recommender, ids, texts, x)


def add_embedded_items(recommender: Any, ids: Sequence[str], texts: Sequence[Any], embeddings: np.ndarray) -> list[str]:
    """:func:`add_items` for items whose raw text embeddings ``[m, d]`` the run's encoder computed already
    (a cold-start run's held-out items, added back by ``Recommender.from_run``): ``ids`` new, checked
    ids, ``texts`` their ``genrec.data.ItemText``. In place; returns the ids."""
    ids = list(ids)
    _check_can_extend(recommender)
    ext = extend_catalogue(recommender.table, recommender.generative, recommender.train_sequences,
                           recommender.quantize_dir, embeddings, ids, sasrec=recommender.sasrec,
                           item_embeddings=recommender.item_embeddings)
    table = ext.table
    # commit: new lists rather than in-place appends, so views made by with_method() stay consistent
    recommender.table, recommender.generative, recommender.stats = table, ext.generative, ext.stats
    recommender.sasrec, recommender.item_embeddings = ext.sasrec, ext.item_embeddings
    recommender.item_ids = list(table.item_ids)
    recommender.index = {iid: i for i, iid in enumerate(recommender.item_ids)}
    recommender.items = list(recommender.items) + [files.item_record(i, t) for i, t in zip(ids, texts)]
    log.info("added %d item(s) (catalogue now %d; disambiguation codes up to %d)", len(ids), table.num_items,
             table.codebook_sizes[-1] - 1)
    return ids


def _item_records(recommender: Any, items: Any, where: Sequence[str] | None) -> tuple[list[str], list[Any]]:
    """Checked ids and parsed texts (``genrec.data.ItemText``) of the new items."""
    if isinstance(items, (str, bytes, dict)) or not isinstance(items, Sequence):
        raise DataFormatError(f"new items: expected a list of item dicts, got {type(items).__name__}")
    if not items:
        raise DataFormatError("new items: the list is empty; nothing to add")
    if where is not None and len(where) != len(items):
        raise ValueError(f"{len(where)} names in where for {len(items)} items")
    ids: list[str] = []
    texts = []
    first: dict[str, str] = {}
    bad_prices: list[tuple[str, Any]] = []  # unreadable prices: left missing, one warning
    for n, item in enumerate(items):
        name = where[n] if where is not None else f"new item {n + 1}"
        if not isinstance(item, dict):
            raise DataFormatError(f"{name}: expected an object with 'item_id' and text fields, got "
                                  f"{type(item).__name__}")
        raw = item.get("item_id")
        if isinstance(raw, bool) or not isinstance(raw, (str, int)) or not str(raw).strip():
            raise DataFormatError(f"{name}: 'item_id' must be a non-empty string (or integer), got {raw!r}")
        iid = str(raw)
        if any(c.isspace() or not c.isprintable() for c in iid) or not is_unicode(iid):
            # histories from .tsv files or interaction logs (split on white space, stripped) could never name it
            raise DataFormatError(f"{name}: 'item_id' {iid!r} has white space, a control character or a lone "
                                  f"surrogate; give it as the histories will (a .tsv history splits ids on white space)")
        if iid in recommender.index:
            raise DataFormatError(f"{name}: item {iid!r} is already in the catalogue")
        if iid in first:
            raise DataFormatError(f"{name}: item {iid!r} appears twice (first at {first[iid]})")
        first[iid] = name
        ids.append(iid)
        texts.append(item_text_from_record(item, name, bad_prices, item_id=iid))
    warn_bad_prices("new items", bad_prices)
    return ids, texts


def can_extend(recommender: Any) -> str | None:
    """Why ``recommender`` cannot take new items (None when it can): one of its models must be able to
    score them (the generative model, or SASRec given the catalogue's item embeddings), and it needs
    the run's frozen quantizer and a disambiguation level for their semantic IDs."""
    sasrec_can = (recommender.sasrec is not None and recommender.item_embeddings is not None
                  and recommender.sasrec.num_items == recommender.table.num_items)
    if recommender.generative is None and not sasrec_can:
        hint = ("; the end-to-end joint model scores only the catalogue it trained on: load the run's post-hoc "
                "fusion or generative model instead (method=..., `genrec add-items --method`)"
                if recommender.joint is not None else "")
        why = ("its SASRec has no item embeddings to place them by (a directory saved before they were kept)"
               if recommender.sasrec is not None else "it holds neither a generative model nor SASRec")
        return f"added items could not be recommended by any of its models ({recommender.methods}): {why}{hint}"
    qdir = recommender.quantize_dir
    if qdir is None or not (qdir / "quantizer.pt").is_file():
        missing = "it has no quantize directory" if qdir is None else f"{qdir / 'quantizer.pt'} is missing"
        return (f"it has no saved quantizer ({missing}), so new items cannot get semantic IDs; save it again "
                f"from its run directory")
    if not recommender.table.disambiguated:
        return ("the semantic-ID table has no disambiguation level, so new items colliding with existing ones "
                "could not get distinct IDs")
    return None


def _check_can_extend(recommender: Any) -> None:
    why = can_extend(recommender)
    if why is not None:
        raise CheckpointError(f"this recommender cannot take new items: {why}")


def _check_encoder(recommender: Any) -> None:
    """What embedding new items' text needs: the run's encoder and template record."""
    text = recommender.text or {}
    if text.get("precomputed"):
        raise CheckpointError(f"this recommender's item embeddings were precomputed (text.embeddings: "
                              f"{text['precomputed']}), not made by a text encoder, so there is no encoder to "
                              f"embed new items' text with; add them to the embeddings file and rerun the recipe")
    if not isinstance(text.get("encoder"), dict) or not isinstance(text.get("template"), dict):
        raise CheckpointError("this recommender has no record of the text encoder and template its items were "
                              "embedded with (a run's embed/summary.json), so new items cannot be embedded the "
                              "same way")


def _render(text: dict[str, Any], ids: list[str], items: list[Any], where: Sequence[str] | None) -> list[str]:
    """The items' texts exactly as the run's embed stage rendered its own (``quantize.item_texts``)."""
    from quantize import TextTemplate
    from quantize.text import render_fallback

    try:
        template = TextTemplate.from_dict(text["template"])
    except (TypeError, ValueError, KeyError) as e:  # a damaged record: the saved model's fault, named as such
        raise CheckpointError(f"the recommender's text template record {text['template']} cannot be used: "
                              f"{type(e).__name__}: {e}") from None
    fallback = text.get("fallback")
    out = []
    for n, (iid, item) in enumerate(zip(ids, items)):
        s = template.render(item, iid)
        if not s and fallback is not None:
            s = render_fallback(fallback, iid)
        if not s:
            fields = template.field_names
            name = where[n] if where is not None else f"new item {n + 1}"
            raise DataFormatError(f"{name}: item {iid!r} has no text under the run's template (fields {fields}) "
                                  f"and the run has no fallback text; give it at least one of those fields")
        out.append(s)
    return out


def _embed(recommender: Any, texts: list[str], ids: list[str], cache_dir: Any) -> np.ndarray:
    """Raw embeddings ``[m, d]`` of the rendered texts with the run's encoder."""
    from quantize import TextEncoder

    enc = recommender.text["encoder"]
    if cache_dir is not None and not isinstance(cache_dir, (str, os.PathLike)) and cache_dir is not False:
        raise ConfigError(f"cache_dir must be a path, None or False, got {cache_dir!r}")  # not the saved model's fault
    try:
        encoder = TextEncoder(enc.get("model"), normalize=bool(enc.get("normalize", True)),
                              max_seq_length=enc.get("max_seq_length"), precision=enc.get("precision", "fp32"),
                              cache_dir=cache_dir, show_progress=False)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"the recommender's encoder record {enc} cannot be used: {e}") from None
    if enc.get("cache_key") not in (None, encoder.cache_key):
        # same settings, other weights (e.g. another version of the model): codes may not match the run's
        log.warning("the text encoder %s now resolves to other weights than the run used (cache key %s, "
                    "was %s): new items' semantic IDs may not be comparable", encoder.model_spec,
                    encoder.cache_key, enc.get("cache_key"))
    return encoder.encode(texts, ids)


@dataclass
class ExtendedCatalogue:
    """What adding items changes: the semantic-ID table with the new items appended, a generative
    model that decodes them, the training statistics over the larger catalogue, the item embeddings
    with theirs appended (None if none were given) and a SASRec that scores them (the one given,
    unchanged, when it could not be extended)."""

    table: Any  # quantize.SemanticIdTable
    generative: Any  # genrec.generative.HierarchicalGenerative (None: SASRec alone)
    stats: Any  # fusion.TrainStats
    sasrec: Any = None  # genrec.sasrec.SASRec
    item_embeddings: np.ndarray | None = None  # [num_items, d] raw text embeddings, row i = item i


def nearest_items(known: np.ndarray, new: np.ndarray, allowed: np.ndarray | None = None, chunk: int = 4096
                  ) -> np.ndarray:
    """``int64 [m]``: for each row of ``new`` ``[m, d]`` the index of the row of ``known`` ``[n, d]``
    with the highest cosine similarity (ties: the lowest index), among the rows where ``allowed``
    (bool ``[n]``; None: all) is true. Both are read in blocks of ``chunk`` rows (``known`` may be a
    memory map), so memory stays ``O(chunk^2)`` however large either is."""
    new = np.asarray(new, np.float32)
    if np.ndim(known) != 2 or new.ndim != 2 or np.shape(known)[1] != new.shape[1] or not len(known):
        raise ValueError(f"need known [n >= 1, d] and new [m, d] embeddings, got {np.shape(known)} and {new.shape}")
    if allowed is not None and (np.shape(allowed) != (len(known),) or not np.any(allowed)):
        raise ValueError(f"allowed must be a bool mask [{len(known)}] with at least one true entry")

    def unit(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, np.float32)
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    best = np.full(len(new), -np.inf, np.float32)
    arg = np.zeros(len(new), np.int64)
    for start in range(0, len(known), chunk):
        block = unit(known[start:start + chunk])
        if allowed is not None and not np.any(allowed[start:start + chunk]):
            continue
        for q0 in range(0, len(new), chunk):
            best_q, arg_q = best[q0:q0 + chunk], arg[q0:q0 + chunk]  # views: written in place
            sim = unit(new[q0:q0 + chunk]) @ block.T  # [<= chunk, <= chunk]
            if allowed is not None:
                sim[:, ~np.asarray(allowed[start:start + chunk], bool)] = -np.inf
            j = sim.argmax(1)
            s = sim[np.arange(len(sim)), j]
            better = s > best_q  # strictly: an earlier block keeps a tie
            best_q[better], arg_q[better] = s[better], start + j[better]
    return arg


def sasrec_with_new_items(model: Any, source_items: np.ndarray, new_item_text: np.ndarray | None = None,
                          id_part: str = "auto") -> Any:
    """A copy of ``model`` whose catalogue has ``len(source_items)`` more items, appended at the end,
    without training: new item ``j`` gets the ID embedding of trained item ``source_items[j]`` (its
    nearest neighbour by text, :func:`nearest_items`), so a plain SASRec reads it in a
    history and gives it the same logit as that neighbour (the two then share the softmax mass, so
    the neighbour's probability drops). Other weights are copied. Deterministic (the global random
    state is left untouched). Why a copy and not a blend of several neighbours: measured on
    simulated new items (BENCHMARKS.md, "SASRec scores new items through their nearest item").
    A content-aware SASRec (``config.text_dim`` > 0) also needs the new items' text embeddings
    ``new_item_text`` ``[len(source_items), text_dim]``: its new item adds the projection of its own
    text to the neighbour's ID embedding.

    ``id_part``: ``"neighbour"`` (the above), ``"unknown"`` (the learned unknown-ID vector of a model
    trained with ``config.id_dropout``, which scores a new item by its text alone, as training
    taught it to) or ``"auto"`` (``"unknown"`` for such a model, ``"neighbour"`` otherwise)."""
    import torch

    from genrec.layers import unit_rows
    from genrec.sasrec import SASRec

    source = torch.as_tensor(np.asarray(source_items, dtype=np.int64))
    if source.ndim != 1 or (len(source) and (int(source.min()) < 0 or int(source.max()) >= model.num_items)):
        raise ValueError(f"source_items must be 1-D item indices below {model.num_items}")
    content = model.config.text_dim > 0
    if content and np.shape(new_item_text) != (len(source), model.config.text_dim):
        raise ValueError(f"a content-aware SASRec needs new_item_text [{len(source)}, {model.config.text_dim}], "
                         f"got {None if new_item_text is None else list(np.shape(new_item_text))}")
    if id_part not in ("auto", "neighbour", "unknown"):
        raise ValueError(f"id_part must be 'auto', 'neighbour' or 'unknown', got {id_part!r}")
    if id_part == "unknown" and model.unknown_id is None:
        raise ValueError("id_part='unknown' needs a SASRec trained with id_dropout > 0 (it has no unknown-ID vector)")
    unknown = id_part == "unknown" or (id_part == "auto" and model.unknown_id is not None)
    with torch.random.fork_rng(devices=[]):  # the fresh initialisation is overwritten below
        new = SASRec(model.num_items + len(source), model.config)
    state = model.state_dict()
    weight = state["item_emb.weight"]  # [num_items + 1, H]; row 0 is padding
    added = state["unknown_id"].expand(len(source), -1) if unknown else weight[source + 1]  # [new, H]
    state["item_emb.weight"] = torch.cat([weight, added])
    if content:
        text = unit_rows(torch.as_tensor(new_item_text, dtype=torch.float32).detach().cpu())
        state["item_text"] = torch.cat([state["item_text"], text.to(state["item_text"].device)])
    new.load_state_dict(state)
    device = next(model.parameters()).device
    return new.to(device).train(model.training)


def extend_catalogue(table: Any, generative: Any, train_sequences: Sequence[np.ndarray], quantize_dir: str | Path,
                     embeddings: np.ndarray, ids: Sequence[str], *, sasrec: Any = None,
                     item_embeddings: np.ndarray | None = None) -> ExtendedCatalogue:
    """The core of :func:`add_items` on precomputed raw embeddings ``[m, d]`` of new items ``ids``:
    base codes from the frozen quantizer saved in ``quantize_dir`` (and its PCA, if any), the next
    free disambiguation codes (:meth:`quantize.SemanticIdTable.extend`), a generative model that
    decodes the new IDs (:func:`genrec.generative.with_new_items`; None without ``generative``: a
    recommender of SASRec alone), training statistics where the
    new items have no count and, given ``sasrec`` and the catalogue's ``item_embeddings``
    (``[table.num_items, d]``, the same encoder as ``embeddings``), a SASRec that scores the new items
    through their nearest catalogue items. Nothing given is changed. A quantizer that cannot encode
    the embeddings, or item embeddings of another catalogue size or dimension, is a
    :class:`~genrec.errors.CheckpointError`."""
    from fusion import TrainStats
    from genrec.generative import with_new_items
    from quantize import encode_with_saved

    ids = list(ids)
    try:
        base = encode_with_saved(quantize_dir, embeddings, ids)
    except CheckpointError:
        raise
    except ValueError as e:  # e.g. the encoder's dimension is not the one the quantizer was fitted on
        raise CheckpointError(f"{quantize_dir}: cannot encode the new items with the saved quantizer: {e}") from None
    new_table = table.extend(base, ids)
    new_generative = None if generative is None else with_new_items(generative, new_table.codes,
                                                                    new_table.codebook_sizes)
    new_sasrec, all_embeddings = sasrec, None
    if item_embeddings is not None:
        if np.shape(item_embeddings) != (table.num_items, np.shape(embeddings)[1]):
            raise CheckpointError(f"the item embeddings are {list(np.shape(item_embeddings))}, not [{table.num_items}, "
                                  f"{np.shape(embeddings)[1]}] (one row per catalogue item, the new items' encoder)")
        all_embeddings = np.concatenate([item_embeddings, np.asarray(embeddings, np.float32)])
    if sasrec is not None and (item_embeddings is None or sasrec.num_items != table.num_items):
        # e.g. a recommender saved without item embeddings, or items added to it before: SASRec keeps
        # the catalogue it has and the fusion treats the new items as ones it cannot score
        log.info("SASRec cannot score the new items (%s)", "no item embeddings" if item_embeddings is None
                 else f"it scores {sasrec.num_items} of the {table.num_items} catalogue items")
    elif sasrec is not None:
        # neighbours among the items SASRec trained on (an item without interactions, or one added
        # before, has no embedding learnt from data); all items if none has any
        counts = np.bincount(np.concatenate([np.asarray(q, np.int64) for q in train_sequences] or [np.zeros(0, np.int64)]),
                             minlength=table.num_items)[:table.num_items]
        neighbours = nearest_items(item_embeddings, embeddings, allowed=counts > 0 if (counts > 0).any() else None)
        new_sasrec = sasrec_with_new_items(sasrec, neighbours,
                                           np.asarray(embeddings, np.float32) if sasrec.config.text_dim else None)
    return ExtendedCatalogue(new_table, new_generative,
                             TrainStats(train_sequences, new_table.num_items, new_table.codes),
                             new_sasrec, all_embeddings)
