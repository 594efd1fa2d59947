"""bench.big_catalog on a small scale: the grown bundle is what the benchmark claims (new
items through the item tower, IVF re-resolved for the grown catalog), and its startup /
memory measurement finds both workers of a real 2-worker server."""

from __future__ import annotations

import numpy as np
import pytest
from redis_server import RedisServer

from bench import big_catalog
from index import IndexSpec, ItemIndex, embed
from training.bundle import ITEMS, load_json

ADDED = 3000


@pytest.fixture(scope="module")
def grown(trained_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("big") / "artifacts"
    big_catalog.build(trained_root, out, ADDED, seed=3)
    return out


def test_the_grown_bundle_holds_tower_vectors_in_an_ivf_index(trained_root, grown):
    before = len(load_json(trained_root / "current", ITEMS))
    index = ItemIndex.load(grown / "current")
    assert index.active_count == before + ADDED
    assert index.kind == "ivf"
    expected = IndexSpec("ivf").resolved(before + ADDED, index.dim)
    assert index.spec.nlist == expected.nlist
    new = big_catalog.new_items(load_json(trained_root / "current", ITEMS), ADDED, seed=3)
    rows = [index.internal_id(it["id"]) for it in new[:50]]
    tower = embed.item_vectors(grown / "current", [it["features"] for it in new[:50]])
    np.testing.assert_allclose(index.vectors(np.array(rows)), tower, rtol=1e-5, atol=1e-6)
    assert all(1 <= len(it["features"]["genres"]) <= 3 for it in new)


@pytest.mark.parametrize("servers", [(2,), (1, 1)])
def test_startup_measures_every_worker(grown, servers):
    with RedisServer() as redis:
        run = big_catalog.startup(grown / "current", redis.url, {"INDEX_MMAP": "true"}, servers)
    assert "error" not in run, run
    assert run["errors_of_200"] == 0 and run["requests"] == 200 * len(servers)
    assert len(run["workers"]) == 2
    assert 0 < run["ready_s"] <= run["first_recommend_s"] + 1
    for worker in run["workers"]:
        assert worker["rss"] >= worker["anon"] > 0 and worker["pss"] > 0
    table = big_catalog.startup_table({"setup": run})
    assert table.count("\n") == 2 and f"of {run['requests']} |" in table
