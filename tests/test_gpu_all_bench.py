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
    # the budgets of the three parts fit the ~12 minutes the script is sized for
    assert default.recipe_minutes + default.tiger_minutes + 2 * default.beam_seconds / 60 <= 11


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
