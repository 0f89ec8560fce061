"""Joint model trained in one run with the gate fitted on held-out *training* transitions.

Why (issue 14): on a training position the transition is in the training data by construction,
so a gate fitted on the training loss (:mod:`fusion.joint`'s end-to-end objective) sees only
memorization cases and learns to trust the ID tower; the post-hoc gate works because it is fitted
on held-out transitions, the validation split. This schedule holds transitions out of the training
data itself, so the gate never sees a validation or test target and the validation split stays a
clean score for choosing between models. One run, three stages:

1. **towers**: SASRec and the generative model trained on the training sequences, a seeded
   ``holdout_share`` of the users' without its last item (genrec's own trainers, early-stopped on
   validation NDCG@10: model selection only);
2. **gate**: both towers' candidates and indicators for the held-out transitions (history: the
   shortened sequence; target: the item left out; transition statistics from the shortened
   sequences, so a held-out transition counts as unseen exactly as a validation one does), and a
   :class:`~fusion.methods.LearnedGateFusion` fitted on them;
3. **refresh**: each tower trained ``refresh_epochs`` more epochs on the full training sequences at
   ``refresh_lr_ratio`` times its learning rate, so the towers learn the held-out transitions too.
   The fused validation NDCG@10 with and without the refresh decides which towers are kept
   (``refresh_epochs=0`` skips the stage). ``retrain=True`` adds towers trained from scratch on the
   full training sequences with their whole schedules (what separately trained towers are, at twice
   the tower time): the gate fitted in stage 2 then fuses towers that learned every transition, and
   validation chooses among the stage-1, refreshed and retrained towers.

How the towers train is ``towers``: ``"separate"`` (each its own loss), ``"joint"`` (:mod:`fusion.joint`'s
one objective) or ``"both"``: stage 1 trains both pairs, each gets its own gate from the same held-out
transitions, and validation chooses among every (pair, stage, gate scale) candidate, since which pair
wins depends on the data (BENCHMARKS.md: separate on Beauty, joint on the synthetic dataset). With
``"both"``, ``retrain`` applies to the separate pair (in the recipe those towers exist already).

:class:`HoldoutJoint` is the trained model: candidates from both towers, fused per instance by the
gate, as :mod:`fusion.adapters` builds them for post-hoc fusion. With ``out_dir`` every stage writes
its result atomically and a rerun resumes where the last one stopped (the towers from their
``last.pt``, a finished stage is loaded, not redone).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from fusion.adapters import FusionInputs, model_inputs
from fusion.candidates import ranks_of
from fusion.indicators import TrainStats
from fusion.joint import JointConfig, train_joint
from fusion.methods import SCALES, GateReport, LearnedGateFusion
from fusion.persist import load_methods, save_methods
from genrec import distributed
from genrec.artifacts import load_json, save_json
from genrec.errors import CheckpointError, ConfigError, DataFormatError
from genrec.generative import GenerativeConfig, HierarchicalGenerative, load_generative, train_generative
from genrec.metrics import DEFAULT_KS, metrics_from_ranks
from genrec.sasrec import SASRec, SASRecConfig, load_sasrec, train_sasrec
from genrec.training import trim_heap
from genrec.model_settings import saved_config
from genrec.splits import Instances, LeaveOneOutSplit

log = logging.getLogger(__name__)

GATE_NAME = "joint"


TOWER_TRAININGS = ("separate", "joint")
#: values of ``HoldoutJointConfig.towers``: one way of training the towers, or both and validation chooses
TOWER_CHOICES = (*TOWER_TRAININGS, "both")
#: the fused validation metric that chooses among the (towers, gate scale) candidates
CHOICE_METRIC = "ndcg@10"
#: training settings of ``towers="joint"`` under ``HoldoutJointConfig.joint``: those measured on Beauty
#: (one warm-up epoch, cosine decay over 24 epochs, validation every 3rd on 5,000 sampled users; the
#: per-tower losses at half weight beside the mixture so neither tower starves where the other wins)
JOINT_TOWER_TRAINING: dict[str, Any] = {"lr_schedule": "cosine", "warmup_epochs": 1.0, "max_epochs": 24,
                                        "eval_every": 3, "eval_users": 5000, "patience": 3, "aux_weight": 0.5}


@dataclass
class HoldoutJointConfig:
    """Settings of :func:`train_holdout_joint`: the towers' architectures and, for ``towers="separate"``,
    their training settings; ``towers="joint"`` trains both with :mod:`fusion.joint`'s one objective
    (``joint``: :class:`~fusion.joint.JointConfig` training fields such as ``mixing``, ``lr``,
    ``max_epochs``); the gate (``scale``, any other :class:`~fusion.methods.LearnedGateFusion` field in
    ``gate``), the candidate lists and the refresh."""

    sasrec: SASRecConfig = field(default_factory=SASRecConfig)
    generative: GenerativeConfig = field(default_factory=GenerativeConfig)
    # "joint": both towers trained with fusion.joint's objective (on Beauty: the same validation
    # score as "separate" at half the time and a quarter of the memory, BENCHMARKS.md); "separate":
    # each tower its own loss, with its own config's training settings; "both": each pair trained, and
    # validation chooses (module doc)
    towers: str = "joint"
    joint: dict[str, Any] = field(default_factory=dict)  # JointConfig overrides for towers="joint"
    scale: str = "auto"  # the gate's score scale (fusion.methods.SCALES); "auto": each fitted, best on validation
    gate: dict[str, Any] = field(default_factory=dict)  # other LearnedGateFusion settings (hidden, lr, ...)
    k: int = 50  # each tower's top-k in the candidate union
    beam: int = 50  # generative beam width (>= k)
    # share of the users whose last training transition is held out for the gate (a seeded choice):
    # every transition held out is one the stage-1 towers do not learn from
    holdout_share: float = 0.25  # Beauty validation: 0.0694 at 0.25, 0.0602 at 1.0 (separate towers)
    holdout_seed: int = 0
    refresh_epochs: int = 1  # 0: keep the towers of stage 1
    refresh_lr_ratio: float = 0.1
    retrain: bool = False  # also towers trained from scratch on every training transition (module doc)
    batch_size: int = 512  # inference batch of the candidate stage

    def __post_init__(self) -> None:
        if isinstance(self.sasrec, dict):
            self.sasrec = SASRecConfig(**self.sasrec)
        if isinstance(self.generative, dict):
            self.generative = GenerativeConfig(**self.generative)
        if self.towers not in TOWER_CHOICES:
            raise ValueError(f"towers must be one of {TOWER_CHOICES}, got {self.towers!r}")
        if self.scale != "auto" and self.scale not in SCALES:
            raise ValueError(f"scale must be 'auto' or one of {SCALES}, got {self.scale!r}")
        LearnedGateFusion(**self.gate)  # a bad gate field fails here
        # what the model sets itself was silently overwritten (a recipe's joint_config.joint.max_len)
        fixed = [f"gate.{k}" for k in ("scale", "name") if k in self.gate] + \
            [f"joint.{k}" for k in ("mode", "id_tower", "gr_tower", "max_len") if k in self.joint]
        if fixed:
            raise ValueError(f"{', '.join(fixed)} cannot be set: the held-out joint model sets them (the gate's scale "
                             "with scale=, the joint pair's towers and window with sasrec= / generative=)")
        if self.towers in ("joint", "both"):
            self.joint_config()  # and a bad joint field here
        if self.k < 1 or self.beam < 1 or self.batch_size < 1:
            raise ValueError(f"k, beam and batch_size must be >= 1; got {self.k}, {self.beam}, {self.batch_size}")
        if self.beam < self.k:  # the beam is widened to k anyway: a smaller one would only look different
            raise ValueError(f"beam must be >= k ({self.k}), the length of the candidate lists; got {self.beam}")
        if self.k < 10:  # a shorter fused list has no NDCG@10 (CHOICE_METRIC) to choose the towers by
            raise ValueError(f"k must be >= 10: validation chooses the towers by the fused {CHOICE_METRIC}; got {self.k}")
        if not 0 < self.holdout_share <= 1:
            raise ValueError(f"holdout_share must be in (0, 1], got {self.holdout_share}")
        if self.holdout_seed < 0:
            raise ValueError(f"holdout_seed must be >= 0, got {self.holdout_seed}")
        if self.refresh_epochs < 0 or not self.refresh_lr_ratio > 0:
            raise ValueError(f"refresh_epochs must be >= 0 and refresh_lr_ratio > 0; got {self.refresh_epochs}, "
                             f"{self.refresh_lr_ratio}")

    def scales(self) -> tuple[str, ...]:
        return SCALES if self.scale == "auto" else (self.scale,)

    def joint_config(self) -> JointConfig:
        """The :class:`~fusion.joint.JointConfig` of ``towers="joint"``: ``joint`` over this config's
        tower architectures, their common history window."""
        if self.sasrec.max_len != self.generative.max_len:
            raise ValueError(f"towers='joint' needs one history window; sasrec.max_len {self.sasrec.max_len}, "
                             f"generative.max_len {self.generative.max_len}")
        return JointConfig(**{**JOINT_TOWER_TRAINING, **self.joint, "mode": "joint", "id_tower": self.sasrec,
                              "gr_tower": self.generative, "max_len": self.sasrec.max_len})


def holdout_transitions(split: LeaveOneOutSplit, share: float = 1.0, seed: int = 0
                        ) -> tuple[list[np.ndarray], Instances]:
    """The towers' training sequences and the held-out transitions: for a seeded ``share`` of the
    users, the training sequence without its last item, and the transition into that item (history:
    the shortened sequence, window ``split.max_history``; target: the item left out). Sequences
    shorter than 3 items stay whole and give no transition (their only transition would leave a
    one-item sequence, which trains nothing)."""
    chosen = np.random.default_rng(seed).random(len(split.train)) < share if share < 1 else \
        np.ones(len(split.train), bool)
    short, users, hist, targets = [], [], [], []
    for u, s, pick in zip(split.users, split.train, chosen):
        if pick and len(s) >= 3:
            short.append(s[:-1])
            users.append(u)
            hist.append(s[:-1][-split.max_history:])
            targets.append(s[-1])
        else:
            short.append(s)
    held = Instances(np.asarray(users, np.int64), hist, np.asarray(targets, np.int64))
    return short, held


@dataclass
class HoldoutJoint:
    """Both towers and the gate; ``stats`` holds the training transition statistics the indicators read."""

    sasrec: SASRec
    generative: HierarchicalGenerative
    gate: LearnedGateFusion
    stats: TrainStats
    config: HoldoutJointConfig

    @property
    def num_items(self) -> int:
        return self.sasrec.num_items

    def inputs(self, instances: Instances) -> FusionInputs:
        """The candidate union and indicators of ``instances`` (targets are not read)."""
        c = self.config
        return model_inputs(self.sasrec, self.generative, instances, self.stats, k=c.k, beam=c.beam,
                            batch_size=c.batch_size)

    def topk(self, instances: Instances, k: int | None = None) -> tuple[np.ndarray, GateReport]:
        """``(items [n, k], gates)``: the fused top-``k`` (default ``config.k``) after each history."""
        inp = self.inputs(instances)
        fused = self.gate.fuse(inp.cands, inp.indicators)
        return inp.cands.topk(fused, k or self.config.k), self.gate.gates(inp.cands, inp.indicators)

    def ranks(self, instances: Instances) -> np.ndarray:
        """0-based rank of each target in the fused top-``config.k`` list (absent: ``genrec.metrics.MISS_RANK``)."""
        inp = self.inputs(instances)
        return ranks_of(inp.cands, self.gate.fuse(inp.cands, inp.indicators), instances.targets, self.config.k)


@dataclass
class HoldoutJointResult:
    model: HoldoutJoint
    valid: dict[str, float]  # fused validation metrics of the kept model
    selection: dict[str, float]  # validation NDCG@10 of every (towers, scale) candidate, e.g. "refreshed/logprob"
    refreshed: bool  # whether the refreshed towers were kept
    towers: str  # which towers were kept: "stage1", "refreshed" or "retrained"
    scale: str  # the kept gate's scale
    gates: dict[str, LearnedGateFusion]  # every gate fitted, by scale (the kept tower training's)
    seconds: dict[str, float]  # wall time per stage (this process; a resumed stage counts its rerun only)
    holdout: int  # number of held-out transitions the gate was fitted on
    tower_training: str = ""  # how the kept towers were trained: "separate" or "joint"
    # every candidate's 0-based fused validation ranks [n_valid] (MISS_RANK beyond k), keyed as in selection: what
    # an out-of-sample estimate of the choice needs (fusion.selection.cross_fitted_choice)
    candidate_ranks: dict[str, np.ndarray] = field(default_factory=dict)


def _refresh_config(config: Any, epochs: int, ratio: float) -> Any:
    """The config of a refresh: ``epochs`` epochs at ``ratio`` x the learning rate, constant, one
    validation at the end."""
    fields = {f.name for f in dataclasses.fields(config)}
    over: dict[str, Any] = {"lr": config.lr * ratio, "max_epochs": epochs, "eval_every": epochs, "patience": 1}
    over.update({k: v for k, v in {"lr_schedule": "constant", "warmup_epochs": 0.0, "max_minutes": None,
                                   "schedule_epochs": None}.items() if k in fields})
    return dataclasses.replace(config, **over)


def _peak_gib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _towers_digest(*models: Any) -> str:
    """SHA-256 (16 hex digits) of the towers' weights: what gates fitted on their outputs depend on."""
    h = hashlib.sha256()
    for model in models:
        for name, tensor in model.state_dict().items():
            h.update(name.encode())
            h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _restart_if_other_init(out: Path, kind: str, suffix: str, digest: str) -> None:
    """Clear the ``suffix`` tower directories of ``kind`` when they were started from other stage-1 towers
    (``init.json`` in ``out`` records the digest each started from)."""
    record = out / f"init{suffix}_{kind}.json"
    dirs = [out / f"{name}{suffix}" for name in (("joint",) if kind == "joint" else ("sasrec", "generative"))]
    if record.is_file() and load_json(record).get("stage1_towers") != digest:
        log.info("holdout joint: the stage-1 %s towers changed; the %s towers start again", kind, suffix[1:])
        for d in dirs:
            shutil.rmtree(d, ignore_errors=True)
    if any(d.exists() for d in dirs) and not record.is_file():  # from before the record: cannot tell, restart
        for d in dirs:
            shutil.rmtree(d, ignore_errors=True)
    save_json(record, {"stage1_towers": digest})


