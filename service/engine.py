"""The loaded model: one bundle version's user tower, item index and catalog lookups.

An ``Engine`` is immutable once built. The app holds a single reference to the current
one and swaps it on reload; a request reads that reference once and uses the same engine
from start to end, so a reload never mixes two versions inside one answer.

Only ``training.model``, ``training.features`` and ``training.bundle`` are imported from
training (no data loading, losses or training loop).
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from service.render import ItemFragments
from service.traced import Inputs, TracedTower
from training import bundle
from training.bundle import BundleError
from training.features import FeatureSpec
from training.model import TowerConfig, feature_tensors

log = logging.getLogger("service.engine")


@dataclass
class Query:
    """What the user tower sees for one request."""

    features: dict[str, Any] = field(default_factory=dict)  # raw values; missing = unknown
    sequence: list[int] = field(default_factory=list)  # internal item ids, newest last
    user_index: int = 0  # 1-based known-user id for the id embedding; 0 = unknown


@dataclass
class Job:
    """One search: the top ``k`` items for ``vector``, without ``exclude``."""

    vector: np.ndarray
    k: int
    exclude: set[int]
    allowed: Subset | None = None  # metadata filter: search only these items


@dataclass
class Subset:
    """Items passing a metadata filter: bool mask, their ids and vectors (exact search)."""

    mask: np.ndarray
    ids: np.ndarray
    vectors: np.ndarray
    scale: np.ndarray | None  # 1/|v| when the index is normalised (cosine scores)


def bundle_stamp(path: str | Path) -> tuple[str, int, int]:
    """What the reload watcher compares: resolved version dir + manifest mtime/size (the
    index build rewrites the manifest of the same version in place)."""
    real = bundle.resolve(path)
    st = (real / bundle.MANIFEST).stat()
    return str(real), st.st_mtime_ns, st.st_size


class ItemEncoder:
    """The item tower on features alone (id 0, as ``python -m index add``), for the item
    API. Its weights are read from the bundle on the first write and kept; a worker that
    never takes a write never holds them (the id table is catalog-sized). One object per
    bundle, shared by the engines ``Engine.with_index`` derives."""

    def __init__(self, path: Path, specs: list[FeatureSpec]):
        self.path, self.specs = path, specs
        self.by_name = {s.name: s for s in specs}  # empty: an id-only model
        self._tower = None
        self._lock = threading.Lock()

    def __call__(self, features: list[dict[str, Any]]) -> np.ndarray:
        from index.embed import tower_vectors

        with self._lock:  # torch modules are not shared between concurrent forwards here
            if self._tower is None:
                self._tower = bundle.load_towers(self.path).item_tower.eval()
            return tower_vectors(self._tower, self.specs, features)


class Engine:
    def __init__(
        self, path: str | Path, *, faiss_threads: int = 1, mmap: bool = True, traced: bool = True
    ):
        from index import ItemIndex  # the index package owns the index files

        started = time.perf_counter()
        self.stamp = bundle_stamp(path)
        self.path = Path(self.stamp[0])
        self.manifest = bundle.read_manifest(self.path)
        self.version: str = self.manifest["version"]
        self.cfg = TowerConfig.from_dict(self.manifest["model"])
        self.tower = bundle.load_towers(self.path).user_tower.eval()
        self.index = ItemIndex.load(self.path, mmap=mmap, threads=faiss_threads)
        self.specs: list[FeatureSpec] = self.cfg.specs("user")
        self.spec_by_name = {s.name: s for s in self.specs}
        self.has_sequence = self.tower.encoder is not None
        self.has_features = self.tower.features is not None
        self.has_user_ids = self.tower.user_ids is not None
        self.forward = (
            TracedTower(
                self.tower, self.specs, self.cfg.vector_dim, self.cfg.max_len, self.cfg.n_users
            )
            if traced
            else self.tower
        )
        # parsed once per bundle and shared by the engines ``with_index`` derives
        # users keep external ids: mapped to the served index version at lookup
        self.users: dict[str, tuple[int, dict[str, Any], list[str]]] = {
            str(row["id"]): (u + 1, row.get("features") or {}, list(row.get("history", [])))
            for u, row in enumerate(bundle.load_json(self.path, bundle.USERS))
        }
        self._popularity: list[str] = bundle.load_json(self.path, bundle.POPULARITY)
        self.item_encoder = ItemEncoder(self.path, self.cfg.specs("item"))
        self._catalog()
        self.load_seconds = time.perf_counter() - started
        self.loaded_at = time.time()

    def _catalog(self, previous: Engine | None = None) -> None:
        """Everything derived from the index version: active ids, metadata, rendered
        fragments, genre masks, popularity. With ``previous`` (an index swap) the rows
        it already derived are reused when this version only appended or deactivated
        rows (``_extends``): an item write then costs O(new rows) here, not O(catalog)."""
        if self.index.dim != self.cfg.vector_dim:
            raise BundleError(
                f"{self.path}: index dim {self.index.dim} != model dim {self.cfg.vector_dim}"
            )
        self.item_ids: list[str] = self.index.item_ids
        self.n_items = len(self.item_ids)
        self._internal = self.index.by_external  # active items only
        self._active_mask = self.index.active_mask
        self.active_count = len(self._internal)
        base = previous if previous is not None and self._extends(previous) else None
        start = base.n_items if base is not None else 0
        added = [self.index.metadata(i) for i in range(start, self.n_items)]
        if base is not None:
            self.fragments = base.fragments.extended(added)
            self.genres: dict[str, np.ndarray] = {}
            for g, mask in base.genres.items():  # new arrays: the old engine keeps its own
                self.genres[g] = np.zeros(self.n_items, dtype=bool)
                self.genres[g][: len(mask)] = mask
        else:
            self.fragments, self.genres = ItemFragments(added), {}
        rows: dict[str, list[int]] = {}
        for i, meta in enumerate(added, start):
            for g in meta["genres"]:
                rows.setdefault(g, []).append(i)
        for g, internal in rows.items():
            if g not in self.genres:
                self.genres[g] = np.zeros(self.n_items, dtype=bool)
            self.genres[g][internal] = True
        self.popular_ids: list[int] = [
            self._internal[i] for i in self._popularity if i in self._internal
        ]
        self._filter_cache: OrderedDict[frozenset[str], Subset] = OrderedDict()

    def _extends(self, previous: Engine) -> bool:
        """True when this index version keeps every row of ``previous``'s as it was
        (apart from ``active``): only add / replace / remove / upsert / compact happened
        since, as the section's history shows (a ``build`` starts rows afresh)."""
        later = [
            h
            for h in self.index.section.get("history", [])
            if h["version"] > previous.index_version
        ]
        if not later or later[0]["version"] != previous.index_version + 1:
            return False  # not a newer version, or history cut: cannot tell
        if any(h.get("op") == "build" for h in later) or previous.n_items > self.n_items:
            return False
        return self.item_ids[: previous.n_items] == previous.item_ids

    # --- index versions (the item API) ---------------------------------------------------
    @property
    def index_version(self) -> int:
        return self.index.version

    def with_index(self, stamp: tuple, *, mmap: bool = True, faiss_threads: int = 1) -> Engine:
        """A new engine serving the bundle's current index version with this engine's
        model: the user tower, its trace and the parsed users / popularity are shared,
        only the index and what derives from it (``_catalog``) are loaded. What the item
        API's writes cost each worker instead of a full reload (no weights read, no trace).
        This engine is not changed: requests holding it keep their version."""
        from index import ItemIndex

        started = time.perf_counter()
        index = ItemIndex.load(self.path, mmap=mmap, threads=faiss_threads)
        new = copy.copy(self)
        new.stamp, new.index = stamp, index
        new.manifest = {**self.manifest, "index": index.section}
        new._catalog(previous=self)
        new.load_seconds = time.perf_counter() - started
        new.loaded_at = time.time()
        return new

    # --- catalog ------------------------------------------------------------------------
    def internal(self, item_id: str) -> int | None:
        """Internal id of an active catalog item, None for unknown / removed ids."""
        return self._internal.get(item_id)

    def item(self, i: int) -> dict[str, Any]:
        """``{id, title, genres}`` of internal id ``i`` (a new dict each call)."""
        return self.index.metadata(i)

    def is_active(self, i: int) -> bool:
        return bool(self._active_mask[i])

    def genre_filter(self, genres: list[str]) -> Subset:
        """The active items having any of ``genres``, with their vectors (cached)."""
        key = frozenset(genres)
        subset = self._filter_cache.get(key)
        if subset is None:
            mask = np.zeros(self.n_items, dtype=bool)
            for g in key:
                if g in self.genres:
                    mask |= self.genres[g]
            mask &= self._active_mask
            ids = np.flatnonzero(mask)
            dim = self.cfg.vector_dim
            vectors = self.index.vectors(ids) if len(ids) else np.zeros((0, dim), np.float32)
            scale = None
            if self.index.normalized and len(ids):
                norms = np.linalg.norm(vectors, axis=1)
                scale = (1.0 / np.where(norms > 0, norms, 1)).astype(np.float32)
            subset = Subset(mask, ids, vectors, scale)
            self._filter_cache[key] = subset
            while len(self._filter_cache) > 64:
                self._filter_cache.popitem(last=False)
        else:
            self._filter_cache.move_to_end(key)
        return subset

    def user(self, user_id: str) -> tuple[int, dict[str, Any], list[int]] | None:
        """(1-based user index, features, history as active internal ids, newest last)."""
        row = self.users.get(user_id)
        if row is None:
            return None
        internal = self._internal
        return row[0], row[1], [internal[i] for i in row[2] if i in internal]

    def popular(self, k: int, exclude: set[int], allowed: Subset | None) -> list[int]:
        allowed = allowed.mask if allowed is not None else None
        out = []
        for i in self.popular_ids:
            if i in exclude or (allowed is not None and not allowed[i]):
                continue
            out.append(i)
            if len(out) == k:
                return out
        if len(out) < k:  # popularity.json may not list every item (new ones): fill up
            listed = set(out)
            for i in range(self.n_items):
                if len(out) == k:
                    break
                if (
                    self._active_mask[i]
                    and i not in exclude
                    and i not in listed
                    and (allowed is None or allowed[i])
                ):
                    out.append(i)
        return out

    # --- compute -------------------------------------------------------------------------
    def encode(self, queries: list[Query]) -> np.ndarray:
        """One user-tower forward pass for all queries -> float32 [n, d]."""
        return self.forward_inputs(self.tower_inputs(queries))

    def tower_inputs(self, queries: list[Query]) -> Inputs:
        """The tower's input tensors for ``queries`` (Python and numpy work, built on the
        event loop; see service.batcher)."""
        n, d = len(queries), self.cfg.vector_dim
        feats = seq = lengths = user_ids = None
        if self.has_features:
            feats = feature_tensors(self.specs, [q.features for q in queries])
        if self.has_sequence:
            lens = [min(len(q.sequence), self.cfg.max_len) for q in queries]
            width = max(lens)
            padded = np.zeros((n, width, d), dtype=np.float32)
            if width:
                flat = (
                    [i for q, m in zip(queries, lens, strict=True) for i in q.sequence[-m:]]
                    if width
                    else []
                )
                vectors = self.index.vectors(np.asarray(flat, dtype=np.int64))
                pos = 0
                for row, m in enumerate(lens):
                    padded[row, :m] = vectors[pos : pos + m]
                    pos += m
            seq = torch.from_numpy(padded)
            lengths = torch.tensor(lens, dtype=torch.long)
        if self.has_user_ids:
            user_ids = torch.tensor([q.user_index for q in queries], dtype=torch.long)
        return feats, seq, lengths, user_ids

    def forward_inputs(self, inputs: Inputs) -> np.ndarray:
        """The forward pass alone -> float32 [n, d]: one traced call into torch, which
        releases the GIL while it computes (all that the compute thread runs)."""
        with torch.inference_mode():
            out = self.forward(*inputs)
        return np.ascontiguousarray(out.float().numpy(), dtype=np.float32)

    def _search_subset(
        self, vector: np.ndarray, k: int, subset: Subset, exclude: set[int]
    ) -> tuple[list[int], list[float]]:
        """Exact top-k among the items of a metadata filter (same scores as the index)."""
        if not len(subset.ids):
            return [], []
        scores = subset.vectors @ vector
        if subset.scale is not None:
            norm = float(np.linalg.norm(vector))
            scores = scores * subset.scale / (norm if norm > 0 else 1.0)
        if exclude:
            scores[np.isin(subset.ids, np.fromiter(exclude, np.int64))] = -np.inf
        top = min(k, int(np.isfinite(scores).sum()))
        if top == 0:
            return [], []
        part = np.argpartition(-scores, top - 1)[:top]
        order = part[np.argsort(-scores[part], kind="stable")]
        return subset.ids[order].tolist(), scores[order].astype(float).tolist()

    def search(self, jobs: list[Job]) -> list[tuple[list[int], list[float]]]:
        """(ids, scores) per job, best first: one index search for every unfiltered job,
        an exact search over the filter's items for each filtered one."""
        results: list[tuple[list[int], list[float]]] = [([], [])] * len(jobs)
        plain = [i for i, job in enumerate(jobs) if job.allowed is None]
        if plain:
            k = min(max(jobs[i].k for i in plain), self.n_items)
            matrix = np.stack([jobs[i].vector for i in plain]).astype(np.float32, copy=False)
            rows = self.index.search_rows(matrix, k, [jobs[i].exclude for i in plain])
            for i, (ids, scores) in zip(plain, rows, strict=True):
                results[i] = (ids[: jobs[i].k], scores[: jobs[i].k])
        for i, job in enumerate(jobs):
            if job.allowed is not None:
                results[i] = self._search_subset(job.vector, job.k, job.allowed, job.exclude)
        return results

    def similar_job(self, i: int, k: int) -> Job:
        """The neighbours of item ``i`` (itself excluded), as ItemIndex.similar finds them."""
        return Job(vector=self.index.vectors([i])[0], k=k, exclude={i})
