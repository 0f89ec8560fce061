"""Distributed data parallel on the CPU: 2 gloo processes (torch.multiprocessing.spawn) on tiny data.

One spawn runs every scenario (starting processes costs more than the training); rank 0 writes the
results to a file and the tests below check them against single-process runs in this process.
"""

import json
import os
import socket
from dataclasses import dataclass

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from genrec import distributed
from genrec.artifacts import load_checkpoint
from genrec.errors import CheckpointError
from genrec.layers import unit_rows
from genrec.generative import GenerativeConfig, evaluate as evaluate_generative, train_generative
from genrec.sasrec import SASRecConfig, evaluate as evaluate_sasrec, train_sasrec
from genrec.splits import leave_one_out
from genrec.synthetic import cyclic_dataset
from genrec.tiger import TigerConfig, train_tiger
from genrec.training import fit
from fusion.joint import JointConfig, evaluate_joint, train_joint
from quantize.semantic_ids import SemanticIdTable

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")

WORLD = 2


@dataclass
class ToyConfig:
    lr: float = 0.05
    weight_decay: float = 0.0
    max_epochs: int = 3
    patience: int = 10
    eval_every: int = 1
    seed: int = 0
    max_minutes: float | None = None
    nonfinite_loss: str = "error"


# 26 examples of a linear regression: batches of 4 leave a short last batch (2) and an odd number
# of batches (7), so the DDP run has a zero-weight pass in each epoch's last step
X = torch.linspace(-1, 1, 26 * 3).reshape(26, 3)
Y = X @ torch.tensor([[1.0], [-2.0], [0.5]]) + 0.3


