"""``ItemIndex``: the read side the service uses — top-k with exclusions, similar items.

Results are internal item ids (rows of ``vectors.npy``). Excluded and removed ids are never
returned, and a row is padded with ``-1`` / ``-inf`` only when the catalog minus that row's
exclusions has fewer than ``k`` items. Exclusions are applied in one of two ways:

- ``overfetch``: one batched FAISS call for ``k + max|exclude| + tombstones`` neighbours,
  then a filter keeps the first ``k`` allowed ids per row.
- ``selector``: one FAISS call per query with ``IDSelectorNot(IDSelectorBatch(excluded))``
  in the search parameters, so FAISS skips the ids while scanning.

``DEFAULT_EXCLUSION`` holds the faster one per kind as measured by ``bench/index.py``
(docs/BENCHMARKS.md). Either way, a row that the ANN index could not fill (a small
``nprobe`` that visits too few items, say) falls back to an exact scan of ``vectors.npy``
for that row, counted in ``stats["exact_fallbacks"]``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace
from pathlib import Path

import faiss
import numpy as np

from index import factory, store
from index.errors import UnknownItemError
from index.factory import IndexSpec
from index.store import Snapshot

Row = tuple[list[int], list[float]]  # one query's result: internal ids and scores, best first

STRATEGIES = ("overfetch", "selector")
# docs/BENCHMARKS.md, "Excluding seen items": over-fetch was faster for batches of 64 in 22
# of 24 comparisons (100k and 1M, every kind) and in 15 of 24 for single queries, where the
# two are within a few tenths of a millisecond; the service searches in micro-batches.
DEFAULT_EXCLUSION = {"flat": "overfetch", "hnsw": "overfetch", "ivf": "overfetch"}


class ItemIndex:
    """A loaded index version: search, similar items, and the serving catalog."""

    dim: int
    kind: str
    version: int
    normalized: bool
    item_ids: list[str]  # external id per internal id (removed and replaced rows included)

    def __init__(self, snapshot: Snapshot, *, exclusion: str = "auto"):
        self._section = snapshot.section
        self._index = snapshot.index
        self._vectors = snapshot.vectors
        self.spec: IndexSpec = snapshot.spec
        self.kind = self.spec.kind
        self.dim = snapshot.dim
        self.version = int(snapshot.section.get("version", 0))
        self.normalized = snapshot.normalized
        # The catalog is kept as columns, not as items.json's per-item dicts (their
        # features are a writer's business): at a million items the dicts were most of a
        # serving worker's private memory. Genre lists are shared between items.
        items = snapshot.items
        self.item_ids = [it["id"] for it in items]
        self._titles = [it.get("title", "") for it in items]
        shared: dict[tuple[str, ...], tuple[str, ...]] = {}
        self._genres = [
            shared.setdefault(g, g) for g in (tuple(it.get("genres") or ()) for it in items)
        ]
        self._active = np.fromiter((it["active"] for it in items), bool, len(items))
        self._by_external = {it["id"]: i for i, it in enumerate(items) if it["active"]}
        self._tombstones = snapshot.tombstones()
        self._ntotal = int(self._index.ntotal)
        self._norms: np.ndarray | None = None
        self.exclusion = DEFAULT_EXCLUSION[self.kind] if exclusion == "auto" else exclusion
        if self.exclusion not in STRATEGIES:
            raise ValueError(f"exclusion must be 'auto' or one of {STRATEGIES}")
        self.stats = {"exact_fallbacks": 0}

    # ------------------------------------------------------------------ construction

    @classmethod
    def load(
        cls,
        bundle_dir: str | Path,
        mmap: bool = True,
        threads: int = 1,
        *,
        verify: bool = True,
        exclusion: str = "auto",
    ) -> ItemIndex:
        """Open the bundle's current index version (see ``store.load_version``).

        ``mmap`` maps the FAISS data and ``vectors.npy`` instead of reading them (flat, ivf
        fully; hnsw maps its vectors, its graph is read into RAM). ``threads`` sets FAISS's
        OpenMP threads for the whole process; 1 per worker is the serving default.
        ``verify`` checks SHA-256 of every file (reads them once).
        """
        faiss.omp_set_num_threads(threads)
        return cls(store.load_version(bundle_dir, mmap=mmap, verify=verify), exclusion=exclusion)

    @classmethod
    def from_vectors(
        cls,
        vectors: np.ndarray,
        spec: IndexSpec | None = None,
        *,
        item_ids: Sequence[str] | None = None,
        normalize: bool = False,
        exclusion: str = "auto",
    ) -> ItemIndex:
        """An in-memory index (version 0) over raw vectors; for evaluation and benchmarks."""
        vectors = factory.prepare(vectors, normalize=False)
        spec = (spec or IndexSpec()).resolved(len(vectors), vectors.shape[1])
        ids = np.arange(len(vectors), dtype=np.int64)
        index = factory.build(spec, factory.prepare(vectors, normalize), ids)
        names = item_ids if item_ids is not None else [str(i) for i in ids]
        items = [
            {"id": str(name), "title": "", "genres": [], "features": {}, "active": True}
            for name in names
        ]
        return cls(Snapshot(index, vectors, items, spec, normalize), exclusion=exclusion)

    def set_search_params(self, *, ef_search: int | None = None, nprobe: int | None = None) -> None:
        """Change HNSW ``ef_search`` / IVF ``nprobe`` for later searches (eval, sweeps)."""
        changes = {k: v for k, v in (("ef_search", ef_search), ("nprobe", nprobe)) if v is not None}
        self.spec = replace(self.spec, **changes)
        factory.set_search_defaults(self._index, self.spec)

    # ------------------------------------------------------------------ catalog

    @property
    def active_count(self) -> int:
        return int(self._active.sum())

    @property
    def by_external(self) -> dict[str, int]:
        """External id -> internal id of every active item (shared: do not modify)."""
        return self._by_external

    @property
    def active_mask(self) -> np.ndarray:
        """bool [items]: which internal ids are served (shared: do not modify)."""
        return self._active

    @property
    def faiss_index(self) -> faiss.Index:
        """The underlying FAISS index (labels = internal ids); for evaluation only."""
        return self._index

    @property
    def section(self) -> dict:
        """The manifest's index section this version was loaded from."""
        return self._section

    def internal_id(self, external: str) -> int:
        """The internal id serving ``external``; ``UnknownItemError`` if unknown or removed."""
        try:
            return self._by_external[str(external)]
        except KeyError:
            state = "was removed from" if str(external) in self.item_ids else "is not in"
            raise UnknownItemError(
                external, f"item {external!r} {state} the index (v{self.version:04d})"
            ) from None

    def is_active(self, internal: int) -> bool:
        return 0 <= internal < len(self._active) and bool(self._active[internal])

    def metadata(self, internal: int) -> dict:
        """``{id, title, genres}`` of an internal id (removed items included)."""
        i = self._check_internal(internal)
        return {"id": self.item_ids[i], "title": self._titles[i], "genres": list(self._genres[i])}

    def vectors(self, internal_ids: np.ndarray) -> np.ndarray:
        """Raw item-tower vectors float32 [n, d] (never normalised)."""
        ids = np.asarray(internal_ids, dtype=np.int64).reshape(-1)
        bad = ids[(ids < 0) | (ids >= len(self.item_ids))]
        if len(bad):
            self._check_internal(int(bad[0]))
        return np.asarray(self._vectors[ids], dtype=np.float32)

    def _check_internal(self, internal: int) -> int:
        if not 0 <= internal < len(self.item_ids):
            raise UnknownItemError(
                internal,
                f"no internal item id {internal} (index v{self.version:04d} has "
                f"{len(self.item_ids)})",
            )
        return int(internal)

    # ------------------------------------------------------------------ search

    def search(
        self, user_vectors: np.ndarray, k: int, exclude: Sequence[Iterable[int]] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` items per query row: ids int64 [n, k], scores float32 [n, k].

        ``exclude[i]`` is a set of internal ids row ``i`` must not return (seen items).
        Scores are inner products (cosines when the index is normalised: queries are
        normalised here the same way). Rows are padded with ``-1`` / ``-inf``.
        """
        rows = self.search_rows(user_vectors, k, exclude)
        ids = np.full((len(rows), k), -1, dtype=np.int64)
        scores = np.full((len(rows), k), -np.inf, dtype=np.float32)
        for row, (row_ids, row_scores) in enumerate(rows):
            ids[row, : len(row_ids)] = row_ids
            scores[row, : len(row_scores)] = row_scores
        return ids, scores

    def search_rows(
        self, user_vectors: np.ndarray, k: int, exclude: Sequence[Iterable[int]] | None = None
    ) -> list[Row]:
        """``search`` as one ``(ids, scores)`` pair of lists per query, best first, shorter
        than ``k`` only when too few items are left. What the service reads: its answers
        are lists, and building then unpacking padded arrays cost about as much as the
        FAISS call itself (cache hits +15 % under load, docs/BENCHMARKS.md "Load")."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        q = self._queries(user_vectors)
        banned = self._exclusions(exclude, len(q))
        if self.exclusion == "selector" and (any(banned) or len(self._tombstones)):
            rows = self._search_selector(q, k, banned)
        else:
            rows = self._search_overfetch(q, k, banned)
        return self._complete(q, k, banned, rows)

    def similar(self, external_id: str, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Items nearest to ``external_id``'s own vector, itself excluded: ids [k], scores [k]."""
        internal = self.internal_id(external_id)
        ids, scores = self.search(self.vectors([internal]), k, exclude=[{internal}])
        return ids[0], scores[0]

    def exact(self, user_vector: np.ndarray, k: int, exclude: Iterable[int] = ()) -> Row:
        """The exact top-``k`` of one query, by a scan of every active vector, without
        ``exclude`` (ids, scores): what an ANN answer is checked against (the live recall
        of service.dashboard)."""
        (q,) = self._queries(user_vector)
        return self._exact(q, k, as_array(set(exclude)))

    def _queries(self, user_vectors: np.ndarray) -> np.ndarray:
        q = np.atleast_2d(np.asarray(user_vectors, dtype=np.float32))
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise ValueError(f"query vectors must be [n, {self.dim}], got {q.shape}")
        return factory.prepare(q, self.normalized)

    def _exclusions(self, exclude: Sequence[Iterable[int]] | None, n: int) -> list[set[int]]:
        """Each row's banned internal ids as a set (ids outside the catalog dropped).

        Sets, because the common path (over-fetch, then filter) needs membership tests;
        callers' sets are used as they are, not copied.
        """
        if exclude is None:
            return [set()] * n
        if len(exclude) != n:
            raise ValueError(f"exclude has {len(exclude)} sets for {n} queries")
        size, out = len(self.item_ids), []
        for ids in exclude:
            banned = ids if isinstance(ids, set | frozenset) else set(ids)
            if banned and (min(banned) < 0 or max(banned) >= size):
                banned = {i for i in banned if 0 <= i < size}
            out.append(banned)
        return out

    def _faiss(
        self, q: np.ndarray, kk: int, selector: faiss.IDSelector | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Raw FAISS results: ids [n, kk] (``-1`` where FAISS found nothing), scores."""
        if kk == 0:
            return np.empty((len(q), 0), np.int64), np.empty((len(q), 0), np.float32)
        params = factory.search_parameters(self.spec, kk, selector)
        scores, ids = self._index.search(q, kk, params=params)
        return ids, scores

    def _keep(
        self, found_ids: np.ndarray, found_scores: np.ndarray, banned: list[set[int]], k: int
    ) -> list[Row]:
        """Per row, the first ``k`` found ids that exist, are active and are not banned.

        A set lookup per id: rows are only ``k + len(exclusions)`` long, and at that size
        plain Python beats numpy's isin/argsort machinery several times over.
        """
        active = self._active if len(self._tombstones) else None
        rows = []
        for row_ids, row_scores, skip in zip(
            found_ids.tolist(), found_scores.tolist(), banned, strict=True
        ):
            keep = [
                j
                for j, i in enumerate(row_ids)
                if i >= 0 and i not in skip and (active is None or active[i])
            ][:k]
            rows.append(([row_ids[j] for j in keep], [row_scores[j] for j in keep]))
        return rows

    def _search_overfetch(self, q: np.ndarray, k: int, banned: list[set[int]]) -> list[Row]:
        """One batched call for enough neighbours to survive the filter, then filter."""
        extra = max(len(b) for b in banned) + len(self._tombstones)
        found_ids, found_scores = self._faiss(q, min(k + extra, self._ntotal))
        return self._keep(found_ids, found_scores, banned, k)

    def _search_selector(self, q: np.ndarray, k: int, banned: list[set[int]]) -> list[Row]:
        """One call per query that has exclusions, FAISS skipping them via an IDSelector."""
        rows: list[Row] = [([], [])] * len(q)
        kk = min(k, self._ntotal)
        plain = [i for i, b in enumerate(banned) if not b] if not len(self._tombstones) else []
        if plain:
            found_ids, found_scores = self._faiss(q[plain], kk)
            kept = self._keep(found_ids, found_scores, [set()] * len(plain), k)
            for i, row in zip(plain, kept, strict=True):
                rows[i] = row
        for i in sorted(set(range(len(q))) - set(plain)):
            skip = np.union1d(as_array(banned[i]), self._tombstones)
            selector = faiss.IDSelectorNot(faiss.IDSelectorBatch(skip))
            found_ids, found_scores = self._faiss(q[i : i + 1], kk, selector)
            (rows[i],) = self._keep(found_ids, found_scores, [banned[i]], k)
        return rows

    def _complete(
        self, q: np.ndarray, k: int, banned: list[set[int]], rows: list[Row]
    ) -> list[Row]:
        """Refill, by exact scan, rows the ANN index returned fewer results for than exist."""
        for i, (row_ids, _) in enumerate(rows):
            if len(row_ids) >= k:
                continue
            row_banned = as_array(banned[i])
            available = self.active_count - int(self._active[row_banned].sum())
            if len(row_ids) < min(k, available):
                rows[i] = self._exact(q[i], k, row_banned)
                self.stats["exact_fallbacks"] += 1
        return rows

    def _exact(self, query: np.ndarray, k: int, banned: np.ndarray) -> Row:
        scores = np.asarray(self._vectors @ query, dtype=np.float32)
        if self.normalized:
            if self._norms is None:
                norms = np.linalg.norm(np.asarray(self._vectors), axis=1)
                self._norms = np.where(norms > 0, norms, 1).astype(np.float32)
            scores /= self._norms
        scores[~self._active] = -np.inf
        scores[banned] = -np.inf
        valid = min(k, int(np.isfinite(scores).sum()))
        top = np.argpartition(-scores, valid - 1)[:valid] if valid else np.empty(0, np.int64)
        top = top[np.argsort(-scores[top], kind="stable")]
        return top.tolist(), scores[top].tolist()


def as_array(ids: set[int]) -> np.ndarray:
    return np.fromiter(ids, dtype=np.int64, count=len(ids))
