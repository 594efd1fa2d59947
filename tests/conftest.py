"""Shared fixtures: a small trained bundle and a real redis-server on a free port."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ML100K = ROOT.parent / "shared" / "data" / "ml-100k"


def _tiny_bundle(root: Path) -> Path:
    """PLACEHOLDER until the trainer lands: an untrained model on a hand-made catalog."""
    import random

    from training.export import export_bundle
    from training.features import FeatureSpec
    from training.model import TowerConfig, TwoTower

    rng = random.Random(0)
    genres = ["Action", "Comedy", "Drama", "Horror", "Sci-Fi"]
    items = [
        {"id": str(i + 1), "title": f"Item {i + 1} ({1980 + i % 20})",
         "genres": rng.sample(genres, 2), "features": {}}
        for i in range(200)
    ]
    for it in items:
        it["features"] = {"genres": it["genres"], "year": 1980 + int(it["id"]) % 20}
    users = [
        {"id": str(u + 1), "features": {"gender": "MF"[u % 2], "age": 20 + u % 40,
                                        "occupation": "student", "zip": "12345"},
         "history": [str(rng.randrange(1, 201)) for _ in range(10)]}
        for u in range(50)
    ]
    user_specs = [
        FeatureSpec.fit("gender", "categorical", ["M", "F"]),
        FeatureSpec.fit("age", "bucket", [], boundaries=[18, 25, 35, 45, 50, 56]),
        FeatureSpec.fit("occupation", "categorical", ["student", "other"]),
        FeatureSpec.fit("zip", "categorical", ["12345"], prefix=1),
    ]
    item_specs = [
        FeatureSpec.fit("genres", "multi", [it["genres"] for it in items]),
        FeatureSpec.fit("year", "bucket", [], boundaries=list(range(1920, 2030, 10))),
    ]
    cfg = TowerConfig(n_items=len(items), n_users=len(users), dim=32,
                      user_features=[s.to_dict() for s in user_specs],
                      item_features=[s.to_dict() for s in item_specs])
    return export_bundle(
        root, TwoTower(cfg), items=items, users=users,
        popularity=[it["id"] for it in items],
        dataset={"name": "tiny", "fingerprint": "0", "n_users": 50, "n_items": 200},
        train_config={},
    )


@pytest.fixture(scope="session")
def bundle_root(tmp_path_factory) -> Path:
    """An artifacts root whose ``current`` is a small bundle. Treat it as read-only:
    tests that modify bundles copy it first (``shutil.copytree(..., symlinks=True)``)."""
    root = tmp_path_factory.mktemp("artifacts")
    _tiny_bundle(root)
    return root
