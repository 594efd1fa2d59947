"""Synthetic data: deterministic, MovieLens-shaped features, increasing timestamps."""

from __future__ import annotations

import numpy as np
import pytest

from training.data import load_dataset
from training.data.synthetic import generate
from training.features import FeatureSpec


def test_deterministic_for_a_seed():
    a, b = generate(n_users=100, n_items=80, seed=5), generate(n_users=100, n_items=80, seed=5)
    assert a.fingerprint() == b.fingerprint()
    assert generate(n_users=100, n_items=80, seed=6).fingerprint() != a.fingerprint()
    assert (
        load_dataset("synthetic", n_users=100, n_items=80, seed=5).fingerprint() == a.fingerprint()
    )


def test_shapes_and_features():
    ds = generate(n_users=300, n_items=120, min_length=5, max_length=9, seed=1)
    assert (ds.n_users, ds.n_items) == (300, 120)
    lengths = np.bincount(ds.users, minlength=ds.n_users)
    assert lengths.min() >= 5 and lengths.max() <= 9
    assert [c.name for c in ds.user_columns] == ["gender", "age", "occupation", "zip"]
    assert [c.name for c in ds.item_columns] == ["genres", "year"]
    user = ds.user_features[0]
    assert user["gender"] in ("M", "F") and isinstance(user["age"], int)
    assert isinstance(user["zip"], str) and len(user["zip"]) == 5
    item = ds.item_features[16]
    assert ds.titles[16] == f"Synthetic item 17 ({item['year']})" and item["genres"]
    for column in ds.user_columns + ds.item_columns:  # every value encodes as known
        spec = FeatureSpec.fit(
            column.name,
            column.kind,
            [f[column.name] for f in ds.user_features + ds.item_features if column.name in f],
            boundaries=column.boundaries,
            prefix=column.prefix,
        )
        rows = ds.user_features if column in ds.user_columns else ds.item_features
        assert all(spec.encode(r[column.name])[1] for r in rows)


def test_timestamps_increase_per_user_and_items_do_not_repeat():
    ds = generate(n_users=200, n_items=60, min_length=20, max_length=60, seed=2)
    for u in range(ds.n_users):
        mine = ds.users == u
        assert np.all(np.diff(ds.timestamps[mine]) > 0)
        assert len(set(ds.items[mine].tolist())) == mine.sum()
    assert np.all(np.diff(ds.timestamps) >= 0)  # one time-ordered log


def test_popularity_is_skewed():
    ds = generate(seed=0)
    counts = np.sort(np.bincount(ds.items, minlength=ds.n_items))[::-1]
    assert counts[: ds.n_items // 10].sum() > 2.5 * counts[-ds.n_items // 10 :].sum()


def test_rejects_impossible_sizes():
    with pytest.raises(ValueError):
        generate(n_items=5, n_clusters=10)
