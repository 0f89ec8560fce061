"""Amazon recipe: data -> item text -> embeddings -> semantic IDs -> SASRec -> generative model ->
memorization labels -> fusion -> evaluation -> report.

    python recipes/amazon.py recipes/configs/amazon2014_beauty.yaml            # a config file
    python recipes/amazon.py amazon2014:Beauty --preset quick                   # an official name
    python recipes/amazon.py ../shared/data/amazon2014/beauty --out runs/beauty # a plain-format directory
    python recipes/amazon.py CONFIG --set sasrec.max_epochs=10 fusion.joint=true

Every stage writes its artifacts atomically into the run directory and is skipped when already done
with the same settings, so a killed run resumes where it stopped (``genrec run CONFIG`` is the same
thing as a subcommand). The run directory ends with ``results.json`` and ``report.md``.

A dataset spec instead of a config file uses ``recipes/configs/amazon2014_beauty.yaml`` (or the
config whose ``data.dataset`` is that spec) with the dataset replaced.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from genrec.pipeline import (ConfigError, StopAfterStage, format_summary, load_config, run_recipe, stage_names)

CONFIGS = Path(__file__).resolve().parent / "configs"
TEMPLATE = CONFIGS / "amazon2014_beauty.yaml"


def recipe_config(target: str, preset: str | None, overrides: list[str]):
    """A config file as is, or the config of a dataset spec (official name or directory)."""
    if target.endswith((".yaml", ".yml")):
        return load_config(target, preset, overrides)
    for path in sorted(CONFIGS.glob("amazon*.yaml")):  # a config made for this dataset, if any
        config = load_config(path, preset)
        if config.data.dataset in (target, str(Path(target).resolve())):
            return load_config(path, preset, overrides)
    name = target.rstrip("/").replace(":", "_").replace("/", "_").lstrip("._").lower()
    return load_config(TEMPLATE, preset, [f"name={name}", f"data.dataset={target}", *overrides])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("target", help="recipe YAML, official dataset name (amazon2014:Beauty, amazon2023:All_Beauty) "
                                  "or plain-format dataset directory")
    p.add_argument("--preset", choices=("quick", "full"), default=None)
    p.add_argument("--out", default=None, help="run directory (default runs/<name>-<preset>)")
    p.add_argument("--set", nargs="*", default=[], metavar="SECTION.KEY=VALUE", help="config overrides")
    p.add_argument("--until", default=None, metavar="STAGE", help="stop after this stage")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")

    # 1. the config: a YAML file with a preset merged under it and command-line overrides on top
    try:
        config = recipe_config(args.target, args.preset, args.set)
    except (ConfigError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out or Path("runs") / f"{config.name}-{config.preset or 'custom'}")
    print(f"{config.name}: {config.data.dataset} -> {out}; stages: {' -> '.join(stage_names(config))}")

    # 2. every stage, skipping those already done (see genrec.pipeline.STAGES for what each writes)
    def show(name: str, event: str, info: dict) -> None:
        if event == "done":
            print(f"  {name}: {info['timing']['wall_s']:.1f}s, peak {info['timing']['peak_rss_mib']:.0f} MiB")
        elif event == "skip":
            print(f"  {name}: done earlier")

    if args.until is not None and args.until not in stage_names(config):
        print(f"error: --until {args.until!r} is not a stage of this recipe", file=sys.stderr)
        return 2
    try:
        results = run_recipe(config, out, stop_after=args.until, on_stage=show)
    except StopAfterStage as e:
        print(f"stopped after {e}")
        return 0
    except (ConfigError, FileNotFoundError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1

    # 3. the summary: per-label metrics and the three headline comparisons
    print(format_summary(results, out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
