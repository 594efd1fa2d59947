"""The app's long-lived state: current engine, user store, batcher, reloads.

``runtime.engine`` is the single reference that reloads swap (one attribute assignment,
atomic for every reader). A new bundle is loaded on a worker thread while the old one
keeps serving; a bundle that fails to load is logged, counted and reported, and the old
engine stays in place.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import time
from dataclasses import dataclass

import torch

from index.store import gc_paused
from service.batcher import Batcher
from service.core.config import Settings
from service.dashboard import Dashboard
from service.engine import Engine, bundle_stamp
from service.metrics import Metrics
from service.schemas import Readiness
from service.store import UserStore, build_store
from training import bundle

log = logging.getLogger("service.runtime")


class ReloadError(Exception):
    """A new bundle could not be loaded; the previous engine keeps serving."""


@dataclass
class ReloadResult:
    reloaded: bool
    version: str
    previous: str | None
    message: str


class Runtime:
    def __init__(self, settings: Settings, metrics: Metrics):
        self.settings, self.metrics = settings, metrics
        self.engine: Engine | None = None
        self.load_error: str | None = None
        self.store: UserStore = build_store(settings, metrics)
        self.batcher = Batcher(
            metrics,
            max_batch=settings.batch_max,
            torch_threads=settings.torch_threads,
            faiss_threads=settings.faiss_threads,
        )
        self.dashboard = Dashboard(
            settings, metrics, lambda: self.engine.index.kind if self.engine else None
        )
        self._reload_lock = asyncio.Lock()
        self.item_write_lock = asyncio.Lock()  # one writer thread per worker (item API)
        self._failed_stamp: tuple | None = None
        self._failed_index_stamp: tuple | None = None
        self._watcher: asyncio.Task | None = None

    # --- lifecycle ----------------------------------------------------------------------
    async def start(self) -> None:
        import faiss

        # OpenMP settings are per thread: this is the event-loop thread (the searches)
        torch.set_num_threads(self.settings.torch_threads)
        faiss.omp_set_num_threads(self.settings.faiss_threads)
        self.batcher.start()
        self.dashboard.start()
        try:
            await self.reload(force=True)
        except ReloadError as e:
            log.error(
                "no model loaded at startup: %s (will retry when %s changes)",
                e,
                self.settings.artifacts_dir,
            )
        if self.settings.reload_poll_s > 0 or self.settings.index_poll_s > 0:
            self._watcher = asyncio.get_running_loop().create_task(
                self._watch(), name="bundle-watcher"
            )

    async def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            try:
                await self._watcher
            except asyncio.CancelledError:
                pass
        await self.batcher.stop()
        await asyncio.to_thread(self.dashboard.stop)
        await self.store.close()

    # --- reloads ------------------------------------------------------------------------
    def _load(self) -> Engine:
        """A bundle builds millions of long-lived objects for a big catalog (metadata,
        fragments): the cyclic collector would rescan them again and again while they are
        built, so it is off until the load ends (``reload`` turns it back on)."""
        gc.disable()
        s = self.settings
        return Engine(
            s.artifacts_dir,
            faiss_threads=s.faiss_threads,
            mmap=s.index_mmap,
            traced=s.traced_tower,
        )

    async def reload(self, *, force: bool = False) -> ReloadResult:
        async with self._reload_lock:
            old = self.engine
            previous = old.version if old else None
            try:
                stamp = bundle_stamp(self.settings.artifacts_dir)
            except Exception as e:  # noqa: BLE001
                return self._failed(None, previous, e)
            if old is not None and stamp == old.stamp and not force:
                return ReloadResult(False, old.version, previous, "bundle unchanged")
            try:
                engine = await asyncio.to_thread(self._load)
            except Exception as e:  # noqa: BLE001 - any broken bundle keeps the old one
                return self._failed(stamp, previous, e)
            finally:
                gc.enable()
            self.engine = engine  # the swap: requests already running keep their reference
            if old is None:
                gc.collect()
            # The loaded model, catalog and libraries are ~200k long-lived objects: a full
            # collection over them stalls every request for ~150-200 ms (the p99 of a busy
            # server). Freezing moves them out of the collector's generations.
            gc.freeze()
            self.load_error = None
            self._failed_stamp = None
            self.metrics.set_model(engine.version)
            self.metrics.reloads.labels(result="success").inc()
            log.info(
                "serving model %s from %s (loaded in %.2fs)%s",
                engine.version,
                engine.path,
                engine.load_seconds,
                f", replacing {previous}" if previous else "",
            )
            return ReloadResult(True, engine.version, previous, "loaded")

    def _failed(self, stamp, previous: str | None, error: Exception) -> ReloadResult:
        self._failed_stamp = stamp
        self.load_error = f"{type(error).__name__}: {error}"
        self.metrics.reloads.labels(result="failure").inc()
        if previous:
            log.error("reload failed, still serving %s: %s", previous, self.load_error)
        raise ReloadError(self.load_error) from error

    # --- index versions (the item API) -------------------------------------------------
    def _index_only_change(self, engine: Engine, stamp: tuple) -> bool:
        """True when the served bundle directory is unchanged and its manifest differs from
        the engine's only in the ``index`` section: an index write, not a new model."""
        if stamp[0] != engine.stamp[0]:
            return False
        manifest = bundle.read_manifest(engine.path)
        rest = {k: v for k, v in manifest.items() if k != "index"}
        return rest == {k: v for k, v in engine.manifest.items() if k != "index"}

    async def refresh_index(self) -> bool:
        """Swap in the bundle's current index version when only the index changed (cheap:
        the model stays, see ``Engine.with_index``). False when nothing changed, or when the
        bundle itself changed (that is a full ``reload``: the watcher or /admin/reload)."""
        async with self._reload_lock:
            old = self.engine
            if old is None:
                return False
            stamp = await asyncio.to_thread(bundle_stamp, self.settings.artifacts_dir)
            if stamp == old.stamp or stamp == self._failed_index_stamp:
                return False
            if not await asyncio.to_thread(self._index_only_change, old, stamp):
                return False
            s = self.settings
            try:
                with gc_paused():
                    engine = await asyncio.to_thread(
                        old.with_index, stamp, mmap=s.index_mmap, faiss_threads=s.faiss_threads
                    )
            except Exception as e:  # noqa: BLE001 - keep serving the old version
                # e.g. the version was pruned by newer writes between stat and load: the
                # manifest has changed again by then, so the next poll retries
                self._failed_index_stamp = stamp
                self.metrics.index_swaps.labels(result="failure").inc()
                log.warning("index swap failed, still serving v%04d: %s", old.index_version, e)
                return False
            self.engine = engine  # the swap: requests already running keep their reference
            gc.freeze()
            self._failed_index_stamp = None
            self.metrics.index_swaps.labels(result="success").inc()
            log.info(
                "worker %d serving index v%04d (%d active items, was v%04d; %.3fs)",
                os.getpid(),
                engine.index_version,
                engine.active_count,
                old.index_version,
                engine.load_seconds,
            )
            return True

    async def _watch(self) -> None:
        """One loop for both kinds of change. Every ``INDEX_POLL_S``: a stat of the
        manifest; an index-only change is swapped in at once. Every ``RELOAD_POLL_S``: a
        new bundle (``current`` moved, or the model changed) is fully reloaded."""
        index_poll, reload_poll = self.settings.index_poll_s, self.settings.reload_poll_s
        interval = min(p for p in (index_poll, reload_poll) if p > 0)
        last_full = time.monotonic()
        while True:
            await asyncio.sleep(interval)
            try:
                stamp = await asyncio.to_thread(bundle_stamp, self.settings.artifacts_dir)
            except Exception as e:  # noqa: BLE001 - e.g. `current` mid-rename
                log.debug("watcher: cannot resolve bundle: %s", e)
                continue
            current = self.engine.stamp if self.engine else None
            if stamp == current or stamp == self._failed_stamp:
                continue
            try:
                if index_poll > 0 and await self.refresh_index():
                    continue
            except Exception as e:  # noqa: BLE001 - e.g. the manifest mid-replace
                log.debug("watcher: index check failed: %s", e)
                continue
            if reload_poll <= 0 or time.monotonic() - last_full < reload_poll:
                continue
            last_full = time.monotonic()
            if self.engine is not None and stamp == self.engine.stamp:
                continue
            log.info("watcher: %s changed, reloading", self.settings.artifacts_dir)
            try:
                await self.reload()
            except ReloadError:
                pass  # logged and remembered; retried when the bundle changes again

    # --- health -------------------------------------------------------------------------
    async def readiness(self) -> tuple[bool, Readiness]:
        """Ready = this replica can answer /recommend: a bundle is loaded. Without Redis
        it still answers (cache off, bundle histories), so Redis only decides readiness
        with REDIS_REQUIRED. No addresses, paths or error texts: /readyz is public."""
        cache = await self.store.state(probe=True)
        reasons = []
        if self.engine is None:
            reasons.append("no model loaded yet (see the server log)")
        if self.settings.redis_required and cache.state == "down":
            reasons.append("redis is required (REDIS_REQUIRED) and unreachable")
        ready = not reasons
        return ready, Readiness(
            status="ready" if ready else "not ready",
            model_version=self.engine.version if self.engine else None,
            cache=cache,
            redis_required=self.settings.redis_required,
            last_reload_failed=self.engine is not None and self.load_error is not None,
            reason="; ".join(reasons) or None,
        )
