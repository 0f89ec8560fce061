"""The recipe runner under torchrun, with a fake world of 2 ranks (no process group: the gating is
what is tested; the trainers' DDP is tested with gloo in test_distributed.py). Rank 0 is run first
and every object it broadcasts is recorded; rank 1 then replays them in order, so a rank that
made another sequence of collective calls than rank 0 (a hang under torchrun) fails here.

Real 2-process gloo groups run the runner too: with three small stages (one of them training SASRec
under DDP), and the tiny demo recipe end to end and then again (everything skipped): ~6 and ~11 s on 2 cores."""

import pytest

from genrec import distributed
from genrec.errors import DataFormatError
from genrec.recipe import config_from_dict, runner
from genrec.recipe.stages import Stage
from genrec.rundir import RunLock


@pytest.fixture
def world(monkeypatch):
    """Fake 2-rank world; ``world.rank`` picks the rank, ``world.record`` / ``world.replay`` the
    broadcast values."""

    class World:
        rank = 0
        record: list = []
        replay: list | None = None
        runs: list = []
        other = None  # what the other rank contributes to an all_gather (None: it went well)

    def broadcast(obj):
        if World.replay is None:
            World.record.append(obj)
            return obj
        return World.replay.pop(0)

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(distributed, "init_from_env", lambda backend=None: True)
    monkeypatch.setattr(distributed, "is_distributed", lambda: True)
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    monkeypatch.setattr(distributed, "rank", lambda: World.rank)
    monkeypatch.setattr(distributed, "is_main", lambda: World.rank == 0)
    monkeypatch.setattr(distributed, "broadcast_object", broadcast)
    monkeypatch.setattr(distributed, "barrier", lambda: None)
    monkeypatch.setattr(distributed, "all_gather_object",
                        lambda obj: [obj, World.other] if World.rank == 0 else [World.other, obj])

    def stage(name, every_rank, fail=False):
        def run(ctx):
            World.runs.append((World.rank, name))
            if fail:
                raise DataFormatError(f"{name} cannot read its input")
            out = ctx.run_dir / name / "out.txt"
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(name)
            return {"out": out}

        return Stage(name, run, ("data",), (), every_rank=every_rank)

    World.stage = staticmethod(stage)
    World.record, World.runs, World.other = [], [], None
    return World


def _run(config, run_dir, names):
    with runner.Recipe(config, run_dir, progress=False) as recipe:
        return [recipe.run_stage(n) for n in names]


def test_rank_0_runs_everything_and_rank_1_only_the_trainers(world, monkeypatch, tmp_path):
    monkeypatch.setattr(runner, "STAGES", (world.stage("prep", False), world.stage("train", True),
                                           world.stage("report", False)))
    config = config_from_dict({"data": {"dataset": "synthetic:num_users=50"}})
    names = ["prep", "train", "report"]
    infos0 = _run(config, tmp_path, names)
    assert world.runs == [(0, "prep"), (0, "train"), (0, "report")]
    for n in names:
        assert (tmp_path / n / "stage.done.json").is_file()
    # rank 1, replaying rank 0's broadcasts, while rank 0 holds the lock: rank 1 must not take it
    world.rank, world.replay, world.runs = 1, list(world.record), []
    (tmp_path / "train" / "stage.done.json").unlink()  # rank 1 must not write markers: shows if it does
    with RunLock(tmp_path):
        infos1 = _run(config, tmp_path, names)
    assert world.runs == [(1, "train")]  # the trainer only; prep and report ran on rank 0 alone
    assert world.replay == []  # the same collective calls, in the same order, as rank 0
    assert not (tmp_path / "train" / "stage.done.json").exists()
    assert [i["stage"] for i in infos1] == names
    assert infos1[0] == infos0[0] and infos1[2] == infos0[2]  # rank 0's markers


def test_a_stage_failing_on_rank_0_fails_on_every_rank(world, monkeypatch, tmp_path):
    monkeypatch.setattr(runner, "STAGES", (world.stage("prep", False, fail=True),))
    config = config_from_dict({"data": {"dataset": "synthetic:num_users=50"}})
    with pytest.raises(DataFormatError, match="prep cannot read its input"):
        _run(config, tmp_path, ["prep"])
    world.rank, world.replay, world.runs = 1, list(world.record), []
    with pytest.raises(DataFormatError, match="on rank 0: prep cannot read its input"):
        _run(config, tmp_path / "other", ["prep"])
    assert world.runs == []


