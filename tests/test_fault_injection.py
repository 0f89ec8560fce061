"""SIGKILL at random moments and inside atomic writes, then resume: results identical to an
uninterrupted run (a small version of bench/fault_injection.py, which does 24 kills)."""

import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "fault_injection.py"


@pytest.mark.slow
def test_killed_runs_resume_to_identical_results(tmp_path):
    spec = importlib.util.spec_from_file_location("fault_injection", BENCH)
    fault = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fault)
    lines: list[str] = []
    totals = fault.inject(tmp_path, time_kills=1, write_kills=2, seed=1, log=lines.append)
    assert totals["kills"] >= 2, lines  # the write kills always land
    assert totals == {**totals, "resumes": 3, "identical": 3, "failures": 0}, lines
