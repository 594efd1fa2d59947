"""The user store: a user's event history and cached user vectors, behind one interface.

Two implementations: ``RedisUserStore`` (shared by workers and replicas, durable as Redis
is configured) and ``LocalUserStore`` (in process: lost on restart, not shared).

Redis keys (every key of one user carries the hash tag ``{u:<user_id>}``, so each
per-user operation touches one slot and runs unchanged on Redis Cluster; ids go into keys
with ``%``, ``{``, ``}`` and ``:`` percent-encoded, see ``escape``):

- ``<prefix>{u:<id>}:hist``: the user's events, a list of item ids, oldest first, trimmed
  to HISTORY_LEN, expiring HISTORY_TTL_S after the last event;
- ``<prefix>{u:<id>}:event:<event_id>``: an event id already recorded (EVENT_ID_TTL_S);
- ``<prefix>{u:<id>}:vec:<model version>``: the user's cached vector;
- ``<prefix>{h:<sha256>}:vec:<model version>``: the vector of explicit inputs (features +
  recent items), which no history changes.

A cached value is ``<16-byte tag><float32 vector>``. A user's vector is tagged with a hash
of the event history it was computed from and served only while that history is unchanged,
whatever happened in between: an event, a rollback of the model to an older version whose
key still holds a vector, a history that expired and grew back. So events never need to
find and delete vectors, and a vector computed while an event was being written is never
served for the new history.

Failures: a command's own error (e.g. WRONGTYPE on one user's key) fails that user's part
only and is counted (``towerrec_redis_key_errors_total``). A connection error or timeout
opens a circuit breaker (``RedisLink``): Redis is skipped for REDIS_RETRY_S, then one
request probes it, so requests do not each wait for the timeout while Redis is away.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from service.metrics import Metrics
from service.schemas import CacheState, Event, UserEvents

log = logging.getLogger("service.store")

TAG_BYTES = 16
INPUTS_TAG = b"\0" * TAG_BYTES  # explicit-input vectors do not depend on a history


def redact(text: str) -> str:
    """``text`` with the credentials of every URL in it replaced: ``redis://***@host``."""
    return re.sub(r"([a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s]*@", r"\1***@", text)


_ESCAPES = str.maketrans({"%": "%25", "{": "%7B", "}": "%7D", ":": "%3A"})


def escape(ident: str) -> str:
    """A client's id as a key part: ``%``, braces and colons percent-encoded, so no id can
    end the hash tag early or spell another key (user ``a}:event:x`` vs user ``a``)."""
    return ident.translate(_ESCAPES)


def history_tag(history: list[str]) -> bytes:
    return hashlib.blake2b("\x1f".join(history).encode(), digest_size=TAG_BYTES).digest()


