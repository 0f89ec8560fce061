"""genrec's error types, in one place: every error a user can cause by bad input is a
:class:`GenrecError`, whose message names the file and line, the config key or the id at fault.

The command line turns a :class:`GenrecError` into its message and exit code 2; anything else is a
bug and keeps its traceback.
"""

from __future__ import annotations

__all__ = ["GenrecError", "DataFormatError", "DataNotFoundError", "ConfigError", "CheckpointError", "CheckpointNotFoundError", "DatasetUnavailableError",
           "RunDirectoryError", "TrainingDivergedError", "UnknownItemError", "NothingToFitError"]


class GenrecError(Exception):
    """Base of every error caused by the user's input (data, config, arguments, checkpoints)."""


class DataFormatError(GenrecError, ValueError):
    """Bad input data; the message names the file and the line or id at fault."""


class UnknownItemError(DataFormatError):
    """An item id the catalogue does not know (a history under the strict policy, an item lookup);
    ``item_ids`` holds the unknown ids."""

    def __init__(self, message: str, item_ids: "list[str] | None" = None) -> None:
        super().__init__(message)
        self.item_ids = list(item_ids or [])


class DataNotFoundError(DataFormatError, FileNotFoundError):
    """A dataset directory or file that does not exist (also a ``FileNotFoundError``)."""


class ConfigError(GenrecError, ValueError):
    """A bad config value or override; the message names the key (``section.key``) and the value."""


class CheckpointError(GenrecError, ValueError):
    """A checkpoint or saved artifact that cannot be loaded (truncated, corrupt, incompatible or
    unsafe); the message names the file and what to do."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """A checkpoint file that does not exist (also a ``FileNotFoundError``)."""


class DatasetUnavailableError(GenrecError, RuntimeError):
    """A dataset's files are absent and could not be fetched; the message says where to put them."""


class RunDirectoryError(GenrecError, RuntimeError):
    """A run directory that cannot be used as asked: locked by another run, holding finished stages
    that a changed config would discard, or not writable."""


class TrainingDivergedError(GenrecError, RuntimeError):
    """Training produced a NaN or infinite loss; the message gives the epoch, the step and the last
    finite loss."""


class NothingToFitError(GenrecError, ValueError):
    """A fit given no usable instance (a fusion gate whose instances have no target among their
    candidates); the message names the method and how many instances it was given."""
