"""The service against a real redis-server (never a mock): cache keys, hits and misses,
invalidation by /events, Redis killed / hung / restarted mid-test."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
import redis_server as redis_helper
import test_service_support as support
from test_service_support import catalog, ids, serve, settings

anyio_backend, served_root = support.anyio_backend, support.served_root  # fixtures
redis_server = redis_helper.redis_server

pytestmark = pytest.mark.anyio


@pytest.fixture
def cat(served_root):
    return catalog(served_root)


def known_user(cat) -> str:
    return next(u["id"] for u in cat["users"] if u["history"])


def features_of(cat) -> dict:
    user = next(u for u in cat["users"] if u.get("features"))
    return {k: v for k, v in user["features"].items() if k in cat["user_features"]}


def script_calls(db) -> int:
    """Lua script commands (EVAL and EVALSHA) run so far."""
    stats = db.info("commandstats")
    return sum(stats.get(f"cmdstat_{c}", {}).get("calls", 0) for c in ("eval", "evalsha"))


async def recommend(client, body) -> dict:
    r = await client.post("/recommend", json=body)
    assert r.status_code == 200, r.text
    return r.json()


async def test_miss_then_hit_with_the_vector_in_redis(served_root, redis_server, cat):
    db = redis_server.client()
    user = known_user(cat)
    async with serve(settings(served_root, redis_url=redis_server.url, cache_ttl_s=120)) as (
        client,
        _,
    ):
        first = await recommend(client, {"user_id": user})
        assert (first["strategy"], first["cache"]) == ("id", "miss")
        key = f"towerrec:{cat['version']}:u:{user}"
        assert db.exists(key)
        raw = db.get(key)
        assert len(raw) == 4 * cat["dim"]
        assert np.isfinite(np.frombuffer(raw, dtype=np.float32)).all()
        assert 0 < db.ttl(key) <= 120
        second = await recommend(client, {"user_id": user})
        assert second["cache"] == "hit" and ids(second) == ids(first)
        assert [it["score"] for it in second["items"]] == pytest.approx(
            [it["score"] for it in first["items"]], rel=1e-5
        )

        body = {"features": features_of(cat), "recent_items": [cat["items"][3]["id"]]}
        assert (await recommend(client, body))["cache"] == "miss"
        hashed = [k.decode() for k in db.keys(f"towerrec:{cat['version']}:h:*")]
        assert len(hashed) == 1 and len(hashed[0].rsplit(":", 1)[1]) == 64
        again = await recommend(client, {**body, "k": 3})  # same inputs, other k: same vector
        assert again["cache"] == "hit"
        # key order of the features does not matter (canonical JSON)
        shuffled = dict(reversed(list(body["features"].items())))
        assert (await recommend(client, {**body, "features": shuffled}))["cache"] == "hit"

        popular = await recommend(client, {"k": 4})
        assert popular["cache"] == "off"
        assert len(db.keys("towerrec:*")) == 2


async def test_concurrent_reads_share_one_command_and_a_bad_key_fails_only_its_request(
    served_root, redis_server, cat
):
    db = redis_server.client()
    users = [u["id"] for u in cat["users"] if u["history"]][:6]
    async with serve(settings(served_root, redis_url=redis_server.url)) as (client, _):
        first = [await recommend(client, {"user_id": u}) for u in users]
        explicit = {"recent_items": [cat["items"][5]["id"], cat["items"][9]["id"]]}
        assert (await recommend(client, explicit))["cache"] == "miss"
        db.set(f"towerrec:hist:{users[0]}", "not a list")  # WRONGTYPE for LRANGE
        before = script_calls(db)
        bodies = [{"user_id": u} for u in users] + [explicit]
        *again, by_inputs = await asyncio.gather(*(recommend(client, b) for b in bodies))
        calls = script_calls(db) - before
        assert calls < len(bodies)  # the reads of one loop iteration went out together
        assert by_inputs["cache"] == "hit"  # a lone vector read (no history) in the batch
        assert again[0]["cache"] == "off" and any("redis" in w for w in again[0]["warnings"])
        assert ids(again[0]) == ids(first[0])
        for one, two in zip(first[1:], again[1:], strict=True):
            assert two["cache"] == "hit" and ids(two) == ids(one)


async def test_events_invalidate_the_users_vector(served_root, redis_server, cat):
    db = redis_server.client()
    user = known_user(cat)
    key = f"towerrec:{cat['version']}:u:{user}"
    s = settings(served_root, redis_url=redis_server.url, history_len=3)
    async with serve(s) as (client, _):
        first = await recommend(client, {"user_id": user, "k": 10})
        assert (await recommend(client, {"user_id": user}))["cache"] == "hit"
        top = ids(first)[0]
        r = await client.post("/events", json={"user_id": user, "item_id": top})
        assert r.status_code == 200 and r.json()["durable"] is True
        assert not db.exists(key)
        assert db.lrange(f"towerrec:hist:{user}", 0, -1) == [top.encode()]
        after = await recommend(client, {"user_id": user, "k": 10})
        assert after["cache"] == "miss"
        assert top not in ids(after) and ids(after) != ids(first)
        assert db.exists(key)
        assert (await recommend(client, {"user_id": user, "k": 10}))["cache"] == "hit"

        # a batch over two users: one MULTI, lists trimmed to HISTORY_LEN, newest last
        items = [it["id"] for it in cat["items"][50:55]]
        events = [{"user_id": "fresh", "item_id": i} for i in items]
        events.append({"user_id": user, "item_id": items[0]})
        r = await client.post("/events", json={"events": events})
        assert r.status_code == 200 and r.json() == {"accepted": 6, "users": 2, "durable": True}
        assert db.lrange("towerrec:hist:fresh", 0, -1) == [i.encode() for i in items[-3:]]
        assert db.lrange(f"towerrec:hist:{user}", 0, -1) == [top.encode(), items[0].encode()]
        fresh = await recommend(client, {"user_id": "fresh", "k": 5})
        assert fresh["strategy"] == "id" and not set(items[-3:]) & set(ids(fresh))
        assert db.exists(f"towerrec:{cat['version']}:u:fresh")

        # an unknown item fails the whole batch: nothing written
        r = await client.post(
            "/events",
            json={
                "events": [
                    {"user_id": "other", "item_id": items[0]},
                    {"user_id": "other", "item_id": "ghost"},
                ]
            },
        )
        assert r.status_code == 422 and "ghost" in r.text
        assert not db.exists("towerrec:hist:other")


async def test_a_vector_computed_before_an_event_is_not_cached_after_it(
    served_root, redis_server, cat
):
    """The compare-and-set: a vector computed from an old history is dropped."""
    from service.cache import RedisCache, RedisLink, history_fingerprint

    link = RedisLink(redis_server.url, timeout_s=0.5, retry_s=0.1, log_interval_s=60)
    cache = RedisCache(link, "t:", ttl_s=60)
    db = redis_server.client()
    db.rpush("t:hist:u", "1")
    stale = history_fingerprint([])  # what a request read before the event
    await cache.set("t:v:u:u", b"x" * 8, history_key="t:hist:u", history_fp=stale)
    assert not db.exists("t:v:u:u")
    await cache.set(
        "t:v:u:u", b"x" * 8, history_key="t:hist:u", history_fp=history_fingerprint(["1"])
    )
    assert db.get("t:v:u:u") == b"x" * 8

    # concurrent writes, plain and compare-and-set, go out as one command; the first
    # batch after a SCRIPT FLUSH (as after a Redis restart) gets NOSCRIPT and reloads it
    db.rpush("t:hist:w", "2")
    fresh, old = history_fingerprint(["2"]), history_fingerprint(["1", "2"])
    for flush in (True, False):
        if flush:
            db.script_flush()
        db.delete("t:v:h:1", "t:v:u:w", "t:v:u:x", "t:v:h:2")
        before = script_calls(db)
        await asyncio.gather(
            cache.set("t:v:h:1", b"a" * 8),
            cache.set("t:v:u:w", b"b" * 8, history_key="t:hist:w", history_fp=fresh),
            cache.set("t:v:u:x", b"c" * 8, history_key="t:hist:w", history_fp=old),
            cache.set("t:v:h:2", b"d" * 8),
        )
        if not flush:
            assert script_calls(db) == before + 1
        assert [db.get(f"t:v:{k}") for k in ("h:1", "u:w", "u:x", "h:2")] == [
            b"a" * 8,
            b"b" * 8,
            None,
            b"d" * 8,
        ]
    assert 0 < db.ttl("t:v:h:2") <= 60
    await link.close()


async def test_redis_killed_then_restarted(served_root, redis_server, cat):
    user = known_user(cat)
    s = settings(
        served_root, redis_url=redis_server.url, redis_retry_s=0.2, redis_socket_timeout_s=0.1
    )
    async with serve(s) as (client, app):
        assert (await recommend(client, {"user_id": user}))["cache"] == "miss"
        assert (await recommend(client, {"user_id": user}))["cache"] == "hit"
        assert (await client.get("/readyz")).status_code == 200

        redis_server.kill()
        started = time.perf_counter()
        for n in range(20):
            body = {"user_id": user} if n % 2 else {"features": features_of(cat), "k": 5}
            data = await recommend(client, body)
            assert data["cache"] == "off"
            assert len(data["items"]) == body.get("k", 10)
        assert time.perf_counter() - started < 5
        data = await recommend(client, {"user_id": user})
        assert data["strategy"] == "id" and any("redis" in w for w in data["warnings"])
        r = await client.get(f"/similar-items/{cat['items'][0]['id']}")
        assert r.status_code == 200
        r = await client.get("/readyz")
        assert r.status_code == 503 and "redis" in r.json()["reason"]
        r = await client.post("/events", json={"user_id": user, "item_id": cat["items"][0]["id"]})
        assert r.status_code == 503 and "redis" in r.json()["detail"]
        metrics = (await client.get("/metrics")).text
        errors = next(
            float(line.split()[-1])
            for line in metrics.splitlines()
            if line.startswith("towerrec_cache_errors_total ")
        )
        assert errors >= 1

        redis_server.start()  # same port, empty
        deadline = time.monotonic() + 10
        while (await client.get("/readyz")).status_code != 200:
            assert time.monotonic() < deadline, "readyz never recovered"
            await asyncio.sleep(0.05)
        statuses = []
        for _ in range(5):
            statuses.append((await recommend(client, {"user_id": user}))["cache"])
            await asyncio.sleep(0.05)
        assert "hit" in statuses, statuses
        assert redis_server.client().exists(f"towerrec:{cat['version']}:u:{user}")


async def test_hung_redis_costs_one_timeout_not_one_per_request(served_root, redis_server, cat):
    s = settings(
        served_root, redis_url=redis_server.url, redis_retry_s=5, redis_socket_timeout_s=0.1
    )
    body = {"features": features_of(cat), "k": 5}
    async with serve(s) as (client, _):
        assert (await recommend(client, body))["cache"] == "miss"
        redis_server.pause()
        try:
            started = time.perf_counter()
            first = await recommend(client, body)
            assert first["cache"] == "off"
            assert time.perf_counter() - started < 1.0
            started = time.perf_counter()
            for _ in range(20):  # the breaker is open: no more waiting on Redis
                assert (await recommend(client, body))["cache"] == "off"
            assert time.perf_counter() - started < 1.0
        finally:
            redis_server.resume()
