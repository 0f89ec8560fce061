"""Recipes: the whole pipeline as resumable stages, configured by one YAML file.

    data -> item text -> embeddings -> semantic IDs -> SASRec -> generative model
         -> memorization labels -> post-hoc fusion (-> joint training) -> evaluation -> report

Typical use::

    from genrec.pipeline import load_config, run_recipe
    config = load_config("recipes/configs/demo.yaml", preset="quick", overrides=["sasrec.max_epochs=5"])
    results = run_recipe(config, "runs/demo")      # dict, also written to runs/demo/results.json

**Config** (:class:`RecipeConfig`): sections ``data``, ``text``, ``quantize``, ``sasrec``
(:class:`genrec.sasrec.SASRecConfig` fields), ``generative`` (:class:`genrec.generative.GenerativeConfig`
fields), ``labels``, ``fusion``, ``report``, plus top-level ``name``, ``preset`` and ``num_threads``.
A preset (``quick`` or ``full``, :data:`PRESETS`) is merged *under* the file's explicit values, and
``section.key=value`` overrides go on top. Unknown keys, wrong types and out-of-range values raise
:class:`ConfigError` naming the key and the value.

**Stages** (:data:`STAGES`): each is a plain function ``(run_dir, config, inputs) -> {name: path}``
that writes its artifacts atomically into ``run_dir/<stage>/``; ``inputs`` maps each upstream
stage to its directory. When a stage finishes, ``<stage>/stage.done.json`` is written last, holding
the hash of the config values the stage depends on (and its upstream stages' hashes), its wall time
and peak memory. A stage whose marker matches is skipped; a stage without one (a killed run) runs
again, and the training stages resume from their ``last.pt`` checkpoints, so a resumed run ends with
the same results. A stage whose config changed (its ``stage.done.json`` or, for an interrupted one,
its ``stage.started.json`` holds another hash) is cleared and re-run, with everything downstream.

**Output**: ``results.json`` (every model's test metrics overall and per memorization label,
training summaries, quantization diagnostics, fusion parameters and gates by label, wall time and
peak memory per stage) and ``report.md`` with tables and PNG plots, both in the run directory.
Timing values live under keys listed in :data:`TIMING_KEYS`; :func:`strip_timing` removes them.

Library code never prints: progress goes through ``logging`` and tqdm bars (shown on a terminal only).
"""

from __future__ import annotations

import copy
import errno
import hashlib
import io
import json
import logging
import math
import resource
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from genrec.artifacts import atomic_write, atomic_write_bytes, atomic_write_text, load_json, save_json
from genrec.config import build_dataclass, check_mapping, did_you_mean, field_hints, parse_value, yaml_load
from genrec.errors import ConfigError, DataFormatError, GenrecError, RunDirectoryError
from genrec.rundir import RunLock
from genrec.generative import GenerativeConfig
from genrec.sasrec import SASRecConfig

log = logging.getLogger(__name__)

__all__ = [
    "ConfigError", "RecipeConfig", "DataSection", "TextSection", "QuantizeSection", "LabelsSection",
    "FusionSection", "ReportSection", "PRESETS", "load_config", "config_from_dict", "config_to_dict",
    "Stage", "STAGES", "stage_names", "run_recipe", "StopAfterStage", "strip_timing", "TIMING_KEYS",
    "headline_comparisons", "format_summary", "FUSION_METHODS",
]

FUSION_METHODS = ("fixed", "adaptive", "learned_minmax", "learned_logprob", "learned_mixture")
PRESET_NAMES = ("quick", "full")
#: keys whose values are wall-clock or memory measurements (they differ between runs)
TIMING_KEYS = frozenset({"wall_s", "peak_rss_mib", "minutes", "seconds", "timings_s", "timing", "total_wall_s"})


# ----------------------------------------------------------------------------------------------
# Config


@dataclass
class DataSection:
    """``dataset``: any :func:`genrec.load_dataset` spec (a plain-format directory, ``synthetic[:k=v]``,
    ``amazon2014:Beauty``, ``amazon2023:All_Beauty``); relative directories are looked up from the
    working directory, then from the config file's directory and its parents (so a config under
    ``recipes/configs/`` can name ``../shared/data/...`` relative to the repository root)."""

    dataset: str = "synthetic"
    max_history: int = 50
    min_interactions: int = 3
    cache_dir: str | None = None  # download cache (default $GENREC_CACHE or ~/.cache/genrec)


@dataclass
class TextSection:
    """Item text and its sentence embeddings (:class:`quantize.TextEncoder`)."""

    model: str | None = None  # None: the bundled all-MiniLM-L6-v2 (offline)
    fields: list[str] = field(default_factory=lambda: ["title", "brand", "categories", "description", "price"])
    skip_categories: list[str] = field(default_factory=list)
    fallback: str | None = None  # text of items without any, e.g. "Item {item_id}" (None: an error)
    max_description_chars: int | None = 1000
    max_seq_length: int | None = None  # encoder token limit (None: the model's own)
    batch_size: int = 64
    precision: str = "fp32"  # "int8": dynamic int8 quantization of the encoder (CPU; 1.27x faster on Beauty)
    device: str = "cpu"  # where the encoder runs, e.g. "cuda"
    cache: bool = True  # read/write the embedding cache
    cache_dir: str | None = None


@dataclass
class QuantizeSection:
    """Semantic IDs (:func:`quantize.build_semantic_ids`)."""

    method: str = "rq_kmeans"  # rq_kmeans, rq_vae, pq, opq
    levels: int | None = 3  # rq_kmeans / rq_vae
    subspaces: int | None = None  # pq / opq (default 4 there)
    codebook_size: int = 256
    pca_dim: int | None = None
    whiten: bool = False
    seed: int = 0
    options: dict[str, Any] = field(default_factory=dict)  # other quantizer options (e.g. niter)


@dataclass
class LabelsSection:
    max_hop: int = 4


@dataclass
class FusionSection:
    """Post-hoc fusion (:mod:`fusion`), fitted on validation and applied to test; optional joint training."""

    k: int = 50  # top-K of each model (candidate union) and length of every ranked list
    beam: int = 50  # beam width of the generative model
    teacher_forcing: bool = True  # each model scores the other's candidates
    methods: list[str] = field(default_factory=lambda: list(FUSION_METHODS))
    primary: str = "learned_minmax"  # the method the summary compares with the single models
    gate: dict[str, Any] = field(default_factory=dict)  # LearnedGateFusion options (hidden, lr, max_epochs, ...)
    joint: bool = False  # also train fusion.joint.JointModel (both towers + gate, one objective)
    joint_config: dict[str, Any] = field(default_factory=dict)  # JointConfig overrides (towers: the recipe's)


@dataclass
class ReportSection:
    ks: list[int] = field(default_factory=lambda: [10, 20])
    metric: str = "ndcg@10"  # of the summary, the comparisons and the charts
    plots: bool = True


@dataclass
class RecipeConfig:
    """A whole recipe; see the module doc. Build it with :func:`load_config` / :func:`config_from_dict`."""

    name: str = "recipe"
    preset: str | None = None
    num_threads: int | None = None  # torch threads of every stage (None: torch's default)
    data: DataSection = field(default_factory=DataSection)
    text: TextSection = field(default_factory=TextSection)
    quantize: QuantizeSection = field(default_factory=QuantizeSection)
    sasrec: SASRecConfig = field(default_factory=SASRecConfig)
    generative: GenerativeConfig = field(default_factory=GenerativeConfig)
    labels: LabelsSection = field(default_factory=LabelsSection)
    fusion: FusionSection = field(default_factory=FusionSection)
    report: ReportSection = field(default_factory=ReportSection)
    source: str | None = field(default=None, compare=False)  # the YAML file it came from (not hashed)


SECTIONS: dict[str, type] = {"data": DataSection, "text": TextSection, "quantize": QuantizeSection,
                             "sasrec": SASRecConfig, "generative": GenerativeConfig, "labels": LabelsSection,
                             "fusion": FusionSection, "report": ReportSection}
TOP_LEVEL = ("name", "preset", "num_threads")