def test_a_trainer_marks_done_only_after_every_rank_has_finished(world, monkeypatch, tmp_path):
    """A training stage runs on every rank: rank 0 wrote its marker before the others had finished
    (then waited). Now every rank meets at a barrier first; a rank that fails raises at once (no marker)."""
    events = []
    monkeypatch.setattr(distributed, "barrier", lambda: events.append("barrier"))
    real_save = runner.save_json
    monkeypatch.setattr(runner, "save_json", lambda path, obj, **kw: (events.append(path.name), real_save(path, obj,
                                                                                                         **kw))[1])
    monkeypatch.setattr(runner, "STAGES", (world.stage("train", True, fail=True),))
    config = config_from_dict({"data": {"dataset": "synthetic:num_users=50"}})
    with pytest.raises(DataFormatError, match="train cannot read its input"):
        _run(config, tmp_path / "a", ["train"])
    assert "stage.done.json" not in events
    monkeypatch.setattr(runner, "STAGES", (world.stage("train", True),))
    events.clear()
    _run(config, tmp_path / "b", ["train"])
    assert "barrier" in events and events.index("barrier") < events.index("stage.done.json")


def test_a_single_process_uses_no_collective(world, monkeypatch, tmp_path):
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setattr(runner, "STAGES", (world.stage("prep", False), world.stage("train", True)))
    config = config_from_dict({"data": {"dataset": "synthetic:num_users=50"}})
    _run(config, tmp_path, ["prep", "train"])
    assert world.record == [] and world.runs == [(0, "prep"), (0, "train")]


def test_a_held_lock_stops_every_rank(world, monkeypatch, tmp_path):
    from genrec.errors import RunDirectoryError

    monkeypatch.setattr(runner, "STAGES", (world.stage("prep", False),))
    config = config_from_dict({"data": {"dataset": "synthetic:num_users=50"}})
    with RunLock(tmp_path):  # another run holds the directory
        with pytest.raises(RunDirectoryError, match="in use by another genrec run"):
            _run(config, tmp_path, ["prep"])
        world.rank, world.replay = 1, list(world.record)
        with pytest.raises(RunDirectoryError, match="on rank 0: .*in use by another genrec run"):
            _run(config, tmp_path, ["prep"])
    assert world.runs == []


# ----------------------------------------------------------------------------------------------
# A real 2-process gloo group running the runner with small stages: a rank-0 stage that writes a
# file, a training stage (SASRec under DDP) that every rank runs reading it, and a rank-0 stage
# after it. Seconds, unlike the demo recipe.


def _ran(ctx, name):
    with open(ctx.run_dir / f"runs.{distributed.rank()}.log", "a") as f:  # one file per rank: no interleaving
        f.write(f"{name}\n")


def _prep(ctx):
    import numpy as np

    from genrec.synthetic import cyclic_dataset

    out = ctx.run_dir / "prep" / "seqs.npy"
    out.parent.mkdir(parents=True, exist_ok=True)
    ds = cyclic_dataset(num_items=20, num_users=40, length=6)
    np.save(out, np.array([np.asarray(s) for s in ds.sequences]))
    _ran(ctx, "prep")
    return {"seqs": out}


def _train(ctx):
    from genrec.artifacts import save_json
    from genrec.sasrec import SASRecConfig, train_sasrec
    from genrec.splits import leave_one_out
    from genrec.synthetic import cyclic_dataset

    assert (ctx.run_dir / "prep" / "seqs.npy").is_file()  # rank 0 wrote it before any rank trains
    split = leave_one_out(cyclic_dataset(num_items=20, num_users=40, length=6), max_history=8)
    config = SASRecConfig(hidden=16, num_blocks=1, dropout=0.0, batch_size=16, max_len=8, max_epochs=2,
                          num_threads=1)
    result = train_sasrec(split, config, ctx.run_dir / "train", progress=False)
    _ran(ctx, "train")
    return {"summary": save_json(ctx.run_dir / "train" / "summary.json", {"best_epoch": result.best_epoch})}


