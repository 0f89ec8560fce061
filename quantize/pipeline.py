"""Dataset -> item texts -> embeddings -> (PCA) -> quantizer codes -> semantic-ID table + diagnostics."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from genrec.artifacts import load_json, save_json
from genrec.errors import CheckpointError
from genrec.data import SequenceDataset
from quantize.base import QUANTIZERS, Quantizer, as_embeddings, load_quantizer
from quantize.diagnostics import format_diagnostics, quantizer_diagnostics
from quantize.embed import TextEncoder
from quantize.preprocess import Preprocessor
from quantize.semantic_ids import SemanticIdTable
from quantize.text import TextTemplate, item_texts

log = logging.getLogger(__name__)

__all__ = ["make_quantizer", "embed_items", "build_semantic_ids", "SemanticIdResult", "METHODS", "encode_frozen",
           "encode_with_saved"]

_ALIASES = {"rqkmeans": "rq_kmeans", "rq_kmeans": "rq_kmeans", "rqvae": "rq_vae", "rq_vae": "rq_vae",
            "pq": "pq", "opq": "opq"}
#: Quantizer names accepted by :func:`make_quantizer`.
METHODS = ("rq_kmeans", "rq_vae", "pq", "opq")

TABLE_FILE = "semantic_ids.json"
DIAGNOSTICS_FILE = "diagnostics.json"
QUANTIZER_FILE = "quantizer.pt"
PREPROCESS_FILE = "preprocess.pt"


def make_quantizer(name: str, **cfg: Any) -> Quantizer:
    """A new, unfitted quantizer: ``name`` is one of :data:`METHODS` (``-`` and ``_`` alike),
    ``cfg`` its constructor arguments (e.g. ``levels``, ``codebook_size``, ``subspaces``, ``seed``)."""
    import quantize.pq  # noqa: F401  (registration of the quantizer classes)
    import quantize.rq_kmeans  # noqa: F401
    import quantize.rq_vae  # noqa: F401

    key = _ALIASES.get(name.lower().replace("-", "_"))
    if key is None:
        raise ValueError(f"unknown quantizer {name!r}; choose from {list(METHODS)}")
    klass = QUANTIZERS[key]
    try:
        return klass(**cfg)
    except TypeError as e:  # an unknown or misspelt option: a user error, reported as such
        raise ValueError(f"bad option for quantizer {key!r}: {e}") from None


def embed_items(dataset: SequenceDataset, encoder: TextEncoder | str | None = None,
                template: TextTemplate | None = None, fallback: str | None = None) -> np.ndarray:
    """Embeddings ``float32 [num_items, dim]`` of the dataset's item texts (cached on disk)."""
    enc = encoder if isinstance(encoder, TextEncoder) else TextEncoder(encoder)
    texts = item_texts(dataset, template, fallback)
    return enc.encode(texts, ids=dataset.item_ids)


@dataclass
class SemanticIdResult:
    """What :func:`build_semantic_ids` produces; ``encode_new`` handles items added later."""

    table: SemanticIdTable
    diagnostics: dict[str, Any]
    quantizer: Quantizer
    preprocessor: Preprocessor | None = None
    embeddings: np.ndarray | None = field(default=None, repr=False)  # raw item embeddings [n, d]

    def encode_new(self, embeddings: np.ndarray, ids: Sequence[str] | None = None) -> np.ndarray:
        """Quantizer codes ``[m, levels]`` for new items' raw embeddings (same preprocessing);
        ``table.extend(codes, ids)`` then gives them IDs without changing existing ones."""
        return encode_frozen(self.quantizer, self.preprocessor, embeddings, ids)

    def summary(self) -> str:
        return format_diagnostics(self.diagnostics)

    def save(self, out_dir: str | Path) -> dict[str, Path]:
        """Write table, diagnostics, quantizer (and preprocessor) into ``out_dir``."""
        out = Path(out_dir)
        # An earlier save's table and preprocessor go first: killed part-way, the directory must not
        # pair this quantizer with an earlier run's PCA or codes (the table, written last, marks a
        # complete save; without it the directory does not load).
        for stale in (TABLE_FILE, PREPROCESS_FILE):
            (out / stale).unlink(missing_ok=True)
        paths = {}
        if self.preprocessor is not None:
            paths["preprocess"] = self.preprocessor.save(out / PREPROCESS_FILE)
        paths["quantizer"] = self.quantizer.save(out / QUANTIZER_FILE)
        paths["diagnostics"] = save_json(out / DIAGNOSTICS_FILE, self.diagnostics)
        paths["table"] = self.table.save(out / TABLE_FILE)
        return paths

    @classmethod
    def load(cls, out_dir: str | Path) -> "SemanticIdResult":
        """Read what :meth:`save` wrote (embeddings are not saved: they live in the embedding cache)."""
        out = Path(out_dir)
        pre = Preprocessor.load(out / PREPROCESS_FILE) if (out / PREPROCESS_FILE).exists() else None
        return cls(SemanticIdTable.load(out / TABLE_FILE), load_json(out / DIAGNOSTICS_FILE),
                   load_quantizer(out / QUANTIZER_FILE), pre)


