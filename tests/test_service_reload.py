"""Model reloads: POST /admin/reload, the `current` watcher, broken bundles, and zero failed
requests while the engine is swapped under load."""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path

import pytest
import redis_server as redis_helper
import test_service_support as support
from test_service_support import catalog, copy_root, serve, settings, write_second_version

from training import bundle

anyio_backend, served_root = support.anyio_backend, support.served_root  # fixtures
two_versions, redis_server = support.two_versions, redis_helper.redis_server

pytestmark = pytest.mark.anyio


@pytest.fixture
def versions(two_versions, tmp_path) -> tuple[Path, str, str]:
    """A private copy of the two-version root; `current` -> first."""
    root, first, second = two_versions
    return copy_root(root, tmp_path / "artifacts"), first, second


def known_user(root: Path) -> str:
    return next(u["id"] for u in catalog(root)["users"] if u["history"])


def break_copy(root: Path, version: str, name: str) -> str:
    """A copy of ``version`` with ``name`` corrupted (or removed, for a directory)."""
    broken = f"{version}-broken-{name.replace('/', '_')}"
    shutil.copytree(root / version, root / broken)
    target = root / broken / name
    if target.is_dir():
        shutil.rmtree(target)
    else:
        data = bytearray(target.read_bytes())
        data[len(data) // 2] ^= 0xFF
        target.write_bytes(bytes(data))
    return broken


async def test_admin_reload_switches_the_model_version(versions, redis_server):
    root, first, second = versions
    user = known_user(root)
    db = redis_server.client()
    async with serve(settings(root, redis_url=redis_server.url)) as (client, _):
        r = await client.post("/recommend", json={"user_id": user})
        assert r.json()["model_version"] == first and r.json()["cache"] == "miss"
        r = await client.post("/admin/reload")
        assert r.status_code == 200 and r.json()["reloaded"] is False

        bundle.point_current(root, second)
        r = await client.post("/admin/reload")
        assert r.status_code == 200, r.text
        assert r.json() | {"message": ""} == {
            "reloaded": True,
            "model_version": second,
            "previous_version": first,
            "message": "",
        }
        r = await client.post("/recommend", json={"user_id": user})
        # a new version never reads the old version's vector
        assert r.json()["model_version"] == second and r.json()["cache"] == "miss"
        keys = [f"towerrec:{{u:{user}}}:vec:{v}" for v in (first, second)]
        assert db.exists(*keys) == 2
        metrics = (await client.get("/metrics")).text
        assert f'towerrec_model_info{{version="{second}"}} 1.0' in metrics
        assert f'version="{first}"' not in metrics
        r = await client.post("/admin/reload", params={"force": True})
        assert r.json()["reloaded"] is True and r.json()["model_version"] == second


async def test_a_rollback_never_serves_a_vector_older_than_the_events(versions, redis_server):
    """v1 caches a vector; v2 takes over and an event arrives; rolling back to v1 within
    the TTL must not serve v1's vector, which ignores that event."""
    root, first, second = versions
    user = known_user(root)
    item = next(it["id"] for it in catalog(root)["items"][40:])
    async with serve(settings(root, redis_url=redis_server.url)) as (client, _):

        async def recommend() -> dict:
            return (await client.post("/recommend", json={"user_id": user, "k": 5})).json()

        assert (await recommend())["cache"] == "miss"
        assert (await recommend())["cache"] == "hit"
        bundle.point_current(root, second)
        assert (await client.post("/admin/reload")).json()["model_version"] == second
        r = await client.post("/events", json={"user_id": user, "item_id": item})
        assert r.json()["recorded"] == 1
        bundle.point_current(root, first)
        assert (await client.post("/admin/reload")).json()["model_version"] == first
        back = await recommend()
        assert (back["model_version"], back["cache"]) == (first, "miss")
        assert item not in [it["item_id"] for it in back["items"]]
        assert (await recommend())["cache"] == "hit"  # cached again, for the new history


@pytest.mark.parametrize("damage", ["model.safetensors", "index"])
async def test_a_broken_bundle_is_refused_and_the_old_one_keeps_serving(versions, damage):
    root, first, _ = versions
    broken = break_copy(root, first, damage)
    async with serve(settings(root)) as (client, _):
        bundle.point_current(root, broken)
        r = await client.post("/admin/reload")
        assert r.status_code == 409, r.text
        detail = r.json()["detail"]
        assert damage.split(".")[0] in detail and f"still serving {first}" in detail
        r = await client.post("/recommend", json={"k": 3, "recent_items": ["1"]})
        assert r.status_code == 200 and r.json()["model_version"] == first
        r = await client.get("/readyz")
        assert r.status_code == 200 and r.json()["last_reload_failed"] is True
        assert str(root) not in r.text  # no paths in the public /readyz
        metrics = (await client.get("/metrics")).text
        assert 'towerrec_reloads_total{result="failure"} 1.0' in metrics


async def test_watcher_follows_current_and_waits_for_the_index(versions):
    root, first, second = versions

    async def version_served(client) -> str:
        return (await client.post("/recommend", json={"k": 1})).json()["model_version"]

    async def wait_for(client, wanted: str, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while (got := await version_served(client)) != wanted:
            assert time.monotonic() < deadline, f"still serving {got}, expected {wanted}"
            await asyncio.sleep(0.05)

    async with serve(settings(root, reload_poll_s=0.05)) as (client, app):
        assert await version_served(client) == first
        bundle.point_current(root, second)
        await wait_for(client, second)

        broken = break_copy(root, first, "model.safetensors")
        bundle.point_current(root, broken)
        await asyncio.sleep(0.5)
        assert await version_served(client) == second
        assert app.state.runtime.load_error is not None

        # a new training run: `current` moves before its index exists; the watcher fails
        # once, keeps serving, then loads it when the index build rewrites the manifest
        bundle.point_current(root, second)
        third = await asyncio.to_thread(write_second_version, root, 7)
        await wait_for(client, third)
        assert app.state.runtime.load_error is None


async def test_zero_failed_requests_while_reloading_twice(versions):
    root, first, second = versions
    cat = catalog(root)
    user_ids = [u["id"] for u in cat["users"][:20]]
    items = [it["id"] for it in cat["items"]]
    bodies = []
    for n in range(200):
        kind = n % 4
        bodies.append(
            {"user_id": user_ids[n % len(user_ids)]}
            if kind == 0
            else {"recent_items": items[n % 50 : n % 50 + 3], "k": 5}
            if kind == 1
            else {"k": 5}
            if kind == 2
            else {"user_id": user_ids[n % 7], "recent_items": [items[n % 90]]}
        )

    async with serve(settings(root)) as (client, _):

        async def reload_to(version: str) -> None:
            bundle.point_current(root, version)
            r = await client.post("/admin/reload")
            assert r.status_code == 200 and r.json()["model_version"] == version, r.text

        tasks, reloads = [], []
        for n, body in enumerate(bodies):
            tasks.append(asyncio.create_task(client.post("/recommend", json=body)))
            if n == 60:
                reloads.append(asyncio.create_task(reload_to(second)))
            if n == 130:
                await reloads[0]
                reloads.append(asyncio.create_task(reload_to(first)))
            await asyncio.sleep(0.001)
        responses = await asyncio.gather(*tasks)
        await asyncio.gather(*reloads)
        after = await client.post("/recommend", json={"k": 5})

    failed = [(r.status_code, r.text) for r in responses if r.status_code != 200]
    assert failed == []
    versions_seen = [r.json()["model_version"] for r in responses]
    assert set(versions_seen) == {first, second}
    assert versions_seen[0] == first
    # Requests still queued when the second reload starts may be answered by either
    # version; once both reloads are done, the first version serves again.
    assert after.json()["model_version"] == first
    assert all(
        len(r.json()["items"]) == (5 if "k" in b else 10)
        for r, b in zip(responses, bodies, strict=True)
    )