def _train_towers(split: LeaveOneOutSplit, table: Any, config: HoldoutJointConfig, out: Path | None, suffix: str,
                  progress: bool, init: Any = None, refresh: bool = False,
                  item_text: np.ndarray | None = None) -> tuple[SASRec, HierarchicalGenerative, Any]:
    """``(sasrec, generative, state)``: both towers trained on ``split.train`` as ``config.towers`` says
    (``refresh``: the short refresh schedule from ``init``, the ``state`` of an earlier call;
    ``item_text``: a content-aware SASRec's text embeddings)."""
    sub = (lambda name: out / f"{name}{suffix}") if out is not None else (lambda name: None)
    again = (lambda c: _refresh_config(c, config.refresh_epochs, config.refresh_lr_ratio)) if refresh else (lambda c: c)
    if config.towers == "joint":
        model = train_joint(split, table, again(config.joint_config()), sub("joint"), progress, init=init,
                            item_text=item_text).model
        return model.id_tower.eval(), model.gr_tower.eval(), model
    sasrec = train_sasrec(split, again(config.sasrec), sub("sasrec"), progress,
                          init=init[0] if init is not None else None, item_text=item_text).model
    generative = train_generative(split, table, again(config.generative), sub("generative"), progress,
                                  init=init[1] if init is not None else None).model
    return sasrec, generative, (sasrec, generative)