#: Budgets merged under a config's explicit values. ``quick``: a first result on Amazon Beauty in
#: about 10 minutes on 2 CPU cores (short item text, small models, a few epochs, top-20 fusion);
#: ``full``: the measured defaults of each component (their quality bars), all post-hoc fusion methods
#: (joint training on request: ``fusion.joint=true``).
PRESETS: dict[str, dict[str, Any]] = {
    "quick": {
        "text": {"fields": ["title", "brand", "categories"], "max_seq_length": 64},
        "quantize": {"levels": 3, "codebook_size": 64},
        "sasrec": {"max_epochs": 4, "patience": 2},
        "generative": {"hidden": 64, "num_blocks": 1, "head_layers": 1, "max_epochs": 6, "max_minutes": 2.5,
                       "patience": 2, "eval_beam": 10, "lr": 2e-3, "lr_schedule": "constant", "warmup_epochs": 0.0,
                       "eval_every": 1},
        "fusion": {"k": 20, "beam": 20, "methods": ["fixed", "adaptive", "learned_minmax"], "joint": False,
                   "gate": {"max_epochs": 40}},
    },
    "full": {
        "quantize": {"levels": 3, "codebook_size": 256},
        "generative": {"max_minutes": 40.0},  # a safety cap; the 36-epoch schedule takes ~30 min on Beauty
        # joint training is off: at equal compute it costs as much again as both towers (~40 min on
        # Beauty); fusion.joint=true adds it (bench/joint_beauty.py measures it on its own)
        "fusion": {"k": 50, "beam": 50, "methods": list(FUSION_METHODS), "joint": False},
    },
}


def _build_section(name: str, cls: type, values: Mapping[str, Any]) -> Any:
    return build_dataclass(name, cls, values)


def _merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over`` on top of ``base``, recursively for sections (a mapping value replaces nothing else)."""
    out = copy.deepcopy(dict(base))
    for k, v in over.items():
        if k in SECTIONS and isinstance(out.get(k), Mapping) and isinstance(v, Mapping):
            out[k] = {**out[k], **copy.deepcopy(dict(v))}
        else:
            out[k] = copy.deepcopy(v)
    return out


def _parse_override(pair: str) -> tuple[list[str], Any]:
    key, sep, raw = pair.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {pair!r} is not of the form section.key=value")
    return key.strip().split("."), parse_value(raw)


def apply_overrides(raw: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """``section.key=value`` (or ``name=...``, ``num_threads=...``) pairs applied to a raw config dict;
    values are read as in a YAML file (:func:`genrec.config.parse_value`: ``[10, 20]``, ``true``,
    ``null``, ``1e-3``) or else kept as plain strings."""
    out = copy.deepcopy(dict(raw))
    for pair in overrides:
        path, value = _parse_override(pair)
        if len(path) == 1:
            if path[0] not in TOP_LEVEL:
                raise ConfigError(f"override {pair!r}: {path[0]!r} is not a top-level key "
                                  f"({', '.join(TOP_LEVEL)}); section settings are written section.key=value")
            out[path[0]] = value
            continue
        section, key = path[0], ".".join(path[1:])
        if section not in SECTIONS:
            raise ConfigError(f"override {pair!r}: unknown section {section!r}{did_you_mean(section, SECTIONS)}; "
                              f"sections: {', '.join(SECTIONS)}")
        if not isinstance(out.get(section) or {}, Mapping):
            raise ConfigError(f"config section {section!r} must be a mapping of settings, got {out[section]!r}")
        if out.get(section) is None:
            out[section] = {}
        if len(path) > 2:
            # nested mappings, e.g. fusion.gate.hidden=32
            sec = out[section]
            node = sec.setdefault(path[1], {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {pair!r}: '{section}.{path[1]}' is not a mapping")
            for p in path[2:-1]:
                node = node.setdefault(p, {})
            node[path[-1]] = value
        else:
            out[section][key] = value
    return out


def config_from_dict(raw: Mapping[str, Any] | None, preset: str | None = None, overrides: Sequence[str] = (),
                     source: str | Path | None = None) -> RecipeConfig:
    """Validate and build a :class:`RecipeConfig` from a raw mapping (a parsed YAML file).

    ``preset`` (or the mapping's own ``preset``) is merged under the explicit values, then
    ``overrides`` are applied. ``sasrec.max_len`` / ``generative.max_len`` default to
    ``data.max_history``; ``num_threads`` fills every unset ``num_threads``."""
    raw = dict(raw or {})
    if not isinstance(raw, dict):
        raise ConfigError(f"a recipe config must be a mapping, got {type(raw).__name__}")
    raw = apply_overrides(raw, overrides)
    bad = [k for k in raw if k not in SECTIONS and k not in TOP_LEVEL]
    if bad:
        raise ConfigError(f"unknown config key '{bad[0]}'{did_you_mean(bad[0], [*SECTIONS, *TOP_LEVEL])}; "
                          f"top-level keys: {', '.join(TOP_LEVEL)}; sections: {', '.join(SECTIONS)}")
    chosen = preset if preset is not None else raw.get("preset")
    if chosen is not None and (not isinstance(chosen, str) or chosen not in PRESETS):
        raise ConfigError(f"config key 'preset' must be one of {list(PRESETS)}, got {chosen!r}")
    merged = _merge(PRESETS[chosen], raw) if chosen else raw
    if preset is not None:
        merged["preset"] = preset
    for sec in SECTIONS:
        if merged.get(sec) is None:
            merged[sec] = {}
        if not isinstance(merged[sec], Mapping):
            raise ConfigError(f"config section {sec!r} must be a mapping of settings, got {merged[sec]!r}")
    max_hist = merged["data"].get("max_history", DataSection.max_history)
    for sec in ("sasrec", "generative"):
        if isinstance(merged[sec], Mapping):
            merged[sec] = {"max_len": max_hist, **merged[sec]}
    top = {}
    for key in TOP_LEVEL:
        if key in merged:
            top[key] = merged[key]
    name = top.get("name", RecipeConfig.name)
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"config key 'name' must be a non-empty string, got {name!r}")
    nt = top.get("num_threads")
    if nt is not None and (not isinstance(nt, int) or isinstance(nt, bool) or nt < 1):
        raise ConfigError(f"config key 'num_threads' must be a positive integer or null, got {nt!r}")
    sections = {sec: _build_section(sec, cls, merged[sec]) for sec, cls in SECTIONS.items()}
    if nt is not None:
        for sec in ("sasrec", "generative"):
            if getattr(sections[sec], "num_threads") is None:
                sections[sec].num_threads = nt
    config = RecipeConfig(name=name, preset=merged.get("preset"), num_threads=nt, **sections,
                          source=str(source) if source else None)
    validate_config(config)
    return config


def load_config(path: str | Path, preset: str | None = None, overrides: Sequence[str] = ()) -> RecipeConfig:
    """Read a YAML recipe config (see :func:`config_from_dict`); a relative ``data.dataset`` directory
    is resolved as described in :class:`DataSection`."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: recipe config not found")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read the recipe config: {e}") from None
    raw = yaml_load(text, str(path))
    if raw is not None and not isinstance(raw, dict):
        raise ConfigError(f"{path}: a recipe config must be a YAML mapping, got {type(raw).__name__}")
    try:
        config = config_from_dict(raw, preset, overrides, source=path)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    config.data.dataset = resolve_dataset_spec(config.data.dataset, path.parent)
    return config


def resolve_dataset_spec(spec: str, config_dir: str | Path | None = None) -> str:
    """A relative directory spec found from the working directory or from ``config_dir`` and its
    parents becomes that directory; keyword specs (``synthetic:...``, ``amazon2014:...``) are kept."""
    kind = spec.partition(":")[0]
    if ":" in spec and kind in ("synthetic", "amazon2014", "amazon2023", "plain"):
        return spec
    if spec == "synthetic":
        return spec
    p = Path(spec).expanduser()
    if p.is_dir():
        return str(p.resolve())  # absolute: the stage hashes do not depend on the working directory
    if p.is_absolute() or config_dir is None:
        return str(p)
    for base in [Path(config_dir).resolve(), *Path(config_dir).resolve().parents]:
        if (base / p).is_dir():
            return str((base / p).resolve())
    return spec


