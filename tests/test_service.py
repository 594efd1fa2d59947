"""The HTTP API through httpx + ASGITransport (in-process cache and history, no Redis):
strategies, exclusions, filters, batch, validation errors, items, auth, body limit, docs,
metrics. Redis behaviour: test_service_redis.py; reloads: test_service_reload.py."""

from __future__ import annotations

import asyncio
import re

import pytest
import test_service_support as support
from test_service_support import catalog, ids, locs, serve, settings

from service.schemas import RecommendResponse

anyio_backend, served_root = support.anyio_backend, support.served_root  # fixtures

pytestmark = pytest.mark.anyio


@pytest.fixture
def cat(served_root):
    return catalog(served_root)


def features_of(cat, n=0, unknown_occupation=False) -> dict:
    """Real feature values of the n-th bundle user that has features."""
    user = [u for u in cat["users"] if u.get("features")][n]
    return {k: v for k, v in user["features"].items() if k in cat["user_features"]}


def history_of(cat, user_id: str) -> list[str]:
    return next(u["history"] for u in cat["users"] if u["id"] == user_id)


def assert_k_distinct_unseen(body: dict, k: int, seen: set[str]) -> None:
    got = ids(body)
    assert len(got) == k, body
    assert len(set(got)) == k
    assert not set(got) & seen, set(got) & seen


async def test_each_strategy_returns_k_distinct_unseen_items(served_root, cat):
    user = next(u for u in cat["users"] if u["history"])
    recent = [it["id"] for it in cat["items"][10:15]]
    excluded = [it["id"] for it in cat["items"][:3]]
    async with serve(settings(served_root)) as (client, _):
        cases = [
            (
                {"features": features_of(cat), "k": 10, "exclude_items": excluded},
                "features",
                set(excluded),
            ),
            ({"recent_items": recent, "k": 10}, "sequence", set(recent)),
            (
                {"features": features_of(cat), "recent_items": recent, "k": 7},
                "features+sequence",
                set(recent),
            ),
            (
                {"user_id": user["id"], "k": 10, "exclude_items": excluded},
                "id",
                set(user["history"]) | set(excluded),
            ),
            ({"k": 10, "exclude_items": excluded}, "popular", set(excluded)),
            ({"user_id": "no-such-user", "k": 5}, "popular", set()),
        ]
        for body, strategy, seen in cases:
            r = await client.post("/recommend", json=body)
            assert r.status_code == 200, r.text
            RecommendResponse.model_validate_json(r.content)  # the documented shape
            data = r.json()
            assert data["strategy"] == strategy, (body, data)
            assert data["model_version"] == cat["version"]
            assert_k_distinct_unseen(data, body["k"], seen)
            for item in data["items"]:
                assert item["title"] is not None and isinstance(item["genres"], list)
            scores = [it["score"] for it in data["items"]]
            if strategy == "popular":
                assert scores == [None] * len(scores)
                assert ids(data)[0] == next(i for i in cat["popularity"] if i not in seen)
            else:
                assert scores == sorted(scores, reverse=True)


async def test_explicit_inputs_override_the_user_but_still_exclude_its_history(served_root, cat):
    user = next(u for u in cat["users"] if u["history"])
    recent = [cat["items"][20]["id"]]
    async with serve(settings(served_root)) as (client, _):
        r = await client.post(
            "/recommend", json={"user_id": user["id"], "recent_items": recent, "k": 20}
        )
        data = r.json()
        assert data["strategy"] == "sequence"
        assert_k_distinct_unseen(data, 20, set(user["history"]) | set(recent))
        r = await client.post(
            "/recommend", json={"recent_items": recent, "k": 20, "exclude_seen": False}
        )
        assert r.json()["strategy"] == "sequence"


