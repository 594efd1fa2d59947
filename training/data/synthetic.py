"""Synthetic interactions with known structure: the quick-start and test data.

- Items fall into taste clusters; each cluster has a main genre and an era (years),
  and its items sit on a ring. Popularity is Zipf-skewed across the catalog.
- A user's home cluster is a function of (gender, age group, occupation), so user
  features alone predict much of what a user watches.
- A history is a walk: mostly a short step forward along the current cluster's ring
  (so the next item depends on the previous ones and order carries signal), sometimes
  a popular item of the cluster, a hop to a neighbouring cluster or back home, or a
  popular item from anywhere. No item repeats within a user.

Feature names match MovieLens (``gender``, ``age``, ``occupation``, ``zip``;
``genres``, ``year``), so the same feature configuration trains on both.
"""

from __future__ import annotations

import numpy as np

from training.data.base import Dataset
from training.data.movielens import ITEM_COLUMNS, USER_COLUMNS

GENRES = [
    "Action",
    "Adventure",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Horror",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "Western",
]
OCCUPATIONS = ["artist", "engineer", "student", "teacher", "doctor", "lawyer", "writer", "retired"]
AGE_GROUPS = [25, 35, 50]  # ages below each boundary form a group; 4 groups
START = 946_684_800  # 2000-01-01 UTC
STEP_CDF = np.cumsum([0.6, 0.25, 0.15])  # a ring step moves 1, 2 or 3 items ahead


def generate(
    n_users: int = 1000,
    n_items: int = 500,
    seed: int = 0,
    n_clusters: int = 10,
    min_length: int = 20,
    max_length: int = 60,
    p_step: float = 0.6,
    p_cluster: float = 0.2,
    p_hop: float = 0.15,
) -> Dataset:
    """Deterministic for a seed. Per step: ``p_step`` a 1-3 item step along the ring,
    ``p_cluster`` a popular item of the current cluster, ``p_hop`` a hop (to a
    neighbouring cluster, or home when away), otherwise a popular item of any cluster."""
    if n_items < n_clusters or not 0 < min_length <= max_length:
        raise ValueError("need n_items >= n_clusters and 0 < min_length <= max_length")
    rng = np.random.default_rng(seed)

    # items: clusters, rings, popularity, genres, years
    cluster = rng.permutation(n_items) % n_clusters
    rings = [np.flatnonzero(cluster == c) for c in range(n_clusters)]
    for ring in rings:
        rng.shuffle(ring)
    position = np.empty(n_items, np.int64)
    for ring in rings:
        position[ring] = np.arange(len(ring))
    weight = 1.0 / (1.0 + rng.permutation(n_items)) ** 0.8
    cum_cluster = [np.cumsum(weight[ring]) for ring in rings]
    cum_all = np.cumsum(weight)
    main_genre = rng.permutation(len(GENRES))[np.arange(n_clusters) % len(GENRES)]
    era = rng.integers(1950, 2011, size=n_clusters)
    item_features = []
    for i in range(n_items):
        genres = {GENRES[main_genre[cluster[i]]]}
        if rng.random() < 0.3:
            genres.add(GENRES[rng.integers(len(GENRES))])
        year = int(era[cluster[i]] + rng.integers(-4, 5))
        item_features.append({"genres": sorted(genres), "year": year})

    # users: features decide the home cluster (mostly)
    home_of = rng.integers(n_clusters, size=(2, len(AGE_GROUPS) + 1, len(OCCUPATIONS)))
    user_features, homes = [], np.empty(n_users, np.int64)
    for u in range(n_users):
        gender, job = rng.integers(2), rng.integers(len(OCCUPATIONS))
        age = int(rng.integers(18, 70))
        user_features.append(
            {
                "gender": "MF"[gender],
                "age": age,
                "occupation": OCCUPATIONS[job],
                "zip": f"{rng.integers(100000):05d}",
            }
        )
        group = int(np.searchsorted(AGE_GROUPS, age, side="right"))
        homes[u] = home_of[gender, group, job] if rng.random() < 0.9 else rng.integers(n_clusters)

    def popular(cum: np.ndarray) -> int:
        return int(np.searchsorted(cum, rng.random() * cum[-1], side="right"))

    users, items, stamps = [], [], []
    for u in range(n_users):
        home, length = int(homes[u]), int(rng.integers(min_length, max_length + 1))
        current = int(rings[home][popular(cum_cluster[home])])
        seen = {current}
        history, t = [current], START + int(rng.integers(0, 365 * 86400))
        times = [t]
        while len(history) < min(length, n_items):
            c, r = int(cluster[current]), rng.random()
            if r < p_step:
                ahead = 1 + int(np.searchsorted(STEP_CDF, rng.random()))
                nxt = int(rings[c][(position[current] + ahead) % len(rings[c])])
            elif r < p_step + p_cluster:
                nxt = int(rings[c][popular(cum_cluster[c])])
            elif r < p_step + p_cluster + p_hop:
                c = home if c != home else (c + 2 * int(rng.integers(2)) - 1) % n_clusters
                nxt = int(rings[c][popular(cum_cluster[c])])
            else:
                nxt = popular(cum_all)
            ring = rings[int(cluster[nxt])]
            for _ in range(len(ring)):  # already seen: walk on along the ring
                if nxt not in seen:
                    break
                nxt = int(ring[(position[nxt] + 1) % len(ring)])
            if nxt in seen:  # the whole cluster is seen: a popular unseen item
                unseen = np.setdiff1d(np.arange(n_items), list(seen))
                nxt = int(unseen[popular(np.cumsum(weight[unseen]))])
            seen.add(nxt)
            history.append(nxt)
            t += int(rng.integers(60, 3 * 86400))
            times.append(t)
            current = nxt
        users.append(np.full(len(history), u, np.int64))  # arrays: 8 bytes an interaction
        items.append(np.asarray(history, np.int64))
        stamps.append(np.asarray(times, np.int64))

    users, items, stamps = (
        np.concatenate(a + [np.zeros(0, np.int64)]) for a in (users, items, stamps)
    )
    order = np.argsort(stamps, kind="stable")  # one interleaved, time-ordered log
    return Dataset(
        name="synthetic",
        user_ids=[str(u + 1) for u in range(n_users)],
        item_ids=[str(i + 1) for i in range(n_items)],
        users=users[order],
        items=items[order],
        timestamps=stamps[order],
        user_features=user_features,
        item_features=item_features,
        user_columns=list(USER_COLUMNS),
        item_columns=list(ITEM_COLUMNS),
        titles=[f"Synthetic item {i + 1} ({f['year']})" for i, f in enumerate(item_features)],
        source=f"synthetic(seed={seed}, n_users={n_users}, n_items={n_items})",
    )
