"""The prefix trie of a set of semantic IDs: which codes may follow each code prefix.

One implementation for every user: constrained decoding (:mod:`genrec.beam_search`, the models'
constrained softmax in :mod:`genrec.generative`, :mod:`fusion.joint`) reads its dense per-level
child tables, and :meth:`quantize.semantic_ids.SemanticIdTable.prefix_children` its map view.
Standalone (numpy and torch only), so :mod:`quantize` can use it without model code.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

__all__ = ["PrefixTrie", "trie_of"]


class PrefixTrie:
    """Valid semantic IDs as per-level dense child tables.

    Prefixes of length ``l`` are numbered ``0 .. num_nodes(l) - 1`` (the empty prefix is node 0 of
    level 0). ``child[l]`` is ``int64 [num_nodes(l), codebook_sizes[l]]``: the node reached by
    appending a code, the item index at the last level, ``-1`` where the code is not valid.
    """

    def __init__(self, codes: np.ndarray, codebook_sizes: Sequence[int] | None = None) -> None:
        codes = np.asarray(codes, dtype=np.int64)
        if codes.ndim != 2 or len(codes) == 0:
            raise ValueError(f"codes must be a non-empty [n_items, levels] array, got {codes.shape}")
        sizes = tuple(int(s) for s in (codebook_sizes if codebook_sizes is not None else codes.max(0) + 1))
        if len(sizes) != codes.shape[1] or (codes >= np.asarray(sizes)).any() or (codes < 0).any():
            raise ValueError(f"codes out of range for codebook sizes {list(sizes)}")
        n, L = codes.shape
        self.codes = torch.from_numpy(codes)  # [n_items, L]
        self.codebook_sizes = sizes
        # node of each item's prefix of length l, for l = 0 .. L - 1: [L, n_items]
        nodes = np.zeros((L, n), dtype=np.int64)
        for lvl in range(1, L):
            _, inv = np.unique(codes[:, :lvl], axis=0, return_inverse=True)
            nodes[lvl] = inv.reshape(-1)
        self.child: list[torch.Tensor] = []
        for lvl in range(L):
            table = np.full((int(nodes[lvl].max()) + 1, sizes[lvl]), -1, dtype=np.int64)
            nxt = nodes[lvl + 1] if lvl + 1 < L else np.arange(n)
            if lvl + 1 == L and len(np.unique(codes, axis=0)) != n:
                raise ValueError("two items share a semantic ID; disambiguate the codes first")
            table[nodes[lvl], codes[:, lvl]] = nxt
            self.child.append(torch.from_numpy(table))
        self.item_nodes = torch.from_numpy(nodes)  # [L, n_items]

    @classmethod
    def from_table(cls, table: Any) -> "PrefixTrie":
        """Trie of a :class:`quantize.semantic_ids.SemanticIdTable` (anything with ``codes`` and
        ``codebook_sizes``)."""
        return cls(table.codes, table.codebook_sizes)

    @property
    def num_levels(self) -> int:
        return self.codes.shape[1]

    @property
    def num_items(self) -> int:
        return self.codes.shape[0]

    def num_nodes(self, level: int) -> int:
        return self.child[level].shape[0]

    def valid_mask(self, level: int, nodes: torch.Tensor) -> torch.Tensor:
        """``bool [*nodes.shape, codebook_sizes[level]]``: which codes may follow each prefix node."""
        return self.child[level][nodes] >= 0

    def walk(self, prefix: Sequence[int]) -> int:
        """Node of a code prefix (item index for a full ID); ``-1`` if the prefix is not valid (a
        code out of range, a prefix no item has, or one longer than a semantic ID)."""
        if len(prefix) > self.num_levels:
            return -1
        node = 0
        for lvl, c in enumerate(prefix):
            if node < 0 or not 0 <= c < self.codebook_sizes[lvl]:
                return -1
            node = int(self.child[lvl][node, c])
        return node

    def prefix_children(self) -> dict[tuple[int, ...], np.ndarray]:
        """The trie as a map: every valid prefix (length ``0 .. num_levels - 1``, ``()`` is the root)
        -> sorted ``int64`` array of the codes that may follow it, keyed in order of first
        appearance (item by item, shortest prefix first)."""
        valid = [(table >= 0).numpy() for table in self.child]  # per level: [num_nodes(l), V_l]
        nodes = self.item_nodes.numpy()
        out: dict[tuple[int, ...], np.ndarray] = {}
        for item, row in enumerate(self.codes.tolist()):
            for lvl in range(self.num_levels):
                key = tuple(row[:lvl])
                if key not in out:
                    out[key] = np.flatnonzero(valid[lvl][nodes[lvl, item]]).astype(np.int64)
        return out


def trie_of(model: Any) -> PrefixTrie:
    """The :class:`PrefixTrie` of a model's semantic IDs: its ``trie`` attribute when it has one,
    else one built from its ``codes`` and ``codebook_sizes`` once and cached on the model (as a
    plain attribute ``_trie``, not a sub-module or buffer, so the state dict is unchanged)."""
    trie = getattr(model, "trie", None) or getattr(model, "_trie", None)
    if trie is None:
        trie = PrefixTrie(model.codes, model.codebook_sizes)
        object.__setattr__(model, "_trie", trie)  # cached, not a sub-module or buffer
    return trie
