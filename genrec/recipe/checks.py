"""Settings checked against what a run has made (the catalogue's size, the semantic IDs' length)
where training starts, and the cutoff the post-hoc fusion methods fit: :mod:`genrec.recipe.stages`
calls them, :mod:`genrec.recipe.stage_hash` hashes the cutoff."""

from __future__ import annotations

from genrec.errors import ConfigError
from genrec.recipe.config import RecipeConfig, joint_config

__all__ = ["check_catalogue", "check_gate_features", "fusion_fit_k"]


def check_catalogue(config: RecipeConfig, num_items: int) -> None:
    """Settings a run must not start (or resume) training with, checked by the data and joint stages, not
    when a finished run's config is read: ``fusion.k`` and the held-out joint model's
    ``fusion.joint_config.k`` within the catalogue (it failed after its towers had trained), and that model
    with ``fusion.teacher_forcing`` (its lists are always cross-scored: with false, the post-hoc methods'
    would not be, and the two would compete for the primary under different settings)."""
    ks = {"fusion.k": config.fusion.k}
    if config.fusion.joint and config.fusion.joint_schedule == "holdout":
        ks["fusion.joint_config.k"] = joint_config(config).k
        if not config.fusion.teacher_forcing:
            raise ConfigError("config key 'fusion.teacher_forcing' must be true with the held-out joint model "
                              "(fusion.joint with joint_schedule holdout), which cross-scores its candidates always")
    for key, k in ks.items():
        if k > num_items:
            raise ConfigError(f"config key {key!r} ({k}) exceeds the catalogue of {config.data.dataset} "
                              f"({num_items} items); set {key} <= {num_items}")


def check_gate_features(config: RecipeConfig, levels: int) -> None:
    """The learned gates' ``features`` (``fusion.gate.features`` where a ``learned_*`` method is fitted,
    and the held-out joint model's under ``fusion.joint_config.gate``) may read prefix levels 1 ..
    ``levels - 1`` of semantic IDs of ``levels`` codes (1 for a single code): a level beyond failed in
    the fusion stage with a KeyError."""
    top = max(levels, 2) - 1
    gates = {}
    if any(m.startswith("learned_") for m in config.fusion.methods):
        gates["fusion.gate.features"] = config.fusion.gate.get("features")
    if config.fusion.joint and config.fusion.joint_schedule == "holdout":
        own = isinstance(config.fusion.joint_config.get("gate"), dict)  # else it inherits fusion.gate's
        key = "fusion.joint_config.gate.features" if own else "fusion.gate.features"
        gates.setdefault(key, joint_config(config).gate.get("features"))
    for key, features in gates.items():
        for name in features or ():
            level = str(name).partition("@")[2]
            if level and not 1 <= int(level) <= top:
                raise ConfigError(f"config key {key!r}: {name!r} reads semantic-ID prefix level {level}; the run's "
                                  f"IDs have {levels} codes, so its prefix levels are 1..{top}")


def fusion_fit_k(config: RecipeConfig) -> int:
    """The cutoff of the validation NDCG the post-hoc methods fit: 10, or ``fusion.k`` where the served
    lists are shorter (a learned gate's ``fusion.gate.k`` overrides it, up to ``fusion.k``)."""
    return min(10, config.fusion.k)
