"""The interface every quantizer implements, and helpers they share.

A quantizer maps embeddings ``float32 [n, d]`` to codes ``int64 [n, levels]`` where code ``l`` lies
in ``[0, codebook_sizes[l])``. ``fit`` learns the codebooks and returns the training items' codes,
``encode`` maps new items (cold start) with the learnt codebooks, ``decode`` reconstructs vectors.
"""

from __future__ import annotations

import logging
import os
from abc import ABC, abstractmethod
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar, Iterator, Sequence

import numpy as np

from genrec.artifacts import load_checkpoint, pack_arrays, torch_save, unpack_arrays
from genrec.errors import CheckpointError

log = logging.getLogger(__name__)

__all__ = ["Quantizer", "as_embeddings", "kmeans", "nearest", "load_quantizer", "faiss_threads", "QUANTIZERS",
           "check_centroids", "check_positive_ints", "check_nonnegative_ints"]

#: name -> class, filled by each quantizer module on import (see :func:`quantize.make_quantizer`).
QUANTIZERS: dict[str, type["Quantizer"]] = {}

_FORMAT = "genrec.quantizer/1"


def as_embeddings(x: Any, ids: Sequence[str] | None = None, dim: int | None = None,
                  what: str = "embeddings", fitted: str = "quantizer") -> np.ndarray:
    """Validate and convert to C-contiguous float32 ``[n, d]``; NaN/inf rows are an error naming the
    item (by ``ids`` when given, else by row number), and so are values beyond float32's range.
    ``fitted`` names the object whose dimension ``dim`` is, for the error on a mismatch."""
    from quantize.embed import check_finite

    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu()
        if x.is_floating_point() and x.element_size() < 4:  # bfloat16 (and float8) have no numpy dtype
            x = x.float()  # exact for every half-precision value
        x = x.numpy()
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{what} must be a non-empty 2-d array [n_items, dim], got shape {x.shape}")
    if x.dtype.kind not in "iuf":  # complex would lose its imaginary part in the cast, silently
        raise ValueError(f"{what} must be numeric (integer or real floating-point), got dtype {x.dtype}")
    if ids is not None and len(ids) != x.shape[0]:
        raise ValueError(f"{len(ids)} ids for {x.shape[0]} {what} rows")
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"{what} have dimension {x.shape[1]}, the {fitted} was fitted on {dim}")
    check_finite(x, ids, what="embedding")  # before the cast, which turns float64 values past float32's range to inf
    if x.dtype == np.float32:
        return np.ascontiguousarray(x)
    with np.errstate(over="ignore"):  # reported below, by item
        y = np.ascontiguousarray(x, dtype=np.float32)
    over = np.flatnonzero(~np.isfinite(y).all(axis=1))
    if len(over):
        names = [repr(ids[i]) if ids is not None else f"#{i}" for i in over[:20]]
        raise ValueError(f"{len(over)} embedding(s) hold values beyond the float32 range (|v| > 3.4e38): items "
                         + ", ".join(names) + (" ..." if len(over) > 20 else ""))
    return y


def faiss_threads() -> int:
    """OpenMP threads for faiss calls made by the quantizers: ``$GENREC_FAISS_THREADS``, default 1.

    One thread is the default because on shared or busy cores OpenMP's spin-waiting made
    multi-threaded faiss 3-7x *slower* in our measurements (k-means 3x256 on 12k x 384: 3 s with
    1 thread vs 13 s with 2); results are identical for any thread count. Raise it on idle
    many-core machines with large item sets.
    """
    raw = os.environ.get("GENREC_FAISS_THREADS", "1")
    try:
        n = int(raw)
    except ValueError:
        raise ValueError(f"GENREC_FAISS_THREADS must be an integer, got {raw!r}") from None
    return max(1, n)


@contextmanager
def faiss_threading(threads: int | None = None) -> Iterator[None]:
    """Run faiss with ``threads`` (default :func:`faiss_threads`) threads, restoring the process
    setting afterwards."""
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(threads or faiss_threads())
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def effective_k(k: int, n: int, what: str) -> int:
    """Codebook size usable with ``n`` training points: k-means needs at least ``k`` points, so a
    larger ``k`` is reduced to ``n`` with a warning (the reduced size is what the codes use)."""
    if k < 1:
        raise ValueError(f"{what}: codebook size must be >= 1, got {k}")
    if n < k:
        log.warning("%s: only %d training vectors for %d codes; using a codebook of %d", what, n, k, n)
        return n
    return k


def check_positive_ints(**settings: Any) -> None:
    """ValueError naming the setting unless each is an integer >= 1 (faiss aborts or trains nothing
    on such k-means settings; a float such as 2.9 was truncated, a bool taken as 0 or 1)."""
    _check_ints(settings, 1)


