"""Non-neural reference models, scored with exactly the protocol the towers use.

``fit(split, stage)`` learns from what is known before ``stage``: the training
sequences for validation, the training sequences plus each user's validation item for
test (``split.history(stage)``), the same data the user histories hold at scoring time.
EASE picks its regularisation on the validation targets, never on the test ones.

Memory stays bounded in the catalog size, except where a model cannot work without a
dense item-item matrix: user-item data is a sparse matrix, item-kNN keeps only each
item's ``neighbours`` most similar items (computed block by block), the Markov chain
holds its observed transitions only, and EASE, whose closed form needs a dense
[n_items, n_items] Gram inverse, runs only when that fits ``DENSE_BUDGET_BYTES``;
otherwise ``run_baselines`` skips it and says why (the eval report names it).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp

from training.metrics import evaluate
from training.split import Split, Stage

log = logging.getLogger(__name__)

DENSE_BUDGET_BYTES = 1 << 30  # the most one dense item-item baseline may hold
BLOCK_ELEMENTS = 1 << 22  # item-kNN: co-occurrence cells computed per block of items


def user_item(histories: Sequence[np.ndarray], n_items: int) -> sp.csr_matrix:
    """Binary float32 [len(histories), n_items] sparse indicator of each history."""
    lengths = np.fromiter((len(h) for h in histories), np.int64, len(histories))
    rows = np.repeat(np.arange(len(histories)), lengths)
    cols = np.concatenate([np.asarray(h, np.int64) for h in histories] + [np.zeros(0, np.int64)])
    x = sp.csr_matrix(
        (np.ones(len(cols), np.float32), (rows, cols)), shape=(len(histories), n_items)
    )
    x.data[:] = 1.0  # repeated items were summed
    return x


def _counts(sequences: Sequence[np.ndarray], n_items: int) -> np.ndarray:
    return np.bincount(
        np.concatenate(list(sequences) + [np.zeros(0, np.int64)]), minlength=n_items
    ).astype(np.float64)


class Popularity:
    """Number of training interactions per item, the same list for everyone."""

    name = "popularity"
    dense = False

    @staticmethod
    def memory_bytes(n_items: int, n_interactions: int) -> int:
        return 8 * n_interactions

    def fit(self, split: Split, stage: Stage = "valid") -> Popularity:
        self.counts = _counts(split.history(stage), split.n_items).astype(np.float32)
        return self

    def score(self, users: np.ndarray, histories: Sequence[np.ndarray]) -> np.ndarray:
        return np.tile(self.counts, (len(users), 1))


class ItemKNN:
    """Cosine item-item similarity on the binary user-item train matrix; a user's score
    for an item is the sum of its similarities to the history items. Each item keeps
    its ``neighbours`` most similar items (ties: lower item id), so the model is a
    sparse [n_items, n_items] matrix with at most ``neighbours`` entries a row, built
    in blocks of items whose co-occurrence counts stay within ``BLOCK_ELEMENTS``."""

    name = "item-knn"
    dense = False

    def __init__(self, neighbours: int = 100):
        self.neighbours = neighbours

    @staticmethod
    def memory_bytes(n_items: int, n_interactions: int, neighbours: int = 100) -> int:
        # user-item matrix and its transpose (built from int64 pairs, then CSR: 4 + 4
        # bytes a cell), one block's co-occurrences with their sort order (~40 bytes a
        # cell), the kept neighbours (int32 rows and columns, float32 values, then CSR)
        return 40 * n_interactions + 40 * BLOCK_ELEMENTS + 20 * n_items * neighbours

    def fit(self, split: Split, stage: Stage = "valid") -> ItemKNN:
        n = split.n_items
        x = user_item(split.history(stage), n)
        xt = x.T.tocsr()
        norm = np.sqrt(np.diff(xt.indptr)).astype(np.float32)  # binary: sqrt(users per item)
        k = max(0, min(self.neighbours, n - 1))
        step = max(1, BLOCK_ELEMENTS // max(n, 1))
        rows, cols, vals = [], [], []
        for start in range(0, n, step):
            co = (xt[start : start + step] @ x).tocoo()
            r, c = co.row.astype(np.int64), co.col.astype(np.int64)
            v = co.data / np.maximum(norm[start + r] * norm[c], 1e-12)
            off_diagonal = c != start + r
            r, c, v = r[off_diagonal], c[off_diagonal], v[off_diagonal]
            order = np.lexsort((c, -v, r))  # per row: best first, lower id on ties
            r, c, v = r[order], c[order], v[order]
            rank = np.arange(len(r)) - np.searchsorted(r, r)
            keep = rank < k
            rows.append((start + r[keep]).astype(np.int32))
            cols.append(c[keep].astype(np.int32))
            vals.append(v[keep].astype(np.float32))
        self.sim = sp.csr_matrix(
            (np.concatenate(vals + [np.zeros(0, np.float32)]),
             (np.concatenate(rows + [np.zeros(0, np.int32)]),
              np.concatenate(cols + [np.zeros(0, np.int32)]))),
            shape=(n, n),
        )  # fmt: skip
        return self

    def score(self, users: np.ndarray, histories: Sequence[np.ndarray]) -> np.ndarray:
        return (user_item(histories, self.sim.shape[0]) @ self.sim).toarray()


class EASE:
    """Embarrassingly Shallow Autoencoder (Steck 2019): B = I - P / diag(P) with
    P = (XᵀX + λI)⁻¹, i.e. a zero-diagonal item-item regression in closed form.
    λ is the grid value with the best validation NDCG@10 (never the test split).
    Dense by nature: ``memory_bytes`` is what ``run_baselines`` checks against the
    budget before fitting it."""

    name = "ease"
    dense = True
    GRID = (10.0, 50.0, 100.0, 200.0, 500.0, 1000.0)

    def __init__(self, lambdas: Sequence[float] = GRID):
        self.lambdas = tuple(lambdas)

    @staticmethod
    def memory_bytes(n_items: int, n_interactions: int = 0) -> int:
        # float64 Gram, LAPACK's working copy and the inverse, float32 weights
        return 28 * n_items * n_items

    @staticmethod
    def weights(gram: np.ndarray, lam: float) -> np.ndarray:
        diagonal = np.diag_indices_from(gram)
        gram[diagonal] += lam
        p = np.linalg.inv(gram)
        gram[diagonal] -= lam
        p /= -np.diag(p)
        p[diagonal] = 0.0
        return p.astype(np.float32)

    @staticmethod
    def gram(histories: Sequence[np.ndarray], n_items: int) -> np.ndarray:
        x = user_item(histories, n_items).astype(np.float64)
        return (x.T @ x).toarray()

    def fit(self, split: Split, stage: Stage = "valid") -> EASE:
        gram = self.gram(split.train, split.n_items)
        self.validation: dict[float, float] = {}
        for lam in self.lambdas:
            self.b = self.weights(gram, lam)
            metrics = evaluate(self.score, split, "valid", ks=(10,))["full"]
            self.validation[lam] = metrics["NDCG@10"]
        self.lam = max(self.lambdas, key=self.validation.__getitem__)
        del gram, self.b
        self.b = self.weights(self.gram(split.history(stage), split.n_items), self.lam)
        return self

    def score(self, users: np.ndarray, histories: Sequence[np.ndarray]) -> np.ndarray:
        return np.asarray(user_item(histories, len(self.b)) @ self.b)


class MarkovChain:
    """First-order Markov chain: P(next | last history item) from consecutive pairs of
    the training sequences, additively smoothed towards popularity (one pseudo-count
    spread by popularity), so an unseen last item falls back to popularity. The
    transition counts are a sparse matrix: only observed pairs are stored."""

    name = "markov"
    dense = False

    @staticmethod
    def memory_bytes(n_items: int, n_interactions: int) -> int:
        return 40 * n_interactions  # pair arrays and the CSR counts

    def fit(self, split: Split, stage: Stage = "valid") -> MarkovChain:
        n, sequences = split.n_items, split.history(stage)
        prev = np.concatenate([s[:-1] for s in sequences] + [np.zeros(0, np.int64)])
        nxt = np.concatenate([s[1:] for s in sequences] + [np.zeros(0, np.int64)])
        self.transitions = sp.csr_matrix(
            (np.ones(len(prev), np.float32), (prev, nxt)), shape=(n, n)
        )  # duplicates are summed: counts
        self.out_degree = np.bincount(prev, minlength=n).astype(np.float32)
        pop = _counts(sequences, n)
        self.popularity = (pop / max(pop.sum(), 1.0)).astype(np.float32)
        return self

    def score(self, users: np.ndarray, histories: Sequence[np.ndarray]) -> np.ndarray:
        out = np.tile(self.popularity, (len(histories), 1))
        rows = np.flatnonzero([len(h) > 0 for h in histories])
        last = np.array([histories[r][-1] for r in rows], dtype=np.int64)
        out[rows] += self.transitions[last].toarray()
        out[rows] /= (self.out_degree[last] + 1.0)[:, None]
        return out


BASELINES = (Popularity, ItemKNN, EASE, MarkovChain)


def unaffordable(
    n_items: int, n_interactions: int, budget: int = DENSE_BUDGET_BYTES
) -> dict[str, str]:
    """``{name: reason}`` of the dense baselines whose memory would exceed ``budget``
    (the others grow linearly with the data and always run)."""
    out = {}
    for model in (m for m in BASELINES if m.dense):
        need = model.memory_bytes(n_items, n_interactions)
        if need > budget:
            out[model.name] = (
                f"needs ~{need / 2**30:.1f} GiB for {n_items} items "
                f"(budget {budget / 2**30:.1f} GiB)"
            )
    return out


def run_baselines(
    split: Split, seed: int = 0, budget: int = DENSE_BUDGET_BYTES
) -> tuple[dict[str, dict], dict[str, str]]:
    """Fit and evaluate every baseline that fits ``budget``: full metrics on valid and
    test, the sampled (99 negatives, ``seed``) test metrics, and the time of the
    test-stage fit. Returns (results, skipped) with skipped = ``{name: reason}``."""
    n_interactions = sum(len(t) for t in split.train)
    skipped = unaffordable(split.n_items, n_interactions, budget)
    results = {}
    for cls in BASELINES:
        if cls.name in skipped:
            log.warning("baseline %s skipped: %s", cls.name, skipped[cls.name])
            continue
        model = cls()
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
    return results, skipped
