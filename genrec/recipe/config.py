"""Recipe configuration: one YAML file (plus a preset and ``section.key=value`` overrides) ->
a validated :class:`RecipeConfig`.

Sections ``data``, ``text``, ``quantize``, ``sasrec`` / ``generative`` (their models' config fields),
``labels``, ``fusion``, ``analysis``, ``report``, plus top-level ``name``, ``preset``, ``num_threads``,
``device``. A preset (:data:`PRESETS`) is merged *under* the file's values, overrides on top. Values follow
:mod:`genrec.config` (YAML 1.2 scalars, every key and type checked, did-you-mean for unknown keys);
errors are :class:`~genrec.errors.ConfigError` naming the key (and the file).
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from genrec.config import build_dataclass, check_mapping, deep_merge, did_you_mean, field_hints, parse_value, yaml_load
from genrec.errors import ConfigError
from genrec.generative import GenerativeConfig
from genrec.sasrec import SASRecConfig

__all__ = ["ConfigError", "RecipeConfig", "DataSection", "TextSection", "QuantizeSection", "LabelsSection",
           "FusionSection", "AnalysisSection", "ReportSection", "SECTIONS", "TOP_LEVEL", "PRESETS", "FUSION_METHODS",
           "load_config", "config_from_dict", "config_to_dict", "apply_overrides", "validate_config", "resolve_dataset_spec",
           "gate_option_hints", "joint_config", "cold_enabled"]

FUSION_METHODS = ("fixed", "adaptive", "learned_minmax", "learned_logprob", "learned_mixture")
PRESET_NAMES = ("quick", "full")


# ----------------------------------------------------------------------------------------------
# Config


@dataclass
class DataSection:
    """``dataset``: any :func:`genrec.load_dataset` spec (a plain-format directory, ``synthetic[:k=v]``,
    ``amazon2014:Beauty``, ``amazon2023:All_Beauty``, ``recbole:DIR[,k=v]``, ``parquet:DIR[,k=v]``); relative directories are looked up from the
    working directory, then from the config file's directory and its parents (so a config under
    ``recipes/configs/`` can name ``../shared/data/...`` relative to the repository root).
    ``keep_items_without_interactions`` (plain-format directories, ``recbole:`` and ``parquet:`` only;
    default off): items of ``items.jsonl`` (``.item``, ``items.parquet``) that no interaction names stay in the catalogue, so they get semantic IDs and the
    generative model (and fusion through it) can recommend them; SASRec, which learns item
    embeddings from interactions only, will rank them low.
    ``cold_items`` (default 0: off): cold-start evaluation (:mod:`genrec.cold_start`). A share in
    (0, 1) removes that seeded (``cold_seed``) share of the catalogue from training entirely
    (TIGER's protocol); ``natural`` takes the items that occur in no sequence trained on before
    testing (LIGER's cold targets; also items seen only in the sequences of users too short for the
    split, which on 5-core data are none). The quantizer, SASRec and the generative model are trained on
    the warm items only; the cold items come back through the add-items path (frozen quantizer,
    disambiguation, :func:`genrec.new_items.extend_catalogue`) before test, and the report breaks
    test metrics down by cold and in-set targets (and the in-set users whose history holds a cold
    item, ``in_set_cold_history``).
    ``eval_users`` (default null: every user): validate and test on a seeded (``eval_seed``) sample of
    this many users (at least ``fusion.selection_folds``), the same users in both splits, still ranked
    against the whole catalogue; every model trains on every user's training sequence. Full ranking
    costs users x items, so at a million items this is what keeps evaluation, the fusion's candidates
    and its fit inside hours (issue 18)."""

    dataset: str = "synthetic"
    max_history: int = 50
    min_interactions: int = 3
    cache_dir: str | None = None  # download cache (default $GENREC_CACHE or ~/.cache/genrec)
    keep_items_without_interactions: bool = False
    cold_items: float | str = 0.0  # 0: off; a share in (0, 1); or "natural"
    cold_seed: int = 0  # which items a share makes cold
    eval_users: int | None = None  # validate / test on a seeded sample of this many users (None: all)
    eval_seed: int = 0  # which users that sample holds


@dataclass
class TextSection:
    """Item text and its sentence embeddings (:class:`quantize.TextEncoder`).

    ``embeddings``: precomputed item vectors used instead of the encoder (:mod:`genrec.item_embeddings`):
    a ``.npy`` file with its id list (``embeddings_ids``, default ``X.npy`` -> ``X.ids.txt``) or a
    ``.parquet`` file (``embeddings_id_column``, ``embeddings_vector_column``); the other settings are
    then unused. A relative path is found like ``data.dataset``'s directory."""

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
    embeddings: str | None = None  # precomputed item vectors (.npy + id list, or .parquet) instead of the encoder
    embeddings_ids: str | None = None  # the .npy's id list (None: X.npy -> X.ids.txt)
    embeddings_id_column: str = "item_id"  # Parquet: the item-id column
    embeddings_vector_column: str = "embedding"  # Parquet: the vector column


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

    def quantizer_options(self) -> dict[str, Any]:
        """The quantizer's constructor arguments: ``options`` plus the sizes this section sets."""
        sizes = {"levels": self.levels} if self.method in ("rq_kmeans", "rq_vae") else {"subspaces": self.subspaces}
        return {**self.options, "codebook_size": self.codebook_size, **{k: v for k, v in sizes.items() if v is not None}}


@dataclass
class LabelsSection:
    max_hop: int = 4


@dataclass
class FusionSection:
    """Post-hoc fusion (:mod:`fusion`), fitted on validation and applied to test; optional joint training.

    ``primary``: the method the summary compares with the single models and that
    ``Recommender.from_run`` loads by default. ``auto`` (default) picks it on validation only: the
    post-hoc method with the best cross-fitted ``report.metric`` (``selection_folds`` seeded folds of
    the validation users, :mod:`fusion.selection`) or the joint model (with ``joint: true``) when its
    validation score is higher (the holdout schedule's choice among its candidates cross-fitted on
    the same folds, the end-to-end one's own); ties go to the earlier in ``methods`` (joint last). A method's
    name (or ``joint``) fixes it instead.

    ``new_item_mixture`` (cold-start runs only; default off): rank the cold items against the warm
    ones with :mod:`fusion.new_item_mixture`, its prior and temperatures fitted per method on the
    validation users whose target is cold plus ``new_item_mixture_users`` sampled in-set ones
    (in-set NDCG@10 kept within 2% of every cold item ranked last), adopted only where it beats the
    method's own list on both sides (new targets, in-set within 2%); ``fusion/summary.json`` lists
    each method's validation figures with and without it (in sample: the in-set users are ones the
    methods were fitted on, the grid's best read on the same users). It reads the cold items' own
    validation interactions (three scalars per method), which truly new items would not have: a run
    with it on is not strictly TIGER's protocol (items removed from training entirely). Off: on Beauty it places the cold
    items worse than the methods' own scores do (BENCHMARKS.md), so it is likely adopted for none."""

    k: int = 50  # top-K of each model (candidate union) and length of every ranked list
    beam: int = 50  # beam width of the generative model
    teacher_forcing: bool = True  # each model scores the other's candidates
    methods: list[str] = field(default_factory=lambda: list(FUSION_METHODS))
    primary: str = "auto"  # "auto": chosen on validation (cross-fitted); or a method of `methods`, or "joint"
    selection_folds: int = 5  # cross-fitting folds of the validation split (scores for the choice of primary)
    selection_seed: int = 0  # which validation users fall in which fold
    gate: dict[str, Any] = field(default_factory=dict)  # LearnedGateFusion options (hidden, lr, max_epochs, ...)
    joint: bool = False  # also train a joint model (both towers and a gate in one run)
    # "holdout": fusion.holdout_joint (the gate fitted on held-out training transitions; joint_config:
    # HoldoutJointConfig overrides); "end_to_end": fusion.joint (one objective; JointConfig overrides)
    joint_schedule: str = "holdout"
    joint_config: dict[str, Any] = field(default_factory=dict)  # overrides (towers: the recipe's)
    # cold-start runs (data.cold_items) only, opt-in: fit fusion.new_item_mixture per method on the
    # validation users with a cold target plus this many sampled in-set ones, and rank test with it
    # (Recommender.from_run loads the fits); other runs ignore both
    new_item_mixture: bool = False
    new_item_mixture_users: int = 4000


@dataclass
class AnalysisSection:
    """The paper's semantic-ID analyses in the report (arXiv 2603.19809, sections 4.2-4.4; the
    ``analysis`` stage, :mod:`genrec.recipe.analyses`): support coverage of the test generalization
    instances, indicator validation (AUCs), and the quick codebook intervention sweep (no training:
    a quantizer fit per configuration; seconds each on Beauty with RQ-KMeans, but a training each
    with ``quantize.method: rq_vae``). Empty ``codebook_sizes`` or ``codebook_levels`` skip the sweep."""

    support_coverage: bool = True
    indicator_validation: bool = True
    codebook_sizes: list[int] = field(default_factory=lambda: [64, 256, 1024])
    codebook_levels: list[int] = field(default_factory=lambda: [2, 3, 4])
    token_hop: int = 1  # a prefix transition counts as memorized up to this hop (1: strict)


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
    # where every stage runs ("cpu", "cuda", "cuda:1", "auto"): fills each of text.device,
    # sasrec.device and generative.device the file or overrides leave unset (None: their own defaults)
    device: str | None = None
    data: DataSection = field(default_factory=DataSection)
    text: TextSection = field(default_factory=TextSection)
    quantize: QuantizeSection = field(default_factory=QuantizeSection)
    sasrec: SASRecConfig = field(default_factory=SASRecConfig)
    generative: GenerativeConfig = field(default_factory=GenerativeConfig)
    labels: LabelsSection = field(default_factory=LabelsSection)
    fusion: FusionSection = field(default_factory=FusionSection)
    analysis: AnalysisSection = field(default_factory=AnalysisSection)
    report: ReportSection = field(default_factory=ReportSection)
    source: str | None = field(default=None, compare=False)  # the YAML file it came from (not hashed)


SECTIONS: dict[str, type] = {"data": DataSection, "text": TextSection, "quantize": QuantizeSection,
                             "sasrec": SASRecConfig, "generative": GenerativeConfig, "labels": LabelsSection,
                             "fusion": FusionSection, "analysis": AnalysisSection, "report": ReportSection}
TOP_LEVEL = ("name", "preset", "num_threads", "device")

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
        # content-aware item vectors (the embed stage's text): on Beauty validation SASRec 0.0646
        # against 0.0609 and the fused primary 0.0764 against 0.0735 (cross-fitted), same training time
        "sasrec": {"text_dim": "auto"},
        "generative": {"max_minutes": 40.0},  # a safety cap; the 36-epoch schedule takes ~14 min on Beauty
        # joint training is off: at equal compute it costs as much again as both towers (~40 min on
        # Beauty); fusion.joint=true adds it (bench/joint_beauty.py measures it on its own)
        "fusion": {"k": 50, "beam": 50, "methods": list(FUSION_METHODS), "joint": False},
    },
}