def input_digest(features: dict[str, Any], recent_items: list[str]) -> str:
    """SHA-256 of the canonical JSON of the explicit inputs (features + recent items)."""
    canonical = json.dumps(
        {"features": features, "recent_items": recent_items},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class VectorKey:
    key: str
    per_user: bool  # tagged with the user's history (else with INPUTS_TAG)


@dataclass
class Lookup:
    history: list[str] | None  # the user's events; None = unreadable now
    vector: np.ndarray | None
    cache: str  # hit | miss | off


class UserStore:
    """Interface. ``read`` never raises: what cannot be read comes back as None/"off"."""

    durable = False
    backend = "local"

    def __init__(self, *, prefix: str):
        self.prefix = prefix

    def user_key(self, user_id: str, version: str) -> VectorKey:
        return VectorKey(f"{self.prefix}{{u:{escape(user_id)}}}:vec:{escape(version)}", True)

    def inputs_key(self, digest: str, version: str) -> VectorKey:
        return VectorKey(f"{self.prefix}{{h:{digest}}}:vec:{escape(version)}", False)

    def history_key(self, user_id: str) -> str:
        return f"{self.prefix}{{u:{escape(user_id)}}}:hist"

    def event_key(self, user_id: str, event_id: str) -> str:
        return f"{self.prefix}{{u:{escape(user_id)}}}:event:{escape(event_id)}"

    async def read(self, user_id: str | None, vector: VectorKey | None, dim: int) -> Lookup:
        raise NotImplementedError

    async def save(self, vector: VectorKey, value: np.ndarray, history: list[str] | None):
        raise NotImplementedError

    async def append(self, per_user: dict[str, list[tuple[int, Event]]]) -> list[UserEvents]:
        """Record each user's events (positions, events), each user on its own."""
        raise NotImplementedError

    async def state(self, *, probe: bool = False) -> CacheState:
        return CacheState(backend="local", state="local")

    async def close(self) -> None:
        return None


def pack(tag: bytes, vector: np.ndarray) -> bytes:
    return tag + np.ascontiguousarray(vector, dtype=np.float32).tobytes()


def unpack(raw: bytes | None, expected_tag: bytes, dim: int) -> np.ndarray | None:
    """The vector if ``raw`` holds one of ``dim`` floats tagged ``expected_tag``."""
    if raw is None or len(raw) != TAG_BYTES + 4 * dim or raw[:TAG_BYTES] != expected_tag:
        return None
    return np.frombuffer(raw, dtype=np.float32, offset=TAG_BYTES)


def outcome(user_id: str, fresh: list[tuple[int, bool]]) -> UserEvents:
    recorded = [pos for pos, new in fresh if new]
    duplicates = [pos for pos, new in fresh if not new]
    status = "recorded" if recorded else "duplicate"
    return UserEvents(user_id=user_id, status=status, recorded=recorded, duplicates=duplicates)


def failed(user_id: str, events: list[tuple[int, Event]], error: str) -> UserEvents:
    positions = [pos for pos, _ in events]
    return UserEvents(user_id=user_id, status="failed", failed=positions, error=error)


class LocalUserStore(UserStore):
    """In-process LRUs: histories (LOCAL_HISTORY_USERS users), vectors (CACHE_LOCAL_SIZE,
    CACHE_TTL_S) and event ids (EVENT_ID_TTL_S). Not durable, not shared by workers."""

    def __init__(self, *, prefix: str, cache: bool, settings) -> None:
        super().__init__(prefix=prefix)
        self.cache, self.s = cache, settings
        self._history: OrderedDict[str, list[str]] = OrderedDict()
        self._vectors: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._ids: OrderedDict[str, float] = OrderedDict()

    async def state(self, *, probe: bool = False) -> CacheState:
        if not self.cache:
            return CacheState(backend="off", state="off")
        return CacheState(backend="local", state="local")

    async def read(self, user_id: str | None, vector: VectorKey | None, dim: int) -> Lookup:
        history = None
        if user_id is not None:
            history = list(self._history.get(user_id, ()))
            if user_id in self._history:
                self._history.move_to_end(user_id)
        if vector is None or not self.cache:
            return Lookup(history, None, "off")
        entry = self._vectors.get(vector.key)
        if entry is None or entry[0] < time.monotonic():
            return Lookup(history, None, "miss")
        self._vectors.move_to_end(vector.key)
        tag = history_tag(history or []) if vector.per_user else INPUTS_TAG
        found = unpack(entry[1], tag, dim)
        return Lookup(history, found, "hit" if found is not None else "miss")

    async def save(self, vector: VectorKey, value: np.ndarray, history: list[str] | None):
        if not self.cache:
            return
        tag = history_tag(history or []) if vector.per_user else INPUTS_TAG
        self._vectors[vector.key] = (time.monotonic() + self.s.cache_ttl_s, pack(tag, value))
        self._vectors.move_to_end(vector.key)
        _trim(self._vectors, self.s.cache_local_size)

    async def append(self, per_user: dict[str, list[tuple[int, Event]]]) -> list[UserEvents]:
        now, out = time.monotonic(), []
        for user_id, events in per_user.items():
            fresh = [(pos, self._first_time(user_id, e, now)) for pos, e in events]
            new = [e.item_id for (_, e), (_, ok) in zip(events, fresh, strict=True) if ok]
            merged = (self._history.get(user_id, []) + new)[-self.s.history_len :]
            self._history[user_id] = merged
            self._history.move_to_end(user_id)
            out.append(outcome(user_id, fresh))
        _trim(self._history, self.s.local_history_users)
        return out

    def _first_time(self, user_id: str, event: Event, now: float) -> bool:
        if event.event_id is None:
            return True
        key = self.event_key(user_id, event.event_id)
        if self._ids.get(key, 0.0) > now:
            return False
        self._ids[key] = now + self.s.event_id_ttl_s
        self._ids.move_to_end(key)
        _trim(self._ids, self.s.cache_local_size)
        return True


def _trim(lru: OrderedDict, size: int) -> None:
    while len(lru) > size:
        lru.popitem(last=False)


class RedisUnavailable(Exception):
    """Redis could not be used for this call (breaker open, timeout, connection error)."""


class Breaker:
    """A circuit breaker: open for ``retry_s`` after a failure, then one call probes."""

    def __init__(self, retry_s: float):
        self.retry_s, self.open_until, self.probing = retry_s, 0.0, False

    def allowed(self) -> bool:
        if self.open_until == 0.0:
            return True
        if time.monotonic() < self.open_until or self.probing:
            return False
        self.probing = True  # one request probes; the others keep skipping this node
        return True

    def fail(self) -> None:
        self.open_until, self.probing = time.monotonic() + self.retry_s, False


class Coalescer:
    """One pipeline per Redis node for the commands of every request that reaches the
    store in one event-loop iteration.

    Why: most of the CPU a cache hit spends on Redis is redis-py's cost per pipeline
    (a pooled connection, a socket write, a wake-up for the reply), not per command
    (docs/BENCHMARKS.md, "Where a cache hit's CPU goes"). Under load many requests reach
    the store in the same iteration; sent together, they pay that cost once. A request
    waits one loop iteration longer than alone, then as long as its pipeline (each bounded
    by REDIS_SOCKET_TIMEOUT_S), on the event loop: no thread, no timer.

    Each request gets its own replies back, a command's error in its reply's place (so a
    wrong-type key fails its own request's part only). A pipeline that fails as a whole
    (timeout, connection error, breaker open) fails the requests in it and is counted once
    by that node's breaker. The pipeline runs in a task of its own, so a client that goes
    away cancels its wait only, never the others' round trip.
    """

    def __init__(self, send: Callable[[str, Callable[[Any], None]], Awaitable[list]]):
        self.send = send  # RedisLink.send: one pipeline to one node, through its breaker
        self.waiting: dict[str, list[tuple[Callable[[Any], None], asyncio.Future]]] = {}
        self.tasks: set[asyncio.Task] = set()  # pipelines under way (referenced until done)

    async def execute(self, node: str, build: Callable[[Any], None]) -> list:
        loop = asyncio.get_running_loop()
        if node not in self.waiting:
            self.waiting[node] = []
            loop.call_soon(self._flush, node)  # after the callbacks already due this iteration
        future = loop.create_future()
        self.waiting[node].append((build, future))
        return await future

    def _flush(self, node: str) -> None:
        task = asyncio.ensure_future(self._run(node, self.waiting.pop(node)))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _run(self, node: str, calls: list[tuple[Callable[[Any], None], asyncio.Future]]):
        sizes = []

        def build_all(pipe) -> None:
            for build, _ in calls:
                before = len(pipe)
                build(pipe)
                sizes.append(len(pipe) - before)

        try:
            replies = await self.send(node, build_all)
        except Exception as e:  # noqa: BLE001 - RedisUnavailable, or a bug: theirs to see
            for _, future in calls:
                if not future.done():
                    future.set_exception(e)
            return
        except BaseException:  # this task cancelled (the loop is closing): so are the waits
            for _, future in calls:
                future.cancel()
            raise
        start = 0
        for (_, future), size in zip(calls, sizes, strict=True):
            if not future.done():  # done = that request was cancelled
                future.set_result(replies[start : start + size])
            start += size


class RedisLink:
    """One redis.asyncio client (single node or cluster) with a circuit breaker per node
    (one node of a cluster that is away does not switch off the others)."""

    def __init__(self, settings, metrics: Metrics):
        self.cluster = settings.redis_cluster
        self.client = _client(settings)
        self.retry_s, self.log_interval_s = settings.redis_retry_s, settings.redis_log_interval_s
        self.metrics = metrics
        self.breakers: dict[str, Breaker] = {}
        self.coalescer = Coalescer(self.send)
        self._last_log = -1e18
        metrics.redis_up.set(1)

    @property
    def up(self) -> bool:
        return all(b.open_until == 0.0 for b in self.breakers.values())

    async def node(self, key: str) -> str:
        """The name of the node holding ``key`` ("" without a cluster, or when the
        cluster's layout cannot be read: then the pipeline reports what is wrong)."""
        if not self.cluster:
            return ""
        try:
            await self.client.initialize()
            return self.client.get_node_from_key(key).name
        except Exception:  # noqa: BLE001
            return ""

    async def by_node(self, keys: list[str], items: list) -> list[tuple[str, list]]:
        """``items`` grouped by the node that holds their ``keys``."""
        groups: dict[str, list] = {}
        for key, item in zip(keys, items, strict=True):
            groups.setdefault(await self.node(key), []).append(item)
        return list(groups.items())

    async def execute(self, node: str, build: Callable[[Any], None]) -> list:
        """The replies to the commands ``build(pipeline)`` adds (keys on ``node``), sent
        with every other request's of this event-loop iteration (``Coalescer``). A
        command's own error comes back as an exception object in its reply's place."""
        return await self.coalescer.execute(node, build)

    async def send(self, node: str, build: Callable[[Any], None]) -> list:
        """One pipeline to ``node`` now, through its circuit breaker."""
        pipe = self.client.pipeline() if self.cluster else self.client.pipeline(transaction=False)
        build(pipe)
        self.metrics.redis_pipelines.inc()
        return await self._guarded(node, lambda: pipe.execute(raise_on_error=False))

    async def _guarded(self, node: str, call: Callable[[], Any]) -> Any:
        breaker = self.breakers.setdefault(node, Breaker(self.retry_s))
        if not breaker.allowed():
            raise RedisUnavailable("redis skipped (circuit breaker open)")
        try:
            replies = await call()
        except Exception as e:  # noqa: BLE001 - any Redis failure degrades, never fails
            self._fail(breaker, e)
            raise RedisUnavailable(type(e).__name__) from e
        except BaseException:  # cancelled (client went away): let another request probe
            breaker.probing = False
            raise
        if breaker.open_until:
            log.warning("redis is reachable again%s", f" ({node})" if node else "")
            breaker.open_until, breaker.probing = 0.0, False
            self.metrics.redis_up.set(1 if self.up else 0)
        return replies

    async def ping(self) -> bool:
        """Probe Redis now, breaker or not (readiness checks); False if any node that
        failed before still fails."""
        nodes = [n for n, b in self.breakers.items() if b.open_until] or [""]
        for node in nodes:
            breaker = self.breakers.setdefault(node, Breaker(self.retry_s))
            breaker.open_until = 0.0 if breaker.open_until == 0.0 else 1.0  # due: probe now
            try:
                await self._guarded(node, functools.partial(self._ping, node))
            except RedisUnavailable:
                pass
        return self.up

    async def _ping(self, node: str) -> Any:
        if not self.cluster:
            return await self.client.ping()
        target = self.client.get_node(node_name=node) if node else None
        return await self.client.ping(target_nodes=target or self.client.RANDOM)

    def _fail(self, breaker: Breaker, error: Exception) -> None:
        breaker.fail()
        self.metrics.cache_errors.inc()
        self.metrics.redis_up.set(0)
        now = time.monotonic()
        if now - self._last_log >= self.log_interval_s:
            self._last_log = now
            log.warning(
                "redis failed (%s: %s); serving without it, retrying every %.1fs",
                type(error).__name__,
                redact(str(error)),
                self.retry_s,
            )

    async def close(self) -> None:
        await self.client.aclose()


def _client(settings):
    """``redis.asyncio`` client for REDIS_URL: short timeouts, no retries (the breaker
    decides when to try again), raw bytes."""
    from redis.asyncio import Redis, RedisCluster
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    url = settings.redis_url.get_secret_value()
    timeouts = {
        "socket_timeout": settings.redis_socket_timeout_s,
        "socket_connect_timeout": settings.redis_socket_timeout_s,
        "decode_responses": False,
    }
    if settings.redis_cluster:
        return RedisCluster.from_url(url, **timeouts, retry=Retry(NoBackoff(), 0))
    return Redis.from_url(url, **timeouts, retry=Retry(NoBackoff(), 0), health_check_interval=0)


# One user's events in one script (all keys in the user's slot, so atomic on a cluster
# node too): an event whose id key already exists is a duplicate; the others are
# appended. The type check comes first, so a wrong-type key fails before anything is
# written. KEYS: history, then one id key per event that has an id. ARGV: history_len,
# history_ttl, id_ttl, then (has_id, item) per event. Returns 1 (new) / 0 per event.
APPEND = """
local t = redis.call('TYPE', KEYS[1]).ok
if t ~= 'list' and t ~= 'none' then
  return redis.error_reply('WRONGTYPE history key holds a ' .. t)
end
local len, ttl, idttl = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local k, out, added = 2, {}, 0
for a = 4, #ARGV, 2 do
  local new = 1
  if ARGV[a] == '1' then
    if not redis.call('SET', KEYS[k], '1', 'NX', 'EX', idttl) then new = 0 end
    k = k + 1
  end
  if new == 1 then
    redis.call('RPUSH', KEYS[1], ARGV[a + 1])
    added = added + 1
  end
  out[#out + 1] = new
end
if added > 0 then
  redis.call('LTRIM', KEYS[1], -len, -1)
  if ttl > 0 then redis.call('EXPIRE', KEYS[1], ttl) end
end
return out
"""


class RedisUserStore(UserStore):
    durable = True

    def __init__(self, link: RedisLink, *, prefix: str, cache: bool, settings, metrics: Metrics):
        super().__init__(prefix=prefix)
        self.link, self.cache, self.s, self.metrics = link, cache, settings, metrics
        self.backend = "redis-cluster" if link.cluster else "redis"

    async def read(self, user_id: str | None, vector: VectorKey | None, dim: int) -> Lookup:
        vector = vector if self.cache else None

        def build(pipe) -> None:
            if user_id is not None:
                pipe.lrange(self.history_key(user_id), 0, -1)
            if vector is not None:
                pipe.get(vector.key)

        if user_id is None and vector is None:
            return Lookup(None, None, "off")
        node = await self.link.node(self.history_key(user_id) if user_id else vector.key)
        try:
            replies = await self.link.execute(node, build)
        except RedisUnavailable:
            return Lookup(None, None, "off")
        history = None
        if user_id is not None:
            raw = replies.pop(0)
            history = None if self._key_error(raw, "read") else [x.decode() for x in raw]
        if vector is None:
            return Lookup(history, None, "off")
        return self._cached(history, vector, replies[0], dim)

    def _cached(self, history, vector: VectorKey, raw, dim: int) -> Lookup:
        if self._key_error(raw, "read") or (vector.per_user and history is None):
            return Lookup(history, None, "off")  # cannot tell which history it is for
        tag = history_tag(history) if vector.per_user else INPUTS_TAG
        found = unpack(raw, tag, dim)
        return Lookup(history, found, "hit" if found is not None else "miss")

    def _key_error(self, reply, op: str) -> bool:
        """True if ``reply`` is an error: a key's own (counted per op) or a connection's
        (a cluster node that went away mid-pipeline, counted with Redis failures)."""
        if not isinstance(reply, Exception):
            return False
        if isinstance(reply, RedisConnectionError | RedisTimeoutError):
            self.metrics.cache_errors.inc()
        else:
            self.metrics.redis_key_errors.labels(op=op).inc()
        log.warning("redis %s error on one key: %s", op, redact(str(reply)))
        return True

    async def save(self, vector: VectorKey, value: np.ndarray, history: list[str] | None):
        if not self.cache:
            return
        tag = history_tag(history or []) if vector.per_user else INPUTS_TAG
        raw = pack(tag, value)
        node = await self.link.node(vector.key)
        try:
            (reply,) = await self.link.execute(
                node, lambda pipe: pipe.set(vector.key, raw, ex=self.s.cache_ttl_s)
            )
        except RedisUnavailable:
            return  # a lost write is a later miss
        self._key_error(reply, "write")

    async def append(self, per_user: dict[str, list[tuple[int, Event]]]) -> list[UserEvents]:
        """One script per user; one pipeline per Redis node, the nodes in parallel (so a
        cluster node that is away fails its own users only)."""
        users = list(per_user.items())
        shards = await self.link.by_node([self.history_key(user) for user, _ in users], users)
        done = await asyncio.gather(*(self._append_shard(*shard) for shard in shards))
        by_user = {result.user_id: result for results in done for result in results}
        return [by_user[user] for user, _ in users]

    async def _append_shard(self, node: str, users: list[tuple[str, list[tuple[int, Event]]]]):
        def build(pipe) -> None:
            for user_id, events in users:
                pipe.eval(APPEND, *self._append_args(user_id, [e for _, e in events]))

        try:
            replies = await self.link.execute(node, build)
        except RedisUnavailable:
            error = "redis unavailable (timeout or connection error): not confirmed, retry"
            return [failed(user_id, events, error) for user_id, events in users]
        out = []
        for (user_id, events), reply in zip(users, replies, strict=True):
            if self._key_error(reply, "events"):
                code = str(reply).split(" ", 1)[0]
                out.append(failed(user_id, events, f"redis refused this user's write ({code})"))
            else:
                positions = [pos for pos, _ in events]
                out.append(outcome(user_id, list(zip(positions, map(bool, reply), strict=True))))
        return out

    def _append_args(self, user_id: str, events: list[Event]) -> list:
        id_keys = [self.event_key(user_id, e.event_id) for e in events if e.event_id]
        args: list = [self.s.history_len, self.s.history_ttl_s, self.s.event_id_ttl_s]
        for e in events:
            args += ["1" if e.event_id else "0", e.item_id]
        return [1 + len(id_keys), self.history_key(user_id), *id_keys, *args]

    async def state(self, *, probe: bool = False) -> CacheState:
        if probe:
            await self.link.ping()
        return CacheState(backend=self.backend, state="up" if self.link.up else "down")

    async def close(self) -> None:
        await self.link.close()


def build_store(settings, metrics: Metrics) -> UserStore:
    if settings.redis_url is None:
        return LocalUserStore(
            prefix=settings.cache_prefix, cache=settings.cache_enabled, settings=settings
        )
    link = RedisLink(settings, metrics)
    return RedisUserStore(
        link,
        prefix=settings.cache_prefix,
        cache=settings.cache_enabled,
        settings=settings,
        metrics=metrics,
    )
