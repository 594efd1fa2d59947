"""The item API (PUT / DELETE /items/{id}, POST /items/batch) through HTTP.

Two replicas of ``python -m service serve`` share one bundle directory and one real
redis-server, the second with ``--workers 2``: a write on one is served by every worker
of the other within 2 s (the index watcher, INDEX_POLL_S), deletes likewise, and 20
concurrent writes to both replicas keep every item (the index's writer lock). In process:
422 / 409 / 401 / 403, the answer shapes, and that a swap keeps in-flight engines whole.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import test_service_support as support
from live_service import live_service
from redis_server import RedisServer
from test_service_support import build_index, catalog, copy_root, serve, settings

from index import store
from training import bundle

served_root = support.served_root  # fixture
anyio_backend = support.anyio_backend  # fixture

ADMIN, USER = "items-admin-key", "items-user-key"
ADMIN_H, USER_H = {"X-API-Key": ADMIN}, {"X-API-Key": USER}
PROPAGATION_S = 2.0  # the bound: every worker of every replica within 2 s
ROOT = Path(__file__).resolve().parents[1]


def item_body(genres=("Drama",), year=1995, title="", meta_genres=None) -> dict:
    body = {"title": title, "features": {"genres": list(genres), "year": year}}
    if meta_genres is not None:
        body["genres"] = list(meta_genres)
    return body


def fresh_get(url: str, path: str, **kwargs) -> httpx.Response:
    """A request on a new connection (the kernel picks the worker per connection)."""
    with httpx.Client(base_url=url, headers=USER_H, timeout=10) as client:
        return client.get(path, **kwargs)


def fresh_post(url: str, path: str, body: dict) -> httpx.Response:
    with httpx.Client(base_url=url, headers=USER_H, timeout=10) as client:
        return client.post(path, json=body)


SWAP_LINE = re.compile(r"worker (\d+) serving index v(\d+)")


def workers_serving(log: str, version: int) -> set[str]:
    """Pids of the workers that logged serving index ``version`` or a later one."""
    return {pid for pid, v in SWAP_LINE.findall(log) if int(v) >= version}


def wait_until(condition, timeout: float, step: float = 0.05) -> float:
    """Seconds until ``condition()`` holds; fails after ``timeout``."""
    start = time.monotonic()
    while True:
        if condition():
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not within {timeout} s")
        time.sleep(step)


# ----------------------------------------------------------------------------- replicas


@pytest.fixture(scope="module")
def replicas(served_root, tmp_path_factory):
    """(one, two, root): replica one with 1 worker, replica two with 2 workers, both on
    a private copy of the bundle and on one redis-server."""
    root = copy_root(served_root, tmp_path_factory.mktemp("items") / "artifacts")
    with RedisServer() as redis:
        env = {
            "ARTIFACTS_DIR": str(root / bundle.CURRENT),
            "REDIS_URL": redis.url,
            "API_KEY": USER,
            "ADMIN_API_KEY": ADMIN,
            "INDEX_POLL_S": "0.5",
        }
        with live_service(env) as one, live_service(env, workers=2) as two:
            # both workers of `two` up and serving (each logs its first model load)
            wait_until(lambda: two.log().count("serving model") >= 2, 60, 0.2)
            yield one, two, root


def put(url: str, item_id: str, body: dict, headers=ADMIN_H) -> httpx.Response:
    with httpx.Client(base_url=url, timeout=60) as client:
        return client.put(f"/items/{item_id}", json=body, headers=headers)


def propagated(replica, version: int, check) -> bool:
    """Both workers logged ``version`` and a fresh-connection request sees ``check``."""
    return len(workers_serving(replica.log(), version)) >= 2 and check()


def test_a_put_on_one_replica_is_served_by_both_workers_of_the_other_within_2s(replicas):
    one, two, _ = replicas
    assert fresh_get(two.url, "/items/live-a").status_code == 404
    body = item_body(genres=["Drama"], year=1995, title="Live A", meta_genres=["Zydeco"])
    r = put(one.url, "live-a", body)
    assert r.status_code == 201, r.text
    answer = r.json()
    assert answer["added"] == ["live-a"] and answer["replaced"] == answer["removed"] == []
    version = answer["index_version"]
    # the writer's worker answers with it at once (it swapped before answering)
    assert fresh_get(one.url, "/items/live-a").json()["title"] == "Live A"

    recommend = {"user_id": "1", "k": 5, "filter": {"genres_any": ["Zydeco"]}}

    def on_two() -> bool:
        if fresh_get(two.url, "/items/live-a").status_code != 200:
            return False
        similar = fresh_get(two.url, "/similar-items/live-a", params={"k": 5})
        recs = fresh_post(two.url, "/recommend", recommend)
        return similar.status_code == 200 and support.ids(recs.json()) == ["live-a"]

    took = wait_until(lambda: propagated(two, version, on_two), PROPAGATION_S)
    # the same answers on every worker of two as on one (fresh connections spread them)
    expected = fresh_get(one.url, "/similar-items/live-a", params={"k": 5}).json()
    for _ in range(8):
        assert fresh_get(two.url, "/similar-items/live-a", params={"k": 5}).json() == expected
        assert support.ids(fresh_post(two.url, "/recommend", recommend).json()) == ["live-a"]
    print(f"PUT on one -> both workers of two in {took:.2f} s")

    # a twin (same features) is returned by /similar-items of the first on the other replica
    r = put(two.url, "live-b", item_body(genres=["Drama"], year=1995, title="Live B"))
    assert r.status_code == 201, r.text

    def twin_on_one() -> bool:
        similar = fresh_get(one.url, "/similar-items/live-a", params={"k": 100})
        return similar.status_code == 200 and "live-b" in support.ids(similar.json())

    wait_until(twin_on_one, PROPAGATION_S)


def test_a_delete_disappears_from_every_worker_of_every_replica_within_2s(replicas):
    one, two, _ = replicas
    r = put(two.url, "gone-soon", item_body(meta_genres=["Polka"]))
    assert r.status_code == 201, r.text
    recommend = {"features": {}, "k": 5, "filter": {"genres_any": ["Polka"]}}
    wait_until(lambda: support.ids(fresh_post(one.url, "/recommend", recommend).json()), 2)

    with httpx.Client(base_url=two.url, timeout=60) as client:
        r = client.delete("/items/gone-soon", headers=ADMIN_H)
    assert r.status_code == 200, r.text
    assert r.json()["removed"] == ["gone-soon"]
    version = r.json()["index_version"]

    def gone(replica) -> bool:
        return (
            fresh_get(replica.url, "/items/gone-soon").status_code == 404
            and fresh_get(replica.url, "/similar-items/gone-soon").status_code == 404
            and support.ids(fresh_post(replica.url, "/recommend", recommend).json()) == []
        )

    wait_until(lambda: gone(one), PROPAGATION_S)
    wait_until(lambda: propagated(two, version, lambda: gone(two)), PROPAGATION_S)
    for _ in range(6):
        assert gone(two)
    with httpx.Client(base_url=one.url, timeout=60) as client:
        r = client.delete("/items/gone-soon", headers=ADMIN_H)
    assert r.status_code == 404 and "gone-soon" in r.json()["detail"]


def test_concurrent_puts_to_both_replicas_keep_every_item(replicas):
    one, two, root = replicas
    ids = [f"race-{n}" for n in range(20)]

    def write(n: int) -> httpx.Response:
        url = (one.url, two.url)[n % 2]
        return put(url, ids[n], item_body(genres=["Comedy"], year=1980 + n, title=ids[n]))

    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(write, range(20)))
    assert [r.status_code for r in answers] == [201] * 20, [r.text for r in answers]
    versions = [r.json()["index_version"] for r in answers]
    assert len(set(versions)) == 20  # one version each: the writers were serialised
    newest = max(versions)

    def everywhere() -> bool:
        return all(
            fresh_get(url, f"/items/{item}").status_code == 200
            for url in (one.url, two.url)
            for item in ids
        )

    wait_until(lambda: propagated(two, newest, everywhere), PROPAGATION_S + 3)
    snapshot = store.load_version(root / bundle.CURRENT, mmap=False)
    assert set(ids) <= {it["id"] for it in snapshot.items if it["active"]}


def test_unknown_features_wrong_kinds_and_keys(replicas):
    one, two, _ = replicas
    r = put(one.url, "bad", {"features": {"colour": "red", "year": "old"}})
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert [e["loc"] for e in detail] == [
        ["body", "features", "colour"],
        ["body", "features", "year"],
    ]
    assert "colour" in detail[0]["msg"] and "genres" in detail[0]["msg"]  # names the known ones
    r = put(one.url, "bad", {"title": "no features"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "features"]

    assert put(two.url, "k", item_body(), headers={}).status_code == 401
    assert put(two.url, "k", item_body(), headers={"X-API-Key": "wrong"}).status_code == 401
    assert put(two.url, "k", item_body(), headers=USER_H).status_code == 403
    with httpx.Client(base_url=two.url, timeout=30) as client:
        assert client.delete("/items/1", headers=USER_H).status_code == 403
        assert client.post("/items/batch", json={"delete": ["1"]}).status_code == 401
        r = client.put("/items/k", content=b"{}", headers={**ADMIN_H, "content-type": "text/plain"})
        assert r.status_code == 415
    assert fresh_get(one.url, "/items/k").status_code == 404  # nothing was written


def test_batch_upserts_and_deletes_in_one_version(replicas):
    one, two, _ = replicas
    with httpx.Client(base_url=one.url, timeout=60) as client:
        r = client.post(
            "/items/batch",
            json={
                "upsert": [{"item_id": f"batch-{i}", **item_body(year=2000 + i)} for i in range(3)]
            },
            headers=ADMIN_H,
        )
        assert r.status_code == 200, r.text
        assert r.json()["added"] == ["batch-0", "batch-1", "batch-2"]
        r = client.post(
            "/items/batch",
            json={
                "upsert": [{"item_id": "batch-0", **item_body(year=1950, title="Redone")}],
                "delete": ["batch-1", "batch-2"],
            },
            headers=ADMIN_H,
        )
        assert r.status_code == 200, r.text
        answer = r.json()
        assert (answer["added"], answer["replaced"], answer["removed"]) == (
            [],
            ["batch-0"],
            ["batch-1", "batch-2"],
        )
        r = client.post(
            "/items/batch",
            json={"upsert": [{"item_id": "x", **item_body()}], "delete": ["batch-1", "x"]},
            headers=ADMIN_H,
        )
        assert r.status_code == 422, r.text
        assert [e["loc"] for e in r.json()["detail"]] == [
            ["body", "delete", 0],
            ["body", "delete", 1],
        ]

    def done() -> bool:
        item = fresh_get(two.url, "/items/batch-0").json()
        return (
            item.get("title") == "Redone"
            and fresh_get(two.url, "/items/batch-1").status_code == 404
        )

    wait_until(done, PROPAGATION_S)


# ----------------------------------------------------------------------------- in process


@pytest.fixture
def private_root(served_root, tmp_path) -> Path:
    return copy_root(served_root, tmp_path / "artifacts")


@pytest.fixture(scope="module")
def id_only_root(served_root, tmp_path_factory) -> Path:
    """A real bundle whose towers were built without item features (ids only), exported
    and indexed the documented way."""
    import torch

    from training.export import export_bundle
    from training.model import TowerConfig, TwoTower

    root = tmp_path_factory.mktemp("id-only") / "artifacts"
    current = bundle.resolve(served_root)
    manifest = bundle.read_manifest(current)
    torch.manual_seed(3)
    model = TwoTower(TowerConfig.from_dict({**manifest["model"], "item_features": []}))
    items = [{**it, "features": {}} for it in bundle.load_json(current, bundle.ITEMS)]
    out = export_bundle(
        root,
        model,
        items=items,
        users=bundle.load_json(current, bundle.USERS),
        popularity=bundle.load_json(current, bundle.POPULARITY),
        dataset=manifest["dataset"],
        train_config={"test": "id-only"},
    )
    build_index(out)
    return root


@pytest.mark.anyio
async def test_an_id_only_bundle_refuses_upserts_with_409_but_deletes(id_only_root, tmp_path):
    root = copy_root(id_only_root, tmp_path / "artifacts")
    item = catalog(root)["items"][0]["id"]
    async with serve(settings(root)) as (client, _):
        r = await client.put("/items/new", json=item_body())
        assert r.status_code == 409, r.text
        assert "without item features" in r.json()["detail"]
        r = await client.post("/items/batch", json={"upsert": [{"item_id": "n", **item_body()}]})
        assert r.status_code == 409, r.text
        r = await client.delete(f"/items/{item}")
        assert r.status_code == 200 and r.json()["removed"] == [item]
        assert (await client.get(f"/items/{item}")).status_code == 404


@pytest.mark.anyio
async def test_a_swap_keeps_in_flight_engines_and_the_model(private_root):
    cat = catalog(private_root)
    known = cat["items"][0]
    async with serve(settings(private_root, index_poll_s=0)) as (client, app):
        runtime = app.state.runtime
        before = runtime.engine
        # a title edit with the same features keeps the trained vector
        body = {"title": "Edited", "features": known["features"]}
        r = await client.put(f"/items/{known['id']}", json=body)
        assert r.status_code == 200 and r.json()["replaced"] == [known["id"]], r.text
        after = runtime.engine
        assert after is not before and after.tower is before.tower  # the model was kept
        assert after.version == before.version
        old_vec = before.index.vectors([before.internal(known["id"])])
        new_vec = after.index.vectors([after.internal(known["id"])])
        assert (old_vec == new_vec).all()
        assert before.item(before.internal(known["id"]))["title"] == known["title"]
        # more versions than are kept on disk: the old engine still answers whole
        for n in range(5):
            r = await client.put(f"/items/extra-{n}", json=item_body(year=1990 + n))
            assert r.status_code == 201
        assert before.internal("extra-0") is None and runtime.engine.internal("extra-4") is not None
        ((ids, _),) = before.search([before.similar_job(before.internal(known["id"]), 5)])
        assert len(ids) == 5 and all(before.is_active(i) for i in ids)
        metrics = (await client.get("/metrics")).text
        assert 'towerrec_index_swaps_total{result="success"} 6.0' in metrics
        assert 'towerrec_reloads_total{result="success"} 1.0' in metrics
        assert 'towerrec_item_writes_total{op="added"} 5.0' in metrics


@pytest.mark.anyio
async def test_the_watcher_swaps_an_index_written_by_the_cli_without_a_full_reload(private_root):
    async with serve(settings(private_root, index_poll_s=0.05)) as (client, app):
        runtime = app.state.runtime
        before = runtime.engine
        features = json.dumps({"genres": ["Drama"], "year": 1990})
        subprocess.run(
            [
                sys.executable,
                "-m",
                "index",
                "add",
                "--bundle",
                str(private_root / "current"),
                "--item-id",
                "cli-1",
                "--title",
                "From the CLI",
                "--features",
                features,
            ],
            check=True,
            cwd=ROOT,
            capture_output=True,
        )
        deadline = time.monotonic() + 5
        while runtime.engine.internal("cli-1") is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert runtime.engine.internal("cli-1") is not None
        assert runtime.engine.tower is before.tower
        r = await client.get("/items/cli-1")
        assert r.json()["title"] == "From the CLI"


def derived(engine) -> dict:
    """What an engine derives from its index version, comparable across engines."""
    return {
        "item_ids": list(engine.item_ids),
        "meta": [engine.item(i) for i in range(engine.n_items)],
        "fragments": engine.fragments.items(range(engine.n_items), None),
        "genres": {g: mask.tolist() for g, mask in engine.genres.items() if mask.any()},
        "active": engine._active_mask.tolist(),
        "popular": engine.popular_ids,
        "users": {u: engine.user(u) for u in list(engine.users)[:50]},
    }


@pytest.mark.anyio
async def test_an_index_swap_derives_what_a_full_load_derives(private_root):
    """The swap reuses the previous engine's rows (adds, replaces, removes only append
    or deactivate rows): after each kind of write, and after a full rebuild in between,
    it derives exactly what a fresh load of the same version does."""
    from service.engine import Engine

    cat = catalog(private_root)
    users = [u for u in cat["users"] if u["history"]]
    seen = users[0]["history"][-1]  # an item in a user's history: replaced below
    gone = users[1]["history"][-1]
    async with serve(settings(private_root, index_poll_s=0)) as (client, app):
        runtime = app.state.runtime
        steps = [
            ("PUT", "/items/swap-new", item_body(meta_genres=["Brand-new-genre"])),
            ("PUT", f"/items/{seen}", item_body(genres=["Comedy"], year=1960)),
            ("DELETE", f"/items/{gone}", None),
            ("POST", "/items/batch", {"upsert": [{"item_id": "swap-2", **item_body()}],
                                      "delete": ["swap-new"]}),
        ]  # fmt: skip
        for method, path, body in steps:
            previous = runtime.engine
            r = await client.request(method, path, json=body)
            assert r.status_code in (200, 201), r.text
            swapped = runtime.engine
            assert swapped.fragments._heads[0] is previous.fragments._heads[0]  # incremental
            assert derived(swapped) == derived(Engine(swapped.path)), (method, path)
        user = runtime.engine.user(users[0]["id"])
        assert runtime.engine.internal(seen) in user[2]  # history follows the replacement

        build_index(private_root / "current")  # a full rebuild: rows start afresh
        previous = runtime.engine
        assert await runtime.refresh_index()
        assert runtime.engine.fragments._heads[0] is not previous.fragments._heads[0]
        assert derived(runtime.engine) == derived(Engine(runtime.engine.path))
        assert runtime.engine.internal("swap-2") is None
