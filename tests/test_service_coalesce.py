"""Concurrent requests share Redis round trips (service/store.py ``Coalescer``), on one
redis-server and on the 3-master Redis Cluster: the reads of every request that reaches
the store in one event-loop iteration go out as one pipeline per node, each request gets
its own replies, and a poison key of one user fails that user's part only.

Round trips are counted by the service's own metric (``towerrec_redis_pipelines_total``,
read over HTTP from /metrics) and cross-checked with the server's INFO commandstats.
"""

from __future__ import annotations

import asyncio
import re

import pytest
import test_service_support as support
from test_service_support import catalog, serve, settings

anyio_backend, served_root = support.anyio_backend, support.served_root  # fixtures

pytestmark = pytest.mark.anyio

N = 24


async def pipelines(client) -> float:
    r = await client.get("/metrics")
    assert r.status_code == 200, r.text
    return float(re.search(r"^towerrec_redis_pipelines_total (\S+)$", r.text, re.M).group(1))


def lrange_calls(backend) -> int:
    """LRANGE commands every master has run (INFO commandstats)."""
    if backend.kind == "cluster":
        db = backend.target.client()
        stats = db.info("commandstats", target_nodes=db.PRIMARIES)
        per_node = stats.values() if all(isinstance(v, dict) for v in stats.values()) else [stats]
        db.close()
    else:
        db = backend.client()
        per_node = [db.info("commandstats")]
        db.close()
    return sum(node.get("cmdstat_lrange", {}).get("calls", 0) for node in per_node)


async def hits(client, users: list[str]) -> list[dict]:
    answers = await asyncio.gather(
        *(client.post("/recommend", json={"user_id": u, "k": 5}) for u in users)
    )
    assert all(r.status_code == 200 for r in answers), [r.text for r in answers]
    return [r.json() for r in answers]


async def test_concurrent_hits_share_one_pipeline_per_node(served_root, redis_backend):
    users = [u["id"] for u in catalog(served_root)["users"]][:N]
    async with serve(settings(served_root, **redis_backend.settings)) as (client, _):
        for user in users:  # each user's vector computed and cached, one at a time
            r = await client.post("/recommend", json={"user_id": user, "k": 5})
            assert r.json()["cache"] == "miss", r.text
        sent, lranges = await pipelines(client), lrange_calls(redis_backend)

        answers = await hits(client, users)

        assert [a["cache"] for a in answers] == ["hit"] * N
        assert lrange_calls(redis_backend) - lranges == N  # every request read its history
        nodes = 3 if redis_backend.kind == "cluster" else 1
        round_trips = await pipelines(client) - sent
        assert 1 <= round_trips <= nodes, f"{N} concurrent hits took {round_trips} pipelines"

        # one at a time, each request is its own round trip (nothing waits for company)
        sent = await pipelines(client)
        for user in users[:5]:
            r = await client.post("/recommend", json={"user_id": user, "k": 5})
            assert r.json()["cache"] == "hit"
        assert await pipelines(client) - sent == 5


async def test_a_poison_key_in_a_shared_pipeline_fails_only_its_user(served_root, redis_backend):
    users = [u["id"] for u in catalog(served_root)["users"]][:N]
    bad = users[N // 2]
    async with serve(settings(served_root, **redis_backend.settings)) as (client, _):
        await hits(client, users)  # misses: every vector cached
        db = redis_backend.client()
        db.set(f"towerrec:{{u:{bad}}}:hist", "not a list")  # WRONGTYPE for LRANGE
        db.close()
        sent = await pipelines(client)

        answers = dict(zip(users, await hits(client, users), strict=True))

        assert await pipelines(client) - sent <= (3 if redis_backend.kind == "cluster" else 1)
        poisoned = answers.pop(bad)
        assert poisoned["cache"] == "off" and poisoned["strategy"] == "id"
        assert any("event history unavailable" in w for w in poisoned["warnings"])
        assert {a["cache"] for a in answers.values()} == {"hit"}
        metrics = (await client.get("/metrics")).text
        assert re.search(r'^towerrec_redis_key_errors_total\{op="read"\} 1\.0$', metrics, re.M)
        assert re.search(r"^towerrec_redis_up 1\.0$", metrics, re.M)  # no breaker opened
        again = await hits(client, users[:3])  # Redis still in use for everyone else
        assert {a["cache"] for a in again} == {"hit"}


async def test_openapi_declares_the_limits_of_the_settings(served_root):
    s = settings(served_root, max_k=37, max_recent_items=11, max_batch=5, max_events=9)
    async with serve(s) as (client, _):
        spec = (await client.get("/openapi.json")).json()
        request = spec["components"]["schemas"]["RecommendRequest"]["properties"]
        assert (request["k"]["minimum"], request["k"]["maximum"]) == (1, 37)
        for name in ("recent_items", "exclude_items"):
            (array,) = [s for s in request[name]["anyOf"] if s.get("type") == "array"]
            assert array["maxItems"] == 11
        batch = spec["components"]["schemas"]["BatchRequest"]["properties"]["requests"]
        assert batch["maxItems"] == 5
        events = spec["paths"]["/events"]["post"]["requestBody"]["content"]["application/json"]
        (bare,) = [s for s in events["schema"]["anyOf"] if s.get("type") == "array"]
        assert bare["maxItems"] == 9
        assert spec["components"]["schemas"]["EventBatch"]["properties"]["events"]["maxItems"] == 9
        # the limit declared is the limit applied
        r = await client.post("/recommend", json={"k": 38})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "k"]
        assert (await client.post("/recommend", json={"k": 37})).status_code == 200
