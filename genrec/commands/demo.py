"""``genrec demo``: the whole pipeline on the built-in synthetic dataset, offline, in a few minutes.

Runs ``recipes/configs/demo.yaml`` (bundled copy below when the recipes folder is not at hand):
semantic IDs from the item texts, SASRec, the generative model, memorization labels and fusion, then
prints the summary: the generative model should lead on generalization instances, SASRec on
memorization ones and fusion overall (each comparison is measured, and said plainly when it fails).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

CONFIG = Path(__file__).resolve().parents[2] / "recipes" / "configs" / "demo.yaml"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="runs/demo", help="run directory (default runs/demo; a rerun resumes)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="config overrides, e.g. --set data.dataset=synthetic:num_users=500")
    p.add_argument("--force", action="store_true",
                   help="discard stages of the run directory that a changed config would invalidate")


def run(args: argparse.Namespace) -> int:
    from genrec.commands.run import command_line, execute
    from genrec.recipe import ConfigError, config_from_dict, load_config

    try:
        if CONFIG.is_file():
            config = load_config(CONFIG, overrides=args.set)
        else:  # installed without the recipes folder
            config = config_from_dict(DEMO, overrides=args.set)
    except ConfigError as e:
        print(f"genrec demo: error: {e}", file=sys.stderr)
        return 2
    return execute(config, Path(args.out), label="genrec demo", force=args.force,
                   command=command_line(args, "genrec demo"))


# The same settings as recipes/configs/demo.yaml (kept in sync by tests/test_pipeline.py).
DEMO = {
    "name": "demo", "preset": "quick", "num_threads": 2,
    "data": {"dataset": "synthetic:num_users=2000,seed=0", "max_history": 20},
    "text": {"fields": ["title", "categories"], "max_seq_length": 32},
    "quantize": {"method": "rq_kmeans", "levels": 3, "codebook_size": 16},
    "sasrec": {"hidden": 32, "num_blocks": 1, "dropout": 0.2, "lr": 0.01, "max_epochs": 20, "patience": 3},
    "generative": {"hidden": 64, "num_blocks": 1, "num_heads": 2, "head_layers": 1, "dropout": 0.1,
                   "head_dropout": 0.0, "lr": 0.005, "max_epochs": 60, "max_minutes": 1.5, "patience": 3,
                   "eval_beam": 10},
    "fusion": {"k": 20, "beam": 20, "methods": ["fixed", "adaptive", "learned_minmax"], "primary": "auto"},
    "analysis": {"codebook_sizes": [8, 16, 32], "codebook_levels": [2, 3]},
    "report": {"ks": [10, 20], "metric": "ndcg@10"},
}
