"""Optional PCA / whitening of embeddings before quantization (scikit-learn PCA).

Reducing dimension speeds up the quantizers; whitening gives every direction unit variance, so
k-means spends its codes on all directions rather than the few dominant ones.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from genrec.artifacts import load_checkpoint, pack_arrays, torch_save, unpack_arrays
from genrec.errors import CheckpointError
from quantize.base import as_embeddings, check_positive_ints

__all__ = ["Preprocessor"]

_FORMAT = "genrec.preprocess/1"


class Preprocessor:
    """``x -> (x - mean) @ components.T`` (``[n, pca_dim]``), divided by the per-component standard
    deviation when ``whiten``. ``pca_dim=None`` keeps all dimensions (a rotation, or full whitening)."""

    def __init__(self, pca_dim: int | None = None, whiten: bool = False, seed: int = 0) -> None:
        if pca_dim is not None:  # "8" gave a bare TypeError, True was taken as 1 and kept as True
            check_positive_ints(pca_dim=pca_dim)
            pca_dim = int(pca_dim)
        self.pca_dim = pca_dim
        self.whiten = bool(whiten)
        self.seed = int(seed)
        self.mean: np.ndarray | None = None  # [d]
        self.components: np.ndarray | None = None  # [k, d], orthonormal rows
        self.scale: np.ndarray | None = None  # [k], 1 without whitening
        self.explained_variance_ratio: float | None = None

    @property
    def active(self) -> bool:
        return self.pca_dim is not None or self.whiten

    def config(self) -> dict[str, Any]:
        return {"pca_dim": self.pca_dim, "whiten": self.whiten, "seed": self.seed}

    def fit_transform(self, embeddings: np.ndarray, ids: Sequence[str] | None = None) -> np.ndarray:
        from sklearn.decomposition import PCA

        x = as_embeddings(embeddings, ids)
        n, d = x.shape
        k = min(self.pca_dim or d, d, n)
        if self.pca_dim is not None and k < self.pca_dim:
            raise ValueError(f"pca_dim={self.pca_dim} exceeds min(n_items={n}, dim={d})")
        with np.errstate(invalid="ignore", divide="ignore"):  # no variance: sklearn divides 0 by 0 (see below)
            pca = PCA(n_components=k, svd_solver="full", random_state=self.seed).fit(x)
        self.mean = pca.mean_.astype(np.float32)
        self.components = pca.components_.astype(np.float32)
        var = pca.explained_variance_.astype(np.float32)
        if self.whiten:
            if n < 2 or not np.isfinite(var).all():  # one item: no variance to whiten by (sklearn's is NaN)
                raise ValueError(f"whitening needs at least 2 items with different embeddings, got {n}; "
                                 "turn whiten off")
            if (var <= 1e-12 * max(float(var.max()), 1e-30)).any():
                raise ValueError("whitening: some principal directions have (near) zero variance; "
                                 "set pca_dim below the data's rank")
            self.scale = np.sqrt(var)
        else:
            self.scale = np.ones(k, np.float32)
        # data without variance (one item, identical rows): every direction keeps all of it (none)
        total = float(np.var(x, axis=0, ddof=1).sum()) if n > 1 else 0.0
        self.explained_variance_ratio = float(pca.explained_variance_ratio_.sum()) if total > 0 else 1.0
        return self.transform(x)

    def transform(self, embeddings: np.ndarray, ids: Sequence[str] | None = None) -> np.ndarray:
        """Apply the fitted projection; float32 ``[n, k]``."""
        if self.components is None:
            raise RuntimeError("Preprocessor is not fitted")
        x = as_embeddings(embeddings, ids, dim=self.components.shape[1], fitted="preprocessor")
        return np.ascontiguousarray(((x - self.mean) @ self.components.T) / self.scale, dtype=np.float32)

    def inverse_transform(self, z: np.ndarray) -> np.ndarray:
        """Back to the embedding space (lossy when ``pca_dim`` < d)."""
        if self.components is None or self.mean is None or self.scale is None:
            raise RuntimeError("Preprocessor is not fitted; call fit_transform() first")
        return (np.asarray(z, dtype=np.float32) * self.scale) @ self.components + self.mean

    def save(self, path: str | Path) -> Path:
        if self.components is None:  # its file would hold no projection, and not load
            raise RuntimeError("Preprocessor is not fitted; nothing to save")
        # numpy arrays as tagged tensors: loadable with weights_only=True
        return torch_save(path, pack_arrays({"format": _FORMAT, "config": self.config(), "mean": self.mean,
                                             "components": self.components, "scale": self.scale,
                                             "explained_variance_ratio": self.explained_variance_ratio}))

    def digest(self) -> str:
        """A digest of the fitted projection (mean, components, scale): a quantizer records the one it was
        fitted after, so a saved pair that does not belong together is refused (:func:`quantize.encode_frozen`)."""
        import hashlib

        if self.components is None:
            raise RuntimeError("Preprocessor is not fitted")
        h = hashlib.sha256()
        for a in (self.mean, self.components, self.scale):
            a = np.ascontiguousarray(a, dtype=np.float32)
            h.update(np.asarray(a.shape, np.int64).tobytes())
            h.update(a.tobytes())
        return h.hexdigest()[:16]

    @classmethod
    def load(cls, path: str | Path) -> "Preprocessor":
        blob = unpack_arrays(load_checkpoint(path, kind="preprocessor file"))
        if not isinstance(blob, dict) or blob.get("format") != _FORMAT:
            raise CheckpointError(f"{path}: not a genrec preprocessor file")
        try:  # a file of the right format whose content does not fit (edited, or damaged)
            p = cls(**blob["config"])
            mean, components, scale = (np.asarray(blob[k], np.float32) for k in ("mean", "components", "scale"))
            k, d = components.shape
            if mean.shape != (d,) or scale.shape != (k,) or not all(np.isfinite(a).all() for a in (mean, components, scale)):
                raise ValueError(f"mean {list(mean.shape)}, components {list(components.shape)}, scale "
                                 f"{list(scale.shape)}: expected [d], [k, d], [k], all finite")
            p.mean, p.components, p.scale = mean, components, scale
            p.explained_variance_ratio = blob["explained_variance_ratio"]
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"{path}: a damaged preprocessor file ({type(e).__name__}: {e})") from None
        return p