async def test_unknown_feature_values_and_items_are_reported_not_refused(served_root, cat):
    feats = features_of(cat)
    name = next(n for n in feats if isinstance(feats[n], str))
    feats[name] = "astronaut-from-mars"
    good = cat["items"][5]["id"]
    async with serve(settings(served_root)) as (client, _):
        r = await client.post(
            "/recommend", json={"features": feats, "k": 5, "recent_items": ["no-such-item", good]}
        )
        assert r.status_code == 200, r.text
        data = r.json()
        assert data["unknown_features"] == {name: "astronaut-from-mars"}
        assert data["unknown_items"] == ["no-such-item"]
        assert data["strategy"] == "features+sequence"
        assert good not in ids(data)
        # only unknown items and no features: nothing explicit is left -> popularity
        r = await client.post("/recommend", json={"recent_items": ["nope-1", "nope-2"]})
        assert r.json()["strategy"] == "popular"
        assert r.json()["unknown_items"] == ["nope-1", "nope-2"]


async def test_genre_filter_keeps_k_when_possible(served_root, cat):
    genre = cat["items"][0]["genres"][0]
    matching = {it["id"] for it in cat["items"] if genre in it["genres"]}
    async with serve(settings(served_root)) as (client, _):
        for body in ({"recent_items": [cat["items"][1]["id"]]}, {"features": features_of(cat)}, {}):
            r = await client.post(
                "/recommend", json=body | {"k": 10, "filter": {"genres_any": [genre]}}
            )
            assert r.status_code == 200, r.text
            got = ids(r.json())
            assert len(got) == 10 and set(got) <= matching, (body, got)
            assert all(genre in it["genres"] for it in r.json()["items"])


async def test_k_larger_than_what_is_left_is_clamped_with_a_warning(served_root, cat):
    n = len(cat["items"])
    excluded = [it["id"] for it in cat["items"][:5]]
    async with serve(settings(served_root, max_k=n + 50)) as (client, _):
        r = await client.post(
            "/recommend",
            json={"features": features_of(cat), "k": n + 10, "exclude_items": excluded},
        )
        assert r.status_code == 200, r.text
        got = ids(r.json())
        assert len(got) == n - 5 and len(set(got)) == n - 5
        assert any("only" in w for w in r.json()["warnings"])


async def test_batch_answers_in_order_and_equals_single_answers(served_root, cat):
    user = next(u for u in cat["users"] if u["history"])
    bodies = [
        {"user_id": user["id"], "k": 5},
        {"features": features_of(cat, 1), "k": 8},
        {"k": 3},
        {"recent_items": [it["id"] for it in cat["items"][30:34]], "k": 6},
        {
            "features": features_of(cat, 2),
            "recent_items": [cat["items"][40]["id"]],
            "filter": {"genres_any": [cat["items"][0]["genres"][0]]},
            "k": 4,
        },
    ]
    async with serve(settings(served_root, cache_enabled=False)) as (client, app):
        r = await client.post("/recommend/batch", json={"requests": bodies})
        assert r.status_code == 200, r.text
        batch = r.json()["responses"]
        assert len(batch) == len(bodies)
        sizes = app.state.metrics.batch_size.collect()[0].samples
        assert any(s.name.endswith("_sum") and s.value == 4 for s in sizes)  # one batch of 4
        for body, got in zip(bodies, batch, strict=True):
            single = (await client.post("/recommend", json=body)).json()
            assert ids(got) == ids(single), body
            assert got["strategy"] == single["strategy"]
            for a, b in zip(got["items"], single["items"], strict=True):
                if b["score"] is None:
                    assert a["score"] is None
                else:
                    assert a["score"] == pytest.approx(b["score"], rel=1e-4, abs=1e-4)