def train_holdout_joint(split: LeaveOneOutSplit, table: Any, config: HoldoutJointConfig | None = None,
                        out_dir: str | Path | None = None, progress: bool = False,
                        ks: Sequence[int] = DEFAULT_KS,
                        full_towers: tuple[SASRec, HierarchicalGenerative] | None = None,
                        item_text: np.ndarray | None = None) -> HoldoutJointResult:
    """Run the three stages (module doc) on ``split`` with the semantic IDs of ``table`` (``codes``,
    ``codebook_sizes``). Reads ``split.train`` and, for model selection only (the towers' early
    stopping; which towers and gate scale are kept), ``split.valid``; never ``split.test``.

    ``full_towers``: with ``retrain`` and ``towers="separate"`` (or ``"both"``), towers already trained on all of
    ``split.train`` with ``config``'s tower settings (a recipe's own SASRec and generative stages),
    used as the retrained towers instead of training them a second time. ``item_text`` ``[num_items, dim]``:
    the items' text embeddings, needed exactly when ``sasrec.text_dim`` is set (content-aware ID towers)."""
    config = config or HoldoutJointConfig()
    if full_towers is not None:
        if not (config.retrain and config.towers in ("separate", "both")):
            raise ValueError("full_towers stand for the retrained separate towers: they need retrain=True and "
                             f"towers='separate' or 'both' (got retrain={config.retrain}, towers={config.towers!r})")
        if any(t.num_items != split.num_items for t in full_towers):
            raise ValueError(f"full_towers score {[t.num_items for t in full_towers]} items; the split has "
                             f"{split.num_items}")
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        _check_held_out(out, config)
    seconds: dict[str, float] = {}
    short, held = holdout_transitions(split, config.holdout_share, config.holdout_seed)
    if not len(held):
        eligible = sum(len(s) >= 3 for s in split.train)
        if not eligible:
            raise DataFormatError("no training sequence has 3 or more items: nothing to hold out for the gate")
        raise ConfigError(f"holdout_share {config.holdout_share} with holdout_seed {config.holdout_seed} drew none "
                          f"of the {eligible} training sequences with 3 or more items: nothing to hold out for the "
                          f"gate; raise holdout_share")
    # with both, the joint pair trains first: measured on Beauty, the stage then peaks at 3.54 GiB, and
    # at 5.34 GiB in the other order (the heap the separate pair leaves grows further; BENCHMARKS.md)
    kinds = TOWER_TRAININGS[::-1] if config.towers == "both" else (config.towers,)
    # candidate names: "stage1/logprob" with one tower training, "joint:stage1/logprob" with both
    label = (lambda kind, name: f"{kind}:{name}") if len(kinds) > 1 else (lambda kind, name: name)

    towers: dict[str, tuple[str, tuple[SASRec, HierarchicalGenerative]]] = {}  # label -> (kind, towers)
    gates: dict[str, dict[str, LearnedGateFusion]] = {}  # kind -> scale -> gate
    for kind in kinds:
        kc = dataclasses.replace(config, towers=kind)
        t0 = time.perf_counter()
        sasrec, generative, state = _train_towers(dataclasses.replace(split, train=short), table, kc, out, "",
                                                  progress, item_text=item_text)
        seconds[label(kind, "towers")] = time.perf_counter() - t0
        # between stages the heap goes back to the OS: training leaves it fragmented, and the inference
        # stages' many batch shapes then grew this process past 8 GiB on Beauty (2.3 GiB each alone)
        trim_heap()
        log.info("holdout joint: %s towers trained (%.1f min); peak RSS so far %.2f GiB", kind,
                 seconds[label(kind, "towers")] / 60, _peak_gib())

        t0 = time.perf_counter()
        gate_path = out / ("gates.pt" if len(kinds) == 1 else f"gates_{kind}.pt") if out is not None else None
        # what the saved gates were fitted with: other settings, or other stage-1 towers (a rerun with a
        # larger max_epochs resumes and trains them on), refit them (seconds), never reuse them
        digest = _towers_digest(sasrec, generative)
        gate_settings = json.loads(json.dumps({"towers": kind, "scales": list(config.scales()), "gate": config.gate,
                                               "k": config.k, "beam": config.beam,
                                               "stage1_towers": digest}))  # as it reads back from the file
        settings_path = gate_path.with_suffix(".json") if gate_path is not None else None
        if (gate_path is not None and gate_path.is_file() and settings_path.is_file()
                and load_json(settings_path) == gate_settings):
            gates[kind] = load_methods(gate_path)
        else:
            stage1 = HoldoutJoint(sasrec, generative, LearnedGateFusion(),
                                  TrainStats(short, split.num_items, table.codes), kc)
            inp = stage1.inputs(held)
            gates[kind] = {s: LearnedGateFusion(**{**config.gate, "scale": s, "name": f"{GATE_NAME}_{s}"}).fit(
                inp.cands, held.targets, inp.indicators) for s in config.scales()}
            inp = None
            if gate_path is not None:
                save_methods(gate_path, gates[kind])
                save_json(settings_path, gate_settings)
        seconds[label(kind, "gate")] = time.perf_counter() - t0
        trim_heap()
        log.info("holdout joint: %s gate fitted on %d held-out transitions (%.0f s); peak RSS so far %.2f GiB",
                 kind, len(held), seconds[label(kind, "gate")], _peak_gib())

        towers[label(kind, "stage1")] = (kind, (sasrec, generative))
        if config.refresh_epochs:
            t0 = time.perf_counter()
            if out is not None:  # a refresh started from other stage-1 towers starts again from these
                failed = None  # one rank deletes while the others wait; its failure reaches them (no hang)
                if distributed.is_main():
                    try:
                        _restart_if_other_init(out, kind, "_refresh", digest)
                    except Exception as e:
                        failed = e
                told = distributed.broadcast_object(None if failed is None else f"{type(failed).__name__}: {failed}")
                if failed is not None:
                    raise failed
                if told is not None:
                    raise RuntimeError(f"on rank 0: {told}")
            towers[label(kind, "refreshed")] = (kind, _train_towers(split, table, kc, out, "_refresh", progress,
                                                                    init=state, refresh=True, item_text=item_text)[:2])
            seconds[label(kind, "refresh")] = time.perf_counter() - t0
            trim_heap()
        if config.retrain and (kind == "separate" or len(kinds) == 1):
            t0 = time.perf_counter()
            towers[label(kind, "retrained")] = (kind, tuple(t.eval() for t in full_towers) if full_towers is not None
                                                else _train_towers(split, table, kc, out, "_retrain", progress,
                                                                   item_text=item_text)[:2])
            seconds[label(kind, "retrain")] = time.perf_counter() - t0
            trim_heap()

    # which towers and which gate: the best fused validation NDCG@10 (ties: the earlier candidate)
    t0 = time.perf_counter()
    stats = TrainStats(split.train, split.num_items, table.codes)
    ks = [k for k in ks if k <= config.k]
    metrics: dict[str, dict[str, float]] = {}
    candidate_ranks: dict[str, np.ndarray] = {}
    # candidates in TOWER_TRAININGS order whatever the training order, so ties go to the separate pair
    for name, (kind, (sas, gen)) in sorted(towers.items(), key=lambda t: TOWER_TRAININGS.index(t[1][0])):
        inp = None  # the previous towers' inputs are freed before the next are built
        trim_heap()
        inp = HoldoutJoint(sas, gen, LearnedGateFusion(), stats, config).inputs(split.valid)
        for s, gate in gates[kind].items():
            ranks = ranks_of(inp.cands, gate.fuse(inp.cands, inp.indicators), split.valid.targets, config.k)
            metrics[f"{name}/{s}"] = metrics_from_ranks(ranks, ks)
            candidate_ranks[f"{name}/{s}"] = ranks
    seconds["validation"] = time.perf_counter() - t0
    selection = {n: m[CHOICE_METRIC] for n, m in metrics.items()}
    best = max(selection, key=lambda n: (selection[n], -list(selection).index(n)))
    tower_label, scale = best.split("/")
    kind, kept = towers[tower_label]
    tower_name = tower_label.rpartition(":")[2]
    log.info("holdout joint: fused validation N@10 %s; keeping %s", {n: round(v, 4) for n, v in selection.items()},
             best)
    model = HoldoutJoint(*kept, gates[kind][scale], stats, dataclasses.replace(config, towers=kind))
    return HoldoutJointResult(model, metrics[best], selection, tower_name == "refreshed", tower_name, scale,
                              gates[kind], seconds, len(held), kind, candidate_ranks)


