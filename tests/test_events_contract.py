"""POST /events tells the truth and records each event once, on one redis-server and on a
Redis Cluster (the ``redis_backend`` fixture runs every test on both):

- a retried call with the same ``event_id`` records nothing twice;
- a poison key (one user's history holding a value of the wrong type) fails that user
  only: the others are recorded, the answer says which, the cache stays on for everyone;
- Redis paused (SIGSTOP) past the socket timeout: the answer says what was recorded and
  what is unconfirmed, and retrying the unconfirmed events with their ids leaves each
  event in the history exactly once.
"""

from __future__ import annotations

import asyncio
import time

import pytest
import test_service_support as support
from test_service_support import catalog, serve, settings

anyio_backend, served_root = support.anyio_backend, support.served_root  # fixtures

pytestmark = pytest.mark.anyio


@pytest.fixture
def cat(served_root):
    return catalog(served_root)


def key_part(ident: str) -> str:
    """An id inside a key, as service/store.py documents it: ``%{}:`` percent-encoded."""
    return "".join({"%": "%25", "{": "%7B", "}": "%7D", ":": "%3A"}.get(c, c) for c in ident)


def hist_key(user: str) -> str:
    return f"towerrec:{{u:{key_part(user)}}}:hist"


def history(backend, user: str) -> list[str]:
    db = backend.client()
    try:
        return [x.decode() for x in db.lrange(hist_key(user), 0, -1)]
    finally:
        db.close()


def by_user(answer: dict) -> dict[str, dict]:
    return {u["user_id"]: u for u in answer["users"]}


def metric(text: str, name: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name) and not line.startswith("#")
    )


async def test_a_retry_with_the_same_event_ids_records_nothing_twice(
    served_root, redis_backend, cat
):
    items = [it["id"] for it in cat["items"][:4]]
    events = [
        {"user_id": "u1", "item_id": items[0], "event_id": "e1"},
        {"user_id": "u1", "item_id": items[1], "event_id": "e2"},
        {"user_id": "u2", "item_id": items[2], "event_id": "e1"},  # ids are per user
    ]
    async with serve(settings(served_root, **redis_backend.settings)) as (client, _):
        first = await client.post("/events", json={"events": events})
        assert first.status_code == 200, first.text
        assert (first.json()["recorded"], first.json()["duplicates"]) == (3, 0)
        retry = await client.post("/events", json={"events": events})
        assert retry.status_code == 200, retry.text
        assert (retry.json()["recorded"], retry.json()["duplicates"]) == (0, 3)
        assert {u["status"] for u in retry.json()["users"]} == {"duplicate"}
        # a retry that overlaps: only the new id is recorded
        overlap = [events[1], {"user_id": "u1", "item_id": items[3], "event_id": "e3"}]
        r = await client.post("/events", json=overlap)
        assert (r.json()["recorded"], r.json()["duplicates"]) == (1, 1), r.text
        assert by_user(r.json())["u1"]["recorded"] == [1]  # the position in this call
        assert by_user(r.json())["u1"]["duplicates"] == [0]
        assert history(redis_backend, "u1") == [items[0], items[1], items[3]]
        assert history(redis_backend, "u2") == [items[2]]
        # the same id twice inside one call counts once too
        twice = [{"user_id": "u3", "item_id": items[0], "event_id": "x"}] * 2
        r = await client.post("/events", json=twice)
        assert (r.json()["recorded"], r.json()["duplicates"]) == (1, 1), r.text
        assert history(redis_backend, "u3") == [items[0]]
        # without ids nothing can be told apart: both are recorded
        plain = [{"user_id": "u4", "item_id": items[0]}] * 2
        r = await client.post("/events", json=plain)
        assert r.json()["recorded"] == 2 and history(redis_backend, "u4") == [items[0]] * 2


async def test_a_poison_key_fails_only_its_user_and_says_so(served_root, redis_backend, cat):
    items = [it["id"] for it in cat["items"][:3]]
    bad, good = "poisoned", ["fine-1", "fine-2"]
    db = redis_backend.client()
    db.set(hist_key(bad), "not a list")  # WRONGTYPE for every list command
    db.close()
    async with serve(settings(served_root, **redis_backend.settings)) as (client, _):
        events = [
            {"user_id": good[0], "item_id": items[0], "event_id": "a"},
            {"user_id": bad, "item_id": items[1], "event_id": "b"},
            {"user_id": good[1], "item_id": items[2], "event_id": "c"},
        ]
        r = await client.post("/events", json=events)
        assert r.status_code == 200, r.text  # something was recorded: not a 503
        answer = r.json()
        assert (answer["recorded"], answer["failed"]) == (2, 1)
        users = by_user(answer)
        assert users[bad]["status"] == "failed" and users[bad]["failed"] == [1]
        assert users[bad]["error"] and "WRONGTYPE" in users[bad]["error"]
        assert users[good[0]]["recorded"] == [0] and users[good[1]]["recorded"] == [2]
        assert history(redis_backend, good[0]) == [items[0]]
        assert history(redis_backend, good[1]) == [items[2]]
        metrics = (await client.get("/metrics")).text
        assert metric(metrics, "towerrec_redis_key_errors_total") >= 1

        # only the poisoned user was refused: only the poisoned user lost the cache
        for user in good:
            first = (await client.post("/recommend", json={"user_id": user})).json()
            again = (await client.post("/recommend", json={"user_id": user})).json()
            assert (first["cache"], again["cache"]) == ("miss", "hit"), (first, again)
        poisoned = await client.post("/recommend", json={"user_id": bad})
        assert poisoned.status_code == 200 and poisoned.json()["cache"] == "off"
        ready = (await client.get("/readyz")).json()
        assert ready["cache"]["state"] == "up", ready

        # only the poisoned event failed: a retry of the whole call records nothing twice
        db = redis_backend.client()
        db.delete(hist_key(bad))
        db.close()
        r = await client.post("/events", json=events)
        assert (r.json()["recorded"], r.json()["duplicates"]) == (1, 2), r.text
        assert history(redis_backend, bad) == [items[1]]


