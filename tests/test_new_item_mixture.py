"""fusion.new_item_mixture: the two-part ranking of trained and new items, and its fit."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fusion.candidates import union_ranks
from fusion.new_item_mixture import (NewItemMixture, fit_new_item_mixture, log_softmax_rows, mix_new_items,
                                     mixture_ranks, mixture_topk, new_item_candidates)
from genrec.metrics import MISS_RANK


def test_settings_are_checked_and_round_trip():
    m = NewItemMixture(log_prior=-3.0, temperature=0.5, candidates=7, warm_temperature=0.1)
    assert NewItemMixture.from_dict(m.to_dict()) == m
    assert NewItemMixture.from_dict({"log_prior": -2}).temperature == 1.0
    numpy_made = NewItemMixture(np.float32(-2.0), np.float64(0.5), np.int64(3))  # NumPy numbers: plain ones kept
    assert numpy_made == NewItemMixture(-2.0, 0.5, 3) and type(numpy_made.candidates) is int
    for bad, key in (({"log_prior": 0.0}, "log_prior"), ({"log_prior": float("-inf")}, "log_prior"),
                     ({"log_prior": -1, "temperature": 0}, "temperature"), ({"log_prior": -1, "candidates": 0},
                                                                              "candidates"),
                     ({"log_prior": -1, "candidates": True}, "candidates"), ({"log_prior": "x"}, "log_prior"),
                     ({"log_prior": -1, "warm_temperature": -1.0}, "warm_temperature"),
                     ({"log_prior": -1, "temperature": True}, "temperature")):
        with pytest.raises(ValueError, match=rf"^{key} must be .*, got {bad[key]!r}$"):  # the key it is about
            NewItemMixture(**bad)
    with pytest.raises(ValueError, match="mix.json: unknown key"):
        NewItemMixture.from_dict({"log_prior": -1, "prior": 0.1}, "mix.json")
    with pytest.raises(ValueError, match="mix.json: expected a mapping"):
        NewItemMixture.from_dict([], "mix.json")


def test_log_softmax_rows_normalises_over_the_mask_only():
    x = np.array([[1.0, 5.0, 2.0], [1.0, 2.0, 3.0], [0.0, np.nan, 1.0]])
    m = np.array([[True, False, True], [False, False, False], [True, True, True]])
    out = log_softmax_rows(x, m)
    assert np.allclose(np.exp(out[0, [0, 2]]).sum(), 1) and out[0, 1] == -np.inf
    assert np.isneginf(out[1]).all()  # nothing to normalise over
    assert np.allclose(out[0, 2] - out[0, 0], 1.0)
    full = log_softmax_rows(x[:2])
    assert np.allclose(np.exp(full).sum(1), 1)


def test_new_candidates_skip_history_and_present_items_best_first():
    z = np.array([[0.1, 0.9, 0.5, 0.7], [0.4, 0.3, 0.2, 0.1]])
    items = np.array([[0, 1, 6], [2, -1, -1]])  # first_new = 4: item 6 is new column 2
    got = new_item_candidates(items, z, 4, 3, [np.array([5, 1]), np.array([0])])
    # row 0: column 1 (item 5) read, column 2 (item 6) a candidate already: items 7 then 4
    assert got.tolist() == [[7, 4, -1], [4, 5, 6]]


def test_mixture_scores_follow_the_formula_and_rank_new_items_by_their_text():
    first_new, lp, t = 3, math.log(0.2), 2.0
    items = np.array([[0, 1, 2, -1]])
    fused = np.array([[2.0, 1.0, 0.0, -np.inf]])
    z = np.array([[4.0, 0.0, 2.0]])  # new items 3, 4, 5
    mix = NewItemMixture(lp, t, candidates=2)
    out_items, scores = mix_new_items(items, fused, z, first_new, mix, [np.array([1])])
    assert out_items.tolist() == [[0, 1, 2, -1, 3, 5]]
    warm = np.log(np.exp([2.0, 1.0, 0.0]) / np.exp([2.0, 1.0, 0.0]).sum())  # warm_temperature 1
    new = z[0] / t - np.log(np.exp(z[0] / t).sum())
    assert np.allclose(scores[0, :3], math.log(0.8) + warm)
    assert np.allclose(scores[0, 4:], lp + new[[0, 2]])
    assert scores[0, 3] == -np.inf
    # the probabilities of the two parts add up to 1 - pi and pi where every item is a candidate
    all_items, all_scores = mix_new_items(items, fused, z, first_new, NewItemMixture(lp, t, 3), [np.array([1])])
    p = np.exp(all_scores[all_items >= 0])
    assert p.sum() == pytest.approx(1.0)
    assert p[all_items[all_items >= 0] >= first_new].sum() == pytest.approx(0.2)
    # a warm temperature sharpens the trained items' part, the new items' part unchanged
    _, sharp = mix_new_items(items, fused, z, first_new, NewItemMixture(lp, t, 2, 0.5), [np.array([1])])
    w2 = np.array([4.0, 2.0, 0.0])
    assert np.allclose(sharp[0, :3], math.log(0.8) + w2 - np.log(np.exp(w2).sum()))
    assert np.allclose(sharp[0, 4:], scores[0, 4:])


def test_topk_leaves_out_what_cannot_be_recommended():
    items = np.array([[4, 2, -1, 7], [1, 3, 5, 6]])
    scores = np.array([[0.5, -np.inf, 3.0, np.nan], [1.0, 2.0, 3.0, 0.0]])
    assert mixture_topk(items, scores, 3).tolist() == [[4, -1, -1], [5, 3, 1]]
    assert mixture_topk(items, scores, 6).shape == (2, 6)


def test_grid_ranks_match_the_scores_and_the_fit_honours_the_bound():
    rng = np.random.default_rng(0)
    n, first_new = 60, 8
    items = np.stack([rng.permutation(first_new)[:5] for _ in range(n)])
    fused = rng.normal(size=items.shape)
    z = rng.normal(size=(n, 4)) * 3
    hist = [np.array([rng.integers(first_new)]) for _ in range(n)]
    is_new = np.arange(n) < 20
    targets = np.where(is_new, first_new + z.argmax(1), items[:, 0])  # new targets: the best text logit
    points, ranks = mixture_ranks(items, fused, z, first_new, hist, targets, candidates=3,
                                  log_priors=(-6.0, -2.0, -0.5), temperatures=(1.0, 2.0), warm_temperatures=(0.1, 1.0))
    assert points[0] == (-math.inf, 1.0, 1.0) and len(points) == 1 + 12 and ranks.shape == (13, n)
    assert (ranks[0, is_new] == MISS_RANK).all()  # every new item last: never ranked
    assert (ranks[0, ~is_new] == union_ranks(fused, np.zeros(n, int))[~is_new]).all()
    for g in range(1, len(points)):  # each point's ranks are those of mix_new_items' scores
        lp, t, tw = points[g]
        all_items, scores = mix_new_items(items, fused, z, first_new, NewItemMixture(lp, t, 3, tw), hist)
        hit = all_items == targets[:, None]
        want = union_ranks(scores, np.where(hit.any(1), hit.argmax(1), -1), all_items >= 0)
        assert (ranks[g] == want).all()
    best = fit_new_item_mixture(ranks, points, is_new, bound=0.98)
    from genrec.metrics import per_instance_ndcg

    nd = np.stack([per_instance_ndcg(r, 10) for r in ranks])
    ok = nd[:, ~is_new].mean(1) >= 0.98 * nd[0, ~is_new].mean() - 1e-12
    assert best is not None and ok[best]
    assert nd[best, is_new].mean() == max(nd[g, is_new].mean() for g in range(len(points)) if ok[g])
    # against the list it would replace: the best point that also beats it on new targets and keeps
    # the others within the bound of it (here: a list as good as the best point on every instance)
    assert fit_new_item_mixture(ranks, points, is_new, bound=0.98, plain=ranks[best]) is None
    worse = np.where(is_new, MISS_RANK, ranks[0])  # no new target found, the in-set users as point 0
    assert fit_new_item_mixture(ranks, points, is_new, bound=0.98, plain=worse) == best
    # a bound nothing but point 0 meets, and no new-target instance: no mixture
    assert fit_new_item_mixture(ranks, points, is_new, bound=1.5) is None
    # with a served list of 2 items a rank beyond it is a miss: the fit must not count hits the list lacks
    _, short = mixture_ranks(items, fused, z, first_new, hist, targets, candidates=3, log_priors=(-6.0, -2.0, -0.5),
                             temperatures=(1.0, 2.0), warm_temperatures=(0.1, 1.0), length=2)
    assert (short == np.where(ranks < 2, ranks, MISS_RANK)).all() and (ranks >= 2).any()
    assert fit_new_item_mixture(ranks, points, np.zeros(n, bool)) is None


def test_the_benchs_cross_fitting_scores_each_fold_with_a_choice_made_on_the_other():
    """bench/new_item_generative.py's two-fold cross-fitting (the content term's and the mixture's)."""
    from tests.scripts import load_script

    bench = load_script("bench/new_item_generative.py")
    rng = np.random.default_rng(0)
    G, n_new, n_in = 6, 8, 10
    new, inn = rng.random((G, n_new)), np.full((G, n_in), 0.5)
    ref = np.full(n_in, 0.5)
    fold_new, fold_in = np.arange(n_new) % 2, np.arange(n_in) % 2
    inn[1] = 0.4  # grid point 1 breaks the in-set bound everywhere: never chosen
    new[1] = 1.0
    cf = bench.cross_fitted_rule(new, inn, ref, fold_new, fold_in)
    for f, g in enumerate(cf["chosen"]):
        fit = fold_new != f
        assert g == int(np.argmax(np.where(np.arange(G) == 1, -np.inf, new[:, fit].mean(1))))
    # a fold's own scores never change the choice it is scored with
    changed = new.copy()
    changed[:, fold_new == 0] = rng.random((G, int((fold_new == 0).sum())))
    assert bench.cross_fitted_rule(changed, inn, ref, fold_new, fold_in)["chosen"][0] == cf["chosen"][0]
    expect = np.mean([new[g, fold_new == f].mean() for f, g in enumerate(cf["chosen"])])
    assert cf["new"] == pytest.approx(expect)
    # no feasible point but the always-feasible one, and a fold without new-target users
    inn[:] = 0.4
    inn[0] = 0.5
    assert bench.cross_fitted_rule(new, inn, ref, fold_new, fold_in)["chosen"] == [0, 0]
    assert bench.cross_fitted_rule(new, inn, ref, np.zeros(n_new, int), fold_in) is None
