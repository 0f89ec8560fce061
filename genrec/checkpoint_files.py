"""The training checkpoints' files: ``last.pt`` and ``best.pt``, each kept beside its ``.prev``
predecessor while the new one is written, and how a resume finds the newest readable pair
(:func:`genrec.training.fit` writes and reads them)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from genrec.artifacts import load_checkpoint, torch_save
from genrec.errors import CheckpointError

log = logging.getLogger(__name__)

#: what every training checkpoint (``last.pt``) holds
TRAINING_KEYS = ("model", "optimizer", "numpy_rng", "torch_rng", "state", "config")


def previous_path(path: Path) -> Path:
    """The name a checkpoint is kept under while its successor is written (``last.pt`` -> ``last.prev.pt``)."""
    return path.with_name(path.stem + ".prev" + path.suffix)


def save_keeping_previous(path: Path, obj: dict, unreadable: set[Path]) -> None:
    """``torch_save`` after renaming the current ``path`` to its ``.prev`` name (kept for resume
    when the new file is lost); a file that failed to load is overwritten, not kept."""
    if path.exists() and path not in unreadable:
        os.replace(path, previous_path(path))
    torch_save(path, obj)
    unreadable.discard(path)


def resume_checkpoint(out: Path, name: str, unreadable: set[Path]) -> tuple[dict, Path] | None:
    """``(checkpoint, path)`` to resume from: ``last.pt``, else ``last.prev.pt``; None for a new run."""
    last, prev = out / "last.pt", previous_path(out / "last.pt")
    tried = []
    for path in (last, prev):
        if not path.exists():
            continue
        try:
            ckpt = load_checkpoint(path, kind="training checkpoint", keys=TRAINING_KEYS)
        except CheckpointError as e:
            log.warning("%s", e)
            unreadable.add(path)
            tried.append(f"{path} {e.reason}")
            continue
        if path == prev:
            log.warning("%s: resuming %s from %s, the checkpoint of the evaluation before", last, name, prev)
        return ckpt, path
    if not tried:
        return None
    raise CheckpointError(f"cannot resume {name}: {'; and '.join(tried)}; delete "
                          f"{' and '.join(str(p) for p in (last, prev) if p.exists())} (or the directory {out}) "
                          f"to train {name} from scratch")


def best_weights(out: Path, state: dict, last_model: dict, device: torch.device, name: str,
                  unreadable: set[Path]) -> dict | None:
    """The weights of the resumed state's best epoch (see :func:`genrec.training.fit`); None before any improvement."""
    best_epoch = state["best_epoch"]
    if best_epoch == 0:
        return None
    if best_epoch == state["epoch"]:  # the resumed checkpoint's own weights are the best ones
        # best.pt may hold a later epoch written just before a kill (last.pt never confirmed it): fit
        # writes these weights over it (not rotated) before training on
        unreadable.add(out / "best.pt")
        return {k: v.to(device) for k, v in last_model.items()}
    best = out / "best.pt"
    problems = []
    for path in (best, previous_path(best)):
        if not path.exists():
            problems.append(f"{path} is missing")
            continue
        try:
            ckpt = load_checkpoint(path, map_location=device, kind="best-model checkpoint", keys=("model",))
        except CheckpointError as e:
            log.warning("%s", e)
            unreadable.add(path)
            problems.append(f"{path} {e.reason}")
            continue
        if ckpt.get("epoch") == best_epoch:
            if path != best:
                log.warning("%s: the best %s weights (epoch %d) come from %s", best, name, best_epoch, path)
                # best.pt holds an unconfirmed epoch or is damaged: fit writes the confirmed best over it
                # (never rotated over best.prev.pt) before training on
                unreadable.add(best)
            return ckpt["model"]
        problems.append(f"{path} holds epoch {ckpt.get('epoch')}")
    raise CheckpointError(f"{best}: cannot restore the best {name} weights (epoch {best_epoch}) needed to resume: "
                          f"{'; '.join(problems)}; restore {best.name} from a copy, or delete the directory {out} "
                          f"to train {name} from scratch")


#: what rebuilding a model from a checkpoint that load_checkpoint accepted raises when the file is another
#: model's or another genrec's: an unknown config key (TypeError), a refused value (ConfigError, a ValueError),
#: weights of other shapes or names (RuntimeError), other semantic IDs (CheckpointError, a ValueError)
INCOMPATIBLE_CHECKPOINT = (TypeError, ValueError, RuntimeError, KeyError)

#: the semantic-ID models whose checkpoints share their top-level keys (model, config, codes, codebook_sizes),
#: told apart by a config key or a weight only theirs has; the last entry: where each is read
_SEMANTIC_ID_KINDS = (
    ("hierarchical generative model", "head_layers", "head.", "genrec generative (--model hierarchical or "
     "semantic), read by genrec.generative.load_generative"),
    ("TIGER model", "d_model", "t5.", "genrec generative --model tiger, read by genrec.tiger.load_tiger"),
    ("parallel-code model", "temperature", "level_proj.", "genrec generative --model parallel, read by "
     "genrec.parallel_generative.load_parallel"),
)


def incompatible_checkpoint(path: Path, kind: str, ckpt: dict, error: BaseException) -> CheckpointError:
    """The :class:`~genrec.errors.CheckpointError` naming ``path`` for a checkpoint that loaded but does not
    rebuild into a ``kind``: when it looks like another semantic-ID model's (by its config keys or weights),
    which one and what reads it; else the error, on one line."""
    config, state = ckpt.get("config"), ckpt.get("model")
    config_keys = set(config) if isinstance(config, dict) else set()
    weights = [k for k in state if isinstance(k, str)] if isinstance(state, dict) else []
    for other, key, prefix, reader in _SEMANTIC_ID_KINDS:
        if other != kind and (key in config_keys or any(w.startswith(prefix) for w in weights)):
            return CheckpointError(f"{path}: not a {kind} checkpoint of this genrec (it looks like a {other}'s, "
                                   f"trained by {reader})")
    reason = " ".join(str(error).split())  # load_state_dict's message spans lines and tabs
    if len(reason) > 300:
        reason = reason[:297] + "..."
    return CheckpointError(f"{path}: not a {kind} checkpoint of this genrec ({type(error).__name__}: {reason}); "
                           "was it written by another model or another genrec version?")
