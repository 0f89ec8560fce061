"""One rule for tqdm bars in quantize/: shown only when stderr is a terminal (tqdm's ``disable=None``)
unless the caller asked for them (``show_progress=True`` / ``False``)."""

from __future__ import annotations

import io
import sys

import numpy as np
import pytest

from quantize.embed import TextEncoder

TEXTS = [f"item number {j} " + "word " * (j % 5) for j in range(12)]


class FakeModel:
    """Stands in for the sentence encoder: the bar, not the vectors, is under test."""

    def encode(self, texts, **kw) -> np.ndarray:
        return np.array([[len(t), 1.0, 2.0] for t in texts], dtype=np.float32)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def encoder(**kw) -> TextEncoder:
    enc = TextEncoder(cache_dir=False, batch_size=4, chunk_size=4, **kw)
    enc._model = FakeModel()
    return enc


def test_embedding_bar_only_on_a_terminal_by_default(capsys, monkeypatch):
    assert encoder().show_progress is None
    encoder().encode(TEXTS)
    assert capsys.readouterr().err == ""  # stderr is captured, not a terminal: no bar
    term = Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    encoder().encode(TEXTS)
    assert "embedding" in term.getvalue() and "12/12" in term.getvalue()


def test_embedding_bar_follows_an_explicit_choice(capsys, monkeypatch):
    encoder(show_progress=True).encode(TEXTS)
    assert "embedding" in capsys.readouterr().err  # asked for: shown even when piped
    term = Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    encoder(show_progress=False).encode(TEXTS)
    assert term.getvalue() == ""


@pytest.mark.parametrize("method, cfg, desc", [
    ("rq_kmeans", {"levels": 2, "codebook_size": 4}, "rq-kmeans levels"),
    ("pq", {"subspaces": 2, "codebook_size": 4}, "pq sub-spaces"),
    ("opq", {"subspaces": 2, "codebook_size": 4, "opq_iters": 2}, "opq sub-spaces"),
    ("rq_vae", {"levels": 2, "codebook_size": 4, "epochs": 2, "hidden_dims": [8], "latent_dim": 4,
                "batch_size": 16}, "rq-vae epochs"),
])
def test_quantizer_bars_only_on_a_terminal(method, cfg, desc, capsys, monkeypatch):
    from quantize.pipeline import make_quantizer

    x = np.random.default_rng(0).normal(size=(40, 8)).astype(np.float32)
    make_quantizer(method, **cfg).fit(x)
    assert desc not in capsys.readouterr().err
    term = Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    make_quantizer(method, **cfg).fit(x)
    assert desc in term.getvalue()
