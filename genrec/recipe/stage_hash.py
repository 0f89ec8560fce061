"""What a recipe stage's hash covers (:mod:`genrec.recipe.runner` writes it into each stage's done
marker): its config sections without the settings that change no result (:data:`UNHASHED`), the
input files' fingerprint, a local text encoder's files and the upstream stages' hashes. Settings
added to genrec after runs were made are left out of the hash at their old default (:data:`OMIT`),
so those runs keep their hashes."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any, Mapping

from genrec.recipe.config import TOP_LEVEL, RecipeConfig, holdout_towers_default
from genrec.recipe.checks import fusion_fit_k
from genrec.recipe.stages import Stage

__all__ = ["UNHASHED", "OMIT", "section_for_hash", "text_for_hash", "hash_inputs", "stage_hash", "flat_keys"]

# Settings that do not change any result (threads, inference batch sizes, caches): not hashed.
#: what section_for_hash returns for a setting left out of the hash (a default that runs made
#: before the setting existed had)
OMIT = object()
UNHASHED = {"num_threads", "eval_batch_size", "cache", "cache_dir", "batch_size@text", "device",
            "nonfinite_loss"}  # skipping non-finite steps only matters in a run that had them


def section_for_hash(config: RecipeConfig, sec: str, fingerprint: Any = None) -> Any:
    """The hashed value of config section (or ``section.key``) ``sec``: :data:`OMIT` for a setting left
    out at its old default; the data section with the input files' ``fingerprint``."""
    if sec in TOP_LEVEL:
        return getattr(config, sec)
    if sec == "fusion.new_item_mixture":  # read by cold-start runs only, and off by default
        if not (config.data.cold_items and config.fusion.new_item_mixture):
            return OMIT  # the hashes of runs made before the option
        return {"on": True, "users": config.fusion.new_item_mixture_users}
    if sec == "fusion.fit_k":  # derived, not a setting: the post-hoc methods' NDCG cutoff
        k = fusion_fit_k(config)
        return OMIT if k == 10 else k  # 10 before it was derived: the hashes of runs made before it
    if "." in sec:  # one setting of a section, e.g. "fusion.k"
        head, _, key = sec.partition(".")
        value = asdict(getattr(config, head))[key]
        if sec == "fusion.joint_config" and config.fusion.joint_schedule == "holdout":
            # the tower training in effect, not only the one set: a joint stage trained under the former
            # default ("separate") reruns under the current one
            value = {**value, "towers": value.get("towers", holdout_towers_default(config))}
        return value
    d = asdict(getattr(config, sec))
    out = {k: v for k, v in d.items() if k not in UNHASHED and f"{k}@{sec}" not in UNHASHED}
    if sec == "text":
        return text_for_hash(out)
    if sec in ("sasrec", "generative") and out.get("precision") == "fp32":  # the hashes of runs made before it
        out.pop("precision")
    if sec == "sasrec" and out.get("loss", "full") == "full":  # the hashes of runs made before the loss options
        for key in ("loss", "loss_chunk", "num_negatives", "negatives"):
            out.pop(key, None)
    if sec == "sasrec" and out.get("max_minutes") is None:  # the hashes of runs made before the option
        out.pop("max_minutes", None)
    if sec == "sasrec" and not out.get("text_dim"):  # ID embeddings only: the hashes of runs made before it
        out.pop("text_dim", None)
    if sec == "sasrec" and not out.get("id_dropout"):  # off: the hashes of runs made before the option
        out.pop("id_dropout", None)
    if sec == "data":  # the input files themselves, so changed data reruns what depends on it
        out["fingerprint"] = fingerprint
        if out.get("eval_users") is None:  # every user: the hashes of runs made before the option
            out.pop("eval_users", None)
            out.pop("eval_seed", None)
        if not out.get("keep_items_without_interactions"):  # off: the hashes of runs made before the option
            out.pop("keep_items_without_interactions", None)
        if not out.get("cold_items"):  # off (0): the hashes of runs made before cold-start evaluation
            out.pop("cold_items", None)
            out.pop("cold_seed", None)
        elif out.get("cold_items") == "natural":  # the seed picks nothing there
            out.pop("cold_seed", None)
    return out


EMBEDDING_KEYS = ("embeddings", "embeddings_ids", "embeddings_id_column", "embeddings_vector_column")


def text_for_hash(out: dict[str, Any]) -> dict[str, Any]:
    """The text section's hashed settings: without ``text.embeddings``, the encoder's (the hashes of
    runs made before the option); with it, the file settings and the files' fingerprints, so a
    changed file reruns the embed stage (the encoder settings are then unused)."""
    if not out.get("embeddings"):
        hashed = {k: v for k, v in out.items() if k not in EMBEDDING_KEYS}
        if out.get("model") and Path(out["model"]).expanduser().is_dir():
            # a local encoder: the content of its files (weights, configs, vocabulary), so new weights rerun
            # the embed stage, and a copy, a touch or a move of the same files does not
            hashed["model_files"] = _encoder_digest(Path(out["model"]).expanduser())
            hashed["model"] = "a local directory"  # where it lies is not what it computes
        return hashed
    from genrec.item_embeddings import embedding_files
    from genrec.rundir import file_fingerprint

    hashed = {k: out[k] for k in EMBEDDING_KEYS}
    files = embedding_files(out["embeddings"], out["embeddings_ids"])
    hashed["fingerprint"] = [file_fingerprint(p) if p.is_file() else {"path": str(p), "missing": True}
                             for p in files]  # a missing file is reported by the embed stage, by name
    return hashed


def hash_inputs(stage: Stage, config: RecipeConfig, upstream: Mapping[str, str], fingerprint: Any) -> dict:
    """What a stage's hash covers: its config sections (the data section with the input files'
    fingerprint) and its upstream stages' hashes."""
    return {"stage": stage.name, "version": 2,
            "config": {s: v for s in stage.sections if (v := section_for_hash(config, s, fingerprint)) is not OMIT},
            "upstream": {k: upstream[k] for k in stage.upstream(config) if k in upstream}}


def stage_hash(src: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(src, sort_keys=True, default=str).encode()).hexdigest()[:16]


def flat_keys(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, Mapping):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(flat_keys(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: json.dumps(obj, sort_keys=True, default=str)}


def _encoder_digest(directory: Path) -> str:
    """SHA-256 (16 hex digits) of a local encoder directory's weight, config and vocabulary files: their
    relative names and contents (the embedding cache's key uses sizes and times: cheap, but a copy
    without them would look like a new model to a run)."""
    digest = hashlib.sha256()
    for f in sorted(directory.rglob("*")):
        if f.is_file() and f.suffix in (".safetensors", ".bin", ".json", ".pt", ".onnx", ".txt", ".model"):
            digest.update(str(f.relative_to(directory)).encode() + b"\0")
            with open(f, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()[:16]
