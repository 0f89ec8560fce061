"""A diverged model never scores: NaN / inf target scores are misses, metrics stay in [0, 1]."""

import numpy as np
import pytest
import torch

from fusion.candidates import ndcg_at, union_ranks
from genrec.metrics import MISS_RANK, metrics_from_ranks, per_instance_ndcg, ranks_from_scores


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_target_score_is_a_miss(bad):
    scores = np.array([[0.1, 0.5, 0.2], [0.3, 0.2, 0.1]], np.float32)
    scores[0, 1] = bad
    ranks = ranks_from_scores(scores, np.array([1, 0]))
    assert ranks.tolist() == [MISS_RANK, 0]  # the NaN/inf target misses; the healthy row keeps its hit
    m = metrics_from_ranks(ranks, ks=(1, 10))
    assert m["ndcg@10"] == pytest.approx(0.5) and m["recall@1"] == pytest.approx(0.5)


def test_all_nan_scores_give_zero_not_inf():
    scores = np.full((4, 5), np.nan, np.float32)
    m = metrics_from_ranks(ranks_from_scores(scores, np.arange(4)))
    assert all(v == 0.0 for v in m.values())


def test_masked_history_and_nan_together():
    scores = np.array([[np.nan, 1.0, 2.0]], np.float32)
    assert ranks_from_scores(scores, np.array([0]), exclude=[np.array([2])]).tolist() == [MISS_RANK]


def test_negative_or_fractional_ranks_are_refused():
    with pytest.raises(ValueError, match="ranks must be >= 0.*-1 for instance 1"):
        metrics_from_ranks(np.array([0, -1, 2]))
    with pytest.raises(ValueError, match="whole numbers"):
        metrics_from_ranks(np.array([0.5, 1.0]))
    with pytest.raises(ValueError, match=">= 0"):
        per_instance_ndcg(np.array([-1]), 10)


def test_fusion_union_ranks_treat_nan_target_as_miss():
    fused = np.array([[np.nan, 0.2, 0.1], [0.3, 0.9, 0.1]])
    ranks = union_ranks(fused, np.array([0, 1]))
    assert ranks.tolist() == [MISS_RANK, 0]
    assert ndcg_at(ranks, 10) == pytest.approx(0.5)


def test_fusion_union_ranks_with_a_validity_mask_keep_infinite_scores():
    fused = np.array([[-np.inf, 0.2, 0.1], [0.3, np.inf, np.nan], [0.3, 0.2, 0.1]])
    valid = np.array([[True, True, True], [True, True, True], [True, True, False]])
    # a target scored -inf is a miss (not the last candidate), as one scored +inf or padded; a candidate
    # scored +inf or NaN counts as padding (behind the target), as topk_items drops it from the served list
    assert union_ranks(fused, np.array([0, 1, 2]), valid).tolist() == [MISS_RANK] * 3
    assert union_ranks(fused, np.array([1, 0, 0]), valid).tolist() == [0, 0, 0]


def test_nan_scores_of_other_items_never_make_a_hit():
    scores = np.full((2, 50), np.nan, np.float32)
    scores[:, 7] = 0.5  # only the target is finite
    scores[1, :] = np.linspace(0, 1, 50)  # a healthy row, target 7 ranks 42nd
    ranks = ranks_from_scores(scores, np.array([7, 7]))
    assert ranks.tolist() == [49, 42]
    assert metrics_from_ranks(ranks, ks=(10,))["ndcg@10"] == 0.0
    fused = np.array([[np.nan, np.nan, 0.3]])
    assert union_ranks(fused, np.array([2])).tolist() == [2]
def test_stable_topk_breaks_ties_by_index_and_keeps_infinities():
    import torch

    from genrec.metrics import stable_topk

    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 4, (6, 40), generator=g).float()  # many ties
    scores[0, :5] = float("nan")
    scores[1, :3] = -float("inf")
    scores[2, 7] = float("inf")
    for k in (1, 5, 12, 40, 50):
        values, index = stable_topk(scores, k)
        clean = torch.nan_to_num(scores, nan=-float("inf"), posinf=float("inf"), neginf=-float("inf"))
        for r in range(len(scores)):  # reference: sort by (score descending, index ascending)
            want = sorted(range(40), key=lambda j: (-clean[r, j].item(), j))[:k]
            assert index[r].tolist() == want and values[r].tolist() == clean[r, want].tolist()
    assert stable_topk(scores, 40)[0][1, -3:].isneginf().all() and stable_topk(scores, 1)[0][2, 0].isposinf()



