"""Where log messages go when genrec runs as a command (library code only ever calls ``logging``).

The console is for the person at the terminal: the command's own lines (stage progress, the
summary), one progress bar at a time, and warnings and errors. Everything else, INFO messages
included, goes to a log file (``<run dir>/run.log`` for ``genrec run`` / ``genrec demo``)::

                                    console            log file
    genrec, quantize, fusion        WARNING and up     DEBUG and up
    any other package (faiss,       ERROR and up       WARNING and up
    transformers, matplotlib, ...)
    ``-v``                          INFO and up, all   INFO and up, all (genrec: DEBUG)
    ``-vv``                         DEBUG, all         DEBUG, all

So faiss's loader ("Could not load library with AVX512 support ... ModuleNotFoundError", INFO
messages of the ``faiss.loader`` logger that only say which build it picked) and the encoder's
loading messages never reach the console without ``-v``. Console messages are written with
``tqdm.write``, so a warning in the middle of a progress bar does not break the bar.

Typical use (what :func:`genrec.cli.main` does)::

    configure_logging(verbose)                # console policy, for the whole command
    with log_to_file(run_dir / "run.log", header="genrec demo ..."):
        ...                                   # everything logged meanwhile is also in run.log
    reset_logging()                           # back to how it was (tests run many commands)

:func:`say` prints a line of the command's own output and copies it to the log file only.
"""

from __future__ import annotations

import logging
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator

__all__ = ["OWN_PACKAGES", "configure_logging", "reset_logging", "log_to_file", "say", "FILE_ONLY"]

#: top-level logger names that are genrec's own; every other logger counts as a third-party one
OWN_PACKAGES = ("genrec", "quantize", "fusion", "recipes", "bench", "__main__")

#: ``extra=FILE_ONLY`` on a logging call: the record goes to the log file, never to the console
#: (for lines the command has already printed itself)
FILE_ONLY = {"genrec_file_only": True}

CONSOLE_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
FILE_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

log = logging.getLogger("genrec.cli")

# what configure_logging changed, so that reset_logging can undo it
_state: dict = {"handlers": [], "levels": {}, "verbosity": 0, "undo": []}


def _is_own(name: str) -> bool:
    return name.split(".", 1)[0] in OWN_PACKAGES


class _Policy(logging.Filter):
    """Let a record through when its level reaches the threshold for its logger (own or other)."""

    def __init__(self, own: int, other: int, console: bool) -> None:
        super().__init__()
        self.own, self.other, self.console = own, other, console

    def filter(self, record: logging.LogRecord) -> bool:
        if self.console and getattr(record, "genrec_file_only", False):
            return False
        return record.levelno >= (self.own if _is_own(record.name) else self.other)


