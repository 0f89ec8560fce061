"""Beam search constrained to valid semantic IDs, and teacher-forced scoring of candidate items.

Shared by every model that emits an item as its ``num_levels`` codes one level at a time
(:mod:`genrec.generative`, :mod:`genrec.tiger`). A model implements the small
:class:`CodeDecoder` protocol: encode a batch of histories once (``start``), then give the
log-probabilities of the next code for any set of code prefixes (``step``), carrying whatever it
caches (``reorder`` follows the beams). :class:`genrec.trie.PrefixTrie` turns the semantic-ID
table into dense per-level child tables, so the valid-token mask of every beam is one gather and the
final level yields item indices directly: the search can never return a non-existent item.

Scores are sums over levels of the model's (full-softmax) log-probabilities of each code, with
invalid codes masked out afterwards (as ``transformers``' ``prefix_allowed_tokens_fn`` does), so
a beam result's score equals :func:`score_candidates` of the same item. Padding (``-1`` items,
``-inf`` scores) follows :mod:`genrec.batching`.

Device: the search runs where the model's parameters are (:func:`decoder_device`), with the trie's
tables copied there once (:func:`trie_on`); the returned arrays are NumPy, on the host.
"""

from __future__ import annotations

import contextlib
import copy
import weakref
from dataclasses import dataclass
from typing import Any, Iterator, Protocol

import numpy as np
import torch

from genrec.batching import check_histories
from genrec.errors import CheckpointError
from genrec.model_settings import autocast, model_precision
from genrec.trie import PrefixTrie  # re-exported: beam_search's callers build the trie they pass in

__all__ = ["PrefixTrie", "CodeDecoder", "BeamResult", "beam_search", "score_candidates", "beam_from_context",
           "first_level",
           "score_from_context", "length_batches", "decoder_device", "trie_on"]

# per trie, its copies on other devices (a Beauty trie's last table is ~25 MB: copied once, not per batch)
_DEVICE_TRIES: "weakref.WeakKeyDictionary[PrefixTrie, dict[torch.device, PrefixTrie]]" = weakref.WeakKeyDictionary()


def decoder_device(model: Any) -> torch.device:
    """The device of a decoder's parameters (the CPU for a model without any)."""
    params = model.parameters() if isinstance(model, torch.nn.Module) else iter(())
    first = next(params, None)
    return first.device if first is not None else torch.device("cpu")


def trie_on(trie: PrefixTrie, device: torch.device | str) -> PrefixTrie:
    """``trie`` with its tables on ``device`` (``trie`` itself on the CPU; other devices' copies are
    made once per trie and kept while the trie lives)."""
    device = torch.device(device)
    if trie.codes.device == device:
        return trie
    copies = _DEVICE_TRIES.setdefault(trie, {})
    if device not in copies:
        moved = copy.copy(trie)
        moved.codes = trie.codes.to(device)
        moved.child = [t.to(device) for t in trie.child]
        moved.item_nodes = trie.item_nodes.to(device)
        copies[device] = moved
    return copies[device]


class CodeDecoder(Protocol):
    """What :func:`beam_search` and :func:`score_candidates` need from a model. An optional class
    attribute ``min_history`` (default 0) is the fewest history items the model can read."""

    def start(self, histories: list[np.ndarray], users: np.ndarray | None = None) -> Any:
        """Encode ``N`` histories (item indices, oldest first) once; returns an opaque context."""

    def step(self, context: Any, codes: torch.Tensor, cache: Any) -> tuple[torch.Tensor, Any]:
        """Given code prefixes ``int64 [N, K, l]`` (the same ``K`` rows as the cache), return the
        log-probabilities of level ``l``'s code, ``[N, K, codebook_sizes[l]]``, and the new cache
        (``None`` at level 0)."""

    def reorder(self, cache: Any, index: torch.Tensor) -> Any:
        """Cache for new rows ``index`` ``int64 [N, K_new]`` (indices into the old ``K`` rows)."""


@dataclass
class BeamResult:
    """Top-K items per history, best first; ``items`` ``-1`` and ``log_probs`` ``-inf`` pad rows
    with fewer than K valid items."""

    items: np.ndarray  # [n, K] int64
    log_probs: np.ndarray  # [n, K] float32, sequence log-probabilities
    codes: np.ndarray  # [n, K, num_levels] int64 (-1 where items is -1)


@torch.no_grad()
def first_level(model: CodeDecoder, context: Any, num_histories: int) -> tuple[torch.Tensor, Any]:
    """``model.step`` at level 0 (no code chosen yet): log-probs ``[N, 1, V_0]`` and the cache, the
    same for every beam and candidate of a history; :func:`beam_from_context` and
    :func:`score_from_context` take it (``first``) so that a caller doing both computes it once."""
    codes = torch.zeros(num_histories, 1, 0, dtype=torch.long, device=decoder_device(model))
    return model.step(context, codes, None)