async def test_similar_items_and_item_metadata(served_root, cat):
    item = cat["items"][7]
    async with serve(settings(served_root)) as (client, _):
        r = await client.get(f"/similar-items/{item['id']}", params={"k": 6})
        assert r.status_code == 200, r.text
        got = ids(r.json())
        assert len(got) == 6 and len(set(got)) == 6 and item["id"] not in got
        r = await client.get("/similar-items/no-such-item")
        assert r.status_code == 404 and "no-such-item" in r.json()["detail"]
        r = await client.get(f"/items/{item['id']}")
        assert r.status_code == 200
        assert r.json() | {} == {
            "item_id": item["id"],
            "title": item["title"],
            "genres": item["genres"],
            "active": True,
        }
        r = await client.get("/items/no-such-item")
        assert r.status_code == 404 and "no-such-item" in r.json()["detail"]


async def test_events_change_the_next_recommendation_without_redis(served_root, cat):
    user = next(u for u in cat["users"] if u["history"])
    async with serve(settings(served_root)) as (client, _):
        first = (await client.post("/recommend", json={"user_id": user["id"]})).json()
        again = (await client.post("/recommend", json={"user_id": user["id"]})).json()
        assert (first["cache"], again["cache"]) == ("miss", "hit")
        top = ids(first)[0]
        r = await client.post("/events", json={"user_id": user["id"], "item_id": top})
        assert r.status_code == 200
        assert r.json() == {
            "recorded": 1,
            "duplicates": 0,
            "failed": 0,
            "durable": False,
            "users": [
                {
                    "user_id": user["id"],
                    "status": "recorded",
                    "recorded": [0],
                    "duplicates": [],
                    "failed": [],
                    "error": None,
                }
            ],
        }
        after = (await client.post("/recommend", json={"user_id": user["id"]})).json()
        assert after["cache"] == "miss" and top not in ids(after)
        # a user the bundle does not know gets a history from events alone
        r = await client.post(
            "/events",
            json={
                "events": [
                    {"user_id": "brand-new", "item_id": cat["items"][3]["id"], "timestamp": 2},
                    {"user_id": "brand-new", "item_id": cat["items"][4]["id"], "timestamp": 1},
                ]
            },
        )
        assert r.status_code == 200
        new = (await client.post("/recommend", json={"user_id": "brand-new", "k": 5})).json()
        assert new["strategy"] == "id"
        assert not {cat["items"][3]["id"], cat["items"][4]["id"]} & set(ids(new))


BAD_BODIES = [
    ({"k": 0}, ["body", "k"]),
    ({"k": 10_000}, ["body", "k"]),
    ({"k": "5"}, ["body", "k"]),
    ({"k": 2.5}, ["body", "k"]),
    ({"user_id": 5}, ["body", "user_id"]),
    ({"user_id": ""}, ["body", "user_id"]),
    ({"recent_items": [str(i) for i in range(30)]}, ["body", "recent_items"]),
    ({"recent_items": "1"}, ["body", "recent_items"]),
    ({"exclude_items": [str(i) for i in range(30)]}, ["body", "exclude_items"]),
    ({"exclude_seen": "yes"}, ["body", "exclude_seen"]),
    ({"surprise": 1}, ["body", "surprise"]),
    ({"features": {"favourite_colour": "blue"}}, ["body", "features", "favourite_colour"]),
    ({"features": "F"}, ["body", "features"]),
    ({"filter": {"genre": ["Drama"]}}, ["body", "filter", "genre"]),
    ({"filter": {"genres_any": "Drama"}}, ["body", "filter", "genres_any"]),
]


@pytest.mark.parametrize(("body", "loc"), BAD_BODIES, ids=[str(b) for b, _ in BAD_BODIES])
async def test_validation_errors_name_the_field(served_root, body, loc):
    async with serve(settings(served_root, max_recent_items=20)) as (client, _):
        r = await client.post("/recommend", json=body)
        assert r.status_code == 422, r.text
        assert any(found[: len(loc)] == loc for found in locs(r)), locs(r)
        assert all(err["msg"] for err in r.json()["detail"])
        # the same mistake inside a batch names its position
        r = await client.post("/recommend/batch", json={"requests": [{}, body]})
        assert r.status_code == 422, r.text
        assert any(
            found[: len(loc) + 2] == ["body", "requests", 1, *loc[1:]] for found in locs(r)
        ), locs(r)


