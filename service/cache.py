"""User-vector cache: Redis (shared, with a circuit breaker) or a bounded in-process LRU.

Keys: ``<prefix><model version>:u:<user_id>`` for requests resolved from a user id,
``<prefix><model version>:h:<sha256>`` for explicit features / recent items. Values are
the raw float32 bytes of the vector. The model version is part of the key, so a new
model never reads a vector of an old one.

Redis trouble (down, slow, erroring) never fails a request: the call raises
``CacheUnavailable`` inside this module, the caller computes without the cache, the
failure is counted (``towerrec_cache_errors_total``) and logged at most once per
interval, and Redis is skipped for ``REDIS_RETRY_S`` before one probe request tries it
again (so requests do not each pay the socket timeout while Redis is down).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
from redis.exceptions import NoScriptError, ResponseError

log = logging.getLogger("service.cache")

# Every cache write of one event-loop iteration, in one command (see _READ for why).
# ARGV[1] entries are compare-and-set writes of user-id vectors: written only if the
# user's event list is still the one the vector was computed from (an /events call in
# between wins); KEYS (history, vector), ARGV (fingerprint, value, ttl). Plain writes
# follow: KEYS vector, ARGV (value, ttl).
_WRITE = """
local k, a = 1, 2
for e = 1, tonumber(ARGV[1]) do
  local h = redis.pcall('LRANGE', KEYS[k], 0, -1)
  if type(h) == 'table' and not h.err
      and redis.sha1hex(table.concat(h, '\\31')) == ARGV[a] then
    redis.pcall('SET', KEYS[k + 1], ARGV[a + 1], 'EX', ARGV[a + 2])
  end
  k, a = k + 2, a + 3
end
while k <= #KEYS do
  redis.pcall('SET', KEYS[k], ARGV[a], 'EX', ARGV[a + 1])
  k, a = k + 1, a + 2
