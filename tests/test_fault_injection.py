"""SIGKILL at random moments and inside atomic writes, then resume: results identical to an
uninterrupted run (a small version of bench/fault_injection.py, which does 24 kills)."""

from pathlib import Path

import pytest

from tests.scripts import load_script

BENCH = Path(__file__).resolve().parents[1] / "bench" / "fault_injection.py"


@pytest.mark.slow
def test_killed_runs_resume_to_identical_results(tmp_path):
    fault = load_script(BENCH, "fault_injection")
    lines: list[str] = []
    totals = fault.inject(tmp_path, time_kills=1, write_kills=2, seed=1, log=lines.append)
    assert totals["kills"] >= 2, lines  # the write kills always land
    assert totals == {**totals, "resumes": 3, "identical": 3, "failures": 0}, lines
