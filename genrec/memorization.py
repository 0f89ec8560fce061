"""Memorization vs generalization labels of evaluation instances (arXiv 2603.19809).

Edges come from the *training part* of every user's sequence (``LeaveOneOutSplit.train``: validation
and test items excluded), for validation and test instances alike. An edge ``u -> v`` at hop ``h``
means ``v`` follows ``u`` within ``h`` positions (``1 <= q - p <= h``) in some training sequence;
hop-1 edges are the adjacent transitions, and the hop-``h`` edge set contains every smaller hop's.
Whole training sequences, as the paper's labeller reads them, although the models train on each
sequence's last ``max_len + 1`` items only (on Beauty 127 long users lose older items there, and
building the edges from that window would move ~0.45% of the instances to another group).

For an instance with history ``(..., i)`` and target ``t``, the history item ``u`` at distance ``d``
from the end (``d = 1`` for the last item ``i``) takes part in hop-``h`` checks only when ``d <= h``,
and hop ``h`` is checked at all only when the history holds at least ``h`` items, as the paper's
``FineGrainedEvaluator`` does (so a 3-item history never gets a hop-4 label: on Beauty 771 validation
instances, 3.4%, would otherwise be labelled at hop 4). ``hop_needs_history=False`` keeps genrec's
earlier rule, which checks every hop up to ``max_hop`` with the history items there are:

- **memorization** (hop 0): ``i -> t`` is a hop-1 edge. It wins over every other kind.
- otherwise the generalization kinds, each at the smallest hop ``h = 1..max_hop`` that holds for some
  history item ``u`` with ``d <= h``:

  - **substitutability**: ``u -> t`` at hop ``h``, only for ``h >= 2`` (at ``h = 1`` it is memorization);
  - **symmetry**: ``t -> u`` at hop ``h``;
  - **transitivity**: ``u -> x -> t``;
  - **second-order symmetry**: ``t -> x -> u``, ``t -> x <- u`` or ``t <- x -> u``.

  Two-edge kinds: at hop ``h`` *each* of the two edges is a hop-``h`` edge (the hop bounds every
  edge, not the path length, so transitivity@1 is ``i -> x -> t`` through two adjacent transitions),
  and the intermediate ``x`` is a third item (``x`` not ``u`` or ``t``): a path through ``u`` or
  ``t`` itself would only restate a single edge, which the single-edge kinds already cover.
- **uncategorized** when nothing holds up to ``max_hop``.

When several generalization kinds hold at the same smallest hop, the primary label follows the fixed
order of :class:`Kind` (substitutability > symmetry > transitivity > second-order symmetry).
:attr:`InstanceLabels.kind_hops` keeps every kind that holds with its own smallest hop (multi-label
view); note that by the definitions a memorization instance whose history holds at least 2 items
also satisfies substitutability@2 (when ``max_hop >= 2``).
A single-edge kind from an item at distance ``d`` over an edge of gap ``g`` holds at hop
``max(d, g)`` (at least 2 for substitutability; none if that exceeds the history length).
Consequence: an edge ``i -> t`` of gap ``g >= 2`` also makes two-edge paths through the items in
between, so a transitivity label (at gap 2: @1; at larger gaps a higher hop) often comes first, and
substitutability mostly comes from earlier history items (``d >= 2``). Fine label names
are ``memorization``, ``<kind>@<hop>`` and ``uncategorized`` (:func:`label_names`); coarse groups
are memorization / generalization / uncategorized.

Token level (:func:`token_memorization`): the same edges and distance rule on length-``n`` prefixes
of each item's semantic ID, but every hop is checked whatever the history length (as the paper's
``PrefixGramMemorizationEvaluator`` does). An instance is *n-gram prefix memorized* at hop ``h`` when
some training pair ``u' -> v'`` at hop ``h`` has ``prefix_n(u') = prefix_n(u)`` and
``prefix_n(v') = prefix_n(t)`` for a history item ``u`` with ``d <= h``; at hop 1 (``u = i``,
adjacent transition) it is the exact token-level analogue of memorization.

Speed: edges are kept as one sorted key array (single-edge lookups by binary search) and per-hop
boolean CSR matrices; two-edge paths are row intersections of those matrices (``M1[a] .* M2[b]``,
a linear merge per pair in scipy's C code) over *unique* (history item, target) pairs, so hub items
cost their degree once per pair instead of a Python set intersection, and never a 2-hop product.
All ~45k Beauty validation + test instances take about a second on 2 cores (bench/labels_beauty.py).
"""

