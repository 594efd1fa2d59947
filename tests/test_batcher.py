"""Batcher.run: concurrent requests share one Engine.run per engine, each gets its own
slice back, a failing batch fails only its own requests, and the batcher keeps serving.
Both paths: the compute thread (jobs to encode) and inline search (vectors given)."""

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
    """Stands in for an Engine: answers job i of a batch with ids [tag, i-th k]."""

    def __init__(self, tag: int, fail_when=lambda jobs: False):
        self.tag, self.fail_when = tag, fail_when
        self.batches: list[int] = []
        self.threads: set[str] = set()

    def run(self, jobs: list[Job]):
        self.batches.append(len(jobs))
        self.threads.add(threading.current_thread().name)
        if self.fail_when(jobs):
            raise RuntimeError(f"engine {self.tag} failed")
        results = [JobResult(np.zeros(2, np.float32), [self.tag, job.k], [0.0]) for job in jobs]
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
    thread = "towerrec-compute" if encoded else threading.current_thread().name
    assert all(name.startswith(thread) for name in engine.threads), engine.threads


@pytest.mark.parametrize("encoded", [True, False], ids=["compute-thread", "inline-search"])
async def test_failing_engine_fails_only_its_requests_and_the_batcher_keeps_serving(encoded):
    """Two engines in one batch (as during a reload): one raises, the other answers."""
    batcher = await started()
    broken, healthy = Recorder(1, fail_when=lambda jobs: True), Recorder(2)
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
    assert "engine 1 failed" in str(answers[0])
    assert answers[1][0].ids == [2, 2]
    assert broken.batches == [2] and healthy.batches == [1, 1]
    assert again[0].ids == [2, 4]


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
    assert engine.batches == [1]
