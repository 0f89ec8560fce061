"""bench/joint_synthetic.py at a toy size (80 users, one epoch, one seed): every row of the table is
produced for both tower sizes, the files are written, and ``--train-unseen-share`` reaches the data.
The figures themselves are measured by the benchmark (BENCHMARKS.md), not here."""

import json
import math

import numpy as np
import pytest

from tests.scripts import load_script


@pytest.fixture(scope="module")
def bench():
    return load_script("bench/joint_synthetic.py")


def test_the_benchmark_runs_every_model_and_writes_its_table(bench, tmp_path, monkeypatch):
    seen = []
    make = bench.make_synthetic

    def spy(**kw):
        seen.append(kw.get("train_unseen_share"))
        return make(**kw)

    monkeypatch.setattr(bench, "make_synthetic", spy)
    summary = bench.main(["--seeds", "0", "--shares", "0.5", "--users", "80", "--epochs", "1",
                          "--train-unseen-share", "1", "--out", str(tmp_path)])
    assert seen == [1.0]
    (row,) = summary["runs"]["0.5"]
    models = ["post-hoc", "end-to-end joint", "holdout joint, separate towers", "holdout joint, joint towers",
              "holdout joint, separate towers, retrained", "holdout joint, both trainings, validation picks"]
    assert set(row) == {"sasrec", "generative"} | {f"{m} ({size})" for m in models for size in ("full", "half")}
    for name, r in row.items():
        assert 0 <= r["all"] <= 1 and r["params"] > 0 and r["seconds"] >= 0, name
        if "gate_auc" in r:
            assert math.isnan(r["gate_auc"]) or 0 <= r["gate_auc"] <= 1, name
    # half-width towers have fewer parameters than full-width ones
    assert row["post-hoc (half)"]["params"] < row["post-hoc (full)"]["params"]
    assert row["holdout joint, both trainings, validation picks (full)"]["tower_training"] in ("separate", "joint")
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["args"]["train_unseen_share"] == 1.0
    table = (tmp_path / "table.md").read_text()
    assert "train_unseen_share 1.0" in table and table.count("\n| ") == 1 + len(row)  # the header and one line per model
    assert np.isclose(saved["runs"]["0.5"][0]["sasrec"]["all"], row["sasrec"]["all"])
