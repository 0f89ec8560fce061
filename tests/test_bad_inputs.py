"""Every row of the bad-input matrix (tests/bad_inputs.py, table in bench/bad_inputs.md): the bad
input gets its error type and a message naming what is wrong."""

from __future__ import annotations

import re

import pytest

from bad_inputs import CASES, CliFailed, World, run_case


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return World(tmp_path_factory.mktemp("bad_inputs"))


def test_matrix_is_large_and_unique():
    ids = [c.id for c in CASES]
    assert len(ids) >= 40 and len(set(ids)) == len(ids)
    assert {c.area for c in CASES} == {"data", "config", "cli", "checkpoint", "run directory", "library"}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case, world):
    error = run_case(case, world)
    assert error is not None, f"{case.id}: no error raised"
    assert isinstance(error, case.error), f"{case.id}: {type(error).__name__}: {error}"
    if isinstance(error, CliFailed):
        assert error.code == 2, f"{case.id}: exit code {error.code}: {error}"
    assert re.search(case.match, str(error)), f"{case.id}: message {str(error)!r} does not match {case.match!r}"
