"""Leave-one-out ranking metrics.

Full protocol: each evaluated user's target is ranked against the whole catalog, with
the items of the user's history excluded (score -inf; the target itself always stays
rankable). Sampled protocol (NCF): the target against 99 random items outside the
history, drawn with a fixed seed so every model sees the same negatives; reported
separately because it is far more optimistic than the full ranking.

Ranks are 0-based and count only the items with a *strictly greater* score than the
target: ties are resolved in the target's favour. A scorer that returns NaN is an
error (NaN would compare as a perfect rank).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from training.split import Split, Stage

KS = (10, 20, 50)
N_NEGATIVES = 99
EVAL_ELEMENTS = 1 << 23  # scores held at once (users x catalog): ~32 MB a float32 copy
Scorer = Callable[[np.ndarray, list[np.ndarray]], np.ndarray]  # (users, histories) -> [b, n_items]


def mask_history(
    scores: np.ndarray, histories: Sequence[np.ndarray], targets: np.ndarray
) -> np.ndarray:
    """A copy of ``scores`` with each row's history items at -inf, targets excepted."""
    out = np.array(scores, dtype=np.float32)
    rows = np.repeat(np.arange(len(histories)), [len(h) for h in histories])
    cols = np.concatenate([np.asarray(h, np.int64) for h in histories] + [np.zeros(0, np.int64)])
    keep = cols != targets[rows]
    out[rows[keep], cols[keep]] = -np.inf
    return out


def target_ranks(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """0-based rank of each row's target: the number of items scoring strictly higher."""
    target_scores = scores[np.arange(len(targets)), targets]
    return (scores > target_scores[:, None]).sum(axis=1)


def rank_metrics(ranks: np.ndarray, ks: Sequence[int] = KS) -> dict[str, float]:
    """HR@K, NDCG@K (one target: 1/log2(rank+2) if rank < K), Recall@K (= HR@K with a
    single target) and MRR (untruncated) from 0-based ranks."""
    ranks = np.asarray(ranks, dtype=np.float64)

    def mean(x: np.ndarray) -> float:
        return float(x.mean()) if x.size else float("nan")

    out: dict[str, float] = {}
    for k in ks:
        hit = ranks < k
        out[f"HR@{k}"] = mean(hit)
        out[f"NDCG@{k}"] = mean(np.where(hit, 1.0 / np.log2(ranks + 2), 0.0))
        out[f"Recall@{k}"] = out[f"HR@{k}"]
    out["MRR"] = mean(1.0 / (ranks + 1))
    return out


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Item ids of each row's k best scores, best first (ties: lower item id first)."""
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    part.sort(axis=1)
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


def sample_negatives(
    rng: np.random.Generator, n_items: int, seen: np.ndarray, n: int = N_NEGATIVES
) -> np.ndarray:
    """``n`` distinct items outside ``seen`` (all of them if fewer remain)."""
    seen = np.unique(seen)
    free = n_items - len(seen)
    picks = rng.choice(free, size=min(n, free), replace=False)
    # the j-th free item is j plus the number of seen items at or before it
    return picks + np.searchsorted(seen - np.arange(len(seen)), picks, side="right")


def sampled_ranks(
    scores: np.ndarray, targets: np.ndarray, negatives: Sequence[np.ndarray]
) -> np.ndarray:
    """0-based rank of each target among itself and its negatives (strictly greater only)."""
    return np.array(
        [(row[neg] > row[t]).sum() for row, t, neg in zip(scores, targets, negatives, strict=True)],
        dtype=np.int64,
    )


def evaluate(
    scorer: Scorer,
    split: Split,
    stage: Stage,
    ks: Sequence[int] = KS,
    batch_size: int = 256,
    sampled: bool = False,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """Metrics of ``scorer`` on the ``stage`` targets: ``{"full": {...}}``, plus
    ``"sampled100"`` (HR@10, NDCG@10 against 99 seeded negatives) when ``sampled``.
    ``Coverage@K`` is the fraction of the catalog in at least one user's top-K.
    Users are scored ``batch_size`` at a time, fewer when that many rows of the catalog
    would exceed ``EVAL_ELEMENTS`` scores, so memory stays bounded on any catalog."""
    batch_size = max(1, min(batch_size, EVAL_ELEMENTS // max(split.n_items, 1)))
    users, targets = split.eval_users(stage), split.targets(stage)
    histories = split.history(stage)
    rng = np.random.default_rng(seed)
    covered = {k: np.zeros(split.n_items, dtype=bool) for k in ks}
    ranks, ranks_sampled = [], []
    for start in range(0, len(users), batch_size):
        batch = users[start : start + batch_size]
        hist, target = [histories[u] for u in batch], targets[batch]
        scores = np.asarray(scorer(batch, hist), dtype=np.float32)
        if scores.shape != (len(batch), split.n_items):
            raise ValueError(
                f"scorer returned {scores.shape}, expected {(len(batch), split.n_items)}"
            )
        if np.isnan(scores).any():
            raise ValueError("scorer returned NaN scores")
        if sampled:
            negatives = [
                sample_negatives(rng, split.n_items, np.append(h, t))
                for h, t in zip(hist, target, strict=True)
            ]
            ranks_sampled.append(sampled_ranks(scores, target, negatives))
        scores = mask_history(scores, hist, target)
        ranks.append(target_ranks(scores, target))
        top = top_k(scores, max(ks))
        finite = np.isfinite(np.take_along_axis(scores, top, axis=1))
        for k in ks:
            covered[k][top[:, :k][finite[:, :k]]] = True
    full = rank_metrics(np.concatenate(ranks + [np.zeros(0)]), ks)
    full |= {f"Coverage@{k}": float(covered[k].mean()) for k in ks}
    result = {"full": full}
    if sampled:
        at10 = rank_metrics(np.concatenate(ranks_sampled + [np.zeros(0)]), ks=(10,))
        result["sampled100"] = {"HR@10": at10["HR@10"], "NDCG@10": at10["NDCG@10"]}
    return result
