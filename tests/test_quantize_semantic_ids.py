"""Collision disambiguation, the semantic-ID table (lookups, trie, persistence) and diagnostics."""

from __future__ import annotations

import math

import numpy as np
import pytest

from quantize import SemanticIdTable, codebook_usage, collision_stats, disambiguate

CODES = np.array([[1, 2], [1, 2], [0, 0], [1, 2], [0, 0], [3, 1]])


def test_disambiguation_numbers_groups_in_item_order():
    np.testing.assert_array_equal(disambiguate(CODES), [0, 1, 0, 2, 1, 0])


def test_disambiguation_is_stable_and_unique_at_scale():
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 4, size=(3000, 3))  # 64 tuples for 3000 items: many collisions
    suffix = disambiguate(codes)
    np.testing.assert_array_equal(suffix, disambiguate(codes.copy()))
    full = np.concatenate([codes, suffix[:, None]], axis=1)
    assert len(np.unique(full, axis=0)) == len(codes)
    # within a group, suffixes follow item index order: 0, 1, 2, ...
    for tup in map(tuple, np.unique(codes, axis=0)[:10]):
        members = np.flatnonzero((codes == tup).all(1))
        np.testing.assert_array_equal(suffix[members], np.arange(len(members)))


def test_table_from_codes_lookups_and_trie():
    t = SemanticIdTable.from_codes(CODES, [4, 3], item_ids=list("abcdef"), config={"method": "test"})
    assert t.num_items == 6 and t.num_levels == 3 and t.codebook_sizes == (4, 3, 3)
    assert t.codes.shape == (6, 3) and len({tuple(r) for r in t.codes.tolist()}) == 6
    np.testing.assert_array_equal(t.base_codes, CODES)
    assert t.id_of(3) == (1, 2, 2) and t.item_of((1, 2, 2)) == 3 and t.item_of((1, 2, 3)) is None
    np.testing.assert_array_equal(t.lookup(np.array([[0, 0, 1], [9, 9, 9], [3, 1, 0]])), [4, -1, 5])
    assert t.index_of_item_id("e") == 4
    np.testing.assert_array_equal(t.children(()), [0, 1, 3])
    np.testing.assert_array_equal(t.children((1,)), [2])
    np.testing.assert_array_equal(t.children((1, 2)), [0, 1, 2])
    assert len(t.children((2,))) == 0 and len(t.children((1, 2, 0))) == 0
    assert t.is_valid_prefix((1, 2)) and t.is_valid_prefix((0, 0, 1)) and not t.is_valid_prefix((2,))
    assert set(t.prefix_children()) == {(), (0,), (1,), (3,), (0, 0), (1, 2), (3, 1)}
    np.testing.assert_array_equal(t.token_offsets, [0, 4, 7])
    assert t.vocab_size == 10 and t.tokens()[3].tolist() == [1, 6, 9]
    with pytest.raises(IndexError):
        t.id_of(6)


def test_table_save_load_round_trip(tmp_path):
    t = SemanticIdTable.from_codes(CODES, [4, 3], item_ids=list("abcdef"), config={"method": "rq_kmeans", "seed": 3})
    t2 = SemanticIdTable.load(t.save(tmp_path / "ids.json"))
    assert t2 == t and t2.config == {"method": "rq_kmeans", "seed": 3} and t2.item_of((0, 0, 1)) == 4
    (tmp_path / "bad.json").write_text('{"format": "other"}')
    with pytest.raises(ValueError, match="not a genrec semantic-ID table"):
        SemanticIdTable.load(tmp_path / "bad.json")
    # the right format, damaged content: an error naming the file (a KeyError / NumPy's shape error before)
    import json

    from genrec.errors import CheckpointError

    saved = json.loads((tmp_path / "ids.json").read_text())
    def fractional(d):  # 1.7 became code 1 silently
        d["codes"][0][0] += 0.7

    for name, edit in (("nocodes", lambda d: d.pop("codes")), ("ragged", lambda d: d["codes"][0].pop()),
                       ("fractional", fractional)):
        d = json.loads(json.dumps(saved))
        edit(d)
        (tmp_path / f"{name}.json").write_text(json.dumps(d))
        with pytest.raises(CheckpointError, match=rf"{name}.json: a damaged semantic-ID table"):
            SemanticIdTable.load(tmp_path / f"{name}.json")
    flat = SemanticIdTable(CODES[:2] * 0 + np.array([[0, 1], [1, 0]]), [2, 2], disambiguated=False)
    assert SemanticIdTable.load(flat.save(tmp_path / "flat.json")) == flat
    assert SemanticIdTable(flat.codes, [2, 2]) != flat  # the flag counts


