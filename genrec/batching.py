"""Histories -> model token tensors, training batches, and the input checks every model shares.

Padding conventions (the one place they are written down; other modules refer here):

- **Item indices, ``-1`` = absent.** Dataset items are ``0 .. num_items - 1``. Histories
  (:class:`genrec.splits.Instances`, training sequences) are variable-length arrays of real item
  indices only, oldest first: no padding inside them (:func:`check_histories` refuses ``-1``).
  Fixed-width item arrays use ``-1`` for an empty slot: top-K lists (``BeamResult.items``;
  ``genrec.metrics.ranks_from_topk`` reads entries < 0 as padding), candidate lists
  (``score_candidates``, :mod:`fusion.candidates`) and ``Instances.padded_histories``.
- **Model tokens, ``0`` = padding.** Inside the item-level models (:mod:`genrec.sasrec`,
  :mod:`genrec.generative`, :mod:`fusion.joint`) item ``k`` is token ``k + 1`` and ``0`` is padding
  (``nn.Embedding(..., padding_idx=0)``). Token matrices ``[B, L]`` are right-aligned (the most
  recent item last) and left-padded with 0 (:func:`histories_to_tokens`); training targets are 0
  at padding positions. Semantic-ID code tokens follow the same rule (0 = none, code tokens start
  at 1); the T5 preset (:mod:`genrec.tiger`) has its own token layout, given in its docstring.
- **Scores, ``-inf`` = impossible or absent.** Log-probability / score tensors give ``-inf`` to an
  invalid code, to a padding candidate (``-1``) and to an empty top-K slot.
"""

from __future__ import annotations

from typing import Any, Iterator, Sequence

import numpy as np
import torch

__all__ = ["check_histories", "histories_to_tokens", "training_batches", "seen_tokens"]


def check_histories(histories: Sequence[np.ndarray], num_items: int, min_length: int = 0,
                    model: str = "the model") -> None:
    """Raise ValueError naming the first history (by its index) that holds an item index outside
    ``[0, num_items)`` or has fewer than ``min_length`` items. Inside the models index -1 would
    silently become padding (and ``num_items`` an index error), so entry points check once, vectorised."""
    lengths = np.fromiter((len(h) for h in histories), dtype=np.int64, count=len(histories))
    short = np.flatnonzero(lengths < min_length)
    if len(short):
        i = int(short[0])
        what = "is empty" if lengths[i] == 0 else f"has only {lengths[i]} items"
        need = "one item" if min_length == 1 else f"{min_length} items"
        raise ValueError(f"history {i} {what}: {model} needs at least {need} in every history")
    if not lengths.sum():
        return
    arrays = [np.asarray(h).reshape(-1) for h in histories]
    for i, a in enumerate(arrays):
        if len(a) and a.dtype.kind not in "iu":  # 1.7 was read as item 1, True as item 1
            raise ValueError(f"history {i} holds {a.dtype} values; histories hold integer item indices")
    flat = np.concatenate([a for a in arrays if len(a)])
    bad = np.flatnonzero((flat < 0) | (flat >= num_items))
    if len(bad):
        i = int(np.searchsorted(np.cumsum(lengths), bad[0], side="right"))
        raise ValueError(f"history {i} holds item index {flat[bad[0]]}, outside the catalogue's 0..{num_items - 1}; "
                         "histories hold real item indices only (the model adds its own padding)")


def histories_to_tokens(histories: list[np.ndarray], max_len: int) -> torch.Tensor:
    """Right-aligned, left-padded token matrix ``[n, min(max_len, longest)]`` (item i -> token i+1)."""
    length = max(1, min(max_len, max(len(h) for h in histories)))
    out = np.zeros((len(histories), length), dtype=np.int64)
    for k, h in enumerate(histories):
        h = np.asarray(h, dtype=np.int64)[-length:]  # a list too (it raised a TypeError)
        if len(h):
            out[k, length - len(h):] = h + 1
    return torch.from_numpy(out)


def training_batches(sequences: list[np.ndarray], config: Any, rng: np.random.Generator
                     ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Shuffled ``(inputs [B, L], targets [B, L])`` token batches (``config``: anything with
    ``max_len`` and ``batch_size``); each sequence's last ``max_len + 1`` items give one input
    window and the next-item targets at every position (0 where padding).

    Batches group sequences of similar length (sorted with random tie-breaks, then batch order
    shuffled): Amazon sequences are mostly short, so padding every batch to the longest one would
    multiply the transformer's work several times over.
    """
    usable = [s[-(config.max_len + 1):] for s in sequences if len(s) >= 2]
    lengths = np.array([len(s) for s in usable])
    by_length = np.lexsort((rng.random(len(usable)), lengths))
    batches = [by_length[i:i + config.batch_size] for i in range(0, len(usable), config.batch_size)]
    for b in rng.permutation(len(batches)):
        chunk = [usable[i] for i in batches[b]]
        inputs = histories_to_tokens([s[:-1] for s in chunk], config.max_len)
        targets = histories_to_tokens([s[1:] for s in chunk], config.max_len)
        yield inputs, targets


def seen_tokens(tokens: torch.Tensor, rows: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """The tokens consumed up to and including each selected position, ``[P, L]`` (0 after it), for
    token matrix ``tokens [B, L]`` and the ``P`` positions ``(rows [P], positions [P])``."""
    L = tokens.shape[1]
    return tokens[rows].masked_fill(torch.arange(L, device=tokens.device)[None] > positions[:, None], 0)