async def test_feature_value_of_the_wrong_kind_names_the_feature(served_root, cat):
    specs = {f["name"]: f["kind"] for f in cat["manifest"]["model"]["user_features"]}
    wrong = {"categorical": ["a", "b"], "bucket": "old", "multi": 3}
    async with serve(settings(served_root)) as (client, _):
        for name, kind in specs.items():
            r = await client.post("/recommend", json={"features": {name: wrong[kind]}})
            assert r.status_code == 422, r.text
            assert ["body", "features", name] in locs(r)


async def test_malformed_requests_are_4xx_never_5xx(served_root, cat):
    async with serve(settings(served_root, max_batch=3)) as (client, _):
        r = await client.post("/recommend")  # no body
        assert r.status_code == 422 and ["body"] in locs(r)
        r = await client.post(
            "/recommend", content=b"{not json", headers={"content-type": "application/json"}
        )
        assert r.status_code == 400 and "not valid JSON" in r.json()["detail"]
        r = await client.post("/recommend", json=[1, 2])
        assert r.status_code == 422
        r = await client.post("/recommend/batch", json={"requests": []})
        assert r.status_code == 422 and ["body", "requests"] in locs(r)
        r = await client.post("/recommend/batch", json={"requests": [{}] * 4})
        assert r.status_code == 422 and ["body", "requests"] in locs(r)
        r = await client.get(f"/similar-items/{cat['items'][0]['id']}", params={"k": 0})
        assert r.status_code == 422 and ["query", "k"] in locs(r)
        r = await client.get(f"/similar-items/{cat['items'][0]['id']}", params={"k": 10**6})
        assert r.status_code == 422 and ["query", "k"] in locs(r)
        r = await client.get(f"/similar-items/{cat['items'][0]['id']}", params={"k": "many"})
        assert r.status_code == 422 and ["query", "k"] in locs(r)
        # /events is strict: unknown items name their position, nothing is written
        good = cat["items"][0]["id"]
        r = await client.post(
            "/events",
            json={
                "events": [
                    {"user_id": "u-strict", "item_id": good},
                    {"user_id": "u-strict", "item_id": "ghost"},
                ]
            },
        )
        assert r.status_code == 422
        assert locs(r) == [["body", "events", 1, "item_id"]] and "ghost" in r.text
        r = await client.post("/recommend", json={"user_id": "u-strict"})
        assert r.json()["strategy"] == "popular"  # nothing was recorded
        r = await client.post("/events", json={"user_id": "u", "item_id": "ghost"})
        assert r.status_code == 422 and locs(r) == [["body", "events", 0, "item_id"]]
        r = await client.post("/events", json=[{"user_id": "u", "item_id": good}, {"user_id": 1}])
        assert r.status_code == 422 and ["body", "events", 1, "user_id"] in locs(r)
        r = await client.post("/events", json={"user_id": "u"})
        assert r.status_code == 422 and any("item_id" in loc for loc in locs(r))
        r = await client.post("/events", json={"events": []})
        assert r.status_code == 422
        r = await client.post("/events", json={"user_id": "u", "item_id": good, "x": 1})
        assert r.status_code == 422 and any("x" in loc for loc in locs(r))


async def test_body_size_limit_is_413_with_a_message(served_root):
    async with serve(settings(served_root, max_body_bytes=2048)) as (client, _):
        r = await client.post("/recommend", json={"recent_items": ["x" * 100] * 40})
        assert r.status_code == 413
        assert "2048" in r.json()["detail"]

        # a streamed body without Content-Length is cut off too
        async def chunks():
            for _ in range(10):
                yield b" " * 1024

        r = await client.post(
            "/recommend", content=chunks(), headers={"content-type": "application/json"}
        )
        assert r.status_code == 413


