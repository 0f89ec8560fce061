"""Post-hoc fusion of an ID model and a generative model, fitted on the validation split only.

All methods share one small protocol (:class:`FusionMethod`, no base class):

- ``fit(cands, targets, indicators)``: validation :class:`~fusion.candidates.CandidateScores`, their
  targets and :class:`~fusion.indicators.Indicators`; the only call that sees targets.
- ``fuse(cands, indicators) -> [n, C]`` fused scores (rank candidates with ``cands.topk``).
- ``gates(cands, indicators) -> GateReport``: per instance the weight ``g`` on the ID model
  (1 = trust the ID model fully), the features it came from and each feature's contribution.
- ``params() -> dict``: everything fitted, for inspection and the leakage test.
- ``state() -> dict`` and the classmethod ``from_state(state)``: the configuration and everything
  fitted as plain values, lists, dicts and tensors (loadable with ``torch.load(weights_only=True)``),
  and the equal, fitted method rebuilt from it; an unfitted method's ``state()`` is a ``ValueError``,
  a malformed state a ``ValueError`` from ``from_state``. :mod:`fusion.persist` saves them to a file.

Methods (``g`` = weight of the ID model):

1. :class:`FixedWeightFusion`: ``g = alpha`` for all, on min-max normalised top-K scores (missing 0),
   ``alpha`` grid-searched on validation NDCG@k (``k``, default 10).
2. :class:`AdaptiveFusion` (arXiv 2603.19809): ``g = sigmoid(q * (MSP - tau))``, ``q, tau`` grid-searched.
3. :class:`LearnedGateFusion`: ``g = sigmoid(MLP(standardised indicators))``, trained listwise (softmax
   cross-entropy over the candidate union) on validation with a held-out part for early stopping.
   Score scales: ``"minmax"`` (``g * id_norm + (1 - g) * gr_norm``), ``"logprob"`` (log-linear pool
   of the two models' distributions renormalised over the union, each with a learned temperature)
   and ``"mixture"`` (``log(g * p_id + (1 - g) * p_gr)`` of the same distributions). Instances whose
   target is in neither list contribute nothing.

**Candidates the ID model cannot score** (items added after training to a SASRec that was not
extended with them, ``genrec.new_items``: it has no embedding for them, so their ID score is NaN even
with teacher forcing) are ranked by the
rule every method already applies to a candidate missing from the ID model's top-K, the rule the
methods were fitted under: on the min-max scale (fixed, adaptive, learned ``minmax``) the ID part
is 0, so the fused score is the gate's generative share ``(1 - g) * gr_norm``; on the log-prob
scales the ID log-prob is the row's lowest top-K one (:meth:`~fusion.candidates.CandidateScores.filled`).
The rule was not chosen by a measurement: it is the one the methods were fitted under. Checked
afterwards by ``bench/new_items_fusion.py`` (10% of the demo's synthetic items withheld from
training, then added; a synthetic check, not a selection): against the alternatives (min-max: the
generative score alone; log-prob: the lowest ID log-prob of the row's candidates, or no ID mass) it
gives each method its best overall NDCG@10 there, while new items are neither buried nor flooding
the lists (BENCHMARKS.md); on Beauty's natural cold items the min-max methods still bury them.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol, Sequence

import numpy as np
import torch
import torch.nn as nn

from fusion.candidates import CandidateScores, ndcg_at, union_ranks
from genrec.errors import NothingToFitError, TrainingDivergedError
from fusion.indicators import Indicators, Standardizer

log = logging.getLogger(__name__)

DEFAULT_ALPHAS = tuple(np.round(np.linspace(0.0, 1.0, 21), 3))
DEFAULT_QS = (1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0)
SCALES = ("minmax", "logprob", "mixture")


@dataclass
class GateReport:
    """Per-instance gate values: which model was trusted, and why."""

    gate: np.ndarray  # [n] weight of the ID model in [0, 1]
    features: Indicators | None = None  # raw indicator values the gate was computed from
    contributions: np.ndarray | None = None  # [n, F] each feature's contribution to the gate logit

    def trusted(self) -> np.ndarray:
        """``[n]`` ``"id"`` where ``gate > 0.5``, ``"gr"`` where ``< 0.5``, ``"both"`` at exactly 0.5."""
        return np.where(self.gate > 0.5, "id", np.where(self.gate < 0.5, "gr", "both")).astype(object)

    def explain(self, k: int, top: int = 3) -> str:
        """One line for instance ``k``: gate, trusted model and the ``top`` strongest features."""
        line = f"instance {k}: g={self.gate[k]:.3f} -> trust {self.trusted()[k]}"
        if self.features is not None and self.contributions is not None and self.contributions.shape[1]:
            c = self.contributions[k]
            parts = [f"{self.features.names[j]}={self.features.values[k, j]:.4g} ({c[j]:+.2f})"
                     for j in np.argsort(-np.abs(c))[:top]]
            line += "; " + ", ".join(parts)
        return line


class FusionMethod(Protocol):
    """What every fusion method offers (see module doc)."""

    name: str

    def fit(self, cands: CandidateScores, targets: np.ndarray, indicators: Indicators | None = None
            ) -> "FusionMethod": ...

    def fuse(self, cands: CandidateScores, indicators: Indicators | None = None) -> np.ndarray: ...

    def gates(self, cands: CandidateScores, indicators: Indicators | None = None) -> GateReport: ...

    def params(self) -> dict[str, Any]: ...

    def state(self) -> dict[str, Any]: ...


def convex(gate: np.ndarray, id_norm: np.ndarray, gr_norm: np.ndarray) -> np.ndarray:
    """``g * id + (1 - g) * gr`` with a per-instance gate ``[n]``."""
    g = np.asarray(gate, np.float32)[:, None]
    return g * id_norm + (1.0 - g) * gr_norm


def _not_fitted(method: Any) -> ValueError:
    return ValueError(f"{type(method).__name__} {method.name!r} is not fitted: call fit() before saving it")


def _check_keys(state: Any, cls: type, keys: Sequence[str]) -> Mapping[str, Any]:
    """``state`` as a mapping with exactly ``keys``, else a ``ValueError`` naming what differs."""
    if not isinstance(state, Mapping):
        raise ValueError(f"{cls.__name__} state must be a dict, got {type(state).__name__}")
    missing = [k for k in keys if k not in state]
    extra = sorted(str(k) for k in state if k not in keys)
    if missing or extra:
        problems = ([f"lacks {', '.join(missing)}"] if missing else []) + (
            [f"has unknown {', '.join(extra)}"] if extra else [])
        raise ValueError(f"{cls.__name__} state " + "; ".join(problems))
    return state


def _float(v: Any, what: str, optional: bool = False) -> float | None:
    if v is None and optional:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError(f"{what} must be a number{' or None' if optional else ''}, got {type(v).__name__}")
    return float(v)


def _int(v: Any, what: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise ValueError(f"{what} must be an int, got {type(v).__name__}")
    return int(v)


def _str(v: Any, what: str) -> str:
    if not isinstance(v, str):
        raise ValueError(f"{what} must be a string, got {type(v).__name__}")
    return v


def _floats(v: Any, what: str) -> tuple[float, ...]:
    if not isinstance(v, (list, tuple)):
        raise ValueError(f"{what} must be a list of numbers, got {type(v).__name__}")
    return tuple(_float(x, f"{what}[{i}]") for i, x in enumerate(v))


def _plain(v: Any) -> Any:
    """A number as a Python int or float (numpy scalars included); anything else as is."""
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return float(v)
    return v


class _Grid:
    """Validation NDCG@k of per-instance gates on the min-max scale, only over instances whose target
    is a candidate (the others score 0 whatever the gate), so each grid point costs O(n_hit * C)."""

    def __init__(self, cands: CandidateScores, targets: np.ndarray, k: int):
        ti = cands.target_index(targets)
        self.hit = np.flatnonzero(ti >= 0)
        self.n = len(cands)
        self.k = k
        self.ti = ti[self.hit]
        self.valid = cands.valid[self.hit]
        self.id_norm = cands.normalized("id")[self.hit]
        self.gr_norm = cands.normalized("gr")[self.hit]

    def ndcg(self, gate_hit: np.ndarray) -> float:
        if not len(self.hit):
            return 0.0
        ranks = union_ranks(convex(gate_hit, self.id_norm, self.gr_norm), self.ti, self.valid)
        return ndcg_at(ranks, self.k) * len(self.hit) / self.n


@dataclass
class FixedWeightFusion:
    """``alpha * id_norm + (1 - alpha) * gr_norm``; ``alpha`` grid-searched on validation NDCG@k."""

    alphas: Sequence[float] = DEFAULT_ALPHAS
    k: int = 10
    name: str = "fixed"
    alpha: float | None = None
    valid_ndcg: float | None = None
    grid: dict[float, float] = field(default_factory=dict)

    def fit(self, cands: CandidateScores, targets: np.ndarray, indicators: Indicators | None = None
            ) -> "FixedWeightFusion":
        g = _Grid(cands, targets, self.k)
        self.grid = {float(a): g.ndcg(np.full(len(g.hit), a)) for a in self.alphas}
        self.alpha = max(self.grid, key=lambda a: (self.grid[a], -abs(a - 0.5)))  # ties: the most even mix
        self.valid_ndcg = self.grid[self.alpha]
        log.info("fixed fusion: alpha=%.2f valid N@%d %.4f", self.alpha, self.k, self.valid_ndcg)
        return self

    def _check(self) -> None:
        if self.alpha is None:
            raise RuntimeError(f"{self.name}: call fit() first")

    def gates(self, cands: CandidateScores, indicators: Indicators | None = None) -> GateReport:
        self._check()
        return GateReport(np.full(len(cands), self.alpha, np.float32))

    def fuse(self, cands: CandidateScores, indicators: Indicators | None = None) -> np.ndarray:
        return convex(self.gates(cands).gate, cands.normalized("id"), cands.normalized("gr"))

    def params(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "valid_ndcg": self.valid_ndcg}

    _STATE_KEYS = ("alphas", "k", "name", "alpha", "valid_ndcg", "grid")

    def state(self) -> dict[str, Any]:
        """Configuration and fitted ``alpha`` (with its validation grid) as plain values."""
        if self.alpha is None:
            raise _not_fitted(self)
        return {"alphas": [float(a) for a in self.alphas], "k": int(self.k), "name": str(self.name),
                "alpha": float(self.alpha), "valid_ndcg": _float(_plain(self.valid_ndcg), "valid_ndcg", True),
                "grid": [[float(a), float(n)] for a, n in self.grid.items()]}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> "FixedWeightFusion":
        """The fitted method :meth:`state` describes."""
        st = _check_keys(state, cls, cls._STATE_KEYS)
        grid = st["grid"]
        if not isinstance(grid, (list, tuple)) or not all(isinstance(p, (list, tuple)) and len(p) == 2 for p in grid):
            raise ValueError(f"{cls.__name__} grid must be a list of [alpha, ndcg] pairs")
        return cls(alphas=_floats(st["alphas"], "alphas"), k=_int(st["k"], "k"), name=_str(st["name"], "name"),
                   alpha=_float(st["alpha"], "alpha"), valid_ndcg=_float(st["valid_ndcg"], "valid_ndcg", True),
                   grid={_float(a, "grid alpha"): _float(n, "grid ndcg") for a, n in grid})


@dataclass
class AdaptiveFusion:
    """Per-instance ``alpha = sigmoid(q * (x - tau))`` of one indicator ``x`` (default the ID model's
    MSP), on min-max normalised scores; ``q`` and ``tau`` grid-searched on validation NDCG@k.

    ``taus`` defaults to the 2%, 4%, ..., 98% quantiles of the validation indicator."""

    indicator: str = "id_msp"
    qs: Sequence[float] = DEFAULT_QS
    taus: Sequence[float] | None = None
    k: int = 10
    name: str = "adaptive"
    q: float | None = None
    tau: float | None = None
    valid_ndcg: float | None = None

    def fit(self, cands: CandidateScores, targets: np.ndarray, indicators: Indicators | None = None
            ) -> "AdaptiveFusion":
        if indicators is None:
            raise ValueError(f"{self.name} needs indicators (column {self.indicator!r})")
        x = indicators.column(self.indicator).astype(np.float64)
        finite = np.isfinite(x)  # a NaN made every quantile (so tau) NaN: every later gate and score NaN
        if not finite.any():
            raise ValueError(f"{self.name}: indicator {self.indicator!r} has no finite value to fit on")
        taus = (np.unique(np.quantile(x[finite], np.linspace(0.02, 0.98, 49))) if self.taus is None
                else np.asarray(self.taus, np.float64))
        g = _Grid(cands, targets, self.k)
        xh = x[g.hit]
        best = (-1.0, 0.0, 0.0)
        for q in self.qs:
            for tau in taus:
                score = g.ndcg(_sigmoid(q * (np.where(np.isfinite(xh), xh, tau) - tau)))  # no value: gate 0.5
                if score > best[0] + 1e-12:
                    best = (score, float(q), float(tau))
        self.valid_ndcg, self.q, self.tau = best
        log.info("adaptive fusion on %s: q=%g tau=%.4g valid N@%d %.4f", self.indicator, self.q, self.tau,
                 self.k, self.valid_ndcg)
        return self

    def gates(self, cands: CandidateScores, indicators: Indicators | None = None) -> GateReport:
        if self.q is None:
            raise RuntimeError(f"{self.name}: call fit() first")
        if indicators is None:
            raise ValueError(f"{self.name} needs indicators")
        feat = indicators.select([self.indicator])
        x = feat.values[:, 0].astype(np.float64)
        if not np.isfinite(x).all():  # no value: the threshold itself (gate 0.5); NaN made every score NaN
            log.warning("%s: %d non-finite %s value(s) read as the threshold (gate 0.5)", self.name,
                        int((~np.isfinite(x)).sum()), self.indicator)
            x = np.where(np.isfinite(x), x, self.tau)
        logit = self.q * (x - self.tau)
        return GateReport(_sigmoid(logit).astype(np.float32), feat, logit[:, None].astype(np.float32))

    def fuse(self, cands: CandidateScores, indicators: Indicators | None = None) -> np.ndarray:
        return convex(self.gates(cands, indicators).gate, cands.normalized("id"), cands.normalized("gr"))

    def params(self) -> dict[str, Any]:
        return {"indicator": self.indicator, "q": self.q, "tau": self.tau, "valid_ndcg": self.valid_ndcg}

    _STATE_KEYS = ("indicator", "qs", "taus", "k", "name", "q", "tau", "valid_ndcg")

    def state(self) -> dict[str, Any]:
        """Configuration and fitted ``q``, ``tau`` as plain values."""
        if self.q is None or self.tau is None:
            raise _not_fitted(self)
        return {"indicator": str(self.indicator), "qs": [float(q) for q in self.qs],
                "taus": None if self.taus is None else [float(t) for t in self.taus], "k": int(self.k),
                "name": str(self.name), "q": float(self.q), "tau": float(self.tau),
                "valid_ndcg": _float(_plain(self.valid_ndcg), "valid_ndcg", True)}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> "AdaptiveFusion":
        """The fitted method :meth:`state` describes."""
        st = _check_keys(state, cls, cls._STATE_KEYS)
        return cls(indicator=_str(st["indicator"], "indicator"), qs=_floats(st["qs"], "qs"),
                   taus=None if st["taus"] is None else _floats(st["taus"], "taus"), k=_int(st["k"], "k"),
                   name=_str(st["name"], "name"), q=_float(st["q"], "q"), tau=_float(st["tau"], "tau"),
                   valid_ndcg=_float(st["valid_ndcg"], "valid_ndcg", True))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -60, 60)))


# ----------------------------------------------------------------------------------------------
# Learned gate


class GateHead(nn.Module):
    """Standardised indicators ``[N, F]`` -> gate logit ``[N]`` (a one-hidden-layer MLP)."""

    def __init__(self, num_features: int, hidden: int = 16):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(num_features, hidden), nn.GELU(), nn.Linear(hidden, 1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)[:, 0]


class _Fuser(nn.Module):
    """Gate head plus the score-scale parameters; ``forward`` gives listwise logits ``[N, C]``."""

    def __init__(self, num_features: int, hidden: int, scale: str):
        super().__init__()
        self.head = GateHead(num_features, hidden)
        self.scale = scale
        # minmax: one sharpness for the softmax; logprob / mixture: a temperature per model
        init = math.log(10.0) if scale == "minmax" else 0.0
        self.log_temp = nn.Parameter(torch.full((2,), init))

    def forward(self, z: torch.Tensor, a: torch.Tensor, b: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        # z [N, F]; a, b [N, C] (minmax: normalised scores; else raw log-probs); valid [N, C]
        x = self.head(z)[:, None]  # [N, 1] gate logit
        g = torch.sigmoid(x)
        t = self.log_temp.exp()
        if self.scale == "minmax":
            fused = t[0] * (g * a + (1 - g) * b)
        else:
            # padding gets 0 (not -inf) before combining, so no NaN gradients; masked at the end
            lp_a = torch.log_softmax((t[0] * a).masked_fill(~valid, -torch.inf), -1).masked_fill(~valid, 0.0)
            lp_b = torch.log_softmax((t[1] * b).masked_fill(~valid, -torch.inf), -1).masked_fill(~valid, 0.0)
            if self.scale == "logprob":
                fused = g * lp_a + (1 - g) * lp_b
            else:  # mixture of the two distributions over the union
                fused = torch.logaddexp(nn.functional.logsigmoid(x) + lp_a, nn.functional.logsigmoid(-x) + lp_b)
        return fused.masked_fill(~valid, -torch.inf)


@dataclass
class LearnedGateFusion:
    """A small MLP maps standardised indicators to a gate ``g`` in [0, 1]; the two models' scores are
    fused on the candidate union (see module doc for the scales) and the head is trained listwise on
    validation instances, early-stopped on a held-out share of them. Seeded and deterministic."""

    features: Sequence[str] | None = None  # indicator columns (None: all given at fit time)
    scale: str = "minmax"
    hidden: int = 16
    lr: float = 1e-2
    weight_decay: float = 1e-4
    batch_size: int = 2048
    max_epochs: int = 60
    patience: int = 8
    holdout: float = 0.2
    k: int = 10
    seed: int = 0
    name: str = "learned_gate"
    standardizer: Standardizer | None = None
    model: _Fuser | None = None
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0

    def __post_init__(self) -> None:
        if self.scale not in SCALES:
            raise ValueError(f"scale must be one of {SCALES}, got {self.scale!r}")
        if not 0 <= self.holdout < 1:  # 1 would hold out every row and train on none
            raise ValueError(f"holdout must be in [0, 1), got {self.holdout!r}")
        for key in ("seed", "weight_decay"):  # NumPy and Adam refuse them, only once fitting starts
            if getattr(self, key) < 0:
                raise ValueError(f"{key} must be >= 0, got {getattr(self, key)!r}")
        for key in ("hidden", "batch_size", "max_epochs", "patience", "k"):
            # max_epochs 0 left the random initial head in place as if it were fitted
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}")

    def _scores(self, cands: CandidateScores) -> tuple[np.ndarray, np.ndarray]:
        if self.scale == "minmax":
            return cands.normalized("id"), cands.normalized("gr")
        a, b = cands.filled("id"), cands.filled("gr")
        return np.where(cands.valid, a, 0.0), np.where(cands.valid, b, 0.0)

    def _tensors(self, cands: CandidateScores, indicators: Indicators):
        z = torch.from_numpy(self.standardizer.transform(indicators))
        a, b = (torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)) for x in self._scores(cands))
        return z, a, b, torch.from_numpy(cands.valid)

    def fit(self, cands: CandidateScores, targets: np.ndarray, indicators: Indicators | None = None
            ) -> "LearnedGateFusion":
        """Fit the gate; a fit that fails (no instance to fit on, divergence) leaves the method as it was
        (unfitted, or its earlier fit), never a random gate that would pass for a fitted one."""
        before = (self.features, self.standardizer, self.model, self.history, self.best_epoch)
        try:
            return self._fit(cands, targets, indicators)
        except BaseException:
            self.features, self.standardizer, self.model, self.history, self.best_epoch = before
            raise

    def _fit(self, cands: CandidateScores, targets: np.ndarray, indicators: Indicators | None) -> "LearnedGateFusion":
        if indicators is None:
            raise ValueError(f"{self.name} needs indicators")
        feats = indicators.select(list(self.features) if self.features is not None else list(indicators.names))
        self.features = list(feats.names)
        self.standardizer = Standardizer.fit(feats)  # validation statistics only
        gen = torch.Generator().manual_seed(self.seed)
        # the CPU generator only (the gate is built there): forking every device's would start CUDA, and
        # torch.manual_seed would reseed the caller's CUDA generators
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(self.seed)
            self.model = _Fuser(len(self.features), self.hidden, self.scale)
        ti = cands.target_index(targets)
        use = np.flatnonzero(ti >= 0)  # instances whose target is in neither list teach nothing
        rng = np.random.default_rng(self.seed)
        perm = rng.permutation(use)
        # at least one row to fit on: a holdout near 1 rounded to every row (then blamed on the models)
        n_hold = min(int(round(self.holdout * len(perm))), len(perm) - 1) if len(perm) >= 10 else 0
        hold, train = np.sort(perm[:n_hold]), np.sort(perm[n_hold:])
        if not len(train):  # a gate left at its random initialisation must not pass for a fitted one
            raise NothingToFitError(f"{self.name}: no instance to fit the gate on: no target is among the "
                                    f"candidates of the {len(ti)} instances given (neither model lists any of "
                                    "them in its top k: train the models longer or raise fusion.k)")
        z, a, b, valid = self._tensors(cands, feats)
        t = torch.from_numpy(ti)
        opt = torch.optim.Adam(self.model.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        best, bad, best_state = -1.0, 0, None
        self.history = []
        for epoch in range(1, self.max_epochs + 1):
            self.model.train()
            order = train[torch.randperm(len(train), generator=gen).numpy()]
            total = 0.0
            for s in range(0, len(order), self.batch_size):
                r = torch.from_numpy(order[s:s + self.batch_size])
                logits = self.model(z[r], a[r], b[r], valid[r])
                loss = nn.functional.cross_entropy(logits, t[r])
                if not torch.isfinite(loss):  # a gate with NaN weights would score 0 and could be kept
                    raise TrainingDivergedError(
                        f"{self.name} gate training diverged: the loss is {loss.item()} at epoch {epoch}; "
                        f"try a lower fusion.gate.lr (now {self.lr:g})")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += loss.item() * len(r)
            score = self._holdout_ndcg(z, a, b, valid, ti, hold if len(hold) else train)
            self.history.append({"epoch": epoch, "loss": total / max(len(train), 1), "holdout_ndcg": score})
            if score > best + 1e-9:
                best, bad, self.best_epoch = score, 0, epoch
                best_state = {k: v.clone() for k, v in self.model.state_dict().items()}
            else:
                bad += 1
                if bad >= self.patience:
                    break
        if best_state is not None:
            self.model.load_state_dict(best_state)
        self.model.eval()
        log.info("learned gate (%s, %d features): best epoch %d, held-out N@%d %.4f", self.scale,
                 len(self.features), self.best_epoch, self.k, best)
        return self

    @torch.no_grad()
    def _holdout_ndcg(self, z, a, b, valid, ti, rows) -> float:
        self.model.eval()
        r = torch.from_numpy(rows)
        fused = self.model(z[r], a[r], b[r], valid[r]).numpy()
        return ndcg_at(union_ranks(fused, ti[rows], valid[r].numpy()), self.k)

    def _check(self, indicators: Indicators | None) -> Indicators:
        if self.model is None:
            raise RuntimeError(f"{self.name}: call fit() first")
        if indicators is None:
            raise ValueError(f"{self.name} needs indicators")
        return indicators.select(self.features)

    @torch.no_grad()
    def fuse(self, cands: CandidateScores, indicators: Indicators | None = None) -> np.ndarray:
        feats = self._check(indicators)
        out = np.empty(cands.items.shape, np.float32)
        for s in range(0, len(cands), 8192):
            sl = slice(s, s + 8192)
            z, a, b, valid = self._tensors(cands.subset(np.arange(len(cands))[sl]), feats.subset(np.arange(len(feats))[sl]))
            out[sl] = self.model(z, a, b, valid).numpy()
        return out

    def gates(self, cands: CandidateScores, indicators: Indicators | None = None) -> GateReport:
        """Gate per instance with input x gradient attributions of the gate logit to each standardised
        feature (their sum is roughly the logit minus the logit at the validation mean)."""
        feats = self._check(indicators)
        z = torch.from_numpy(self.standardizer.transform(feats)).requires_grad_(True)
        logit = self.model.head(z)
        (grad,) = torch.autograd.grad(logit.sum(), z)
        return GateReport(torch.sigmoid(logit).detach().numpy().astype(np.float32), feats,
                          (grad * z).detach().numpy().astype(np.float32))

    def params(self) -> dict[str, Any]:
        if self.model is None:
            return {}
        return {"scale": self.scale, "features": list(self.features), "best_epoch": self.best_epoch,
                "mean": self.standardizer.mean.copy(), "std": self.standardizer.std.copy(),
                **{k: v.detach().numpy().copy() for k, v in self.model.state_dict().items()}}

    _CONFIG = {"scale": _str, "hidden": _int, "lr": _float, "weight_decay": _float, "batch_size": _int,
               "max_epochs": _int, "patience": _int, "holdout": _float, "k": _int, "seed": _int, "name": _str}
    _STATE_KEYS = (*_CONFIG, "features", "standardizer", "model", "history", "best_epoch")

    def state(self) -> dict[str, Any]:
        """Configuration, feature names, standardizer, gate network weights (incl. the learned
        temperatures), training history and best epoch; tensors are copies."""
        if self.model is None or self.standardizer is None or self.features is None:
            raise _not_fitted(self)
        return {**{k: check(_plain(getattr(self, k)), k) for k, check in self._CONFIG.items()},
                "features": [str(f) for f in self.features], "standardizer": self.standardizer.state(),
                "model": {k: v.detach().clone() for k, v in self.model.state_dict().items()},
                "history": [{str(k): _plain(v) for k, v in h.items()} for h in self.history],
                "best_epoch": int(self.best_epoch)}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> "LearnedGateFusion":
        """The fitted method :meth:`state` describes, its gate network in eval mode (built without
        drawing random numbers, its weights checked against the configuration before any allocation)."""
        st = _check_keys(state, cls, cls._STATE_KEYS)
        features = st["features"]
        if not isinstance(features, (list, tuple)) or not all(isinstance(f, str) for f in features):
            raise ValueError(f"{cls.__name__} features must be a list of strings")
        method = cls(features=list(features), **{k: check(st[k], k) for k, check in cls._CONFIG.items()})
        method.standardizer = Standardizer.from_state(st["standardizer"])
        if list(method.standardizer.names) != method.features:
            raise ValueError(f"{cls.__name__} standardizer names {list(method.standardizer.names)} differ from "
                             f"features {method.features}")
        history = st["history"]
        if not isinstance(history, (list, tuple)) or not all(
                isinstance(h, Mapping) and all(isinstance(k, str) for k in h) for h in history):
            raise ValueError(f"{cls.__name__} history must be a list of dicts")
        method.history = [{k: _float(v, f"history {k}") if isinstance(v, float) else _int(v, f"history {k}")
                           for k, v in h.items()} for h in history]
        method.best_epoch = _int(st["best_epoch"], "best_epoch")
        with torch.device("meta"):  # shapes only: no memory, no random numbers
            model = _Fuser(len(method.features), method.hidden, method.scale)
        weights = st["model"]
        expected = model.state_dict()
        if not isinstance(weights, Mapping) or set(weights) != set(expected):
            raise ValueError(f"{cls.__name__} model weights must have exactly the entries {sorted(expected)}, got "
                             f"{sorted(map(str, weights)) if isinstance(weights, Mapping) else type(weights).__name__}")
        for k, ref in expected.items():
            w = weights[k]
            if not isinstance(w, torch.Tensor) or w.shape != ref.shape or w.dtype != ref.dtype:
                got = f"{tuple(w.shape)} {w.dtype}" if isinstance(w, torch.Tensor) else type(w).__name__
                raise ValueError(f"{cls.__name__} model weight {k} must be a {tuple(ref.shape)} {ref.dtype} tensor, "
                                 f"got {got}")
        model.load_state_dict({k: w.detach().clone() for k, w in weights.items()}, assign=True)
        method.model = model.eval()
        return method


def params_equal(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Exact equality of two ``params()`` dicts (arrays compared element-wise)."""
    if a.keys() != b.keys():
        return False
    return all(np.array_equal(np.asarray(a[k]), np.asarray(b[k])) for k in a)


__all__ = ["GateReport", "FusionMethod", "FixedWeightFusion", "AdaptiveFusion", "LearnedGateFusion",
           "GateHead", "convex", "params_equal", "SCALES"]