def test_an_exclude_list_of_another_length_than_the_rows_is_refused():
    """A shorter list left the other rows unmasked silently (a longer one was a bare IndexError)."""
    from genrec.metrics import ranks_from_score_chunks

    scores = np.array([[3.0, 2.0, 1.0], [3.0, 2.0, 1.0]])
    with pytest.raises(ValueError, match="exclude must hold one array per row: 1 for 2 rows"):
        ranks_from_scores(scores, np.array([1, 1]), exclude=[np.array([0])])
    with pytest.raises(ValueError, match="exclude must hold one array per row: 1 for 2 rows"):
        ranks_from_score_chunks(lambda rows, a, b: torch.as_tensor(scores[rows if rows is not None else slice(None), a:b]),
                                3, np.array([1, 1]), chunk=1, exclude=[np.array([0])])
    assert ranks_from_scores(scores, np.array([1, 1]), exclude=[np.array([0]), np.array([], np.int64)]).tolist() == [0, 1]


def test_ties_by_index_rank_as_the_served_lists_do():
    """The recipe's test ranks come from top-k lists (ties in index order); a model ranked from its
    scores (the end-to-end joint model) was ranked with ties against the target, a stricter rule in
    the same table. ``ties="index"`` gives exactly the lists' ranks, NaN and infinities included."""
    from genrec.metrics import ranks_from_topk, stable_topk

    g = torch.Generator().manual_seed(1)
    scores = torch.randint(0, 3, (40, 30), generator=g).float()  # many exact ties
    scores[0, :4] = float("nan")
    scores[1, 5] = float("inf")
    targets = torch.randint(0, 30, (40,), generator=g).numpy()
    targets[1] = 5
    from_list = ranks_from_topk(stable_topk(scores, 30)[1].numpy(), targets)
    by_index = ranks_from_scores(scores, targets, ties="index")
    finite = np.isfinite(scores.numpy()[np.arange(40), targets])
    assert (by_index[finite] == from_list[finite]).all() and (by_index[~finite] == MISS_RANK).all()
    against = ranks_from_scores(scores, targets)
    assert (against[finite] >= by_index[finite]).all() and (against[finite] > by_index[finite]).any()
    zeros = np.zeros((4, 100))
    assert ranks_from_scores(zeros, np.array([0, 3, 7, 50]), ties="index").tolist() == [0, 3, 7, 50]
    assert ranks_from_scores(zeros, np.array([0, 3, 7, 50])).tolist() == [99] * 4
    with pytest.raises(ValueError, match="ties must be one of"):
        ranks_from_scores(zeros, np.array([0, 0, 0, 0]), ties="lower")


def test_exclusions_and_targets_outside_the_catalogue_are_refused_by_both_rankers():
    """A -1 (a padded history) masked the last item in ranks_from_scores and was skipped by the
    chunked ranker; a too-large index was a bare IndexError in one and skipped in the other."""
    from genrec.metrics import ranks_from_score_chunks

    scores = np.array([[0.0, 5.0, 1.0, 3.0]])

    def chunked(exclude, targets=np.array([0]), chunk=2):
        return ranks_from_score_chunks(lambda rows, a, b: torch.as_tensor(scores[:, a:b]), 4, targets, chunk=chunk,
                                       exclude=exclude)

    for bad in (-1, 7):
        for rank in (lambda ex: ranks_from_scores(scores, np.array([0]), exclude=ex), chunked):
            with pytest.raises(ValueError, match=rf"exclude\[0\] holds item {bad}, outside the catalogue 0..3"):
                rank([np.array([bad, 1])])
    assert ranks_from_scores(scores, np.array([0]), exclude=[np.array([1])]).tolist() == chunked([np.array([1])]) == [2]
    with pytest.raises(ValueError, match="targets must lie in 0..3, got 4..4"):
        ranks_from_scores(scores, np.array([4]))


def test_chunked_ranks_of_no_instance_are_empty():
    """reshape(0, -1, 255) in the row counter was ambiguous: no targets with chunk >= 255 crashed."""
    from genrec.metrics import ranks_from_score_chunks

    got = ranks_from_score_chunks(lambda rows, a, b: torch.zeros((0, b - a)), 600, np.zeros(0, np.int64), chunk=300)
    assert got.shape == (0,)


def test_cutoffs_beyond_the_list_length_are_refused_by_results_by_label():
    """results_by_label reported recall@20 equal to recall@10 for 10-item lists."""
    from fusion.report import results_by_label

    lists = {"m": np.tile(np.arange(10), (3, 1))}
    with pytest.raises(ValueError, match=r"cutoffs \[20\] exceed the ranked-list length 10"):
        results_by_label(lists, np.array([0, 1, 12]), ks=(10, 20))
    assert results_by_label(lists, np.array([0, 1, 12]), ks=(10,))["m"]["all"]["recall@10"] == pytest.approx(2 / 3)