from __future__ import annotations

import enum
import logging
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import scipy.sparse as sp

from genrec.splits import Instances, LeaveOneOutSplit

log = logging.getLogger(__name__)

DEFAULT_MAX_HOP = 4
#: the largest ``max_hop``: hops are stored as int8 with 127 as "none"
MAX_HOP = 126


class Kind(enum.IntEnum):
    """Label kinds; the order is the precedence among kinds holding at the same hop."""

    MEMORIZATION = 0
    SUBSTITUTABILITY = 1
    SYMMETRY = 2
    TRANSITIVITY = 3
    SECOND_ORDER_SYMMETRY = 4
    UNCATEGORIZED = 5

    @property
    def label(self) -> str:
        """Name used in labels and records, e.g. ``"second_order_symmetry"``."""
        return KIND_NAMES[self]


KIND_NAMES: tuple[str, ...] = ("memorization", "substitutability", "symmetry", "transitivity",
                               "second_order_symmetry", "uncategorized")
GENERALIZATION_KINDS: tuple[Kind, ...] = (Kind.SUBSTITUTABILITY, Kind.SYMMETRY, Kind.TRANSITIVITY,
                                          Kind.SECOND_ORDER_SYMMETRY)
GROUPS: tuple[str, ...] = ("memorization", "generalization", "uncategorized")
# kind -> smallest hop it can have (substitutability at hop 1 would be memorization)
_MIN_HOP = {Kind.SUBSTITUTABILITY: 2, Kind.SYMMETRY: 1, Kind.TRANSITIVITY: 1, Kind.SECOND_ORDER_SYMMETRY: 1}


def label_names(max_hop: int = DEFAULT_MAX_HOP) -> list[str]:
    """Every fine label in canonical order: ``memorization``, ``substitutability@2``, ...,
    ``second_order_symmetry@{max_hop}``, ``uncategorized``."""
    names = ["memorization"]
    for k in GENERALIZATION_KINDS:
        names.extend(f"{k.label}@{h}" for h in range(_MIN_HOP[k], max_hop + 1))
    names.append("uncategorized")
    return names


@dataclass
class InstanceLabels:
    """Labels of ``n`` instances (aligned with the :class:`~genrec.splits.Instances` they came from).

    ``kind[k]`` is a :class:`Kind` value and ``hop[k]`` its hop (0 for memorization, -1 for
    uncategorized). ``kind_hops[k, j]`` is the smallest hop at which kind ``j`` (columns in
    :class:`Kind` order, memorization to second-order symmetry) holds, -1 when it does not
    (memorization: 0 when it holds).
    """

    kind: np.ndarray  # [n] int8
    hop: np.ndarray  # [n] int8
    kind_hops: np.ndarray  # [n, 5] int8
    max_hop: int = DEFAULT_MAX_HOP

    def __len__(self) -> int:
        return len(self.kind)

    def names(self) -> np.ndarray:
        """``[n]`` fine label of each instance, e.g. ``"symmetry@1"`` (object array of str)."""
        table = {(int(Kind.MEMORIZATION), 0): "memorization", (int(Kind.UNCATEGORIZED), -1): "uncategorized"}
        for k in GENERALIZATION_KINDS:
            for h in range(_MIN_HOP[k], self.max_hop + 1):
                table[(int(k), h)] = f"{k.label}@{h}"
        return np.array([table[(int(a), int(b))] for a, b in zip(self.kind, self.hop)], dtype=object)

    def kind_names(self) -> np.ndarray:
        """``[n]`` kind name of each instance (no hop)."""
        return np.asarray(KIND_NAMES, dtype=object)[self.kind]

    def groups(self) -> np.ndarray:
        """``[n]`` coarse group: ``memorization`` / ``generalization`` / ``uncategorized``."""
        g = np.full(len(self), "generalization", dtype=object)
        g[self.kind == Kind.MEMORIZATION] = "memorization"
        g[self.kind == Kind.UNCATEGORIZED] = "uncategorized"
        return g

    def holds(self, kind: Kind) -> np.ndarray:
        """``[n]`` bool: does ``kind`` hold at some hop (regardless of the primary label)."""
        if kind == Kind.UNCATEGORIZED:
            return self.kind == Kind.UNCATEGORIZED
        return self.kind_hops[:, int(kind)] >= 0

    def subset(self, index: np.ndarray) -> "InstanceLabels":
        """Labels of the instances at ``index`` (like :meth:`Instances.subset`)."""
        index = np.asarray(index)
        return InstanceLabels(kind=self.kind[index], hop=self.hop[index], kind_hops=self.kind_hops[index],
                              max_hop=self.max_hop)

    def counts(self) -> dict[str, int]:
        """Instance count of every fine label (canonical order, zeros kept)."""
        names = self.names()
        out = {name: 0 for name in label_names(self.max_hop)}
        values, counts = np.unique(names.astype(str), return_counts=True) if len(names) else ([], [])
        for v, c in zip(values, counts):
            out[str(v)] = int(c)
        return out

    def shares(self) -> dict[str, float]:
        """Share of each coarse group, each kind (any hop) and each fine label: the groups sum to 1, the
        generalization kinds to the generalization share."""
        n = len(self)
        if n == 0:
            raise ValueError("no instances")
        out: dict[str, float] = {}
        for g in GROUPS:
            out[g] = float((self.groups() == g).mean())
        for k in GENERALIZATION_KINDS:
            out[k.label] = float((self.kind == k).mean())
        for name, c in self.counts().items():
            if name not in out:
                out[name] = c / n
        return out


