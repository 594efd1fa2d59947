"""Forward passes of the user tower, off the event loop and coalesced into micro-batches.

Cache misses need the user tower; everything else a request does (Redis, the index
search, rendering) stays on the event loop. ``encode`` queues the request's queries; one
task takes everything queued, builds the tower's input tensors on the loop, and runs the
forward pass alone on a single compute thread (one call into torch, which releases the
GIL while it computes). Requests that arrive while a batch computes form the next one, so
at high load one forward pass serves many requests, and at low load a request runs at once
(no waiting window). Only the forward pass crosses threads: building inputs or searching
there made the thread take the GIL many times per batch, each time waiting for the loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from service.engine import Engine, Query
from service.metrics import Metrics

log = logging.getLogger("service.batcher")


class Batcher:
    def __init__(self, metrics: Metrics, *, max_batch: int, torch_threads: int, faiss_threads: int):
        self.metrics, self.max_batch = metrics, max_batch
        self.torch_threads, self.faiss_threads = torch_threads, faiss_threads
        self.executor = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="towerrec-compute", initializer=self._init_thread
        )
        self._queue: list[tuple[Engine, list[Query], asyncio.Future]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None

    def _init_thread(self) -> None:
        """OpenMP thread counts are per calling thread (and torch and FAISS each bundle
        their own OpenMP runtime): set both on the thread that runs the forward passes."""
        import faiss
        import torch

        torch.set_num_threads(self.torch_threads)
        faiss.omp_set_num_threads(self.faiss_threads)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self.executor.shutdown(wait=False, cancel_futures=True)

    async def encode(self, engine: Engine, queries: list[Query]) -> np.ndarray:
        """The user vectors of ``queries`` (float32 [n, d]), from a shared forward pass."""
        future = asyncio.get_running_loop().create_future()
        self._queue.append((engine, queries, future))
        self._wake.set()
        return await future

    def _take(self) -> list[tuple[Engine, list[Query], asyncio.Future]]:
        taken, size = [], 0
        while self._queue and (not taken or size + len(self._queue[0][1]) <= self.max_batch):
            entry = self._queue.pop(0)
            if not entry[2].done():  # a client that went away needs no vector
                taken.append(entry)
                size += len(entry[1])
        if not self._queue:
            self._wake.clear()
        return taken

    async def _loop(self) -> None:
        while True:
            await self._wake.wait()
            for engine, group in _by_engine(self._take()):
                await self._run(engine, group)

    async def _run(self, engine: Engine, group: list) -> None:
        queries = [q for _, qs, _ in group for q in qs]
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        try:
            inputs = engine.tower_inputs(queries)
            vectors = await loop.run_in_executor(self.executor, engine.forward_inputs, inputs)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - handed to each request of the batch
            log.error("forward pass of %d failed: %s", len(queries), e, exc_info=e)
            _settle(group, e)
            return
        self.metrics.inference.observe(time.perf_counter() - started)
        self.metrics.batch_size.observe(len(queries))
        _settle(group, vectors)


def _by_engine(taken: list) -> list[tuple[Engine, list]]:
    """The batch grouped by engine (a reload can leave two versions in one batch)."""
    groups: dict[int, tuple[Engine, list]] = {}
    for entry in taken:
        groups.setdefault(id(entry[0]), (entry[0], []))[1].append(entry)
    return list(groups.values())


def _settle(group: list, result: np.ndarray | Exception) -> None:
    pos = 0
    for _, queries, future in group:
        n = len(queries)
        if not future.done():
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result[pos : pos + n])
        pos += n
