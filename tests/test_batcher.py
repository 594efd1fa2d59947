"""Batcher.encode: concurrent cache misses share one forward pass per engine (inputs built
on the event loop, the forward pass alone on the compute thread), each request gets its
own rows back, a failing forward pass fails only its own requests, and the batcher keeps
serving."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from service.batcher import Batcher
from service.engine import Query
from service.metrics import Metrics

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"


class Recorder:
    """Stands in for an Engine: encodes query i of a batch as [tag, i], records the thread
    of each stage and the batch sizes, and fails in ``fail_in``."""

    def __init__(self, tag: int, fail_in: str | None = None):
        self.tag, self.fail_in = tag, fail_in
        self.encoded: list[int] = []
        self.threads: dict[str, set[str]] = {}

    def _stage(self, name: str) -> None:
        self.threads.setdefault(name, set()).add(threading.current_thread().name)
        if self.fail_in == name:
            raise RuntimeError(f"engine {self.tag} failed in {name}")

    def tower_inputs(self, queries: list[Query]) -> list[int]:
        self._stage("tower_inputs")
        return [q.user_index for q in queries]

    def forward_inputs(self, rows: list[int]) -> np.ndarray:
        self.encoded.append(len(rows))
        self._stage("forward_inputs")
        return np.array([[self.tag, r] for r in rows], np.float32)


async def started(max_batch: int = 64) -> Batcher:
    batcher = Batcher(Metrics(), max_batch=max_batch, torch_threads=1, faiss_threads=1)
    batcher.start()
    return batcher


def queries(*indexes: int) -> list[Query]:
    return [Query(user_index=i) for i in indexes]


async def test_concurrent_requests_share_one_forward_pass_and_get_their_own_rows():
    batcher, engine = await started(), Recorder(7)
    try:
        requests = [queries(i) for i in range(1, 6)] + [queries(6, 7)]
        answers = await asyncio.gather(*(batcher.encode(engine, qs) for qs in requests))
    finally:
        await batcher.stop()
    assert engine.encoded == [7]  # all of them arrived before the first batch started
    assert [a[:, 1].tolist() for a in answers] == [[i] for i in range(1, 6)] + [[6, 7]]
    assert engine.threads["tower_inputs"] == {threading.current_thread().name}
    assert engine.threads["forward_inputs"] == {"towerrec-compute_0"}


async def test_requests_arriving_during_a_batch_form_the_next_one_up_to_max_batch():
    batcher, engine = await started(max_batch=3), Recorder(1)
    try:
        answers = await asyncio.gather(*(batcher.encode(engine, queries(i)) for i in range(7)))
    finally:
        await batcher.stop()
    assert engine.encoded == [3, 3, 1]
    assert [a[0, 1] for a in answers] == list(range(7))


async def test_two_engines_in_one_batch_run_separately():
    """A reload can leave requests for the old and the new engine in one batch."""
    batcher, old, new = await started(), Recorder(1), Recorder(2)
    try:
        a, b, c = await asyncio.gather(
            batcher.encode(old, queries(0)),
            batcher.encode(new, queries(1)),
            batcher.encode(old, queries(2)),
        )
    finally:
        await batcher.stop()
    assert (old.encoded, new.encoded) == ([2], [1])
    assert a.tolist() == [[1, 0]] and b.tolist() == [[2, 1]] and c.tolist() == [[1, 2]]


@pytest.mark.parametrize("stage", ["tower_inputs", "forward_inputs"])
async def test_a_failing_batch_fails_its_requests_only_and_the_batcher_keeps_serving(stage):
    batcher, bad, good = await started(), Recorder(1, fail_in=stage), Recorder(2)
    try:
        results = await asyncio.gather(
            batcher.encode(bad, queries(0)),
            batcher.encode(good, queries(1)),
            return_exceptions=True,
        )
        assert isinstance(results[0], RuntimeError) and stage in str(results[0])
        assert results[1].tolist() == [[2, 1]]
        again = await batcher.encode(good, queries(5))
        assert again.tolist() == [[2, 5]]
    finally:
        await batcher.stop()


async def test_a_cancelled_request_does_not_break_the_batch():
    batcher, engine = await started(), Recorder(3)
    try:
        gone = asyncio.ensure_future(batcher.encode(engine, queries(0)))
        kept = asyncio.ensure_future(batcher.encode(engine, queries(1)))
        gone.cancel()
        assert (await kept).tolist() == [[3, 1]]
    finally:
        await batcher.stop()