# ----------------------------------------------------------------------------------------------
# Edges


def _flatten(sequences: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    lengths = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=len(sequences))
    flat = (np.concatenate([np.asarray(s, dtype=np.int64) for s in sequences]) if len(sequences)
            else np.zeros(0, dtype=np.int64))
    seq_id = np.repeat(np.arange(len(sequences)), lengths)
    return flat, seq_id


class TransitionGraph:
    """Hop-limited transition edges of a set of sequences over ``num_nodes`` nodes (items or prefixes).

    Holds, for every ordered pair ``(u, v)`` with ``v`` following ``u`` within ``max_hop`` positions in
    some sequence, the smallest such gap. Self-loops (a node repeated) are kept as single edges.
    """

    def __init__(self, sequences: Sequence[np.ndarray], num_nodes: int, max_hop: int = DEFAULT_MAX_HOP):
        if not 1 <= max_hop <= MAX_HOP:
            raise ValueError(f"max_hop must be in [1, {MAX_HOP}], got {max_hop}")
        self.num_nodes = int(num_nodes)
        self.max_hop = int(max_hop)
        flat, seq_id = _flatten(sequences)
        if len(flat) and (flat.min() < 0 or flat.max() >= num_nodes):
            raise ValueError(f"sequence entries must lie in [0, {num_nodes}), got [{flat.min()}, {flat.max()}]")
        keys, gaps = [], []
        for g in range(1, max_hop + 1):
            same = seq_id[:-g] == seq_id[g:]
            keys.append(flat[:-g][same] * self.num_nodes + flat[g:][same])
            gaps.append(np.full(int(same.sum()), g, dtype=np.int8))
        key = np.concatenate(keys) if keys else np.zeros(0, np.int64)
        gap = np.concatenate(gaps) if gaps else np.zeros(0, np.int8)
        order = np.lexsort((gap, key))  # by key, then smallest gap first
        key, gap = key[order], gap[order]
        first = np.ones(len(key), dtype=bool)
        first[1:] = key[1:] != key[:-1]
        self.keys = key[first]  # sorted unique u * num_nodes + v
        self.gaps = gap[first]  # smallest gap of each edge
        self._matrices: dict[tuple[int, str], sp.csr_matrix] = {}

    @property
    def num_edges(self) -> int:
        return len(self.keys)

    def gap(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Smallest gap of edge ``u -> v`` (elementwise), 0 where there is none within ``max_hop``."""
        q = np.asarray(u, dtype=np.int64) * self.num_nodes + np.asarray(v, dtype=np.int64)
        if not len(self.keys):
            return np.zeros(q.shape, dtype=np.int8)
        pos = np.minimum(np.searchsorted(self.keys, q), len(self.keys) - 1)
        return np.where(self.keys[pos] == q, self.gaps[pos], 0).astype(np.int8)

    def adjacency(self, hop: int, transpose: bool = False) -> sp.csr_matrix:
        """Boolean CSR of hop-``hop`` edges without self-loops (row ``u`` = out-neighbours of ``u``;
        ``transpose`` gives in-neighbours); cached. Used for two-edge paths through a third node."""
        cache_key = (hop, "in" if transpose else "out")
        if cache_key not in self._matrices:
            sel = (self.gaps <= hop)
            u, v = np.divmod(self.keys[sel], self.num_nodes)
            off = u != v
            u, v = (v[off], u[off]) if transpose else (u[off], v[off])
            m = sp.csr_matrix((np.ones(len(u), dtype=np.int8), (u, v)), shape=(self.num_nodes, self.num_nodes))
            m.sort_indices()
            self._matrices[cache_key] = m
        return self._matrices[cache_key]

    def symmetric_adjacency(self, hop: int) -> sp.csr_matrix:
        """Out- or in-neighbours (``A + A^T`` pattern) at ``hop``, without self-loops; cached."""
        cache_key = (hop, "sym")
        if cache_key not in self._matrices:
            m = (self.adjacency(hop) + self.adjacency(hop, transpose=True)).tocsr()
            m.data[:] = 1
            m.sort_indices()
            self._matrices[cache_key] = m
        return self._matrices[cache_key]


def _rows_intersect(m1: sp.csr_matrix, a: np.ndarray, m2: sp.csr_matrix, b: np.ndarray,
                    batch: int = 16384) -> np.ndarray:
    """``[len(a)]`` bool: rows ``m1[a[k]]`` and ``m2[b[k]]`` share a column (vectorised merge)."""
    out = np.zeros(len(a), dtype=bool)
    for s in range(0, len(a), batch):
        p = m1[a[s:s + batch]]
        q = m2[b[s:s + batch]]
        out[s:s + batch] = np.diff(p.multiply(q).tocsr().indptr) > 0
    return out


# ----------------------------------------------------------------------------------------------
# Item-level labels


def _history_slots(histories: Sequence[np.ndarray], targets: np.ndarray, max_hop: int
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Flattened (instance, distance, history item, target) for the last ``max_hop`` history items."""
    n = len(histories)
    last = np.full((n, max_hop), -1, dtype=np.int64)  # column d-1 = item at distance d
    for k, h in enumerate(histories):
        tail = np.asarray(h[-max_hop:], dtype=np.int64)[::-1]
        last[k, :len(tail)] = tail
    inst, col = np.nonzero(last >= 0)
    return inst, (col + 1).astype(np.int64), last[inst, col], np.asarray(targets, dtype=np.int64)[inst]


def _path_hops(graph: TransitionGraph, u: np.ndarray, t: np.ndarray, d_min: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray]:
    """Smallest hop (>= d_min, else 0) of transitivity and of second-order symmetry for unique pairs."""
    trans = np.zeros(len(u), dtype=np.int8)
    sos = np.zeros(len(u), dtype=np.int8)
    for h in range(1, graph.max_hop + 1):
        out_h, in_h = graph.adjacency(h), graph.adjacency(h, transpose=True)
        active = d_min <= h
        idx = np.flatnonzero(active & (trans == 0))
        if len(idx):
            hit = _rows_intersect(out_h, u[idx], in_h, t[idx])  # u -> x -> t
            trans[idx[hit]] = h
        idx = np.flatnonzero(active & (sos == 0))
        if len(idx):
            # t -> x -> u  or  t -> x <- u: x in out(t) and in in(u) or out(u)
            hit = _rows_intersect(out_h, t[idx], graph.symmetric_adjacency(h), u[idx])
            rest = idx[~hit]
            sos[idx[hit]] = h
            if len(rest):  # t <- x -> u: x in in(t) and in(u)
                hit2 = _rows_intersect(in_h, t[rest], in_h, u[rest])
                sos[rest[hit2]] = h
    return trans, sos


def _reduce_min(inst: np.ndarray, hop: np.ndarray, n: int) -> np.ndarray:
    """Per instance smallest positive hop over its slots, -1 if none."""
    best = np.full(n, 127, dtype=np.int64)
    ok = hop > 0
    np.minimum.at(best, inst[ok], hop[ok].astype(np.int64))
    best[best == 127] = -1
    return best


def _window(histories: Sequence[np.ndarray], max_hop: int) -> np.ndarray:
    """The last ``max_hop`` items of every history, flat (what the labels read; -1 would pass for none)."""
    return np.concatenate([np.asarray(h[-max_hop:], np.int64) for h in histories]) if len(histories) else \
        np.zeros(0, np.int64)


def _check_items(items: np.ndarray, num_nodes: int, what: str) -> None:
    if len(items) and (int(items.min()) < 0 or int(items.max()) >= num_nodes):
        bad = int(items.min()) if int(items.min()) < 0 else int(items.max())
        raise ValueError(f"{what} {bad} is outside the graph's items 0..{num_nodes - 1}")


def label_instances(graph: TransitionGraph, instances: Instances | tuple[Sequence[np.ndarray], np.ndarray],
                    hop_needs_history: bool = True) -> InstanceLabels:
    """Label every instance (see module doc) against the item-level edges of ``graph``.

    ``instances`` is an :class:`~genrec.splits.Instances` or a ``(histories, targets)`` pair; hops go
    up to ``graph.max_hop``. ``hop_needs_history``: hop ``h`` only for histories of at least ``h``
    items (the paper's code; default); False checks every hop whatever the history length.
    """
    histories, targets = ((instances.histories, instances.targets) if isinstance(instances, Instances)
                          else instances)
    targets = np.asarray(targets, dtype=np.int64)
    if len(histories) != len(targets):
        raise ValueError(f"{len(histories)} histories for {len(targets)} targets")
    n, hmax = len(targets), graph.max_hop
    t0 = time.perf_counter()
    inst, d, u, t = _history_slots(histories, targets, hmax)
    # edge keys are u * num_nodes + v: an item outside 0..num_nodes-1 would read another edge's gap
    _check_items(targets, graph.num_nodes, "target")
    _check_items(_window(histories, hmax), graph.num_nodes, "history item")

    kind_hops = np.full((n, 5), -1, dtype=np.int8)
    g_ut = graph.gap(u, t).astype(np.int64)
    mem = np.zeros(n, dtype=bool)
    mem[inst[(d == 1) & (g_ut == 1)]] = True
    kind_hops[mem, Kind.MEMORIZATION] = 0
    # single edges: a kind holds at hop max(d, gap) (d <= h and the edge is a hop-h edge)
    sub = np.maximum(np.maximum(d, g_ut), 2)
    sub = np.where((g_ut > 0) & (sub <= hmax), sub, 0)  # hop 2 does not exist when max_hop is 1
    kind_hops[:, Kind.SUBSTITUTABILITY] = _reduce_min(inst, sub, n)
    g_tu = graph.gap(t, u).astype(np.int64)
    kind_hops[:, Kind.SYMMETRY] = _reduce_min(inst, np.where(g_tu > 0, np.maximum(d, g_tu), 0), n)

    # two-edge paths on unique (u, t) pairs, each starting at the smallest distance it occurs at
    pair_key = u * graph.num_nodes + t
    uniq, inv = np.unique(pair_key, return_inverse=True)
    d_min = np.full(len(uniq), hmax + 1, dtype=np.int64)
    np.minimum.at(d_min, inv, d)
    pu, pt = np.divmod(uniq, graph.num_nodes)
    trans, sos = _path_hops(graph, pu, pt, d_min)
    for col, ph in ((Kind.TRANSITIVITY, trans), (Kind.SECOND_ORDER_SYMMETRY, sos)):
        ph = ph.astype(np.int64)[inv]
        kind_hops[:, col] = _reduce_min(inst, np.where(ph > 0, np.maximum(d, ph), 0), n)

    if hop_needs_history:
        # each column holds its kind's smallest hop, so dropping hops above the history length leaves
        # the smallest hop among the allowed ones (or none): no need to recompute per hop
        length = np.fromiter((len(h) for h in histories), dtype=np.int64, count=n)
        kind_hops[kind_hops.astype(np.int64) > length[:, None]] = -1
    # primary label: memorization, else the smallest hop; ties go to the earlier kind (argmin is first)
    gen = kind_hops[:, 1:5].astype(np.int64)
    gen = np.where(gen < 0, 127, gen)
    best = gen.argmin(1)
    best_hop = gen[np.arange(n), best]
    kind = np.where(best_hop < 127, best + 1, int(Kind.UNCATEGORIZED))
    hop = np.where(best_hop < 127, best_hop, -1)
    kind[mem], hop[mem] = int(Kind.MEMORIZATION), 0
    log.debug("labelled %d instances (%d unique pairs) in %.2fs", n, len(uniq), time.perf_counter() - t0)
    return InstanceLabels(kind=kind.astype(np.int8), hop=hop.astype(np.int8), kind_hops=kind_hops, max_hop=hmax)


def label_split(split: LeaveOneOutSplit, max_hop: int = DEFAULT_MAX_HOP, hop_needs_history: bool = True
                ) -> dict[str, InstanceLabels]:
    """``{"valid": ..., "test": ...}`` labels of a leave-one-out split, both from its training part
    (``hop_needs_history``: see :func:`label_instances`)."""
    t0 = time.perf_counter()
    graph = TransitionGraph(split.train, split.num_items, max_hop)
    out = {part: label_instances(graph, inst, hop_needs_history=hop_needs_history)
           for part, inst in (("valid", split.valid), ("test", split.test))}
    log.info("%s: labelled %d validation + %d test instances (hops <= %d, %d edges) in %.1fs",
             split.dataset.name, len(split.valid), len(split.test), max_hop, graph.num_edges,
             time.perf_counter() - t0)
    return out


# ----------------------------------------------------------------------------------------------
# Token level


def prefix_ids(codes: np.ndarray, n: int) -> np.ndarray:
    """``[n_items]`` id of each item's length-``n`` code prefix (equal prefixes, equal ids)."""
    codes = _check_codes(codes)
    if not 1 <= n <= codes.shape[1]:
        raise ValueError(f"prefix length must be in [1, {codes.shape[1]}], got {n}")
    _, inv = np.unique(codes[:, :n], axis=0, return_inverse=True)
    return inv.reshape(-1).astype(np.int64)


def _check_codes(codes: np.ndarray) -> np.ndarray:
    codes = np.asarray(codes)
    if codes.ndim != 2 or codes.shape[1] < 1:
        raise ValueError(f"codes must be an [n_items, levels] array, got shape {codes.shape}")
    if not np.issubdtype(codes.dtype, np.integer):
        raise ValueError(f"codes must be integers, got {codes.dtype}")
    return codes


@dataclass
class TokenMemorization:
    """Per instance and prefix length, the smallest hop of n-gram prefix memorization.

    ``hops[k, n-1]`` is that hop for prefix length ``n`` (-1: not prefix memorized up to ``max_hop``).
    """

    hops: np.ndarray  # [n_instances, levels] int8
    max_hop: int = DEFAULT_MAX_HOP

    @property
    def levels(self) -> int:
        return self.hops.shape[1]

    def memorized(self, n: int, hop: int = 1) -> np.ndarray:
        """``[n_instances]`` bool: length-``n`` prefix memorized at hop <= ``hop`` (1 = strict);
        ``n`` in ``1..levels``."""
        if not 1 <= n <= self.hops.shape[1]:  # hops[:, -1] would read the full-length level silently
            raise ValueError(f"prefix length n must be in 1..{self.hops.shape[1]}, got {n}")
        h = self.hops[:, n - 1]
        return (h >= 1) & (h <= hop)

    def subset(self, index: np.ndarray) -> "TokenMemorization":
        """Rows of the instances at ``index``."""
        return TokenMemorization(hops=self.hops[np.asarray(index)], max_hop=self.max_hop)


def token_memorization(train: Sequence[np.ndarray], instances: Instances | tuple[Sequence[np.ndarray], np.ndarray],
                       codes: np.ndarray, max_hop: int = DEFAULT_MAX_HOP) -> TokenMemorization:
    """n-gram prefix memorization of every instance for ``n = 1..levels`` (see module doc).

    ``train``: training sequences of item indices (``split.train``); ``codes``: ``[n_items, levels]``
    integer semantic IDs (any table whose row ``j`` is item ``j``'s code tuple).
    """
    codes = _check_codes(codes)
    histories, targets = ((instances.histories, instances.targets) if isinstance(instances, Instances)
                          else instances)
    targets = np.asarray(targets, dtype=np.int64)
    n_inst = len(targets)
    inst, d, u, t = _history_slots(histories, targets, max_hop)
    _check_items(targets, codes.shape[0], "target")
    _check_items(_window(histories, max_hop), codes.shape[0], "history item")
    hops = np.full((n_inst, codes.shape[1]), -1, dtype=np.int8)
    for n in range(1, codes.shape[1] + 1):
        pid = prefix_ids(codes, n)
        graph = TransitionGraph([pid[np.asarray(s, dtype=np.int64)] for s in train], int(pid.max()) + 1, max_hop)
        g = graph.gap(pid[u], pid[t]).astype(np.int64)
        hops[:, n - 1] = _reduce_min(inst, np.where(g > 0, np.maximum(d, g), 0), n_inst)
    return TokenMemorization(hops=hops, max_hop=max_hop)