def save_holdout_joint(model: HoldoutJoint, directory: str | Path) -> Path:
    """Write ``sasrec.pt``, ``generative.pt``, ``gate.pt`` and ``config.json`` into ``directory``
    (each atomically); the statistics are rebuilt from the training sequences on load."""
    from genrec.generative import save_generative
    from genrec.sasrec import save_sasrec

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    save_sasrec(model.sasrec, d / "sasrec.pt")
    save_generative(model.generative, d / "generative.pt")
    save_methods(d / "gate.pt", {GATE_NAME: model.gate})
    save_json(d / "config.json", asdict(model.config))
    return d


def _check_held_out(out: Path, config: HoldoutJointConfig) -> None:
    """The towers resumed from ``out`` must have held out the transitions ``config`` holds out: a
    :class:`~genrec.errors.CheckpointError` otherwise (recorded in ``out/held_out.json`` on first use)."""
    path = out / "held_out.json"
    now = {"holdout_share": config.holdout_share, "holdout_seed": config.holdout_seed}
    if path.is_file():
        saved = load_json(path)
        if saved != now:
            raise CheckpointError(f"{path}: this directory's towers held out other transitions ({saved}; now {now}); "
                                  "use another out_dir or delete it")
    else:
        out.mkdir(parents=True, exist_ok=True)
        save_json(path, now)


def load_holdout_joint(directory: str | Path, train: Sequence[np.ndarray]) -> HoldoutJoint:
    """Load a model saved by :func:`save_holdout_joint`; ``train``: the training sequences it was
    trained on (for the indicators' transition statistics)."""
    d = Path(directory)
    config = HoldoutJointConfig(**saved_config(load_json(d / "config.json")))
    sasrec, generative = load_sasrec(d / "sasrec.pt"), load_generative(d / "generative.pt")
    gate = load_methods(d / "gate.pt")[GATE_NAME]
    return HoldoutJoint(sasrec, generative, gate, TrainStats(train, sasrec.num_items, generative.codes), config)


__all__ = ["HoldoutJointConfig", "HoldoutJoint", "HoldoutJointResult", "holdout_transitions", "train_holdout_joint",
           "save_holdout_joint", "load_holdout_joint"]
