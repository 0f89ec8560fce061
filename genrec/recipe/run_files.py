"""Readers of what a recipe run's stages wrote, shared by the stages, the analyses and the report
(so none of them imports another's module for it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from genrec.artifacts import load_json

__all__ = ["load_labels", "run_config", "semantic_id_table", "test_ranks", "check_data_unchanged"]


def run_config(run_dir: str | Path):
    """The :class:`~genrec.recipe.RecipeConfig` a finished run was made with (its ``config.json``),
    readable on any machine (:func:`genrec.model_settings.saved_config`: a bf16 run made with
    ``device: auto`` loads where no GPU is); a directory without one is a CheckpointError."""
    from genrec.errors import CheckpointError
    from genrec.model_settings import saved_config
    from genrec.recipe.config import config_from_dict

    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{run_dir}: no config.json; not a recipe run directory")
    return config_from_dict(saved_config(load_json(path)))


def load_labels(run_dir: str | Path, split: str = "test"):
    """The :class:`~genrec.memorization.InstanceLabels` saved by the labels stage."""
    from genrec.memorization import InstanceLabels

    run_dir = Path(run_dir)
    max_hop = load_json(run_dir / "labels" / "summary.json")["max_hop"]
    with np.load(run_dir / "labels" / "labels.npz") as z:
        return InstanceLabels(kind=z[f"{split}_kind"], hop=z[f"{split}_hop"], kind_hops=z[f"{split}_kind_hops"],
                              max_hop=max_hop)


def semantic_id_table(run_dir: str | Path, with_cold_items: bool = False):
    """The quantize stage's :class:`~quantize.SemanticIdTable`; ``with_cold_items``: the fusion stage's
    table of a cold-start run, the cold items added (the catalogue test is ranked over)."""
    from quantize import SemanticIdTable

    run_dir = Path(run_dir)
    path = run_dir / "fusion" / "semantic_ids.json" if with_cold_items else run_dir / "quantize" / "semantic_ids.json"
    return SemanticIdTable.load(path)


def test_ranks(run_dir: str | Path, targets: np.ndarray, joint: bool) -> dict[str, np.ndarray]:
    """0-based test rank of the target per model: the single models and each post-hoc method from
    ``fusion/topk.npz`` (outside the list: ``genrec.metrics.MISS_RANK``), and with ``joint`` the joint model's."""
    from genrec.metrics import ranks_from_topk

    run_dir = Path(run_dir)
    with np.load(run_dir / "fusion" / "topk.npz") as z:
        ranks = {name: ranks_from_topk(z[name], targets) for name in z.files}
    if joint:
        with np.load(run_dir / "joint" / "ranks.npz") as z:
            ranks["joint"] = z["joint"]
    return ranks


def check_data_unchanged(run_dir: Path, config: Any) -> None:
    """A recommender of a run is rebuilt from the run's data (its training sequences: popularity, the
    fusion indicators): data changed since the run trained is a :class:`CheckpointError`, never a
    silent mix of new statistics and old models. Files are compared by name, size and content digest
    (a run directory moved with its data elsewhere still loads; files over 64 MiB are known by sampled
    blocks and their modification time, which a copy must keep: ``cp -p``)."""
    from genrec.errors import CheckpointError
    from genrec.rundir import data_fingerprint

    marker = load_json(run_dir / "data" / "stage.done.json")
    recorded = marker.get("hashed", {}).get("config", {}).get("data", {}).get("fingerprint") \
        if isinstance(marker, dict) else None
    if not isinstance(recorded, dict) or not (recorded.get("files") or recorded.get("spec")):
        return  # a marker of another shape or version: nothing to compare with

    def content(fp: dict) -> Any:
        files = fp.get("files") or []
        return sorted((Path(f.get("path", "")).name, f.get("size"), f.get("sha256"), f.get("mtime_ns"))
                      for f in files) if files else fp.get("spec")

    from genrec.datasets import fetch_dataset_files

    fetch_dataset_files(config.data.dataset, config.data.cache_dir)  # a download spec fetches, as the run did
    now = data_fingerprint(config.data.dataset, config.data.cache_dir)
    if recorded.get("files") and not now.get("files"):  # gone (moved, another cache), not changed
        from genrec.errors import DataNotFoundError

        raise DataNotFoundError(f"{run_dir}: its data files are not found "
                                f"({', '.join(Path(f.get('path', '?')).name for f in recorded['files'])} of "
                                f"{config.data.dataset}); restore them to load the run's recommender")
    if content(now) != content(recorded):
        raise CheckpointError(f"{run_dir}: its data ({config.data.dataset}) changed since the run trained; the "
                              "recommender would pair the run's models with other training statistics: rerun the "
                              "recipe (genrec run) or restore the data")