def check_nonnegative_ints(**settings: Any) -> None:
    """ValueError naming the setting unless each is an integer >= 0."""
    _check_ints(settings, 0)


def _check_ints(settings: dict[str, Any], minimum: int) -> None:
    for key, value in settings.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
            raise ValueError(f"{key} must be an integer >= {minimum}, got {value!r}")


def kmeans(x: np.ndarray, k: int, *, seed: int, niter: int = 20, max_points_per_centroid: int = 256,
           spherical: bool = False) -> np.ndarray:
    """faiss k-means centroids ``float32 [k, d]`` of ``x [n, d]`` (``n >= k``), deterministic for ``seed``."""
    import faiss

    n, d = x.shape
    if n < k:
        raise ValueError(f"k-means needs at least k={k} points, got {n}")
    # min_points_per_centroid=1 keeps faiss from printing its "please provide more points" warning
    # (library code does not print); the caller decides what codebook sizes are sensible.
    extra = {}
    if hasattr(faiss, "ClusteringInitMethod_KMEANS_PLUS_PLUS"):  # recent faiss: k-means++ seeding,
        # which finds well-separated groups far more reliably than random initial centroids
        extra["init_method"] = faiss.ClusteringInitMethod_KMEANS_PLUS_PLUS
    # faiss takes a C int: seed + level (or sub-space) past 2**31 - 1 overflowed; small seeds are unchanged
    km = faiss.Kmeans(d, k, niter=niter, seed=seed % 2**31, verbose=False, spherical=spherical,
                      min_points_per_centroid=1, max_points_per_centroid=max_points_per_centroid, **extra)
    with faiss_threading():
        km.train(np.ascontiguousarray(x, dtype=np.float32))
    return np.ascontiguousarray(km.centroids, dtype=np.float32)


