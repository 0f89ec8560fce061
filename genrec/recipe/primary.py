"""Which fusion method of a recipe run is the primary one, decided on validation only.

The fusion stage saves every post-hoc method's out-of-fold validation ranks
(``fusion/selection.npz``, :class:`fusion.selection.CrossFit`); the joint model, when the recipe
trains it, trains on ``split.train`` only, which holds no validation or test target. Its validation
choice among candidates is what needs care: the holdout schedule saves every (towers, gate scale)
candidate's validation ranks (``joint/candidates.npz``), and its score here is that choice
cross-fitted on the same folds (:func:`fusion.selection.cross_fitted_choice`); the end-to-end
schedule's is its own validation score (``joint/summary.json``, the best epoch's: slightly optimistic).
:func:`choose_primary` compares them on ``report.metric`` and records why it chose what it chose;
the report stage writes that into ``results.json`` and ``Recommender.from_run`` loads the same
method by default. The choice is not stored by the fusion stage itself: it also depends on
``fusion.primary``, ``report.metric`` and the joint stage, none of which are inputs of that stage.

No test data is read here: only the fusion stage's validation artifacts and the joint stage's
validation ranks or score.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from genrec.artifacts import load_json
from genrec.errors import CheckpointError
from genrec.recipe.config import RecipeConfig, joint_config

log = logging.getLogger(__name__)

__all__ = ["PrimaryChoice", "choose_primary", "load_cross_fit", "SELECTION_FILE", "JOINT_CANDIDATES_FILE"]

#: the fusion stage's out-of-fold validation ranks, relative to the run directory
SELECTION_FILE = Path("fusion") / "selection.npz"
#: the holdout joint schedule's validation ranks of each of its candidates (``fusion.holdout_joint``)
JOINT_CANDIDATES_FILE = Path("joint") / "candidates.npz"


@dataclass
class PrimaryChoice:
    """The primary method of a run: ``method``, what the config asked for (``requested``: ``auto`` or
    a name), ``reason`` (one sentence), and the validation ``scores`` (``metric``) it compared:
    cross-fitted for the post-hoc methods and the holdout joint model's choice among its candidates,
    the end-to-end joint model's own (``sources`` says how, in words; ``cross_fitted`` lists the
    methods whose score is cross-fitted on validation folds)."""

    method: str
    requested: str
    reason: str
    metric: str
    scores: dict[str, float] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    folds: int | None = None
    cross_fitted: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_cross_fit(run_dir: str | Path):
    """The fusion stage's :class:`fusion.selection.CrossFit`, or None when it has none (a fusion
    stage run by a genrec without cross-fitting)."""
    from fusion.selection import CrossFit

    path = Path(run_dir) / SELECTION_FILE
    if not path.is_file():
        return None
    with np.load(path) as z:
        return CrossFit.from_arrays({k: z[k] for k in z.files})


def choose_primary(config: RecipeConfig, run_dir: str | Path) -> PrimaryChoice:
    """The primary method of the finished fusion (and joint) stages of ``run_dir`` under ``config``:
    see the module doc. An explicit ``fusion.primary`` is kept (its scores are still reported);
    ``auto`` takes the best validation score, ties to the earlier of ``fusion.methods`` (joint
    last). :class:`~genrec.errors.CheckpointError` when ``auto`` finds no cross-fitted scores."""
    from fusion.holdout_joint import CHOICE_METRIC
    from fusion.selection import cross_fitted_choice, select_best

    run_dir = Path(run_dir)
    f, metric = config.fusion, config.report.metric
    cf = load_cross_fit(run_dir)
    scores: dict[str, float] = {}
    sources: dict[str, str] = {}
    cross_fitted: list[str] = []
    if cf is not None:
        for name, v in cf.scores(metric).items():
            if name in f.methods:
                scores[name], sources[name] = v, f"cross-fitted on validation ({cf.num_folds} folds)"
                cross_fitted.append(name)
    joint_summary = run_dir / "joint" / "summary.json"
    candidates = run_dir / JOINT_CANDIDATES_FILE
    holdout = f.joint and joint_summary.is_file() and load_json(joint_summary).get("schedule") == "holdout"
    # its ranks stop at its own list length: a metric cut beyond it cannot be read from them
    within = int(metric.partition("@")[2]) <= joint_config(config).k if holdout else False
    if holdout and within and cf is not None and not candidates.is_file():
        log.warning("%s: no %s (a joint stage from before it was saved): the joint model competes with its "
                    "in-sample validation score", run_dir, JOINT_CANDIDATES_FILE)
    if holdout and within and cf is not None and candidates.is_file():
        # the holdout schedule's choice among its (towers, gate scale) candidates, cross-fitted on the
        # post-hoc methods' folds: an in-sample best of several candidates would lean towards it
        with np.load(candidates) as z:
            ranks = {name: z[name] for name in z.files}
        if ranks and all(len(r) == len(cf.folds) for r in ranks.values()):
            scores["joint"] = cross_fitted_choice(ranks, cf.folds, choose_by=CHOICE_METRIC, metric=metric)
            sources["joint"] = (f"its choice among {len(ranks)} (towers, gate scale) candidates cross-fitted on "
                                f"validation ({cf.num_folds} folds; no validation target trains it)")
            cross_fitted.append("joint")
        else:
            log.warning("%s: %s does not match the validation folds (%s rows, %d expected): the joint model "
                        "competes with its in-sample validation score", run_dir, JOINT_CANDIDATES_FILE,
                        sorted({len(r) for r in ranks.values()}), len(cf.folds))
    if f.joint and "joint" not in scores and joint_summary.is_file():
        v = load_json(joint_summary).get("valid", {}).get(metric)
        if v is not None and not math.isnan(float(v)):
            scores["joint"] = float(v)
            sources["joint"] = ("joint training's own validation score (no validation target trains it; the best "
                                "of its early-stopping / tower and gate-scale choices)")
        else:  # it was silently out of the choice
            log.warning("%s: the joint model has no validation %s (its training validated at K in 5, 10, 20, 50): "
                        "it does not compete for the primary method", run_dir, metric)
    folds = cf.num_folds if cf is not None else None
    if f.primary != "auto":
        return PrimaryChoice(f.primary, f.primary, "set in the config (fusion.primary)", metric, scores, sources,
                             folds, cross_fitted)
    if cf is None:
        raise CheckpointError(f"{run_dir}: fusion.primary is 'auto' but {SELECTION_FILE} is missing (a fusion "
                              f"stage from before cross-fitting); rerun the recipe to redo the fusion stage")
    order = [*f.methods, *(["joint"] if "joint" in scores else [])]
    best = select_best(scores, order)
    ties = [m for m in order if m != best and scores.get(m) == scores[best]]
    reason = (f"best validation {metric} ({scores[best]:.4f}): post-hoc methods cross-fitted over {folds} folds"
              + ((", the joint model's choice among its candidates likewise" if "joint" in cross_fitted
                  else ", the joint model by its own validation") if "joint" in scores else "")
              + (f"; tied with {', '.join(ties)}, first in config order" if ties else ""))
    return PrimaryChoice(best, "auto", reason, metric, scores, sources, folds, cross_fitted)
