"""``genrec run CONFIG``: run (or resume) a whole recipe; prints a one-screen summary at the end.

    genrec run recipes/configs/amazon2014_beauty.yaml [--preset quick|full] [--out DIR]
               [--set section.key=value ...] [--until STAGE] [--show] [--force]

Every stage writes into the run directory (default ``runs/<name>-<preset>``) and is skipped on a
rerun when already done with the same settings; a killed run resumes where it stopped. The console
shows one line per stage, the running stage's progress bar (on a terminal) and the summary; the full
log (every library's INFO messages, tracebacks) is appended to ``<run dir>/run.log`` (``-v``: INFO
on the console too).
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
import time
from contextlib import ExitStack
from pathlib import Path

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="recipe YAML file, e.g. recipes/configs/amazon2014_beauty.yaml")
    p.add_argument("--preset", choices=("quick", "full"), default=None,
                   help="budget preset merged under the file's values (default: the file's 'preset')")
    p.add_argument("--out", default=None, help="run directory (default runs/<name>-<preset>)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="config overrides, values read as in a YAML file, e.g. --set sasrec.max_epochs=5 fusion.k=20")
    p.add_argument("--until", default=None, metavar="STAGE",
                   help="stop after this stage (data, embed, quantize, sasrec, generative, labels, fusion, "
                        "joint, evaluate, analysis, report)")
    p.add_argument("--show", action="store_true", help="print the resolved config and stage list, run nothing")
    p.add_argument("--force", action="store_true",
                   help="when the config or data changed since stages of the run directory ran, discard those "
                        "stages (trained models included) and run them again; without it such a run is refused")


def default_run_dir(config) -> Path:
    return Path("runs") / (f"{config.name}-{config.preset}" if config.preset else config.name)


#: the run's full log (every INFO line, third-party warnings, tracebacks), appended across resumes
LOG_FILE = "run.log"


def command_line(args: argparse.Namespace, fallback: str) -> str:
    """The command as typed (``genrec demo --out ...``), for the header of the log file."""
    argv = getattr(args, "_argv", None)
    return shlex.join(["genrec", *argv]) if argv is not None else fallback


def talks() -> bool:
    """Whether this process prints: under torchrun every rank runs the command, and rank 0 alone
    talks (console and run.log) while the others train their shards silently (``RANK`` is torchrun's
    variable: the process group starts later, inside the recipe)."""
    return os.environ.get("RANK", "0") in ("", "0")


def _other_rank_says(label: str, error: BaseException) -> None:
    """An error on a rank other than 0, which prints nothing else, on its stderr: torchrun's bare "exit code
    1" was all there was of an OOM or a full disk on rank 1."""
    if not talks():
        print(f"{label}: rank {os.environ.get('RANK')}: error: {error}", file=sys.stderr)


def print_stage(name: str, event: str, info: dict, position: str = "") -> None:
    """Stage progress lines on stderr (the summary goes to stdout), copied to the log file;
    ``position``: e.g. ``"3/9"``, shown before the stage name."""
    from genrec.logs import say

    tag = f"[{position} {name}]" if position else f"[{name}]"
    if event == "skip":
        say(f"{tag} already done, skipped")
    elif event == "start":
        say(f"{tag} {info.get('description', '')} ...")
    elif event == "done":
        t = info["timing"]
        say(f"{tag} done in {t['wall_s']:.1f}s (peak memory {t['peak_rss_mib']:.0f} MiB)")


def run_stages(config, out: Path, until: str | None = None, force: bool = False) -> dict | None:
    """:func:`genrec.recipe.run_recipe` for the console: one line per stage event and the bars of
    the stage running (no bar over the whole recipe: the ``[3/9 ...]`` lines count the stages)."""
    from genrec.recipe import Recipe, StopAfterStage, stage_names

    names = stage_names(config)

    def on_stage(name: str, event: str, info: dict) -> None:
        if talks():
            print_stage(name, event, info, f"{names.index(name) + 1}/{len(names)}")

    with Recipe(config, out, force=force, on_stage=on_stage) as recipe:
        for name in names:
            recipe.run_stage(name)
            if until == name:
                raise StopAfterStage(name)
        return recipe.results()


def execute(config, out: Path, until: str | None = None, label: str = "genrec run", force: bool = False,
            command: str | None = None) -> int:
    """Run a loaded config into ``out`` and print the summary; 2 on bad input (config, data, a run
    directory in use or holding stages that a changed config would discard), 1 on a failed stage,
    130 when interrupted. The full log goes to ``out/run.log`` (appended, after a header line naming
    ``command`` and the time); the console shows the stage lines, bars and the summary."""
    from genrec.errors import GenrecError
    from genrec.logs import FILE_ONLY, log_to_file
    from genrec.logs import say as say_line
    from genrec.recipe import StopAfterStage, format_summary
    from genrec.rundir import RunLock

    speaks = talks()

    def say(message: str = "", **kw) -> None:
        if speaks:
            say_line(message, **kw)

    t0 = time.perf_counter()
    with ExitStack() as stack:
        log_file: Path | None = None
        try:  # not into a running job's log: the recipe refuses the held directory below
            if speaks and not RunLock(out).held_elsewhere():
                log_file = stack.enter_context(log_to_file(out / LOG_FILE, header=command or label))
        except OSError:  # not a directory, no permission: the recipe says what is wrong with `out`
            log_file = None
        say(f"{label}: {config.name} ({config.data.dataset}, preset {config.preset or 'none'}) -> {out}"
            + (f" (log: {log_file})" if log_file else ""))
        try:
            results = run_stages(config, out, until, force)
        except StopAfterStage as e:
            say(f"{label}: stopped after stage {e}; run again without --until to continue")
            return 0
        except (GenrecError, FileNotFoundError) as e:
            say(f"{label}: error: {e}")
            _other_rank_says(label, e)
            return 2
        except RuntimeError as e:
            log.error("%s", e, exc_info=True, extra=FILE_ONLY)  # the traceback, for the log only
            say(f"{label}: error: {e}" + (f" (traceback in {log_file})" if log_file else ""))
            _other_rank_says(label, e)
            return 1
        except KeyboardInterrupt:
            say(f"{label}: interrupted; run the same command again to resume where it stopped")
            return 130
        say("", stream=sys.stdout)
        say(format_summary(results, out), stream=sys.stdout)
        say(f"wall time of this invocation: {(time.perf_counter() - t0) / 60:.1f} min", stream=sys.stdout)
    return 0


def run(args: argparse.Namespace) -> int:
    import json

    from genrec.recipe import ConfigError, config_to_dict, load_config, stage_names

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
    return execute(config, out, args.until, force=args.force, command=command_line(args, "genrec run"))
