"""Runs engine work, coalescing concurrent requests into one batch.

- Work that needs the user tower (cache misses) runs its forward pass on one dedicated
  compute thread, so the event loop stays free for I/O while torch computes. With
  ``MICROBATCH`` on, requests that arrive while a batch is computing wait in a queue and go
  together as the next batch: one forward pass and one search for all of them.
  ``BATCH_WINDOW_MS`` optionally waits a little longer for more requests before a batch
  starts (0 = never wait: at low load a request runs alone at once, at high load batches
  form by themselves). The compute thread runs the forward pass only
  (``Engine.forward_inputs``: one call into the traced tower, which releases the GIL);
  the inputs are built before it on the event loop, and the batch's search runs after it
  on the event loop too, like the inline searches below (on the compute thread with
  ``INLINE_SEARCH`` off). With all three on the compute thread it took the GIL ~10 times
  per batch, waiting for the loop each time: a cache miss cost ~10 % more CPU.
- Search-only work (cache hits, similar items) is one FAISS call of ~0.1 ms, cheaper than
  the hand-off to another thread (measured ~0.25 ms of CPU per hop on 2 cores). With
  ``INLINE_SEARCH`` on it runs on the event loop instead, batched per loop iteration:
  every search-only request that reaches the batcher in the same iteration shares one
  search, run right after the callbacks already scheduled (no added wait).
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from service.engine import BatchTiming, Engine, Job, JobResult
from service.metrics import Metrics
from service.traced import Inputs

log = logging.getLogger("service.batcher")


class _Ticket:
    __slots__ = ("engine", "jobs", "future")

    def __init__(self, engine: Engine, jobs: list[Job], future: asyncio.Future):
        self.engine, self.jobs, self.future = engine, jobs, future


# (the tickets of one engine, their results or the exception, timing)
_Outcome = tuple[list[_Ticket], "list[JobResult] | Exception", "BatchTiming | None"]


class Batcher:
    def __init__(
        self,
        metrics: Metrics,
        *,
        enabled: bool,
        window_s: float,
        max_batch: int,
        torch_threads: int = 1,
        faiss_threads: int = 1,
        inline_search: bool = True,
    ):
        self.metrics = metrics
        self.inline_search = inline_search
        self._pending: list[_Ticket] = []
        self._flush_scheduled = False
        self.enabled, self.window_s, self.max_batch = enabled, window_s, max_batch
        self.torch_threads, self.faiss_threads = torch_threads, faiss_threads
        self.executor = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="towerrec-compute", initializer=self._init_thread
        )
        self._queue: asyncio.Queue[_Ticket] | None = None
        self._task: asyncio.Task | None = None

    def _init_thread(self) -> None:
        """OpenMP thread counts are per calling thread (and torch and FAISS each bundle
        their own OpenMP runtime): set both here, on the thread that runs the work."""
        import faiss
        import torch

        torch.set_num_threads(self.torch_threads)
        faiss.omp_set_num_threads(self.faiss_threads)

    def start(self) -> None:
        if self.enabled and self._task is None:
            self._queue = asyncio.Queue()
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        self.executor.shutdown(wait=False, cancel_futures=True)

    def _observe(self, size: int, timing) -> None:
        self.metrics.batch_size.observe(size)
        if timing.encoded:
            self.metrics.inference.observe(timing.inference_s)
        self.metrics.search.observe(timing.search_s)

    async def run(self, engine: Engine, jobs: list[Job]) -> list[JobResult]:
        """Results for ``jobs`` (in order), computed together with any concurrent work."""
        if not jobs:
            return []
        loop = asyncio.get_running_loop()
        if self.inline_search and all(job.vector is not None for job in jobs):
            future = loop.create_future()
            self._pending.append(_Ticket(engine, jobs, future))
            if not self._flush_scheduled:
                self._flush_scheduled = True
                loop.call_soon(self._flush_searches)
            return await future
        if not self.enabled or self._queue is None:
            results, timing = await loop.run_in_executor(self.executor, engine.run, jobs)
            self._observe(len(jobs), timing)
            return results
        future = loop.create_future()
        self._queue.put_nowait(_Ticket(engine, jobs, future))
        return await future

    def _flush_searches(self) -> None:
        """Run every pending search-only ticket, one index search per engine."""
        tickets, self._pending = self._pending, []
        self._flush_scheduled = False
        self._settle(self._compute(_by_engine(tickets)))

    def _compute(self, groups: list[list[_Ticket]]) -> list[_Outcome]:
        """One ``Engine.run`` per group (the search: after ``_encode`` every job has its
        vector). Touches no future, so it may run on the compute thread."""
        outcomes: list[_Outcome] = []
        for group in groups:
            jobs = [job for ticket in group for job in ticket.jobs]
            try:
                outcomes.append((group, *group[0].engine.run(jobs)))
            except Exception as e:  # noqa: BLE001 - handed to each request of the group
                outcomes.append((group, e, None))
        return outcomes

    def _settle(self, outcomes: list[_Outcome]) -> None:
        """Hand each request its slice of its group's results (on the event loop)."""
        for group, results, timing in outcomes:
            if isinstance(results, Exception):
                self._fail(group, results, sum(len(t.jobs) for t in group))
                continue
            self._observe(sum(len(t.jobs) for t in group), timing)
            pos = 0
            for ticket in group:
                n = len(ticket.jobs)
                if not ticket.future.done():
                    ticket.future.set_result(results[pos : pos + n])
                pos += n

    def _fail(self, group: list[_Ticket], error: Exception, size: int) -> None:
        log.error("batch of %d failed: %s", size, error, exc_info=error)
        for ticket in group:
            if not ticket.future.done():
                ticket.future.set_exception(error)

    async def _loop(self) -> None:
        queue = self._queue
        assert queue is not None
        while True:
            tickets = [await queue.get()]
            size = len(tickets[0].jobs)
            if self.window_s > 0 and size < self.max_batch:
                await asyncio.sleep(self.window_s)
            while size < self.max_batch and not queue.empty():
                ticket = queue.get_nowait()
                tickets.append(ticket)
                size += len(ticket.jobs)
            try:
                groups = await self._encode(_by_engine(tickets))
                if self.inline_search:
                    outcomes = self._compute(groups)
                else:
                    loop = asyncio.get_running_loop()
                    outcomes = await loop.run_in_executor(self.executor, self._compute, groups)
            except asyncio.CancelledError:
                for ticket in tickets:
                    ticket.future.cancel()
                raise
            self._settle(outcomes)

    async def _encode(self, groups: list[list[_Ticket]]) -> list[list[_Ticket]]:
        """Give each job without a vector its vector: inputs built here, forward passes on
        the compute thread. Returns the groups that still have work (a failed group's
        requests get its exception)."""
        ready: list[list[_Ticket]] = []
        work: list[tuple[list[_Ticket], list[Job], Inputs]] = []
        for group in groups:
            todo = [job for ticket in group for job in ticket.jobs if job.vector is None]
            if not todo:
                ready.append(group)
                continue
            try:
                work.append((group, todo, group[0].engine.tower_inputs([j.query for j in todo])))
            except Exception as e:  # noqa: BLE001 - handed to each request of the group
                self._fail(group, e, len(todo))
        if not work:
            return ready
        calls = [(group[0].engine, inputs) for group, _, inputs in work]
        loop = asyncio.get_running_loop()
        encoded = await loop.run_in_executor(self.executor, _forward, calls)
        for (group, todo, _), (vectors, seconds) in zip(work, encoded, strict=True):
            if isinstance(vectors, Exception):
                self._fail(group, vectors, len(todo))
                continue
            for row, job in enumerate(todo):
                job.vector = vectors[row]
            self.metrics.inference.observe(seconds)
            ready.append(group)
        return ready


def _forward(calls: list[tuple[Engine, Inputs]]) -> list[tuple[np.ndarray | Exception, float]]:
    """Each engine's forward pass (on the compute thread): (vectors or the error, seconds)."""
    out: list[tuple[np.ndarray | Exception, float]] = []
    for engine, inputs in calls:
        started = time.perf_counter()
        try:
            out.append((engine.forward_inputs(inputs), time.perf_counter() - started))
        except Exception as e:  # noqa: BLE001 - handed to each request of that engine
            out.append((e, 0.0))
    return out


def _by_engine(tickets: list[_Ticket]) -> list[list[_Ticket]]:
    """The live tickets grouped by engine (a reload can leave two in one batch)."""
    groups: dict[int, list[_Ticket]] = {}
    for ticket in tickets:
        if not ticket.future.done():
            groups.setdefault(id(ticket.engine), []).append(ticket)
    return list(groups.values())