async def test_api_keys(served_root, cat):
    s = settings(served_root, api_key="s3cret", admin_api_key="adm1n")
    body = {"k": 3}
    async with serve(s) as (client, _):
        assert (await client.get("/healthz")).status_code == 200
        assert (await client.get("/readyz")).status_code == 200
        for method, path, kwargs in [
            ("POST", "/recommend", {"json": body}),
            ("POST", "/recommend/batch", {"json": {"requests": [body]}}),
            ("GET", f"/similar-items/{cat['items'][0]['id']}", {}),
            ("GET", f"/items/{cat['items'][0]['id']}", {}),
            ("POST", "/events", {"json": {"user_id": "a", "item_id": cat["items"][0]["id"]}}),
            ("GET", "/metrics", {}),
            ("GET", "/docs", {}),
            ("GET", "/openapi.json", {}),
        ]:
            r = await client.request(method, path, **kwargs)
            assert r.status_code == 401, (path, r.text)
            r = await client.request(method, path, headers={"X-API-Key": "wrong"}, **kwargs)
            assert r.status_code == 401, path
            r = await client.request(method, path, headers={"X-API-Key": "s3cret"}, **kwargs)
            assert r.status_code == 200, (path, r.text)
        assert (await client.post("/admin/reload")).status_code == 401
        r = await client.post("/admin/reload", headers={"X-API-Key": "s3cret"})
        assert r.status_code == 403
        r = await client.post("/admin/reload", headers={"X-API-Key": "adm1n"})
        assert r.status_code == 200 and r.json()["reloaded"] is False
    async with serve(settings(served_root, api_key="s3cret")) as (client, _):
        r = await client.post("/admin/reload", headers={"X-API-Key": "s3cret"})
        assert r.status_code == 403  # no ADMIN_API_KEY: admin is closed
    async with serve(settings(served_root)) as (client, _):  # auth off
        assert (await client.post("/recommend", json=body)).status_code == 200
        assert (await client.get("/metrics")).status_code == 200
        assert (await client.post("/admin/reload")).status_code == 200
    # compose passes API_KEY= when unset: an empty key means "no key", not "empty key"
    async with serve(settings(served_root, api_key="", admin_api_key="")) as (client, _):
        assert (await client.post("/recommend", json=body)).status_code == 200
        assert (await client.get("/metrics")).status_code == 200
        assert (await client.post("/admin/reload")).status_code == 200


async def test_docs_are_served_from_local_assets(served_root):
    async with serve(settings(served_root)) as (client, _):
        r = await client.get("/docs")
        assert r.status_code == 200 and "swagger" in r.text.lower()
        urls = re.findall(r"""(?:src|href)=["']([^"']+)["']""", r.text)
        urls += re.findall(r"""url:\s*["']([^"']+)["']""", r.text)
        assert len(urls) >= 3, urls
        assert "http://" not in r.text and "https://" not in r.text
        for url in urls:
            assert url.startswith("/"), url
            asset = await client.get(url)
            assert asset.status_code == 200 and len(asset.content) > 100, url
        spec = (await client.get("/openapi.json")).json()
        for path in (
            "/recommend",
            "/recommend/batch",
            "/similar-items/{item_id}",
            "/events",
            "/items/{item_id}",
            "/healthz",
            "/readyz",
            "/metrics",
            "/admin/reload",
        ):
            assert path in spec["paths"], path


