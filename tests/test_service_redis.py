"""The service against real Redis (never a mock), each test on one redis-server and on a
3-master Redis Cluster (the ``redis_backend`` fixture): keys and hash tags, hits and
misses, vectors tied to the history they were computed from, events recorded exactly
once per event_id, a wrong-type key failing one user only, Redis killed / hung /
restarted mid-test, and no password in logs or /readyz."""

from __future__ import annotations

import asyncio
import logging
import time

import numpy as np
import pytest
import redis_server as redis_helper
import test_service_support as support
from test_service_support import catalog, ids, serve, settings

anyio_backend, served_root = support.anyio_backend, support.served_root  # fixtures
pytestmark = pytest.mark.anyio


@pytest.fixture
def cat(served_root):
    return catalog(served_root)


def known_user(cat) -> str:
    return next(u["id"] for u in cat["users"] if u["history"])


def features_of(cat) -> dict:
    user = next(u for u in cat["users"] if u.get("features"))
    return {k: v for k, v in user["features"].items() if k in cat["user_features"]}


def with_redis(root, backend, **overrides):
    """Settings for the ``redis_backend`` (one redis-server, or a Redis Cluster); a generous
    timeout unless a test is about timeouts (on a busy 2-core box opening a connection can
    take longer than the 0.1 s default)."""
    return settings(root, **backend.settings, **({"redis_socket_timeout_s": 1.0} | overrides))


BACKEND = {"single": "redis", "cluster": "redis-cluster"}  # /readyz cache.backend


def hist(user: str) -> str:
    return f"towerrec:{{u:{user}}}:hist"


def metric(text: str, name: str) -> float:
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))


async def recommend(client, body) -> dict:
    r = await client.post("/recommend", json=body)
    assert r.status_code == 200, r.text
    return r.json()


async def test_miss_then_hit_with_the_vector_in_redis(served_root, redis_backend, cat):
    db = redis_backend.client()
    user = known_user(cat)
    async with serve(with_redis(served_root, redis_backend, cache_ttl_s=120)) as (
        client,
        _,
    ):
        first = await recommend(client, {"user_id": user})
        assert (first["strategy"], first["cache"]) == ("id", "miss")
        key = f"towerrec:{{u:{user}}}:vec:{cat['version']}"
        raw = db.get(key)
        assert len(raw) == 16 + 4 * cat["dim"]  # history tag + float32 vector
        assert np.isfinite(np.frombuffer(raw[16:], dtype=np.float32)).all()
        assert 0 < db.ttl(key) <= 120
        second = await recommend(client, {"user_id": user})
        assert second["cache"] == "hit" and ids(second) == ids(first)
        assert [it["score"] for it in second["items"]] == pytest.approx(
            [it["score"] for it in first["items"]], rel=1e-5
        )

        body = {"features": features_of(cat), "recent_items": [cat["items"][3]["id"]]}
        assert (await recommend(client, body))["cache"] == "miss"
        hashed = [k.decode() for k in redis_backend.keys("towerrec:{h:*")]
        assert len(hashed) == 1 and len(hashed[0].split("}")[0]) == len("towerrec:{h:") + 64
        again = await recommend(client, {**body, "k": 3})  # same inputs, other k: same vector
        assert again["cache"] == "hit"
        shuffled = dict(reversed(list(body["features"].items())))  # canonical JSON
        assert (await recommend(client, {**body, "features": shuffled}))["cache"] == "hit"

        popular = await recommend(client, {"k": 4})
        assert popular["cache"] == "off"
        assert len(redis_backend.keys("towerrec:*")) == 2


async def test_every_key_of_one_user_shares_one_hash_tag(served_root, redis_backend, cat):
    from redis.crc import key_slot

    user, item = known_user(cat), cat["items"][7]["id"]
    async with serve(with_redis(served_root, redis_backend)) as (client, _):
        await recommend(client, {"user_id": user})
        r = await client.post("/events", json={"user_id": user, "item_id": item, "event_id": "x"})
        assert r.json()["recorded"] == 1
        await recommend(client, {"user_id": user})
    keys = [k for k in redis_backend.keys("towerrec:*") if f"{{u:{user}}}".encode() in k]
    assert {k.decode().rsplit(":", 1)[0].split("}")[1] for k in keys} == {"", ":vec", ":event"}
    assert len(keys) == 3 and len({key_slot(k) for k in keys}) == 1


