"""Per-user recent-item histories appended by POST /events.

With Redis: one list per user (``<prefix>hist:<user_id>``, external item ids, newest last),
RPUSH + LTRIM to HISTORY_LEN and DEL of the user's cached vector, all of one /events call
in one MULTI/EXEC. Without Redis: an in-process LRU of users (not durable: lost on
restart and not shared between workers).

The bundle's own ``users.json`` history is not stored here; the service concatenates
it with these events (``Engine.user_history``).
"""

from __future__ import annotations

from collections import OrderedDict

from service.cache import (
    CacheUnavailable,
    LocalCache,
    RedisCache,
    RedisLink,
    VectorCache,
    history_fingerprint,
)


class HistoryStore:
    durable = False

    def key(self, user_id: str) -> str:
        raise NotImplementedError

    async def get(self, user_id: str) -> list[str]:
        """Raises CacheUnavailable when the store cannot be read."""
        raise NotImplementedError

    async def get_with_vector(
        self, user_id: str, cache: VectorCache, vec_key: str | None
    ) -> tuple[list[str] | None, bytes | None, str]:
        """(event history or None if unreadable, cached vector, cache status)."""
        try:
            history = await self.get(user_id)
        except CacheUnavailable:
            history = None
        if vec_key is None:
            return history, None, "off"
        raw, status = await cache.get(vec_key)
        return history, raw, status

    async def append(self, events: dict[str, list[str]], invalidate: list[str]) -> None:
        """Append item ids per user and delete the given cache keys, atomically per call."""
        raise NotImplementedError

    async def ping(self) -> tuple[bool, str]:
        return True, "ok"


class LocalHistory(HistoryStore):
    def __init__(self, *, history_len: int, max_users: int, cache: VectorCache):
        self.history_len, self.max_users = history_len, max_users
        self.cache = cache
        self._data: OrderedDict[str, list[str]] = OrderedDict()

    def key(self, user_id: str) -> str:
        return user_id

    def fingerprint(self, user_id: str) -> str:
        return history_fingerprint(self._data.get(user_id, []))

    async def get(self, user_id: str) -> list[str]:
        items = self._data.get(user_id)
        if items is None:
            return []
        self._data.move_to_end(user_id)
        return list(items)

    async def append(self, events: dict[str, list[str]], invalidate: list[str]) -> None:
        for user_id, items in events.items():
            merged = (self._data.get(user_id, []) + items)[-self.history_len :]
            self._data[user_id] = merged
            self._data.move_to_end(user_id)
        while len(self._data) > self.max_users:
            self._data.popitem(last=False)
        if isinstance(self.cache, LocalCache):
            self.cache.delete(invalidate)


class RedisHistory(HistoryStore):
    durable = True

    def __init__(self, link: RedisLink, prefix: str, *, history_len: int, ttl_s: int = 0):
        self.link, self.prefix = link, prefix
        self.history_len, self.ttl_s = history_len, ttl_s

    def key(self, user_id: str) -> str:
        return f"{self.prefix}hist:{user_id}"

    async def get(self, user_id: str) -> list[str]:
        (raw,) = await self.link.batched(lambda pipe: pipe.lrange(self.key(user_id), 0, -1))
        if isinstance(raw, Exception):
            raise CacheUnavailable(str(raw))
        return [x.decode() for x in raw]

    async def get_with_vector(
        self, user_id: str, cache: VectorCache, vec_key: str | None
    ) -> tuple[list[str] | None, bytes | None, str]:
        if vec_key is None or not (isinstance(cache, RedisCache) and cache.link is self.link):
            return await super().get_with_vector(user_id, cache, vec_key)

        try:
            history, raw = await self.link.read(self.key(user_id), vec_key)
        except CacheUnavailable:
            return None, None, "off"
        if isinstance(history, Exception) or isinstance(raw, Exception):
            return None, None, "off"
        return [x.decode() for x in history], raw, "hit" if raw is not None else "miss"

    async def append(self, events: dict[str, list[str]], invalidate: list[str]) -> None:
        async def write():
            pipe = self.link.client.pipeline(transaction=True)
            for user_id, items in events.items():
                key = self.key(user_id)
                pipe.rpush(key, *items)
                pipe.ltrim(key, -self.history_len, -1)
                if self.ttl_s:
                    pipe.expire(key, self.ttl_s)
            if invalidate:
                pipe.delete(*invalidate)
            return await pipe.execute()

        await self.link.run(write)

    async def ping(self) -> tuple[bool, str]:
        return await self.link.ping()