def toy_fit(batch_size: int, out_dir=None, poison: int | None = None, **config):
    """fit() on the toy regression with shuffled batches of ``batch_size``; returns the weights.
    ``poison``: the loss of any batch holding this example is NaN."""
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)

    def batches(rng):
        order = rng.permutation(len(X))
        return [(X[order[i:i + batch_size]], Y[order[i:i + batch_size]]) for i in range(0, len(X), batch_size)]

    def loss_fn(m, batch):
        x, y = batch
        loss = ((m(x) - y) ** 2).mean()
        if poison is not None and (x == X[poison]).all(1).any():
            loss = loss * torch.nan
        return loss, len(x)

    def evaluate_fn(m):
        with torch.no_grad():
            return {"ndcg@10": -float(((m(X) - Y) ** 2).mean()), "recall@10": 0.0}

    result = fit(model, ToyConfig(**config), batches, -(-len(X) // batch_size), loss_fn, evaluate_fn, out_dir,
                 progress=False)
    return torch.cat([model.weight.flatten(), model.bias]).tolist() + [len(result.history), result.skipped_steps]


def cyclic_split():
    return leave_one_out(cyclic_dataset(num_items=20, num_users=60, length=8), max_history=8)


def cyclic_table(num_items=20) -> SemanticIdTable:
    i = np.arange(num_items)
    return SemanticIdTable.from_codes(np.stack([i // 5, i % 5], 1), [4, 5])


SASREC = dict(hidden=16, num_blocks=1, num_heads=1, dropout=0.2, lr=5e-3, max_len=8, batch_size=8,
              patience=100, min_delta=0.0, num_threads=1)
GENERATIVE = dict(hidden=16, num_blocks=1, num_heads=2, head_layers=1, dropout=0.0, head_dropout=0.0, lr=5e-3,
                  batch_size=8, max_len=8, eval_beam=10, patience=100, num_threads=1)


TIGER = dict(d_model=16, d_ff=32, num_heads=2, d_kv=8, num_encoder_layers=1, num_decoder_layers=1, dropout=0.1,
             user_buckets=4, batch_size=16, max_epochs=2, eval_beam=5, eval_users=None, num_threads=1)
JOINT = dict(id_tower=SASRecConfig(hidden=16, num_blocks=1, dropout=0.0),
             gr_tower=GenerativeConfig(hidden=16, num_blocks=1, num_heads=2, head_layers=1, dropout=0.0),
             max_len=8, batch_size=16, lr=1e-2, max_epochs=2, patience=100, num_threads=1)


def _worker(rank: int, port: int, tmp: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD),
                      LOCAL_RANK=str(rank), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    assert distributed.init_from_env()
    res = {"toy": toy_fit(4), "toy_poisoned": toy_fit(4, poison=5, nonfinite_loss="skip"),
           "toy_timed": toy_fit(4, max_minutes=1e-9)}
    # the random numbers a training step draws (dropout masks): each rank its own
    draws = []
    fit(torch.nn.Linear(2, 1), ToyConfig(max_epochs=1), lambda rng: [torch.zeros(2, 2)] * 2, 2,
        lambda m, x: (draws.append(torch.rand(1).item()) or m(x).sum() * 0.0, len(x)),
        lambda m: {"ndcg@10": 0.0, "recall@10": 0.0}, None, progress=False)
    res["rank_draws"] = distributed.all_gather_object(draws[0])
    split = cyclic_split()
    # SASRec: uninterrupted, and killed after 2 epochs then resumed
    straight = train_sasrec(split, SASRecConfig(**SASREC, max_epochs=4), f"{tmp}/sasrec_a", progress=False)
    train_sasrec(split, SASRecConfig(**SASREC, max_epochs=2), f"{tmp}/sasrec_b", progress=False)
    resumed = train_sasrec(split, SASRecConfig(**SASREC, max_epochs=4), f"{tmp}/sasrec_b", progress=False)
    res["sasrec_history"] = straight.history
    res["sasrec_resumed_history"] = resumed.history
    res["sasrec_same_weights"] = all(torch.equal(a, b) for a, b in zip(straight.model.state_dict().values(),
                                                                       resumed.model.state_dict().values()))
    with distributed.sharded_evaluation():
        res["sasrec_sharded_valid"] = evaluate_sasrec(straight.model, split.valid)
    res["sasrec_full_valid"] = evaluate_sasrec(straight.model, split.valid)  # every rank, all instances
    gen = train_generative(split, cyclic_table(), GenerativeConfig(**GENERATIVE, max_epochs=3), progress=False)
    res["generative_history"] = gen.history
    with distributed.sharded_evaluation():
        res["generative_sharded_valid"] = evaluate_generative(gen.model, split.valid, beam_size=10)
    res["generative_full_valid"] = evaluate_generative(gen.model, split.valid, beam_size=10)
    # the T5 preset and the joint model (its GR tower leaves the ID tower's parameters unused) train too
    tiger = train_tiger(split, cyclic_table(), TigerConfig(**TIGER), progress=False)
    joint = train_joint(split, cyclic_table(), JointConfig(mode="gr", **JOINT), f"{tmp}/joint", progress=False)
    res["tiger_history"], res["joint_history"] = tiger.history, joint.history
    with distributed.sharded_evaluation():
        res["joint_sharded_valid"] = evaluate_joint(joint.model, split.valid)
    res["joint_full_valid"] = evaluate_joint(joint.model, split.valid)
    # a content-aware SASRec (its constant item-text buffer is not synchronised each step)
    text = np.random.default_rng(0).normal(size=(split.num_items, 6)).astype(np.float32)
    content = train_sasrec(split, SASRecConfig(**SASREC, max_epochs=2, text_dim="auto"), progress=False,
                           item_text=text).model
    res["content_text_kept"] = bool(torch.allclose(content.item_text[1:], unit_rows(torch.from_numpy(text))))
    # every rank holds the same weights (DDP keeps them in sync)
    for name, model in (("generative", gen.model), ("tiger", tiger.model), ("joint", joint.model),
                        ("content", content)):
        weights = torch.cat([p.detach().flatten() for p in model.parameters()])
        res[f"{name}_weights_agree"] = all(torch.equal(w, weights) for w in distributed.all_gather_object(weights))
    if rank == 0:
        with open(f"{tmp}/result.json", "w") as f:
            json.dump(res, f)
    dist.barrier()
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ddp(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(_free_port(), str(tmp)), nprocs=WORLD, join=True)
    with open(tmp / "result.json") as f:
        return json.load(f), tmp


def test_ddp_ranks_draw_their_own_random_numbers(ddp):
    res, _ = ddp
    assert len(res["rank_draws"]) == WORLD and len(set(res["rank_draws"])) == WORLD


def test_ddp_gradient_is_the_full_batch_gradient(ddp):
    # 2 ranks x batches of 4 (rank r takes every 2nd batch) = one process with batches of 8 drawn from
    # the same seeded order: the loss weighting makes DDP's averaged gradient the full-batch one, the
    # short last batch included; equal up to float summation order
    res, _ = ddp
    np.testing.assert_allclose(res["toy"], toy_fit(8), rtol=0, atol=1e-5)


def test_ddp_ranks_skip_a_nonfinite_step_and_stop_on_time_together(ddp):
    # a NaN loss on one rank's batch: every rank skips that step (one skipped step per epoch, 3 epochs),
    # exactly as one process skips the full batch holding the example
    res, _ = ddp
    np.testing.assert_allclose(res["toy_poisoned"], toy_fit(8, poison=5, nonfinite_loss="skip"), rtol=0, atol=1e-5)
    assert res["toy_poisoned"][-1] == 3
    # out of time at the first step: all ranks break, evaluate once and stop (no rank left waiting)
    assert res["toy_timed"][-2] == 1


def test_ddp_resume_reproduces_the_uninterrupted_run(ddp):
    res, tmp = ddp
    assert res["sasrec_same_weights"]
    assert [{k: v for k, v in r.items() if k != "minutes"} for r in res["sasrec_resumed_history"]] == \
           [{k: v for k, v in r.items() if k != "minutes"} for r in res["sasrec_history"]]
    ckpt = load_checkpoint(tmp / "sasrec_b" / "last.pt")
    assert ckpt["state"]["world_size"] == WORLD and len(ckpt["rank_rng"]) == WORLD
    # rank 0 wrote the checkpoints: no temporary files left behind
    assert sorted(p.name for p in (tmp / "sasrec_b").iterdir() if p.name.endswith(".tmp")) == []


def test_ddp_resume_refuses_another_world_size(ddp):
    _, tmp = ddp
    with pytest.raises(CheckpointError, match="world_size 2"):
        train_sasrec(cyclic_split(), SASRecConfig(**SASREC, max_epochs=5), tmp / "sasrec_b", progress=False)


def test_sharded_evaluation_equals_the_single_process_metrics(ddp):
    res, _ = ddp
    assert res["sasrec_sharded_valid"] == res["sasrec_full_valid"]
    assert res["generative_sharded_valid"] == res["generative_full_valid"]
    assert res["joint_sharded_valid"] == res["joint_full_valid"]
    assert res["generative_weights_agree"] and res["tiger_weights_agree"] and res["joint_weights_agree"]
    assert res["content_weights_agree"] and res["content_text_kept"]
    assert len(res["tiger_history"]) == 2 and len(res["joint_history"]) == 2


def test_ddp_training_matches_one_process(ddp):
    # Not bit-identical: with 2 ranks a step averages two batches of 8 (16 examples) where one process
    # steps on one batch of 16 grouped differently (the length-bucketed batches are shuffled as
    # whole batches), and the dropout masks differ. On this deterministic pattern both runs learn
    # the same thing: validation NDCG@10 within 0.1 of each other after the same number of epochs.
    res, _ = ddp
    split = cyclic_split()
    one = train_sasrec(split, SASRecConfig(**{**SASREC, "batch_size": 16}, max_epochs=4), progress=False)
    assert len(res["sasrec_history"]) == len(one.history) == 4
    ddp_last, one_last = res["sasrec_history"][-1]["ndcg@10"], one.history[-1]["ndcg@10"]
    assert abs(ddp_last - one_last) <= 0.1, (ddp_last, one_last)
    gen = train_generative(split, cyclic_table(), GenerativeConfig(**{**GENERATIVE, "batch_size": 16}, max_epochs=3),
                           progress=False)
    assert abs(res["generative_history"][-1]["ndcg@10"] - gen.history[-1]["ndcg@10"]) <= 0.1


def test_helpers_are_the_identity_in_one_process():
    assert not distributed.is_distributed() and distributed.world_size() == 1 and distributed.is_main()
    values = np.arange(5)
    with distributed.sharded_evaluation():
        assert np.array_equal(distributed.evaluation_rows(5), values)
        assert distributed.gather_rows(values, 5) is values
    assert distributed.all_reduce_sum([1.0, 2.0]) == [1.0, 2.0]
    assert distributed.all_gather_object("x") == ["x"]
    assert distributed.broadcast_object(3) == 3
    distributed.barrier()


@pytest.mark.parametrize("device, backend", [("cpu", "gloo"), ("cuda", "nccl"), ("cuda:1", "nccl")])
def test_the_process_group_backend_follows_the_model_device(monkeypatch, device, backend):
    """A CPU model on a GPU machine: gloo, as nccl cannot reduce its CPU tensors."""
    from genrec import training

    chosen = []
    monkeypatch.setattr(distributed, "init_from_env", lambda backend=None: chosen.append(backend))
    training.setup(SASRecConfig(device=device, num_threads=torch.get_num_threads()))
    assert chosen == [backend]


def test_a_world_without_a_rendezvous_address_is_a_clear_error(monkeypatch):
    from genrec.errors import ConfigError

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.delenv("MASTER_PORT", raising=False)
    with pytest.raises(ConfigError, match="MASTER_ADDR and MASTER_PORT"):
        distributed.init_from_env()
    monkeypatch.setenv("WORLD_SIZE", "1")  # one process: nothing to join
    assert not distributed.init_from_env()


def test_the_process_group_waits_for_long_rank_0_stages(monkeypatch):
    """The recipe's other ranks wait in a collective while rank 0 alone runs a stage that does not
    train; torch's 30-minute default would end a run whose embedding or fusion stage takes longer."""
    from datetime import timedelta

    from genrec.errors import ConfigError

    joined = {}
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda backend, **kw: joined.update(backend=backend, **kw))
    monkeypatch.setattr(dist, "get_backend", lambda: joined["backend"])
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29500")
    monkeypatch.delenv(distributed.TIMEOUT_ENV, raising=False)
    distributed.init_from_env("gloo")
    assert joined["backend"] == "gloo" and joined["timeout"] == timedelta(hours=6) > timedelta(minutes=30)
    monkeypatch.setenv(distributed.TIMEOUT_ENV, "90")
    distributed.init_from_env("gloo")
    assert joined["timeout"] == timedelta(minutes=90)
    for bad in ("0", "-5", "nan", "ten"):
        monkeypatch.setenv(distributed.TIMEOUT_ENV, bad)
        joined.clear()
        with pytest.raises(ConfigError, match=f"GENREC_DIST_TIMEOUT_MIN={bad!r} must be a number of minutes"):
            distributed.init_from_env("gloo")
        assert not joined  # named before any rendezvous