def _report(ctx):
    _ran(ctx, "report")
    return {}


def _gloo_worker(rank: int, port: int, run_dir: str) -> None:
    import gc
    import os

    import torch
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    runner.STAGES = (Stage("prep", _prep, ("data",)), Stage("train", _train, ("data",), ("prep",), every_rank=True),
                     Stage("report", _report, ("data",), ("train",)))
    config = config_from_dict({"data": {"dataset": "synthetic:num_users=50"}})
    _run(config, run_dir, ["prep", "train", "report"])
    _run(config, run_dir, ["prep", "train", "report"])  # again: every stage is skipped on both ranks
    gc.collect()  # the trainer's DDP wrapper (and its reducer) gone before the group it uses is destroyed
    dist.barrier()
    dist.destroy_process_group()


def test_the_runner_under_a_real_gloo_group(tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_gloo_worker, args=(port, str(tmp_path)), nprocs=2, join=True)
    # once each (the second run skipped everything), the trainer on both ranks, the rest on rank 0
    assert (tmp_path / "runs.0.log").read_text().split() == ["prep", "train", "report"]
    assert (tmp_path / "runs.1.log").read_text().split() == ["train"]
    for name in ("prep", "train", "report"):
        assert (tmp_path / name / "stage.done.json").is_file()
    assert (tmp_path / "train" / "best.pt").is_file()


def _demo_worker(rank: int, port: int, run_dir: str, cache: str) -> None:
    import gc
    import os

    import torch
    import torch.distributed as dist

    from genrec.recipe import load_config, run_recipe
    from test_pipeline import DEMO_YAML, TINY  # the tiny demo's overrides, defined once

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    config = load_config(DEMO_YAML, overrides=TINY + [f"text.cache_dir={cache}"])
    first = run_recipe(config, run_dir, progress=False)
    events = []
    again = run_recipe(config, run_dir, progress=False, on_stage=lambda name, event, info: events.append(event))
    assert first == again and first is not None  # every rank reads rank 0's results.json
    assert set(events) <= {"skip"}  # the rerun skips every stage (only rank 0 calls on_stage)
    assert bool(events) == (rank == 0)
    gc.collect()  # as in _gloo_worker
    dist.barrier()
    dist.destroy_process_group()


def test_the_tiny_demo_recipe_under_two_gloo_processes(tmp_path):
    import json
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run_dir = tmp_path / "run"
    mp.spawn(_demo_worker, args=(port, str(run_dir), str(tmp_path / "cache")), nprocs=2, join=True)
    results = json.loads((run_dir / "results.json").read_text())
    assert {"sasrec", "gr", "fixed", "adaptive", "learned_minmax"} <= set(results["models"])
    for m in results["models"].values():
        assert 0.0 <= m["test"]["all"]["ndcg@10"] <= 1.0


def test_the_run_s_process_group_follows_the_models_devices(world, monkeypatch, tmp_path):
    """On a GPU machine the runner made an nccl group (torch's default there) even for CPU models, whose
    DDP reductions nccl cannot do; the trainers' own choice came too late (a group already existed)."""
    import torch
    import torch.distributed as dist

    chosen = []
    monkeypatch.setattr(distributed, "init_from_env", lambda backend=None: chosen.append(backend) or True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU machine
    monkeypatch.setattr(dist, "is_nccl_available", lambda: True)
    monkeypatch.setattr(runner, "STAGES", (world.stage("prep", False),))
    _run(config_from_dict({"data": {"dataset": "synthetic:num_users=50"}}), tmp_path / "cpu", ["prep"])
    _run(config_from_dict({"data": {"dataset": "synthetic:num_users=50"}}, overrides=["device=cuda"]),
         tmp_path / "gpu", ["prep"])
    assert chosen == ["gloo", "nccl"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # device=cuda without a GPU: gloo, and the
    _run(config_from_dict({"data": {"dataset": "synthetic:num_users=50"}}, overrides=["device=cuda"]),  # trainer
         tmp_path / "nogpu", ["prep"])  # says what is missing (nccl failed at start: "no NCCL built in")
    assert chosen[-1] == "gloo"
