"""Residual k-means (RQ-KMeans): k-means on the embeddings, then on what the first level leaves
unexplained, and so on; each level's code is the index of the nearest centroid (faiss)."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any, Sequence

import numpy as np
from tqdm.auto import tqdm

from quantize.base import (Quantizer, as_embeddings, check_centroids, check_positive_ints, effective_k, kmeans,
                           nearest)

log = logging.getLogger(__name__)

__all__ = ["RQKMeans", "level_sizes"]


def level_sizes(levels: int, codebook_size: int | Sequence[int]) -> tuple[int, ...]:
    """One codebook size per level from an int (same for all) or a per-level list."""
    # integers only: levels=2.9 became 2 levels, codebook_size=True a codebook of 1, "256" the sizes 2, 5, 6
    check_positive_ints(levels=levels)
    if isinstance(codebook_size, (int, np.integer)):  # a bool too: refused by the check
        check_positive_ints(codebook_size=codebook_size)
        return (int(codebook_size),) * int(levels)
    if isinstance(codebook_size, (str, bytes)) or not isinstance(codebook_size, Iterable):
        raise ValueError(f"codebook_size must be an integer >= 1 or a list of them (one per level), "
                         f"got {codebook_size!r}")
    sizes = list(codebook_size)
    if len(sizes) != levels:
        raise ValueError(f"{len(sizes)} codebook sizes given for {levels} levels")
    check_positive_ints(**{f"codebook_size[{lv}]": s for lv, s in enumerate(sizes)})
    return tuple(int(s) for s in sizes)


class RQKMeans(Quantizer):
    """Residual k-means with ``levels`` codebooks of ``codebook_size`` codes (default 3 x 256).

    ``niter`` Lloyd iterations per level; at most ``max_points_per_centroid`` points per centroid
    are sampled for training (faiss's default), all items are then encoded.
    """

    name = "rq_kmeans"

    def __init__(self, levels: int = 3, codebook_size: int | Sequence[int] = 256, niter: int = 20,
                 max_points_per_centroid: int = 256, seed: int = 0) -> None:
        super().__init__(seed)
        self.requested_sizes = level_sizes(levels, codebook_size)
        check_positive_ints(niter=niter, max_points_per_centroid=max_points_per_centroid)
        self.niter = int(niter)
        self.max_points_per_centroid = int(max_points_per_centroid)
        self.centroids: list[np.ndarray] = []  # per level, float32 [k_l, d]

    def config(self) -> dict[str, Any]:
        return {"levels": len(self.requested_sizes), "codebook_size": list(self.requested_sizes),
                "niter": self.niter, "max_points_per_centroid": self.max_points_per_centroid, "seed": self.seed}

    @property
    def residual(self) -> bool:
        return True

    def fit(self, embeddings: np.ndarray, ids: Sequence[str] | None = None) -> np.ndarray:
        self.dim = self._sizes = None  # unfitted until every level is: an interrupted refit encodes nothing
        self.fitted_after = None  # a refit's preprocessing is its caller's to record (build_semantic_ids does)
        x = as_embeddings(embeddings, ids)
        n, d = x.shape
        residual = x.copy()  # [n, d], what the levels so far leave unexplained
        codes = np.empty((n, len(self.requested_sizes)), dtype=np.int64)
        self.centroids, sizes = [], []
        # disable=None: a bar on a terminal only, never in logs or pipes
        levels = tqdm(self.requested_sizes, desc="rq-kmeans levels", leave=False, disable=None)
        for level, k in enumerate(levels):
            k = effective_k(k, n, f"rq_kmeans level {level}")
            c = kmeans(residual, k, seed=self.seed + level, niter=self.niter,
                       max_points_per_centroid=self.max_points_per_centroid)
            codes[:, level] = nearest(residual, c)
            residual -= c[codes[:, level]]
            self.centroids.append(c)
            sizes.append(k)
            log.debug("rq_kmeans level %d: k=%d, residual MSE %.6f", level, k,
                      float((residual ** 2).sum(1).mean()))
        self.dim, self._sizes = d, tuple(sizes)
        return codes

    def _encode(self, x: np.ndarray) -> np.ndarray:
        residual = x.copy()
        codes = np.empty((len(x), self.levels), dtype=np.int64)
        for level, c in enumerate(self.centroids):
            codes[:, level] = nearest(residual, c)
            residual -= c[codes[:, level]]
        return codes

    def _decode(self, codes: np.ndarray, levels: int) -> np.ndarray:
        out = np.zeros((len(codes), self.dim or 0), dtype=np.float32)
        for level in range(levels):
            out += self.centroids[level][codes[:, level]]
        return out

    def _state(self) -> dict[str, Any]:
        return {"centroids": [c.copy() for c in self.centroids]}

    def _set_state(self, state: dict[str, Any]) -> None:
        self.centroids = [np.ascontiguousarray(c, dtype=np.float32) for c in state["centroids"]]
        check_centroids(self.centroids, [(k, self.dim) for k in self.codebook_sizes])
