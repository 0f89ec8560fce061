"""The content-aware SASRec's item text around training (``SASRecConfig.text_dim``): resolving
``text_dim: "auto"`` to the text embeddings' width, and checking that a resumed run reads the text
it was trained on. Shared by :func:`genrec.sasrec.train_sasrec` and :mod:`fusion.joint`'s ID tower."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from genrec.artifacts import load_checkpoint
from genrec.errors import CheckpointError, ConfigError

if TYPE_CHECKING:
    from genrec.sasrec import SASRecConfig

__all__ = ["check_resumed_text", "resolve_text_dim"]


def resolve_text_dim(config: SASRecConfig, item_text: np.ndarray | None) -> SASRecConfig:
    """``config`` with ``text_dim: "auto"`` replaced by the width of ``item_text``; a
    :class:`~genrec.errors.ConfigError` unless the text is given exactly when ``text_dim`` is set."""
    if bool(config.text_dim) != (item_text is not None):
        raise ConfigError(f"SASRec text_dim is {config.text_dim}: the items' text embeddings (item_text) must be "
                          f"given exactly when it is set; got {'some' if item_text is not None else 'none'}")
    if item_text is None:
        return config
    if np.ndim(item_text) != 2:
        raise ConfigError(f"item_text must be [num_items, text_dim], got shape {list(np.shape(item_text))}")
    width = int(np.shape(item_text)[1])
    if config.text_dim not in ("auto", width):
        raise ConfigError(f"SASRec text_dim is {config.text_dim} but the item text embeddings are {width}-d; "
                          f"set it to {width} or 'auto'")
    return replace(config, text_dim=width)  # checkpoints record the resolved width


def check_resumed_text(path: Path, text: torch.Tensor, key: str = "item_text") -> None:
    """A content-aware run resumed from checkpoint ``path`` (``last.pt``) must have been trained on the
    same item text (state-dict entry ``key``): a :class:`~genrec.errors.CheckpointError` otherwise. The
    checkpoint checked is the one ``fit`` resumes from: ``path``, or ``last.prev.pt`` when ``path``
    cannot be read (neither readable: left to ``fit``, which says so)."""
    for candidate in (path, path.with_name(path.stem + ".prev" + path.suffix)):
        if not candidate.is_file():
            continue
        try:
            saved = load_checkpoint(candidate, kind="checkpoint", keys=("model",))["model"].get(key)
        except CheckpointError:
            continue
        if saved is None or saved.shape != text.shape or not torch.allclose(saved, text.cpu()):
            raise CheckpointError(f"{candidate}: trained on other item text embeddings than the ones given; use "
                                  "another out_dir or delete it")
        return