async def test_a_wrong_type_key_fails_that_user_only(served_root, redis_backend, cat):
    db = redis_backend.client()
    users = [u["id"] for u in cat["users"] if u["history"]][:6]
    item = cat["items"][5]["id"]
    async with serve(with_redis(served_root, redis_backend)) as (client, _):
        first = [await recommend(client, {"user_id": u}) for u in users]
        db.delete(hist(users[0]))
        db.set(hist(users[0]), "not a list")  # WRONGTYPE for LRANGE and RPUSH
        again = await asyncio.gather(*(recommend(client, {"user_id": u}) for u in users))
        assert again[0]["cache"] == "off" and any("redis" in w for w in again[0]["warnings"])
        assert ids(again[0]) == ids(first[0])  # the bundle history still answers
        assert all(a["cache"] == "hit" for a in again[1:])

        events = [{"user_id": users[0], "item_id": item}, {"user_id": users[1], "item_id": item}]
        r = await client.post("/events", json=events)
        assert r.status_code == 200, r.text  # something was recorded
        poisoned, healthy = r.json()["users"]
        assert (poisoned["status"], poisoned["failed"]) == ("failed", [0])
        assert "WRONGTYPE" in poisoned["error"]
        assert (healthy["status"], healthy["recorded"]) == ("recorded", [1])
        assert db.lrange(hist(users[1]), 0, -1) == [item.encode()]
        assert db.get(hist(users[0])) == b"not a list"  # nothing written next to it

        r = await client.post("/events", json=events[:1])  # the poisoned user alone
        assert r.status_code == 503 and r.json()["failed"] == 1
        # the breaker stayed closed: other users keep their cache
        assert (await recommend(client, {"user_id": users[2]}))["cache"] == "hit"
        metrics = (await client.get("/metrics")).text
        assert metric(metrics, "towerrec_redis_key_errors_total") >= 3
        assert metric(metrics, "towerrec_cache_errors_total ") == 0
        assert 'towerrec_events_total{result="failed"} 2.0' in metrics


async def test_events_make_the_next_answer_a_miss_for_the_new_history(
    served_root, redis_backend, cat
):
    db = redis_backend.client()
    user = known_user(cat)
    s = with_redis(served_root, redis_backend, history_len=3, history_ttl_s=600)
    async with serve(s) as (client, _):
        first = await recommend(client, {"user_id": user, "k": 10})
        assert (await recommend(client, {"user_id": user}))["cache"] == "hit"
        top = ids(first)[0]
        r = await client.post("/events", json={"user_id": user, "item_id": top})
        assert r.status_code == 200 and r.json()["durable"] is True
        assert db.lrange(hist(user), 0, -1) == [top.encode()]
        assert 0 < db.ttl(hist(user)) <= 600
        after = await recommend(client, {"user_id": user, "k": 10})
        assert after["cache"] == "miss"
        assert top not in ids(after) and ids(after) != ids(first)
        assert (await recommend(client, {"user_id": user, "k": 10}))["cache"] == "hit"

        items = [it["id"] for it in cat["items"][50:55]]
        events = [{"user_id": "fresh", "item_id": i} for i in items]
        events.append({"user_id": user, "item_id": items[0]})
        r = await client.post("/events", json={"events": events})
        assert r.status_code == 200
        assert (r.json()["recorded"], r.json()["failed"]) == (6, 0)
        assert [u["user_id"] for u in r.json()["users"]] == ["fresh", user]
        assert db.lrange(hist("fresh"), 0, -1) == [i.encode() for i in items[-3:]]
        assert db.lrange(hist(user), 0, -1) == [top.encode(), items[0].encode()]
        fresh = await recommend(client, {"user_id": "fresh", "k": 5})
        assert fresh["strategy"] == "id" and not set(items[-3:]) & set(ids(fresh))

        r = await client.post(
            "/events",
            json=[{"user_id": "other", "item_id": items[0]}, {"user_id": "other", "item_id": "x"}],
        )
        assert r.status_code == 422 and "x" in r.text
        assert not db.exists(hist("other"))


