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
