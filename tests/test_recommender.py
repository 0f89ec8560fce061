"""genrec.Recommender: a finished recipe run asked by raw item ids gives exactly the fused ranking
the recipe's fusion stage produced for the same histories."""

from __future__ import annotations

import numpy as np
import pytest

from genrec.errors import CheckpointError, DataFormatError
from genrec.recipe import StageContext, load_config
from genrec.recommender import Recommender
from test_pipeline import DEMO_YAML
from test_pipeline import reference, tiny  # noqa: F401 - test_pipeline's fixtures: the tiny demo run


@pytest.fixture(scope="module")
def rec(reference):  # noqa: F811
    return Recommender.from_run(reference)


def test_recommendations_equal_the_recipes_fused_test_ranking(rec, reference, tiny):  # noqa: F811
    config = load_config(DEMO_YAML, overrides=tiny)
    _, split = StageContext(reference, config).data()
    histories = [[rec.item_ids[i] for i in h] for h in split.test.histories]
    out = rec.recommend_batch(histories, k=10)
    with np.load(reference / "fusion" / "topk.npz") as z:
        expected = z[config.fusion.primary]
    for row, got in zip(expected, out):
        assert got.items == [rec.item_ids[i] for i in row if i >= 0]
        assert got.scores == sorted(got.scores, reverse=True) and not got.unknown_ids
    assert rec.recommend(histories[0], k=3).items == out[0].items[:3]


def test_unknown_ids_are_skipped_and_reported_or_refused(rec):
    known = rec.item_ids[:3]
    skipped = rec.recommend(["nope", *known, "nada"], k=5)
    assert skipped.unknown_ids == ["nope", "nada"] and skipped.items == rec.recommend(known, k=5).items
    with pytest.raises(DataFormatError, match=r"history 0: unknown item id\(s\) \['nope'\]"):
        rec.recommend(["nope", *known], on_unknown="error")
    empty = rec.recommend([], k=4)  # nothing to condition on: the most popular training items
    assert len(empty.items) == 4 and empty.scores == sorted(empty.scores, reverse=True)
    with pytest.raises(DataFormatError, match="a single string"):
        rec.recommend(known[0])
    with pytest.raises(ValueError, match=r"k must be between 1 and fusion.k \(10\)"):
        rec.recommend(known, k=11)


def test_other_methods_and_bad_run_directories(reference, tmp_path):  # noqa: F811
    assert Recommender.from_run(reference, method="adaptive").method.name == "adaptive"
    with pytest.raises(CheckpointError, match=r"no fusion method 'magic'; it holds \['fixed', 'adaptive', "):
        Recommender.from_run(reference, method="magic")
    with pytest.raises(CheckpointError, match=r"stage 'sasrec' has not finished there"):
        Recommender.from_run(tmp_path)
