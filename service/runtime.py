"""The app's long-lived state: current engine, cache, history store, batcher, reloads.

``runtime.engine`` is the single reference that reloads swap (one attribute assignment,
atomic for every reader). A new bundle is loaded on a worker thread while the old one
keeps serving; a bundle that fails to load is logged, counted and reported, and the old
engine stays in place.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from dataclasses import dataclass

import torch

from service.batcher import Batcher
from service.cache import LocalCache, NullCache, RedisCache, RedisLink, VectorCache
from service.config import Settings
from service.engine import Engine, bundle_stamp
from service.history import HistoryStore, LocalHistory, RedisHistory
from service.metrics import Metrics

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
        self.link: RedisLink | None = None
        self.cache: VectorCache = NullCache(settings.cache_prefix)
        self.history: HistoryStore
        self.batcher = Batcher(
            metrics,
            enabled=settings.microbatch,
            window_s=settings.batch_window_ms / 1000,
            max_batch=settings.batch_max,
            torch_threads=settings.torch_threads,
            faiss_threads=settings.faiss_threads,
            inline_search=settings.inline_search,
        )
        self._reload_lock = asyncio.Lock()
        self._failed_stamp: tuple | None = None
        self._watcher: asyncio.Task | None = None
        self._build_stores()

    def _build_stores(self) -> None:
        s = self.settings
        if s.redis_url:
            self.link = RedisLink(
                s.redis_url,
                timeout_s=s.redis_socket_timeout_s,
                retry_s=s.redis_retry_s,
                log_interval_s=s.redis_log_interval_s,
                on_error=self.metrics.cache_errors.inc,
            )
            if s.cache_enabled:
                self.cache = RedisCache(self.link, s.cache_prefix, ttl_s=s.cache_ttl_s)
            self.history = RedisHistory(
                self.link, s.cache_prefix, history_len=s.history_len, ttl_s=s.history_ttl_s
            )
        else:
            local_history = LocalHistory(
                history_len=s.history_len, max_users=s.local_history_users, cache=self.cache
            )
            if s.cache_enabled:
                self.cache = LocalCache(
                    s.cache_prefix,
                    size=s.cache_local_size,
                    ttl_s=s.cache_ttl_s,
                    history_fp=local_history.fingerprint,
                )
                local_history.cache = self.cache
            self.history = local_history

    # --- lifecycle ----------------------------------------------------------------------
    async def start(self) -> None:
        import faiss

        # OpenMP settings are per thread: this is the event-loop thread (inline searches)
        torch.set_num_threads(self.settings.torch_threads)
        faiss.omp_set_num_threads(self.settings.faiss_threads)
        self.batcher.start()
        try:
            await self.reload(force=True)
        except ReloadError as e:
            log.error(
                "no model loaded at startup: %s (will retry when %s changes)",
                e,
                self.settings.artifacts_dir,
            )
        if self.settings.reload_poll_s > 0:
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
        if self.link is not None:
            await self.link.close()

    # --- reloads ------------------------------------------------------------------------
    def _load(self) -> Engine:
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

    async def _watch(self) -> None:
        interval = self.settings.reload_poll_s
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
            log.info("watcher: %s changed, reloading", self.settings.artifacts_dir)
            try:
                await self.reload()
            except ReloadError:
                pass  # logged and remembered; retried when the bundle changes again

    # --- health -------------------------------------------------------------------------
    async def readiness(self) -> tuple[bool, dict]:
        info: dict = {
            "model_version": self.engine.version if self.engine else None,
            "cache": type(self.cache).__name__,
            "checked_at": time.time(),
        }
        ok = True
        reasons = []
        if self.engine is None:
            ok = False
            reasons.append(f"no model loaded: {self.load_error or 'loading'}")
        elif self.load_error:
            info["last_reload_error"] = self.load_error
        if self.link is not None:
            redis_ok, message = await self.link.ping(force=True)
            info["redis"] = message
            if not redis_ok:
                ok = False
                reasons.append(message)
        if reasons:
            info["reason"] = "; ".join(reasons)
        return ok, info
