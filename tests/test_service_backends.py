"""The cache and events cases over HTTP, each run twice by the ``redis_backend`` fixture: on
one redis-server and on a real 3-master Redis Cluster (tests/redis_cluster.py). Also what
happens when a node (on a single server: the server) is killed mid-test.

Key layout (service/store.py): every key of one user carries the hash tag ``{u:<id>}``,
so all of a user's keys sit in one slot of a cluster.
"""

from __future__ import annotations

import asyncio
import time

import pytest
import test_service_support as support
from test_service_support import catalog, ids, serve, settings

anyio_backend, served_root = support.anyio_backend, support.served_root  # fixtures

pytestmark = pytest.mark.anyio


@pytest.fixture
def cat(served_root):
    return catalog(served_root)


def users_with_history(cat, n: int) -> list[str]:
    return [u["id"] for u in cat["users"] if u["history"]][:n]


def user_keys(backend, user: str) -> list[str]:
    return sorted(k.decode() for k in backend.keys(f"*{{u:{user}}}*"))


def history(backend, user: str) -> list[str]:
    db = backend.client()
    try:
        return [x.decode() for x in db.lrange(f"towerrec:{{u:{user}}}:hist", 0, -1)]
    finally:
        db.close()


async def recommend(client, body) -> dict:
    r = await client.post("/recommend", json=body)
    assert r.status_code == 200, r.text
    return r.json()


async def test_cache_miss_hit_and_invalidation_by_events(served_root, redis_backend, cat):
    user = users_with_history(cat, 1)[0]
    s = settings(served_root, **redis_backend.settings, cache_ttl_s=120)
    async with serve(s) as (client, _):
        first = await recommend(client, {"user_id": user, "k": 10})
        assert (first["strategy"], first["cache"]) == ("id", "miss")
        again = await recommend(client, {"user_id": user, "k": 10})
        assert again["cache"] == "hit" and ids(again) == ids(first)
        keys = user_keys(redis_backend, user)
        assert keys == [f"towerrec:{{u:{user}}}:vec:{cat['version']}"], keys
        db = redis_backend.client()
        assert 0 < db.ttl(keys[0]) <= 120

        top = ids(first)[0]
        r = await client.post("/events", json={"user_id": user, "item_id": top})
        assert r.status_code == 200, r.text
        assert (r.json()["recorded"], r.json()["failed"], r.json()["durable"]) == (1, 0, True)
        assert history(redis_backend, user) == [top]
        after = await recommend(client, {"user_id": user, "k": 10})
        assert after["cache"] == "miss"  # the vector was for the history before the event
        assert top not in ids(after)
        assert (await recommend(client, {"user_id": user, "k": 10}))["cache"] == "hit"
        if redis_backend.kind == "cluster":
            slots = {db.keyslot(k) for k in user_keys(redis_backend, user)}
            assert len(slots) == 1, user_keys(redis_backend, user)  # one slot per user
        db.close()

        # explicit inputs: keyed by their hash, same inputs in any key order -> a hit
        body = {"recent_items": [cat["items"][3]["id"], cat["items"][7]["id"]], "k": 5}
        assert (await recommend(client, body))["cache"] == "miss"
        assert (await recommend(client, {**body, "k": 3}))["cache"] == "hit"
        assert len(redis_backend.keys("towerrec:{h:*}:vec:*")) == 1


async def test_events_for_many_users_land_in_many_slots_and_all_count(
    served_root, redis_backend, cat
):
    users = [f"new-user-{n}" for n in range(12)]
    items = [it["id"] for it in cat["items"][40:52]]
    async with serve(settings(served_root, **redis_backend.settings, history_len=5)) as (
        client,
        _,
    ):
        events = [{"user_id": u, "item_id": i} for u, i in zip(users, items, strict=True)]
        events += [{"user_id": users[0], "item_id": items[5]}]
        r = await client.post("/events", json=events)  # a bare array, like Gorse's API
        assert r.status_code == 200, r.text
        body = r.json()
        assert (body["recorded"], body["duplicates"], body["failed"]) == (13, 0, 0)
        assert {u["user_id"] for u in body["users"]} == set(users)
        assert all(u["status"] == "recorded" for u in body["users"])
        assert history(redis_backend, users[0]) == [items[0], items[5]]
        for user, item in zip(users[1:], items[1:], strict=True):
            assert history(redis_backend, user) == [item]
        if redis_backend.kind == "cluster":
            nodes = {redis_backend.target.node_of(f"towerrec:{{u:{u}}}:hist") for u in users}
            assert len(nodes) >= 2, "the users should spread over the masters"
        for user, item in zip(users[:4], items[:4], strict=True):
            data = await recommend(client, {"user_id": user, "k": 20})
            assert data["strategy"] == "id" and item not in ids(data)  # seen: excluded


async def test_a_node_killed_mid_test_keeps_every_answer_200(served_root, redis_backend, cat):
    users = users_with_history(cat, 30)
    s = settings(
        served_root, **redis_backend.settings, redis_retry_s=0.2, redis_socket_timeout_s=0.1
    )
    async with serve(s) as (client, _):
        for user in users:
            assert (await recommend(client, {"user_id": user}))["cache"] == "miss"
        assert (await recommend(client, {"user_id": users[0]}))["cache"] == "hit"

        redis_backend.kill_node_of(f"towerrec:{{u:{users[0]}}}:hist")
        started = time.monotonic()
        caches = []
        item = cat["items"][0]["id"]
        # past the cluster's node timeout (1 s): the cluster reports itself down meanwhile
        while time.monotonic() - started < 2.5:
            for user in users[:10]:
                data = await recommend(client, {"user_id": user, "k": 5})
                assert len(data["items"]) == 5 and data["strategy"] == "id"
                caches.append(data["cache"])
            r = await client.get(f"/similar-items/{item}")
            assert r.status_code == 200, r.text
            r = await client.get("/readyz")
            assert r.status_code == 200, r.text  # the bundle is loaded: still ready
            r = await client.post("/events", json={"user_id": users[0], "item_id": item})
            assert r.status_code in (200, 503), r.text
            if r.status_code == 503:
                assert r.json()["recorded"] == 0 and r.json()["failed"] == 1
        assert "off" in caches  # the killed node's users at least
        assert (await client.get("/readyz")).json()["cache"]["state"] in ("up", "down")

        redis_backend.start()
        deadline = time.monotonic() + 15
        while True:  # the breaker probes again; the cache comes back for every user
            data = await recommend(client, {"user_id": users[0]})
            if data["cache"] in ("hit", "miss"):
                break
            assert time.monotonic() < deadline, "the cache never came back"
            await asyncio.sleep(0.1)
        r = await client.post("/events", json={"user_id": users[0], "item_id": item})
        assert r.status_code == 200 and r.json()["recorded"] == 1, r.text
