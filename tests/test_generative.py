import json

import logging

import numpy as np
import pytest
import torch

from genrec.generative import (GenerativeConfig, evaluate, load_generative, recommend, save_generative, score_items,
                               train_generative)
from genrec.splits import leave_one_out
from genrec.synthetic import cyclic_dataset
from genrec.tiger import TigerConfig, load_tiger, train_tiger
from quantize.semantic_ids import SemanticIdTable

torch.set_num_threads(1)


def cyclic_table(num_items=24) -> SemanticIdTable:
    """Codes (i // 6, i % 3): collisions, so the disambiguation level matters too."""
    i = np.arange(num_items)
    return SemanticIdTable.from_codes(np.stack([i // 6, i % 3], 1), [4, 3])


# the default hybrid input, without its ID dropout: a regulariser with nothing to regularise on 24
# cyclic items that only slows the tiny model down (it has a test of its own)
SMALL = dict(hidden=32, num_blocks=1, num_heads=2, head_layers=1, dropout=0.0, head_dropout=0.0, lr=5e-3,
             batch_size=32, max_len=10, eval_beam=10, num_threads=1, item_embedding_dropout=0.0)


@pytest.fixture(scope="module")
def split():
    return leave_one_out(cyclic_dataset(num_items=24, num_users=150), max_history=10)


@pytest.fixture(scope="module")
def trained(split):
    return train_generative(split, cyclic_table(), GenerativeConfig(**SMALL, max_epochs=25, patience=5),
                            progress=False)


def test_learns_deterministic_pattern(split, trained):
    test = evaluate(trained.model, split.test, beam_size=10)
    assert test["recall@5"] == 1.0
    assert test["ndcg@5"] > 0.9
    assert test["invalid_rate"] == 0.0
    assert trained.best_valid["ndcg@10"] == max(r["ndcg@10"] for r in trained.history)
    top = recommend(trained.model, split.test, beam_size=5)
    expected = (split.test.last_items() + 1) % split.num_items
    assert (top.items[:, 0] == expected).mean() > 0.95
    np.testing.assert_allclose(score_items(trained.model, split.test, top.items), top.log_probs, atol=1e-5)


def test_the_semantic_preset_reads_items_through_their_codes_only(trained):
    from genrec.generative import HierarchicalGenerative, preset_config

    # preset "semantic" has no per-item table, so it reads unseen code combinations like known ones;
    # the default (hybrid) model adds one
    table = cyclic_table()
    semantic = HierarchicalGenerative(table.codes, table.codebook_sizes, preset_config("semantic", **SMALL))
    assert not any(n.startswith("item_emb") for n, _ in semantic.named_parameters())
    assert any(n.startswith("item_emb") for n, _ in trained.model.named_parameters())


def test_save_load_round_trip(tmp_path, split, trained):
    save_generative(trained.model, tmp_path / "m.pt")
    loaded = load_generative(tmp_path / "m.pt")
    a = recommend(trained.model, split.test, beam_size=8)
    b = recommend(loaded, split.test, beam_size=8)
    np.testing.assert_array_equal(a.items, b.items)
    np.testing.assert_allclose(a.log_probs, b.log_probs)
    np.testing.assert_array_equal(loaded.codes, cyclic_table().codes)


def test_resume_after_kill_is_exact(tmp_path, split, caplog):
    # the cosine horizon is pinned (schedule_epochs), so stopping at max_epochs=2 stands in for a kill
    kw = {**SMALL, "dropout": 0.2, "schedule_epochs": 4, "eval_every": 1, "patience": 10}
    config = GenerativeConfig(**kw, max_epochs=4)
    straight = train_generative(split, cyclic_table(), config, out_dir=tmp_path / "a", progress=False)
    train_generative(split, cyclic_table(), GenerativeConfig(**kw, max_epochs=2),
                     out_dir=tmp_path / "b", progress=False)  # "killed" after two epochs
    with caplog.at_level(logging.INFO, logger="genrec.training"):
        resumed = train_generative(split, cyclic_table(), config, out_dir=tmp_path / "b", progress=False)
    assert f"resumed generative from {tmp_path / 'b' / 'last.pt'} at epoch 2" in caplog.text  # not a restart
    assert [r["train_loss"] for r in straight.history] == [r["train_loss"] for r in resumed.history]
    for (k, v), (_, w) in zip(straight.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(v, w), k
    assert (tmp_path / "b" / "best.pt").exists()
    loaded = load_generative(tmp_path / "b")
    np.testing.assert_array_equal(recommend(loaded, split.test, 5).items, recommend(resumed.model, split.test, 5).items)
    with pytest.raises(ValueError, match="differs"):
        train_generative(split, cyclic_table(), GenerativeConfig(**{**SMALL, "hidden": 16}), out_dir=tmp_path / "b",
                         progress=False)


def test_hybrid_item_embedding_mode(split):
    result = train_generative(split, cyclic_table(), GenerativeConfig(**SMALL, item_embedding=True, max_epochs=2),
                              progress=False)
    assert evaluate(result.model, split.test, beam_size=5)["invalid_rate"] == 0.0


def test_table_size_mismatch(split):
    with pytest.raises(ValueError, match="items"):
        train_generative(split, cyclic_table(10), GenerativeConfig(**SMALL))


def test_tiger_preset_trains_and_round_trips(tmp_path, split):
    config = TigerConfig(d_model=32, d_ff=64, num_heads=2, d_kv=16, num_encoder_layers=1, num_decoder_layers=1,
                         dropout=0.0, user_buckets=0, lr=5e-3, batch_size=64, max_epochs=6, eval_beam=10,
                         num_threads=1)
    result = train_tiger(split, cyclic_table(), config, out_dir=tmp_path, progress=False)
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    test = evaluate(result.model, split.test, beam_size=10)
    assert test["invalid_rate"] == 0.0 and test["recall@10"] > 0.5
    loaded = load_tiger(tmp_path)
    np.testing.assert_array_equal(recommend(loaded, split.test, 5).items, recommend(result.model, split.test, 5).items)


def test_cli(tmp_path):
    from genrec.cli import main
    from genrec.data import write_plain

    write_plain(cyclic_dataset(num_items=24, num_users=60), tmp_path / "data")
    cyclic_table().save(tmp_path / "sid" / "semantic_ids.json")
    out = tmp_path / "run"
    rc = main(["generative", str(tmp_path / "data"), "--semantic-ids", str(tmp_path / "sid"),
               "--out", str(out), "--set", "hidden=16", "num_heads=1", "max_epochs=2", "eval_beam=5",
               "--test-beam", "5"])
    assert rc == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test"]["invalid_rate"] == 0.0 and "ndcg@5" in metrics["test"]
    assert "recall@10" not in metrics["test"]  # a 5-item beam has no recall@10 (it read as recall@5)
    assert (out / "best.pt").exists()
    # a table of other items (same count) is refused: each item would train on another's codes
    t = cyclic_table()
    SemanticIdTable(t.codes, t.codebook_sizes, [f"x{k}" for k in range(t.num_items)]).save(
        tmp_path / "other" / "semantic_ids.json")
    assert main(["generative", str(tmp_path / "data"), "--semantic-ids", str(tmp_path / "other"), "--out",
                 str(tmp_path / "run2"), "--set", "max_epochs=1"]) == 2


def test_repeat_gate_is_a_distribution_over_the_catalogue(split, trained):
    model = trained.model
    assert model.repeat_head is not None  # on by default
    all_items = np.tile(np.arange(split.num_items), (len(split.test), 1))
    log_p = score_items(model, split.test, all_items)
    np.testing.assert_allclose(np.exp(log_p.astype(np.float64)).sum(1), 1.0, atol=1e-4)


def test_one_decoding_pass_gives_what_the_beam_and_the_scoring_give_alone(split, trained):
    """decode scores the history items (repeat gate) and the candidates in one teacher-forced pass and
    shares level 0 with the beam: the same numbers as recommend and score_items, which do each alone."""
    from genrec.generative import decode

    model = trained.model
    cands = np.random.default_rng(0).integers(-1, split.num_items, size=(len(split.test), 7))
    cands[:, 0] = [h[-1] for h in split.test.histories]  # a history item: the repeat mixture's other branch
    beam, scores = decode(model, split.test, beam_size=6, candidates=cands, batch_size=5)
    alone = recommend(model, split.test, beam_size=6, batch_size=5)
    np.testing.assert_array_equal(beam.items, alone.items)
    np.testing.assert_array_equal(beam.log_probs, alone.log_probs)
    np.testing.assert_array_equal(scores, score_items(model, split.test, cands, batch_size=5))
    found = beam.items >= 0  # the beam's items scored by teacher forcing: their beam log-probs
    np.testing.assert_allclose(score_items(model, split.test, np.where(found, beam.items, -1))[found],
                               beam.log_probs[found], rtol=1e-5, atol=1e-5)


def test_repeat_gate_learns_that_walks_never_repeat(split, trained):
    # cyclic walks of length 8 over 24 items never revisit an item: the gate must learn r ~ 0
    model = trained.model
    r = torch.sigmoid(model.repeat_head(model.start(split.test.histories))[:, 0]).detach().numpy()
    assert r.max() < 0.05
    all_items = np.tile(np.arange(split.num_items), (len(split.test), 1))
    p = np.exp(score_items(model, split.test, all_items).astype(np.float64))
    seen = np.array([np.isin(np.arange(split.num_items), h) for h in split.test.histories])
    np.testing.assert_allclose((p * seen).sum(1), r, rtol=1e-3, atol=1e-6)  # history items share mass r
    top = recommend(model, split.test, beam_size=10)
    assert not any(np.isin(items[0], h) for items, h in zip(top.items, split.test.histories))


def test_a_repeating_users_history_items_are_returned_even_outside_the_code_level_beam(split, trained):
    """With the gate forced to "repeat", history items outside the code-level beam belong in the top-k:
    the beam's answer is the exact top-k of scoring the whole catalogue."""
    import copy

    model = copy.deepcopy(trained.model)
    with torch.no_grad():
        model.repeat_head.weight.zero_()
        model.repeat_head.bias.fill_(8.0)  # r = sigmoid(8) for every history
    all_items = np.tile(np.arange(split.num_items), (len(split.test), 1))
    scores = score_items(model, split.test, all_items)
    top = recommend(model, split.test, beam_size=10)
    want = np.argsort(-scores, axis=1, kind="stable")[:, :10]
    for j in range(len(split.test)):
        np.testing.assert_array_equal(np.sort(top.items[j]), np.sort(want[j]))
        np.testing.assert_allclose(top.log_probs[j], scores[j, top.items[j]], rtol=1e-5, atol=1e-5)


def test_a_history_item_scored_nan_leaves_the_beam_finite(split, trained):
    """Codes whose scores are NaN are kept out of the beam; the repeat gate's sum over the history items
    took a NaN history item in and made the whole row NaN (every score, in arbitrary order)."""
    import copy

    model = copy.deepcopy(trained.model)
    with torch.no_grad():
        model.head.prefix_emb.weight[1] = float("nan")  # level-0 code 0 as a prefix: its items' scores are NaN
    first = trained.model.item_tokens[1:, 0].numpy() == 1  # items whose first code is 0 (token 1)
    hist = [np.array([int(np.flatnonzero(first)[0])]), np.array([int(np.flatnonzero(~first)[0])])]
    top = recommend(model, hist, beam_size=5)
    assert np.isfinite(top.log_probs).all() and not first[top.items].any()
    assert (np.diff(top.log_probs, axis=1) <= 0).all()


def test_a_repeat_mixture_score_does_not_depend_on_the_other_candidates_of_its_row():
    """Whether the history is the whole catalogue (r = 1) was read from the scored columns: a row whose
    candidates were all history items got r = 1 (an item alone scored higher than beside an unseen one),
    and a history holding every item, scored with padding columns, kept its r < 1."""
    from genrec.generative import HierarchicalGenerative

    torch.manual_seed(0)
    i = np.arange(6)
    model = HierarchicalGenerative(np.stack([i // 3, i % 3], 1), [2, 3],
                                   GenerativeConfig(hidden=16, num_blocks=1, head_layers=1, max_len=10)).eval()
    assert model.repeat_head is not None
    h = np.array([0, 1, 2])
    alone = score_items(model, [h], np.array([[2]]))[0, 0]
    beside = score_items(model, [h], np.array([[2, 4, 5, 2]]))[0]
    np.testing.assert_allclose([alone, alone], beside[[0, 3]], rtol=1e-6)
    # a history holding the whole catalogue: all its mass on repeats, with or without padding columns
    everything = np.array([5, 4, 3, 2, 1, 0])
    for cands in ([[0, 1, 2, 3, 4, 5]], [[0, 1, 2, 3, 4, 5, -1]], [[-1, 3, 0, 1, 2, 4, 5, -1]]):
        p = np.exp(score_items(model, [everything], np.array(cands)).astype(np.float64))
        np.testing.assert_allclose(p.sum(), 1.0, atol=1e-5)
    top = recommend(model, [everything], beam_size=6)
    np.testing.assert_allclose(np.exp(top.log_probs.astype(np.float64)).sum(), 1.0, atol=1e-5)


def test_repeat_gate_off_gives_the_plain_code_distribution(split):
    result = train_generative(split, cyclic_table(), GenerativeConfig(**SMALL, max_epochs=2, repeat_gate=False),
                              progress=False)
    assert result.model.repeat_head is None
    top = recommend(result.model, split.test, beam_size=5)
    np.testing.assert_allclose(score_items(result.model, split.test, top.items), top.log_probs, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# Bad histories and damaged checkpoints


def test_empty_history_is_a_value_error_naming_it(split, trained):
    from genrec.beam_search import beam_search, score_candidates

    model = trained.model
    expected = "history 1 is empty: HierarchicalGenerative needs at least one item in every history"
    with pytest.raises(ValueError, match=expected.replace("history 1", "history 0")):
        recommend(model, [[]])
    histories = [np.array([1, 2]), np.array([], dtype=np.int64), np.array([3])]
    with pytest.raises(ValueError, match=expected):
        recommend(model, histories, beam_size=5)
    with pytest.raises(ValueError, match=expected):
        score_items(model, histories, np.zeros((3, 2), dtype=np.int64))
    with pytest.raises(ValueError, match=expected):
        beam_search(model, model.trie, histories, beam_size=5)
    with pytest.raises(ValueError, match=expected):
        score_candidates(model, model.trie, histories, np.zeros((3, 2), dtype=np.int64))


@pytest.mark.parametrize("bad", [-1, 24])
def test_out_of_catalogue_history_items_are_rejected(split, trained, bad):
    import re

    histories = [np.array([bad, 2]), np.array([3])]
    expected = re.escape(f"history 0 holds item index {bad}, outside the catalogue's 0..23")
    with pytest.raises(ValueError, match=expected):
        recommend(trained.model, histories, beam_size=5)
    with pytest.raises(ValueError, match=expected):
        score_items(trained.model, histories, np.zeros((2, 2), dtype=np.int64))


def test_tiger_reads_an_empty_history_as_a_cold_start_but_not_bad_items():
    from genrec.tiger import TigerModel, hf_generate

    torch.manual_seed(0)
    table = cyclic_table()
    model = TigerModel(table.codes, table.codebook_sizes,
                       TigerConfig(d_model=16, d_ff=32, num_heads=2, d_kv=8, num_encoder_layers=1,
                                   num_decoder_layers=1, user_buckets=0)).eval()
    result = recommend(model, [[], np.array([1, 2])], beam_size=5)  # the encoder reads an EOS token alone
    assert (result.items >= 0).all() and np.isfinite(result.log_probs).all()
    with pytest.raises(ValueError, match="history 1 holds item index -1, outside the catalogue's 0..23"):
        recommend(model, [np.array([1]), np.array([2, -1])], beam_size=5)
    with pytest.raises(ValueError, match="history 0 holds item index 99"):
        hf_generate(model, [np.array([99])], num_beams=5)


def test_checkpoints_load_safely_and_damage_is_a_checkpoint_error(tmp_path, trained):
    from genrec.errors import CheckpointError

    save_generative(trained.model, tmp_path / "m.pt")
    ckpt = torch.load(tmp_path / "m.pt", weights_only=True)  # plain tensors, lists and numbers only
    assert ckpt["codes"].dtype == torch.int64
    data = (tmp_path / "m.pt").read_bytes()
    (tmp_path / "m.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=f"{tmp_path / 'm.pt'} is truncated or corrupt"):
        load_generative(tmp_path / "m.pt")
    with pytest.raises(CheckpointError, match=f"checkpoint {tmp_path / 'best.pt'} not found"):
        load_tiger(tmp_path)


def test_generative_resume_falls_back_to_the_previous_last_checkpoint(tmp_path, split, caplog):
    kw = {**SMALL, "schedule_epochs": 4, "eval_every": 1, "patience": 10}
    straight = train_generative(split, cyclic_table(), GenerativeConfig(**kw, max_epochs=4), progress=False)
    b = tmp_path / "b"
    train_generative(split, cyclic_table(), GenerativeConfig(**kw, max_epochs=3), out_dir=b, progress=False)
    np.testing.assert_array_equal(torch.load(b / "last.pt", weights_only=True)["codes"].numpy(), cyclic_table().codes)
    data = (b / "last.pt").read_bytes()
    (b / "last.pt").write_bytes(data[: len(data) // 2])
    with caplog.at_level(logging.INFO, logger="genrec.training"):
        resumed = train_generative(split, cyclic_table(), GenerativeConfig(**kw, max_epochs=4), out_dir=b,
                                   progress=False)
    assert f"resumed generative from {b / 'last.prev.pt'} at epoch 2" in caplog.text  # the fallback, not a restart
    assert [r["train_loss"] for r in straight.history] == [r["train_loss"] for r in resumed.history]
    for (k, v), (_, w) in zip(straight.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(v, w), k


def test_step_skips_the_head_only_where_the_answer_is_exactly_zero():
    """Prefixes with a single valid child get log-prob 0 without running the code head; every other
    row equals the full computation (head on every row, invalid codes masked, log-softmax)."""
    from genrec.generative import HierarchicalGenerative

    torch.manual_seed(0)
    # prefix (0,) has children {0, 1}; (1,) only {2}; (0, 0) two disambiguation codes, the rest one
    codes = np.array([[0, 0, 0], [0, 0, 1], [0, 1, 0], [1, 2, 0]])
    model = HierarchicalGenerative(codes, (2, 3, 2), GenerativeConfig(hidden=8, num_blocks=1, num_heads=1)).eval()
    context = torch.randn(2, 8)
    prefixes = torch.tensor([[[0, 0], [0, 1], [1, 2]], [[0, 1], [0, 0], [1, 2]]])  # [N=2, K=3, l=2]
    for lvl in (1, 2):
        p = prefixes[:, :, :lvl]
        got, _ = model.step(context, p, None)
        with torch.no_grad():
            prefix_tokens = p + torch.tensor(model.offsets[:lvl]) + 1
            logits = model.level_logits(model.head(context[:, None, :], prefix_tokens, lvl), lvl)
            nodes = torch.zeros(p.shape[:2], dtype=torch.long)
            for j in range(lvl):
                nodes = model.trie.child[j][nodes, p[:, :, j]]
            valid = model.trie.valid_mask(lvl, nodes)
            want = torch.log_softmax(logits.masked_fill(~valid, -torch.inf), -1)
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
        single = valid.sum(-1) == 1
        assert single.any() and (~single).any()  # both paths taken
        assert (got[single].exp().sum(-1) == 1).all() and (got[single][valid[single]] == 0).all()


def test_item_embedding_dropout_drops_whole_id_embeddings_in_training_only():
    from genrec.errors import ConfigError
    from genrec.generative import HierarchicalGenerative

    table = cyclic_table()
    kw = {**SMALL, "item_embedding": True}
    model = HierarchicalGenerative(table.codes, table.codebook_sizes,
                                   GenerativeConfig(**{**kw, "item_embedding_dropout": 0.999999}))
    plain = HierarchicalGenerative(table.codes, table.codebook_sizes, GenerativeConfig(**{**kw, "item_embedding_dropout": 0.0}))
    plain.load_state_dict(model.state_dict())
    tokens = torch.tensor([[0, 3, 5, 7], [2, 4, 6, 8]])
    with torch.no_grad():
        model.eval(), plain.eval()
        torch.testing.assert_close(model(tokens), plain(tokens))  # evaluation: every ID embedding is read
        model.train()
        dropped = model(tokens)
        plain.item_emb.weight.zero_()  # what a model reads for items it has no ID embedding of (new items)
        plain.eval()
        torch.testing.assert_close(dropped, plain(tokens))
    for bad in (-0.1, 1.0):
        with pytest.raises(ConfigError, match="item_embedding_dropout must lie in"):
            GenerativeConfig(item_embedding_dropout=bad)


def test_presets_name_the_hybrid_and_the_pure_semantic_model():
    from genrec.errors import ConfigError
    from genrec.generative import preset_config

    assert preset_config("hierarchical") == GenerativeConfig()
    assert preset_config("semantic", hidden=64) == GenerativeConfig(item_embedding=False, item_embedding_dropout=0.0,
                                                                    hidden=64)
    assert GenerativeConfig().item_embedding and GenerativeConfig().item_embedding_dropout == 0.5
    with pytest.raises(ConfigError, match="unknown generative preset 'big'"):
        preset_config("big")


def test_weights_of_other_semantic_ids_are_refused_on_load_and_resume(split, tmp_path):
    """The trie that constrains decoding is built from the model's codes: loading weights trained on
    another table of the same shape (or resuming its run) is an error naming the checkpoint."""
    from dataclasses import replace

    from genrec.errors import CheckpointError
    from genrec.generative import HierarchicalGenerative

    table = cyclic_table()
    other = SemanticIdTable.from_codes(table.codes[::-1].copy(), table.codebook_sizes)  # same shape, other codes
    config = GenerativeConfig(**SMALL, max_epochs=1)
    a = HierarchicalGenerative(table.codes, table.codebook_sizes, config)
    b = HierarchicalGenerative(other.codes, other.codebook_sizes, config)
    with pytest.raises(CheckpointError, match="other semantic IDs"):
        b.load_state_dict(a.state_dict())
    HierarchicalGenerative(table.codes, table.codebook_sizes, config).load_state_dict(a.state_dict())  # same: fine
    train_generative(split, table, config, tmp_path / "run", progress=False)
    with pytest.raises(CheckpointError, match=r"last.pt: checkpoint of a run on other data \(its training sequences, "
                                              r"validation instances or semantic IDs differ"):
        train_generative(split, other, replace(config, max_epochs=2), tmp_path / "run", progress=False)
    # a checkpoint from before the data digest: the weights' own check still refuses the other IDs
    ckpt = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    del ckpt["state"]["data_digest"]
    torch.save(ckpt, tmp_path / "run" / "last.pt")
    with pytest.raises(CheckpointError, match=r"last.pt: .*other semantic IDs"):
        train_generative(split, other, replace(config, max_epochs=2), tmp_path / "run", progress=False)


def test_decoding_runs_under_the_models_precision(split, trained, monkeypatch):
    """recommend and score_items enter the model's autocast context (bf16 on CUDA), as training's
    validation and beam_search do, so every entry point decodes at one precision."""
    import genrec.generative as generative

    calls = []
    real = generative.autocast
    monkeypatch.setattr(generative, "autocast", lambda precision, device: calls.append((precision, str(device)))
                        or real(precision, device))
    recommend(trained.model, split.test, beam_size=3)
    score_items(trained.model, split.test, np.zeros((len(split.test), 1), np.int64))
    assert calls == [("fp32", "cpu"), ("fp32", "cpu")]


@pytest.mark.parametrize("bad", [-3, True, 2.5])
def test_tiger_user_buckets_must_be_a_count(bad):
    """A negative count shrank T5's vocabulary below the code tokens: an IndexError deep in training."""
    from genrec.errors import ConfigError
    from genrec.tiger import TigerConfig

    with pytest.raises(ConfigError, match="config key 'user_buckets' must be an integer >= 0"):
        TigerConfig(user_buckets=bad)
