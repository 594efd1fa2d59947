"""Metrics against hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from training.metrics import (
    evaluate,
    mask_history,
    rank_metrics,
    sample_negatives,
    target_ranks,
    top_k,
)
from training.split import Split

# a 5-item catalog, three users
SCORES = np.array(
    [
        [0.1, 0.9, 0.5, 0.7, 0.3],  # history {1}, target 2: only item 3 is higher -> rank 1
        [0.2, 0.2, 0.2, 0.1, 0.0],  # no history, target 1: ties do not count -> rank 0
        [0.9, 0.2, 0.2, 0.1, 0.0],  # history {0}, target 4: items 1, 2, 3 higher -> rank 3
    ],
    dtype=np.float32,
)
HISTORIES = [np.array([1]), np.array([], dtype=np.int64), np.array([0])]
TARGETS = np.array([2, 1, 4])


def test_ranks_exclude_history_and_resolve_ties_for_the_target():
    masked = mask_history(SCORES, HISTORIES, TARGETS)
    assert masked[0, 1] == -np.inf and masked[2, 0] == -np.inf and SCORES[0, 1] == 0.9
    assert target_ranks(masked, TARGETS).tolist() == [1, 0, 3]


def test_a_reconsumed_target_stays_rankable():
    masked = mask_history(SCORES[:1], [np.array([1, 2])], np.array([2]))
    assert masked[0, 2] == np.float32(0.5) and masked[0, 1] == -np.inf


def test_metrics_from_ranks_by_hand():
    m = rank_metrics(np.array([1, 0, 3]), ks=(1, 2, 5))
    assert m["HR@1"] == pytest.approx(1 / 3) and m["HR@2"] == pytest.approx(2 / 3)
    assert m["HR@5"] == 1.0 and m["Recall@2"] == m["HR@2"]
    assert m["NDCG@1"] == pytest.approx(1 / 3)
    assert m["NDCG@2"] == pytest.approx((1 / math.log2(3) + 1) / 3)
    assert m["NDCG@5"] == pytest.approx((1 / math.log2(3) + 1 + 1 / math.log2(5)) / 3)
    assert m["MRR"] == pytest.approx((1 / 2 + 1 + 1 / 4) / 3)


def test_top_k_is_sorted_with_lower_ids_first_on_ties():
    assert top_k(SCORES, 3).tolist() == [[1, 3, 2], [0, 1, 2], [0, 1, 2]]


def split_of(histories, valid, test, n_items=5) -> Split:
    return Split(
        n_items=n_items,
        train=[np.asarray(h, np.int64) for h in histories],
        valid=np.array(valid),
        test=np.array(test),
    )


def test_evaluate_full_and_sampled_by_hand():
    # empty train: the test histories are the validation items {1}, {3}, {0}
    split = split_of([[], [], []], valid=[1, 3, 0], test=TARGETS)

    def scorer(users, histories):
        assert [h.tolist() for h in histories] == [[1], [3], [0]]
        return SCORES[users]

    result = evaluate(scorer, split, "test", ks=(1, 2), sampled=True, seed=0)
    full = result["full"]
    # user 1's history {3} does not change its rank: ranks are 1, 0, 3
    assert full["HR@1"] == pytest.approx(1 / 3) and full["HR@2"] == pytest.approx(2 / 3)
    assert full["MRR"] == pytest.approx((1 / 2 + 1 + 1 / 4) / 3)
    # top-1 lists after masking: user 0 -> 3, user 1 -> 0, user 2 -> 1
    assert full["Coverage@1"] == pytest.approx(3 / 5)
    assert full["Coverage@2"] == pytest.approx(4 / 5)  # + items 2 (user 0) and 1 (user 1)
    # fewer than 99 free items: every free item is a negative, so sampled == full
    assert result["sampled100"] == {
        "HR@10": 1.0,
        "NDCG@10": pytest.approx((1 / math.log2(3) + 1 + 1 / math.log2(5)) / 3),
    }
    assert set(evaluate(scorer, split, "test")) == {"full"}


def test_evaluate_rejects_nan_and_bad_shapes():
    split = split_of([[0], [0], [0]], valid=[1, 1, 1], test=[2, 2, 2])
    with pytest.raises(ValueError, match="NaN"):
        evaluate(lambda u, h: np.full((len(u), 5), np.nan), split, "valid")
    with pytest.raises(ValueError, match="expected"):
        evaluate(lambda u, h: np.zeros((len(u), 4)), split, "valid")


def test_sample_negatives_are_distinct_outside_history_and_seeded():
    seen = np.array([3, 0, 7, 7, 500])
    a = sample_negatives(np.random.default_rng(1), 1000, seen)
    b = sample_negatives(np.random.default_rng(1), 1000, seen)
    assert a.tolist() == b.tolist() and len(set(a.tolist())) == 99
    assert not set(a.tolist()) & {0, 3, 7, 500} and a.min() >= 0 and a.max() < 1000
    few = sample_negatives(np.random.default_rng(0), 8, seen[:3])  # only 5 free items
    assert sorted(few.tolist()) == [1, 2, 4, 5, 6]
    draws = np.concatenate(
        [sample_negatives(np.random.default_rng(s), 10, np.array([4]), n=3) for s in range(2000)]
    )
    counts = np.bincount(draws, minlength=10)
    assert counts[4] == 0 and counts[[0, 1, 2, 3, 5, 6, 7, 8, 9]].min() > 550  # ~667 each
