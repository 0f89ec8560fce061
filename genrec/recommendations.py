"""What :class:`genrec.Recommender` answers: one history's ranked items (:class:`Recommendations`)
and, from ``explain``, the gate that fused them (:class:`Explanation`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["Recommendations", "Explanation"]


@dataclass
class Recommendations:
    """One history's ranked items: ``items`` (raw ids, best first) and their ``scores`` (the method's
    own scale: fused score, log-probability, or training count for the fallback), the history ids
    that were not in the catalogue (each once, in history order), the gate (weight of the ID tower; None without one) and whether
    the popularity ``fallback`` answered (no known item in the history)."""

    items: list[str]
    scores: list[float]
    unknown_ids: list[str] = field(default_factory=list)
    gate: float | None = None
    fallback: bool = False

    def pairs(self) -> list[tuple[str, float]]:
        return list(zip(self.items, self.scores))

    def to_dict(self) -> dict[str, Any]:
        return {"items": self.items, "scores": self.scores, "gate": self.gate, "unknown_ids": self.unknown_ids,
                "fallback": self.fallback}


@dataclass
class Explanation:
    """Why a history got its recommendations: the ``gate`` (weight of the ID tower, in [0, 1]) and
    which tower it ``trusted`` (``"id"`` above 0.5, ``"gr"`` below, ``"both"`` at 0.5), the gate's
    raw input ``features`` and each one's ``contributions`` to the gate logit (input x gradient; for
    the adaptive method the logit itself), strongest first, and each tower's own top items."""

    method: str
    recommendations: Recommendations
    gate: float | None = None
    trusted: str | None = None
    features: dict[str, float] = field(default_factory=dict)
    contributions: dict[str, float] = field(default_factory=dict)
    id_top: list[str] = field(default_factory=list)
    gr_top: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "gate": self.gate, "trusted": self.trusted, "features": self.features,
                "contributions": self.contributions, "id_top": self.id_top, "gr_top": self.gr_top,
                "recommendations": self.recommendations.to_dict()}

    def __str__(self) -> str:
        if self.gate is None:
            why = ("the popularity fallback answered (no known item in the history)" if self.recommendations.fallback
                   else "no gate (a single model)")
            return f"{self.method}: {why}; top {self.recommendations.items[:5]}"
        moved = ", ".join(f"{n}={self.features[n]:.4g} ({c:+.2f})" for n, c in list(self.contributions.items())[:3])
        return (f"{self.method}: gate {self.gate:.3f} -> trust {self.trusted}"
                + (f"; moved by {moved}" if moved else "") + f"; top {self.recommendations.items[:5]}")
