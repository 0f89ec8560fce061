"""The ``genrec`` command line: a thin layer over the library.

Each subcommand lives in its own module exposing ``add_arguments(parser)`` and ``run(args) -> int``;
``SUBCOMMANDS`` maps the subcommand name to that module and a one-line help.
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys

from genrec.errors import ConfigError, GenrecError
from genrec.logs import configure_logging, reset_logging

#: what a ``--set`` value looks like: ``key=value`` or ``section.key=value`` (a dataset spec such as
#: ``synthetic:num_users=5`` or a directory is not one, so it is left to the positional arguments)
OVERRIDE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*=")

VERBOSE_HELP = ("show the INFO messages of genrec and the libraries it uses on the console (-vv: DEBUG); "
                "without it the console shows progress, warnings and results only, and 'genrec run' / "
                "'genrec demo' write the full log to RUN_DIR/run.log either way")

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "data": ("genrec.commands.data", "load a dataset and print its statistics and split sizes"),
    "sasrec": ("genrec.commands.sasrec", "train and evaluate the SASRec item-ID model"),
    "analyze": ("genrec.commands.analyze", "memorization vs generalization labels and per-category metrics"),
    "generative": ("genrec.commands.generative", "train and evaluate the semantic-ID generative retrieval model"),
    "quantize": ("genrec.commands.quantize", "item texts -> embeddings -> semantic IDs, with diagnostics"),
    "run": ("genrec.commands.run", "run or resume a whole recipe from a YAML config (genrec run CONFIG)"),
    "recommend": ("genrec.commands.recommend", "batch recommendations for a file of user histories (jsonl/tsv -> jsonl/parquet)"),
    "add-items": ("genrec.commands.add_items", "add new catalogue items to a trained recommender without retraining"),
    "demo": ("genrec.commands.demo", "the whole pipeline on the built-in synthetic dataset, offline, in minutes"),
    "serve": ("genrec.commands.serve", "serve a trained recommender over HTTP (FastAPI)"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="genrec", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="count", default=0, help=VERBOSE_HELP)
    # -v after the subcommand too (genrec demo -v); SUPPRESS keeps a -v given before it
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS, help=VERBOSE_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text, parents=[common])
        p.set_defaults(_module=module)
        importlib.import_module(module).add_arguments(p)
    return parser


def split_set_arguments(argv: list[str]) -> list[str]:
    """``--set a=1 b=2 DIR`` -> ``--set a=1 --set b=2 DIR``: each ``--set`` takes the ``key=value``
    words that follow it and no others, so a positional argument after the overrides stays one."""
    out: list[str] = []
    in_set = False
    for i, word in enumerate(argv):
        if word == "--":
            in_set = False
        elif word == "--set":
            following = argv[i + 1] if i + 1 < len(argv) else None
            if following is None or not OVERRIDE_RE.match(following):
                raise ConfigError(f"argument --set: expected KEY=VALUE after it, got "
                                  f"{'nothing' if following is None else repr(following)}")
            in_set = True
            continue
        elif word.startswith("--set="):
            out += ["--set", word[len("--set="):]]
            in_set = True
            continue
        elif in_set and OVERRIDE_RE.match(word):
            out += ["--set", word]
            continue
        else:
            in_set = False
        out.append(word)
    return out


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; a :class:`~genrec.errors.GenrecError` (bad data, config, argument or
    checkpoint) or an ``OSError`` on a path (a file given as a directory, no permission, a full disk)
    prints ``genrec COMMAND: error: ...`` and returns 2."""
    parser = build_parser()
    try:
        argv = split_set_arguments(list(sys.argv[1:] if argv is None else argv))
    except ConfigError as e:
        parser.error(str(e))  # usage and the message, exit code 2
    args = parser.parse_args(argv)
    args._argv = argv  # the command line, for the header of a run's log file
    if not getattr(args, "command", None):
        parser.print_help()
        return 0
    configure_logging(args.verbose)  # console: progress, warnings, results; INFO only with -v
    try:
        return int(importlib.import_module(args._module).run(args) or 0)
    except GenrecError as e:
        print(f"genrec {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a path the user gave: an existing file as --out, no permission, a full disk
        where = f"{e.filename}: " if e.filename else ""
        print(f"genrec {args.command}: error: {where}{e.strerror or e}", file=sys.stderr)
        return 2
    finally:
        reset_logging()  # main() may run many times in one process (tests, notebooks)


if __name__ == "__main__":
    sys.exit(main())