def validate_config(config: RecipeConfig) -> None:
    """Range and choice checks across sections (types were checked when building)."""
    from genrec.training import LR_SCHEDULES
    from quantize.embed import PRECISIONS
    from quantize.pipeline import METHODS

    def need(cond: bool, key: str, value: Any, what: str) -> None:
        if not cond:
            raise ConfigError(f"config key '{key}' {what}, got {value!r}")

    d, t, q, f, r = config.data, config.text, config.quantize, config.fusion, config.report
    need(bool(d.dataset.strip()), "data.dataset", d.dataset, "must name a dataset")
    need(d.max_history >= 1, "data.max_history", d.max_history, "must be >= 1")
    need(d.min_interactions >= 3, "data.min_interactions", d.min_interactions, "must be >= 3")
    allowed_fields = ("title", "brand", "categories", "description", "price", "item_id")
    need(bool(t.fields) and all(x in allowed_fields for x in t.fields), "text.fields", t.fields,
         f"must be a non-empty list of {list(allowed_fields)}")
    need(t.batch_size >= 1, "text.batch_size", t.batch_size, "must be >= 1")
    need(t.precision in PRECISIONS, "text.precision", t.precision, f"must be one of {list(PRECISIONS)}")
    need(t.precision == "fp32" or str(t.device).startswith("cpu"), "text.device", t.device,
         f"must be the CPU with text.precision {t.precision!r} (dynamic quantization runs on the CPU only)")
    need(q.method in METHODS, "quantize.method", q.method, f"must be one of {list(METHODS)}")
    need(q.codebook_size >= 2, "quantize.codebook_size", q.codebook_size, "must be >= 2")
    if q.method in ("rq_kmeans", "rq_vae"):
        need(q.levels is not None and q.levels >= 1, "quantize.levels", q.levels, f"must be >= 1 for {q.method}")
    need(q.pca_dim is None or q.pca_dim >= 1, "quantize.pca_dim", q.pca_dim, "must be >= 1 or null")
    for sec in ("sasrec", "generative"):
        c = getattr(config, sec)
        for key in ("max_len", "hidden", "num_blocks", "num_heads", "batch_size", "max_epochs", "patience",
                    "eval_every"):
            need(getattr(c, key) >= 1, f"{sec}.{key}", getattr(c, key), "must be >= 1")
        need(c.lr > 0, f"{sec}.lr", c.lr, "must be > 0")
        need(getattr(c, "lr_schedule", "constant") in LR_SCHEDULES, f"{sec}.lr_schedule",
             getattr(c, "lr_schedule", "constant"), f"must be one of {list(LR_SCHEDULES)}")
        need(0 <= c.dropout < 1, f"{sec}.dropout", c.dropout, "must be in [0, 1)")
        need(c.hidden % c.num_heads == 0, f"{sec}.hidden", c.hidden, f"must be divisible by num_heads ({c.num_heads})")
    need(config.generative.eval_beam >= 1, "generative.eval_beam", config.generative.eval_beam, "must be >= 1")
    need(config.labels.max_hop >= 1, "labels.max_hop", config.labels.max_hop, "must be >= 1")
    need(f.k >= 2, "fusion.k", f.k, "must be >= 2")
    need(f.beam >= 1, "fusion.beam", f.beam, "must be >= 1")
    need(bool(f.methods), "fusion.methods", f.methods, "must list at least one method")
    for m in f.methods:
        need(m in FUSION_METHODS, "fusion.methods", m, f"must be among {list(FUSION_METHODS)}")
    need(len(set(f.methods)) == len(f.methods), "fusion.methods", f.methods, "must not repeat a method")
    need(f.primary in f.methods, "fusion.primary", f.primary, f"must be one of fusion.methods {f.methods}")
    check_mapping("fusion.gate", f.gate, gate_option_hints())
    for key in ("hidden", "batch_size", "max_epochs", "patience", "k"):
        if key in f.gate:
            need(f.gate[key] >= 1, f"fusion.gate.{key}", f.gate[key], "must be >= 1")
    if "lr" in f.gate:
        need(f.gate["lr"] > 0, "fusion.gate.lr", f.gate["lr"], "must be > 0")
    if f.gate.get("features") is not None:
        from fusion.indicators import INDICATOR_NAMES, is_indicator_name

        for name in f.gate["features"]:
            need(is_indicator_name(name), "fusion.gate.features", name,
                 f"must name indicators among {list(INDICATOR_NAMES)} (L: a semantic-ID prefix level)")
    if "holdout" in f.gate:
        need(0 < f.gate["holdout"] < 1, "fusion.gate.holdout", f.gate["holdout"], "must be in (0, 1)")
    if f.joint:
        from fusion.joint import JointConfig

        check_mapping("fusion.joint_config", f.joint_config, field_hints(JointConfig))
        try:
            _joint_config(config)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"config section 'fusion.joint_config': {e}") from None
    need(bool(r.ks) and all(k >= 1 for k in r.ks), "report.ks", r.ks, "must be a non-empty list of positive ints")
    need(max(r.ks) <= f.k, "report.ks", r.ks, f"must not exceed fusion.k ({f.k}): ranked lists have length k")
    m, _, kk = r.metric.partition("@")
    need(m in ("recall", "ndcg") and kk.isdigit() and int(kk) in r.ks, "report.metric", r.metric,
         f"must be recall@K or ndcg@K with K in report.ks {r.ks}")


#: what the learned gate keeps to itself: its scale and name come from ``fusion.methods``, the rest is
#: fitted state
_GATE_INTERNAL = ("scale", "name", "standardizer", "model", "history", "best_epoch")


def gate_option_hints() -> dict[str, Any]:
    """The :class:`fusion.LearnedGateFusion` options a recipe may set under ``fusion.gate``."""
    from fusion.methods import LearnedGateFusion

    return field_hints(LearnedGateFusion, exclude=_GATE_INTERNAL)


def config_to_dict(config: RecipeConfig) -> dict[str, Any]:
    """Plain dict of a config (what :func:`config_from_dict` reads back to an equal config)."""
    out = {"name": config.name, "preset": config.preset, "num_threads": config.num_threads}
    for sec in SECTIONS:
        out[sec] = asdict(getattr(config, sec))
    return out


# ----------------------------------------------------------------------------------------------
# Stages


@dataclass(frozen=True)
class Stage:
    """One step of the recipe: ``run(run_dir, config, inputs) -> {artifact name: path}`` writes into
    ``run_dir/<name>/``; ``sections`` are the config sections its hash covers, ``after`` the stages whose
    artifacts it reads, ``enabled`` whether the config asks for it."""

    name: str
    run: Callable[[Path, RecipeConfig, dict[str, Path]], dict[str, Path]]
    sections: tuple[str, ...]
    after: tuple[str, ...] = ()
    enabled: Callable[[RecipeConfig], bool] = lambda config: True
    description: str = ""
    #: whether redoing it costs real work (trained models, embeddings, fitted fusion); such a stage is
    #: only discarded with ``force``, the others (recomputed in seconds) are simply rerun
    keeps_work: bool = True


# Settings that do not change any result (threads, inference batch sizes, caches): not hashed.
_UNHASHED = {"num_threads", "eval_batch_size", "cache", "cache_dir", "batch_size@text", "device",
             "nonfinite_loss"}  # skipping non-finite steps only matters in a run that had them


def _section_for_hash(config: RecipeConfig, sec: str, fingerprint: Any = None) -> Any:
    if sec in TOP_LEVEL:
        return getattr(config, sec)
    if "." in sec:  # one setting of a section, e.g. "fusion.k"
        head, _, key = sec.partition(".")
        return asdict(getattr(config, head))[key]
    d = asdict(getattr(config, sec))
    out = {k: v for k, v in d.items() if k not in _UNHASHED and f"{k}@{sec}" not in _UNHASHED}
    if sec == "data":  # the input files themselves, so changed data reruns what depends on it
        out["fingerprint"] = fingerprint
    return out


