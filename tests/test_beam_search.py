import numpy as np
import pytest
import torch

from genrec.beam_search import beam_search, score_candidates
from genrec.generative import GenerativeConfig, HierarchicalGenerative
from genrec.splits import Instances
from genrec.tiger import FIRST_CODE, TigerConfig, TigerModel, hf_generate
from genrec.trie import PrefixTrie, trie_of
from quantize.semantic_ids import SemanticIdTable

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def table() -> SemanticIdTable:
    """60 items, 2 quantizer levels of 5 codes (collisions, so a 3rd disambiguation level)."""
    rng = np.random.default_rng(0)
    return SemanticIdTable.from_codes(rng.integers(0, 5, size=(60, 2)), [5, 5])


@pytest.fixture(scope="module")
def histories() -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    return [rng.integers(0, 60, size=rng.integers(1, 9)) for _ in range(9)]


def tiny_hierarchical(table, constrained: bool = True) -> HierarchicalGenerative:
    torch.manual_seed(0)
    config = GenerativeConfig(hidden=16, num_heads=2, num_blocks=1, head_layers=1, max_len=10,
                              constrained_softmax=constrained)
    return HierarchicalGenerative(table.codes, table.codebook_sizes, config).eval()


def tiny_tiger(table) -> TigerModel:
    torch.manual_seed(0)
    config = TigerConfig(d_model=16, d_ff=32, num_heads=2, d_kv=8, num_encoder_layers=2, num_decoder_layers=2,
                         user_buckets=7)
    return TigerModel(table.codes, table.codebook_sizes, config).eval()


@torch.no_grad()
def brute_force_hierarchical(model: HierarchicalGenerative, histories) -> np.ndarray:
    """log p(item) for every item, teacher-forced through the training path (code_loss's layout)."""
    h = model.start(histories)  # [N, H]
    tok = model.item_tokens[1:]  # [n, L]
    n, L = tok.shape
    prefix = tok[:, None, :].expand(n, L, L).tril(-1)
    out = np.zeros((len(histories), n))
    for u in range(len(histories)):
        z = model.head(h[u].expand(n, 1, -1), prefix, torch.arange(L))  # [n, L, H]
        lp = 0
        for lvl in range(L):
            logits = model.level_logits(z[:, lvl], lvl)
            if model.config.constrained_softmax:  # normalised over the prefix's valid children only
                logits = logits.masked_fill(~model.trie.valid_mask(lvl, model.trie.item_nodes[lvl]), -torch.inf)
            lp = lp + torch.log_softmax(logits, -1).gather(1, tok[:, lvl:lvl + 1] - 1 - model.offsets[lvl])[:, 0]
        out[u] = lp.numpy()
    return out


@torch.no_grad()
def brute_force_tiger(model: TigerModel, histories, users) -> np.ndarray:
    """log p(item) for every item from one full teacher-forced T5 forward (no cache)."""
    labels = model.item_tokens[1:]  # [n, L]
    out = np.zeros((len(histories), len(labels)))
    for u in range(len(histories)):
        ids, mask = model.encoder_inputs([histories[u]], users[u:u + 1])
        logits = model.t5(input_ids=ids.expand(len(labels), -1), attention_mask=mask.expand(len(labels), -1),
                          labels=labels, use_cache=False).logits
        out[u] = torch.log_softmax(logits, -1).gather(2, labels[..., None])[..., 0].sum(1).numpy()
    return out


def test_trie_matches_table(table):
    trie = PrefixTrie.from_table(table)
    assert trie.num_levels == table.num_levels == 3
    for prefix, kids in table.prefix_children().items():
        node = trie.walk(prefix)
        assert node >= 0
        mask = trie.valid_mask(len(prefix), torch.tensor([node]))[0]
        np.testing.assert_array_equal(torch.nonzero(mask)[:, 0].numpy(), kids)
    for item in range(table.num_items):
        assert trie.walk(table.id_of(item)) == item
        assert trie.child[-1][trie.item_nodes[-1, item], table.codes[item, -1]] == item
    invalid = [p for p in [(a, b) for a in range(5) for b in range(5)] if not table.is_valid_prefix(p)]
    assert invalid and all(trie.walk(p) == -1 for p in invalid)
    assert trie.walk((9,)) == -1
    assert trie.walk((*table.id_of(0), 0)) == -1  # longer than a semantic ID (was an IndexError)


def test_trie_rejects_duplicate_ids():
    with pytest.raises(ValueError, match="two items share a semantic ID"):
        PrefixTrie(np.array([[0, 1], [0, 1]]))