class _ConsoleHandler(logging.Handler):
    """Writes to the *current* ``sys.stderr`` (pytest and callers may swap it) through
    ``tqdm.write``, which clears an active progress bar, prints the line and redraws the bar."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = self.format(record)
            try:
                from tqdm import tqdm

                tqdm.write(msg, file=sys.stderr)
            except ImportError:  # pragma: no cover - tqdm is a dependency
                print(msg, file=sys.stderr)
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


def _thresholds(verbosity: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """``((own, other) on the console, (own, other) in the file)``."""
    if verbosity >= 2:
        return (logging.DEBUG, logging.DEBUG), (logging.DEBUG, logging.DEBUG)
    if verbosity == 1:
        return (logging.INFO, logging.INFO), (logging.DEBUG, logging.INFO)
    return (logging.WARNING, logging.ERROR), (logging.DEBUG, logging.WARNING)


def _set_level(logger: logging.Logger, level: int) -> None:
    _state["levels"].setdefault(logger.name, logger.level)
    logger.setLevel(level)


def configure_logging(verbose: int | bool = 0, log_file: str | Path | None = None,
                      header: str | None = None) -> None:
    """Install the console policy (see the module docstring): ``verbose`` 0, 1 (``-v``: INFO of
    every package on the console) or 2 (``-vv``: DEBUG). ``log_file``: also append everything to
    this file (opened until :func:`reset_logging`; ``header``: a first line to write to it).
    Calling it again replaces the earlier setup; Python ``warnings`` and transformers' messages
    (which has a stderr handler of its own) are routed to the policy too."""
    reset_logging()
    verbosity = int(verbose)
    _state["verbosity"] = verbosity
    root = logging.getLogger()
    wanted = logging.DEBUG if verbosity >= 2 else logging.INFO
    if root.level == logging.NOTSET or root.level > wanted:
        _set_level(root, wanted)
    for name in OWN_PACKAGES:
        _set_level(logging.getLogger(name), logging.DEBUG)
    (own, other), _ = _thresholds(verbosity)
    console = _ConsoleHandler(level=logging.DEBUG)
    console.setFormatter(logging.Formatter(CONSOLE_FORMAT, datefmt="%H:%M:%S"))
    console.addFilter(_Policy(own, other, console=True))
    root.addHandler(console)
    _state["handlers"].append(console)
    logging.captureWarnings(True)
    _state["undo"].append(lambda: logging.captureWarnings(False))
    _route_transformers()
    if log_file is not None:
        _state["handlers"].append(_add_file_handler(Path(log_file), header))


def _route_transformers() -> None:
    """transformers logs through a stderr handler of its own, bypassing the policy: when it is
    already imported, send its messages up to the root logger instead (until :func:`reset_logging`).
    Importing it just for this would cost a second; ``quantize.embed`` does the same around its
    own use of transformers, which is where a run first imports it."""
    hf_logging = sys.modules.get("transformers.utils.logging")
    if hf_logging is None:
        return
    hf_logging.get_verbosity()  # its logger set up (own handler, no propagation) if not yet
    if logging.getLogger("transformers").propagate:
        return
    hf_logging.disable_default_handler()
    hf_logging.enable_propagation()
    _state["undo"].append(lambda: (hf_logging.enable_default_handler(), hf_logging.disable_propagation()))


def _add_file_handler(path: Path, header: str | None) -> logging.Handler:
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, mode="a", encoding="utf-8")
    handler.setFormatter(logging.Formatter(FILE_FORMAT, datefmt="%Y-%m-%d %H:%M:%S"))
    _, (own, other) = _thresholds(_state["verbosity"])
    handler.addFilter(_Policy(own, other, console=False))
    if header is not None:
        stream: IO[str] = handler.stream
        gap = "\n" if stream.tell() > 0 else ""  # a blank line between the runs of one directory
        stream.write(f"{gap}===== {time.strftime('%Y-%m-%d %H:%M:%S')} {header} =====\n")
        stream.flush()
    logging.getLogger().addHandler(handler)
    return handler


def _remove(handler: logging.Handler) -> None:
    logging.getLogger().removeHandler(handler)
    handler.close()
    if handler in _state["handlers"]:
        _state["handlers"].remove(handler)


@contextmanager
def log_to_file(path: str | Path, header: str | None = None) -> Iterator[Path]:
    """Append every record the policy lets into the file (see the module docstring) to ``path``
    while the block runs, after a ``===== <time> <header> =====`` line; the file's parent
    directory is created. Raises ``OSError`` when the file cannot be opened."""
    handler = _add_file_handler(Path(path), header)
    _state["handlers"].append(handler)
    try:
        yield Path(path)
    finally:
        _remove(handler)


def reset_logging() -> None:
    """Undo :func:`configure_logging`: remove its handlers (closing files), restore the levels it
    changed and stop routing ``warnings`` (and transformers' messages) to logging. Handlers
    installed by others stay."""
    for handler in list(_state["handlers"]):
        _remove(handler)
    for name, level in _state["levels"].items():
        logging.getLogger(name if name != "root" else None).setLevel(level)
    _state["levels"] = {}
    while _state["undo"]:
        _state["undo"].pop()()


def say(message: str = "", *, stream: IO[str] | None = None) -> None:
    """Print one line of the command's own output (``stream``: default stderr; the summary goes to
    stdout) and copy it to the log file, not to the console a second time."""
    out = stream if stream is not None else sys.stderr
    print(message, file=out, flush=True)
    if message.strip():
        log.info("%s", message, extra=FILE_ONLY)
