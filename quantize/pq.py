"""Product quantization (PQ) and optimised PQ (OPQ).

PQ splits the ``d`` dimensions into ``subspaces`` contiguous blocks and runs k-means (faiss) in
each, so an item's code at level ``m`` is its nearest centroid in block ``m``. OPQ first applies a
learnt rotation (faiss ``OPQMatrix``) that balances variance across blocks. Levels of PQ are
parallel, not coarse-to-fine: there is no prefix reconstruction.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Sequence

import numpy as np
from tqdm.auto import tqdm

from quantize.base import (Quantizer, as_embeddings, check_centroids, check_positive_ints, effective_k,
                           faiss_threading, kmeans, nearest)

log = logging.getLogger(__name__)

__all__ = ["PQ", "OPQ"]


class PQ(Quantizer):
    """Product quantizer with ``subspaces`` blocks of ``codebook_size`` codes (default 4 x 256).

    ``d`` need not divide evenly: the first ``d % subspaces`` blocks get one dimension more.
    """

    name = "pq"

    def __init__(self, subspaces: int = 4, codebook_size: int = 256, niter: int = 20,
                 max_points_per_centroid: int = 256, seed: int = 0) -> None:
        super().__init__(seed)
        # integers only: subspaces=2.9 became 2 sub-spaces, codebook_size=True a codebook of 1
        check_positive_ints(subspaces=subspaces, codebook_size=codebook_size, niter=niter,
                            max_points_per_centroid=max_points_per_centroid)
        self.subspaces = int(subspaces)
        self.codebook_size = int(codebook_size)
        self.niter = int(niter)
        self.max_points_per_centroid = int(max_points_per_centroid)
        self.centroids: list[np.ndarray] = []  # per sub-space, float32 [k, d_m]

    def config(self) -> dict[str, Any]:
        return {"subspaces": self.subspaces, "codebook_size": self.codebook_size, "niter": self.niter,
                "max_points_per_centroid": self.max_points_per_centroid, "seed": self.seed}

    def _bounds(self, d: int) -> list[tuple[int, int]]:
        if self.subspaces > d:
            raise ValueError(f"{self.name}: {self.subspaces} sub-spaces for {d}-d embeddings")
        edges = np.cumsum([0] + [len(a) for a in np.array_split(np.arange(d), self.subspaces)])
        return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]

    def _fit_blocks(self, x: np.ndarray) -> np.ndarray:
        """k-means per block of (possibly rotated) ``x [n, d]``; returns codes ``[n, subspaces]``."""
        n, d = x.shape
        k = effective_k(self.codebook_size, n, self.name)
        codes = np.empty((n, self.subspaces), dtype=np.int64)
        self.centroids = []
        # disable=None: a bar on a terminal only, never in logs or pipes
        blocks = tqdm(self._bounds(d), desc=f"{self.name} sub-spaces", leave=False, disable=None)
        for m, (a, b) in enumerate(blocks):
            block = np.ascontiguousarray(x[:, a:b])
            c = kmeans(block, k, seed=self.seed + m, niter=self.niter,
                       max_points_per_centroid=self.max_points_per_centroid)
            codes[:, m] = nearest(block, c)
            self.centroids.append(c)
        self._sizes = (k,) * self.subspaces
        return codes

    def _transform(self, x: np.ndarray) -> np.ndarray:
        return x

    def _inverse(self, x: np.ndarray) -> np.ndarray:
        return x

    def fit(self, embeddings: np.ndarray, ids: Sequence[str] | None = None) -> np.ndarray:
        self.dim = self._sizes = None  # unfitted until every block is: a failed refit encodes nothing
        self.fitted_after = None  # a refit's preprocessing is its caller's to record (build_semantic_ids does)
        x = as_embeddings(embeddings, ids)
        self._bounds(x.shape[1])  # validate before any training
        codes = self._fit_blocks(x)
        self.dim = x.shape[1]
        return codes

    def _encode(self, x: np.ndarray) -> np.ndarray:
        xr = self._transform(x)
        codes = np.empty((len(x), self.subspaces), dtype=np.int64)
        for m, ((a, b), c) in enumerate(zip(self._bounds(xr.shape[1]), self.centroids)):
            codes[:, m] = nearest(np.ascontiguousarray(xr[:, a:b]), c)
        return codes

    def _decode(self, codes: np.ndarray, levels: int) -> np.ndarray:
        parts = [self.centroids[m][codes[:, m]] for m in range(self.subspaces)]  # each [n, d_m]
        return self._inverse(np.concatenate(parts, axis=1)).astype(np.float32, copy=False)

    def _state(self) -> dict[str, Any]:
        return {"centroids": [c.copy() for c in self.centroids]}

    def _set_state(self, state: dict[str, Any]) -> None:
        self.centroids = [np.ascontiguousarray(c, dtype=np.float32) for c in state["centroids"]]
        check_centroids(self.centroids, [(k, b - a) for k, (a, b) in zip(self.codebook_sizes, self._bounds(self.dim))])


class OPQ(PQ):
    """PQ after a learnt orthogonal rotation (faiss ``OPQMatrix``, ``opq_iters`` alternations).

    Needs ``d`` divisible by ``subspaces`` (a faiss constraint); reduce ``d`` with PCA otherwise.
    """

    name = "opq"

    def __init__(self, subspaces: int = 4, codebook_size: int = 256, niter: int = 20,
                 max_points_per_centroid: int = 256, opq_iters: int = 25, seed: int = 0) -> None:
        super().__init__(subspaces, codebook_size, niter, max_points_per_centroid, seed)
        check_positive_ints(opq_iters=opq_iters)
        self.opq_iters = int(opq_iters)
        self.rotation: np.ndarray | None = None  # float32 [d, d], rows orthonormal: x_rot = x @ R.T

    def config(self) -> dict[str, Any]:
        return {**super().config(), "opq_iters": self.opq_iters}

    def fit(self, embeddings: np.ndarray, ids: Sequence[str] | None = None) -> np.ndarray:
        import faiss

        self.dim = self._sizes = self.rotation = None  # unfitted until the end (a failed refit encodes nothing)
        self.fitted_after = None  # a refit's preprocessing is its caller's to record
        x = as_embeddings(embeddings, ids)
        n, d = x.shape
        if d % self.subspaces:
            raise ValueError(f"opq: dimension {d} is not divisible by {self.subspaces} sub-spaces "
                             f"(use pq, or PCA to a multiple of {self.subspaces})")
        if n < 2:  # the rotation's PQ has at least 2 codes (1 bit) to fit
            raise ValueError(f"opq: learning a rotation needs at least 2 training vectors, got {n} (use pq)")
        if n < d:  # faiss aborts the process (not an exception) when learning the rotation from n < d points
            raise ValueError(f"opq: learning a {d}x{d} rotation needs at least {d} training vectors, got {n} "
                             f"(use pq, or PCA to fewer dimensions)")
        k = effective_k(self.codebook_size, n, "opq rotation")
        opq = faiss.OPQMatrix(d, self.subspaces)
        opq.niter = self.opq_iters
        opq.verbose = False
        # The PQ used while learning the rotation: power-of-two size closest to k (a faiss
        # constraint), at most 8 bits (enough to shape the rotation), seeded for determinism.
        nbits = max(1, min(8, int(math.floor(math.log2(k)))))
        pq = faiss.ProductQuantizer(d, self.subspaces, nbits)
        pq.cp.seed = self.seed
        pq.cp.min_points_per_centroid = 1  # no faiss stderr warning on small sets
        opq.pq = pq
        log.info("opq: learning rotation (%d iterations, %d x %d-bit PQ) on %d vectors",
                 self.opq_iters, self.subspaces, nbits, n)
        with faiss_threading(1):  # the rotation depends on the thread count (38 of 2,000 codes moved at 2)
            opq.train(x)
        self._opq_pq = pq  # keep the Python owner alive as long as opq may point at it
        self.rotation = faiss.vector_to_array(opq.A).reshape(d, d).astype(np.float32)
        codes = self._fit_blocks(self._transform(x))
        self.dim = d
        return codes

    def _transform(self, x: np.ndarray) -> np.ndarray:
        assert self.rotation is not None
        return np.ascontiguousarray(x @ self.rotation.T, dtype=np.float32)

    def _inverse(self, x: np.ndarray) -> np.ndarray:
        assert self.rotation is not None
        return x @ self.rotation  # orthonormal rotation: its transpose is its inverse

    def _state(self) -> dict[str, Any]:
        return {**super()._state(), "rotation": self.rotation}

    def _set_state(self, state: dict[str, Any]) -> None:
        super()._set_state(state)
        self.rotation = np.ascontiguousarray(state["rotation"], dtype=np.float32)
        if self.rotation.shape != (self.dim, self.dim):
            raise ValueError(f"the rotation is {list(self.rotation.shape)}, not [{self.dim}, {self.dim}]")