async def test_a_vector_saved_for_an_old_history_is_never_served(served_root, redis_backend, cat):
    """What a request that computed its vector while an event was written leaves behind."""
    user, item = known_user(cat), cat["items"][9]["id"]
    async with serve(with_redis(served_root, redis_backend)) as (client, app):
        store, dim = app.state.runtime.store, cat["dim"]
        key = store.user_key(user, cat["version"])
        before = await store.read(user, key, dim)
        assert (before.history, before.cache) == ([], "miss")
        r = await client.post("/events", json={"user_id": user, "item_id": item})
        assert r.json()["recorded"] == 1
        await store.save(key, np.ones(dim, np.float32), before.history)  # the late write
        after = await store.read(user, key, dim)
        assert (after.history, after.cache, after.vector) == ([item], "miss", None)
        assert (await recommend(client, {"user_id": user}))["cache"] == "miss"


async def test_event_id_retries_are_recorded_once(served_root, redis_backend, cat):
    db = redis_backend.client()
    a, b = cat["items"][1]["id"], cat["items"][2]["id"]
    events = [
        {"user_id": "r1", "item_id": a, "event_id": "e-1", "timestamp": 10},
        {"user_id": "r1", "item_id": b, "event_id": "e-2", "timestamp": 11},
        {"user_id": "r2", "item_id": b, "event_id": "e-1", "timestamp": 12},  # ids are per user
    ]
    s = with_redis(served_root, redis_backend, event_id_ttl_s=300)
    async with serve(s) as (client, _):
        first = (await client.post("/events", json=events)).json()
        assert (first["recorded"], first["duplicates"]) == (3, 0)
        for _ in range(3):
            r = await client.post("/events", json={"events": events})
            assert r.status_code == 200
            assert (r.json()["recorded"], r.json()["duplicates"]) == (0, 3)
            assert {u["status"] for u in r.json()["users"]} == {"duplicate"}
        mixed = [*events[:1], {"user_id": "r1", "item_id": a, "event_id": "e-3"}]
        r = (await client.post("/events", json=mixed)).json()
        assert r["users"][0]["recorded"] == [1] and r["users"][0]["duplicates"] == [0]
    assert db.lrange(hist("r1"), 0, -1) == [a.encode(), b.encode(), a.encode()]
    assert db.lrange(hist("r2"), 0, -1) == [b.encode()]
    assert 0 < db.ttl("towerrec:{u:r1}:event:e-1") <= 300


async def test_redis_paused_past_the_timeout_answers_what_was_recorded(
    served_root, redis_backend, cat
):
    db = redis_backend.client()
    item = cat["items"][4]["id"]
    events = [{"user_id": f"p{n}", "item_id": item, "event_id": f"id-{n}"} for n in range(3)]
    s = with_redis(served_root, redis_backend, redis_socket_timeout_s=0.1, redis_retry_s=0.2)
    async with serve(s) as (client, _):
        redis_backend.pause()
        try:
            started = time.perf_counter()
            r = await client.post("/events", json=events)
            assert time.perf_counter() - started < 2
            assert r.status_code == 503 and r.headers["retry-after"]
            body = r.json()
            assert (body["recorded"], body["failed"]) == (0, 3)
            assert all(u["status"] == "failed" and "retry" in u["error"] for u in body["users"])
            assert "127.0.0.1" not in r.text
        finally:
            redis_backend.resume()
        # the paused commands may have run on resume: the retry says which, nothing twice
        deadline = time.monotonic() + 10
        while True:
            r = await client.post("/events", json=events)
            if r.status_code == 200 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        body = r.json()
        assert body["failed"] == 0 and body["recorded"] + body["duplicates"] == 3
    for n in range(3):
        assert db.lrange(hist(f"p{n}"), 0, -1) == [item.encode()]