async def test_metrics_has_the_promised_series(served_root, cat):
    user = next(u for u in cat["users"] if u["history"])
    async with serve(settings(served_root)) as (client, _):
        for _ in range(2):
            await client.post("/recommend", json={"user_id": user["id"]})
        await client.get(f"/similar-items/{cat['items'][0]['id']}")
        await client.get("/similar-items/nope")
        text = (await client.get("/metrics")).text
    expected = [
        'towerrec_http_requests_total{method="POST",route="/recommend",status="200"} 2.0',
        'towerrec_http_requests_total{method="GET",route="/similar-items/{item_id}",'
        'status="404"} 1.0',
        'towerrec_http_request_duration_seconds_bucket{le="0.005",method="GET",'
        'route="/similar-items/{item_id}",status="200"}',
        "towerrec_cache_hits_total 1.0",
        "towerrec_cache_misses_total 1.0",
        "towerrec_cache_errors_total 0.0",
        f'towerrec_model_info{{version="{cat["version"]}"}} 1.0',
        "towerrec_inference_seconds_bucket",
        "towerrec_search_seconds_bucket",
        "towerrec_batch_size_bucket",
        'towerrec_recommendations_total{strategy="id"} 2.0',
    ]
    for line in expected:
        assert line in text, line


async def test_no_model_loaded_is_503_not_500(tmp_path):
    async with serve(settings(tmp_path / "empty")) as (client, _):
        assert (await client.get("/healthz")).status_code == 200
        r = await client.get("/readyz")
        assert r.status_code == 503 and "no model loaded" in r.json()["reason"]
        r = await client.post("/recommend", json={})
        assert r.status_code == 503 and "no model loaded" in r.json()["detail"]


@pytest.fixture(scope="session")
def id_model_root(served_root, tmp_path_factory):
    """A version of the bundle whose user tower has the user-id embedding branch."""
    import torch

    from training import bundle
    from training.export import export_bundle
    from training.model import TowerConfig, TwoTower

    root = support.copy_root(served_root, tmp_path_factory.mktemp("idmodel") / "artifacts")
    current = bundle.resolve(root)
    manifest = bundle.read_manifest(current)
    users = bundle.load_json(current, bundle.USERS)
    cfg = TowerConfig.from_dict(manifest["model"])
    cfg.user_id_embedding, cfg.n_users = True, len(users)
    torch.manual_seed(3)
    model = TwoTower(cfg)
    torch.nn.init.normal_(model.user_tower.user_ids.weight, std=1.0)
    out = export_bundle(
        root,
        model,
        items=bundle.load_json(current, bundle.ITEMS),
        users=users,
        popularity=bundle.load_json(current, bundle.POPULARITY),
        dataset=manifest["dataset"],
        train_config={},
    )
    support.build_index(out)
    return root


@pytest.mark.parametrize("variant", ["bundle", "with-user-id-embedding"])
async def test_known_user_vector_is_the_towers_output_for_that_user(
    variant, served_root, id_model_root
):
    """The id strategy feeds the user's features, history (+ events) and 1-based id."""
    import numpy as np
    import torch

    from training import bundle
    from training.model import feature_tensors

    root = served_root if variant == "bundle" else id_model_root
    cat = catalog(root)
    u, user = next((n, x) for n, x in enumerate(cat["users"]) if len(x["history"]) >= 2)
    extra = next(it["id"] for it in cat["items"] if it["id"] not in user["history"])
    async with serve(settings(root)) as (client, app):
        await client.post("/events", json={"user_id": user["id"], "item_id": extra})
        r = await client.post("/recommend", json={"user_id": user["id"]})
        assert r.json()["strategy"] == "id" and r.json()["cache"] == "miss"
        store = app.state.runtime.store
        key = store.user_key(user["id"], cat["version"])
        found = await store.read(user["id"], key, cat["dim"])
        assert found.cache == "hit"  # the vector cached for this very history
        served = found.vector

    current = bundle.resolve(root)
    model = bundle.load_towers(current)
    cfg = model.cfg
    assert cfg.user_id_embedding is (variant != "bundle")
    item_index = {it["id"]: n for n, it in enumerate(cat["items"])}
    table = np.load(current / bundle.ITEM_EMBEDDINGS)
    sequence = [item_index[i] for i in user["history"] + [extra]][-cfg.max_len :]
    with torch.inference_mode():
        expected = model.user_tower(
            feature_tensors(cfg.specs("user"), [user["features"]]),
            torch.from_numpy(table[sequence][None]),
            torch.tensor([len(sequence)]),
            torch.tensor([u + 1]),
        )[0].numpy()
    np.testing.assert_allclose(served, expected, rtol=1e-4, atol=1e-5)