async def test_redis_paused_past_the_timeout_the_answer_says_what_was_recorded(
    served_root, redis_backend, cat
):
    items = [it["id"] for it in cat["items"][:4]]
    users = [f"paused-{n}" for n in range(8)]
    if redis_backend.kind == "cluster":
        cluster = redis_backend.target
        nodes = {u: cluster.node_of(hist_key(u)) for u in users}
        stuck = nodes[users[0]]
        assert set(nodes.values()) != {stuck}, nodes  # some users live elsewhere
    s = settings(
        served_root, **redis_backend.settings, redis_socket_timeout_s=0.2, redis_retry_s=0.3
    )
    events = [
        {"user_id": u, "item_id": items[n % 4], "event_id": f"ev-{n}"} for n, u in enumerate(users)
    ]
    async with serve(s) as (client, _):
        if redis_backend.kind == "cluster":
            cluster.pause(stuck)
        else:
            redis_backend.pause()
        try:
            started = time.monotonic()
            r = await client.post("/events", json=events)
            took = time.monotonic() - started
        finally:
            redis_backend.resume()
        # 0.2 s socket timeout; on the cluster well under its node timeout (1 s), after
        # which the other masters would call the cluster down and refuse writes too
        assert took < (0.9 if redis_backend.kind == "cluster" else 5), took
        answer = r.json()
        assert answer["recorded"] + answer["duplicates"] + answer["failed"] == len(events)
        users_said = by_user(answer)
        failed = {u for u, e in users_said.items() if e["status"] == "failed"}
        recorded = {u for u, e in users_said.items() if e["status"] == "recorded"}
        assert failed | recorded == set(users)
        if redis_backend.kind == "cluster":
            # the users on the other masters were recorded, and the answer says so
            assert failed == {u for u in users if nodes[u] == stuck}, answer
            assert r.status_code == 200, r.text
        else:
            assert failed == set(users) and r.status_code == 503, r.text
        for user in failed:
            assert users_said[user]["error"], users_said[user]
        await asyncio.sleep(0.5)  # the queued commands have run now; the breaker closed

        for user in recorded:  # what the answer called recorded is there
            assert history(redis_backend, user) == [items[users.index(user) % 4]]
        # retry what the answer called failed, with the same ids, until it is confirmed
        retry = [e for e in events if e["user_id"] in failed]
        deadline = time.monotonic() + 10
        while True:
            r = await client.post("/events", json=retry)
            if r.status_code == 200 and r.json()["failed"] == 0:
                break
            assert time.monotonic() < deadline, r.text
            await asyncio.sleep(0.2)
        for n, user in enumerate(users):  # each event exactly once, whatever happened
            assert history(redis_backend, user) == [items[n % 4]], user


async def test_ids_cannot_reach_another_users_keys(served_root, redis_backend, cat):
    """User and event ids are client text: braces and colons in them must not make one
    user's key equal to another's (e.g. user ``a``'s id marker for event ``x}:hist`` and
    the history of user ``a}:event:x``), in either order of arrival."""
    item = cat["items"][0]["id"]
    pairs = [
        ({"user_id": "a", "event_id": "x}:hist"}, {"user_id": "a}:event:x"}),
        ({"user_id": "b}:event:y"}, {"user_id": "b", "event_id": "y}:hist"}),
    ]
    async with serve(settings(served_root, **redis_backend.settings)) as (client, _):
        for first, second in pairs:
            for who in (first, second):
                r = await client.post("/events", json={**who, "item_id": item})
                assert r.status_code == 200, r.text
                assert r.json()["recorded"] == 1, (who, r.json())
            for who in (first, second):
                assert history(redis_backend, who["user_id"]) == [item], who


async def test_a_vector_key_of_the_wrong_type_is_a_miss_for_that_user_only(
    served_root, redis_backend, cat
):
    users = [u["id"] for u in cat["users"] if u["history"]][:3]
    db = redis_backend.client()
    db.rpush(f"towerrec:{{u:{users[0]}}}:vec:{cat['version']}", "a list, not a vector")
    db.close()
    async with serve(settings(served_root, **redis_backend.settings)) as (client, _):
        for user in users:
            r = await client.post("/recommend", json={"user_id": user, "k": 5})
            assert r.status_code == 200 and len(r.json()["items"]) == 5, r.text
        for user in users[1:]:
            again = (await client.post("/recommend", json={"user_id": user})).json()
            assert again["cache"] == "hit", again
        bad = (await client.post("/recommend", json={"user_id": users[0]})).json()
        assert bad["cache"] in ("off", "miss") and len(bad["items"]) == 10


async def test_histories_expire_by_default(served_root, redis_backend, cat):
    """Memory cannot grow without bound: an idle user's history has a TTL by default."""
    async with serve(settings(served_root, **redis_backend.settings)) as (client, _):
        r = await client.post("/events", json={"user_id": "idle", "item_id": cat["items"][0]["id"]})
        assert r.status_code == 200, r.text
    db = redis_backend.client()
    assert db.ttl(hist_key("idle")) > 0
    db.close()
