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