async def test_concurrent_requests_share_forward_passes_and_searches(served_root, cat):
    """The micro-batcher: concurrent cache misses go through fewer forward passes than
    requests, concurrent search-only requests through fewer searches; answers unchanged."""
    items = [it["id"] for it in cat["items"]]
    bodies = [{"recent_items": items[n : n + 3], "k": 5} for n in range(24)]
    async with serve(settings(served_root, cache_enabled=False)) as (client, app):
        alone = [ids((await client.post("/recommend", json=b)).json()) for b in bodies]
        metrics = app.state.metrics
        before = metrics.batch_size.collect()[0].samples
        count = next(s.value for s in before if s.name.endswith("_count"))
        together = await asyncio.gather(*(client.post("/recommend", json=b) for b in bodies))
        after = metrics.batch_size.collect()[0].samples
        batches = next(s.value for s in after if s.name.endswith("_count")) - count
        assert [ids(r.json()) for r in together] == alone
        assert batches < len(bodies) / 2, batches

        count = next(s.value for s in after if s.name.endswith("_count"))
        similar = await asyncio.gather(
            *(client.get(f"/similar-items/{i}", params={"k": 4}) for i in items[:24])
        )
        assert all(r.status_code == 200 and len(ids(r.json())) == 4 for r in similar)
        final = metrics.batch_size.collect()[0].samples
        assert next(s.value for s in final if s.name.endswith("_count")) - count < 12


async def test_recent_items_may_repeat_in_order_and_are_excluded_as_a_set(served_root, cat):
    a, b = cat["items"][10]["id"], cat["items"][11]["id"]
    async with serve(settings(served_root)) as (client, _):
        r = await client.post("/recommend", json={"recent_items": [a, b, a, a], "k": 20})
        assert r.status_code == 200, r.text
        repeated = r.json()
        assert repeated["strategy"] == "sequence" and not {a, b} & set(ids(repeated))
        once = (await client.post("/recommend", json={"recent_items": [b, a], "k": 20})).json()
        # the sequence reaches the encoder as sent: a repeat is not dropped
        scores = [it["score"] for it in repeated["items"]]
        assert scores != [it["score"] for it in once["items"]]
        again = await client.post("/recommend", json={"recent_items": [a, b, a, a], "k": 3})
        assert again.json()["cache"] == "hit"  # same inputs (repeats included): same key


# (content-type, body) pairs a careless client or a fuzzer sends
HOSTILE = [
    ("application/json", b"\xff\xfe\x00{"),  # not UTF-8
    ("application/json", b'{"k": NaN}'),
    ("application/json", b'{"k": Infinity}'),
    ("application/json", b'{"k": 1e400}'),
    ("application/json", b'{"user_id": "\\ud800", "item_id": "\\udfff"}'),
    ("application/json", b'{"features": {"age": NaN}, "recent_items": ["\\ud800"]}'),
    ("application/json", b'{"requests": [{"k": -Infinity}]}'),
    ("application/json", b'{"events": [{"user_id": "u", "item_id": "1", "timestamp": NaN}]}'),
    ("application/json", b"[" * 50_000),
    ("application/json", b'"just a string"'),
    ("application/json", b"{not json"),
    ("text/plain", b"hello"),
    ("application/x-www-form-urlencoded", b"user_id=1&item_id=2"),
    ("application/octet-stream", b"\x00\x01\x02\xff"),
]


