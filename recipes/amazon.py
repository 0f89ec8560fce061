"""Amazon recipe, stage by stage: what ``genrec run CONFIG`` does, as a script to read and edit.

    python recipes/amazon.py recipes/configs/amazon2014_beauty.yaml --preset quick
    python recipes/amazon.py recipes/configs/amazon2014_beauty.yaml --set sasrec.max_epochs=10 fusion.joint=true

Each stage writes its artifacts atomically into the run directory and is skipped when already done
with the same settings and data, so a killed run resumes where it stopped; a run whose config or
data changed is refused unless --force. What each stage computes: ``genrec/recipe/stages.py``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from genrec.cli import split_set_arguments
from genrec.commands.run import default_run_dir
from genrec.errors import GenrecError
from genrec.recipe import Recipe, format_summary, load_config


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("config", help="recipe YAML, e.g. recipes/configs/amazon2014_beauty.yaml")
    p.add_argument("--preset", choices=("quick", "full"), default=None)
    p.add_argument("--out", default=None, help="run directory (default runs/<name>-<preset>, runs/<name> without one)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="config overrides")
    p.add_argument("--force", action="store_true", help="redo stages whose config or data changed")
    try:
        args = p.parse_args(split_set_arguments(list(sys.argv[1:] if argv is None else argv)))
        # The config: the YAML file, its preset merged under it, the overrides on top; all checked.
        config = load_config(args.config, args.preset, args.set)
        out = Path(args.out) if args.out else default_run_dir(config)  # as `genrec run` names it
        print(f"{config.name}: {config.data.dataset} -> {out}")

        with Recipe(config, out, force=args.force, on_stage=show) as recipe:
            recipe.run_stage("data")        # load and split the dataset (leave-one-out)
            recipe.run_stage("embed")       # item text -> sentence embeddings
            recipe.run_stage("quantize")    # embeddings -> semantic IDs
            recipe.run_stage("sasrec")      # the item-ID model
            recipe.run_stage("generative")  # the semantic-ID model
            recipe.run_stage("labels")      # memorization / generalization label of each instance
            recipe.run_stage("fusion")      # post-hoc fusion, fitted on validation, applied to test
            if config.fusion.joint:
                recipe.run_stage("joint")   # both towers and the gate trained together
            recipe.run_stage("evaluate")    # metrics overall and per label
            recipe.run_stage("analysis")    # the paper's semantic-ID analyses (support, indicators, codebooks)
            recipe.run_stage("report")      # results.json, report.md, plots
            results = recipe.results()
    except GenrecError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_summary(results, out))  # per-label metrics and the three headline comparisons
    return 0


def show(name: str, event: str, info: dict) -> None:
    """One line per stage."""
    if event == "done":
        print(f"  {name}: {info['timing']['wall_s']:.1f}s, peak {info['timing']['peak_rss_mib']:.0f} MiB")
    elif event == "skip":
        print(f"  {name}: done earlier")


if __name__ == "__main__":
    sys.exit(main())
