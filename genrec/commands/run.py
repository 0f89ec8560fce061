"""``genrec run CONFIG``: run (or resume) a whole recipe; prints a one-screen summary at the end.

    genrec run recipes/configs/amazon2014_beauty.yaml [--preset quick|full] [--out DIR]
               [--set section.key=value ...] [--until STAGE] [--show] [--force]

Every stage writes into the run directory (default ``runs/<name>-<preset>``) and is skipped on a
rerun when already done with the same settings; a killed run resumes where it stopped.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="recipe YAML file, e.g. recipes/configs/amazon2014_beauty.yaml")
    p.add_argument("--preset", choices=("quick", "full"), default=None,
                   help="budget preset merged under the file's values (default: the file's 'preset')")
    p.add_argument("--out", default=None, help="run directory (default runs/<name>-<preset>)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="config overrides, values as JSON, e.g. --set sasrec.max_epochs=5 fusion.k=20")
    p.add_argument("--until", default=None, metavar="STAGE",
                   help="stop after this stage (data, embed, quantize, sasrec, generative, labels, fusion, "
                        "joint, evaluate, report)")
    p.add_argument("--show", action="store_true", help="print the resolved config and stage list, run nothing")
    p.add_argument("--force", action="store_true",
                   help="when the config or data changed since stages of the run directory ran, discard those "
                        "stages (trained models included) and run them again; without it such a run is refused")


def default_run_dir(config) -> Path:
    return Path("runs") / (f"{config.name}-{config.preset}" if config.preset else config.name)


def print_stage(name: str, event: str, info: dict) -> None:
    """Stage progress lines on stderr (the summary goes to stdout)."""
    if event == "skip":
        print(f"[{name}] already done, skipped", file=sys.stderr, flush=True)
    elif event == "start":
        print(f"[{name}] {info.get('description', '')} ...", file=sys.stderr, flush=True)
    elif event == "done":
        t = info["timing"]
        print(f"[{name}] done in {t['wall_s']:.1f}s (peak memory {t['peak_rss_mib']:.0f} MiB)",
              file=sys.stderr, flush=True)


def execute(config, out: Path, until: str | None = None, label: str = "genrec run", force: bool = False) -> int:
    """Run a loaded config into ``out`` and print the summary; 2 on bad input (config, data, a run
    directory in use or holding stages that a changed config would discard), 1 on a failed stage."""
    from genrec.errors import GenrecError
    from genrec.pipeline import StopAfterStage, format_summary, run_recipe

    t0 = time.perf_counter()
    print(f"{label}: {config.name} ({config.data.dataset}, preset {config.preset or 'none'}) -> {out}",
          file=sys.stderr, flush=True)
    try:
        results = run_recipe(config, out, stop_after=until, on_stage=print_stage, force=force)
    except StopAfterStage as e:
        print(f"{label}: stopped after stage {e}; run again without --until to continue", file=sys.stderr)
        return 0
    except (GenrecError, FileNotFoundError) as e:
        print(f"{label}: error: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:
        print(f"{label}: error: {e}", file=sys.stderr)
        return 1
    print()
    print(format_summary(results, out))
    print(f"wall time of this invocation: {(time.perf_counter() - t0) / 60:.1f} min")
    return 0


def run(args: argparse.Namespace) -> int:
    import json

    from genrec.pipeline import ConfigError, config_to_dict, load_config, stage_names

    try:
        config = load_config(args.config, preset=args.preset, overrides=args.set)
        if args.until is not None and args.until not in stage_names(config):
            raise ConfigError(f"--until {args.until!r} is not a stage of this recipe; stages: {stage_names(config)}")
    except (ConfigError, FileNotFoundError) as e:
        print(f"genrec run: error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else default_run_dir(config)
    if args.show:
        print(json.dumps(config_to_dict(config), indent=2))
        print("stages: " + " -> ".join(stage_names(config)))
        print(f"run directory: {out}")
        return 0
    return execute(config, out, args.until, force=args.force)
