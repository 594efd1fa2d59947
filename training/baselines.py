"""Non-neural reference models, scored with exactly the protocol the towers use.

``fit(split, stage)`` learns from what is known before ``stage``: the training
sequences for validation, the training sequences plus each user's validation item for
test (``split.history(stage)``), the same data the user histories hold at scoring time.
EASE picks its regularisation on the validation targets, never on the test ones.
Item-item models hold dense [n_items, n_items] matrices: fine up to a few tens of
thousands of items.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from training.metrics import evaluate
from training.split import Split, Stage


def _rows(histories: Sequence[np.ndarray], n_items: int) -> np.ndarray:
    """Binary float32 [len(histories), n_items] indicator of each history."""
    out = np.zeros((len(histories), n_items), dtype=np.float32)
    for row, items in enumerate(histories):
        out[row, items] = 1.0
    return out


def _counts(sequences: Sequence[np.ndarray], n_items: int) -> np.ndarray:
    return np.bincount(
        np.concatenate(list(sequences) + [np.zeros(0, np.int64)]), minlength=n_items
    ).astype(np.float64)


class Popularity:
    """Number of training interactions per item, the same list for everyone."""

    name = "popularity"

    def fit(self, split: Split, stage: Stage = "valid") -> Popularity:
        self.counts = _counts(split.history(stage), split.n_items).astype(np.float32)
        return self

    def score(self, users: np.ndarray, histories: Sequence[np.ndarray]) -> np.ndarray:
        return np.tile(self.counts, (len(users), 1))


class ItemKNN:
    """Cosine item-item similarity on the binary user-item train matrix; a user's score
    for an item is the sum of its similarities to the history items. With
    ``neighbours``, each history item only votes for its most similar items."""

    name = "item-knn"

    def __init__(self, neighbours: int | None = None):
        self.neighbours = neighbours

    def fit(self, split: Split, stage: Stage = "valid") -> ItemKNN:
        x = _rows(split.history(stage), split.n_items)
        co = x.T @ x
        norm = np.sqrt(np.diag(co))
        sim = co / np.maximum(np.outer(norm, norm), 1e-12)
        np.fill_diagonal(sim, 0.0)
        if self.neighbours is not None and self.neighbours < split.n_items:
            weakest = np.argpartition(-sim, self.neighbours, axis=1)[:, self.neighbours :]
            np.put_along_axis(sim, weakest, 0.0, axis=1)
        self.sim = sim.astype(np.float32)
        return self

    def score(self, users: np.ndarray, histories: Sequence[np.ndarray]) -> np.ndarray:
        return _rows(histories, len(self.sim)) @ self.sim


class EASE:
    """Embarrassingly Shallow Autoencoder (Steck 2019): B = I - P / diag(P) with
    P = (XᵀX + λI)⁻¹, i.e. a zero-diagonal item-item regression in closed form.
    λ is the grid value with the best validation NDCG@10 (never the test split)."""

    name = "ease"
    GRID = (10.0, 50.0, 100.0, 200.0, 500.0, 1000.0)

    def __init__(self, lambdas: Sequence[float] = GRID):
        self.lambdas = tuple(lambdas)

    @staticmethod
    def weights(gram: np.ndarray, lam: float) -> np.ndarray:
        p = np.linalg.inv(gram + lam * np.eye(len(gram)))
        b = -p / np.diag(p)
        np.fill_diagonal(b, 0.0)
        return b.astype(np.float32)

    def fit(self, split: Split, stage: Stage = "valid") -> EASE:
        x = _rows(split.train, split.n_items).astype(np.float64)
        gram = x.T @ x
        self.validation: dict[float, float] = {}
        for lam in self.lambdas:
            self.b = self.weights(gram, lam)
            metrics = evaluate(self.score, split, "valid", ks=(10,))["full"]
            self.validation[lam] = metrics["NDCG@10"]
        self.lam = max(self.lambdas, key=self.validation.__getitem__)
        x = _rows(split.history(stage), split.n_items).astype(np.float64)
        self.b = self.weights(x.T @ x, self.lam)
        return self

    def score(self, users: np.ndarray, histories: Sequence[np.ndarray]) -> np.ndarray:
        return _rows(histories, len(self.b)) @ self.b


class MarkovChain:
    """First-order Markov chain: P(next | last history item) from consecutive pairs of
    the training sequences, additively smoothed towards popularity (one pseudo-count
    spread by popularity), so an unseen last item falls back to popularity."""

    name = "markov"

    def fit(self, split: Split, stage: Stage = "valid") -> MarkovChain:
        n, sequences = split.n_items, split.history(stage)
        prev = np.concatenate([s[:-1] for s in sequences] + [np.zeros(0, np.int64)])
        nxt = np.concatenate([s[1:] for s in sequences] + [np.zeros(0, np.int64)])
        pairs, counts = np.unique(prev * n + nxt, return_counts=True)  # sorted by prev
        self.prev, self.next, self.counts = pairs // n, pairs % n, counts.astype(np.float32)
        self.out_degree = np.bincount(prev, minlength=n).astype(np.float32)
        pop = _counts(sequences, n)
        self.popularity = (pop / max(pop.sum(), 1.0)).astype(np.float32)
        return self

    def score(self, users: np.ndarray, histories: Sequence[np.ndarray]) -> np.ndarray:
        out = np.tile(self.popularity, (len(histories), 1))
        for row, items in enumerate(histories):
            if len(items) == 0:
                continue
            last = items[-1]
            lo, hi = np.searchsorted(self.prev, [last, last + 1])
            out[row, self.next[lo:hi]] += self.counts[lo:hi]
            out[row] /= self.out_degree[last] + 1.0
        return out


def run_baselines(split: Split, seed: int = 0) -> dict[str, dict]:
    """Fit and evaluate every baseline: full metrics on valid and test, the sampled
    (99 negatives, ``seed``) test metrics, and the time of the test-stage fit."""
    results = {}
    for model in (Popularity(), ItemKNN(), EASE(), MarkovChain()):
        valid = evaluate(model.fit(split, "valid").score, split, "valid")["full"]
        start = time.perf_counter()
        model.fit(split, "test")
        fit_seconds = time.perf_counter() - start
        test = evaluate(model.score, split, "test", sampled=True, seed=seed)
        results[model.name] = {
            "valid": valid,
            "test": test["full"],
            "sampled100": test["sampled100"],
            "fit_seconds": fit_seconds,
        }
    return results