@pytest.mark.parametrize("kind", ["hierarchical", "hierarchical-full-softmax", "tiger"])
def test_wide_beam_is_exact_top_k(table, histories, kind):
    users = np.arange(len(histories))
    model = tiny_tiger(table) if kind == "tiger" else tiny_hierarchical(table, kind == "hierarchical")
    brute = brute_force_hierarchical(model, histories) if kind != "tiger" else \
        brute_force_tiger(model, histories, users)
    if kind == "hierarchical":  # the constrained softmax is a distribution over the catalogue
        np.testing.assert_allclose(np.exp(brute).sum(1), 1.0, rtol=1e-5)
    trie = PrefixTrie.from_table(table)
    result = beam_search(model, trie, histories, beam_size=table.num_items, top_k=15, users=users, batch_size=4)
    expected = np.argsort(-brute, axis=1, kind="stable")[:, :15]
    np.testing.assert_array_equal(result.items, expected)
    np.testing.assert_allclose(result.log_probs, np.take_along_axis(brute, expected, 1), atol=1e-5)
    np.testing.assert_array_equal(result.codes, table.codes[result.items])
    assert (np.diff(result.log_probs, axis=1) <= 0).all()


@pytest.mark.parametrize("kind", ["hierarchical", "hierarchical-full-softmax", "tiger"])
def test_narrow_beam_valid_and_scores_match(table, histories, kind):
    users = np.arange(len(histories))
    model = tiny_tiger(table) if kind == "tiger" else tiny_hierarchical(table, kind == "hierarchical")
    trie = PrefixTrie.from_table(table)
    result = beam_search(model, trie, histories, beam_size=4, users=users)
    assert (result.items >= 0).all() and (result.items < table.num_items).all()  # never an invalid ID
    assert all(len(set(row)) == len(row) for row in result.items.tolist())
    scored = score_candidates(model, trie, histories, result.items, users=users, batch_size=5)
    np.testing.assert_allclose(scored, result.log_probs, atol=1e-5)
    # arbitrary candidates, with padding
    cand = np.array([[3, 59, -1, 0]] * len(histories))
    s = score_candidates(model, trie, histories, cand, users=users)
    assert np.isneginf(s[:, 2]).all() and np.isfinite(s[:, [0, 1, 3]]).all() and (s[:, [0, 1, 3]] < 0).all()
    # mostly padding, scattered differently per row: same scores as the dense request, padding -inf
    rng = np.random.default_rng(0)
    dense = rng.integers(0, table.num_items, size=(len(histories), 12))
    sparse = np.where(rng.random(dense.shape) < 0.7, -1, dense)
    sparse[0] = -1  # a row with nothing to score
    s_dense = score_candidates(model, trie, histories, dense, users=users, batch_size=4)
    s_sparse = score_candidates(model, trie, histories, sparse, users=users, batch_size=4)
    np.testing.assert_allclose(s_sparse[sparse >= 0], s_dense[sparse >= 0], atol=1e-5)
    assert np.isneginf(s_sparse[sparse < 0]).all()
    # a model left in training mode (dropout) scores as in eval mode, and stays in training mode
    model.train()
    again = score_candidates(model, trie, histories, result.items, users=users, batch_size=5)
    assert model.training
    np.testing.assert_allclose(again, result.log_probs, atol=1e-5)
    assert score_candidates(model, trie, histories, np.zeros((len(histories), 0), np.int64)).shape == (len(histories), 0)


def test_beam_wider_than_catalogue_pads():
    table = SemanticIdTable.from_codes(np.array([[0, 1], [1, 0], [1, 1]]), [2, 2])
    model = tiny_hierarchical(table)
    result = beam_search(model, PrefixTrie.from_table(table), [np.array([0, 1])], beam_size=5)
    assert sorted(result.items[0, :3].tolist()) == [0, 1, 2]
    assert (result.items[0, 3:] == -1).all() and np.isneginf(result.log_probs[0, 3:]).all()


def test_matches_hf_generate(table, histories):
    model = tiny_tiger(table)
    inst = Instances(users=np.arange(len(histories)), histories=histories, targets=np.zeros(len(histories), int))
    items, scores = hf_generate(model, inst, num_beams=6)
    ours = beam_search(model, PrefixTrie.from_table(table), histories, beam_size=6, users=inst.users)
    np.testing.assert_array_equal(items, ours.items)
    np.testing.assert_allclose(scores, ours.log_probs, atol=1e-5)
    assert FIRST_CODE == 2
    model.train()  # left as it came (it was left in eval mode)
    hf_generate(model, inst, num_beams=2)
    assert model.training
    with pytest.raises(ValueError, match="num_beams .* exceeds the catalogue"):  # duplicates and -1e9 scores
        hf_generate(model.eval(), inst, num_beams=model.num_items + 1)


