"""Shared pytest fixtures (add more below; keep each one small and documented)."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DIR = Path(__file__).resolve().parents[2] / "shared"


@pytest.fixture(scope="session")
def beauty_dir() -> Path:
    """The real Amazon 2014 Beauty 5-core data in the plain format (``<repo>/../shared/...``); skips if absent."""
    path = SHARED_DIR / "data" / "amazon2014" / "beauty"
    if not (path / "items.jsonl").is_file() and not (path / "items.jsonl.gz").is_file():
        pytest.skip(f"real Beauty data not found at {path}")
    return path
