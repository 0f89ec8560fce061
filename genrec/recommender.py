"""The fused recommender of a finished recipe run, asked by raw item ids.

    rec = Recommender.from_run("runs/amazon2014_beauty-quick")
    rec.recommend(["B0009RF9DW", "B000ASDGK8"], k=10)        # [(item_id, score), ...] best first
    rec.recommend_batch([[...], [...]], k=10)

It loads the run's two towers (``sasrec/best.pt``, ``generative/best.pt``), its semantic-ID table
(raw item ids), its fitted fusion method (``fusion/methods.pt``; the config's ``fusion.primary`` unless
``method`` names another) and the training transitions the fusion indicators are computed from,
then scores a history exactly as the recipe's fusion stage scored the test users: both towers' top-K
(``fusion.k``, beam ``fusion.beam``), each scoring the other's candidates, fused per instance.

Histories: raw item ids, oldest first, truncated to the recipe's ``data.max_history``. Ids the
catalogue does not know are skipped and reported (``unknown_ids``) with ``on_unknown="skip"`` (the
default), or a :class:`~genrec.errors.DataFormatError` with ``on_unknown="error"``. A history with no
known item gets the most popular training items (score: their training count), since neither tower
can condition on nothing.

The training transitions come from the run's dataset (its ``data`` section), which must still be
readable; a run directory that carries them itself is the next step of the product.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from genrec.artifacts import load_json
from genrec.errors import CheckpointError, DataFormatError

__all__ = ["Recommender", "Recommendations"]


@dataclass
class Recommendations:
    """One history's ranked items: ``items`` (raw ids, best first), their fused ``scores``, and the
    history ids that were not in the catalogue."""

    items: list[str]
    scores: list[float]
    unknown_ids: list[str] = field(default_factory=list)

    def pairs(self) -> list[tuple[str, float]]:
        return list(zip(self.items, self.scores))


class Recommender:
    """A recipe run's fused recommender (see the module doc); build it with :meth:`from_run`."""

    def __init__(self, sasrec, generative, table, method, stats, config) -> None:
        if table.item_ids is None:
            raise CheckpointError("the semantic-ID table has no item ids; it cannot map recommendations to items")
        self.sasrec, self.generative, self.table, self.method, self.stats = sasrec, generative, table, method, stats
        self.config = config
        self.item_ids: list[str] = list(table.item_ids)
        self.index = {iid: i for i, iid in enumerate(self.item_ids)}

    @classmethod
    def from_run(cls, run_dir: str | Path, method: str | None = None) -> "Recommender":
        """Load the fused recommender of the finished recipe run in ``run_dir``."""
        from fusion import TrainStats, load_methods
        from genrec.generative import load_generative
        from genrec.recipe import StageContext, config_from_dict
        from genrec.sasrec import load_sasrec
        from quantize import SemanticIdTable

        run_dir = Path(run_dir)
        for stage in ("sasrec", "generative", "quantize", "fusion"):
            if not (run_dir / stage / "stage.done.json").is_file():
                raise CheckpointError(f"{run_dir}: stage {stage!r} has not finished there; run the recipe first")
        config = config_from_dict(load_json(run_dir / "config.json"))
        methods = load_methods(run_dir / "fusion" / "methods.pt")
        name = method or config.fusion.primary
        if name not in methods:
            raise CheckpointError(f"{run_dir / 'fusion' / 'methods.pt'}: no fusion method {name!r}; "
                                  f"it holds {list(methods)}")
        table = SemanticIdTable.load(run_dir / "quantize" / "semantic_ids.json")
        _, split = StageContext(run_dir, config).data()
        stats = TrainStats(split.train, split.num_items, table.codes)
        return cls(load_sasrec(run_dir / "sasrec" / "best.pt"), load_generative(run_dir / "generative" / "best.pt"),
                   table, methods[name], stats, config)

    def recommend(self, history: Sequence[str], k: int = 10, on_unknown: str = "skip") -> Recommendations:
        """The top ``k`` items for one history of raw item ids (see the module doc)."""
        return self.recommend_batch([history], k, on_unknown)[0]

    def recommend_batch(self, histories: Sequence[Sequence[str]], k: int = 10,
                        on_unknown: str = "skip") -> list[Recommendations]:
        """:meth:`recommend` for many histories in one model call."""
        from fusion.adapters import model_inputs
        from genrec.splits import Instances

        if on_unknown not in ("skip", "error"):
            raise ValueError(f"on_unknown must be 'skip' or 'error', got {on_unknown!r}")
        if not 1 <= k <= self.config.fusion.k:
            raise ValueError(f"k must be between 1 and fusion.k ({self.config.fusion.k}), got {k}")
        rows, unknown = [], []
        for n, history in enumerate(histories):
            if isinstance(history, (str, bytes)):
                raise DataFormatError(f"history {n}: expected a list of item ids, got a single string")
            missing = [str(i) for i in history if str(i) not in self.index]
            if missing and on_unknown == "error":
                raise DataFormatError(f"history {n}: unknown item id(s) {missing[:5]}")
            known = [self.index[str(i)] for i in history if str(i) in self.index]
            rows.append(np.asarray(known[-self.config.data.max_history:], dtype=np.int64))
            unknown.append(missing)
        out: list[Recommendations | None] = [None] * len(rows)
        live = [n for n, r in enumerate(rows) if len(r)]
        if live:
            f = self.config.fusion
            inst = Instances(users=np.asarray(live), histories=[rows[n] for n in live],
                             targets=np.zeros(len(live), dtype=np.int64))  # never read
            inputs = model_inputs(self.sasrec, self.generative, inst, self.stats, k=f.k, beam=f.beam,
                                  teacher_forcing=f.teacher_forcing, batch_size=self.config.generative.eval_batch_size)
            fused = self.method.fuse(inputs.cands, inputs.indicators)  # [n, C]
            top = inputs.cands.topk(fused, f.k)[:, :k]  # [n, k], -1 padded
            for j, n in enumerate(live):
                pos = {int(item): c for c, item in enumerate(inputs.cands.items[j])}
                keep = [int(i) for i in top[j] if i >= 0]
                out[n] = Recommendations([self.item_ids[i] for i in keep],
                                         [float(fused[j, pos[i]]) for i in keep], unknown[n])
        popular = np.argsort(-self.stats.popularity, kind="stable")[:k]
        for n in range(len(rows)):
            if out[n] is None:  # no known item: the most popular training items
                out[n] = Recommendations([self.item_ids[i] for i in popular],
                                         [float(self.stats.popularity[i]) for i in popular], unknown[n])
        return out  # type: ignore[return-value]
