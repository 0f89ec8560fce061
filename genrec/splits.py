"""Leave-one-out splits: per user, the last item is test, the second-to-last validation, the rest train.

This is the protocol of SASRec, P5, TIGER and arXiv 2603.19809. Histories fed to models are
truncated to the most recent ``max_history`` items (default 50).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from genrec.data import SequenceDataset
from genrec.errors import ConfigError, DataFormatError

log = logging.getLogger(__name__)


@dataclass
class Instances:
    """Evaluation instances: one (user, history, target) per row.

    ``histories[k]`` is the (truncated) chronological item history, oldest first, shape ``[len_k]``.
    """

    users: np.ndarray  # [n] user indices into the dataset
    histories: list[np.ndarray]
    targets: np.ndarray  # [n] item indices

    def __len__(self) -> int:
        return len(self.targets)

    def padded_histories(self, length: int, pad: int = -1) -> np.ndarray:
        """Histories right-aligned in an ``[n, length]`` array, left-padded with ``pad``."""
        out = np.full((len(self), length), pad, dtype=np.int64)
        for k, h in enumerate(self.histories):
            h = h[-length:]
            if len(h):
                out[k, length - len(h):] = h
        return out

    def last_items(self) -> np.ndarray:
        """``[n]`` last history item of each instance."""
        return np.array([h[-1] for h in self.histories], dtype=np.int64)

    def subset(self, index: np.ndarray) -> "Instances":
        index = np.asarray(index)
        return Instances(users=self.users[index], histories=[self.histories[i] for i in index],
                         targets=self.targets[index])

    def sample(self, n: int | None, seed: int = 0) -> "Instances":
        """A fixed seeded sample of ``n`` instances in their original order (all when ``n`` is
        None or not smaller than the split): the validation subsets of early stopping."""
        if not n or n >= len(self):
            return self
        return self.subset(np.sort(np.random.default_rng(seed).choice(len(self), n, replace=False)))


@dataclass
class LeaveOneOutSplit:
    """Train sequences plus validation and test instances of a dataset."""

    dataset: SequenceDataset
    users: np.ndarray  # [n_users_kept] dataset user indices with >= min_interactions
    train: list[np.ndarray]  # per kept user: full sequence minus the last two items
    valid: Instances
    test: Instances
    max_history: int
    # per kept user, the sequence without its test item where that is not the dataset's sequence minus
    # its last item (a cold-start warm view: the last warm item need not be the test target)
    before_test: list[np.ndarray] | None = None

    @property
    def num_items(self) -> int:
        return self.dataset.num_items

    def train_with_valid(self) -> list[np.ndarray]:
        """Per kept user: sequence minus the test item (what a model may train on before testing)."""
        if self.before_test is not None:
            return list(self.before_test)
        return [self.dataset.sequences[u][:-1] for u in self.users]


def leave_one_out(dataset: SequenceDataset, max_history: int = 50, min_interactions: int = 3) -> LeaveOneOutSplit:
    """Split every user with at least ``min_interactions`` items; others are dropped with a logged count.

    Raises :class:`~genrec.errors.ConfigError` for a bad ``min_interactions`` / ``max_history`` and
    :class:`~genrec.errors.DataFormatError` when no user is long enough (both ``ValueError`` subclasses).
    """
    if min_interactions < 3:
        raise ConfigError(f"leave-one-out needs min_interactions >= 3 (a training, a validation and a test item "
                          f"per user), got {min_interactions}")
    if max_history < 1:
        raise ConfigError(f"max_history must be >= 1, got {max_history}")
    lengths = np.array([len(s) for s in dataset.sequences])
    keep = np.flatnonzero(lengths >= min_interactions)
    if len(keep) == 0:
        longest = int(lengths.max()) if len(lengths) else 0
        raise DataFormatError(f"dataset {dataset.name!r}: no user has >= {min_interactions} interactions "
                              f"({dataset.num_users} user(s), longest sequence {longest}); leave-one-out needs "
                              f"a training, a validation and a test item per user")
    dropped = dataset.num_users - len(keep)
    if dropped:
        log.warning("%s: dropped %d user(s) with fewer than %d interactions", dataset.name, dropped, min_interactions)
    seqs = [dataset.sequences[u] for u in keep]
    train = [s[:-2] for s in seqs]
    valid = Instances(users=keep.copy(), histories=[s[:-2][-max_history:] for s in seqs],
                      targets=np.array([s[-2] for s in seqs], dtype=np.int64))
    test = Instances(users=keep.copy(), histories=[s[:-1][-max_history:] for s in seqs],
                     targets=np.array([s[-1] for s in seqs], dtype=np.int64))
    return LeaveOneOutSplit(dataset=dataset, users=keep, train=train, valid=valid, test=test,
                            max_history=max_history)