@torch.no_grad()
def beam_from_context(model: CodeDecoder, trie: PrefixTrie, context: Any, num_histories: int, beam_size: int,
                      first: tuple[torch.Tensor, Any] | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Constrained beam search for ``N = num_histories`` histories already encoded by ``model.start``:
    items ``[N, K]`` (-1 pads), sequence log-probs ``[N, K]`` (best first) and codes ``[N, K, L]``.
    Callers that also score candidates of the same histories (:func:`score_from_context`) encode once
    (and may pass both the level-0 step, :func:`first_level`). The tensors are on the model's device
    (:func:`decoder_device`)."""
    N = num_histories
    device = decoder_device(model)
    trie = trie_on(trie, device)
    codes = torch.zeros(N, 1, 0, dtype=torch.long, device=device)  # [N, K, l]
    nodes = torch.zeros(N, 1, dtype=torch.long, device=device)  # prefix node of each beam
    scores = torch.zeros(N, 1, device=device)  # [N, K] accumulated log-probs
    cache = None
    for lvl in range(trie.num_levels):
        logp, cache = first if lvl == 0 and first is not None else model.step(context, codes, cache)  # [N, K, V]
        V = logp.shape[-1]
        nxt = trie.child[lvl][nodes.clamp_min(0)]  # [N, K, V] next node / item, -1 invalid
        valid = (nxt >= 0) & torch.isfinite(scores)[..., None] & ~torch.isnan(logp)  # NaN would take beam slots
        total = torch.where(valid, scores[..., None] + logp, -torch.inf).reshape(N, -1)  # [N, K * V]
        k = min(beam_size, total.shape[1])
        scores, flat = total.topk(k, dim=1)  # [N, k], best first
        parent, code = flat // V, flat % V
        nodes = nxt.reshape(N, -1).gather(1, flat)
        nodes = torch.where(torch.isfinite(scores), nodes, -1)
        codes = torch.cat([codes.gather(1, parent[..., None].expand(-1, -1, codes.shape[2])), code[..., None]], 2)
        if lvl + 1 < trie.num_levels:
            cache = model.reorder(cache, parent)
    alive = torch.isfinite(scores)
    return torch.where(alive, nodes, -1), scores, torch.where(alive[..., None], codes, -1)


@torch.no_grad()
def score_from_context(model: CodeDecoder, trie: PrefixTrie, context: Any, candidates: np.ndarray,
                       first: tuple[torch.Tensor, Any] | None = None) -> np.ndarray:
    """Teacher-forced log-probabilities ``float32 [N, C]`` of ``candidates`` ``int64 [N, C]`` (-1:
    padding, ``-inf``) for ``N`` histories already encoded by ``model.start`` (``first``: their
    level-0 step, :func:`first_level`, if computed already)."""
    cand = np.asarray(candidates, dtype=np.int64)
    # Real candidates first in each row, then only as many columns as the fullest row needs:
    # callers often pass mostly padding (fusion asks only for the items a model is missing).
    real = cand >= 0
    cols = np.argsort(~real, axis=1, kind="stable")[:, :max(int(real.sum(1).max()) if real.size else 0, 1)]
    device = decoder_device(model)
    trie = trie_on(trie, device)
    c = torch.from_numpy(np.take_along_axis(cand, cols, 1)).to(device)  # [N, C']
    N, C = c.shape
    codes = trie.codes[c.clamp_min(0)]  # [N, C, L]
    total = torch.zeros(N, C, device=device)
    logp, cache = first if first is not None else model.step(context, codes[:, :1, :0], None)  # shared by all
    total += logp[:, 0].gather(1, codes[:, :, 0])
    if trie.num_levels > 1:
        cache = model.reorder(cache, torch.zeros(N, C, dtype=torch.long, device=device))
    for lvl in range(1, trie.num_levels):
        logp, cache = model.step(context, codes[:, :, :lvl], cache)
        total += logp.gather(2, codes[:, :, lvl:lvl + 1])[..., 0]
    scored = np.full(cand.shape, -np.inf, dtype=np.float32)
    np.put_along_axis(scored, cols, torch.where(c >= 0, total, -torch.inf).cpu().numpy(), 1)
    return scored


def check_same_codes(model: torch.nn.Module, state_dict: Any) -> None:
    """:class:`~genrec.errors.CheckpointError` unless ``state_dict``'s ``item_tokens`` (a decoder's
    semantic IDs as tokens) are ``model``'s own: the trie that constrains its decoding is built from
    its codes, so weights trained on other semantic IDs of the same shape would load silently and
    decode with one table while reading histories with another."""
    tokens = state_dict.get("item_tokens") if hasattr(state_dict, "get") else None
    own = model.item_tokens
    if tokens is not None and (tuple(tokens.shape) != tuple(own.shape) or not torch.equal(tokens.cpu(), own.cpu())):
        raise CheckpointError(f"the weights were trained on other semantic IDs (item_tokens {list(tokens.shape)}, "
                              f"this model's {list(own.shape)} or other codes)")


def length_batches(histories: list[np.ndarray], batch_size: int) -> list[np.ndarray]:
    """Row indices in batches of similar history length (less padding), the order every decoding
    entry point uses, so their batches (and numbers, to float32 rounding) agree."""
    order = np.argsort([len(h) for h in histories], kind="stable")
    return [order[s:s + batch_size] for s in range(0, len(order), batch_size)]


@torch.no_grad()
def beam_search(model: CodeDecoder, trie: PrefixTrie, histories: list[np.ndarray], beam_size: int = 20,
                top_k: int | None = None, users: np.ndarray | None = None, batch_size: int = 512
                ) -> BeamResult:
    """Constrained beam search: the ``top_k`` (default ``beam_size``) best valid items per history.

    Histories are processed in batches of similar length (less padding); with a beam at least as
    wide as the number of valid prefixes at every level the result is the exact top-K. The model
    decodes in eval mode (no dropout) and is left in the mode it came in. Code-level scores only: the
    generative model's repeat gate is applied by :func:`genrec.generative.recommend` /
    ``score_items``, which the rest of genrec uses.
    """
    top_k = beam_size if top_k is None else top_k
    if not 1 <= top_k <= beam_size:
        raise ValueError(f"need 1 <= top_k <= beam_size, got top_k={top_k}, beam_size={beam_size}")
    _check(model, trie, histories)
    n = len(histories)
    items = np.full((n, top_k), -1, dtype=np.int64)
    logp = np.full((n, top_k), -np.inf, dtype=np.float32)
    codes = np.full((n, top_k, trie.num_levels), -1, dtype=np.int64)
    with eval_mode(model), autocast(model_precision(model), decoder_device(model)):  # bf16 forwards on CUDA
        for rows in length_batches(histories, batch_size):
            context = model.start([histories[r] for r in rows],
                                  None if users is None else np.asarray(users)[rows])
            it, sc, cd = beam_from_context(model, trie, context, len(rows), beam_size)
            k = min(top_k, it.shape[1])
            it, sc, cd = (t[:, :k].float().cpu().numpy() if t.is_floating_point() else t[:, :k].cpu().numpy()
                          for t in (it, sc, cd))
            items[rows, :k], logp[rows, :k], codes[rows, :k] = it, sc, cd
    return BeamResult(items=items, log_probs=logp, codes=codes)


@contextlib.contextmanager
def eval_mode(model: Any) -> Iterator[None]:
    """``model`` in eval mode (no dropout) inside the block, its own mode restored after: decoding and
    scoring a model left in training mode must give its deterministic numbers."""
    was_training = getattr(model, "training", False)  # a CodeDecoder need not be an nn.Module
    if was_training:
        model.eval()
    try:
        yield
    finally:
        if was_training:
            model.train()


@torch.no_grad()
def score_candidates(model: CodeDecoder, trie: PrefixTrie, histories: list[np.ndarray], candidates: np.ndarray,
                     users: np.ndarray | None = None, batch_size: int = 512) -> np.ndarray:
    """Teacher-forced sequence log-probability of each candidate item, ``float32 [n, C]`` for
    ``candidates`` ``int64 [n, C]`` (``-1`` entries, padding, get ``-inf``). Same numbers as the
    beam's scores for the items it returns."""
    cand = np.asarray(candidates, dtype=np.int64)
    if cand.ndim != 2 or len(cand) != len(histories):
        raise ValueError(f"candidates must be [n={len(histories)}, C], got {cand.shape}")
    if (cand >= trie.num_items).any():
        raise ValueError(f"candidate item index >= {trie.num_items}")
    _check(model, trie, histories)
    out = np.full(cand.shape, -np.inf, dtype=np.float32)
    if not cand.shape[1]:  # no candidate to score
        return out
    with eval_mode(model), autocast(model_precision(model), decoder_device(model)):  # the beam's numbers
        for rows in length_batches(histories, batch_size):
            context = model.start([histories[r] for r in rows], None if users is None else np.asarray(users)[rows])
            out[rows] = score_from_context(model, trie, context, cand[rows])
    return out


def _check(model: CodeDecoder, trie: PrefixTrie, histories: list[np.ndarray]) -> None:
    """Histories of real items, and as many as the model needs (ValueError naming the history)."""
    check_histories(histories, trie.num_items, getattr(model, "min_history", 0), f"{type(model).__name__}")