def test_tiger_packed_encoder_matches_transformers(table, histories):
    """The decoding path's own encoder (matrix products on real tokens only) equals T5's encoder."""
    model = tiny_tiger(table)
    users = np.arange(len(histories))
    ids, mask = model.encoder_inputs(histories, users)
    assert (~mask).any()  # histories of different lengths: padding is exercised
    with torch.no_grad():
        ours = model._encode(ids, mask, model._decoding_weights())  # [T, D]
        ref = model.t5.encoder(input_ids=ids, attention_mask=mask).last_hidden_state[mask]  # [T, D]
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["hierarchical", "tiger"])
def test_a_shared_first_level_changes_neither_the_beam_nor_the_scores(table, histories, kind):
    """decode computes level 0 once for the beam and the candidates (``first``): the same results as
    each computing its own."""
    from genrec.beam_search import beam_from_context, first_level, score_from_context
    from genrec.trie import PrefixTrie as Trie

    model = tiny_hierarchical(table) if kind == "hierarchical" else tiny_tiger(table)
    trie = Trie(table.codes, table.codebook_sizes)
    with torch.no_grad():
        context = model.start(histories, np.arange(len(histories)) if kind == "tiger" else None)
        first = first_level(model, context, len(histories))
        for a, b in zip(beam_from_context(model, trie, context, len(histories), 5),
                        beam_from_context(model, trie, context, len(histories), 5, first)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
        cands = np.random.default_rng(0).integers(-1, len(table.codes), size=(len(histories), 6))
        np.testing.assert_array_equal(score_from_context(model, trie, context, cands),
                                      score_from_context(model, trie, context, cands, first))


def test_a_nan_log_probability_never_takes_a_beam_slot():
    """A NaN score (broken weights) is left out instead of displacing valid items: torch.topk ranks
    NaN first, and the row would come back short."""
    from genrec.beam_search import beam_from_context

    trie = PrefixTrie(np.array([[0, 0], [0, 1], [1, 0], [1, 1]]), [2, 2])

    class Fixed:  # a decoder whose level-1 distribution after code 1 is NaN
        def step(self, context, codes, cache):
            n, k, level = codes.shape
            logp = torch.full((n, k, 2), float(np.log(0.5)))
            if level == 1:
                logp[codes[:, :, 0] == 1] = float("nan")
            return logp, None

        def reorder(self, cache, index):
            return None

        def parameters(self):
            return iter([torch.zeros(1)])

    items, scores, _ = beam_from_context(Fixed(), trie, None, 1, beam_size=2)
    assert sorted(items[0].tolist()) == [0, 1] and torch.isfinite(scores).all()


def test_beam_search_decodes_in_eval_mode_without_a_graph(table, histories):
    """The public entry point: dropout off (the same answer twice from a model left in training
    mode), no autograd graph kept, and the model handed back in the mode it came in."""
    model = tiny_hierarchical(table).train()  # dropout 0.3 when training
    first = beam_search(model, trie_of(model), histories, beam_size=5)
    second = beam_search(model, trie_of(model), histories, beam_size=5)
    np.testing.assert_array_equal(first.items, second.items)
    assert model.training
    model.eval()
    np.testing.assert_array_equal(beam_search(model, trie_of(model), histories, beam_size=5).items, first.items)
    tiger = tiny_tiger(table).train()
    with torch.enable_grad():
        context = tiger.start([histories[0]], None)
    assert any(t.requires_grad for t in _tensors(context))  # what the decorator now prevents
    beam_search(tiger, trie_of(tiger), histories, beam_size=5)
    with pytest.raises(ValueError, match="need 1 <= top_k <= num_beams, got top_k=6, num_beams=5"):
        hf_generate(tiger.eval(), histories, num_beams=5, top_k=6)


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors(v)


def test_tiger_refuses_a_table_of_another_dataset(table):
    from genrec.errors import DataFormatError
    from genrec.splits import leave_one_out
    from genrec.synthetic import cyclic_dataset
    from genrec.tiger import train_tiger

    split = leave_one_out(cyclic_dataset(num_items=50, num_users=20, length=5))
    with pytest.raises(DataFormatError, match="semantic-ID table has 60 items but the dataset has 50"):
        train_tiger(split, table, TigerConfig(max_epochs=1))
