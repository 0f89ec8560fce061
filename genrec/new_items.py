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
- every post-hoc fusion method, through the generative model: SASRec has no embedding for the new
  item, so its score is missing and the fused score rests on the generative share
  (:mod:`fusion.methods`, "Candidates the ID model cannot score");
- not SASRec alone, which ranks the items it was trained on, and not the joint model (``method="joint"``),
  whose two towers score the catalogue of its training together; neither is changed.

Training counts (the popularity fallback, the fusion indicators) are recomputed: new items have none.
:func:`extend_catalogue` is the same step on embeddings computed already (the recipe's cold-start
evaluation, ``data.cold_items``, adds its held-out items through it).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from genrec import recommender_files as files
from genrec.data import item_text_from_record
from genrec.errors import CheckpointError, DataFormatError

log = logging.getLogger(__name__)

__all__ = ["add_items", "ExtendedCatalogue", "extend_catalogue"]


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
    records = [files.item_record(i, t) for i, t in zip(ids, texts)]
    _check_can_add(recommender)
    rendered = _render(recommender.text, ids, texts, where)
    x = _embed(recommender, rendered, ids, cache_dir)
    ext = extend_catalogue(recommender.table, recommender.generative, recommender.train_sequences,
                           recommender.quantize_dir, x, ids)
    table = ext.table
    # commit: new lists rather than in-place appends, so views made by with_method() stay consistent
    recommender.table, recommender.generative, recommender.stats = table, ext.generative, ext.stats
    recommender.item_ids = list(table.item_ids)
    recommender.index = {iid: i for i, iid in enumerate(recommender.item_ids)}
    recommender.items = list(recommender.items) + records
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
    for n, item in enumerate(items):
        name = where[n] if where is not None else f"new item {n + 1}"
        if not isinstance(item, dict):
            raise DataFormatError(f"{name}: expected an object with 'item_id' and text fields, got "
                                  f"{type(item).__name__}")
        raw = item.get("item_id")
        if isinstance(raw, bool) or not isinstance(raw, (str, int)) or not str(raw).strip():
            raise DataFormatError(f"{name}: 'item_id' must be a non-empty string (or integer), got {raw!r}")
        iid = str(raw)
        if iid in recommender.index:
            raise DataFormatError(f"{name}: item {iid!r} is already in the catalogue")
        if iid in first:
            raise DataFormatError(f"{name}: item {iid!r} appears twice (first at {first[iid]})")
        first[iid] = name
        ids.append(iid)
        texts.append(item_text_from_record(item, name, item_id=iid))
    return ids, texts


def _check_can_add(recommender: Any) -> None:
    """What adding needs from the recommender: a generative model, the encoder record, the quantizer."""
    if recommender.generative is None:
        raise CheckpointError("this recommender holds no generative model: added items could not be "
                              f"recommended by any of its models ({recommender.methods})")
    text = recommender.text or {}
    if text.get("precomputed"):
        raise CheckpointError(f"this recommender's item embeddings were precomputed (text.embeddings: "
                              f"{text['precomputed']}), not made by a text encoder, so there is no encoder to "
                              f"embed new items' text with; add them to the embeddings file and rerun the recipe")
    if not isinstance(text.get("encoder"), dict) or not isinstance(text.get("template"), dict):
        raise CheckpointError("this recommender has no record of the text encoder and template its items were "
                              "embedded with (a run's embed/summary.json), so new items cannot be embedded the "
                              "same way")
    qdir = recommender.quantize_dir
    if qdir is None or not (qdir / "quantizer.pt").is_file():
        missing = "it has no quantize directory" if qdir is None else f"{qdir / 'quantizer.pt'} is missing"
        raise CheckpointError(f"this recommender has no saved quantizer ({missing}), so new items cannot get "
                              f"semantic IDs; save it again from its run directory")
    if not recommender.table.disambiguated:
        raise CheckpointError("the semantic-ID table has no disambiguation level, so new items colliding "
                              "with existing ones could not get distinct IDs")


def _render(text: dict[str, Any], ids: list[str], items: list[Any], where: Sequence[str] | None) -> list[str]:
    """The items' texts exactly as the run's embed stage rendered its own (``quantize.item_texts``)."""
    from quantize import TextTemplate

    template = TextTemplate.from_dict(text["template"])
    fallback = text.get("fallback")
    out = []
    for n, (iid, item) in enumerate(zip(ids, items)):
        s = template.render(item)
        if not s and fallback is not None:
            s = fallback.format(item_id=iid)
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
    model that decodes them, and the training statistics over the larger catalogue."""

    table: Any  # quantize.SemanticIdTable
    generative: Any  # genrec.generative.HierarchicalGenerative
    stats: Any  # fusion.TrainStats


def extend_catalogue(table: Any, generative: Any, train_sequences: Sequence[np.ndarray], quantize_dir: str | Path,
                     embeddings: np.ndarray, ids: Sequence[str]) -> ExtendedCatalogue:
    """The core of :func:`add_items` on precomputed raw embeddings ``[m, d]`` of new items ``ids``:
    base codes from the frozen quantizer saved in ``quantize_dir`` (and its PCA, if any), the next
    free disambiguation codes (:meth:`quantize.SemanticIdTable.extend`), a generative model that
    decodes the new IDs (:func:`genrec.generative.with_new_items`) and training statistics where the
    new items have no count. Nothing given is changed. A quantizer that cannot encode the embeddings
    is a :class:`~genrec.errors.CheckpointError`."""
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
    new_generative = with_new_items(generative, new_table.codes, new_table.codebook_sizes)
    return ExtendedCatalogue(new_table, new_generative, TrainStats(train_sequences, new_table.num_items,
                                                                   new_table.codes))