def test_table_rejects_duplicate_or_out_of_range_ids():
    with pytest.raises(ValueError, match="'b'.*'d'|share"):
        SemanticIdTable(np.array([[0, 1], [1, 1], [0, 0], [1, 1]]), [2, 2], item_ids=list("abcd"))
    with pytest.raises(ValueError, match="exceeds codebook"):
        SemanticIdTable(np.array([[0, 5]]), [2, 2])
    with pytest.raises(ValueError, match="negative"):
        SemanticIdTable.from_codes(np.array([[0, -1]]))
    with pytest.raises(ValueError, match="integer"):
        SemanticIdTable.from_codes(np.array([[0.5, 1.0]]))
    # the id count is checked before any message names an item (an IndexError); a repeated id refused
    with pytest.raises(ValueError, match="1 item ids for 2 IDs"):
        SemanticIdTable(np.array([[0, 0], [0, 5]]), [2, 2], item_ids=["a"])
    with pytest.raises(ValueError, match="item id 'a' appears more than once"):
        SemanticIdTable(np.array([[0, 0], [1, 0]]), [2, 2], item_ids=["a", "a"])


def test_extend_keeps_existing_ids_and_continues_groups():
    t = SemanticIdTable.from_codes(CODES, [4, 3], item_ids=list("abcdef"))
    t2 = t.extend(np.array([[1, 2], [2, 2], [2, 2]]), item_ids=["g", "h", "i"])
    np.testing.assert_array_equal(t2.codes[:6], t.codes)
    assert t2.id_of(6) == (1, 2, 3) and t2.id_of(7) == (2, 2, 0) and t2.id_of(8) == (2, 2, 1)
    assert t2.codebook_sizes == (4, 3, 4)
    with pytest.raises(ValueError, match="new and distinct"):
        t.extend(np.array([[0, 0]]), item_ids=["a"])
    # only the disambiguation level grows: a code beyond the quantizer's codebook is refused (it grew it)
    with pytest.raises(ValueError, match=r"new item 'z': codes \[7, 1\] exceed the quantizer's codebook sizes \[4, 3\]"):
        t.extend(np.array([[7, 1]]), item_ids=["z"])


def test_collision_and_codebook_statistics():
    c = collision_stats(CODES)
    assert c == {"items": 6, "unique_tuples": 3, "colliding_items": 5, "colliding_share": 5 / 6,
                 "collision_groups": 2, "largest_group": 3}
    usage = codebook_usage(np.array([[0, 0], [1, 0], [2, 0], [3, 0]]), [4, 2])
    assert usage[0]["used"] == 4 and math.isclose(usage[0]["perplexity"], 4.0)
    assert usage[1]["used"] == 1 and usage[1]["utilisation"] == 0.5 and math.isclose(usage[1]["perplexity"], 1.0)


def test_extend_continues_after_the_largest_suffix_of_a_group():
    """A table whose group is not numbered 0..g-1 (loaded, or made by hand): the group's size was taken
    as the next suffix, which another item already had."""
    t = SemanticIdTable(np.array([[0, 1], [0, 2], [1, 0]]), [2, 3], ["a", "b", "c"])
    ext = t.extend(np.array([[0], [0], [1]]), ["d", "e", "f"])
    assert ext.codes[3:].tolist() == [[0, 3], [0, 4], [1, 1]]
    assert ext.codes[:3].tolist() == t.codes.tolist() and ext.codebook_sizes == (2, 5)


def test_extend_names_the_duplicate_ids_and_ids_must_not_be_one_string():
    t = SemanticIdTable.from_codes(np.array([[0], [1]]), [2], ["a", "b"])
    with pytest.raises(ValueError, match=r"2 already in the table or given twice: 'b', 'x'$"):
        t.extend(np.zeros((7, 1), np.int64), ["c", "d", "b", "e", "x", "x", "f"])  # it listed 'c', 'd', 'b', 'e', 'x'
    with pytest.raises(TypeError, match="item_ids must be a list of ids, not a single string"):
        t.extend(np.zeros((1, 1), np.int64), "c")  # accepted as the id 'c' by luck of its length
    with pytest.raises(TypeError, match="item_ids must be a list of ids, not a single string"):
        SemanticIdTable.from_codes(np.array([[0], [1]]), [2], "ab")  # the ids 'a' and 'b'
    with pytest.raises(ValueError, match="1 item ids for 2 new codes"):
        t.extend(np.array([[0], [5]]), ["c"])
