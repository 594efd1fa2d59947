"""The traced user tower gives the eager tower's vectors, and stays eager when it can't."""

from __future__ import annotations

import random

import numpy as np
import test_service_support as support
import torch
from torch import nn

from service.engine import Engine, Query
from service.traced import TracedTower
from training import bundle

served_root = support.served_root  # fixture


def test_traced_engine_matches_eager_for_every_kind_of_request(served_root):
    current = bundle.resolve(served_root)
    traced, eager = Engine(current), Engine(current, traced=False)
    assert traced.forward.reason == "traced" and eager.forward is eager.tower
    user = next(iter(traced.users.values()))
    rng = random.Random(0)
    for n in (1, 3, 17):
        queries = [
            Query(
                features=dict(user[1]) if i % 3 else {},  # some without features
                sequence=rng.sample(range(traced.n_items), rng.randint(0, 40)),  # some empty
                user_index=user[0],
            )
            for i in range(n)
        ]
        np.testing.assert_allclose(traced.encode(queries), eager.encode(queries), atol=1e-5)


class ShapeDependent(nn.Module):
    """A tower whose Python branches on the data: a trace freezes one branch."""

    features = user_ids = None
    encoder = nn.Identity()

    def forward(self, feats, seq, lengths, user_ids):
        total = seq.sum(1)
        return total * 2 if seq.shape[1] > 3 else total


def test_a_tower_whose_trace_disagrees_runs_eager():
    tower = TracedTower(ShapeDependent(), [], dim=4, max_len=5, users=0)
    assert tower.graph is None and "differs from eager" in tower.reason
    seq, lengths = torch.randn(2, 5, 4), torch.tensor([1, 2])
    assert torch.equal(tower(None, seq, lengths, None), ShapeDependent()(None, seq, lengths, None))


def test_traced_tower_setting_switches_the_engine(served_root):
    """TRACED_TOWER (Settings.traced_tower) picks the traced or the eager tower at load;
    both answer /recommend."""
    import asyncio

    from test_service_support import serve, settings

    item = bundle.load_json(bundle.resolve(served_root), bundle.ITEMS)[3]["id"]

    async def forward_kind(traced: bool) -> str:
        async with serve(settings(served_root, traced_tower=traced)) as (client, app):
            r = await client.post("/recommend", json={"recent_items": [item], "k": 3})
            assert r.status_code == 200, r.text
            engine = app.state.runtime.engine
            return "eager" if engine.forward is engine.tower else engine.forward.reason

    assert asyncio.run(forward_kind(True)) == "traced"
    assert asyncio.run(forward_kind(False)) == "eager"


def test_features_only_request_serves_the_evaluated_features_only_vector(served_root):
    """A cold user (features, no recent items) is ranked by the feature branch alone, the
    vector the report's features-only mode is measured on (no state after BOS added)."""
    import asyncio

    from test_service_support import serve, settings

    from training.model import feature_tensors

    current = bundle.resolve(served_root)
    model = bundle.load_towers(current)
    items = bundle.load_json(current, bundle.ITEMS)
    vectors = torch.from_numpy(bundle.load_array(current / bundle.ITEM_EMBEDDINGS))
    features = bundle.load_json(current, bundle.USERS)[5]["features"]
    with torch.inference_mode():
        user = model.user_tower(feature_tensors(model.cfg.specs("user"), [features]))
        scores = (user @ vectors.T)[0]
    expected = [items[i]["id"] for i in torch.argsort(scores, descending=True)[:10].tolist()]

    async def served() -> dict:
        async with serve(settings(served_root)) as (client, _):
            r = await client.post("/recommend", json={"features": features, "k": 10})
            assert r.status_code == 200, r.text
            return r.json()

    body = asyncio.run(served())
    assert body["strategy"] == "features"
    assert [it["item_id"] for it in body["items"]] == expected
    np.testing.assert_allclose(
        [it["score"] for it in body["items"]], scores.sort(descending=True).values[:10], rtol=1e-4
    )
