"""Recall against exact search and query latency (``python -m index eval``, bench/index.py).

Recall@k of an ANN setting = share of the exact top-k (inner product, or cosine when
normalised) that the ANN top-k contains, averaged over queries. Latency is measured one
query per call, on however many FAISS threads the caller configured.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from index import factory
from index.factory import IndexSpec
from index.item_index import ItemIndex
from training.bundle import ITEM_EMBEDDINGS, load_array, resolve

SearchFn = Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]


def exact_top_k(
    vectors: np.ndarray, queries: np.ndarray, k: int, normalize: bool = False
) -> np.ndarray:
    """Exact top-``k`` ids (positions) per query by brute force with ``IndexFlatIP``."""
    flat = faiss.IndexFlatIP(vectors.shape[1])
    flat.add(factory.prepare(vectors, normalize))
    _, ids = flat.search(factory.prepare(queries, normalize), min(k, len(vectors)))
    return ids


def recall(found: np.ndarray, truth: np.ndarray, k: int) -> float:
    """Mean over rows of |found[:k] ∩ truth[:k]| / |truth[:k]| (ignoring -1 padding)."""
    hits = total = 0
    for f, t in zip(found[:, :k], truth[:, :k], strict=True):
        t = t[t >= 0]
        hits += len(np.intersect1d(f[f >= 0], t))
        total += len(t)
    return hits / max(total, 1)


def user_like_queries(vectors: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """Gaussian samples with the catalog's mean and covariance (stand-ins for user vectors)."""
    rng = np.random.default_rng(seed)
    x = np.asarray(vectors, dtype=np.float64)
    cov = np.cov(x, rowvar=False) + 1e-6 * np.eye(x.shape[1])
    return rng.multivariate_normal(x.mean(axis=0), cov, size=n).astype(np.float32)


def single_query_ms(search: SearchFn, queries: np.ndarray, k: int, warmup: int = 10) -> np.ndarray:
    """Latency in ms of each query searched alone."""
    for q in queries[:warmup]:
        search(q[None], k)
    out = np.empty(len(queries))
    for i, q in enumerate(queries):
        start = time.perf_counter()
        search(q[None], k)
        out[i] = (time.perf_counter() - start) * 1e3
    return out


def batch_qps(
    search: SearchFn, queries: np.ndarray, k: int, batch: int = 64, min_seconds: float = 0.5
) -> float:
    """Queries per second when searching ``batch`` queries per call."""
    chunks = [queries[i : i + batch] for i in range(0, len(queries) - batch + 1, batch)]
    done, start = 0, time.perf_counter()
    while True:
        for chunk in chunks:
            search(chunk, k)
            done += len(chunk)
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return done / elapsed


def percentiles(ms: np.ndarray) -> dict[str, float]:
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))}


def faiss_search(index: ItemIndex) -> SearchFn:
    """The raw FAISS search of an ``ItemIndex`` (no exclusion handling, no exact fallback)."""
    raw = index.faiss_index

    def search(q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        params = factory.search_parameters(index.spec, k)
        return raw.search(factory.prepare(q, index.normalized), k, params=params)

    return search


def evaluate(
    bundle: str | Path,
    spec: IndexSpec,
    *,
    normalize: bool = False,
    queries: int = 1000,
    threads: int = 1,
    seed: int = 0,
) -> dict[str, Any]:
    """Build ``spec`` in memory over the bundle's item embeddings and measure it.

    Two query sets: a sample of the item vectors themselves, and user-like Gaussian
    vectors with the catalog's mean and covariance (user vectors are not stored in the
    bundle). Recall@10/@100 is against exact search on the same (raw or cosine) scores.
    """
    vectors = np.asarray(load_array(resolve(bundle) / ITEM_EMBEDDINGS), dtype=np.float32)
    faiss.omp_set_num_threads(max(threads, 2))
    start = time.perf_counter()
    index = ItemIndex.from_vectors(vectors, spec, normalize=normalize)
    build_s = time.perf_counter() - start
    faiss.omp_set_num_threads(threads)
    rng = np.random.default_rng(seed)
    sets = {
        "items": vectors[rng.choice(len(vectors), min(queries, len(vectors)), replace=False)],
        "user-like": user_like_queries(vectors, queries, seed),
    }
    search = faiss_search(index)
    report: dict[str, Any] = {
        "spec": index.spec.label(),
        "items": len(vectors),
        "dim": vectors.shape[1],
        "normalized": normalize,
        "build_s": build_s,
        "index_bytes": factory.serialized_bytes(index.faiss_index),
        "threads": threads,
        "queries": {},
    }
    for name, q in sets.items():
        truth = exact_top_k(vectors, q, 100, normalize)
        result: dict[str, Any] = {"queries": len(q)}
        for k in (10, 100):  # searched separately: HNSW explores max(efSearch, k)
            result[f"recall@{k}"] = recall(search(q, min(k, len(vectors)))[1], truth, k)
        ms = single_query_ms(search, q[:500], 10)
        report["queries"][name] = result | percentiles(ms)
    return report