def encode_frozen(quantizer: Quantizer, preprocessor: Preprocessor | None, embeddings: np.ndarray,
                  ids: Sequence[str] | None = None) -> np.ndarray:
    """Base codes ``int64 [m, levels]`` of new raw embeddings under a fitted (frozen) quantizer and
    the preprocessing it was fitted after: nothing is refitted, so existing items keep their codes."""
    recorded = quantizer.fitted_after
    given = preprocessor.digest() if preprocessor is not None else ""
    if recorded is not None and recorded != given:  # e.g. preprocess.pt missing, or an earlier run's
        raise CheckpointError(f"the quantizer was fitted after preprocessing {recorded or '(none)'}, given "
                              f"{given or 'none'}: its preprocess.pt is missing or belongs to another fit")
    x = as_embeddings(embeddings, ids)
    if preprocessor is not None:
        x = preprocessor.transform(x, ids)
    return quantizer.encode(x, ids)


def encode_with_saved(directory: str | Path, embeddings: np.ndarray, ids: Sequence[str] | None = None) -> np.ndarray:
    """:func:`encode_frozen` with the quantizer (``quantizer.pt``) and, when present, the
    preprocessor (``preprocess.pt``) saved in ``directory`` (a run's ``quantize/`` or a saved
    recommender's); a missing or damaged quantizer file is a :class:`~genrec.errors.CheckpointError`."""
    d = Path(directory)
    pre = Preprocessor.load(d / PREPROCESS_FILE) if (d / PREPROCESS_FILE).is_file() else None
    return encode_frozen(load_quantizer(d / QUANTIZER_FILE), pre, embeddings, ids)


def build_semantic_ids(dataset: SequenceDataset, method: str = "rq_kmeans", *,
                       embeddings: np.ndarray | None = None, encoder: TextEncoder | str | None = None,
                       template: TextTemplate | None = None, fallback: str | None = None,
                       pca_dim: int | None = None, whiten: bool = False, seed: int = 0,
                       **quantizer_cfg: Any) -> SemanticIdResult:
    """Semantic IDs for every item of ``dataset``.

    Embeds the item texts (``template``, ``fallback`` as in :func:`quantize.text.item_texts`; the
    default bundled MiniLM ``encoder`` unless given) unless ``embeddings [num_items, d]`` are passed,
    optionally applies PCA to ``pca_dim`` / whitening, fits the ``method`` quantizer
    (``quantizer_cfg`` are its options), disambiguates collisions and computes diagnostics.
    """
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    quantizer = make_quantizer(method, seed=seed, **quantizer_cfg)  # fail on bad options before embedding
    template = template or TextTemplate()
    enc_config: dict[str, Any] | None = None
    if embeddings is None:
        enc = encoder if isinstance(encoder, TextEncoder) else TextEncoder(encoder)
        enc_config = enc.config()
        x = embed_items(dataset, enc, template, fallback)
        timings["embed"] = time.perf_counter() - t0
    else:
        x = as_embeddings(embeddings, dataset.item_ids)
        if len(x) != dataset.num_items:
            raise ValueError(f"{len(x)} embeddings for {dataset.num_items} items")
    pre: Preprocessor | None = None
    xq = x
    if pca_dim is not None or whiten:
        t = time.perf_counter()
        pre = Preprocessor(pca_dim, whiten, seed)
        xq = pre.fit_transform(x, dataset.item_ids)
        timings["preprocess"] = time.perf_counter() - t
        log.info("PCA to %d dims (whiten=%s) keeps %.1f%% of the variance", xq.shape[1], whiten,
                 100 * (pre.explained_variance_ratio or 0))
    t = time.perf_counter()
    codes = quantizer.fit(xq, dataset.item_ids)
    quantizer.fitted_after = pre.digest() if pre is not None else ""  # saved with it: a pair is checked on use
    timings["quantize"] = time.perf_counter() - t
    config = {"dataset": dataset.name, "method": quantizer.name, "quantizer": quantizer.config(),
              "encoder": enc_config, "template": template.to_dict() if embeddings is None else None,
              "fallback": fallback, "preprocess": pre.config() if pre else None, "seed": seed}
    table = SemanticIdTable.from_codes(codes, quantizer.codebook_sizes, dataset.item_ids, config)
    diag = quantizer_diagnostics(quantizer, xq, codes)
    diag["dataset"] = dataset.name
    diag["embedding"] = {"dim": int(x.shape[1]), "quantized_dim": int(xq.shape[1]), "encoder": enc_config,
                         "pca_explained_variance": pre.explained_variance_ratio if pre else None}
    diag["semantic_ids"] = {"num_items": table.num_items, "num_levels": table.num_levels,
                            "codebook_sizes": list(table.codebook_sizes),
                            "all_unique": len({tuple(r) for r in table.codes.tolist()}) == table.num_items}
    timings["total"] = time.perf_counter() - t0
    diag["timings_s"] = timings
    log.info("semantic IDs for %s: %s %s, %.2f%% of items in colliding tuples (largest group %d), fit %.1fs",
             dataset.name, quantizer.name, "x".join(map(str, quantizer.codebook_sizes)),
             100 * diag["collisions"]["colliding_share"], diag["collisions"]["largest_group"], timings["quantize"])
    return SemanticIdResult(table, diag, quantizer, pre, x)
