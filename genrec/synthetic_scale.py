"""Large seeded synthetic datasets (up to millions of items and tens of millions of interactions) with
item vectors in place of text, for scale tests and ``bench/scale.py``.

:mod:`genrec.synthetic` builds a small catalogue item by item, with texts, to study memorization
against composition; this generator is vectorised numpy throughout (seconds at 1M items / 10M
interactions) and gives each item a vector instead of text, used as precomputed embeddings
(:mod:`genrec.item_embeddings`, the recipe's ``text.embeddings``).

Structure (learnable, so that trained models can be checked against chance)
    Items are split evenly into ``num_clusters`` clusters at random. Each cluster has a fixed
    successor cluster (a random permutation) and each item a fixed successor item drawn from its
    cluster's successor. Within a cluster, items have a skewed popularity: a draw picks the member of
    rank ``floor(size * u ** popularity_skew)`` (``u`` uniform; skew 1 is uniform, larger is more
    skewed) in a fixed random order. A user's first item is a popularity-skewed draw from a random
    cluster; each next item is, independently per step, the current item's successor (probability
    ``item_share``: item-level memorization), a draw from the current cluster's successor cluster
    (``cluster_share``: cluster-level structure), or a draw from a uniformly random cluster (noise).

Sizes
    Sequence lengths are uniform in ``seq_len`` (inclusive) and add up to exactly ``num_interactions``
    (the remainder left after the last full user goes one item each to the last users, so a few may
    be one item longer than ``seq_len[1]``). Timestamps are strictly increasing integers (seconds).

Vectors
    ``"clustered"``: each item is its cluster's centroid (standard normal) plus ``noise`` times a
    standard normal vector, so nearby vectors mean related items; ``"random"``: standard normal,
    unrelated to the structure. ``float32 [num_items, dim]``, row ``k`` for item index ``k``.

The ground truth is attached as ``dataset.scale`` (a :class:`ScaleInfo`, see :func:`scale_info`);
:func:`write_scale_dataset` writes the Parquet or plain layout plus ``item_vectors.npy`` and its id list.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from genrec.data import ItemText, SequenceDataset, write_plain

log = logging.getLogger(__name__)

__all__ = ["make_scale_dataset", "write_scale_dataset", "scale_info", "ScaleInfo", "VECTOR_KINDS",
           "VECTORS_FILE", "INTERACTIONS_PARQUET", "ITEMS_PARQUET"]

#: values of ``vectors`` in :func:`make_scale_dataset`
VECTOR_KINDS = ("clustered", "random")
VECTORS_FILE = "item_vectors.npy"
INTERACTIONS_PARQUET = "interactions.parquet"
ITEMS_PARQUET = "items.parquet"
_VECTOR_BLOCK = 65536  # rows drawn at once, so float32 draws never build a float64 copy of the whole table


@dataclass
class ScaleInfo:
    """Ground truth of a :func:`make_scale_dataset` dataset; arrays indexed by dataset item index."""

    cluster: np.ndarray  # [num_items] cluster of each item
    next_cluster: np.ndarray  # [num_clusters] successor cluster
    next_item: np.ndarray  # [num_items] successor item
    vectors: np.ndarray  # [num_items, dim] float32 item vectors


def scale_info(dataset: SequenceDataset) -> ScaleInfo:
    """The :class:`ScaleInfo` of a dataset made by :func:`make_scale_dataset` (ValueError otherwise)."""
    info = getattr(dataset, "scale", None)
    if not isinstance(info, ScaleInfo):
        raise ValueError(f"{dataset.name}: not a dataset of make_scale_dataset (no ground truth attached)")
    return info


def _check(num_items: int, num_interactions: int, num_clusters: int, seq_len: tuple[int, int], dim: int,
           vectors: str, item_share: float, cluster_share: float, popularity_skew: float, noise: float
           ) -> tuple[int, int]:
    lo, hi = (int(x) for x in seq_len)
    if not 3 <= lo <= hi:
        raise ValueError(f"seq_len must be (min, max) with 3 <= min <= max (leave-one-out needs 3 items), got {seq_len}")
    if num_items < 2:
        raise ValueError(f"num_items must be >= 2, got {num_items}")
    if num_interactions < lo:
        raise ValueError(f"num_interactions must be >= seq_len[0] ({lo}), got {num_interactions}")
    if not 1 <= num_clusters <= num_items:
        raise ValueError(f"num_clusters must be between 1 and num_items ({num_items}), got {num_clusters}")
    if dim < 1:
        raise ValueError(f"dim must be >= 1, got {dim}")
    if vectors not in VECTOR_KINDS:
        raise ValueError(f"vectors must be one of {list(VECTOR_KINDS)}, got {vectors!r}")
    for name, v in (("item_share", item_share), ("cluster_share", cluster_share)):
        if not 0.0 <= v <= 1.0:  # (NaN fails)
            raise ValueError(f"{name} must be in [0, 1], got {v}")
    if item_share + cluster_share > 1.0:
        raise ValueError(f"item_share + cluster_share must be <= 1, got {item_share + cluster_share}")
    if not 1.0 <= popularity_skew < float("inf"):  # written so NaN fails too
        raise ValueError(f"popularity_skew must be a finite number >= 1 (1 = uniform), got {popularity_skew}")
    if not 0.0 <= noise < float("inf"):
        raise ValueError(f"noise must be a finite number >= 0, got {noise}")
    return lo, hi


def _lengths(rng: np.random.Generator, total: int, lo: int, hi: int) -> np.ndarray:
    """``[users]`` sequence lengths uniform in ``lo..hi`` that sum to exactly ``total``."""
    n = int(np.ceil(total / ((lo + hi) / 2) * 1.05)) + 2  # enough users with high probability
    lengths = rng.integers(lo, hi + 1, size=n)
    while lengths.sum() < total:  # rare: draw more
        lengths = np.concatenate([lengths, rng.integers(lo, hi + 1, size=n)])
    ends = np.cumsum(lengths)
    full = int(np.searchsorted(ends, total, side="right"))  # users that fit whole
    lengths = lengths[:full].copy()
    rest = total - int(lengths.sum())
    if rest >= lo:
        lengths = np.append(lengths, rest)
    elif rest:  # too short for a user of its own: one more item for each of the last `rest` users
        np.add.at(lengths, len(lengths) - 1 - np.arange(rest) % len(lengths), 1)  # (wraps for tiny totals)
    return lengths


def make_scale_dataset(num_items: int = 10_000, num_interactions: int = 100_000, num_clusters: int | None = None,
                       seq_len: tuple[int, int] = (5, 20), dim: int = 64, vectors: str = "clustered",
                       noise: float = 0.5, item_share: float = 0.3, cluster_share: float = 0.5,
                       popularity_skew: float = 2.0, seed: int = 0, name: str = "scale") -> SequenceDataset:
    """Generate the seeded dataset described in the module doc (the same arguments, the same data).

    ``num_clusters`` defaults to about ``sqrt(num_items)``. Item ids are ``i<k>``, user ids ``u<k>``;
    items have no text (use the vectors, or ``text.fallback``). The vectors and structure are in
    ``dataset.scale``.
    """
    if num_clusters is None:
        num_clusters = max(1, int(round(np.sqrt(num_items))))
    lo, hi = _check(num_items, num_interactions, num_clusters, seq_len, dim, vectors, item_share, cluster_share,
                    popularity_skew, noise)
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    n, c = int(num_items), int(num_clusters)
    cluster = rng.permutation(np.arange(n) % c)  # even sizes (every cluster non-empty), random membership
    members = np.argsort(cluster, kind="stable")  # items grouped by cluster, in index order within each
    members = members[np.lexsort((rng.random(n), cluster[members]))]  # random popularity order within clusters
    size = np.bincount(cluster, minlength=c)
    start = np.concatenate([[0], np.cumsum(size)[:-1]])
    next_cluster = rng.permutation(c)

    def draw(clusters: np.ndarray) -> np.ndarray:
        """One popularity-skewed member of each of ``clusters``."""
        rank = np.floor(size[clusters] * rng.random(len(clusters)) ** popularity_skew).astype(np.int64)
        return members[start[clusters] + np.minimum(rank, size[clusters] - 1)]

    next_item = draw(next_cluster[cluster])

    lengths = _lengths(rng, int(num_interactions), lo, hi)
    users = len(lengths)
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    flat = np.empty(int(num_interactions), dtype=np.int64)
    current = draw(rng.integers(c, size=users))
    flat[offsets] = current
    by_length = np.argsort(-lengths, kind="stable")  # users still going at step t: a prefix of this order
    sorted_len = lengths[by_length]
    for t in range(1, int(lengths.max())):
        active = by_length[:int(np.searchsorted(-sorted_len, -t, side="left"))]  # lengths > t
        x = current[active]
        r = rng.random(len(active))
        follow, in_cluster = r < item_share, (r >= item_share) & (r < item_share + cluster_share)
        target = np.where(in_cluster, next_cluster[cluster[x]], rng.integers(c, size=len(active)))
        nxt = np.where(follow, next_item[x], draw(target))
        flat[offsets[active] + t] = nxt
        current[active] = nxt

    # timestamps: a random start per user plus increasing gaps of one minute to thirty days
    gaps = rng.integers(60, 30 * 86_400, size=len(flat))
    gaps[offsets] = 1_600_000_000 + rng.integers(0, 365 * 86_400, size=users)
    stamps = np.cumsum(gaps)
    stamps -= np.repeat(np.concatenate([[0], stamps[offsets[1:] - 1]]), lengths)  # restart the sum per user

    vec = _vectors(rng, cluster, c, dim, vectors, noise)
    bounds = list(zip(offsets.tolist(), (offsets + lengths).tolist()))
    # slices (views) rather than np.split, which costs ~5 s per 1M users in its per-piece overhead;
    # one shared empty ItemText (frozen) rather than 1M objects: the vectors stand in for text
    no_text = ItemText()
    ds = SequenceDataset(name=name, item_ids=[f"i{k}" for k in range(n)], user_ids=[f"u{k}" for k in range(users)],
                         sequences=[flat[a:b] for a, b in bounds], items=[no_text] * n,
                         timestamps=[stamps[a:b] for a, b in bounds])
    ds.scale = ScaleInfo(cluster=cluster, next_cluster=next_cluster, next_item=next_item,  # type: ignore[attr-defined]
                         vectors=vec)
    log.info("%r generated in %.1fs (%d clusters, %s vectors of dim %d)", ds, time.perf_counter() - t0, c,
             vectors, dim)
    return ds


def _vectors(rng: np.random.Generator, cluster: np.ndarray, num_clusters: int, dim: int, kind: str,
             noise: float) -> np.ndarray:
    """``float32 [num_items, dim]`` item vectors (module doc), drawn block by block in float32."""
    out = np.empty((len(cluster), dim), dtype=np.float32)
    centroids = rng.standard_normal((num_clusters, dim), dtype=np.float32) if kind == "clustered" else None
    for s in range(0, len(cluster), _VECTOR_BLOCK):
        block = rng.standard_normal((min(_VECTOR_BLOCK, len(cluster) - s), dim), dtype=np.float32)
        if centroids is not None:
            block *= np.float32(noise)
            block += centroids[cluster[s:s + len(block)]]
        out[s:s + len(block)] = block
    return out


def write_scale_dataset(dataset: SequenceDataset, directory: str | Path, layout: str = "parquet") -> dict[str, Path]:
    """Write ``dataset`` (from :func:`make_scale_dataset`) to ``directory`` and return the paths written.

    ``layout="parquet"``: ``interactions.parquet`` (``user_id``, ``item_id``, ``timestamp``) and
    ``items.parquet`` (``item_id`` only: the items have no text), read by :func:`genrec.parquet_data.load_parquet`;
    ``"plain"``: the plain directory format (:func:`genrec.data.write_plain`, a Python loop: slow at 10M
    rows). Both also get ``item_vectors.npy`` and ``item_vectors.ids.txt`` (:mod:`genrec.item_embeddings`).
    Every catalogue item is written, including the few no user reached (popularity is skewed): load with
    ``keep_unused_items=True`` (recipe: ``data.keep_items_without_interactions``) so that the catalogue
    and the vectors' id list agree.
    """
    from genrec.artifacts import atomic_write, atomic_write_text
    from genrec.item_embeddings import default_ids_path

    info = scale_info(dataset)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    if layout == "parquet":
        paths.update(_write_parquet(dataset, directory))
    elif layout == "plain":
        write_plain(dataset, directory)
        paths.update(interactions=directory / "interactions.tsv", items=directory / "items.jsonl")
    else:
        raise ValueError(f"layout must be 'parquet' or 'plain', got {layout!r}")
    vec_path = directory / VECTORS_FILE

    def save_vectors(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: np.save would append ".npy" to the temporary name
            np.save(f, info.vectors, allow_pickle=False)

    atomic_write(vec_path, save_vectors)
    ids_path = default_ids_path(vec_path)
    atomic_write_text(ids_path, "\n".join(dataset.item_ids) + "\n")
    paths.update(vectors=vec_path, vector_ids=ids_path)
    return paths


def _write_parquet(dataset: SequenceDataset, directory: Path) -> dict[str, Path]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from genrec.artifacts import atomic_write

    lengths = np.fromiter((len(s) for s in dataset.sequences), dtype=np.int64, count=dataset.num_users)
    flat = np.concatenate(dataset.sequences)
    stamps = np.concatenate(dataset.timestamps) if dataset.timestamps is not None else np.arange(len(flat))
    # ids as dictionary columns: one string per user / item, not per row (read back as strings)
    users = pa.DictionaryArray.from_arrays(pa.array(np.repeat(np.arange(dataset.num_users), lengths)),
                                           pa.array(dataset.user_ids))
    items = pa.DictionaryArray.from_arrays(pa.array(flat), pa.array(dataset.item_ids))
    inter = pa.table({"user_id": users, "item_id": items, "timestamp": pa.array(stamps)})
    item_table = pa.table({"item_id": pa.array(dataset.item_ids)})
    out = {"interactions": directory / INTERACTIONS_PARQUET, "items": directory / ITEMS_PARQUET}
    atomic_write(out["interactions"], lambda tmp: pq.write_table(inter, tmp))
    atomic_write(out["items"], lambda tmp: pq.write_table(item_table, tmp))
    return out
