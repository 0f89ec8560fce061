"""Bad inputs to ``genrec sasrec / generative / analyze / quantize``: exit code 2 and a one-line
``genrec CMD: error: ...`` message naming what is wrong, never a traceback."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from genrec.cli import main
from genrec.data import ItemText, SequenceDataset, write_plain
from genrec.errors import ConfigError, DataFormatError
from genrec.splits import leave_one_out


def tiny_dataset(name: str, sequences: list[list[int]], num_items: int = 12) -> SequenceDataset:
    return SequenceDataset(name=name, item_ids=[f"i{j}" for j in range(num_items)],
                           user_ids=[f"u{k}" for k in range(len(sequences))],
                           sequences=[np.array(s, dtype=np.int64) for s in sequences],
                           items=[ItemText(title=f"item {j}") for j in range(num_items)])


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """``good``: 24 users over 12 items; ``bad``: the same with a malformed row; ``short``: no user
    with 3 interactions; ``sid``: a semantic-ID table of ``good``'s items; ``x.npy`` embeddings."""
    root = tmp_path_factory.mktemp("cli")
    rng = np.random.default_rng(0)
    good = tiny_dataset("good", [rng.integers(0, 12, size=int(rng.integers(4, 7))).tolist() for _ in range(24)])
    write_plain(good, root / "good")
    write_plain(good, root / "bad")
    tsv = next((root / "bad").glob("interactions.tsv*"))
    assert tsv.suffix == ".tsv"
    with open(tsv, "a", encoding="utf-8") as f:
        f.write("u3\ti1\tyesterday\n")
    write_plain(tiny_dataset("short", [[0, 1], [2]], num_items=3), root / "short")
    from quantize.semantic_ids import SemanticIdTable

    j = np.arange(12)
    table = SemanticIdTable(np.stack([j % 3, j // 3], 1), [3, 4], item_ids=good.item_ids)
    table.save(root / "sid" / "semantic_ids.json")
    np.save(root / "x.npy", rng.normal(size=(12, 8)).astype(np.float32))
    return root


def run_cli(capsys, argv: list[str]) -> tuple[int, str]:
    """Exit code and the error line; asserts that nothing but that one line reports the error."""
    capsys.readouterr()
    rc = main(argv)
    out, err = capsys.readouterr()
    assert "Traceback" not in err and "Traceback" not in out
    lines = [line for line in err.splitlines() if line.startswith("genrec ")]
    assert len(lines) <= 1, err
    return rc, lines[0] if lines else ""


# ----------------------------------------------------------------------------------------------
# The library raises GenrecErrors for these inputs


def test_leave_one_out_errors_name_the_dataset_and_minimum():
    with pytest.raises(DataFormatError) as e:
        leave_one_out(tiny_dataset("short", [[0, 1], [2]], num_items=3))
    assert str(e.value) == ("dataset 'short': no user has >= 3 interactions (2 user(s), longest sequence 2); "
                            "leave-one-out needs a training, a validation and a test item per user")
    with pytest.raises(DataFormatError, match="no user has >= 5 interactions"):
        leave_one_out(tiny_dataset("four", [[0, 1, 2, 3]]), min_interactions=5)
    with pytest.raises(ConfigError, match="min_interactions >= 3 .*, got 2"):
        leave_one_out(tiny_dataset("t", [[0, 1, 2]]), min_interactions=2)
    with pytest.raises(ConfigError, match="max_history must be >= 1, got 0"):
        leave_one_out(tiny_dataset("t", [[0, 1, 2]]), max_history=0)


# ----------------------------------------------------------------------------------------------
# sasrec


def test_sasrec_set_before_the_dataset_trains(data, tmp_path, capsys):
    """``--set KEY=VALUE DIR``: the directory after the overrides stays the positional dataset."""
    rc, err = run_cli(capsys, ["sasrec", "--out", str(tmp_path / "run"), "--set", "max_epochs=1", str(data / "good")])
    assert rc == 0 and err == ""
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["config"]["max_epochs"] == 1 and metrics["best_epoch"] == 1
    assert metrics["dataset"] == str(data / "good") and "ndcg@10" in metrics["test"]


def test_sasrec_bad_inputs(data, tmp_path, capsys):
    out = ["--out", str(tmp_path / "run")]
    rc, err = run_cli(capsys, ["sasrec", *out, "--set", "max_epoch=1", str(data / "good")])
    assert rc == 2
    assert err.startswith("genrec sasrec: error: unknown setting 'max_epoch' for SASRecConfig "
                          "(did you mean 'max_epochs'?); valid: ")
    rc, err = run_cli(capsys, ["sasrec", *out, str(data / "missing")])
    assert rc == 2
    assert err == (f"genrec sasrec: error: {data / 'missing'}: dataset directory not found (a path spec must be "
                   f"an existing directory in the plain format)")
    rc, err = run_cli(capsys, ["sasrec", *out, str(data / "bad")])
    assert rc == 2
    assert err == f"genrec sasrec: error: {data / 'bad' / 'interactions.tsv'}:{_last_line(data)}: " \
                  f"timestamp 'yesterday' is not a number"
    rc, err = run_cli(capsys, ["sasrec", *out, str(data / "short")])
    assert rc == 2
    assert err == ("genrec sasrec: error: dataset 'short': no user has >= 3 interactions (2 user(s), longest "
                   "sequence 2); leave-one-out needs a training, a validation and a test item per user")
    assert not (tmp_path / "run" / "metrics.json").exists()


@pytest.mark.parametrize("command, pair, message", [
    ("sasrec", "hidden=0", "config key 'hidden' must be an integer >= 1, got 0"),
    ("sasrec", "num_heads=3", "config key 'hidden' must be divisible by num_heads (3), got 64"),
    ("sasrec", "dropout=1.5", "config key 'dropout' must be in [0, 1), got 1.5"),
    ("generative", "lr=-1", "config key 'lr' must be > 0, got -1.0"),
    ("generative", "eval_beam=0", "config key 'eval_beam' must be an integer >= 1, got 0"),
    ("generative", "max_minutes=0", "config key 'max_minutes' must be > 0 or null, got 0.0"),
])
def test_out_of_range_settings_name_the_key(data, tmp_path, capsys, command, pair, message):
    """Ranges are the model configs' own checks, so the single-model commands refuse what the recipe
    refuses, before any data is read or model built (they were a traceback from inside the model)."""
    extra = ["--semantic-ids", str(data / "sid")] if command == "generative" else []
    rc, err = run_cli(capsys, [command, "--out", str(tmp_path / "run"), *extra, "--set", pair, str(data / "good")])
    config = "SASRecConfig" if command == "sasrec" else "GenerativeConfig"
    assert rc == 2 and err == f"genrec {command}: error: {config}: {message}"
    assert not (tmp_path / "run").exists()


def _last_line(data) -> int:
    return len((data / "bad" / "interactions.tsv").read_text().splitlines())


# ----------------------------------------------------------------------------------------------
# generative


def test_generative_bad_inputs(data, tmp_path, capsys):
    base = ["generative", "--out", str(tmp_path / "run"), "--semantic-ids", str(data / "sid")]
    rc, err = run_cli(capsys, [*base, "--set", "max_epoch=1", str(data / "good")])
    assert rc == 2
    assert err.startswith("genrec generative: error: unknown setting 'max_epoch' for GenerativeConfig "
                          "(did you mean 'max_epochs'?); valid: ")
    rc, err = run_cli(capsys, [*base, str(data / "missing")])
    assert rc == 2 and err.startswith(f"genrec generative: error: {data / 'missing'}: dataset directory not found")
    rc, err = run_cli(capsys, [*base, str(data / "bad")])
    assert rc == 2 and err.endswith("timestamp 'yesterday' is not a number")
    rc, err = run_cli(capsys, [*base, str(data / "short")])
    assert rc == 2 and err.startswith("genrec generative: error: dataset 'short': no user has >= 3 interactions")
    # the semantic-ID table: missing, a directory without it, not a table
    rc, err = run_cli(capsys, ["generative", str(data / "good"), "--semantic-ids", str(data / "nowhere")])
    assert rc == 2
    assert err == (f"genrec generative: error: {data / 'nowhere'}: semantic-ID table not found (expected the "
                   f"output directory of 'genrec quantize' or its semantic_ids.json)")
    rc, err = run_cli(capsys, ["generative", str(data / "good"), "--semantic-ids", str(data / "good")])
    assert rc == 2
    assert err == (f"genrec generative: error: {data / 'good'}: no semantic_ids.json in this directory (expected "
                   f"the output directory of 'genrec quantize' or its semantic_ids.json)")
    rc, err = run_cli(capsys, ["generative", str(data / "good"), "--semantic-ids", str(data / "x.npy")])
    assert rc == 2
    assert err.startswith(f"genrec generative: error: {data / 'x.npy'}: damaged JSON file (")


@pytest.mark.parametrize("argv, items", [([], 20), (["--max-history", "7"], 7)])
def test_generative_tiger_reads_the_history_length_given(data, tmp_path, monkeypatch, argv, items):
    """``--model tiger`` ignored --max-history (its encoder read 20 items whatever was given)."""
    import genrec.tiger as tiger

    seen = []

    def stop(split, table, config, *args, **kwargs):
        seen.append((config.max_items, split.max_history))
        raise ConfigError("stop here")

    monkeypatch.setattr(tiger, "train_tiger", stop)
    assert main(["generative", str(data / "good"), "--model", "tiger", "--semantic-ids", str(data / "sid"),
                 "--out", str(tmp_path / "t"), *argv]) == 2
    assert seen == [(items, 7 if argv else 50)]


# ----------------------------------------------------------------------------------------------
# analyze


def test_analyze_bad_inputs(data, tmp_path, capsys):
    out = ["--out", str(tmp_path / "out")]
    rc, err = run_cli(capsys, ["analyze", *out, str(data / "missing")])
    assert rc == 2
    assert err == (f"genrec analyze: error: {data / 'missing'}: dataset directory not found (a path spec must be "
                   f"an existing directory in the plain format)")
    rc, err = run_cli(capsys, ["analyze", *out, str(data / "bad")])
    assert rc == 2 and err.endswith("timestamp 'yesterday' is not a number")
    rc, err = run_cli(capsys, ["analyze", *out, str(data / "short")])
    assert rc == 2 and err.startswith("genrec analyze: error: dataset 'short': no user has >= 3 interactions")
    rc, err = run_cli(capsys, ["analyze", *out, str(data / "good"), "--codes", str(data / "nowhere")])
    assert rc == 2 and err == f"genrec analyze: error: {data / 'nowhere'}: semantic-ID table not found"
    rc, err = run_cli(capsys, ["analyze", *out, str(data / "good"), "--max-hop", "0"])
    assert rc == 2 and err == "genrec analyze: error: --max-hop must be in [1, 126], got 0"
    assert not (tmp_path / "out").exists()
    # analyze takes no --set: argparse's usage error (exit 2), not a traceback
    with pytest.raises(SystemExit) as e:
        main(["analyze", *out, "--set", "max_hop=3", str(data / "good")])
    assert e.value.code == 2
    assert "unrecognized arguments: --set" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# quantize (the errors come before any embedding: no model is loaded)


def test_quantize_bad_inputs(data, tmp_path, capsys):
    out = ["--out", str(tmp_path / "q"), "--embeddings", str(data / "x.npy")]
    rc, err = run_cli(capsys, ["quantize", *out, "--set", "nitre=3", str(data / "good")])
    assert rc == 2
    assert err == ("genrec quantize: error: bad option for quantizer 'rq_kmeans': unknown setting 'nitre' "
                   "(did you mean 'niter'?); valid: codebook_size, levels, max_points_per_centroid, niter")
    rc, err = run_cli(capsys, ["quantize", *out, "--method", "pq", "--set", "seed=3", str(data / "good")])
    assert rc == 2
    assert err == "genrec quantize: error: bad option for quantizer 'pq': set seed with --seed, not --set"
    rc, err = run_cli(capsys, ["quantize", *out, str(data / "missing")])
    assert rc == 2
    assert err == (f"genrec quantize: error: {data / 'missing'}: dataset directory not found (a path spec must be "
                   f"an existing directory in the plain format)")
    rc, err = run_cli(capsys, ["quantize", *out, str(data / "bad")])
    assert rc == 2 and err.endswith("timestamp 'yesterday' is not a number")
    (tmp_path / "zip.npy").write_bytes(b"PK\x03\x04garbage")  # NumPy reads it as a (damaged) .npz
    rc, err = run_cli(capsys, ["quantize", "--out", str(tmp_path / "q"), "--embeddings", str(tmp_path / "zip.npy"),
                               str(data / "good")])
    assert rc == 2 and f"{tmp_path / 'zip.npy'}" in err and "Traceback" not in err
    assert not (tmp_path / "q").exists()
    # a valid run with the same embeddings and an override before the dataset
    rc, err = run_cli(capsys, ["quantize", *out, "--codebook-size", "3", "--levels", "2", "--set", "niter=5",
                               str(data / "good")])
    assert rc == 0 and err == ""
    assert json.loads((tmp_path / "q" / "semantic_ids.json").read_text())["num_items"] == 12
    # --show of a readable JSON that is no diagnostics file, and devices this machine cannot use: named, no traceback
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "diagnostics.json").write_text("{}")
    rc, err = run_cli(capsys, ["quantize", "--show", str(tmp_path / "other")])
    assert rc == 2 and err.startswith(f"genrec quantize: error: {tmp_path / 'other' / 'diagnostics.json'}: not a "
                                      "diagnostics file of genrec quantize (KeyError")
    for device, message in (("nonsense", "is not a torch device"),
                            *([("cuda", "torch sees no CUDA GPU here")] if not torch.cuda.is_available() else [])):
        rc, err = run_cli(capsys, ["quantize", *out, "--method", "rq_vae", "--device", device, str(data / "good")])
        assert rc == 2 and err.startswith(f"genrec quantize: error: argument --device: device {device!r}") and \
            message in err, err
