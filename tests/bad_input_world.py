"""The machinery of the bad-input matrix (:mod:`bad_inputs`): a :class:`Case`, the scratch
:class:`World` the cases make their inputs in, the CLI runner that turns a non-zero exit into
:class:`CliFailed`, and the helpers that run a case and show its message."""

from __future__ import annotations

import contextlib
import gzip
import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


class CliFailed(Exception):
    """A CLI call that exited non-zero: ``code`` and the ``genrec CMD: error:`` line."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Case:
    id: str
    area: str  # data, config, cli, checkpoint, run directory, library
    what: str  # the bad input, in words
    trigger: Callable[["World"], object]
    error: type  # the exception expected (CliFailed for command-line cases)
    match: str  # a regex the message must match (searched)


class World:
    """Scratch inputs shared by the cases, made on first use in ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._made: dict[str, object] = {}

    def _once(self, key: str, make: Callable[[], object]):
        if key not in self._made:
            self._made[key] = make()
        return self._made[key]

    def plain(self, name: str = "good") -> Path:
        """A valid plain-format dataset directory (a copy per ``name``, free to damage)."""
        def make() -> Path:
            from genrec.data import ItemText, SequenceDataset, write_plain

            rng = np.random.default_rng(0)
            seqs = [rng.integers(0, 12, size=int(rng.integers(4, 7))) for _ in range(24)]
            ds = SequenceDataset(name=name, item_ids=[f"i{j}" for j in range(12)],
                                 user_ids=[f"u{k}" for k in range(24)], sequences=seqs,
                                 items=[ItemText(title=f"item {j}") for j in range(12)])
            write_plain(ds, self.root / name)
            return self.root / name
        return self._once(f"plain:{name}", make)

    def interactions(self, name: str) -> Path:
        return next(self.plain(name).glob("interactions.tsv*"))

    def write_interactions(self, name: str, text: str | bytes) -> Path:
        path = self.interactions(name)
        data = text.encode() if isinstance(text, str) else text
        if path.suffix == ".gz":
            data = gzip.compress(data)
        path.write_bytes(data)
        return self.plain(name)

    def yaml(self, text: str, name: str = "recipe.yaml") -> Path:
        path = self.root / name
        path.write_text(text, encoding="utf-8")
        return path

    def sid(self) -> Path:
        """A semantic-ID table of the 12 items of :meth:`plain` (a ``genrec quantize``-style directory)."""
        def make() -> Path:
            from quantize.semantic_ids import SemanticIdTable

            j = np.arange(12)
            SemanticIdTable(np.stack([j % 3, j // 3], 1), [3, 4], item_ids=[f"i{k}" for k in j]).save(
                self.root / "sid" / "semantic_ids.json")
            return self.root / "sid"
        return self._once("sid", make)

    def split(self):
        def make():
            import genrec

            return genrec.leave_one_out(genrec.load_plain(self.plain()), max_history=10)
        return self._once("split", make)

    def sasrec_dir(self) -> Path:
        """A trained tiny SASRec (1 epoch) with best.pt / last.pt."""
        def make() -> Path:
            from genrec.sasrec import SASRecConfig, train_sasrec

            out = self.root / "sasrec"
            train_sasrec(self.split(), SASRecConfig(max_len=10, hidden=8, num_heads=1, num_blocks=1, max_epochs=1),
                         out_dir=out, progress=False)
            return out
        return self._once("sasrec", make)

    def generative_model(self):
        def make():
            from genrec.generative import GenerativeConfig, train_generative
            from quantize.semantic_ids import SemanticIdTable

            j = np.arange(12)
            table = SemanticIdTable(np.stack([j % 3, j // 3], 1), [3, 4])
            cfg = GenerativeConfig(max_len=10, hidden=16, num_blocks=1, num_heads=1, head_layers=1, max_epochs=1,
                                   eval_beam=3)
            return train_generative(self.split(), table, cfg, progress=False).model
        return self._once("generative", make)


def cli(*argv: str) -> None:
    """Run ``genrec argv``; raise :class:`CliFailed` with the error line when it exits non-zero."""
    from genrec.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(list(argv))
        except SystemExit as e:  # argparse's own usage errors
            code = int(e.code or 0)
    text = err.getvalue()
    if "Traceback" in text:
        raise AssertionError(f"traceback printed:\n{text}")
    if code:
        lines = [ln for ln in text.splitlines() if "error:" in ln]
        raise CliFailed(code, lines[-1] if lines else text.strip())


def run_case(case: Case, world: World) -> BaseException | None:
    """Trigger ``case``; the exception it raised, or None."""
    try:
        case.trigger(world)
    except Exception as e:  # noqa: BLE001 - the point is to catch what it raises
        return e
    return None


def shown(message: str, world: World) -> str:
    """``message`` as the table shows it: scratch paths as ``<tmp>``, the repository as ``<repo>``."""
    message = message.replace(str(world.root.resolve()), "<tmp>").replace(str(world.root), "<tmp>")
    message = message.replace(str(ROOT), "<repo>")
    return re.sub(r"pid \d+", "pid <pid>", message)