def _hash_inputs(stage: Stage, config: RecipeConfig, upstream: Mapping[str, str], fingerprint: Any) -> dict:
    """What a stage's hash covers: its config sections (the data section with the input files'
    fingerprint) and its upstream stages' hashes."""
    return {"stage": stage.name, "version": 2,
            "config": {s: _section_for_hash(config, s, fingerprint) for s in stage.sections},
            "upstream": {k: upstream[k] for k in stage.after if k in upstream}}


def _stage_hash(src: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(src, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _flat(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, Mapping):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: json.dumps(obj, sort_keys=True, default=str)}


def _changed_keys(before: Mapping[str, Any] | None, after: Mapping[str, Any]) -> list[str]:
    """The config keys (``section.key``) whose hashed values differ; input data changes read
    ``data files (path)``."""
    if before is None:
        return ["(unknown: the stage was run by an older genrec)"]
    old, new = _flat(before.get("config", {})), _flat(after.get("config", {}))
    out = []
    ups_old, ups_new = before.get("upstream", {}), after.get("upstream", {})
    out += [f"stage {k} added" for k in ups_new if k not in ups_old]
    out += [f"stage {k} removed" for k in ups_old if k not in ups_new]
    for key in sorted(set(old) | set(new)):
        if old.get(key) == new.get(key):
            continue
        if ".fingerprint" in key:
            out.append("data files (" + _data_paths(before, after) + ")")
        else:
            out.append(key)
    return sorted(set(out))


def _data_paths(before: Mapping[str, Any], after: Mapping[str, Any]) -> str:
    def files(src: Mapping[str, Any]) -> dict[str, Any]:
        fp = src.get("config", {}).get("data", {}).get("fingerprint") or {}
        return {f["path"]: f for f in fp.get("files", [])}

    a, b = files(before), files(after)
    changed = [p for p in sorted(set(a) | set(b)) if a.get(p) != b.get(p)]
    return ", ".join(changed) if changed else "the dataset spec"


class _SplitCache:
    """The dataset and split of the current data section, loaded once per process."""

    key: str | None = None
    value: Any = None


def load_split(config: RecipeConfig):
    """``(dataset, split)`` of ``config.data`` (memoised for the last data section seen)."""
    import genrec

    key = json.dumps(asdict(config.data), sort_keys=True)
    if _SplitCache.key != key:
        dataset = genrec.load_dataset(config.data.dataset, cache_dir=config.data.cache_dir)
        split = genrec.leave_one_out(dataset, max_history=config.data.max_history,
                                     min_interactions=config.data.min_interactions)
        _SplitCache.key, _SplitCache.value = key, (dataset, split)
    return _SplitCache.value


def _progress(config: RecipeConfig) -> bool:
    return bool(getattr(config, "_progress", True))


def check_catalogue(config: RecipeConfig, num_items: int) -> None:
    """Settings that must fit the dataset's catalogue (known once it is loaded): ``fusion.k``."""
    if config.fusion.k > num_items:
        raise ConfigError(f"config key 'fusion.k' ({config.fusion.k}) exceeds the catalogue of "
                          f"{config.data.dataset} ({num_items} items); set fusion.k <= {num_items}")


def stage_data(run_dir: Path, config: RecipeConfig, inputs: dict[str, Path]) -> dict[str, Path]:
    """Load the dataset and split it; ``data/summary.json``: statistics and split sizes."""
    dataset, split = load_split(config)
    check_catalogue(config, split.num_items)  # early, before any model is trained
    summary: dict[str, Any] = {"dataset": config.data.dataset, "name": dataset.name, "stats": dataset.stats(),
                               "split": {"users_kept": int(len(split.users)), "train_sequences": len(split.train),
                                         "train_interactions": int(sum(len(s) for s in split.train)),
                                         "valid": len(split.valid), "test": len(split.test),
                                         "max_history": split.max_history}}
    info = getattr(dataset, "synthetic", None)
    if info is not None:
        summary["synthetic_kind_shares"] = info.kind_shares()
    return {"summary": save_json(run_dir / "data" / "summary.json", summary)}


def _template(config: RecipeConfig):
    from quantize import TextTemplate

    t = config.text
    return TextTemplate.from_fields(t.fields, skip_categories=tuple(t.skip_categories),
                                    max_description_chars=t.max_description_chars)


def stage_embed(run_dir: Path, config: RecipeConfig, inputs: dict[str, Path]) -> dict[str, Path]:
    """Item texts -> sentence embeddings: ``embed/embeddings.npy`` ``[n_items, dim]``, ``embed/summary.json``."""
    from quantize import TextEncoder, embed_items, item_texts

    dataset, _ = load_split(config)
    t = config.text
    encoder = TextEncoder(t.model, batch_size=t.batch_size, max_seq_length=t.max_seq_length,
                          cache_dir=(t.cache_dir if t.cache else False), show_progress=_progress(config),
                          num_threads=config.num_threads, precision=t.precision, device=t.device)
    template = _template(config)
    x = embed_items(dataset, encoder, template, t.fallback)
    out = run_dir / "embed"
    path = atomic_write(out / "embeddings.npy", lambda p: _np_save(p, x.astype(np.float32)))
    texts = item_texts(dataset, template, t.fallback)
    summary = {"items": int(len(x)), "dim": int(x.shape[1]), "encoder": encoder.config(),
               "template": template.to_dict(), "examples": texts[:3]}
    return {"embeddings": path, "summary": save_json(out / "summary.json", summary)}


def _np_save(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, array, allow_pickle=False)


def _np_savez(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    with open(path, "wb") as f:
        np.savez_compressed(f, **arrays)


def stage_quantize(run_dir: Path, config: RecipeConfig, inputs: dict[str, Path]) -> dict[str, Path]:
    """Embeddings -> semantic IDs: ``quantize/semantic_ids.json``, ``diagnostics.json``, ``quantizer.pt``."""
    from quantize import build_semantic_ids

    dataset, _ = load_split(config)
    q = config.quantize
    x = np.load(inputs["embed"] / "embeddings.npy")
    opts = dict(q.options)
    opts["codebook_size"] = q.codebook_size
    if q.method in ("rq_kmeans", "rq_vae"):
        opts["levels"] = q.levels
    elif q.subspaces is not None:
        opts["subspaces"] = q.subspaces
    try:
        result = build_semantic_ids(dataset, q.method, embeddings=x, pca_dim=q.pca_dim, whiten=q.whiten,
                                    seed=q.seed, **opts)
    except ValueError as e:
        raise ConfigError(f"config section 'quantize': {e}") from None
    paths = result.save(run_dir / "quantize")
    return {k: Path(v) for k, v in paths.items()}


def _table(run_dir: Path):
    from quantize import SemanticIdTable

    return SemanticIdTable.load(run_dir / "quantize" / "semantic_ids.json")


def stage_sasrec(run_dir: Path, config: RecipeConfig, inputs: dict[str, Path]) -> dict[str, Path]:
    """Train SASRec (resumable): ``sasrec/best.pt``, ``last.pt``, ``history.json``, ``summary.json``
    (best epoch, validation metrics; test metrics are computed in the evaluate stage)."""
    from genrec.sasrec import train_sasrec

    _, split = load_split(config)
    out = run_dir / "sasrec"
    result = train_sasrec(split, config.sasrec, out_dir=out, progress=_progress(config))
    summary = {"best_epoch": result.best_epoch, "valid": _drop_timing(result.best_valid)}
    return {"model": out / "best.pt", "history": out / "history.json",
            "summary": save_json(out / "summary.json", summary)}


def stage_generative(run_dir: Path, config: RecipeConfig, inputs: dict[str, Path]) -> dict[str, Path]:
    """Train the semantic-ID generative model (resumable): ``generative/best.pt``, ``last.pt``,
    ``history.json``, ``summary.json`` (best epoch, validation beam-search metrics; test metrics come
    from the fusion stage's beam, in the evaluate stage)."""
    from genrec.generative import train_generative

    _, split = load_split(config)
    out = run_dir / "generative"
    result = train_generative(split, _table(run_dir), config.generative, out_dir=out, progress=_progress(config))
    summary = {"best_epoch": result.best_epoch, "valid": _drop_timing(result.best_valid),
               "valid_beam": config.generative.eval_beam}
    return {"model": out / "best.pt", "history": out / "history.json",
            "summary": save_json(out / "summary.json", summary)}


def stage_labels(run_dir: Path, config: RecipeConfig, inputs: dict[str, Path]) -> dict[str, Path]:
    """Memorization / generalization labels of validation and test instances: ``labels/labels.npz``
    (``{split}_kind``, ``{split}_hop``, ``{split}_kind_hops``) and ``labels/summary.json`` (shares)."""
    from genrec.memorization import label_split

    _, split = load_split(config)
    labels = label_split(split, max_hop=config.labels.max_hop)
    arrays = {}
    for name, lab in labels.items():
        arrays.update({f"{name}_kind": lab.kind, f"{name}_hop": lab.hop, f"{name}_kind_hops": lab.kind_hops})
    out = run_dir / "labels"
    path = atomic_write(out / "labels.npz", lambda p: _np_savez(p, arrays))
    summary = {name: {"count": len(lab), "shares": lab.shares()} for name, lab in labels.items()}
    summary["max_hop"] = config.labels.max_hop
    return {"labels": path, "summary": save_json(out / "summary.json", summary)}


def load_labels(run_dir: str | Path, split: str = "test"):
    """The :class:`~genrec.memorization.InstanceLabels` saved by the labels stage."""
    from genrec.memorization import InstanceLabels

    run_dir = Path(run_dir)
    max_hop = load_json(run_dir / "labels" / "summary.json")["max_hop"]
    with np.load(run_dir / "labels" / "labels.npz") as z:
        return InstanceLabels(kind=z[f"{split}_kind"], hop=z[f"{split}_hop"], kind_hops=z[f"{split}_kind_hops"],
                              max_hop=max_hop)


def _fusion_methods(config: RecipeConfig) -> list:
    from fusion import AdaptiveFusion, FixedWeightFusion, LearnedGateFusion

    out = []
    for m in config.fusion.methods:
        if m == "fixed":
            out.append(FixedWeightFusion())
        elif m == "adaptive":
            out.append(AdaptiveFusion())
        else:
            out.append(LearnedGateFusion(scale=m.split("_", 1)[1], name=m, **config.fusion.gate))
    return out


def stage_fusion(run_dir: Path, config: RecipeConfig, inputs: dict[str, Path]) -> dict[str, Path]:
    """Post-hoc fusion: both models' top-K candidates and indicators on validation and test, every
    method fitted on validation only and applied to test. ``fusion/topk.npz`` (test top-K lists of
    ``sasrec``, ``gr`` and each method), ``fusion/gates.npz`` (test gate = weight of SASRec, per
    method), ``fusion/summary.json`` (fitted parameters, union width, timings)."""
    try:
        from fusion import TrainStats, run_posthoc, single_model_topk
        from fusion.adapters import model_inputs
    except ImportError as e:  # pragma: no cover - the fusion package is part of the project
        raise RuntimeError(f"fusion stage: the fusion package's API is missing ({e})") from None
    from genrec.generative import load_generative
    from genrec.sasrec import load_sasrec

    _, split = load_split(config)
    check_catalogue(config, split.num_items)
    f = config.fusion
    sasrec = load_sasrec(run_dir / "sasrec" / "best.pt")
    generative = load_generative(run_dir / "generative" / "best.pt")
    stats = TrainStats(split.train, split.num_items, _table(run_dir).codes)
    fin = {name: model_inputs(sasrec, generative, getattr(split, name), stats, k=f.k, beam=f.beam,
                              teacher_forcing=f.teacher_forcing, batch_size=config.generative.eval_batch_size)
           for name in ("valid", "test")}
    valid, test = fin["valid"], fin["test"]
    outputs = run_posthoc(_fusion_methods(config), valid.cands, split.valid.targets, valid.indicators, test.cands,
                          test.indicators, k=f.k)
    topk = {"sasrec": single_model_topk(test.cands, "id", f.k), "gr": single_model_topk(test.cands, "gr", f.k)}
    topk.update({name: o.topk for name, o in outputs.items()})
    gates = {name: o.gates.gate.astype(np.float32) for name, o in outputs.items()}
    out = run_dir / "fusion"
    p_topk = atomic_write(out / "topk.npz", lambda p: _np_savez(p, topk))
    p_gates = atomic_write(out / "gates.npz", lambda p: _np_savez(p, gates))
    summary = {
        "methods": list(outputs),
        "params": {n: _small_params(o.params) for n, o in outputs.items()},
        "union_width": {"valid": valid.cands.width, "test": test.cands.width},
        "indicators": list(test.indicators.names),
        "timing": {"inputs": {n: inp.seconds for n, inp in fin.items()},
                   "methods": {n: o.seconds for n, o in outputs.items()}},
    }
    return {"topk": p_topk, "gates": p_gates, "summary": save_json(out / "summary.json", summary)}


def _small_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """Scalars and short lists of a method's ``params()`` (no weight tensors)."""
    out = {}
    for k, v in params.items():
        if np.ndim(v) == 0:
            out[k] = v.item() if isinstance(v, np.generic) else v
        elif k == "features":
            out[k] = list(v)
    return out


def _joint_config(config: RecipeConfig):
    from fusion.joint import JointConfig

    jc = dict(config.fusion.joint_config)
    jc.setdefault("id_tower", asdict(config.sasrec))
    jc.setdefault("gr_tower", asdict(config.generative))
    jc.setdefault("max_len", config.data.max_history)
    jc.setdefault("num_threads", config.num_threads)
    for key in ("lr", "batch_size", "max_epochs", "patience", "seed"):
        jc.setdefault(key, getattr(config.sasrec, key))
    return JointConfig(**jc)


def stage_joint(run_dir: Path, config: RecipeConfig, inputs: dict[str, Path]) -> dict[str, Path]:
    """Joint training of both towers and a gate (:func:`fusion.joint.train_joint`, resumable):
    ``joint/best.pt``, ``history.json``, ``ranks.npz`` (test ranks, full catalogue), ``gates.npz``,
    ``summary.json``."""
    try:
        from fusion.joint import joint_gates, joint_ranks, train_joint
    except ImportError as e:  # pragma: no cover
        raise RuntimeError(f"joint stage: fusion.joint is missing ({e})") from None

    _, split = load_split(config)
    out = run_dir / "joint"
    jc = _joint_config(config)
    result = train_joint(split, _table(run_dir), jc, out_dir=out, progress=_progress(config))
    ranks = joint_ranks(result.model, split.test, batch_size=jc.eval_batch_size)
    gates = joint_gates(result.model, split.test, batch_size=jc.eval_batch_size)
    p_ranks = atomic_write(out / "ranks.npz", lambda p: _np_savez(p, {"joint": ranks}))
    p_gates = atomic_write(out / "gates.npz", lambda p: _np_savez(p, {"joint": gates.gate.astype(np.float32)}))
    summary = {"best_epoch": result.best_epoch, "valid": _drop_timing(result.best_valid), "mode": jc.mode,
               "mixing": jc.mixing}
    return {"ranks": p_ranks, "gates": p_gates, "history": out / "history.json",
            "summary": save_json(out / "summary.json", summary)}


def stage_evaluate(run_dir: Path, config: RecipeConfig, inputs: dict[str, Path]) -> dict[str, Path]:
    """Test metrics of every model overall and per memorization label, and mean gate values by label:
    ``evaluate/metrics.json``."""
    from genrec.analysis import evaluate_by_category
    from genrec.metrics import ranks_from_topk

    _, split = load_split(config)
    labels = load_labels(run_dir, "test")
    targets = split.test.targets
    ranks: dict[str, np.ndarray] = {}
    with np.load(run_dir / "fusion" / "topk.npz") as z:
        for name in z.files:
            ranks[name] = ranks_from_topk(z[name], targets)
    gates: dict[str, np.ndarray] = {}
    with np.load(run_dir / "fusion" / "gates.npz") as z:
        gates.update({n: z[n] for n in z.files})
    if (run_dir / "joint" / "ranks.npz").exists() and "joint" in inputs:
        with np.load(run_dir / "joint" / "ranks.npz") as z:
            ranks["joint"] = z["joint"]
        with np.load(run_dir / "joint" / "gates.npz") as z:
            gates["joint"] = z["joint"]
    ks = tuple(config.report.ks)
    metrics = {name: evaluate_by_category(r, labels, ks) for name, r in ranks.items()}
    groups = labels.groups()
    kinds = labels.kind_names()
    gate_by_label = {}
    for name, g in gates.items():
        row = {"all": float(g.mean())}
        for cat in ("memorization", "generalization", "uncategorized"):
            m = groups == cat
            row[cat] = float(g[m].mean()) if m.any() else math.nan
        for kind in sorted(set(kinds[groups == "generalization"])):
            m = kinds == kind
            row[str(kind)] = float(g[m].mean())
        gate_by_label[name] = row
    out = run_dir / "evaluate"
    return {"metrics": save_json(out / "metrics.json", {"ks": list(ks), "test": metrics,
                                                        "gate_by_label": gate_by_label})}


def stage_report(run_dir: Path, config: RecipeConfig, inputs: dict[str, Path]) -> dict[str, Path]:
    """``results.json`` and ``report.md`` (+ ``plots/*.png``) in the run directory."""
    results = collect_results(run_dir, config)
    paths = {"results": save_json(run_dir / "results.json", results)}
    paths.update(write_report(run_dir, config, results))
    return paths


_FUSION_KEYS = ("data", "fusion.k", "fusion.beam", "fusion.teacher_forcing", "fusion.methods", "fusion.gate")
STAGES: tuple[Stage, ...] = (
    Stage("data", stage_data, ("data",), (), description="load and split the dataset", keeps_work=False),
    Stage("embed", stage_embed, ("data", "text"), ("data",), description="item text -> sentence embeddings"),
    Stage("quantize", stage_quantize, ("quantize",), ("embed",), description="embeddings -> semantic IDs"),
    Stage("sasrec", stage_sasrec, ("data", "sasrec"), ("data",), description="train the SASRec item-ID model"),
    Stage("generative", stage_generative, ("data", "generative"), ("quantize",),
          description="train the semantic-ID generative model"),
    Stage("labels", stage_labels, ("data", "labels"), ("data",), description="memorization / generalization labels",
          keeps_work=False),
    Stage("fusion", stage_fusion, _FUSION_KEYS, ("sasrec", "generative", "quantize"),
          description="post-hoc fusion fitted on validation, applied to test"),
    Stage("joint", stage_joint, ("data", "sasrec", "generative", "fusion.joint_config"), ("quantize",),
          enabled=lambda c: c.fusion.joint, description="joint training of both towers and a gate"),
    Stage("evaluate", stage_evaluate, ("report.ks",), ("labels", "fusion", "joint"),
          description="metrics overall and per label", keeps_work=False),
    Stage("report", stage_report, ("name", "preset", "report", "fusion.primary"), ("data", "embed", "quantize", "sasrec", "generative", "labels",
                                                       "fusion", "joint", "evaluate"),
          description="results.json, report.md and plots", keeps_work=False),
)


def stage_names(config: RecipeConfig | None = None) -> list[str]:
    """Names of the stages a config runs, in order (all stages without a config)."""
    return [s.name for s in STAGES if config is None or s.enabled(config)]


class StopAfterStage(Exception):
    """Raised by :func:`run_recipe` when ``stop_after`` names the stage just finished (for tests and
    step-by-step runs)."""


def _marker(path: Path) -> dict[str, Any] | None:
    """A stage marker's content; an unreadable one (a damaged file) counts as absent: the stage reruns."""
    if not path.exists():
        return None
    try:
        return load_json(path)
    except (OSError, ValueError):
        log.warning("%s is unreadable; treating its stage as not done", path)
        return None


def _plan(config: RecipeConfig, run_dir: Path, fingerprint: Any) -> tuple[dict[str, dict], list[str], list[str]]:
    """Hash inputs of every enabled stage, the stages whose earlier work a run would discard, and
    the config keys that changed for them."""
    hashes: dict[str, str] = {}
    inputs: dict[str, dict] = {}
    discard, changed = [], []
    for stage in STAGES:
        if not stage.enabled(config):
            continue
        src = _hash_inputs(stage, config, hashes, fingerprint)
        hashes[stage.name] = _stage_hash(src)
        inputs[stage.name] = {"hash": hashes[stage.name], "src": src}
        sdir = run_dir / stage.name
        earlier = _marker(sdir / "stage.done.json") or _marker(sdir / "stage.started.json")
        if earlier is not None and earlier.get("config_hash") != hashes[stage.name]:
            discard.append(stage.name)
            if stage.keeps_work:
                changed += [k for k in _changed_keys(earlier.get("hashed"), src) if k not in changed]
    return inputs, discard, changed


def _run_stages(config: RecipeConfig, run_dir: Path, names: list[str], *, force: bool, progress: bool | None,
                stop_after: str | None, on_stage: Callable[[str, str, dict[str, Any]], None] | None) -> None:
    from tqdm.auto import tqdm

    from genrec.rundir import data_fingerprint

    try:
        fingerprint = data_fingerprint(config.data.dataset, config.data.cache_dir)
    except OSError as e:
        raise DataFormatError(f"{e.filename}: cannot read the dataset file: {e.strerror}") from None
    plan, discard, changed = _plan(config, run_dir, fingerprint)
    costly = [n for n in discard if next(s for s in STAGES if s.name == n).keeps_work]
    if costly and not force:
        trained = [f"{n}/{f}" for n in discard for f in ("best.pt", "last.pt") if (run_dir / n / f).exists()]
        raise RunDirectoryError(
            f"{run_dir}: the config or data changed since this run directory's stages ran "
            f"(changed: {', '.join(changed)}); running would discard the stages {', '.join(costly)}"
            + (f", trained models included ({', '.join(trained)})" if trained else "")
            + (f" (and rerun {', '.join(n for n in discard if n not in costly)})" if len(costly) < len(discard) else "")
            + ". Rerun with --force (run_recipe(force=True)) to discard and redo them, or choose a fresh run "
              "directory (--out)")
    _write(run_dir / "config.json", lambda: save_json(run_dir / "config.json", config_to_dict(config)), "recipe")
    report = _marker(run_dir / "report" / "stage.done.json")
    if report is None or report.get("config_hash") != plan["report"]["hash"]:
        # the report will be written anew: an earlier one must not outlive the stages it came from
        for stale in ("results.json", "report.md"):
            (run_dir / stale).unlink(missing_ok=True)
    dirs: dict[str, Path] = {}
    bar = tqdm(total=len(names), desc="recipe", unit="stage", disable=None if progress is None else not progress)
    try:
        for stage in STAGES:
            if not stage.enabled(config):
                continue
            h, src = plan[stage.name]["hash"], plan[stage.name]["src"]
            sdir = run_dir / stage.name
            marker = sdir / "stage.done.json"
            done = _marker(marker)
            inputs = {k: dirs[k] for k in stage.after if k in dirs}
            if done is not None and done.get("config_hash") == h:
                log.info("stage %s: done earlier, skipped", stage.name)
                dirs[stage.name] = sdir
                if on_stage:
                    on_stage(stage.name, "skip", done)
                bar.update(1)
                if stop_after == stage.name:
                    raise StopAfterStage(stage.name)
                continue
            if stage.name in discard:
                # finished or interrupted with other settings (allowed by force): its checkpoints cannot
                # be resumed
                log.log(logging.WARNING if stage.keeps_work else logging.INFO,
                        "stage %s: its config, data or upstream stages changed since it ran; clearing %s and "
                        "running it again", stage.name, sdir)
                shutil.rmtree(sdir)
            started = {"stage": stage.name, "config_hash": h, "hashed": src}
            _write(sdir, lambda: save_json(sdir / "stage.started.json", started), stage.name)
            if on_stage:
                on_stage(stage.name, "start", {"description": stage.description})
            bar.set_postfix_str(stage.name)
            scoped = _reset_peak_rss()
            t0 = time.perf_counter()
            try:
                artifacts = _write(sdir, lambda: stage.run(run_dir, config, inputs), stage.name)
            except (GenrecError, FileNotFoundError):
                raise  # already say what is wrong and where
            except Exception as e:
                raise RuntimeError(f"stage {stage.name!r} failed: {type(e).__name__}: {e}") from e
            wall = time.perf_counter() - t0
            info = {"stage": stage.name, "config_hash": h,
                    "artifacts": {k: str(Path(p).relative_to(run_dir)) if Path(p).is_relative_to(run_dir) else str(p)
                                  for k, p in artifacts.items()},
                    "timing": {"wall_s": wall, "peak_rss_mib": _peak_rss_mib(),
                               "peak_rss_scope": "stage" if scoped else "process"},
                    "hashed": src}
            _write(sdir, lambda: save_json(marker, info), stage.name)  # last: the stage counts as done only now
            dirs[stage.name] = sdir
            log.info("stage %s: done in %.1fs", stage.name, wall)
            if on_stage:
                on_stage(stage.name, "done", info)
            bar.update(1)
            if stop_after == stage.name:
                raise StopAfterStage(stage.name)
    finally:
        bar.close()


_WRITE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO}


def _write(where: Path, action: Callable[[], Any], stage: str) -> Any:
    """Run ``action``; an error writing the run directory (disk full, read-only, no permission)
    becomes a :class:`RunDirectoryError` naming the stage and the file. Artifacts are written
    atomically, so what earlier stages wrote is intact."""
    try:
        return action()
    except OSError as e:
        if e.errno not in _WRITE_ERRORS:
            raise
        inside = e.filename is None or Path(str(e.filename)).resolve().is_relative_to(where.resolve().parent)
        if not inside:  # an input outside the run directory (data, an embedding cache)
            raise DataFormatError(f"stage {stage!r} cannot read {e.filename}: {e.strerror}") from None
        verb = "write" if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS) else "access"
        raise RunDirectoryError(
            f"stage {stage!r} could not {verb} {e.filename or where}: {e.strerror}; the stages finished before "
            f"it are intact: free some space or make the run directory writable, then rerun to resume") from None


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter of this process (Linux >= 4.0); False if unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def run_recipe(config: RecipeConfig, run_dir: str | Path, *, progress: bool | None = None,
               stop_after: str | None = None,
               on_stage: Callable[[str, str, dict[str, Any]], None] | None = None,
               force: bool = False) -> dict[str, Any] | None:
    """Run (or resume) every enabled stage of ``config`` in ``run_dir``; returns ``results.json``'s content.

    Completed stages whose config hash matches are skipped; interrupted ones resume. When the config
    or the input data changed since stages of ``run_dir`` ran, :class:`RunDirectoryError` names the
    changed keys and the stages that would be discarded, unless ``force`` (then they are cleared and
    rerun). The run holds ``run_dir/run.lock`` (:class:`genrec.rundir.RunLock`): a second run on the same
    directory is refused. A stage that cannot write (disk full, read-only) fails with
    :class:`RunDirectoryError`; finished stages stay intact. ``stop_after``:
    raise :class:`StopAfterStage` once that stage is done (later stages are left for the next call).
    ``on_stage(name, event, info)`` is called with ``"skip"``,
    ``"start"`` and ``"done"`` events (the CLI prints progress from it). ``progress``: tqdm bars
    (``None``: on a terminal only)."""
    import torch

    run_dir = Path(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunDirectoryError(f"{run_dir}: cannot create the run directory: {e.strerror}") from None
    names = stage_names(config)
    if stop_after is not None and stop_after not in names:
        raise ValueError(f"stop_after={stop_after!r} is not a stage of this recipe; stages: {names}")
    object.__setattr__(config, "_progress", progress is not False and (progress or sys.stderr.isatty()))
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    with RunLock(run_dir):
        _run_stages(config, run_dir, names, force=force, progress=progress, stop_after=stop_after,
                    on_stage=on_stage)
    results_path = run_dir / "results.json"
    return load_json(results_path) if results_path.exists() else None


# ----------------------------------------------------------------------------------------------
# Results and report


def _drop_timing(obj: Any) -> Any:
    return strip_timing(obj)


def strip_timing(obj: Any) -> Any:
    """A copy of ``obj`` (nested dicts / lists) without the keys in :data:`TIMING_KEYS`."""
    if isinstance(obj, Mapping):
        return {k: strip_timing(v) for k, v in obj.items() if k not in TIMING_KEYS}
    if isinstance(obj, list):
        return [strip_timing(v) for v in obj]
    return obj


def _history(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    keep = ("epoch", "train_loss", "recall@10", "ndcg@10", "minutes")
    return [{k: row[k] for k in keep if k in row} for row in load_json(path)]


def collect_results(run_dir: str | Path, config: RecipeConfig) -> dict[str, Any]:
    """Aggregate every stage's outputs into the ``results.json`` dict."""
    run_dir = Path(run_dir)
    names = stage_names(config)
    ev = load_json(run_dir / "evaluate" / "metrics.json")
    quant = load_json(run_dir / "quantize" / "diagnostics.json")
    fusion = load_json(run_dir / "fusion" / "summary.json")
    models: dict[str, Any] = {}
    for name, per_label in ev["test"].items():
        models[name] = {"kind": ("single" if name in ("sasrec", "gr") else "joint" if name == "joint" else "fusion"),
                        "test": per_label}
    training = {}
    for stage, key in (("sasrec", "sasrec"), ("generative", "gr"), ("joint", "joint")):
        if stage in names:
            s = load_json(run_dir / stage / "summary.json")
            training[key] = {**s, "curve": _history(run_dir / stage / "history.json")}
    stages = {}
    total = 0.0
    for name in names:
        marker = run_dir / name / "stage.done.json"
        if name == "report" or not marker.exists():
            continue
        t = load_json(marker)["timing"]
        stages[name] = {"timing": t}
        total += t["wall_s"]
    results = {
        "name": config.name, "preset": config.preset, "dataset": config.data.dataset,
        "data": load_json(run_dir / "data" / "summary.json"),
        "labels": load_json(run_dir / "labels" / "summary.json"),
        "quantization": quant,
        "models": models,
        "training": training,
        "fusion": {"primary": config.fusion.primary, "params": fusion["params"], "union_width": fusion["union_width"],
                   "indicators": fusion["indicators"], "gate_by_label": ev["gate_by_label"],
                   "timing": fusion.get("timing", {})},
        "metric": config.report.metric,
        "comparisons": None,
        "stages": stages,
        "timing": {"total_wall_s": total},
    }
    results["comparisons"] = headline_comparisons(results)
    return results


def headline_comparisons(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The three claims of the product, measured on test: GR ahead on generalization instances,
    SASRec ahead on memorization ones, fusion (``fusion.primary``) ahead of both overall.
    Each entry: ``claim``, the two sides' values, ``holds`` (False when a side is missing too)."""
    metric = results["metric"]
    models = results["models"]
    primary = results["fusion"]["primary"]

    def val(model: str, cat: str) -> float:
        v = models.get(model, {}).get("test", {}).get(cat, {}).get(metric, math.nan)
        return float(v) if v is not None else math.nan

    def cmp(claim: str, a: str, b: str, cat: str, a_val: float, b_val: float, b_name: str | None = None) -> dict:
        holds = bool(not math.isnan(a_val) and not math.isnan(b_val) and a_val > b_val)
        return {"claim": claim, "category": cat, "metric": metric, "winner": a, "winner_value": a_val,
                "loser": b_name or b, "loser_value": b_val, "holds": holds}

    out = [cmp("generative model ahead on generalization instances", "gr", "sasrec", "generalization",
               val("gr", "generalization"), val("sasrec", "generalization")),
           cmp("SASRec ahead on memorization instances", "sasrec", "gr", "memorization",
               val("sasrec", "memorization"), val("gr", "memorization"))]
    best_single = max(("sasrec", "gr"), key=lambda m: (val(m, "all") if not math.isnan(val(m, "all")) else -1))
    out.append(cmp(f"fusion ({primary}) ahead overall", primary, best_single, "all", val(primary, "all"),
                   val(best_single, "all")))
    return out


def _fmt(x: Any, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def _comparison_lines(results: Mapping[str, Any]) -> list[str]:
    lines = []
    for c in results["comparisons"]:
        verdict = "holds" if c["holds"] else "DOES NOT HOLD"
        lines.append(f"- {c['claim']}: {c['winner']} {_fmt(c['winner_value'])} vs {c['loser']} "
                     f"{_fmt(c['loser_value'])} ({c['metric']}, {c['category']}) -> {verdict}")
    return lines


def format_summary(results: Mapping[str, Any], run_dir: str | Path | None = None) -> str:
    """One screen of text: per-model metric overall / memorization / generalization, the three
    comparisons, time per stage. (The CLI prints it; the library does not.)"""
    metric = results["metric"]
    cats = ("all", "memorization", "generalization", "uncategorized")
    first = next(iter(results["models"].values()))["test"]
    counts = {c: int(first.get(c, {}).get("count", 0)) for c in cats}
    lines = [f"{results['name']} ({results['dataset']}, preset {results['preset'] or 'none'}): test {metric}", ""]
    head = f"{'model':18s}" + "".join(f"{c[:14]:>16s}" for c in cats)
    lines += [head, f"{'(instances)':18s}" + "".join(f"{counts[c]:>16d}" for c in cats)]
    for name, m in results["models"].items():
        mark = " *" if name == results["fusion"]["primary"] else ""
        lines.append(f"{(name + mark):18s}" + "".join(f"{_fmt(m['test'].get(c, {}).get(metric)):>16s}" for c in cats))
    lines += ["", "comparisons:"] + _comparison_lines(results)
    stages = results.get("stages", {})
    if stages:
        lines += ["", "time per stage: " + ", ".join(f"{n} {s['timing']['wall_s']:.0f}s" for n, s in stages.items())
                  + f"; total {results['timing']['total_wall_s'] / 60:.1f} min"]
    if run_dir is not None:
        lines.append(f"results: {Path(run_dir) / 'results.json'}, report: {Path(run_dir) / 'report.md'}")
    return "\n".join(lines)


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()


def _plot_gates(gate_by_label: Mapping[str, Mapping[str, float]], path: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    methods = list(gate_by_label)
    cats = [c for c in next(iter(gate_by_label.values())) if c != "all"]
    fig = Figure(figsize=(max(6.0, 1.0 * len(cats) + 2), 4.0))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / max(len(methods), 1)
    x = np.arange(len(cats))
    for j, m in enumerate(methods):
        vals = [gate_by_label[m].get(c, math.nan) for c in cats]
        ax.bar(x - 0.4 + width * (j + 0.5), [0 if math.isnan(v) else v for v in vals], width, label=m)
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.set_xticks(x)
    ax.set_xticklabels(cats, rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("mean gate (weight of SASRec)")
    ax.set_title("fusion gate by memorization label (test)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return atomic_write_bytes(path, _png(fig))


def _plot_curves(training: Mapping[str, Any], path: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9.0, 3.6))
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for name, t in training.items():
        curve = t.get("curve", [])
        if not curve:
            continue
        ep = [r["epoch"] for r in curve]
        ax1.plot(ep, [r.get("ndcg@10", math.nan) for r in curve], marker="o", ms=3, label=name)
        ax2.plot(ep, [r.get("train_loss", math.nan) for r in curve], marker="o", ms=3, label=name)
    ax1.set_title("validation NDCG@10")
    ax2.set_title("training loss")
    for ax in (ax1, ax2):
        ax.set_xlabel("epoch")
        ax.legend(fontsize=8)
    fig.tight_layout()
    return atomic_write_bytes(path, _png(fig))


def write_report(run_dir: str | Path, config: RecipeConfig, results: Mapping[str, Any]) -> dict[str, Path]:
    """``report.md`` with tables (overall + per label, quantization, fusion, stages) and PNG plots."""
    from genrec.analysis import markdown_table, plot_categories

    run_dir = Path(run_dir)
    metric = results["metric"]
    k_main = metric.partition("@")[2]
    table_metrics = [f"recall@{k_main}", f"ndcg@{k_main}"]  # every K is in results.json
    per_model = {name: m["test"] for name, m in results["models"].items()}
    paths: dict[str, Path] = {}
    md = [f"# {results['name']}: {results['dataset']}", "",
          f"Preset `{results['preset'] or 'none'}`. Leave-one-out, full catalogue, test split; ranked lists of "
          f"length {config.fusion.k}. `*` in the summary marks the primary fusion method "
          f"(`{config.fusion.primary}`).", "", "## Headline comparisons", ""]
    md += _comparison_lines(results)
    md += ["", "## Test metrics by memorization label", "",
           markdown_table(per_model, table_metrics, ["all", "memorization", "generalization", "uncategorized"]),
           "", "### Every label", "", markdown_table(per_model, [metric])]
    if config.report.plots:
        plots = run_dir / "plots"
        paths["plot_categories"] = plot_categories(per_model, plots / "per_category.png", metric=metric,
                                                   title=f"{results['name']} test: {metric}")
        md += ["", f"![{metric} per category](plots/per_category.png)"]
        if results["fusion"]["gate_by_label"]:
            paths["plot_gates"] = _plot_gates(results["fusion"]["gate_by_label"], plots / "gates_by_label.png")
            md += ["", "## Fusion gate by label", "",
                   "Mean weight of SASRec per label (1 = SASRec only, 0 = generative model only).", "",
                   "![gate by label](plots/gates_by_label.png)"]
        if any(t.get("curve") for t in results["training"].values()):
            paths["plot_curves"] = _plot_curves(results["training"], plots / "validation_curves.png")
    gl = results["fusion"]["gate_by_label"]
    if gl:
        cats = list(next(iter(gl.values())))
        md += ["", "| method | " + " | ".join(cats) + " |", "|---|" + "---:|" * len(cats)]
        md += [f"| {m} | " + " | ".join(_fmt(row.get(c), 3) for c in cats) + " |" for m, row in gl.items()]
    md += ["", "## Fitted fusion parameters", ""]
    md += [f"- `{m}`: " + ", ".join(f"{k}={_fmt(v) if isinstance(v, float) else v}" for k, v in p.items())
           for m, p in results["fusion"]["params"].items()]
    md += ["", "## Training", "", "| model | best epoch | valid N@10 | epochs run |", "|---|---:|---:|---:|"]
    for name, t in results["training"].items():
        md.append(f"| {name} | {t.get('best_epoch')} | {_fmt(t.get('valid', {}).get('ndcg@10'))} | "
                  f"{len(t.get('curve', []))} |")
    if config.report.plots and "plot_curves" in paths:
        md += ["", "![validation curves](plots/validation_curves.png)"]
    q = results["quantization"]
    c = q.get("collisions", {})
    md += ["", "## Semantic IDs", "",
           f"{q.get('quantizer')} with codebooks {q.get('codebook_sizes')}; "
           f"{c.get('colliding_share', 0):.2%} of items in colliding tuples before disambiguation "
           f"(largest group {c.get('largest_group')}); relative reconstruction error "
           f"{_fmt(q.get('reconstruction', {}).get('relative'), 3)}; codebook utilisation "
           + ", ".join(f"{cb['utilisation']:.0%}" for cb in q.get("codebooks", [])) + "."]
    md += ["", "## Stages", "", "| stage | wall time (s) | peak memory (MiB) |", "|---|---:|---:|"]
    for name, s in results["stages"].items():
        md.append(f"| {name} | {s['timing']['wall_s']:.1f} | {s['timing']['peak_rss_mib']:.0f} |")
    paths["report"] = atomic_write_text(run_dir / "report.md", "\n".join(md) + "\n")
    return paths
