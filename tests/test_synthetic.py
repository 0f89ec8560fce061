"""The synthetic memorization-vs-composition dataset."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest

from genrec.data import SequenceDataset
from genrec.datasets import load_dataset
from genrec.splits import leave_one_out
from fusion.holdout_joint import holdout_transitions
from genrec.synthetic import (
    HELD_TEST,
    HELD_TRAIN,
    KIND_COMPOSITIONAL,
    KIND_MEMORIZATION,
    KIND_NOISE,
    make_synthetic,
    synthetic_info,
)


@pytest.fixture(scope="module")
def default_ds():
    return make_synthetic()


def train_pairs(split) -> set[tuple[int, int]]:
    pairs: set[tuple[int, int]] = set()
    for s in split.train_with_valid():
        pairs.update(zip(s[:-1].tolist(), s[1:].tolist()))
    return pairs


def test_the_default_dataset_is_pinned():
    """The generator's options draw nothing when off: the default dataset stays the one every
    benchmark and test figure was measured on (a digest of its sequences and held-out flags)."""
    import hashlib

    ds = make_synthetic(num_users=300, seed=7)
    h = hashlib.sha256()
    for s in ds.sequences:
        h.update(np.asarray(s, np.int64).tobytes())
    h.update(synthetic_info(ds).heldout.astype(np.int8).tobytes())
    assert h.hexdigest() == "62c9d4540b22c81293b984efd0eeb764bc300c7a6d49b64f4d5646833cbe3c65"


def test_deterministic_with_seed():
    a, b = make_synthetic(num_users=300, seed=7), make_synthetic(num_users=300, seed=7)
    c = make_synthetic(num_users=300, seed=8)
    assert a.item_ids == b.item_ids and a.user_ids == b.user_ids
    assert all(np.array_equal(x, y) for x, y in zip(a.sequences, b.sequences))
    assert all(np.array_equal(x, y) for x, y in zip(a.timestamps, b.timestamps))
    assert a.items == b.items
    assert any(len(x) != len(y) or not np.array_equal(x, y) for x, y in zip(a.sequences, c.sequences))


def test_default_shape_and_text(default_ds):
    ds = default_ds
    info = synthetic_info(ds)
    assert ds.num_users == 2000 and ds.num_items == 24 * 10 * 8
    lengths = np.array([len(s) for s in ds.sequences])
    assert lengths.min() >= 5 and lengths.max() <= 15
    for i in range(0, ds.num_items, 97):
        it = ds.items[i]
        brand, cat, attr = (info.brand_names[info.brand[i]], info.category_names[info.category[i]],
                            info.attribute_names[info.attribute[i]])
        assert it.title == f"{brand} {attr} {cat}" and it.brand == brand
        assert len(it.categories) == 2 and it.categories[1] == cat
        assert it.description and it.price and it.price > 0
    assert len({it.title for it in ds.items}) == ds.num_items
    for t in ds.timestamps:
        assert np.all(np.diff(t) > 0) and np.all(t == np.round(t))


def test_transitions_follow_their_recorded_kind(default_ds):
    ds = default_ds
    info = synthetic_info(ds)
    for u in range(0, ds.num_users, 7):
        s, kinds = ds.sequences[u], info.kinds[u]
        assert len(kinds) == len(s) - 1
        for j, k in enumerate(kinds):
            x, y = s[j], s[j + 1]
            if k == KIND_COMPOSITIONAL:
                assert info.compositional_next[x] == y
                assert info.brand[y] == info.brand[x] and info.attribute[y] == info.attribute[x]
                assert info.category[y] == info.category_cycle[info.category[x]]
            else:
                assert k == KIND_MEMORIZATION and y in info.memorization_next[x]
    # memorization targets are unrelated to the rule: never the item itself nor its compositional next
    assert not np.any(info.memorization_next[:, 0] == np.arange(ds.num_items))
    assert not np.any(info.memorization_next[:, 0] == info.compositional_next)


def test_memorization_share_effect():
    shares = []
    for m in (0.1, 0.5, 0.9):
        info = synthetic_info(make_synthetic(num_users=400, memorization_share=m, seed=1))
        shares.append(info.kind_shares()["memorization"])
    assert shares[0] < shares[1] < shares[2]
    assert shares[0] == pytest.approx(0.1 + 0.9 * 0.2, abs=0.08)  # + compositional steps replaced near held-out items
    only_mem = synthetic_info(make_synthetic(num_users=200, memorization_share=1.0))
    assert only_mem.kind_shares()["memorization"] == 1.0
    only_rule = synthetic_info(make_synthetic(num_users=200, memorization_share=0.0, heldout_share=0.0,
                                              unseen_share=0.0))
    assert only_rule.kind_shares()["compositional"] == 1.0


def test_noise_share():
    ds = make_synthetic(num_users=300, memorization_share=0.3, noise_share=0.4, seed=2)
    info = synthetic_info(ds)
    assert info.kind_shares()["noise"] == pytest.approx(0.4, abs=0.06)
    for u in range(50):
        for j, k in enumerate(info.kinds[u]):
            if k == KIND_NOISE:
                assert ds.sequences[u][j] != ds.sequences[u][j + 1]
    # noise never forms a held-out rule pair where it may not stand (small catalogue: ~1/n per noise step;
    # 26 such pairs, 6 of test's held-out pairs inside training sequences, before the fix)
    from genrec.synthetic import HELD_NONE, HELD_VALID

    ds = make_synthetic(num_users=3000, noise_share=0.3, memorization_share=0.2, train_unseen_share=0.5,
                        num_brands=4, num_categories=4, num_attributes=4, seed=0)
    info = synthetic_info(ds)
    allowed_at = {HELD_TEST: 2, HELD_VALID: 3, HELD_TRAIN: 4}  # transition j = L - this
    for seq in ds.sequences:
        for j in range(len(seq) - 1):
            x, y = int(seq[j]), int(seq[j + 1])
            h = int(info.heldout[x])
            if h != HELD_NONE and y == info.compositional_next[x]:
                assert j == len(seq) - allowed_at[h], (seq.tolist(), j)


def test_unseen_compositional_pairs_in_test_and_recurring_memorization_pairs(default_ds):
    ds = default_ds
    info = synthetic_info(ds)
    split = leave_one_out(ds)
    seen = train_pairs(split)
    src, tgt = split.test.last_items(), split.test.targets
    kinds = info.last_kinds()[split.users]
    pair_seen = np.array([(int(a), int(b)) in seen for a, b in zip(src, tgt)])
    comp, mem = kinds == KIND_COMPOSITIONAL, kinds == KIND_MEMORIZATION
    assert comp.sum() > 500 and mem.sum() > 500
    unseen_comp = (~pair_seen[comp]).mean()
    assert 0.35 < unseen_comp < 0.8  # about half by construction (unseen_share=0.5), plus a few by chance
    assert pair_seen[mem].mean() > 0.9  # memorization pairs recur across users
    # every compositional test transition out of a test-only item is unseen, in train and validation
    held = info.heldout[src] == HELD_TEST
    assert (comp & held).sum() > 300 and not pair_seen[comp & held].any()
    # ... yet each unseen pair's items and the rule itself are well represented in training
    train_items = np.bincount(np.concatenate(split.train_with_valid()), minlength=ds.num_items)
    assert np.all(train_items[src[comp & held]] > 0)
    # memorization pairs recur across users in the training sequences
    users_per_pair = defaultdict(set)
    for u, s in enumerate(split.train):
        for a, b, k in zip(s[:-1].tolist(), s[1:].tolist(), info.kinds[split.users[u]][: len(s) - 1]):
            if k == KIND_MEMORIZATION:
                users_per_pair[(a, b)].add(u)
    assert np.mean([len(v) for v in users_per_pair.values()]) > 2.5


def test_validation_has_unseen_compositional_pairs(default_ds):
    ds = default_ds
    info = synthetic_info(ds)
    split = leave_one_out(ds)
    train_only: set[tuple[int, int]] = set()
    for s in split.train:
        train_only.update(zip(s[:-1].tolist(), s[1:].tolist()))
    kinds = info.last_kinds(2)[split.users]
    comp = kinds == KIND_COMPOSITIONAL
    unseen = np.array([(int(a), int(b)) not in train_only
                       for a, b in zip(split.valid.last_items()[comp], split.valid.targets[comp])])
    assert unseen.mean() > 0.15


def test_train_unseen_share_puts_never_seen_pairs_at_the_last_training_transition():
    """``train_unseen_share``: train-only items' compositional pairs occur only as a user's last training
    transition, so once each user's last training item is left out (a held-out gate's training data)
    every such held-out transition is a pair the shortened data never shows, and there are more
    unseen held-out transitions than by default (where only pairs that happen to occur once are)."""
    def unseen_held_out(ds):
        split = leave_one_out(ds)
        short, held = holdout_transitions(split)
        pairs = {p for s in short for p in zip(s[:-1].tolist(), s[1:].tolist())}
        return np.array([(int(a), int(b)) not in pairs for a, b in zip(held.last_items(), held.targets)]), split, held

    ds = make_synthetic(num_users=800, train_unseen_share=1.0, seed=4)
    info = synthetic_info(ds)
    train_only = np.flatnonzero(info.heldout == HELD_TRAIN)
    assert len(train_only) > 100 and (info.heldout == HELD_TEST).sum() > 100  # 128 each (thirds), some unused
    positions = []  # from the end of the sequence, of every compositional step out of a train-only item
    for seq, kinds in zip(ds.sequences, info.kinds):
        for j in np.flatnonzero((kinds == KIND_COMPOSITIONAL) & np.isin(seq[:-1], train_only)):
            positions.append(len(seq) - 1 - j)
    assert len(positions) > 50 and set(positions) == {3}  # the transition into the third-to-last item
    unseen, split, held_out = unseen_held_out(ds)
    rule = info.compositional_next[held_out.last_items()] == held_out.targets
    from_train_only = rule & (info.heldout[held_out.last_items()] == HELD_TRAIN)
    assert from_train_only.sum() > 50 and unseen[from_train_only].all()
    unseen_default, _, _ = unseen_held_out(make_synthetic(num_users=800, seed=4))
    assert unseen.mean() > unseen_default.mean() + 0.05
    # the test transitions keep their never-seen pairs
    comp = info.last_kinds()[split.users] == KIND_COMPOSITIONAL
    seen = train_pairs(split)
    held = comp & (info.heldout[split.test.last_items()] == HELD_TEST)
    assert held.sum() > 50 and not any((int(a), int(b)) in seen for a, b in
                                       zip(split.test.last_items()[held], split.test.targets[held]))


def test_spec_and_validation():
    a = load_dataset("synthetic:num_users=50,seed=3,seq_len=4-6")
    b = make_synthetic(num_users=50, seed=3, seq_len=(4, 6))
    assert all(np.array_equal(x, y) for x, y in zip(a.sequences, b.sequences))
    assert load_dataset("synthetic", num_users=20).num_users == 20
    with pytest.raises(ValueError, match=r"unknown synthetic parameter\(s\) \['users'\]"):
        load_dataset("synthetic:users=5")
    with pytest.raises(ValueError, match="key=value"):
        load_dataset("synthetic:num_users")
    with pytest.raises(ValueError, match="seq_len"):
        make_synthetic(seq_len=(2, 5))
    with pytest.raises(ValueError, match="num_categories"):
        make_synthetic(num_categories=1)
    with pytest.raises(ValueError, match="memorization_share \\+ noise_share"):
        make_synthetic(memorization_share=0.8, noise_share=0.3)
    # every item held out leaves no open anchor: a validation-only pair would be drawn for test too
    with pytest.raises(ValueError, match="heldout_share=1.0 holds out every item"):
        make_synthetic(num_users=50, heldout_share=1.0, unseen_share=0.0)
    assert make_synthetic(num_users=50, heldout_share=1.0, unseen_share=1.0).num_users == 50
    with pytest.raises(ValueError, match="not a synthetic dataset"):
        synthetic_info(SequenceDataset(name="x", item_ids=[], user_ids=[], sequences=[], items=[]))
