"""FAISS index kinds and their parameters: create, fill, tune and query-parameterise.

Every kind scores by inner product (what the towers are trained for) and answers with
*internal item ids* (int64 rows of ``vectors.npy``), never positions:

- ``flat``  ``IndexIDMap2(IndexFlatIP)``: exact; the default up to ~200k items.
- ``hnsw``  ``IndexIDMap2(IndexHNSWFlat(d, M, METRIC_INNER_PRODUCT))``: graph ANN; cannot
  delete, so removed items stay in the graph as tombstones filtered at search time.
- ``ivf``   ``IndexIVFFlat`` / ``IndexIVFPQ`` with inner product: ids are native to IVF
  (no ``IndexIDMap2``, whose ``remove_ids`` assumes a sub-index that compacts like a flat
  one), ``remove_ids`` is supported, and new items go to the existing centroids.

IVF cells for inner product: FAISS trains IP indexes with spherical k-means (unit-norm
centroids) and assigns items by inner product, so a cell's centroid forgets how long its
vectors are. Here the cells are Euclidean k-means (centroids keep the norm: a centroid is
the mean of its items), each item goes to its *nearest* centroid (balanced cells), and a
query probes the cells with the largest ``<q, centroid>`` = the cell's mean score (the
coarse quantizer is an ``IndexFlatIP`` over those centroids). On embedding-like data this
lifts recall@10 at equal ``nprobe`` from ~0.3 to ~0.97 (docs/BENCHMARKS.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Any

import faiss
import numpy as np
from tqdm import tqdm

KINDS = ("flat", "hnsw", "ivf")
ADD_CHUNK = 50_000  # vectors per add() call, so long HNSW builds show progress
TRAIN_PER_LIST = 64  # k-means sample per IVF list (FAISS warns below 39; 256 is its cap)


@dataclass(frozen=True)
class IndexSpec:
    """A kind and its parameters. ``None`` means "choose from the catalog size"."""

    kind: str = "flat"
    hnsw_m: int = 32  # HNSW: graph degree M
    ef_construction: int = 80  # HNSW: candidate list while building
    ef_search: int = 64  # HNSW: candidate list while searching (raised to k if smaller)
    nlist: int | None = None  # IVF: number of centroids (auto: ~4 sqrt(N))
    nprobe: int | None = None  # IVF: lists scanned per query (auto: max(16, nlist / 64))
    pq_m: int = 0  # IVF: PQ sub-quantizers (bytes per vector at 8 bits); 0 = IVFFlat
    pq_nbits: int = 8  # IVF: bits per PQ sub-quantizer code

    _PARAMS = {
        "flat": (),
        "hnsw": ("hnsw_m", "ef_construction", "ef_search"),
        "ivf": ("nlist", "nprobe", "pq_m", "pq_nbits"),
    }

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown index kind {self.kind!r}; expected one of {KINDS}")
        for name in ("hnsw_m", "ef_construction", "ef_search", "nlist", "nprobe", "pq_nbits"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if self.pq_m < 0:
            raise ValueError(f"pq_m must be >= 0 (0 = IVFFlat), got {self.pq_m}")

    def params(self) -> dict[str, Any]:
        """The parameters that matter for this kind (what the manifest records)."""
        return {name: getattr(self, name) for name in self._PARAMS[self.kind]}

    @classmethod
    def from_params(cls, kind: str, params: dict[str, Any]) -> IndexSpec:
        known = {f.name for f in fields(cls)}
        return cls(kind=kind, **{k: v for k, v in params.items() if k in known})

    def resolved(self, n: int, dim: int) -> IndexSpec:
        """Fill the automatic IVF parameters for ``n`` items and check they fit."""
        if self.kind != "ivf":
            return self
        nlist = self.nlist or auto_nlist(n)
        if nlist > max(n, 1):
            raise ValueError(f"nlist={nlist} is larger than the catalog ({n} items)")
        nprobe = min(self.nprobe or max(16, nlist // 64), nlist)
        if self.pq_m:
            if dim % self.pq_m:
                raise ValueError(f"PQ m={self.pq_m} must divide the dimension {dim}")
            if n < 2**self.pq_nbits:
                raise ValueError(
                    f"PQ with {self.pq_nbits} bits needs >= {2**self.pq_nbits} training "
                    f"items, the catalog has {n}; use --pq 0 (IVFFlat) or fewer bits"
                )
        return replace(self, nlist=nlist, nprobe=nprobe)

    def label(self) -> str:
        """Short human description, e.g. ``hnsw M=32 efC=80 efS=64``."""
        short = {
            "hnsw_m": "M",
            "ef_construction": "efC",
            "ef_search": "efS",
            "pq_m": "pq",
            "pq_nbits": "nbits",
        }
        parts = [
            f"{short.get(k, k)}={v}"
            for k, v in self.params().items()
            if not (k in ("pq_m", "pq_nbits") and not self.pq_m)
        ]
        return " ".join([self.kind, *parts])


def auto_nlist(n: int) -> int:
    """~4 sqrt(N) lists, but at least 39 training points per centroid (k-means needs them)."""
    return max(1, min(int(4 * math.sqrt(n)), n // 39))


def prepare(vectors: np.ndarray, normalize: bool) -> np.ndarray:
    """Float32, C-contiguous, L2-normalised rows when ``normalize`` (zero rows stay zero)."""
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"expected a 2-d array of vectors, got shape {x.shape}")
    if normalize:
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        x = x / np.where(norms > 0, norms, 1).astype(np.float32)
    return x


def new_index(spec: IndexSpec, dim: int) -> faiss.Index:
    """An empty index of ``spec.kind`` (IVF still untrained); ``spec`` must be resolved."""
    if spec.kind == "flat":
        return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
    if spec.kind == "hnsw":
        hnsw = faiss.IndexHNSWFlat(dim, spec.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efConstruction = spec.ef_construction
        hnsw.hnsw.efSearch = spec.ef_search
        return faiss.IndexIDMap2(hnsw)
    quantizer = faiss.IndexFlatIP(dim)
    if spec.pq_m:
        ivf = faiss.IndexIVFPQ(
            quantizer, dim, spec.nlist, spec.pq_m, spec.pq_nbits, faiss.METRIC_INNER_PRODUCT
        )
    else:
        ivf = faiss.IndexIVFFlat(quantizer, dim, spec.nlist, faiss.METRIC_INNER_PRODUCT)
    ivf.nprobe = spec.nprobe
    return ivf


def train(index: faiss.Index, x: np.ndarray, seed: int = 0) -> None:
    """IVF: Euclidean k-means cells on a sample of ``TRAIN_PER_LIST`` vectors per list, and
    for IVF-PQ the codebooks on the residuals to the nearest centroid."""
    if index.is_trained:
        return
    ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
    cap = TRAIN_PER_LIST * ivf.nlist
    if len(x) > cap:
        x = x[np.sort(np.random.default_rng(seed).choice(len(x), cap, replace=False))]
    kmeans = faiss.Kmeans(ivf.d, ivf.nlist, niter=20, seed=seed + 1)
    kmeans.train(np.ascontiguousarray(x))
    ivf.quantizer.add(kmeans.centroids)  # an IndexFlatIP: probes by <q, centroid>
    if isinstance(ivf, faiss.IndexIVFPQ):  # codebooks for the residuals to the cell centroid
        cells = nearest_cells(ivf, x)
        residuals = np.ascontiguousarray(x - kmeans.centroids[cells], dtype=np.float32)
        ivf.train_encoder(len(x), faiss.swig_ptr(residuals), faiss.swig_ptr(cells))
    ivf.is_trained = True


def nearest_cells(ivf: faiss.IndexIVF, x: np.ndarray) -> np.ndarray:
    """The Euclidean-nearest centroid of each vector (how items are assigned to cells)."""
    centroids = ivf.quantizer.reconstruct_n(0, ivf.nlist)
    _, cells = faiss.knn(x, centroids, 1, metric=faiss.METRIC_L2)
    return np.ascontiguousarray(cells[:, 0], dtype=np.int64)


def add(index: faiss.Index, x: np.ndarray, ids: np.ndarray, progress: bool = False) -> None:
    """Add vectors under the given internal ids, in chunks (progress bar on a terminal).

    IVF vectors go to their nearest centroid (``add_core`` with the assignment), not to
    the quantizer's inner-product choice.
    """
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    ivf = faiss.downcast_index(index) if isinstance(index, faiss.IndexIVF) else None
    steps = range(0, len(x), ADD_CHUNK)
    bar = tqdm(
        steps, desc="adding vectors", unit="chunk", disable=not progress or None, leave=False
    )
    for start in bar:
        chunk = np.ascontiguousarray(x[start : start + ADD_CHUNK], dtype=np.float32)
        chunk_ids = ids[start : start + ADD_CHUNK]
        if ivf is None:
            index.add_with_ids(chunk, chunk_ids)
            continue
        cells = nearest_cells(ivf, chunk)
        ivf.add_core(
            len(chunk), faiss.swig_ptr(chunk), faiss.swig_ptr(chunk_ids), faiss.swig_ptr(cells)
        )


def build(spec: IndexSpec, x: np.ndarray, ids: np.ndarray, progress: bool = False) -> faiss.Index:
    """A filled index of ``spec`` over prepared vectors ``x`` with internal ids ``ids``."""
    index = new_index(spec, x.shape[1])
    train(index, x)
    add(index, x, ids, progress)
    return index


def inner(index: faiss.Index) -> faiss.Index:
    """The index behind an ``IndexIDMap2`` (or the index itself), downcast."""
    if isinstance(index, faiss.IndexIDMap2 | faiss.IndexIDMap):
        return faiss.downcast_index(index.index)
    return faiss.downcast_index(index)


def indexed_ids(index: faiss.Index) -> np.ndarray | None:
    """Internal ids stored in an ``IndexIDMap2`` (None for IVF, whose ids live in lists)."""
    if isinstance(index, faiss.IndexIDMap2 | faiss.IndexIDMap):
        return faiss.vector_to_array(index.id_map).astype(np.int64)
    return None


def set_search_defaults(index: faiss.Index, spec: IndexSpec) -> None:
    """Apply ``ef_search`` / ``nprobe`` to the index itself (used by unparameterised calls)."""
    core = inner(index)
    if spec.kind == "hnsw":
        core.hnsw.efSearch = spec.ef_search
    elif spec.kind == "ivf":
        core.nprobe = spec.nprobe


def search_parameters(
    spec: IndexSpec, k: int, selector: faiss.IDSelector | None = None
) -> faiss.SearchParameters | None:
    """Per-call search parameters for a top-``k`` search, optionally with an ``IDSelector``.

    HNSW gets ``efSearch = max(ef_search, k)``: FAISS does not raise it by itself and returns
    fewer than ``k`` results (``-1``) when ``efSearch < k``. The kind-specific subclass
    matters: a plain ``SearchParameters`` would reset ``efSearch`` / ``nprobe`` to defaults.
    """
    if spec.kind == "hnsw":
        return faiss.SearchParametersHNSW(sel=selector, efSearch=max(spec.ef_search, k))
    if spec.kind == "ivf":
        return faiss.SearchParametersIVF(sel=selector, nprobe=spec.nprobe)
    return faiss.SearchParameters(sel=selector) if selector is not None else None


def serialized_bytes(index: faiss.Index) -> int:
    """Size of the index as written to disk."""
    return int(faiss.serialize_index(index).nbytes)