async def test_redis_killed_then_restarted(served_root, redis_backend, cat):
    user = known_user(cat)
    s = with_redis(served_root, redis_backend, redis_retry_s=0.2, redis_socket_timeout_s=0.1)
    async with serve(s) as (client, app):
        assert (await recommend(client, {"user_id": user}))["cache"] == "miss"
        assert (await recommend(client, {"user_id": user}))["cache"] == "hit"
        r = await client.get("/readyz")
        assert r.status_code == 200 and r.json()["cache"] == {
            "backend": BACKEND[redis_backend.kind],
            "state": "up",
        }

        redis_backend.kill()
        started = time.perf_counter()
        for n in range(20):
            body = {"user_id": user} if n % 2 else {"features": features_of(cat), "k": 5}
            data = await recommend(client, body)
            assert data["cache"] == "off"
            assert len(data["items"]) == body.get("k", 10)
        assert time.perf_counter() - started < 5
        data = await recommend(client, {"user_id": user})
        assert data["strategy"] == "id" and any("redis" in w for w in data["warnings"])
        assert (await client.get(f"/similar-items/{cat['items'][0]['id']}")).status_code == 200
        # still ready: this replica answers /recommend without Redis
        r = await client.get("/readyz")
        assert r.status_code == 200 and r.json()["cache"] == {
            "backend": BACKEND[redis_backend.kind],
            "state": "down",
        }
        r = await client.post("/events", json={"user_id": user, "item_id": cat["items"][0]["id"]})
        assert r.status_code == 503 and r.json()["users"][0]["status"] == "failed"
        metrics = (await client.get("/metrics")).text
        assert metric(metrics, "towerrec_cache_errors_total ") >= 1
        assert "towerrec_redis_up 0.0" in metrics

        redis_backend.start()  # same port, empty
        deadline = time.monotonic() + 10
        while (await client.get("/readyz")).json()["cache"]["state"] != "up":
            assert time.monotonic() < deadline, "readyz never saw redis again"
            await asyncio.sleep(0.05)
        statuses = []
        for _ in range(5):
            statuses.append((await recommend(client, {"user_id": user}))["cache"])
            await asyncio.sleep(0.05)
        assert "hit" in statuses, statuses
        assert "towerrec_redis_up 1.0" in (await client.get("/metrics")).text


async def test_redis_required_makes_readiness_follow_redis(served_root, redis_backend):
    s = with_redis(served_root, redis_backend, redis_required=True, redis_socket_timeout_s=0.1)
    async with serve(s) as (client, _):
        r = await client.get("/readyz")
        assert r.status_code == 200 and r.json()["redis_required"] is True
        redis_backend.kill()
        r = await client.get("/readyz")
        assert r.status_code == 503 and "redis" in r.json()["reason"]
        assert (await client.post("/recommend", json={"k": 3})).status_code == 200


async def test_hung_redis_costs_one_timeout_not_one_per_request(served_root, redis_backend, cat):
    s = with_redis(served_root, redis_backend, redis_retry_s=5, redis_socket_timeout_s=0.1)
    body = {"features": features_of(cat), "k": 5}
    async with serve(s) as (client, _):
        assert (await recommend(client, body))["cache"] == "miss"
        redis_backend.pause()
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
            redis_backend.resume()


async def test_the_password_never_reaches_logs_or_responses(served_root, cat, caplog):
    password = "pa55-w0rd-never-shown"
    with redis_helper.RedisServer(extra_args=["--requirepass", password]) as server:
        url = f"redis://:{password}@127.0.0.1:{server.port}/0"
        s = settings(served_root, redis_url=url, redis_socket_timeout_s=0.1, redis_log_interval_s=0)
        assert password not in repr(s) and password not in str(s.model_dump())
        caplog.set_level(logging.DEBUG)
        async with serve(s) as (client, _):
            assert (await recommend(client, {"user_id": known_user(cat)}))["cache"] == "miss"
            server.kill()
            await recommend(client, {"user_id": known_user(cat)})
            await client.post("/events", json={"user_id": "u", "item_id": cat["items"][0]["id"]})
            bodies = [(await client.get(path)).text for path in ("/readyz", "/metrics")]
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "redis failed" in logged  # the failure was logged, without the secret
    for text in [logged, *bodies]:
        assert password not in text
    assert str(server.port) not in bodies[0]  # no address in the public /readyz
