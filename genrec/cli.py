"""The ``genrec`` command line: a thin layer over the library.

Each subcommand lives in its own module exposing ``add_arguments(parser)`` and ``run(args) -> int``;
``SUBCOMMANDS`` maps the subcommand name to that module and a one-line help.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "data": ("genrec.commands.data", "load a dataset and print its statistics and split sizes"),
    "sasrec": ("genrec.commands.sasrec", "train and evaluate the SASRec item-ID model"),
    "analyze": ("genrec.commands.analyze", "memorization vs generalization labels and per-category metrics"),
    "generative": ("genrec.commands.generative", "train and evaluate the semantic-ID generative retrieval model"),
    "quantize": ("genrec.commands.quantize", "item texts -> embeddings -> semantic IDs, with diagnostics"),
    "run": ("genrec.commands.run", "run or resume a whole recipe from a YAML config (genrec run CONFIG)"),
    "demo": ("genrec.commands.demo", "the whole pipeline on the built-in synthetic dataset, offline, in minutes"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="genrec", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if not getattr(args, "command", None):
        parser.print_help()
        return 0
    return int(importlib.import_module(args._module).run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
