"""Parity of genrec's item-level labels with the paper's own categorizer on Amazon 2014 Beauty.

``../shared/reference/beauty_labels.jsonl.gz`` holds the labels that MemGen-GR's
``FineGrainedEvaluator`` (max_hop=4) gives to ``../shared/data/amazon2014/beauty`` (see
``../shared/reference/README.md``): one record per (split, raw user id), multi-label per kind at its
smallest hop. genrec's labels, converted to that form, must equal them for every instance.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

import genrec
from genrec.memorization import GENERALIZATION_KINDS, InstanceLabels, Kind, label_split

SHARED = Path(__file__).resolve().parents[2] / "shared"
BEAUTY = SHARED / "data/amazon2014/beauty"
REFERENCE = SHARED / "reference/beauty_labels.jsonl.gz"
# genrec kind -> the reference's label stem (its README: "substitutability_h", "2nd-symmetry_h", ...)
REF_NAMES = {Kind.SUBSTITUTABILITY: "substitutability", Kind.SYMMETRY: "symmetry",
             Kind.TRANSITIVITY: "transitivity", Kind.SECOND_ORDER_SYMMETRY: "2nd-symmetry"}


def reference_form(labels: InstanceLabels) -> list[frozenset[str]]:
    """genrec labels as the reference's label sets: ``memorization`` alone (the paper's code stops
    there), else each holding kind at its smallest hop plus ``generalization``, else ``uncategorized``."""
    out = []
    for k in range(len(labels)):
        if labels.kind[k] == Kind.MEMORIZATION:
            out.append(frozenset({"memorization"}))
            continue
        names = {f"{REF_NAMES[kind]}_{int(labels.kind_hops[k, int(kind)])}" for kind in GENERALIZATION_KINDS
                 if labels.kind_hops[k, int(kind)] >= 0}
        out.append(frozenset(names | {"generalization"}) if names else frozenset({"uncategorized"}))
    return out


@pytest.fixture(scope="module")
def beauty_split():
    if not (BEAUTY.is_dir() and REFERENCE.is_file()):
        pytest.skip("../shared (Beauty data and reference labels) is not available")
    dataset = genrec.load_dataset(str(BEAUTY))
    return genrec.leave_one_out(dataset, max_history=50)


@pytest.fixture(scope="module")
def reference() -> dict[tuple[str, str], dict]:
    if not REFERENCE.is_file():
        pytest.skip("../shared reference labels are not available")
    with gzip.open(REFERENCE, "rt", encoding="utf-8") as f:
        records = [json.loads(line) for line in f]
    out = {(r["split"], r["user_id"]): r for r in records}
    assert len(out) == len(records), "one reference record per (split, user)"
    return out


def test_split_is_the_references(beauty_split, reference):
    """The reference README's split: every user kept (5-core), file order, validation target = the
    second-to-last item, test target = the last; user ids are the raw reviewerIDs."""
    split = beauty_split
    ds = split.dataset
    assert len(split.users) == ds.num_users == 22363
    for part, inst in (("valid", split.valid), ("test", split.test)):
        assert len(inst) == 22363
        for u, t in zip(inst.users, inst.targets):
            assert reference[(part, ds.user_ids[u])]["target"] == ds.item_ids[t]
    # histories are the last 50 items of the prefix; truncation never reaches the last max_hop items
    for u, h in zip(split.test.users, split.test.histories):
        seq = ds.sequences[u]
        assert len(h) == min(len(seq) - 1, 50)
        assert np.array_equal(h, seq[:-1][-50:])


def differences(split, reference: dict, labels: dict[str, InstanceLabels], part: str) -> list[tuple]:
    """``(user_id, history length, ours, reference)`` of every instance whose label sets differ."""
    inst, ds = getattr(split, part), split.dataset
    out = []
    for u, h, mine in zip(inst.users, inst.histories, reference_form(labels[part])):
        ref = frozenset(reference[(part, ds.user_ids[u])]["labels"])
        if mine != ref:
            out.append((ds.user_ids[u], len(h), sorted(mine), sorted(ref)))
    return out


@pytest.fixture(scope="module")
def beauty_labels(beauty_split) -> dict[str, InstanceLabels]:
    return label_split(beauty_split, max_hop=4)


@pytest.mark.parametrize("part", ["valid", "test"])
def test_labels_equal_the_papers_code(beauty_split, reference, beauty_labels, part):
    diff = differences(beauty_split, reference, beauty_labels, part)
    assert not diff, f"{len(diff)} of {len(beauty_labels[part])} {part} instances differ, e.g. {diff[:3]}"


def test_any_history_hop_rule_differs_only_on_short_histories(beauty_split, reference, beauty_labels):
    """genrec's earlier rule (every hop checked whatever the history length) differs from the paper's
    code only on 3-item validation histories, by labels at hop 4; the test split is unaffected."""
    loose = label_split(beauty_split, max_hop=4, hop_needs_history=False)
    assert not differences(beauty_split, reference, loose, "test")
    diff = differences(beauty_split, reference, loose, "valid")
    assert 0.03 < len(diff) / len(beauty_split.valid) < 0.04  # 771 of 22,363
    assert {length for _, length, _, _ in diff} == {3}
    assert all(any(name.endswith("_4") for name in mine) for _, _, mine, _ in diff)
    strict = beauty_labels["valid"]
    changed = loose["valid"].kind_hops != strict.kind_hops
    assert (loose["valid"].kind_hops[changed] == 4).all() and (strict.kind_hops[changed] == -1).all()