async def test_hostile_bodies_get_4xx_never_5xx_and_the_status_says_why(served_root):
    async with serve(settings(served_root)) as (client, _):
        for path in ("/recommend", "/recommend/batch", "/events"):
            for content_type, raw in HOSTILE:
                r = await client.post(path, content=raw, headers={"content-type": content_type})
                case = (path, content_type, raw[:40])
                assert 400 <= r.status_code < 500, (case, r.status_code, r.text)
                r.json()  # always a JSON error body
                if content_type != "application/json":
                    assert r.status_code == 415, case
                elif raw.startswith((b"\xff", b"{not", b"[[")):
                    assert r.status_code == 400, case
                else:
                    assert r.status_code == 422, (case, r.text)


async def test_non_finite_numbers_are_invalid_wherever_a_number_is_expected(served_root, cat):
    spec = cat["manifest"]["model"]["user_features"]
    bucket = next((f["name"] for f in spec if f["kind"] == "bucket"), None)
    item = cat["items"][0]["id"]
    async with serve(settings(served_root)) as (client, _):
        bodies = [
            ("/events", '{"user_id": "u", "item_id": "' + item + '", "timestamp": Infinity}'),
            ("/events", '{"user_id": "u", "item_id": "' + item + '", "timestamp": 1e400}'),
            ("/recommend", '{"k": 1e400}'),
        ]
        if bucket is not None:
            bodies += [
                ("/recommend", '{"features": {"' + bucket + '": NaN}}'),
                ("/recommend", '{"features": {"' + bucket + '": ' + "9" * 400 + "}}"),
            ]
        for path, raw in bodies:
            r = await client.post(path, content=raw, headers={"content-type": "application/json"})
            assert r.status_code == 422, (raw, r.text)
        r = await client.post("/recommend", json={"user_id": "u"})
        assert r.json()["strategy"] == "popular"  # no event was recorded


async def test_event_ids_make_retries_record_once_in_process(served_root, cat):
    a, b = cat["items"][1]["id"], cat["items"][2]["id"]
    events = [
        {"user_id": "r1", "item_id": a, "event_id": "e-1"},
        {"user_id": "r1", "item_id": b, "event_id": "e-2"},
        {"user_id": "r2", "item_id": a},
    ]
    async with serve(settings(served_root, history_len=10)) as (client, app):
        first = (await client.post("/events", json=events)).json()  # a bare array
        assert (first["recorded"], first["duplicates"]) == (3, 0)
        retry = (await client.post("/events", json={"events": events})).json()
        assert (retry["recorded"], retry["duplicates"]) == (1, 2)  # r2 had no event_id
        assert retry["users"][0] == {
            "user_id": "r1",
            "status": "duplicate",
            "recorded": [],
            "duplicates": [0, 1],
            "failed": [],
            "error": None,
        }
        store = app.state.runtime.store
        assert (await store.read("r1", None, 1)).history == [a, b]
        assert (await store.read("r2", None, 1)).history == [a, a]


async def test_every_route_documents_every_status_it_returns(served_root):
    async with serve(settings(served_root)) as (client, _):
        spec = (await client.get("/openapi.json")).json()
    expected = {
        ("/recommend", "post"): {"200", "400", "401", "413", "415", "422", "503"},
        ("/recommend/batch", "post"): {"200", "400", "401", "413", "415", "422", "503"},
        ("/events", "post"): {"200", "400", "401", "413", "415", "422", "503"},
        ("/similar-items/{item_id}", "get"): {"200", "401", "404", "422", "503"},
        ("/items/{item_id}", "get"): {"200", "401", "404", "422", "503"},
        ("/readyz", "get"): {"200", "503"},
        ("/admin/reload", "post"): {"200", "401", "403", "409", "413", "415", "422"},
    }
    for (path, method), codes in expected.items():
        assert set(spec["paths"][path][method]["responses"]) == codes, path
    body = spec["paths"]["/events"]["post"]["requestBody"]["content"]["application/json"]
    assert len(body["schema"]["anyOf"]) == 3  # {events: [...]}, a bare array, one event
