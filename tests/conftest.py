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


#: the demo recipe at a tiny size (64 items, 150 users, one-block models, two epochs): seconds to train
TINY_DEMO = ["num_threads=1", "data.dataset=synthetic:num_users=150,num_brands=4,num_categories=4,num_attributes=4",
             "data.max_history=10", "quantize.codebook_size=4",
             "sasrec.hidden=16", "sasrec.max_epochs=2", "sasrec.batch_size=64",
             "generative.hidden=16", "generative.max_epochs=3", "generative.max_minutes=null", "generative.eval_beam=5",
             "generative.batch_size=64", "fusion.k=10", "fusion.beam=10", "fusion.gate.max_epochs=5",
             "report.ks=[5,10]"]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A finished tiny demo recipe run (``genrec demo`` through the CLI), shared by the whole session:
    treat it as read-only (copy it before changing anything)."""
    from genrec import cli

    root = tmp_path_factory.mktemp("tiny_run")
    out = root / "run"
    code = cli.main(["demo", "--out", str(out), "--set", *TINY_DEMO, f"text.cache_dir={root / 'emb_cache'}"])
    assert code == 0
    return out


@pytest.fixture(scope="session")
def tiny_saved(tiny_run, tmp_path_factory) -> Path:
    """The tiny run's fused recommender saved with ``Recommender.save_pretrained`` (read-only)."""
    from genrec.recommender import Recommender

    return Recommender.from_pretrained(tiny_run).save_pretrained(tmp_path_factory.mktemp("tiny_saved") / "model")


#: the cold-start setting of the tiny cold run (TIGER's protocol: a seeded 20% of the items held out)
COLD = ["data.cold_items=0.2", "data.cold_seed=0"]
DEMO_YAML = Path(__file__).resolve().parents[1] / "recipes" / "configs" / "demo.yaml"


@pytest.fixture(scope="session")
def tiny_emb_cache(tiny_run, tmp_path_factory):
    """A copy of the tiny run's embedding cache (same item texts: the encoder is not rerun)."""
    import shutil

    return shutil.copytree(tiny_run.parent / "emb_cache", tmp_path_factory.mktemp("cold") / "emb_cache")


@pytest.fixture(scope="session")
def tiny_cached(tiny_emb_cache):
    """TINY_DEMO with the cache copy: recipe runs of the tiny demo's items embed nothing."""
    return (*TINY_DEMO, f"text.cache_dir={tiny_emb_cache}")  # a tuple: shared by the session, never changed


@pytest.fixture(scope="session")
def cold_run(tiny_cached, tmp_path_factory):
    """The tiny demo with 20% of the items held out of training (TIGER's protocol)."""
    from genrec import cli

    out = tmp_path_factory.mktemp("cold_run") / "run"
    assert cli.main(["demo", "--out", str(out), "--set", *tiny_cached, *COLD]) == 0
    return out


@pytest.fixture(scope="session")
def cold_ctx(cold_run, tiny_cached):
    """The cold run's stage context (its config as the run read it)."""
    from genrec.recipe import StageContext, load_config

    return StageContext(cold_run, load_config(DEMO_YAML, overrides=[*tiny_cached, *COLD]))
