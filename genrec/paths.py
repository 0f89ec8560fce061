"""Where genrec keeps downloaded and cached files (one place, imported by every module that needs it)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["default_cache_dir"]


def default_cache_dir() -> Path:
    """``$GENREC_CACHE`` if set, else ``~/.cache/genrec``."""
    env = os.environ.get("GENREC_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "genrec"
