"""Batcher.run: concurrent requests share one forward pass and one Engine.run (search) per
engine, each gets its own slice back, a failing batch fails only its own requests, and the
batcher keeps serving. Both paths: jobs to encode (inputs and search on the event loop,
the forward pass alone on the compute thread) and inline search (vectors given)."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from service.batcher import Batcher
from service.engine import BatchTiming, Job, JobResult, Query
from service.metrics import Metrics

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"


class Recorder:
    """Stands in for an Engine: encodes every query as [tag, tag], answers job i of a batch
    with ids [tag, i-th k], records the thread of each stage and fails in ``fail_in``."""

    def __init__(self, tag: int, fail_in: str | None = None):
        self.tag, self.fail_in = tag, fail_in
        self.batches: list[int] = []  # run() (search) batch sizes
        self.encoded: list[int] = []  # forward-pass batch sizes
        self.threads: dict[str, set[str]] = {}

    def _stage(self, name: str) -> None:
        self.threads.setdefault(name, set()).add(threading.current_thread().name)
        if self.fail_in == name:
            raise RuntimeError(f"engine {self.tag} failed in {name}")

    def tower_inputs(self, queries: list[Query]) -> int:
        self._stage("tower_inputs")
        return len(queries)

    def forward_inputs(self, n: int) -> np.ndarray:
        self.encoded.append(n)
        self._stage("forward_inputs")
        return np.full((n, 2), self.tag, np.float32)

    def run(self, jobs: list[Job]):
        self.batches.append(len(jobs))
        self._stage("run")
        results = [JobResult(job.vector, [self.tag, job.k], [0.0]) for job in jobs]
        return results, BatchTiming(encoded=sum(job.vector is None for job in jobs))


def job(k: int, encoded: bool) -> Job:
    vector = None if encoded else np.ones(2, np.float32)
    return Job(query=Query() if encoded else None, vector=vector, k=k, exclude=set())


async def started(**kw) -> Batcher:
    batcher = Batcher(Metrics(), enabled=True, window_s=0.01, max_batch=64, **kw)
    batcher.start()
    return batcher


@pytest.mark.parametrize("encoded", [True, False], ids=["compute-thread", "inline-search"])
async def test_concurrent_requests_share_one_run_and_get_their_own_results(encoded):
    batcher, engine = await started(), Recorder(7)
    try:
        requests = [[job(k, encoded)] for k in range(1, 6)] + [[job(6, encoded), job(7, encoded)]]
        answers = await asyncio.gather(*(batcher.run(engine, jobs) for jobs in requests))
    finally:
        await batcher.stop()
    assert engine.batches == [7]
    assert [[r.ids for r in rs] for rs in answers] == [[[7, k]] for k in range(1, 6)] + [
        [[7, 6], [7, 7]]
    ]
    loop_thread = {threading.current_thread().name}
    assert engine.threads.pop("run") == loop_thread  # searches run on the event loop
    if encoded:  # inputs on the loop, the forward pass alone on the compute thread
        assert engine.encoded == [7]
        assert engine.threads.pop("tower_inputs") == loop_thread
        (compute,) = engine.threads.pop("forward_inputs")
        assert compute.startswith("towerrec-compute")
        assert all(r.vector.tolist() == [7, 7] for rs in answers for r in rs)
    assert not engine.threads


@pytest.mark.parametrize(
    "encoded, stage",
    [(True, "tower_inputs"), (True, "forward_inputs"), (True, "run"), (False, "run")],
    ids=["inputs", "forward-pass", "search-after-forward", "inline-search"],
)
async def test_failing_engine_fails_only_its_requests_and_the_batcher_keeps_serving(encoded, stage):
    """Two engines in one batch (as during a reload): one raises, the other answers."""
    batcher = await started()
    broken, healthy = Recorder(1, fail_in=stage), Recorder(2)
    try:
        answers = await asyncio.gather(
            batcher.run(broken, [job(1, encoded)]),
            batcher.run(healthy, [job(2, encoded)]),
            batcher.run(broken, [job(3, encoded)]),
            return_exceptions=True,
        )
        again = await batcher.run(healthy, [job(4, encoded)])
    finally:
        await batcher.stop()
    assert [type(a) for a in answers] == [RuntimeError, list, RuntimeError]
    assert f"engine 1 failed in {stage}" in str(answers[0])
    assert answers[1][0].ids == [2, 2]
    assert healthy.batches == [1, 1] and again[0].ids == [2, 4]
    assert broken.batches == ([2] if stage == "run" else [])


async def test_cancelled_request_is_left_out_of_the_batch():
    batcher, engine = await started(), Recorder(3)
    try:
        first = asyncio.ensure_future(batcher.run(engine, [job(1, True)]))
        gone = asyncio.ensure_future(batcher.run(engine, [job(2, True)]))
        await asyncio.sleep(0)  # both queued; the batch waits window_s for more
        gone.cancel()
        assert (await first)[0].ids == [3, 1]
    finally:
        await batcher.stop()
    assert engine.batches == [1] and engine.encoded == [1]


async def test_without_inline_search_every_search_runs_on_the_compute_thread():
    """INLINE_SEARCH=false (e.g. a big HNSW index): searches leave the event loop too."""
    batcher, engine = await started(inline_search=False), Recorder(5)
    try:
        await asyncio.gather(
            batcher.run(engine, [job(1, True)]), batcher.run(engine, [job(2, False)])
        )
    finally:
        await batcher.stop()
    assert engine.batches == [2] and engine.encoded == [1]
    assert engine.threads["tower_inputs"] == {threading.current_thread().name}
    (search,) = engine.threads["run"]
    assert search.startswith("towerrec-compute") and engine.threads["forward_inputs"] == {search}
