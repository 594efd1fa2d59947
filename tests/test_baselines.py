"""Baselines: hand-checked on tiny splits, clear wins on synthetic data, and the
reference numbers on the real ML-100K."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from training.baselines import EASE, ItemKNN, MarkovChain, Popularity, run_baselines
from training.data.movielens import load_ml100k
from training.data.synthetic import generate
from training.metrics import evaluate
from training.split import Split, leave_one_out

ML100K = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ml-100k"
REFERENCE = {  # ML-100K test split, leave-one-out, full ranking: HR@10, NDCG@10
    "popularity": (0.086, 0.045),
    "ease": (0.149, 0.072),
    "markov": (0.145, 0.079),
}


def tiny_split() -> Split:
    train = [np.array([0, 1, 2]), np.array([0, 1]), np.array([2, 3]), np.array([1, 2, 3])]
    return Split(n_items=5, train=train, valid=np.array([3, 2, 0, 4]), test=np.array([4, 3, 1, 0]))


def test_popularity_counts_what_is_known_before_the_stage():
    split = tiny_split()
    assert Popularity().fit(split).score(np.array([0]), [])[0].tolist() == [2, 3, 3, 2, 0]
    assert Popularity().fit(split, "test").counts.tolist() == [3, 3, 4, 3, 1]


def test_item_knn_cosine_by_hand():
    knn = ItemKNN().fit(tiny_split())
    # items 0 and 1 share users 0 and 1; |0| = 2, |1| = 3
    assert knn.sim[0, 1] == pytest.approx(2 / np.sqrt(2 * 3)) and knn.sim[1, 1] == 0
    scores = knn.score(np.array([0]), [np.array([0, 2])])[0]
    assert scores[1] == pytest.approx(knn.sim[0, 1] + knn.sim[2, 1])
    top1 = ItemKNN(neighbours=1).fit(tiny_split()).sim
    assert (np.diff(top1.indptr) <= 1).all() and top1.nnz > 0
    # the kept neighbour is the most similar one: item 0's is item 1 (its only co-item)
    assert top1[0].indices.tolist() == [1]


def test_ease_closed_form():
    split = tiny_split()
    ease = EASE(lambdas=(1.0, 5.0)).fit(split)
    assert ease.lam in (1.0, 5.0) and set(ease.validation) == {1.0, 5.0}
    x = np.zeros((4, 5))
    for u, items in enumerate(split.train):
        x[u, items] = 1
    p = np.linalg.inv(x.T @ x + ease.lam * np.eye(5))
    b = np.eye(5) - p / np.diag(p)
    assert np.allclose(ease.b, b, atol=1e-5) and np.all(np.diag(ease.b) == 0)


def test_markov_transitions_smoothed_by_popularity():
    split = tiny_split()
    markov = MarkovChain().fit(split)
    # pairs: 0->1 (x2), 1->2 (x2), 2->3 (x2); popularity [2, 3, 3, 2, 0] / 10
    scores = markov.score(np.array([0, 1]), [np.array([3, 0]), np.array([4])])
    pop = np.array([2, 3, 3, 2, 0]) / 10
    assert np.allclose(scores[0], (pop + [0, 2, 0, 0, 0]) / 3)
    assert np.allclose(scores[1], pop)  # no transitions out of item 4: popularity


@pytest.fixture(scope="module")
def synthetic_results() -> dict:
    results, skipped = run_baselines(leave_one_out(generate()), seed=0)
    assert skipped == {}
    return results


def test_baselines_beat_popularity_on_synthetic_data(synthetic_results: dict):
    pop = synthetic_results["popularity"]["test"]
    for name in ("item-knn", "ease", "markov"):
        test = synthetic_results[name]["test"]
        assert test["HR@10"] >= 2 * pop["HR@10"], name
        assert test["NDCG@10"] >= 2 * pop["NDCG@10"], name
    assert synthetic_results["markov"]["test"]["HR@10"] > synthetic_results["ease"]["test"]["HR@10"]


def test_run_baselines_reports_everything(synthetic_results: dict):
    assert list(synthetic_results) == ["popularity", "item-knn", "ease", "markov"]
    for result in synthetic_results.values():
        assert {"HR@10", "NDCG@50", "Recall@20", "MRR", "Coverage@10"} <= set(result["valid"])
        assert set(result["sampled100"]) == {"HR@10", "NDCG@10"}
        assert result["sampled100"]["HR@10"] >= result["test"]["HR@10"]
        assert result["fit_seconds"] >= 0


def test_reference_numbers_on_real_ml100k():
    if not (ML100K / "u.data").is_file():
        pytest.fail(f"the real ML-100K is expected at {ML100K} (read-only shared data)")
    ds = load_ml100k(ML100K)
    assert (ds.n_users, ds.n_items, len(ds.users)) == (943, 1682, 100_000)
    split = leave_one_out(ds)
    assert len(split.eval_users("test")) == 943
    for model in (Popularity(), EASE(), MarkovChain()):
        test = evaluate(model.fit(split, "test").score, split, "test", ks=(10,))["full"]
        hr, ndcg = REFERENCE[model.name]
        assert test["HR@10"] == pytest.approx(hr, abs=0.01), model.name
        assert test["NDCG@10"] == pytest.approx(ndcg, abs=0.01), model.name


def test_item_knn_keeps_the_top_neighbours_of_the_dense_similarity():
    split = leave_one_out(generate(n_users=300, n_items=200, seed=1))
    x = np.zeros((split.n_users, split.n_items))
    for u, items in enumerate(split.train):
        x[u, items] = 1
    co = x.T @ x
    norm = np.sqrt(np.diag(co))
    dense = co / np.maximum(np.outer(norm, norm), 1e-12)
    np.fill_diagonal(dense, 0)
    knn = ItemKNN(neighbours=10).fit(split)
    sim = knn.sim.toarray()
    for i in range(split.n_items):
        kept = np.flatnonzero(sim[i])
        assert len(kept) == min(10, np.count_nonzero(dense[i]))
        assert np.allclose(sim[i, kept], dense[i, kept], atol=1e-6)
        if len(kept):  # nothing left out scores above what was kept
            assert np.delete(dense[i], kept).max() <= sim[i, kept].min() + 1e-6


def test_a_dense_baseline_over_budget_is_skipped_and_named():
    split = leave_one_out(generate(n_users=200, n_items=300))
    need = EASE.memory_bytes(300)
    results, skipped = run_baselines(split, budget=need - 1)
    assert list(results) == ["popularity", "item-knn", "markov"]
    assert list(skipped) == ["ease"] and "300 items" in skipped["ease"]
    results, skipped = run_baselines(split, budget=need)
    assert "ease" in results and skipped == {}
