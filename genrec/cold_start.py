"""Cold-start splits: a leave-one-out split whose catalogue is cut into warm items (what training
sees) and cold items (what arrives after training), for evaluating items added without retraining.

Two protocols choose the cold items:

- ``"natural"``: the items that occur in no sequence a model may train on before testing
  (:meth:`~genrec.splits.LeaveOneOutSplit.train_with_valid`): in practice test targets seen nowhere
  else (LIGER's cold targets on Beauty), plus catalogue items without interactions and items seen
  only in the sequences of users too short for the split (``min_interactions``; none on 5-core data);
- a share in ``(0, 1)`` (TIGER's protocol): a seeded random share of the catalogue, removed from
  training entirely.

The item index space is permuted so that the cold items come last (warm and cold items each keep
their original relative order): item ``i < num_warm`` is warm. :attr:`ColdStartSplit.split` is the
ordinary leave-one-out split of the permuted dataset (test users, histories and targets untouched,
so test histories may hold cold items); :attr:`ColdStartSplit.warm` is what training stages see: a
catalogue of the ``num_warm`` warm items, training sequences and validation histories with every
cold item removed, and the validation instances whose target is cold (or whose history is left
empty) dropped, since no model trained on the warm catalogue could rank such a target and early
stopping or fusion fitting must not see cold items at all (the opt-in new-item mixture,
``fusion.new_item_mixture``, is the exception: it fits three scalars per method on the validation
instances whose target is cold). Nothing here reads a test target to
choose anything, except the natural protocol's definition itself (an item occurring only as a test
target), which is a property of the data, not a choice fitted on test.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from genrec.data import SequenceDataset
from genrec.errors import ConfigError
from genrec.splits import Instances, LeaveOneOutSplit, leave_one_out

log = logging.getLogger(__name__)

__all__ = ["NATURAL", "ColdStartSplit", "choose_cold_items", "permute_items", "cold_start_split"]

#: the protocol name of natural cold items (``data.cold_items: natural``)
NATURAL = "natural"


@dataclass
class ColdStartSplit:
    """A split whose items ``>= num_warm`` are cold (see the module doc). ``dataset`` / ``split``:
    the whole permuted catalogue and its leave-one-out split (what test is evaluated on);
    ``warm``: the warm catalogue's training view; ``order[i]``: the original index of permuted item
    ``i``; ``valid_dropped``: validation instances left out of ``warm.valid``."""

    protocol: str
    dataset: SequenceDataset
    split: LeaveOneOutSplit
    warm: LeaveOneOutSplit
    num_warm: int
    order: np.ndarray
    valid_dropped: int

    @property
    def num_items(self) -> int:
        return self.dataset.num_items

    @property
    def num_cold(self) -> int:
        return self.num_items - self.num_warm

    @property
    def cold_items(self) -> np.ndarray:
        """``[num_cold]`` permuted indices of the cold items."""
        return np.arange(self.num_warm, self.num_items, dtype=np.int64)

    def is_cold(self, items: np.ndarray) -> np.ndarray:
        """Boolean mask of ``items`` (permuted indices) that are cold."""
        return np.asarray(items) >= self.num_warm

    def validation_sample(self, in_set_users: int, seed: int = 0, need_both: bool = False
                          ) -> tuple[Instances, np.ndarray]:
        """The validation instances whose target is cold (left out of training and every choice:
        new-item cases) followed by a seeded sample of ``in_set_users`` of the others, and ``[n]`` bool
        marking the cold-target ones. ``need_both``: a ConfigError unless both kinds are present (under
        the natural protocol no validation target is cold, by definition)."""
        valid = self.split.valid
        cold = self.is_cold(valid.targets)
        if need_both and (cold.all() or not cold.any()):
            raise ConfigError(f"the {self.protocol!r} cold-start split has {int(cold.sum())} cold-target and "
                              f"{int((~cold).sum())} in-set validation instances; this needs both (the natural "
                              f"protocol's cold items are never validation targets: use a share of the items)")
        in_set = np.flatnonzero(~cold)
        sample = np.random.default_rng(seed).choice(in_set, min(in_set_users, len(in_set)), replace=False)
        rows = np.r_[np.flatnonzero(cold), np.sort(sample)]
        return valid.subset(rows), cold[rows]

    def summary(self) -> dict[str, int | str]:
        """Counts for ``data/summary.json``: items, test targets and validation instances by side."""
        cold_targets = int(self.is_cold(self.split.test.targets).sum())
        return {"protocol": self.protocol, "warm_items": self.num_warm, "cold_items": self.num_cold,
                "test_cold_targets": cold_targets, "test_in_set_targets": len(self.split.test) - cold_targets,
                "valid_kept": len(self.warm.valid), "valid_dropped": self.valid_dropped}


def choose_cold_items(dataset: SequenceDataset, cold: float | str, seed: int = 0, *, max_history: int = 50,
                      min_interactions: int = 3) -> np.ndarray:
    """Sorted original indices of the cold items: ``cold="natural"`` (items in no sequence a model
    trains on before testing, given the leave-one-out settings) or a share in ``(0, 1)`` drawn with
    ``seed`` (at least one item, and at least one left warm). A bad value is a :class:`ConfigError`."""
    n = dataset.num_items
    if isinstance(cold, str):
        if cold != NATURAL:
            raise ConfigError(f"cold items must be {NATURAL!r} or a share in (0, 1), got {cold!r}")
        split = leave_one_out(dataset, max_history=max_history, min_interactions=min_interactions)
        seen = np.zeros(n, bool)
        for s in split.train_with_valid():
            seen[s] = True
        return np.flatnonzero(~seen).astype(np.int64)
    if isinstance(cold, bool) or not isinstance(cold, (int, float)) or not 0 < cold < 1:
        raise ConfigError(f"cold items must be {NATURAL!r} or a share in (0, 1), got {cold!r}")
    m = min(max(1, round(cold * n)), n - 1)
    return np.sort(np.random.default_rng(seed).choice(n, m, replace=False)).astype(np.int64)


def permute_items(dataset: SequenceDataset, order: np.ndarray, name: str | None = None) -> SequenceDataset:
    """``dataset`` with its items renumbered: new item ``i`` is old item ``order[i]`` (a permutation);
    users, sequences (remapped) and timestamps are unchanged."""
    order = np.asarray(order, np.int64)
    if sorted(order.tolist()) != list(range(dataset.num_items)):
        raise ValueError(f"order must be a permutation of the {dataset.num_items} items")
    new_index = np.empty_like(order)
    new_index[order] = np.arange(len(order))
    out = SequenceDataset(name or dataset.name, [dataset.item_ids[i] for i in order], list(dataset.user_ids),
                          [new_index[s] for s in dataset.sequences], [dataset.items[i] for i in order],
                          dataset.timestamps)
    info = getattr(dataset, "synthetic", None)
    if info is not None:  # a synthetic dataset's ground truth, renumbered with it (it was lost)
        from genrec.synthetic import permuted_info

        out.synthetic = permuted_info(info, order)  # type: ignore[attr-defined]
    return out


def _warm_instances(inst: Instances, full: SequenceDataset, before_target: int, num_warm: int, max_history: int
                    ) -> tuple[Instances, int]:
    """Instances with cold items removed from the histories, those with a cold target or an empty
    remaining history dropped; and how many were dropped. Each history is the user's whole sequence
    up to the target (``before_target`` items from its end) without the cold items, then cut to
    ``max_history``: cut first, it would lose warm items for every cold one in the window."""
    hist = []
    for u in inst.users:
        prefix = full.sequences[u][:-before_target]
        hist.append(prefix[prefix < num_warm][-max_history:])
    keep = np.flatnonzero((inst.targets < num_warm) & np.array([len(h) > 0 for h in hist], bool))
    kept = Instances(users=inst.users[keep], histories=[hist[i] for i in keep], targets=inst.targets[keep])
    return kept, len(inst) - len(keep)


def cold_start_split(dataset: SequenceDataset, cold: np.ndarray, *, protocol: str = "share", max_history: int = 50,
                     min_interactions: int = 3) -> ColdStartSplit:
    """The :class:`ColdStartSplit` of ``dataset`` with the items ``cold`` (original indices) cold;
    ``protocol`` is recorded for reports. Raises :class:`ConfigError` when no item or every item
    would be cold."""
    n = dataset.num_items
    cold = np.unique(np.asarray(cold, np.int64))
    if len(cold) == 0:
        raise ConfigError(f"dataset {dataset.name!r}: no cold item under the {protocol!r} protocol (every item "
                          f"occurs in training sequences); choose a share instead")
    if len(cold) >= n or cold.min() < 0 or cold.max() >= n:
        raise ConfigError(f"dataset {dataset.name!r}: cold items must be a proper subset of the {n} items")
    is_cold = np.zeros(n, bool)
    is_cold[cold] = True
    order = np.concatenate([np.flatnonzero(~is_cold), cold])
    num_warm = n - len(cold)
    full = permute_items(dataset, order)
    split = leave_one_out(full, max_history=max_history, min_interactions=min_interactions)
    warm_seqs = [s[s < num_warm] for s in full.sequences]
    times = None if full.timestamps is None else [t[s < num_warm] for s, t in zip(full.sequences, full.timestamps)]
    warm_ds = SequenceDataset(f"{dataset.name}-warm", full.item_ids[:num_warm], list(full.user_ids), warm_seqs,
                              full.items[:num_warm], times)
    valid, dropped = _warm_instances(split.valid, full, 2, num_warm, max_history)
    # the test side of the warm view is never read by training; kept consistent (warm targets only)
    test, _ = _warm_instances(split.test, full, 1, num_warm, max_history)
    before_test = [full.sequences[u][:-1] for u in split.users]  # the full sequence's test item, then cold out
    warm = LeaveOneOutSplit(dataset=warm_ds, users=split.users, train=[s[s < num_warm] for s in split.train],
                            valid=valid, test=test, max_history=max_history,
                            before_test=[s[s < num_warm] for s in before_test])
    if len(valid) == 0:
        raise ConfigError(f"dataset {dataset.name!r}: no validation instance is left once the {len(cold)} cold "
                          f"items are removed; choose a smaller share")
    log.info("cold start (%s): %d of %d items cold; %d test targets cold; %d validation instances dropped",
             protocol, len(cold), n, int((split.test.targets >= num_warm).sum()), dropped)
    return ColdStartSplit(protocol, full, split, warm, num_warm, order, dropped)
