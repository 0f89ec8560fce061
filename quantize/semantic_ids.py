"""Semantic IDs: quantizer codes made unique, and the table the generative model decodes against.

Items whose quantizer codes are equal get one more code, 0, 1, 2, ... within the group in item
index order (TIGER's disambiguation level), so every item has a distinct ID tuple of length
``levels + 1``. :class:`SemanticIdTable` maps item index <-> ID, lists the valid IDs for
constrained decoding and saves/loads with the config that produced it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from genrec.artifacts import load_json, save_json
from genrec.errors import CheckpointError
from genrec.trie import PrefixTrie

__all__ = ["disambiguate", "SemanticIdTable"]

_FORMAT = "genrec.semantic_ids/1"


def _as_codes(codes: Any, what: str = "codes") -> np.ndarray:
    c = np.asarray(codes)
    if c.ndim != 2 or c.shape[0] == 0 or c.shape[1] == 0 or not np.issubdtype(c.dtype, np.integer):
        raise ValueError(f"{what} must be a non-empty integer array [n_items, levels], got {c.dtype} {c.shape}")
    if (c < 0).any():
        r = int(np.argwhere(c < 0)[0, 0])
        raise ValueError(f"{what}: negative code in row {r}: {c[r].tolist()}")
    return c.astype(np.int64)


def disambiguate(codes: np.ndarray) -> np.ndarray:
    """Collision suffix ``int64 [n]``: item ``i`` gets the number of earlier items (lower index) with
    the same code tuple, so groups are numbered 0, 1, 2, ... in item order (stable)."""
    c = _as_codes(codes)
    _, group = np.unique(c, axis=0, return_inverse=True)
    group = group.reshape(-1)
    order = np.argsort(group, kind="stable")  # by group, item index order inside each group
    g_sorted = group[order]
    starts = np.r_[0, np.flatnonzero(np.diff(g_sorted)) + 1]  # first position of each group
    run_start = np.repeat(starts, np.diff(np.r_[starts, len(order)]))
    suffix = np.empty(len(c), dtype=np.int64)
    suffix[order] = np.arange(len(order)) - run_start
    return suffix


def _no_str_ids(item_ids: Any, what: str) -> None:
    """A single string is a sequence of its characters: refused rather than taken as one id per character."""
    if isinstance(item_ids, (str, bytes)):
        raise TypeError(f"{what} must be a list of ids, not a single string ({item_ids!r})")


class SemanticIdTable:
    """Item index <-> semantic ID tuple, with the set of valid IDs.

    ``codes`` is ``int64 [n_items, num_levels]``: the quantizer's ``num_levels - 1`` codes plus the
    disambiguation code (when ``disambiguated``). ``codebook_sizes[l]`` is the number of values
    level ``l`` can take (the last level: the largest collision group). ``item_ids`` are the
    dataset's raw ids (optional); ``config`` records how the table was made.
    """

    def __init__(self, codes: np.ndarray, codebook_sizes: Sequence[int], item_ids: Sequence[str] | None = None,
                 config: dict[str, Any] | None = None, disambiguated: bool = True) -> None:
        self.codes = _as_codes(codes)
        self.codebook_sizes = tuple(int(s) for s in codebook_sizes)
        if len(self.codebook_sizes) != self.codes.shape[1]:
            raise ValueError(f"{len(self.codebook_sizes)} codebook sizes for {self.codes.shape[1]} levels")
        _no_str_ids(item_ids, "item_ids")
        if item_ids is not None and len(item_ids) != len(self.codes):  # before the checks that name items
            raise ValueError(f"{len(item_ids)} item ids for {len(self.codes)} IDs")
        if item_ids is not None and len(set(item_ids)) != len(item_ids):  # an id would look up one of its rows
            seen: set[Any] = set()
            twice = next(i for i in item_ids if i in seen or seen.add(i))
            raise ValueError(f"item id {twice!r} appears more than once")
        too_big = np.flatnonzero((self.codes >= np.asarray(self.codebook_sizes)[None]).any(1))
        if len(too_big):
            r = int(too_big[0])
            raise ValueError(f"item {self._name(r, item_ids)}: ID {self.codes[r].tolist()} exceeds codebook "
                             f"sizes {list(self.codebook_sizes)}")
        self.item_ids = list(item_ids) if item_ids is not None else None
        self.config = dict(config or {})
        self.disambiguated = disambiguated
        self._lookup: dict[tuple[int, ...], int] = {}
        for i, row in enumerate(map(tuple, self.codes.tolist())):
            j = self._lookup.setdefault(row, i)
            if j != i:
                raise ValueError(f"items {self._name(j, item_ids)} and {self._name(i, item_ids)} share the "
                                 f"semantic ID {list(row)}; disambiguate first")
        self._children: dict[tuple[int, ...], np.ndarray] | None = None
        self._id_index: dict[str, int] | None = None

    @staticmethod
    def _name(i: int, item_ids: Sequence[str] | None) -> str:
        return repr(item_ids[i]) if item_ids is not None else f"#{i}"

    # -- construction ----------------------------------------------------------------------------
    @classmethod
    def from_codes(cls, codes: np.ndarray, codebook_sizes: Sequence[int] | None = None,
                   item_ids: Sequence[str] | None = None, config: dict[str, Any] | None = None,
                   disambiguate_level: bool = True) -> "SemanticIdTable":
        """Table from quantizer codes ``[n, L]``: appends the disambiguation level (always, so all
        IDs have the same length, as in TIGER) unless ``disambiguate_level`` is False, in which
        case the codes must already be unique. ``codebook_sizes`` default to ``max code + 1``."""
        c = _as_codes(codes)
        sizes = list(codebook_sizes) if codebook_sizes is not None else (c.max(0) + 1).tolist()
        if len(sizes) != c.shape[1]:
            raise ValueError(f"{len(sizes)} codebook sizes for {c.shape[1]} levels")
        if not disambiguate_level:
            return cls(c, sizes, item_ids, config, disambiguated=False)
        suffix = disambiguate(c)
        full = np.concatenate([c, suffix[:, None]], axis=1)
        return cls(full, [*sizes, int(suffix.max()) + 1], item_ids, config, disambiguated=True)

    def extend(self, new_codes: np.ndarray, item_ids: Sequence[str] | None = None) -> "SemanticIdTable":
        """A new table with items appended (cold start): their quantizer codes ``[m, L]`` get the next
        free disambiguation codes after the existing items, so existing IDs never change."""
        if not self.disambiguated:
            raise ValueError("extend() needs a table with a disambiguation level")
        c = _as_codes(new_codes, "new codes")
        _no_str_ids(item_ids, "item_ids")
        if item_ids is not None and len(item_ids) != len(c):  # before the checks that name new items
            raise ValueError(f"{len(item_ids)} item ids for {len(c)} new codes")
        base = self.codes[:, :-1]
        if c.shape[1] != base.shape[1]:
            raise ValueError(f"new codes have {c.shape[1]} levels, the table has {base.shape[1]}")
        over = np.flatnonzero((c >= np.asarray(self.codebook_sizes[:-1])[None]).any(1))
        if len(over):  # only the disambiguation level grows; a quantizer's codebooks are fixed
            raise ValueError(f"new item {self._name(int(over[0]), item_ids)}: codes {c[over[0]].tolist()} exceed the "
                             f"quantizer's codebook sizes {list(self.codebook_sizes[:-1])}")
        if (self.item_ids is None) != (item_ids is None):
            raise ValueError("give item_ids for new items exactly when the table has item ids")
        if item_ids is not None:
            known = set(self.item_ids or ())
            seen: set[Any] = set()
            dup: dict[Any, None] = {}  # the offending ids, in order (the message listed the first new ids)
            for i in item_ids:
                if i in known or i in seen:
                    dup[i] = None
                seen.add(i)
            if dup:
                shown = ", ".join(repr(i) for i in list(dup)[:20]) + (" ..." if len(dup) > 20 else "")
                raise ValueError(f"new item ids must be new and distinct: {len(dup)} already in the table or "
                                 f"given twice: {shown}")
        # next free suffix per group: one past the largest in use (a loaded or hand-made table need not
        # number a group 0..g-1, and the group's size could be a suffix already taken)
        next_free: dict[tuple[int, ...], int] = {}
        for row, suf in zip(map(tuple, base.tolist()), self.codes[:, -1].tolist()):
            next_free[row] = max(next_free.get(row, 0), suf + 1)
        suffix = np.empty(len(c), dtype=np.int64)
        for i, row in enumerate(map(tuple, c.tolist())):
            suffix[i] = next_free.get(row, 0)
            next_free[row] = suffix[i] + 1
        codes = np.concatenate([self.codes, np.concatenate([c, suffix[:, None]], axis=1)])
        sizes = [max(a, int(b) + 1) for a, b in zip(self.codebook_sizes, codes.max(0))]
        ids = (self.item_ids or []) + list(item_ids) if item_ids is not None else None
        return SemanticIdTable(codes, sizes, ids, self.config, disambiguated=True)

    # -- lookups ---------------------------------------------------------------------------------
    @property
    def num_items(self) -> int:
        return len(self.codes)

    @property
    def num_levels(self) -> int:
        """Length of every ID tuple (quantizer levels + disambiguation level)."""
        return self.codes.shape[1]

    @property
    def base_codes(self) -> np.ndarray:
        """The quantizer's codes without the disambiguation level ``[n, num_levels - 1]``."""
        return self.codes[:, :-1] if self.disambiguated else self.codes

    @property
    def token_offsets(self) -> np.ndarray:
        """Start of each level's block in a flat vocabulary of ``sum(codebook_sizes)`` tokens."""
        return np.r_[0, np.cumsum(self.codebook_sizes)[:-1]].astype(np.int64)

    @property
    def vocab_size(self) -> int:
        return int(sum(self.codebook_sizes))

    def tokens(self) -> np.ndarray:
        """IDs as flat-vocabulary tokens ``[n, num_levels]`` (code + its level's offset)."""
        return self.codes + self.token_offsets[None]

    def id_of(self, item: int) -> tuple[int, ...]:
        """The ID tuple of item index ``item``."""
        if not 0 <= item < self.num_items:
            raise IndexError(f"item index {item} out of range [0, {self.num_items})")
        return tuple(int(v) for v in self.codes[item])

    def item_of(self, sem_id: Iterable[int]) -> int | None:
        """Item index with this full ID tuple, or None when it is not a valid ID."""
        return self._lookup.get(tuple(int(v) for v in sem_id))

    def lookup(self, sem_ids: np.ndarray) -> np.ndarray:
        """Vectorised :meth:`item_of` for ``[m, num_levels]`` IDs: item indices ``[m]``, -1 if invalid."""
        arr = np.asarray(sem_ids)
        if arr.ndim != 2 or arr.shape[1] != self.num_levels:
            raise ValueError(f"IDs must be [m, {self.num_levels}], got {arr.shape}")
        return np.fromiter((self._lookup.get(r, -1) for r in map(tuple, arr.tolist())), dtype=np.int64,
                           count=len(arr))

    def index_of_item_id(self, item_id: str) -> int:
        """Item index of a raw item id."""
        if self.item_ids is None:
            raise ValueError("this table has no item ids")
        if self._id_index is None:
            self._id_index = {iid: i for i, iid in enumerate(self.item_ids)}
        try:
            return self._id_index[item_id]
        except KeyError:
            raise KeyError(f"unknown item id {item_id!r}") from None

    def prefix_children(self) -> dict[tuple[int, ...], np.ndarray]:
        """Trie as a map: every valid prefix (length ``0 .. num_levels - 1``, ``()`` is the root) ->
        sorted array of the codes that may follow it (:meth:`genrec.trie.PrefixTrie.prefix_children`).
        Built once, then cached."""
        if self._children is None:
            self._children = PrefixTrie(self.codes, self.codebook_sizes).prefix_children()
        return self._children

    def children(self, prefix: Sequence[int] = ()) -> np.ndarray:
        """Codes allowed after ``prefix`` (empty array if the prefix is not valid or is a full ID)."""
        return self.prefix_children().get(tuple(int(v) for v in prefix), np.zeros(0, dtype=np.int64))

    def is_valid_prefix(self, prefix: Sequence[int]) -> bool:
        p = tuple(int(v) for v in prefix)
        return p in self.prefix_children() or p in self._lookup

    # -- persistence -----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"format": _FORMAT, "num_items": self.num_items, "num_levels": self.num_levels,
                "codebook_sizes": list(self.codebook_sizes), "disambiguated": self.disambiguated,
                "config": self.config, "item_ids": self.item_ids, "codes": self.codes.tolist()}

    def save(self, path: str | Path) -> Path:
        """Write the table and its config as one JSON file (atomically)."""
        return save_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> "SemanticIdTable":
        """The table :meth:`save` wrote; anything else (another file, a damaged one) is a
        :class:`~genrec.errors.CheckpointError` naming ``path``."""
        d = load_json(path)
        if not isinstance(d, dict) or d.get("format") != _FORMAT:
            raise CheckpointError(f"{path}: not a genrec semantic-ID table")
        try:
            codes = np.asarray(d["codes"])
            if codes.size and codes.dtype.kind not in "iu":  # 1.7 became code 1 silently
                raise ValueError(f"codes must be integers, got {codes.dtype} values")
            return cls(codes.astype(np.int64), d["codebook_sizes"], d.get("item_ids"),
                       d.get("config"), disambiguated=bool(d.get("disambiguated", True)))
        except (KeyError, TypeError, ValueError) as e:  # a missing entry, ragged rows, clashing IDs, ...
            raise CheckpointError(f"{path}: a damaged semantic-ID table ({type(e).__name__}: {e})") from None

    def __len__(self) -> int:
        return self.num_items

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, SemanticIdTable) and np.array_equal(self.codes, other.codes)
                and self.codebook_sizes == other.codebook_sizes and self.item_ids == other.item_ids
                and self.disambiguated == other.disambiguated)

    def __repr__(self) -> str:
        return (f"SemanticIdTable(items={self.num_items}, levels={self.num_levels}, "
                f"codebook_sizes={list(self.codebook_sizes)})")
