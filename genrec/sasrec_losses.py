"""SASRec's training losses: the full softmax cross-entropy, the same streamed over item chunks
(exact, for catalogues whose ``positions x items`` logits do not fit), and a sampled softmax with
log-Q correction (:attr:`genrec.sasrec.SASRecConfig.loss`). Every item vector is read through
``SASRec.item_vectors``, so the content-aware model trains the same way.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from genrec.batching import seen_tokens
from genrec.errors import ConfigError

if TYPE_CHECKING:  # the model module imports this one
    from genrec.sasrec import SASRec, SASRecConfig

__all__ = ["LOSSES", "NEGATIVES", "NegativeSampler", "chunked_cross_entropy", "sampled_softmax_loss", "sasrec_loss"]

#: values of :attr:`SASRecConfig.loss` and :attr:`SASRecConfig.negatives`
LOSSES = ("full", "chunked", "sampled")
NEGATIVES = ("uniform", "popularity")


def _seen_pairs(seen: torch.Tensor | None, num_items: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Distinct ``(row [S], item [S])`` pairs of the real tokens of ``seen`` ``[P, L]`` (empty for None),
    sorted by ``row * num_items + item``: the entries that get the repeat bias, once each."""
    if seen is None:
        empty = torch.zeros(0, dtype=torch.long)
        return empty, empty
    rows = torch.arange(len(seen), device=seen.device)[:, None].expand_as(seen)
    real = seen > 0
    flat = torch.unique(rows[real] * num_items + seen[real] - 1)
    return flat // num_items, flat % num_items


