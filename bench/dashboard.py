"""What the dashboard adds to a /recommend answer, and what one live recall check costs.

    python -m bench.dashboard [--items 100000] [--dim 64]

- per answer (on the request path): ``Dashboard.served`` for k=10, with ANN_RECALL_SAMPLE
  0 and 0.01 (the exposure record, a random draw, a queue put when sampled);
- per check (background thread): ``ItemIndex.exact`` over a flat catalog of ``--items``
  random vectors (the exact scan the sampled searches are re-run with).

Wall and CPU (process) time, on one thread.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import typer

from index import ItemIndex
from index.factory import IndexSpec
from service.core.config import Settings
from service.dashboard import Dashboard
from service.metrics import Metrics


@dataclass
class FakeEngine:
    item_ids: list[str]


@dataclass
class FakePlan:
    k: int = 10
    exclude: set[int] = field(default_factory=set)
    allowed: object = None
    vector: np.ndarray | None = None


def timed(fn, n: int) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(n):
        fn()
    return (time.perf_counter() - wall) / n, (time.process_time() - cpu) / n


def main(items: int = 100_000, dim: int = 64, answers: int = 200_000, checks: int = 50) -> None:
    import faiss

    faiss.omp_set_num_threads(1)
    rng = np.random.default_rng(0)
    engine = FakeEngine([str(i) for i in range(items)])
    ids, scores = list(range(10)), [1.0] * 10
    print("| measured | wall | CPU |\n| --- | --- | --- |")
    for sample in (0.0, 0.01):
        dash = Dashboard(Settings(ann_recall_sample=sample), Metrics(), lambda: "flat")
        plan = FakePlan(vector=np.ones(dim, np.float32))
        wall, cpu = timed(lambda d=dash, p=plan: d.served(engine, p, ids, scores), answers)
        label = f"served() per answer, k=10, sample {sample}"
        print(f"| {label} | {wall * 1e6:.2f} µs | {cpu * 1e6:.2f} µs |")
    index = ItemIndex.from_vectors(
        rng.standard_normal((items, dim)).astype(np.float32), IndexSpec("flat")
    )
    query = rng.standard_normal(dim).astype(np.float32)
    index.exact(query, 10, {1, 2, 3})
    wall, cpu = timed(lambda: index.exact(query, 10, {1, 2, 3}), checks)
    print(f"| exact check, {items:,} items × {dim} | {wall * 1e3:.2f} ms | {cpu * 1e3:.2f} ms |")


if __name__ == "__main__":
    typer.run(main)
