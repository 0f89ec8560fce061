"""Quality figures of a quantization: codebook use, collisions, reconstruction error.

All functions return plain JSON-serialisable dicts; :func:`format_diagnostics` renders one as text.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from quantize.base import Quantizer

__all__ = ["codebook_usage", "collision_stats", "reconstruction_error", "quantizer_diagnostics",
           "format_diagnostics"]


def codebook_usage(codes: np.ndarray, codebook_sizes: Sequence[int]) -> list[dict[str, Any]]:
    """Per level: codes used / codebook size, and perplexity ``exp(entropy)`` of the code frequencies
    (equal to the size when all codes are used equally often, 1 when one code takes all)."""
    codes = np.asarray(codes)
    out = []
    for level, size in enumerate(codebook_sizes):
        counts = np.bincount(codes[:, level], minlength=int(size)).astype(np.float64)
        p = counts[counts > 0] / counts.sum()
        out.append({"level": level, "used": int((counts > 0).sum()), "size": int(size),
                    "utilisation": float((counts > 0).sum() / size), "perplexity": float(np.exp(-(p * np.log(p)).sum())),
                    "largest_code_share": float(counts.max() / counts.sum())})
    return out


def collision_stats(codes: np.ndarray) -> dict[str, Any]:
    """Collisions of the code tuples before disambiguation: how many items share their tuple with
    another item, in how many groups, and the largest group (= size of the extra level needed)."""
    codes = np.asarray(codes)
    _, counts = np.unique(codes, axis=0, return_counts=True)
    colliding = counts[counts > 1]
    n = len(codes)
    return {"items": int(n), "unique_tuples": int(len(counts)), "colliding_items": int(colliding.sum()),
            "colliding_share": float(colliding.sum() / n) if n else 0.0, "collision_groups": int(len(colliding)),
            "largest_group": int(counts.max()) if len(counts) else 0}


def reconstruction_error(quantizer: Quantizer, embeddings: np.ndarray, codes: np.ndarray) -> dict[str, Any]:
    """Mean squared L2 error ``||x - decode(code(x))||^2`` and the same relative to the data's total
    variance (1.0 = no better than the mean vector); per level for residual quantizers."""
    x = np.asarray(embeddings, dtype=np.float32)
    total = float(((x - x.mean(0)) ** 2).sum(1).mean())

    def err(x_hat: np.ndarray) -> dict[str, float]:
        mse = float(((x - x_hat) ** 2).sum(1).mean())
        return {"mse": mse, "relative": mse / total if total > 0 else 0.0}

    out: dict[str, Any] = {"total_variance": total, **err(quantizer.decode(codes))}
    if quantizer.residual:
        out["per_level"] = [{"levels": lv, **err(quantizer.decode_prefix(codes, lv))}
                            for lv in range(1, quantizer.levels + 1)]
    return out


def quantizer_diagnostics(quantizer: Quantizer, embeddings: np.ndarray, codes: np.ndarray) -> dict[str, Any]:
    """Everything above for one quantizer and its training codes ``[n, levels]``."""
    return {"quantizer": quantizer.name, "config": quantizer.config(),
            "codebook_sizes": list(quantizer.codebook_sizes),
            "codebooks": codebook_usage(codes, quantizer.codebook_sizes),
            "collisions": collision_stats(codes),
            "reconstruction": reconstruction_error(quantizer, embeddings, codes)}


def format_diagnostics(diag: dict[str, Any]) -> str:
    """Human-readable summary of :func:`quantizer_diagnostics` output (plus any pipeline extras)."""
    lines = [f"quantizer {diag['quantizer']}: levels x codes = {' x '.join(map(str, diag['codebook_sizes']))}"]
    for cb in diag["codebooks"]:
        lines.append(f"  level {cb['level']}: used {cb['used']}/{cb['size']} ({cb['utilisation']:.1%}), "
                     f"perplexity {cb['perplexity']:.1f}, largest code share {cb['largest_code_share']:.2%}")
    c = diag["collisions"]
    lines.append(f"  collisions: {c['colliding_items']}/{c['items']} items ({c['colliding_share']:.2%}) in "
                 f"{c['collision_groups']} groups; {c['unique_tuples']} unique tuples; largest group "
                 f"{c['largest_group']}")
    r = diag["reconstruction"]
    lines.append(f"  reconstruction: MSE {r['mse']:.5f} (relative to variance {r['relative']:.3f})")
    for p in r.get("per_level", []):
        lines.append(f"    first {p['levels']} level(s): MSE {p['mse']:.5f} (relative {p['relative']:.3f})")
    if "semantic_ids" in diag:
        s = diag["semantic_ids"]
        lines.append(f"  semantic IDs: {s['num_items']} items, {s['num_levels']} levels, codebook sizes "
                     f"{s['codebook_sizes']}, all unique: {s['all_unique']}")
    if "timings_s" in diag:
        lines.append("  time: " + ", ".join(f"{k} {v:.1f}s" for k, v in diag["timings_s"].items()))
    return "\n".join(lines)