def _chunk_logits(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, rows: torch.Tensor,
                  cols: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """Logits ``[P, stop - start]`` of items ``start .. stop - 1`` with the bias at the seen pairs (distinct,
    so ``accumulate`` adds it once) -- what ``SASRec.item_logits`` gives for that range."""
    logits = hidden @ weight[start:stop].T
    if bias is not None:
        sel = (cols >= start) & (cols < stop)
        logits.index_put_((rows[sel], cols[sel] - start), bias.to(logits.dtype).expand(int(sel.sum())),
                          accumulate=True)
    return logits


class _ChunkedLogSumExp(torch.autograd.Function):
    """``logsumexp`` over the catalogue of the item logits, streamed over item chunks in both passes:
    backward recomputes each chunk's logits (twice the matmuls of the full loss) instead of keeping
    them, so memory is ``P x chunk`` rather than ``P x num_items``."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, rows, cols, chunk):  # type: ignore[override]
        # hidden [P, H], weight [N, H] (items only), bias [] or None, rows / cols [S] seen pairs
        lse = torch.full((hidden.shape[0],), -torch.inf, dtype=hidden.dtype, device=hidden.device)
        for start in range(0, weight.shape[0], chunk):
            part = _chunk_logits(hidden, weight, bias, rows, cols, start, start + chunk).logsumexp(-1)
            lse = torch.logaddexp(lse, part)  # [P]
        ctx.chunk = chunk
        ctx.save_for_backward(hidden, weight, bias, rows, cols, lse)
        return lse

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        hidden, weight, bias, rows, cols, lse = ctx.saved_tensors
        grad_h, grad_w = torch.zeros_like(hidden), torch.zeros_like(weight)
        grad_b = torch.zeros_like(bias) if bias is not None else None
        for start in range(0, weight.shape[0], ctx.chunk):
            stop = min(start + ctx.chunk, weight.shape[0])
            # d lse / d logits = softmax: [P, chunk], scaled by the incoming gradient
            p = (_chunk_logits(hidden, weight, bias, rows, cols, start, stop) - lse[:, None]).exp() * grad[:, None]
            grad_h += p @ weight[start:stop]
            grad_w[start:stop] = p.T @ hidden
            if grad_b is not None:
                sel = (cols >= start) & (cols < stop)
                grad_b += p[rows[sel], cols[sel] - start].sum()
        return grad_h, grad_w, grad_b, None, None, None


def _target_logits(model: SASRec, hidden: torch.Tensor, seen: torch.Tensor | None, targets: torch.Tensor,
                   target_weights: torch.Tensor | None = None) -> torch.Tensor:
    """``[P]`` logit of each row's target item, as in ``item_logits`` (with the repeat bias when seen);
    ``target_weights``: the targets' embedding rows ``[P, H]`` when the caller has gathered them."""
    w = model.item_vectors(targets + 1) if target_weights is None else target_weights
    logits = (hidden * w).sum(-1)
    if model.repeat_bias is not None and seen is not None:
        logits = logits + model.repeat_bias * (seen == targets[:, None] + 1).any(1)
    return logits


def chunked_cross_entropy(model: SASRec, hidden: torch.Tensor, seen: torch.Tensor | None, targets: torch.Tensor,
                          chunk: int) -> torch.Tensor:
    """Mean cross-entropy of ``targets`` ``[P]`` (item indices) under ``model.item_logits(hidden [P, H], seen)``,
    exact (the full softmax, value and gradients) but computed ``chunk`` items at a time."""
    rows, cols = _seen_pairs(seen if model.repeat_bias is not None else None, model.num_items)
    # in float32 whatever the autocast (bf16): backward recomputes the chunks outside autocast, so the
    # forward's log-sum-exp must come from the same float32 logits (and bf16 logits with a float32 bias
    # could not be summed in place at all)
    def up(t: torch.Tensor) -> torch.Tensor:  # bf16 / half to float32; float32 and float64 as they are
        return t.float() if t.dtype in (torch.bfloat16, torch.float16) else t

    with torch.autocast(device_type=hidden.device.type, enabled=False):
        hidden = up(hidden)
        items = up(model.item_vectors(slice(1, None)))
        lse = _ChunkedLogSumExp.apply(hidden, items, model.repeat_bias, rows.to(hidden.device),
                                      cols.to(hidden.device), int(chunk))
        target = up(_target_logits(model, hidden, seen, targets))
    return (lse - target).mean()


class NegativeSampler:
    """Negatives for :func:`sampled_softmax_loss`: ``draw()`` gives ``num`` item indices (with
    replacement, torch's seeded RNG) and ``log_q`` ``[num_items]`` the log-probability of drawing each.

    ``"uniform"``, or ``"popularity"``: each item's count in ``sequences`` plus one (so every item can
    be drawn), the usual choice when a few items take most interactions.
    """

    def __init__(self, num_items: int, num: int, kind: str = "uniform", sequences: list[np.ndarray] | None = None,
                 device: torch.device | str = "cpu"):
        if kind not in NEGATIVES:
            raise ConfigError(f"negatives must be one of {list(NEGATIVES)}, got {kind!r}")
        self.num_items, self.num, self.kind = num_items, int(num), kind
        if kind == "uniform":
            self.q = None
            self.log_q = torch.full((num_items,), -math.log(num_items), device=device)
        else:
            flat = np.concatenate([np.asarray(s, np.int64) for s in sequences]) if sequences else np.zeros(0, np.int64)
            counts = np.bincount(flat, minlength=num_items)[:num_items].astype(np.float64) + 1.0
            self.q = torch.as_tensor(counts / counts.sum(), dtype=torch.float32, device=device)
            self.log_q = self.q.log()

    def draw(self) -> torch.Tensor:
        """``[num]`` sampled item indices."""
        if self.q is None:
            return torch.randint(self.num_items, (self.num,), device=self.log_q.device)
        return torch.multinomial(self.q, self.num, replacement=True)


def sampled_softmax_loss(model: SASRec, hidden: torch.Tensor, seen: torch.Tensor | None, targets: torch.Tensor,
                         negatives: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """Mean sampled-softmax cross-entropy: each row's target against the ``negatives`` ``[K]`` shared by
    all rows, every logit minus ``log_q`` of its item (log-Q correction, so that the sampled softmax
    estimates the full one rather than one biased toward often-drawn items); a negative equal to the
    row's target is left out (an accidental hit)."""
    # one gather of the rows needed: each gather's backward fills a dense [num_items, H] gradient
    weights = model.item_vectors(torch.cat([targets, negatives]) + 1)  # [P + K, H]
    pos = _target_logits(model, hidden, seen, targets, weights[:len(targets)]) - log_q[targets]  # [P]
    neg = hidden @ weights[len(targets):].T  # [P, K]
    if model.repeat_bias is not None and seen is not None:
        # seen negatives found from the seen pairs' side ([S] lookups among the distinct negatives),
        # not by testing all P x K (row, negative) pairs, whose sort dominated the step at 1M items
        rows, cols = _seen_pairs(seen, model.num_items)
        distinct, inverse = torch.unique(negatives, return_inverse=True)  # [U], [K]
        at = torch.searchsorted(distinct, cols).clamp(max=len(distinct) - 1)
        hit = distinct[at] == cols
        seen_neg = torch.zeros(len(hidden), len(distinct), dtype=torch.bool, device=hidden.device)
        seen_neg[rows[hit], at[hit]] = True
        neg = neg + model.repeat_bias * seen_neg[:, inverse]
    neg = (neg - log_q[negatives]).masked_fill(negatives[None] == targets[:, None], -torch.inf)
    logits = torch.cat([pos[:, None], neg], 1)  # [P, 1 + K], the target first
    return F.cross_entropy(logits, torch.zeros(len(logits), dtype=torch.long, device=logits.device))


def sasrec_loss(model: SASRec, inputs: torch.Tensor, targets: torch.Tensor, config: SASRecConfig,
                sampler: NegativeSampler | None = None) -> tuple[torch.Tensor, int]:
    """``(mean loss, positions)`` of a training batch (token matrices ``[B, L]``, targets 0 at padding)
    under ``config.loss``; ``"sampled"`` needs a ``sampler``."""
    hidden = model(inputs)  # [B, L, H]
    valid = targets > 0
    if config.loss == "full":
        logits = model.position_logits(inputs, hidden, valid)  # [P, num_items], only real positions
        return F.cross_entropy(logits, targets[valid] - 1), int(valid.sum())
    b, t = valid.nonzero(as_tuple=True)
    h, seen, y = hidden[b, t], seen_tokens(inputs, b, t), targets[valid] - 1  # [P, H], [P, L], [P]
    if config.loss == "chunked":
        return chunked_cross_entropy(model, h, seen, y, config.loss_chunk), int(valid.sum())
    if sampler is None:
        raise ValueError("loss 'sampled' needs a NegativeSampler")
    return sampled_softmax_loss(model, h, seen, y, sampler.draw(), sampler.log_q), int(valid.sum())


# ----------------------------------------------------------------------------------------------
# Inference
