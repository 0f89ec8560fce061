"""bench/gpu_all.py without a GPU: its arguments parse, and it refuses (status 2, a clear message)
before running anything when CUDA is unavailable. The GPU figures themselves are not measured here."""

import json

import pytest
import torch

from tests.scripts import load_script


@pytest.fixture(scope="module")
def bench():
    return load_script("bench/gpu_all.py")


def test_arguments_parse(bench, tmp_path):
    args = bench.parse_args(["--out", str(tmp_path), "--precision", "bf16", "--only", "tiger,beam",
                             "--tiger-minutes", "3"])
    assert args.parts == ["tiger", "beam"] and args.precision == "bf16" and args.tiger_minutes == 3.0
    assert args.json == str(tmp_path / "gpu_all.json")
    default = bench.parse_args([])
    assert default.parts == list(bench.PARTS) and default.precision == "fp32"
    # the budgets of the three parts, with ~1 min for the T5 test decode and ~1 min of model loads and
    # warm-ups, fit the whole run's budget, which fits the device's 10-minute command limit
    assert default.recipe_minutes + default.tiger_minutes + 1 + 2 * default.beam_seconds / 60 + 1 <= default.total_minutes
    assert default.total_minutes < 10


@pytest.mark.parametrize("argv, message", [(["--only", "sasrec"], "unknown part"),
                                           (["--precision", "fp16"], "invalid choice"),
                                           (["--beam-seconds", "0"], "must be > 0")])
def test_bad_arguments_are_refused(bench, capsys, argv, message):
    with pytest.raises(SystemExit) as e:
        bench.parse_args(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_refuses_without_cuda(bench, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as e:
        bench.main(["--out", str(tmp_path / "work")])
    assert e.value.code == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err
    assert not (tmp_path / "work").exists()  # nothing was run or written


def test_the_table_reads_every_part(bench):
    bars = {k: {"value": 0.05, "bar": b, "met": 0.05 >= b} for k, b in bench.RECIPE_BARS.items()}
    figures = {"recipe": {"status": "ok", "wall_s": 281.0, "bars": bars},
               "tiger": {"test_ndcg@10": 0.039, "met": True, "epochs": 30, "train_s": 230.0, "converged": True},
               "beam": {"generative": {"users_per_s": 5000.0, "users": 22363, "seconds": 4.5},
                        "tiger": {"status": "skipped: missing"}}}
    text = bench.table(figures)
    assert "281.0" in text and "0.0390" in text and "5000.0" in text and "skipped: missing" in text
    json.dumps(figures)  # what main writes


def test_each_part_is_written_as_it_finishes_and_a_part_out_of_time_is_skipped(bench, monkeypatch, tmp_path):
    """The JSON holds every finished part at all times (a device run stopped from outside keeps
    them); a part that no longer fits ``--total-minutes`` says so instead of running."""
    import time as real_time

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i: "stand-in GPU")
    seen = []

    def recipe(args, run_dir):
        seen.append(json.loads((tmp_path / "f.json").read_text()) if (tmp_path / "f.json").exists() else None)
        clock["now"] += 600  # the whole budget spent
        return {"status": "ok", "wall_s": 600.0}

    clock = {"now": 0.0}
    monkeypatch.setattr(bench, "run_recipe_part", recipe)
    monkeypatch.setattr(bench, "run_tiger_part", lambda *a: pytest.fail("no time was left for it"))
    monkeypatch.setattr(bench.time, "perf_counter", lambda: clock["now"])
    monkeypatch.setattr(bench, "STARTED", 0.0)
    assert bench.main(["--out", str(tmp_path / "w"), "--json", str(tmp_path / "f.json"), "--only", "recipe,tiger"]) == 0
    figures = json.loads((tmp_path / "f.json").read_text())
    # before the first part: the machine's line alone, written at once
    assert seen[0]["device"] == "stand-in GPU" and "recipe" not in seen[0] and figures["recipe"]["status"] == "ok"
    assert figures["tiger"]["status"] == "skipped: no time left in --total-minutes"
    assert real_time.perf_counter() > 0


def test_users_per_second_decodes_as_the_cpu_figure_does(bench, monkeypatch):
    """On the CPU with CUDA's synchronize stubbed: ``recommend`` (the CPU figure's path) over a
    bounded number of users."""
    import numpy as np

    from genrec.generative import GenerativeConfig, HierarchicalGenerative
    from genrec.splits import leave_one_out
    from genrec.synthetic import cyclic_dataset

    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
    split = leave_one_out(cyclic_dataset(num_items=30, num_users=40, length=6))
    i = np.arange(30)
    model = HierarchicalGenerative(np.stack([i // 6, i % 6], 1), [5, 6],
                                   GenerativeConfig(hidden=16, num_heads=1, num_blocks=1, head_layers=1)).eval()
    out = bench.users_per_second(model, split, batch=16, seconds=0.5)
    assert 0 < out["users"] <= len(split.test) and out["users_per_s"] > 0