def nearest(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index of the nearest centroid (L2) for each row, ``int64 [n]``; ties go to the lower index."""
    import faiss

    index = faiss.IndexFlatL2(centroids.shape[1])
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    with faiss_threading():
        _, idx = index.search(np.ascontiguousarray(x, dtype=np.float32), 1)
    return idx[:, 0].astype(np.int64)


class Quantizer(ABC):
    """Embeddings -> tuples of discrete codes. Subclasses set ``name`` and implement the methods."""

    name: ClassVar[str] = ""

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        if cls.name:
            QUANTIZERS[cls.name] = cls

    def __init__(self, seed: int = 0) -> None:
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
        self.seed = int(seed)
        self.dim: int | None = None
        self._sizes: tuple[int, ...] | None = None
        #: :meth:`quantize.Preprocessor.digest` of the preprocessing it was fitted after ("" for none;
        #: None: not recorded, a quantizer saved before the record)
        self.fitted_after: str | None = None

    # -- interface ---------------------------------------------------------------------------
    @abstractmethod
    def fit(self, embeddings: np.ndarray, ids: Sequence[str] | None = None) -> np.ndarray:
        """Learn codebooks on ``[n, d]`` embeddings; return their codes ``int64 [n, levels]``."""

    @abstractmethod
    def _encode(self, x: np.ndarray) -> np.ndarray: ...

    @abstractmethod
    def _decode(self, codes: np.ndarray, levels: int) -> np.ndarray: ...

    @abstractmethod
    def config(self) -> dict[str, Any]:
        """Constructor arguments (JSON-serialisable) that rebuild an unfitted copy."""

    @abstractmethod
    def _state(self) -> dict[str, Any]: ...

    @abstractmethod
    def _set_state(self, state: dict[str, Any]) -> None: ...

    # -- shared behaviour ----------------------------------------------------------------------
    @property
    def fitted(self) -> bool:
        return self._sizes is not None

    @property
    def codebook_sizes(self) -> tuple[int, ...]:
        """Number of codes at each level (after any reduction for small training sets)."""
        if self._sizes is None:
            raise RuntimeError(f"{type(self).__name__} is not fitted")
        return self._sizes

    @property
    def levels(self) -> int:
        return len(self.codebook_sizes)

    def encode(self, embeddings: np.ndarray, ids: Sequence[str] | None = None) -> np.ndarray:
        """Codes ``int64 [n, levels]`` for new embeddings with the fitted codebooks (cold start)."""
        if not self.fitted:
            raise RuntimeError(f"{type(self).__name__} is not fitted; call fit() first")
        x = as_embeddings(embeddings, ids, dim=self.dim)
        return self._encode(x)

    def check_codes(self, codes: Any, levels: int | None = None) -> np.ndarray:
        """``codes`` as int64 ``[n, levels]`` (default all levels), each within its codebook."""
        sizes = self.codebook_sizes
        levels = len(sizes) if levels is None else levels
        c = np.asarray(codes)
        if c.ndim != 2 or c.shape[1] < levels or not np.issubdtype(c.dtype, np.integer):
            raise ValueError(f"codes must be an integer array [n, >={levels}], got {c.dtype} {c.shape}")
        c = c[:, :levels].astype(np.int64)
        for level in range(levels):
            bad = np.flatnonzero((c[:, level] < 0) | (c[:, level] >= sizes[level]))
            if len(bad):
                raise ValueError(f"code {int(c[bad[0], level])} at level {level} (row {int(bad[0])}) is "
                                 f"outside the codebook of {sizes[level]}")
        return c

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """Reconstructed vectors ``float32 [n, d]`` for codes ``[n, levels]``."""
        return self._decode(self.check_codes(codes), self.levels)

    def decode_prefix(self, codes: np.ndarray, levels: int) -> np.ndarray:
        """Reconstruction from the first ``levels`` codes only; defined for residual quantizers
        (where it shows how much each level adds)."""
        if not self.residual:
            raise TypeError(f"{type(self).__name__} has no meaningful prefix reconstruction")
        if not 0 <= levels <= self.levels:
            raise ValueError(f"levels must be in [0, {self.levels}], got {levels}")
        return self._decode(self.check_codes(codes, levels), levels)

    @property
    def residual(self) -> bool:
        """Whether later levels refine earlier ones (so :meth:`decode_prefix` is defined)."""
        return False

    def save(self, path: str | Path) -> Path:
        """Write config and learnt state to one file (atomically)."""
        if not self.fitted:
            raise RuntimeError(f"{type(self).__name__} is not fitted; nothing to save")
        # numpy arrays as tagged tensors, numpy scalars as numbers: loadable with weights_only=True
        return torch_save(path, pack_arrays({"format": _FORMAT, "name": self.name, "config": self.config(),
                                             "dim": self.dim, "codebook_sizes": list(self.codebook_sizes),
                                             "fitted_after": self.fitted_after, "state": self._state()}))

    @classmethod
    def load(cls, path: str | Path) -> "Quantizer":
        """Read a quantizer written by :meth:`save` (any subclass when called on ``Quantizer``)."""
        blob = unpack_arrays(load_checkpoint(path, kind="quantizer file"))
        if blob.get("format") != _FORMAT:
            raise CheckpointError(f"{path}: not a genrec quantizer file")
        name = blob.get("name")
        if not isinstance(name, str):  # a list is unhashable: a bare TypeError from the lookup
            raise CheckpointError(f"{path}: the quantizer name must be a string, got {type(name).__name__} {name!r}")
        klass = QUANTIZERS.get(name)
        if klass is None:
            raise CheckpointError(f"{path}: unknown quantizer {blob.get('name')!r}")
        if cls is not Quantizer and not issubclass(klass, cls):
            raise CheckpointError(f"{path}: holds a {blob['name']!r} quantizer, not {cls.name!r}")
        try:  # a file of the right format whose content does not fit (edited, or another genrec version)
            q = klass(**blob["config"])
            dim, sizes = blob["dim"], blob["codebook_sizes"]
            check_positive_ints(dim=dim)  # a float dim built modules and bounds from a truncated or broken size
            if not isinstance(sizes, (list, tuple)):
                raise TypeError(f"codebook_sizes must be a list, got {type(sizes).__name__}")
            check_positive_ints(**{f"codebook_sizes[{i}]": s for i, s in enumerate(sizes)})
            q.dim = int(dim)
            q._sizes = tuple(int(s) for s in sizes)
            q._set_state(blob["state"])
            after = blob.get("fitted_after")  # absent: a file from before the record
            if after is not None and not isinstance(after, str):
                raise TypeError(f"fitted_after must be a string or null, got {type(after).__name__}")
            q.fitted_after = after
        except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, AssertionError) as e:
            raise CheckpointError(f"{path}: a damaged or incompatible {blob['name']!r} quantizer file "
                                  f"({type(e).__name__}: {e})") from None
        return q

    def __repr__(self) -> str:
        cfg = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({cfg})"


def check_centroids(centroids: Sequence[np.ndarray], shapes: Sequence[tuple[int, int]]) -> None:
    """``ValueError`` unless there is one centroid array per level / sub-space with the expected shape
    (a loaded state must fit the file's codebook sizes and dimension, or encode returns garbage)."""
    if len(centroids) != len(shapes):
        raise ValueError(f"{len(centroids)} centroid arrays for {len(shapes)} codebooks")
    for level, (c, shape) in enumerate(zip(centroids, shapes)):
        if c.shape != tuple(shape):
            raise ValueError(f"codebook {level}'s centroids are {list(c.shape)}, not {list(shape)}")


def load_quantizer(path: str | Path) -> Quantizer:
    """Load any saved quantizer."""
    import quantize  # noqa: F401  (registers all quantizer classes)

    return Quantizer.load(path)
