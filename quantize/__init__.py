"""Semantic IDs: item text -> sentence embedding -> short tuple of discrete codes.

Typical use::

    from quantize import build_semantic_ids
    result = build_semantic_ids(dataset, method="rq_kmeans")   # or "rq_vae", "pq", "opq"
    result.table.codes          # int64 [n_items, levels + 1], unique per item
    result.save("out/")         # semantic_ids.json, diagnostics.json, quantizer.pt

Quantizers share one interface (:class:`Quantizer`): ``fit(x) -> codes``, ``encode(x)`` for new
items, ``decode(codes)``, ``save``/``load``; all are deterministic for a seed.
"""

import logging

from quantize.base import Quantizer, load_quantizer
from quantize.diagnostics import (codebook_usage, collision_stats, format_diagnostics, quantizer_diagnostics,
                                  reconstruction_error)
from quantize.embed import DEFAULT_MODEL, EmbeddingCache, TextEncoder, default_cache_dir
from quantize.pipeline import (METHODS, SemanticIdResult, build_semantic_ids, embed_items, encode_frozen,
                               encode_with_saved, make_quantizer)
from quantize.pq import OPQ, PQ
from quantize.preprocess import Preprocessor
from quantize.rq_kmeans import RQKMeans
from quantize.rq_vae import RQVAE
from quantize.semantic_ids import SemanticIdTable, disambiguate
from quantize.text import DEFAULT_TEMPLATE, TextTemplate, item_text, item_texts

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "Quantizer", "RQKMeans", "RQVAE", "PQ", "OPQ", "make_quantizer", "load_quantizer", "METHODS",
    "TextTemplate", "DEFAULT_TEMPLATE", "item_text", "item_texts",
    "TextEncoder", "EmbeddingCache", "DEFAULT_MODEL", "default_cache_dir",
    "Preprocessor", "SemanticIdTable", "disambiguate",
    "codebook_usage", "collision_stats", "reconstruction_error", "quantizer_diagnostics", "format_diagnostics",
    "build_semantic_ids", "embed_items", "SemanticIdResult", "encode_frozen", "encode_with_saved",
]