end
return 0
"""


# Every read of one event-loop iteration, in one command: a Lua loop costs the client one
# request and one reply to parse for the whole batch, where a pipeline of LRANGE + GET per
# request cost ~3x the client CPU (47 vs 15 us per request at 12 requests per batch).
# KEYS: ARGV[1] (list, value) pairs, then lone values. pcall: a bad key fails its own
# entry, not the batch.
_READ = """
local out, pairs = {}, 2 * tonumber(ARGV[1])
for i = 1, pairs, 2 do
  out[#out + 1] = redis.pcall('LRANGE', KEYS[i], 0, -1)
  out[#out + 1] = redis.pcall('GET', KEYS[i + 1])
end
for i = pairs + 1, #KEYS do
  out[#out + 1] = redis.pcall('GET', KEYS[i])
end
return out
"""


_SHA = {script: hashlib.sha1(script.encode()).hexdigest() for script in (_READ, _WRITE)}


class CacheUnavailable(Exception):
    """Redis could not be used for this call (breaker open, timeout, connection error)."""


def history_fingerprint(items: list[str]) -> str:
    return hashlib.sha1("\x1f".join(items).encode()).hexdigest()


def input_digest(features: dict[str, Any] | None, recent_items: list[str]) -> str:
    """SHA-256 of the canonical JSON of the explicit inputs (features + recent items)."""
    canonical = json.dumps(
        {"features": features or {}, "recent_items": recent_items},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def to_bytes(vector: np.ndarray) -> bytes:
    return np.ascontiguousarray(vector, dtype=np.float32).tobytes()


def from_bytes(raw: bytes, dim: int) -> np.ndarray | None:
    if len(raw) != 4 * dim:
        return None  # a foreign or truncated value: treat as a miss
    return np.frombuffer(raw, dtype=np.float32)


class RedisLink:
    """One redis.asyncio client behind a circuit breaker shared by the cache and history."""

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float,
        retry_s: float,
        log_interval_s: float,
        on_error: Callable[[], None] = lambda: None,
    ):
        import redis.asyncio as aioredis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        self.url = url
        self.client = aioredis.Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),
            health_check_interval=0,
            decode_responses=False,
        )
        self.retry_s = retry_s
        self.log_interval_s = log_interval_s
        self.on_error = on_error
        self._open_until = 0.0
        self._probing = False
        self._last_log = -1e18
        self.last_error: str | None = None
        self._pending: list[tuple[Callable[[Any], None], asyncio.Future]] = []
        self._reads: list[tuple[str | None, str, asyncio.Future]] = []
        self._writes: list[tuple[tuple, asyncio.Future]] = []
        self._flush_scheduled = False
        self._flushes: set[asyncio.Task] = set()

    @property
    def healthy(self) -> bool:
        return self._open_until == 0.0

    def _allowed(self) -> bool:
        if self._open_until == 0.0:
            return True
        if time.monotonic() < self._open_until or self._probing:
            return False
        self._probing = True  # one request probes; the others keep skipping Redis
        return True

    async def run(self, call: Callable[[], Awaitable[Any]], *, force: bool = False) -> Any:
        """Await ``call()`` unless the breaker is open (``force`` ignores the breaker)."""
        if not force and not self._allowed():
            raise CacheUnavailable(self.last_error or "redis unavailable")
        try:
            result = await call()
        except Exception as e:  # noqa: BLE001 - any Redis failure degrades, never fails
            self._fail(e)
            raise CacheUnavailable(str(e)) from e
        except BaseException:  # cancelled (client went away): let another request probe
            self._probing = False
            raise
        self._succeed()
        return result

    def _succeed(self) -> None:
        if self._open_until:
            log.warning("redis at %s is reachable again", self.url)
        self._open_until = 0.0
        self._probing = False
        self.last_error = None

    async def batched(self, build: Callable[[Any], None]) -> list[Any]:
        """Add commands (``build(pipeline)``) to the pipeline of this event-loop iteration.

        Concurrent requests share one pipeline (one write and one round trip for all of
        them) instead of one round trip each. Returns the replies of ``build``'s commands;
        a command's own error (e.g. WRONGTYPE) comes back as an exception object.
        """
        future = self._enqueue()
        self._pending.append((build, future))
        return await future

    async def read(self, list_key: str | None, value_key: str) -> list[Any]:
        """``[LRANGE list_key, GET value_key]``, or ``[GET value_key]`` without a list key:
        read with every other read of this event-loop iteration in one command of its
        pipeline. An entry's own error comes back as an exception object."""
        future = self._enqueue()
        self._reads.append((list_key, value_key, future))
        return await future

    async def write(
        self, key: str, value: bytes, ttl_s: int, history: tuple[str, str] | None = None
    ) -> None:
        """SET key value EX ttl_s with every other write of this event-loop iteration in one
        command of its pipeline; with ``history`` = (list key, fingerprint), only if the
        list's fingerprint (``history_fingerprint``) is still that one."""
        future = self._enqueue()
        self._writes.append(((key, value, ttl_s, history), future))
        await future

    def _enqueue(self) -> asyncio.Future:
        if not self._allowed():
            raise CacheUnavailable(self.last_error or "redis unavailable")
        loop = asyncio.get_running_loop()
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._start_flush)
        return loop.create_future()

    def _start_flush(self) -> None:
        pending, self._pending = self._pending, []
        reads, self._reads = self._reads, []
        writes, self._writes = self._writes, []
        self._flush_scheduled = False
        task = asyncio.get_running_loop().create_task(self._flush(pending, writes, reads))
        self._flushes.add(task)
        task.add_done_callback(self._flushes.discard)

    async def _flush(self, pending: list, writes: list, reads: list) -> None:
        pipe = self.client.pipeline(transaction=False)
        sizes = []
        for build, _ in pending:
            before = len(pipe.command_stack)
            build(pipe)
            sizes.append(len(pipe.command_stack) - before)
        scripts: list[tuple[int, str, tuple]] = []  # (reply index, script, EVAL arguments)
        if writes:
            writes.sort(key=lambda write: write[0][3] is None)  # compare-and-set first
            keys, args, cas = [], [], 0
            for (key, value, ttl_s, history), _ in writes:
                if history is not None:
                    keys.append(history[0])
                    args.append(history[1])
                    cas += 1
                keys.append(key)
                args += [value, ttl_s]
            scripts.append((len(pipe.command_stack), _WRITE, (len(keys), *keys, cas, *args)))
            pipe.evalsha(_SHA[_WRITE], *scripts[-1][2])
        if reads:
            reads.sort(key=lambda read: read[0] is None)  # pairs first, as _READ takes them
            pairs = [(lk, vk) for lk, vk, _ in reads if lk is not None]
            keys = [key for pair in pairs for key in pair]
            keys += [vk for lk, vk, _ in reads if lk is None]
            scripts.append((len(pipe.command_stack), _READ, (len(keys), *keys, len(pairs))))
            pipe.evalsha(_SHA[_READ], *scripts[-1][2])
        futures = [f for _, f in pending] + [f for _, f in writes] + [f for *_, f in reads]
        try:
            replies = await pipe.execute(raise_on_error=False)
            await self._load_missing_scripts(scripts, replies)
        except BaseException as e:
            if isinstance(e, Exception):
                self._fail(e)
                error: BaseException = CacheUnavailable(str(e))
            else:
                self._probing = False
                error = e
            for future in futures:
                if not future.done():
                    future.set_exception(error)
            if not isinstance(e, Exception):
                raise
            return
        self._succeed()
        pos = 0
        for (_, future), n in zip(pending, sizes, strict=True):
            if not future.done():
                future.set_result(replies[pos : pos + n])
            pos += n
        for _, future in writes:
            if not future.done():
                future.set_result(None)  # a lost write is a later miss: nothing to report
        if reads:
            values, pos = replies[-1], 0
            for list_key, _, future in reads:
                n = 1 if list_key is None else 2
                if not future.done():
                    failed = isinstance(values, Exception)
                    future.set_result([values] * n if failed else values[pos : pos + n])
                pos += n

    async def _load_missing_scripts(self, scripts: list, replies: list) -> None:
        """EVALSHA saves sending the script text with every batch; after a Redis restart
        (or SCRIPT FLUSH) the server answers NOSCRIPT once, and EVAL runs and reloads it."""
        for i, script, args in scripts:
            if isinstance(replies[i], NoScriptError):
                try:
                    replies[i] = await self.client.eval(script, *args)
                except ResponseError as e:  # the script's own error: that entry fails
                    replies[i] = e

    def _fail(self, error: Exception) -> None:
        self._probing = False
        self._open_until = time.monotonic() + self.retry_s
        self.last_error = f"{type(error).__name__}: {error}"
        self.on_error()
        now = time.monotonic()
        if now - self._last_log >= self.log_interval_s:
            self._last_log = now
            log.warning(
                "redis at %s failed (%s); serving without it, retrying every %.1fs",
                self.url,
                self.last_error,
                self.retry_s,
            )

    async def ping(self, *, force: bool = False) -> tuple[bool, str]:
        try:
            await self.run(self.client.ping, force=force)
        except CacheUnavailable as e:
            return False, f"redis unreachable: {e}"
        return True, "ok"

    async def close(self) -> None:
        await self.client.aclose()


class VectorCache:
    """Interface. ``get`` returns (bytes or None, status); status is hit | miss | off."""

    enabled = True

    def __init__(self, prefix: str):
        self.prefix = prefix

    def key(self, version: str, kind: str, ident: str) -> str:
        return f"{self.prefix}{version}:{kind}:{ident}"

    async def get(self, key: str) -> tuple[bytes | None, str]:
        raise NotImplementedError

    async def set(
        self,
        key: str,
        value: bytes,
        *,
        history_key: str | None = None,
        history_fp: str | None = None,
    ) -> None:
        raise NotImplementedError

    async def ping(self) -> tuple[bool, str]:
        return True, "ok"

    async def close(self) -> None:
        return None


class NullCache(VectorCache):
    enabled = False

    async def get(self, key: str) -> tuple[bytes | None, str]:
        return None, "off"

    async def set(self, key: str, value: bytes, **_: Any) -> None:
        return None


class LocalCache(VectorCache):
    """Bounded in-process LRU with per-entry TTL (the default without REDIS_URL)."""

    def __init__(
        self,
        prefix: str,
        *,
        size: int,
        ttl_s: float,
        history_fp: Callable[[str], str] | None = None,
    ):
        super().__init__(prefix)
        self.size, self.ttl_s = size, ttl_s
        self.history_fp = history_fp
        self._data: OrderedDict[str, tuple[float, bytes]] = OrderedDict()

    async def get(self, key: str) -> tuple[bytes | None, str]:
        entry = self._data.get(key)
        if entry is None or entry[0] < time.monotonic():
            if entry is not None:
                del self._data[key]
            return None, "miss"
        self._data.move_to_end(key)
        return entry[1], "hit"

    async def set(
        self,
        key: str,
        value: bytes,
        *,
        history_key: str | None = None,
        history_fp: str | None = None,
    ) -> None:
        if (
            history_key is not None
            and self.history_fp is not None
            and self.history_fp(history_key) != history_fp
        ):
            return  # the user's events changed while the vector was computed
        self._data[key] = (time.monotonic() + self.ttl_s, value)
        self._data.move_to_end(key)
        while len(self._data) > self.size:
            self._data.popitem(last=False)

    def delete(self, keys: list[str]) -> None:
        for key in keys:
            self._data.pop(key, None)

    def keys(self) -> list[str]:
        return list(self._data)


class RedisCache(VectorCache):
    def __init__(self, link: RedisLink, prefix: str, *, ttl_s: int):
        super().__init__(prefix)
        self.link, self.ttl_s = link, ttl_s

    async def get(self, key: str) -> tuple[bytes | None, str]:
        try:
            (raw,) = await self.link.read(None, key)
        except CacheUnavailable:
            return None, "off"
        if isinstance(raw, Exception):
            return None, "off"
        return raw, "hit" if raw is not None else "miss"

    async def set(
        self,
        key: str,
        value: bytes,
        *,
        history_key: str | None = None,
        history_fp: str | None = None,
    ) -> None:
        history = (history_key, history_fp) if history_key is not None else None
        try:
            await self.link.write(key, value, self.ttl_s, history)
        except CacheUnavailable:
            pass

    async def ping(self) -> tuple[bool, str]:
        return await self.link.ping()
