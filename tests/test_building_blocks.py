"""The shared building blocks: token conversion and padding conventions (genrec.batching), the
attention mask (genrec.layers), the prefix trie (genrec.trie) and the cache path (genrec.paths)."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from genrec.batching import check_histories, histories_to_tokens, seen_tokens, training_batches
from genrec.layers import attention_mask
from genrec.trie import PrefixTrie, trie_of


def test_item_k_is_token_k_plus_1_left_padded_with_0():
    tokens = histories_to_tokens([np.array([0, 5]), np.array([3]), np.array([], dtype=np.int64)], max_len=4)
    assert tokens.dtype == torch.int64
    np.testing.assert_array_equal(tokens.numpy(), [[1, 6], [0, 4], [0, 0]])  # width = longest history
    # a history longer than max_len keeps its most recent items, still right-aligned
    np.testing.assert_array_equal(histories_to_tokens([np.arange(6)], max_len=3).numpy(), [[4, 5, 6]])
    # all-empty histories still give one (padding) column
    assert histories_to_tokens([np.array([], dtype=np.int64)], max_len=3).shape == (1, 1)


def test_training_batches_shift_targets_and_pad_with_0():
    config = SimpleNamespace(max_len=3, batch_size=8)
    batches = list(training_batches([np.array([0, 1, 2, 3, 4]), np.array([7, 8]), np.array([9])],
                                    config, np.random.default_rng(0)))
    assert len(batches) == 1  # the one-item sequence has no target
    inputs, targets = batches[0]
    rows = {(tuple(i), tuple(t)) for i, t in zip(inputs.numpy().tolist(), targets.numpy().tolist())}
    assert rows == {((2, 3, 4), (3, 4, 5)), ((0, 0, 8), (0, 0, 9))}


def test_seen_tokens_keep_positions_up_to_and_including_t():
    tokens = torch.tensor([[0, 3, 4, 5], [6, 7, 8, 9]])
    seen = seen_tokens(tokens, torch.tensor([0, 1, 1]), torch.tensor([2, 0, 3]))
    np.testing.assert_array_equal(seen.numpy(), [[0, 3, 4, 0], [6, 0, 0, 0], [6, 7, 8, 9]])


def test_check_histories_refuses_padding_inside_histories():
    check_histories([np.array([0, 4]), np.array([], dtype=np.int64)], num_items=5)
    with pytest.raises(ValueError, match="history 1 holds item index -1"):
        check_histories([np.array([0]), np.array([2, -1])], num_items=5)
    with pytest.raises(ValueError, match="history 0 is empty"):
        check_histories([np.array([], dtype=np.int64)], num_items=5, min_length=1)
    # non-integer items were truncated silently (1.7 read as item 1); an empty float array is no item
    for bad in (np.array([1.7, 2.0]), np.array([True, False])):
        with pytest.raises(ValueError, match="history 1 holds (float64|bool) values"):
            check_histories([np.array([0]), bad], num_items=5)
    check_histories([np.array([]), np.array([1, 2])], num_items=5)


def test_histories_may_be_lists():
    """A list history was a TypeError in the decoders (``list + 1``)."""
    np.testing.assert_array_equal(histories_to_tokens([[0, 5], [3]], max_len=4).numpy(), [[1, 6], [0, 4]])


def test_a_history_holding_every_item_keeps_a_distribution():
    """The repeat mixture summed to r when no unseen item was left for the explore share."""
    from genrec.generative import repeat_mixture

    log_p = torch.log_softmax(torch.randn(2, 5, generator=torch.Generator().manual_seed(0)), -1)
    in_history = torch.tensor([[True] * 5, [True, True, False, False, False]])
    log_p_history = torch.logsumexp(log_p.masked_fill(~in_history, -torch.inf), -1)
    mixed = repeat_mixture(log_p, in_history, torch.tensor([-1.0, -1.0]), log_p_history)
    torch.testing.assert_close(mixed.exp().sum(-1), torch.ones(2), atol=1e-5, rtol=0)


def test_attention_mask_is_causal_over_real_items_plus_the_diagonal():
    pad = torch.tensor([[True, False, False], [False, False, False]])
    allowed = attention_mask(pad)
    assert allowed.shape == (2, 1, 3, 3) and allowed.dtype == torch.bool
    np.testing.assert_array_equal(allowed[0, 0].numpy(), [[1, 0, 0], [0, 1, 0], [0, 1, 1]])
    np.testing.assert_array_equal(allowed[1, 0].numpy(), np.tril(np.ones((3, 3))))


def reference_prefix_children(codes: np.ndarray) -> dict:
    """The map-building loop SemanticIdTable used before the shared trie."""
    children: dict = {}
    for row in map(tuple, codes.tolist()):
        for depth in range(codes.shape[1]):
            children.setdefault(row[:depth], set()).add(row[depth])
    return {p: np.array(sorted(s), dtype=np.int64) for p, s in children.items()}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_prefix_children_match_the_reference_in_content_and_order(seed):
    from quantize.semantic_ids import SemanticIdTable

    rng = np.random.default_rng(seed)
    table = SemanticIdTable.from_codes(rng.integers(0, 4, size=(80, 3)), [4, 5, 4])
    expected = reference_prefix_children(table.codes)
    got = PrefixTrie.from_table(table).prefix_children()
    assert list(got) == list(expected)
    for key in expected:
        assert got[key].dtype == np.int64
        np.testing.assert_array_equal(got[key], expected[key])
    assert list(table.prefix_children()) == list(expected)


def test_trie_of_uses_the_models_trie_or_builds_and_caches_one():
    codes = np.array([[0, 0], [0, 1], [2, 0]])
    own = PrefixTrie(codes)
    assert trie_of(SimpleNamespace(trie=own)) is own
    model = torch.nn.Module()
    model.codes, model.codebook_sizes = codes, (3, 2)
    trie = trie_of(model)
    assert trie is trie_of(model) and trie.walk((2, 0)) == 2
    assert list(model.state_dict()) == [] and not list(model.children())  # cached as a plain attribute


def test_shared_names_are_one_object():
    import genrec.amazon
    import genrec.beam_search
    import genrec.datasets
    import genrec.paths

    assert genrec.beam_search.PrefixTrie is PrefixTrie
    assert genrec.datasets.default_cache_dir is genrec.paths.default_cache_dir
    assert genrec.amazon.default_cache_dir is genrec.paths.default_cache_dir