def _build_section(name: str, cls: type, values: Mapping[str, Any]) -> Any:
    return build_dataclass(name, cls, values)


def _merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over`` on top of ``base``, recursively for sections and the mappings inside them (a preset's
    ``fusion.gate.max_epochs`` stays when the file sets ``fusion.gate.hidden``); any other value
    replaces the one below it."""
    out = copy.deepcopy(dict(base))
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if k in SECTIONS and isinstance(out.get(k), Mapping) and \
            isinstance(v, Mapping) else copy.deepcopy(v)
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
            for depth, p in enumerate(path[2:-1], start=3):
                node = node.setdefault(p, {})
                if not isinstance(node, dict):
                    raise ConfigError(f"override {pair!r}: '{'.'.join(path[:depth])}' is not a mapping")
            node[path[-1]] = value
        else:
            out[section][key] = value
    return out


def config_from_dict(raw: Mapping[str, Any] | None, preset: str | None = None, overrides: Sequence[str] = (),
                     source: str | Path | None = None) -> RecipeConfig:
    """Validate and build a :class:`RecipeConfig` from a raw mapping (a parsed YAML file).

    ``preset`` (or the mapping's own ``preset``) is merged under the explicit values, then
    ``overrides`` are applied. ``sasrec.max_len`` / ``generative.max_len`` default to
    ``data.max_history``; ``num_threads`` fills every unset ``num_threads``, ``device`` every unset
    ``text.device`` / ``sasrec.device`` / ``generative.device``."""
    if not isinstance(raw or {}, Mapping):
        raise ConfigError(f"a recipe config must be a mapping, got {type(raw).__name__}")
    raw = dict(raw or {})
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
    if isinstance(max_hist, bool) or not isinstance(max_hist, int) or max_hist < 1:  # before it becomes max_len
        raise ConfigError(f"config key 'data.max_history' must be an integer >= 1, got {max_hist!r}")
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
    device = top.get("device")
    if device is not None:
        from genrec.model_settings import resolve_device  # torch only when the key is used

        if not isinstance(device, str):
            raise ConfigError(f"config key 'device' must be a device name such as 'cuda' or null, got {device!r}")
        try:
            resolve_device(device)
        except ConfigError as e:
            raise ConfigError(f"config key 'device': {e}") from None
    if device is not None:
        # before the sections are built: their own checks (e.g. ``precision: bf16`` needs CUDA) see it
        for sec in ("text", "sasrec", "generative"):
            merged[sec] = {"device": device, **merged[sec]}  # a section's own device wins
    sections = {sec: _build_section(sec, cls, merged[sec]) for sec, cls in SECTIONS.items()}
    if nt is not None:
        for sec in ("sasrec", "generative"):
            if getattr(sections[sec], "num_threads") is None:
                sections[sec].num_threads = nt
    config = RecipeConfig(name=name, preset=merged.get("preset"), num_threads=nt, device=device, **sections,
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
    for key in ("embeddings", "embeddings_ids"):  # precomputed vectors: found like a dataset directory
        if getattr(config.text, key):
            setattr(config.text, key, _resolve_file(getattr(config.text, key), path.parent))
    return config


def _resolve_file(name: str, config_dir: Path) -> str:
    """A relative file path found from the working directory or from ``config_dir`` and its parents
    (absolute when found, else as given)."""
    p = Path(name).expanduser()
    if p.is_file() or p.is_absolute():
        return str(p.resolve()) if p.is_file() else str(p)
    for base in [config_dir.resolve(), *config_dir.resolve().parents]:
        if (base / p).is_file():
            return str((base / p).resolve())
    return name


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
    from genrec.memorization import MAX_HOP
    from quantize.embed import PRECISIONS
    from quantize.pipeline import METHODS, make_quantizer

    def need(cond: bool, key: str, value: Any, what: str) -> None:
        if not cond:
            raise ConfigError(f"config key '{key}' {what}, got {value!r}")

    d, t, q, f, r = config.data, config.text, config.quantize, config.fusion, config.report
    need(bool(d.dataset.strip()), "data.dataset", d.dataset, "must name a dataset")
    need(d.max_history >= 1, "data.max_history", d.max_history, "must be >= 1")
    need(d.min_interactions >= 3, "data.min_interactions", d.min_interactions, "must be >= 3")
    need(not d.keep_items_without_interactions or d.dataset.partition(":")[0] not in ("synthetic", "amazon2014",
                                                                                    "amazon2023"),
         "data.keep_items_without_interactions", True,
         f"applies to plain-format directories, recbole: and parquet: specs only, not {d.dataset!r}")
    cold_share = isinstance(d.cold_items, (int, float)) and not isinstance(d.cold_items, bool)
    need(d.cold_items == "natural" or (cold_share and 0 <= d.cold_items < 1), "data.cold_items", d.cold_items,
         "must be 0 (off), a share of the items in (0, 1) or 'natural'")
    need(d.eval_users is None or d.eval_users >= max(2, f.selection_folds), "data.eval_users", d.eval_users,
         f"must be null or at least fusion.selection_folds ({f.selection_folds}): the fusion is cross-fitted over "
         f"that many folds of the validation users")
    need(d.eval_users is None or not cold_enabled(config), "data.eval_users", d.eval_users,
         "cannot be combined with data.cold_items (the cold-start protocol evaluates every cold target)")
    need(not (cold_enabled(config) and f.joint), "fusion.joint", True,
         "cannot be combined with data.cold_items: the joint model cannot score items added after training")
    for sec in ("data", "quantize", "fusion"):  # a negative seed failed deep in a stage (NumPy refuses it)
        for key, value in asdict(getattr(config, sec)).items():
            if key == "seed" or key.endswith("_seed"):
                need(value >= 0, f"{sec}.{key}", value, "must be >= 0")
    allowed_fields = ("title", "brand", "categories", "description", "price", "item_id")
    need(bool(t.fields) and all(x in allowed_fields for x in t.fields), "text.fields", t.fields,
         f"must be a non-empty list of {list(allowed_fields)}")
    need(t.batch_size >= 1, "text.batch_size", t.batch_size, "must be >= 1")
    if t.fallback is not None:  # an unknown field failed in the embed stage, and only when an item had no text
        from quantize.text import render_fallback

        try:
            render_fallback(t.fallback, "item")
        except ValueError as e:
            raise ConfigError(f"config key 'text.fallback': {e}") from None
    for key, value in (("max_seq_length", t.max_seq_length), ("max_description_chars", t.max_description_chars)):
        need(value is None or value >= 1, f"text.{key}", value, "must be >= 1 or null")  # null: no limit
    need(t.embeddings is None or t.embeddings.endswith((".npy", ".parquet")), "text.embeddings", t.embeddings,
         "must name a .npy file (with an id list) or a .parquet file")
    need(t.precision in PRECISIONS, "text.precision", t.precision, f"must be one of {list(PRECISIONS)}")
    need(t.precision == "fp32" or str(t.device).startswith("cpu"), "text.device", t.device,
         f"must be the CPU with text.precision {t.precision!r} (dynamic quantization runs on the CPU only)")
    need(q.method in METHODS, "quantize.method", q.method, f"must be one of {list(METHODS)}")
    need(q.codebook_size >= 2, "quantize.codebook_size", q.codebook_size, "must be >= 2")
    if q.method in ("rq_kmeans", "rq_vae"):
        need(q.levels is not None and q.levels >= 1, "quantize.levels", q.levels, f"must be >= 1 for {q.method}")
    need(q.pca_dim is None or q.pca_dim >= 1, "quantize.pca_dim", q.pca_dim, "must be >= 1 or null")
    need(q.subspaces is None or q.subspaces >= 1, "quantize.subspaces", q.subspaces, "must be >= 1 or null")
    for key in set(q.options) & {"codebook_size", "levels", "subspaces", "seed", "pca_dim", "whiten", "embeddings"}:
        need(False, f"quantize.options.{key}", q.options[key], f"is a setting of its own: set quantize.{key}")
    try:  # a misspelt or ill-typed option fails now, not after the data and embed stages
        make_quantizer(q.method, seed=q.seed, **q.quantizer_options())
    except (TypeError, ValueError) as e:
        raise ConfigError(f"config key 'quantize.options': {e}") from None
    need(1 <= config.labels.max_hop <= MAX_HOP, "labels.max_hop", config.labels.max_hop, f"must be in [1, {MAX_HOP}]")
    need(f.k >= 2, "fusion.k", f.k, "must be >= 2")
    # the beam is widened to k in any case (fusion.adapters.model_inputs): a smaller one only changed the stage hash
    need(f.beam >= f.k, "fusion.beam", f.beam, f"must be >= fusion.k ({f.k}), the candidate lists' length")
    need(bool(f.methods), "fusion.methods", f.methods, "must list at least one method")
    for m in f.methods:
        need(m in FUSION_METHODS, "fusion.methods", m, f"must be among {list(FUSION_METHODS)}")
    need(len(set(f.methods)) == len(f.methods), "fusion.methods", f.methods, "must not repeat a method")
    primaries = ["auto", *f.methods, *(["joint"] if f.joint else [])]
    need(f.primary in primaries, "fusion.primary", f.primary,
         f"must be 'auto' or one of fusion.methods {f.methods}" + (" or 'joint'" if f.joint else ""))
    need(f.selection_folds >= 2, "fusion.selection_folds", f.selection_folds, "must be >= 2")
    need(f.new_item_mixture_users >= 1, "fusion.new_item_mixture_users", f.new_item_mixture_users, "must be >= 1")
    check_mapping("fusion.gate", f.gate, gate_option_hints())
    _check_gate(f.gate, "fusion.gate", f.k, "fusion.k")
    need(f.joint_schedule in JOINT_SCHEDULES, "fusion.joint_schedule", f.joint_schedule,
         f"must be one of {list(JOINT_SCHEDULES)}")
    if f.joint:
        from fusion.holdout_joint import HoldoutJointConfig
        from fusion.joint import JointConfig

        cls = HoldoutJointConfig if f.joint_schedule == "holdout" else JointConfig
        check_mapping("fusion.joint_config", f.joint_config, field_hints(cls))
        if isinstance(f.joint_config.get("gate"), Mapping):  # typed as fusion.gate's options
            check_mapping("fusion.joint_config.gate", f.joint_config["gate"], gate_option_hints())
            if isinstance(f.joint_config.get("k", f.k), int):  # named by its key before the gate is built
                _check_gate(f.joint_config["gate"], "fusion.joint_config.gate", f.joint_config.get("k", f.k),
                            "fusion.joint_config.k")
        try:
            jc = joint_config(config)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"config section 'fusion.joint_config': {e}") from None
        jk = getattr(jc, "k", None)  # the holdout schedule's ranked-list length (end to end: the catalogue)
        need(jk is None or max(r.ks, default=0) <= jk, "fusion.joint_config.k", jk,
             f"must be at least max(report.ks) ({max(r.ks, default=0)}): the joint model's list has length k")
        if jk is not None:  # the held-out joint model's gate: its own options, or fusion.gate's it inherits
            own = isinstance(f.joint_config.get("gate"), Mapping)
            _check_gate(jc.gate, "fusion.joint_config.gate" if own else "fusion.gate", jk, "fusion.joint_config.k",
                        "" if own else " (the held-out joint model's gate too)")
    a = config.analysis
    need(all(s >= 2 for s in a.codebook_sizes), "analysis.codebook_sizes", a.codebook_sizes, "must all be >= 2")
    need(all(lv >= 1 for lv in a.codebook_levels), "analysis.codebook_levels", a.codebook_levels, "must all be >= 1")
    need(1 <= a.token_hop <= config.labels.max_hop, "analysis.token_hop", a.token_hop,
         f"must be in [1, labels.max_hop ({config.labels.max_hop})]")
    need(bool(r.ks) and all(k >= 1 for k in r.ks), "report.ks", r.ks, "must be a non-empty list of positive ints")
    need(max(r.ks) <= f.k, "report.ks", r.ks, f"must not exceed fusion.k ({f.k}): ranked lists have length k")
    m, _, kk = r.metric.partition("@")
    # written as the results name it: "ndcg@010" passed and failed in the report stage, after training
    need(m in ("recall", "ndcg") and kk.isdigit() and kk == str(int(kk)) and int(kk) in r.ks, "report.metric", r.metric,
         f"must be recall@K or ndcg@K with K in report.ks {r.ks}")


def _check_gate(gate: Mapping[str, Any], key: str, k: int, k_key: str, note: str = "") -> None:
    """Range checks of a learned gate's options (``key``: ``fusion.gate``, or the held-out joint model's
    gate) whose fused lists have length ``k`` (set by ``k_key``); ``note`` follows the key in messages."""

    def need(ok: bool, sub: str, value: Any, what: str) -> None:
        if not ok:
            raise ConfigError(f"config key '{key}.{sub}'{note} {what}, got {value!r}")

    for sub in ("hidden", "batch_size", "max_epochs", "patience", "k"):
        if sub in gate:
            need(gate[sub] >= 1, sub, gate[sub], "must be >= 1")
    if "k" in gate:  # the NDCG cutoff the gate fits: ranks beyond the served list would earn credit
        need(gate["k"] <= k, "k", gate["k"], f"must not exceed {k_key} ({k}), the served lists' length")
    if "lr" in gate:
        need(gate["lr"] > 0, "lr", gate["lr"], "must be > 0")
    for sub in ("seed", "weight_decay"):
        if sub in gate:
            need(gate[sub] >= 0, sub, gate[sub], "must be >= 0")
    if "holdout" in gate:
        need(0 <= gate["holdout"] < 1, "holdout", gate["holdout"], "must be in [0, 1)")
    if gate.get("features") is not None:
        from fusion.indicators import INDICATOR_NAMES, is_indicator_name

        for name in gate["features"]:
            need(is_indicator_name(name), "features", name,
                 f"must name indicators among {list(INDICATOR_NAMES)} (L: a semantic-ID prefix level)")


#: ``fusion.joint_schedule`` values (see :class:`FusionSection`)
JOINT_SCHEDULES = ("holdout", "end_to_end")


def cold_enabled(config: RecipeConfig) -> bool:
    """Whether the config asks for cold-start evaluation (``data.cold_items`` not 0)."""
    return config.data.cold_items != 0


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
    if config.device is not None:  # only when set: the configs written before the key stay as they were
        out["device"] = config.device
    return {**out, **{sec: asdict(getattr(config, sec)) for sec in SECTIONS}}


def holdout_towers_default(config: RecipeConfig) -> str:
    """``fusion.joint_config.towers`` when not set (``joint_schedule: holdout``): ``"both"``, or
    ``"separate"`` when the towers read history windows of different lengths (``max_len``), which a
    jointly trained pair cannot."""
    return "both" if config.sasrec.max_len == config.generative.max_len else "separate"


def _over(recipe: dict[str, Any], given: Any) -> Any:
    """A joint tower's settings: those given in ``fusion.joint_config`` over the recipe's own tower
    (a tower given whole, e.g. a config object, is taken as it is)."""
    return recipe if given is None else {**recipe, **given} if isinstance(given, Mapping) else given


def joint_config(config: RecipeConfig):
    """The joint model's config: for ``fusion.joint_schedule: holdout`` a
    :class:`fusion.holdout_joint.HoldoutJointConfig` (``fusion.joint_config`` over the recipe's towers
    (a tower's settings given there, e.g. ``fusion.joint_config.sasrec.hidden``, over the recipe's own),
    candidate lists and gate options), else a :class:`fusion.joint.JointConfig` (``fusion.joint_config``
    over the recipe's towers and training settings)."""
    from fusion.joint import JointConfig

    jc = dict(config.fusion.joint_config)
    if config.fusion.joint_schedule == "holdout":
        from fusion.holdout_joint import HoldoutJointConfig

        f = config.fusion
        # the recipe's schedule (BENCHMARKS.md issue 14): both stage-1 tower pairs, each under its gate fitted
        # on their held-out transitions, and the recipe's own towers (reused, not retrained) under the separate
        # pair's gate; validation chooses (Beauty: the recipe's towers; the synthetic data: the joint pair)
        jc.setdefault("towers", holdout_towers_default(config))
        jc.setdefault("retrain", True)
        jc.setdefault("refresh_epochs", 0)
        jc["sasrec"] = _over(asdict(config.sasrec), jc.get("sasrec"))
        jc["generative"] = _over(asdict(config.generative), jc.get("generative"))
        jc.setdefault("k", f.k)
        # a longer list than fusion.k decodes a beam that wide (as it always did: the beam is widened to k)
        jc.setdefault("beam", max(f.beam, jc["k"]) if isinstance(jc["k"], int) else f.beam)
        jc.setdefault("batch_size", config.generative.eval_batch_size)
        jc.setdefault("gate", dict(f.gate))
        jc["joint"] = {"num_threads": config.num_threads, "device": config.sasrec.device, **jc.get("joint", {})}
        return HoldoutJointConfig(**jc)
    jc["id_tower"] = _over(asdict(config.sasrec), jc.get("id_tower"))
    jc["gr_tower"] = _over(asdict(config.generative), jc.get("gr_tower"))
    jc.setdefault("max_len", config.data.max_history)
    jc.setdefault("num_threads", config.num_threads)
    jc.setdefault("device", config.sasrec.device)  # the towers' device (the recipe's ``device`` fills it)
    for key in ("lr", "batch_size", "max_epochs", "patience", "seed"):
        jc.setdefault(key, getattr(config.sasrec, key))
    return JointConfig(**jc)
